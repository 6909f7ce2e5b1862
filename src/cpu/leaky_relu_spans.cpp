// The LeakyReLU spans (leaky_relu_spans.hpp), one clone per instruction set.
//
// The file is compiled with -ffp-contract=off (CMakeLists.txt): the AVX-512 clone may not fuse
// dy * slope + other into one FMA where the others round twice, so every clone gives the bits of
// the baseline one.
#include "cpu/leaky_relu_spans.hpp"

#include "jem/elementwise_math.hpp"

// GCC and Clang on x86-64 build a clone per target and pick one when the program loads.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(JEM_NO_TARGET_CLONES)
#define JEM_SPAN_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define JEM_SPAN_CLONES
#endif

namespace jem::cpu {

JEM_SPAN_CLONES void leaky_relu_span(std::int64_t n, const float* x, float* y, float slope) {
#pragma omp simd
  for (std::int64_t i = 0; i < n; ++i) y[i] = leaky_relu(x[i], slope);
}

JEM_SPAN_CLONES void bias_leaky_relu_span(std::int64_t n, const float* x, float bias, float* y, float slope) {
#pragma omp simd
  for (std::int64_t i = 0; i < n; ++i) y[i] = leaky_relu(x[i] + bias, slope);
}

JEM_SPAN_CLONES void leaky_relu_grad_span(std::int64_t n, const float* x, const float* dy, float* dx, float slope) {
#pragma omp simd
  for (std::int64_t i = 0; i < n; ++i) dx[i] = leaky_relu_grad(x[i], dy[i], slope);
}

JEM_SPAN_CLONES void leaky_relu_grad_add_span(std::int64_t n, const float* x, const float* dy, const float* other,
                                              float* dx, float slope) {
#pragma omp simd
  for (std::int64_t i = 0; i < n; ++i) dx[i] = leaky_relu_grad(x[i], dy[i], slope) + other[i];
}

}  // namespace jem::cpu
