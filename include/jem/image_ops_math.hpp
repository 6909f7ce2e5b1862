// Per-output-element math of the inference-only image ops (pooling, bilinear
// resize), shared by the CPU backend and the CUDA kernels so that both compute
// each value the same way.
#pragma once

#include <cmath>
#include <cstdint>

#include "jem/backend.hpp"
#include "jem/elementwise_math.hpp"  // JEM_HD

namespace jem::image_ops {

// Max over the in-image taps of the window of output (p, q); padding never wins
// (PyTorch pads max pooling with -inf). The window always holds at least one
// in-image tap (pad <= kernel / 2).
JEM_HD float max_pool_at(const PoolGeom& g, const float* x, int p, int q) {
  const int h0 = p * g.stride - g.pad, w0 = q * g.stride - g.pad;
  const int hb = h0 < 0 ? 0 : h0, he = h0 + g.kernel < g.H ? h0 + g.kernel : g.H;
  const int wb = w0 < 0 ? 0 : w0, we = w0 + g.kernel < g.W ? w0 + g.kernel : g.W;
  float m = -INFINITY;
  for (int h = hb; h < he; ++h)
    for (int w = wb; w < we; ++w) {
      const float v = x[std::int64_t(h) * g.W + w];
      m = v > m ? v : m;
    }
  return m;
}

// Mean over the in-image taps only (count_include_pad = False): the divisor is
// the number of taps inside x, summed in row-major window order.
JEM_HD float avg_pool_at(const PoolGeom& g, const float* x, int p, int q) {
  const int h0 = p * g.stride - g.pad, w0 = q * g.stride - g.pad;
  const int hb = h0 < 0 ? 0 : h0, he = h0 + g.kernel < g.H ? h0 + g.kernel : g.H;
  const int wb = w0 < 0 ? 0 : w0, we = w0 + g.kernel < g.W ? w0 + g.kernel : g.W;
  float s = 0.0f;
  for (int h = hb; h < he; ++h)
    for (int w = wb; w < we; ++w) s += x[std::int64_t(h) * g.W + w];
  return s / static_cast<float>((he - hb) * (we - wb));
}

// One axis of a bilinear tap: out = (1 - frac) * in[i0] + frac * in[i1].
struct LerpTap {
  int i0, i1;
  float frac;
};

// PyTorch's align_corners=False source index of output `o` when `in` pixels
// become `out`: src = (o + 0.5) * in / out - 0.5, clamped below at 0; its right
// neighbour clamped to the image. Float arithmetic, as PyTorch uses for float
// images.
JEM_HD LerpTap bilinear_tap(int in, int out, int o) {
  const float scale = static_cast<float>(in) / static_cast<float>(out);
#if defined(__CUDA_ARCH__)
  // Rounded after the product as on the CPU: nvcc would contract this into one FMA, and where
  // scale * (o + 0.5) is just above a power of two the FMA keeps one more bit of src, which
  // moves frac by 2^-19 and the output by up to 2^-19 |x[i1] - x[i0]| (tens of ulps).
  float src = __fadd_rn(__fmul_rn(scale, static_cast<float>(o) + 0.5f), -0.5f);
#else
  float src = scale * (static_cast<float>(o) + 0.5f) - 0.5f;
#endif
  if (src < 0.0f) src = 0.0f;
  LerpTap t;
  t.i0 = static_cast<int>(src);
  if (t.i0 > in - 1) t.i0 = in - 1;
  t.i1 = t.i0 < in - 1 ? t.i0 + 1 : t.i0;
  t.frac = src - static_cast<float>(t.i0);
  return t;
}

// The bilinear value of plane x (W columns) at row tap th and column tap tw.
JEM_HD float bilinear_at(const float* x, int W, const LerpTap& th, const LerpTap& tw) {
  const float* r0 = x + std::int64_t(th.i0) * W;
  const float* r1 = x + std::int64_t(th.i1) * W;
  const float top = (1.0f - tw.frac) * r0[tw.i0] + tw.frac * r0[tw.i1];
  const float bottom = (1.0f - tw.frac) * r1[tw.i0] + tw.frac * r1[tw.i1];
  return (1.0f - th.frac) * top + th.frac * bottom;
}

}  // namespace jem::image_ops
