// The direct 3x3 convolution of conv3x3_direct.hpp. Only the functions marked
// target("avx2,fma") use AVX2, and those marked target("avx512f,...") AVX-512;
// direct3x3_applies and direct3x3_image check the CPU at run time, so the rest of the program
// still runs on any x86-64 (and on other architectures this file compiles to "never").
#include "cpu/conv3x3_direct.hpp"

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "cpu/parity_split.hpp"
#include "jem/error.hpp"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define JEM_DIRECT3X3 1
#include <immintrin.h>
#else
#define JEM_DIRECT3X3 0
#endif

namespace jem::cpu {
namespace {

constexpr int kKB = 4;  // output channels per register block
constexpr int kV = 8;   // floats per AVX register: one output vector is 8 adjacent pixels
// Output vectors per register block. 2 x 4 = 8 accumulators + 2 input vectors + 1 weight: with
// 3 vectors (12 accumulators) GCC runs out of the 16 AVX registers and spills on every tap.
constexpr int kTB = 2;

// The AVX-512 forward kernel: one output vector is 16 adjacent pixels; 4 vectors x 4 channels =
// 16 accumulators + 4 input vectors + 1 weight of the 32 registers. Used where an output row is
// wider than 8 pixels (narrower rows would leave half of each vector idle: the AVX2 kernel).
constexpr int kV16 = 16;
constexpr int kTB16 = 4;
// Padded rows are wide enough for whole vectors of either kernel.
constexpr int kPadV = kV16;

// Layout of the padded input of one image: [C][Hp][Wp]. Padded pixel (i, j) is input pixel
// (i - 1, j - 1); everything outside the image is zero.
//   stride 1: Hp = H + 2, Wp = 16*nq + 2, wide enough for the last (partial) output vector's
//             16 + 2 reads (8 + 2 for the AVX2 kernel).
//   stride 2: each padded row is stored split by column parity, [even columns | odd columns],
//             each half Wh = 16*nq + 1 wide, so that adjacent outputs read ADJACENT floats for
//             every tap: column 2q + s is even[q] (s = 0), odd[q] (s = 1), even[q + 1] (s = 2).
struct PaddedGeom {
  int Hp, Wp, nq, Wh;  // nq: 16-pixel vectors per output row; Wh: half-row width (stride 2)
  explicit PaddedGeom(const ConvGeom& g) : nq((g.Q() + kPadV - 1) / kPadV) {
    if (g.stride == 1) {
      Hp = g.H + 2;
      Wp = nq * kPadV + 2;
      Wh = 0;
    } else {
      Hp = std::max(g.H + 2, 2 * g.P() + 1);
      Wh = nq * kPadV + 1;
      Wp = 2 * Wh;
    }
  }
  std::int64_t channel() const { return static_cast<std::int64_t>(Hp) * Wp; }
};

// The stride-2 data gradient's layout: dy padded to [K][P + 1][Wq] (a zero row and >= 1 zero
// column past its end, for the taps at offset +1), and the packed weights of its four phases,
// phase (a, b) with (a + 1) x (b + 1) taps: [ceil(C/4)][K][taps][4], in the order 00 01 10 11.
struct S2PhaseGeom {
  int P, Q, Wq, CB;
  const ConvGeom& g;
  explicit S2PhaseGeom(const ConvGeom& geom)
      : P(geom.P()), Q(geom.Q()), Wq((geom.Q() + kV - 1) / kV * kV + 1), CB((geom.C + kKB - 1) / kKB), g(geom) {}
  std::int64_t dy_channel() const { return static_cast<std::int64_t>(P + 1) * Wq; }
  std::int64_t phase_size(int a, int b) const {
    return static_cast<std::int64_t>(CB) * g.K * (a + 1) * (b + 1) * kKB;
  }
  std::int64_t phase_offset(int a, int b) const {
    std::int64_t off = 0;
    for (int i = 0; i < 2 * a + b; ++i) off += phase_size(i / 2, i % 2);
    return off;
  }
};

// Tap row (or column) of the i-th tap of phase parity a: even outputs take tap 1 (offset 0),
// odd ones tap 2 (offset 0) and tap 0 (offset +1).
int s2_tap(int a, int i) { return a == 0 ? 1 : (i == 0 ? 2 : 0); }

}  // namespace

std::size_t direct3x3_s2_data_grad_packed_size(const ConvGeom& g) {
  const S2PhaseGeom s(g);
  return static_cast<std::size_t>(s.phase_offset(1, 1) + s.phase_size(1, 1));
}

void direct3x3_s2_data_grad_pack(const ConvGeom& g, const float* w, float* wp) {
  const S2PhaseGeom s(g);
  for (int a = 0; a < 2; ++a)
    for (int b = 0; b < 2; ++b) {
      float* out = wp + s.phase_offset(a, b);
      const int NR = a + 1, NS = b + 1;
      for (int cb = 0; cb < s.CB; ++cb)
        for (int k = 0; k < g.K; ++k)
          for (int i = 0; i < NR; ++i)
            for (int j = 0; j < NS; ++j)
              for (int lane = 0; lane < kKB; ++lane) {
                const int c = cb * kKB + lane;
                *out++ = c < g.C ? w[((static_cast<std::int64_t>(k) * g.C + c) * 3 + s2_tap(a, i)) * 3 + s2_tap(b, j)]
                                 : 0.0f;
              }
    }
}

std::size_t direct3x3_s2_data_grad_scratch_size(const ConvGeom& g) {
  const S2PhaseGeom s(g);
  return static_cast<std::size_t>(g.K) * static_cast<std::size_t>(s.dy_channel()) +
         static_cast<std::size_t>(g.C) * static_cast<std::size_t>((g.H + 1) / 2) * static_cast<std::size_t>((g.W + 1) / 2);
}

std::size_t direct3x3_packed_weight_size(const ConvGeom& g) {
  return static_cast<std::size_t>((g.K + kKB - 1) / kKB) * g.C * 9 * kKB;
}

void direct3x3_pack_weights(const ConvGeom& g, const float* w, float* wp) {
  const int KB = (g.K + kKB - 1) / kKB;
  for (int kb = 0; kb < KB; ++kb)
    for (int c = 0; c < g.C; ++c)
      for (int t = 0; t < 9; ++t)
        for (int j = 0; j < kKB; ++j) {
          const int k = kb * kKB + j;
          wp[((static_cast<std::int64_t>(kb) * g.C + c) * 9 + t) * kKB + j] =
              k < g.K ? w[(static_cast<std::int64_t>(k) * g.C + c) * 9 + t] : 0.0f;
        }
}

std::size_t direct3x3_scratch_size(const ConvGeom& g) {
  const PaddedGeom pg(g);
  return static_cast<std::size_t>(g.C) * static_cast<std::size_t>(pg.channel());
}

#if JEM_DIRECT3X3

namespace {

// One register block: 4 output channels x TB output vectors, over an NR x NS window of taps
// (3 x 3 for the convolutions; 1 or 2 each way for the phases of a stride-2 data gradient).
//   xoff[t]: offset in the padded image of output vector t's top-left tap
//   yoff[t]: offset of output vector t in one output channel; qn[t]: its valid pixels (1..8)
//   wk: [C][NR * NS][4] packed weights of this block of output channels
//   z: null, or a residual laid out as y, added as the sums are stored
template <int TB, int NR, int NS, bool kStride2>
[[gnu::target("avx2,fma"), gnu::always_inline]] inline void block(
    const float* xpad, std::int64_t xc_stride, int Wp, int Wh, int C, const float* wk, const float* bias,
    int kvalid, const float* z, float* y, std::int64_t yk_stride, const std::int64_t* xoff,
    const std::int64_t* yoff, const int* qn) {
  __m256 acc[TB][kKB];
#pragma GCC unroll 4
  for (int j = 0; j < kKB; ++j) {
    const __m256 b0 = _mm256_set1_ps(bias != nullptr && j < kvalid ? bias[j] : 0.0f);
#pragma GCC unroll 3
    for (int t = 0; t < TB; ++t) acc[t][j] = b0;
  }
  for (int c = 0; c < C; ++c) {
    const float* xc = xpad + c * xc_stride;
    const float* wc = wk + static_cast<std::int64_t>(c) * NR * NS * kKB;
#pragma GCC unroll 3
    for (int r = 0; r < NR; ++r) {
#pragma GCC unroll 3
      for (int s = 0; s < NS; ++s) {
        const float* wt = wc + (r * NS + s) * kKB;
        __m256 xv[TB];
        // Tap (r, s) of output vector t: s is a constant after unrolling, so is this choice.
        const std::int64_t tap = r * Wp + (kStride2 ? (s == 1 ? Wh : s == 2 ? 1 : 0) : s);
#pragma GCC unroll 3
        for (int t = 0; t < TB; ++t) xv[t] = _mm256_loadu_ps(xc + xoff[t] + tap);
#pragma GCC unroll 4
        for (int j = 0; j < kKB; ++j) {
          const __m256 wv = _mm256_broadcast_ss(wt + j);
#pragma GCC unroll 3
          for (int t = 0; t < TB; ++t) acc[t][j] = _mm256_fmadd_ps(wv, xv[t], acc[t][j]);
        }
      }
    }
  }
  alignas(32) static constexpr std::int32_t kMask[16] = {-1, -1, -1, -1, -1, -1, -1, -1,
                                                         0,  0,  0,  0,  0,  0,  0,  0};
  // A fixed trip count (fully unrolled) keeps acc in registers: indexing it with a run-time
  // bound would make GCC keep the whole array in memory and spill on every input channel.
#pragma GCC unroll 4
  for (int j = 0; j < kKB; ++j) {
    if (j >= kvalid) break;
    float* yk = y + j * yk_stride;
    const float* zk = z != nullptr ? z + j * yk_stride : nullptr;
#pragma GCC unroll 3
    for (int t = 0; t < TB; ++t) {
      if (qn[t] == kV) {
        if (zk != nullptr) acc[t][j] = _mm256_add_ps(acc[t][j], _mm256_loadu_ps(zk + yoff[t]));
        _mm256_storeu_ps(yk + yoff[t], acc[t][j]);
      } else {
        const __m256i m = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kMask + 8 - qn[t]));
        if (zk != nullptr) acc[t][j] = _mm256_add_ps(acc[t][j], _mm256_maskload_ps(zk + yoff[t], m));
        store_first(yk + yoff[t], acc[t][j], qn[t]);
      }
    }
  }
}

