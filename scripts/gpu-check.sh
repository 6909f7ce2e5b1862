#!/usr/bin/env bash
# The GPU check, one command for a GPU machine:
#  1. the build: the one scripts/gpu-bundle.sh packed on a development machine
#     (.gpu-bundle/build.tar.xz; the lent GPU machines have the CUDA libraries but none of jem's
#     other dependencies and cannot download them), or else a Release build for sm_90 made here
#     (build-gpu);
#  2. in the order of what the issues need most, each under its own time limit: the CUDA tests
#     (JEM_REQUIRE_CUDA=1: no GPU fails them instead of skipping them); jem bench of WRN-28-10 in
#     TF32 (the 0.30 s target; JEM_CUDNN_VERBOSE=1 logs cuDNN's choices), then again with NHWC
#     activations (JEM_CUDA_LAYOUT=nhwc), with and without the graph-API fusions; in the faster
#     of the two layouts (fast_layout.txt): jem bench with a 4 GiB cap on cuDNN's workspaces
#     (JEM_CUDNN_WORKSPACE_MB=4096, every search result logged), with the SGLD chains in CUDA
#     Graphs (JEM_CUDA_GRAPHS=1), the time per kernel of one timed iteration (Nsight
#     Systems, else Nsight Compute: the custom kernels' share) and bench/compare.sh against
#     PyTorch when python3 has a CUDA PyTorch (then PyTorch alone in channels-last memory format,
#     for a same-layout ratio); the NCCL checks (scripts/nccl-check.sh); jem bench in FP32 (NCHW
#     and NHWC) and at batch 1 (without and with CUDA Graphs); bench_ops' CUDA ops of WRN-28-10; cuDNN's
#     graph-API fusions and its plain convolutions in NCHW and NHWC (bench/cudnn_fusion_probe); the CPU
#     tests (not the crash test, which CI runs, nor the mpirun tests); the cuDNN algorithms of the
#     Wide-ResNet tests; the custom kernels' tests under compute-sanitizer memcheck.
#
#   scripts/gpu-check.sh OUT_DIR
#   JEM_GPU_CHECK_ONLY='^(ctest_cuda|jem_bench_tf32)$' scripts/gpu-check.sh OUT_DIR   (those steps only)
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
if [[ -n ${JEM_GPU_CHECK_ONLY:-} ]]; then
  rc=0
  [[ x =~ $JEM_GPU_CHECK_ONLY ]] || rc=$?
  if ((rc == 2)); then
    echo "gpu-check: JEM_GPU_CHECK_ONLY is not a valid regular expression: $JEM_GPU_CHECK_ONLY" >&2
    exit 2
  fi
fi
mkdir -p "$1/logs"
out=$(cd "$1" && pwd)
# The library path as this machine set it: PyTorch runs with it, not with the CUDA library folders
# that jem's executables are given below (they could hold other versions than PyTorch's own).
orig_ld_library_path=${LD_LIBRARY_PATH:-}
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
  # JEM_GPU_CHECK_ONLY (an extended regular expression of step names) runs those steps alone,
  # for a short rerun: the build's own steps (unpack, bundle_source, libraries, configure,
  # build) and info always run.
  # torch_check runs with compare_pytorch_tf32, which needs it.
  if [[ -n ${JEM_GPU_CHECK_ONLY:-} && ! $name =~ ^(unpack|bundle_source|libraries|configure|build|info)$ &&
        ! $name =~ $JEM_GPU_CHECK_ONLY ]] &&
     ! [[ $name == torch_check && compare_pytorch_tf32 =~ $JEM_GPU_CHECK_ONLY ]]; then
    return 0
  fi
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
  # A bundle made from other sources than this checkout would test other code: say so (the run
  # goes on, and the step's failure marks the summary).
  run_step bundle_source 30 bash -c '
    want=$(sed -n "s/^source_hash=//p" "$1/manifest.txt")
    have=$(scripts/source-hash.sh)
    echo "bundle:   ${want:-none}"; echo "checkout: $have"
    [[ -n $want && $want == "$have" ]] ||
      { echo "the bundle was not made from these sources: run scripts/gpu-bundle.sh again"; exit 1; }' \
    bundle_source "$bundle"
  # cuDNN, cuBLAS, NCCL, NVRTC and the CUDA runtime come from this machine: the toolkit's
  # folders, or the NVIDIA wheels next to PyTorch.
  lib_dirs=()
  # The toolkit's folders first (the build's CUDA version), then the NVIDIA wheels beside
  # PyTorch for what the toolkit lacks (often cuDNN and NCCL). PyTorch itself runs with the
  # machine's own library path (orig_ld_library_path), so this order cannot reach it.
  roots=(/usr/local/cuda/lib64 /usr/local/cuda/lib /usr/local/cuda/targets/x86_64-linux/lib /usr/lib/x86_64-linux-gnu)
  while IFS= read -r sp; do [[ -d $sp/nvidia ]] && roots+=("$sp/nvidia"); done < <(
    python3 -c 'import site; print("\n".join(site.getsitepackages()))' 2>/dev/null || true)
  # (cuDNN loads its runtime-fusion engines and NVRTC's builtins itself: their folders join too.)
  for so in libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libcudnn.so.9 libnccl.so.2 libnvrtc.so.13 \
    libcudnn_engines_runtime_compiled.so.9 'libnvrtc-builtins.so.13*'; do
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
    for f in "$1/jem" "$1"/tests/test_* "$1"/tests/mpi/dist_driver "$1"/bench/bench_* "$1"/bench/cudnn_fusion_probe; do
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

