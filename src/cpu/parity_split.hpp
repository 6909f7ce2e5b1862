// Row and vector helpers of the AVX2 convolution kernels.
//
// A zero-padded image row stored split by column parity, as the stride-2 direct kernels
// (conv3x3_direct.cpp) and the Winograd kernel (conv3x3_winograd.cpp) read it: padded row =
// [even padded columns | odd padded columns], each half `wh` floats, padded column j being input
// column j - 1. Then the taps at columns 2q, 2q + 1, 2q + 2 of adjacent q are adjacent floats.
#pragma once

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

namespace jem::cpu {

// Writes the W floats of src into `row` (whose padding the caller has zeroed): input column w
// goes to the odd half at w / 2 (even w) or to the even half at (w + 1) / 2 (odd w).
// 16 columns at a time with AVX2 shuffles, then one by one.
[[gnu::target("avx2,fma")]] inline void split_row_by_parity(const float* src, int W, float* row, int wh) {
  int w = 0;
  for (; w + 16 <= W; w += 16) {
    const __m256 a = _mm256_loadu_ps(src + w), b = _mm256_loadu_ps(src + w + 8);
    // Within each 128-bit lane: a0 a2 b0 b2 | a4 a6 b4 b6; then the 64-bit pairs in order.
    const __m256 ev = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0));
    const __m256 od = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1));
    _mm256_storeu_ps(row + wh + w / 2,
                     _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(ev), _MM_SHUFFLE(3, 1, 2, 0))));
    _mm256_storeu_ps(row + w / 2 + 1,
                     _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(od), _MM_SHUFFLE(3, 1, 2, 0))));
  }
  for (; w < W; ++w) row[(w & 1) ? (w + 1) / 2 : wh + w / 2] = src[w];
}

// Stores the first n (1..8) floats of v at dst, touching nothing past them. Not VMASKMOVPS: on
// AMD CPUs its store form is microcoded, many times a plain store (measured on Zen 4: the
// Winograd output transform 6-13% of a layer faster without it). Two overlapping 4-float stores
// cover n = 4..8; fewer go one by one.
[[gnu::target("avx2,fma")]] inline void store_first(float* dst, __m256 v, int n) {
  if (n >= 4) {
    _mm_storeu_ps(dst, _mm256_castps256_ps128(v));
    const __m256i idx = _mm256_add_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(n - 4));
    _mm_storeu_ps(dst + n - 4, _mm256_castps256_ps128(_mm256_permutevar8x32_ps(v, idx)));
    return;
  }
  alignas(32) float tmp[8];
  _mm256_store_ps(tmp, v);
  for (int i = 0; i < n; ++i) dst[i] = tmp[i];
}

// The sum of v's 8 lanes (a fixed order: halves, then pairs, then the last two).
[[gnu::target("avx2,fma")]] inline float hsum(__m256 v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(t, _mm_shuffle_ps(t, t, 1)));
}

}  // namespace jem::cpu

#endif
