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
#include "jem/communicator.hpp"
#include "jem/data_pipeline.hpp"
#include "jem/evaluate.hpp"
#include "jem/grad_buckets.hpp"
#include "jem/objective.hpp"
#include "jem/optimizer.hpp"
#include "jem/png_grid.hpp"
#include "jem/run_log.hpp"
#include "jem/sampler.hpp"
#include "jem/train_components.hpp"
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

// A JSON number: non-finite values become null (JSON has no NaN). Nine significant digits: a
// metric read back differs from the computed one by less than float rounding (5e-9 relative),
// so runs on two backends can be compared from their metrics files.
std::string num(double v) { return std::isfinite(v) ? fmt("%.9g", v) : "null"; }

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
  // Data parallelism: never null (the single-process communicator when none was given).
  Communicator* comm = nullptr;
  std::unique_ptr<Communicator> own_comm;
  int world = 1, rank = 0;
  // A communicator was given: every collective goes through it, even with one rank (the NCCL
  // path at world size 1). Without one, the single-process code path, as before.
  bool distributed = false;
  RowRange lab_rows, px_rows;  // this rank's rows of the global labelled and p(x) batches
  BufferShard shard;           // this rank's slots of the global replay buffer
  // Checkpoints of a multi-rank run: this rank's shard (padded to the largest), all shards
  // (rank 0), the global buffer in slot order (rank 0). Allocated once in setup().
  std::vector<float> shard_host, gathered_host, buffer_host;
  bool lead() const { return rank == 0; }
  std::string dir, ckpt_dir, sample_dir;
  DataSplits data;
  Backend* backend = nullptr;
  std::unique_ptr<WideResNet> model;
  std::unique_ptr<GradBuckets> buckets;  // data parallelism: the gradient all-reduce, overlapped with backward
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
  Tensor raw_params;  // [num_params], with a moving average: the parameters while it is evaluated
};

// A run exists once it has a completed checkpoint (every run writes one before its first
// iteration). A directory with only log.txt / metrics.jsonl / config.toml is a run killed before
// that checkpoint: nothing to resume, so a fresh start may reuse it.
bool dir_holds_a_run(const std::string& dir) { return !list_checkpoints(dir + "/checkpoints").empty(); }