# ---- in the order of what the issues need most ------------------------------------------------
run_step info 20 "$build/jem" info
cp "$out/logs/info.log" "$out/jem-info.txt" 2>/dev/null || true
# The CUDA tests; a machine whose CUDA runtime cannot start fails them instead of skipping them
# (JEM_GPU_CHECK_REQUIRE_CUDA=0, as scripts/gpu-rehearsal.sh sets it, lets them skip).
run_step ctest_cuda 150 env JEM_REQUIRE_CUDA="${JEM_GPU_CHECK_REQUIRE_CUDA:-1}" ctest --test-dir "$build" --output-on-failure \
  -j"$jobs" --timeout 120 -R 'Cuda' -E '^EmulatedDevice[.]' --output-junit "$out/ctest-cuda-junit.xml"

bench_files=()
# The full JEM iteration of WRN-28-10 (the official recipe) in TF32: the 0.30 s target. The
# verbose cuDNN log has each shape's algorithm and the fused-or-not choice of conv2's epilogue.
run_step jem_bench_tf32 60 env JEM_CUDA_MATH=tf32 JEM_CUDNN_VERBOSE=1 "$build/jem" bench \
  --config configs/cifar10.toml --device cuda --iterations 5 --warmup 2 \
  --json "$out/jem_bench_wrn28x10_tf32.json"
bench_files+=("jem_bench_wrn28x10_tf32.json")
# The same with the activations channels-last (JEM_CUDA_LAYOUT=nhwc: no cuDNN transposes around
# its tensor-core kernels; the filters converted to KRSC at each call; conv + bias + LeakyReLU
# fused by cuDNN's graph API), then without the fusions (JEM_CUDNN_FUSION=0). Which layout
# becomes the default is decided on these numbers.
run_step jem_bench_tf32_nhwc 60 env JEM_CUDA_MATH=tf32 JEM_CUDA_LAYOUT=nhwc JEM_CUDNN_VERBOSE=1 "$build/jem" bench \
  --config configs/cifar10.toml --device cuda --iterations 5 --warmup 2 \
  --json "$out/jem_bench_wrn28x10_tf32_nhwc.json"
bench_files+=("jem_bench_wrn28x10_tf32_nhwc.json")
run_step jem_bench_tf32_nhwc_unfused 60 env JEM_CUDA_MATH=tf32 JEM_CUDA_LAYOUT=nhwc JEM_CUDNN_FUSION=0 \
  "$build/jem" bench --config configs/cifar10.toml --device cuda --iterations 5 --warmup 2 \
  --json "$out/jem_bench_wrn28x10_tf32_nhwc_unfused.json"
bench_files+=("jem_bench_wrn28x10_tf32_nhwc_unfused.json")

