// Philox4x32-10 counter-based random numbers (Salmon et al., SC'11; the generator cuRAND uses),
// written once for the CPU and the CUDA kernels (every function is JEM_HD).
//
// Why counter-based: any random number is a pure function of its coordinates, so the CPU and
// the GPU, any thread order and any split of a batch across ranks draw the same values, and a
// resumed run continues the exact stream of the interrupted one.
//
// ---- Keying scheme (FIXED: checkpoints and cross-backend tests depend on it) ----------------
//   key      k0 = low 32 bits of the 64-bit run seed, k1 = high 32 bits
//   counter  c0 = element / 4      (one call gives 4 words, used by elements 4*c0 .. 4*c0+3)
//            c1 = sample           (GLOBAL sample index, independent of ranks and threads)
//            c2 = step             (e.g. the SGLD step inside one iteration)
//            c3 = (stream << 24) | (iteration & 0xFFFFFF)   (stream: RngStream, 8 bits)
//   element e uses word e % 4 of that call:
//     uniform(e)   = uint_to_uniform(word[e % 4])
//     normal(e)    = Box-Muller on a word pair: words (0,1) give normals 0 (cos) and 1 (sin),
//                    words (2,3) give normals 2 (cos) and 3 (sin); the first word of a pair is
//                    the radius uniform u1, the second the angle uniform u2.
//   Iterations wrap after 2^24 (16.7 M); a run longer than that repeats its noise.
//
// ---- Words to floats --------------------------------------------------------------------------
//   uint_to_uniform(u) = (u >> 9) * 2^-23 + 2^-24, in the OPEN interval (0, 1): log() never sees
//     0 and 1 - u never is 0. Why 23 bits and not 24: (k + 1/2) * 2^-24 needs 25 significant
//     bits near 1, so in float the top value would round to exactly 1.0 (this is why cuRAND's
//     curand_uniform is documented as (0, 1]). With 23 bits every value (2k+1) * 2^-24 is exact,
//     the values are evenly spaced and symmetric about 1/2, min 2^-24, max 1 - 2^-24.
//   uniform_pm1(u) = (u >> 8) * 2^-23 - 1, in [-1, 1), exact in float.
//   The largest |normal| is sqrt(-2 ln 2^-24) = 5.77.
//   logf/cosf/sinf differ in the last bits between glibc and CUDA: compare CPU and GPU normals
//   with a tolerance (a few ulp), uniforms and raw words bit for bit.
#pragma once

#include <math.h>  // logf, sqrtf, cosf, sinf in the global namespace, as CUDA device code has them

#include <cstdint>

#include "jem/elementwise_math.hpp"  // JEM_HD

