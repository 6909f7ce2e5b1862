#include "cli/eval_common.hpp"

#include <algorithm>
#include <cstdio>
#include <filesystem>

#include "cli/checkpoint_config.hpp"
#include "jem/checkpoint.hpp"
#include "jem/data_pipeline.hpp"
#include "jem/ood.hpp"
#include "jem/runtime.hpp"
#include "jem/safetensors.hpp"

namespace jem::cli {

namespace {

// "0.5", "8/255" -> float; a bad value names the option.
std::vector<float> parse_eps(const std::vector<std::string>& v, const char* option) {
  std::vector<float> out;
  for (const std::string& s : v) {
    try {
      std::size_t used = 0;
      const auto slash = s.find('/');
      double x = std::stod(s.substr(0, slash), &used);
      JEM_CHECK(used == (slash == std::string::npos ? s.size() : slash), "");
      if (slash != std::string::npos) {
        const double d = std::stod(s.substr(slash + 1), &used);
        JEM_CHECK(used == s.size() - slash - 1 && d != 0, "");
        x /= d;
      }
      JEM_CHECK(x >= 0, "");
      out.push_back(float(x));
    } catch (const std::exception&) {
      JEM_FAIL(option, ": '", s, "' is not a budget >= 0 (a number or a fraction like 8/255)");
    }
  }
  return out;
}

}  // namespace

void add_eval_options(CLI::App* cmd, EvalArgs& a) {
  cmd->add_option("--checkpoint", a.checkpoint,
                  "Checkpoint (.safetensors) written by jem train or "
                  "tools/convert_official_checkpoint.py")
      ->required();
  cmd->add_option("--split", a.split, "test, valid or train")
      ->check(CLI::IsMember({"test", "valid", "train"}))
      ->capture_default_str();
  cmd->add_option("--dataset", a.dataset, "Evaluate on this data set instead of the checkpoint's (same image shape)");
  cmd->add_option("--data_dir", a.data_dir, "Override the data directory of the checkpoint's config");
  cmd->add_option("--weights", a.weights,
                  "auto (the moving average of the parameters when the checkpoint has one), ema or raw")
      ->check(CLI::IsMember({"auto", "ema", "raw"}))
      ->capture_default_str();
  cmd->add_option("--device", a.device, "auto, cpu, cuda or cuda:N")->capture_default_str();
  cmd->add_option("--threads", a.threads, "CPU threads (0 = all cores)")->capture_default_str();
  cmd->add_option("--batch", a.batch, "Images per batch")->check(CLI::PositiveNumber)->capture_default_str();
  cmd->add_option("--limit", a.opt.limit, "Evaluate only the first N images of the split (0 = all)")
      ->capture_default_str();
  cmd->add_option("--seed", a.opt.seed, "Seed of the eval noise, the synthetic OOD sets and the chains")
      ->capture_default_str();
  cmd->add_option("--out", a.out, "Folder for plots, .npz files and reports (default: next to the checkpoint)");
  cmd->add_option("--ece_bins", a.opt.ece_bins, "calibration: equal-width confidence bins")->capture_default_str();
  cmd->add_option("--ood", a.opt.ood_sets,
                  "ood: OOD sets, comma-separated: interp, noise, constant, or a data set "
                  "NAME[:DIR] (fashion-mnist, mnist, cifar10, cifar100, svhn)")
      ->delimiter(',')
      ->capture_default_str();
  cmd->add_option("--n_samples", a.opt.n_samples, "samples: unconditional chains")->capture_default_str();
  cmd->add_option("--per_class", a.opt.per_class, "samples: conditional samples per class")->capture_default_str();
  cmd->add_option("--rounds", a.opt.rounds, "samples/fid: rounds of SGLD steps per chain")->capture_default_str();
  cmd->add_option("--steps", a.opt.steps, "samples/fid: SGLD steps per round (-1: the run's sgld_steps)")
      ->capture_default_str();
  cmd->add_option("--eps_linf", a.eps_linf,
                  "robustness: L-inf budgets on the [0, 1] pixel scale, e.g. 0,4/255,8/255 "
                  "(default 0,2/255,4/255,8/255,16/255; 'none' skips)")
      ->delimiter(',');
  cmd->add_option("--eps_l2", a.eps_l2,
                  "robustness: L2 budgets on the [0, 1] pixel scale (default 0,0.25,0.5,1; "
                  "'none' skips)")
      ->delimiter(',');
  cmd->add_option("--pgd_steps", a.opt.pgd_steps, "robustness: PGD steps")->capture_default_str();
  cmd->add_option("--pgd_step_size", a.opt.pgd_step_size, "robustness: PGD step size (0 = 2.5 eps / steps)")
      ->capture_default_str();
  cmd->add_option("--purify_steps", a.opt.purify_steps,
                  "robustness: SGLD steps on the attacked images before "
                  "classifying (the paper's defence)")
      ->capture_default_str();
  cmd->add_option("--robust_count", a.opt.robust_count, "robustness: images attacked")->capture_default_str();
  cmd->add_option("--inception", a.opt.inception, "fid: Inception-v3 weights file");
  cmd->add_option("--fid_count", a.opt.fid_count, "fid: generated and reference images")->capture_default_str();
  cmd->add_option("--is_splits", a.opt.is_splits, "fid: splits of the Inception Score")->capture_default_str();
}

std::vector<std::string> parse_modes(const std::string& spec, bool with_fid) {
  std::vector<std::string> asked, out;
  std::size_t p = 0;
  while (p <= spec.size()) {
    const auto c = spec.find(',', p);
    asked.push_back(spec.substr(p, c == std::string::npos ? std::string::npos : c - p));
    if (c == std::string::npos) break;
    p = c + 1;
  }
  for (const std::string& m : asked) {
    const bool known = m == "all" || std::find(std::begin(kEvalModes), std::end(kEvalModes), m) != std::end(kEvalModes);
    JEM_CHECK(known, "unknown eval mode '", m, "' (known: accuracy, calibration, ood, samples, robustness, fid, all)");
  }
  for (const char* m : kEvalModes) {
    const bool all =
        std::find(asked.begin(), asked.end(), "all") != asked.end() && (std::string(m) != "fid" || with_fid);
    if (all || std::find(asked.begin(), asked.end(), m) != asked.end()) out.push_back(m);
  }
  return out;
}

void run_eval_modes(EvalArgs& a, const std::vector<std::string>& modes, SuiteResults& res) {
  namespace fs = std::filesystem;
  if (!a.eps_linf.empty())
    a.opt.eps_linf =
        a.eps_linf == std::vector<std::string>{"none"} ? std::vector<float>{} : parse_eps(a.eps_linf, "--eps_linf");
  if (!a.eps_l2.empty())
    a.opt.eps_l2 =
        a.eps_l2 == std::vector<std::string>{"none"} ? std::vector<float>{} : parse_eps(a.eps_l2, "--eps_l2");
  // Everything about the inputs is checked before any work: the modes, the checkpoint, its
  // model, the data set and the OOD set names.
  if (std::find(modes.begin(), modes.end(), "fid") != modes.end()) {
    JEM_CHECK(!a.opt.inception.empty(), "--mode fid needs --inception FILE (the Inception-v3 weights, see docs/fid.md)");
    JEM_CHECK(fs::exists(a.opt.inception), a.opt.inception, ": Inception weights not found (see docs/fid.md)");
  }
  TrainConfig cfg = config_from_checkpoint(a.checkpoint);
  if (!a.dataset.empty() && a.dataset != cfg.dataset) {
    cfg.dataset = a.dataset;
    cfg.data_dir.clear();  // the other set's default location unless --data_dir
  }
  if (!a.data_dir.empty()) cfg.data_dir = a.data_dir;
  const WrnConfig mc = checkpoint_model_config(a.checkpoint);
  const auto file = safetensors::File::read(a.checkpoint);
  auto backend = make_backend(a.device, a.threads);
  WideResNet model(mc, *backend, a.batch);
  const bool average = load_model_weights(file, model, a.weights);
  std::vector<float> buffer;
  if (file.contains("replay_buffer")) {
    const auto& info = file.info("replay_buffer");
    JEM_CHECK(info.shape.size() == 4 && info.shape[1] == mc.in_channels && info.shape[2] == mc.image_size &&
                  info.shape[3] == mc.image_size,
              a.checkpoint, ": tensor 'replay_buffer' does not hold ", mc.in_channels, "x", mc.image_size, "x",
              mc.image_size, " images");
    buffer = file.f32("replay_buffer");
  }
  // The validation split matters only when it (or train) is evaluated; a converted or foreign
  // checkpoint's n_valid may not fit another data set's training set.
  const int n_valid = a.split == "test" ? 0 : cfg.n_valid;
  const DataSplits splits = load_splits(cfg.dataset, effective_data_dir(cfg), n_valid, cfg.seed);
  const Dataset& d = a.split == "test" ? splits.test : a.split == "valid" ? splits.valid : splits.train;
  JEM_CHECK(d.count > 0, "split '", a.split, "' of ", cfg.dataset, " is empty (n_valid = ", n_valid, ")");
  if (a.out.empty()) {
    fs::path p(a.checkpoint);
    a.out = (p.parent_path() / (p.stem().string() + "_eval")).string();
  }
  a.opt.out_dir = a.out;
  res.checkpoint = a.checkpoint;
  res.split = a.split;
  EvalSuite suite(model, cfg, d, std::move(buffer), a.opt, res);
  std::fprintf(stderr, "eval: %s%s on %s %s (%lld images), %s\n", mc.str().c_str(),
               average ? " (moving average of the parameters)" : "", cfg.dataset.c_str(), a.split.c_str(),
               static_cast<long long>(res.images), backend->name().c_str());
  for (const std::string& mode : modes) {
    suite.run(mode);
    const double s = res.seconds[mode];
    if (mode == "accuracy")
      std::printf("%s %s: accuracy %.4f, mean CE %.4f, mean energy %.4f (%lld images) [%.1fs]\n", cfg.dataset.c_str(),
                  a.split.c_str(), res.accuracy->accuracy, res.accuracy->mean_ce, res.accuracy->mean_energy,
                  static_cast<long long>(res.accuracy->count), s);
    else if (mode == "calibration")
      std::printf("calibration: ECE %.4f (%d bins), accuracy %.4f; %s/reliability.png [%.1fs]\n", res.calibration->ece,
                  int(res.calibration->bins.size()), res.accuracy->accuracy, a.out.c_str(), s);
    else if (mode == "ood") {
      for (const auto& o : res.ood)
        std::printf("ood %s (%lld images): AUROC logsumexp %.4f, max_softmax %.4f, grad_norm %.4f\n", o.name.c_str(),
                    static_cast<long long>(o.count), o.auroc[0], o.auroc[1], o.auroc[2]);
      std::printf("ood: histograms in %s [%.1fs]\n", a.out.c_str(), s);
    } else if (mode == "samples")
      std::printf("samples: grids and samples.npz in %s [%.1fs]\n", a.out.c_str(), s);
    else if (mode == "robustness") {
      for (const auto& p : res.robustness)
        std::printf("robustness %s eps %.4g: accuracy %.4f, mean CE %.4f\n", p.norm.c_str(), p.eps, p.accuracy,
                    p.mean_loss);
      std::printf("robustness: %s/robustness.png [%.1fs]\n", a.out.c_str(), s);
    } else if (mode == "fid" && res.fid)
      std::printf("fid: FID %.3f, IS %.3f +- %.3f (%lld images) [%.1fs]\n", res.fid->fid, res.fid->is_mean,
                  res.fid->is_std, static_cast<long long>(res.fid->count), s);
  }
}

}  // namespace jem::cli