# The faster of the two TF32 layouts (NCHW unless the NHWC run succeeded and was faster) is the
# one the kernel profile and the PyTorch comparison below run with.
fast_layout=$(LD_LIBRARY_PATH="$orig_ld_library_path" python3 - "$out/jem_bench_wrn28x10_tf32.json" "$out/jem_bench_wrn28x10_tf32_nhwc.json" <<'PY' 2>/dev/null || echo nchw
import json, sys
def ms(path):
    try:
        return json.load(open(path))["ms_per_iteration"]["total"]
    except Exception:
        return None
nchw, nhwc = ms(sys.argv[1]), ms(sys.argv[2])
print("nhwc" if nhwc is not None and (nchw is None or nhwc < nchw) else "nchw")
PY
)
echo "gpu-check: the faster TF32 layout: $fast_layout" >&2
echo "$fast_layout" >"$out/fast_layout.txt"

# The same in the faster layout with 4 GiB for an algorithm's workspace instead of 512 MiB
# (JEM_CUDNN_WORKSPACE_MB): whether algorithms that need more (PyTorch lets them compete) are
# faster. JEM_CUDNN_VERBOSE=2 logs every search result, those over the cap marked.
run_step jem_bench_tf32_ws4g 60 env JEM_CUDA_MATH=tf32 JEM_CUDA_LAYOUT="$fast_layout" JEM_CUDNN_WORKSPACE_MB=4096 \
  JEM_CUDNN_VERBOSE=2 "$build/jem" bench --config configs/cifar10.toml --device cuda --iterations 5 --warmup 2 \
  --json "$out/jem_bench_wrn28x10_tf32_ws4g.json"
bench_files+=("jem_bench_wrn28x10_tf32_ws4g.json")
# The SGLD chains captured in CUDA Graphs (JEM_CUDA_GRAPHS=1), in the faster layout: whether one
# launch per chain batch instead of thousands of kernel and cuDNN calls shortens the iteration
# (backend.hpp, Backend::capture). Its JSON counts the graph launches of the timed iterations.
run_step jem_bench_tf32_graphs 60 env JEM_CUDA_MATH=tf32 JEM_CUDA_LAYOUT="$fast_layout" JEM_CUDA_GRAPHS=1 \
  "$build/jem" bench --config configs/cifar10.toml --device cuda --iterations 5 --warmup 2 \
  --json "$out/jem_bench_wrn28x10_tf32_graphs.json"
bench_files+=("jem_bench_wrn28x10_tf32_graphs.json")

