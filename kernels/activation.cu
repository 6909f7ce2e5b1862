// The Wide-ResNet's activation passes: LeakyReLU and its gradient, and the fused ones, bias +
// LeakyReLU after a convolution and LeakyReLU backward + the residual gradient sum (each of those
// replaces two memory-bound passes by one; bench/README.md: the elementwise traffic bounds these
// kernels' share of an iteration).
// Grid-stride loops in which one thread reads and then writes its elements, so the allowed
// aliasing (y == x, dx == dy or other) is safe; the per-element math is elementwise_math.hpp's,
// the CPU's. Where the sizes and addresses allow (kernel_util.cuh, vectorizable4) each thread
// moves a float4 per turn, else one float.
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

// The same over float4s: HW4 = HW / 4 of them per plane (HW a multiple of 4, so that the four
// elements of a float4 share their channel).
__global__ void bias_leaky_relu_vec4_kernel(std::uint32_t n4, std::uint32_t C, std::uint32_t HW4,
                                            const float4* x, const float* b, float4* y,
                                            float slope) {
  for (std::int64_t i = global_thread(); i < n4; i += grid_stride()) {
    const float bias = b[(std::uint32_t(i) / HW4) % C];
    float4 v = x[i];
    v.x = leaky_relu(v.x + bias, slope);
    v.y = leaky_relu(v.y + bias, slope);
    v.z = leaky_relu(v.z + bias, slope);
    v.w = leaky_relu(v.w + bias, slope);
    y[i] = v;
  }
}

__global__ void leaky_relu_forward_kernel(std::int64_t n, const float* x, float* y, float slope) {
  for (std::int64_t i = global_thread(); i < n; i += grid_stride()) y[i] = leaky_relu(x[i], slope);
}

__global__ void leaky_relu_forward_vec4_kernel(std::int64_t n4, const float4* x, float4* y, float slope) {
  for (std::int64_t i = global_thread(); i < n4; i += grid_stride()) {
    float4 v = x[i];
    v.x = leaky_relu(v.x, slope);
    v.y = leaky_relu(v.y, slope);
    v.z = leaky_relu(v.z, slope);
    v.w = leaky_relu(v.w, slope);
    y[i] = v;
  }
}

__global__ void leaky_relu_backward_kernel(std::int64_t n, const float* x, const float* dy, float* dx,
                                           float slope) {
  for (std::int64_t i = global_thread(); i < n; i += grid_stride())
    dx[i] = leaky_relu_grad(x[i], dy[i], slope);
}

__global__ void leaky_relu_backward_vec4_kernel(std::int64_t n4, const float4* x, const float4* dy,
                                                float4* dx, float slope) {
  for (std::int64_t i = global_thread(); i < n4; i += grid_stride()) {
    const float4 xv = x[i];
    float4 g = dy[i];
    g.x = leaky_relu_grad(xv.x, g.x, slope);
    g.y = leaky_relu_grad(xv.y, g.y, slope);
    g.z = leaky_relu_grad(xv.z, g.z, slope);
    g.w = leaky_relu_grad(xv.w, g.w, slope);
    dx[i] = g;
  }
}

__global__ void leaky_relu_backward_add_kernel(std::int64_t n, const float* x, const float* dy,
                                               const float* other, float* dx, float slope) {
  for (std::int64_t i = global_thread(); i < n; i += grid_stride())
    dx[i] = leaky_relu_grad(x[i], dy[i], slope) + other[i];
}

__global__ void leaky_relu_backward_add_vec4_kernel(std::int64_t n4, const float4* x,
                                                    const float4* dy, const float4* other,
                                                    float4* dx, float slope) {
  for (std::int64_t i = global_thread(); i < n4; i += grid_stride()) {
    const float4 xv = x[i], g = dy[i], o = other[i];
    float4 r;
    r.x = leaky_relu_grad(xv.x, g.x, slope) + o.x;
    r.y = leaky_relu_grad(xv.y, g.y, slope) + o.y;
    r.z = leaky_relu_grad(xv.z, g.z, slope) + o.z;
    r.w = leaky_relu_grad(xv.w, g.w, slope) + o.w;
    dx[i] = r;
  }
}

