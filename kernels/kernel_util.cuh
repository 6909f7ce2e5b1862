// Helpers shared by the .cu files: launch geometry, warp reductions, device error reports.
#pragma once

#if defined(JEM_KERNEL_EMULATION)
#include "emulation/cuda_emulation.hpp"  // the kernels compiled as host C++ (tests/emulation/)
#else
#include <cuda_runtime.h>
#endif

#include <algorithm>
#include <cstdint>
#include <initializer_list>

#include "cuda_check.hpp"

// Every launch site: JEM_LAUNCH(kernel, grid, block, stream)(arguments...), no dynamic shared
// memory. nvcc builds get the <<<...>>> launch; the emulation build runs the grid on the CPU.
#if defined(JEM_KERNEL_EMULATION)
#define JEM_LAUNCH(kernel, grid, block, stream) \
  ::jem::emu::Launch(#kernel, kernel, grid, block, stream)
#else
#define JEM_LAUNCH(kernel, grid, block, stream) kernel<<<grid, block, 0, stream>>>
#endif

namespace jem::kernels {

constexpr int kThreads = 256;  // threads per block of the elementwise kernels
constexpr int kWarp = 32;

// The most blocks a grid-stride launch uses along x (and the sampler's along y): past a few
// blocks per SM more blocks only add scheduling work, the loop covers the rest. The emulation's
// tests lower it, so that every grid-stride loop there takes several turns.
#if defined(JEM_KERNEL_EMULATION)
inline std::int64_t grid_block_cap() { return ::jem::emu::grid_block_cap(); }
#else
constexpr std::int64_t grid_block_cap() { return 65535; }
#endif

// Blocks for a grid-stride loop over n elements.
inline unsigned grid_for(std::int64_t n, int threads = kThreads) {
  const std::int64_t blocks = (n + threads - 1) / threads;
  return static_cast<unsigned>(std::clamp<std::int64_t>(blocks, 1, grid_block_cap()));
}

// Whether n floats at every pointer (null pointers aside) can be read and written as float4: each
// address 16-byte aligned and n a multiple of 4. The memory-bound passes then load 16 bytes at a
// time: with one float per thread too few bytes are in flight to fill HBM. On an H200, on 42 MB
// tensors, the scalar bias + LeakyReLU, bias + residual and LeakyReLU backward + add passes moved
// 1.5, 2.2 and 3.2 TB/s, their float4 versions 3.9-4.0 TB/s (gpu-check's kernel profile; README,
// "On a GPU").
inline bool vectorizable4(std::int64_t n, std::initializer_list<const void*> pointers) {
  if (n % 4 != 0) return false;
  for (const void* p : pointers)
    if (reinterpret_cast<std::uintptr_t>(p) % 16 != 0) return false;
  return true;
}

// Index and stride of a 1-D grid-stride loop, in 64 bits (tensors may exceed 2^31 elements).
__device__ __forceinline__ std::int64_t global_thread() {
  return std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ std::int64_t grid_stride() { return std::int64_t(gridDim.x) * blockDim.x; }

// Butterfly reductions: every lane ends with the same value, and because a + b == b + a in IEEE
// arithmetic the pairing is symmetric, so the result depends only on the 32 inputs (a fixed
// order: deterministic run to run).
__device__ __forceinline__ float warp_sum(float v) {
  for (int o = kWarp / 2; o > 0; o /= 2) v += __shfl_xor_sync(0xFFFFFFFFu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int o = kWarp / 2; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(0xFFFFFFFFu, v, o));
  return v;
}
__device__ __forceinline__ int warp_min(int v) {
  for (int o = kWarp / 2; o > 0; o /= 2) v = min(v, __shfl_xor_sync(0xFFFFFFFFu, v, o));
  return v;
}

// Records the first device-side error (see kernels.hpp): {code, row, value}.
__device__ __forceinline__ void report_error(int* error, int code, int row, int value) {
  if (atomicCAS(error, 0, code) == 0) {
    error[1] = row;
    error[2] = value;
  }
}

}  // namespace jem::kernels
