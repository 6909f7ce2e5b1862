// CUDA Graphs (cuda/cuda_graphs.cpp): what capture records, what a launch may change (the noise
// key), what makes a capture fail and that the backend goes on after it, and the SGLD chains of
// the sampler and the trainer through graphs against the same chains run op by op.
#include <cmath>
#include <filesystem>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>

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
    ASSERT_TRUE(be->launch(*ops, NoiseKey{}));
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
    ASSERT_TRUE(be->launch(*ops, k));
    be->fill(xd, 0.0f);
    be->sgld_step(xd, grad, 1.0f, 0.5f, false, NoiseKey{k.seed, k.iteration, 3, k.sample_base});
    be->buffer_gather(buffer, index, reinit, outd, NoiseKey{k.seed, k.iteration, 0, k.sample_base});
    expect_bit_equal(be->to_vector(x), be->to_vector(xd), "sgld noise");
    expect_bit_equal(be->to_vector(out), be->to_vector(outd), "gather reinit noise");
  }
  // And the noise did change with the key (the comparison above means something).
  ASSERT_TRUE(be->launch(*ops, NoiseKey{11, 1, 0, 10}));
  const Vec first = be->to_vector(x);
  ASSERT_TRUE(be->launch(*ops, NoiseKey{11, 2, 0, 10}));
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
  const Tensor w = be->from_vector(random_vector(18, 6), Shape{2, 1, 3, 3}),
               y = be->from_vector(Vec(128, 7.0f), Shape{4, 2, 4, 4});  // the conv case's output
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
      {"a convolution whose algorithm was never searched",  // a search synchronises
       [&] { be->conv2d_forward(x, w, Tensor(), y, 1, 1); },
       "has no searched algorithm yet"},
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
    EXPECT_EQ(be->to_vector(y), Vec(128, 7.0f)) << "a refused capture ran the convolution";
  }
  be->scale(x, 2.0f);
  Vec want = start;
  for (float& v : want) v *= 2.0f;
  EXPECT_EQ(be->to_vector(x), want);
  std::string why;
  auto ops = be->capture(
      NoiseKey{}, [&] { be->scale(x, 0.5f); }, &why);
  ASSERT_NE(ops, nullptr) << why;
  ASSERT_TRUE(be->launch(*ops, NoiseKey{}));
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

// A sampler with chains through graphs and one without, on one backend (so the same cuDNN
// algorithm choices), with one buffer each, initialised alike.
struct TwinSamplers {
  TwinSamplers(MathMode math, Layout layout)
      : be(graph_backend(math, layout)),
        model(WrnConfig{10, 1, 1, 8, 4}, *be, 12),
        via_graph(*be, 40, 1, 8, 4),
        direct(*be, 40, 1, 8, 4) {
    model.init(3);
    sc.buffer_size = 40;
    sc.steps = 2;
    sc.reinit_freq = 0.2f;
    sc.n_classes = 4;
    via_graph.init_uniform(5);
    direct.init_uniform(5);
    graphed = std::make_unique<SgldSampler>(*be, model, sc, 6);
    plain = std::make_unique<SgldSampler>(*be, model, sc, 6);
  }
  // One iteration's chains, marginal (6) or class-conditional (4), by both samplers: the
  // graphed one's samples, then the plain one's. `graphed_fused`: the fused convolutions the
  // graphed one issued (counted when issued: at a direct run or a capture, not at a launch).
  std::pair<Vec, Vec> sample(std::uint32_t it, bool conditional,
                             std::int64_t* graphed_fused = nullptr) {
    static const IVec labels{0, 1, 2, 3};
    const int n = conditional ? 4 : 6;
    const std::int32_t* y = conditional ? labels.data() : nullptr;
    const std::uint32_t base = conditional ? 6 : 0;
    be->set_capture_enabled(true);
    const std::int64_t fused_before = be->fused_conv_calls();
    Vec a = be->to_vector(graphed->sample(via_graph, 9, it, base, n, y));
    if (graphed_fused) *graphed_fused = be->fused_conv_calls() - fused_before;
    be->set_capture_enabled(false);
    Vec b = be->to_vector(plain->sample(direct, 9, it, base, n, y));
    return {std::move(a), std::move(b)};
  }
  std::unique_ptr<cuda::CudaBackend> be;
  WideResNet model;
  SamplerConfig sc;
  ReplayBuffer via_graph, direct;
  std::unique_ptr<SgldSampler> graphed, plain;
};

