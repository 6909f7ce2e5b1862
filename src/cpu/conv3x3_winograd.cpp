// The Winograd F(2x2, 3x3) convolution of conv3x3_winograd.hpp. Only the functions marked
// target("avx2,fma") use AVX2; winograd_applies checks the CPU at run time.
#include "cpu/conv3x3_winograd.hpp"

#include <algorithm>
#include <cstdint>

#include "cpu/parity_split.hpp"
#include "jem/error.hpp"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define JEM_WINOGRAD 1
#include <immintrin.h>
#else
#define JEM_WINOGRAD 0
#endif

namespace jem::cpu {
namespace {

constexpr int kV = 8;   // tiles per vector
constexpr int kKB = 4;  // output channels per GEMM register block
// Tiles per block of tile rows (at least): V and M of a block are 16 x C and 16 x K planes of
// this many floats, 128-512 KB for the Wide-ResNets' channel counts.
constexpr int kBlockTiles = 64;
// The weight gradient's blocks: at least kBlockTiles, more where the channels are few. Each block
// ends in one horizontal sum per (transform position, output channel, input channel), so short
// blocks cost most there. Measured at 1 thread, batch 64, Zen 4, blocks of 64 / 128 / 256 tiles:
// 16->16 28x28 4.25 / 3.56 / 3.69 ms, 16->32 28x28 8.0 / 6.6 / 6.7, 32->32 32x32 14.1 / 12.2 /
// 11.3, 32->64 14x14 6.8 / 6.5 / 7.4, 64->64 16x16 12.5 / 13.4 / 14.9.
int filter_grad_block_tiles(const ConvGeom& g) { return std::max(kBlockTiles, 8192 / (g.C + g.K)); }
// Floats between two of the 16 planes beyond their size: planes a power of two apart would map
// the 16 stores of one transform to a few L1 sets.
constexpr int kPlanePad = 24;

// Per-image geometry. Tiles: Ty rows of Txp (Tx rounded up to whole vectors); the padded input:
// Hp rows of two halves of Wh floats (even padded columns, then odd ones), padded pixel (i, j)
// being input pixel (i - 1, j - 1). Tile (ty, tx) reads padded rows 2ty .. 2ty + 3 and columns
// 2tx .. 2tx + 3: even[tx], odd[tx], even[tx + 1], odd[tx + 1].
struct WinoGeom {
  int Ty, Tx, Txp, Hp, Wh, Wp, rows_per_block, block_tiles;
  explicit WinoGeom(const ConvGeom& g, int max_block_tiles = kBlockTiles)
      : Ty((g.H + 1) / 2),
        Tx((g.W + 1) / 2),
        Txp((Tx + kV - 1) / kV * kV),
        Hp(2 * Ty + 2),
        Wh(Txp + 1),
        Wp(2 * Wh),
        rows_per_block(std::max(1, max_block_tiles / Txp)),
        block_tiles(rows_per_block * Txp) {}
  std::int64_t plane() const { return static_cast<std::int64_t>(Hp) * Wp; }
  // Floats per transform plane (xi) of one block: V [C][block_tiles], M [K rounded up to 4][...].
  std::int64_t v_plane(const ConvGeom& g) const { return static_cast<std::int64_t>(g.C) * block_tiles + kPlanePad; }
  std::int64_t m_plane(const ConvGeom& g) const {
    return static_cast<std::int64_t>((g.K + kKB - 1) / kKB * kKB) * block_tiles + kPlanePad;
  }
};

}  // namespace

std::size_t winograd_packed_size(const ConvGeom& g) {
  return static_cast<std::size_t>(16) * static_cast<std::size_t>((g.K + kKB - 1) / kKB) * g.C * kKB;
}

// U = G w G^T with G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1].
void winograd_pack(const ConvGeom& g, const float* w, float* U) {
  const int KB = (g.K + kKB - 1) / kKB;
  for (int k = 0; k < KB * kKB; ++k)
    for (int c = 0; c < g.C; ++c) {
      float u[4][4] = {};
      if (k < g.K) {
        const float* f = w + (static_cast<std::int64_t>(k) * g.C + c) * 9;  // [3][3]
        float t[4][3];                                                       // G f
        for (int s = 0; s < 3; ++s) {
          t[0][s] = f[s];
          t[1][s] = 0.5f * (f[s] + f[3 + s] + f[6 + s]);
          t[2][s] = 0.5f * (f[s] - f[3 + s] + f[6 + s]);
          t[3][s] = f[6 + s];
        }
        for (int i = 0; i < 4; ++i) {  // (G f) G^T
          u[i][0] = t[i][0];
          u[i][1] = 0.5f * (t[i][0] + t[i][1] + t[i][2]);
          u[i][2] = 0.5f * (t[i][0] - t[i][1] + t[i][2]);
          u[i][3] = t[i][2];
        }
      }
      for (int xi = 0; xi < 16; ++xi)
        U[((static_cast<std::int64_t>(xi) * KB + k / kKB) * g.C + c) * kKB + k % kKB] = u[xi / 4][xi % 4];
    }
}

std::size_t winograd_scratch_size(const ConvGeom& g) {
  const WinoGeom wg(g);
  return static_cast<std::size_t>(g.C * wg.plane() + 16 * (wg.v_plane(g) + wg.m_plane(g)));
}

// The weight gradient: per image the input tiles' transforms V (as the forward pass), dy split
// by column parity ([K][2 Ty][2 Wh]: dy column 2tx in the second half at tx, 2tx + 1 in the first
// at tx + 1, rows and columns past the image zero), and its tiles' transforms DY.
std::size_t winograd_filter_grad_scratch_size(const ConvGeom& g) {
  const WinoGeom wg(g, filter_grad_block_tiles(g));
  return static_cast<std::size_t>(g.C * wg.plane() + 16 * wg.v_plane(g) +
                                  static_cast<std::int64_t>(g.K) * 2 * wg.Ty * wg.Wp + 16 * wg.m_plane(g));
}

std::size_t winograd_filter_grad_acc_size(const ConvGeom& g) { return static_cast<std::size_t>(16) * g.K * g.C; }

// dw[k][c] += G^T acc[.][k][c] G (acc: 16 transform positions of each (k, c)).
void winograd_filter_grad_finish(const ConvGeom& g, const float* acc, float* dw) {
  static constexpr float kG[4][3] = {{1, 0, 0}, {0.5f, 0.5f, 0.5f}, {0.5f, -0.5f, 0.5f}, {0, 0, 1}};
  const std::int64_t KC = static_cast<std::int64_t>(g.K) * g.C;
  for (std::int64_t kc = 0; kc < KC; ++kc) {
    float m[4][4];
    for (int xi = 0; xi < 16; ++xi) m[xi / 4][xi % 4] = acc[xi * KC + kc];
    float t[3][4];  // G^T m
    for (int r = 0; r < 3; ++r)
      for (int j = 0; j < 4; ++j) t[r][j] = kG[0][r] * m[0][j] + kG[1][r] * m[1][j] + kG[2][r] * m[2][j] + kG[3][r] * m[3][j];
    for (int r = 0; r < 3; ++r)
      for (int s2 = 0; s2 < 3; ++s2)
        dw[kc * 9 + r * 3 + s2] += t[r][0] * kG[0][s2] + t[r][1] * kG[1][s2] + t[r][2] * kG[2][s2] + t[r][3] * kG[3][s2];
  }
}

#if JEM_WINOGRAD

namespace {

// The zero-padded input, rows split by column parity (parity_split.hpp).
[[gnu::target("avx2,fma")]] void pad_split(const ConvGeom& g, const WinoGeom& wg, const float* x, float* xp) {
  std::fill_n(xp, static_cast<std::size_t>(g.C * wg.plane()), 0.0f);
  for (int c = 0; c < g.C; ++c)
    for (int h = 0; h < g.H; ++h) {
      const float* src = x + (static_cast<std::int64_t>(c) * g.H + h) * g.W;
      float* row = xp + c * wg.plane() + static_cast<std::int64_t>(h + 1) * wg.Wp;
      split_row_by_parity(src, g.W, row, wg.Wh);
    }
}

// V[xi][c][t] = (B^T d B)[xi] for the tiles of tile rows [ty0, ty0 + rows), t counted from the
// block's first tile; B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1].
[[gnu::target("avx2,fma")]] void input_transform(const ConvGeom& g, const WinoGeom& wg, const float* xp, int ty0,
                                                 int rows, float* V) {
  const std::int64_t vs = wg.v_plane(g);
  for (int c = 0; c < g.C; ++c) {
    const float* xc = xp + c * wg.plane();
    for (int ty = ty0; ty < ty0 + rows; ++ty)
      for (int tx = 0; tx < wg.Txp; tx += kV) {
        __m256 d[4][4];  // d[i][j]: element (i, j) of 8 adjacent tiles
#pragma GCC unroll 4
        for (int i = 0; i < 4; ++i) {
          const float* r = xc + static_cast<std::int64_t>(2 * ty + i) * wg.Wp + tx;
          d[i][0] = _mm256_loadu_ps(r);
          d[i][1] = _mm256_loadu_ps(r + wg.Wh);
          d[i][2] = _mm256_loadu_ps(r + 1);
          d[i][3] = _mm256_loadu_ps(r + wg.Wh + 1);
        }
        __m256 e[4][4];  // B^T d
#pragma GCC unroll 4
        for (int j = 0; j < 4; ++j) {
          e[0][j] = _mm256_sub_ps(d[0][j], d[2][j]);
          e[1][j] = _mm256_add_ps(d[1][j], d[2][j]);
          e[2][j] = _mm256_sub_ps(d[2][j], d[1][j]);
          e[3][j] = _mm256_sub_ps(d[1][j], d[3][j]);
        }
        float* out = V + static_cast<std::int64_t>(c) * wg.block_tiles + static_cast<std::int64_t>(ty - ty0) * wg.Txp + tx;
#pragma GCC unroll 4
        for (int i = 0; i < 4; ++i) {  // (B^T d) B
          _mm256_storeu_ps(out + (i * 4 + 0) * vs, _mm256_sub_ps(e[i][0], e[i][2]));
          _mm256_storeu_ps(out + (i * 4 + 1) * vs, _mm256_add_ps(e[i][1], e[i][2]));
          _mm256_storeu_ps(out + (i * 4 + 2) * vs, _mm256_sub_ps(e[i][2], e[i][1]));
          _mm256_storeu_ps(out + (i * 4 + 3) * vs, _mm256_sub_ps(e[i][1], e[i][3]));
        }
      }
  }
}

// m[j][t] = sum_c u[c][j] v[c][t] for 4 output channels j and TB vectors of tiles: 4 x TB
// accumulators, TB loads and 4 broadcasts per 4 TB FMAs. TB = 3 (12 accumulators, 3 + 1
// registers for the operands: all 16) was 2-6% faster than the direct kernel's 4 x 2 on the
// Wide-ResNets' layers (Zen 4, 1 thread); TB = 2 and 1 take the block's last 16 or 8 tiles.
template <int TB>
[[gnu::target("avx2,fma"), gnu::always_inline]] inline void gemm_block(const float* v, std::int64_t vc, const float* u,
                                                                       int C, float* m, std::int64_t mk) {
  __m256 acc[TB][kKB];
#pragma GCC unroll 3
  for (int t = 0; t < TB; ++t)
#pragma GCC unroll 4
    for (int j = 0; j < kKB; ++j) acc[t][j] = _mm256_setzero_ps();
  for (int c = 0; c < C; ++c) {
    __m256 xv[TB];
#pragma GCC unroll 3
    for (int t = 0; t < TB; ++t) xv[t] = _mm256_loadu_ps(v + c * vc + t * kV);
#pragma GCC unroll 4
    for (int j = 0; j < kKB; ++j) {
      const __m256 w = _mm256_broadcast_ss(u + c * kKB + j);
#pragma GCC unroll 3
      for (int t = 0; t < TB; ++t) acc[t][j] = _mm256_fmadd_ps(w, xv[t], acc[t][j]);
    }
  }
#pragma GCC unroll 4
  for (int j = 0; j < kKB; ++j)
#pragma GCC unroll 3
    for (int t = 0; t < TB; ++t) _mm256_storeu_ps(m + j * mk + t * kV, acc[t][j]);
}

// M[xi][k][t] = sum_c U[xi][k][c] V[xi][c][t] over the block's tiles (tiles: a multiple of 8).
[[gnu::target("avx2,fma")]] void gemm(const ConvGeom& g, const WinoGeom& wg, const float* V, int tiles, const float* U,
                                      float* M) {
  const int KB = (g.K + kKB - 1) / kKB;
  const std::int64_t T = wg.block_tiles;
  for (int xi = 0; xi < 16; ++xi) {
    const float* v = V + xi * wg.v_plane(g);
    float* m = M + xi * wg.m_plane(g);
    const float* u = U + static_cast<std::int64_t>(xi) * KB * g.C * kKB;
    int t = 0;
    for (; t + 3 * kV <= tiles; t += 3 * kV)
      for (int kb = 0; kb < KB; ++kb)
        gemm_block<3>(v + t, T, u + static_cast<std::int64_t>(kb) * g.C * kKB, g.C, m + kb * kKB * T + t, T);
    for (; t + 2 * kV <= tiles; t += 2 * kV)
      for (int kb = 0; kb < KB; ++kb)
        gemm_block<2>(v + t, T, u + static_cast<std::int64_t>(kb) * g.C * kKB, g.C, m + kb * kKB * T + t, T);
    for (; t < tiles; t += kV)
      for (int kb = 0; kb < KB; ++kb)
        gemm_block<1>(v + t, T, u + static_cast<std::int64_t>(kb) * g.C * kKB, g.C, m + kb * kKB * T + t, T);
  }
}

// y[k][2ty + a][2tx + b] = (A^T m A)[a][b] + b[k] + z (A^T = [1 1 1 0; 0 1 -1 -1]) for the tile
// rows [ty0, ty0 + rows); the last row and column of an odd-sized output are dropped.
[[gnu::target("avx2,fma")]] void output_transform(const ConvGeom& g, const WinoGeom& wg, const float* M, int ty0,
                                                  int rows, const float* b, const float* z, float* y) {
  const std::int64_t ms = wg.m_plane(g);
  const std::int64_t HW = static_cast<std::int64_t>(g.H) * g.W;
  alignas(32) static constexpr std::int32_t kMask[16] = {-1, -1, -1, -1, -1, -1, -1, -1,
                                                         0,  0,  0,  0,  0,  0,  0,  0};
  for (int k = 0; k < g.K; ++k) {
    const __m256 bias = _mm256_set1_ps(b != nullptr ? b[k] : 0.0f);
    for (int ty = ty0; ty < ty0 + rows; ++ty)
      for (int tx = 0; tx < wg.Txp; tx += kV) {
        const int n = std::min(2 * kV, g.W - 2 * tx);  // output columns of these 8 tiles
        if (n <= 0) break;
        const float* mp = M + static_cast<std::int64_t>(k) * wg.block_tiles + static_cast<std::int64_t>(ty - ty0) * wg.Txp + tx;
        __m256 s[2][4];  // A^T m
#pragma GCC unroll 4
        for (int j = 0; j < 4; ++j) {
          const __m256 m0 = _mm256_loadu_ps(mp + (0 + j) * ms), m1 = _mm256_loadu_ps(mp + (4 + j) * ms);
          const __m256 m2 = _mm256_loadu_ps(mp + (8 + j) * ms), m3 = _mm256_loadu_ps(mp + (12 + j) * ms);
          s[0][j] = _mm256_add_ps(_mm256_add_ps(m0, m1), m2);
          s[1][j] = _mm256_sub_ps(_mm256_sub_ps(m1, m2), m3);
        }
        const __m256i mask0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kMask + kV - std::min(kV, n)));
        const __m256i mask1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kMask + kV - std::max(0, n - kV)));
#pragma GCC unroll 2
        for (int a = 0; a < 2; ++a) {
          const int row = 2 * ty + a;
          if (row >= g.H) break;
          // (A^T m) A: columns 2tx and 2tx + 1 of the 8 tiles, then interleaved into 16 pixels.
          const __m256 y0 = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(s[a][0], s[a][1]), s[a][2]), bias);
          const __m256 y1 = _mm256_add_ps(_mm256_sub_ps(_mm256_sub_ps(s[a][1], s[a][2]), s[a][3]), bias);
          const __m256 lo = _mm256_unpacklo_ps(y0, y1), hi = _mm256_unpackhi_ps(y0, y1);
          __m256 out0 = _mm256_permute2f128_ps(lo, hi, 0x20), out1 = _mm256_permute2f128_ps(lo, hi, 0x31);
          const std::int64_t at = k * HW + static_cast<std::int64_t>(row) * g.W + 2 * tx;
          // Masked loads, and store_first, only where a vector is partial (parity_split.hpp:
          // AMD's VMASKMOVPS store is microcoded; the output transform took 10.6% of the
          // quickstart's iteration with it everywhere).
          if (z != nullptr) {
            out0 = _mm256_add_ps(out0, n >= kV ? _mm256_loadu_ps(z + at) : _mm256_maskload_ps(z + at, mask0));
            if (n > kV)
              out1 = _mm256_add_ps(out1, n >= 2 * kV ? _mm256_loadu_ps(z + at + kV) : _mm256_maskload_ps(z + at + kV, mask1));
          }
          if (n >= kV) _mm256_storeu_ps(y + at, out0);
          else store_first(y + at, out0, n);
          if (n >= 2 * kV) _mm256_storeu_ps(y + at + kV, out1);
          else if (n > kV) store_first(y + at + kV, out1, n - kV);
        }
      }
  }
}

