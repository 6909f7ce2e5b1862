// The flat-layout AVX-512 weight gradient of conv3x3_wgrad512.hpp. Only the functions marked
// target("avx512f") use AVX-512; wgrad512_applies checks the CPU at run time.
#include "cpu/conv3x3_wgrad512.hpp"

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "cpu/flat_layout.hpp"
#include "jem/error.hpp"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define JEM_WGRAD512 1
#include <immintrin.h>
#else
#define JEM_WGRAD512 0
#endif

namespace jem::cpu {

#if JEM_WGRAD512
namespace {

using flat::kV;
using flat::round_up;

// Flat positions per chunk of images (rounded to whole images, at least one): the 3 dy channels
// and the input channel one pass reads (4 x 2048 floats = 32 KiB) fit in L1, and a pass is long
// enough that its 27 horizontal sums cost little. (Measured on WRN-10-1's layers at 72 images:
// 2048 beat 1024 and 4096 by 4-10%.)
constexpr std::int64_t kChunkFlat = 2048;
// ... and the whole chunk (dy and every input plane) at most 1 MiB, so that it stays in L2 while
// each block of output channels reads all of its input channels again (without this cap, the
// 64-channel 7x7 stride-2 layer of WRN-10-1 ran 30% slower).
constexpr std::int64_t kChunkBytes = std::int64_t{1} << 20;

// Floats of scratch for chunks of B images: dy [K][L], then the input [planes][C][Lx].
std::size_t chunk_floats(const ConvGeom& g, const flat::InputGeom& ig) {
  return static_cast<std::size_t>(static_cast<std::int64_t>(g.K) * ig.L + ig.floats(g));
}

int chunk_images(const ConvGeom& g, int images) {
  const flat::InputGeom one(g, 1, kV);
  const std::int64_t per_flat = static_cast<std::int64_t>(g.K + one.planes * g.C) * sizeof(float);
  const std::int64_t flat = std::min<std::int64_t>(kChunkFlat, kChunkBytes / per_flat);
  const auto per = static_cast<int>(std::max<std::int64_t>(1, flat / one.image()));
  return std::max(1, std::min(per, images));
}

// Copies images [n0, n0 + B) into the flat layout: dyb [K][L] (each image's pixel (p, q) at
// p*Wb + q of its block, zero elsewhere) and xb (the input planes), and adds each channel's dy
// sum to db (if not null).
void pack_chunk(const ConvGeom& g, const flat::InputGeom& ig, const float* x, const float* dy, int n0, int B,
                float* dyb, float* xb, float* db) {
  flat::pack_planes(dy, g.K, g.P(), g.Q(), n0, B, ig.Hb, ig.Wb, 0, 0, ig.L, dyb);
  if (db != nullptr)
    for (int k = 0; k < g.K; ++k) {
      // kV running sums over the packed row (its zeros add nothing): one add per 16 floats
      // instead of a serial chain of one add per pixel.
      const float* row = dyb + k * ig.L;
      float lanes[kV] = {};
      for (std::int64_t i = 0; i < ig.L; i += kV)
#pragma omp simd
        for (int l = 0; l < kV; ++l) lanes[l] += row[i + l];
      float s = 0.0f;
      for (int l = 0; l < kV; ++l) s += lanes[l];
      db[k] += s;
    }
  flat::pack_input(g, ig, x, n0, B, xb);
}

}  // namespace


namespace {

// The sum of a vector's 16 lanes. (GCC 12's _mm512_reduce_add_ps and unmasked 512-bit shuffles
// start from _mm512_undefined_ps, which -Wuninitialized flags inside GCC's own header; the
// maskz form with every lane selected starts from zero instead.)
[[gnu::target("avx512f,avx2,fma")]] inline float hsum16(__m512 v) {
  v = _mm512_add_ps(v, _mm512_maskz_shuffle_f32x4(0xFFFF, v, v, 0x4E));  // + the other 256 bits
  v = _mm512_add_ps(v, _mm512_maskz_shuffle_f32x4(0xFFFF, v, v, 0xB1));  // + the other 128 bits
  v = _mm512_add_ps(v, _mm512_maskz_permute_ps(0xFFFF, v, 0x4E));        // + the other 64 bits
  v = _mm512_add_ps(v, _mm512_maskz_permute_ps(0xFFFF, v, 0xB1));        // + the other float
  return _mm512_cvtss_f32(v);
}

// One pass: for KB output channels (dy rows dyk + j*ld) and one input channel (tap t reads
// xt[t] + i at flat position i), dwk[j*C*9 + t] += sum_{i < len} dy[j][i] * xt[t][i].
// KB x 9 accumulators + KB dy vectors + 1 input vector: 31 registers at KB = 3.
template <int KB>
[[gnu::target("avx512f,avx2,fma")]] void flat_pass(const float* dyk, std::int64_t ld, std::int64_t len, const float* const* xt,
                                          int C, float* dwk) {
  __m512 acc[KB][9];
#pragma GCC unroll 3
  for (int j = 0; j < KB; ++j)
#pragma GCC unroll 9
    for (int t = 0; t < 9; ++t) acc[j][t] = _mm512_setzero_ps();
  const float *x0 = xt[0], *x1 = xt[1], *x2 = xt[2], *x3 = xt[3], *x4 = xt[4], *x5 = xt[5], *x6 = xt[6],
              *x7 = xt[7], *x8 = xt[8];
  for (std::int64_t i = 0; i < len; i += kV) {
    __m512 d[KB];
#pragma GCC unroll 3
    for (int j = 0; j < KB; ++j) d[j] = _mm512_loadu_ps(dyk + j * ld + i);
    const float* xs[9] = {x0, x1, x2, x3, x4, x5, x6, x7, x8};
#pragma GCC unroll 9
    for (int t = 0; t < 9; ++t) {
      __m512 xv = _mm512_loadu_ps(xs[t] + i);
      // Keeps xv in a register: otherwise GCC folds the load into each of the KB FMAs, which
      // reads the (mostly cache-line-splitting) input vector KB times and makes the loop
      // load-bound (measured: 2x slower).
      asm("" : "+v"(xv));
#pragma GCC unroll 3
      for (int j = 0; j < KB; ++j) acc[j][t] = _mm512_fmadd_ps(d[j], xv, acc[j][t]);
    }
  }
#pragma GCC unroll 3
  for (int j = 0; j < KB; ++j)
#pragma GCC unroll 9
    for (int t = 0; t < 9; ++t) dwk[static_cast<std::int64_t>(j) * C * 9 + t] += hsum16(acc[j][t]);
}

// Every (output channel, input channel) pair of one packed chunk. Output channels go 3 at a time;
// a remainder of 1 becomes 2 + 2 (K = 16: 3, 3, 3, 3, 2, 2), since a pass of 1 channel does
// 10 loads per 9 FMAs.
// len: the flat positions of the images packed (the last chunk may hold fewer than B).
void chunk_passes(const ConvGeom& g, const flat::InputGeom& ig, std::int64_t len, const float* dyb,
                  const float* xb, float* dw) {
  for (int k0 = 0; k0 < g.K;) {
    const int left = g.K - k0;
    const int kb = left >= 5 || left == 3 ? 3 : std::min(left, 2);
    for (int c = 0; c < g.C; ++c) {
      const float* xt[9];
      for (int r = 0; r < 3; ++r)
        for (int s = 0; s < 3; ++s) xt[r * 3 + s] = ig.tap(g, xb, r, s) + c * ig.Lx;
      float* dwk = dw + (static_cast<std::int64_t>(k0) * g.C + c) * 9;
      const float* dyk = dyb + k0 * ig.L;
      if (kb == 3)
        flat_pass<3>(dyk, ig.L, len, xt, g.C, dwk);
      else if (kb == 2)
        flat_pass<2>(dyk, ig.L, len, xt, g.C, dwk);
      else
        flat_pass<1>(dyk, ig.L, len, xt, g.C, dwk);
    }
    k0 += kb;
  }
}

}  // namespace

bool wgrad512_applies(const ConvGeom& g) {
  return g.R == 3 && g.S == 3 && (g.stride == 1 || g.stride == 2) && g.pad_h == 1 && g.pad_w == 1 &&
         flat::cpu_has_avx512f();
}

std::size_t wgrad512_scratch_size(const ConvGeom& g, int images) {
  return chunk_floats(g, flat::InputGeom(g, chunk_images(g, std::max(1, images)), kV)) + kV;  // + kV: room to align
}

void wgrad512_images(const ConvGeom& g, const float* x, const float* dy, int n0, int n1, float* scratch,
                     float* dw, float* db) {
  if (n1 <= n0) return;
  const int B = chunk_images(g, n1 - n0);
  const flat::InputGeom ig(g, B, kV);
  // Every channel's row starts on a cache line (L and Lx are multiples of 16 floats), so the dy
  // loads never split one.
  float* dyb = flat::align64(scratch);
  float* xb = dyb + static_cast<std::int64_t>(g.K) * ig.L;
  for (int n = n0; n < n1; n += B) {
    const int b = std::min(B, n1 - n);
    pack_chunk(g, ig, x, dy, n, b, dyb, xb, db);
    chunk_passes(g, ig, round_up(b * ig.image(), kV), dyb, xb, dw);
  }
}

#else  // no x86-64 build: the im2col path handles every weight gradient

bool wgrad512_applies(const ConvGeom&) { return false; }
std::size_t wgrad512_scratch_size(const ConvGeom&, int) { return 0; }
void wgrad512_images(const ConvGeom&, const float*, const float*, int, int, float*, float*, float*) {
  JEM_FAIL("wgrad512_images: not built for this architecture (wgrad512_applies is false)");
}

#endif

}  // namespace jem::cpu
