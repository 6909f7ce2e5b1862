// The JEM objective and its gradient, in one forward and one backward pass:
//
//   L = CE(x_lab, y_lab) + w_px  * (mean E(x_data) - mean E(x_q))
//                        + w_pxy * (mean E(x_lab, y_lab) - mean E(x_q|y, y_lab))
//                        + w_l2  * mean(E(x_data)^2 + E(x_q)^2)
//
// with E(x) = -logsumexp(logits(x)) and E(x, y) = -logits(x)[y]. The samples x_q (and x_q|y)
// are constants for the parameter gradient. All rows go through the network as one batch,
//   rows [0, B) x_lab | [B, 2B) x_data | [2B, 3B) x_q | [3B, 4B) x_q|y,
// the terms that are switched off (weight 0) drop their rows.
#pragma once

#include <cstdint>

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

class JemObjective {
 public:
  JemObjective(Backend& backend, WideResNet& model, const ObjectiveConfig& config, int batch);

  // Rows of the combined batch this objective needs: the model's max_batch must be >= this.
  static int rows_needed(const ObjectiveConfig& config, int batch);
  bool uses_px() const { return config_.w_px != 0.0f || config_.w_l2 != 0.0f; }
  bool uses_pxy() const { return config_.w_pxy != 0.0f; }

  // The device slices the caller fills before compute(): x_lab [B, C, S, S], labels I32 [B],
  // x_data, and (from the sampler) x_q and x_q|y.
  Tensor x_lab() const { return rows(0); }
  Tensor x_data() const { return rows(1); }
  Tensor x_q() const { return rows(2); }
  Tensor x_q_y() const { return rows(uses_px() ? 3 : 1); }
  const Tensor& labels() const { return labels_; }
  void set_labels(const std::int32_t* host_labels);

  // Zeroes the model's gradient buffer, runs forward and backward, returns the statistics.
  StepStats compute();

 private:
  Tensor rows(int block) const;

  Backend& backend_;
  WideResNet& model_;
  ObjectiveConfig config_;
  int B_;
  int blocks_;
  Tensor input_;    // [blocks * B, C, S, S]
  Tensor labels_;   // I32 [B]
  Tensor dlogits_;  // [blocks * B, K]
  Tensor tmp_;      // [B, K]
  Tensor per_row_;  // [blocks * B]
  Tensor extra_;    // [B] class energies of the x_lab rows
  std::vector<float> host_logits_, host_rows_, host_extra_;
  std::vector<std::int32_t> host_labels_;
};

}  // namespace jem
