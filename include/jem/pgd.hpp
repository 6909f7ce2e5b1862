// Adversarial robustness: projected gradient descent (PGD) on the cross-entropy under an
// L-infinity or L2 budget, optionally followed by SGLD "purification" steps on the marginal
// energy before classifying (the JEM paper's defence).
//
// Units: images live in [-1, 1] (pixel / 127.5 - 1) but budgets are given on the usual [0, 1]
// pixel scale (eps = 8/255 means 8 grey levels), so internally every distance is doubled.
// Each step: x <- x + alpha * d, d = sign(g) (L-inf) or g / ||g||_2 (L2, per image), g the
// gradient of the loss of the true label; then project onto the eps ball around the clean image
// and clamp to [-1, 1]. The start is the clean image (no random start): deterministic.
//
// The attack differentiates the classifier only; purification runs after the attack (the
// gradient does not pass through the SGLD chain), so with purify_steps > 0 this measures a
// transfer attack from the undefended classifier, not an adaptive one.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "jem/datasets.hpp"
#include "jem/sampler.hpp"
#include "jem/wide_resnet.hpp"

namespace jem {

enum class PgdNorm { Linf, L2 };
const char* to_string(PgdNorm n);
PgdNorm parse_pgd_norm(const std::string& s);  // "linf" | "l2"

struct PgdConfig {
  PgdNorm norm = PgdNorm::Linf;
  float eps = 8.0f / 255.0f;  // [0, 1] pixel scale
  int steps = 10;
  float step_size = 0.0f;  // [0, 1] pixel scale; 0 = 2.5 * eps / steps (the usual choice)
};

// Attacks one batch on the backend: x[B, C, S, S] clean images, labels I32 [B]; writes the
// adversarial images into x_adv (same shape; may not alias x). `grad` and `dlogits`/`loss` are
// scratch of shapes [>=B, C, S, S], [>=B, K], [>=B]. Returns the mean loss of the final x_adv.
double pgd_attack(WideResNet& model, const Tensor& x, const Tensor& labels, const PgdConfig& cfg, const Tensor& x_adv);

struct RobustnessPoint {
  std::string norm;
  double eps = 0;        // [0, 1] pixel scale
  double accuracy = 0;   // after the attack (and purification)
  double mean_loss = 0;  // cross-entropy of the attacked images before purification
};

// Accuracy of the first `count` images of `data` (eval transform with `sigma`) under PGD of
// each eps in `eps_list`; `purify_steps` > 0 runs that many SGLD steps (marginal energy, the
// sampler's step size and noise) on the attacked images before classifying.
std::vector<RobustnessPoint> robustness_sweep(
    WideResNet& model, const Dataset& data, std::int64_t count, float sigma, std::uint64_t seed, PgdNorm norm,
    const std::vector<float>& eps_list, int steps, float step_size, int purify_steps, const SamplerConfig& sampler,
    const std::function<void(std::int64_t, std::int64_t)>& progress = nullptr);

// Accuracy (y, 0..1) against eps (x, 0..max eps of the norm): one panel per norm.
void write_robustness_png(const std::string& path, const std::vector<RobustnessPoint>& points);

}  // namespace jem
