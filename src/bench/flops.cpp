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

IterationTraffic jem_iteration_traffic(const WrnConfig &cfg, int sgld_chains,
                                       int sgld_steps, int rows,
                                       std::int64_t params,
                                       double optimizer_passes,
                                       bool fused_forward) {
  auto ends_with = [](const std::string &s, std::string_view end) {
    return s.size() >= end.size() &&
           s.compare(s.size() - end.size(), end.size(), end) == 0;
  };
  // Floats per image, walking the layers as WideResNet::forward and backward
  // run them.
  double fwd = 0, bwd = 0;        // custom passes: forward, input backward
  double bias_fwd = 0, dbias = 0; // bias adds; bias gradients (training step)
  double features = 0;            // the last block's output
  for (const ConvLayer &l : wrn_conv_layers(cfg)) {
    const ConvGeom &g = l.geom;
    const double in = double(g.C) * g.H * g.W,
                 out = double(g.K) * g.P() * g.Q();
    dbias += out;  // every convolution's bias gradient reads its dy
    if (l.name == "f.conv1") {
      bias_fwd += 2 * out;
      fwd += 2 * out;  // the first block's LeakyReLU
    } else if (ends_with(l.name, ".conv1")) {
      // bias + LeakyReLU in one pass (read conv1's output, write a2); its
      // backward (read a2 and dy, write dx); the block input's LeakyReLU
      // backward fused with the sum of its two gradients (read 3, write 1).
      if (!fused_forward) fwd += 2 * out;
      bwd += 3 * out + 4 * in;
    } else if (ends_with(l.name, ".conv2")) {
      // Bias and residual in cuDNN's epilogue (the fused call: it reads the
      // other path once); then the next LeakyReLU (read the sum, write the
      // activation).
      bias_fwd += out;
      if (!fused_forward) fwd += 2 * out;
      features = out;
    } else { // shortcut
      bias_fwd += 2 * out;
    }
  }
  fwd += features;                // pooling reads the final activation
  bwd += 3 * features + features; // its LeakyReLU backward; pooling's backward
  const double image =
      double(cfg.in_channels) * cfg.image_size * cfg.image_size;
  const double chain_steps = double(sgld_chains) * sgld_steps;
  IterationTraffic t;
  t.custom = 4.0 * (chain_steps * (fwd + bwd + 3 * image) +
                    double(rows) * (fwd + bwd) +
                    optimizer_passes * double(params));
  t.bias =
      4.0 * (chain_steps * bias_fwd + double(rows) * (bias_fwd + dbias));
  return t;
}

double gpu_peak_bandwidth(const std::string &device_name) {
  // GB/s, NVIDIA's data sheets; more specific names first.
  struct Entry {
    std::string_view key;
    double gb_per_s;
  };
  static constexpr std::array<Entry, 7> kTable{{
      {"H100 PCIe", 2000.0},
      {"H100", 3350.0},
      {"H200", 4800.0},
      {"A100-SXM4-80GB", 2039.0},
      {"A100 80GB PCIe", 1935.0},
      {"A100", 1555.0},
      {"V100", 900.0},
  }};
  for (const Entry &e : kTable)
    if (device_name.find(e.key) != std::string::npos)
      return e.gb_per_s * 1e9;
  return 0.0;
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
