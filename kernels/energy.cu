// The fused losses: energy (E = -logsumexp), squared energy, cross-entropy (each with its
// gradient, one launch, one warp per row) and the class energy (one thread per logit).
//
// Accuracy. The CPU reference computes logsumexp relative to the row maximum in double and
// rounds each output once. Here everything is float, arranged so that no step cancels:
//   m        = max_k row[k]  (exact), `first` = the lowest k with row[k] == m,
//   others   = sum_{k != first} exp(row[k] - m)   (in [0, K-1]: no overflow),
//   log_sum  = log1p(others)  (accurate even when one logit dominates and log_sum << 1, where
//                              log(1 + others) would lose the small term to rounding),
//   softmax  = exp(row[k] - m) / (1 + others),
//   and for cross-entropy's label entry softmax_y - 1 = -others / (1 + others) when y holds the
//   maximum (no 1 - 0.9999 cancellation) and loss = log_sum there.
// Each output then carries a few float roundings: expf and log1pf (<= 2 ulp each in CUDA), the
// butterfly sum of the row (<= log2(32) + K/32 roundings), the shift row[k] - m (exact when the
// two are within a factor of 2, else u |row[k] - m|, which only matters for entries that are
// vanishingly small) and a division: about 16 u per output (u = 2^-24) at worst. (A host
// emulation of exactly this arithmetic, with random +-2 ulp on every expf / log1pf, stayed below
// 6 u against the CPU on the test's rows.) The tests allow 64 u.
#include <cmath>

#include "kernel_util.cuh"
#include "kernels.hpp"

namespace jem::kernels {
namespace {

__device__ __forceinline__ float quiet_nan() { return __int_as_float(0x7fc00000); }

struct RowStats {
  float max;
  int first;     // lowest index holding the maximum
  float others;  // sum over k != first of exp(row[k] - max)
  float sum;     // 1 + others
  float log_sum; // log(sum) = log1p(others)
};

// Every lane of the warp returns the same stats (the reductions are butterflies).
__device__ RowStats row_stats(const float* row, int K, int lane) {
  float m = -INFINITY;
  for (int k = lane; k < K; k += kWarp) m = fmaxf(m, row[k]);
  m = warp_max(m);
  int first = K;
  for (int k = lane; k < K; k += kWarp)
    if (row[k] == m) {
      first = k;
      break;
    }
  first = warp_min(first);
  float others = 0.0f;
  for (int k = lane; k < K; k += kWarp)
    if (k != first) others += expf(row[k] - m);
  others = warp_sum(others);
  return RowStats{m, first, others, 1.0f + others, log1pf(others)};
}

__global__ void energy_kernel(int N, int K, const float* logits, float* energy, float* dlogits,
                              float grad_scale, float sq_scale, bool squared) {
  const std::int64_t n = global_thread() / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (n >= N) return;  // warp-uniform
  const float* row = logits + n * K;
  float* drow = dlogits + n * K;
  const RowStats r = row_stats(row, K, lane);
  const float E = -(r.max + r.log_sum);
  if (lane == 0) energy[n] = E;
  // dE/dlogits = -softmax. The CPU's squared variant rounds -softmax to float first and then
  // scales it by grad_scale + 2 sq_scale E; the plain one scales by grad_scale directly.
  const float s = grad_scale + 2.0f * sq_scale * E;
  for (int k = lane; k < K; k += kWarp) {
    const float p = expf(row[k] - r.max) / r.sum;
    drow[k] = squared ? (-p) * s : -grad_scale * p;
  }
}

__global__ void cross_entropy_kernel(int N, int K, const float* logits, const std::int32_t* labels,
                                     float* loss, float* dlogits, float grad_scale, int* error) {
  const std::int64_t n = global_thread() / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (n >= N) return;
  const float* row = logits + n * K;
  float* drow = dlogits + n * K;
  const int y = labels[n];
  if (y < 0 || y >= K) {  // warp-uniform: every lane read the same label
    if (lane == 0) {
      report_error(error, kCrossEntropyLabel, int(n), y);
      loss[n] = quiet_nan();
    }
    for (int k = lane; k < K; k += kWarp) drow[k] = quiet_nan();
    return;
  }
  const RowStats r = row_stats(row, K, lane);
  const float ry = row[y];
  const bool y_is_max = ry == r.max;
  // logsumexp - row[y] = (max - row[y]) + log_sum: both terms >= 0, no cancellation.
  if (lane == 0) loss[n] = y_is_max ? r.log_sum : (r.max - ry) + r.log_sum;
  for (int k = lane; k < K; k += kWarp) {
    float d;
    if (k != y) d = expf(row[k] - r.max) / r.sum;
    else if (y_is_max) d = -(r.others / r.sum);  // softmax_y - 1 = (1 - sum) / sum
    else d = expf(ry - r.max) / r.sum - 1.0f;     // softmax_y <= 1/2: no cancellation
    drow[k] = grad_scale * d;
  }
}

__global__ void class_energy_kernel(std::int64_t total, int K, const float* logits,
                                    const std::int32_t* labels, float* energy, float* dlogits,
                                    float grad_scale, int* error) {
  for (std::int64_t i = global_thread(); i < total; i += grid_stride()) {
    const std::int64_t n = i / K;
    const int k = int(i % K);
    const int y = labels[n];
    if (y < 0 || y >= K) {
      if (k == 0) {
        report_error(error, kClassEnergyLabel, int(n), y);
        energy[n] = quiet_nan();
      }
      dlogits[i] = quiet_nan();
      continue;
    }
    dlogits[i] = k == y ? -grad_scale : 0.0f;
    if (k == y) energy[n] = -logits[i];
  }
}

unsigned row_blocks(int N) {
  constexpr int rows_per_block = kThreads / kWarp;
  return static_cast<unsigned>((N + rows_per_block - 1) / rows_per_block);
}

}  // namespace

void energy_forward_backward(int N, int K, const float* logits, float* energy, float* dlogits,
                             float grad_scale, float sq_scale, bool squared, cudaStream_t stream) {
  if (N <= 0 || K <= 0) return;
  JEM_LAUNCH(energy_kernel, row_blocks(N), kThreads, stream)(
      N, K, logits, energy, dlogits, grad_scale, sq_scale, squared);
  JEM_CUDA_CHECK_LAUNCH();
}

void cross_entropy_forward_backward(int N, int K, const float* logits, const std::int32_t* labels,
                                    float* loss, float* dlogits, float grad_scale, int* error,
                                    cudaStream_t stream) {
  if (N <= 0 || K <= 0) return;
  JEM_LAUNCH(cross_entropy_kernel, row_blocks(N), kThreads, stream)(
      N, K, logits, labels, loss, dlogits, grad_scale, error);
  JEM_CUDA_CHECK_LAUNCH();
}

void class_energy_forward_backward(int N, int K, const float* logits, const std::int32_t* labels,
                                   float* energy, float* dlogits, float grad_scale, int* error,
                                   cudaStream_t stream) {
  const std::int64_t total = std::int64_t(N) * K;
  if (total <= 0) return;
  JEM_LAUNCH(class_energy_kernel, grid_for(total), kThreads, stream)(
      total, K, logits, labels, energy, dlogits, grad_scale, error);
  JEM_CUDA_CHECK_LAUNCH();
}

}  // namespace jem::kernels
