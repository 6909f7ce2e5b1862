// The training config saved inside a checkpoint, for the commands that start from one.
#pragma once

#include <string>

#include "jem/train_config.hpp"

namespace jem::cli {

// Parses the resolved config stored in the checkpoint's metadata.
TrainConfig config_from_checkpoint(const std::string& checkpoint);

}  // namespace jem::cli
