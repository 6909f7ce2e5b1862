#!/usr/bin/env bash
# The stability matrix: trains the quickstart model (configs/fashion-mnist.toml) for a fixed
# number of iterations over a grid of learning rate x SGLD steps x L2 energy term x seed, with the
# divergence guard on and off, and writes a table: diverged or not, rollbacks used, final test
# accuracy. The table goes to OUT/stability.md (copy it into docs/stability.md); every run's
# directory, log and summary stay under OUT. Each run holds its learning rate constant
# (--lr_schedule step; the quickstart's cosine decay would shrink it over the short runs, and
# the question here is whether a given lr diverges).
#
#   bench/stability.sh [options]
#     --iterations N   iterations per run (default 600)
#     --jobs J         runs at a time, 1 CPU thread each (default: the number of cores)
#     --seeds "S..."   seeds (default "1 2 3")
#     --lrs "L..."     learning rates (default "1e-4 3e-4 1e-3")
#     --steps "K..."   SGLD steps (default "5 10 20")
#     --l2 "W..."      L2 energy weights (default "0 0.1")
#     --out DIR        where the runs go (default runs/stability)
#     --jem PATH       the jem binary (default build/jem)
#     --guard_limit X  |loss| or |E| above X counts as divergence (default: the config's)
#     --table-only     run nothing: write the table of the runs already in OUT (a partial matrix)
#   Runs that already have a result in OUT are not run again, so an interrupted matrix resumes.
#   The full grid is 3 x 3 x 2 x 3 x 2 = 108 runs, of which those with the guard on are only
#   computed where the guard-off run diverged (see run_cell): 54 runs plus one per divergence.
set -euo pipefail
cd "$(dirname "$0")/.."

iterations=600 jobs=$(nproc) seeds="1 2 3" lrs="1e-4 3e-4 1e-3" steps="5 10 20" l2s="0 0.1"
out=runs/stability jem=build/jem table_only=0 guard_limit=
while [[ $# -gt 0 ]]; do
  case "$1" in
    --iterations) iterations="$2"; shift 2 ;;
    --jobs) jobs="$2"; shift 2 ;;
    --seeds) seeds="$2"; shift 2 ;;
    --lrs) lrs="$2"; shift 2 ;;
    --steps) steps="$2"; shift 2 ;;
    --l2) l2s="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --jem) jem="$2"; shift 2 ;;
    --guard_limit) guard_limit="$2"; shift 2 ;;
    --table-only) table_only=1; shift ;;
    *) echo "stability.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
[[ $table_only == 1 || -x "$jem" ]] || { echo "stability.sh: $jem is not an executable (build it, or --jem PATH)" >&2; exit 2; }
mkdir -p "$out"

# One run: its result is OUT/NAME.result, a single line "exit_code" written when the run ends.
run_one() {
  local jem="$1" out="$2" iterations="$3" lr="$4" k="$5" l2="$6" seed="$7" guard="$8"
  local name="lr${lr}_k${k}_l2${l2}_s${seed}_guard${guard}"
  [[ -f "$out/$name.result" ]] && return 0
  rm -rf "${out:?}/$name"
  local rc=0 limit=()
  [[ -n "$JEM_GUARD_LIMIT" ]] && limit=(--guard_limit "$JEM_GUARD_LIMIT")
  "$jem" train --config configs/fashion-mnist.toml --out "$out/$name" --threads 1 --device cpu \
    --lr "$lr" --lr_schedule step --sgld_steps "$k" --w_l2 "$l2" --seed "$seed" --guard "$guard" \
    --max_iters "$iterations" --max_minutes 0 --eval_every 1000 --log_every 50 \
    --sample_every 1000000 --ckpt_every 100 "${limit[@]}" > "$out/$name.log" 2>&1 || rc=$?
  echo "$rc" > "$out/$name.result"
  echo "stability: $name exit $rc"
}
# One cell (lr, steps, l2, seed): the guard-off run first. When it finishes (it never
# diverged), the guard-on run would be the same run bit for bit: the guard acts only on a
# divergence, and every random number is keyed by (seed, iteration, ...). Its result is then
# copied (summary.json, with a DERIVED_FROM file naming the source) instead of computed, which
# halves the matrix on the cells that are stable. A guard-off run that diverged (or failed) is
# followed by a real guard-on run.
run_cell() {
  local jem="$1" out="$2" iterations="$3" lr="$4" k="$5" l2="$6" seed="$7"
  local off="lr${lr}_k${k}_l2${l2}_s${seed}_guardfalse" on="lr${lr}_k${k}_l2${l2}_s${seed}_guardtrue"
  run_one "$jem" "$out" "$iterations" "$lr" "$k" "$l2" "$seed" false
  [[ -f "$out/$on.result" ]] && return 0
  if [[ "$(cat "$out/$off.result")" == 0 && -f "$out/$off/summary.json" ]]; then
    rm -rf "${out:?}/$on"
    mkdir -p "$out/$on"
    cp "$out/$off/summary.json" "$out/$on/summary.json"
    echo "$off" > "$out/$on/DERIVED_FROM"
    echo 0 > "$out/$on.result"
    echo "stability: $on = $off (no divergence: the guard would not have acted)"
  else
    run_one "$jem" "$out" "$iterations" "$lr" "$k" "$l2" "$seed" true
  fi
}
export -f run_one run_cell
export JEM_GUARD_LIMIT="$guard_limit"

