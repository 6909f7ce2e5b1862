// End-to-end tests of `train`: learning, exact resume, checkpoints, the divergence guard, and
// what a bad config does to an existing run directory.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "jem/checkpoint.hpp"
#include "jem/data_pipeline.hpp"
#include "jem/evaluate.hpp"
#include "jem/optimizer.hpp"
#include "jem/safetensors.hpp"
#include "jem/sampler.hpp"
#include "jem/trainer.hpp"
#include "short_run.hpp"
#include "synthetic_data.hpp"
#include "test_support.hpp"

using namespace jem;
using jem::test::json_number;
namespace fs = std::filesystem;

namespace {

// A tiny JEM: WRN-10-1 on 8x8 synthetic digits, batch 8, 3 SGLD steps.
TrainConfig tiny_config(const std::string& data_dir, const std::string& out) {
  TrainConfig c;
  c.out = out;
  c.dataset = "mnist";
  c.data_dir = data_dir;
  c.device = "cpu";
  c.threads = 2;
  c.n_valid = 40;
  c.batch_size = 8;
  c.depth = 10;
  c.width = 1;
  c.buffer_size = 100;
  c.sgld_steps = 3;
  c.sgld_lr = 1.0;
  c.sgld_std = 0.01;
  c.lr = 1e-3;
  c.warmup_iters = 5;
  c.decay_epochs = {1000};  // never reached
  c.epochs = 100;
  c.max_iters = 30;
  c.log_every = 5;
  c.sample_every = 10;
  c.ckpt_every = 10;
  c.eval_batch = 64;
  c.augment = false;
  c.sigma = 0.0;
  c.w_l2 = 0.1;
  return c;
}

class Trainer : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = jem::test::temp_dir("trainer");
    data_ = root_ + "/data";
    fs::create_directories(data_);
    jem::test::write_synthetic_mnist(data_, 240, 80, 8, 10);
  }
  void TearDown() override { fs::remove_all(root_); }
  std::string root_, data_;
  std::unique_ptr<Backend> be_ = make_cpu_backend(2);
};

std::vector<std::string> read_lines(const std::string& path) {
  std::ifstream in(path);
  std::vector<std::string> lines;
  for (std::string l; std::getline(in, l);) lines.push_back(l);
  return lines;
}

std::vector<float> params_of(const std::string& ckpt) {
  const auto f = safetensors::File::read(ckpt);
  std::vector<float> all;
  for (const auto& n : f.names()) {
    if (n.rfind("f.", 0) == 0 || n.rfind("class_output.", 0) == 0 || n.rfind("optim.", 0) == 0 || n == "replay_buffer") {
      if (f.info(n).dtype != "F32") continue;
      const auto v = f.f32(n);
      all.insert(all.end(), v.begin(), v.end());
    }
  }
  return all;
}

TEST_F(Trainer, LearnsAndWritesTheRunDirectory) {
  TrainConfig c = tiny_config(data_, root_ + "/run");
  TrainOptions o;
  o.quiet = true;
  const TrainResult r = train(*be_, c, o);
  EXPECT_EQ(r.iterations, 30);
  EXPECT_EQ(r.rollbacks, 0);
  // Cross-entropy falls: the mean of the last two metric lines vs the first one.
  const auto lines = read_lines(c.out + "/metrics.jsonl");
  std::vector<double> ce;
  for (const auto& l : lines)
    if (l.find("\"ce\"") != std::string::npos) ce.push_back(json_number(l, "ce"));
  ASSERT_GE(ce.size(), 5u);
  EXPECT_LT(0.5 * (ce[ce.size() - 1] + ce[ce.size() - 2]), ce[0] - 0.3) << "CE did not fall";
  EXPECT_GT(r.test_accuracy, 0.3);  // chance is 0.1
  for (const char* f : {"config.toml", "log.txt", "summary.json", "samples/x_q_10.png", "samples/x_q_final.png"})
    EXPECT_TRUE(fs::exists(c.out + "/" + f)) << f;
  // keep_ckpts = 3 of the written 0, 10, 20, 30.
  const auto ck = list_checkpoints(c.out + "/checkpoints");
  ASSERT_EQ(ck.size(), 3u);
  EXPECT_NE(ck.back().find(checkpoint_name(30)), std::string::npos);
}

