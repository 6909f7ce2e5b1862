// The multi-process tests' driver: run under `mpirun -np N` (or alone) by tests/mpi/run_case.sh,
// which ctest calls. Each subcommand exits 0 on success and non-zero with a message otherwise.
//
//   dist_driver data DIR                      synthetic 8x8 digits (the trainer tests' data)
//   dist_driver train --data DIR --out RUN [--iters N] [--reinit F] [--resume] [--pxy]
//               [--fail-rank R --fail-at I --fail-mode throw|hang|exit] [--timeout S]
//                                             a tiny JEM on every rank of the job
//   dist_driver compare A B [--tol T] [--what params|buffer|all]
//                                             two checkpoints' tensors: relative error <= T
//   dist_driver shards                        under MPI: buffer shards partition every slot
#include <CLI/CLI.hpp>
#include <cmath>
#include <cstdio>
#include <future>
#include <set>
#include <string>
#include <vector>

#include "jem/communicator.hpp"
#include "jem/safetensors.hpp"
#include "jem/sampler.hpp"
#include "jem/trainer.hpp"
#include "synthetic_data.hpp"

using namespace jem;

namespace {

// Passes every call through, except that rank `fail_rank` fails in its `fail_at`-th gradient
// all-reduce (0-based: the iteration it is in), in the way `mode` says: throw an error, hang
// (stop taking part, as a deadlocked or stopped process would) or exit at once (a crash).
class FaultyCommunicator final : public Communicator {
 public:
  FaultyCommunicator(Communicator& inner, int fail_rank, int fail_at, std::string mode)
      : c_(inner), fail_rank_(fail_rank), fail_at_(fail_at), mode_(std::move(mode)) {}
  int rank() const override { return c_.rank(); }
  int world() const override { return c_.world(); }
  int local_rank() const override { return c_.local_rank(); }
  int local_world() const override { return c_.local_world(); }
  std::string name() const override { return c_.name(); }
  void all_reduce(const Tensor& t, ReduceOp op) override { c_.all_reduce(t, op); }
  // The trainer's gradient all-reduce: buckets started during backward, one finish per iteration.
  void all_reduce_start(const Tensor& t, ReduceOp op) override { c_.all_reduce_start(t, op); }
  void all_reduce_finish() override {
    if (c_.rank() == fail_rank_ && calls_++ == fail_at_) {
      if (mode_ == "throw") JEM_FAIL("injected failure in the gradient all-reduce of iteration ", fail_at_);
      if (mode_ == "exit") std::_Exit(7);
      std::promise<void>().get_future().wait();  // hang: a future nobody will ever set
    }
    c_.all_reduce_finish();
  }
  void broadcast(const Tensor& t, int root) override { c_.broadcast(t, root); }
  void all_reduce_host(double* v, int n, ReduceOp op) override { c_.all_reduce_host(v, n, op); }
  void broadcast_host(void* d, std::size_t b, int root) override { c_.broadcast_host(d, b, root); }
  void all_gather_host(const float* s, std::size_t n, float* r) override { c_.all_gather_host(s, n, r); }
  void gather_host(const float* s, std::size_t n, float* r, int root) override { c_.gather_host(s, n, r, root); }
  void barrier() override { c_.barrier(); }
  void abort(const std::string& m, int code) override { c_.abort(m, code); }

 private:
  Communicator& c_;
  int fail_rank_, fail_at_;
  std::string mode_;
  int calls_ = 0;
};

// The trainer tests' tiny JEM: WRN-10-1 on 8x8 synthetic digits, global batch 8, 3 SGLD steps.
TrainConfig tiny_config(const std::string& data, const std::string& out) {
  TrainConfig c;
  c.out = out;
  c.dataset = "mnist";
  c.data_dir = data;
  c.device = "cpu";
  c.threads = 1;
  c.n_valid = 40;
  c.batch_size = 8;
  c.depth = 10;
  c.width = 1;
  c.buffer_size = 100;
  c.sgld_steps = 3;
  c.lr = 1e-3;
  c.warmup_iters = 5;
  c.decay_epochs = {1000};
  c.epochs = 100;
  c.log_every = 2;
  c.sample_every = 1000;
  c.ckpt_every = 1000;
  c.eval_batch = 64;
  c.augment = false;
  c.sigma = 0.03;  // data noise on: keyed by the global row, it must not depend on the split
  c.w_l2 = 0.1;
  return c;
}

int train_cmd(const std::string& data, const std::string& out, int iters, double reinit, bool resume, bool pxy,
              int fail_rank, int fail_at, const std::string& mode, double timeout, double bucket_mb) {
  const auto host = make_host_communicator("auto", timeout);
  try {
    FaultyCommunicator comm(*host, fail_rank, fail_at, mode);
    TrainConfig c = tiny_config(data, out);
    c.max_iters = iters;
    c.reinit_freq = reinit;
    c.allreduce_bucket_mb = bucket_mb;
    if (pxy) {  // the p(x, y) term: class-conditional chains on a buffer in one segment per class
      c.w_pxy = 0.5;
      c.class_cond_buffer = true;
    }
    TrainOptions o;
    o.quiet = true;
    o.resume = resume;
    o.comm = host->world() > 1 ? &comm : nullptr;  // one process: the plain single-process path
    auto backend = make_cpu_backend(1);
    const TrainResult r = train(*backend, c, o);
    if (host->rank() == 0) std::printf("trained %lld iterations on %d ranks\n", (long long)r.iterations, host->world());
    return 0;
  } catch (const std::exception& e) {
    host->abort("dist_driver: rank " + std::to_string(host->rank()) + ": error: " + e.what(), 1);
    return 1;
  }
}

std::vector<float> tensors_of(const std::string& path, const std::string& what) {
  const auto f = safetensors::File::read(path);
  std::vector<float> all;
  for (const auto& n : f.names()) {
    const bool buffer = n == "replay_buffer";
    const bool param = n.rfind("f.", 0) == 0 || n.rfind("class_output.", 0) == 0;
    const bool optim = n.rfind("optim.", 0) == 0;
    const bool take = what == "all" ? (buffer || param || optim) : what == "buffer" ? buffer : param;
    if (!take || f.info(n).dtype != "F32") continue;
    const auto v = f.f32(n);
    all.insert(all.end(), v.begin(), v.end());
  }
  return all;
}

int compare_cmd(const std::string& a, const std::string& b, double tol, const std::string& what) {
  const auto x = tensors_of(a, what), y = tensors_of(b, what);
  if (x.size() != y.size() || x.empty()) {
    std::fprintf(stderr, "compare: %zu vs %zu values of '%s'\n", x.size(), y.size(), what.c_str());
    return 1;
  }
  double d = 0, n = 0;
  std::size_t differing = 0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    d += (double(x[i]) - y[i]) * (double(x[i]) - y[i]);
    n += double(y[i]) * y[i];
    differing += x[i] != y[i];
  }
  const double rel = std::sqrt(d) / std::max(std::sqrt(n), 1e-30);
  std::printf("compare %s: %zu values, %zu differ, relative error %.3g (tolerance %.3g)\n", what.c_str(), x.size(),
              differing, rel, tol);
  return rel <= tol && (tol > 0 || differing == 0) ? 0 : 1;
}

