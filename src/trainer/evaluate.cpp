#include "jem/evaluate.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

#include "jem/data_pipeline.hpp"

namespace jem {

EvalResult evaluate(WideResNet& model, const Dataset& data, float sigma, std::uint64_t seed,
                    const std::function<void(std::int64_t, std::int64_t)>& progress, EvalPredictions* predictions) {
  return evaluate_range(model, data, 0, data.count, sigma, seed, progress, predictions);
}

EvalResult evaluate_range(WideResNet& model, const Dataset& data, std::int64_t begin, std::int64_t total,
                          float sigma, std::uint64_t seed,
                          const std::function<void(std::int64_t, std::int64_t)>& progress,
                          EvalPredictions* predictions) {
  JEM_CHECK(begin >= 0 && total >= 0 && begin + total <= data.count, "evaluate: images [", begin, ", ",
            begin + total, ") outside ", data.name, " [0, ", data.count, ")");
  Backend& be = model.backend();
  const auto& cfg = model.config();
  JEM_CHECK(data.channels == cfg.in_channels && data.height == cfg.image_size &&
                data.width == cfg.image_size,
            "evaluate: ", data.name, " has images ", data.channels, "x", data.height, "x",
            data.width, ", the model expects ", cfg.in_channels, "x", cfg.image_size, "x", cfg.image_size);
  JEM_CHECK(data.classes <= cfg.n_classes, "evaluate: ", data.name, " has ", data.classes,
            " classes, the model ", cfg.n_classes);
  const int M = model.max_batch(), K = cfg.n_classes;
  const std::int64_t per = std::int64_t(cfg.in_channels) * cfg.image_size * cfg.image_size;
  const auto m = static_cast<std::size_t>(M);
  std::vector<float> x(m * static_cast<std::size_t>(per)), logits(m * static_cast<std::size_t>(K)), rows(m);
  std::vector<std::int32_t> y(m);
  const Tensor xd = be.empty(Shape{M, cfg.in_channels, cfg.image_size, cfg.image_size});
  const Tensor yd = be.empty(Shape{M}, DType::I32);
  const Tensor loss = be.empty(Shape{M}), energy = be.empty(Shape{M});
  const Tensor dl = be.empty(Shape{M, K});
  EvalResult r;
  double ce = 0, e = 0;
  std::int64_t correct = 0;
  if (predictions) *predictions = EvalPredictions{};
  for (std::int64_t first = begin; first < begin + total; first += M) {
    const int n = int(std::min<std::int64_t>(M, begin + total - first));
    make_eval_batch(data, first, n, sigma, seed, x.data(), y.data());
    const Tensor xn = xd.slice(0, n), yn = yd.slice(0, n);
    be.upload(x.data(), xn);
    be.upload_i32(y.data(), yn);
    const Tensor lg = model.forward(xn);
    be.cross_entropy_forward_backward(lg, yn, loss.slice(0, n), dl.slice(0, n), 0.0f);
    be.download(loss.slice(0, n), rows.data());
    for (int i = 0; i < n; ++i) ce += rows[std::size_t(i)];
    be.energy_forward_backward(lg, energy.slice(0, n), dl.slice(0, n), 0.0f);
    be.download(energy.slice(0, n), rows.data());
    for (int i = 0; i < n; ++i) e += rows[std::size_t(i)];
    be.download(lg, logits.data());
    for (int i = 0; i < n; ++i) {
      const float* row = logits.data() + std::size_t(i) * std::size_t(K);
      const int k = int(std::max_element(row, row + K) - row);
      if (k == y[std::size_t(i)]) ++correct;
      if (predictions) {
        double z = 0;  // max softmax = 1 / sum_j exp(l_j - l_max)
        for (int j = 0; j < K; ++j) z += std::exp(double(row[j]) - double(row[k]));
        predictions->predicted.push_back(k);
        predictions->confidence.push_back(float(1.0 / z));
        predictions->correct.push_back(k == y[std::size_t(i)] ? 1 : 0);
      }
    }
    if (progress) progress(first + n - begin, total);
  }
  r.count = total;
  if (r.count > 0) {
    r.accuracy = double(correct) / double(r.count);
    r.mean_ce = ce / double(r.count);
    r.mean_energy = e / double(r.count);
  }
  return r;
}

}  // namespace jem
