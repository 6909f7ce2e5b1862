// The non-GEMM parts of the linear layer: the bias broadcast before the forward GEMM and the
// bias gradient. Both mirror the CPU loops exactly (same operations, same order), so they are
// bit-identical to it.
#include "kernel_util.cuh"
#include "kernels.hpp"

namespace jem::kernels {
namespace {

__global__ void broadcast_rows_kernel(std::int64_t n, int O, const float* b, float* y) {
  for (std::int64_t i = global_thread(); i < n; i += grid_stride()) y[i] = b[i % O];
}

// One thread per output column, summing the rows in order. N is a batch (tens to hundreds of
// rows) and O the classes: a sequential sum per column is short, and its fixed order makes db
// deterministic without atomics.
__global__ void column_sums_kernel(int N, int O, const float* dy, float* db) {
  for (std::int64_t o = global_thread(); o < O; o += grid_stride()) {
    float acc = db[o];
    for (int n = 0; n < N; ++n) acc += dy[std::int64_t(n) * O + o];
    db[o] = acc;
  }
}

}  // namespace

void broadcast_rows(int N, int O, const float* b, float* y, cudaStream_t stream) {
  const std::int64_t n = std::int64_t(N) * O;
  if (n <= 0) return;
  JEM_LAUNCH(broadcast_rows_kernel, grid_for(n), kThreads, stream)(n, O, b, y);
  JEM_CUDA_CHECK_LAUNCH();
}

void column_sums_accumulate(int N, int O, const float* dy, float* db, cudaStream_t stream) {
  if (N <= 0 || O <= 0) return;
  JEM_LAUNCH(column_sums_kernel, grid_for(O, 128), 128, stream)(N, O, dy, db);
  JEM_CUDA_CHECK_LAUNCH();
}

}  // namespace jem::kernels
