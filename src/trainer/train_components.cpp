#include "jem/train_components.hpp"

#include <algorithm>

namespace jem {

WrnConfig model_config(const TrainConfig &c, int channels, int image_size,
                       int n_classes) {
  WrnConfig w;
  w.depth = c.depth;
  w.width = c.width;
  w.in_channels = channels;
  w.image_size = image_size;
  w.n_classes = n_classes;
  w.slope = float(c.slope);
  return w;
}

ObjectiveConfig objective_config(const TrainConfig &c) {
  return ObjectiveConfig{float(c.w_px), float(c.w_pxy), float(c.w_l2)};
}

SamplerConfig sampler_config(const TrainConfig &c, int n_classes) {
  SamplerConfig sc;
  sc.buffer_size = c.buffer_size;
  sc.reinit_freq = float(c.reinit_freq);
  sc.steps = c.sgld_steps;
  sc.step_size = float(c.sgld_lr);
  sc.noise_std = float(c.sgld_std);
  sc.clamp = c.clamp;
  sc.n_classes = n_classes;
  return sc;
}

OptimizerConfig optimizer_config(const TrainConfig &c) {
  OptimizerConfig o;
  o.kind = c.optimizer;
  o.lr = float(c.lr);
  o.beta1 = float(c.beta1);
  o.beta2 = float(c.beta2);
  o.eps = float(c.eps);
  o.weight_decay = float(c.weight_decay);
  o.momentum = float(c.momentum);
  o.warmup_iters = c.warmup_iters;
  o.decay_epochs = c.decay_epochs;
  o.decay_rate = float(c.decay_rate);
  o.ema = float(c.ema);
  o.cosine = c.lr_schedule == "cosine";  // total_iters: set by whoever knows the run's length
  return o;
}

int px_batch(const TrainConfig &c) {
  return c.px_batch_size > 0 ? c.px_batch_size : c.batch_size;
}

int model_max_batch(const TrainConfig &c) {
  return std::max(
      JemObjective::rows_needed(objective_config(c), c.batch_size, px_batch(c)),
      std::min(c.eval_batch, 1024));
}

bool segmented_buffer(const TrainConfig &c) {
  return c.class_cond_buffer || c.w_pxy != 0.0;
}

} // namespace jem
