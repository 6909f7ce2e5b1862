// CUDA Graphs (cuda/cuda_graphs.cpp): what capture records, what a launch may change (the noise
// key), what makes a capture fail and that the backend goes on after it, and the SGLD chains of
// the sampler and the trainer through graphs against the same chains run op by op.
#include <cmath>
#include <filesystem>
#include <memory>
#include <stdexcept>
#include <string>

#include "cuda_test_support.hpp"
#include "jem/sampler.hpp"
#include "jem/wide_resnet.hpp"
#include "short_run.hpp"

namespace jem::test {
namespace {

std::unique_ptr<cuda::CudaBackend> graph_backend(MathMode math = MathMode::FP32,
                                                 Layout layout = Layout::NCHW) {
  auto be = std::make_unique<cuda::CudaBackend>(0, math, layout);
  be->set_capture_enabled(true);
  return be;
}

TEST(CudaGraphs, CapturedOpsRunOnlyWhenLaunched) {
  JEM_SKIP_WITHOUT_CUDA();
  auto be = graph_backend();
  const Vec start = random_vector(1000, 3);
  const Tensor x = be->from_vector(start, Shape{1000});
  const Tensor one = be->from_vector(Vec(1000, 1.0f), Shape{1000});
  std::string why;
  auto ops = be->capture(
      NoiseKey{},
      [&] {
        be->scale(x, 2.0f);
        be->axpy(1.0f, one, x);
      },
      &why);
  ASSERT_NE(ops, nullptr) << why;
  EXPECT_EQ(be->to_vector(x), start) << "capture ran the ops";
  Vec want = start;
  for (int launch = 1; launch <= 3; ++launch) {
    be->launch(*ops, NoiseKey{});
    for (float& v : want) v = v * 2.0f + 1.0f;
    EXPECT_EQ(be->to_vector(x), want) << "after launch " << launch;
  }
  EXPECT_EQ(be->graphs_captured(), 1);
  EXPECT_EQ(be->graph_launches(), 3);
}

// The captured SGLD and gather kernels take seed, iteration and sample_base from the launch's key
// (and keep their captured step): bit-equal to the same ops run directly with that key.
TEST(CudaGraphs, LaunchedNoiseFollowsTheLaunchKey) {
  JEM_SKIP_WITHOUT_CUDA();
  auto be = graph_backend();
  const int B = 3;
  const Shape s{B, 1, 5, 7};  // 35 elements: the tail block of 4 too
  const Tensor x = be->empty(s, DType::F32), grad = be->empty(s, DType::F32),
               out = be->empty(s, DType::F32);
  const Tensor buffer = be->from_vector(random_vector(6 * 35, 8), Shape{6, 1, 5, 7});
  const Tensor index = i32_tensor(*be, {4, 0, 2}), reinit = i32_tensor(*be, {1, 0, 1});
  const NoiseKey captured{11, 1, 3, 10};
  std::string why;
  auto ops = be->capture(
      captured,
      [&] {
        be->fill(x, 0.0f);
        be->sgld_step(x, grad, 1.0f, 0.5f, false, captured);
        be->buffer_gather(buffer, index, reinit, out, NoiseKey{11, 1, 0, 10});
      },
      &why);
  ASSERT_NE(ops, nullptr) << why;
  const Tensor xd = be->empty(s, DType::F32), outd = be->empty(s, DType::F32);
  for (const NoiseKey& k :
       {NoiseKey{11, 1, 0, 10}, NoiseKey{11, 7, 0, 10}, NoiseKey{12, 7, 0, 64}}) {
    SCOPED_TRACE("iteration " + std::to_string(k.iteration) + " seed " + std::to_string(k.seed));
    be->launch(*ops, k);
    be->fill(xd, 0.0f);
    be->sgld_step(xd, grad, 1.0f, 0.5f, false, NoiseKey{k.seed, k.iteration, 3, k.sample_base});
    be->buffer_gather(buffer, index, reinit, outd, NoiseKey{k.seed, k.iteration, 0, k.sample_base});
    expect_bit_equal(be->to_vector(x), be->to_vector(xd), "sgld noise");
    expect_bit_equal(be->to_vector(out), be->to_vector(outd), "gather reinit noise");
  }
  // And the noise did change with the key (the comparison above means something).
  be->launch(*ops, NoiseKey{11, 1, 0, 10});
  const Vec first = be->to_vector(x);
  be->launch(*ops, NoiseKey{11, 2, 0, 10});
  EXPECT_FALSE(bit_equal(be->to_vector(x), first));
}

// What capture refuses: a host read (synchronize), a noise key that would not follow the
// launches, an op that throws. Each returns nullptr with the reason, runs nothing, and leaves the
// backend working: direct ops and a later capture.
TEST(CudaGraphs, RefusedCapturesRunNothingAndLeaveTheBackendUsable) {
  JEM_SKIP_WITHOUT_CUDA();
  auto be = graph_backend();
  const Vec start = random_vector(64, 5);
  const Tensor x = be->from_vector(start, Shape{4, 1, 4, 4}),
               g = be->empty(Shape{4, 1, 4, 4}, DType::F32);
  struct Case {
    const char* name;
    std::function<void()> ops;
    const char* reason;
  };
  const Case cases[] = {
      {"synchronize",
       [&] {
         be->scale(x, 3.0f);
         be->synchronize();
       },
       "StreamCapture"},
      {"download",
       [&] {
         be->scale(x, 3.0f);
         (void)be->to_vector(x);
       },
       "StreamCapture"},
      {"another key",
       [&] {
         be->sgld_step(x, g, 1.0f, 1.0f, false, NoiseKey{1, 2, 0, 0});
       },
       "noise key"},
      {"an op that throws",
       [&] {
         be->scale(x, 3.0f);
         throw std::runtime_error("boom");
       },
       "boom"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    std::string why;
    EXPECT_EQ(be->capture(NoiseKey{1, 1, 0, 0}, c.ops, &why), nullptr);
    EXPECT_NE(why.find(c.reason), std::string::npos) << why;
    EXPECT_EQ(be->to_vector(x), start) << "a refused capture ran ops";
  }
  be->scale(x, 2.0f);
  Vec want = start;
  for (float& v : want) v *= 2.0f;
  EXPECT_EQ(be->to_vector(x), want);
  std::string why;
  auto ops = be->capture(
      NoiseKey{}, [&] { be->scale(x, 0.5f); }, &why);
  ASSERT_NE(ops, nullptr) << why;
  be->launch(*ops, NoiseKey{});
  EXPECT_EQ(be->to_vector(x), start);
  EXPECT_EQ(be->graphs_captured(), 1);
}

TEST(CudaGraphs, OpsLaunchOnlyOnTheBackendThatCapturedThem) {
  JEM_SKIP_WITHOUT_CUDA();
  auto a = graph_backend(), b = graph_backend();
  const Tensor x = a->empty(Shape{8}, DType::F32);
  std::string why;
  auto ops = a->capture(
      NoiseKey{}, [&] { a->fill(x, 1.0f); }, &why);
  ASSERT_NE(ops, nullptr) << why;
  EXPECT_THROW(b->launch(*ops, NoiseKey{}), Error);
  auto cpu = make_cpu_backend(1);
  EXPECT_THROW(cpu->launch(*ops, NoiseKey{}), Error);
  // Capture off: nothing captured, and the reason names the switch.
  a->set_capture_enabled(false);
  EXPECT_EQ(a->capture(
                NoiseKey{}, [&] { a->fill(x, 2.0f); }, &why),
            nullptr);
  EXPECT_NE(why.find("JEM_CUDA_GRAPHS"), std::string::npos) << why;
}

TEST(CudaGraphs, GraphsFromEnvironment) {
  {
    const ScopedEnv env("JEM_CUDA_GRAPHS", nullptr);
    EXPECT_FALSE(cuda::graphs_from_env());
  }
  {
    const ScopedEnv env("JEM_CUDA_GRAPHS", "1");
    EXPECT_TRUE(cuda::graphs_from_env());
  }
  {
    const ScopedEnv env("JEM_CUDA_GRAPHS", "0");
    EXPECT_FALSE(cuda::graphs_from_env());
  }
  const ScopedEnv env("JEM_CUDA_GRAPHS", "yes");
  try {
    (void)cuda::graphs_from_env();
    FAIL() << "JEM_CUDA_GRAPHS=yes accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("JEM_CUDA_GRAPHS='yes'"), std::string::npos) << e.what();
  }
}

// The sampler's chains through graphs, against the same chains run op by op on the same backend
// (the same cuDNN algorithm choices; FP32: deterministic ones): bit-equal samples and buffers,
// iteration after iteration, in both layouts. Each iteration runs marginal chains and then
// class-conditional ones (6 and 4 chains), as a training iteration with both terms does: two
// captures, kept side by side. Iteration 0 runs directly, iteration 1 captures and launches,
// iteration 2 launches with a new key.
TEST(CudaGraphs, SamplerChainsThroughGraphsEqualDirectChains) {
  JEM_SKIP_WITHOUT_CUDA();
  for (const Layout layout : {Layout::NCHW, Layout::NHWC}) {
    SCOPED_TRACE(to_string(layout));
    auto be = graph_backend(MathMode::FP32, layout);
    WideResNet model(WrnConfig{10, 1, 1, 8, 4}, *be, 8);
    model.init(3);
    SamplerConfig sc;
    sc.buffer_size = 40;
    sc.steps = 3;
    sc.reinit_freq = 0.2f;
    sc.n_classes = 4;
    ReplayBuffer via_graph(*be, 40, 1, 8, 4), direct(*be, 40, 1, 8, 4);
    via_graph.init_uniform(5);
    direct.init_uniform(5);
    SgldSampler graphed(*be, model, sc, 6), plain(*be, model, sc, 6);
    const IVec labels{0, 1, 2, 3};
    for (std::uint32_t it = 0; it < 3; ++it) {
      for (const bool conditional : {false, true}) {
        const int n = conditional ? 4 : 6;
        const std::int32_t* y = conditional ? labels.data() : nullptr;
        const std::uint32_t base = conditional ? 6 : 0;
        be->set_capture_enabled(true);
        const Vec a = be->to_vector(graphed.sample(via_graph, 9, it, base, n, y));
        be->set_capture_enabled(false);
        const Vec b = be->to_vector(plain.sample(direct, 9, it, base, n, y));
        expect_bit_equal(a, b, std::string(conditional ? "conditional" : "marginal") +
                                   " samples of iteration " + std::to_string(it));
      }
    }
    expect_bit_equal(be->to_vector(via_graph.data()), be->to_vector(direct.data()), "buffers");
    EXPECT_TRUE(graphed.graph_failure().empty()) << graphed.graph_failure();
    EXPECT_EQ(be->graphs_captured(), 2);
    EXPECT_EQ(be->graph_launches(), 4);
  }
}

// Whole JEM iterations with the chains in graphs: the run agrees with the one without graphs (the
// FP32 budget of ThreeJemIterationsMatchTheCpuFp32: two backends may choose different cuDNN
// algorithms), allocates nothing in its loop, and launched a graph in every iteration but the
// first (which runs directly; the second captures, then launches).
TEST(CudaGraphs, TrainingWithGraphsAgreesAndAllocatesNothing) {
  JEM_SKIP_WITHOUT_CUDA();
  const std::string root = temp_dir("cuda_graphs");
  TrainConfig c = short_run_config(root, 4);
  c.out = root + "/direct";
  auto plain = cuda::make_cuda_backend(0, MathMode::FP32, Layout::NCHW);
  const ShortRun ref = run_short(*plain, c);
  auto be = graph_backend();
  c.out = root + "/graphs";
  const ShortRun got = run_short(*be, c);
  EXPECT_EQ(got.result.iteration_allocations, 0);
  EXPECT_EQ(be->graphs_captured(), 1);
  EXPECT_EQ(be->graph_launches(), 3);
  expect_runs_agree(got, ref, kFp32Ulps * std::sqrt(double(max_sum_terms(c))) * kU);
  std::filesystem::remove_all(root);
}

}  // namespace
}  // namespace jem::test
