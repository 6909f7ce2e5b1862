// The JEM objective and its gradient, in one forward and one backward pass:
//
//   L = CE(x_lab, y_lab) + w_px  * (mean E(x_data) - mean E(x_q))
//                        + w_pxy * (mean E(x_lab, y_lab) - mean E(x_q|y, y_lab))
//                        + w_l2  * mean(E(x_data)^2 + E(x_q)^2)
//
// with E(x) = -logsumexp(logits(x)) and E(x, y) = -logits(x)[y]. The samples x_q (and x_q|y)
// are constants for the parameter gradient. All rows go through the network as one batch,
//   rows [0, B) x_lab | then Bp rows x_data | Bp rows x_q | B rows x_q|y,
// (B the labelled batch, Bp the p(x) batch); the terms that are switched off (weight 0) drop
// their rows.
//
// Data parallelism: each rank holds its share of the rows of the GLOBAL batch (B_total labelled,
// Bp_total p(x)), and every mean divides by the global count, so the gradients of the ranks SUM
// (one all-reduce) to the gradient of the global batch, whatever the split. The statistics are
// likewise sums over this rank's rows (StepSums), added across ranks, then turned into means.
//
// Statistics without a host round trip per iteration: compute_staged(slot) leaves the
// iteration's per-row energies and CEs, logits and labels in staging slot `slot` (device-side
// copies, nothing read back), and collect(n) reads slots [0, n) back in one transfer and turns
// each into StepSums. The trainer reads back every `stats_every` iterations; compute() is the
// same path with one slot.
#pragma once

#include <cstdint>
#include <vector>

#include "jem/backend.hpp"
#include "jem/wide_resnet.hpp"

namespace jem {

struct ObjectiveConfig {
  float w_px = 1.0f;
  float w_pxy = 0.0f;
  float w_l2 = 0.0f;
};

struct StepStats {
  double loss = 0, ce = 0, acc = 0;
  double e_data = 0, e_q = 0;     // mean energies (0 when w_px = 0)
  double e_lab_y = 0, e_q_y = 0;  // mean class energies (0 when w_pxy = 0)
  double max_abs_energy = 0;      // over every row: what the divergence guard watches
};

// Sums over one rank's rows; add them across ranks (max_abs_energy: the maximum).
struct StepSums {
  static constexpr int kSums = 7;
  // ce, correct, e_data, e_q, e_data^2 + e_q^2, e_lab_y, e_q_y
  double sum[kSums] = {};
  double max_abs_energy = 0;
};

class JemObjective {
 public:
  // `px_batch` = 0: the p(x) batch is as large as the labelled one. `batch_total` and
  // `px_batch_total` (0 = this rank's counts): the global batch that the means divide by.
  // `stage_slots`: how many iterations' statistics can wait on the device for collect().
  JemObjective(Backend& backend, WideResNet& model, const ObjectiveConfig& config, int batch,
               int px_batch = 0, int batch_total = 0, int px_batch_total = 0, int stage_slots = 1);

  // Rows of the combined batch this objective needs: the model's max_batch must be >= this.
  static int rows_needed(const ObjectiveConfig& config, int batch, int px_batch = 0);
  int batch() const { return B_; }
  int px_batch() const { return Bp_; }
  bool uses_px() const { return config_.w_px != 0.0f || config_.w_l2 != 0.0f; }
  bool uses_pxy() const { return config_.w_pxy != 0.0f; }

  // The device slices the caller fills before compute(): x_lab [B, C, S, S], labels I32 [B],
  // x_data, and (from the sampler) x_q and x_q|y.
  Tensor x_lab() const { return input_.slice(0, B_); }
  Tensor x_data() const { return input_.slice(B_, B_ + Bp_); }
  Tensor x_q() const { return input_.slice(B_ + Bp_, B_ + 2 * Bp_); }
  Tensor x_q_y() const { return input_.slice(qy_begin(), qy_begin() + B_); }
  const Tensor& labels() const { return labels_; }
  void set_labels(const std::int32_t* host_labels);

  // Zeroes the model's gradient buffer, runs forward and backward, returns the statistics
  // (over this rank's rows, as if they were the global batch: with several ranks, reduce
  // last_sums() and call stats() instead).
  StepStats compute();
  const StepSums& last_sums() const { return sums_; }
  // compute() without reading anything back: the statistics wait in staging slot `slot`
  // (0 <= slot < stage_slots) until collect().
  void compute_staged(int slot);
  // Reads back staging slots [0, count) in one transfer: their sums over this rank's rows.
  const std::vector<StepSums>& collect(int count);
  int stage_slots() const { return slots_; }
  // Means over the global batch from sums over all of its rows.
  StepStats stats(const StepSums& sums) const;

 private:
  int qy_begin() const { return uses_px() ? B_ + 2 * Bp_ : B_; }
  int slot_floats() const { return rows_ + B_ * model_.config().n_classes + B_; }

  Backend& backend_;
  WideResNet& model_;
  ObjectiveConfig config_;
  int B_, Bp_;
  int B_total_, Bp_total_;
  int rows_;
  int slots_;
  StepSums sums_;
  std::vector<StepSums> collected_;
  Tensor input_;    // [rows, C, S, S]
  Tensor labels_;   // I32 [B]
  Tensor dlogits_;  // [rows, K]
  Tensor tmp_;      // [B, K]
  Tensor per_row_;  // [rows]
  Tensor extra_;    // [B] class energies of the x_lab rows
  // Staging, one slot per iteration waiting for collect(): per_row_ | logits of the x_lab rows |
  // extra_, i.e. [slots, rows + B*K + B]; on the host the same plus the labels [slots, B].
  Tensor stage_;
  std::vector<float> host_stage_;
  std::vector<std::int32_t> host_labels_;   // [B] set_labels()'s
  std::vector<std::int32_t> stage_labels_;  // [slots, B]
};

}  // namespace jem
