// Which convolutions the CUDA backend runs as one fused cuDNN graph-API call (conv + bias +
// LeakyReLU, with or without the residual: ConvEngine::forward_leaky_relu), counted by
// CudaBackend::fused_conv_calls(). The results of every conv op in every layout are checked
// against the CPU backend in test_cuda_backend.cpp (CudaConv); here each case checks both that
// the result is right and which path produced it, so that a fused path that silently never runs
// (the benchmarks would then measure the fallback) fails.
//
// cuDNN builds these plans for channels-last TF32 convolutions on sm_90 (an H200 did; the
// emulated device reports sm_90 too), so there the fused path must run; on older GPUs the
// "fuses" checks are skipped and only the refusals are checked.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <memory>
#include <string>

#include "cuda_test_support.hpp"

namespace jem::test {
namespace {

// One conv2d_forward_leaky_relu call of the model's kind on a GPU backend and on the CPU:
// conv1 (a bias, no residual) or conv2 (a bias, the residual z, its pre-activation t).
class CudaFusedConv : public ::testing::Test {
 protected:
  void SetUp() override {
    JEM_SKIP_WITHOUT_CUDA();
    cpu = make_cpu_backend(2);
  }
  // Device 0 is tests/emulation's CPU device, whose cuDNN can be made to fail.
  static bool emulated_device() {
    cudaDeviceProp prop{};
    return cudaGetDeviceProperties(&prop, 0) == cudaSuccess &&
           std::string(prop.name).find("emulated") != std::string::npos;
  }
  static std::unique_ptr<cuda::CudaBackend> backend(MathMode math) {
    auto be = cuda::make_cuda_backend(0, math, Layout::NHWC);
    return std::unique_ptr<cuda::CudaBackend>(dynamic_cast<cuda::CudaBackend*>(be.release()));
  }

  // 16 -> 32 channels, 8x8 -> 4x4 (stride 2) with the residual, or 16 -> 16, 8x8 without.
  struct Call {
    bool residual = false;
    bool bias = true;
    bool with_t = true;   // the residual's pre-activation output (the model always asks for it)
    Layout layout = Layout::NHWC;
    std::size_t x_offset = 0;  // floats into a larger buffer: a view that is not 16-byte aligned
    std::size_t y_offset = 0;  // the same for the output y
  };

  // Runs `c` on `be` (and on the CPU) and checks the GPU's y (and t) against the CPU's.
  void run_and_check(cuda::CudaBackend& be, const Call& c, const std::string& what) {
    const int N = 2, C = 16, H = 8, K = c.residual ? 32 : 16, stride = c.residual ? 2 : 1;
    const int P = (H + 2 - 3) / stride + 1;
    const Shape xs{N, C, H, H}, ws{K, C, 3, 3}, ys{N, K, P, P};
    const Vec x = random_vector(std::size_t(xs.numel()), 31), w = random_vector(std::size_t(ws.numel()), 32),
              b = random_vector(std::size_t(K), 33), z = random_vector(std::size_t(ys.numel()), 34);
    const bool with_t = c.residual && c.with_t;
    auto run = [&](Backend& dev, bool gpu, const Vec& xv, const Vec& wv, const Vec& bv, const Vec& zv, float slope) {
      const Layout l = gpu ? c.layout : Layout::NCHW;
      auto put = [&](const Vec& v, const Shape& s, std::size_t off) {
        const Tensor t = off ? dev.empty(Shape{s.numel() + std::int64_t(off)}).view(off, s).as_layout(l)
                             : dev.empty(s).as_layout(l);
        dev.upload(v.data(), t);
        return t;
      };
      const std::size_t y_off = gpu ? c.y_offset : 0;
      const Tensor y = y_off ? dev.empty(Shape{ys.numel() + std::int64_t(y_off)}).view(y_off, ys).as_layout(l)
                             : dev.empty(ys).as_layout(l);
      dev.fill(y, std::nanf(""));  // must be overwritten
      const Tensor t = with_t ? nan_tensor(dev, ys).as_layout(l) : Tensor();
      dev.conv2d_forward_leaky_relu(put(xv, xs, gpu ? c.x_offset : 0), dev.from_vector(wv, ws),
                                    c.bias ? dev.from_vector(bv, Shape{K}) : Tensor(),
                                    c.residual ? put(zv, ys, 0) : Tensor(), t, y, stride, 1, slope);
      return std::make_pair(dev.to_vector(y), with_t ? dev.to_vector(t) : Vec{});
    };
    const auto want = run(*cpu, false, x, w, b, z, 0.2f);
    // slope 1: the sums of the squared terms, for the tolerance (cuda_test_support.hpp).
    const Vec sq = run(*cpu, false, squares(x), squares(w), squares(b), squares(z), 1.0f).first;
    const auto got = run(be, true, x, w, b, z, 0.2f);
    const double tol = sum_tol(be.math(), C * 9 + 2, rss_ratio(sq, want.first));
    expect_close(got.first, want.first, tol, what + " (y)");
    if (with_t) expect_close(got.second, want.second, sum_tol(be.math(), C * 9 + 2, rss_ratio(sq, want.second)), what + " (t)");
  }
  // Runs `c` and returns how many fused calls it made.
  std::int64_t fused_by(cuda::CudaBackend& be, const Call& c, const std::string& what) {
    const std::int64_t before = be.fused_conv_calls();
    run_and_check(be, c, what);
    return be.fused_conv_calls() - before;
  }