// The sampler's chains through graphs against the same chains run op by op: FP32 (deterministic
// cuDNN algorithms) bit-equal samples and buffers, iteration after iteration, in both layouts;
// TF32 in NHWC, where the convolutions run as cuDNN graph-API fusions on sm_90, within what two
// runs of one algorithm may differ by when it accumulates in a nondeterministic order (the same
// TF32 products summed in another order: the FP32 reassociation budget of a convolution, 32
// sqrt(k) u relative, cuda_test_support.hpp). Each iteration runs marginal chains and then
// class-conditional ones (6 and 4 chains), as a training iteration with both terms does: two
// captures side by side. Iteration 0 runs directly, iteration 1 captures and launches (on sm_90
// in TF32 NHWC, the capture includes the graph-API fusions), iteration 2 launches with a new
// key, issuing no op (the fused-call counter, which counts when an op is issued, stays put).
TEST(CudaGraphs, SamplerChainsThroughGraphsEqualDirectChains) {
  JEM_SKIP_WITHOUT_CUDA();
  const std::pair<MathMode, Layout> cases[] = {{MathMode::FP32, Layout::NCHW},
                                               {MathMode::FP32, Layout::NHWC},
                                               {MathMode::TF32, Layout::NHWC}};
  for (const auto& [math, layout] : cases) {
    SCOPED_TRACE(std::string(to_string(math)) + " " + to_string(layout));
    TwinSamplers t(math, layout);
    const double tol = math == MathMode::FP32 ? 0.0 : kFp32Ulps * std::sqrt(64.0 * 9.0) * kU;
    auto agree = [&](const Vec& a, const Vec& b, const std::string& what) {
      if (tol == 0.0)
        expect_bit_equal(a, b, what);
      else
        expect_close(a, b, tol, what);
    };
    const bool fuses = math == MathMode::TF32 && layout == Layout::NHWC && sm90_or_later();
    for (std::uint32_t it = 0; it < 3; ++it) {
      for (const bool conditional : {false, true}) {
        std::int64_t graphed_fused = -1;
        const auto [a, b] = t.sample(it, conditional, &graphed_fused);
        agree(a, b,
              std::string(conditional ? "conditional" : "marginal") + " samples of iteration " +
                  std::to_string(it));
        // The direct run and the capture issue the fused convolutions; the launch issues none.
        if (it == 2) {
          EXPECT_EQ(graphed_fused, 0) << "the launch ran ops directly";
        } else if (fuses) {
          EXPECT_GT(graphed_fused, 0) << "iteration " << it << " ran no fused call";
        }
      }
    }
    agree(t.be->to_vector(t.via_graph.data()), t.be->to_vector(t.direct.data()), "buffers");
    EXPECT_TRUE(t.graphed->graph_failure().empty()) << t.graphed->graph_failure();
    EXPECT_EQ(t.be->graphs_captured(), 2);
    EXPECT_EQ(t.be->graph_launches(), 4);
  }
}

// A capture holds the addresses of the backend's scratch buffers. A larger shape in between (an
// evaluation batch: here a forward of 12 images, whose NHWC input conversion needs a larger
// buffer) moves them: the next launch refuses to run (it would use freed memory), the sampler
// runs those chains directly, and captures them again the time after. The samples stay bit-equal
// to the chains run op by op throughout.
TEST(CudaGraphs, StaleCapturesAreRunDirectlyAndTakenAgain) {
  JEM_SKIP_WITHOUT_CUDA();
  TwinSamplers t(MathMode::FP32, Layout::NHWC);
  for (std::uint32_t it = 0; it < 2; ++it) {
    const auto [a, b] = t.sample(it, false);
    expect_bit_equal(a, b, "samples of iteration " + std::to_string(it));
  }
  ASSERT_EQ(t.be->graphs_captured(), 1);
  ASSERT_EQ(t.be->graph_launches(), 1);
  const Tensor big = t.be->from_vector(random_vector(12 * 64, 4), Shape{12, 1, 8, 8});
  (void)t.be->to_vector(t.model.forward(big));
  for (std::uint32_t it = 2; it < 4; ++it) {
    const auto [a, b] = t.sample(it, false);
    expect_bit_equal(a, b, "samples of iteration " + std::to_string(it));
  }
  EXPECT_EQ(t.be->graphs_captured(), 2) << "the stale capture was not taken again";
  EXPECT_EQ(t.be->graph_launches(), 2) << "a stale capture was launched";
  EXPECT_TRUE(t.graphed->graph_failure().empty()) << t.graphed->graph_failure();
}

// Whole JEM iterations with the chains in graphs: the run agrees with the CPU backend's within
// the FP32 budget of ThreeJemIterationsMatchTheCpuFp32 (the reference that test holds the
// op-by-op GPU run to), allocates nothing in its loop, and launched a graph in every iteration
// but the first (which runs directly; the second captures, then launches).
TEST(CudaGraphs, TrainingWithGraphsAgreesAndAllocatesNothing) {
  JEM_SKIP_WITHOUT_CUDA();
  const std::string root = temp_dir("cuda_graphs");
  TrainConfig c = short_run_config(root, 3);
  c.out = root + "/cpu";
  auto cpu = make_cpu_backend(2);
  const ShortRun ref = run_short(*cpu, c);
  auto be = graph_backend();
  c.out = root + "/graphs";
  const ShortRun got = run_short(*be, c);
  EXPECT_EQ(got.result.iteration_allocations, 0);
  EXPECT_EQ(be->graphs_captured(), 1);
  EXPECT_EQ(be->graph_launches(), 2);
  expect_runs_agree(got, ref, kFp32Ulps * std::sqrt(double(max_sum_terms(c))) * kU);
  std::filesystem::remove_all(root);
}

}  // namespace
}  // namespace jem::test
