// cudnn_fusion_probe: which of JEM's fused convolutions (cuda/conv_fusion.hpp) cuDNN's graph API
// can run, per layout and WRN-28-10 shape; on a GPU also how fast, against what the CUDA
// backend does now (the legacy convolution and jem's elementwise kernels), and whether the
// results agree.
//
//   cudnn_fusion_probe --device-properties configs/devices/h200.json   # deviceless (any machine)
//   cudnn_fusion_probe --time --json OUT.json                          # on a GPU
//
// Deviceless, cuDNN finalizes plans of its precompiled engines; its runtime-compiled (fusion)
// engines need the driver library to be loaded at all (scripts/cudnn-fusion-probe.sh can lend
// them the toolkit's stub, with which they compile and fail only at loading the module).
#include <cudnn.h>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "../cuda/conv_fusion.hpp"
#include "../cuda/cuda_backend.hpp"
#include "../cuda/cuda_check.hpp"
#include "jem/backend.hpp"
#include "jem/runtime.hpp"

namespace {

using jem::ConvGeom;
using jem::cuda::FusionPattern;
using jem::Layout;
using json = nlohmann::json;

// A convolution of the model and the patterns that apply to it: conv1 (stride 1, C may differ
// from K at a group's first block) runs conv+bias+lrelu forward and dgrad+drelu+add backward;
// conv2 (K -> K, the group's stride at its first block) conv+bias+add+lrelu and dgrad+drelu.
struct Shape {
  ConvGeom g;
  bool conv1;  // else conv2
};

ConvGeom conv3x3(int N, int C, int H, int K, int stride) {
  ConvGeom g;
  g.N = N, g.C = C, g.H = H, g.W = H, g.K = K, g.R = 3, g.S = 3, g.stride = stride, g.pad_h = 1, g.pad_w = 1;
  return g;
}

// WRN-28-10 at batch 64: every distinct 3x3 convolution of the network.
std::vector<Shape> shapes(const std::string& set) {
  if (set == "small") return {{conv3x3(4, 16, 8, 16, 1), true}, {conv3x3(4, 16, 8, 16, 2), false}};
  const int N = 64;
  return {{conv3x3(N, 16, 32, 160, 1), true},  {conv3x3(N, 160, 32, 160, 1), true},
          {conv3x3(N, 160, 32, 320, 1), true}, {conv3x3(N, 320, 16, 320, 1), true},
          {conv3x3(N, 320, 16, 640, 1), true}, {conv3x3(N, 640, 8, 640, 1), true},
          {conv3x3(N, 160, 32, 160, 1), false}, {conv3x3(N, 320, 32, 320, 2), false},
          {conv3x3(N, 320, 16, 320, 1), false}, {conv3x3(N, 640, 16, 640, 2), false},
          {conv3x3(N, 640, 8, 640, 1), false}};
}

bool applies(FusionPattern p, const Shape& s) {
  switch (p) {
    case FusionPattern::ConvBiasLrelu:
    case FusionPattern::DgradDreluAdd: return s.conv1;
    case FusionPattern::ConvBiasAddLrelu:
    case FusionPattern::DgradDrelu: return !s.conv1;
    default: return s.conv1 || s.g.stride != 1;  // conv, conv+bias: once per distinct geometry
  }
}

std::string shape_name(const ConvGeom& g) {
  char b[96];
  std::snprintf(b, sizeof b, "%dx%dx%dx%d->%d/s%d", g.N, g.C, g.H, g.W, g.K, g.stride);
  return b;
}

json engine_json(const jem::cuda::EngineCandidate& c, bool with_plan) {
  json j{{"engine", c.engine}, {"tensor_cores", c.tensor_cores}, {"runtime_compiled", c.runtime_compiled}};
  if (with_plan) {
    j["plan"] = c.status;
    j["workspace_bytes"] = c.workspace;
    if (!c.reason.empty()) j["reason"] = c.reason;
  }
  return j;
}

// ---- timing on a GPU -------------------------------------------------------------------------------

struct DeviceBuf {
  float* p = nullptr;
  std::size_t n = 0;
  explicit DeviceBuf(std::size_t count) : n(std::max<std::size_t>(count, 1)) {
    JEM_CUDA_CHECK(cudaMalloc(&p, n * sizeof(float)));
  }
  ~DeviceBuf() { cudaFree(p); }
  DeviceBuf(const DeviceBuf&) = delete;
  DeviceBuf& operator=(const DeviceBuf&) = delete;
  void nan_fill() { JEM_CUDA_CHECK(cudaMemset(p, 0xFF, n * sizeof(float))); }  // 0xFFFFFFFF: a NaN
};

// Uniform in [-1, 1), cheap (the largest shapes need 10^7 numbers per tensor).
std::vector<float> random_values(std::size_t n, std::uint64_t seed) {
  std::vector<float> v(n);
  std::uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
  for (float& f : v) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    f = float(std::int64_t(s >> 40) - (1ll << 23)) * 0x1p-23f;
  }
  return v;
}