// Zero-padded copy of one image [C][Hp][Wp] (see PaddedGeom): one pass over C*Hp*Wp floats,
// against 9*K multiply-adds per input pixel in the convolution.
//   stride 1: each padded float written once (the zeros around the copied rows, not a fill of the
//             whole buffer first);
//   stride 2: each row zeroed, then split by column parity 16 floats at a time.
[[gnu::target("avx2,fma")]] void pad_image(const ConvGeom& g, const PaddedGeom& pg, const float* x, float* xpad) {
  const std::int64_t xc_stride = pg.channel();
  const std::size_t Wp = static_cast<std::size_t>(pg.Wp);
  for (int c = 0; c < g.C; ++c) {
    float* xc = xpad + c * xc_stride;
    std::fill_n(xc, Wp, 0.0f);  // padded row 0
    for (int h = 0; h < g.H; ++h) {
      const float* src = x + (static_cast<std::int64_t>(c) * g.H + h) * g.W;
      float* row = xc + static_cast<std::int64_t>(h + 1) * pg.Wp;
      if (g.stride == 1) {
        row[0] = 0.0f;
        std::memcpy(row + 1, src, sizeof(float) * static_cast<std::size_t>(g.W));
        std::fill(row + 1 + g.W, row + Wp, 0.0f);
      } else {
        std::fill_n(row, Wp, 0.0f);
        split_row_by_parity(src, g.W, row, pg.Wh);
      }
    }
    // The rows below the image (stride 2 may need one more than H + 2: PaddedGeom).
    std::fill(xc + static_cast<std::int64_t>(g.H + 1) * pg.Wp, xc + xc_stride, 0.0f);
  }
}

