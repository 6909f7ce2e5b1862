// Philox4x32-10: known answers from tests/data/philox.md, the float conversions, the statistics
// of the normals and the fixed keying scheme documented in include/jem/philox.hpp.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <set>
#include <vector>

#include "jem/philox.hpp"

using namespace jem;

namespace {

void expect_words(const Philox4& got, std::uint32_t a, std::uint32_t b, std::uint32_t c, std::uint32_t d) {
  EXPECT_EQ(got.v[0], a);
  EXPECT_EQ(got.v[1], b);
  EXPECT_EQ(got.v[2], c);
  EXPECT_EQ(got.v[3], d);
}

}  // namespace

TEST(Philox, KnownAnswerVectors) {
  expect_words(philox4x32_10(0u, 0u, 0u, 0u, 0u, 0u), 0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u);
  const std::uint32_t ones[4] = {0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu};
  expect_words(philox4x32_10(ones, 0xffffffffu, 0xffffffffu), 0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu);
  const std::uint32_t pi[4] = {0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u};
  expect_words(philox4x32_10(pi, 0xa4093822u, 0x299f31d0u), 0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u);
}

// The keying scheme, checked against the raw generator with the counters written out by hand.
TEST(Philox, KeyingSchemeMatchesDocumentation) {
  const std::uint64_t seed = 0x0123456789ABCDEFull;
  const std::uint32_t element = 4 * 7 + 2, sample = 1234, step = 17, iteration = 0x1ABCDEF;  // > 24 bits
  const Philox4 w = philox4x32_10(7u, sample, step, (5u << 24) | 0xABCDEFu, 0x89ABCDEFu, 0x01234567u);
  EXPECT_EQ(philox_uint32(seed, RngStream::Shuffle, iteration, step, sample, element), w.v[2]);
  EXPECT_EQ(philox_uniform(seed, RngStream::Shuffle, iteration, step, sample, element), uint_to_uniform(w.v[2]));
  EXPECT_EQ(philox_uniform_pm1(seed, RngStream::Shuffle, iteration, step, sample, element), uniform_pm1(w.v[2]));

  // Normals: words (0,1) -> elements 0 (cos), 1 (sin); words (2,3) -> elements 2, 3.
  const float two_pi = 6.28318530717958647692f;
  for (std::uint32_t j = 0; j < 4; ++j) {
    const std::uint32_t first = w.v[j / 2 * 2], second = w.v[j / 2 * 2 + 1];
    const float r = std::sqrt(-2.0f * std::log(uint_to_uniform(first)));
    const float th = two_pi * uint_to_uniform(second);
    const float expected = (j % 2 == 0) ? r * std::cos(th) : r * std::sin(th);
    EXPECT_FLOAT_EQ(philox_normal(seed, RngStream::Shuffle, iteration, step, sample, 4 * 7 + j), expected) << j;
    EXPECT_EQ(philox_normal4(seed, RngStream::Shuffle, iteration, step, sample, 7).z[j],
              philox_normal(seed, RngStream::Shuffle, iteration, step, sample, 4 * 7 + j));
  }
}

TEST(Philox, UniformConversionsAtExtremes) {
  // The extreme words directly: the open interval must hold at both ends, exactly.
  EXPECT_EQ(uint_to_uniform(0u), 1.0f / 16777216.0f);
  EXPECT_EQ(uint_to_uniform(0xFFFFFFFFu), 1.0f - 1.0f / 16777216.0f);
  EXPECT_LT(uint_to_uniform(0xFFFFFFFFu), 1.0f);
  EXPECT_GT(uint_to_uniform(0u), 0.0f);
  // Symmetric about 1/2: u and ~u give values that sum to exactly 1.
  for (std::uint32_t u : {0u, 1u, 0x12345678u, 0x7FFFFFFFu, 0xDEADBEEFu}) {
    EXPECT_EQ(uint_to_uniform(u) + uint_to_uniform(~u), 1.0f) << u;
  }
  EXPECT_EQ(uniform_pm1(0u), -1.0f);
  EXPECT_EQ(uniform_pm1(0xFFFFFFFFu), 1.0f - 1.0f / 8388608.0f);
  EXPECT_EQ(uniform_pm1(0x80000000u), 0.0f);
  // Largest normal radius: u1 = 2^-24 -> sqrt(48 ln 2), finite.
  const NormalPair z = box_muller(uint_to_uniform(0u), uint_to_uniform(0u));  // angle ~ 0: all in z0
  EXPECT_NEAR(z.z0, std::sqrt(48.0 * std::log(2.0)), 1e-4);
  EXPECT_TRUE(std::isfinite(z.z0) && std::isfinite(z.z1));
}

