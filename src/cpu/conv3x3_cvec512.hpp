// A 3x3, pad-1 convolution (stride 1 or 2) with AVX-512 vectors across OUTPUT CHANNELS, for
// layers with many channels and small images.
//
// Why: the other direct kernels put 16 adjacent output pixels in a vector. On an 8x8 image that
// leaves half of each vector empty (or, in the flat layout, a third of the positions are
// padding), and those are exactly the layers with the most channels (WRN-28-2's third group:
// 128 channels at 8x8 ran 2.6x slower than PyTorch's oneDNN). Here a vector holds 16 output
// channels of one pixel, so no lane is ever idle whatever the image size: a register block is
// 64 output channels x 6 output pixels (24 accumulators); per tap and input channel it loads 4
// weight vectors and broadcasts 6 input pixels for 24 FMAs. The input is read in place from the
// flat layout of one image (flat_layout.hpp: one padded plane at stride 1, four parity planes
// at stride 2); the results are scattered to the NCHW output (one 16-lane scatter per 9 x C
// vector FMAs of its accumulator).
//
// The data gradient of a stride-1 convolution is a stride-1 convolution of dy (conv2d.cpp), so
// this kernel computes it too.
//
// Results differ from the im2col path only by the order of the fp32 sums.
#pragma once

#include <cstddef>

#include "jem/backend.hpp"

namespace jem::cpu {

// True when g is a 3x3, pad-1 convolution of stride 1 or 2 and this CPU has AVX-512F.
bool cvec_applies(const ConvGeom& g);

// Floats of packed weights: ceil(K / 64) * 9 * C * 64.
std::size_t cvec_packed_size(const ConvGeom& g);
// wp[kg][t][c][j] = w[64 kg + j, c, t] (t = 3 r + s; 0 past K).
void cvec_pack(const ConvGeom& g, const float* w, float* wp);

// Floats of per-thread scratch for one image.
std::size_t cvec_scratch_size(const ConvGeom& g);
// One image: y[K, P, Q] = conv3x3(x[C, H, W]) + b + z (b and z may be null).
// Precondition: cvec_applies(g) (the caller checks, outside its OpenMP region).
void cvec_image(const ConvGeom& g, const float* x, const float* wp, const float* b, const float* z,
                float* scratch, float* y);

}  // namespace jem::cpu