// Output vectors t0 .. t0 + tb - 1 of a row-major walk over P rows of nq vectors of V pixels:
// each one's offset in the padded input (row p starts at padded row p * row_step) and in one
// output channel, and its valid pixels (the last vector of a row may hold fewer than V).
inline void tile_group(int t0, int tb, int nq, int V, int row_step, int Wp, int Q, std::int64_t* xoff,
                       std::int64_t* yoff, int* qn) {
  for (int t = 0; t < tb; ++t) {
    const int p = (t0 + t) / nq, q = (t0 + t) % nq * V;
    xoff[t] = static_cast<std::int64_t>(p) * row_step * Wp + q;
    yoff[t] = static_cast<std::int64_t>(p) * Q + q;
    qn[t] = std::min(V, Q - q);
  }
}

// Every output vector of K channels [K][P][Q], 4 channels x kTB vectors at a time (the last
// block may hold fewer vectors): y = sum over C input channels and the NR x NS taps of
// wp[K / 4][C][NR * NS][4] * the padded input, + b, + z (each may be null; z [K][P][Q]). Output
// row p starts at padded row p * row_step.
template <int NR, int NS, bool kStride2>
[[gnu::target("avx2,fma")]] void conv_tiles(const float* xpad, std::int64_t xc_stride, int Wp, int Wh, int row_step,
                                            int C, const float* wp, const float* b, const float* z, int K, int P,
                                            int Q, float* y) {
  const int nq = (Q + kV - 1) / kV;
  const int tiles = P * nq;
  const std::int64_t yk_stride = static_cast<std::int64_t>(P) * Q;
  const int KB = (K + kKB - 1) / kKB;
  for (int t0 = 0; t0 < tiles; t0 += kTB) {
    const int tb = std::min(kTB, tiles - t0);
    std::int64_t xoff[kTB] = {}, yoff[kTB] = {};
    int qn[kTB] = {};
    tile_group(t0, tb, nq, kV, row_step, Wp, Q, xoff, yoff, qn);
    for (int kb = 0; kb < KB; ++kb) {
      const int k0 = kb * kKB;
      const int kvalid = std::min(kKB, K - k0);
      const float* wk = wp + static_cast<std::int64_t>(kb) * C * NR * NS * kKB;
      const float* bk = b != nullptr ? b + k0 : nullptr;
      float* yk = y + k0 * yk_stride;
      const float* zk = z != nullptr ? z + k0 * yk_stride : nullptr;
      if (tb == kTB)
        block<kTB, NR, NS, kStride2>(xpad, xc_stride, Wp, Wh, C, wk, bk, kvalid, zk, yk, yk_stride, xoff, yoff, qn);
      else
        block<1, NR, NS, kStride2>(xpad, xc_stride, Wp, Wh, C, wk, bk, kvalid, zk, yk, yk_stride, xoff, yoff, qn);
    }
  }
}