// DY[xi][k][t] = (A dy A^T)[xi] of the 2x2 dy tiles of tile rows [ty0, ty0 + rows), from the
// parity-split dy (A = [1 0; 1 1; 1 -1; 0 -1]: the adjoint of the forward's output transform).
[[gnu::target("avx2,fma")]] void dy_transform(const ConvGeom& g, const WinoGeom& wg, const float* dys, int ty0,
                                              int rows, float* DY) {
  const std::int64_t ms = wg.m_plane(g);
  const std::int64_t plane = static_cast<std::int64_t>(2) * wg.Ty * wg.Wp;
  for (int k = 0; k < g.K; ++k)
    for (int ty = ty0; ty < ty0 + rows; ++ty)
      for (int tx = 0; tx < wg.Txp; tx += kV) {
        __m256 t[2][4];  // dy A^T, per tile row a
#pragma GCC unroll 2
        for (int a = 0; a < 2; ++a) {
          const float* r = dys + k * plane + static_cast<std::int64_t>(2 * ty + a) * wg.Wp;
          const __m256 e = _mm256_loadu_ps(r + wg.Wh + tx), o = _mm256_loadu_ps(r + tx + 1);
          t[a][0] = e;
          t[a][1] = _mm256_add_ps(e, o);
          t[a][2] = _mm256_sub_ps(e, o);
          t[a][3] = _mm256_sub_ps(_mm256_setzero_ps(), o);
        }
        float* out = DY + static_cast<std::int64_t>(k) * wg.block_tiles + static_cast<std::int64_t>(ty - ty0) * wg.Txp + tx;
#pragma GCC unroll 4
        for (int j = 0; j < 4; ++j) {  // A (dy A^T)
          _mm256_storeu_ps(out + (0 + j) * ms, t[0][j]);
          _mm256_storeu_ps(out + (4 + j) * ms, _mm256_add_ps(t[0][j], t[1][j]));
          _mm256_storeu_ps(out + (8 + j) * ms, _mm256_sub_ps(t[0][j], t[1][j]));
          _mm256_storeu_ps(out + (12 + j) * ms, _mm256_sub_ps(_mm256_setzero_ps(), t[1][j]));
        }
      }
}

