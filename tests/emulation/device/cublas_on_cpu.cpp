// The cuBLAS calls of cuda/cuda_linear.cpp on the CPU: column-major SGEMM as the cuBLAS
// documentation defines it, C = alpha op(A) op(B) + beta C (C not read when beta is 0), with the
// leading dimensions checked as cuBLAS checks them (CUBLAS_STATUS_INVALID_VALUE). Sums in double,
// rounded once; with CUBLAS_TF32_TENSOR_OP_MATH the inputs are first rounded to TF32.
#include <cublas_v2.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "emulation/stream_capture.hpp"

struct cublasContext {
  cudaStream_t stream = nullptr;
  cublasMath_t math = CUBLAS_DEFAULT_MATH;
  void* workspace = nullptr;  // set by cublasSetWorkspace; null: cuBLAS's default pool
};

namespace {

float to_tf32(float f) {  // round to nearest even at 10 mantissa bits
  std::uint32_t b;
  std::memcpy(&b, &f, 4);
  if ((b & 0x7f800000u) == 0x7f800000u) return f;
  b += 0xfffu + ((b >> 13) & 1u);
  b &= 0xffffe000u;
  std::memcpy(&f, &b, 4);
  return f;
}

}  // namespace

extern "C" {

cublasStatus_t cublasCreate_v2(cublasHandle_t* h) {
  *h = new cublasContext;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasDestroy_v2(cublasHandle_t h) {
  delete h;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetStream_v2(cublasHandle_t h, cudaStream_t s) {
  h->stream = s;
  h->workspace = nullptr;  // as documented: back to the default workspace pool
  return CUBLAS_STATUS_SUCCESS;
}
// The documented checks: a workspace of some bytes must exist and be 256-byte aligned.
cublasStatus_t cublasSetWorkspace_v2(cublasHandle_t h, void* workspace, size_t bytes) {
  if (h == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (bytes > 0 && (workspace == nullptr || reinterpret_cast<std::uintptr_t>(workspace) % 256 != 0))
    return CUBLAS_STATUS_INVALID_VALUE;
  h->workspace = bytes > 0 ? workspace : nullptr;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetMathMode(cublasHandle_t h, cublasMath_t m) {
  h->math = m;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasGetProperty(libraryPropertyType type, int* value) {
  *value = type == MAJOR_VERSION   ? CUBLAS_VER_MAJOR
           : type == MINOR_VERSION ? CUBLAS_VER_MINOR
                                   : CUBLAS_VER_PATCH;
  return CUBLAS_STATUS_SUCCESS;
}
const char* cublasGetStatusString(cublasStatus_t st) {
  switch (st) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED (emulated cuBLAS)";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE (emulated cuBLAS)";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED (emulated cuBLAS)";
    default: return "CUBLAS_STATUS (emulated cuBLAS)";
  }
}

cublasStatus_t cublasSgemm_v2(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m,
                              int n, int k, const float* alpha, const float* A, int lda,
                              const float* B, int ldb, const float* beta, float* C, int ldc) {
  if (m < 0 || n < 0 || k < 0) return CUBLAS_STATUS_INVALID_VALUE;
  const bool at = ta != CUBLAS_OP_N, bt = tb != CUBLAS_OP_N;
  if (lda < std::max(1, at ? k : m) || ldb < std::max(1, bt ? n : k) || ldc < std::max(1, m))
    return CUBLAS_STATUS_INVALID_VALUE;
  // Stricter than cuBLAS, on purpose: a GEMM captured into a CUDA Graph without a workspace set
  // by cublasSetWorkspace is refused. The real library allocates workspace inside the capture
  // instead (memory outside the backend's plan), which the tests could not see otherwise.
  if (h->workspace == nullptr && jem::emu::capturing(h->stream)) return CUBLAS_STATUS_NOT_SUPPORTED;
  const bool tf32 = h->math == CUBLAS_TF32_TENSOR_OP_MATH;
  // Host pointer mode: alpha and beta are read now, the matrices when the work runs (later, when
  // the stream is capturing a graph).
  const float al = *alpha, be = *beta;
  jem::emu::enqueue(h->stream, [=] {
    auto in = [tf32](float v) { return tf32 ? to_tf32(v) : v; };
    // op(A)[i, l] and op(B)[l, j], column-major.
    auto a = [&](int i, int l) {
      return in(at ? A[l + std::int64_t(i) * lda] : A[i + std::int64_t(l) * lda]);
    };
    auto b = [&](int l, int j) {
      return in(bt ? B[j + std::int64_t(l) * ldb] : B[l + std::int64_t(j) * ldb]);
    };
    for (int j = 0; j < n; ++j)
      for (int i = 0; i < m; ++i) {
        double s = 0.0;
        for (int l = 0; l < k; ++l) s += double(a(i, l)) * b(l, j);
        float& c = C[i + std::int64_t(j) * ldc];
        c = be == 0.0f ? float(al * s) : float(al * s + double(be) * c);
      }
  });
  return CUBLAS_STATUS_SUCCESS;
}

}  // extern "C"