// block() with 16-pixel vectors, for the stride-1 forward kernel's 3x3 taps: acc[t][j] starts at
// the bias, takes every tap's products, and is stored (+ z) under the output vector's lane mask.
// (Stride 2 goes to the flat-layout kernels on AVX-512 CPUs: conv3x3_s2_flat512.hpp.)
template <int TB>
[[gnu::target("avx512f,avx2,fma"), gnu::always_inline]] inline void block16(
    const float* xpad, std::int64_t xc_stride, int Wp, int C, const float* wk, const float* bias,
    int kvalid, const float* z, float* y, std::int64_t yk_stride, const std::int64_t* xoff,
    const std::int64_t* yoff, const int* qn) {
  __m512 acc[TB][kKB];
#pragma GCC unroll 4
  for (int j = 0; j < kKB; ++j) {
    const __m512 b0 = _mm512_set1_ps(bias != nullptr && j < kvalid ? bias[j] : 0.0f);
#pragma GCC unroll 4
    for (int t = 0; t < TB; ++t) acc[t][j] = b0;
  }
  for (int c = 0; c < C; ++c) {
    const float* xc = xpad + c * xc_stride;
    const float* wc = wk + static_cast<std::int64_t>(c) * 9 * kKB;
#pragma GCC unroll 3
    for (int r = 0; r < 3; ++r) {
#pragma GCC unroll 3
      for (int s = 0; s < 3; ++s) {
        const float* wt = wc + (r * 3 + s) * kKB;
        const std::int64_t tap = r * Wp + s;
        __m512 xv[TB];
#pragma GCC unroll 4
        for (int t = 0; t < TB; ++t) xv[t] = _mm512_loadu_ps(xc + xoff[t] + tap);
#pragma GCC unroll 4
        for (int j = 0; j < kKB; ++j) {
          const __m512 wv = _mm512_set1_ps(wt[j]);
#pragma GCC unroll 4
          for (int t = 0; t < TB; ++t) acc[t][j] = _mm512_fmadd_ps(wv, xv[t], acc[t][j]);
        }
      }
    }
  }
#pragma GCC unroll 4
  for (int j = 0; j < kKB; ++j) {
    if (j >= kvalid) break;
    float* yk = y + j * yk_stride;
    const float* zk = z != nullptr ? z + j * yk_stride : nullptr;
#pragma GCC unroll 4
    for (int t = 0; t < TB; ++t) {
      const __mmask16 m = static_cast<__mmask16>(qn[t] >= kV16 ? 0xFFFFu : (1u << qn[t]) - 1u);
      if (zk != nullptr) acc[t][j] = _mm512_add_ps(acc[t][j], _mm512_maskz_loadu_ps(m, zk + yoff[t]));
      _mm512_mask_storeu_ps(yk + yoff[t], m, acc[t][j]);
    }
  }
}

