// Elementwise ops off the training loop's hot path: fill, copy, axpy, add and scale, through
// Thrust (its transform is a grid-stride loop; one float per thread). Each call runs on the
// backend's stream without synchronising (par_nosync) and allocates nothing. Each element is read
// and written by one thread, so the aliasing the Backend allows (y == a or b) is safe. The
// LeakyReLU passes, which run on every activation of every SGLD step, moved to activation.cu as
// float4 kernels: in an H200's profile Thrust's two-input transform moved an estimated 3.8 TB/s
// (about 27 GB of LeakyReLU gradients in 7.2 ms), the float4 kernels 3.9-4.0 TB/s.
// (The reductions, sum_squares and the fused energy/CE kernels, stay hand-written: thrust::reduce
// allocates temporary storage per call and does not fix its summation order across GPUs.)
#include <thrust/fill.h>
#if defined(JEM_KERNEL_EMULATION)
#include <thrust/system/cpp/execution_policy.h>
#else
#include <thrust/system/cuda/execution_policy.h>
#endif
#include <thrust/system_error.h>
#include <thrust/transform.h>

#include <bit>
#include <cstdint>

#include "kernel_util.cuh"
#include "kernels.hpp"

namespace jem::kernels {
namespace {

// Runs f(policy), policy being Thrust's execution policy for `stream`.
#if defined(JEM_KERNEL_EMULATION)
// The emulation build (kernel_util.cuh) runs Thrust's sequential host system, in stream order
// like every emulated launch (recorded instead while the stream captures a graph).
template <class F>
void on_stream(cudaStream_t stream, F f) {
  jem::emu::enqueue(stream, [f] { f(thrust::cpp::par); });
}
#else
template <class F>
void on_stream(cudaStream_t stream, F f) {
  f(thrust::cuda::par_nosync.on(stream));
}
#endif

// Thrust reports a failed launch by throwing thrust::system_error: rethrown as jem::Error with
// this file and line, like every other CUDA error.
#define JEM_THRUST(op_name, ...)                                      \
  do {                                                                \
    try {                                                             \
      __VA_ARGS__;                                                    \
    } catch (const thrust::system_error& jem_e_) {                    \
      JEM_FAIL("Thrust ", op_name, ": ", jem_e_.what());              \
    }                                                                 \
  } while (0)

struct AxpyOp {
  float alpha;
  __device__ float operator()(float x, float y) const { return y + alpha * x; }
};
struct AddOp {
  __device__ float operator()(float a, float b) const { return a + b; }
};
struct ScaleOp {
  float alpha;
  __device__ float operator()(float x) const { return x * alpha; }
};

}  // namespace

void fill_f32(float* p, std::int64_t n, float value, cudaStream_t stream) {
  if (n <= 0) return;
  // All-zero bits (+0.0f): the copy engine's memset is the cheapest fill.
  if (std::bit_cast<std::uint32_t>(value) == 0u) {
    JEM_CUDA_CHECK(cudaMemsetAsync(p, 0, std::size_t(n) * sizeof(float), stream));
    return;
  }
  JEM_THRUST("fill", on_stream(stream, [=](auto policy) { thrust::fill_n(policy, p, n, value); }));
}

void fill_i32(std::int32_t* p, std::int64_t n, std::int32_t value, cudaStream_t stream) {
  if (n <= 0) return;
  if (value == 0) {
    JEM_CUDA_CHECK(cudaMemsetAsync(p, 0, std::size_t(n) * sizeof(std::int32_t), stream));
    return;
  }
  JEM_THRUST("fill", on_stream(stream, [=](auto policy) { thrust::fill_n(policy, p, n, value); }));
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
  JEM_THRUST("axpy", on_stream(stream, [=](auto policy) {
               thrust::transform(policy, x, x + n, y, y, AxpyOp{alpha});
             }));
}

void add(const float* a, const float* b, float* y, std::int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  JEM_THRUST("add", on_stream(stream, [=](auto policy) {
               thrust::transform(policy, a, a + n, b, y, AddOp{});
             }));
}

void scale(float* x, std::int64_t n, float alpha, cudaStream_t stream) {
  if (n <= 0) return;
  JEM_THRUST("scale", on_stream(stream, [=](auto policy) {
               thrust::transform(policy, x, x + n, x, ScaleOp{alpha});
             }));
}

}  // namespace jem::kernels
