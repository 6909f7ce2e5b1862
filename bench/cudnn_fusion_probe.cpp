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

#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>
#include <optional>
#include <random>
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
using jem::cuda::Layout;
using json = nlohmann::json;

// Stride-1 3x3 convolutions of WRN-28-10's three groups at batch 64 (the iteration's bulk), and
// one stride-2 transition.
std::vector<ConvGeom> shapes(const std::string& set) {
  auto conv = [](int N, int C, int H, int K, int stride) {
    ConvGeom g;
    g.N = N, g.C = C, g.H = H, g.W = H, g.K = K, g.R = 3, g.S = 3, g.stride = stride, g.pad_h = 1,
    g.pad_w = 1;
    return g;
  };
  if (set == "small") return {conv(4, 16, 8, 16, 1)};
  return {conv(64, 160, 32, 160, 1), conv(64, 320, 16, 320, 1), conv(64, 640, 8, 640, 1),
          conv(64, 160, 32, 320, 2)};
}

std::string shape_name(const ConvGeom& g) {
  char b[96];
  std::snprintf(b, sizeof b, "%dx%dx%dx%d->%d/s%d", g.N, g.C, g.H, g.W, g.K, g.stride);
  return b;
}

using jem::cuda::from_nchw;
using jem::cuda::to_nchw;

struct DeviceBuf {
  float* p = nullptr;
  explicit DeviceBuf(std::size_t n) { JEM_CUDA_CHECK(cudaMalloc(&p, std::max<std::size_t>(n, 1) * sizeof(float))); }
  ~DeviceBuf() { cudaFree(p); }
  DeviceBuf(const DeviceBuf&) = delete;
  DeviceBuf& operator=(const DeviceBuf&) = delete;
};

// Max |a - b| over the reference's RMS: the probe reports it; tests hold it to a tolerance.
double error_over_rms(const std::vector<float>& got, const std::vector<float>& want) {
  double sq = 0, max_err = 0;
  for (std::size_t i = 0; i < want.size(); ++i) {
    sq += double(want[i]) * want[i];
    max_err = std::max(max_err, std::abs(double(got[i]) - want[i]));
  }
  const double rms = std::sqrt(sq / double(std::max<std::size_t>(want.size(), 1)));
  return rms > 0 ? max_err / rms : max_err;
}