TEST(Philox, UniformNeverHitsBoundsOverManyDraws) {
  float lo = 1.0f, hi = 0.0f, lo_pm = 1.0f, hi_pm = -1.0f;
  for (std::uint32_t i = 0; i < 1000000; ++i) {
    const float u = philox_uniform(42, RngStream::DataNoise, 0, 0, i / 256, i % 256);
    const float p = philox_uniform_pm1(42, RngStream::DataNoise, 0, 0, i / 256, i % 256);
    lo = std::min(lo, u);
    hi = std::max(hi, u);
    lo_pm = std::min(lo_pm, p);
    hi_pm = std::max(hi_pm, p);
  }
  EXPECT_GT(lo, 0.0f);
  EXPECT_LT(hi, 1.0f);
  EXPECT_GE(lo_pm, -1.0f);
  EXPECT_LT(hi_pm, 1.0f);
  // 1e6 draws cover the interval: the gap at each end is ~1e-6 with overwhelming probability.
  EXPECT_LT(lo, 1e-4f);
  EXPECT_GT(hi, 1.0f - 1e-4f);
}

// Mean and variance of n = 1e6 normals and uniforms. The sample mean of N(0,1) has standard
// deviation 1/sqrt(n) = 1e-3; the sample variance has standard deviation sqrt(2/n) = 1.41e-3
// (fourth moment 3). The uniform mean has sd sqrt(1/12/n) = 2.9e-4. A 5-sigma bound is
// exceeded by chance with probability ~6e-7 (the seed is fixed, so the test is deterministic
// anyway), while a real bias (e.g. the wrong word pair, a lost sign, an angle of pi u) is far
// outside it.
TEST(Philox, NormalMomentsWithinFiveSigma) {
  const int n = 1000000;
  double sum = 0.0, sum2 = 0.0, usum = 0.0;
  int beyond2 = 0;
  for (int i = 0; i < n; ++i) {
    const auto sample = static_cast<std::uint32_t>(i / 1000), element = static_cast<std::uint32_t>(i % 1000);
    const double z = philox_normal(7, RngStream::SgldNoise, 3, 5, sample, element);
    sum += z;
    sum2 += z * z;
    beyond2 += std::fabs(z) > 2.0;
    usum += philox_uniform(7, RngStream::Init, 3, 5, sample, element);
  }
  const double mean = sum / n, var = sum2 / n - mean * mean;
  EXPECT_LT(std::fabs(mean), 5.0 / std::sqrt(double(n)));
  EXPECT_LT(std::fabs(var - 1.0), 5.0 * std::sqrt(2.0 / n));
  EXPECT_LT(std::fabs(usum / n - 0.5), 5.0 * std::sqrt(1.0 / 12.0 / n));
  // Tails: P(|z| > 2) = 0.0455; binomial sd sqrt(p(1-p)/n) = 2.1e-4.
  const double p2 = 0.04550026;
  EXPECT_LT(std::fabs(double(beyond2) / n - p2), 5.0 * std::sqrt(p2 * (1 - p2) / n));
}

