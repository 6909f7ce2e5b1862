// Check macros for the CUDA libraries: each throws jem::Error with file:line, the failed call
// and the library's own error string. Never exit().
#pragma once

#include <cuda_runtime.h>

#include "jem/error.hpp"

#define JEM_CUDA_CHECK(call)                                                               \
  do {                                                                                     \
    const cudaError_t jem_err_ = (call);                                                   \
    if (jem_err_ != cudaSuccess)                                                           \
      JEM_FAIL("CUDA error in ", #call, ": ", cudaGetErrorName(jem_err_), " (",           \
               cudaGetErrorString(jem_err_), ")");                                         \
  } while (0)

// After a kernel launch: reports launch-configuration errors at the launch site.
#define JEM_CUDA_CHECK_LAUNCH() JEM_CUDA_CHECK(cudaGetLastError())