// conv_tiles() with 16-pixel vectors (3x3 taps, the stride-1 forward pass).
[[gnu::target("avx512f,avx2,fma")]] void conv_tiles16(const float* xpad, std::int64_t xc_stride, int Wp, int C, const float* wp, const float* b,
                                                      const float* z, int K, int P, int Q, float* y) {
  const int nq = (Q + kV16 - 1) / kV16;
  const int tiles = P * nq;
  const std::int64_t yk_stride = static_cast<std::int64_t>(P) * Q;
  const int KB = (K + kKB - 1) / kKB;
  for (int t0 = 0; t0 < tiles; t0 += kTB16) {
    const int tb = std::min(kTB16, tiles - t0);
    std::int64_t xoff[kTB16] = {}, yoff[kTB16] = {};
    int qn[kTB16] = {};
    tile_group(t0, tb, nq, kV16, 1, Wp, Q, xoff, yoff, qn);
    for (int kb = 0; kb < KB; ++kb) {
      const int k0 = kb * kKB;
      const int kvalid = std::min(kKB, K - k0);
      const float* wk = wp + static_cast<std::int64_t>(kb) * C * 9 * kKB;
      const float* bk = b != nullptr ? b + k0 : nullptr;
      float* yk = y + k0 * yk_stride;
      const float* zk = z != nullptr ? z + k0 * yk_stride : nullptr;
      if (tb == kTB16) {
        block16<kTB16>(xpad, xc_stride, Wp, C, wk, bk, kvalid, zk, yk, yk_stride, xoff, yoff, qn);
      } else {  // the last 1 .. kTB16 - 1 vectors, one at a time
        for (int t = 0; t < tb; ++t)
          block16<1>(xpad, xc_stride, Wp, C, wk, bk, kvalid, zk, yk, yk_stride, xoff + t,
                               yoff + t, qn + t);
      }
    }
  }
}

[[gnu::target("avx512f,avx2,fma")]] void direct3x3_image_avx512(const ConvGeom& g, const float* x,
                                                                const float* wp, const float* b,
                                                                const float* z, float* xpad, float* y) {
  const PaddedGeom pg(g);
  pad_image(g, pg, x, xpad);
  conv_tiles16(xpad, pg.channel(), pg.Wp, g.C, wp, b, z, g.K, g.P(), g.Q(), y);
}

