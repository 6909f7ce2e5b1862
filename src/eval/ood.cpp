// OOD scores, synthetic OOD sets, AUROC and score histograms.
#include "jem/ood.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>

#include "jem/data_pipeline.hpp"
#include "jem/eval_io.hpp"
#include "jem/philox.hpp"

namespace jem {

double auroc(const std::vector<double>& pos, const std::vector<double>& neg) {
  JEM_CHECK(!pos.empty() && !neg.empty(), "auroc: ", pos.size(), " positives and ", neg.size(),
            " negatives (both must be non-empty)");
  // Mid-ranks over the pooled scores; U = (sum of positive ranks) - n_pos (n_pos + 1) / 2.
  struct Item {
    double v;
    bool pos;
  };
  std::vector<Item> all;
  all.reserve(pos.size() + neg.size());
  for (double v : pos) all.push_back({v, true});
  for (double v : neg) all.push_back({v, false});
  for (const Item& it : all) JEM_CHECK(!std::isnan(it.v), "auroc: a score is NaN");
  std::sort(all.begin(), all.end(), [](const Item& a, const Item& b) { return a.v < b.v; });
  double rank_sum = 0;
  for (std::size_t i = 0; i < all.size();) {
    std::size_t j = i;
    while (j < all.size() && all[j].v == all[i].v) ++j;
    const double mid = 0.5 * double(i + 1 + j);  // mean of ranks i+1 .. j
    for (std::size_t k = i; k < j; ++k)
      if (all[k].pos) rank_sum += mid;
    i = j;
  }
  const double np = double(pos.size()), nn = double(neg.size());
  return (rank_sum - np * (np + 1) / 2) / (np * nn);
}

const std::vector<double>& score_by_index(const OodScores& s, int i) {
  JEM_CHECK(i >= 0 && i < 3, "ood: score index ", i);
  return i == 0 ? s.logsumexp : i == 1 ? s.max_softmax : s.grad_norm;
}

OodScores compute_ood_scores(WideResNet& model, const std::vector<float>& images, std::int64_t n,
                             const std::function<void(std::int64_t, std::int64_t)>& progress) {
  Backend& be = model.backend();
  const WrnConfig& mc = model.config();
  const int M = model.max_batch(), K = mc.n_classes;
  const std::int64_t per = std::int64_t(mc.in_channels) * mc.image_size * mc.image_size;
  JEM_CHECK(std::int64_t(images.size()) == n * per, "ood: ", images.size(), " values for ", n, " images of ", per);
  const Tensor xd = be.empty(Shape{M, mc.in_channels, mc.image_size, mc.image_size});  // [M, C, S, S]
  const Tensor gd = be.empty(xd.shape());                                              // [M, C, S, S]
  const Tensor energy = be.empty(Shape{M}), dl = be.empty(Shape{M, K});
  std::vector<float> logits(std::size_t(M) * std::size_t(K)), grad(std::size_t(M * per));
  OodScores s;
  const ConstantWeights fixed(be, model.param_buffer());  // the weights only read
  for (std::int64_t first = 0; first < n; first += M) {
    const int b = int(std::min<std::int64_t>(M, n - first));
    const Tensor x = xd.slice(0, b), g = gd.slice(0, b);
    be.upload(images.data() + first * per, x);
    const Tensor lg = model.forward(x);  // [b, K]
    be.download(lg, logits.data());
    // dE/dlogits = -softmax with E = -logsumexp; the input gradient of the batch's summed
    // energy separates per image (no batch statistics in the model), so each row of g is
    // d E_i / d x_i = -d logsumexp_i / d x_i, with the same norm.
    be.energy_forward_backward(lg, energy.slice(0, b), dl.slice(0, b), 1.0f);
    model.backward_input(dl.slice(0, b), g);
    be.download(g, grad.data());
    for (int i = 0; i < b; ++i) {
      const float* row = logits.data() + std::size_t(i) * std::size_t(K);
      const double mx = *std::max_element(row, row + K);
      double z = 0;
      for (int k = 0; k < K; ++k) z += std::exp(double(row[k]) - mx);
      s.logsumexp.push_back(mx + std::log(z));
      s.max_softmax.push_back(1.0 / z);  // exp(max - max) / z
      double sq = 0;
      const float* gi = grad.data() + std::size_t(i) * std::size_t(per);
      for (std::int64_t e = 0; e < per; ++e) sq += double(gi[e]) * gi[e];
      s.grad_norm.push_back(-std::sqrt(sq));
    }
    if (progress) progress(first + b, n);
  }
  return s;
}

std::vector<float> interp_images(const std::vector<float>& source, std::int64_t m, std::int64_t per, std::int64_t n,
                                 std::uint64_t seed) {
  JEM_CHECK(m >= 1 && std::int64_t(source.size()) == m * per, "interp: ", source.size(), " values for ", m,
            " images of ", per);
  const std::vector<std::int32_t> a = philox_permutation(int(m), seed, 1, 0),
                                  b = philox_permutation(int(m), seed, 1, 1);
  std::vector<float> out(std::size_t(n * per));
  for (std::int64_t i = 0; i < n; ++i) {
    const float* x = source.data() + std::int64_t(a[std::size_t(i % m)]) * per;
    const float* y = source.data() + std::int64_t(b[std::size_t(i % m)]) * per;
    for (std::int64_t e = 0; e < per; ++e) out[std::size_t(i * per + e)] = 0.5f * (x[e] + y[e]);
  }
  return out;
}

std::vector<float> uniform_noise_images(std::int64_t n, std::int64_t per, std::uint64_t seed) {
  std::vector<float> out(std::size_t(n * per));
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t e = 0; e < per; ++e)
      out[std::size_t(i * per + e)] =
          philox_uniform_pm1(seed, RngStream::Eval, 2, 0, std::uint32_t(i), std::uint32_t(e));
  return out;
}

