// The CUDA runtime calls of cuda/*.cpp, implemented on the CPU: one emulated device ("device
// memory" is host memory, aligned like cudaMalloc's), streams and events that complete at once
// (every call here is synchronous), and the last-error slot shared with the kernels' emulation.
// Linked instead of libcudart into the emulated-device tests (tests/emulation/README.md).
#include <cuda_profiler_api.h>
#include <cuda_runtime.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>

#include "emulation/cuda_emulation.hpp"

#undef cudaGetLastError  // cuda_emulation.hpp redirects these names for the kernels' files
#undef cudaGetErrorName
#undef cudaGetErrorString
#undef cudaMemsetAsync
#undef cudaMemcpyAsync
#undef cudaMallocAsync
#undef cudaFreeAsync

namespace {

// An H200's memory and SM count, so that memory plans and launch geometry see realistic figures.
constexpr std::size_t kDeviceMemory = std::size_t(143771) << 20;
constexpr int kMultiprocessors = 132;
constexpr std::size_t kAlignment = 256;  // cudaMalloc's

struct Device {
  std::mutex mutex;
  std::map<const void*, std::size_t> allocations;  // device allocations and their sizes
  std::size_t used = 0;
  int current = 0;
};

Device& device() {
  static Device d;
  return d;
}

cudaError_t fail(cudaError_t e, const std::string& what) {
  jem::emu::set_last_error(e, what);
  return e;
}

struct Event {
  std::chrono::steady_clock::time_point at{};
  bool recorded = false;
};

}  // namespace

extern "C" {

cudaError_t cudaGetLastError(void) { return jem::emu::get_last_error(); }
cudaError_t cudaPeekAtLastError(void) { return jem::emu::peek_last_error(); }
const char* cudaGetErrorName(cudaError_t e) { return jem::emu::error_name(e); }
const char* cudaGetErrorString(cudaError_t e) { return jem::emu::error_string(e); }

cudaError_t cudaRuntimeGetVersion(int* v) {
  *v = CUDART_VERSION;
  return cudaSuccess;
}

// ---- the device
// ----------------------------------------------------------------------------------

cudaError_t cudaGetDeviceCount(int* count) {
  *count = 1;
  return cudaSuccess;
}

cudaError_t cudaSetDevice(int d) {
  if (d != 0)
    return fail(cudaErrorInvalidDevice, "device " + std::to_string(d) + " does not exist");
  device().current = d;
  return cudaSuccess;
}

cudaError_t cudaGetDevice(int* d) {
  *d = device().current;
  return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int d) {
  if (d != 0)
    return fail(cudaErrorInvalidDevice, "device " + std::to_string(d) + " does not exist");
  std::memset(prop, 0, sizeof *prop);
  std::strncpy(prop->name, "emulated CUDA device (CPU)", sizeof prop->name - 1);
  prop->major = 9;
  prop->minor = 0;
  prop->totalGlobalMem = kDeviceMemory;
  prop->multiProcessorCount = kMultiprocessors;
  prop->warpSize = 32;
  prop->maxThreadsPerBlock = 1024;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int d) {
  if (d != 0)
    return fail(cudaErrorInvalidDevice, "device " + std::to_string(d) + " does not exist");
  switch (attr) {
    case cudaDevAttrComputeCapabilityMajor:
      *value = 9;
      return cudaSuccess;
    case cudaDevAttrComputeCapabilityMinor:
      *value = 0;
      return cudaSuccess;
    case cudaDevAttrMultiProcessorCount:
      *value = kMultiprocessors;
      return cudaSuccess;
    default:
      return fail(cudaErrorInvalidValue, "attribute not emulated");
  }
}

cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes) {
  const std::lock_guard<std::mutex> lock(device().mutex);
  *total_bytes = kDeviceMemory;
  *free_bytes = kDeviceMemory - device().used;
  return cudaSuccess;
}

// ---- memory
// --------------------------------------------------------------------------------------

