#include "jem/optimizer.hpp"

#include <initializer_list>

#include <algorithm>
#include <cmath>

#include "jem/safetensors.hpp"

namespace jem {

namespace {
constexpr double kPi = 3.14159265358979323846;
}  // namespace

float scheduled_lr(const OptimizerConfig& c, std::int64_t iteration, int epoch, float factor) {
  float lr = c.lr * factor;
  if (c.cosine) {
    const double span = double(std::max<std::int64_t>(1, c.total_iters - c.warmup_iters));
    const double t = std::clamp(double(iteration - c.warmup_iters) / span, 0.0, 1.0);
    lr = float(lr * 0.5 * (1.0 + std::cos(kPi * t)));
  } else {
    for (int e : c.decay_epochs)
      if (epoch >= e) lr *= c.decay_rate;
  }
  if (c.warmup_iters > 0 && iteration < c.warmup_iters)
    lr *= float(iteration + 1) / float(c.warmup_iters);
  return lr;
}

Optimizer::Optimizer(Backend& backend, const OptimizerConfig& config, std::int64_t num_params)
    : backend_(backend), config_(config) {
  JEM_CHECK(config.kind == "adam" || config.kind == "adamw" || config.kind == "sgd",
            "optimizer '", config.kind, "': expected adam, adamw or sgd");
  JEM_CHECK(config.ema >= 0.0f && config.ema < 1.0f, "optimizer: ema ", config.ema, " must be in [0, 1)");
  m_ = backend_.empty(Shape{num_params});
  if (config.kind != "sgd") v_ = backend_.empty(Shape{num_params});
  if (config.ema > 0.0f) ema_ = backend_.empty(Shape{num_params});
}

void Optimizer::reset() {
  backend_.fill(m_, 0.0f);
  if (v_.defined()) backend_.fill(v_, 0.0f);
  ema_started_ = false;
  steps_ = 0;
}

void Optimizer::update_ema(const Tensor& params) {
  if (!ema_.defined()) return;
  if (!ema_started_) {
    backend_.copy(params, ema_);
    ema_started_ = true;
    return;
  }
  const double t = double(steps_);
  const float d = float(std::min(double(config_.ema), (1.0 + t) / (10.0 + t)));
  backend_.scale(ema_, d);
  backend_.axpy(1.0f - d, params, ema_);
}

std::int64_t Optimizer::state_bytes() const {
  std::int64_t n = 0;
  for (const Tensor* t : {&m_, &v_, &ema_})
    if (t->defined()) n += std::int64_t(t->bytes());
  return n;
}

void Optimizer::step(const Tensor& params, const Tensor& grads, float lr) {
  ++steps_;
  if (config_.kind == "sgd") {
    backend_.sgd_step(params, grads, m_, lr, config_.momentum, config_.weight_decay);
    update_ema(params);
    return;
  }
  AdamStep s;
  s.lr = lr;
  s.beta1 = config_.beta1;
  s.beta2 = config_.beta2;
  s.eps = config_.eps;
  s.weight_decay = config_.weight_decay;
  s.decoupled = config_.kind == "adamw";
  // Bias corrections in double on the host: beta^t underflows gracefully, 1 - beta^t does not
  // lose precision for small t.
  s.bias1 = float(1.0 - std::pow(double(config_.beta1), double(steps_)));
  s.bias2 = float(1.0 - std::pow(double(config_.beta2), double(steps_)));
  backend_.adam_step(params, grads, m_, v_, s);
  update_ema(params);
}

void Optimizer::save(safetensors::Writer& w) const {
  const auto m = backend_.to_vector(m_);
  w.add_f32("optim.m", {m_.numel()}, m.data());
  if (v_.defined()) {
    const auto v = backend_.to_vector(v_);
    w.add_f32("optim.v", {v_.numel()}, v.data());
  }
  if (ema_started_) {
    const auto e = backend_.to_vector(ema_);
    w.add_f32("optim.ema", {ema_.numel()}, e.data());
  }
  const std::int64_t steps = steps_;
  w.add_i64("optim.steps", {1}, &steps);
}

void Optimizer::load(const safetensors::File& f) {
  backend_.upload(f.f32_checked("optim.m", {m_.numel()}).data(), m_);
  if (v_.defined()) backend_.upload(f.f32_checked("optim.v", {v_.numel()}).data(), v_);
  const auto steps = f.i64("optim.steps");
  JEM_CHECK(steps.size() == 1 && steps[0] >= 0, f.path(), ": tensor 'optim.steps' is invalid");
  steps_ = steps[0];
  ema_started_ = false;
  if (ema_.defined() && f.contains("optim.ema")) {
    backend_.upload(f.f32_checked("optim.ema", {ema_.numel()}).data(), ema_);
    ema_started_ = true;
  }
}

}  // namespace jem
