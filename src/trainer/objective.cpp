#include "jem/objective.hpp"

#include <algorithm>
#include <cmath>

namespace jem {

int JemObjective::rows_needed(const ObjectiveConfig& c, int batch, int px_batch) {
  const int bp = px_batch > 0 ? px_batch : batch;
  const bool px = c.w_px != 0.0f || c.w_l2 != 0.0f;
  const bool pxy = c.w_pxy != 0.0f;
  return batch + (px ? 2 * bp : 0) + (pxy ? batch : 0);
}

JemObjective::JemObjective(Backend& backend, WideResNet& model, const ObjectiveConfig& config,
                           int batch, int px_batch)
    : backend_(backend), model_(model), config_(config), B_(batch), Bp_(px_batch > 0 ? px_batch : batch) {
  JEM_CHECK(batch >= 1, "objective: batch ", batch, " must be >= 1");
  rows_ = rows_needed(config, batch, Bp_);
  JEM_CHECK(model.max_batch() >= rows_, "objective needs ", rows_, " rows, the model was planned for ",
            model.max_batch());
  const auto& m = model.config();
  input_ = backend_.empty(Shape{rows_, m.in_channels, m.image_size, m.image_size});
  labels_ = backend_.empty(Shape{batch}, DType::I32);
  dlogits_ = backend_.empty(Shape{rows_, m.n_classes});
  tmp_ = backend_.empty(Shape{batch, m.n_classes});
  per_row_ = backend_.empty(Shape{rows_});
  extra_ = backend_.empty(Shape{batch});
  host_logits_.resize(static_cast<std::size_t>(batch) * static_cast<std::size_t>(m.n_classes));
  host_rows_.resize(static_cast<std::size_t>(rows_));
  host_extra_.resize(static_cast<std::size_t>(batch));
  host_labels_.resize(static_cast<std::size_t>(batch));
}

void JemObjective::set_labels(const std::int32_t* host_labels) {
  std::copy(host_labels, host_labels + B_, host_labels_.begin());
  backend_.upload_i32(host_labels, labels_);
}

StepStats JemObjective::compute() {
  const int B = B_, Bp = Bp_;
  const float inv_b = 1.0f / float(B), inv_bp = 1.0f / float(Bp);
  backend_.fill(model_.grad_buffer(), 0.0f);
  const Tensor logits = model_.forward(input_);  // [rows, K]
  auto rows = [](const Tensor& t, int begin, int count) { return t.slice(begin, begin + count); };

  // x_lab rows: cross-entropy (mean), plus the p(x, y) data term on the same rows.
  backend_.cross_entropy_forward_backward(rows(logits, 0, B), labels_, rows(per_row_, 0, B),
                                          rows(dlogits_, 0, B), inv_b);
  if (uses_pxy()) {
    backend_.class_energy_forward_backward(rows(logits, 0, B), labels_, extra_, tmp_, config_.w_pxy * inv_b);
    backend_.axpy(1.0f, tmp_, rows(dlogits_, 0, B));
  }
  if (uses_px()) {
    // E(x_data) pulled down, E(x_q) pushed up; the L2 term pulls both towards 0.
    backend_.energy_sq_forward_backward(rows(logits, B, Bp), rows(per_row_, B, Bp), rows(dlogits_, B, Bp),
                                        config_.w_px * inv_bp, config_.w_l2 * inv_bp);
    backend_.energy_sq_forward_backward(rows(logits, B + Bp, Bp), rows(per_row_, B + Bp, Bp),
                                        rows(dlogits_, B + Bp, Bp), -config_.w_px * inv_bp,
                                        config_.w_l2 * inv_bp);
  }
  const int qy = qy_begin();
  if (uses_pxy())
    backend_.class_energy_forward_backward(rows(logits, qy, B), labels_, rows(per_row_, qy, B),
                                           rows(dlogits_, qy, B), -config_.w_pxy * inv_b);
  model_.backward(dlogits_, Tensor());

  // Statistics: a few hundred floats read back.
  backend_.download(per_row_, host_rows_.data());
  backend_.download(rows(logits, 0, B), host_logits_.data());
  StepStats s;
  const int K = model_.config().n_classes;
  auto mean = [&](int begin, int count) {
    double sum = 0;
    for (int b = begin; b < begin + count; ++b) sum += host_rows_[static_cast<std::size_t>(b)];
    return sum / count;
  };
  for (float v : host_rows_) s.max_abs_energy = std::max(s.max_abs_energy, double(std::fabs(v)));
  s.ce = mean(0, B);
  int correct = 0;
  for (int b = 0; b < B; ++b) {
    const float* row = host_logits_.data() + static_cast<std::size_t>(b) * static_cast<std::size_t>(K);
    if (int(std::max_element(row, row + K) - row) == host_labels_[static_cast<std::size_t>(b)]) ++correct;
  }
  s.acc = double(correct) / B;
  s.loss = s.ce;
  if (uses_px()) {
    s.e_data = mean(B, Bp);
    s.e_q = mean(B + Bp, Bp);
    double sq = 0;
    for (int b = B; b < B + 2 * Bp; ++b)
      sq += double(host_rows_[static_cast<std::size_t>(b)]) * host_rows_[static_cast<std::size_t>(b)];
    s.loss += config_.w_px * (s.e_data - s.e_q) + config_.w_l2 * sq / Bp;
  }
  if (uses_pxy()) {
    backend_.download(extra_, host_extra_.data());
    double lab = 0;
    for (float v : host_extra_) lab += v;
    s.e_lab_y = lab / B;
    s.e_q_y = mean(qy, B);
    s.loss += config_.w_pxy * (s.e_lab_y - s.e_q_y);
  }
  return s;
}

}  // namespace jem