if [[ $table_only == 0 ]]; then
  for lr in $lrs; do for k in $steps; do for l2 in $l2s; do for seed in $seeds; do
    echo "$jem $out $iterations $lr $k $l2 $seed"
  done; done; done; done | xargs -P "$jobs" -L 1 bash -c 'run_cell "$@"' _
fi

python3 - "$out" "$iterations" "${guard_limit:-the config default}" <<'EOF'
import json, os, re, sys
from collections import defaultdict
out, iterations, limit = sys.argv[1], sys.argv[2], sys.argv[3]
cells = defaultdict(list)
for f in sorted(os.listdir(out)):
    m = re.match(r"lr(.+)_k(\d+)_l2(.+)_s(\d+)_guard(true|false)\.result$", f)
    if not m:
        continue
    lr, k, l2, seed, guard = m.groups()
    rc = int(open(os.path.join(out, f)).read().strip() or 1)
    summary = os.path.join(out, f[: -len(".result")], "summary.json")
    s = json.load(open(summary)) if rc == 0 and os.path.exists(summary) else {}
    if s.get("stopped_early"):  # stopped by a signal before its last iteration: not a result
        continue
    at = None
    if rc != 0:  # the iteration of the divergence that ended the run, and its rollbacks, from its log
        log = os.path.join(out, f[: -len(".result")] + ".log")
        text = open(log, errors="replace").read() if os.path.exists(log) else ""
        hits = re.findall(r"divergence at iteration (\d+)", text)
        at = int(hits[-1]) if hits else None
        s["rollbacks"] = len(re.findall(r"; rollback \d+/", text))
    cells[(float(lr), int(k), float(l2), guard)].append(
        dict(seed=int(seed), diverged=rc != 0, rollbacks=s.get("rollbacks", 0), acc=s.get("test_accuracy"),
             peak=s.get("peak_abs_energy"), at=at))
lines = [f"# Stability matrix: quickstart model, {iterations} iterations per run, guard_limit {limit}", "",
         "Diverged: runs that ended with an error (guard off: the first divergence; guard on: "
         "retries exhausted). Rollbacks: the guard's restarts, summed over seeds (those of runs that "
         "died included). Accuracy: mean "
         "test accuracy of the runs that finished. Peak |E|: the largest max |E| of a kept iteration, "
         "over the runs that finished (how close they came to guard_limit). Died at: the iteration "
         "of each run's fatal divergence.", "",
         "| lr | SGLD steps | w_l2 | guard | diverged | died at | rollbacks | test accuracy | peak \\|E\\| |",
         "|---|---|---|---|---|---|---|---|---|"]
saved = 0
for key in sorted(cells):
    lr, k, l2, guard = key
    runs = cells[key]
    div = sum(r["diverged"] for r in runs)
    accs = [r["acc"] for r in runs if r["acc"] is not None]
    acc = f"{100 * sum(accs) / len(accs):.1f}%" if accs else "-"
    peaks = [r["peak"] for r in runs if r["peak"] is not None]
    peak = f"{max(peaks):.3g}" if peaks else "-"
    died = ", ".join(str(r["at"]) for r in runs if r["at"] is not None) or "-"
    lines.append(f"| {lr:g} | {k} | {l2:g} | {guard} | {div}/{len(runs)} | {died} | "
                 f"{sum(r['rollbacks'] for r in runs)} | {acc} | {peak} |")
    if guard == "true":
        off = {r["seed"]: r for r in cells.get((lr, k, l2, "false"), [])}
        saved += sum(1 for r in runs if not r["diverged"] and off.get(r["seed"], {}).get("diverged"))
lines += ["", f"Runs the guard saved (diverged with the guard off, finished with it on): {saved}."]
open(os.path.join(out, "stability.md"), "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
