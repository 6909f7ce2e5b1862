// cuDNN's algorithm search (cuda/cudnn_conv.cpp): the cap on an algorithm's workspace
// (JEM_CUDNN_WORKSPACE_MB) and the search's log (JEM_CUDNN_VERBOSE=2 lists every result).
#include <gtest/gtest.h>

#include <string>

#include "../../cuda/cudnn_conv.hpp"
#include "cuda_test_support.hpp"

namespace jem::test {
namespace {

// No GPU needed: the setting's parsing.
TEST(CudaConvSearchSettings, WorkspaceCapFromEnvironment) {
  {
    const ScopedEnv unset("JEM_CUDNN_WORKSPACE_MB", nullptr);
    EXPECT_EQ(cuda::workspace_cap_from_env(), cuda::ConvEngine::kDefaultMaxWorkspace);
  }
  {
    const ScopedEnv set("JEM_CUDNN_WORKSPACE_MB", "4096");
    EXPECT_EQ(cuda::workspace_cap_from_env(), std::size_t(4096) << 20);
  }
  for (const char* bad : {"0", "-5", "12abc", "abc", "2000000", "1.5"}) {
    const ScopedEnv set("JEM_CUDNN_WORKSPACE_MB", bad);
    try {
      (void)cuda::workspace_cap_from_env();
      ADD_FAILURE() << "JEM_CUDNN_WORKSPACE_MB=" << bad << " was accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(std::string("JEM_CUDNN_WORKSPACE_MB='") + bad + "'"),
                std::string::npos)
          << e.what();
    }
  }
}

// The workspace (KiB) of the algorithm the search chose, from its JEM_CUDNN_VERBOSE line.
std::size_t chosen_workspace_kib(const std::string& log, const std::string& op) {
  const std::size_t line = log.find("jem: cuDNN " + op + " ");
  if (line == std::string::npos) return std::size_t(-1);
  const std::size_t end = log.find(" KiB workspace)", line);
  const std::size_t start = log.rfind(", ", end);
  if (end == std::string::npos || start == std::string::npos || start < line) return std::size_t(-1);
  return std::stoull(log.substr(start + 2, end - start - 2));
}

// With a 1 MiB cap no algorithm that needs more is chosen, though FP32 mode would otherwise prefer
// it for being deterministic (on the emulated device the deterministic algorithm needs a float
// per filter element: 2.25 MiB here; without the cap it is the choice), the result is still the
// convolution, and the log lists every result with those over the cap marked.
TEST(CudaConvSearch, NoAlgorithmOverTheWorkspaceCapIsChosen) {
  JEM_SKIP_WITHOUT_CUDA();
  const Shape xs{1, 256, 4, 4}, ws{256, 256, 3, 3}, ys{1, 256, 4, 4};
  const Vec x = random_vector(std::size_t(xs.numel()), 41), w = random_vector(std::size_t(ws.numel()), 42);
  auto cpu = make_cpu_backend(1);
  const Tensor cy = cpu->empty(ys);
  cpu->conv2d_forward(cpu->from_vector(x, xs), cpu->from_vector(w, ws), Tensor(), cy, 1, 1);
  const Vec want = cpu->to_vector(cy);
  const Vec sq = [&] {
    const Tensor t = cpu->empty(ys);
    cpu->conv2d_forward(cpu->from_vector(squares(x), xs), cpu->from_vector(squares(w), ws), Tensor(), t, 1, 1);
    return cpu->to_vector(t);
  }();
  for (const char* cap : {static_cast<const char*>("1"), static_cast<const char*>(nullptr)}) {
    const ScopedEnv verbose("JEM_CUDNN_VERBOSE", "2"), ws_cap("JEM_CUDNN_WORKSPACE_MB", cap);
    auto gpu = cuda::make_cuda_backend(0, MathMode::FP32);  // reads both when made
    const Tensor y = nan_tensor(*gpu, ys);
    ::testing::internal::CaptureStderr();
    gpu->conv2d_forward(gpu->from_vector(x, xs), gpu->from_vector(w, ws), Tensor(), y, 1, 1);
    gpu->synchronize();
    const std::string log = ::testing::internal::GetCapturedStderr();
    const std::string what = cap ? "cap 1 MiB" : "default cap";
    expect_close(gpu->to_vector(y), want, sum_tol(MathMode::FP32, 256 * 9, rss_ratio(sq, want)), what);
    EXPECT_NE(log.find("jem: cuDNN   conv2d_forward "), std::string::npos) << what << ": no result listed\n" << log;
    const std::size_t kib = chosen_workspace_kib(log, "conv2d_forward");
    ASSERT_NE(kib, std::size_t(-1)) << what << ": no choice logged\n" << log;
    const bool emulated = gpu->name().find("emulated") != std::string::npos;
    if (cap) {
      EXPECT_LE(kib, 1024u) << log;
      if (emulated) {
        EXPECT_NE(log.find("(over the cap)"), std::string::npos) << log;
      }
    } else if (emulated) {
      EXPECT_EQ(kib, 2304u) << "the emulated search's deterministic algorithm\n" << log;
    }
  }
}

}  // namespace
}  // namespace jem::test
