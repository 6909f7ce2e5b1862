#!/usr/bin/env bash
# Installs every Debian package jem needs to build, test and run its quickstart. Idempotent:
# packages already present are not touched, and apt-get runs only when something is missing.
#   scripts/install-deps.sh            build + test + quickstart dependencies
#   scripts/install-deps.sh --bench    also python3-torch (bench/pytorch_jem.py)
#   scripts/install-deps.sh --gpu-bundle  also patchelf, xz, file, debootstrap (gpu-bundle.sh, gpu-rehearsal.sh)
set -euo pipefail

packages=(
  build-essential cmake pkg-config git
  libopenblas-dev            # sgemm for the CPU backend
  libcli11-dev               # command line and TOML configs
  nlohmann-json3-dev         # safetensors headers, metrics
  zlib1g-dev libpng-dev      # gzip IDX datasets, PNG sample grids
  libmatio-dev               # SVHN .mat files
  libgtest-dev libgmock-dev  # tests
  libbenchmark-dev           # bench/
  libopenmpi-dev openmpi-bin # multi-process training (mpirun) and its tests
  dataset-fashion-mnist      # the quickstart's data
)
case "${1:-}" in
  --bench) packages+=(python3-torch python3-numpy) ;;
  --gpu-bundle) packages+=(patchelf xz-utils file debootstrap) ;;
  "") ;;
  *) echo "usage: $0 [--bench|--gpu-bundle]" >&2; exit 2 ;;
esac

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if ((${#missing[@]} == 0)); then
  echo "install-deps: all ${#packages[@]} packages present"
  exit 0
fi

echo "install-deps: installing ${missing[*]}"
SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