// Every rank lists the global slots it owns; rank 0 checks that they partition [0, S) and that
// each rank owns the same part of every class segment.
int shards_cmd() {
  const auto comm = make_host_communicator("auto", 60);
  int bad = 0;
  const int cases[][2] = {{100, 1}, {100, 10}, {7, 1}, {30, 3}, {5, 5}};
  for (const auto& [S, K] : cases) {
    const BufferShard sh = make_buffer_shard(S, K, comm->world(), comm->rank());
    const int most = make_buffer_shard(S, K, comm->world(), 0).local_size();
    std::vector<float> mine(std::size_t(most), -1.0f), all(std::size_t(most) * std::size_t(comm->world()));
    for (int i = 0; i < sh.local_size(); ++i) mine[std::size_t(i)] = float(sh.global_row(i));
    comm->all_gather_host(mine.data(), mine.size(), all.data());
    std::set<int> seen;
    int owned = 0;
    for (int q = 0; q < comm->world(); ++q)
      for (int i = 0; i < most; ++i) {
        const float g = all[std::size_t(q * most + i)];
        if (g < 0) continue;
        ++owned;
        // Local slot i of rank q must sit in segment i / segment_rows: conditional draws need it.
        const BufferShard sq = make_buffer_shard(S, K, comm->world(), q);
        if (int(g) / (S / K) != i / sq.segment_rows()) ++bad;
        if (!seen.insert(int(g)).second) ++bad;
      }
    if (owned != S || int(seen.size()) != S || *seen.begin() != 0 || *seen.rbegin() != S - 1) ++bad;
    if (comm->rank() == 0)
      std::printf("shards S=%d K=%d over %d ranks: %d slots owned, %zu distinct\n", S, K, comm->world(), owned,
                  seen.size());
  }
  if (bad) comm->abort("dist_driver: shards do not partition the buffer", 1);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"jem multi-process test driver"};
  app.require_subcommand(1);
  std::string dir, data, out, a, b, what = "params", mode = "throw";
  int iters = 5, fail_rank = -1, fail_at = -1;
  double reinit = 1.0, tol = 1e-5, timeout = 60, bucket_mb = 25;
  bool resume = false, pxy = false;
  auto* d = app.add_subcommand("data");
  d->add_option("dir", dir)->required();
  auto* t = app.add_subcommand("train");
  t->add_option("--data", data)->required();
  t->add_option("--out", out)->required();
  t->add_option("--iters", iters);
  t->add_option("--reinit", reinit);
  t->add_flag("--resume", resume);
  t->add_flag("--pxy", pxy);
  t->add_option("--fail-rank", fail_rank);
  t->add_option("--fail-at", fail_at);
  t->add_option("--fail-mode", mode)->check(CLI::IsMember({"throw", "hang", "exit"}));
  t->add_option("--timeout", timeout);
  t->add_option("--bucket_mb", bucket_mb, "gradient all-reduce bucket size, MiB (0 = one all-reduce)");
  auto* c = app.add_subcommand("compare");
  c->add_option("a", a)->required();
  c->add_option("b", b)->required();
  c->add_option("--tol", tol);
  c->add_option("--what", what)->check(CLI::IsMember({"params", "buffer", "all"}));
  auto* s = app.add_subcommand("shards");
  CLI11_PARSE(app, argc, argv);
  try {
    if (d->parsed()) {
      jem::test::write_synthetic_mnist(dir, 240, 80, 8, 10);
      return 0;
    }
    if (t->parsed()) return train_cmd(data, out, iters, reinit, resume, pxy, fail_rank, fail_at, mode, timeout, bucket_mb);
    if (c->parsed()) return compare_cmd(a, b, tol, what);
    if (s->parsed()) return shards_cmd();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dist_driver: error: %s\n", e.what());
    return 1;
  }
  return 1;
}
