// Replay-buffer gather / scatter and the SGLD step. The grid is 2-D: y walks the samples of the
// batch, x the elements of one sample, so the per-sample values (slot, reinit flag, Philox
// sample index) are read once per thread and the element loop is coalesced.
//
// Noise follows the keying scheme of philox.hpp exactly as the CPU backend lays it out:
//   * gather's reinit: element e of sample b is philox_uniform_pm1(seed, BufferReinit,
//     iteration, step, sample_base + b, e)   (integer ops and one exact scaling: bit-identical
//     to the CPU);
//   * SGLD: one thread per block of 4 consecutive elements, one philox_normal4(seed, SgldNoise,
//     iteration, step, sample_base + b, block) call giving the normals of elements 4 block ..
//     4 block + 3 (the tail block of a sample uses the first per % 4). Box-Muller runs CUDA's
//     logf / sinf / cosf, which differ from glibc's in the last bits: a few ulp, not bit-equal.
// In a CUDA Graph the key's seed, iteration and sample_base come from device memory (`live`,
// written by write_noise_key before each launch), since a captured launch keeps its arguments.
#include "jem/philox.hpp"
#include "jem/sgld_math.hpp"
#include "kernel_util.cuh"
#include "kernels.hpp"

namespace jem::kernels {
namespace {

__device__ __forceinline__ float quiet_nan() { return __int_as_float(0x7fc00000); }

// The key a launch uses: `key`, with seed, iteration and sample_base from `live` when given.
__device__ __forceinline__ NoiseKey key_in_use(const NoiseKey& key, const NoiseKey* live) {
  if (live == nullptr) return key;
  NoiseKey k = *live;
  k.step = key.step;
  return k;
}

__global__ void gather_kernel(int B, std::int64_t per, const float* buffer, std::int64_t slots,
                              const std::int32_t* index, const std::int32_t* reinit, float* out,
                              NoiseKey launch_key, const NoiseKey* live, int* error) {
  const NoiseKey key = key_in_use(launch_key, live);
  for (int b = blockIdx.y; b < B; b += gridDim.y) {
    float* dst = out + std::int64_t(b) * per;
    const std::uint32_t sample = key.sample_base + std::uint32_t(b);
    if (reinit[b]) {
      for (std::int64_t e = global_thread(); e < per; e += grid_stride())
        dst[e] = philox_uniform_pm1(key.seed, RngStream::BufferReinit, key.iteration, key.step,
                                    sample, std::uint32_t(e));
      continue;
    }
    const std::int32_t slot = index[b];
    if (slot < 0 || slot >= slots) {
      if (global_thread() == 0) report_error(error, kGatherSlot, b, slot);
      for (std::int64_t e = global_thread(); e < per; e += grid_stride()) dst[e] = quiet_nan();
      continue;
    }
    const float* src = buffer + std::int64_t(slot) * per;
    for (std::int64_t e = global_thread(); e < per; e += grid_stride()) dst[e] = src[e];
  }
}

__global__ void scatter_kernel(int B, std::int64_t per, const float* x, const std::int32_t* index,
                               float* buffer, std::int64_t slots, int* error) {
  for (int b = blockIdx.y; b < B; b += gridDim.y) {
    const std::int32_t slot = index[b];
    if (slot < 0 || slot >= slots) {  // never write outside the buffer
      if (global_thread() == 0) report_error(error, kScatterSlot, b, slot);
      continue;
    }
    const float* src = x + std::int64_t(b) * per;
    float* dst = buffer + std::int64_t(slot) * per;
    for (std::int64_t e = global_thread(); e < per; e += grid_stride()) dst[e] = src[e];
  }
}

__global__ void sgld_kernel(int B, std::int64_t per, float* x, const float* grad, float step_size,
                            float noise_std, bool clamp, NoiseKey launch_key,
                            const NoiseKey* live) {
  const NoiseKey key = key_in_use(launch_key, live);
  const std::int64_t blocks = (per + 3) / 4;
  for (int b = blockIdx.y; b < B; b += gridDim.y) {
    const std::uint32_t sample = key.sample_base + std::uint32_t(b);
    float* xb = x + std::int64_t(b) * per;
    const float* gb = grad + std::int64_t(b) * per;
    for (std::int64_t blk = global_thread(); blk < blocks; blk += grid_stride()) {
      const Normal4 z = philox_normal4(key.seed, RngStream::SgldNoise, key.iteration, key.step,
                                       sample, std::uint32_t(blk));
      const std::int64_t e0 = 4 * blk;
      const int end = per - e0 < 4 ? int(per - e0) : 4;
      for (int j = 0; j < end; ++j)
        xb[e0 + j] = sgld_update(xb[e0 + j], gb[e0 + j], step_size, noise_std, z.z[j], clamp);
    }
  }
}

__global__ void write_key_kernel(NoiseKey* dst, NoiseKey key) { *dst = key; }

// x walks elements (or Philox blocks) of a sample, y the samples.
dim3 sample_grid(int B, std::int64_t per_sample_items) {
  return dim3(grid_for(per_sample_items),
              static_cast<unsigned>(std::min<std::int64_t>(B, grid_block_cap())));
}

}  // namespace

void buffer_gather(int B, std::int64_t per, const float* buffer, std::int64_t slots,
                   const std::int32_t* index, const std::int32_t* reinit, float* out,
                   const NoiseKey& key, int* error, cudaStream_t stream,
                   const NoiseKey* live_key) {
  if (B <= 0 || per <= 0) return;
  JEM_LAUNCH(gather_kernel, sample_grid(B, per), kThreads, stream)(
      B, per, buffer, slots, index, reinit, out, key, live_key, error);
  JEM_CUDA_CHECK_LAUNCH();
}

void buffer_scatter(int B, std::int64_t per, const float* x, const std::int32_t* index,
                    float* buffer, std::int64_t slots, int* error, cudaStream_t stream) {
  if (B <= 0 || per <= 0) return;
  JEM_LAUNCH(scatter_kernel, sample_grid(B, per), kThreads, stream)(
      B, per, x, index, buffer, slots, error);
  JEM_CUDA_CHECK_LAUNCH();
}

void sgld_step(int B, std::int64_t per, float* x, const float* grad, float step_size,
               float noise_std, bool clamp, const NoiseKey& key, cudaStream_t stream,
               const NoiseKey* live_key) {
  if (B <= 0 || per <= 0) return;
  JEM_LAUNCH(sgld_kernel, sample_grid(B, (per + 3) / 4), kThreads, stream)(
      B, per, x, grad, step_size, noise_std, clamp, key, live_key);
  JEM_CUDA_CHECK_LAUNCH();
}

void write_noise_key(NoiseKey* dst, const NoiseKey& key, cudaStream_t stream) {
  JEM_LAUNCH(write_key_kernel, dim3(1), dim3(1), stream)(dst, key);
  JEM_CUDA_CHECK_LAUNCH();
}

}  // namespace jem::kernels
