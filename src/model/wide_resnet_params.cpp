// Parameter initialisation and safetensors load/save of the Wide-ResNet.
#include <cmath>
#include <random>

#include "jem/safetensors.hpp"
#include "jem/wide_resnet.hpp"

namespace jem {

void WideResNet::init(std::uint64_t seed) {
  // PyTorch's defaults for Conv2d and Linear: weights kaiming_uniform(a = sqrt(5)), whose bound
  // gain * sqrt(3 / fan_in) with gain = sqrt(2 / (1 + 5)) is exactly 1 / sqrt(fan_in); biases
  // U(-1/sqrt(fan_in), 1/sqrt(fan_in)). Every parameter draws from its own generator keyed by
  // (seed, parameter index), so adding a layer does not shift the others' values. The 24-bit
  // mantissa conversion below is spelled out because std::uniform_real_distribution's output
  // differs between standard libraries.
  std::vector<float> host(static_cast<std::size_t>(num_params()));
  for (std::size_t i = 0; i < specs_.size(); ++i) {
    const ParamSpec& s = specs_[i];
    std::mt19937_64 rng(seed * 0x9E3779B97F4A7C15ull + i);
    const float bound = 1.0f / std::sqrt(static_cast<float>(s.fan_in));
    for (std::int64_t j = 0; j < s.shape.numel(); ++j) {
      const float u = static_cast<float>(rng() >> 40) * (1.0f / 16777216.0f);  // [0, 1)
      host[s.offset + static_cast<std::size_t>(j)] = (2.0f * u - 1.0f) * bound;
    }
  }
  backend_.upload(host.data(), params_);
  backend_.fill(grads_, 0.0f);
}

void WideResNet::load(const safetensors::File& file) {
  std::vector<float> host(static_cast<std::size_t>(num_params()));
  for (const ParamSpec& s : specs_) {
    std::vector<std::int64_t> shape;
    for (int d = 0; d < s.shape.rank(); ++d) shape.push_back(s.shape[d]);
    const std::vector<float> v = file.f32_checked(s.name, shape);
    std::copy(v.begin(), v.end(), host.begin() + static_cast<std::ptrdiff_t>(s.offset));
  }
  backend_.upload(host.data(), params_);
}

void WideResNet::save(safetensors::Writer& writer) const {
  const std::vector<float> host = backend_.to_vector(params_);
  for (const ParamSpec& s : specs_) {
    std::vector<std::int64_t> shape;
    for (int d = 0; d < s.shape.rank(); ++d) shape.push_back(s.shape[d]);
    writer.add_f32(s.name, shape, host.data() + s.offset);
  }
}

}  // namespace jem
