// The Wide-ResNet's fused activation passes: bias + LeakyReLU after a convolution, and LeakyReLU
// backward + the residual gradient sum. Each replaces two memory-bound passes by one
// (bench/README.md: the elementwise traffic bounds these kernels' share of an iteration).
// Grid-stride loops, one thread per element, so the allowed aliasing (y == x, dx == dy or other)
// is safe; the per-element math is elementwise_math.hpp's, the CPU's.
#include "jem/elementwise_math.hpp"
#include "kernel_util.cuh"
#include "kernels.hpp"

namespace jem::kernels {
namespace {

// Element i lies in plane i / HW, whose channel is plane % C. 32-bit division: the host checks
// that the index fits (a 64-bit division per element would cost more than the memory traffic).
__global__ void bias_leaky_relu_kernel(std::uint32_t n, std::uint32_t C, std::uint32_t HW,
                                       const float* x, const float* b, float* y, float slope) {
  for (std::int64_t i = global_thread(); i < n; i += grid_stride()) {
    const std::uint32_t c = (std::uint32_t(i) / HW) % C;
    y[i] = leaky_relu(x[i] + b[c], slope);
  }
}

__global__ void leaky_relu_backward_add_kernel(std::int64_t n, const float* x, const float* dy,
                                               const float* other, float* dx, float slope) {
  for (std::int64_t i = global_thread(); i < n; i += grid_stride())
    dx[i] = leaky_relu_grad(x[i], dy[i], slope) + other[i];
}

}  // namespace

void bias_leaky_relu_forward(std::int64_t planes, int C, std::int64_t HW, const float* x,
                             const float* b, float* y, float slope, cudaStream_t stream) {
  const std::int64_t n = planes * HW;
  if (n <= 0 || C <= 0) return;
  JEM_CHECK(n <= std::int64_t(0xFFFFFFFF), "bias_leaky_relu_forward: ", n,
            " elements exceed the kernel's 32-bit index");
  JEM_LAUNCH(bias_leaky_relu_kernel, grid_for(n), kThreads, stream)(
      std::uint32_t(n), std::uint32_t(C), std::uint32_t(HW), x, b, y, slope);
  JEM_CUDA_CHECK_LAUNCH();
}

void leaky_relu_backward_add(std::int64_t n, const float* x, const float* dy, const float* other,
                             float* dx, float slope, cudaStream_t stream) {
  if (n <= 0) return;
  JEM_LAUNCH(leaky_relu_backward_add_kernel, grid_for(n), kThreads, stream)(
      n, x, dy, other, dx, slope);
  JEM_CUDA_CHECK_LAUNCH();
}

}  // namespace jem::kernels
