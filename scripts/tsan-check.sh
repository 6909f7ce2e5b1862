#!/usr/bin/env bash
# ThreadSanitizer over the threads jem starts itself: the data prefetcher (std::thread) and the
# training loop that consumes it, with checkpoints, resume and a SIGINT stop.
#   1. test_data_pipeline (the Prefetcher tests: hand-off, error propagation, early shutdown);
#   2. `jem train --threads 1` on a tiny synthetic set, then `--resume`, then a run stopped by
#      SIGINT.
# One CPU-backend thread: libgomp is not built with TSan, so the OpenMP regions of the CPU
# backend would report false races (TSan cannot see libgomp's barriers; e.g. test_trainer,
# which uses 2 threads, reports conv2d_backward_filter_impl's reduction after the team's
# barrier). tests/tsan.supp holds the narrow suppressions for reports with libgomp on the stack.
# Usage: scripts/tsan-check.sh [BUILD_DIR]   (default build-tsan; configured here if needed)
set -euo pipefail
cd "$(dirname "$0")/.."
build="${1:-build-tsan}"
if [ ! -f "$build/CMakeCache.txt" ]; then
  cmake -S . -B "$build" -DJEM_CUDA=OFF -DJEM_BUILD_BENCH=OFF -DJEM_SANITIZE=thread -DCMAKE_BUILD_TYPE=RelWithDebInfo
fi
cmake --build "$build" -j"$(nproc)" --target jem test_data_pipeline
export TSAN_OPTIONS="halt_on_error=1 exitcode=66 suppressions=$PWD/tests/tsan.supp"
"$build/tests/test_data_pipeline"

work="$(mktemp -d /tmp/jem-tsan-XXXXXX)"
trap 'rm -rf "$work"' EXIT
/usr/bin/python3 scripts/synthetic_mnist.py "$work/data"
args=(train --device cpu --threads 1 --dataset mnist --data_dir "$work/data" --depth 10 --width 1 --batch_size 8
      --n_valid 16 --buffer_size 32 --sgld_steps 2 --eval_batch 32 --log_every 5 --sample_every 10 --seed 5)
"$build/jem" "${args[@]}" --ckpt_every 3 --max_iters 12 --out "$work/r"
"$build/jem" train --resume "$work/r" --max_iters 20
"$build/jem" "${args[@]}" --ckpt_every 1 --max_iters 100000 --out "$work/s" &
pid=$!
until [ -e "$work/s/checkpoints/ckpt_000000003.safetensors" ]; do sleep 0.1; done
kill -INT "$pid"
wait "$pid"
grep -q "stop requested" "$work/s/log.txt"
echo "tsan-check: clean"
