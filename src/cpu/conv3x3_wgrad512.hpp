// The weight gradient of a 3x3, pad-1 convolution (stride 1 or 2) with AVX-512, several images
// at a time.
//
// Why: dw[k, c, r, s] = sum over images and output pixels of dy[k, p, q] * x[c, p*stride + r - 1,
// q*stride + s - 1] is a reduction over tens of thousands of pixels into a small K x C x 9
// result. The AVX2 kernel of conv3x3_direct.hpp walks one image row at a time, so a 28-wide row
// wastes a quarter of its last vector and 7- or 14-wide rows most of theirs; at 16-pixel vectors
// that waste grows, which is why its AVX-512 version was no faster.
//
// Here the pixels of a chunk of images are one flat run (flat_layout.hpp): dy's image blocks
// have the input planes' block size (Hb x Wb, dy's pixel (p, q) at p*Wb + q, zero elsewhere), so
// for every tap the input pixel of flat output position i sits at i + a fixed offset.
// One pass over a chunk for 3 output channels and one input channel keeps the 3 x 9 tap sums in
// 27 of the 32 vector registers, and per 16 flat positions does 3 dy loads, 9 input loads and 27
// FMAs. The only waste is the zero rows and columns around each image block: 13% of the
// positions on 28x28 images (30x30 blocks), 23% on 14x14 (16x16), at stride 2 13% on 14x14
// outputs (15x15) and 23% on 7x7 (8x8).
//
// Results differ from the im2col path only by the order of the fp32 sums.
#pragma once

#include <cstddef>

#include "jem/backend.hpp"

namespace jem::cpu {

// True when g is a 3x3, pad-1 convolution of stride 1 or 2 and this CPU has AVX-512F.
bool wgrad512_applies(const ConvGeom& g);

// Floats of scratch one thread needs for wgrad512_images(g, ...) over at most `images` images.
std::size_t wgrad512_scratch_size(const ConvGeom& g, int images);

// Adds the gradients of images [n0, n1) of x [N, C, H, W] and dy [N, K, P, Q]:
// dw[K, C, 3, 3] += sum_n dw_n; db[K] += sum_n sum_{p,q} dy_n (db may be null).
// scratch: wgrad512_scratch_size(g, n1 - n0) floats. The order of the sums depends only on g and
// on [n0, n1), so a fixed split of the images gives the same result every run.
// Precondition: wgrad512_applies(g) (the caller checks, outside its OpenMP region).
void wgrad512_images(const ConvGeom& g, const float* x, const float* dy, int n0, int n1,
                     float* scratch, float* dw, float* db);

}  // namespace jem::cpu
