#!/usr/bin/env bash
# One multi-process test case, run by ctest (tests/mpi/CMakeLists.txt):
#   run_case.sh CASE DRIVER JEM MPIEXEC
# CASE: split | buffer | throw | hang | crash | cli. Exits non-zero when the case fails.
set -euo pipefail
case_name="$1" driver="$2" jem="$3" mpiexec="$4"
work="$(mktemp -d "${TMPDIR:-/tmp}/jem-mpi-${case_name}.XXXXXX")"
trap 'rm -rf "$work"' EXIT
export OMP_NUM_THREADS=1

# Open MPI refuses root without these flags and more ranks than cores without --oversubscribe.
mpi_flags=()
if "$mpiexec" --version 2>&1 | grep -qE "Open MPI|OpenRTE"; then
  mpi_flags+=(--oversubscribe)
  if [[ $(id -u) -eq 0 ]]; then mpi_flags+=(--allow-run-as-root); fi
fi
mpirun_np() { local n="$1"; shift; "$mpiexec" -np "$n" "${mpi_flags[@]}" "$@"; }
fail() { echo "FAIL ($case_name): $*" >&2; exit 1; }

mkdir -p "$work/data"
"$driver" data "$work/data"
ck() { echo "$1/checkpoints/ckpt_$(printf '%09d' "$2").safetensors"; }