// Channels-last (NHWC, HW = 1 at the launcher: element i is channel i % C) over float4s, C a
// multiple of 4: the four elements of a float4 are channels c..c+3 of one pixel.
__global__ void bias_leaky_relu_cl4_kernel(std::uint32_t n4, std::uint32_t C, const float4* x,
                                           const float* b, float4* y, float slope) {
  for (std::int64_t i = global_thread(); i < n4; i += grid_stride()) {
    const std::uint32_t c = (std::uint32_t(i) * 4u) % C;
    float4 v = x[i];
    v.x = leaky_relu(v.x + b[c], slope);
    v.y = leaky_relu(v.y + b[c + 1], slope);
    v.z = leaky_relu(v.z + b[c + 2], slope);
    v.w = leaky_relu(v.w + b[c + 3], slope);
    y[i] = v;
  }
}

}  // namespace

void bias_leaky_relu_forward(std::int64_t planes, int C, std::int64_t HW, const float* x,
                             const float* b, float* y, float slope, cudaStream_t stream) {
  const std::int64_t n = planes * HW;
  if (n <= 0 || C <= 0) return;
  JEM_CHECK(n <= std::int64_t(0xFFFFFFFF), "bias_leaky_relu_forward: ", n,
            " elements exceed the kernel's 32-bit index");
  if (vectorizable4(HW, {x, y})) {
    const std::int64_t n4 = n / 4;
    JEM_LAUNCH(bias_leaky_relu_vec4_kernel, grid_for(n4), kThreads, stream)(
        std::uint32_t(n4), std::uint32_t(C), std::uint32_t(HW / 4),
        reinterpret_cast<const float4*>(x), b, reinterpret_cast<float4*>(y), slope);
  } else if (HW == 1 && C % 4 == 0 && vectorizable4(n, {x, y})) {
    const std::int64_t n4 = n / 4;
    JEM_LAUNCH(bias_leaky_relu_cl4_kernel, grid_for(n4), kThreads, stream)(
        std::uint32_t(n4), std::uint32_t(C), reinterpret_cast<const float4*>(x), b,
        reinterpret_cast<float4*>(y), slope);
  } else {
    JEM_LAUNCH(bias_leaky_relu_kernel, grid_for(n), kThreads, stream)(
        std::uint32_t(n), std::uint32_t(C), std::uint32_t(HW), x, b, y, slope);
  }
  JEM_CUDA_CHECK_LAUNCH();
}

void leaky_relu_forward(const float* x, float* y, std::int64_t n, float slope, cudaStream_t stream) {
  if (n <= 0) return;
  if (vectorizable4(n, {x, y})) {
    JEM_LAUNCH(leaky_relu_forward_vec4_kernel, grid_for(n / 4), kThreads, stream)(
        n / 4, reinterpret_cast<const float4*>(x), reinterpret_cast<float4*>(y), slope);
  } else {
    JEM_LAUNCH(leaky_relu_forward_kernel, grid_for(n), kThreads, stream)(n, x, y, slope);
  }
  JEM_CUDA_CHECK_LAUNCH();
}

void leaky_relu_backward(const float* x, const float* dy, float* dx, std::int64_t n, float slope,
                         cudaStream_t stream) {
  if (n <= 0) return;
  if (vectorizable4(n, {x, dy, dx})) {
    JEM_LAUNCH(leaky_relu_backward_vec4_kernel, grid_for(n / 4), kThreads, stream)(
        n / 4, reinterpret_cast<const float4*>(x), reinterpret_cast<const float4*>(dy),
        reinterpret_cast<float4*>(dx), slope);
  } else {
    JEM_LAUNCH(leaky_relu_backward_kernel, grid_for(n), kThreads, stream)(n, x, dy, dx, slope);
  }
  JEM_CUDA_CHECK_LAUNCH();
}

void leaky_relu_backward_add(std::int64_t n, const float* x, const float* dy, const float* other,
                             float* dx, float slope, cudaStream_t stream) {
  if (n <= 0) return;
  if (vectorizable4(n, {x, dy, other, dx})) {
    const std::int64_t n4 = n / 4;
    JEM_LAUNCH(leaky_relu_backward_add_vec4_kernel, grid_for(n4), kThreads, stream)(
        n4, reinterpret_cast<const float4*>(x), reinterpret_cast<const float4*>(dy),
        reinterpret_cast<const float4*>(other), reinterpret_cast<float4*>(dx), slope);
  } else {
    JEM_LAUNCH(leaky_relu_backward_add_kernel, grid_for(n), kThreads, stream)(
        n, x, dy, other, dx, slope);
  }
  JEM_CUDA_CHECK_LAUNCH();
}

}  // namespace jem::kernels
