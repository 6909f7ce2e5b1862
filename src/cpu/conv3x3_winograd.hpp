// A 3x3, stride-1, pad-1 convolution by Winograd's minimal filtering F(2x2, 3x3), for CPUs
// with AVX2 + FMA (Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks", 2016).
//
// Why: the direct kernels (conv3x3_direct.hpp) run at 50-60% of an AVX2 core's FMA peak, and
// the forward pass and data gradient of the stride-1 3x3 convolutions are about 40% of a JEM
// iteration on the CPU. F(2x2, 3x3) computes each 2x2 output tile from a 4x4 input tile with 16
// multiply-adds per (input, output) channel pair instead of 36: 2.25x fewer.
//   y_tile = A^T [ sum_c (G w_kc G^T) .* (B^T x_tile B) ] A
// per image: the input tiles' transforms V (16 planes of C x tiles), one small GEMM per plane
// (U [K, C] x V [C, tiles]: the direct kernel's register block, 4 output channels x 16 tiles),
// the output transform. Tiles go through all three steps a block of tile rows at a time, so that
// V and the GEMM's result stay in the L2 cache.
// The input is read from the zero-padded copy with each row split by column parity (as the
// direct kernel's stride-2 layout): the 4 columns of 8 adjacent tiles are 4 runs of adjacent
// floats. The data gradient of a stride-1 convolution is the forward pass of its flipped,
// transposed kernel (conv2d.cpp), so this computes it too; the weight gradient uses the same input
// transform, dy's 2x2 tiles transformed by A, and G^T ... G at the end (below).
//
// Accuracy: the transforms' coefficients are 0, +-1 and +-0.5, so the result differs from the
// direct sum by a few fp32 roundings of partial sums up to 4x the inputs' size: measured
// max |error| / max |y| of 2e-7 to 5e-7 against a double-precision sum on the Wide-ResNets'
// shapes, with uniform inputs and weights in [-1, 1].
//
// Measured on one Zen 4 core (AVX2), one image at a time, direct-kernel-equivalent GFLOP/s,
// this kernel against the direct one: 16->16 at 28x28 66-70 / 67, 16->32 at 28x28 82 / 67,
// 32->64 at 14x14 105 / 63, 64->32 at 14x14 98 / 70, 32->32 at 32x32 107 / 82, 64->64 at 16x16
// 137 / 82, 128->128 at 8x8 82 / 82.
#pragma once

#include <cstddef>

#include "jem/backend.hpp"

namespace jem::cpu {

// True when g is a 3x3, stride-1, pad-1 convolution and this CPU has AVX2 and FMA.
bool winograd_applies(const ConvGeom& g);

// Floats of transformed weights: 16 * ceil(K/4) * C * 4.
std::size_t winograd_packed_size(const ConvGeom& g);
// U[xi][K/4][C][4] = (G w[k, c] G^T)[xi] (0 for the padding channels past K).
void winograd_pack(const ConvGeom& g, const float* w, float* U);

// Floats of per-thread scratch for one image.
std::size_t winograd_scratch_size(const ConvGeom& g);
// One image: y[K, H, W] = conv3x3(x[C, H, W], w) + b + z; b and z may be null.
// U: from winograd_pack; scratch: winograd_scratch_size(g) floats.
// Precondition: winograd_applies(g) (the caller checks, outside its OpenMP region).
void winograd_image(const ConvGeom& g, const float* x, const float* U, const float* b, const float* z,
                    float* scratch, float* y);

// The weight gradient by the same transforms: dw[k, c] += G^T (sum over tiles of
// (A dy_tile A^T) .* (B^T x_tile B)) G, image by image. `acc` (winograd_filter_grad_acc_size
// floats: 16 transform positions of each (k, c), zeroed before the first image) carries the sums
// from image to image; `finish` adds G^T acc G into dw once at the end. So the order of the sums
// depends only on the images given and their order.
// scratch: winograd_filter_grad_scratch_size(g) floats.
std::size_t winograd_filter_grad_scratch_size(const ConvGeom& g);
std::size_t winograd_filter_grad_acc_size(const ConvGeom& g);
void winograd_filter_grad_image(const ConvGeom& g, const float* x, const float* dy, float* scratch, float* acc);
void winograd_filter_grad_finish(const ConvGeom& g, const float* acc, float* dw);

}  // namespace jem::cpu
