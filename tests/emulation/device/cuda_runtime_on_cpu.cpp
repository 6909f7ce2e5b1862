// The CUDA runtime calls of cuda/*.cpp, implemented on the CPU: one emulated device ("device
// memory" is host memory, aligned like cudaMalloc's), streams and events that complete at once
// (every call here is synchronous), and the last-error slot shared with the kernels' emulation.
// Stream capture records a stream's work instead (kernels/emulation/stream_capture.cpp); a graph
// is that recording, run in order by cudaGraphLaunch. Allocation and synchronisation are refused
// from a capturing thread, as CUDA refuses them, and invalidate its capture.
// Linked instead of libcudart into the emulated-device tests (tests/emulation/README.md).
#include <cuda_profiler_api.h>
#include <cuda_runtime.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <functional>
#include <vector>

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

}  // namespace

// The runtime's opaque graph types, defined here: the recorded work.
struct CUgraph_st {
  std::vector<std::function<void()>> work;
};
struct CUgraphExec_st {
  std::vector<std::function<void()>> work;
};

namespace {

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
  if (const cudaError_t e = jem::emu::refuse_if_capturing("cudaMalloc"); e != cudaSuccess) return e;
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
  if (const cudaError_t e = jem::emu::refuse_if_capturing("cudaFree"); e != cudaSuccess) return e;
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

// Graph nodes on a GPU; refused during capture here (cudaMalloc's check), as the CUDA backend
// never allocates in captured work.
cudaError_t cudaMallocAsync(void** p, size_t bytes, cudaStream_t) { return cudaMalloc(p, bytes); }
cudaError_t cudaFreeAsync(void* p, cudaStream_t) { return cudaFree(p); }

cudaError_t cudaMallocHost(void** p, size_t bytes) {
  if (const cudaError_t e = jem::emu::refuse_if_capturing("cudaMallocHost"); e != cudaSuccess)
    return e;
  *p = std::aligned_alloc(kAlignment,
                          (bytes + kAlignment - 1) / kAlignment * kAlignment + kAlignment);
  return *p ? cudaSuccess : fail(cudaErrorMemoryAllocation, "out of host memory");
}

cudaError_t cudaHostAlloc(void** p, size_t bytes, unsigned int) { return cudaMallocHost(p, bytes); }

cudaError_t cudaFreeHost(void* p) {
  if (const cudaError_t e = jem::emu::refuse_if_capturing("cudaFreeHost"); e != cudaSuccess)
    return e;
  std::free(p);
  return cudaSuccess;
}

// cudaMemcpy's contract: the ranges must not overlap; std::memcpy's is the same, and
// AddressSanitizer checks it.
// (Recorded while the stream captures: a captured copy reads its source when the graph runs.)
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind,
                            cudaStream_t stream) {
  if (bytes > 0) jem::emu::enqueue(stream, [=] { std::memcpy(dst, src, bytes); });
  return cudaSuccess;
}

cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
  if (const cudaError_t e = jem::emu::refuse_if_capturing("cudaMemcpy"); e != cudaSuccess) return e;
  return cudaMemcpyAsync(dst, src, bytes, kind, nullptr);
}

cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t stream) {
  if (bytes > 0) jem::emu::enqueue(stream, [=] { std::memset(p, value, bytes); });
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

cudaError_t cudaStreamSynchronize(cudaStream_t) {
  return jem::emu::refuse_if_capturing("cudaStreamSynchronize");
}
cudaError_t cudaDeviceSynchronize(void) {
  return jem::emu::refuse_if_capturing("cudaDeviceSynchronize");
}
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

cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t stream) {
  auto* ev = reinterpret_cast<Event*>(e);
  jem::emu::enqueue(stream, [ev] {
    ev->at = std::chrono::steady_clock::now();
    ev->recorded = true;
  });
  return cudaSuccess;
}

cudaError_t cudaEventSynchronize(cudaEvent_t) {
  return jem::emu::refuse_if_capturing("cudaEventSynchronize");
}
cudaError_t cudaEventQuery(cudaEvent_t) { return jem::emu::refuse_if_capturing("cudaEventQuery"); }

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

// ---- stream capture and graphs: a graph is the list of work its capture recorded
// ----------------------------------------------------------------------------------------------

cudaError_t cudaStreamBeginCapture(cudaStream_t stream, cudaStreamCaptureMode mode) {
  if (mode != cudaStreamCaptureModeThreadLocal)  // the only mode emulated (stream_capture.cpp)
    return fail(cudaErrorNotSupported, "the emulation captures in thread-local mode only");
  return jem::emu::begin_capture(stream);
}

cudaError_t cudaStreamEndCapture(cudaStream_t stream, cudaGraph_t* graph) {
  *graph = nullptr;
  std::vector<std::function<void()>> work;
  if (const cudaError_t e = jem::emu::end_capture(stream, &work); e != cudaSuccess) return e;
  *graph = new CUgraph_st{std::move(work)};
  return cudaSuccess;
}

cudaError_t cudaStreamIsCapturing(cudaStream_t stream, cudaStreamCaptureStatus* status) {
  *status = jem::emu::capturing(stream) ? cudaStreamCaptureStatusActive
                                        : cudaStreamCaptureStatusNone;
  return cudaSuccess;
}

cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t graph, unsigned long long) {
  if (graph == nullptr) return fail(cudaErrorInvalidValue, "cudaGraphInstantiate of no graph");
  *exec = new CUgraphExec_st{graph->work};
  return cudaSuccess;
}

// Runs the recorded work in order (or records it, when `stream` captures); the first error that
// work raises is returned, as a GPU reports a failed kernel of the graph. (An error already
// pending before the launch is left for its own reader.)
cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t stream) {
  if (exec == nullptr) return fail(cudaErrorInvalidValue, "cudaGraphLaunch of no graph");
  const cudaError_t pending = jem::emu::peek_last_error();
  for (const auto& work : exec->work) {
    jem::emu::enqueue(stream, work);
    if (const cudaError_t e = jem::emu::peek_last_error(); e != pending) return e;
  }
  return cudaSuccess;
}

cudaError_t cudaGraphDestroy(cudaGraph_t graph) {
  delete graph;
  return cudaSuccess;
}

cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec) {
  delete exec;
  return cudaSuccess;
}

}  // extern "C"
