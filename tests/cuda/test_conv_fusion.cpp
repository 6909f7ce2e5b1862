// cuDNN graph-API fusions (cuda/conv_fusion.hpp).
//
// Deviceless (every machine with cuDNN >= 9.8, so CI too): the operation graphs of every pattern
// are accepted by cuDNN's validation, and plans of the precompiled engines finalize for an H200
// described by configs/devices/h200.json. On a GPU: every plan that builds computes what the
// backend's unfused ops compute on the CPU.
#include <cudnn.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <cmath>
#include <random>
#include <string>

#include "../../cuda/conv_fusion.hpp"
#include "../../cuda/cuda_check.hpp"
#include "cuda_test_support.hpp"

namespace jem::test {
namespace {

using cuda::FusionPattern;
using cuda::FusionTarget;

ConvGeom conv3x3(int N, int C, int H, int K, int stride) {
  ConvGeom g;
  g.N = N, g.C = C, g.H = H, g.W = H, g.K = K, g.R = 3, g.S = 3, g.stride = stride, g.pad_h = 1, g.pad_w = 1;
  return g;
}

FusionTarget h200() { return FusionTarget::from_json_file(source_path("configs/devices/h200.json")); }

// Deviceless plans need cuDNN 9.8 or later at run time (a GPU machine's own libcudnn may be older).
#define SKIP_WITHOUT_DEVICELESS()                                                              \
  do {                                                                                         \
    if (!cuda::deviceless_supported())                                                         \
      GTEST_SKIP() << "cuDNN " << cudnnGetVersion() << " builds no plans from device properties"; \
  } while (0)

TEST(CudaConvFusionDeviceless, DevicePropertiesLoadAndRoundTrip) {
  SKIP_WITHOUT_DEVICELESS();
  const FusionTarget t = h200();
  const std::string j = t.json();
  const auto parsed = nlohmann::json::parse(j);
  EXPECT_EQ(parsed.at("multiProcessorCount"), 132) << j;
  EXPECT_EQ(parsed.at("deviceVer"), 900) << j;  // sm_90
  EXPECT_EQ(parsed.at("deviceName"), "NVIDIA H200") << j;
  // What cuDNN serializes loads again.
  EXPECT_NO_THROW(FusionTarget::from_json(j, "round trip"));
}

// What FusionTarget::from_handle sets on a GPU, checked without one: cuDNN checks the attribute's
// type when it is set (an INT64 device id failed on the first H200 run).
TEST(CudaConvFusionDeviceless, DeviceIdAttributeIsAccepted) {
  SKIP_WITHOUT_DEVICELESS();
  cudnnBackendDescriptor_t d = nullptr;
  ASSERT_EQ(cudnnBackendCreateDescriptor(CUDNN_BACKEND_DEVICEPROP_DESCRIPTOR, &d), CUDNN_STATUS_SUCCESS);
  EXPECT_EQ(cuda::set_device_property_device_id(d, 0), int(CUDNN_STATUS_SUCCESS));
  cudnnBackendDestroyDescriptor(d);
}

TEST(CudaConvFusionDeviceless, BadDevicePropertiesNameTheFileAndTheMember) {
  SKIP_WITHOUT_DEVICELESS();
  try {
    FusionTarget::from_json("{}", "my-gpu.json");
    FAIL() << "empty properties accepted";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("my-gpu.json"), std::string::npos) << m;
    EXPECT_NE(m.find("maxGridSize"), std::string::npos) << m;  // cuDNN's reason: the first missing member
  }
  try {
    FusionTarget::from_json_file("/nonexistent/gpu.json");
    FAIL() << "a missing file accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/gpu.json"), std::string::npos) << e.what();
  }
}

