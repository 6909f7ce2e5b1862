#!/usr/bin/env bash
# The README's main command: install dependencies, build, and train the quickstart JEM on
# Fashion-MNIST (configs/fashion-mnist.toml): under 10 minutes on 2 CPU cores, or on the GPU
# when one is present. Prints the test accuracy; samples land in RUN_DIR/samples/.
#   scripts/quickstart.sh [RUN_DIR]      (default runs/fashion-mnist; an existing run is resumed)
set -euo pipefail
cd "$(dirname "$0")/.."
run="${1:-runs/fashion-mnist}"
scripts/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DJEM_BUILD_TESTS=OFF -DJEM_BUILD_BENCH=OFF >/dev/null
cmake --build build -j"$(nproc)" --target jem
if [[ -d "$run/checkpoints" ]]; then
  build/jem train --resume "$run"
else
  build/jem train --config configs/fashion-mnist.toml --out "$run"
fi
# The replay buffer's chains after a 9-minute run have had ~25 SGLD steps each and look like
# noise; 200 steps of class-conditional chains from fresh noise (about 10 s) show what the
# model has learned, one column per class.
ckpt="$(ls "$run"/checkpoints/ckpt_*.safetensors | tail -n 1)"
build/jem sample --checkpoint "$ckpt" --out "$run/samples/conditional.png" --from fresh --conditional \
  --n 40 --rounds 20
echo "samples: $run/samples/conditional.png (one column per class), $run/samples/x_q_final.png (the buffer)"
echo "metrics: $run/metrics.jsonl"

