// CPU sampler ops: replay-buffer gather (with reinit) and scatter, the SGLD step, and the
// class-conditional / squared energies. Noise comes from Philox keyed by coordinates, so the
// values do not depend on the thread count or on the backend.
#include <cmath>
#include <cstring>

#include "cpu/cpu_backend.hpp"
#include "jem/philox.hpp"
#include "jem/sgld_math.hpp"

namespace jem::cpu {

void CpuBackend::class_energy_impl(int N, int K, const float* logits, const std::int32_t* labels,
                                   float* energy, float* dlogits, float grad_scale) {
  for (int n = 0; n < N; ++n) {
    const int y = labels[n];
    JEM_CHECK(y >= 0 && y < K, "class_energy: label ", y, " of row ", n, " outside [0, ", K, ")");
    energy[n] = -logits[std::int64_t(n) * K + y];
    float* drow = dlogits + std::int64_t(n) * K;
    for (int k = 0; k < K; ++k) drow[k] = k == y ? -grad_scale : 0.0f;
  }
}

void CpuBackend::energy_sq_impl(int N, int K, const float* logits, float* energy, float* dlogits,
                                float grad_scale, float sq_scale) {
  // dE/dlogits = -softmax; the squared term scales it per row by 2 * sq_scale * E.
  energy_impl(N, K, logits, energy, dlogits, 1.0f);
  for (int n = 0; n < N; ++n) {
    const float s = grad_scale + 2.0f * sq_scale * energy[n];
    float* drow = dlogits + std::int64_t(n) * K;
    for (int k = 0; k < K; ++k) drow[k] *= s;
  }
}

void CpuBackend::buffer_gather_impl(int B, std::int64_t per, const float* buffer,
                                    const std::int32_t* index, const std::int32_t* reinit,
                                    float* out, const NoiseKey& key) {
#pragma omp parallel for schedule(static) num_threads(threads_)
  for (int b = 0; b < B; ++b) {
    float* dst = out + b * per;
    if (reinit[b]) {
      const std::uint32_t sample = key.sample_base + std::uint32_t(b);
      for (std::int64_t e = 0; e < per; ++e)
        dst[e] = philox_uniform_pm1(key.seed, RngStream::BufferReinit, key.iteration, key.step,
                                    sample, std::uint32_t(e));
    } else {
      std::memcpy(dst, buffer + std::int64_t(index[b]) * per, std::size_t(per) * sizeof(float));
    }
  }
}

void CpuBackend::buffer_scatter_impl(int B, std::int64_t per, const float* x,
                                     const std::int32_t* index, float* buffer) {
  for (int b = 0; b < B; ++b)
    std::memcpy(buffer + std::int64_t(index[b]) * per, x + b * per, std::size_t(per) * sizeof(float));
}

void CpuBackend::sgld_step_impl(int B, std::int64_t per, float* x, const float* grad,
                                float step_size, float noise_std, bool clamp, const NoiseKey& key) {
#pragma omp parallel for schedule(static) num_threads(threads_)
  for (int b = 0; b < B; ++b) {
    const std::uint32_t sample = key.sample_base + std::uint32_t(b);
    float* xb = x + b * per;
    const float* gb = grad + b * per;
    // Four normals per Philox call, as the keying scheme lays them out.
    for (std::int64_t e0 = 0; e0 < per; e0 += 4) {
      const Normal4 z = philox_normal4(key.seed, RngStream::SgldNoise, key.iteration, key.step,
                                       sample, std::uint32_t(e0 / 4));
      const std::int64_t end = std::min<std::int64_t>(4, per - e0);
      for (std::int64_t j = 0; j < end; ++j)
        xb[e0 + j] = sgld_update(xb[e0 + j], gb[e0 + j], step_size, noise_std, z.z[j], clamp);
    }
  }
}

}  // namespace jem::cpu