[[gnu::target("avx2,fma")]] void direct3x3_image_avx2(const ConvGeom& g, const float* x,
                                                      const float* wp, const float* b, const float* z,
                                                      float* xpad, float* y) {
  const PaddedGeom pg(g);
  pad_image(g, pg, x, xpad);
  if (g.stride == 2)
    conv_tiles<3, 3, true>(xpad, pg.channel(), pg.Wp, pg.Wh, 2, g.C, wp, b, z, g.K, g.P(), g.Q(), y);
  else
    conv_tiles<3, 3, false>(xpad, pg.channel(), pg.Wp, 0, 1, g.C, wp, b, z, g.K, g.P(), g.Q(), y);
}

// The data gradient of a stride-2 convolution, one image, by output phase: the pixels of dx
// with row parity a and column parity b receive dy through their own taps only,
//   even rows (a = 0): tap row 1 from dy row m;  odd rows (a = 1): tap row 2 from dy row m and
//   tap row 0 from dy row m + 1  (columns alike),
// so each phase is a small stride-1 correlation of dy (1x1, 1x2, 2x1 or 2x2 taps at offsets
// 0 and +1) with no multiplications by the zeros that a zero-inserted dy would hold.
[[gnu::target("avx2,fma")]] void s2_data_grad_avx2(const ConvGeom& g, const float* dy, const float* wp,
                                                   float* scratch, float* dx) {
  const S2PhaseGeom s(g);
  // dy padded with one zero row and >= 1 zero column past its end: [K][P + 1][Wq].
  float* dyp = scratch;
  std::fill_n(dyp, static_cast<std::size_t>(g.K) * static_cast<std::size_t>(s.dy_channel()), 0.0f);
  for (int k = 0; k < g.K; ++k)
    for (int p = 0; p < s.P; ++p)
      std::memcpy(dyp + k * s.dy_channel() + static_cast<std::int64_t>(p) * s.Wq,
                  dy + (static_cast<std::int64_t>(k) * s.P + p) * s.Q, sizeof(float) * static_cast<std::size_t>(s.Q));
  float* plane = dyp + static_cast<std::size_t>(g.K) * static_cast<std::size_t>(s.dy_channel());
  for (int a = 0; a < 2; ++a)
    for (int b = 0; b < 2; ++b) {
      const int M = a == 0 ? (g.H + 1) / 2 : g.H / 2, N = b == 0 ? (g.W + 1) / 2 : g.W / 2;
      if (M == 0 || N == 0) continue;
      const float* w = wp + s.phase_offset(a, b);
      // plane[C][M][N]: the phase's pixels, then spread into dx.
      if (a == 0 && b == 0) conv_tiles<1, 1, false>(dyp, s.dy_channel(), s.Wq, 0, 1, g.K, w, nullptr, nullptr, g.C, M, N, plane);
      if (a == 0 && b == 1) conv_tiles<1, 2, false>(dyp, s.dy_channel(), s.Wq, 0, 1, g.K, w, nullptr, nullptr, g.C, M, N, plane);
      if (a == 1 && b == 0) conv_tiles<2, 1, false>(dyp, s.dy_channel(), s.Wq, 0, 1, g.K, w, nullptr, nullptr, g.C, M, N, plane);
      if (a == 1 && b == 1) conv_tiles<2, 2, false>(dyp, s.dy_channel(), s.Wq, 0, 1, g.K, w, nullptr, nullptr, g.C, M, N, plane);
      for (int c = 0; c < g.C; ++c)
        for (int m = 0; m < M; ++m) {
          const float* src = plane + (static_cast<std::int64_t>(c) * M + m) * N;
          float* row = dx + (static_cast<std::int64_t>(c) * g.H + 2 * m + a) * g.W + b;
          for (int n = 0; n < N; ++n) row[2 * n] = src[n];
        }
    }
}

