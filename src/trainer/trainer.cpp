#include "jem/trainer.hpp"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>

#include "jem/checkpoint.hpp"
#include "jem/data_pipeline.hpp"
#include "jem/evaluate.hpp"
#include "jem/objective.hpp"
#include "jem/optimizer.hpp"
#include "jem/png_grid.hpp"
#include "jem/run_log.hpp"
#include "jem/sampler.hpp"
#include "jem/wide_resnet.hpp"

namespace jem {

namespace fs = std::filesystem;

namespace {

using Clock = std::chrono::steady_clock;

// Stream ids of the two independent batch streams of JEM.
constexpr std::uint32_t kDataStream = 0;  // x_data (the p(x) batch)
constexpr std::uint32_t kLabStream = 1;   // (x_lab, y_lab)

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

// A JSON number: non-finite values become null (JSON has no NaN).
std::string num(double v) { return std::isfinite(v) ? fmt("%.6g", v) : "null"; }

// Writes `text` to `path` atomically (temp file + rename).
void write_text_atomically(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    JEM_CHECK(out.good(), tmp, ": cannot open for writing");
    out << text;
    out.flush();
    JEM_CHECK(out.good(), tmp, ": write failed (disk full?)");
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  JEM_CHECK(!ec, path, ": cannot rename the temp file into place: ", ec.message());
}

// Everything a run holds, built once before the first iteration.
struct Run {
  TrainConfig cfg;
  TrainOptions opt;
  std::string dir, ckpt_dir, sample_dir;
  DataSplits data;
  Backend* backend = nullptr;
  std::unique_ptr<WideResNet> model;
  std::unique_ptr<JemObjective> objective;
  std::unique_ptr<SgldSampler> sampler;
  std::unique_ptr<ReplayBuffer> buffer;
  std::unique_ptr<Optimizer> optimizer;
  std::unique_ptr<BatchStream> data_stream, lab_stream;
  std::unique_ptr<RunLog> log;
  OptimizerConfig ocfg;
  ObjectiveConfig objcfg;
  TrainState state;
  std::string config_toml;
  std::int64_t total_iters = 0;
  int bpe = 0;  // batches per epoch
  std::vector<float> sample_host;
};

// A run exists once it has a completed checkpoint (every run writes one before its first
// iteration). A directory with only log.txt / metrics.jsonl / config.toml is a run killed before
// that checkpoint: nothing to resume, so a fresh start may reuse it.
bool dir_holds_a_run(const std::string& dir) { return !list_checkpoints(dir + "/checkpoints").empty(); }

void setup(Run& r) {
  const TrainConfig& c = r.cfg;
  // 1. Everything that can fail on bad input, before the run directory is touched.
  r.data = load_splits(c.dataset, effective_data_dir(c), c.n_valid, c.seed);
  const int K = r.data.train.classes;
  validate(c, K);
  JEM_CHECK(r.data.train.height == r.data.train.width, "dataset ", c.dataset, " has non-square images");
  r.dir = c.out;
  r.ckpt_dir = r.dir + "/checkpoints";
  r.sample_dir = r.dir + "/samples";
  if (r.opt.resume) {
    JEM_CHECK(!list_checkpoints(r.ckpt_dir).empty(), "--resume ", r.dir, ": no checkpoint in ", r.ckpt_dir);
  } else {
    JEM_CHECK(!dir_holds_a_run(r.dir), "run directory ", r.dir,
              " already holds a run: continue it with --resume ", r.dir, " or choose another --out");
  }
  r.config_toml = to_toml(c);

  WrnConfig w;
  w.depth = c.depth;
  w.width = c.width;
  w.in_channels = r.data.train.channels;
  w.image_size = r.data.train.height;
  w.n_classes = K;
  w.slope = float(c.slope);
  r.objcfg = ObjectiveConfig{float(c.w_px), float(c.w_pxy), float(c.w_l2)};
  const int B = c.batch_size;
  const int Bp = c.px_batch_size > 0 ? c.px_batch_size : B;
  const int max_batch = std::max(JemObjective::rows_needed(r.objcfg, B, Bp), std::min(c.eval_batch, 1024));
  r.model = std::make_unique<WideResNet>(w, *r.backend, max_batch);
  r.objective = std::make_unique<JemObjective>(*r.backend, *r.model, r.objcfg, B, Bp);
  SamplerConfig sc;
  sc.buffer_size = c.buffer_size;
  sc.reinit_freq = float(c.reinit_freq);
  sc.steps = c.sgld_steps;
  sc.step_size = float(c.sgld_lr);
  sc.noise_std = float(c.sgld_std);
  sc.clamp = c.clamp;
  sc.n_classes = K;
  r.sampler = std::make_unique<SgldSampler>(*r.backend, *r.model, sc, std::max(B, Bp));
  const bool segmented = c.class_cond_buffer || c.w_pxy != 0.0;
  r.buffer = std::make_unique<ReplayBuffer>(*r.backend, c.buffer_size, w.in_channels, w.image_size,
                                            segmented ? K : 1);
  r.ocfg.kind = c.optimizer;
  r.ocfg.lr = float(c.lr);
  r.ocfg.beta1 = float(c.beta1);
  r.ocfg.beta2 = float(c.beta2);
  r.ocfg.eps = float(c.eps);
  r.ocfg.weight_decay = float(c.weight_decay);
  r.ocfg.momentum = float(c.momentum);
  r.ocfg.warmup_iters = c.warmup_iters;
  r.ocfg.decay_epochs = c.decay_epochs;
  r.ocfg.decay_rate = float(c.decay_rate);
  r.optimizer = std::make_unique<Optimizer>(*r.backend, r.ocfg, r.model->num_params());
  const AugmentSpec aug{c.augment, c.flip, 4, float(c.sigma)};
  r.data_stream = std::make_unique<BatchStream>(r.data.train, Bp, aug, c.seed, kDataStream);
  r.lab_stream = std::make_unique<BatchStream>(r.data.train, B, aug, c.seed, kLabStream);
  r.bpe = r.lab_stream->batches_per_epoch();
  r.total_iters = std::int64_t(c.epochs) * r.bpe;
  if (c.max_iters > 0) r.total_iters = std::min<std::int64_t>(r.total_iters, c.max_iters);
  r.sample_host.resize(std::size_t(std::max(B, Bp)) * r.data_stream->image_size());

  // 2. The run directory.
  std::error_code ec;
  fs::create_directories(r.ckpt_dir, ec);
  JEM_CHECK(!ec, r.ckpt_dir, ": cannot create: ", ec.message());
  fs::create_directories(r.sample_dir, ec);
  JEM_CHECK(!ec, r.sample_dir, ": cannot create: ", ec.message());
  r.log = std::make_unique<RunLog>(r.dir, r.opt.quiet);
  if (!r.opt.resume) write_text_atomically(r.dir + "/config.toml", r.config_toml);
  // Temp files of checkpoint writes cut short by a crash (safetensors::Writer names them
  // "<checkpoint>.tmp.<pid>"): never loaded, only taking disk space.
  for (const auto& e : fs::directory_iterator(r.ckpt_dir, ec))
    if (e.path().filename().string().find(".safetensors.tmp.") != std::string::npos) fs::remove(e.path(), ec);
}

// Newest readable checkpoint; unreadable ones (a crash mid-write leaves none, but a damaged
// disk might) are reported and skipped.
void restore_latest(Run& r) {
  auto list = list_checkpoints(r.ckpt_dir);
  for (auto it = list.rbegin(); it != list.rend(); ++it) {
    try {
      r.state = load_checkpoint(*it, *r.model, *r.optimizer, *r.buffer);
      r.log->info("restored " + *it + " (iteration " + std::to_string(r.state.iteration) + ")");
      return;
    } catch (const Error& e) {
      r.log->info(std::string("skipping unreadable checkpoint: ") + e.what());
    }
  }
  JEM_FAIL("no readable checkpoint in ", r.ckpt_dir);
}

void save(Run& r) {
  const std::string path = r.ckpt_dir + "/" + checkpoint_name(r.state.iteration);
  save_checkpoint(path, *r.model, *r.optimizer, *r.buffer, r.state, r.config_toml);
  auto list = list_checkpoints(r.ckpt_dir);
  const std::size_t keep = std::size_t(std::max(1, r.cfg.keep_ckpts));
  for (std::size_t i = 0; i + keep < list.size(); ++i) fs::remove(list[i]);
}

void write_samples(Run& r, const Tensor& x_q, const std::string& name) {
  r.backend->download(x_q, r.sample_host.data());
  write_png_grid(r.sample_dir + "/" + name, r.sample_host.data(), int(x_q.dim(0)), int(x_q.dim(1)),
                 int(x_q.dim(2)), int(x_q.dim(3)));
}

EvalResult eval_split(Run& r, const Dataset& d) {
  return evaluate(*r.model, d, float(r.cfg.sigma), r.cfg.seed);
}

void log_eval(Run& r, int epoch, TrainResult& res, bool final_eval) {
  std::ostringstream js, line;
  js << "{\"event\":\"eval\",\"iteration\":" << r.state.iteration << ",\"epoch\":" << epoch;
  line << (final_eval ? "final" : "eval") << " epoch " << epoch << " iter " << r.state.iteration;
  if (r.data.valid.count > 0) {
    const EvalResult v = eval_split(r, r.data.valid);
    res.valid_accuracy = v.accuracy;
    js << ",\"valid_acc\":" << num(v.accuracy) << ",\"valid_ce\":" << num(v.mean_ce);
    line << ": valid acc " << fmt("%.4f", v.accuracy) << " ce " << fmt("%.4f", v.mean_ce);
  }
  const EvalResult t = eval_split(r, r.data.test);
  res.test_accuracy = t.accuracy;
  js << ",\"test_acc\":" << num(t.accuracy) << ",\"test_ce\":" << num(t.mean_ce) << "}";
  line << ", test acc " << fmt("%.4f", t.accuracy) << " ce " << fmt("%.4f", t.mean_ce);
  r.log->metrics(js.str());
  r.log->info(line.str());
}

bool diverged(const Run& r, const StepStats& s) {
  const double limit = r.cfg.guard_limit;
  return !std::isfinite(s.loss) || std::fabs(s.loss) > limit || !(s.max_abs_energy <= limit);
}

}  // namespace

TrainResult train(Backend& backend, const TrainConfig& cfg, const TrainOptions& options) {
  Run r;
  r.backend = &backend;
  r.cfg = cfg;
  r.opt = options;
  setup(r);
  TrainResult res;
  const int B = cfg.batch_size;

  if (options.resume) {
    restore_latest(r);
  } else {
    r.model->init(cfg.seed);
    r.buffer->init_uniform(cfg.seed);
    r.optimizer->reset();
    r.state = TrainState{};
    r.state.sampler_seed = cfg.seed;
    save(r);  // iteration 0: the divergence guard always has a checkpoint to return to
  }
  r.log->info("jem train: " + r.model->config().str() + ", " + std::to_string(r.model->num_params()) +
              " parameters, " + r.backend->name() + ", " + std::to_string(r.bpe) + " iterations/epoch, " +
              std::to_string(r.total_iters) + " iterations, run dir " + r.dir);

  const auto t0 = Clock::now();
  const std::int64_t first_iteration = r.state.iteration;
  auto window_start = t0;
  std::int64_t window_iters = 0;
  auto prefetch = std::make_unique<Prefetcher>(
      std::vector<const BatchStream*>{r.data_stream.get(), r.lab_stream.get()}, std::uint64_t(r.state.iteration));
  bool nan_injected = false;
  bool interrupted = false;  // by a signal: save and leave, no final evaluation
  double grad_norm = 0;

  while (r.state.iteration < r.total_iters) {
    if (options.stop_flag && *options.stop_flag) {
      r.log->info("stop requested: saving a checkpoint at iteration " + std::to_string(r.state.iteration));
      res.stopped_early = true;
      interrupted = true;
      break;
    }
    if (cfg.max_minutes > 0 &&
        std::chrono::duration<double>(Clock::now() - t0).count() > cfg.max_minutes * 60.0) {
      r.log->info("max_minutes reached at iteration " + std::to_string(r.state.iteration));
      res.stopped_early = true;
      break;
    }
    const std::int64_t it = r.state.iteration;
    const int epoch = int(it / r.bpe);
    const Prefetcher::Batch& batch = prefetch->next();
    JEM_CHECK(std::int64_t(batch.iteration) == it, "internal: batch ", batch.iteration, " for iteration ", it);
    r.backend->upload(batch.x[kLabStream].data(), r.objective->x_lab());
    r.objective->set_labels(batch.y[kLabStream].data());
    const auto iter = std::uint32_t(it);
    if (r.objective->uses_px()) {
      r.backend->upload(batch.x[kDataStream].data(), r.objective->x_data());
      const Tensor xq = r.sampler->sample(*r.buffer, r.state.sampler_seed, iter, 0, r.objective->px_batch(), nullptr);
      r.backend->copy(xq, r.objective->x_q());
    }
    if (r.objective->uses_pxy()) {
      // Class-conditional chains for y_lab; sample indices after the unconditional ones.
      const Tensor xqy = r.sampler->sample(*r.buffer, r.state.sampler_seed, iter,
                                           std::uint32_t(r.objective->px_batch()), B, batch.y[kLabStream].data());
      r.backend->copy(xqy, r.objective->x_q_y());
    }
    StepStats s = r.objective->compute();
    if (it == options.inject_nan_at && !nan_injected) {
      s.loss = std::nan("");
      nan_injected = true;
    }

    if (diverged(r, s)) {
      std::ostringstream why;
      why << "divergence at iteration " << it << ": loss " << s.loss << ", max |E| " << s.max_abs_energy;
      if (!cfg.guard) JEM_FAIL(why.str(), " (the divergence guard is off: guard = false)");
      if (r.state.retries >= cfg.guard_retries)
        JEM_FAIL(why.str(), "; giving up after ", r.state.retries, " rollbacks (guard_retries)");
      const int retries = r.state.retries + 1;
      const double factor = r.state.lr_factor * cfg.guard_lr_factor;
      prefetch.reset();
      restore_latest(r);
      r.state.retries = retries;
      r.state.lr_factor = factor;
      r.state.sampler_seed = cfg.seed + 1000003ull * std::uint64_t(retries);
      res.rollbacks = retries;
      r.log->info(why.str() + "; rollback " + std::to_string(retries) + "/" + std::to_string(cfg.guard_retries) +
                  " to iteration " + std::to_string(r.state.iteration) + ", lr factor " +
                  fmt("%.4g", factor) + ", sampler reseeded");
      r.log->metrics("{\"event\":\"rollback\",\"at\":" + std::to_string(it) + ",\"to\":" +
                     std::to_string(r.state.iteration) + ",\"lr_factor\":" + num(factor) + "}");
      prefetch = std::make_unique<Prefetcher>(
          std::vector<const BatchStream*>{r.data_stream.get(), r.lab_stream.get()}, std::uint64_t(r.state.iteration));
      continue;
    }

    grad_norm = std::sqrt(r.backend->sum_squares(r.model->grad_buffer()));
    const float lr = scheduled_lr(r.ocfg, it, epoch, float(r.state.lr_factor));
    r.optimizer->step(r.model->param_buffer(), r.model->grad_buffer(), lr);
    r.state.iteration = it + 1;
    ++window_iters;

    const bool last = r.state.iteration == r.total_iters;
    if (r.state.iteration % cfg.log_every == 0 || last) {
      const double secs = std::chrono::duration<double>(Clock::now() - window_start).count();
      const double ips = secs > 0 ? double(window_iters) / secs : 0.0;
      std::ostringstream js;
      js << "{\"iteration\":" << r.state.iteration << ",\"epoch\":" << epoch << ",\"loss\":" << num(s.loss)
         << ",\"ce\":" << num(s.ce) << ",\"e_data\":" << num(s.e_data) << ",\"e_q\":" << num(s.e_q)
         << ",\"acc\":" << num(s.acc) << ",\"lr\":" << num(lr) << ",\"grad_norm\":" << num(grad_norm)
         << ",\"it_per_s\":" << num(ips) << ",\"img_per_s\":" << num(ips * B) << "}";
      r.log->metrics(js.str());
      if (!options.quiet && !isatty(fileno(stderr)))
        r.log->info("iter " + std::to_string(r.state.iteration) + "/" + std::to_string(r.total_iters) +
                    " loss " + fmt("%.4f", s.loss) + " ce " + fmt("%.4f", s.ce) + " acc " + fmt("%.3f", s.acc) +
                    " E(data) " + fmt("%.3f", s.e_data) + " E(q) " + fmt("%.3f", s.e_q) + " " +
                    fmt("%.2f", ips) + " it/s");
      window_start = Clock::now();
      window_iters = 0;
    }
    r.log->progress(r.state.iteration, r.total_iters,
                    "loss " + fmt("%.3f", s.loss) + " acc " + fmt("%.2f", s.acc));
    if (r.objective->uses_px() && (r.state.iteration % cfg.sample_every == 0))
      write_samples(r, r.objective->x_q(), "x_q_" + std::to_string(r.state.iteration) + ".png");
    if (r.state.iteration % cfg.ckpt_every == 0 && !last) save(r);
    if (r.state.iteration % r.bpe == 0 && (epoch + 1) % cfg.eval_every == 0 && !last) {
      r.log->end_progress();
      log_eval(r, epoch + 1, res, false);
    }
  }
  prefetch.reset();
  r.log->end_progress();
  save(r);
  res.iterations = r.state.iteration;
  res.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  if (!interrupted) {
    log_eval(r, int(r.state.iteration / r.bpe), res, true);
    if (r.objective->uses_px()) write_samples(r, r.objective->x_q(), "x_q_final.png");
  }
  res.rollbacks = r.state.retries;
  const double done_here = res.seconds > 0 ? double(res.iterations - first_iteration) / res.seconds : 0;
  res.iterations_per_second = done_here;
  std::ostringstream sum;
  sum << "{\n  \"iterations\": " << res.iterations << ",\n  \"seconds\": " << num(res.seconds)
      << ",\n  \"valid_accuracy\": " << num(res.valid_accuracy) << ",\n  \"test_accuracy\": "
      << num(res.test_accuracy) << ",\n  \"rollbacks\": " << res.rollbacks << ",\n  \"stopped_early\": "
      << (res.stopped_early ? "true" : "false") << "\n}\n";
  write_text_atomically(r.dir + "/summary.json", sum.str());
  return res;
}

}  // namespace jem
