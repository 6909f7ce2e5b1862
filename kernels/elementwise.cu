// Elementwise kernels: fill, copy, axpy, add, scale and leaky ReLU. Memory-bound grid-stride
// loops; each element is read and written by one thread, so the aliasing the Backend allows
// (y == x, dx == dy, y == a or b) is safe (and the pointers are deliberately not __restrict__).
#include <bit>
#include <cstdint>

#include "jem/elementwise_math.hpp"
#include "kernel_util.cuh"
#include "kernels.hpp"

namespace jem::kernels {
namespace {

template <typename T>
__global__ void fill_kernel(T* p, std::int64_t n, T value) {
  for (std::int64_t i = global_thread(); i < n; i += grid_stride()) p[i] = value;
}

__global__ void axpy_kernel(float alpha, const float* x, float* y, std::int64_t n) {
  for (std::int64_t i = global_thread(); i < n; i += grid_stride()) y[i] += alpha * x[i];
}

__global__ void add_kernel(const float* a, const float* b, float* y, std::int64_t n) {
  for (std::int64_t i = global_thread(); i < n; i += grid_stride()) y[i] = a[i] + b[i];
}

__global__ void scale_kernel(float* x, std::int64_t n, float alpha) {
  for (std::int64_t i = global_thread(); i < n; i += grid_stride()) x[i] *= alpha;
}

__global__ void leaky_forward_kernel(const float* x, float* y, std::int64_t n, float slope) {
  for (std::int64_t i = global_thread(); i < n; i += grid_stride()) y[i] = leaky_relu(x[i], slope);
}

__global__ void leaky_backward_kernel(const float* x, const float* dy, float* dx, std::int64_t n,
                                      float slope) {
  for (std::int64_t i = global_thread(); i < n; i += grid_stride())
    dx[i] = leaky_relu_grad(x[i], dy[i], slope);
}

}  // namespace

void fill_f32(float* p, std::int64_t n, float value, cudaStream_t stream) {
  if (n <= 0) return;
  // All-zero bits (+0.0f): the copy engine's memset is the cheapest fill.
  if (std::bit_cast<std::uint32_t>(value) == 0u) {
    JEM_CUDA_CHECK(cudaMemsetAsync(p, 0, std::size_t(n) * sizeof(float), stream));
    return;
  }
  fill_kernel<<<grid_for(n), kThreads, 0, stream>>>(p, n, value);
  JEM_CUDA_CHECK_LAUNCH();
}

void fill_i32(std::int32_t* p, std::int64_t n, std::int32_t value, cudaStream_t stream) {
  if (n <= 0) return;
  if (value == 0) {
    JEM_CUDA_CHECK(cudaMemsetAsync(p, 0, std::size_t(n) * sizeof(std::int32_t), stream));
    return;
  }
  fill_kernel<<<grid_for(n), kThreads, 0, stream>>>(p, n, value);
  JEM_CUDA_CHECK_LAUNCH();
}

void copy_f32(const float* src, float* dst, std::int64_t n, cudaStream_t stream) {
  if (n <= 0 || src == dst) return;
  const std::size_t bytes = std::size_t(n) * sizeof(float);
  const bool overlap = src < dst + n && dst < src + n;
  if (!overlap) {
    JEM_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream));
    return;
  }
  // cudaMemcpy leaves overlapping ranges undefined; the CPU backend's copy is a memmove. Go
  // through a stream-ordered temporary (rare: no caller in the library copies overlapping views).
  void* tmp = nullptr;
  JEM_CUDA_CHECK(cudaMallocAsync(&tmp, bytes, stream));
  JEM_CUDA_CHECK(cudaMemcpyAsync(tmp, src, bytes, cudaMemcpyDeviceToDevice, stream));
  JEM_CUDA_CHECK(cudaMemcpyAsync(dst, tmp, bytes, cudaMemcpyDeviceToDevice, stream));
  JEM_CUDA_CHECK(cudaFreeAsync(tmp, stream));
}

void axpy(float alpha, const float* x, float* y, std::int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  axpy_kernel<<<grid_for(n), kThreads, 0, stream>>>(alpha, x, y, n);
  JEM_CUDA_CHECK_LAUNCH();
}

void add(const float* a, const float* b, float* y, std::int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  add_kernel<<<grid_for(n), kThreads, 0, stream>>>(a, b, y, n);
  JEM_CUDA_CHECK_LAUNCH();
}

void scale(float* x, std::int64_t n, float alpha, cudaStream_t stream) {
  if (n <= 0) return;
  scale_kernel<<<grid_for(n), kThreads, 0, stream>>>(x, n, alpha);
  JEM_CUDA_CHECK_LAUNCH();
}

void leaky_relu_forward(const float* x, float* y, std::int64_t n, float slope, cudaStream_t stream) {
  if (n <= 0) return;
  leaky_forward_kernel<<<grid_for(n), kThreads, 0, stream>>>(x, y, n, slope);
  JEM_CUDA_CHECK_LAUNCH();
}

void leaky_relu_backward(const float* x, const float* dy, float* dx, std::int64_t n, float slope,
                         cudaStream_t stream) {
  if (n <= 0) return;
  leaky_backward_kernel<<<grid_for(n), kThreads, 0, stream>>>(x, dy, dx, n, slope);
  JEM_CUDA_CHECK_LAUNCH();
}

}  // namespace jem::kernels
