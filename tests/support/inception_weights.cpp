// Random FID Inception-v3 weights for the tests; see inception_weights.hpp.
#include "inception_weights.hpp"

#include <cmath>
#include <random>
#include <vector>

#include "jem/inception_v3.hpp"
#include "jem/safetensors.hpp"

namespace jem::test {

std::string write_random_weights(const std::string& dir, const std::string& skip,
                                 const std::string& misshape, std::size_t limit) {
  safetensors::Writer w;
  std::mt19937_64 gen(2015);
  std::size_t written = 0;
  for (const InceptionTensorSpec& t : InceptionV3::tensor_specs()) {
    if (written++ == limit) break;
    if (t.name == skip) continue;
    std::vector<std::int64_t> shape = t.shape;
    if (t.name == misshape) shape[0] += 1;
    std::int64_t n = 1, fan_in = 1;
    for (std::size_t i = 0; i < shape.size(); ++i) {
      n *= shape[i];
      if (i > 0) fan_in *= shape[i];
    }
    std::vector<float> v(static_cast<std::size_t>(n));
    const auto ends = [&](const char* s) {
      const std::string suffix(s);
      return t.name.size() >= suffix.size() &&
             t.name.compare(t.name.size() - suffix.size(), suffix.size(), suffix) == 0;
    };
    if (ends(".conv.weight") || t.name == "fc.weight") {
      std::normal_distribution<float> nd(0.0f, float(std::sqrt(2.0 / double(fan_in))));
      for (float& x : v) x = nd(gen);
    } else {
      const bool around_one = ends(".bn.weight") || ends(".bn.running_var");
      std::uniform_real_distribution<float> u(around_one ? 0.5f : -0.1f, around_one ? 1.5f : 0.1f);
      for (float& x : v) x = u(gen);
    }
    w.add_f32(t.name, shape, v.data());
  }
  const std::string path = dir + "/inception_random.safetensors";
  w.write(path);
  return path;
}

}  // namespace jem::test
