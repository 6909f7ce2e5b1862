// The optimizer over the model's flat parameter buffer, and the learning-rate schedule.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "jem/backend.hpp"

namespace jem {

namespace safetensors {
class File;
class Writer;
}  // namespace safetensors

struct OptimizerConfig {
  std::string kind = "adam";  // adam | adamw | sgd
  float lr = 1e-4f, beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f, weight_decay = 0.0f;
  float momentum = 0.9f;
  int warmup_iters = 1000;            // linear warm-up from lr/warmup to lr
  std::vector<int> decay_epochs;      // lr *= decay_rate at each of these epochs
  float decay_rate = 0.3f;
  // cosine: after warm-up, lr * (1 + cos(pi * (i - warmup) / (total_iters - warmup))) / 2, which
  // reaches 0 at iteration total_iters; decay_epochs are then ignored. Short runs gain most from
  // it: the last stretch at a small lr is where a time-limited run's accuracy is made.
  bool cosine = false;
  std::int64_t total_iters = 0;  // the run's length, for cosine
  // Exponential moving average of the parameters (0 = off): after each step
  //   ema = d * ema + (1 - d) * params,  d = min(ema, (1 + t) / (10 + t)),  t = steps taken,
  // started from the parameters after the first step. The ramp keeps the average of a short run
  // to its last ~t/9 steps instead of its random start. Evaluation uses the average: with a
  // large lr the parameters jitter about a better point than any one of them.
  float ema = 0.0f;
};

// lr at `iteration` (0-based) in `epoch` (0-based), times `factor` (the divergence guard's cut).
// Warm-up as the official code: lr * min(1, (iteration + 1) / warmup_iters).
float scheduled_lr(const OptimizerConfig& c, std::int64_t iteration, int epoch, float factor = 1.0f);

class Optimizer {
 public:
  // State buffers (Adam's m and v, or SGD's momentum) are allocated here, zeroed.
  Optimizer(Backend& backend, const OptimizerConfig& config, std::int64_t num_params);

  // One update of params with grads at learning rate `lr`.
  void step(const Tensor& params, const Tensor& grads, float lr);
  std::int64_t steps_taken() const { return steps_; }
  // The parameters' moving average [num_params], or nullptr when off or before the first step.
  const Tensor* ema() const { return ema_started_ ? &ema_ : nullptr; }
  // Bytes of the state buffers (m, v, the moving average): the trainer's memory plan.
  std::int64_t state_bytes() const;

  // Checkpointing under "optim.*" names; the average as "optim.ema" (absent when off or not yet
  // started; a run that turns it on when resumed starts it at its next step).
  void save(safetensors::Writer& w) const;
  void load(const safetensors::File& f);
  void reset();

 private:
  Backend& backend_;
  OptimizerConfig config_;
  Tensor m_, v_;  // SGD uses m_ as its momentum buffer
  Tensor ema_;    // [num_params] when config.ema > 0
  bool ema_started_ = false;
  std::int64_t steps_ = 0;
  void update_ema(const Tensor& params);
};

}  // namespace jem