// Each coordinate of the scheme changes the value.
TEST(Philox, DifferentCoordinatesGiveDifferentValues) {
  const auto base = philox_uint32(1, RngStream::SgldNoise, 2, 3, 4, 5);
  EXPECT_NE(philox_uint32(2, RngStream::SgldNoise, 2, 3, 4, 5), base);                    // seed low
  EXPECT_NE(philox_uint32(1ull | (1ull << 32), RngStream::SgldNoise, 2, 3, 4, 5), base);  // seed high
  EXPECT_NE(philox_uint32(1, RngStream::BufferReinit, 2, 3, 4, 5), base);                 // stream
  EXPECT_NE(philox_uint32(1, RngStream::SgldNoise, 9, 3, 4, 5), base);                    // iteration
  EXPECT_NE(philox_uint32(1, RngStream::SgldNoise, 2, 9, 4, 5), base);                    // step
  EXPECT_NE(philox_uint32(1, RngStream::SgldNoise, 2, 3, 9, 5), base);                    // sample
  EXPECT_NE(philox_uint32(1, RngStream::SgldNoise, 2, 3, 4, 6), base);                    // element, same block
  EXPECT_NE(philox_uint32(1, RngStream::SgldNoise, 2, 3, 4, 9), base);                    // element, next block

  // All 8 streams over a grid of coordinates: 4096 distinct points must give 4096 distinct
  // values. Each value is a pair of neighbouring words (64 bits), so a chance collision has
  // probability ~4096^2 / 2^65 = 5e-13, whereas a coordinate the scheme ignores collides surely.
  std::set<std::uint64_t> seen;
  int total = 0;
  for (std::uint32_t s = 0; s < 8; ++s)
    for (std::uint32_t it = 0; it < 4; ++it)
      for (std::uint32_t st = 0; st < 4; ++st)
        for (std::uint32_t sa = 0; sa < 4; ++sa)
          for (std::uint32_t e = 0; e < 16; e += 2) {
            const auto st_ = static_cast<RngStream>(s);
            const std::uint64_t a = philox_uint32(11, st_, it, st, sa, e);
            const std::uint64_t b = philox_uint32(11, st_, it, st, sa, e + 1);
            seen.insert((a << 32) | b);
            ++total;
          }
  EXPECT_EQ(static_cast<int>(seen.size()), total);

  // Normals too: neighbouring elements, samples and steps differ.
  const float z = philox_normal(1, RngStream::SgldNoise, 0, 0, 0, 0);
  EXPECT_NE(philox_normal(1, RngStream::SgldNoise, 0, 0, 0, 1), z);
  EXPECT_NE(philox_normal(1, RngStream::SgldNoise, 0, 0, 1, 0), z);
  EXPECT_NE(philox_normal(1, RngStream::SgldNoise, 0, 1, 0, 0), z);
  EXPECT_NE(philox_normal(1, RngStream::DataNoise, 0, 0, 0, 0), z);
}

// A value depends only on its coordinates: computing a set of elements forward, backward and
// interleaved with unrelated draws gives identical bits (no hidden state, as a split of the
// batch across threads or ranks requires).
TEST(Philox, ValueIndependentOfCallOrder) {
  const std::uint32_t samples = 8, elements = 37;
  std::vector<float> forward(samples * elements), backward(samples * elements);
  for (std::uint32_t s = 0; s < samples; ++s)
    for (std::uint32_t e = 0; e < elements; ++e)
      forward[s * elements + e] = philox_normal(99, RngStream::SgldNoise, 4, 2, 1000 + s, e);
  volatile float sink = 0.0f;
  for (std::uint32_t s = samples; s-- > 0;)
    for (std::uint32_t e = elements; e-- > 0;) {
      sink = sink + philox_normal(99, RngStream::BufferDraw, e, s, s, e);  // unrelated draws between
      backward[s * elements + e] = philox_normal(99, RngStream::SgldNoise, 4, 2, 1000 + s, e);
    }
  for (std::size_t i = 0; i < forward.size(); ++i) EXPECT_EQ(forward[i], backward[i]) << i;

  // A "rank" holding samples 1004..1007 alone sees the same numbers as the full batch.
  for (std::uint32_t s = 4; s < samples; ++s)
    for (std::uint32_t e = 0; e < elements; ++e)
      EXPECT_EQ(philox_normal(99, RngStream::SgldNoise, 4, 2, 1000 + s, e), forward[s * elements + e]);
}
