// The LeakyReLU spans (leaky_relu_spans.hpp): each loop compiled for AVX-512, AVX2 and baseline
// x86-64, and the widest one this CPU runs picked on first use (as the convolution kernels pick
// theirs). An explicit choice, not GCC's target_clones: a clone resolver runs before main, before
// ThreadSanitizer's runtime is ready (a TSan build crashed), and Clang 14 dropped the clones.
//
// The file is compiled with -ffp-contract=off (CMakeLists.txt): the AVX-512 loop may not fuse
// dy * slope + other into one FMA where the others round twice, so every variant gives the bits
// of the baseline one.
#include "cpu/leaky_relu_spans.hpp"

#include "jem/elementwise_math.hpp"

namespace jem::cpu {
namespace {

// The loops, inlined into each variant below and compiled for its instruction set there.
[[gnu::always_inline]] inline void lrelu_body(std::int64_t n, const float* x, float* y, float slope) {
#pragma omp simd
  for (std::int64_t i = 0; i < n; ++i) y[i] = leaky_relu(x[i], slope);
}
[[gnu::always_inline]] inline void bias_lrelu_body(std::int64_t n, const float* x, float bias, float* y,
                                                   float slope) {
#pragma omp simd
  for (std::int64_t i = 0; i < n; ++i) y[i] = leaky_relu(x[i] + bias, slope);
}
[[gnu::always_inline]] inline void grad_body(std::int64_t n, const float* x, const float* dy, float* dx,
                                             float slope) {
#pragma omp simd
  for (std::int64_t i = 0; i < n; ++i) dx[i] = leaky_relu_grad(x[i], dy[i], slope);
}
[[gnu::always_inline]] inline void grad_add_body(std::int64_t n, const float* x, const float* dy,
                                                 const float* other, float* dx, float slope) {
#pragma omp simd
  for (std::int64_t i = 0; i < n; ++i) dx[i] = leaky_relu_grad(x[i], dy[i], slope) + other[i];
}

struct Spans {
  void (*lrelu)(std::int64_t, const float*, float*, float);
  void (*bias_lrelu)(std::int64_t, const float*, float, float*, float);
  void (*grad)(std::int64_t, const float*, const float*, float*, float);
  void (*grad_add)(std::int64_t, const float*, const float*, const float*, float*, float);
};

// One set of the four loops per instruction set (ATTR: its target attribute, or nothing).
#define JEM_SPANS(NAME, ATTR)                                                                      \
  ATTR void lrelu_##NAME(std::int64_t n, const float* x, float* y, float s) { lrelu_body(n, x, y, s); } \
  ATTR void bias_lrelu_##NAME(std::int64_t n, const float* x, float b, float* y, float s) {     \
    bias_lrelu_body(n, x, b, y, s);                                                              \
  }                                                                                              \
  ATTR void grad_##NAME(std::int64_t n, const float* x, const float* dy, float* dx, float s) {  \
    grad_body(n, x, dy, dx, s);                                                                  \
  }                                                                                              \
  ATTR void grad_add_##NAME(std::int64_t n, const float* x, const float* dy, const float* o,     \
                            float* dx, float s) {                                                \
    grad_add_body(n, x, dy, o, dx, s);                                                           \
  }                                                                                              \
  constexpr Spans kSpans_##NAME{lrelu_##NAME, bias_lrelu_##NAME, grad_##NAME, grad_add_##NAME};

JEM_SPANS(baseline, )
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
JEM_SPANS(avx2, [[gnu::target("avx2")]])
JEM_SPANS(avx512, [[gnu::target("avx512f,avx2")]])
#endif
#undef JEM_SPANS

const Spans& spans() {
  static const Spans chosen = [] {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    if (__builtin_cpu_supports("avx512f")) return kSpans_avx512;
    if (__builtin_cpu_supports("avx2")) return kSpans_avx2;
#endif
    return kSpans_baseline;
  }();
  return chosen;
}

}  // namespace

void leaky_relu_span(std::int64_t n, const float* x, float* y, float slope) { spans().lrelu(n, x, y, slope); }

void bias_leaky_relu_span(std::int64_t n, const float* x, float bias, float* y, float slope) {
  spans().bias_lrelu(n, x, bias, y, slope);
}

void leaky_relu_grad_span(std::int64_t n, const float* x, const float* dy, float* dx, float slope) {
  spans().grad(n, x, dy, dx, slope);
}

void leaky_relu_grad_add_span(std::int64_t n, const float* x, const float* dy, const float* other, float* dx,
                              float slope) {
  spans().grad_add(n, x, dy, other, dx, slope);
}

}  // namespace jem::cpu
