#!/usr/bin/env bash
# Crash consistency of `jem train` (CPU, one thread, a tiny WRN-10-1 on synthetic 12x12 MNIST-
# format data, a checkpoint after every iteration so that many kills land inside a write):
#
#   1. a reference run, uninterrupted;
#   2. the same run killed with SIGKILL at random moments, each time resumed (`jem train
#      --resume`, or started afresh while it has no checkpoint yet), until it completes; rounds
#      of this until KILLS kills (default 50) in all. After every kill every checkpoint on disk
#      parses (scripts/ckpt_tool.py check) and the newest completed checkpoint never goes
#      backwards; at the end of a round no resume has skipped an unreadable checkpoint, no
#      temp file is left, and the final checkpoint equals the reference's bit for bit
#      (parameters, optimizer state, replay buffer);
#   3. SIGINT and SIGTERM: the run saves a checkpoint, exits 0, and resumes to the same result;
#   4. disk full while saving (a small tmpfs when `mount` is permitted, and a file size limit,
#      ulimit -f, always): the run fails with a message naming the checkpoint and the system
#      error, the previous checkpoints are intact and no temporary file is left.
#
# Usage: scripts/crash-test.sh [KILLS]   (JEM=path/to/jem, default build/jem; SEED for the kill
# times). Exits non-zero on the first violation. 50 kills take a few minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
kills_wanted="${1:-50}"
jem="$(realpath "${JEM:-build/jem}")"
tool="$(realpath scripts/ckpt_tool.py)"
[ -x "$jem" ] || { echo "crash-test: no jem binary at $jem (set JEM=)"; exit 2; }
RANDOM=${SEED:-$$}
work="$(mktemp -d /tmp/jem-crash-XXXXXX)"
mnt=""
cleanup() {
  [ -n "$mnt" ] && umount "$mnt" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "crash-test: FAIL: $*"; exit 1; }

/usr/bin/python3 scripts/synthetic_mnist.py "$work/data"

iters=60
args=(train --device cpu --threads 1 --dataset mnist --data_dir "$work/data" --depth 10 --width 1
      --batch_size 8 --n_valid 16 --buffer_size 32 --sgld_steps 2 --eval_batch 32 --log_every 5
      --sample_every 1000000 --ckpt_every 1 --max_iters "$iters" --seed 5)
final="checkpoints/$(printf 'ckpt_%09d.safetensors' "$iters")"

# ---- 1. reference ------------------------------------------------------------------------------
t0=$(date +%s%N)
"$jem" "${args[@]}" --keep_ckpts 2 --out "$work/ref" >"$work/ref.out" 2>&1 || { cat "$work/ref.out"; fail "reference run"; }
ref_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
echo "crash-test: reference run of $iters iterations: $ref_ms ms"

