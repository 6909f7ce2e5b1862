// PGD attacks and the robustness sweep.
#include "jem/pgd.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>

#include "jem/data_pipeline.hpp"
#include "jem/eval_io.hpp"
#include "jem/ood.hpp"

namespace jem {

const char* to_string(PgdNorm n) { return n == PgdNorm::Linf ? "linf" : "l2"; }

PgdNorm parse_pgd_norm(const std::string& s) {
  if (s == "linf") return PgdNorm::Linf;
  if (s == "l2") return PgdNorm::L2;
  JEM_FAIL("unknown PGD norm '", s, "' (known: linf, l2)");
}

double pgd_attack(WideResNet& model, const Tensor& x, const Tensor& labels, const PgdConfig& cfg, const Tensor& x_adv) {
  Backend& be = model.backend();
  JEM_CHECK(cfg.eps >= 0 && cfg.steps >= 0, "pgd: eps ", cfg.eps, " and steps ", cfg.steps, " must be >= 0");
  JEM_CHECK(x.shape() == x_adv.shape(), "pgd: x ", x.shape().str(), " and x_adv ", x_adv.shape().str());
  const int B = int(x.dim(0)), K = model.config().n_classes;
  const std::int64_t per = x.numel() / B;
  // Budgets in the [-1, 1] image scale: twice the [0, 1] pixel scale.
  const double eps = 2.0 * cfg.eps;
  const double alpha = 2.0 * (cfg.step_size > 0 ? cfg.step_size : 2.5f * cfg.eps / float(std::max(cfg.steps, 1)));
  const Tensor grad = be.empty(x.shape());  // [B, C, S, S]
  const Tensor loss = be.empty(Shape{B}), dl = be.empty(Shape{B, K});
  const std::vector<float> x0 = be.to_vector(x);  // clean images [B, C, S, S]
  std::vector<float> xa = x0, g(x0.size()), l(static_cast<std::size_t>(B));
  be.copy(x, x_adv);
  auto loss_and_grad = [&] {
    const Tensor lg = model.forward(x_adv);  // [B, K]
    be.cross_entropy_forward_backward(lg, labels, loss, dl, 1.0f);
    model.backward_input(dl, grad);  // d(sum_b CE_b)/dx: each row its own image's gradient
  };
  // A zero budget leaves the clean images: no steps to take.
  const int steps = eps > 0 ? cfg.steps : 0;
  const ConstantWeights fixed(be, model.param_buffer());  // only the images change
  for (int t = 0; t < steps; ++t) {
    loss_and_grad();
    be.download(grad, g.data());
    for (int b = 0; b < B; ++b) {
      float* xi = xa.data() + std::size_t(b) * std::size_t(per);
      const float* gi = g.data() + std::size_t(b) * std::size_t(per);
      const float* ci = x0.data() + std::size_t(b) * std::size_t(per);
      if (cfg.norm == PgdNorm::Linf) {
        for (std::int64_t e = 0; e < per; ++e) {
          const double step = gi[e] > 0 ? alpha : gi[e] < 0 ? -alpha : 0.0;
          const double v = std::clamp(double(xi[e]) + step, double(ci[e]) - eps, double(ci[e]) + eps);
          xi[e] = float(std::clamp(v, -1.0, 1.0));
        }
      } else {
        double gn = 0;
        for (std::int64_t e = 0; e < per; ++e) gn += double(gi[e]) * gi[e];
        gn = std::sqrt(gn);
        if (gn > 0)
          for (std::int64_t e = 0; e < per; ++e) xi[e] = float(double(xi[e]) + alpha * gi[e] / gn);
        // Project onto the L2 ball, then clamp to the image range. Clamping moves every
        // coordinate towards the clean image (which lies inside [-1, 1]), so it cannot leave
        // the ball.
        double dn = 0;
        for (std::int64_t e = 0; e < per; ++e) dn += (double(xi[e]) - ci[e]) * (double(xi[e]) - ci[e]);
        dn = std::sqrt(dn);
        const double shrink = dn > eps ? eps / dn : 1.0;
        for (std::int64_t e = 0; e < per; ++e)
          xi[e] = float(std::clamp(double(ci[e]) + (double(xi[e]) - ci[e]) * shrink, -1.0, 1.0));
      }
    }
    be.upload(xa.data(), x_adv);
  }
  // The final loss (the gradient is computed too; it is cheap next to the attack and keeps
  // one code path).
  loss_and_grad();
  be.download(loss, l.data());
  double sum = 0;
  for (float v : l) sum += v;
  return sum / std::max(B, 1);
}

std::vector<RobustnessPoint> robustness_sweep(WideResNet& model, const Dataset& data, std::int64_t count, float sigma,
                                              std::uint64_t seed, PgdNorm norm, const std::vector<float>& eps_list,
                                              int steps, float step_size, int purify_steps,
                                              const SamplerConfig& sampler,
                                              const std::function<void(std::int64_t, std::int64_t)>& progress) {
  Backend& be = model.backend();
  const WrnConfig& mc = model.config();
  JEM_CHECK(data.channels == mc.in_channels && data.height == mc.image_size && data.width == mc.image_size,
            "robustness: ", data.name, " has images ", data.channels, "x", data.height, "x", data.width,
            ", the model expects ", mc.in_channels, "x", mc.image_size, "x", mc.image_size);
  count = std::min<std::int64_t>(count, data.count);
  JEM_CHECK(count > 0, "robustness: no images to attack");
  const int M = model.max_batch(), K = mc.n_classes;
  const std::int64_t per = std::int64_t(mc.in_channels) * mc.image_size * mc.image_size;
  const Tensor xd = be.empty(Shape{M, mc.in_channels, mc.image_size, mc.image_size});  // [M, C, S, S]
  const Tensor ad = be.empty(xd.shape());                                              // [M, C, S, S]
  const Tensor yd = be.empty(Shape{M}, DType::I32);
  SgldSampler purifier(be, model, sampler, M);
  std::vector<float> x(std::size_t(M * per)), logits(std::size_t(M) * std::size_t(K));
  std::vector<std::int32_t> y(static_cast<std::size_t>(M));
  std::vector<RobustnessPoint> out;
  const std::int64_t total = count * std::int64_t(eps_list.size());
  std::int64_t done = 0;
  for (std::size_t k = 0; k < eps_list.size(); ++k) {
    PgdConfig pc{norm, eps_list[k], steps, step_size};
    std::int64_t correct = 0;
    double loss = 0;
    for (std::int64_t first = 0; first < count; first += M) {
      const int b = int(std::min<std::int64_t>(M, count - first));
      make_eval_batch(data, first, b, sigma, seed, x.data(), y.data());
      const Tensor xb = xd.slice(0, b), ab = ad.slice(0, b), yb = yd.slice(0, b);
      be.upload(x.data(), xb);
      be.upload_i32(y.data(), yb);
      loss += pgd_attack(model, xb, yb, pc, ab) * b;
      if (purify_steps > 0)  // marginal-energy chains from the attacked images
        purifier.run_chains(ab, Tensor(), seed, std::uint32_t(k), std::uint32_t(first), purify_steps);
      be.download(model.forward(ab), logits.data());
      for (int i = 0; i < b; ++i) {
        const float* row = logits.data() + std::size_t(i) * std::size_t(K);
        if (int(std::max_element(row, row + K) - row) == y[std::size_t(i)]) ++correct;
      }
      done += b;
      if (progress) progress(done, total);
    }
    out.push_back({to_string(norm), eps_list[k], double(correct) / double(count), loss / double(count)});
  }
  return out;
}

void write_robustness_png(const std::string& path, const std::vector<RobustnessPoint>& points) {
  std::map<std::string, std::vector<RobustnessPoint>> by_norm;
  for (const auto& p : points) by_norm[p.norm].push_back(p);
  JEM_CHECK(!by_norm.empty(), path, ": no robustness points to plot");
  const int PW = 360, H = 320, top = 30, bottom = H - 40;
  Canvas c(PW * int(by_norm.size()), H);
  int panel = 0;
  for (auto& [norm, pts] : by_norm) {
    std::sort(pts.begin(), pts.end(), [](const auto& a, const auto& b) { return a.eps < b.eps; });
    const int left = panel * PW + 50, right = (panel + 1) * PW - 20;
    double emax = pts.back().eps > 0 ? pts.back().eps : 1.0;
    auto px = [&](double e) { return left + int(std::lround(e / emax * (right - left))); };
    auto py = [&](double a) { return bottom - int(std::lround(a * (bottom - top))); };
    c.line(left, top, left, bottom, 0, 2);
    c.line(left, bottom, right, bottom, 0, 2);
    for (int t = 0; t <= 4; ++t) {
      char s[16];
      std::snprintf(s, sizeof s, "%.2g", t / 4.0);
      c.line(left - 5, py(t / 4.0), left, py(t / 4.0), 0);
      c.text(left - 40, py(t / 4.0) - 5, s, 0);
    }
    for (std::size_t i = 0; i < pts.size(); ++i) {
      const int x = px(pts[i].eps), y = py(pts[i].accuracy);
      if (i > 0) c.line(px(pts[i - 1].eps), py(pts[i - 1].accuracy), x, y, ood_color(panel), 2);
      c.fill_rect(x - 3, y - 3, x + 3, y + 3, ood_color(panel));
    }
    char s[48];
    std::snprintf(s, sizeof s, "%s EPS 0-%.3g", norm == "linf" ? "LINF" : "L2", emax);
    c.text(left + 10, 8, s, 0);
    ++panel;
  }
  c.write_png(path);
}

}  // namespace jem
