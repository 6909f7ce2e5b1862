// Global average pooling, NCHW (and NHWC, at the end of the file). Forward: one warp per (n, c)
// plane, lane-strided partial sums and a butterfly reduction (coalesced reads; a fixed order, so deterministic). Backward: one thread
// per input element, dy[n, c] * (1 / HW) exactly as the CPU computes it (bit-identical).
#include "kernel_util.cuh"
#include "kernels.hpp"

namespace jem::kernels {
namespace {

__global__ void gap_forward_kernel(std::int64_t planes, int HW, float inv, const float* x,
                                   float* y) {
  const std::int64_t warp = global_thread() / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (warp >= planes) return;  // the whole warp leaves together: the shuffles below stay full
  const float* p = x + warp * HW;
  float s = 0.0f;
  for (int i = lane; i < HW; i += kWarp) s += p[i];
  s = warp_sum(s);
  if (lane == 0) y[warp] = s * inv;
}

__global__ void gap_backward_kernel(std::int64_t n, int HW, float inv, const float* dy, float* dx) {
  for (std::int64_t i = global_thread(); i < n; i += grid_stride()) dx[i] = dy[i / HW] * inv;
}

// Channels-last: one thread per (n, c); the threads of a warp read neighbouring channels of a
// pixel (coalesced). The sum takes the order of gap_forward_kernel: lane l's partial sums
// elements l, l + 32, ...; then the butterfly, in which each step adds partial[l ^ o] to
// partial[l] for every l at once (all lanes end equal; lane 0's value is stored).
__global__ void gap_forward_nhwc_kernel(std::int64_t planes, int C, int HW, float inv,
                                        const float* x, float* y) {
  const std::int64_t i = global_thread();
  if (i >= planes) return;
  const std::int64_t n = i / C, c = i % C;
  const float* p = x + n * HW * C + c;
  float part[kWarp];
  for (int l = 0; l < kWarp; ++l) {
    float s = 0.0f;
    for (int j = l; j < HW; j += kWarp) s += p[std::int64_t(j) * C];
    part[l] = s;
  }
  for (int o = kWarp / 2; o > 0; o /= 2) {
    float next[kWarp];
    for (int l = 0; l < kWarp; ++l) next[l] = part[l] + part[l ^ o];
    for (int l = 0; l < kWarp; ++l) part[l] = next[l];
  }
  y[i] = part[0] * inv;
}

__global__ void gap_backward_nhwc_kernel(std::int64_t n, int C, int HW, float inv, const float* dy,
                                         float* dx) {
  const std::int64_t image = std::int64_t(HW) * C;
  for (std::int64_t i = global_thread(); i < n; i += grid_stride())
    dx[i] = dy[(i / image) * C + i % C] * inv;
}

}  // namespace

void global_avg_pool_forward(int N, int C, int HW, const float* x, float* y, cudaStream_t stream) {
  const std::int64_t planes = std::int64_t(N) * C;
  if (planes <= 0) return;
  const float inv = 1.0f / static_cast<float>(HW);
  const std::int64_t warps_per_block = kThreads / kWarp;
  const auto blocks = static_cast<unsigned>((planes + warps_per_block - 1) / warps_per_block);
  JEM_LAUNCH(gap_forward_kernel, blocks, kThreads, stream)(planes, HW, inv, x, y);
  JEM_CUDA_CHECK_LAUNCH();
}

void global_avg_pool_backward(int N, int C, int HW, const float* dy, float* dx,
                              cudaStream_t stream) {
  const std::int64_t n = std::int64_t(N) * C * HW;
  if (n <= 0) return;
  const float inv = 1.0f / static_cast<float>(HW);
  JEM_LAUNCH(gap_backward_kernel, grid_for(n), kThreads, stream)(n, HW, inv, dy, dx);
  JEM_CUDA_CHECK_LAUNCH();
}

void global_avg_pool_forward_nhwc(int N, int C, int HW, const float* x, float* y,
                                  cudaStream_t stream) {
  const std::int64_t planes = std::int64_t(N) * C;
  if (planes <= 0) return;
  const float inv = 1.0f / static_cast<float>(HW);
  const auto blocks = static_cast<unsigned>((planes + kThreads - 1) / kThreads);
  JEM_LAUNCH(gap_forward_nhwc_kernel, blocks, kThreads, stream)(planes, C, HW, inv, x, y);
  JEM_CUDA_CHECK_LAUNCH();
}

void global_avg_pool_backward_nhwc(int N, int C, int HW, const float* dy, float* dx,
                                   cudaStream_t stream) {
  const std::int64_t n = std::int64_t(N) * C * HW;
  if (n <= 0) return;
  const float inv = 1.0f / static_cast<float>(HW);
  JEM_LAUNCH(gap_backward_nhwc_kernel, grid_for(n), kThreads, stream)(n, C, HW, inv, dy, dx);
  JEM_CUDA_CHECK_LAUNCH();
}

}  // namespace jem::kernels
