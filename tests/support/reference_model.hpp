// The architecture described by a reference-vector file's metadata (tests/data/*.safetensors),
// shared by the CPU and CUDA model tests.
#pragma once

#include "jem/safetensors.hpp"
#include "jem/wide_resnet.hpp"

namespace jem::test {

WrnConfig reference_config(const safetensors::File& f);

}  // namespace jem::test
