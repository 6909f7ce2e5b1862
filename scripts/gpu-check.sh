#!/usr/bin/env bash
# The GPU check, one command for a GPU machine:
#  1. the build: the one scripts/gpu-bundle.sh packed on a development machine
#     (.gpu-bundle/build.tar.xz; the lent GPU machines have the CUDA libraries but none of jem's
#     other dependencies and cannot download them), or else a Release build for sm_90 made here
#     (build-gpu);
#  2. every test, the CUDA ones included (not the crash test, which CI runs, nor the mpirun tests
#     where there is no mpiexec), and the cuDNN algorithms the Wide-ResNet tests choose;
#  3. the NCCL checks (scripts/nccl-check.sh);
#  4. the GPU benchmarks: bench_ops' CUDA ops, jem bench of WRN-28-10 in TF32 and FP32, and
#     bench/compare.sh against PyTorch when python3 has a CUDA PyTorch;
#  5. with the time left: Nsight Compute's time per kernel of one timed WRN-28-10 iteration (the
#     custom kernels' share), and the custom kernels' tests under compute-sanitizer memcheck.
#
#   scripts/gpu-check.sh OUT_DIR
#
# Writes OUT_DIR/summary.json (step exit codes and timings, ctest counts and failed tests,
# benchmark files, headline numbers against the targets (scripts/gpu_check_headlines.py), the
# machine, nvidia-smi output) and OUT_DIR/results.tar.gz (logs/<step>.log,
# ctest-junit.xml, the benchmark JSON files, nvidia-smi.txt, jem-info.txt). Designed to finish
# within 8 minutes on one H200: every step runs under a time limit cut to what is left of a
# 7.5-minute budget, and a step that fails or times out does not stop the others (its exit code
# lands in the summary; 124 = timed out). Exits 0 when every step succeeded, 1 otherwise (after
# writing the summary).
set -euo pipefail

