#include "jem/objective.hpp"

#include <algorithm>
#include <cmath>

namespace jem {

int JemObjective::rows_needed(const ObjectiveConfig& c, int batch) {
  const bool px = c.w_px != 0.0f || c.w_l2 != 0.0f;
  const bool pxy = c.w_pxy != 0.0f;
  return batch * (1 + (px ? 2 : 0) + (pxy ? 1 : 0));
}

JemObjective::JemObjective(Backend& backend, WideResNet& model, const ObjectiveConfig& config,
                           int batch)
    : backend_(backend), model_(model), config_(config), B_(batch) {
  blocks_ = rows_needed(config, batch) / batch;
  JEM_CHECK(model.max_batch() >= blocks_ * batch, "objective needs ", blocks_ * batch,
            " rows, the model was planned for ", model.max_batch());
  const auto& m = model.config();
  const std::int64_t R = std::int64_t(blocks_) * batch;
  input_ = backend_.empty(Shape{R, m.in_channels, m.image_size, m.image_size});
  labels_ = backend_.empty(Shape{batch}, DType::I32);
  dlogits_ = backend_.empty(Shape{R, m.n_classes});
  tmp_ = backend_.empty(Shape{batch, m.n_classes});
  per_row_ = backend_.empty(Shape{R});
  extra_ = backend_.empty(Shape{batch});
  host_logits_.resize(std::size_t(batch) * std::size_t(m.n_classes));
  host_rows_.resize(std::size_t(R));
  host_extra_.resize(std::size_t(batch));
  host_labels_.resize(std::size_t(batch));
}

Tensor JemObjective::rows(int block) const { return input_.slice(std::int64_t(block) * B_, std::int64_t(block + 1) * B_); }

void JemObjective::set_labels(const std::int32_t* host_labels) {
  std::copy(host_labels, host_labels + B_, host_labels_.begin());
  backend_.upload_i32(host_labels, labels_);
}

StepStats JemObjective::compute() {
  const int B = B_;
  const float inv_b = 1.0f / float(B);
  backend_.fill(model_.grad_buffer(), 0.0f);
  const Tensor logits = model_.forward(input_);  // [blocks * B, K]
  auto block = [&](const Tensor& t, int i) { return t.slice(std::int64_t(i) * B, std::int64_t(i + 1) * B); };

  // Block 0: cross-entropy (mean), plus the p(x, y) data term on the same rows.
  backend_.cross_entropy_forward_backward(block(logits, 0), labels_, block(per_row_, 0),
                                          block(dlogits_, 0), inv_b);
  if (uses_pxy()) {
    backend_.class_energy_forward_backward(block(logits, 0), labels_, extra_, tmp_, config_.w_pxy * inv_b);
    backend_.axpy(1.0f, tmp_, block(dlogits_, 0));
  }
  int next = 1;
  if (uses_px()) {
    // E(x_data) pulled down, E(x_q) pushed up; the L2 term pulls both towards 0.
    backend_.energy_sq_forward_backward(block(logits, 1), block(per_row_, 1), block(dlogits_, 1),
                                        config_.w_px * inv_b, config_.w_l2 * inv_b);
    backend_.energy_sq_forward_backward(block(logits, 2), block(per_row_, 2), block(dlogits_, 2),
                                        -config_.w_px * inv_b, config_.w_l2 * inv_b);
    next = 3;
  }
  if (uses_pxy())
    backend_.class_energy_forward_backward(block(logits, next), labels_, block(per_row_, next),
                                           block(dlogits_, next), -config_.w_pxy * inv_b);
  model_.backward(dlogits_, Tensor());

  // Statistics: a few hundred floats read back.
  backend_.download(per_row_, host_rows_.data());
  backend_.download(block(logits, 0), host_logits_.data());
  StepStats s;
  const int K = model_.config().n_classes;
  auto mean = [&](int i) {
    double sum = 0;
    for (int b = 0; b < B; ++b) sum += host_rows_[std::size_t(i * B + b)];
    return sum / B;
  };
  for (float v : host_rows_) s.max_abs_energy = std::max(s.max_abs_energy, double(std::fabs(v)));
  s.ce = mean(0);
  int correct = 0;
  for (int b = 0; b < B; ++b) {
    const float* row = host_logits_.data() + std::size_t(b) * std::size_t(K);
    if (int(std::max_element(row, row + K) - row) == host_labels_[std::size_t(b)]) ++correct;
  }
  s.acc = double(correct) / B;
  s.loss = s.ce;
  if (uses_px()) {
    s.e_data = mean(1);
    s.e_q = mean(2);
    double sq = 0;
    for (int b = B; b < 3 * B; ++b) sq += double(host_rows_[std::size_t(b)]) * host_rows_[std::size_t(b)];
    s.loss += config_.w_px * (s.e_data - s.e_q) + config_.w_l2 * sq / B;
  }
  if (uses_pxy()) {
    backend_.download(extra_, host_extra_.data());
    double lab = 0;
    for (float v : host_extra_) lab += v;
    s.e_lab_y = lab / B;
    s.e_q_y = mean(next);
    s.loss += config_.w_pxy * (s.e_lab_y - s.e_q_y);
  }
  return s;
}

}  // namespace jem
