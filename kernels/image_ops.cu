// Inference-only image ops of the FID Inception network: max / average pooling, bilinear resize
// (one thread per output element, the per-element math of include/jem/image_ops_math.hpp that
// the CPU runs too: bit-identical results), and channel concatenation (a strided copy).
#include "jem/image_ops_math.hpp"
#include "kernel_util.cuh"
#include "kernels.hpp"

namespace jem::kernels {
namespace {

template <bool kMax>
__global__ void pool_kernel(PoolGeom g, int P, int Q, std::int64_t n, const float* x, float* y) {
  for (std::int64_t i = global_thread(); i < n; i += grid_stride()) {
    const int q = int(i % Q), p = int((i / Q) % P);
    const std::int64_t plane = i / (std::int64_t(P) * Q);
    const float* xp = x + plane * g.H * g.W;
    y[i] = kMax ? image_ops::max_pool_at(g, xp, p, q) : image_ops::avg_pool_at(g, xp, p, q);
  }
}

__global__ void resize_kernel(int H, int W, int P, int Q, std::int64_t n, const float* x,
                              float* y) {
  for (std::int64_t i = global_thread(); i < n; i += grid_stride()) {
    const int q = int(i % Q), p = int((i / Q) % P);
    const std::int64_t plane = i / (std::int64_t(P) * Q);
    y[i] = image_ops::bilinear_at(x + plane * H * W, W, image_ops::bilinear_tap(H, P, p),
                                  image_ops::bilinear_tap(W, Q, q));
  }
}

// i runs over src [N, Cs * HW]; element (n, r) goes to dst[n, offset * HW + r] of [N, Cd * HW].
__global__ void copy_channels_kernel(std::int64_t run, std::int64_t dst_row, std::int64_t shift,
                                     std::int64_t n, const float* src, float* dst) {
  for (std::int64_t i = global_thread(); i < n; i += grid_stride())
    dst[(i / run) * dst_row + shift + i % run] = src[i];
}

}  // namespace

void max_pool2d_forward(const PoolGeom& g, const float* x, float* y, cudaStream_t stream) {
  const std::int64_t n = std::int64_t(g.N) * g.C * g.P() * g.Q();
  if (n <= 0) return;
  JEM_LAUNCH(pool_kernel<true>, grid_for(n), kThreads, stream)(g, g.P(), g.Q(), n, x, y);
  JEM_CUDA_CHECK_LAUNCH();
}

void avg_pool2d_forward(const PoolGeom& g, const float* x, float* y, cudaStream_t stream) {
  const std::int64_t n = std::int64_t(g.N) * g.C * g.P() * g.Q();
  if (n <= 0) return;
  JEM_LAUNCH(pool_kernel<false>, grid_for(n), kThreads, stream)(g, g.P(), g.Q(), n, x, y);
  JEM_CUDA_CHECK_LAUNCH();
}

void resize_bilinear_forward(std::int64_t NC, int H, int W, int P, int Q, const float* x, float* y,
                             cudaStream_t stream) {
  const std::int64_t n = NC * P * Q;
  if (n <= 0) return;
  JEM_LAUNCH(resize_kernel, grid_for(n), kThreads, stream)(H, W, P, Q, n, x, y);
  JEM_CUDA_CHECK_LAUNCH();
}

void copy_channels(int N, int Cs, int Cd, std::int64_t HW, int offset, const float* src, float* dst,
                   cudaStream_t stream) {
  const std::int64_t run = std::int64_t(Cs) * HW, n = std::int64_t(N) * run;
  if (n <= 0) return;
  JEM_LAUNCH(copy_channels_kernel, grid_for(n), kThreads, stream)(
      run, std::int64_t(Cd) * HW, std::int64_t(offset) * HW, n, src, dst);
  JEM_CUDA_CHECK_LAUNCH();
}

}  // namespace jem::kernels
