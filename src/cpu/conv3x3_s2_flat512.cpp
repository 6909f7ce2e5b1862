// The flat-layout AVX-512 stride-2 forward pass and data gradient of conv3x3_s2_flat512.hpp.
// Only the functions marked target("avx512f,...") use AVX-512; s2flat_applies checks the CPU.
#include "cpu/conv3x3_s2_flat512.hpp"

#include <algorithm>
#include <cstdint>

#include "cpu/flat_layout.hpp"
#include "jem/error.hpp"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define JEM_S2FLAT 1
#include <immintrin.h>
#else
#define JEM_S2FLAT 0
#endif

namespace jem::cpu {
namespace {

using flat::kV;
using flat::round_up;

constexpr int kKB = 4;               // output channels per register block
constexpr int kTV = 5;               // vectors of 16 positions per register block
constexpr int kBlock = kTV * kV;     // positions per register block; chunks are padded to it
constexpr std::int64_t kChunkFlat = 2048;
// A chunk's input (every input channel of the 4 planes, or every dy channel) at most 1 MiB: each
// block of 4 output channels reads all of it again, from L2.
constexpr std::int64_t kChunkBytes = std::int64_t{1} << 20;

int channel_blocks(int n) { return (n + kKB - 1) / kKB; }

// The data gradient's dy layout: blocks of (P + 1) x (Q + 1), dy[p, q] at (p + 1, q + 1) (row 0
// and column 0 zero), so that phase output (i, j), 0 <= i <= P, 0 <= j <= Q, reads tap (r, s) at
// offset (r == 2 ? 0 : Wb) + (s == 2 ? 0 : 1). Reads past row P or column Q land on the next
// block's zero row or the next row's zero column (or the zeros after the chunk): dy there is 0.
struct GradGeom {
  int Hb, Wb;
  std::int64_t L, Ld;  // output positions per channel (a multiple of kBlock); dy floats per channel
  GradGeom(const ConvGeom& g, int B)
      : Hb(g.P() + 1), Wb(g.Q() + 1), L(round_up(static_cast<std::int64_t>(B) * Hb * Wb, kBlock)),
        Ld(L + round_up(Wb + 1, kV)) {}
  std::int64_t image() const { return static_cast<std::int64_t>(Hb) * Wb; }
};

// Phase (a, b) of the data gradient: dx rows h with (h + 1) % 2 == a read kernel rows {0, 2}
// (a = 0) or {1} (a = 1); the same for columns. Taps in row-major order.
struct Phase {
  int a, b, nt;
  int r[4]{}, s[4]{};
  constexpr Phase(int a_, int b_) : a(a_), b(b_), nt(0) {
    for (int rr = a; rr < 3; rr += 2)
      for (int ss = b; ss < 3; ss += 2) {
        r[nt] = rr;
        s[nt] = ss;
        ++nt;
      }
  }
};
constexpr Phase kPhases[4] = {Phase(0, 0), Phase(0, 1), Phase(1, 0), Phase(1, 1)};  // 4, 2, 2, 1 taps

}  // namespace

int s2flat_chunk_images(const ConvGeom& g, int threads) {
  const std::int64_t image = static_cast<std::int64_t>(g.P() + 1) * (g.Q() + 1);
  const std::int64_t bytes_per_position = static_cast<std::int64_t>(std::max(4 * g.C, g.K)) * sizeof(float);
  const std::int64_t positions = std::min(kChunkFlat, kChunkBytes / bytes_per_position);
  const int per_thread = (g.N + std::max(1, threads) - 1) / std::max(1, threads);
  return std::max(1, std::min(static_cast<int>(positions / image), per_thread));
}

std::size_t s2flat_forward_packed_size(const ConvGeom& g) {
  return static_cast<std::size_t>(channel_blocks(g.K)) * g.C * 9 * kKB;
}

// wp[kb][c][t][j] = w[4 kb + j, c, t] (t = 3 r + s; 0 past K).
void s2flat_forward_pack(const ConvGeom& g, const float* w, float* wp) {
  for (int kb = 0; kb < channel_blocks(g.K); ++kb)
    for (int c = 0; c < g.C; ++c)
      for (int t = 0; t < 9; ++t)
        for (int j = 0; j < kKB; ++j) {
          const int k = kb * kKB + j;
          *wp++ = k < g.K ? w[(static_cast<std::int64_t>(k) * g.C + c) * 9 + t] : 0.0f;
        }
}

std::size_t s2flat_forward_scratch_size(const ConvGeom& g, int B) {
  const flat::InputGeom ig(g, B, kBlock);
  const std::int64_t kp = static_cast<std::int64_t>(channel_blocks(g.K)) * kKB;
  return static_cast<std::size_t>(ig.floats(g) + kp * ig.L + kp + kV);
}

std::size_t s2flat_data_grad_packed_size(const ConvGeom& g) {
  return static_cast<std::size_t>(channel_blocks(g.C)) * g.K * 9 * kKB;
}

// Per phase in kPhases order: wq[cb][k][t][j] = w[k, 4 cb + j, r_t, s_t] (0 past C).
void s2flat_data_grad_pack(const ConvGeom& g, const float* w, float* wq) {
  for (const Phase& ph : kPhases)
    for (int cb = 0; cb < channel_blocks(g.C); ++cb)
      for (int k = 0; k < g.K; ++k)
        for (int t = 0; t < ph.nt; ++t)
          for (int j = 0; j < kKB; ++j) {
            const int c = cb * kKB + j;
            *wq++ = c < g.C ? w[((static_cast<std::int64_t>(k) * g.C + c) * 3 + ph.r[t]) * 3 + ph.s[t]] : 0.0f;
          }
}

std::size_t s2flat_data_grad_scratch_size(const ConvGeom& g, int B) {
  const GradGeom gg(g, B);
  const std::int64_t cp = static_cast<std::int64_t>(channel_blocks(g.C)) * kKB;
  return static_cast<std::size_t>(g.K * gg.Ld + 2 * cp * gg.L + cp + kV);
}

#if JEM_S2FLAT

namespace {

// out[j][i0 + i] = bias[j] + sum_{c < C, t < NT} wk[c][t][j] * tap[t][i0 + c*cs + i], for j < 4 and
// the kBlock positions i from i0.
template <int NT>
[[gnu::target("avx512f,avx2,fma")]] void block(const float* const* tap, std::int64_t i0, std::int64_t cs,
                                               int C, const float* wk, const float* bias, float* out,
                                               std::int64_t ld) {
  __m512 acc[kKB][kTV];
#pragma GCC unroll 4
  for (int j = 0; j < kKB; ++j) {
    const __m512 bj = _mm512_set1_ps(bias[j]);
#pragma GCC unroll 5
    for (int v = 0; v < kTV; ++v) acc[j][v] = bj;
  }
  for (int c = 0; c < C; ++c) {
    const std::int64_t at = i0 + c * cs;
    const float* wc = wk + static_cast<std::int64_t>(c) * NT * kKB;
#pragma GCC unroll 9
    for (int t = 0; t < NT; ++t) {
      const float* xp = tap[t] + at;
      __m512 xv[kTV];
#pragma GCC unroll 5
      for (int v = 0; v < kTV; ++v) {
        xv[v] = _mm512_loadu_ps(xp + v * kV);
        // In a register, not folded into each of the 4 FMAs that use it (4 loads instead of 1).
        asm("" : "+v"(xv[v]));
      }
#pragma GCC unroll 4
      for (int j = 0; j < kKB; ++j) {
        __m512 wv = _mm512_set1_ps(wc[t * kKB + j]);
        asm("" : "+v"(wv));  // one broadcast, not an embedded broadcast in each of 6 FMAs
#pragma GCC unroll 5
        for (int v = 0; v < kTV; ++v) acc[j][v] = _mm512_fmadd_ps(wv, xv[v], acc[j][v]);
      }
    }
  }
#pragma GCC unroll 4
  for (int j = 0; j < kKB; ++j)
#pragma GCC unroll 5
    for (int v = 0; v < kTV; ++v) _mm512_storeu_ps(out + j * ld + i0 + v * kV, acc[j][v]);
}

// Every register block of a chunk: out[kb * 4 + j][i] for kb < KB, wk [KB][C][NT][4], bias [KB * 4].
// Blocks of positions outside, channel blocks inside: the input of one block of positions (every
// input channel, ~100 floats each) stays in L1 while all the output channels read it.
template <int NT>
void blocks(const float* const* tap, std::int64_t L, std::int64_t cs, int C, int KB, const float* wk,
            const float* bias, float* out) {
  for (std::int64_t i0 = 0; i0 < L; i0 += kBlock)
    for (int kb = 0; kb < KB; ++kb)
      block<NT>(tap, i0, cs, C, wk + static_cast<std::int64_t>(kb) * C * NT * kKB, bias + kb * kKB,
                out + kb * kKB * L, L);
}

}  // namespace

bool s2flat_applies(const ConvGeom& g) {
  return g.R == 3 && g.S == 3 && g.stride == 2 && g.pad_h == 1 && g.pad_w == 1 && flat::cpu_has_avx512f();
}

void s2flat_forward_chunk(const ConvGeom& g, const float* x, const float* wp, const float* b, const float* z,
                          int n0, int B, float* scratch, float* y) {
  const int nb = std::min(B, g.N - n0);
  if (nb <= 0) return;
  const int P = g.P(), Q = g.Q();
  const flat::InputGeom ig(g, nb, kBlock);
  float* xb = flat::align64(scratch);
  float* out = xb + ig.floats(g);  // [K rounded up to 4][L], then the bias
  flat::pack_input(g, ig, x, n0, nb, xb);
  const float* tap[9];
  for (int r = 0; r < 3; ++r)
    for (int s = 0; s < 3; ++s) tap[r * 3 + s] = ig.tap(g, xb, r, s);
  const int KB = channel_blocks(g.K);
  float* bias = out + static_cast<std::int64_t>(KB) * kKB * ig.L;  // [KB * 4]
  for (int k = 0; k < KB * kKB; ++k) bias[k] = b != nullptr && k < g.K ? b[k] : 0.0f;
  blocks<9>(tap, ig.L, ig.Lx, g.C, KB, wp, bias, out);
  // Back to [N, K, P, Q], adding the residual.
  for (int k = 0; k < g.K; ++k)
    for (int i = 0; i < nb; ++i) {
      const std::int64_t plane = (static_cast<std::int64_t>(n0 + i) * g.K + k) * P * Q;
      const float* src = out + k * ig.L + i * ig.image();
      float* dst = y + plane;
      const float* zp = z != nullptr ? z + plane : nullptr;
      for (int p = 0; p < P; ++p) {
        if (zp != nullptr) {
#pragma omp simd
          for (int q = 0; q < Q; ++q) dst[p * Q + q] = src[p * ig.Wb + q] + zp[p * Q + q];
        } else {
          flat::copy_row(src + p * ig.Wb, Q, dst + p * Q);
        }
      }
    }
}

void s2flat_data_grad_chunk(const ConvGeom& g, const float* dy, const float* wq, int n0, int B, float* scratch,
                            float* dx) {
  const int nb = std::min(B, g.N - n0);
  if (nb <= 0) return;
  const GradGeom gg(g, nb);
  float* dyb = flat::align64(scratch);
  const int CB = channel_blocks(g.C);
  const std::int64_t out_floats = static_cast<std::int64_t>(CB) * kKB * gg.L;
  float* out[2] = {dyb + g.K * gg.Ld, dyb + g.K * gg.Ld + out_floats};  // phases (a, 0) and (a, 1)
  float* zero = out[1] + out_floats;  // [CB * 4] zero biases
  std::fill_n(zero, CB * kKB, 0.0f);
  flat::pack_planes(dy, g.K, g.P(), g.Q(), n0, nb, gg.Hb, gg.Wb, 1, 1, gg.Ld, dyb);
  const float* wph = wq;
  for (int a = 0; a < 2; ++a) {
    // Both column phases of dx rows with (h + 1) % 2 == a, so that each dx row is written once,
    // left to right.
    for (int b = 0; b < 2; ++b) {
      const Phase& ph = kPhases[a * 2 + b];
      const float* tap[4];
      for (int t = 0; t < ph.nt; ++t) tap[t] = dyb + (ph.r[t] == 2 ? 0 : gg.Wb) + (ph.s[t] == 2 ? 0 : 1);
      switch (ph.nt) {
        case 4: blocks<4>(tap, gg.L, gg.Ld, g.K, CB, wph, zero, out[b]); break;
        case 2: blocks<2>(tap, gg.L, gg.Ld, g.K, CB, wph, zero, out[b]); break;
        default: blocks<1>(tap, gg.L, gg.Ld, g.K, CB, wph, zero, out[b]); break;
      }
      wph += static_cast<std::int64_t>(CB) * g.K * ph.nt * kKB;
    }
    // Phase (a, b)'s output (i, j) is dx pixel (2i + a - 1, 2j + b - 1): in row h = 2i + a - 1,
    // even columns w come from phase (a, 1) at j = w / 2, odd ones from (a, 0) at j = (w + 1) / 2.
    for (int c = 0; c < g.C; ++c)
      for (int n = 0; n < nb; ++n) {
        const std::int64_t at = c * gg.L + n * gg.image();
        float* dxc = dx + (static_cast<std::int64_t>(n0 + n) * g.C + c) * g.H * g.W;
        for (int i = 0; i <= g.P(); ++i) {
          const int h = 2 * i + a - 1;
          if (h < 0 || h >= g.H) continue;
          const float* odd = out[0] + at + i * gg.Wb + 1;  // odd[m]: column 2m + 1
          const float* even = out[1] + at + i * gg.Wb;     // even[m]: column 2m
          float* row = dxc + static_cast<std::int64_t>(h) * g.W;
          for (int m = 0; 2 * m + 1 < g.W; ++m) {
            row[2 * m] = even[m];
            row[2 * m + 1] = odd[m];
          }
          if (g.W % 2 == 1) row[g.W - 1] = even[g.W / 2];
        }
      }
  }
}

#else  // no x86-64 build: the other paths handle every convolution

bool s2flat_applies(const ConvGeom&) { return false; }
void s2flat_forward_chunk(const ConvGeom&, const float*, const float*, const float*, const float*, int, int,
                          float*, float*) {
  JEM_FAIL("s2flat_forward_chunk: not built for this architecture (s2flat_applies is false)");
}
void s2flat_data_grad_chunk(const ConvGeom&, const float*, const float*, int, int, float*, float*) {
  JEM_FAIL("s2flat_data_grad_chunk: not built for this architecture (s2flat_applies is false)");
}

#endif

}  // namespace jem::cpu
