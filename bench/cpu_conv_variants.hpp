// Candidate CPU convolution kernels, benchmarked beside the backend's own
// (bench_ops, like llm.c's dev/cuda): a variant must first reproduce the
// backend's result (bench_ops checks it before timing), then prove itself
// faster on the model's shapes, before it replaces the kernel in src/cpu/. Each
// variant has the signature of CpuBackend::conv2d_forward_impl.
//
//   backend        the current kernel (src/cpu/conv2d.cpp): per image, im2col
//   then one sgemm
//                  [K, CRR] x [CRR, PQ]; one image per OpenMP thread at a time.
//   batched_gemm   several images per sgemm: the im2col of G images side by
//   side, [CRR, G*PQ],
//                  so the GEMM's N dimension is G*PQ >= 256 even where a
//                  stage's maps are small (7x7 and 8x8 in stage 3), then a copy
//                  of [K, G*PQ] into NCHW with the bias.
#pragma once

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "jem/backend.hpp"

namespace jem::bench {

// col[(c*R + kh)*R + kw, col_offset + p*Q + q] = x[c, p*s - pad + kh, q*s - pad
// + kw] (0 outside), rows `ld` floats apart: image n of a group lands at
// columns [n*PQ, (n+1)*PQ).
inline void im2col_strided(const ConvGeom &g, const float *x, float *col,
                           std::int64_t ld) {
  const int P = g.P(), Q = g.Q();
  for (int c = 0; c < g.C; ++c)
    for (int kh = 0; kh < g.R; ++kh)
      for (int kw = 0; kw < g.S; ++kw) {
        float *row = col + (std::int64_t(c * g.R + kh) * g.S + kw) * ld;
        for (int p = 0; p < P; ++p) {
          const int ih = p * g.stride - g.pad_h + kh;
          for (int q = 0; q < Q; ++q) {
            const int iw = q * g.stride - g.pad_w + kw;
            const bool inside = ih >= 0 && ih < g.H && iw >= 0 && iw < g.W;
            row[p * Q + q] =
                inside ? x[(std::int64_t(c) * g.H + ih) * g.W + iw] : 0.0f;
          }
        }
      }
}

// Scratch of the batched variant, sized once outside the timed loop (per
// thread).
struct BatchedGemmScratch {
  int group = 1;
  std::vector<std::vector<float>> col,
      out; // [threads][CRR * G*PQ], [threads][K * G*PQ]
  BatchedGemmScratch(const ConvGeom &g, int threads) {
    const int PQ = g.P() * g.Q();
    group = std::clamp((256 + PQ - 1) / PQ, 1, g.N);
    const std::size_t cols = std::size_t(group) * PQ;
    col.assign(std::size_t(threads),
               std::vector<float>(std::size_t(g.C) * g.R * g.R * cols));
    out.assign(std::size_t(threads),
               std::vector<float>(std::size_t(g.K) * cols));
  }
};

inline void conv2d_forward_batched_gemm(const ConvGeom &g, const float *x,
                                        const float *w, const float *b,
                                        float *y, BatchedGemmScratch &s,
                                        int threads) {
  const int PQ = g.P() * g.Q(), CRR = g.C * g.R * g.R, G = s.group;
  const int groups = (g.N + G - 1) / G;
  const std::int64_t x_stride = std::int64_t(g.C) * g.H * g.W,
                     y_stride = std::int64_t(g.K) * PQ;
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
  for (int grp = 0; grp < groups; ++grp) {
    const int t = omp_get_thread_num();
    const int n0 = grp * G, nb = std::min(G, g.N - n0);
    const std::int64_t ld = std::int64_t(nb) * PQ;
    float *col = s.col[std::size_t(t)].data();
    float *out = s.out[std::size_t(t)].data();
    for (int i = 0; i < nb; ++i)
      im2col_strided(g, x + (n0 + i) * x_stride, col + std::int64_t(i) * PQ,
                     ld);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, g.K, int(ld), CRR,
                1.0f, w, CRR, col, int(ld), 0.0f, out, int(ld));
    // [K, nb*PQ] -> nb x [K, PQ], plus the bias.
    for (int i = 0; i < nb; ++i)
      for (int k = 0; k < g.K; ++k) {
        const float *src = out + std::int64_t(k) * ld + std::int64_t(i) * PQ;
        float *dst = y + (n0 + i) * y_stride + std::int64_t(k) * PQ;
        for (int j = 0; j < PQ; ++j)
          dst[j] = src[j] + b[k];
      }
  }
}

} // namespace jem::bench