newest() {  # iteration of the newest checkpoint in run dir $1, or -1
  local l
  l=$(ls "$1/checkpoints" 2>/dev/null | grep -E '^ckpt_[0-9]{9}\.safetensors$' | tail -1 || true)
  [ -n "$l" ] && echo $((10#${l:5:9})) || echo -1
}
check_dir() {  # every completed checkpoint of run dir $1 parses
  local files=("$1"/checkpoints/ckpt_*.safetensors)
  [ -e "${files[0]}" ] || return 0
  "$tool" check "${files[@]}" || fail "an unreadable checkpoint after kill $kills"
}

# ---- 2. SIGKILL at random moments ---------------------------------------------------------------
# Rounds: a run killed and resumed until it completes, then checked against the reference; the
# next round starts a new run, until KILLS kills in all.
kills=0 in_write=0 lives=0 rounds=0
while [ "$rounds" -eq 0 ] || [ "$kills" -lt "$kills_wanted" ]; do
  rounds=$((rounds + 1))
  run="$work/run$rounds"
  best=-1
  while :; do
    if [ "$(newest "$run")" -ge 0 ]; then cmd=("$jem" train --resume "$run"); else cmd=("$jem" "${args[@]}" --keep_ckpts 2 --out "$run"); fi
    lives=$((lives + 1))
    "${cmd[@]}" >>"$run.out" 2>&1 &
    pid=$!
    if [ "$kills" -lt "$kills_wanted" ]; then
      # Uniform in [0, ref_ms / 6): kills during start-up, iterations and checkpoint writes.
      delay_ms=$(( (RANDOM * 32768 + RANDOM) % (ref_ms / 6 + 1) ))
      sleep "$(printf '%d.%03d' $((delay_ms / 1000)) $((delay_ms % 1000)))"
      if kill -KILL "$pid" 2>/dev/null; then
        wait "$pid" 2>/dev/null || true
        kills=$((kills + 1))
        ls "$run/checkpoints" 2>/dev/null | grep -q '\.tmp\.' && in_write=$((in_write + 1))
        check_dir "$run"
        n=$(newest "$run")
        [ "$n" -ge "$best" ] || fail "newest checkpoint went back from $best to $n after kill $kills"
        best=$n
        continue
      fi
    fi
    rc=0
    wait "$pid" || rc=$?
    [ "$rc" -eq 0 ] || { tail -5 "$run.out"; fail "the resumed run exited with $rc"; }
    break
  done
  check_dir "$run"
  ! ls "$run/checkpoints" | grep -q '\.tmp\.' || fail "temporary files of interrupted writes were not cleaned up"
  ! grep -q "skipping unreadable checkpoint" "$run/log.txt" || fail "a resume skipped an unreadable checkpoint"
  "$tool" compare "$work/ref/$final" "$run/$final" >/dev/null ||
    fail "round $rounds: the killed-and-resumed run differs from the reference"
  echo "crash-test: round $rounds: $kills kills so far; final checkpoint bit-identical to the uninterrupted run"
  rm -rf "$run"
done
echo "crash-test: $kills SIGKILLs survived in $rounds rounds ($in_write of them during a checkpoint write," \
     "$lives starts); every round's final checkpoint bit-identical to the uninterrupted run"

# ---- 3. SIGINT / SIGTERM: checkpoint and a clean exit -------------------------------------------
for sig in INT TERM; do
  r="$work/sig$sig"
  "$jem" "${args[@]}" --keep_ckpts 2 --out "$r" >"$r.out" 2>&1 &
  pid=$!
  # Wait until the run is past its first checkpoint, then signal it (polling the file system,
  # not a fixed sleep: the run's start-up time varies with machine load).
  for _ in $(seq 1 2000); do [ "$(newest "$r")" -ge 2 ] && break; sleep 0.01; done
  kill -"$sig" "$pid"
  rc=0
  wait "$pid" || rc=$?
  [ "$rc" -eq 0 ] || fail "SIG$sig: exit status $rc, expected 0"
  grep -q "stopped early" "$r.out" || fail "SIG$sig: no 'stopped early' in the output"
  stopped=$(newest "$r")
  grep -q "stop requested: saving a checkpoint at iteration $stopped" "$r/log.txt" ||
    fail "SIG$sig: no checkpoint at the iteration where the run stopped ($stopped)"
  [ "$stopped" -lt "$iters" ] || { echo "crash-test: SIG$sig arrived after the last iteration; not a test"; continue; }
  "$jem" train --resume "$r" >>"$r.out" 2>&1 || fail "SIG$sig: resume failed"
  "$tool" compare "$work/ref/$final" "$r/$final" >/dev/null || fail "SIG$sig: stop + resume differs from the reference"
  echo "crash-test: SIG$sig at iteration $stopped: checkpoint saved, exit 0, resumed bit-identical"
done

# ---- 4. disk full while saving ------------------------------------------------------------------
ckpt_bytes=$(stat -c %s "$work/ref/$final")
disk_full_case() {  # $1 = label, $2 = run dir, $3 = its output, $4 = exit status
  local r="$2" out="$3" rc="$4" msg failing
  [ "$rc" -ne 0 ] || fail "$1: the run succeeded on a full disk"
  msg=$(grep -oE "ckpt_[0-9]{9}\.safetensors: (write failed|close failed|fsync failed|cannot create temporary file): .*" "$out" | tail -1 || true)
  [ -n "$msg" ] || { tail -3 "$out"; fail "$1: no message naming the checkpoint and the system error"; }
  failing=$((10#${msg:5:9}))
  [ ! -e "$r/checkpoints/${msg%%: *}" ] || fail "$1: the failed checkpoint exists"
  ! ls "$r/checkpoints" | grep -q '\.tmp\.' || fail "$1: a temporary file was left behind"
  check_dir "$r"
  [ "$(newest "$r")" -ge 0 ] && [ "$(newest "$r")" -lt "$failing" ] || fail "$1: no earlier checkpoint left"
  echo "crash-test: $1: exit $rc, '$msg'; checkpoint $(newest "$r") intact, no temp file"
}
# 4a. a file size limit below one checkpoint: the first save of the resumed run fails (EFBIG).
cp -r "$work/sigINT" "$work/fsize"
rc=0
(ulimit -f $(( ckpt_bytes / 1024 / 2 )); exec "$jem" train --resume "$work/fsize" --max_iters $((iters + 5))) \
  >"$work/fsize.out" 2>&1 || rc=$?
disk_full_case "file size limit (ulimit -f)" "$work/fsize" "$work/fsize.out" "$rc"
[ "$(newest "$work/fsize")" -eq "$iters" ] || fail "ulimit -f: checkpoint $iters lost"
# 4b. a tmpfs with room for the run's small files and two checkpoints but not a third (ENOSPC).
mkdir -p "$work/mnt"
if mount -t tmpfs -o size=$(( ckpt_bytes * 5 / 2 / 1024 + 64 ))k tmpfs "$work/mnt" 2>/dev/null; then
  mnt="$work/mnt"
  rc=0
  "$jem" "${args[@]}" --keep_ckpts 3 --out "$mnt/run" >"$work/tmpfs.out" 2>&1 || rc=$?
  disk_full_case "tmpfs full (ENOSPC)" "$mnt/run" "$work/tmpfs.out" "$rc"
  umount "$mnt" && mnt=""
else
  echo "crash-test: mount not permitted: tmpfs disk-full case skipped"
fi
echo "crash-test: all passed"