case "$case_name" in
  split)
    # Buffer off (every chain starts from noise): the same global batch of 8 on 1, 2 and 3 ranks
    # (3: an uneven 3/3/2 split) gives the same parameters after 5 iterations. The tolerance
    # 1e-5 relative covers float summation order (GEMM blocking by batch size, the all-reduce).
    "$driver" train --data "$work/data" --out "$work/w1" --iters 5 --reinit 1
    mpirun_np 2 "$driver" train --data "$work/data" --out "$work/w2" --iters 5 --reinit 1
    mpirun_np 3 "$driver" train --data "$work/data" --out "$work/w3" --iters 5 --reinit 1
    "$driver" compare "$(ck "$work/w2" 5)" "$(ck "$work/w1" 5)" --tol 1e-5 --what params
    "$driver" compare "$(ck "$work/w3" 5)" "$(ck "$work/w1" 5)" --tol 1e-5 --what params
    # The gradient all-reduced in buckets during backward (0.01 MiB: a bucket per stage of this
    # tiny model, started while the backward pass goes on) equals one all-reduce after it, bit for
    # bit: every element is reduced once, by the same sum of two values.
    mpirun_np 2 "$driver" train --data "$work/data" --out "$work/w2one" --iters 5 --reinit 1 --bucket_mb 0
    mpirun_np 2 "$driver" train --data "$work/data" --out "$work/w2buckets" --iters 5 --reinit 1 --bucket_mb 0.01
    "$driver" compare "$(ck "$work/w2buckets" 5)" "$(ck "$work/w2one" 5)" --tol 0 --what all
    # The test can fail: a different run (other iteration count) is far from it.
    "$driver" train --data "$work/data" --out "$work/w1b" --iters 4 --reinit 1
    if "$driver" compare "$(ck "$work/w1b" 4)" "$(ck "$work/w1" 5)" --tol 1e-5 --what params; then
      fail "compare accepted parameters one iteration apart"
    fi
    ;;
  buffer)
    # Shards partition the buffer (2 and 3 ranks).
    mpirun_np 2 "$driver" shards
    mpirun_np 3 "$driver" shards
    # Buffer on. A checkpoint holds every shard: resuming it on another world size with no
    # iteration left rewrites the same checkpoint bit for bit (2 -> 1 and 1 -> 2).
    mpirun_np 2 "$driver" train --data "$work/data" --out "$work/b2" --iters 6 --reinit 0.05
    cp -r "$work/b2" "$work/b2to1"
    "$driver" train --data "$work/data" --out "$work/b2to1" --iters 6 --reinit 0.05 --resume
    "$driver" compare "$(ck "$work/b2to1" 6)" "$(ck "$work/b2" 6)" --tol 0 --what all
    "$driver" train --data "$work/data" --out "$work/b1" --iters 6 --reinit 0.05
    cp -r "$work/b1" "$work/b1to2"
    mpirun_np 2 "$driver" train --data "$work/data" --out "$work/b1to2" --iters 6 --reinit 0.05 --resume
    "$driver" compare "$(ck "$work/b1to2" 6)" "$(ck "$work/b1" 6)" --tol 0 --what all
    # The same with the buffer in class segments (p(x, y) term): each rank owns part of every
    # segment, and the class-conditional chains stay in theirs.
    mpirun_np 2 "$driver" train --data "$work/data" --out "$work/c2" --iters 6 --reinit 0.05 --pxy
    cp -r "$work/c2" "$work/c2to1"
    "$driver" train --data "$work/data" --out "$work/c2to1" --iters 6 --reinit 0.05 --pxy --resume
    "$driver" compare "$(ck "$work/c2to1" 6)" "$(ck "$work/c2" 6)" --tol 0 --what all
    # The buffer really moved (the SGLD chains were written back into it) ...
    if "$driver" compare "$(ck "$work/b2" 6)" "$(ck "$work/b2" 0)" --tol 0 --what buffer; then
      fail "the replay buffer did not change in 6 iterations"
    fi
    # ... and training continues after a resume on another world size.
    mpirun_np 2 "$driver" train --data "$work/data" --out "$work/b1to2" --iters 9 --reinit 0.05 --resume
    "$driver" train --data "$work/data" --out "$work/b2to1" --iters 9 --reinit 0.05 --resume
    [[ -f "$(ck "$work/b1to2" 9)" && -f "$(ck "$work/b2to1" 9)" ]] || fail "no checkpoint at iteration 9"
    ;;
  throw | hang | crash)
    # Rank 1 fails in iteration 2; the job must end non-zero within seconds, naming the rank.
    # hang: rank 1 stops taking part; rank 0's collective timeout (3 s) ends the job.
    # crash: rank 1 exits at once (status 7), as a killed process would.
    mode="$case_name"
    [[ "$mode" == crash ]] && mode=exit
    # Only the hang needs the timeout; the others get one a loaded machine cannot reach by accident.
    limit=30
    [[ "$mode" == hang ]] && limit=3
    start=$(date +%s)
    set +e
    out="$(timeout 120 "$mpiexec" -np 2 "${mpi_flags[@]}" "$driver" train --data "$work/data" --out "$work/f" \
      --iters 6 --fail-rank 1 --fail-at 2 --fail-mode "$mode" --timeout "$limit" 2>&1)"
    rc=$?
    set -e
    took=$(( $(date +%s) - start ))
    echo "$out"
    echo "exit status $rc after $took s"
    [[ $rc -ne 0 ]] || fail "the job exited 0"
    [[ $rc -ne 124 ]] || fail "the job hung (killed by timeout after 120 s)"
    (( took <= 60 )) || fail "the job took $took s to end"
    case "$case_name" in
      throw) grep -q "rank 1: error: .*injected failure" <<<"$out" || fail "no message naming rank 1" ;;
      hang) grep -q "rank 0: error: .*timed out" <<<"$out" || fail "no timeout message naming rank 0" ;;
      crash) ;;  # the process is gone without a word; the launcher reports its exit status
    esac
    ;;
  cli)
    # `mpirun -np 2 jem train` as a user runs it: rank 0 alone prints and writes the run.
    cat >"$work/tiny.toml" <<TOML
dataset = "mnist"
data_dir = "$work/data"
device = "cpu"
threads = 1
n_valid = 40
batch_size = 8
depth = 10
width = 1
buffer_size = 100
sgld_steps = 2
augment = false
max_iters = 4
log_every = 2
eval_batch = 64
TOML
    out="$(mpirun_np 2 "$jem" train --config "$work/tiny.toml" --out "$work/run" 2>&1)"
    echo "$out"
    [[ $(grep -c "^trained 4 iterations" <<<"$out") -eq 1 ]] || fail "expected one 'trained' line (rank 0's)"
    grep -q "data parallel over MPI, 2 ranks" "$work/run/log.txt" || fail "log.txt does not name the 2 ranks"
    [[ -f "$(ck "$work/run" 4)" && -f "$work/run/summary.json" ]] || fail "missing checkpoint or summary"
    # --comm none under a 2-process launch is refused (two copies would share one run directory).
    if mpirun_np 2 "$jem" train --config "$work/tiny.toml" --out "$work/run2" --comm none >/dev/null 2>&1; then
      fail "--comm none with 2 processes was accepted"
    fi
    ;;
  *) fail "unknown case" ;;
esac
echo "PASS ($case_name)"
