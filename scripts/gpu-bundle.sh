#!/usr/bin/env bash
# Packs a CUDA build made on this machine for a GPU machine that cannot build it: the lent GPU
# machines (the device tool) have the CUDA toolkit, cuDNN, cuBLAS and NCCL (in PyTorch's wheels)
# but none of jem's Debian dependencies (OpenBLAS, CLI11, GoogleTest, Google Benchmark, libpng,
# matio, Open MPI), and cannot download them. So the build is made here and travels with the
# shared libraries it needs; scripts/gpu-check.sh finds the bundle and runs it.
#
#   scripts/gpu-bundle.sh [BUILD_DIR] [BUNDLE_DIR]     (defaults: build-gpu, .gpu-bundle)
#
# BUILD_DIR is configured when it does not exist (Release, CUDA backend for sm_90, stripped
# executables) and brought up to date (cmake --build) in any case; an existing BUILD_DIR must be
# such a tree.
# BUNDLE_DIR (git-ignored) then holds build.tar.xz (the executables, ctest's files, lib/ with
# every shared library they load but glibc, the C++ runtime and the CUDA libraries the GPU
# machine provides, lib-fallback/ with the C++ runtime and lib-glibc/ with glibc and its loader,
# for a machine whose own are older) and manifest.txt. Each executable's program interpreter is
# SOURCE_DIR/BUNDLE_DIR/ld/ld-linux-x86-64.so.2, a link that gpu-check.sh makes. Each executable's RPATH is set to $ORIGIN/.../BUNDLE_DIR/lib, so the bundled
# libraries win over the machine's without LD_LIBRARY_PATH (which would reach PyTorch too).
# Send it with the device tool's carry: ["BUNDLE_DIR"]. Needs patchelf and xz
# (scripts/install-deps.sh --gpu-bundle).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build-gpu}
bundle=${2:-.gpu-bundle}
[[ $build != /* && $bundle != /* ]] || { echo "gpu-bundle: give BUILD_DIR and BUNDLE_DIR relative to the checkout" >&2; exit 2; }

die() { echo "gpu-bundle: $*" >&2; exit 1; }
command -v patchelf >/dev/null || die "patchelf not found (scripts/install-deps.sh --gpu-bundle)"
command -v xz >/dev/null || die "xz not found (scripts/install-deps.sh --gpu-bundle)"
if [[ ! -e $build ]]; then
  # The emulated-device tests (tests/emulation) are for machines without a GPU: not bundled.
  cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DJEM_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
    -DJEM_EMULATED_DEVICE_TESTS=OFF -DCMAKE_EXE_LINKER_FLAGS=-s >&2 || die "configuring $build failed"
fi
[[ -f $build/CMakeCache.txt ]] || die "$build is not a CMake build directory"
cmake --build "$build" -j"$(nproc)" >&2 || die "building $build failed"
arch=$(sed -n 's/^CMAKE_CUDA_ARCHITECTURES:[A-Z]*=//p' "$build/CMakeCache.txt")
[[ $arch == *90* ]] || die "$build targets CUDA architectures '$arch', not sm_90 (-DCMAKE_CUDA_ARCHITECTURES=90)"
[[ -x $build/jem ]] || die "$build/jem is missing: build first (cmake --build $build)"
ldd "$build/jem" | grep -q 'libcudart' || die "$build/jem has no CUDA backend (configure with -DJEM_CUDA=ON)"
src=$(sed -n 's/^CMAKE_HOME_DIRECTORY:INTERNAL=//p' "$build/CMakeCache.txt")
[[ $src == "$PWD" ]] || die "$build was configured from $src, not from this checkout ($PWD)"

# The libraries the GPU machine provides (and that must match its driver): the CUDA runtime,
# cuBLAS, cuDNN, NCCL, NVRTC; and glibc's, which cannot be mixed with another loader.
provided='^(libcuda|libcudart|libcublas|libcublasLt|libcudnn[a-z_]*|libnccl|libnvrtc[a-z-]*|libnvJitLink)\.so'
glibc='^(libc|libm|libdl|libpthread|librt|libresolv|libutil|libanl|ld-linux-x86-64)\.so'
loader=/lib64/ld-linux-x86-64.so.2
[[ -e $loader ]] || die "no $loader: gpu-bundle.sh packs x86-64 builds"

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/lib" "$stage/lib-fallback" "$stage/lib-glibc" "$stage/$build"

# Everything ctest and the scripts need from the build tree, without objects and archives.
(cd "$build" && find . -type f ! -name '*.o' ! -name '*.a' ! -name '*.d' ! -name '*.make' \
   ! -name 'Makefile' ! -name '*.ninja' ! -path './CMakeFiles/*' ! -path '*/CMakeFiles/*.dir/*' \
   ! -name '*.log' -print0) | (cd "$build" && xargs -0 cp --parents -t "$stage/$build")

exes=()
while IFS= read -r -d '' f; do
  if file -b "$f" | grep -q '^ELF .*executable\|^ELF .*pie executable\|^ELF .*shared object'; then
    exes+=("$f")
  fi
done < <(find "$stage/$build" -type f -perm -u+x -print0)
((${#exes[@]} > 0)) || die "no executables found under $build"

# Copy each non-provided library the executables load (the whole closure, as ldd resolves it).
for f in "${exes[@]}"; do
  ldd "$f" | awk '$2 == "=>" && $3 ~ /^\// { print $1, $3 }'
done | sort -u | while read -r soname path; do
  # glibc: the GPU machine's, unless it is older than this one's (then gpu-check.sh switches to
  # this copy of it, loader and all: the two cannot be mixed).
  if [[ $soname =~ $glibc ]]; then
    cp -L "$path" "$stage/lib-glibc/$soname"
    continue
  fi
  [[ $soname =~ $provided ]] && continue
  # The C++ runtime: the GPU machine's own when it is recent enough (its CUDA libraries load into
  # the same process and may need it), ours only as a fallback (gpu-check.sh decides).
  if [[ $soname =~ ^(libstdc\+\+|libgcc_s)\.so ]]; then
    cp -L "$path" "$stage/lib-fallback/$soname"
  else
    cp -L "$path" "$stage/lib/$soname"
  fi
done
missing=$(for f in "${exes[@]}"; do ldd "$f" | grep 'not found' || true; done | sort -u)
[[ -z $missing ]] || die "libraries not found here: $missing"

# RPATH (not RUNPATH: it also covers the libraries' own dependencies) to the bundle's lib/.
for f in "${exes[@]}"; do
  rel=$(realpath --relative-to="$(dirname "$f")" "$stage")
  patchelf --force-rpath --set-rpath "\$ORIGIN/$rel/$bundle/lib" "$f"
done
for l in "$stage"/lib/*; do patchelf --force-rpath --set-rpath '$ORIGIN' "$l" 2>/dev/null || true; done
# The program interpreter: a link that gpu-check.sh points at the machine's loader or at the
# bundle's (lib-glibc/), under the checkout's path here (which gpu-check.sh makes lead there).
cp -L "$loader" "$stage/lib-glibc/$(basename "$loader")"
for f in "${exes[@]}"; do
  if patchelf --print-interpreter "$f" >/dev/null 2>&1; then
    patchelf --set-interpreter "$src/$bundle/ld/$(basename "$loader")" "$f"
  fi
done

mkdir -p "$bundle"
{
  echo "source_dir=$src"
  echo "build_dir=$build"
  echo "commit=$(git rev-parse HEAD)$(git diff --quiet HEAD || echo '+dirty')"
  echo "source_hash=$(scripts/source-hash.sh)"
  echo "made=$(date -u +%FT%TZ) on $(. /etc/os-release && echo "$PRETTY_NAME"), $(ldd --version | head -1)"
  echo "nvcc=$(sed -n 's/^set(CMAKE_CUDA_COMPILER_VERSION "\(.*\)")/\1/p' "$build"/CMakeFiles/*/CMakeCUDACompiler.cmake | head -1)"
  echo "cuda_architectures=$arch"
  echo "executables=${#exes[@]}"
  echo "libraries=$(cd "$stage/lib" && ls | tr '\n' ' ')"
  echo "fallback_libraries=$(cd "$stage/lib-fallback" && ls | tr '\n' ' ')"
  echo "glibc_libraries=$(cd "$stage/lib-glibc" && ls | tr '\n' ' ')"
  echo "interpreter=$src/$bundle/ld/$(basename "$loader")"
} >"$bundle/manifest.txt"
mkdir -p "$stage/$bundle"
mv "$stage/lib" "$stage/lib-fallback" "$stage/lib-glibc" "$stage/$bundle/"
(cd "$stage" && tar -cf - "$build" "$bundle/lib" "$bundle/lib-fallback" "$bundle/lib-glibc") |
  xz -T0 -6 >"$bundle/build.tar.xz.part"
mv "$bundle/build.tar.xz.part" "$bundle/build.tar.xz"
echo "gpu-bundle: $bundle/build.tar.xz: ${#exes[@]} executables, $(ls "$stage/$bundle/lib" | wc -l) libraries," \
  "$(du -h "$bundle/build.tar.xz" | cut -f1) (send it with carry: [\"$bundle\"])" >&2
