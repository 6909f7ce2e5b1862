#!/usr/bin/env bash
# jem vs PyTorch, the same JEM iteration on the same machine: `jem bench` and
# bench/pytorch_jem.py run alternately (ABBA order: jem first in odd rounds, PyTorch first in even
# ones, so a slow drift of the machine's load hits both alike), several rounds, with the same
# config, flags and thread count. Prints each round, then the median over rounds of each
# program's median ms/iteration, per phase, and the ratio PyTorch / jem (> 1: jem is faster).
#
#   bench/compare.sh [options] [--] [flags for both programs]
#     --rounds N       rounds (default 5)
#     --threads N      CPU threads of both (jem --threads, torch.set_num_threads; default 1)
#     --device D       cpu (default) | cuda | cuda:N
#     --tf32 on|off    GPU math of both (jem: JEM_CUDA_MATH=tf32|fp32; default on)
#     --jem PATH       the jem binary (default build/jem)
#     --python PATH    the Python with torch (default /usr/bin/python3: Debian's python3-torch)
#     --torch-channels-last   PyTorch's network in channels-last memory format (the counterpart
#                      of jem's JEM_CUDA_LAYOUT=nhwc, which the caller sets for jem)
#     --outdir DIR     keep the JSON results here (default: a temp dir, removed)
#   Every other flag goes to both programs, e.g.
#     bench/compare.sh --config configs/fashion-mnist.toml --iterations 5 --warmup 1
#     bench/compare.sh --config configs/cifar10.toml --width 2 --iterations 2 --warmup 1
#     bench/compare.sh --device cuda --tf32 on --config configs/cifar10.toml --iterations 20
set -euo pipefail

rounds=5 threads=1 device=cpu tf32=on jem=build/jem python=/usr/bin/python3 outdir=""
shared=() torch_only=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --rounds) rounds="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --device) device="$2"; shift 2 ;;
    --tf32) tf32="$2"; shift 2 ;;
    --jem) jem="$2"; shift 2 ;;
    --python) python="$2"; shift 2 ;;
    --torch-channels-last) torch_only+=(--channels-last); shift ;;
    --outdir) outdir="$2"; shift 2 ;;
    --) shift; shared+=("$@"); break ;;
    *) shared+=("$1"); shift ;;
  esac
done
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
[[ -x "$jem" ]] || { echo "compare.sh: $jem is not an executable (build it, or pass --jem PATH)" >&2; exit 1; }
[[ "$rounds" =~ ^[1-9][0-9]*$ ]] || { echo "compare.sh: --rounds $rounds must be a positive integer" >&2; exit 1; }
[[ "$threads" =~ ^[0-9]+$ ]] || { echo "compare.sh: --threads $threads must be an integer >= 0" >&2; exit 1; }
case "$tf32" in on) math=tf32 ;; off) math=fp32 ;; *) echo "compare.sh: --tf32 on|off" >&2; exit 1 ;; esac
"$python" -c "import torch" 2>/dev/null || { echo "compare.sh: $python has no torch module (pass --python PATH)" >&2; exit 1; }
if [[ -z "$outdir" ]]; then
  outdir="$(mktemp -d)"
  trap 'rm -rf "$outdir"' EXIT
fi
mkdir -p "$outdir"

# Both programs see the same thread settings; OpenBLAS and MKL inherit OMP_NUM_THREADS.
export OMP_NUM_THREADS="$threads"
[[ "$threads" == 0 ]] && unset OMP_NUM_THREADS
run_jem() {
  JEM_CUDA_MATH="$math" "$jem" bench --device "$device" --threads "$threads" "${shared[@]}" \
    --json "$outdir/jem_$1.json" > "$outdir/jem_$1.log"
}
run_torch() {
  "$python" "$here/pytorch_jem.py" --device "$device" --threads "$threads" --tf32 "$tf32" \
    "${torch_only[@]}" "${shared[@]}" --json "$outdir/torch_$1.json" > "$outdir/torch_$1.log"
}
for ((r = 1; r <= rounds; ++r)); do
  if ((r % 2)); then run_jem "$r"; run_torch "$r"; else run_torch "$r"; run_jem "$r"; fi
  "$python" - "$outdir" "$r" <<'EOF'
import json, sys
d, r = sys.argv[1], sys.argv[2]
j = json.load(open(f"{d}/jem_{r}.json"))["ms_per_iteration"]["total"]
t = json.load(open(f"{d}/torch_{r}.json"))["ms_per_iteration"]["total"]
print(f"round {r}: jem {j:.1f} ms/iteration, pytorch {t:.1f} ms/iteration, ratio {t / j:.3f}")
EOF
done
"$python" - "$outdir" "$rounds" <<'EOF'
import json, statistics, sys
d, n = sys.argv[1], int(sys.argv[2])
runs = {p: [json.load(open(f"{d}/{p}_{r}.json")) for r in range(1, n + 1)] for p in ("jem", "torch")}
first = runs["jem"][0]
print(f"\n{first['model']}, batch {first['batch_size']} + p(x) {first['px_batch_size']}, "
      f"{first['sgld_chains']} chains x {first['sgld_steps']} SGLD steps, {n} rounds of "
      f"{first['iterations']} timed iterations")
print(f"jem:     {first['backend']}")
print(f"pytorch: {runs['torch'][0]['backend']}")
print(f"{'median ms/iteration':<22}{'jem':>12}{'pytorch':>12}{'pytorch/jem':>13}")
for phase in ("sgld", "step", "optimizer", "total"):
    j = statistics.median(x["ms_per_iteration"][phase] for x in runs["jem"])
    t = statistics.median(x["ms_per_iteration"][phase] for x in runs["torch"])
    print(f"{phase:<22}{j:>12.2f}{t:>12.2f}{t / j if j > 0 else float('nan'):>13.3f}")
EOF