// N + M iterations straight equal N iterations, a checkpoint, a resume and M more, bit for bit.
// With the parameters' moving average on, so that it is checkpointed and compared too.
TEST_F(Trainer, ResumeIsBitExact) {
  TrainConfig straight = tiny_config(data_, root_ + "/straight");
  straight.max_iters = 24;
  straight.ema = 0.95;
  TrainOptions o;
  o.quiet = true;
  train(*be_, straight, o);

  TrainConfig part = tiny_config(data_, root_ + "/parts");
  part.max_iters = 14;  // not a multiple of ckpt_every: the final checkpoint is the resume point
  part.ema = 0.95;
  train(*be_, part, o);
  part.max_iters = 24;
  TrainOptions ro = o;
  ro.resume = true;
  const TrainResult r = train(*be_, part, ro);
  EXPECT_EQ(r.iterations, 24);

  const std::string last = "/checkpoints/" + checkpoint_name(24);
  ASSERT_TRUE(safetensors::File::read(part.out + last).contains("optim.ema"));
  const auto a = params_of(straight.out + last);
  const auto b = params_of(part.out + last);
  ASSERT_EQ(a.size(), b.size());
  ASSERT_GT(a.size(), 0u);
  std::size_t differing = 0;
  for (std::size_t i = 0; i < a.size(); ++i) differing += std::memcmp(&a[i], &b[i], sizeof(float)) != 0;
  EXPECT_EQ(differing, 0u) << "parameters, optimizer state and replay buffer must match bit for bit";
}

// With `ema`, the run's validation and test accuracies are those of the moving average, which
// the final checkpoint holds; the raw parameters' validation accuracy is logged beside them.
TEST_F(Trainer, EvaluationUsesTheMovingAverage) {
  TrainConfig c = tiny_config(data_, root_ + "/run");
  c.max_iters = 20;
  c.ema = 0.9;
  TrainOptions o;
  o.quiet = true;
  const TrainResult r = train(*be_, c, o);
  const auto f = safetensors::File::read(c.out + "/checkpoints/" + checkpoint_name(20));
  const WrnConfig mc = checkpoint_model_config(c.out + "/checkpoints/" + checkpoint_name(20));
  WideResNet model(mc, *be_, 64);
  const DataSplits d = load_splits(c.dataset, c.data_dir, c.n_valid, c.seed);
  ASSERT_TRUE(load_model_weights(f, model, "ema"));
  const EvalResult avg = evaluate(model, d.test, float(c.sigma), c.seed);
  EXPECT_EQ(avg.accuracy, r.test_accuracy);
  ASSERT_FALSE(load_model_weights(f, model, "raw"));
  const EvalResult raw = evaluate(model, d.valid, float(c.sigma), c.seed);
  const auto lines = read_lines(c.out + "/metrics.jsonl");
  ASSERT_FALSE(lines.empty());
  const std::string& final_eval = lines.back();
  EXPECT_NE(final_eval.find("\"weights\":\"ema\""), std::string::npos) << final_eval;
  EXPECT_NEAR(json_number(final_eval, "valid_acc_raw"), raw.accuracy, 1e-8) << final_eval;  // printed with %.9g
}

TEST_F(Trainer, CheckpointRoundTripIsBitExact) {
  TrainConfig c = tiny_config(data_, root_ + "/run");
  c.max_iters = 10;
  TrainOptions o;
  o.quiet = true;
  train(*be_, c, o);
  const std::string ck = c.out + "/checkpoints/" + checkpoint_name(10);
  auto be = make_cpu_backend(1);
  const WrnConfig mc = checkpoint_model_config(ck);
  WideResNet model(mc, *be, 8);
  OptimizerConfig oc;
  Optimizer opt(*be, oc, model.num_params());
  ReplayBuffer buf(*be, c.buffer_size, 1, 8, 1);
  const TrainState s = load_checkpoint(ck, model, opt, buf);
  EXPECT_EQ(s.iteration, 10);
  const std::string again = root_ + "/again.safetensors";
  save_checkpoint(again, model, opt, buf, s, checkpoint_config(ck));
  const auto a = params_of(ck), b = params_of(again);
  ASSERT_EQ(a.size(), b.size());
  EXPECT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * sizeof(float)));
}

