// Whole JEM iterations on the GPU against the CPU backend: the same config and seed give both
// the same data order, buffer draws and Philox noise, so their runs differ by rounding only.
// And the memory plan on the device: iterations allocate nothing once the loop runs.
#include <cmath>
#include <filesystem>

#include "cuda_test_support.hpp"
#include "short_run.hpp"

namespace jem::test {
namespace {

class CudaTraining : public ::testing::Test {
 protected:
  void SetUp() override {
    JEM_SKIP_WITHOUT_CUDA();
    root_ = temp_dir("cuda_training");
  }
  void TearDown() override {
    if (!root_.empty()) std::filesystem::remove_all(root_);
  }
  std::string root_;
};

// Three iterations (SGLD chains, the training step, SGD with momentum), FP32 math: samples
// (the replay buffer), every iteration's losses and energies, and the parameters agree with the
// CPU's within the FP32 budget of one convolution (cuda_test_support.hpp: 32 sqrt(k) u, cuDNN's
// Winograd/FFT algorithms included; k = 576 here, so 4.6e-5 relative) for the whole run. The
// CPU's own two convolution paths, which differ by reassociation alone, drift 9e-9 apart over
// these three iterations (test_short_run.cpp): the dynamics do not amplify rounding here.
// SGD, not Adam: Adam's first step is lr * sign(g), so a gradient component that rounds to the
// other side of zero would move a full step (the optimizers are compared op by op elsewhere).
// The same with the activations channels-last (JEM_CUDA_LAYOUT=nhwc): the same bound, the
// convolutions' sums being the same ones in another order.
TEST_F(CudaTraining, ThreeJemIterationsMatchTheCpuFp32) {
  TrainConfig c = short_run_config(root_, 3);
  c.out = root_ + "/cpu";
  auto cpu = make_cpu_backend(2);
  const ShortRun ref = run_short(*cpu, c);
  for (const Layout layout : {Layout::NCHW, Layout::NHWC}) {
    SCOPED_TRACE(to_string(layout));
    TrainConfig g = c;
    g.out = root_ + "/gpu_" + to_string(layout);
    auto gpu = cuda::make_cuda_backend(0, MathMode::FP32, layout);
    const ShortRun got = run_short(*gpu, g);
    expect_runs_agree(got, ref, kFp32Ulps * std::sqrt(double(max_sum_terms(c))) * kU);
  }
}

// After the first iteration (cuDNN's algorithm searches and workspace growth), no iteration
// allocates device memory, with metrics, samples and checkpoints written in between.
TEST_F(CudaTraining, IterationsAllocateNoDeviceMemory) {
  TrainConfig c = short_run_config(root_, 6);  // log at 3 and 6, samples at 3 and 6, a checkpoint at 4
  c.out = root_ + "/run";
  c.log_every = 3;  // the first gradient norm (a device reduction) inside the loop
  c.stats_every = 2;
  c.sample_every = 3;
  c.ckpt_every = 4;
  c.optimizer = "adam";
  c.lr = 1e-3;
  c.ema = 0.99;
  for (const Layout layout : {Layout::NCHW, Layout::NHWC}) {
    SCOPED_TRACE(to_string(layout));
    c.out = root_ + "/run_" + to_string(layout);
    auto gpu = cuda::make_cuda_backend(0, cuda::default_math_mode(0), layout);
    const ShortRun run = run_short(*gpu, c);
    EXPECT_EQ(run.result.iterations, 6);
    EXPECT_EQ(run.result.iteration_allocations, 0);
    // Parameters, gradients, two moments and the average, and the buffer, on the device.
    EXPECT_GE(run.result.startup_bytes,
              std::int64_t(5 * run.params.size() + run.replay_buffer.size()) * 4);
  }
}

}  // namespace
}  // namespace jem::test
