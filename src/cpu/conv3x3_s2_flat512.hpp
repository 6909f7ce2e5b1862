// The forward pass and the data gradient of a 3x3, pad-1, stride-2 convolution with AVX-512, on
// chunks of images in the flat layout of flat_layout.hpp.
//
// Why: a stride-2 layer's outputs are small (WRN-10-1: 14x14 and 7x7), and the per-row kernels
// of conv3x3_direct.hpp fall back to 8-pixel AVX2 vectors on 7-wide rows and split the data
// gradient into four phases of 7- or 14-wide rows. They ran the stride-2 layers at 25-35 GFMA/s
// where the stride-1 layers run at 55-60. In the flat layout one vector loop covers a chunk of
// whole images, so a 7x7 output costs 64 positions (8x8 blocks) instead of 7 half-empty rows.
//
// Register block: 4 output channels x 5 vectors of 16 positions = 20 accumulators; per input
// channel and tap, 5 input loads, 4 weight broadcasts and 20 FMAs. (6 vectors, 24 accumulators,
// left GCC too few of the 32 registers: it spilled inside the loop.)
//
//   forward:        y[k, p, q] = b[k] + z[k, p, q] + sum_{c, r, s} w[k, c, r, s] x[c, 2p+r-1, 2q+s-1]
//                   over the 4 parity planes of x (9 taps).
//   data gradient:  dx[c, h, w] = sum_{k, r, s: h+1 = 2p+r, w+1 = 2q+s} w[k, c, r, s] dy[k, p, q],
//                   computed per phase (a, b) = ((h + 1) % 2, (w + 1) % 2): rows r in {0, 2}
//                   (a = 0) or {1} (a = 1), the same for columns, so 4, 2, 2 and 1 taps of dy
//                   stored with one zero row above and one zero column to the left.
//
// Results differ from the im2col path only by the order of the fp32 sums.
#pragma once

#include <cstddef>

#include "jem/backend.hpp"

namespace jem::cpu {

// True when g is a 3x3, pad-1, stride-2 convolution and this CPU has AVX-512F.
bool s2flat_applies(const ConvGeom& g);

// Images per chunk when `threads` threads share g.N images: at most ceil(N / threads) images (so
// that every thread gets work where N allows), about 2048 output positions and 1 MiB of input.
int s2flat_chunk_images(const ConvGeom& g, int threads);

// Forward. wp: s2flat_forward_packed_size(g) floats from s2flat_forward_pack(g, w, wp);
// scratch: s2flat_forward_scratch_size(g, B) floats per thread for chunks of B images.
// s2flat_forward_chunk computes images [n0, min(n0 + B, N)) of y (and adds b, z: either may be
// null).
// Precondition of the chunk functions: s2flat_applies(g) (the caller checks, outside its OpenMP
// region).
std::size_t s2flat_forward_packed_size(const ConvGeom& g);
void s2flat_forward_pack(const ConvGeom& g, const float* w, float* wp);
std::size_t s2flat_forward_scratch_size(const ConvGeom& g, int B);
void s2flat_forward_chunk(const ConvGeom& g, const float* x, const float* wp, const float* b, const float* z,
                          int n0, int B, float* scratch, float* y);

// Data gradient (dx is overwritten). wq: s2flat_data_grad_packed_size(g) floats from
// s2flat_data_grad_pack(g, w, wq); scratch: s2flat_data_grad_scratch_size(g, B) per thread.
std::size_t s2flat_data_grad_packed_size(const ConvGeom& g);
void s2flat_data_grad_pack(const ConvGeom& g, const float* w, float* wq);
std::size_t s2flat_data_grad_scratch_size(const ConvGeom& g, int B);
void s2flat_data_grad_chunk(const ConvGeom& g, const float* dy, const float* wq, int n0, int B, float* scratch,
                            float* dx);

}  // namespace jem::cpu
