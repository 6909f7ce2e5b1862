// The linear layer on cuBLAS.
//
// cuBLAS is column-major; our tensors are row-major. A row-major matrix A[r, c] is, byte for
// byte, the column-major matrix A^T[c, r] with leading dimension c. So each row-major product
// C = A B is computed as the column-major product C^T = B^T A^T, which reads the same buffers
// without any copy or transpose:
//   forward   y[N,O]  = x[N,I] w[O,I]^T    ->  y^T[O,N]  = w[O,I]   x^T[I,N]
//             sgemm(T, N, m=O, n=N, k=I, w (ld I), x (ld I), y (ld O)), after y = b per row
//   data      dx[N,I] = dy[N,O] w[O,I]     ->  dx^T[I,N] = w^T[I,O] dy^T[O,N]
//             sgemm(N, N, m=I, n=N, k=O, w (ld I), dy (ld O), dx (ld I)), beta 0 (overwrite)
//   filter    dw[O,I] += dy^T[O,N] x[N,I]  ->  dw^T[I,O] += x^T[I,N] dy[N,O]
//             sgemm(N, T, m=I, n=O, k=N, x (ld I), dy (ld O), dw (ld I)), beta 1 (accumulate)
// The bias parts are kernels (kernels/linear.cu), in the CPU's order.
#include <cublas_v2.h>

#include "cuda_backend.hpp"
#include "cuda_check.hpp"
#include "kernels.hpp"

namespace jem::cuda {

void CudaBackend::linear_forward_impl(int N, int I, int O, const float* x, const float* w,
                                      const float* b, float* y) {
  bind();
  kernels::broadcast_rows(N, O, b, y, stream_);
  if (N == 0 || O == 0 || I == 0) return;  // y = b (cuBLAS rejects empty dimensions)
  const float one = 1.0f;
  JEM_CUBLAS_CHECK(cublasSgemm(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, O, N, I, &one, w, I, x, I, &one,
                               y, O));
}

void CudaBackend::linear_backward_impl(int N, int I, int O, const float* x, const float* w,
                                       const float* dy, float* dx, float* dw, float* db) {
  bind();
  const float one = 1.0f, zero = 0.0f;
  if (dx && N > 0 && I > 0) {
    if (O == 0) kernels::fill_f32(dx, std::int64_t(N) * I, 0.0f, stream_);
    else
      JEM_CUBLAS_CHECK(cublasSgemm(cublas_, CUBLAS_OP_N, CUBLAS_OP_N, I, N, O, &one, w, I, dy, O,
                                   &zero, dx, I));
  }
  if (dw && N > 0 && I > 0 && O > 0)
    JEM_CUBLAS_CHECK(cublasSgemm(cublas_, CUBLAS_OP_N, CUBLAS_OP_T, I, O, N, &one, x, I, dy, O,
                                 &one, dw, I));
  if (db) kernels::column_sums_accumulate(N, O, dy, db, stream_);
}

}  // namespace jem::cuda
