// The "flat" layout of a chunk of images that the AVX-512 3x3 kernels share
// (conv3x3_wgrad512.hpp, conv3x3_s2_flat512.hpp, conv3x3_cvec512.hpp), and their helpers.
//
// Each image of a channel is stored in a block of Hb rows of Wb floats, the blocks of the chunk's
// images back to back, so that a 3x3 tap is one fixed offset from any output position, across
// rows and images alike: one vector loop runs over the whole chunk, with no partial vector at the
// end of each short row. The price is the zero (or ignored) columns and rows around each image.
// For the input of a 3x3, pad-1 convolution:
//   stride 1: one zero-padded plane, Hb = H + 2, Wb = W + 2; output (p, q) at p*Wb + q reads
//             tap (r, s) at offset r*Wb + s;
//   stride 2: four planes, the padded input split by row and column parity, Hb = P + 1,
//             Wb = Q + 1; tap (r, s) is in plane (r % 2, s % 2) at offset (r / 2)*Wb + s / 2.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "jem/backend.hpp"

namespace jem::cpu::flat {

constexpr int kV = 16;  // floats per AVX-512 register

inline std::int64_t round_up(std::int64_t n, std::int64_t m) { return (n + m - 1) / m * m; }

// The first float of p (or after it) on a 64-byte boundary, so that rows whose length is a
// multiple of kV floats start on cache lines. Scratch sizes include kV floats for it.
inline float* align64(float* p) {
  return p + (kV - reinterpret_cast<std::uintptr_t>(p) / sizeof(float) % kV) % kV;
}

// Whether this CPU runs AVX-512F (the kernels that use this layout need it).
inline bool cpu_has_avx512f() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  static const bool has = __builtin_cpu_supports("avx512f");
  return has;
#else
  return false;
#endif
}

// An image row (7 to 32 floats in the Wide-ResNets): a loop the compiler vectorises in place,
// where memcpy's call and size dispatch cost as much as the copy.
inline void copy_row(const float* src, int n, float* dst) {
#pragma omp simd
  for (int i = 0; i < n; ++i) dst[i] = src[i];
}

// The input planes of a chunk of B images of g: [planes][C][Lx]. g: 3x3, pad 1, stride 1 or 2
// (the callers check; any other stride would be laid out as stride 2).
struct InputGeom {
  int Hb = 0, Wb = 0;   // rows and row width of one image's block
  int planes = 1;       // 1 (stride 1) or 4 (stride 2)
  std::int64_t L = 0;   // output positions per channel: B * Hb * Wb rounded up to `multiple`
  std::int64_t Lx = 0;  // floats per (plane, channel): L plus the largest tap offset, in vectors
  InputGeom(const ConvGeom& g, int B, std::int64_t multiple) {
    if (g.stride == 1) {
      Hb = g.H + 2;
      Wb = g.W + 2;
      planes = 1;
    } else {
      Hb = g.P() + 1;
      Wb = g.Q() + 1;
      planes = 4;
    }
    L = round_up(static_cast<std::int64_t>(B) * Hb * Wb, multiple);
    const std::int64_t max_offset = g.stride == 1 ? 2 * Wb + 2 : Wb + 1;
    Lx = L + round_up(max_offset, kV);
  }
  std::int64_t image() const { return static_cast<std::int64_t>(Hb) * Wb; }
  std::int64_t floats(const ConvGeom& g) const { return static_cast<std::int64_t>(planes) * g.C * Lx; }
  // Where tap (r, s) of output position 0 reads channel 0 (add c * Lx for channel c).
  const float* tap(const ConvGeom& g, const float* xb, int r, int s) const {
    if (g.stride == 1) return xb + r * Wb + s;
    const int plane = (r % 2) * 2 + s % 2;
    return xb + static_cast<std::int64_t>(plane) * g.C * Lx + (r / 2) * Wb + s / 2;
  }
};

// Packs images [n0, n0 + B) of x [N, C, H, W] into xb (ig.floats(g) floats, zeros included).
inline void pack_input(const ConvGeom& g, const InputGeom& ig, const float* x, int n0, int B, float* xb) {
  std::fill_n(xb, static_cast<std::size_t>(ig.floats(g)), 0.0f);
  const std::int64_t plane_stride = static_cast<std::int64_t>(g.C) * ig.Lx;
  for (int c = 0; c < g.C; ++c)
    for (int b = 0; b < B; ++b) {
      const float* src = x + (static_cast<std::int64_t>(n0 + b) * g.C + c) * g.H * g.W;
      for (int h = 0; h < g.H; ++h) {
        const float* row = src + static_cast<std::int64_t>(h) * g.W;
        const std::int64_t block = c * ig.Lx + b * ig.image();
        if (g.stride == 1) {
          copy_row(row, g.W, xb + block + (h + 1) * ig.Wb + 1);  // padded pixel (h + 1, w + 1)
        } else {
          // Padded pixel (u, v) = (h + 1, w + 1) goes to plane (u % 2, v % 2) at (u / 2, v / 2):
          // even w to column w / 2 of plane (u % 2, 1), odd w to column (w + 1) / 2 of (u % 2, 0).
          const int u = h + 1;
          const std::int64_t at = block + (u / 2) * ig.Wb;
          float* odd_v = xb + ((u % 2) * 2 + 1) * plane_stride + at;
          float* even_v = xb + ((u % 2) * 2) * plane_stride + at;
          for (int w = 0; 2 * w < g.W; ++w) odd_v[w] = row[2 * w];
          for (int w = 0; 2 * w + 1 < g.W; ++w) even_v[w + 1] = row[2 * w + 1];
        }
      }
    }
}

// Packs images [n0, n0 + B) of t [N, ch, rows, cols] into dst [ch][ld]: image b's pixel (i, j)
// at b * Hb * Wb + (i + top) * Wb + (j + left). Everything else in [0, ld) is zero.
inline void pack_planes(const float* t, int ch, int rows, int cols, int n0, int B, int Hb, int Wb, int top,
                        int left, std::int64_t ld, float* dst) {
  std::fill_n(dst, static_cast<std::size_t>(ch * ld), 0.0f);
  const std::int64_t image = static_cast<std::int64_t>(Hb) * Wb;
  for (int k = 0; k < ch; ++k)
    for (int b = 0; b < B; ++b) {
      const float* src = t + (static_cast<std::int64_t>(n0 + b) * ch + k) * rows * cols;
      float* d = dst + k * ld + b * image + top * Wb + left;
      for (int i = 0; i < rows; ++i) copy_row(src + static_cast<std::int64_t>(i) * cols, cols, d + i * Wb);
    }
}

}  // namespace jem::cpu::flat