TEST_F(Trainer, InjectedNanRollsBackAndFinishes) {
  TrainConfig c = tiny_config(data_, root_ + "/run");
  c.max_iters = 25;
  TrainOptions o;
  o.quiet = true;
  o.inject_nan_at = 15;
  const TrainResult r = train(*be_, c, o);
  EXPECT_EQ(r.iterations, 25);
  EXPECT_EQ(r.rollbacks, 1);
  bool logged = false;
  for (const auto& l : read_lines(c.out + "/metrics.jsonl"))
    if (l.find("\"rollback\"") != std::string::npos) {
      logged = true;
      EXPECT_EQ(json_number(l, "at"), 15);
      EXPECT_EQ(json_number(l, "to"), 10);  // the last checkpoint
      EXPECT_DOUBLE_EQ(json_number(l, "lr_factor"), c.guard_lr_factor);
    }
  EXPECT_TRUE(logged);
  // Guard off: the same NaN ends the run with an error that says so.
  TrainConfig off = tiny_config(data_, root_ + "/off");
  off.guard = false;
  o.inject_nan_at = 3;
  try {
    train(*be_, off, o);
    FAIL() << "a divergence with the guard off must throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("guard"), std::string::npos) << e.what();
  }
}

// Without a divergence the guard changes nothing: guard on and off train the same run bit for
// bit (bench/stability.sh relies on it to skip the guard-on twin of a stable run).
TEST_F(Trainer, GuardWithoutDivergenceChangesNothing) {
  TrainOptions o;
  o.quiet = true;
  TrainConfig on = tiny_config(data_, root_ + "/on");
  on.max_iters = 12;
  TrainConfig off = on;
  off.out = root_ + "/off";
  off.guard = false;
  const TrainResult a = train(*be_, on, o), b = train(*be_, off, o);
  EXPECT_EQ(a.rollbacks, 0);
  EXPECT_EQ(a.test_accuracy, b.test_accuracy);
  const auto pa = params_of(on.out + "/checkpoints/" + checkpoint_name(12));
  const auto pb = params_of(off.out + "/checkpoints/" + checkpoint_name(12));
  ASSERT_EQ(pa.size(), pb.size());
  ASSERT_GT(pa.size(), 0u);
  EXPECT_EQ(0, std::memcmp(pa.data(), pb.data(), pa.size() * sizeof(float)));
}

// The host reads the step statistics only every stats_every iterations, so the guard sees a
// divergence late; the run must still be the one that stats_every = 1 gives: the rollback goes
// to the same checkpoint (none is written before the iterations before it are checked), with the
// same lr cut. NaN at 12: found at iteration 16's read-back (10 + 7 slots); at 18: found just
// before checkpoint 20 is written, which must not happen first.
TEST_F(Trainer, LateStatisticsGiveTheSameRun) {
  for (const int nan_at : {12, 18}) {
    SCOPED_TRACE("NaN at iteration " + std::to_string(nan_at));
    TrainOptions o;
    o.quiet = true;
    o.inject_nan_at = nan_at;
    TrainConfig every = tiny_config(data_, root_ + "/every" + std::to_string(nan_at));
    every.max_iters = 25;
    every.log_every = 1000;  // only the last iteration: log lines read back too
    every.sample_every = 1000;
    every.stats_every = 1;
    TrainConfig late = every;
    late.out = root_ + "/late" + std::to_string(nan_at);
    late.stats_every = 7;
    const TrainResult a = train(*be_, every, o), b = train(*be_, late, o);
    EXPECT_EQ(a.rollbacks, 1);
    EXPECT_EQ(b.rollbacks, 1);
    EXPECT_EQ(a.test_accuracy, b.test_accuracy);
    EXPECT_EQ(a.peak_abs_energy, b.peak_abs_energy);
    EXPECT_GT(b.peak_abs_energy, 0);
    for (const std::string& dir : {every.out, late.out})
      for (const auto& l : read_lines(dir + "/metrics.jsonl"))
        if (l.find("\"rollback\"") != std::string::npos) {
          EXPECT_EQ(json_number(l, "at"), nan_at) << dir;
          EXPECT_EQ(json_number(l, "to"), 10) << dir;
        }
    const auto pa = params_of(every.out + "/checkpoints/" + checkpoint_name(25));
    const auto pb = params_of(late.out + "/checkpoints/" + checkpoint_name(25));
    ASSERT_EQ(pa.size(), pb.size());
    ASSERT_GT(pa.size(), 0u);
    EXPECT_EQ(0, std::memcmp(pa.data(), pb.data(), pa.size() * sizeof(float)));
  }
}