// acc[xi][k][c] += sum_t DY[xi][k][t] V[xi][c][t] over `tiles` tiles (a multiple of 8): blocks of
// 4 output x 3 input channels, 12 accumulators of 8 tiles each, one horizontal sum per block.
// Channels past K or C repeat the last one; their sums are dropped.
[[gnu::target("avx2,fma")]] void filter_grad_gemm(const ConvGeom& g, const WinoGeom& wg, const float* DY,
                                                  const float* V, int tiles, float* acc) {
  const std::int64_t T = wg.block_tiles;
  const std::int64_t KC = static_cast<std::int64_t>(g.K) * g.C;
  for (int xi = 0; xi < 16; ++xi) {
    const float* dyx = DY + xi * wg.m_plane(g);
    const float* vx = V + xi * wg.v_plane(g);
    for (int k0 = 0; k0 < g.K; k0 += 4)
      for (int c0 = 0; c0 < g.C; c0 += 3) {
        const float* dk[4];
        const float* vc[3];
        for (int j = 0; j < 4; ++j) dk[j] = dyx + std::min(k0 + j, g.K - 1) * T;
        for (int i = 0; i < 3; ++i) vc[i] = vx + std::min(c0 + i, g.C - 1) * T;
        __m256 s[4][3];
#pragma GCC unroll 4
        for (int j = 0; j < 4; ++j)
#pragma GCC unroll 3
          for (int i = 0; i < 3; ++i) s[j][i] = _mm256_setzero_ps();
        for (int t = 0; t < tiles; t += kV) {
          __m256 v[3];
#pragma GCC unroll 3
          for (int i = 0; i < 3; ++i) v[i] = _mm256_loadu_ps(vc[i] + t);
#pragma GCC unroll 4
          for (int j = 0; j < 4; ++j) {
            const __m256 d = _mm256_loadu_ps(dk[j] + t);
#pragma GCC unroll 3
            for (int i = 0; i < 3; ++i) s[j][i] = _mm256_fmadd_ps(d, v[i], s[j][i]);
          }
        }
#pragma GCC unroll 4
        for (int j = 0; j < 4; ++j)
#pragma GCC unroll 3
          for (int i = 0; i < 3; ++i) {
            if (k0 + j >= g.K || c0 + i >= g.C) continue;
            acc[xi * KC + static_cast<std::int64_t>(k0 + j) * g.C + c0 + i] += hsum(s[j][i]);
          }
      }
  }
}

