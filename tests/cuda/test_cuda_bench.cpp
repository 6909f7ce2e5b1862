// The CUDA side of `jem bench`: the allocator's peak-memory count, and the
// iteration timed on a GPU with the device's peak from the table.
#include "cuda_test_support.hpp"
#include "jem/bench.hpp"
#include "jem/flops.hpp"
#include "short_run.hpp"

namespace jem::test {
namespace {

TEST(CudaBench, PeakMemoryCountsTensorsAndSurvivesTheirRelease) {
  JEM_SKIP_WITHOUT_CUDA();
  auto be = cuda::make_cuda_backend(0, MathMode::FP32);
  const std::int64_t before = be->peak_memory_bytes();
  const std::int64_t bytes = std::int64_t(64)
                             << 20; // 64 MiB, far above any earlier peak here
  {
    const Tensor t = be->empty(Shape{bytes / 4});
    EXPECT_GE(be->peak_memory_bytes(), before + bytes);
  }
  // Freed: the peak stays, and a second tensor of the same size reuses the
  // room.
  const std::int64_t peak = be->peak_memory_bytes();
  EXPECT_GE(peak, before + bytes);
  {
    const Tensor t = be->empty(Shape{bytes / 4});
    EXPECT_EQ(be->peak_memory_bytes(), peak);
  }
}

TEST(CudaBench, MemoryCountersFollowTensors) {
  JEM_SKIP_WITHOUT_CUDA();
  auto be = cuda::make_cuda_backend(0, MathMode::FP32);
  const MemoryCounters before = be->memory_counters();
  {
    const Tensor t = be->empty(Shape{1000});
    const MemoryCounters during = be->memory_counters();
    EXPECT_EQ(during.allocations, before.allocations + 1);
    EXPECT_EQ(during.live_bytes, before.live_bytes + 4000);
    const Tensor view = t.slice(10, 20);  // a view allocates nothing
    EXPECT_EQ(be->memory_counters().allocations, during.allocations);
  }
  EXPECT_EQ(be->memory_counters().live_bytes, before.live_bytes);
}

// A cuDNN algorithm search allocates temporaries outside the registry: each search counts as an
// allocation, so an iteration that meets a new convolution shape is not reported as
// allocation-free. The small shape runs after a large one, so its workspace should need no growth.
TEST(CudaBench, EachConvolutionSearchCountsAsAnAllocation) {
  JEM_SKIP_WITHOUT_CUDA();
  auto be = cuda::make_cuda_backend(0, MathMode::FP32);
  auto conv = [&](int n, int c, int hw, int k) {
    const Tensor x = be->empty(Shape{n, c, hw, hw}), w = be->empty(Shape{k, c, 3, 3});
    const Tensor b = be->empty(Shape{k}), y = be->empty(Shape{n, k, hw, hw});
    const std::int64_t before = be->memory_counters().allocations;
    be->conv2d_forward(x, w, b, y, 1, 1);
    be->synchronize();
    return be->memory_counters().allocations - before;
  };
  EXPECT_GE(conv(16, 64, 32, 64), 1);  // new shape: a search (and maybe workspace growth)
  EXPECT_GE(conv(1, 3, 5, 2), 1);      // new small shape: its search (workspace already large)
  EXPECT_EQ(conv(1, 3, 5, 2), 0);      // the cached plan: nothing
}

TEST(CudaBench, TimesTheIterationOnTheGpu) {
  JEM_SKIP_WITHOUT_CUDA();
  auto be = cuda::make_cuda_backend(0, MathMode::FP32);
  const BenchResult r = run_bench(*be, tiny_bench_config(), BenchOptions{2, 1});
  ASSERT_EQ(r.ms.total.size(), 2u);
  EXPECT_GT(r.ms.sgld[0], 0.0);
  // The model's parameters, gradients and activations live on the device.
  EXPECT_GT(r.peak_memory_bytes, 2 * 4 * r.params);
  // The warm-up ran the cuDNN searches: the timed iterations allocate nothing.
  EXPECT_EQ(r.timed_allocations, 0);
  EXPECT_EQ(r.timed_graph_launches, 0);
  EXPECT_NE(r.backend.find("FP32"), std::string::npos);
  // FP32 never fuses: the traffic is the unfused count.
  EXPECT_EQ(r.timed_fused_conv_calls, 0);
  EXPECT_DOUBLE_EQ(r.traffic.custom, jem_iteration_traffic(WrnConfig{10, 1, 1, 28, 10}, r.sgld_chains,
                                                           r.sgld_steps, r.rows, r.params, 8.0)
                                         .custom);
}

// Channels-last TF32 on sm_90: conv1 and conv2 of each of WRN-10-1's 3 blocks run fused in every
// forward (6 calls; the stem does not fuse), and the bench counts the forward passes as fused.
TEST(CudaBench, CountsTheFusedConvolutionsAndTheirTraffic) {
  JEM_SKIP_WITHOUT_CUDA();
  if (!sm90_or_later()) GTEST_SKIP() << "the fused plans are required on sm_90 and later only";
  auto be = cuda::make_cuda_backend(0, MathMode::TF32, Layout::NHWC);
  const BenchResult r = run_bench(*be, tiny_bench_config(), BenchOptions{1, 1});
  // Forwards of the timed iteration: one per SGLD step of the p(x) chains (the only chains of
  // this config), then the training pass's one over all rows.
  EXPECT_EQ(r.timed_fused_conv_calls, 6 * (r.sgld_steps + 1));
  EXPECT_EQ(r.fused_conv_calls_if_all_fused, r.timed_fused_conv_calls);
  const WrnConfig w{10, 1, 1, 28, 10};
  EXPECT_DOUBLE_EQ(r.traffic.custom, jem_iteration_traffic(w, r.sgld_chains, r.sgld_steps, r.rows,
                                                           r.params, 8.0, true)
                                         .custom);
  EXPECT_LT(r.traffic.custom,
            jem_iteration_traffic(w, r.sgld_chains, r.sgld_steps, r.rows, r.params, 8.0).custom);
}

// With CUDA Graphs, the timed iteration launches the captured chains: p(x) and p(x, y) chains
// (two captures), one launch each (the warm-up ran them directly, then captured them).
TEST(CudaBench, TimedIterationsLaunchTheCapturedChains) {
  JEM_SKIP_WITHOUT_CUDA();
  auto be = std::make_unique<cuda::CudaBackend>(0, MathMode::FP32, Layout::NCHW);
  be->set_capture_enabled(true);
  TrainConfig c = tiny_bench_config();
  c.buffer_size = 100;  // 10 class segments of 10 for the conditional chains' draws
  c.w_pxy = 1.0;
  const BenchResult r = run_bench(*be, c, BenchOptions{1, 2});
  EXPECT_EQ(r.timed_graph_launches, 2);
  EXPECT_EQ(r.timed_allocations, 0);
  EXPECT_NE(r.backend.find("CUDA Graphs"), std::string::npos) << r.backend;
}

} // namespace
} // namespace jem::test