// cuDNN validates each operation graph (shapes, strides, uids, the ops' attributes) when it is
// finalized, before any engine or device is involved: a wrong stride, a tensor wired to the
// wrong port or a missing attribute fails here.
TEST(CudaConvFusionDeviceless, EveryPatternsGraphIsValid) {
  SKIP_WITHOUT_DEVICELESS();
  const FusionTarget t = h200();
  for (const ConvGeom& g : {conv3x3(4, 16, 8, 16, 1), conv3x3(4, 16, 8, 32, 2)})
    for (const FusionPattern p : cuda::all_fusion_patterns())
      for (const Layout l : {Layout::NCHW, Layout::NHWC}) {
        const auto s = cuda::probe_fusion(t, p, l, g, 0.2f, 0);  // no plans: the graph only
        EXPECT_EQ(s.graph_status, "ok") << to_string(p) << " " << to_string(l) << " stride " << g.stride;
      }
}

// The plain and the bias-fused convolution get plans from precompiled engines (no driver
// needed), in both layouts, for WRN-28-10 shapes on an H200.
TEST(CudaConvFusionDeviceless, PrecompiledEnginesPlanConvolutionsForH200) {
  SKIP_WITHOUT_DEVICELESS();
  const FusionTarget t = h200();
  for (const ConvGeom& g : {conv3x3(64, 160, 32, 160, 1), conv3x3(64, 160, 32, 320, 2)})
    for (const FusionPattern p : {FusionPattern::Conv, FusionPattern::ConvBias})
      for (const Layout l : {Layout::NCHW, Layout::NHWC}) {
        const auto s = cuda::probe_fusion(t, p, l, g, 0.2f, 2);
        const std::string what = std::string(to_string(p)) + " " + to_string(l) + " stride " + std::to_string(g.stride);
        EXPECT_GT(s.configs, 0) << what;
        ASSERT_FALSE(s.candidates.empty()) << what;
        EXPECT_TRUE(s.any_plan(true)) << what << ": " << s.candidates[0].status << " " << s.candidates[0].reason;
        for (const auto& c : s.candidates) {
          if (c.plan_built) {
            EXPECT_GE(c.workspace, 0) << what;
          }
        }
      }
}

// ---- on a GPU ------------------------------------------------------------------------------------

Vec random_vec(std::size_t n, std::mt19937& rng) {
  std::normal_distribution<float> nd(0.0f, 1.0f);
  Vec v(n);
  for (float& f : v) f = nd(rng);
  return v;
}

struct DeviceVec {
  float* p = nullptr;
  explicit DeviceVec(const Vec& v) {
    JEM_CUDA_CHECK(cudaMalloc(&p, std::max<std::size_t>(v.size(), 1) * sizeof(float)));
    JEM_CUDA_CHECK(cudaMemcpy(p, v.data(), v.size() * sizeof(float), cudaMemcpyHostToDevice));
  }
  ~DeviceVec() { cudaFree(p); }
  DeviceVec(const DeviceVec&) = delete;
  DeviceVec& operator=(const DeviceVec&) = delete;
  Vec get(std::size_t n) const {
    Vec v(n);
    JEM_CUDA_CHECK(cudaMemcpy(v.data(), p, n * sizeof(float), cudaMemcpyDeviceToHost));
    return v;
  }
};

double norm(const Vec& v) {
  double s = 0;
  for (float f : v) s += double(f) * f;
  return std::sqrt(s);
}

