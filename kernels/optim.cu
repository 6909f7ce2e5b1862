// Optimizer kernels over the flat parameter buffer: Adam(W) and SGD (one thread per parameter,
// calling the shared adam_update / sgd_update) and the deterministic sum of squares.
//
// sum_squares: two passes, no atomics. Pass 1: chunk c = elements [c * 4096, (c + 1) * 4096) is
// summed by one block in double (each thread a fixed strided subset, then a fixed shared-memory
// tree) into partials[c]. Pass 2: one block sums the partials the same way. The order depends
// on n only, so repeated calls give the same bits. It differs from the CPU's order (sequential
// within chunks) only by double rounding, ~1e-16 relative.
#include "jem/optim_math.hpp"
#include "kernel_util.cuh"
#include "kernels.hpp"

namespace jem::kernels {
namespace {

constexpr int kReduceThreads = 256;

__global__ void adam_kernel(std::int64_t n, float* p, const float* g, float* m, float* v,
                            AdamStep step) {
  for (std::int64_t i = global_thread(); i < n; i += grid_stride()) {
    float pi = p[i], mi = m[i], vi = v[i];
    adam_update(pi, g[i], mi, vi, step);
    p[i] = pi;
    m[i] = mi;
    v[i] = vi;
  }
}

__global__ void sgd_kernel(std::int64_t n, float* p, const float* g, float* buf, float lr,
                           float momentum, float weight_decay) {
  for (std::int64_t i = global_thread(); i < n; i += grid_stride()) {
    float pi = p[i], bi = buf[i];
    sgd_update(pi, g[i], bi, lr, momentum, weight_decay);
    p[i] = pi;
    buf[i] = bi;
  }
}

// Tree reduction of one value per thread in shared memory; thread 0 gets the block's sum.
__device__ double block_sum(double v, double* shared) {
  shared[threadIdx.x] = v;
  __syncthreads();
  for (int s = kReduceThreads / 2; s > 0; s /= 2) {
    if (int(threadIdx.x) < s) shared[threadIdx.x] += shared[threadIdx.x + s];
    __syncthreads();
  }
  return shared[0];
}

__global__ void sum_squares_chunks_kernel(std::int64_t n, const float* x, double* partials) {
  __shared__ double shared[kReduceThreads];
  const std::int64_t begin = std::int64_t(blockIdx.x) * kSumSquaresChunk;
  const std::int64_t end = begin + kSumSquaresChunk < n ? begin + kSumSquaresChunk : n;
  double s = 0.0;
  for (std::int64_t i = begin + threadIdx.x; i < end; i += kReduceThreads) {
    const double xi = x[i];
    s += xi * xi;
  }
  const double total = block_sum(s, shared);
  if (threadIdx.x == 0) partials[blockIdx.x] = total;
}

__global__ void sum_partials_kernel(std::int64_t count, const double* partials, double* result) {
  __shared__ double shared[kReduceThreads];
  double s = 0.0;
  for (std::int64_t i = threadIdx.x; i < count; i += kReduceThreads) s += partials[i];
  const double total = block_sum(s, shared);
  if (threadIdx.x == 0) result[0] = total;
}

}  // namespace

void adam_step(std::int64_t n, float* p, const float* g, float* m, float* v, const AdamStep& step,
               cudaStream_t stream) {
  if (n <= 0) return;
  JEM_LAUNCH(adam_kernel, grid_for(n), kThreads, stream)(n, p, g, m, v, step);
  JEM_CUDA_CHECK_LAUNCH();
}

void sgd_step(std::int64_t n, float* p, const float* g, float* buf, float lr, float momentum,
              float weight_decay, cudaStream_t stream) {
  if (n <= 0) return;
  JEM_LAUNCH(sgd_kernel, grid_for(n), kThreads, stream)(n, p, g, buf, lr, momentum, weight_decay);
  JEM_CUDA_CHECK_LAUNCH();
}

std::int64_t sum_squares_partials(std::int64_t n) {
  return n <= 0 ? 1 : (n + kSumSquaresChunk - 1) / kSumSquaresChunk;
}

void sum_squares(std::int64_t n, const float* x, double* partials, double* result,
                 cudaStream_t stream) {
  if (n <= 0) {
    JEM_CUDA_CHECK(cudaMemsetAsync(result, 0, sizeof(double), stream));
    return;
  }
  const std::int64_t chunks = sum_squares_partials(n);
  JEM_CHECK(chunks <= 0x7FFFFFFF, "sum_squares: ", n, " elements are too many");
  JEM_LAUNCH(sum_squares_chunks_kernel, static_cast<unsigned>(chunks), kReduceThreads, stream)(
      n, x, partials);
  JEM_CUDA_CHECK_LAUNCH();
  JEM_LAUNCH(sum_partials_kernel, 1, kReduceThreads, stream)(chunks, partials, result);
  JEM_CUDA_CHECK_LAUNCH();
}

}  // namespace jem::kernels
