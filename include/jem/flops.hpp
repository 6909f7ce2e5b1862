// FLOP counts of the JEM Wide-ResNet and of one JEM training iteration,
// computed from the architecture alone (no backend, no allocation), and the
// peak FLOP/s of known GPUs.
//
// Convention (the one every benchmark of this project reports):
//   * a FLOP is one multiply or one add: a multiply-add is 2 FLOPs;
//   * forward = 2 x the multiply-adds of every convolution and of the linear
//   head; biases,
//     activations, pooling, residual adds and the losses are not counted (< 1%
//     of the total);
//   * full backward (input and weight gradients) = 2 x forward: backward-data
//   and
//     backward-filter each cost one forward's multiply-adds;
//   * input-only backward (what an SGLD step needs) = 1 x forward;
//   * one iteration = chains * steps * (forward + input-only backward) [SGLD]
//                   + rows * (forward + full backward) [training step]
//     with `chains` the SGLD chains per iteration and `rows` the rows of the
//     objective's batch.
// The optimizer's few FLOPs per parameter are not counted.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "jem/backend.hpp"
#include "jem/wide_resnet.hpp"

namespace jem {

// One convolution of the network, for one image (geom.N = 1).
struct ConvLayer {
  std::string name; // official parameter prefix, e.g. "f.layer2.0.conv2"
  ConvGeom geom;    // N = 1
};

// Every convolution of the Wide-ResNet in forward order (stem, then per block
// conv1, conv2, shortcut). Validates the config.
std::vector<ConvLayer> wrn_conv_layers(const WrnConfig &cfg);

// FLOPs of one forward pass of `batch` images (convolutions + linear head, 2
// per multiply-add).
double wrn_forward_flops(const WrnConfig &cfg, int batch);

struct IterationFlops {
  double sgld = 0; // chains * steps * (forward + input-only backward)
  double step = 0; // rows * (forward + full backward)
  double total() const { return sgld + step; }
};
IterationFlops jem_iteration_flops(const WrnConfig &cfg, int sgld_chains,
                                   int sgld_steps, int rows);

// Bytes the elementwise passes of one JEM iteration move through memory: 4-byte floats, each
// element read or written once per pass, i.e. what memory-bound kernels cannot go below. On a
// GPU these passes are limited by bandwidth, not arithmetic, so bytes / peak bandwidth is a
// floor on their time, whatever the kernels.
//   custom: jem's own kernels, as WideResNet runs them. Per image, forward: the first block's
//     LeakyReLU (read, write: 2 passes); per block, conv1's bias + LeakyReLU (2) and, after the
//     residual add, the next LeakyReLU (2); pooling reads the features. Input backward: per
//     block, the LeakyReLU backward after conv1 (read 2, write 1: 3) and the block input's
//     LeakyReLU backward fused with the sum of its two gradients (4);
//     the final LeakyReLU backward (3) and pooling's (write 1). Per SGLD step the update (read x
//     and the gradient, write x: 3). Per iteration `optimizer_passes` passes over the parameters
//     (Adam 7, SGD 5, plus 1 to zero the gradient and 5 for a moving average).
//   bias: the bias adds of the stem and shortcut convolutions (read and write each output: 2;
//     conv1's bias is added in its activation); conv2's bias and residual add, in cuDNN's fused
//     epilogue (read the residual: 1; unfused, ConvEngine's bias_residual_add reads and writes
//     the output and reads the residual: 3, in jem's kernels, see cudnn_conv.hpp); in the
//     training step, every convolution's bias gradient (read dy: 1). cuDNN runs these on a GPU.
// Chains run forward + input backward per step; rows forward + full backward (the same
// elementwise passes: weight gradients are GEMMs).
// fused_forward: the CUDA backend's channels-last TF32 path, where conv1 + bias + LeakyReLU and
//   conv2 + bias + residual + LeakyReLU each run as one cuDNN graph-API call
//   (Backend::conv2d_forward_leaky_relu, docs/cudnn-fusion.md): their forward passes leave jem's
//   kernels (conv1's 2 and conv2's 2 per output element), and what cuDNN's fused call reads of
//   the residual stays in `bias`. The stem's LeakyReLU, the backward passes, the update and the
//   optimizer are unchanged.
struct IterationTraffic {
  double custom = 0, bias = 0;  // bytes
  double total() const { return custom + bias; }
};
IterationTraffic jem_iteration_traffic(const WrnConfig &cfg, int sgld_chains,
                                       int sgld_steps, int rows,
                                       std::int64_t params,
                                       double optimizer_passes,
                                       bool fused_forward = false);

// Peak memory bandwidth in bytes/s of a GPU from its CUDA device name (NVIDIA's data sheets);
// 0 when the device is not in the table.
double gpu_peak_bandwidth(const std::string &device_name);

// Dense peak FLOP/s of a GPU from its CUDA device name (e.g. "NVIDIA H200"),
// for float32 FMA math or TF32 tensor-core math. 0 when the device is not in
// the table.
double gpu_peak_flops(const std::string &device_name, bool tf32);

} // namespace jem
