// The component configurations of a JEM run, derived from a TrainConfig in one
// place: the trainer (`jem train`) and the benchmark (`jem bench`) build the
// same model, sampler, objective and optimizer from them.
#pragma once

#include "jem/objective.hpp"
#include "jem/optimizer.hpp"
#include "jem/sampler.hpp"
#include "jem/train_config.hpp"
#include "jem/wide_resnet.hpp"

namespace jem {

// The Wide-ResNet for images of [channels, image_size, image_size] and
// n_classes classes.
WrnConfig model_config(const TrainConfig &c, int channels, int image_size,
                       int n_classes);
ObjectiveConfig objective_config(const TrainConfig &c);
SamplerConfig sampler_config(const TrainConfig &c, int n_classes);
OptimizerConfig optimizer_config(const TrainConfig &c);
// The p(x) batch: px_batch_size, or batch_size when that is 0.
int px_batch(const TrainConfig &c);
// Rows the model's activations are planned for: the objective's rows, or the
// evaluation batch (at most 1024) when that is larger.
int model_max_batch(const TrainConfig &c);
// Whether the replay buffer is split into one segment per class.
bool segmented_buffer(const TrainConfig &c);

} // namespace jem
