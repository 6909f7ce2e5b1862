// The optimizer's moving average of the parameters (config key `ema`): its recurrence, its
// checkpointing, and the weights `jem eval` / `jem sample` load from a checkpoint.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "jem/checkpoint.hpp"
#include "jem/optimizer.hpp"
#include "jem/safetensors.hpp"
#include "jem/wide_resnet.hpp"
#include "test_support.hpp"

using namespace jem;
using jem::test::random_vector;
namespace fs = std::filesystem;

namespace {

OptimizerConfig sgd_with_ema(float ema) {
  OptimizerConfig c;
  c.kind = "sgd";
  c.momentum = 0.0f;  // p -= lr g: the host follows the parameters exactly
  c.ema = ema;
  return c;
}

}  // namespace

// ema = d ema + (1 - d) p after each step, d = min(ema, (1 + t) / (10 + t)), started from the
// parameters after step 1. The host repeats it in double; float32 adds about one rounding of
// |ema| per step (the scale, the product and the sum: ~3 u), so 4 u |ema| per step bounds it.
// A wrong d (no ramp, or the ramp off by one step) moves ema by > 1e-3, ~10^4 times that bound.
TEST(OptimizerEma, FollowsTheRampedRecurrence) {
  auto be = make_cpu_backend(2);
  const int P = 41;
  const float decay = 0.9f, lr = 0.1f;
  Optimizer opt(*be, sgd_with_ema(decay), P);
  opt.reset();
  EXPECT_EQ(opt.ema(), nullptr) << "no average before the first step";
  std::vector<float> p = random_vector(P, 11);
  Tensor tp = be->from_vector(p, Shape{P});
  std::vector<double> ema(P), bound(P, 0.0);
  const double u = std::ldexp(1.0, -24);
  for (int t = 1; t <= 40; ++t) {
    const std::vector<float> g = random_vector(P, 100 + t);
    opt.step(tp, be->from_vector(g, Shape{P}), lr);
    for (int i = 0; i < P; ++i) p[i] -= lr * g[i];  // what sgd_step does, in float as it does
    const double d = std::min(double(decay), (1.0 + t) / (10.0 + t));
    for (int i = 0; i < P; ++i) {
      ema[i] = t == 1 ? double(p[i]) : d * ema[i] + (1 - d) * double(p[i]);
      bound[i] += 4 * u * std::fabs(ema[i]) + 1e-30;
    }
    ASSERT_NE(opt.ema(), nullptr);
    const auto e = be->to_vector(*opt.ema());
    for (int i = 0; i < P; ++i) ASSERT_NEAR(e[i], ema[i], bound[i]) << "step " << t << " element " << i;
  }
  // After 40 steps with d capped at 0.9 the average lags the parameters: it is not a copy.
  const auto e = be->to_vector(*opt.ema());
  EXPECT_GT(jem::test::max_abs_diff(e, be->to_vector(tp)), 1e-3);
}

TEST(OptimizerEma, OffMeansNoAverageAndNoTensor) {
  auto be = make_cpu_backend(1);
  Optimizer opt(*be, sgd_with_ema(0.0f), 8);
  opt.reset();
  Tensor p = be->from_vector(random_vector(8, 1), Shape{8});
  opt.step(p, be->from_vector(random_vector(8, 2), Shape{8}), 0.1f);
  EXPECT_EQ(opt.ema(), nullptr);
  safetensors::Writer w;
  opt.save(w);
  const std::string path = jem::test::temp_dir("ema_off") + "/o.safetensors";
  w.write(path);
  EXPECT_FALSE(safetensors::File::read(path).contains("optim.ema"));
  EXPECT_THROW(Optimizer(*be, sgd_with_ema(1.0f), 8), Error) << "ema must be < 1";
  EXPECT_THROW(Optimizer(*be, sgd_with_ema(-0.5f), 8), Error);
}

