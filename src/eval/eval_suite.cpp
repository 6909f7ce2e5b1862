// The evaluation modes: each writes its files into out_dir and its numbers into SuiteResults.
#include "jem/eval_suite.hpp"
#include "jem/fid.hpp"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>

#include "jem/data_pipeline.hpp"
#include "jem/eval_io.hpp"
#include "jem/npz.hpp"
#include "jem/ood.hpp"
#include "jem/png_grid.hpp"
#include "jem/samples.hpp"

namespace jem {

namespace fs = std::filesystem;

namespace {

const char* const kDataSets[] = {"fashion-mnist", "mnist", "cifar10", "cifar100", "svhn"};

bool is_data_set(const std::string& name) {
  return std::find(std::begin(kDataSets), std::end(kDataSets), name) != std::end(kDataSets);
}

// "svhn:/data/svhn" -> {"svhn", "/data/svhn"}; "noise" -> {"noise", ""}.
std::pair<std::string, std::string> split_ood_name(const std::string& s) {
  const auto colon = s.find(':');
  if (colon == std::string::npos) return {s, ""};
  return {s.substr(0, colon), s.substr(colon + 1)};
}

void check_ood_name(const std::string& spec) {
  const auto [name, dir] = split_ood_name(spec);
  const bool synthetic = name == "interp" || name == "noise" || name == "constant";
  JEM_CHECK(synthetic || is_data_set(name), "unknown OOD set '", name,
            "' (known: interp, noise, constant, fashion-mnist, mnist, cifar10, cifar100, svhn; a data set may "
            "be given as NAME:DIR)");
  JEM_CHECK(!synthetic || dir.empty(), "OOD set '", spec, "': only data sets take a :DIR");
}

// The first n images of d with the eval transform (scaled, plus sigma noise).
std::vector<float> eval_images(const Dataset& d, std::int64_t n, float sigma, std::uint64_t seed) {
  const std::int64_t per = std::int64_t(d.channels) * d.height * d.width;
  std::vector<float> x(std::size_t(n * per));
  std::vector<std::int32_t> y(static_cast<std::size_t>(n));
  constexpr int kChunk = 1024;
  for (std::int64_t first = 0; first < n; first += kChunk) {
    const int b = int(std::min<std::int64_t>(kChunk, n - first));
    make_eval_batch(d, first, b, sigma, seed, x.data() + first * per, y.data() + first);
  }
  return x;
}

}  // namespace

EvalSuite::EvalSuite(WideResNet& model, const TrainConfig& cfg, const Dataset& data, std::vector<float> replay_buffer,
                     EvalOptions options, SuiteResults& results)
    : model_(model),
      cfg_(cfg),
      data_(data),
      buffer_(std::move(replay_buffer)),
      opt_(std::move(options)),
      res_(results) {
  const WrnConfig& mc = model.config();
  JEM_CHECK(data.channels == mc.in_channels && data.height == mc.image_size && data.width == mc.image_size, data.name,
            " has images ", data.channels, "x", data.height, "x", data.width, ", but the checkpoint's model (",
            mc.str(), ") expects ", mc.in_channels, "x", mc.image_size, "x", mc.image_size);
  JEM_CHECK(data.classes <= mc.n_classes, data.name, " has ", data.classes, " classes, but the checkpoint's model (",
            mc.str(), ") has ", mc.n_classes);
  JEM_CHECK(opt_.limit >= 0, "--limit ", opt_.limit, " must be >= 0");
  JEM_CHECK(opt_.ece_bins >= 1, "--ece_bins ", opt_.ece_bins, " must be >= 1");
  for (const std::string& s : opt_.ood_sets) check_ood_name(s);
  res_.dataset = cfg.dataset;
  res_.model = mc.str();
  res_.images = count();
}

std::int64_t EvalSuite::count() const {
  return opt_.limit > 0 ? std::min<std::int64_t>(opt_.limit, data_.count) : data_.count;
}

// Created on first use, so that modes without files (accuracy) leave no empty folder behind.
std::string EvalSuite::out(const std::string& name) const {
  JEM_CHECK(!opt_.out_dir.empty(), "eval: no output folder");
  std::error_code ec;
  fs::create_directories(opt_.out_dir, ec);
  JEM_CHECK(!ec, opt_.out_dir, ": cannot create the output folder (", ec.message(), ")");
  return (fs::path(opt_.out_dir) / name).string();
}

SamplerConfig EvalSuite::sampler_config() const {
  SamplerConfig sc;
  sc.step_size = float(cfg_.sgld_lr);
  sc.noise_std = float(cfg_.sgld_std);
  sc.clamp = cfg_.clamp;
  sc.n_classes = model_.config().n_classes;
  sc.steps = cfg_.sgld_steps;
  return sc;
}

std::vector<float> EvalSuite::split_images(std::int64_t n) const {
  return eval_images(data_, n, float(cfg_.sigma), opt_.seed);
}

void EvalSuite::run(const std::string& mode) {
  const auto t0 = std::chrono::steady_clock::now();
  if (mode == "accuracy")
    accuracy();
  else if (mode == "calibration")
    calibration();
  else if (mode == "ood")
    ood();
  else if (mode == "samples")
    samples();
  else if (mode == "robustness")
    robustness();
  else if (mode == "fid")
    fid();
  else
    JEM_FAIL("unknown eval mode '", mode, "' (known: accuracy, calibration, ood, samples, robustness, fid, all)");
  res_.seconds[mode] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Both accuracy and calibration come from one pass of evaluate() over the first count() images.
static Dataset first_images(const Dataset& d, std::int64_t n) {
  if (n >= d.count) return d;
  Dataset s = d;
  s.count = int(n);
  s.images.resize(std::size_t(n) * std::size_t(d.channels) * std::size_t(d.height) * std::size_t(d.width));
  s.labels.resize(std::size_t(n));
  return s;
}

void EvalSuite::accuracy() {
  ProgressBar bar("accuracy");
  const Dataset d = first_images(data_, count());
  res_.accuracy = evaluate(model_, d, float(cfg_.sigma), opt_.seed,
                           [&](std::int64_t done, std::int64_t total) { bar.update(done, total); });
  bar.finish();
}

void EvalSuite::calibration() {
  ProgressBar bar("calibration");
  const Dataset d = first_images(data_, count());
  EvalPredictions p;
  const EvalResult r = evaluate(
      model_, d, float(cfg_.sigma), opt_.seed, [&](std::int64_t done, std::int64_t total) { bar.update(done, total); },
      &p);
  bar.finish();
  if (!res_.accuracy) res_.accuracy = r;
  res_.calibration = expected_calibration_error(p.confidence, p.correct, opt_.ece_bins);
  write_reliability_png(out("reliability.png"), *res_.calibration);
  res_.files["reliability"] = "reliability.png";
}

void EvalSuite::ood() {
  const WrnConfig& mc = model_.config();
  const std::int64_t n = count(), per = std::int64_t(mc.in_channels) * mc.image_size * mc.image_size;
  JEM_CHECK(n > 0, "ood: the split has no images");
  const std::vector<float> in_images = split_images(n);
  OodScores in_scores;
  {
    ProgressBar bar("ood: " + data_.name);
    in_scores = compute_ood_scores(model_, in_images, n, [&](auto d, auto t) { bar.update(d, t); });
    bar.finish();
  }
  std::vector<std::pair<std::string, OodScores>> sets;
  for (const std::string& spec : opt_.ood_sets) {
    const auto [name, dir_given] = split_ood_name(spec);
    std::vector<float> x;
    std::int64_t m = n;
    if (name == "interp") {
      x = interp_images(in_images, n, per, n, opt_.seed);
    } else if (name == "noise") {
      x = uniform_noise_images(n, per, opt_.seed);
    } else if (name == "constant") {
      x = constant_images(n, mc.in_channels, mc.image_size, mc.image_size, opt_.seed);
    } else {
      TrainConfig other = cfg_;
      other.dataset = name;
      other.data_dir = dir_given;
      const DataSplits s = load_splits(name, effective_data_dir(other), 0, opt_.seed);
      JEM_CHECK(s.test.channels == mc.in_channels && s.test.height == mc.image_size && s.test.width == mc.image_size,
                "OOD set '", name, "' has images ", s.test.channels, "x", s.test.height, "x", s.test.width,
                ", the model (", mc.str(), ") expects ", mc.in_channels, "x", mc.image_size, "x", mc.image_size);
      m = std::min<std::int64_t>(n, s.test.count);
      x = eval_images(s.test, m, float(cfg_.sigma), opt_.seed);
    }
    ProgressBar bar("ood: " + name);
    OodScores sc = compute_ood_scores(model_, x, m, [&](auto d, auto t) { bar.update(d, t); });
    bar.finish();
    OodSetResult r;
    r.name = name;
    r.count = m;
    for (int i = 0; i < 3; ++i) r.auroc[i] = auroc(score_by_index(in_scores, i), score_by_index(sc, i));
    res_.ood.push_back(r);
    sets.emplace_back(name, std::move(sc));
  }
  for (int i = 0; i < 3; ++i) {
    std::vector<std::pair<std::string, std::vector<double>>> h;
    for (const auto& [name, sc] : sets) h.emplace_back(name, score_by_index(sc, i));
    const std::string file = std::string("ood_") + kOodScoreNames[i] + ".png";
    write_score_histogram_png(out(file), score_by_index(in_scores, i), h);
    res_.files[std::string("ood_") + kOodScoreNames[i]] = file;
  }
}

void EvalSuite::samples() {
  Backend& be = model_.backend();
  const WrnConfig& mc = model_.config();
  const int K = mc.n_classes, C = mc.in_channels, S = mc.image_size;
  const std::int64_t per = std::int64_t(C) * S * S;
  const int steps = opt_.steps >= 0 ? opt_.steps : cfg_.sgld_steps;
  JEM_CHECK(opt_.n_samples >= 1 && opt_.per_class >= 1 && opt_.rounds >= 1,
            "samples: --n_samples, --per_class and "
            "--rounds must be >= 1");
  SgldSampler sampler(be, model_, sampler_config(), model_.max_batch());
  std::vector<NpyArray> arrays;
  {  // unconditional: fresh uniform chains
    const int n = opt_.n_samples;
    std::vector<float> x = fresh_noise(be, n, C, S, opt_.seed);
    ProgressBar bar("samples: fresh chains");
    run_sgld_chains(be, sampler, mc, model_.max_batch(), x, n, {}, opt_.rounds, steps, opt_.seed,
                    [&](auto d, auto t) { bar.update(d, t); });
    bar.finish();
    write_png_grid(out("samples_fresh.png"), x.data(), n, C, S, S);
    res_.files["samples_fresh"] = "samples_fresh.png";
    arrays.push_back(NpyArray::floats("fresh", {n, C, S, S}, std::move(x)));
  }
  {  // class-conditional chains, E(x, y) = -logits[y]: one row of per_class samples per class
    const int n = K * opt_.per_class;
    std::vector<float> x = fresh_noise(be, n, C, S, opt_.seed + 1);
    std::vector<std::int32_t> y(static_cast<std::size_t>(n));
    for (int i = 0; i < n; ++i) y[std::size_t(i)] = i / opt_.per_class;
    ProgressBar bar("samples: conditional chains");
    run_sgld_chains(be, sampler, mc, model_.max_batch(), x, n, y, opt_.rounds, steps, opt_.seed + 1,
                    [&](auto d, auto t) { bar.update(d, t); });
    bar.finish();
    write_png_grid(out("samples_conditional.png"), x.data(), n, C, S, S, opt_.per_class);
    res_.files["samples_conditional"] = "samples_conditional.png";
    arrays.push_back(NpyArray::floats("conditional", {n, C, S, S}, std::move(x)));
    arrays.push_back(NpyArray::ints("conditional_labels", {n}, std::move(y)));
  }
  if (!buffer_.empty()) {  // the replay buffer, grouped by predicted class, most confident first
    const std::int64_t m = std::int64_t(buffer_.size()) / per;
    const auto groups = group_by_predicted_class(model_, buffer_, m);
    const int n = K * opt_.per_class;
    std::vector<float> grid(std::size_t(n * per), -1.0f);  // empty tiles stay black
    std::vector<std::int32_t> slot(static_cast<std::size_t>(n), -1);
    for (int k = 0; k < K; ++k)
      for (int j = 0; j < opt_.per_class && j < int(groups[std::size_t(k)].size()); ++j) {
        const std::int64_t s = groups[std::size_t(k)][std::size_t(j)], t = std::int64_t(k) * opt_.per_class + j;
        std::copy_n(buffer_.begin() + s * per, per, grid.begin() + t * per);
        slot[std::size_t(t)] = std::int32_t(s);
      }
    write_png_grid(out("buffer_by_class.png"), grid.data(), n, C, S, S, opt_.per_class);
    res_.files["buffer_by_class"] = "buffer_by_class.png";
    arrays.push_back(NpyArray::floats("buffer_by_class", {n, C, S, S}, std::move(grid)));
    arrays.push_back(NpyArray::ints("buffer_by_class_slots", {n}, std::move(slot)));
  }
  write_npz(out("samples.npz"), arrays);
  res_.files["samples_npz"] = "samples.npz";
}

void EvalSuite::robustness() {
  const std::int64_t n = std::min<std::int64_t>(count(), opt_.robust_count);
  res_.robustness.clear();
  res_.purify_steps = opt_.purify_steps;
  const std::pair<PgdNorm, const std::vector<float>*> sweeps[] = {{PgdNorm::Linf, &opt_.eps_linf},
                                                                  {PgdNorm::L2, &opt_.eps_l2}};
  for (const auto& [norm, eps] : sweeps) {
    if (eps->empty()) continue;
    ProgressBar bar(std::string("robustness: PGD ") + to_string(norm));
    const auto pts =
        robustness_sweep(model_, data_, n, float(cfg_.sigma), opt_.seed, norm, *eps, opt_.pgd_steps, opt_.pgd_step_size,
                         opt_.purify_steps, sampler_config(), [&](auto d, auto t) { bar.update(d, t); });
    bar.finish();
    res_.robustness.insert(res_.robustness.end(), pts.begin(), pts.end());
  }
  JEM_CHECK(!res_.robustness.empty(), "robustness: no eps given for either norm");
  write_robustness_png(out("robustness.png"), res_.robustness);
  res_.files["robustness"] = "robustness.png";
}

std::vector<float> EvalSuite::reference_images(const Dataset& train, std::int64_t count, std::uint64_t seed) {
  JEM_CHECK(train.count > 0, "fid: the training set is empty");
  count = std::min<std::int64_t>(count, train.count);
  const std::vector<std::int32_t> perm = philox_permutation(train.count, seed, 4, 0);
  const std::int64_t per = std::int64_t(train.channels) * train.height * train.width;
  std::vector<float> x(std::size_t(count * per));
  for (std::int64_t i = 0; i < count; ++i) {
    const std::uint8_t* src = train.images.data() + std::int64_t(perm[std::size_t(i)]) * per;
    for (std::int64_t e = 0; e < per; ++e) x[std::size_t(i * per + e)] = scale_pixel(src[e]);
  }
  return x;
}

void EvalSuite::export_fid_inputs(std::vector<float>* generated, std::vector<float>* reference) {
  Backend& be = model_.backend();
  const WrnConfig& mc = model_.config();
  const int C = mc.in_channels, S = mc.image_size;
  const std::int64_t n = opt_.fid_count;
  JEM_CHECK(n >= 1, "--fid_count must be >= 1");
  // Generated: fresh chains, rounds x steps (as the unconditional samples).
  SgldSampler sampler(be, model_, sampler_config(), model_.max_batch());
  std::vector<float> gen = fresh_noise(be, int(n), C, S, opt_.seed + 2);
  {
    ProgressBar bar("fid: sampling");
    run_sgld_chains(be, sampler, mc, model_.max_batch(), gen, n, {}, opt_.rounds,
                    opt_.steps >= 0 ? opt_.steps : cfg_.sgld_steps, opt_.seed + 2,
                    [&](auto d, auto t) { bar.update(d, t); });
    bar.finish();
  }
  // Reference: training images of the checkpoint's data set.
  const DataSplits splits = load_splits(cfg_.dataset, effective_data_dir(cfg_), cfg_.n_valid, cfg_.seed);
  std::vector<float> ref = reference_images(splits.train, n, opt_.seed);
  const std::int64_t m = std::int64_t(ref.size()) / (std::int64_t(C) * S * S);
  write_npz(out("fid_samples.npz"), {NpyArray::floats("samples", {n, C, S, S}, gen)});
  write_npz(out("fid_reference.npz"), {NpyArray::floats("reference", {m, C, S, S}, ref)});
  res_.files["fid_samples"] = "fid_samples.npz";
  res_.files["fid_reference"] = "fid_reference.npz";
  *generated = std::move(gen);
  *reference = std::move(ref);
}

void EvalSuite::fid() {
  // Fail before any work when the score cannot be computed.
  JEM_CHECK(!opt_.inception.empty(), "--mode fid needs --inception FILE (the Inception-v3 weights)");
  JEM_CHECK(fs::exists(opt_.inception), opt_.inception, ": Inception weights not found");
  std::vector<float> gen, ref;
  export_fid_inputs(&gen, &ref);
  const WrnConfig& mc = model_.config();
  const std::int64_t per = std::int64_t(mc.in_channels) * mc.image_size * mc.image_size;
  const std::int64_t n = std::int64_t(gen.size()) / per, m = std::int64_t(ref.size()) / per;
  // Host tensors over the vectors: the network uploads them batch by batch.
  Tensor g = Tensor::host(Shape{n, mc.in_channels, mc.image_size, mc.image_size});
  Tensor r = Tensor::host(Shape{m, mc.in_channels, mc.image_size, mc.image_size});
  std::copy(gen.begin(), gen.end(), g.data<float>());
  std::copy(ref.begin(), ref.end(), r.data<float>());
  const FidIsResult f = fid_and_inception_score(model_.backend(), opt_.inception, g, r,
                                                model_.max_batch(), std::min<int>(opt_.is_splits, int(n)));
  res_.fid = SuiteResults::Fid{f.fid, f.is_mean, f.is_std, n};
}

}  // namespace jem
