// Check macros for the CUDA libraries: each throws jem::Error with file:line, the failed call
// and the library's own error string. Never exit().
//
// JEM_CUDNN_CHECK needs <cudnn.h> and JEM_CUBLAS_CHECK <cublas_v2.h> included before use; this
// header does not include them, so that files using only the runtime do not pull them in.
#pragma once

#include <cuda_runtime.h>

#include "jem/error.hpp"

// A non-sticky error (an allocation that failed) is also cleared from the thread's last-error
// slot before throwing: otherwise a caller that catches and goes on would see it again at the
// next unrelated launch check.
#define JEM_CUDA_CHECK(call)                                                               \
  do {                                                                                     \
    const cudaError_t jem_err_ = (call);                                                   \
    if (jem_err_ != cudaSuccess) {                                                         \
      (void)cudaGetLastError();                                                            \
      JEM_FAIL("CUDA error in ", #call, ": ", cudaGetErrorName(jem_err_), " (",           \
               cudaGetErrorString(jem_err_), ")");                                         \
    }                                                                                      \
  } while (0)

// After a kernel launch: reports launch-configuration errors at the launch site.
#define JEM_CUDA_CHECK_LAUNCH() JEM_CUDA_CHECK(cudaGetLastError())

#define JEM_CUDNN_CHECK(call)                                                              \
  do {                                                                                     \
    const cudnnStatus_t jem_st_ = (call);                                                  \
    if (jem_st_ != CUDNN_STATUS_SUCCESS)                                                   \
      JEM_FAIL("cuDNN error in ", #call, ": ", cudnnGetErrorString(jem_st_), " (status ",  \
               static_cast<int>(jem_st_), ")");                                            \
  } while (0)

#define JEM_CUBLAS_CHECK(call)                                                             \
  do {                                                                                     \
    const cublasStatus_t jem_st_ = (call);                                                 \
    if (jem_st_ != CUBLAS_STATUS_SUCCESS)                                                  \
      JEM_FAIL("cuBLAS error in ", #call, ": ", cublasGetStatusString(jem_st_),            \
               " (status ", static_cast<int>(jem_st_), ")");                               \
  } while (0)
