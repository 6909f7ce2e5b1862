// Device query behind `jem info` and device selection. Runtime API only (never libcuda).
#include <cuda_runtime.h>

#include <string>
#include <vector>

#include "cuda_check.hpp"
#include "jem/runtime.hpp"

namespace jem::cuda {

std::vector<CudaDeviceInfo> query_devices(std::string* why_none) {
  std::vector<CudaDeviceInfo> out;
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    // No driver or no GPU: not an error for the program, only for a run that asked for CUDA.
    if (why_none) *why_none = cudaGetErrorString(err);
    (void)cudaGetLastError();  // clear the sticky error state
    return out;
  }
  if (count == 0 && why_none) *why_none = "the CUDA runtime reports 0 devices";
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp prop{};
    JEM_CUDA_CHECK(cudaGetDeviceProperties(&prop, i));
    CudaDeviceInfo d;
    d.index = i;
    d.name = prop.name;
    d.cc_major = prop.major;
    d.cc_minor = prop.minor;
    d.memory_bytes = prop.totalGlobalMem;
    d.multiprocessors = prop.multiProcessorCount;
    out.push_back(d);
  }
  return out;
}

std::string runtime_version() {
  int v = 0;
  cudaRuntimeGetVersion(&v);
  return std::to_string(v / 1000) + "." + std::to_string((v % 1000) / 10);
}

}  // namespace jem::cuda
