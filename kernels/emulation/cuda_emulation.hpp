// Runs the CUDA backend's own kernels (kernels/*.cu) on the CPU, compiled as
// plain C++, so that a machine without a GPU executes their index math,
// grid-stride loops, reductions, shuffles and barriers (tests/emulation/).
// Included by kernel_util.cuh instead of <cuda_runtime.h> when
// JEM_KERNEL_EMULATION is defined; never part of the real (nvcc) build.
//
// The model. A launch runs its blocks one after another. The threads of a block
// are fibers on the launching OS thread (fiber.hpp): each runs until it waits at
// __syncthreads or a warp shuffle, or returns, and a barrier is released once
// every live thread it concerns has reached it; threads that wait for each
// other forever (a GPU hangs) are reported as a launch error. A thread that
// returns early drops out of its block's and its warp's barriers, as an exited
// thread does on the GPU; a shuffle that reads an exited lane or a lane outside
// its mask is reported as a launch error instead of returning garbage. The
// threads run in ascending order in even blocks and descending in odd ones.
// __shared__ variables become function-local statics: one block runs at a time,
// so one copy is the block's shared memory.
//
// What it checks: the kernels' logic (which thread writes which element, that
// reductions see every input once, that barriers and shuffles are reached by
// the threads that need them) and, in the sanitizer build, every memory access
// (AddressSanitizer sees the kernels' reads and writes of host vectors, as
// compute-sanitizer would on a GPU). What it cannot: speed, memory coalescing,
// races between blocks (they never overlap here), nvcc's code generation (FMA
// contraction, CUDA's expf / logf / sinf, which differ from glibc's in the last
// bits; the
// __CUDA_ARCH__ branches of the shared math), and the cuDNN / cuBLAS calls.
#pragma once

#if defined(__CUDACC__)
#error "cuda_emulation.hpp compiles the kernels as host C++; nvcc builds use <cuda_runtime.h>"
#endif

// The runtime's types (dim3, uint3, cudaStream_t, cudaError_t). With a host
// compiler its
// __global__ / __device__ / __host__ / __forceinline__ expand to host-valid
// code (nothing, or always_inline).
#include <cuda_runtime.h>

#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <source_location>
#include <string>
#include <type_traits>

#include "stream_capture.hpp"

// One block runs at a time: a function-local static is that block's shared
// memory.
#undef __shared__
#define __shared__ static

// The built-in index variables of the emulated CUDA thread running now: read through
// functions of cuda_emulation.cpp, which owns the thread_local values (a thread_local read
// directly from another translation unit made UndefinedBehaviorSanitizer's null check fire on
// its TLS address in GCC 12 builds). CUDA's blockDim and gridDim are dim3; uint3 here (the
// kernels only read .x, .y, .z).
namespace jem::emu {
const uint3& thread_index();
const uint3& block_index();
const uint3& block_dim();
const uint3& grid_dim();
}  // namespace jem::emu
#define threadIdx (::jem::emu::thread_index())
#define blockIdx (::jem::emu::block_index())
#define blockDim (::jem::emu::block_dim())
#define gridDim (::jem::emu::grid_dim())

namespace jem::emu {

// Runs `body` once per thread of the grid: blocks in order, the threads of each
// block concurrently. Errors (a bad configuration, an exception or a faulty
// shuffle in a thread) become the calling thread's last error, read by
// get_last_error() like cudaGetLastError().
void run_grid(const char* kernel, dim3 grid, dim3 block, const std::function<void()>& body);
// The configuration check run_grid starts with: false, with cudaErrorInvalidConfiguration as the
// last error, when a GPU would refuse the launch.
bool launch_configuration_ok(const char* kernel, dim3 grid, dim3 block);

// What a launch site names: the kernel, its configuration and stream; called with
// the kernel's arguments, which are copied, as a GPU launch copies its parameters.
template <class Kernel>
class Launch {
 public:
  Launch(const char* name, Kernel kernel, dim3 grid, dim3 block, cudaStream_t stream)
      : name_(name), kernel_(kernel), grid_(grid), block_(block), stream_(stream) {}
  template <class... Args>
  void operator()(const Args&... args) const {
    // A GPU refuses a bad configuration at the launch call, captured or not.
    if (!launch_configuration_ok(name_, grid_, block_)) return;
    enqueue(stream_, [name = name_, kernel = kernel_, grid = grid_, block = block_, ... a = args] {
      run_grid(name, grid, block, [&] { kernel(a...); });
    });
  }

 private:
  const char* name_;
  Kernel kernel_;
  dim3 grid_, block_;
  cudaStream_t stream_;
};

// The kernel name of the latest launch that passed the configuration checks (tests check with
// it which of a launcher's variants ran, as the float4 and the scalar elementwise kernels).
std::string last_launched_kernel();

// Device-side primitives (see the intrinsics below).
void syncthreads();
// `site` identifies the calling __shfl_xor_sync (its source line): lanes that meet at different
// shuffles are reported instead of exchanging unrelated values.
std::uint64_t shuffle_xor(unsigned mask, std::uint64_t bits, int lane_mask, unsigned site);

// The most blocks grid_for and the sampler's grids launch along x and y: 65535, as on a GPU,
// unless a test lowers it (GridBlockCap) so that every grid-stride loop takes several turns.
std::int64_t grid_block_cap();
class GridBlockCap {
 public:
  explicit GridBlockCap(std::int64_t cap);
  ~GridBlockCap();
  GridBlockCap(const GridBlockCap&) = delete;
  GridBlockCap& operator=(const GridBlockCap&) = delete;

 private:
  std::int64_t previous_;
};

// The runtime calls the kernels' launchers make, on host memory (every pointer
// is a host pointer here). Run at once (through enqueue: recorded while the stream captures).
cudaError_t get_last_error();
cudaError_t peek_last_error();
// Records an error as the calling thread's last one (the emulated runtime of tests/emulation
// shares this state with the kernels' launch checks).
void set_last_error(cudaError_t e, const std::string& message);
const char* error_name(cudaError_t e);
const char* error_string(cudaError_t e);
cudaError_t memset_async(void* p, int value, std::size_t bytes, cudaStream_t stream);
cudaError_t memcpy_async(void* dst, const void* src, std::size_t bytes, cudaMemcpyKind kind,
                         cudaStream_t stream);
cudaError_t malloc_async(void** p, std::size_t bytes, cudaStream_t stream);
cudaError_t free_async(void* p, cudaStream_t stream);

}  // namespace jem::emu

// ---- the device intrinsics the kernels use
// -----------------------------------------------------
inline void __syncthreads() { jem::emu::syncthreads(); }

template <class T>
T __shfl_xor_sync(unsigned mask, T value, int lane_mask,
                  std::source_location where = std::source_location::current()) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= sizeof(std::uint64_t));
  std::uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  bits = jem::emu::shuffle_xor(mask, bits, lane_mask, unsigned(where.line()));
  std::memcpy(&value, &bits, sizeof(T));
  return value;
}

int atomicCAS(int* address, int compare, int value);

inline float __int_as_float(int i) { return std::bit_cast<float>(i); }
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }

// The runtime API, redirected to the emulation (the real one is not linked).
#define cudaGetLastError ::jem::emu::get_last_error
#define cudaGetErrorName ::jem::emu::error_name
#define cudaGetErrorString ::jem::emu::error_string
#define cudaMemsetAsync ::jem::emu::memset_async
#define cudaMemcpyAsync ::jem::emu::memcpy_async
#define cudaMallocAsync ::jem::emu::malloc_async
#define cudaFreeAsync ::jem::emu::free_async