bool cpu_has_avx2_fma() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
}

}  // namespace

bool winograd_applies(const ConvGeom& g) {
  return g.R == 3 && g.S == 3 && g.stride == 1 && g.pad_h == 1 && g.pad_w == 1 && cpu_has_avx2_fma();
}

void winograd_image(const ConvGeom& g, const float* x, const float* U, const float* b, const float* z,
                    float* scratch, float* y) {
  const WinoGeom wg(g);
  float* xp = scratch;
  float* V = xp + g.C * wg.plane();
  float* M = V + 16 * wg.v_plane(g);
  pad_split(g, wg, x, xp);
  for (int ty0 = 0; ty0 < wg.Ty; ty0 += wg.rows_per_block) {
    const int rows = std::min(wg.rows_per_block, wg.Ty - ty0);
    input_transform(g, wg, xp, ty0, rows, V);
    gemm(g, wg, V, rows * wg.Txp, U, M);
    output_transform(g, wg, M, ty0, rows, b, z, y);
  }
}

void winograd_filter_grad_image(const ConvGeom& g, const float* x, const float* dy, float* scratch, float* acc) {
  const WinoGeom wg(g, filter_grad_block_tiles(g));
  float* xp = scratch;
  float* V = xp + g.C * wg.plane();
  float* dys = V + 16 * wg.v_plane(g);
  float* DY = dys + static_cast<std::int64_t>(g.K) * 2 * wg.Ty * wg.Wp;
  pad_split(g, wg, x, xp);
  // dy split by parity: the same split as the input's, without the padding row and column.
  const std::int64_t plane = static_cast<std::int64_t>(2) * wg.Ty * wg.Wp;
  std::fill_n(dys, static_cast<std::size_t>(g.K * plane), 0.0f);
  for (int k = 0; k < g.K; ++k)
    for (int h = 0; h < g.H; ++h)
      split_row_by_parity(dy + (static_cast<std::int64_t>(k) * g.H + h) * g.W, g.W,
                          dys + k * plane + static_cast<std::int64_t>(h) * wg.Wp, wg.Wh);
  for (int ty0 = 0; ty0 < wg.Ty; ty0 += wg.rows_per_block) {
    const int rows = std::min(wg.rows_per_block, wg.Ty - ty0);
    input_transform(g, wg, xp, ty0, rows, V);
    dy_transform(g, wg, dys, ty0, rows, DY);
    filter_grad_gemm(g, wg, DY, V, rows * wg.Txp, acc);
  }
}

#else  // not x86-64: the other paths handle every convolution

bool winograd_applies(const ConvGeom&) { return false; }
void winograd_image(const ConvGeom&, const float*, const float*, const float*, const float*, float*, float*) {
  JEM_FAIL("winograd_image: not built for this architecture (winograd_applies is false)");
}
void winograd_filter_grad_image(const ConvGeom&, const float*, const float*, float*, float*) {
  JEM_FAIL("winograd_filter_grad_image: not built for this architecture (winograd_applies is false)");
}

#endif

}  // namespace jem::cpu
