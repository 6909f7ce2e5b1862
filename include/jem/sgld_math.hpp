// Per-element math of the sampler, shared by the CPU backend and the CUDA kernels.
#pragma once

#include "jem/elementwise_math.hpp"

namespace jem {

// One Langevin step of one element: x - a*g + s*z, optionally clamped to the data range [-1, 1].
JEM_HD float sgld_update(float x, float g, float step_size, float noise_std, float z, bool clamp) {
  float y = x - step_size * g + noise_std * z;
  if (clamp) y = y < -1.0f ? -1.0f : (y > 1.0f ? 1.0f : y);
  return y;
}

}  // namespace jem
