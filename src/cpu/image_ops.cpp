// CPU image ops of the Inception-v3 feature network: max / average pooling,
// bilinear resize and channel concatenation. Inference only (FID / Inception
// Score): no backward passes exist. Every output element is computed on its
// own, so the results do not depend on the thread count.
#include <algorithm>
#include <cstring>
#include <limits>

#include "cpu/cpu_backend.hpp"
#include "jem/image_ops_math.hpp"

namespace jem::cpu {

void CpuBackend::max_pool2d_forward_impl(const PoolGeom& g, const float* x, float* y) {
  const int P = g.P(), Q = g.Q();
  const std::int64_t planes = std::int64_t(g.N) * g.C;
#pragma omp parallel for schedule(static) num_threads(threads_)
  for (std::int64_t pl = 0; pl < planes; ++pl) {
    const float* xp = x + pl * g.H * g.W;  // [H, W]
    float* yp = y + pl * P * Q;            // [P, Q]
    for (int p = 0; p < P; ++p)
      for (int q = 0; q < Q; ++q) yp[p * Q + q] = image_ops::max_pool_at(g, xp, p, q);
  }
}

void CpuBackend::avg_pool2d_forward_impl(const PoolGeom& g, const float* x, float* y) {
  const int P = g.P(), Q = g.Q();
  const std::int64_t planes = std::int64_t(g.N) * g.C;
#pragma omp parallel for schedule(static) num_threads(threads_)
  for (std::int64_t pl = 0; pl < planes; ++pl) {
    const float* xp = x + pl * g.H * g.W;  // [H, W]
    float* yp = y + pl * P * Q;            // [P, Q]
    for (int p = 0; p < P; ++p)
      for (int q = 0; q < Q; ++q) yp[p * Q + q] = image_ops::avg_pool_at(g, xp, p, q);
  }
}

void CpuBackend::resize_bilinear_forward_impl(std::int64_t NC, int H, int W, int P, int Q,
                                              const float* x, float* y) {
#pragma omp parallel for schedule(static) num_threads(threads_)
  for (std::int64_t pl = 0; pl < NC; ++pl) {
    const float* xp = x + pl * H * W;  // [H, W]
    float* yp = y + pl * P * Q;        // [P, Q]
    for (int p = 0; p < P; ++p) {
      const image_ops::LerpTap th = image_ops::bilinear_tap(H, P, p);
      for (int q = 0; q < Q; ++q)
        yp[std::int64_t(p) * Q + q] =
            image_ops::bilinear_at(xp, W, th, image_ops::bilinear_tap(W, Q, q));
    }
  }
}

void CpuBackend::copy_channels_impl(int N, int Cs, int Cd, std::int64_t HW, int offset,
                                    const float* src, float* dst) {
  // Each image's Cs planes are one contiguous run in src and in dst.
  const std::int64_t run = std::int64_t(Cs) * HW;
#pragma omp parallel for schedule(static) num_threads(threads_)
  for (int n = 0; n < N; ++n)
    std::memcpy(dst + (std::int64_t(n) * Cd + offset) * HW, src + n * run,
                static_cast<std::size_t>(run) * sizeof(float));
}

}  // namespace jem::cpu
