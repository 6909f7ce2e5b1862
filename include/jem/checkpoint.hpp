// Training checkpoints: one safetensors file holding everything a run needs to continue exactly
// where it stopped. Written atomically (temp file, fsync, rename: see safetensors::Writer).
//
//   parameters      under the official JEM names (f.conv1.weight, ..., class_output.bias)
//   optim.m/v/steps optimizer state (optim.ema: the parameters' moving average, when on)
//   replay_buffer   [S, C, H, W] (the official checkpoints' name): every rank's shard
//   metadata        format, iteration, lr_factor, retries, sampler_seed, the resolved config
//
// Random state: every random number of a run is Philox keyed by (seed, iteration, ...), so the
// iteration counter and the seeds ARE the generator state.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "jem/wide_resnet.hpp"

namespace jem {

class Optimizer;
class ReplayBuffer;
struct BufferShard;
namespace safetensors {
class File;
}

struct TrainState {
  std::int64_t iteration = 0;     // iterations completed
  double lr_factor = 1.0;         // the divergence guard's cumulative lr cut
  int retries = 0;                // rollbacks used
  std::uint64_t sampler_seed = 0; // reseeded by the guard
};

inline constexpr const char* kCheckpointFormat = "jem-checkpoint-1";

void save_checkpoint(const std::string& path, const WideResNet& model, const Optimizer& optimizer,
                     const ReplayBuffer& buffer, const TrainState& state, const std::string& config_toml);

// The same with the whole replay buffer given as host data [buffer_shape] (a data-parallel run
// gathers the ranks' shards into it on rank 0).
void save_checkpoint(const std::string& path, const WideResNet& model, const Optimizer& optimizer,
                     const float* buffer_host, const Shape& buffer_shape, const TrainState& state,
                     const std::string& config_toml);

// Restores model, optimizer and buffer in place; throws naming the file and the tensor when the
// checkpoint belongs to another model or is damaged.
TrainState load_checkpoint(const std::string& path, WideResNet& model, Optimizer& optimizer,
                           ReplayBuffer& buffer);
// The same into one rank's shard of the buffer: the checkpoint holds the whole buffer
// [shard.global_size, C, H, W] whatever the world size that wrote it, so a run resumed on another
// number of ranks re-splits it.
TrainState load_checkpoint(const std::string& path, WideResNet& model, Optimizer& optimizer,
                           ReplayBuffer& buffer, const BufferShard& shard);
// The same from a file already read (errors name file.path()); the fuzz target uses it.
TrainState load_checkpoint(const safetensors::File& file, WideResNet& model, Optimizer& optimizer,
                           ReplayBuffer& buffer);
TrainState load_checkpoint(const safetensors::File& file, WideResNet& model, Optimizer& optimizer,
                           ReplayBuffer& buffer, const BufferShard& shard);

// The weights `jem eval` and `jem sample` use: "raw" the parameters, "ema" the moving average a
// run with `ema` > 0 saved ("optim.ema"; an error naming the file when it has none), "auto" the
// average when there is one. Returns whether the average was loaded.
bool load_model_weights(const safetensors::File& file, WideResNet& model, const std::string& which);

// The architecture stored in a checkpoint's metadata (depth, width, channels, image_size,
// n_classes, slope): enough to build the model without the data set.
WrnConfig checkpoint_model_config(const std::string& path);
WrnConfig checkpoint_model_config(const safetensors::File& file);

// The resolved config stored in a checkpoint (for `jem sample` / `jem eval`).
std::string checkpoint_config(const std::string& path);

// checkpoints/ckpt_<iteration, 9 digits>.safetensors
std::string checkpoint_name(std::int64_t iteration);
// Completed checkpoints in `dir`, oldest first (temp files of an interrupted write ignored).
std::vector<std::string> list_checkpoints(const std::string& dir);

}  // namespace jem