  std::unique_ptr<Backend> cpu;
};

TEST_F(CudaFusedConv, ChannelsLastTf32WithABiasRunsFused) {
  if (!sm90_or_later()) GTEST_SKIP() << "the fused plans are required on sm_90 and later only";
  auto be = backend(MathMode::TF32);
  Call conv1, conv2;
  conv2.residual = true;
  EXPECT_EQ(fused_by(*be, conv1, "conv1 (bias + LeakyReLU)"), 1);
  EXPECT_EQ(fused_by(*be, conv2, "conv2 (bias + residual + LeakyReLU)"), 1);
  // The plans are cached per shape: the next calls run them again.
  EXPECT_EQ(fused_by(*be, conv1, "conv1, again"), 1);
  EXPECT_EQ(fused_by(*be, conv2, "conv2, again"), 1);
}

// Every call the fused graphs do not cover runs the unfused ops, with the same result.
TEST_F(CudaFusedConv, OtherCallsRunUnfused) {
  auto tf32 = backend(MathMode::TF32);
  Call nchw, no_bias, z_without_t, misaligned_x, misaligned_y;
  nchw.layout = Layout::NCHW;
  no_bias.bias = false;
  z_without_t.residual = true;
  z_without_t.with_t = false;
  misaligned_x.x_offset = 1;  // 4 bytes into a buffer: below the plans' 16-byte alignment
  misaligned_y.y_offset = 1;
  EXPECT_EQ(fused_by(*tf32, nchw, "NCHW"), 0);
  EXPECT_EQ(fused_by(*tf32, no_bias, "no bias"), 0);
  EXPECT_EQ(fused_by(*tf32, z_without_t, "a residual without its pre-activation output"), 0);
  EXPECT_EQ(fused_by(*tf32, misaligned_x, "an input view 4 bytes off alignment"), 0);
  EXPECT_EQ(fused_by(*tf32, misaligned_y, "an output view 4 bytes off alignment"), 0);
  // A misaligned call runs unfused without giving up the shape's plan: aligned calls still fuse
  // (a plan that had been tried on the misaligned pointers and failed would be dropped for good).
  if (sm90_or_later()) {
    EXPECT_EQ(fused_by(*tf32, Call{}, "an aligned call after the misaligned ones"), 1);
  }
  auto fp32 = backend(MathMode::FP32);  // no fused plan ran in FP32 on an H200: never tried
  EXPECT_EQ(fused_by(*fp32, Call{}, "FP32"), 0);
}

TEST_F(CudaFusedConv, EnvironmentTurnsFusionOff) {
  std::unique_ptr<cuda::CudaBackend> be;
  {
    const ScopedEnv off("JEM_CUDNN_FUSION", "0");
    be = backend(MathMode::TF32);  // read when the backend is made
  }
  Call conv2;
  conv2.residual = true;
  EXPECT_EQ(fused_by(*be, Call{}, "conv1, JEM_CUDNN_FUSION=0"), 0);
  EXPECT_EQ(fused_by(*be, conv2, "conv2, JEM_CUDNN_FUSION=0"), 0);
}

// A plan that builds but fails to run: that call and every later one of the shape run unfused
// (ConvEngine::forward_leaky_relu). Only the emulated cuDNN can be made to fail
// (tests/emulation/device/cudnn_graph_on_cpu.cpp); a GPU skips this.
TEST_F(CudaFusedConv, PlanThatFailsToRunFallsBackForGood) {
  if (!emulated_device()) GTEST_SKIP() << "needs the emulated cuDNN's failing executions";
  auto be = backend(MathMode::TF32);
  {
    const ScopedEnv fail("JEM_EMULATED_CUDNN_EXECUTE_FAILS", "1");
    EXPECT_EQ(fused_by(*be, Call{}, "conv1, its execution failing"), 0);
  }
  EXPECT_EQ(fused_by(*be, Call{}, "conv1 after its plan failed"), 0);
  // Another shape builds its own plan and runs fused.
  Call conv2;
  conv2.residual = true;
  EXPECT_EQ(fused_by(*be, conv2, "conv2"), 1);
}

// A CUDA Graph that captured a fused plan holds that plan's kernels. When the plan later fails
// in a direct call and is retired, the graph must not run again: launch() returns false (stale)
// and runs nothing. (Before retirements counted, the emulated replay read the destroyed plan and
// crashed. The plan is also kept alive for a graph still running when it fails.)
TEST_F(CudaFusedConv, GraphsThatHoldARetiredPlanGoStale) {
  if (!emulated_device()) GTEST_SKIP() << "needs the emulated cuDNN's failing executions";
  auto be = backend(MathMode::TF32);
  be->set_capture_enabled(true);
  const int N = 2, C = 16, H = 8;
  const Tensor x = be->from_vector(random_vector(std::size_t(N) * C * H * H, 41), Shape{N, C, H, H})
                       .as_layout(Layout::NHWC);
  const Tensor w = be->from_vector(random_vector(std::size_t(C) * C * 9, 42), Shape{C, C, 3, 3});
  const Tensor b = be->from_vector(random_vector(std::size_t(C), 43), Shape{C});
  const Tensor y = be->empty(Shape{N, C, H, H}, DType::F32).as_layout(Layout::NHWC);
  auto conv1 = [&] { be->conv2d_forward_leaky_relu(x, w, b, Tensor(), Tensor(), y, 1, 1, 0.2f); };
  std::string why;
  // Before its first direct call the shape has no fused plan, and a capture cannot build one.
  EXPECT_EQ(be->capture(NoiseKey{}, conv1, &why), nullptr);
  EXPECT_NE(why.find("has no fused plan built yet"), std::string::npos) << why;
  // The unfused way's convolution first, so that the fallback below finds its algorithm searched
  // and the scratch buffers sized: then only the retirement can make the capture stale.
  be->conv2d_forward(x, w, Tensor(), y, 1, 1);
  conv1();  // builds the plan and sizes the scratch buffers, which a capture may not do
  ASSERT_EQ(be->fused_conv_calls(), 1) << "the refused capture gave up the shape's plan";
  const auto ops = be->capture(NoiseKey{}, conv1, &why);
  ASSERT_NE(ops, nullptr) << why;
  ASSERT_TRUE(be->launch(*ops, NoiseKey{}));
  const std::int64_t fused_calls = be->fused_conv_calls();  // the capture's call counted
  {
    const ScopedEnv fail("JEM_EMULATED_CUDNN_EXECUTE_FAILS", "1");
    conv1();  // the plan fails: this call runs unfused, and the plan is retired
  }
  ASSERT_EQ(be->fused_conv_calls(), fused_calls) << "the failing plan ran";
  be->fill(y, 0.0f);
  EXPECT_FALSE(be->launch(*ops, NoiseKey{})) << "a graph holding a retired plan was launched";
  EXPECT_EQ(be->to_vector(y), Vec(std::size_t(y.numel()), 0.0f)) << "a stale launch ran something";
}

}  // namespace
}  // namespace jem::test