// Every fused plan that builds, against the CPU backend's ops for the same pattern
// (cuda::run_unfused), with tensor-core engines allowed (TF32) and not (FP32).
//
// Tolerance: the convolution's error is bounded as in the backend tests (sum_tol, by the math the
// engine uses: TF32 with tensor cores, FP32 without) relative to the norm of the convolution's
// own output, with the RSS ratio from the convolution of squared inputs. The pointwise tail
// (bias and residual adds, LeakyReLU or its gradient) is 1-Lipschitz in the convolution's output,
// so it carries that error over unchanged, and adds at most two roundings of its intermediates,
// whose norms are at most ||conv|| + ||bias, broadcast|| + ||z||:
//   ||fused - cpu|| <= sum_tol ||conv|| + 4 u (||conv|| + ||b, broadcast|| + ||z||).
//
// On sm_90 and later the four LeakyReLU patterns must build in NHWC with TF32: cuDNN's
// heuristics propose them there (docs/cudnn-fusion.md, deviceless), so a failure is news about
// the fused path, not noise. The backward patterns run twice: with a mask free of zeros, and with
// 1 in 16 of its entries exactly +-0, where the CPU takes the slope (x > 0 is false): the second
// check tells whether cuDNN's RELU_BWD agrees on that boundary.
TEST(CudaConvFusion, FusedPlansMatchTheCpuBackend) {
  JEM_SKIP_WITHOUT_CUDA();
  cudnnHandle_t handle = nullptr;
  JEM_CUDNN_CHECK(cudnnCreate(&handle));
  int device = 0;
  cudaDeviceProp prop{};
  JEM_CUDA_CHECK(cudaGetDevice(&device));
  JEM_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  auto cpu = make_backend("cpu", 1);
  const float slope = 0.2f;
  std::mt19937 rng(11);
  int conv_built = 0;
  for (const ConvGeom& g : {conv3x3(2, 16, 8, 16, 1), conv3x3(2, 16, 8, 32, 2)}) {
    const int P = g.P(), Q = g.Q();
    const std::size_t nx = std::size_t(g.N) * g.C * g.H * g.W, ny = std::size_t(g.N) * g.K * P * Q,
                      nw = std::size_t(g.K) * g.C * 9;
    for (const FusionPattern p : cuda::all_fusion_patterns()) {
      const bool backward = cuda::is_backward(p);
      const bool lrelu = p != FusionPattern::Conv && p != FusionPattern::ConvBias;
      const Vec x0 = random_vec(nx, rng), w = random_vec(nw, rng), b = random_vec(std::size_t(g.K), rng),
                z = random_vec(backward ? nx : ny, rng), dy = random_vec(ny, rng);
      for (const bool zeros : {false, true}) {
        if (zeros && !backward) continue;
        Vec x = x0;  // the input, or the mask of the backward patterns
        if (zeros)
          for (std::size_t i = 0; i < x.size(); i += 16) x[i] = (i / 16) % 2 ? -0.0f : 0.0f;
        // The CPU reference, and the bare convolution (of the data and of its squares) for the
        // tolerance.
        const Shape xs{g.N, g.C, g.H, g.W}, ys{g.N, g.K, P, Q};
        cuda::PatternTensors t{cpu->empty(xs), cpu->empty({g.K, g.C, 3, 3}), cpu->empty({g.K}),
                               cpu->empty(backward ? xs : ys), cpu->empty(ys), cpu->empty(ys),
                               cpu->empty(ys), cpu->empty(xs)};
        cpu->upload(x.data(), t.x);
        cpu->upload(w.data(), t.w);
        cpu->upload(b.data(), t.b);
        cpu->upload(z.data(), t.z);
        cpu->upload(dy.data(), t.dy);
        cuda::run_unfused(*cpu, p, g, slope, t);
        const Vec want = cpu->to_vector(backward ? t.dx : t.y);
        const Vec want_t = p == FusionPattern::ConvBiasAddLrelu ? cpu->to_vector(t.t) : Vec();
        cuda::PatternTensors c2{backward ? cpu->empty(xs) : t.x, t.w, t.b, t.z, t.dy, cpu->empty(ys),
                                cpu->empty(ys), cpu->empty(xs)};
        auto conv_only = [&](const Vec& in, const Vec& ww) {
          cpu->upload(in.data(), backward ? c2.dy : c2.x);
          cpu->upload(ww.data(), c2.w);
          cuda::run_unfused(*cpu, backward ? FusionPattern::DgradDrelu : FusionPattern::Conv, g, 1.0f, c2);
          return cpu->to_vector(backward ? c2.dx : c2.y);  // slope 1: the bare dgrad
        };
        if (backward) cpu->fill(c2.x, 1.0f);  // mask > 0 everywhere: lrelu' = 1
        const Vec conv = conv_only(backward ? dy : x, w);
        const Vec conv_sq = conv_only(squares(backward ? dy : x), squares(w));
        const bool uses_b = !backward && p != FusionPattern::Conv;
        const bool uses_z = p == FusionPattern::ConvBiasAddLrelu || p == FusionPattern::DgradDreluAdd;
        const double tail_scale = norm(conv) + (uses_b ? norm(b) * std::sqrt(double(g.N) * P * Q) : 0.0) +
                                  (uses_z ? norm(z) : 0.0);

        for (const Layout l : {Layout::NCHW, Layout::NHWC})
          for (const bool tf32 : {true, false}) {
            const std::string what = std::string(to_string(p)) + " " + to_string(l) + " stride " +
                                     std::to_string(g.stride) + (tf32 ? " TF32" : " FP32") +
                                     (zeros ? ", mask with exact zeros" : "");
            std::string why;
            auto fused = cuda::FusedConv::build(handle, p, l, g, slope, tf32, &why);
            if (!fused) {
              if (lrelu && l == Layout::NHWC && tf32 && prop.major >= 9)
                ADD_FAILURE() << what << ": cuDNN built no plan on sm_" << prop.major << prop.minor << " (" << why << ")";
              else
                std::printf("[ info     ] %s: no plan (%s)\n", what.c_str(), why.c_str());
              continue;
            }
            if (p == FusionPattern::Conv && tf32 && !zeros) ++conv_built;
            DeviceVec dx_(cuda::from_nchw(x, g.N, g.C, g.H, g.W, l)), dw_(cuda::from_nchw(w, g.K, g.C, 3, 3, l)),
                db_(b), dz_(backward ? cuda::from_nchw(z, g.N, g.C, g.H, g.W, l) : cuda::from_nchw(z, g.N, g.K, P, Q, l)),
                ddy_(cuda::from_nchw(dy, g.N, g.K, P, Q, l)), out(Vec(backward ? nx : ny, std::nanf(""))),
                pre(Vec(ny, std::nanf(""))), ws(Vec(fused->workspace_bytes() / sizeof(float) + 1));
            cuda::FusedConv::Args a;
            if (backward) a.dy = ddy_.p, a.w = dw_.p, a.m = dx_.p, a.z = dz_.p, a.dx = out.p;
            else a.x = dx_.p, a.w = dw_.p, a.b = db_.p, a.z = dz_.p, a.y = out.p, a.t = pre.p;
            fused->run(handle, a, ws.p);
            JEM_CUDA_CHECK(cudaDeviceSynchronize());
            const int k = backward ? g.K * 9 : g.C * 9;
            const MathMode math = fused->tensor_cores() ? MathMode::TF32 : MathMode::FP32;
            if (!tf32) {
              EXPECT_FALSE(fused->tensor_cores()) << what << ": a tensor-core engine without TF32";
            }
            const double bound = sum_tol(math, k, rss_ratio(conv_sq, conv)) * norm(conv) + 4 * kU * tail_scale;
            auto check = [&](const Vec& dev_out, const Vec& ref, const char* name) {
              Vec diff(ref.size());
              for (std::size_t i = 0; i < ref.size(); ++i) diff[i] = dev_out[i] - ref[i];
              // NaN (an output left at its prefill) fails the comparison too.
              EXPECT_LE(norm(diff), bound) << what << " (" << name << ", engine " << fused->engine()
                                           << (fused->tensor_cores() ? ", tensor cores" : "") << ")";
            };
            check(backward ? cuda::to_nchw(out.get(nx), g.N, g.C, g.H, g.W, l)
                           : cuda::to_nchw(out.get(ny), g.N, g.K, P, Q, l),
                  want, backward ? "dx" : "y");
            if (!want_t.empty()) check(cuda::to_nchw(pre.get(ny), g.N, g.K, P, Q, l), want_t, "t");
          }
      }
    }
  }
  // The plain convolution runs in both layouts and both geometries on every GPU cuDNN supports.
  EXPECT_EQ(conv_built, 4);
  cudnnDestroy(handle);
}

}  // namespace
}  // namespace jem::test