// How a fused output compares with the backend's: non-finite outputs (a NaN-prefilled buffer the
// plan did not write, or a NaN it made), and ||got - want|| / ||want||.
struct Agreement {
  std::size_t non_finite = 0;
  double rel_error = 0.0;
};
Agreement compare(const std::vector<float>& got, const std::vector<float>& want) {
  Agreement a;
  double diff = 0.0, ref = 0.0;
  for (std::size_t i = 0; i < want.size(); ++i) {
    if (!std::isfinite(got[i])) {
      ++a.non_finite;
      continue;
    }
    const double d = double(got[i]) - want[i];
    diff += d * d;
    ref += double(want[i]) * want[i];
  }
  a.rel_error = ref > 0 ? std::sqrt(diff / ref) : std::sqrt(diff);
  return a;
}

// Milliseconds per call: the median of 5 timed runs of `calls` calls each (CUDA events on `s`),
// after one untimed call.
template <class F>
double median_ms(cudaStream_t s, int calls, F&& f) {
  f(0);
  cudaEvent_t a, b;
  JEM_CUDA_CHECK(cudaEventCreate(&a));
  JEM_CUDA_CHECK(cudaEventCreate(&b));
  std::vector<float> ms;
  for (int rep = 0; rep < 5; ++rep) {
    JEM_CUDA_CHECK(cudaEventRecord(a, s));
    for (int i = 0; i < calls; ++i) f(i);
    JEM_CUDA_CHECK(cudaEventRecord(b, s));
    JEM_CUDA_CHECK(cudaEventSynchronize(b));
    float t = 0;
    JEM_CUDA_CHECK(cudaEventElapsedTime(&t, a, b));
    ms.push_back(t / float(calls));
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(ms.begin(), ms.end());
  return ms[2];
}

// Screening bound of the rel_error: TF32 rounds the convolution's inputs to 10-bit mantissas, a
// relative error of a few 2^-10 for random data (tests/cuda/test_conv_fusion.cpp holds each
// plan to the exact bound of its inputs); FP32 sums of up to 5760 products differ by rounding
// order only.
double error_bound(bool tensor_cores) { return tensor_cores ? 1e-2 : 1e-5; }

// Times the fused plan and the backend's ops for one pattern and layout, each on two alternating
// input sets (so that the smaller shapes do not run from a warm L2), and compares their outputs
// (both of them for conv+bias+add+lrelu).
json time_pattern(jem::Backend& be, cudaStream_t be_stream, cudnnHandle_t handle, FusionPattern pat,
                  Layout layout, const ConvGeom& g, float slope, bool tf32, int calls) {
  json r;
  std::string why;
  auto fused = jem::cuda::FusedConv::build(handle, pat, layout, g, slope, tf32, &why, 2);
  if (!fused) {
    r["fused"] = "no plan: " + why;
    return r;
  }
  r["engine"] = fused->engine();
  r["tensor_cores"] = fused->tensor_cores();
  r["runtime_compiled"] = fused->runtime_compiled();
  r["workspace_bytes"] = fused->workspace_bytes();
  const bool backward = jem::cuda::is_backward(pat);
  const int P = g.P(), Q = g.Q();
  const std::size_t nx = std::size_t(g.N) * g.C * g.H * g.W, ny = std::size_t(g.N) * g.K * P * Q,
                    nw = std::size_t(g.K) * g.C * g.R * g.S;
  const jem::Shape xs{g.N, g.C, g.H, g.W}, ys{g.N, g.K, P, Q}, ws{g.K, g.C, g.R, g.S};
  const std::size_t nz = backward ? nx : ny, nout = backward ? nx : ny;
  // Two input sets: [set][x (or the mask), z, dy]; the weights and the bias are shared.
  const std::vector<float> w = random_values(nw, 1), b = random_values(std::size_t(g.K), 2);
  std::vector<float> in[2][3];
  for (int set = 0; set < 2; ++set) {
    in[set][0] = random_values(nx, 10 + set);
    in[set][1] = random_values(nz, 20 + set);
    in[set][2] = random_values(ny, 30 + set);
  }
  // ---- the backend's way (NCHW)
  jem::Tensor tw = be.empty(ws), tb = be.empty({g.K});
  be.upload(w.data(), tw);
  be.upload(b.data(), tb);
  std::vector<jem::cuda::PatternTensors> pt(2);
  for (int set = 0; set < 2; ++set) {
    auto& t = pt[std::size_t(set)];
    t = {be.empty(xs), tw, tb, be.empty(backward ? xs : ys), be.empty(ys), be.empty(ys), be.empty(ys), be.empty(xs)};
    be.upload(in[set][0].data(), t.x);
    be.upload(in[set][1].data(), t.z);
    be.upload(in[set][2].data(), t.dy);
  }
  be.synchronize();
  const double backend_ms =
      median_ms(be_stream, calls, [&](int i) { jem::cuda::run_unfused(be, pat, g, slope, pt[std::size_t(i % 2)]); });
  // The outputs of set 0 (the last call ran set 1: run set 0 once more).
  jem::cuda::run_unfused(be, pat, g, slope, pt[0]);
  const std::vector<float> want = be.to_vector(backward ? pt[0].dx : pt[0].y);
  const std::vector<float> want_t = pat == FusionPattern::ConvBiasAddLrelu ? be.to_vector(pt[0].t) : std::vector<float>();

  // ---- the fused plan, in `layout`
  using jem::cuda::from_nchw;
  using jem::cuda::to_nchw;
  cudaStream_t stream = nullptr;
  JEM_CUDNN_CHECK(cudnnGetStream(handle, &stream));
  auto up = [](const std::vector<float>& v) {
    auto d = std::make_unique<DeviceBuf>(v.size());
    JEM_CUDA_CHECK(cudaMemcpy(d->p, v.data(), v.size() * sizeof(float), cudaMemcpyHostToDevice));
    return d;
  };
  auto dw = up(from_nchw(w, g.K, g.C, g.R, g.S, layout));
  auto db = up(b);
  std::unique_ptr<DeviceBuf> dev[2][3];
  for (int set = 0; set < 2; ++set) {
    dev[set][0] = up(from_nchw(in[set][0], g.N, g.C, g.H, g.W, layout));
    dev[set][1] = backward ? up(from_nchw(in[set][1], g.N, g.C, g.H, g.W, layout))
                           : up(from_nchw(in[set][1], g.N, g.K, P, Q, layout));
    dev[set][2] = up(from_nchw(in[set][2], g.N, g.K, P, Q, layout));
  }
  DeviceBuf out(nout), pre(ny), wsp(fused->workspace_bytes() / sizeof(float) + 1);
  out.nan_fill();
  pre.nan_fill();
  auto args = [&](int set) {
    jem::cuda::FusedConv::Args a;
    if (backward) {
      a.dy = dev[set][2]->p, a.w = dw->p, a.m = dev[set][0]->p, a.z = dev[set][1]->p, a.dx = out.p;
    } else {
      a.x = dev[set][0]->p, a.w = dw->p, a.b = db->p, a.z = dev[set][1]->p, a.y = out.p, a.t = pre.p;
    }
    return a;
  };
  // The agreement first, from a single run into the NaN-filled outputs.
  fused->run(handle, args(0), wsp.p);
  JEM_CUDA_CHECK(cudaStreamSynchronize(stream));
  std::vector<float> got(nout);
  JEM_CUDA_CHECK(cudaMemcpy(got.data(), out.p, nout * sizeof(float), cudaMemcpyDeviceToHost));
  got = backward ? to_nchw(got, g.N, g.C, g.H, g.W, layout) : to_nchw(got, g.N, g.K, P, Q, layout);
  Agreement agree = compare(got, want);
  if (!want_t.empty()) {
    std::vector<float> got_t(ny);
    JEM_CUDA_CHECK(cudaMemcpy(got_t.data(), pre.p, ny * sizeof(float), cudaMemcpyDeviceToHost));
    const Agreement at = compare(to_nchw(got_t, g.N, g.K, P, Q, layout), want_t);
    agree.non_finite += at.non_finite;
    agree.rel_error = std::max(agree.rel_error, at.rel_error);
  }
  const double fused_ms = median_ms(stream, calls, [&](int i) { fused->run(handle, args(i % 2), wsp.p); });
  r["fused_ms"] = fused_ms;
  r["backend_ms"] = backend_ms;
  r["speedup"] = backend_ms / fused_ms;
  r["non_finite_outputs"] = agree.non_finite;
  r["rel_error"] = agree.rel_error;
  r["error_bound"] = error_bound(fused->tensor_cores());
  r["ok"] = agree.non_finite == 0 && agree.rel_error <= error_bound(fused->tensor_cores());
  return r;
}

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, ',');)
    if (!item.empty()) out.push_back(item);
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Which fused convolutions cuDNN's graph API runs for JEM's Wide-ResNet (and, on a GPU, how fast)"};
  std::string props, save_props, json_out, shape_set = "wrn28-10", math = "tf32", patterns, layouts = "NCHW,NHWC";
  float slope = 0.2f;
  int candidates = 16, calls = 10;
  bool time = false;
  app.add_option("--device-properties", props,
                 "Deviceless: build plans for the device these cuDNN device properties (JSON) describe")
      ->check(CLI::ExistingFile);
  app.add_option("--save-device-properties", save_props, "On a GPU: write its cuDNN device properties (JSON) here");
  app.add_option("--shapes", shape_set, "wrn28-10 (its 3x3 convolutions at batch 64) or small")
      ->check(CLI::IsMember({"wrn28-10", "small"}));
  app.add_option("--patterns", patterns, "Comma-separated patterns (default: all; see docs/cudnn-fusion.md)");
  app.add_option("--layouts", layouts, "Comma-separated layouts: NCHW, NHWC");
  app.add_option("--slope", slope, "LeakyReLU's negative slope");
  app.add_option("--candidates", candidates,
                 "Plans tried per pattern (deviceless; 0: only the heuristics' engines)")
      ->check(CLI::NonNegativeNumber);
  app.add_flag("--time", time, "On a GPU: run each pattern's fused plan against the backend's ops");
  app.add_option("--math", math, "With --time: tf32 (tensor-core engines allowed) or fp32 (not)")
      ->check(CLI::IsMember({"tf32", "fp32"}));
  app.add_option("--calls", calls, "With --time: calls per timed run (5 runs, the median)")->check(CLI::PositiveNumber);
  app.add_option("--json", json_out, "Also write the results as JSON to this file (rewritten after every case)");
  CLI11_PARSE(app, argc, argv);

  cudnnHandle_t handle = nullptr;
  try {
    std::vector<FusionPattern> pats;
    for (const std::string& p : split(patterns)) pats.push_back(jem::cuda::fusion_pattern_from_string(p));
    if (pats.empty()) pats = jem::cuda::all_fusion_patterns();
    std::vector<Layout> lays;
    for (const std::string& l : split(layouts)) {
      if (l != "NCHW" && l != "NHWC") throw jem::Error("--layouts: unknown layout '" + l + "' (NCHW, NHWC)");
      lays.push_back(l == "NCHW" ? Layout::NCHW : Layout::NHWC);
    }
    std::unique_ptr<jem::Backend> backend;
    cudaStream_t be_stream = nullptr;
    std::optional<jem::cuda::FusionTarget> target;
    std::string target_error;
    if (!props.empty()) {
      if (time) throw jem::Error("--time needs a GPU, not --device-properties");
      target.emplace(jem::cuda::FusionTarget::from_json_file(props));
    } else {
      std::string why;
      if (jem::cuda_devices(&why).empty())
        throw jem::Error("no CUDA device (" + why + "): give --device-properties FILE to probe deviceless");
      JEM_CUDNN_CHECK(cudnnCreate(&handle));
      if (time) {
        backend = jem::cuda::make_cuda_backend(0, math == "tf32" ? jem::cuda::MathMode::TF32 : jem::cuda::MathMode::FP32);
        be_stream = static_cast<jem::cuda::CudaBackend&>(*backend).stream();
      }
      // The device's properties: for the support listing and for deviceless probing elsewhere.
      // Not needed to time: a failure here is recorded and the timing goes on.
      try {
        target.emplace(jem::cuda::FusionTarget::from_handle(handle));
        if (!save_props.empty()) std::ofstream(save_props) << target->json() << "\n";
      } catch (const std::exception& e) {
        target_error = e.what();
        std::fprintf(stderr, "cudnn_fusion_probe: no device properties (%s): listing skipped\n", e.what());
      }
    }
    json doc{{"cudnn_version", cudnnGetVersion()},
             {"device_properties", props.empty() ? "this GPU" : props},
             {"math", time ? math : "any"},
             {"results", json::array()}};
    if (!target_error.empty()) doc["device_properties_error"] = target_error;
    auto save = [&] {
      if (json_out.empty()) return;
      std::ofstream(json_out) << doc.dump(1) << "\n";
    };
    for (const FusionPattern pat : pats)
      for (const Shape& sh : shapes(shape_set)) {
        if (!applies(pat, sh)) continue;
        const ConvGeom& g = sh.g;
        for (const Layout layout : lays) {
          json j{{"shape", shape_name(g)}, {"pattern", to_string(pat)}, {"layout", to_string(layout)}};
          std::printf("%-22s %-20s %s:", shape_name(g).c_str(), to_string(pat), to_string(layout));
          try {
            if (target) {
              // Timing builds its own plan: listing the engines is enough then.
              const auto s = jem::cuda::probe_fusion(*target, pat, layout, g, slope, time ? 0 : candidates);
              j["graph"] = s.graph_status;
              j["configs"] = s.configs;
              json engines = json::array(), cands = json::array();
              for (const auto& c : s.engines) engines.push_back(engine_json(c, false));
              int built = 0;
              for (const auto& c : s.candidates) {
                cands.push_back(engine_json(c, true));
                built += c.plan_built;
              }
              j["engines"] = engines;
              if (!time) j["candidates"] = cands;
              std::printf(" %2d configs of %zu engines [", s.configs, s.engines.size());
              for (std::size_t i = 0; i < s.engines.size(); ++i)
                std::printf("%s%lld%s%s", i ? " " : "", static_cast<long long>(s.engines[i].engine),
                            s.engines[i].tensor_cores ? "T" : "", s.engines[i].runtime_compiled ? "r" : "");
              std::printf("]");
              if (!time) std::printf(", %d of %zu plans built", built, s.candidates.size());
              if (s.graph_status != "ok") std::printf(" (%s)", s.graph_status.c_str());
            }
            if (time) {
              j["timing"] = time_pattern(*backend, be_stream, handle, pat, layout, g, slope, math == "tf32", calls);
              std::printf(" %s", j["timing"].dump().c_str());
            }
          } catch (const std::exception& e) {  // one case's failure is its result
            j["error"] = e.what();
            std::printf(" error: %s", e.what());
          }
          std::printf("\n");
          std::fflush(stdout);
          doc["results"].push_back(j);
          save();
        }
      }
    save();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "cudnn_fusion_probe: %s\n", e.what());
    if (handle) cudnnDestroy(handle);
    return 1;
  }
  if (handle) cudnnDestroy(handle);
  return 0;
}