// acc[j][s] += dy_j (8 pixels) * x (the 8 pixels read by tap s), for j < 4 and s < 3: 12
// accumulators, 3 x vectors and one dy vector at a time fill the 16 AVX registers exactly. Tap
// s of the 8 outputs starting at xr: stride 1, xr + s; stride 2 (padded rows split by column
// parity, PaddedGeom), even[q] (s = 0), odd[q] (s = 1, wh floats on) and even[q + 1] (s = 2).
template <bool kMasked, bool kStride2>
[[gnu::target("avx2,fma"), gnu::always_inline]] inline void filter_taps(const float* const* dyk, std::int64_t at,
                                                                        const float* xr, int wh, __m256i mask,
                                                                        __m256 (&acc)[kKB][3]) {
  __m256 xv[3];
#pragma GCC unroll 3
  for (int s = 0; s < 3; ++s) xv[s] = _mm256_loadu_ps(xr + (kStride2 ? (s == 1 ? wh : s == 2 ? 1 : 0) : s));
#pragma GCC unroll 4
  for (int j = 0; j < kKB; ++j) {
    const __m256 d = kMasked ? _mm256_maskload_ps(dyk[j] + at, mask) : _mm256_loadu_ps(dyk[j] + at);
#pragma GCC unroll 3
    for (int s = 0; s < 3; ++s) acc[j][s] = _mm256_fmadd_ps(d, xv[s], acc[j][s]);
  }
}

// Floats of one (channel block, input channel, kernel row)'s lanes: 4 x 3 vectors of 8.
constexpr int kLaneBlock = kKB * 3 * kV;

template <bool kStride2>
[[gnu::target("avx2,fma")]] void direct3x3_filter_grad_avx2(const ConvGeom& g, const float* x,
                                                            const float* dy, float* xpad, float* lanes) {
  const PaddedGeom pg(g);
  const std::int64_t xc_stride = pg.channel();
  pad_image(g, pg, x, xpad);
  const int P = g.P(), Q = g.Q();
  const std::int64_t yk_stride = static_cast<std::int64_t>(P) * Q;
  const int full = Q / kV, tail = Q - full * kV;  // per row: full output vectors, then a partial one
  alignas(32) static constexpr std::int32_t kMask[16] = {-1, -1, -1, -1, -1, -1, -1, -1,
                                                         0,  0,  0,  0,  0,  0,  0,  0};
  const __m256i mask = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kMask + 8 - tail));
  for (int k0 = 0; k0 < g.K; k0 += kKB) {
    const int kvalid = std::min(kKB, g.K - k0);
    // Rows past K repeat channel k0: their sums are computed and never read (finish skips
    // them), which keeps the register block's trip counts fixed.
    const float* dyk[kKB];
    for (int j = 0; j < kKB; ++j) dyk[j] = dy + (k0 + (j < kvalid ? j : 0)) * yk_stride;
    for (int c = 0; c < g.C; ++c) {
      const float* xc = xpad + c * xc_stride;
      for (int r = 0; r < 3; ++r) {
        // The lanes carry the sums from image to image; one horizontal sum per weight at the end
        // (direct3x3_filter_grad_finish), not per image: on a 7x7 output an image gives each
        // accumulator only 7 FMAs.
        float* lr = lanes + ((static_cast<std::int64_t>(k0 / kKB) * g.C + c) * 3 + r) * kLaneBlock;
        __m256 acc[kKB][3];
#pragma GCC unroll 4
        for (int j = 0; j < kKB; ++j)
#pragma GCC unroll 3
          for (int s = 0; s < 3; ++s) acc[j][s] = _mm256_loadu_ps(lr + (j * 3 + s) * kV);
        for (int p = 0; p < P; ++p) {
          // Padded row stride*p + r; at stride 2 its halves are Wh floats wide.
          const float* xr = xc + static_cast<std::int64_t>(g.stride * p + r) * pg.Wp;
          const std::int64_t row = static_cast<std::int64_t>(p) * Q;
          for (int v = 0; v < full; ++v)
            filter_taps<false, kStride2>(dyk, row + v * kV, xr + v * kV, pg.Wh, mask, acc);
          // The partial vector: dy's lanes past Q load as 0, so x's lanes there (finite: the
          // padded copy is zero past the image) add nothing.
          if (tail > 0) filter_taps<true, kStride2>(dyk, row + full * kV, xr + full * kV, pg.Wh, mask, acc);
        }
#pragma GCC unroll 4
        for (int j = 0; j < kKB; ++j)
#pragma GCC unroll 3
          for (int s = 0; s < 3; ++s) _mm256_storeu_ps(lr + (j * 3 + s) * kV, acc[j][s]);
      }
    }
  }
}