cudaError_t cudaMalloc(void** p, size_t bytes) {
  *p = nullptr;
  Device& dev = device();
  const std::lock_guard<std::mutex> lock(dev.mutex);
  if (bytes > kDeviceMemory - dev.used)
    return fail(cudaErrorMemoryAllocation, "out of memory (emulated device)");
  const std::size_t rounded = (bytes + kAlignment - 1) / kAlignment * kAlignment;
  *p = std::aligned_alloc(kAlignment, rounded == 0 ? kAlignment : rounded);
  if (*p == nullptr) return fail(cudaErrorMemoryAllocation, "out of host memory");
  dev.allocations[*p] = bytes;
  dev.used += bytes;
  return cudaSuccess;
}

cudaError_t cudaFree(void* p) {
  if (p == nullptr) return cudaSuccess;
  Device& dev = device();
  const std::lock_guard<std::mutex> lock(dev.mutex);
  const auto it = dev.allocations.find(p);
  if (it == dev.allocations.end())
    return fail(cudaErrorInvalidValue, "cudaFree of a pointer that cudaMalloc did not return");
  dev.used -= it->second;
  dev.allocations.erase(it);
  std::free(p);
  return cudaSuccess;
}

cudaError_t cudaMallocAsync(void** p, size_t bytes, cudaStream_t) { return cudaMalloc(p, bytes); }
cudaError_t cudaFreeAsync(void* p, cudaStream_t) { return cudaFree(p); }

cudaError_t cudaMallocHost(void** p, size_t bytes) {
  *p = std::aligned_alloc(kAlignment,
                          (bytes + kAlignment - 1) / kAlignment * kAlignment + kAlignment);
  return *p ? cudaSuccess : fail(cudaErrorMemoryAllocation, "out of host memory");
}

cudaError_t cudaHostAlloc(void** p, size_t bytes, unsigned int) { return cudaMallocHost(p, bytes); }

cudaError_t cudaFreeHost(void* p) {
  std::free(p);
  return cudaSuccess;
}

// cudaMemcpy's contract: the ranges must not overlap; std::memcpy's is the same, and
// AddressSanitizer checks it.
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind,
                            cudaStream_t) {
  if (bytes > 0) std::memcpy(dst, src, bytes);
  return cudaSuccess;
}

cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
  return cudaMemcpyAsync(dst, src, bytes, kind, nullptr);
}

cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t) {
  if (bytes > 0) std::memset(p, value, bytes);
  return cudaSuccess;
}

// ---- streams and events: all work is done when its call returns
// ----------------------------------

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned int) {
  *s = reinterpret_cast<cudaStream_t>(new int(0));
  return cudaSuccess;
}

cudaError_t cudaStreamDestroy(cudaStream_t s) {
  delete reinterpret_cast<int*>(s);
  return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaDeviceSynchronize(void) { return cudaSuccess; }
cudaError_t cudaStreamWaitEvent(cudaStream_t, cudaEvent_t, unsigned int) { return cudaSuccess; }

cudaError_t cudaEventCreate(cudaEvent_t* e) {
  *e = reinterpret_cast<cudaEvent_t>(new Event);
  return cudaSuccess;
}

cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned int) { return cudaEventCreate(e); }

cudaError_t cudaEventDestroy(cudaEvent_t e) {
  delete reinterpret_cast<Event*>(e);
  return cudaSuccess;
}

cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t) {
  auto* ev = reinterpret_cast<Event*>(e);
  ev->at = std::chrono::steady_clock::now();
  ev->recorded = true;
  return cudaSuccess;
}

cudaError_t cudaEventSynchronize(cudaEvent_t) { return cudaSuccess; }
cudaError_t cudaEventQuery(cudaEvent_t) { return cudaSuccess; }

// Host time between the records: the work between them ran synchronously, on the CPU.
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
  const auto* a = reinterpret_cast<Event*>(start);
  const auto* b = reinterpret_cast<Event*>(end);
  if (!a->recorded || !b->recorded) return fail(cudaErrorInvalidValue, "event not recorded");
  *ms = std::chrono::duration<float, std::milli>(b->at - a->at).count();
  return cudaSuccess;
}

cudaError_t cudaProfilerStart(void) { return cudaSuccess; }
cudaError_t cudaProfilerStop(void) { return cudaSuccess; }

}  // extern "C"
