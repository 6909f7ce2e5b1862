#include "short_run.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "jem/checkpoint.hpp"
#include "jem/safetensors.hpp"
#include "synthetic_data.hpp"

namespace jem::test {
namespace {

// The model's parameters from a checkpoint, in the order of its names.
std::vector<float> model_params(const safetensors::File& f) {
  std::vector<float> all;
  for (const auto& n : f.names()) {
    if ((n.rfind("f.", 0) == 0 || n.rfind("class_output.", 0) == 0) && f.info(n).dtype == "F32") {
      const auto v = f.f32(n);
      all.insert(all.end(), v.begin(), v.end());
    }
  }
  return all;
}

}  // namespace

TrainConfig tiny_bench_config() {
  TrainConfig c;
  c.dataset = "fashion-mnist";
  c.depth = 10;
  c.width = 1;
  c.batch_size = 4;
  c.px_batch_size = 2;
  c.sgld_steps = 2;
  c.buffer_size = 20;
  c.eval_batch = 8;
  return c;
}

double json_number(const std::string& line, const std::string& key) {
  const auto pos = line.find("\"" + key + "\":");
  if (pos == std::string::npos) return NAN;
  return std::stod(line.substr(pos + key.size() + 3));
}

TrainConfig short_run_config(const std::string& root, int iterations) {
  const std::string data = root + "/data";
  if (!std::filesystem::exists(data + "/train-images-idx3-ubyte")) {
    std::filesystem::create_directories(data);
    write_synthetic_mnist(data, 240, 80, 8, 10);
  }
  TrainConfig c;
  c.dataset = "mnist";
  c.data_dir = data;
  c.threads = 2;
  c.n_valid = 40;
  c.batch_size = 8;
  c.px_batch_size = 8;
  c.depth = 10;
  c.width = 1;
  c.buffer_size = 100;
  c.reinit_freq = 0.05;
  c.sgld_steps = 3;
  c.sgld_lr = 1.0;
  c.sgld_std = 0.01;
  c.optimizer = "sgd";
  c.lr = 0.05;
  c.momentum = 0.9;
  c.warmup_iters = 0;
  c.decay_epochs = {1000};
  c.epochs = 100;
  c.max_iters = iterations;
  c.log_every = 1;
  c.stats_every = 1;
  c.sample_every = 1000;
  c.ckpt_every = 1000;
  c.eval_batch = 64;
  c.augment = false;
  c.sigma = 0.0;
  c.w_l2 = 0.1;
  return c;
}

ShortRun run_short(Backend& backend, const TrainConfig& cfg) {
  TrainOptions o;
  o.quiet = true;
  ShortRun run;
  run.result = train(backend, cfg, o);
  std::ifstream metrics(cfg.out + "/metrics.jsonl");
  for (std::string l; std::getline(metrics, l);) {
    if (l.find("\"iteration\"") == std::string::npos || l.find("\"loss\"") == std::string::npos) continue;
    run.loss.push_back(json_number(l, "loss"));
    run.ce.push_back(json_number(l, "ce"));
    run.e_data.push_back(json_number(l, "e_data"));
    run.e_q.push_back(json_number(l, "e_q"));
  }
  const auto ckpts = list_checkpoints(cfg.out + "/checkpoints");
  if (ckpts.empty()) {
    ADD_FAILURE() << "no checkpoint in " << cfg.out;
    return run;
  }
  const auto last = safetensors::File::read(ckpts.back());
  run.params = model_params(last);
  run.replay_buffer = last.f32("replay_buffer");
  run.params_at_start = model_params(safetensors::File::read(ckpts.front()));
  return run;
}

int max_sum_terms(const TrainConfig& cfg) { return 64 * cfg.width * 9; }

void expect_runs_agree(const ShortRun& got, const ShortRun& ref, double tol) {
  const std::size_t iterations = std::size_t(ref.result.iterations);
  ASSERT_GE(iterations, 1u);
  ASSERT_EQ(got.result.iterations, ref.result.iterations);
  ASSERT_EQ(ref.loss.size(), iterations);
  ASSERT_EQ(got.loss.size(), iterations);
  ASSERT_FALSE(ref.params.empty());
  const double moved = relative_l2(ref.params, ref.params_at_start);
  ASSERT_GT(moved, 100 * tol) << "the parameters hardly moved: the comparison would mean nothing";
  EXPECT_LE(relative_l2(got.params, ref.params), tol) << "parameters (moved " << moved << " from the start)";
  EXPECT_LE(relative_l2(got.replay_buffer, ref.replay_buffer), tol) << "replay buffer (the SGLD samples)";
  for (std::size_t i = 0; i < iterations; ++i) {
    const struct {
      const char* name;
      double got, ref;
    } metrics[] = {{"loss", got.loss[i], ref.loss[i]},
                   {"ce", got.ce[i], ref.ce[i]},
                   {"e_data", got.e_data[i], ref.e_data[i]},
                   {"e_q", got.e_q[i], ref.e_q[i]}};
    for (const auto& m : metrics) {
      ASSERT_TRUE(std::isfinite(m.ref)) << m.name << " of iteration " << i + 1;
      EXPECT_NEAR(m.got, m.ref, tol * std::fabs(m.ref)) << m.name << " of iteration " << i + 1;
    }
  }
}

double relative_l2(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double d = 0, n = 0;
  for (std::size_t i = 0; i < a.size() && i < b.size(); ++i) {
    d += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    n += double(b[i]) * b[i];
  }
  return n > 0 ? std::sqrt(d / n) : std::sqrt(d);
}

}  // namespace jem::test
