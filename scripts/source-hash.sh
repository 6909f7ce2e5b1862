#!/usr/bin/env bash
# A hash of the sources a build is made from: CMakeLists.txt and the cuda/, kernels/, src/,
# include/, tests/, bench/ and fuzz/ trees, every file's path and contents, in path order.
# gpu-bundle.sh writes it into the bundle's manifest; gpu-check.sh compares it with the checkout
# it runs in, so that a bundle made from other sources is reported instead of tested. Needs no
# git (the GPU machine's copy of the tree has no .git).
#
#   scripts/source-hash.sh [DIR]      (default: this checkout)
set -euo pipefail
cd "${1:-$(dirname "$0")/..}"
find CMakeLists.txt cuda kernels src include tests bench fuzz -type f \
  ! -name '*.pyc' ! -path '*/__pycache__/*' -print0 |
  LC_ALL=C sort -z | xargs -0 sha1sum | sha1sum | cut -c1-40