// Saved and loaded bit for bit; a checkpoint without an average, loaded by a run with one,
// starts it at the next step from the parameters.
TEST(OptimizerEma, CheckpointRoundTripAndLateStart) {
  auto be = make_cpu_backend(1);
  const int P = 16;
  const std::string dir = jem::test::temp_dir("ema_ckpt");
  Optimizer a(*be, sgd_with_ema(0.99f), P);
  a.reset();
  Tensor p = be->from_vector(random_vector(P, 3), Shape{P});
  for (int t = 0; t < 5; ++t) a.step(p, be->from_vector(random_vector(P, 20 + t), Shape{P}), 0.05f);
  safetensors::Writer w;
  a.save(w);
  w.write(dir + "/a.safetensors");
  Optimizer b(*be, sgd_with_ema(0.99f), P);
  b.reset();
  b.load(safetensors::File::read(dir + "/a.safetensors"));
  ASSERT_NE(b.ema(), nullptr);
  EXPECT_EQ(be->to_vector(*a.ema()), be->to_vector(*b.ema()));

  Optimizer off(*be, sgd_with_ema(0.0f), P);
  off.reset();
  off.step(p, be->from_vector(random_vector(P, 30), Shape{P}), 0.05f);
  safetensors::Writer w2;
  off.save(w2);
  w2.write(dir + "/off.safetensors");
  Optimizer late(*be, sgd_with_ema(0.99f), P);
  late.reset();
  late.load(safetensors::File::read(dir + "/off.safetensors"));
  EXPECT_EQ(late.ema(), nullptr);
  late.step(p, be->from_vector(random_vector(P, 31), Shape{P}), 0.05f);
  ASSERT_NE(late.ema(), nullptr);
  EXPECT_EQ(be->to_vector(*late.ema()), be->to_vector(p));
}

// --weights auto|ema|raw of `jem eval` and `jem sample`.
TEST(OptimizerEma, LoadModelWeightsChoosesTheAverageOrTheParameters) {
  auto be = make_cpu_backend(1);
  WrnConfig mc;
  mc.depth = 10;
  mc.width = 1;
  mc.in_channels = 1;
  mc.image_size = 8;
  mc.n_classes = 10;
  WideResNet model(mc, *be, 2);
  model.init(1);
  const auto raw = be->to_vector(model.param_buffer());
  const std::vector<float> avg = random_vector(raw.size(), 5);
  const std::string dir = jem::test::temp_dir("ema_weights");
  {
    safetensors::Writer w;
    model.save(w);
    w.write(dir + "/plain.safetensors");
    w.add_f32("optim.ema", {std::int64_t(avg.size())}, avg.data());
    w.write(dir + "/avg.safetensors");
  }
  const auto plain = safetensors::File::read(dir + "/plain.safetensors");
  const auto with = safetensors::File::read(dir + "/avg.safetensors");
  WideResNet other(mc, *be, 2);
  other.init(2);
  EXPECT_FALSE(load_model_weights(plain, other, "auto"));
  EXPECT_EQ(be->to_vector(other.param_buffer()), raw);
  EXPECT_TRUE(load_model_weights(with, other, "auto"));
  EXPECT_EQ(be->to_vector(other.param_buffer()), avg);
  EXPECT_TRUE(load_model_weights(with, other, "ema"));
  EXPECT_EQ(be->to_vector(other.param_buffer()), avg);
  EXPECT_FALSE(load_model_weights(with, other, "raw"));
  EXPECT_EQ(be->to_vector(other.param_buffer()), raw);
  try {
    load_model_weights(plain, other, "ema");
    FAIL() << "--weights ema on a checkpoint without an average must fail";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("plain.safetensors"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("optim.ema"), std::string::npos) << e.what();
  }
  EXPECT_THROW(load_model_weights(with, other, "mean"), Error);
  // An average of another model's size is refused, naming the tensor.
  {
    safetensors::Writer w;
    model.save(w);
    w.add_f32("optim.ema", {3}, avg.data());
    w.write(dir + "/bad.safetensors");
  }
  try {
    load_model_weights(safetensors::File::read(dir + "/bad.safetensors"), other, "auto");
    FAIL() << "a wrong-sized optim.ema must fail";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("optim.ema"), std::string::npos) << e.what();
  }
  fs::remove_all(dir);
}
