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
                           int batch, int px_batch, int batch_total, int px_batch_total, int stage_slots)
    : backend_(backend), model_(model), config_(config), B_(batch), Bp_(px_batch > 0 ? px_batch : batch),
      B_total_(batch_total > 0 ? batch_total : batch), Bp_total_(px_batch_total > 0 ? px_batch_total : Bp_),
      slots_(stage_slots) {
  JEM_CHECK(batch >= 1, "objective: batch ", batch, " must be >= 1");
  JEM_CHECK(stage_slots >= 1, "objective: stage_slots ", stage_slots, " must be >= 1");
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
  stage_ = backend_.empty(Shape{slots_, slot_floats()});
  host_stage_.resize(static_cast<std::size_t>(slots_) * static_cast<std::size_t>(slot_floats()));
  host_labels_.resize(static_cast<std::size_t>(batch));
  stage_labels_.resize(static_cast<std::size_t>(slots_) * static_cast<std::size_t>(batch));
  collected_.resize(static_cast<std::size_t>(slots_));
}

void JemObjective::set_labels(const std::int32_t* host_labels) {
  std::copy(host_labels, host_labels + B_, host_labels_.begin());
  backend_.upload_i32(host_labels, labels_);
}

StepStats JemObjective::compute() {
  compute_staged(0);
  return stats(collect(1)[0]);
}

void JemObjective::compute_staged(int slot) {
  JEM_CHECK(slot >= 0 && slot < slots_, "objective: staging slot ", slot, " of ", slots_);
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

  // This iteration's statistics stay on the device: a few hundred floats copied into the slot.
  const int K = model_.config().n_classes;
  const std::size_t base = std::size_t(slot) * std::size_t(slot_floats());
  backend_.copy(per_row_, stage_.view(base, Shape{rows_}));
  backend_.copy(rows(logits, 0, B), stage_.view(base + std::size_t(rows_), Shape{B, K}));
  if (uses_pxy())
    backend_.copy(extra_, stage_.view(base + std::size_t(rows_) + std::size_t(B) * std::size_t(K), Shape{B}));
  std::copy(host_labels_.begin(), host_labels_.end(), stage_labels_.begin() + std::ptrdiff_t(slot) * B);
}

const std::vector<StepSums>& JemObjective::collect(int count) {
  JEM_CHECK(count >= 1 && count <= slots_, "objective: collect ", count, " of ", slots_, " staging slots");
  backend_.download(stage_.view(0, Shape{count, slot_floats()}), host_stage_.data());
  const int B = B_, Bp = Bp_, K = model_.config().n_classes;
  for (int slot = 0; slot < count; ++slot) {
    const float* row_values = host_stage_.data() + std::size_t(slot) * std::size_t(slot_floats());  // [rows]
    const float* logits = row_values + rows_;                        // [B, K]
    const float* extra = logits + std::size_t(B) * std::size_t(K);  // [B]
    const std::int32_t* labels = stage_labels_.data() + std::ptrdiff_t(slot) * B;
    // Sums over this rank's rows, then means over the global batch.
    StepSums& u = collected_[std::size_t(slot)];
    u = StepSums{};
    auto sum = [&](int begin, int n) {
      double acc = 0;
      for (int b = begin; b < begin + n; ++b) acc += row_values[b];
      return acc;
    };
    for (int b = 0; b < rows_; ++b) u.max_abs_energy = std::max(u.max_abs_energy, double(std::fabs(row_values[b])));
    u.sum[0] = sum(0, B);
    int correct = 0;
    for (int b = 0; b < B; ++b) {
      const float* row = logits + std::size_t(b) * std::size_t(K);
      if (int(std::max_element(row, row + K) - row) == labels[b]) ++correct;
    }
    u.sum[1] = correct;
    if (uses_px()) {
      u.sum[2] = sum(B, Bp);
      u.sum[3] = sum(B + Bp, Bp);
      for (int b = B; b < B + 2 * Bp; ++b) u.sum[4] += double(row_values[b]) * row_values[b];
    }
    if (uses_pxy()) {
      for (int b = 0; b < B; ++b) u.sum[5] += extra[b];
      u.sum[6] = sum(qy_begin(), B);
    }
  }
  sums_ = collected_[std::size_t(count - 1)];
  return collected_;
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