namespace jem {

struct Philox4 {
  std::uint32_t v[4];
};

// 8-bit tag of what the numbers are for, so two uses with equal coordinates never share noise.
enum class RngStream : std::uint32_t {
  SgldNoise = 0,
  BufferReinit = 1,
  BufferDraw = 2,
  DataNoise = 3,
  Augment = 4,
  Shuffle = 5,
  Init = 6,
  Eval = 7,
};

// The raw generator: 10 rounds on a 128-bit counter with a 64-bit key (constants from the paper).
JEM_HD Philox4 philox4x32_10(std::uint32_t c0, std::uint32_t c1, std::uint32_t c2, std::uint32_t c3, std::uint32_t k0,
                             std::uint32_t k1) {
  const std::uint64_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u;
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {  // Weyl key schedule between rounds, modulo 2^32.
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    const std::uint64_t p0 = M0 * c0;  // hi0:lo0
    const std::uint64_t p1 = M1 * c2;  // hi1:lo1
    const std::uint32_t n0 = static_cast<std::uint32_t>(p1 >> 32) ^ c1 ^ k0;
    const std::uint32_t n1 = static_cast<std::uint32_t>(p1);
    const std::uint32_t n2 = static_cast<std::uint32_t>(p0 >> 32) ^ c3 ^ k1;
    const std::uint32_t n3 = static_cast<std::uint32_t>(p0);
    c0 = n0;
    c1 = n1;
    c2 = n2;
    c3 = n3;
  }
  return Philox4{{c0, c1, c2, c3}};
}

JEM_HD Philox4 philox4x32_10(const std::uint32_t c[4], std::uint32_t k0, std::uint32_t k1) {
  return philox4x32_10(c[0], c[1], c[2], c[3], k0, k1);
}

// Open interval (0, 1); see the header comment for why 23 bits.
JEM_HD float uint_to_uniform(std::uint32_t u) {
  return static_cast<float>(u >> 9) * (1.0f / 8388608.0f) + (1.0f / 16777216.0f);
}

// [-1, 1): 24 bits, exact.
JEM_HD float uniform_pm1(std::uint32_t u) { return static_cast<float>(u >> 8) * (1.0f / 8388608.0f) - 1.0f; }

struct NormalPair {
  float z0, z1;
};

// Box-Muller: u1 (radius) and u2 (angle) in (0, 1] -> two independent standard normals.
JEM_HD NormalPair box_muller(float u1, float u2) {
  const float two_pi = 6.28318530717958647692f;
  const float r = sqrtf(-2.0f * logf(u1));
  const float theta = two_pi * u2;
  return NormalPair{r * cosf(theta), r * sinf(theta)};
}

// ---- The keying scheme ----------------------------------------------------------------------------

// The four words for elements 4*block .. 4*block+3 of one (stream, iteration, step, sample).
JEM_HD Philox4 philox_block(std::uint64_t seed, RngStream s, std::uint32_t iteration, std::uint32_t step,
                            std::uint32_t sample, std::uint32_t block) {
  const std::uint32_t c3 = (static_cast<std::uint32_t>(s) << 24) | (iteration & 0xFFFFFFu);
  return philox4x32_10(block, sample, step, c3, static_cast<std::uint32_t>(seed),
                       static_cast<std::uint32_t>(seed >> 32));
}

// Raw word of one element (for index draws).
JEM_HD std::uint32_t philox_uint32(std::uint64_t seed, RngStream s, std::uint32_t iteration, std::uint32_t step,
                                   std::uint32_t sample, std::uint32_t element) {
  return philox_block(seed, s, iteration, step, sample, element / 4).v[element % 4];
}

JEM_HD float philox_uniform(std::uint64_t seed, RngStream s, std::uint32_t iteration, std::uint32_t step,
                            std::uint32_t sample, std::uint32_t element) {
  return uint_to_uniform(philox_uint32(seed, s, iteration, step, sample, element));
}

JEM_HD float philox_uniform_pm1(std::uint64_t seed, RngStream s, std::uint32_t iteration, std::uint32_t step,
                                std::uint32_t sample, std::uint32_t element) {
  return uniform_pm1(philox_uint32(seed, s, iteration, step, sample, element));
}

// All four normals of one block: what a kernel that writes 4 consecutive elements should call.
struct Normal4 {
  float z[4];
};
JEM_HD Normal4 philox_normal4(std::uint64_t seed, RngStream s, std::uint32_t iteration, std::uint32_t step,
                              std::uint32_t sample, std::uint32_t block) {
  const Philox4 w = philox_block(seed, s, iteration, step, sample, block);
  const NormalPair a = box_muller(uint_to_uniform(w.v[0]), uint_to_uniform(w.v[1]));
  const NormalPair b = box_muller(uint_to_uniform(w.v[2]), uint_to_uniform(w.v[3]));
  return Normal4{{a.z0, a.z1, b.z0, b.z1}};
}

JEM_HD float philox_normal(std::uint64_t seed, RngStream s, std::uint32_t iteration, std::uint32_t step,
                           std::uint32_t sample, std::uint32_t element) {
  const Philox4 w = philox_block(seed, s, iteration, step, sample, element / 4);
  const std::uint32_t pair = (element % 4) / 2;  // words (0,1) or (2,3)
  const NormalPair z = box_muller(uint_to_uniform(w.v[2 * pair]), uint_to_uniform(w.v[2 * pair + 1]));
  return (element % 2 == 0) ? z.z0 : z.z1;
}

}  // namespace jem
