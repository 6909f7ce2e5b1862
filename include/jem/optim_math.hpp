// Per-element optimizer math, shared by the CPU backend and the CUDA kernels. The update rules
// are PyTorch's (torch.optim.Adam / AdamW / SGD), so a run can be compared with the official code.
#pragma once

#include <math.h>

#include "jem/elementwise_math.hpp"

namespace jem {

// Step-dependent constants of Adam, computed once per step on the host.
struct AdamStep {
  float lr = 0, beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f, weight_decay = 0;
  bool decoupled = false;     // AdamW: decay the weights directly, not through the gradient
  float bias1 = 1, bias2 = 1;  // 1 - beta1^t, 1 - beta2^t
};

// One Adam(W) update of one parameter p with gradient g and moments m, v (all in place).
JEM_HD void adam_update(float& p, float g, float& m, float& v, const AdamStep& s) {
  if (s.decoupled) p *= 1.0f - s.lr * s.weight_decay;
  else g += s.weight_decay * p;
  m = s.beta1 * m + (1.0f - s.beta1) * g;
  v = s.beta2 * v + (1.0f - s.beta2) * g * g;
  const float denom = sqrtf(v / s.bias2) + s.eps;
  p -= (s.lr / s.bias1) * m / denom;
}

// One SGD update with momentum and (coupled) weight decay, as torch.optim.SGD (dampening 0).
// The momentum buffer starts at zero, so the first step sets it to the gradient, as PyTorch does.
JEM_HD void sgd_update(float& p, float g, float& buf, float lr, float momentum, float weight_decay) {
  g += weight_decay * p;
  buf = momentum * buf + g;
  p -= lr * buf;
}

}  // namespace jem
