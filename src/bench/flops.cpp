#include "jem/flops.hpp"

#include <array>
#include <string_view>

namespace jem {

std::vector<ConvLayer> wrn_conv_layers(const WrnConfig &cfg) {
  cfg.validate();
  std::vector<ConvLayer> out;
  auto add = [&](std::string name, int C, int size, int K, int R, int stride,
                 int pad) {
    ConvGeom g;
    g.N = 1;
    g.C = C;
    g.H = g.W = size;
    g.K = K;
    g.R = R;
    g.stride = stride;
    g.S = R;
    g.pad_h = g.pad_w = pad;
    out.push_back(ConvLayer{std::move(name), g});
  };
  const int S = cfg.image_size;
  add("f.conv1", cfg.in_channels, S, 16, 3, 1, 1);
  // The same walk as WideResNet::build_layout: three stages of n blocks, widths
  // 16k, 32k, 64k, the first block of stages 2 and 3 strided (in conv2 and the
  // shortcut).
  const int widths[3] = {16 * cfg.width, 32 * cfg.width, 64 * cfg.width};
  int in_planes = 16, size = S;
  for (int s = 0; s < 3; ++s) {
    for (int b = 0; b < cfg.blocks_per_stage(); ++b) {
      const int stride = (s > 0 && b == 0) ? 2 : 1;
      const int planes = widths[s];
      const std::string pre =
          "f.layer" + std::to_string(s + 1) + "." + std::to_string(b);
      add(pre + ".conv1", in_planes, size, planes, 3, 1, 1);
      add(pre + ".conv2", planes, size, planes, 3, stride, 1);
      if (stride != 1 || in_planes != planes)
        add(pre + ".shortcut.0", in_planes, size, planes, 1, stride, 0);
      in_planes = planes;
      size /= stride;
    }
  }
  return out;
}

double wrn_forward_flops(const WrnConfig &cfg, int batch) {
  double macs = 0;
  for (const ConvLayer &l : wrn_conv_layers(cfg))
    macs += l.geom.macs();
  macs += double(cfg.feature_dim()) * cfg.n_classes; // the linear head
  return 2.0 * macs * batch;
}

IterationFlops jem_iteration_flops(const WrnConfig &cfg, int sgld_chains,
                                   int sgld_steps, int rows) {
  const double fwd = wrn_forward_flops(cfg, 1);
  IterationFlops f;
  f.sgld = double(sgld_chains) * sgld_steps *
           (fwd + fwd);                      // forward + input-only backward
  f.step = double(rows) * (fwd + 2.0 * fwd); // forward + full backward
  return f;
}

double gpu_peak_flops(const std::string &device_name, bool tf32) {
  // Dense (no structured sparsity) figures from NVIDIA's data sheets, in
  // TFLOP/s; the SXM parts. First match wins, so the more specific names come
  // first. TF32 0: the device has no TF32 tensor cores (the backend then runs
  // FP32 math anyway).
  struct Entry {
    std::string_view key;
    double tf32, fp32;
  };
  static constexpr std::array<Entry, 5> kTable{{
      {"H100 PCIe", 378.0, 51.2},
      {"H100", 494.7, 66.9},
      {"H200", 494.7, 66.9},
      {"A100", 156.0, 19.5},
      {"V100", 0.0, 15.7},
  }};
  for (const Entry &e : kTable) {
    if (device_name.find(e.key) == std::string::npos)
      continue;
    const double t = tf32 ? e.tf32 : e.fp32;
    return t * 1e12;
  }
  return 0.0;
}

} // namespace jem
