// A few full JEM iterations through train(), compared across the CPU backend's two convolution
// paths, and the memory plan: once the loop runs, iterations allocate nothing.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "short_run.hpp"
#include "test_support.hpp"

namespace jem::test {
namespace {

constexpr double kU = 0x1p-24;  // unit roundoff of float32

class ShortRunTest : public ::testing::Test {
 protected:
  void SetUp() override { root_ = temp_dir("short_run"); }
  void TearDown() override { std::filesystem::remove_all(root_); }
  std::string root_;
};

// The direct 3x3 kernels and im2col + sgemm sum the same products in different orders, so three
// iterations (SGLD chains, the training step, SGD) may differ by rounding only. Tolerance: one
// op's reassociation bound, sqrt(k) u for sums of k terms (k = 576 here: 1.4e-6 relative), for
// the whole run. Measured: 9e-9 for the parameters and 5e-9 for the buffer after 3 iterations,
// so the dynamics do not amplify rounding at these step sizes; a wrong tap or a skipped term
// costs 1e-3 or more.
TEST_F(ShortRunTest, ConvolutionPathsAgreeOverThreeJemIterations) {
  TrainConfig a = short_run_config(root_, 3), b = a;
  a.out = root_ + "/direct";
  b.out = root_ + "/im2col";
  auto direct = make_cpu_backend(2, CpuConvKernels::kBest);
  auto im2col = make_cpu_backend(2, CpuConvKernels::kIm2col);
  const ShortRun ref = run_short(*direct, a);
  const ShortRun got = run_short(*im2col, b);
  expect_runs_agree(got, ref, std::sqrt(double(max_sum_terms(a))) * kU);
}

// The memory plan: every buffer exists before the loop, and the iterations after the first
// (which may grow scratch buffers) allocate no tensor, with every output in between (metrics
// with the gradient norm, staged statistics, samples, checkpoints, the moving average).
TEST_F(ShortRunTest, IterationsAllocateNothing) {
  TrainConfig c = short_run_config(root_, 12);
  c.out = root_ + "/run";
  c.log_every = 5;  // the first gradient norm inside the loop
  c.stats_every = 4;
  c.sample_every = 4;
  c.ckpt_every = 5;
  c.ema = 0.99;
  c.optimizer = "adam";
  c.lr = 1e-3;
  auto be = make_cpu_backend(2);
  const ShortRun run = run_short(*be, c);
  EXPECT_EQ(run.result.iterations, 12);
  EXPECT_EQ(run.result.iteration_allocations, 0);
  // At least parameters, gradients, Adam's two moments, the average and the replay buffer.
  const auto params = std::int64_t(run.params.size()) * 4;
  const auto buffer = std::int64_t(run.replay_buffer.size()) * 4;
  EXPECT_GE(run.result.startup_bytes, 5 * params + buffer);
  std::ifstream summary(c.out + "/summary.json");
  std::stringstream ss;
  ss << summary.rdbuf();
  EXPECT_NE(ss.str().find("\"iteration_allocations\": 0"), std::string::npos) << ss.str();
  EXPECT_NE(ss.str().find("\"startup_bytes\": " + std::to_string(run.result.startup_bytes)), std::string::npos)
      << ss.str();
  std::ifstream log(c.out + "/log.txt");
  std::stringstream ls;
  ls << log.rdbuf();
  EXPECT_NE(ls.str().find("memory plan: "), std::string::npos);
  EXPECT_NE(ls.str().find("replay buffer " ), std::string::npos);
}

// The backend's counters, which the two checks above read.
TEST(MemoryCounters, CpuBackendCountsItsTensorsUntilTheyAreFreed) {
  auto be = make_cpu_backend(1);
  const MemoryCounters m0 = be->memory_counters();
  EXPECT_EQ(m0.allocations, 0);
  EXPECT_EQ(m0.live_bytes, 0);
  Tensor view;
  {
    const Tensor a = be->empty(Shape{10, 10});
    const Tensor b = be->empty(Shape{3}, DType::I32);
    view = a.slice(2, 4);  // a view keeps its storage alive, and allocates nothing
    const MemoryCounters m1 = be->memory_counters();
    EXPECT_EQ(m1.allocations, 2);
    EXPECT_EQ(m1.live_bytes, 400 + 12);
    EXPECT_EQ(m1.peak_bytes, 412);
  }
  EXPECT_EQ(be->memory_counters().live_bytes, 400);
  view = Tensor();
  const MemoryCounters m2 = be->memory_counters();
  EXPECT_EQ(m2.live_bytes, 0);
  EXPECT_EQ(m2.peak_bytes, 412);
  EXPECT_EQ(m2.allocations, 2);
  // A tensor may outlive its backend: freeing it later is safe.
  Tensor survivor = be->empty(Shape{4});
  be.reset();
  survivor.data<float>()[3] = 1.0f;
  survivor = Tensor();
}

}  // namespace
}  // namespace jem::test
