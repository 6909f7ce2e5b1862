#!/usr/bin/env bash
# Deviceless probe of cuDNN's graph-API fusions (bench/cudnn_fusion_probe): which of JEM's fused
# convolutions cuDNN proposes and builds plans for, on a GPU described by its cuDNN device
# properties (default configs/devices/h200.json), from a machine without a GPU.
#
#   scripts/cudnn-fusion-probe.sh [--build DIR] [--properties FILE] [--stub-libcuda] [-- PROBE ARGS]
#
# --build DIR       a CUDA build with the benchmarks (default build-gpu; gpu-bundle.sh's)
# --stub-libcuda    let cuDNN's runtime-compiled (fusion) engines take part: without a driver
#                   library cuDNN skips them before compiling anything. With the toolkit's stub
#                   libcuda.so (every call of which fails) they compile their kernels through
#                   NVRTC and fail only at loading them, with CUDA_ERROR_STUB_LIBRARY (34): cuDNN
#                   proposes the pattern for that GPU and compiles its kernels (whether they run
#                   only a GPU tells). The stub is given to this probe alone, through
#                   LD_LIBRARY_PATH; jem never loads it.
#                   About a minute per 30 runtime-compiled plans on 2 cores.
# PROBE ARGS        passed on, e.g. --json OUT.json --candidates 2 --shapes small
set -euo pipefail
cd "$(dirname "$0")/.."
build=build-gpu props=configs/devices/h200.json stub=false
while (($#)); do
  case $1 in
    --build) build=$2; shift 2 ;;
    --properties) props=$2; shift 2 ;;
    --stub-libcuda) stub=true; shift ;;
    --) shift; break ;;
    *) echo "usage: $0 [--build DIR] [--properties FILE] [--stub-libcuda] [-- PROBE ARGS]" >&2; exit 2 ;;
  esac
done
probe=$build/bench/cudnn_fusion_probe
[[ -x $probe ]] || { echo "$0: $probe not found: build with -DJEM_CUDA=ON and the benchmarks" >&2; exit 1; }
if $stub; then
  cuda=${CUDA_HOME:-/usr/local/cuda}
  [[ -f $cuda/lib64/stubs/libcuda.so ]] || { echo "$0: no stub at $cuda/lib64/stubs/libcuda.so" >&2; exit 1; }
  dir=$(mktemp -d)
  trap 'rm -rf "$dir"' EXIT
  ln -s "$cuda/lib64/stubs/libcuda.so" "$dir/libcuda.so.1"
  export LD_LIBRARY_PATH=$dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
"$probe" --device-properties "$props" "$@"
