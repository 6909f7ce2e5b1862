#!/usr/bin/env bash
# The NCCL checks of a GPU machine (scripts/gpu-check.sh runs this):
#   1. a 1-GPU job through the NCCL path (world size 1, --comm nccl), which must log its memory
#      plan and allocate nothing inside its iterations;
#   2. with 2 or more GPUs, a 2-GPU job under mpirun (NCCL chosen automatically), whose
#      parameters after 5 iterations with the buffer off must match the 1-GPU job's.
#
#   scripts/nccl-check.sh BUILD_DIR WORK_DIR
# Exits non-zero when a check fails. The jobs are tiny (WRN-10-1 on 8x8 synthetic digits).
set -euo pipefail
if [[ $# -ne 2 ]]; then
  echo "usage: $0 BUILD_DIR WORK_DIR" >&2
  exit 2
fi
build=$1 work=$2
mkdir -p "$work/data"
"$build/tests/mpi/dist_driver" data "$work/data"
cat >"$work/tiny.toml" <<TOML
dataset = "mnist"
data_dir = "$work/data"
device = "cuda"
n_valid = 40
batch_size = 8
depth = 10
width = 1
buffer_size = 100
reinit_freq = 1.0
sgld_steps = 3
augment = false
max_iters = 5
log_every = 1
eval_batch = 64
TOML
# FP32 math: TF32 convolutions would differ between batch shapes by far more than the tolerance.
export JEM_CUDA_MATH=fp32
# NCCL's own reason when its set-up fails (else the log holds only "unhandled system error").
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
ck=checkpoints/ckpt_000000005.safetensors
mpi_flags=()
if command -v mpirun >/dev/null && mpirun --version 2>&1 | grep -qE "Open MPI|OpenRTE"; then
  mpi_flags+=(--oversubscribe --bind-to none)
  if [[ $(id -u) -eq 0 ]]; then mpi_flags+=(--allow-run-as-root); fi
fi

echo "== 1 GPU through NCCL"
"$build/jem" train --config "$work/tiny.toml" --out "$work/g1" --comm nccl
grep -q "data parallel over NCCL" "$work/g1/log.txt" || { echo "FAIL: the 1-GPU job did not use NCCL"; exit 1; }
grep "memory plan:" "$work/g1/log.txt" || { echo "FAIL: the 1-GPU job logged no memory plan"; exit 1; }
grep -q '"iteration_allocations": 0' "$work/g1/summary.json" ||
  { echo "FAIL: the 1-GPU job allocated device memory inside its iterations:"; cat "$work/g1/summary.json"; exit 1; }

gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
if ((gpus < 2)); then
  echo "== $gpus GPU(s): no 2-GPU job"
  exit 0
fi
echo "== 2 GPUs under mpirun"
mpirun -np 2 "${mpi_flags[@]}" "$build/jem" train --config "$work/tiny.toml" --out "$work/g2"
grep -q "data parallel over NCCL.*2 ranks" "$work/g2/log.txt" || { echo "FAIL: the 2-GPU job did not use NCCL"; exit 1; }
# 1e-4 relative: FP32 cuDNN algorithms differ between batch shapes (4 vs 8 rows) more than the
# CPU's GEMMs (the CPU test holds 1e-5), and some accumulate with atomics.
"$build/tests/mpi/dist_driver" compare "$work/g2/$ck" "$work/g1/$ck" --tol 1e-4 --what params
echo "nccl-check: ok"
