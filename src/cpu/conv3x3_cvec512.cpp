// The channel-vectorised AVX-512 3x3 convolution of conv3x3_cvec512.hpp. Only the functions
// marked target("avx512f,...") use AVX-512; cvec_applies checks the CPU at run time.
#include "cpu/conv3x3_cvec512.hpp"

#include <algorithm>
#include <cstdint>

#include "cpu/flat_layout.hpp"
#include "jem/error.hpp"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define JEM_CVEC 1
#include <immintrin.h>
#else
#define JEM_CVEC 0
#endif

namespace jem::cpu {
namespace {

using flat::kV;

constexpr int kKG = 64;  // output channels per group: 4 vectors
constexpr int kPX = 6;   // output pixels per register block

int groups(int K) { return (K + kKG - 1) / kKG; }

}  // namespace

std::size_t cvec_packed_size(const ConvGeom& g) {
  return static_cast<std::size_t>(groups(g.K)) * 9 * g.C * kKG;
}

void cvec_pack(const ConvGeom& g, const float* w, float* wp) {
  for (int kg = 0; kg < groups(g.K); ++kg)
    for (int t = 0; t < 9; ++t)
      for (int c = 0; c < g.C; ++c)
        for (int j = 0; j < kKG; ++j) {
          const int k = kg * kKG + j;
          *wp++ = k < g.K ? w[(static_cast<std::int64_t>(k) * g.C + c) * 9 + t] : 0.0f;
        }
}

std::size_t cvec_scratch_size(const ConvGeom& g) {
  const flat::InputGeom ig(g, 1, kV);
  return static_cast<std::size_t>(ig.floats(g) + kV);
}

#if JEM_CVEC

namespace {

// One register block: KV vectors of 16 output channels (from k0) x kPX output pixels j0 ..
// j0 + n - 1 (n <= kPX; the block repeats the last pixel to fill up and drops it).
//   tap[t]: tap t's read position for output position 0, channel 0; cs: floats per channel
//   pos[i]: pixel i's output position in the flat layout; wk: [9][C][64] packed weights
template <int KV>
[[gnu::target("avx512f,avx2,fma")]] void block(const float* const* tap, std::int64_t cs, int C,
                                               const std::int64_t* pos, const float* wk, const float* bias,
                                               const float* z, float* y, int K, int k0, int PQ, int j0, int n) {
  __m512 acc[KV][kPX];
#pragma GCC unroll 4
  for (int v = 0; v < KV; ++v) {
    const __m512 b = _mm512_loadu_ps(bias + v * kV);
#pragma GCC unroll 6
    for (int i = 0; i < kPX; ++i) acc[v][i] = b;
  }
  for (int t = 0; t < 9; ++t) {
    const float* xp[kPX];
#pragma GCC unroll 6
    for (int i = 0; i < kPX; ++i) xp[i] = tap[t] + pos[i];
    const float* wt = wk + static_cast<std::int64_t>(t) * C * kKG;
    std::int64_t coff = 0;
    for (int c = 0; c < C; ++c, coff += cs) {
      __m512 wv[KV];
#pragma GCC unroll 4
      for (int v = 0; v < KV; ++v) wv[v] = _mm512_loadu_ps(wt + c * kKG + v * kV);
#pragma GCC unroll 6
      for (int i = 0; i < kPX; ++i) {
        __m512 xv = _mm512_set1_ps(xp[i][coff]);
        asm("" : "+v"(xv));  // one broadcast, not an embedded broadcast in each of KV FMAs
#pragma GCC unroll 4
        for (int v = 0; v < KV; ++v) acc[v][i] = _mm512_fmadd_ps(wv[v], xv, acc[v][i]);
      }
    }
  }
  // Channel l of a vector goes to plane k0 + 16 v + l: a stride of PQ floats.
  const __m512i idx = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                         _mm512_set1_epi32(PQ));
#pragma GCC unroll 4
  for (int v = 0; v < KV; ++v) {
    const int kv = k0 + v * kV;
    const int lanes = std::max(0, std::min(kV, K - kv));
    const __mmask16 m = static_cast<__mmask16>((1u << lanes) - 1u);
#pragma GCC unroll 6
    for (int i = 0; i < kPX; ++i) {
      if (i >= n) break;
      const std::int64_t at = static_cast<std::int64_t>(kv) * PQ + j0 + i;
      __m512 out = acc[v][i];
      if (z != nullptr) out = _mm512_add_ps(out, _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, idx, z + at, 4));
      _mm512_mask_i32scatter_ps(y + at, m, idx, out, 4);
    }
  }
}

}  // namespace

bool cvec_applies(const ConvGeom& g) {
  return g.R == 3 && g.S == 3 && (g.stride == 1 || g.stride == 2) && g.pad_h == 1 && g.pad_w == 1 &&
         flat::cpu_has_avx512f();
}

void cvec_image(const ConvGeom& g, const float* x, const float* wp, const float* b, const float* z,
                float* scratch, float* y) {
  const flat::InputGeom ig(g, 1, kV);
  float* xb = flat::align64(scratch);
  flat::pack_input(g, ig, x, 0, 1, xb);
  const float* tap[9];
  for (int r = 0; r < 3; ++r)
    for (int s = 0; s < 3; ++s) tap[r * 3 + s] = ig.tap(g, xb, r, s);
  const int P = g.P(), Q = g.Q(), PQ = P * Q;
  for (int kg = 0; kg < groups(g.K); ++kg) {
    const int k0 = kg * kKG;
    const int kv = std::min(4, (g.K - k0 + kV - 1) / kV);  // vectors in this group
    alignas(64) float bias[kKG] = {};
    if (b != nullptr)
      for (int j = 0; j < kKG && k0 + j < g.K; ++j) bias[j] = b[k0 + j];
    const float* wk = wp + static_cast<std::int64_t>(kg) * 9 * g.C * kKG;
    for (int j0 = 0; j0 < PQ; j0 += kPX) {
      const int n = std::min(kPX, PQ - j0);
      std::int64_t pos[kPX];
      for (int i = 0; i < kPX; ++i) {
        const int j = j0 + std::min(i, n - 1);
        pos[i] = static_cast<std::int64_t>(j / Q) * ig.Wb + j % Q;
      }
      switch (kv) {
        case 4: block<4>(tap, ig.Lx, g.C, pos, wk, bias, z, y, g.K, k0, PQ, j0, n); break;
        case 3: block<3>(tap, ig.Lx, g.C, pos, wk, bias, z, y, g.K, k0, PQ, j0, n); break;
        case 2: block<2>(tap, ig.Lx, g.C, pos, wk, bias, z, y, g.K, k0, PQ, j0, n); break;
        default: block<1>(tap, ig.Lx, g.C, pos, wk, bias, z, y, g.K, k0, PQ, j0, n); break;
      }
    }
  }
}

#else  // no x86-64 build: the other paths handle every convolution

bool cvec_applies(const ConvGeom&) { return false; }
void cvec_image(const ConvGeom&, const float*, const float*, const float*, const float*, float*, float*) {
  JEM_FAIL("cvec_image: not built for this architecture (cvec_applies is false)");
}

#endif

}  // namespace jem::cpu
