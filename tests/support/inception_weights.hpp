// Random FID Inception-v3 weights in pytorch-fid's names (InceptionV3::tensor_specs()), for the
// tests that run the network without the real weights.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace jem::test {

// Writes DIR/inception_random.safetensors and returns its path: He-normal convolutions and
// BatchNorm statistics near identity (gamma, var in [0.5, 1.5); beta, mean in [-0.1, 0.1)), so
// activations stay O(1) through the 94 layers. `skip` leaves one tensor out, `misshape` adds 1
// to one tensor's first dimension, `limit` writes only the first `limit` tensors (a small,
// truncated file). Deterministic: the same file every time.
std::string write_random_weights(const std::string& dir, const std::string& skip = "",
                                 const std::string& misshape = "", std::size_t limit = SIZE_MAX);

}  // namespace jem::test
