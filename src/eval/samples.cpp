// SGLD sample chains for grids and export, and the buffer grouped by predicted class.
#include "jem/samples.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace jem {

void run_sgld_chains(Backend& be, SgldSampler& sampler, const WrnConfig& mc, int chunk, std::vector<float>& x,
                     std::int64_t n, const std::vector<std::int32_t>& labels, int rounds, int steps, std::uint64_t seed,
                     const std::function<void(std::int64_t, std::int64_t)>& progress) {
  const std::int64_t per = std::int64_t(mc.in_channels) * mc.image_size * mc.image_size;
  JEM_CHECK(n >= 0 && chunk >= 1 && rounds >= 0 && steps >= 0, "sample chains: n ", n, ", chunk ", chunk, ", rounds ",
            rounds, ", steps ", steps);
  JEM_CHECK(std::int64_t(x.size()) == n * per, "sample chains: ", x.size(), " values for ", n, " chains of ", per);
  JEM_CHECK(labels.empty() || std::int64_t(labels.size()) == n, "sample chains: ", labels.size(), " labels for ", n,
            " chains");
  const Tensor xd = be.empty(Shape{chunk, mc.in_channels, mc.image_size, mc.image_size});  // [chunk, C, S, S]
  const Tensor yd = be.empty(Shape{chunk}, DType::I32);                                    // [chunk]
  const std::int64_t total = n * rounds;
  std::int64_t done = 0;
  for (std::int64_t first = 0; first < n; first += chunk) {
    const int b = int(std::min<std::int64_t>(chunk, n - first));
    const Tensor xb = xd.slice(0, b);
    be.upload(x.data() + first * per, xb);
    Tensor yb;
    if (!labels.empty()) {
      yb = yd.slice(0, b);
      be.upload_i32(labels.data() + first, yb);
    }
    for (int r = 0; r < rounds; ++r) {
      sampler.run_chains(xb, yb, seed, std::uint32_t(r), std::uint32_t(first), steps);
      done += b;
      if (progress) progress(done, total);
    }
    be.download(xb, x.data() + first * per);
  }
}

std::vector<float> fresh_noise(Backend& be, int n, int channels, int image_size, std::uint64_t seed) {
  ReplayBuffer start(be, n, channels, image_size, 1);
  start.init_uniform(seed);
  return be.to_vector(start.data());
}

std::vector<std::vector<std::int64_t>> group_by_predicted_class(WideResNet& model, const std::vector<float>& images,
                                                                std::int64_t m) {
  Backend& be = model.backend();
  const WrnConfig& mc = model.config();
  const int M = model.max_batch(), K = mc.n_classes;
  const std::int64_t per = std::int64_t(mc.in_channels) * mc.image_size * mc.image_size;
  JEM_CHECK(std::int64_t(images.size()) == m * per, "group by class: ", images.size(), " values for ", m, " images of ",
            per);
  const Tensor xd = be.empty(Shape{M, mc.in_channels, mc.image_size, mc.image_size});  // [M, C, S, S]
  std::vector<float> logits(std::size_t(M) * std::size_t(K));
  std::vector<int> pred(static_cast<std::size_t>(m));
  std::vector<double> conf(static_cast<std::size_t>(m));
  for (std::int64_t first = 0; first < m; first += M) {
    const int b = int(std::min<std::int64_t>(M, m - first));
    const Tensor xb = xd.slice(0, b);
    be.upload(images.data() + first * per, xb);
    be.download(model.forward(xb), logits.data());
    for (int i = 0; i < b; ++i) {
      const float* row = logits.data() + std::size_t(i) * std::size_t(K);
      const int k = int(std::max_element(row, row + K) - row);
      double z = 0;
      for (int j = 0; j < K; ++j) z += std::exp(double(row[j]) - row[k]);
      pred[std::size_t(first + i)] = k;
      conf[std::size_t(first + i)] = 1.0 / z;
    }
  }
  std::vector<std::vector<std::int64_t>> groups(static_cast<std::size_t>(K));
  for (std::int64_t i = 0; i < m; ++i) groups[std::size_t(pred[std::size_t(i)])].push_back(i);
  for (auto& g : groups)
    std::stable_sort(g.begin(), g.end(),
                     [&](std::int64_t a, std::int64_t b) { return conf[std::size_t(a)] > conf[std::size_t(b)]; });
  return groups;
}

}  // namespace jem