void setup(Run& r) {
  const TrainConfig& c = r.cfg;
  r.world = r.comm->world();
  r.rank = r.comm->rank();
  // 1. Everything that can fail on bad input, before the run directory is touched.
  r.data = load_splits(c.dataset, effective_data_dir(c), c.n_valid, c.seed);
  const int K = r.data.train.classes;
  validate(c, K);
  JEM_CHECK(r.data.train.height == r.data.train.width, "dataset ", c.dataset, " has non-square images");
  r.dir = c.out;
  r.ckpt_dir = r.dir + "/checkpoints";
  r.sample_dir = r.dir + "/samples";
  // Rank 0 owns the run directory (the others may not even see it before it exists).
  if (r.lead() && r.opt.resume) {
    JEM_CHECK(!list_checkpoints(r.ckpt_dir).empty(), "--resume ", r.dir, ": no checkpoint in ", r.ckpt_dir);
  } else if (r.lead()) {
    JEM_CHECK(!dir_holds_a_run(r.dir), "run directory ", r.dir,
              " already holds a run: continue it with --resume ", r.dir, " or choose another --out");
  }
  r.config_toml = to_toml(c);

  const WrnConfig w = model_config(c, r.data.train.channels, r.data.train.height, K);
  r.objcfg = objective_config(c);
  const int B = c.batch_size;
  const int Bp = px_batch(c);
  // This rank's rows of the global batches (all of them in a 1-process run).
  JEM_CHECK(B >= r.world && Bp >= r.world, "config: batch_size ", B, " and the p(x) batch ", Bp,
            " must each be >= the number of ranks (", r.world, "): every rank takes a share of each batch");
  r.lab_rows = split_rows(B, r.world, r.rank);
  r.px_rows = split_rows(Bp, r.world, r.rank);
  const int Bl = r.lab_rows.size(), Bpl = r.px_rows.size();
  const int max_batch = std::max(JemObjective::rows_needed(r.objcfg, Bl, Bpl), std::min(c.eval_batch, 1024));
  r.model = std::make_unique<WideResNet>(w, *r.backend, max_batch);
  if (r.distributed) {
    r.buckets = std::make_unique<GradBuckets>(*r.comm, r.model->grad_buffer(), bucket_floats_for_mib(c.allreduce_bucket_mb));
    r.model->set_grad_ready_hook([b = r.buckets.get()](std::size_t first) { b->ready(first); });
  }
  r.objective = std::make_unique<JemObjective>(*r.backend, *r.model, r.objcfg, Bl, Bpl, B, Bp, c.stats_every);
  const SamplerConfig sc = sampler_config(c, K);
  r.sampler = std::make_unique<SgldSampler>(*r.backend, *r.model, sc, std::max(Bl, Bpl));
  r.shard = make_buffer_shard(c.buffer_size, segmented_buffer(c) ? K : 1, r.world, r.rank);
  // Each rank draws distinct slots of its own shard every iteration: its p(x) chains from the
  // whole shard, its class-conditional chains from one class segment.
  JEM_CHECK(r.shard.local_size() >= Bpl && (!r.objective->uses_pxy() || r.shard.segment_rows() >= Bl),
            "config: buffer_size ", c.buffer_size, " over ", r.world, " ranks leaves ", r.shard.local_size(),
            " slots (", r.shard.segment_rows(), " per segment) on rank ", r.rank,
            ", fewer than the chains it draws per iteration");
  r.buffer = std::make_unique<ReplayBuffer>(*r.backend, r.shard.local_size(), w.in_channels, w.image_size,
                                            r.shard.segments);
  r.ocfg = optimizer_config(c);
  const AugmentSpec aug{c.augment, c.flip, 4, float(c.sigma)};
  r.data_stream = std::make_unique<BatchStream>(r.data.train, Bp, aug, c.seed, kDataStream);
  r.lab_stream = std::make_unique<BatchStream>(r.data.train, B, aug, c.seed, kLabStream);
  r.bpe = r.lab_stream->batches_per_epoch();
  r.total_iters = std::int64_t(c.epochs) * r.bpe;
  if (c.max_iters > 0) r.total_iters = std::min<std::int64_t>(r.total_iters, c.max_iters);
  r.ocfg.total_iters = r.total_iters;
  r.optimizer = std::make_unique<Optimizer>(*r.backend, r.ocfg, r.model->num_params());
  if (r.ocfg.ema > 0.0f) r.raw_params = r.backend->empty(Shape{r.model->num_params()});
  r.sample_host.resize(std::size_t(std::max(Bl, Bpl)) * r.data_stream->image_size());
  if (r.distributed) {
    const std::size_t row = r.data_stream->image_size();
    const int most = make_buffer_shard(c.buffer_size, r.shard.segments, r.world, 0).local_size();  // rank 0's
    r.shard_host.assign(std::size_t(most) * row, 0.0f);
    if (r.lead()) {
      r.gathered_host.assign(std::size_t(r.world) * r.shard_host.size(), 0.0f);
      r.buffer_host.assign(std::size_t(c.buffer_size) * row, 0.0f);
    }
  }

  // 2. The run directory (rank 0's; the other ranks log nothing).
  if (!r.lead()) {
    r.log = std::make_unique<RunLog>("", true);
    return;
  }
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
// disk might) are reported and skipped. With several ranks, rank 0 chooses the checkpoint and the others load the same file (the
// run directory must be on a file system every rank sees), each its own shard of the buffer.
void restore_latest(Run& r) {
  std::string chosen;
  if (r.lead()) {
    auto list = list_checkpoints(r.ckpt_dir);
    for (auto it = list.rbegin(); it != list.rend() && chosen.empty(); ++it) {
      try {
        r.state = load_checkpoint(*it, *r.model, *r.optimizer, *r.buffer, r.shard);
        chosen = *it;
        r.log->info("restored " + *it + " (iteration " + std::to_string(r.state.iteration) + ")");
      } catch (const Error& e) {
        r.log->info(std::string("skipping unreadable checkpoint: ") + e.what());
      }
    }
  }
  if (r.distributed) {
    chosen = broadcast_string(*r.comm, chosen, 0);
    if (!r.lead() && !chosen.empty()) r.state = load_checkpoint(chosen, *r.model, *r.optimizer, *r.buffer, r.shard);
  }
  JEM_CHECK(!chosen.empty(), "no readable checkpoint in ", r.ckpt_dir);
}

// Every rank must hold the same parameters: compare a checksum (the sum of squares, in the
// backend's fixed order, so equal parameters give equal bits).
void check_replicas(Run& r, const char* when) {
  if (!r.distributed) return;
  const double x = r.backend->sum_squares(r.model->param_buffer());
  double v[2] = {x, -x};
  r.comm->all_reduce_host(v, 2, ReduceOp::Max);
  JEM_CHECK(v[0] == -v[1], "rank ", r.rank, ": the parameters differ between ranks ", when,
            " (checksums from ", fmt("%.17g", -v[1]), " to ", fmt("%.17g", v[0]), ")");
}

// A collective with several ranks: rank 0 gathers the buffer shards into the global buffer
// and writes the one checkpoint file; the barrier makes it complete before any rank reads it.
void save(Run& r) {
  const std::string path = r.ckpt_dir + "/" + checkpoint_name(r.state.iteration);
  if (!r.distributed) {
    save_checkpoint(path, *r.model, *r.optimizer, *r.buffer, r.state, r.config_toml);
  } else {
    r.backend->download(r.buffer->data(), r.shard_host.data());  // the rest of shard_host is padding
    r.comm->gather_host(r.shard_host.data(), r.shard_host.size(), r.lead() ? r.gathered_host.data() : nullptr, 0);
    if (r.lead()) {
      const Tensor& b = r.buffer->data();
      const std::size_t row = std::size_t(b.dim(1) * b.dim(2) * b.dim(3));
      for (int q = 0; q < r.world; ++q) {
        const BufferShard sq = make_buffer_shard(r.shard.global_size, r.shard.segments, r.world, q);
        const float* from = r.gathered_host.data() + std::size_t(q) * r.shard_host.size();
        for (int i = 0; i < sq.local_size(); ++i)
          std::copy_n(from + std::size_t(i) * row, row, r.buffer_host.data() + std::size_t(sq.global_row(i)) * row);
      }
      save_checkpoint(path, *r.model, *r.optimizer, r.buffer_host.data(),
                      Shape{r.shard.global_size, b.dim(1), b.dim(2), b.dim(3)}, r.state, r.config_toml);
    }
  }
  if (r.lead()) {
    auto list = list_checkpoints(r.ckpt_dir);
    const std::size_t keep = std::size_t(std::max(1, r.cfg.keep_ckpts));
    for (std::size_t i = 0; i + keep < list.size(); ++i) fs::remove(list[i]);
  }
  if (r.distributed) r.comm->barrier();
}

// Rank 0's chains only (its share of the p(x) batch).
void write_samples(Run& r, const Tensor& x_q, const std::string& name) {
  if (!r.lead()) return;
  r.backend->download(x_q, r.sample_host.data());
  write_png_grid(r.sample_dir + "/" + name, r.sample_host.data(), int(x_q.dim(0)), int(x_q.dim(1)),
                 int(x_q.dim(2)), int(x_q.dim(3)));
}

// Each rank evaluates its share of the images; the sums are added across ranks.
EvalResult eval_split(Run& r, const Dataset& d) {
  if (!r.distributed) return evaluate(*r.model, d, float(r.cfg.sigma), r.cfg.seed);
  const RowRange part = split_rows(d.count, r.world, r.rank);
  const EvalResult e = evaluate_range(*r.model, d, part.begin, part.size(), float(r.cfg.sigma), r.cfg.seed);
  const double n = double(e.count);
  double sums[4] = {std::round(e.accuracy * n), e.mean_ce * n, e.mean_energy * n, n};
  r.comm->all_reduce_host(sums, 4, ReduceOp::Sum);
  EvalResult t;
  t.count = d.count;
  if (sums[3] > 0) {
    t.accuracy = sums[0] / sums[3];
    t.mean_ce = sums[1] / sums[3];
    t.mean_energy = sums[2] / sums[3];
  }
  return t;
}

// The batches of this rank's rows, from `first_iteration` on.
std::unique_ptr<Prefetcher> make_prefetcher(const Run& r, std::int64_t first_iteration) {
  const std::size_t image = r.data_stream->image_size();
  Prefetcher::Batch proto;
  proto.x = {std::vector<float>(std::size_t(r.px_rows.size()) * image),
             std::vector<float>(std::size_t(r.lab_rows.size()) * image)};
  proto.y = {std::vector<std::int32_t>(std::size_t(r.px_rows.size())),
             std::vector<std::int32_t>(std::size_t(r.lab_rows.size()))};
  auto fill = [&r](std::uint64_t iteration, Prefetcher::Batch& out) {
    r.data_stream->make_rows(iteration, r.px_rows.begin, r.px_rows.size(), out.x[kDataStream].data(),
                             out.y[kDataStream].data());
    r.lab_stream->make_rows(iteration, r.lab_rows.begin, r.lab_rows.size(), out.x[kLabStream].data(),
                            out.y[kLabStream].data());
  };
  return std::make_unique<Prefetcher>(fill, proto, std::uint64_t(first_iteration));
}

// While alive, the model holds the optimizer's moving average of the parameters (when there is
// one); the parameters themselves wait in raw_params.
class EmaWeights {
 public:
  explicit EmaWeights(Run& r) : r_(r) {
    const Tensor* ema = r.optimizer->ema();
    if (!ema) return;
    r.backend->copy(r.model->param_buffer(), r.raw_params);
    r.backend->copy(*ema, r.model->param_buffer());
    active_ = true;
  }
  ~EmaWeights() {
    if (active_) r_.backend->copy(r_.raw_params, r_.model->param_buffer());
  }
  EmaWeights(const EmaWeights&) = delete;
  EmaWeights& operator=(const EmaWeights&) = delete;
  bool active() const { return active_; }

 private:
  Run& r_;
  bool active_ = false;
};

void log_eval(Run& r, int epoch, TrainResult& res, bool final_eval) {
  std::ostringstream js, line;
  js << "{\"event\":\"eval\",\"iteration\":" << r.state.iteration << ",\"epoch\":" << epoch;
  line << (final_eval ? "final" : "eval") << " epoch " << epoch << " iter " << r.state.iteration;
  if (r.optimizer->ema() && r.data.valid.count > 0) {
    // The raw parameters' validation accuracy too, to show what the average gains.
    const EvalResult v = eval_split(r, r.data.valid);
    js << ",\"valid_acc_raw\":" << num(v.accuracy);
    line << ": raw weights valid acc " << fmt("%.4f", v.accuracy) << ";";
  }
  const EmaWeights weights(r);
  if (weights.active()) {
    js << ",\"weights\":\"ema\"";
    line << " moving average";
  }
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

// The memory plan: what the backend holds once every buffer of the run exists, by part.
void log_memory_plan(const Run& r, TrainResult& res) {
  const MemoryCounters m = r.backend->memory_counters();
  res.startup_bytes = m.live_bytes;
  const auto params = std::int64_t(r.model->param_buffer().bytes());
  const auto grads = std::int64_t(r.model->grad_buffer().bytes());
  const std::int64_t optim = r.optimizer->state_bytes();
  const auto buffer = std::int64_t(r.buffer->data().bytes());
  const std::int64_t rest = m.live_bytes - params - grads - optim - buffer;
  auto size = [](std::int64_t b) {
    const double kib = double(b) / 1024.0;
    if (kib < 1024.0) return fmt("%.1f KiB", kib);
    if (kib < 1024.0 * 1024.0) return fmt("%.1f MiB", kib / 1024.0);
    return fmt("%.2f GiB", kib / (1024.0 * 1024.0));
  };
  r.log->info("memory plan: " + size(m.live_bytes) + " allocated at start-up (parameters " + size(params) +
              ", gradients " + size(grads) + ", optimizer state " + size(optim) + ", replay buffer " + size(buffer) +
              ", activations and scratch " + size(rest) + ")");
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
  if (options.comm) {
    r.comm = options.comm;
    r.distributed = true;
  } else {
    r.own_comm = make_single_communicator();
    r.comm = r.own_comm.get();
  }
  setup(r);
  TrainResult res;
  const int B = cfg.batch_size;

  if (options.resume) {
    restore_latest(r);
  } else {
    r.model->init(cfg.seed);
    r.buffer->init_uniform(cfg.seed, r.shard);
    r.optimizer->reset();
    r.state = TrainState{};
    r.state.sampler_seed = cfg.seed;
  }
  // Every rank starts from rank 0's parameters (equal already: same seed or same checkpoint).
  if (r.distributed) r.comm->broadcast(r.model->param_buffer(), 0);
  check_replicas(r, "at the start");
  if (!options.resume) save(r);  // iteration 0: the divergence guard always has a checkpoint to return to
  std::string parallel;
  if (r.distributed)
    parallel = ", data parallel over " + r.comm->name() + " (" + std::to_string(r.shard.local_size()) +
               " buffer slots per rank; gradient all-reduced " +
               (cfg.allreduce_bucket_mb > 0 ? "in " + fmt("%g", cfg.allreduce_bucket_mb) + " MiB buckets during backward)"
                                            : "after backward)");
  r.log->info("jem train: " + r.model->config().str() + ", " + std::to_string(r.model->num_params()) +
              " parameters, " + r.backend->name() + parallel + ", " + std::to_string(r.bpe) + " iterations/epoch, " +
              std::to_string(r.total_iters) + " iterations, run dir " + r.dir);
  log_memory_plan(r, res);

  const auto t0 = Clock::now();
  const std::int64_t first_iteration = r.state.iteration;
  auto window_start = t0;
  std::int64_t window_iters = 0;
  auto prefetch = make_prefetcher(r, r.state.iteration);
  bool nan_injected = false;
  double peak_abs_energy = 0;  // the largest max |E| of a kept iteration: how close runs come to guard_limit
  bool interrupted = false;    // by a signal: save and leave, no final evaluation
  double grad_norm = 0;

  // The host reads the step statistics back only every stats_every iterations, and before any
  // output (log, samples, checkpoint, evaluation, stop). Until then they wait on the device in the
  // objective's staging slots 0 .. pending-1, slot i holding iteration first_pending + i.
  // check_pending() reads them back and runs the divergence guard on each in order. Finding a
  // divergence late changes nothing: the rollback returns to the last checkpoint, written only
  // after every iteration before it had been checked, so the run goes on as it would have with
  // stats_every = 1 (test Trainer.LateStatisticsGiveTheSameRun).
  int pending = 0;
  std::int64_t first_pending = 0;
  int nan_slot = -1;  // options.inject_nan_at's slot
  StepStats s;        // the last checked iteration's statistics
  std::vector<double> reduce_sums(std::size_t(cfg.stats_every) * StepSums::kSums);
  std::vector<double> reduce_max(std::size_t(cfg.stats_every));
  auto rollback = [&](std::int64_t it, const StepStats& bad) {
    std::ostringstream why;
    why << "divergence at iteration " << it << ": loss " << bad.loss << ", max |E| " << bad.max_abs_energy;
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
                " to iteration " + std::to_string(r.state.iteration) + ", lr factor " + fmt("%.4g", factor) +
                ", sampler reseeded");
    r.log->metrics("{\"event\":\"rollback\",\"at\":" + std::to_string(it) + ",\"to\":" +
                   std::to_string(r.state.iteration) + ",\"lr_factor\":" + num(factor) + "}");
    prefetch = make_prefetcher(r, r.state.iteration);
  };
  // True when it rolled back (the loop then continues from the checkpoint).
  auto check_pending = [&]() -> bool {
    if (pending == 0) return false;
    const int n = pending;
    pending = 0;
    const std::vector<StepSums>& local = r.objective->collect(n);
    if (r.distributed) {
      // The global statistics: each rank's sums are over its rows divided by the global batch.
      for (int i = 0; i < n; ++i) {
        const StepSums& u = local[std::size_t(i)];
        std::copy(u.sum, u.sum + StepSums::kSums, reduce_sums.begin() + std::ptrdiff_t(i) * StepSums::kSums);
        reduce_max[std::size_t(i)] = u.max_abs_energy;
      }
      r.comm->all_reduce_host(reduce_sums.data(), n * StepSums::kSums, ReduceOp::Sum);
      r.comm->all_reduce_host(reduce_max.data(), n, ReduceOp::Max);
    }
    const int poisoned = nan_slot;
    nan_slot = -1;
    for (int i = 0; i < n; ++i) {
      StepSums u = local[std::size_t(i)];
      if (r.distributed) {
        std::copy(reduce_sums.begin() + std::ptrdiff_t(i) * StepSums::kSums,
                  reduce_sums.begin() + std::ptrdiff_t(i + 1) * StepSums::kSums, u.sum);
        u.max_abs_energy = reduce_max[std::size_t(i)];
      }
      StepStats si = r.objective->stats(u);
      if (i == poisoned) si.loss = std::nan("");
      if (diverged(r, si)) {
        rollback(first_pending + i, si);
        return true;
      }
      peak_abs_energy = std::max(peak_abs_energy, si.max_abs_energy);
      s = si;
    }
    return false;
  };

  while (r.state.iteration < r.total_iters) {
    // Every rank stops at the same iteration: a signal or the clock on any rank stops them all.
    const double elapsed = std::chrono::duration<double>(Clock::now() - t0).count();
    double stop[2] = {options.stop_flag && *options.stop_flag ? 1.0 : 0.0,
                      cfg.max_minutes > 0 && elapsed > cfg.max_minutes * 60.0 ? 1.0 : 0.0};
    if (r.distributed) r.comm->all_reduce_host(stop, 2, ReduceOp::Max);
    // Nothing unchecked may reach the final checkpoint.
    if ((stop[0] > 0 || stop[1] > 0) && check_pending()) continue;
    if (stop[0] > 0) {
      r.log->info("stop requested: saving a checkpoint at iteration " + std::to_string(r.state.iteration));
      res.stopped_early = true;
      interrupted = true;
      break;
    }
    if (stop[1] > 0) {
      r.log->info("max_minutes reached at iteration " + std::to_string(r.state.iteration));
      res.stopped_early = true;
      break;
    }
    const std::int64_t it = r.state.iteration;
    const int epoch = int(it / r.bpe);
    const std::int64_t allocations_before = r.backend->memory_counters().allocations;
    const Prefetcher::Batch& batch = prefetch->next();
    JEM_CHECK(std::int64_t(batch.iteration) == it, "internal: batch ", batch.iteration, " for iteration ", it);
    r.backend->upload(batch.x[kLabStream].data(), r.objective->x_lab());
    r.objective->set_labels(batch.y[kLabStream].data());
    const auto iter = std::uint32_t(it);
    // Chains keyed by GLOBAL sample index (this rank's rows), on this rank's buffer shard.
    if (r.objective->uses_px()) {
      r.backend->upload(batch.x[kDataStream].data(), r.objective->x_data());
      const Tensor xq = r.sampler->sample(*r.buffer, r.state.sampler_seed, iter, std::uint32_t(r.px_rows.begin),
                                          r.objective->px_batch(), nullptr);
      r.backend->copy(xq, r.objective->x_q());
    }
    if (r.objective->uses_pxy()) {
      // Class-conditional chains for y_lab; sample indices after the global p(x) batch's
      // (data_stream->batch() is the global p(x) batch size).
      const Tensor xqy = r.sampler->sample(*r.buffer, r.state.sampler_seed, iter,
                                           std::uint32_t(r.data_stream->batch() + r.lab_rows.begin),
                                           r.objective->batch(), batch.y[kLabStream].data());
      r.backend->copy(xqy, r.objective->x_q_y());
    }
    if (pending == 0) first_pending = it;
    const int slot = pending++;
    // The global gradient: each rank's is a sum over its rows divided by the global batch; the
    // buckets sum the finished part across the ranks while the backward pass goes on.
    if (r.buckets) r.buckets->begin();
    r.objective->compute_staged(slot);
    if (r.buckets) r.buckets->finish();
    if (it == options.inject_nan_at && !nan_injected) {
      nan_slot = slot;
      nan_injected = true;
    }

    const std::int64_t next = it + 1;
    const bool log_now = next % cfg.log_every == 0 || next == r.total_iters;
    if (log_now) grad_norm = std::sqrt(r.backend->sum_squares(r.model->grad_buffer()));
    const float lr = scheduled_lr(r.ocfg, it, epoch, float(r.state.lr_factor));
    r.optimizer->step(r.model->param_buffer(), r.model->grad_buffer(), lr);
    if (it > first_iteration) res.iteration_allocations += r.backend->memory_counters().allocations - allocations_before;
    r.state.iteration = next;
    ++window_iters;

    const bool output_now = log_now || next % cfg.ckpt_every == 0 ||
                            (r.objective->uses_px() && next % cfg.sample_every == 0) || next % r.bpe == 0;
    if ((pending == cfg.stats_every || output_now) && check_pending()) continue;

    const bool last = r.state.iteration == r.total_iters;
    if (r.state.iteration % cfg.log_every == 0 || last) {
      check_replicas(r, ("at iteration " + std::to_string(r.state.iteration)).c_str());
      const double secs = std::chrono::duration<double>(Clock::now() - window_start).count();
      const double ips = secs > 0 ? double(window_iters) / secs : 0.0;
      std::ostringstream js;
      js << "{\"iteration\":" << r.state.iteration << ",\"epoch\":" << epoch << ",\"loss\":" << num(s.loss)
         << ",\"ce\":" << num(s.ce) << ",\"e_data\":" << num(s.e_data) << ",\"e_q\":" << num(s.e_q)
         << ",\"acc\":" << num(s.acc) << ",\"max_abs_energy\":" << num(s.max_abs_energy)
         << ",\"lr\":" << num(lr) << ",\"grad_norm\":" << num(grad_norm)
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
  JEM_CHECK(pending == 0, "internal: ", pending, " iterations' statistics unchecked at the end of training");
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
  res.peak_abs_energy = peak_abs_energy;
  const double done_here = res.seconds > 0 ? double(res.iterations - first_iteration) / res.seconds : 0;
  res.iterations_per_second = done_here;
  std::ostringstream sum;
  sum << "{\n  \"iterations\": " << res.iterations << ",\n  \"seconds\": " << num(res.seconds)
      << ",\n  \"valid_accuracy\": " << num(res.valid_accuracy) << ",\n  \"test_accuracy\": "
      << num(res.test_accuracy) << ",\n  \"rollbacks\": " << res.rollbacks
      << ",\n  \"peak_abs_energy\": " << num(res.peak_abs_energy) << ",\n  \"stopped_early\": "
      << (res.stopped_early ? "true" : "false") << ",\n  \"startup_bytes\": " << res.startup_bytes
      << ",\n  \"iteration_allocations\": " << res.iteration_allocations << "\n}\n";
  if (r.lead()) write_text_atomically(r.dir + "/summary.json", sum.str());
  return res;
}

}  // namespace jem