TEST_F(Trainer, BadConfigsLeaveAnExistingRunUntouched) {
  TrainConfig c = tiny_config(data_, root_ + "/run");
  c.max_iters = 5;
  TrainOptions o;
  o.quiet = true;
  train(*be_, c, o);
  auto snapshot = [&] {
    std::ostringstream s;
    for (const auto& e : fs::recursive_directory_iterator(c.out))
      s << e.path() << " " << (e.is_regular_file() ? fs::file_size(e.path()) : 0) << "\n";
    return s.str();
  };
  const std::string before = snapshot();
  TrainConfig again = c;  // the same directory without --resume
  EXPECT_THROW(train(*be_, again, o), Error);
  TrainConfig negative = c;
  negative.sgld_steps = -1;
  EXPECT_THROW(train(*be_, negative, o), Error);
  TrainConfig indivisible = c;
  indivisible.class_cond_buffer = true;
  indivisible.buffer_size = 101;
  EXPECT_THROW(train(*be_, indivisible, o), Error);
  TrainConfig missing = c;
  missing.data_dir = root_ + "/nowhere";
  EXPECT_THROW(train(*be_, missing, o), Error);
  EXPECT_EQ(snapshot(), before);
}

// What a crash leaves behind: a run killed before its first checkpoint (log and metrics files,
// no checkpoint) starts afresh; temp files of interrupted checkpoint writes are removed on
// resume; a damaged newest checkpoint is skipped for the one before it (scripts/crash-test.sh
// does the same with real SIGKILLs).
TEST_F(Trainer, CrashLeftoversAreHandled) {
  TrainConfig c = tiny_config(data_, root_ + "/run");
  c.max_iters = 4;
  c.ckpt_every = 2;
  c.sgld_steps = 1;
  TrainOptions o;
  o.quiet = true;
  fs::create_directories(c.out + "/checkpoints");
  for (const char* f : {"/log.txt", "/metrics.jsonl"}) std::ofstream(c.out + f) << "";
  TrainOptions ro = o;
  ro.resume = true;
  try {
    train(*be_, c, ro);
    ADD_FAILURE() << "--resume without a checkpoint must fail";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no checkpoint in " + c.out), std::string::npos) << e.what();
  }
  EXPECT_EQ(train(*be_, c, o).iterations, 4);  // a directory with no checkpoint holds no run

  const std::string ck = c.out + "/checkpoints/";
  const std::string stale = ck + checkpoint_name(5) + ".tmp.12345";
  std::ofstream(stale) << "half a checkpoint";
  fs::resize_file(ck + checkpoint_name(4), 1000);  // damaged newest: resume from iteration 2
  c.max_iters = 6;
  EXPECT_EQ(train(*be_, c, ro).iterations, 6);
  EXPECT_FALSE(fs::exists(stale));
  bool skipped = false;
  for (const auto& l : read_lines(c.out + "/log.txt"))
    skipped |= l.find("skipping unreadable checkpoint") != std::string::npos &&
               l.find(checkpoint_name(4)) != std::string::npos;
  EXPECT_TRUE(skipped) << "the damaged checkpoint is named in the log";
  EXPECT_NO_THROW(safetensors::File::read(ck + checkpoint_name(6)));

  for (const auto& p : list_checkpoints(ck)) fs::resize_file(p, 7);  // every checkpoint damaged
  c.max_iters = 8;
  try {
    train(*be_, c, ro);
    ADD_FAILURE() << "resuming with no readable checkpoint must fail";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no readable checkpoint"), std::string::npos) << e.what();
  }
}

}  // namespace
