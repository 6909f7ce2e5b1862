// Classification accuracy and mean cross-entropy of a model on a data set, batched.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "jem/datasets.hpp"
#include "jem/wide_resnet.hpp"

namespace jem {

struct EvalResult {
  double accuracy = 0, mean_ce = 0, mean_energy = 0;
  std::int64_t count = 0;
};

// Per-image predictions, for calibration and reports: filled when evaluate() is given one.
struct EvalPredictions {
  std::vector<std::int32_t> predicted;  // argmax class [count]
  std::vector<float> confidence;        // max softmax probability [count]
  std::vector<std::uint8_t> correct;    // predicted == label [count]
};

// Test-time inputs as the official code: scaled to [-1, 1] plus sigma * N(0, I) (Eval stream,
// keyed by image index). `progress(done, total)` is called after each batch when given.
// Batches of at most model.max_batch() images.
// `predictions`, when given, receives the per-image predictions.
EvalResult evaluate(WideResNet& model, const Dataset& data, float sigma, std::uint64_t seed,
                    const std::function<void(std::int64_t, std::int64_t)>& progress = nullptr,
                    EvalPredictions* predictions = nullptr);

// The same over images [first, first + count) only: one rank's share of a distributed
// evaluation (the noise is keyed by the image index, so the shares add up to evaluate()).
// count, accuracy and the means refer to that range.
EvalResult evaluate_range(WideResNet& model, const Dataset& data, std::int64_t first, std::int64_t count,
                          float sigma, std::uint64_t seed,
                          const std::function<void(std::int64_t, std::int64_t)>& progress = nullptr,
                          EvalPredictions* predictions = nullptr);

}  // namespace jem
