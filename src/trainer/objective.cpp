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
                           int batch, int px_batch, int batch_total, int px_batch_total)
    : backend_(backend), model_(model), config_(config), B_(batch), Bp_(px_batch > 0 ? px_batch : batch),
      B_total_(batch_total > 0 ? batch_total : batch), Bp_total_(px_batch_total > 0 ? px_batch_total : Bp_) {
  JEM_CHECK(batch >= 1, "objective: batch ", batch, " must be >= 1");
  JEM_CHECK(B_total_ >= B_ && Bp_total_ >= Bp_, "objective: this rank's batch ", B_, " / ", Bp_,
            " exceeds the global batch ", B_total_, " / ", Bp_total_);
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
  // Means over the GLOBAL batch: the ranks' gradients add up to the global one.
  const float inv_b = 1.0f / float(B_total_), inv_bp = 1.0f / float(Bp_total_);
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
  // Sums over this rank's rows, then means over the global batch.
  StepSums& u = sums_;
  u = StepSums{};
  const int K = model_.config().n_classes;
  auto sum = [&](int begin, int count) {
    double acc = 0;
    for (int b = begin; b < begin + count; ++b) acc += host_rows_[static_cast<std::size_t>(b)];
    return acc;
  };
  for (float v : host_rows_) u.max_abs_energy = std::max(u.max_abs_energy, double(std::fabs(v)));
  u.sum[0] = sum(0, B);
  int correct = 0;
  for (int b = 0; b < B; ++b) {
    const float* row = host_logits_.data() + static_cast<std::size_t>(b) * static_cast<std::size_t>(K);
    if (int(std::max_element(row, row + K) - row) == host_labels_[static_cast<std::size_t>(b)]) ++correct;
  }
  u.sum[1] = correct;
  if (uses_px()) {
    u.sum[2] = sum(B, Bp);
    u.sum[3] = sum(B + Bp, Bp);
    for (int b = B; b < B + 2 * Bp; ++b)
      u.sum[4] += double(host_rows_[static_cast<std::size_t>(b)]) * host_rows_[static_cast<std::size_t>(b)];
  }
  if (uses_pxy()) {
    backend_.download(extra_, host_extra_.data());
    for (float v : host_extra_) u.sum[5] += v;
    u.sum[6] = sum(qy, B);
  }
  return stats(u);
}

StepStats JemObjective::stats(const StepSums& u) const {
  const double B = B_total_, Bp = Bp_total_;
  StepStats s;
  s.max_abs_energy = u.max_abs_energy;
  s.ce = u.sum[0] / B;
  s.acc = u.sum[1] / B;
  s.loss = s.ce;
  if (uses_px()) {
    s.e_data = u.sum[2] / Bp;
    s.e_q = u.sum[3] / Bp;
    s.loss += config_.w_px * (s.e_data - s.e_q) + config_.w_l2 * u.sum[4] / Bp;
  }
  if (uses_pxy()) {
    s.e_lab_y = u.sum[5] / B;
    s.e_q_y = u.sum[6] / B;
    s.loss += config_.w_pxy * (s.e_lab_y - s.e_q_y);
  }
  return s;
}

}  // namespace jem