if [[ $# -ne 1 ]]; then
  echo "usage: $0 OUT_DIR" >&2
  exit 2
fi
mkdir -p "$1/logs"
out=$(cd "$1" && pwd)
cd "$(dirname "$0")/.."
build="build-gpu"
jobs=$(nproc)

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
start=$(now)
budget_s=450  # 7.5 minutes for the steps; the summary takes a second
left_s() { awk -v s="$start" -v n="$(now)" -v b="$budget_s" 'BEGIN { printf "%d", b - (n - s) }'; }

steps=()
declare -A step_rc step_s

# run_step NAME LIMIT_S COMMAND...: runs COMMAND with its output in logs/NAME.log, under
# min(LIMIT_S, time left); records the exit code and the wall time, never stops the script.
run_step() {
  local name=$1 limit=$2
  shift 2
  local left
  left=$(left_s)
  ((left < limit)) && limit=$left
  steps+=("$name")
  if ((limit < 5)); then
    echo "not run: the time budget is spent" >"$out/logs/$name.log"
    step_rc[$name]=124
    step_s[$name]=0.0
    return 0
  fi
  local t0 rc=0
  t0=$(now)
  timeout --kill-after=10 "$limit" "$@" >"$out/logs/$name.log" 2>&1 || rc=$?
  step_rc[$name]=$rc
  step_s[$name]=$(elapsed "$t0" "$(now)")
  echo "gpu-check: $name: exit $rc in ${step_s[$name]} s" >&2
}

# ---- the machine -----------------------------------------------------------------------------
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi >"$out/nvidia-smi.txt" 2>&1 || true
else
  echo "nvidia-smi not found" >"$out/nvidia-smi.txt"
fi

{
  echo "== os"; cat /etc/os-release 2>/dev/null | head -2; ldd --version 2>&1 | head -1
  echo "== nvcc"; nvcc --version 2>&1 | tail -2
  echo "== python3"; python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda,
    "cudnn", torch.backends.cudnn.version())' 2>&1 | tail -1
  echo "== mpiexec"; command -v mpiexec || echo "none"
} >"$out/logs/machine.log" 2>&1 || true

# ---- the build: unpack the bundle, or configure and build ------------------------------------
bundle=.gpu-bundle
if [[ -f $bundle/build.tar.xz ]]; then
  build=$(sed -n 's/^build_dir=//p' "$bundle/manifest.txt")
  src=$(sed -n 's/^source_dir=//p' "$bundle/manifest.txt")
  # ctest's files and the tests name the checkout by the path it had where it was built: make
  # that path lead here.
  run_step unpack 60 bash -c '
    set -e
    rm -rf "$2" "$3/lib" "$3/lib-fallback" "$3/lib-glibc" "$3/ld"
    if command -v xz >/dev/null; then
      tar -xJf "$3/build.tar.xz"
    else  # no xz here: Python reads it
      python3 -c "import sys, tarfile
kw = {\"filter\": \"data\"} if hasattr(tarfile, \"data_filter\") else {}
tarfile.open(sys.argv[1]).extractall(**kw)" "$3/build.tar.xz"
    fi
    if [[ $(realpath -m "$1") != "$PWD" ]]; then
      [[ ! -e $1 ]] || { echo "$1 exists and is not this checkout ($PWD)"; exit 1; }
      mkdir -p "$(dirname "$1")" && ln -s "$PWD" "$1"
      echo "linked $1 -> $PWD"
    fi
    cat "$3/manifest.txt"' unpack "$src" "$build" "$bundle"
  # cuDNN, cuBLAS, NCCL, NVRTC and the CUDA runtime come from this machine: the toolkit's
  # folders, or the NVIDIA wheels next to PyTorch.
  lib_dirs=()
  roots=(/usr/local/cuda/lib64 /usr/local/cuda/lib /usr/local/cuda/targets/x86_64-linux/lib /usr/lib/x86_64-linux-gnu)
  while IFS= read -r sp; do [[ -d $sp/nvidia ]] && roots+=("$sp/nvidia"); done < <(
    python3 -c 'import site; print("\n".join(site.getsitepackages()))' 2>/dev/null || true)
  for so in libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libcudnn.so.9 libnccl.so.2 libnvrtc.so.13; do
    hit=$(find "${roots[@]}" -maxdepth 4 -name "$so" 2>/dev/null | head -1 || true)
    [[ -n $hit ]] && lib_dirs+=("$(dirname "$hit")")
  done
  if ((${#lib_dirs[@]} > 0)); then
    LD_LIBRARY_PATH=$(printf '%s\n' "${lib_dirs[@]}" | awk '!seen[$0]++' | paste -sd:)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    export LD_LIBRARY_PATH
  fi
  # glibc and the C++ runtime are this machine's, unless older than the build needs: then the
  # bundle's. The executables' interpreter is the link $bundle/ld/ld-linux-x86-64.so.2; with the
  # bundle's glibc, its libraries join lib/ (which the executables' RPATH names first), so that
  # no other program here sees them.
  mkdir -p "$bundle/ld"
  ln -sfn /lib64/ld-linux-x86-64.so.2 "$bundle/ld/ld-linux-x86-64.so.2"
  if [[ ${JEM_GPU_CHECK_GLIBC:-} == bundle ]] ||
    ldd "$build/jem" 2>&1 | grep -qE "GLIBC_[0-9.]+' not found"; then
    echo "gpu-check: using the bundle's glibc (this machine's is older than the build's, or JEM_GPU_CHECK_GLIBC=bundle)" >&2
    ln -sfn "$PWD/$bundle/lib-glibc/ld-linux-x86-64.so.2" "$bundle/ld/ld-linux-x86-64.so.2"
    cp "$bundle"/lib-glibc/* "$bundle"/lib-fallback/* "$bundle/lib/"
  elif ldd "$build/jem" 2>&1 | grep -qE '(libstdc\+\+|libgcc_s)[^ ]* => not found|(GLIBCXX|CXXABI|GCC)_[0-9.]+. not found'; then
    echo "gpu-check: this machine's C++ runtime is older than the build's: using the bundle's" >&2
    cp "$bundle"/lib-fallback/* "$bundle/lib/"
  fi
  # Every executable must find every library before anything runs.
  run_step libraries 30 bash -c '
    echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
    bad=0
    # Listed by the loader the executables run with (ldd would use this machine'"'"'s).
    ld=$2/ld/ld-linux-x86-64.so.2
    echo "interpreter: $(readlink "$ld")"
    for f in "$1/jem" "$1"/tests/test_* "$1"/tests/mpi/dist_driver "$1"/bench/bench_*; do
      [[ -x $f ]] || continue
      if "$ld" --list "$f" 2>&1 | grep "not found"; then echo "in $f"; bad=1; fi
    done
    "$ld" --list "$1/jem"
    "$1/jem" --help >/dev/null || bad=1
    exit $bad' libraries "$build" "$bundle"
else
  # The benchmarks need Google Benchmark; without it, configure again without them.
  run_step configure 60 bash -c '
    cmake -S . -B "$1" -DCMAKE_BUILD_TYPE=Release -DJEM_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 ||
    { echo "gpu-check: configuring again without the benchmarks";
      cmake -S . -B "$1" -DCMAKE_BUILD_TYPE=Release -DJEM_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
            -DJEM_BUILD_BENCH=OFF; }' configure "$build"
  run_step build 270 cmake --build "$build" -j"$jobs"
fi

# ---- tests -----------------------------------------------------------------------------------
run_step info 20 "$build/jem" info
cp "$out/logs/info.log" "$out/jem-info.txt" 2>/dev/null || true
# The CUDA tests first, then the rest with the time left (a step cut short loses its counts).
# Not here: the crash test (CPU-only and slow) and the mpirun tests (their mpiexec is the build
# machine's, and one of them waits out a hang on purpose); CI runs both.
run_step ctest_cuda 150 ctest --test-dir "$build" --output-on-failure -j"$jobs" --timeout 120 \
  -R 'Cuda' --output-junit "$out/ctest-cuda-junit.xml"
run_step ctest_cpu 100 ctest --test-dir "$build" --output-on-failure -j"$jobs" --timeout 90 \
  -LE crash -E 'Cuda|^Distributed[.]' --output-junit "$out/ctest-cpu-junit.xml"
# Which algorithm cuDNN picked per convolution shape (FP32 and TF32), for the record.
run_step cudnn_algorithms 40 env JEM_CUDNN_VERBOSE=1 "$build/tests/test_cuda_backend" \
  --gtest_filter='Reference/CudaWideResNet.*'

# NCCL: a 1-GPU job through the NCCL path, and a 2-GPU job where the machine has several GPUs.
run_step nccl 60 scripts/nccl-check.sh "$build" "$out/nccl"

# ---- benchmarks ------------------------------------------------------------------------------
bench_files=()
if [[ -d "$build/bench" ]]; then
  while IFS= read -r exe; do
    name=$(basename "$exe")
    # bench_model times the CPU alone, and bench_ops every op on the CPU too: here only the GPU's,
    # each for 0.1 s (Google Benchmark's default 0.5 s would not fit every shape in the budget).
    [[ $name == bench_model ]] && continue
    filter=()
    [[ $name == bench_ops ]] && filter=(--benchmark_filter=/cuda/ --benchmark_min_time=0.1)
    run_step "$name" 120 sh -c '"$@" --benchmark_format=json >"$0"' "$out/$name.json" "$exe" "${filter[@]}"
    bench_files+=("$name.json")
  done < <(find "$build/bench" -maxdepth 1 -type f -name 'bench_*' -perm -u+x | sort)
fi
# The full JEM iteration of WRN-28-10 (the official recipe), TF32 and FP32, and side by side
# with PyTorch when this machine's python3 has a CUDA PyTorch (bench/README.md).
for math in tf32 fp32; do
  run_step "jem_bench_$math" 60 env JEM_CUDA_MATH=$math "$build/jem" bench --config configs/cifar10.toml \
    --device cuda --iterations 5 --warmup 2 --json "$out/jem_bench_wrn28x10_$math.json"
  bench_files+=("jem_bench_wrn28x10_$math.json")
done
# The same iteration at batch 1: its kernels are tiny, so its time is mostly launches and the
# host's work, an upper bound of what capturing the iteration in a CUDA Graph could save.
run_step jem_bench_tf32_batch1 40 env JEM_CUDA_MATH=tf32 "$build/jem" bench --config configs/cifar10.toml \
  --device cuda --batch_size 1 --iterations 5 --warmup 2 --json "$out/jem_bench_wrn28x10_tf32_batch1.json"
bench_files+=("jem_bench_wrn28x10_tf32_batch1.json")
if python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  run_step compare_pytorch_tf32 150 bench/compare.sh --device cuda --tf32 on --python python3 \
    --jem "$build/jem" --rounds 2 --outdir "$out/compare_tf32" --config configs/cifar10.toml \
    --iterations 5 --warmup 2
fi

# ---- where the iteration's GPU time goes: every kernel of one timed WRN-28-10 iteration ------------
# Nsight Compute records the kernels of jem bench's timed part only (the bench brackets it with
# cudaProfilerStart/Stop; the warm-up's cuDNN searches stay out), one metric, one pass each:
# kernel_profile.csv has each kernel's count and time, from which the custom kernels' share of
# the iteration follows (target: under 5%). Needs a runtime where ncu reads the counters.
ncu_bin=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | tail -1 || true)
if [[ -n $ncu_bin && -x $ncu_bin ]]; then
  run_step kernel_profile 90 env JEM_CUDA_MATH=tf32 "$ncu_bin" --profile-from-start off --clock-control none --cache-control none \
    --metrics gpu__time_duration.sum --print-summary per-kernel --csv --log-file "$out/kernel_profile.csv" \
    "$build/jem" bench --config configs/cifar10.toml --device cuda --iterations 1 --warmup 1
fi

# ---- compute-sanitizer: out-of-bounds and uninitialised reads in the custom kernels --------------
# Last, with what is left of the budget: the kernels' tests under memcheck (cuDNN's searches
# would take too long under it, so not the convolution tests).
# Errors that cuDNN and cuBLAS handle inside themselves are not reported (--report-api-errors no).
# Skipped, not failed, when under a minute of the budget is left.
sanitizer=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
if [[ -x $sanitizer ]] && (($(left_s) >= 60)); then
  run_step memcheck 90 "$sanitizer" --tool memcheck --report-api-errors no --error-exitcode 1 \
    "$build/tests/test_cuda_backend" --gtest_filter='CudaOps.*:-CudaOps.Conv*'
else
  echo "gpu-check: memcheck skipped (no compute-sanitizer, or under a minute left)" >&2
fi

# ---- summary.json ----------------------------------------------------------------------------
json_string() {  # stdin -> a JSON string literal
  awk 'BEGIN { ORS = ""; printf "\"" }
       { gsub(/\\/, "\\\\&"); gsub(/"/, "\\\""); gsub(/\t/, "\\t"); gsub(/\r/, "");
         gsub(/[\001-\037]/, ""); if (NR > 1) printf "\\n"; printf "%s", $0 }
       END { printf "\"" }'
}

# ctest's counts, summed over the CUDA and the CPU run.
total=0 failed=0 skipped=0 failed_names="" ctest_parts=""
for part in ctest_cuda ctest_cpu; do
  log="$out/logs/$part.log"
  [[ -f $log ]] || continue
  # "100% tests passed, 0 tests failed out of 552" (CMake 3.25) or "100% tests passed out of 552"
  # (newer CMake, as the GPU machines' pip one may be).
  t=$(grep -E '^[0-9]+% tests passed' "$log" | grep -oE 'out of [0-9]+' | grep -oE '[0-9]+$' | tail -1 || true)
  f=$(grep -oE '[0-9]+ tests failed out of' "$log" | grep -oE '^[0-9]+' | tail -1 || true)
  k=$(grep -c '\*\*\*Skipped' "$log" || true)
  t=${t:-0} f=${f:-0} k=${k:-0}
  total=$((total + t)) failed=$((failed + f)) skipped=$((skipped + k))
  ctest_parts+="\"$part\": {\"total\": $t, \"failed\": $f, \"skipped\": $k}, "
  # The lines "  12 - Suite.Test (Failed)" under "The following tests FAILED:".
  failed_names+=$(awk '/The following tests FAILED:/ { on = 1; next }
                       on && /^[ \t]+[0-9]+ - / { sub(/^[ \t]+[0-9]+ - /, ""); print; next }
                       { on = 0 }' "$log" 2>/dev/null || true)$'\n'
done
passed=$((total - failed - skipped))
((passed < 0)) && passed=0

# The headline numbers (bench times, PyTorch ratio, the issue's targets) from the bench files.
headlines=$(python3 scripts/gpu_check_headlines.py "$out" 2>"$out/logs/headlines.log") || headlines=null
[[ -n $headlines ]] || headlines=null

all_ok=true
{
  echo "{"
  echo "  \"total_seconds\": $(elapsed "$start" "$(now)"),"
  echo "  \"steps\": ["
  for i in "${!steps[@]}"; do
    s=${steps[$i]}
    [[ ${step_rc[$s]} -ne 0 ]] && all_ok=false
    sep=","
    ((i == ${#steps[@]} - 1)) && sep=""
    echo "    {\"name\": \"$s\", \"exit_code\": ${step_rc[$s]}, \"seconds\": ${step_s[$s]}, \"log\": \"logs/$s.log\"}$sep"
  done
  echo "  ],"
  echo "  \"ctest\": {$ctest_parts\"total\": $total, \"passed\": $passed, \"failed\": $failed, \"skipped\": $skipped,"
  printf '            "failed_tests": ['
  first=true
  while IFS= read -r t; do
    [[ -z $t ]] && continue
    $first || printf ', '
    first=false
    printf '%s' "$(printf '%s' "$t" | json_string)"
  done <<<"$failed_names"
  echo "]},"
  printf '  "benchmarks": ['
  for i in "${!bench_files[@]}"; do
    ((i > 0)) && printf ', '
    printf '"%s"' "${bench_files[$i]}"
  done
  echo "],"
  echo "  \"headlines\": $headlines,"
  echo "  \"all_ok\": $all_ok,"
  printf '  "machine": %s,\n' "$(json_string <"$out/logs/machine.log")"
  printf '  "nvidia_smi": %s\n' "$(json_string <"$out/nvidia-smi.txt")"
  echo "}"
} >"$out/summary.json"
# The device tool brings back at most 8 files: bundle everything but the summary into one
# archive (the summary names the logs by their path inside it).
# The archive is written outside OUT_DIR: tar fails on a folder that changes while it reads it.
archive=$(mktemp "${TMPDIR:-/tmp}/gpu-check-results.XXXXXX")
(cd "$out" && tar czf "$archive" --exclude=./summary.json --exclude=./results.tar.gz . &&
  find . -mindepth 1 -maxdepth 1 ! -name summary.json -exec rm -rf {} + &&
  mv "$archive" results.tar.gz && chmod 644 results.tar.gz)
echo "gpu-check: wrote $out/summary.json and $out/results.tar.gz (all_ok: $all_ok)" >&2
$all_ok
