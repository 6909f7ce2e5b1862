// Out-of-distribution detection: the three scores of the JEM paper, the synthetic OOD sets, and
// AUROC.
//
// Scores (higher = more in-distribution):
//   logsumexp     logsumexp_y logits(x)[y] = log p(x) + log Z
//   max_softmax   max_y p(y | x)
//   grad_norm     -|| d logsumexp(logits(x)) / dx ||_2   (the paper's "approximate mass" score)
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "jem/wide_resnet.hpp"

namespace jem {

// Area under the ROC curve of `positives` (label 1) against `negatives` (label 0): the
// Mann-Whitney statistic U / (n_pos * n_neg), where a positive above a negative counts 1 and a
// tie 1/2 (mid-ranks). Both sets must be non-empty; NaN scores are an error.
double auroc(const std::vector<double>& positives, const std::vector<double>& negatives);

struct OodScores {
  std::vector<double> logsumexp, max_softmax, grad_norm;  // each [n]; grad_norm holds -||g||
};

inline constexpr const char* kOodScoreNames[3] = {"logsumexp", "max_softmax", "grad_norm"};
const std::vector<double>& score_by_index(const OodScores& s, int i);

// Scores of n host images [n, C, H, W] in batches of model.max_batch().
OodScores compute_ood_scores(WideResNet& model, const std::vector<float>& images, std::int64_t n,
                             const std::function<void(std::int64_t, std::int64_t)>& progress = nullptr);

// The synthetic OOD sets, each [n, C, H, W] on the host, deterministic in `seed` (Philox, Eval
// stream, iterations 1-3):
// the average of pairs of in-distribution images taken from two independent permutations of
// `source` ([m, C, H, W], m >= 1);
std::vector<float> interp_images(const std::vector<float>& source, std::int64_t m, std::int64_t image_numel,
                                 std::int64_t n, std::uint64_t seed);
// U[-1, 1) per pixel;
std::vector<float> uniform_noise_images(std::int64_t n, std::int64_t image_numel, std::uint64_t seed);
// one U[-1, 1) value per image and channel, repeated over the pixels.
std::vector<float> constant_images(std::int64_t n, int channels, int height, int width, std::uint64_t seed);

// Overlaid histograms (40 bins over the common range) of one score: the in-distribution
// scores in black outline, each OOD set in its own colour. A legend is not drawn: report.md
// lists the colours.
void write_score_histogram_png(const std::string& path, const std::vector<double>& in_dist,
                               const std::vector<std::pair<std::string, std::vector<double>>>& ood);
// The colour (0xRRGGBB) of OOD set i in the histograms.
std::uint32_t ood_color(int i);

}  // namespace jem
