#!/usr/bin/env bash
# A hash of the sources a build is made from: CMakeLists.txt and the cuda/, kernels/, src/,
# include/, tests/, bench/ and fuzz/ trees, every file's path and contents, in path order.
# gpu-bundle.sh writes it into the bundle's manifest; gpu-check.sh compares it with the checkout
# it runs in, so that a bundle made from other sources is reported instead of tested. The files
# are those the device tool copies (git's tracked and not-ignored untracked files) where git
# knows the tree, else every file (the GPU machine's copy has no .git, and nothing ignored).
#
#   scripts/source-hash.sh [DIR]      (default: this checkout)
set -euo pipefail
cd "${1:-$(dirname "$0")/..}"
dirs=(CMakeLists.txt cuda kernels src include tests bench fuzz)
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  git ls-files -co --exclude-standard -z -- "${dirs[@]}"
else
  find "${dirs[@]}" -type f ! -name '*.pyc' ! -path '*/__pycache__/*' -print0
fi | LC_ALL=C sort -z | xargs -0 sha1sum | sha1sum | cut -c1-40
