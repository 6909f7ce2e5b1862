#!/usr/bin/env bash
# Data-parallel training on one machine: NPROC processes started by mpirun, one per GPU (each
# takes the GPU of its local rank, and NCCL averages the gradient), or NPROC CPU processes with
# --device cpu (MPI averages it; each process gets cores / NPROC threads).
#
#   scripts/mpirun-train.sh NPROC CONFIG [jem train flags...]
#   scripts/mpirun-train.sh 8 configs/cifar10.toml --out runs/cifar10-8gpu
#   scripts/mpirun-train.sh 8 configs/cifar10.toml --resume runs/cifar10-8gpu   (any NPROC)
#
# The global batch stays the config's batch_size whatever NPROC is; rank 0 alone writes the run
# directory. JEM=path/to/jem overrides build/jem; MPIRUN_FLAGS adds flags for mpirun.
set -euo pipefail
if [[ $# -lt 2 ]]; then
  sed -n '2,12p' "$0" >&2
  exit 2
fi
nproc_=$1 config=$2
shift 2
jem=${JEM:-"$(cd "$(dirname "$0")/.." && pwd)/build/jem"}
flags=()
if mpirun --version 2>&1 | grep -qE "Open MPI|OpenRTE"; then
  # Open MPI binds each rank to one core by default: jem's threads (OpenMP, data prefetch) need more.
  flags+=(--bind-to none)
  if [[ $(id -u) -eq 0 ]]; then flags+=(--allow-run-as-root); fi
fi
# shellcheck disable=SC2086  # MPIRUN_FLAGS is a list of flags
exec mpirun -np "$nproc_" "${flags[@]}" ${MPIRUN_FLAGS:-} "$jem" train --config "$config" "$@"