// Times the fused plan and the backend's current ops for one pattern and layout on a GPU, and
// compares their outputs. Everything random, the same logical data for both.
json time_pattern(jem::Backend& be, cudnnHandle_t handle, FusionPattern pat, Layout layout,
                  const ConvGeom& g, float slope, bool tf32, int iterations) {
  json r;
  std::string why;
  auto fused = jem::cuda::FusedConv::build(handle, pat, layout, g, slope, tf32, &why);
  if (!fused) {
    r["fused"] = "unsupported: " + why;
    return r;
  }
  r["engine"] = fused->engine();
  r["workspace_bytes"] = fused->workspace_bytes();
  const bool backward = pat == FusionPattern::DgradDrelu || pat == FusionPattern::DgradDreluAdd;
  const int P = g.P(), Q = g.Q();
  std::mt19937 rng(7);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  auto randv = [&](std::size_t n) {
    std::vector<float> v(n);
    for (float& f : v) f = nd(rng);
    return v;
  };
  const std::size_t nx = std::size_t(g.N) * g.C * g.H * g.W, ny = std::size_t(g.N) * g.K * P * Q,
                    nw = std::size_t(g.K) * g.C * g.R * g.S;
  // x (or the mask m, in backward patterns), w, b, z, dy.
  const std::vector<float> x = randv(nx), w = randv(nw), b = randv(std::size_t(g.K)),
                           z = randv(backward ? nx : ny), dy = randv(ny);
  // ---- the backend's way (NCHW): the reference output and its time.
  jem::Tensor tx = be.empty({g.N, g.C, g.H, g.W}), tw = be.empty({g.K, g.C, g.R, g.S}),
              tb = be.empty({g.K}), tz = be.empty(backward ? jem::Shape{g.N, g.C, g.H, g.W} : jem::Shape{g.N, g.K, P, Q}),
              tdy = be.empty({g.N, g.K, P, Q}), ty = be.empty({g.N, g.K, P, Q}),
              tt = be.empty({g.N, g.K, P, Q}), tdx = be.empty({g.N, g.C, g.H, g.W}),
              ttmp = be.empty({g.N, g.C, g.H, g.W});
  be.upload(x.data(), tx);
  be.upload(w.data(), tw);
  be.upload(b.data(), tb);
  be.upload(z.data(), tz);
  be.upload(dy.data(), tdy);
  jem::cuda::PatternTensors pt{tx, tw, tb, tz, tdy, ty, tt, tdx, ttmp};
  auto backend_ops = [&] { jem::cuda::run_unfused(be, pat, g, slope, pt); };
  auto seconds = [](auto&& f, int n, auto&& sync) {
    f();
    sync();  // warm-up (and, the first time, the backend's algorithm search)
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < n; ++i) f();
    sync();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / n;
  };
  const double backend_s = seconds(backend_ops, iterations, [&] { be.synchronize(); });
  const std::vector<float> want = be.to_vector(backward ? tdx : ty);

  // ---- the fused plan, in `layout`.
  cudaStream_t stream = nullptr;
  JEM_CUDNN_CHECK(cudnnGetStream(handle, &stream));
  auto up = [](const std::vector<float>& v) {
    auto d = std::make_unique<DeviceBuf>(v.size());
    JEM_CUDA_CHECK(cudaMemcpy(d->p, v.data(), v.size() * sizeof(float), cudaMemcpyHostToDevice));
    return d;
  };
  auto dx_ = up(from_nchw(x, g.N, g.C, g.H, g.W, layout));
  auto dw_ = up(from_nchw(w, g.K, g.C, g.R, g.S, layout));
  auto db_ = up(b);
  auto dz_ = backward ? up(from_nchw(z, g.N, g.C, g.H, g.W, layout)) : up(from_nchw(z, g.N, g.K, P, Q, layout));
  auto ddy_ = up(from_nchw(dy, g.N, g.K, P, Q, layout));
  DeviceBuf out(backward ? nx : ny), pre(ny), ws(fused->workspace_bytes() / sizeof(float) + 1);
  jem::cuda::FusedConv::Args a;
  if (backward) {
    a.dy = ddy_->p, a.w = dw_->p, a.m = dx_->p, a.z = dz_->p, a.dx = out.p;
  } else {
    a.x = dx_->p, a.w = dw_->p, a.b = db_->p, a.z = dz_->p, a.y = out.p, a.t = pre.p;
  }
  const double fused_s = seconds([&] { fused->run(handle, a, ws.p); }, iterations,
                                 [&] { JEM_CUDA_CHECK(cudaStreamSynchronize(stream)); });
  std::vector<float> got(backward ? nx : ny);
  JEM_CUDA_CHECK(cudaMemcpy(got.data(), out.p, got.size() * sizeof(float), cudaMemcpyDeviceToHost));
  got = backward ? to_nchw(got, g.N, g.C, g.H, g.W, layout) : to_nchw(got, g.N, g.K, P, Q, layout);
  r["fused_ms"] = fused_s * 1e3;
  r["backend_ms"] = backend_s * 1e3;
  r["speedup"] = backend_s / fused_s;
  r["max_error_over_rms"] = error_over_rms(got, want);
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Which fused convolutions cuDNN's graph API runs for JEM's Wide-ResNet (and, on a GPU, how fast)"};
  std::string props, save_props, json_out, shape_set = "wrn28-10", math = "tf32";
  float slope = 0.2f;
  int candidates = 4, iterations = 20;
  bool time = false;
  app.add_option("--device-properties", props,
                 "Deviceless: build plans for the device these cuDNN device properties (JSON) describe")
      ->check(CLI::ExistingFile);
  app.add_option("--save-device-properties", save_props, "On a GPU: write its cuDNN device properties (JSON) here");
  app.add_option("--shapes", shape_set, "wrn28-10 (4 shapes at batch 64) or small")
      ->check(CLI::IsMember({"wrn28-10", "small"}));
  app.add_option("--slope", slope, "LeakyReLU's negative slope");
  app.add_option("--candidates", candidates, "Engine configurations tried per pattern")->check(CLI::PositiveNumber);
  app.add_flag("--time", time, "On a GPU: run each buildable fused plan against the backend's ops");
  app.add_option("--math", math, "With --time: tf32 (tensor-core engines allowed) or fp32")
      ->check(CLI::IsMember({"tf32", "fp32"}));
  app.add_option("--iterations", iterations, "With --time: timed runs per pattern")->check(CLI::PositiveNumber);
  app.add_option("--json", json_out, "Also write the results as JSON to this file");
  CLI11_PARSE(app, argc, argv);

  try {
    cudnnHandle_t handle = nullptr;
    std::unique_ptr<jem::Backend> backend;
    std::optional<jem::cuda::FusionTarget> target;
    if (!props.empty()) {
      target.emplace(jem::cuda::FusionTarget::from_json_file(props));
      if (time) throw jem::Error("--time needs a GPU, not --device-properties");
    } else {
      std::string why;
      if (jem::cuda_devices(&why).empty())
        throw jem::Error("no CUDA device (" + why + "): give --device-properties FILE to probe deviceless");
      if (time)
        backend = jem::cuda::make_cuda_backend(0, math == "tf32" ? jem::cuda::MathMode::TF32
                                                                 : jem::cuda::MathMode::FP32);
      JEM_CUDNN_CHECK(cudnnCreate(&handle));
      target.emplace(jem::cuda::FusionTarget::from_handle(handle));
      if (!save_props.empty()) std::ofstream(save_props) << target->json() << "\n";
    }
    json results = json::array();
    for (const ConvGeom& g : shapes(shape_set))
      for (const FusionPattern pat : jem::cuda::all_fusion_patterns())
        for (const Layout layout : {Layout::NCHW, Layout::NHWC}) {
          const auto s = jem::cuda::probe_fusion(*target, pat, layout, g, slope, candidates);
          json j{{"shape", shape_name(g)}, {"pattern", to_string(pat)}, {"layout", to_string(layout)},
                 {"graph", s.graph_status}, {"configs", s.configs}};
          json cands = json::array();
          int built = 0;
          for (const auto& c : s.candidates) {
            cands.push_back({{"engine", c.engine}, {"tensor_cores", c.tensor_cores},
                             {"runtime_compiled", c.runtime_compiled}, {"plan", c.status},
                             {"workspace_bytes", c.workspace}, {"reason", c.reason}});
            built += c.plan_built;
          }
          j["candidates"] = cands;
          std::printf("%-22s %-20s %s: %2d configs, %d of %zu plans built", shape_name(g).c_str(),
                      to_string(pat), to_string(layout), s.configs, built, s.candidates.size());
          if (!s.candidates.empty())
            std::printf(" (first: engine %lld%s%s, %s)", static_cast<long long>(s.candidates[0].engine),
                        s.candidates[0].tensor_cores ? ", tensor cores" : "",
                        s.candidates[0].runtime_compiled ? ", runtime-compiled" : "",
                        s.candidates[0].status.c_str());
          else if (s.graph_status != "ok")
            std::printf(" (graph refused: %s)", s.graph_status.c_str());
          std::printf("\n");
          if (time) {
            j["timing"] = time_pattern(*backend, handle, pat, layout, g, slope, math == "tf32", iterations);
            std::printf("    %s\n", j["timing"].dump().c_str());
          }
          std::fflush(stdout);
          results.push_back(j);
        }
    if (!json_out.empty()) std::ofstream(json_out) << json{{"cudnn_version", cudnnGetVersion()},
                                                         {"device_properties", props.empty() ? "this GPU" : props},
                                                         {"results", results}}.dump(1) << "\n";
    if (handle) cudnnDestroy(handle);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "cudnn_fusion_probe: %s\n", e.what());
    return 1;
  }
  return 0;
}
