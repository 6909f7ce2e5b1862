// The evaluation suite behind `jem eval --mode ...` and `jem report`: each mode runs on a loaded
// model and a data split, writes its plots and arrays into an output folder, and records its
// numbers (and its wall time) in SuiteResults, which report.hpp turns into report.md / .json.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "jem/calibration.hpp"
#include "jem/datasets.hpp"
#include "jem/evaluate.hpp"
#include "jem/pgd.hpp"
#include "jem/sampler.hpp"
#include "jem/train_config.hpp"
#include "jem/wide_resnet.hpp"

namespace jem {

inline constexpr const char* kEvalModes[] = {"accuracy", "calibration", "ood", "samples", "robustness", "fid"};

struct EvalOptions {
  std::string out_dir;     // plots, .npz files (created when missing)
  std::int64_t limit = 0;  // evaluate the first `limit` images of the split; 0 = all
  std::uint64_t seed = 1;  // eval noise, synthetic OOD sets, chains
  int ece_bins = 20;
  // ood: sets by name ("interp", "noise", "constant", or a data set "NAME[:DIR]")
  std::vector<std::string> ood_sets{"interp", "noise", "constant"};
  // samples
  int n_samples = 64;           // unconditional fresh chains
  int per_class = 10;           // conditional grids: samples per class
  int rounds = 10, steps = -1;  // rounds x steps SGLD steps per chain; steps -1 = the run's sgld_steps
  // robustness
  std::vector<float> eps_linf{0.0f, 2.0f / 255, 4.0f / 255, 8.0f / 255, 16.0f / 255};
  std::vector<float> eps_l2{0.0f, 0.25f, 0.5f, 1.0f};
  int pgd_steps = 10;
  float pgd_step_size = 0.0f;  // 0 = 2.5 eps / steps
  int purify_steps = 0;
  std::int64_t robust_count = 1000;  // images attacked (of the split, after `limit`)
  // fid
  std::string inception;  // weights of the Inception network
  std::int64_t fid_count = 10000;
  int is_splits = 10;
};

struct OodSetResult {
  std::string name;
  std::int64_t count = 0;
  double auroc[3] = {0, 0, 0};  // logsumexp, max_softmax, grad_norm (kOodScoreNames order)
};

struct SuiteResults {
  std::string checkpoint, dataset, split, model;
  std::int64_t images = 0;  // of the split evaluated
  std::optional<EvalResult> accuracy;
  std::optional<CalibrationResult> calibration;
  std::vector<OodSetResult> ood;
  std::vector<RobustnessPoint> robustness;
  int purify_steps = 0;
  struct Fid {
    double fid = 0, is_mean = 0, is_std = 0;
    std::int64_t count = 0;
  };
  std::optional<Fid> fid;
  std::map<std::string, std::string> files;  // role -> path, relative to out_dir
  std::map<std::string, double> seconds;     // mode -> wall time
};

class EvalSuite {
 public:
  // `data` is the split to evaluate, `replay_buffer` the checkpoint's ([S, C, H, W], may be
  // empty), `cfg` the checkpoint's training config (sigma, sampler settings, data location).
  // Checks that the data set's images and classes fit the model.
  EvalSuite(WideResNet& model, const TrainConfig& cfg, const Dataset& data, std::vector<float> replay_buffer,
            EvalOptions options, SuiteResults& results);

  // Runs one mode ("accuracy", ..., "fid"); throws jem::Error for an unknown one.
  void run(const std::string& mode);

  void accuracy();
  void calibration();
  void ood();
  void samples();
  void robustness();
  void fid();

  // What fid() feeds the Inception network, also written as out_dir/fid_samples.npz (array
  // "samples") and fid_reference.npz ("reference"): `fid_count` fresh chains run rounds x steps
  // SGLD steps, and as many training images of the checkpoint's data set. Host [N, C, S, S] in
  // [-1, 1] (the samples are not clamped unless the run clamps).
  void export_fid_inputs(std::vector<float>* generated, std::vector<float>* reference);

  // The reference images for FID: `count` training-set images in [-1, 1] (no noise), first
  // `count` of a seeded permutation. Host [count, C, H, W].
  static std::vector<float> reference_images(const Dataset& train, std::int64_t count, std::uint64_t seed);

 private:
  std::int64_t count() const;
  std::string out(const std::string& name) const;  // out_dir/name
  SamplerConfig sampler_config() const;
  std::vector<float> split_images(std::int64_t n) const;  // eval transform, [n, C, H, W]

  WideResNet& model_;
  TrainConfig cfg_;
  const Dataset& data_;
  std::vector<float> buffer_;
  EvalOptions opt_;
  SuiteResults& res_;
};

}  // namespace jem