std::vector<float> constant_images(std::int64_t n, int channels, int height, int width, std::uint64_t seed) {
  const std::int64_t plane = std::int64_t(height) * width;
  std::vector<float> out(std::size_t(n * channels * plane));
  for (std::int64_t i = 0; i < n; ++i)
    for (int c = 0; c < channels; ++c) {
      const float v = philox_uniform_pm1(seed, RngStream::Eval, 3, 0, std::uint32_t(i), std::uint32_t(c));
      std::fill_n(out.begin() + (i * channels + c) * plane, plane, v);
    }
  return out;
}

std::uint32_t ood_color(int i) {
  static constexpr std::uint32_t colors[] = {0xd64541, 0x3b6fd1, 0x2ca02c, 0xff7f0e, 0x9467bd, 0x8c564b, 0xe377c2};
  return colors[std::size_t(i) % (sizeof colors / sizeof colors[0])];
}

void write_score_histogram_png(const std::string& path, const std::vector<double>& in_dist,
                               const std::vector<std::pair<std::string, std::vector<double>>>& ood) {
  constexpr int kBins = 40;
  const int W = 520, H = 320, left = 20, right = W - 20, top = 20, bottom = H - 40;
  double lo = INFINITY, hi = -INFINITY;
  auto extend = [&](const std::vector<double>& v) {
    for (double x : v)
      if (std::isfinite(x)) lo = std::min(lo, x), hi = std::max(hi, x);
  };
  extend(in_dist);
  for (const auto& o : ood) extend(o.second);
  if (!(lo < hi)) lo = (std::isfinite(lo) ? lo : 0) - 1, hi = lo + 2;
  // Normalised histograms (fraction of each set per bin), so sets of different sizes compare.
  auto hist = [&](const std::vector<double>& v) {
    std::vector<double> h(kBins, 0.0);
    for (double x : v)
      if (std::isfinite(x)) h[std::size_t(std::clamp(int((x - lo) / (hi - lo) * kBins), 0, kBins - 1))] += 1;
    for (double& c : h) c /= std::max<double>(1, double(v.size()));
    return h;
  };
  std::vector<std::vector<double>> hs{hist(in_dist)};
  for (const auto& o : ood) hs.push_back(hist(o.second));
  double peak = 1e-12;
  for (const auto& h : hs) peak = std::max(peak, *std::max_element(h.begin(), h.end()));
  Canvas c(W, H);
  const double bw = double(right - left) / kBins;
  auto bar_y = [&](double f) { return bottom - int(std::lround(f / peak * (bottom - top))); };
  // OOD sets as translucent-looking narrow bars side by side inside each bin, then the
  // in-distribution histogram as a black step outline on top.
  const int sets = int(ood.size());
  for (int s = 0; s < sets; ++s)
    for (int b = 0; b < kBins; ++b) {
      const double f = hs[std::size_t(s + 1)][std::size_t(b)];
      if (f <= 0) continue;
      const int x0 = left + int(b * bw + s * bw / sets), x1 = left + int(b * bw + (s + 1) * bw / sets) - 1;
      c.fill_rect(x0, bar_y(f), std::max(x0, x1), bottom, ood_color(s));
    }
  int prev_y = bottom;
  for (int b = 0; b < kBins; ++b) {
    const int y = bar_y(hs[0][std::size_t(b)]), x0 = left + int(b * bw), x1 = left + int((b + 1) * bw);
    c.line(x0, prev_y, x0, y, 0, 2);
    c.line(x0, y, x1, y, 0, 2);
    prev_y = y;
  }
  c.line(right, prev_y, right, bottom, 0, 2);
  c.line(left, bottom, right, bottom, 0, 2);
  char s[32];
  std::snprintf(s, sizeof s, "%.3g", lo);
  c.text(left, bottom + 12, s, 0);
  std::snprintf(s, sizeof s, "%.3g", hi);
  c.text(right - 4 * 2 * int(std::string(s).size()), bottom + 12, s, 0);
  c.write_png(path);
}

}  // namespace jem
