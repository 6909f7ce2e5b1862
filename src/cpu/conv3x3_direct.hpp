// A direct 3x3, pad-1 convolution (stride 1 or 2) for CPUs with AVX2 + FMA.
//
// Why: the Wide-ResNets JEM uses at small widths (the quickstart's WRN-10-1 has 16-64 channels)
// lower each image to GEMMs of K = 16..64 rows, where im2col (a 9x copy of the input) and
// OpenBLAS's packing of that copy cost as much as the multiply itself. This kernel reads the
// (zero-padded) input in place: for a block of 4 output channels and 2 output vectors of 8
// pixels it keeps 8 accumulators in registers and, per input channel and tap, does 2 loads,
// 4 broadcasts and 8 FMAs. No copy of the input beyond one padded image. Measured on the
// quickstart model's SGLD step (1 thread): 1.3x faster than im2col + sgemm overall.
//
// The same kernel computes the data gradient of a stride-1 3x3 convolution: that is a
// convolution of dy with the flipped, channel-transposed kernel (see conv2d.cpp).
//
// Results differ from the im2col path only by the order of the fp32 sums.
#pragma once

#include <cstddef>

#include "jem/backend.hpp"

namespace jem::cpu {

// True when g is a 3x3, pad-1 convolution of stride 1 or 2 and this CPU has AVX2 and FMA.
// Stride 2 stores the padded image split by column parity, so that its taps read adjacent
// floats too (see PaddedGeom in the .cpp).
bool direct3x3_applies(const ConvGeom& g);

// Floats of packed weights for g: ceil(K/4) * C * 9 * 4.
std::size_t direct3x3_packed_weight_size(const ConvGeom& g);
// wp[kb][c][tap][4] = w[4*kb + j, c, tap] (0 for the padding channels past K).
void direct3x3_pack_weights(const ConvGeom& g, const float* w, float* wp);

// Floats of per-thread scratch for one image (the zero-padded input).
std::size_t direct3x3_scratch_size(const ConvGeom& g);
// One image: y[K, P, Q] = conv3x3(x[C, H, W], w) + b + z. `b` and `z` may be null (no bias, no
// residual; z [K, P, Q] is added as each output vector is stored, so it costs one read). Stride-1 rows
// wider than 8 outputs run 16-pixel AVX-512 vectors where the CPU has them, else 8-pixel AVX2
// ones (both read the same packed weights and padded input).
// wp: from direct3x3_pack_weights; scratch: direct3x3_scratch_size(g) floats.
// `avx512 = false` keeps to the AVX2 kernel.
void direct3x3_image(const ConvGeom& g, const float* x, const float* wp, const float* b,
                     const float* z, float* scratch, float* y, bool avx512 = true);

// The weight gradient, image by image: dw[K, C, 3, 3] += sum over images and output pixels
// (p, q) of dy[k, p, q] * x[c, stride*p + r - 1, stride*q + s - 1], stride 1 or 2. Same padded
// copy of x as the forward pass (scratch: direct3x3_scratch_size(g) floats); for a block of 4
// output channels, one input channel and one kernel row it keeps the 4 x 3 tap sums in
// registers over the whole image, so nothing but x and dy is read: no im2col copy (9x the
// input) and no GEMM. The sums stay in 8 lanes each, `lanes` (direct3x3_filter_grad_lanes_size
// floats, zeroed before the first image), carried from image to image; `finish` adds each
// weight's 8 lanes into dw once at the end. So the order of the sums depends only on the images
// given and their order. (conv2d.cpp says where it beats the GEMM.)
std::size_t direct3x3_filter_grad_lanes_size(const ConvGeom& g);
void direct3x3_filter_grad_image(const ConvGeom& g, const float* x, const float* dy, float* scratch,
                                 float* lanes);
void direct3x3_filter_grad_finish(const ConvGeom& g, const float* lanes, float* dw);

// The data gradient of a 3x3, stride-2, pad-1 convolution (where direct3x3_applies), one image:
// dx[C, H, W] = the transposed convolution of dy[K, P, Q]. Computed per output phase (row and
// column parity of dx), each a 1x1, 1x2, 2x1 or 2x2 correlation of dy, by the forward kernel's
// register blocks: no GEMM into a 9x column buffer and no col2im scatter.
// wp: direct3x3_s2_data_grad_packed_size(g) floats from direct3x3_s2_data_grad_pack(g, w);
// scratch: direct3x3_s2_data_grad_scratch_size(g) floats.
std::size_t direct3x3_s2_data_grad_packed_size(const ConvGeom& g);
void direct3x3_s2_data_grad_pack(const ConvGeom& g, const float* w, float* wp);
std::size_t direct3x3_s2_data_grad_scratch_size(const ConvGeom& g);
void direct3x3_s2_data_grad_image(const ConvGeom& g, const float* dy, const float* wp, float* scratch, float* dx);

}  // namespace jem::cpu