# Where the iteration's GPU time goes: every kernel of jem bench's timed part (it brackets it
# with cudaProfilerStart/Stop, so the warm-up's cuDNN searches stay out), from which the custom
# kernels' share follows (target: under 5%; scripts/gpu_check_headlines.py reads nsys' kernel
# summary, else ncu's). Nsight Systems traces at little cost; Nsight Compute, the fallback (the
# lent H200s have no nsys), replays each of one iteration's ~6050 launches: 42-50 s there.
nsys_bin=$(command -v nsys || ls /usr/local/cuda/bin/nsys /opt/nvidia/nsight-systems/*/bin/nsys 2>/dev/null | tail -1 || true)
ncu_bin=$(command -v ncu || ls /usr/local/cuda/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | tail -1 || true)
if [[ -n $nsys_bin && -x $nsys_bin ]]; then
  # The report and its SQLite export are removed whatever happens: they would swell
  # results.tar.gz past what the device tool brings back.
  run_step kernel_profile 90 bash -c '
    trap "rm -f \"\$2/kernel_profile.nsys-rep\" \"\$2/kernel_profile.sqlite\"" EXIT
    "$1" profile --trace cuda --capture-range cudaProfilerApi --capture-range-end stop \
      --force-overwrite true --output "$2/kernel_profile" \
      env JEM_CUDA_MATH=tf32 JEM_CUDA_LAYOUT="$4" "$3" bench --config configs/cifar10.toml --device cuda --iterations 1 --warmup 1 &&
    "$1" stats --report cuda_gpu_kern_sum --format csv --output "$2/kernel_profile" "$2/kernel_profile.nsys-rep"' \
    kernel_profile "$nsys_bin" "$out" "$build/jem" "$fast_layout"
elif [[ -n $ncu_bin && -x $ncu_bin ]]; then
  # Its per-kernel summary (CSV) is what the headlines read when nsys is missing.
  run_step kernel_profile 90 env JEM_CUDA_MATH=tf32 JEM_CUDA_LAYOUT="$fast_layout" "$ncu_bin" --profile-from-start off --clock-control none --cache-control none \
    --metrics gpu__time_duration.sum --print-summary per-kernel --csv --log-file "$out/kernel_profile.csv" \
    "$build/jem" bench --config configs/cifar10.toml --device cuda --iterations 1 --warmup 1
else
  # Recorded as a failed step: the custom kernels' share is a target, and it stays unmeasured.
  run_step kernel_profile 5 sh -c 'echo "neither nsys nor ncu found: the kernel profile did not run"; exit 127'
fi

# NCCL: a 1-GPU job through the NCCL path, and a 2-GPU job where the machine has several GPUs.
run_step nccl 60 scripts/nccl-check.sh "$build" "$out/nccl"

# Side by side with PyTorch (the 3x target), when this machine's python3 has a CUDA PyTorch;
# without one the torch_check step fails, since the target then stays unmeasured. PyTorch runs
# with the machine's own library path; jem through a wrapper that sets its own.
run_step torch_check 30 env LD_LIBRARY_PATH="$orig_ld_library_path" python3 -c '
import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
assert torch.cuda.is_available(), "torch.cuda.is_available() is False"'
if [[ ${step_rc[torch_check]:-1} -eq 0 ]]; then
  jem_wrapper="$out/jem-with-cuda-libraries"
  printf '#!/usr/bin/env bash\nJEM_CUDA_LAYOUT=%q LD_LIBRARY_PATH=%q exec %q "$@"\n' "$fast_layout" \
    "${LD_LIBRARY_PATH:-}" "$PWD/$build/jem" >"$jem_wrapper"
  chmod +x "$jem_wrapper"
  run_step compare_pytorch_tf32 150 env LD_LIBRARY_PATH="$orig_ld_library_path" bench/compare.sh \
    --device cuda --tf32 on --python python3 --jem "$jem_wrapper" --rounds 2 \
    --outdir "$out/compare_tf32" --config configs/cifar10.toml --iterations 5 --warmup 2
  rm -f "$jem_wrapper"
  # PyTorch in channels-last memory format too (the comparison above runs the official code's
  # NCHW): its counterpart of jem's NHWC layout, for a same-layout ratio (headlines).
  run_step pytorch_tf32_channels_last 60 env LD_LIBRARY_PATH="$orig_ld_library_path" python3 bench/pytorch_jem.py \
    --device cuda --tf32 on --channels-last --config configs/cifar10.toml --iterations 5 --warmup 2 \
    --json "$out/pytorch_tf32_channels_last.json"
fi

run_step jem_bench_fp32 60 env JEM_CUDA_MATH=fp32 JEM_CUDNN_VERBOSE=1 "$build/jem" bench --config configs/cifar10.toml \
  --device cuda --iterations 5 --warmup 2 --json "$out/jem_bench_wrn28x10_fp32.json"
bench_files+=("jem_bench_wrn28x10_fp32.json")
# FP32 in NHWC: which layout FP32 (no tensor cores, deterministic algorithms) should default to.
run_step jem_bench_fp32_nhwc 60 env JEM_CUDA_MATH=fp32 JEM_CUDA_LAYOUT=nhwc "$build/jem" bench --config configs/cifar10.toml \
  --device cuda --iterations 5 --warmup 2 --json "$out/jem_bench_wrn28x10_fp32_nhwc.json"
bench_files+=("jem_bench_wrn28x10_fp32_nhwc.json")
# The same iteration at batch 1: its kernels are tiny, so its time is mostly launches and the
# host's work, an upper bound of what capturing the iteration in a CUDA Graph could save.
run_step jem_bench_tf32_batch1 40 env JEM_CUDA_MATH=tf32 "$build/jem" bench --config configs/cifar10.toml \
  --device cuda --batch_size 1 --iterations 5 --warmup 2 --json "$out/jem_bench_wrn28x10_tf32_batch1.json"
bench_files+=("jem_bench_wrn28x10_tf32_batch1.json")
# And with the chains in CUDA Graphs: at batch 1 the launches are most of the time.
run_step jem_bench_tf32_batch1_graphs 40 env JEM_CUDA_MATH=tf32 JEM_CUDA_GRAPHS=1 "$build/jem" bench \
  --config configs/cifar10.toml --device cuda --batch_size 1 --iterations 5 --warmup 2 \
  --json "$out/jem_bench_wrn28x10_tf32_batch1_graphs.json"
bench_files+=("jem_bench_wrn28x10_tf32_batch1_graphs.json")

# cuDNN's graph-API fusions of the model's elementwise passes (bench/cudnn_fusion_probe.cpp,
# docs/cudnn-fusion.md): for the four LeakyReLU patterns in NHWC (the only layout cuDNN fuses
# them in), on each WRN-28-10 shape they apply to, the fused plan's time against the backend's
# current ops and their agreement; in TF32, then FP32 for two patterns with what is left. Also
# this GPU's cuDNN device properties, for deviceless probing elsewhere (configs/devices/h200.json
# was written from the H200's specifications). The JSON is rewritten after every case, so a
# timeout keeps what was done.
if [[ -x "$build/bench/cudnn_fusion_probe" ]]; then
  run_step cudnn_fusion 150 "$build/bench/cudnn_fusion_probe" --time --math tf32 --candidates 0 --layouts NHWC \
    --patterns conv+bias+lrelu,conv+bias+add+lrelu,dgrad+drelu,dgrad+drelu+add \
    --json "$out/cudnn_fusion.json" --save-device-properties "$out/device_properties.json"
  run_step cudnn_fusion_fp32 60 "$build/bench/cudnn_fusion_probe" --time --math fp32 --candidates 0 --layouts NHWC \
    --patterns conv+bias+lrelu,dgrad+drelu --json "$out/cudnn_fusion_fp32.json"
  # The convolution alone through the graph API, in NCHW and in NHWC, against the backend's NCHW
  # legacy call (cuDNN's layout transposes included): what an NHWC backend gains before fusing.
  run_step cudnn_layout 60 "$build/bench/cudnn_fusion_probe" --time --math tf32 --candidates 0 \
    --layouts NCHW,NHWC --patterns conv,conv+bias --json "$out/cudnn_layout.json"
fi

# Google Benchmark executables: bench_ops' CUDA ops on WRN-28-10's shapes, each for 0.1 s
# (bench_model times the CPU alone).
if [[ -d "$build/bench" ]]; then
  while IFS= read -r exe; do
    name=$(basename "$exe")
    [[ $name == bench_model ]] && continue
    filter=()
    [[ $name == bench_ops ]] && filter=(--benchmark_filter=/cuda/wrn28x10/ --benchmark_min_time=0.1)
    run_step "$name" 90 sh -c '"$@" --benchmark_format=json >"$0"' "$out/$name.json" "$exe" "${filter[@]}"
    bench_files+=("$name.json")
  done < <(find "$build/bench" -maxdepth 1 -type f -name 'bench_*' -perm -u+x | sort)
fi

# With the time left: the CPU tests on this machine (CI runs them too; here they check the
# bundle), not the crash test nor the mpirun tests (their mpiexec is the build machine's). About
# 25 s on 16 cores; JEM_GPU_CHECK_CTEST_CPU_S gives a slower machine (the rehearsal's) more.
run_step ctest_cpu "${JEM_GPU_CHECK_CTEST_CPU_S:-100}" ctest --test-dir "$build" --output-on-failure -j"$jobs" --timeout 90 \
  -LE crash -E 'Cuda|^Distributed[.]' --output-junit "$out/ctest-cpu-junit.xml"
# Which algorithm cuDNN picked per convolution shape of the Wide-ResNet tests (FP32 and TF32).
run_step cudnn_algorithms 40 env JEM_CUDNN_VERBOSE=1 JEM_REQUIRE_CUDA="${JEM_GPU_CHECK_REQUIRE_CUDA:-1}" \
  "$build/tests/test_cuda_backend" \
  --gtest_filter='Reference/CudaWideResNet.*'

# ---- compute-sanitizer: out-of-bounds and uninitialised reads in the custom kernels --------------
# Last, with what is left of the budget: the kernels' tests under memcheck (cuDNN's searches
# would take too long under it, so not the convolution tests).
# Errors that cuDNN and cuBLAS handle inside themselves are not reported (--report-api-errors no).
# Skipped, not failed, when under a minute of the budget is left.
sanitizer=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
if [[ -x $sanitizer ]] && (($(left_s) >= 60)); then
  run_step memcheck 90 env JEM_REQUIRE_CUDA="${JEM_GPU_CHECK_REQUIRE_CUDA:-1}" \
    "$sanitizer" --tool memcheck --report-api-errors no --error-exitcode 1 \
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
  # Only the files that were written (a failed or skipped step leaves none).
  sep=""
  for f in "${bench_files[@]}"; do
    [[ -f $out/$f ]] || continue
    printf '%s"%s"' "$sep" "$f"
    sep=", "
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
