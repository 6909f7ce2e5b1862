// CPU optimizer ops over the flat parameter buffer.
#include <omp.h>

#include <vector>

#include "cpu/cpu_backend.hpp"

namespace jem::cpu {

void CpuBackend::adam_step_impl(std::int64_t n, float* p, const float* g, float* m, float* v,
                                const AdamStep& step) {
#pragma omp parallel for schedule(static) num_threads(threads_)
  for (std::int64_t i = 0; i < n; ++i) adam_update(p[i], g[i], m[i], v[i], step);
}

void CpuBackend::sgd_step_impl(std::int64_t n, float* p, const float* g, float* buf, float lr,
                               float momentum, float weight_decay) {
#pragma omp parallel for schedule(static) num_threads(threads_)
  for (std::int64_t i = 0; i < n; ++i) sgd_update(p[i], g[i], buf[i], lr, momentum, weight_decay);
}

double CpuBackend::sum_squares_impl(std::int64_t n, const float* x) {
  // Fixed-size chunks summed in chunk order: the result depends on n only, not on threads.
  constexpr std::int64_t kChunk = 4096;
  const std::int64_t chunks = (n + kChunk - 1) / kChunk;
  if (reduce_scratch_.size() < static_cast<std::size_t>(chunks))
    reduce_scratch_.resize(static_cast<std::size_t>(chunks));  // once per size, not per call
  double* partial = reduce_scratch_.data();
#pragma omp parallel for schedule(static) num_threads(threads_)
  for (std::int64_t c = 0; c < chunks; ++c) {
    double s = 0.0;
    const std::int64_t end = std::min(n, (c + 1) * kChunk);
    for (std::int64_t i = c * kChunk; i < end; ++i) s += double(x[i]) * double(x[i]);
    partial[static_cast<std::size_t>(c)] = s;
  }
  double total = 0.0;
  for (std::int64_t c = 0; c < chunks; ++c) total += partial[c];
  return total;
}

void CpuBackend::scale_impl(std::int64_t n, float* x, float alpha) {
#pragma omp parallel for schedule(static) num_threads(threads_)
  for (std::int64_t i = 0; i < n; ++i) x[i] *= alpha;
}

}  // namespace jem::cpu
