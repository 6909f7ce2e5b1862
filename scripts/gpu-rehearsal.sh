#!/usr/bin/env bash
# A rehearsal of scripts/gpu-check.sh before a GPU lease is spent on it: runs the check with the
# bundle of scripts/gpu-bundle.sh inside a minimal Debian root (debootstrap: no compiler,
# OpenBLAS, MPI or jem dependency in it; the CUDA toolkit's folder mounted read-only, as a GPU
# machine has one), from a checkout at another path than this one. There is no GPU, so the CUDA
# tests skip (JEM_GPU_CHECK_REQUIRE_CUDA=0) and the GPU benchmarks fail; what it proves is that
# the bundle is complete and made from these sources: it unpacks, every executable finds every
# library, and every CPU test passes.
#
#   scripts/gpu-rehearsal.sh [OUT_DIR] [ROOT_DIR]   (defaults: /tmp/gpu-rehearsal, /var/tmp/jem-rehearsal-root-SUITE)
#
# JEM_REHEARSAL_SUITE=bullseye rehearses on an older Debian (glibc 2.31, older than the build's
# 2.36: gpu-check.sh must switch to the bundle's glibc); JEM_GPU_CHECK_GLIBC=bundle makes it use
# the bundle's glibc on any machine.
#
# Needs root, debootstrap and a Debian mirror (scripts/install-deps.sh --gpu-bundle); the root is
# made once (about a minute) and kept. Exits 0 when the unpack, library, info and ctest steps
# succeeded.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-/tmp/gpu-rehearsal}
suite=${JEM_REHEARSAL_SUITE:-bookworm}
root=${2:-/var/tmp/jem-rehearsal-root-$suite}
cuda=${CUDA_HOME:-/usr/local/cuda}

die() { echo "gpu-rehearsal: $*" >&2; exit 1; }
[[ $(id -u) -eq 0 ]] || die "needs root (chroot and bind mounts)"
[[ -f .gpu-bundle/build.tar.xz ]] || die "no .gpu-bundle/build.tar.xz: run scripts/gpu-bundle.sh first"
[[ -d $cuda ]] || die "no CUDA toolkit at $cuda (set CUDA_HOME)"

if [[ ! -x $root/usr/bin/ctest && ! -x $root/usr/local/bin/ctest ]]; then
  command -v debootstrap >/dev/null || die "debootstrap not found (scripts/install-deps.sh --gpu-bundle)"
  echo "gpu-rehearsal: making a minimal Debian $suite root in $root" >&2
  rm -rf "$root"
  if [[ $suite == bookworm ]]; then
    debootstrap --variant=minbase --include=python3,xz-utils,procps,cmake "$suite" "$root" \
      http://deb.debian.org/debian >"$root.log" 2>&1 || die "debootstrap failed (see $root.log)"
  else
    # An older Debian: its CMake predates ctest --test-dir, so CMake comes from PyPI, as on the
    # GPU machines.
    debootstrap --variant=minbase --include=python3,python3-pip,xz-utils,procps "$suite" "$root" \
      http://deb.debian.org/debian >"$root.log" 2>&1 || die "debootstrap failed (see $root.log)"
    # Downloaded by this machine's pip (its network settings), installed offline in the root.
    mkdir -p "$root/tmp/wheels"
    python3 -m pip download -q --no-deps --only-binary=:all: --platform manylinux2014_x86_64 \
      --python-version 3 --implementation py -d "$root/tmp/wheels" cmake >>"$root.log" 2>&1 ||
      die "pip download cmake failed (see $root.log)"
    chroot "$root" sh -c 'pip3 install -q --no-index /tmp/wheels/cmake-*.whl' >>"$root.log" 2>&1 ||
      die "pip install cmake failed (see $root.log)"
  fi
fi

# A fresh copy of the checkout (what the device tool sends: tracked and untracked files that
# git does not ignore, plus the bundle) at a path the build never had.
rm -rf "$root/repo" "$root/tmp/out" "$root/work"
mkdir -p "$root/repo" "$root/usr/local/cuda"
git ls-files -co --exclude-standard -z | xargs -0 cp --parents -t "$root/repo"
cp -r .gpu-bundle "$root/repo/"

mounts=()
cleanup() { for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do umount "${mounts[$i]}" || true; done; }
trap cleanup EXIT
mount --bind "$cuda" "$root/usr/local/cuda" && mounts+=("$root/usr/local/cuda")
mount -o remount,bind,ro "$root/usr/local/cuda"
mount -t proc proc "$root/proc" && mounts+=("$root/proc")
mount --bind /dev "$root/dev" && mounts+=("$root/dev")

rc=0
chroot "$root" env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/root JEM_GPU_CHECK_GLIBC="${JEM_GPU_CHECK_GLIBC:-}" \
  JEM_GPU_CHECK_REQUIRE_CUDA=0 JEM_GPU_CHECK_CTEST_CPU_S=300 \
  bash -c 'cd /repo && scripts/gpu-check.sh /tmp/out' || rc=$?
rm -rf "$out"
mkdir -p "$out"
cp "$root/tmp/out/summary.json" "$out/"
tar -xzf "$root/tmp/out/results.tar.gz" -C "$out"
echo "gpu-rehearsal: gpu-check exited $rc (expected non-zero: no GPU); results in $out" >&2

# The steps that need no GPU must have succeeded, and no test may have failed.
python3 - "$out/summary.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
steps = {x["name"]: x["exit_code"] for x in s["steps"]}
bad = [n for n in ("unpack", "bundle_source", "libraries", "info", "ctest_cuda", "ctest_cpu")
       if steps.get(n) != 0]
print(f"gpu-rehearsal: ctest {s['ctest']['passed']} passed, {s['ctest']['failed']} failed, "
      f"{s['ctest']['skipped']} skipped of {s['ctest']['total']}", file=sys.stderr)
if bad or s["ctest"]["failed"] or s["ctest"]["total"] == 0:
    print(f"gpu-rehearsal: FAILED: steps {bad}, tests {s['ctest']['failed_tests']}", file=sys.stderr)
    sys.exit(1)
print("gpu-rehearsal: ok: the bundle is complete", file=sys.stderr)
PY