[[gnu::target("avx2,fma")]] void direct3x3_filter_grad_finish_avx2(const ConvGeom& g, const float* lanes,
                                                                   float* dw) {
  for (int k = 0; k < g.K; ++k)
    for (int c = 0; c < g.C; ++c)
      for (int r = 0; r < 3; ++r) {
        const float* lr = lanes + ((static_cast<std::int64_t>(k / kKB) * g.C + c) * 3 + r) * kLaneBlock +
                          (k % kKB) * 3 * kV;
        float* d = dw + ((static_cast<std::int64_t>(k) * g.C + c) * 3 + r) * 3;
        for (int s = 0; s < 3; ++s) d[s] += hsum(_mm256_loadu_ps(lr + s * kV));
      }
}

bool cpu_has_avx2_fma() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
}

bool cpu_has_avx512f() {
  static const bool has = cpu_has_avx2_fma() && __builtin_cpu_supports("avx512f");
  return has;
}

}  // namespace

bool direct3x3_applies(const ConvGeom& g) {
  return g.R == 3 && g.S == 3 && (g.stride == 1 || g.stride == 2) && g.pad_h == 1 && g.pad_w == 1 &&
         cpu_has_avx2_fma();
}

void direct3x3_image(const ConvGeom& g, const float* x, const float* wp, const float* b,
                     const float* z, float* scratch, float* y, bool avx512) {
  // Stride-1 output rows wider than 8 pixels: 16-pixel vectors where the CPU has them. (On such
  // CPUs the CPU backend's best kernels send stride 2 to conv3x3_s2_flat512.hpp.)
  if (avx512 && g.stride == 1 && g.Q() > kV && cpu_has_avx512f())
    direct3x3_image_avx512(g, x, wp, b, z, scratch, y);
  else
    direct3x3_image_avx2(g, x, wp, b, z, scratch, y);
}

std::size_t direct3x3_filter_grad_lanes_size(const ConvGeom& g) {
  return static_cast<std::size_t>((g.K + kKB - 1) / kKB) * static_cast<std::size_t>(g.C) * 3 * kLaneBlock;
}

void direct3x3_filter_grad_image(const ConvGeom& g, const float* x, const float* dy, float* scratch,
                                 float* lanes) {
  // (An AVX-512 version with 16-pixel vectors was no faster: 5.6 against 5.0 ms on WRN-10-1's
  // 28x28 layer at 72 images, 1 thread.)
  if (g.stride == 2)
    direct3x3_filter_grad_avx2<true>(g, x, dy, scratch, lanes);
  else
    direct3x3_filter_grad_avx2<false>(g, x, dy, scratch, lanes);
}

void direct3x3_filter_grad_finish(const ConvGeom& g, const float* lanes, float* dw) {
  direct3x3_filter_grad_finish_avx2(g, lanes, dw);
}

void direct3x3_s2_data_grad_image(const ConvGeom& g, const float* dy, const float* wp, float* scratch, float* dx) {
  s2_data_grad_avx2(g, dy, wp, scratch, dx);
}

#else  // no AVX2 build: the im2col path handles every convolution

bool direct3x3_applies(const ConvGeom&) { return false; }
void direct3x3_image(const ConvGeom&, const float*, const float*, const float*, const float*, float*,
                     float*, bool) {
  JEM_FAIL("direct3x3_image: not built for this architecture (direct3x3_applies is false)");
}
std::size_t direct3x3_filter_grad_lanes_size(const ConvGeom&) { return 0; }
void direct3x3_filter_grad_image(const ConvGeom&, const float*, const float*, float*, float*) {
  JEM_FAIL("direct3x3_filter_grad_image: not built for this architecture (direct3x3_applies is false)");
}
void direct3x3_filter_grad_finish(const ConvGeom&, const float*, float*) {
  JEM_FAIL("direct3x3_filter_grad_finish: not built for this architecture (direct3x3_applies is false)");
}
void direct3x3_s2_data_grad_image(const ConvGeom&, const float*, const float*, float*, float*) {
  JEM_FAIL("direct3x3_s2_data_grad_image: not built for this architecture (direct3x3_applies is false)");
}

#endif

}  // namespace jem::cpu
