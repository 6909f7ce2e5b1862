// The CPU backend's sampler ops (sgld_step, buffer_gather / buffer_scatter, the class and squared
// energies) and optimizer ops (adam_step, sgd_step, sum_squares, scale), each proved against an
// independent computation written here:
//   * the noise ops against the documented Philox keying scheme (include/jem/philox.hpp), called
//     element by element, bit for bit;
//   * the energies against naive loops in double and against central finite differences;
//   * the optimizers against PyTorch's documented algorithms (torch.optim.Adam / AdamW / SGD),
//     re-derived in double, with tolerances derived from float32 rounding.
// No expected value in this file was copied from program output.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "jem/backend.hpp"
#include "jem/philox.hpp"
#include "test_support.hpp"

namespace jem::test {
namespace {

using Vec = std::vector<float>;
using IVec = std::vector<std::int32_t>;

// Unit roundoff of float32 and of double.
constexpr double kU = 0x1p-24;
constexpr double kUd = 0x1p-53;

// A seed whose two 32-bit halves differ, and key coordinates that are all distinct and non-zero,
// so that any swap of key words or counter words changes the noise.
constexpr std::uint64_t kSeed = 0x0123456789ABCDEFull;
constexpr NoiseKey kKey{kSeed, 7, 3, 11};

Tensor i32_tensor(Backend& be, const IVec& v) {
  Tensor t = be.empty(Shape{std::int64_t(v.size())}, DType::I32);
  be.upload_i32(v.data(), t);
  return t;
}

// Bit-for-bit equality of two float vectors (NaN-safe, distinguishes -0 from +0), naming the
// first differing element.
::testing::AssertionResult bitwise_equal(const Vec& got, const Vec& want) {
  if (got.size() != want.size())
    return ::testing::AssertionFailure() << "sizes " << got.size() << " vs " << want.size();
  for (std::size_t i = 0; i < got.size(); ++i)
    if (std::bit_cast<std::uint32_t>(got[i]) != std::bit_cast<std::uint32_t>(want[i]))
      return ::testing::AssertionFailure()
             << "element " << i << ": got " << got[i] << ", want " << want[i];
  return ::testing::AssertionSuccess();
}

// The expected SGLD step, written from the op's documentation: x - a*g + s*z with
// z = philox_normal(seed, SgldNoise, iteration, step, sample_base + b, e), evaluated in float in
// the documented order. The project builds with -std=c++20 (no GNU extensions), so GCC does not
// contract a*b+c into an FMA and the same float expression rounds identically here and in the
// library: bitwise equality is the right check.
Vec sgld_reference(const Vec& x, const Vec& g, int B, float a, float s, bool clamp,
                   const NoiseKey& key) {
  const std::size_t per = x.size() / std::size_t(B);
  Vec y(x.size());
  for (int b = 0; b < B; ++b)
    for (std::size_t e = 0; e < per; ++e) {
      const std::size_t i = std::size_t(b) * per + e;
      const float z = philox_normal(key.seed, RngStream::SgldNoise, key.iteration, key.step,
                                    key.sample_base + std::uint32_t(b), std::uint32_t(e));
      float v = x[i] - a * g[i] + s * z;
      if (clamp) v = std::min(1.0f, std::max(-1.0f, v));
      y[i] = v;
    }
  return y;
}

// ================================================================================================
// SGLD
// ================================================================================================

// philox_normal4 (what a kernel writing four elements calls) and philox_normal (one element) are
// two code paths to the same numbers: Box-Muller on the same word pairs. They must agree bit for
// bit, and the tests below may use either.
TEST(SamplerOps, PhiloxNormal4MatchesPhiloxNormalBitwise) {
  for (std::uint32_t sample : {0u, 1u, 12345u})
    for (std::uint32_t block = 0; block < 64; ++block) {
      const Normal4 z4 = philox_normal4(kSeed, RngStream::SgldNoise, 7, 3, sample, block);
      for (std::uint32_t j = 0; j < 4; ++j) {
        const float z = philox_normal(kSeed, RngStream::SgldNoise, 7, 3, sample, 4 * block + j);
        ASSERT_EQ(std::bit_cast<std::uint32_t>(z4.z[j]), std::bit_cast<std::uint32_t>(z))
            << "sample " << sample << " block " << block << " word " << j;
      }
    }
}

TEST(SamplerOps, SgldStepEqualsFormulaWithPhiloxNoise) {
  auto be = make_cpu_backend(2);
  const int B = 3;
  const Shape shape{B, 2, 4, 4};
  const Vec x = random_vector(shape.numel(), 1, -0.5f, 0.5f);
  const Vec g = random_vector(shape.numel(), 2, -3.0f, 3.0f);
  const float a = 0.01f, s = 0.05f;
  Tensor tx = be->from_vector(x, shape), tg = be->from_vector(g, shape);
  be->sgld_step(tx, tg, a, s, /*clamp=*/false, kKey);
  const Vec got = be->to_vector(tx);
  EXPECT_TRUE(bitwise_equal(got, sgld_reference(x, g, B, a, s, false, kKey)));
  EXPECT_TRUE(bitwise_equal(be->to_vector(tg), g)) << "grad must not be modified";

  // Each key coordinate matters: the same call with any one coordinate changed gives other noise.
  for (int which = 0; which < 4; ++which) {
    NoiseKey k = kKey;
    if (which == 0) k.seed ^= 1ull << 40;  // the high key word
    if (which == 1) k.iteration += 1;
    if (which == 2) k.step += 1;
    if (which == 3) k.sample_base += 1;
    Tensor t2 = be->from_vector(x, shape);
    be->sgld_step(t2, tg, a, s, false, k);
    const Vec other = be->to_vector(t2);
    std::size_t same = 0;
    for (std::size_t i = 0; i < other.size(); ++i) same += other[i] == got[i];
    EXPECT_LT(same, other.size() / 10) << "key coordinate " << which << " ignored";
  }
}

// Sample sizes that are not a multiple of 4 (the tail of the last Philox block) and tiny ones.
TEST(SamplerOps, SgldStepSampleSizeNotMultipleOfFour) {
  auto be = make_cpu_backend(2);
  for (const Shape& shape : {Shape{4, 1, 3, 3}, Shape{5, 1}, Shape{3, 2}, Shape{2, 7}, Shape{3, 1, 1, 13}}) {
    const int B = int(shape[0]);
    const Vec x = random_vector(shape.numel(), 3, -0.5f, 0.5f);
    const Vec g = random_vector(shape.numel(), 4, -1.0f, 1.0f);
    Tensor tx = be->from_vector(x, shape), tg = be->from_vector(g, shape);
    be->sgld_step(tx, tg, 0.02f, 0.1f, false, kKey);
    EXPECT_TRUE(bitwise_equal(be->to_vector(tx), sgld_reference(x, g, B, 0.02f, 0.1f, false, kKey)))
        << "shape " << shape.str();

    // x = 0, a = 0, s = 1 leaves exactly the noise: element by element philox_normal.
    Tensor tz = be->from_vector(Vec(x.size(), 0.0f), shape);
    be->sgld_step(tz, tg, 0.0f, 1.0f, false, kKey);
    const Vec z = be->to_vector(tz);
    const std::size_t per = x.size() / B;
    for (int b = 0; b < B; ++b)
      for (std::size_t e = 0; e < per; ++e)
        ASSERT_EQ(z[b * per + e], philox_normal(kSeed, RngStream::SgldNoise, kKey.iteration,
                                                kKey.step, kKey.sample_base + b, std::uint32_t(e)))
            << "shape " << shape.str() << " sample " << b << " element " << e;
  }
}

TEST(SamplerOps, SgldStepClampKeepsDataRange) {
  auto be = make_cpu_backend(2);
  const Shape shape{4, 3, 5, 5};
  const int B = 4;
  // x near the edges and large noise: many values land outside [-1, 1], many inside.
  const Vec x = random_vector(shape.numel(), 5, -1.0f, 1.0f);
  const Vec g = random_vector(shape.numel(), 6, -1.0f, 1.0f);
  const float a = 0.1f, s = 0.5f;
  Tensor tx = be->from_vector(x, shape), tg = be->from_vector(g, shape);
  be->sgld_step(tx, tg, a, s, /*clamp=*/true, kKey);
  const Vec got = be->to_vector(tx);
  const Vec unclamped = sgld_reference(x, g, B, a, s, false, kKey);
  std::size_t inside = 0, below = 0, above = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    ASSERT_GE(got[i], -1.0f) << i;
    ASSERT_LE(got[i], 1.0f) << i;
    const float u = unclamped[i];
    if (u < -1.0f) {
      ++below;
      ASSERT_EQ(got[i], -1.0f) << i;
    } else if (u > 1.0f) {
      ++above;
      ASSERT_EQ(got[i], 1.0f) << i;
    } else {
      ++inside;
      ASSERT_EQ(std::bit_cast<std::uint32_t>(got[i]), std::bit_cast<std::uint32_t>(u)) << i;
    }
  }
  // The data exercise all three branches.
  EXPECT_GT(inside, 0u);
  EXPECT_GT(below, 0u);
  EXPECT_GT(above, 0u);
  EXPECT_TRUE(bitwise_equal(got, sgld_reference(x, g, B, a, s, true, kKey)));
}

// With no noise, a step along the gradient of f(x) = 1/2 sum_i c_i (x_i - t_i)^2 (gradient
// c (x - t)) with a c_i < 1 contracts every coordinate towards t: f must decrease, and each
// x_i - t_i must be (1 - a c_i)(x_i - t_i) up to float rounding.
TEST(SamplerOps, SgldStepWithoutNoiseDescendsQuadratic) {
  auto be = make_cpu_backend(2);
  const Shape shape{2, 3, 4, 4};
  const std::size_t n = shape.numel();
  const Vec x = random_vector(n, 7, -1.0f, 1.0f);
  const Vec t = random_vector(n, 8, -0.5f, 0.5f);
  const Vec c = random_vector(n, 9, 0.5f, 4.0f);
  auto f = [&](const Vec& v) {
    double s = 0;
    for (std::size_t i = 0; i < n; ++i) s += 0.5 * c[i] * (double(v[i]) - t[i]) * (double(v[i]) - t[i]);
    return s;
  };
  Vec g(n);
  for (std::size_t i = 0; i < n; ++i) g[i] = c[i] * (x[i] - t[i]);
  const float a = 0.05f;  // a * max c = 0.2 < 1
  Tensor tx = be->from_vector(x, shape), tg = be->from_vector(g, shape);
  be->sgld_step(tx, tg, a, /*noise_std=*/0.0f, false, kKey);
  const Vec y = be->to_vector(tx);
  EXPECT_LT(f(y), f(x));
  for (std::size_t i = 0; i < n; ++i) {
    const double want = t[i] + (1.0 - double(a) * c[i]) * (double(x[i]) - t[i]);
    // Roundings: g (2 ops), a*g, the subtraction; each <= u of values <= ~8 in magnitude.
    ASSERT_NEAR(y[i], want, 64 * kU) << i;
  }
}

// The noise of sample b is keyed by the GLOBAL index sample_base + b: a batch of 5 stepped at
// once equals the same batch stepped as 2 + 3 with sample_base 0 and 2.
TEST(SamplerOps, SgldNoiseIndependentOfBatchSplit) {
  auto be = make_cpu_backend(2);
  const Shape shape{5, 1, 3, 3};
  const Vec x = random_vector(shape.numel(), 10, -0.5f, 0.5f);
  const Vec g = random_vector(shape.numel(), 11, -1.0f, 1.0f);
  const NoiseKey whole{kSeed, 7, 3, 0};
  Tensor tx = be->from_vector(x, shape), tg = be->from_vector(g, shape);
  be->sgld_step(tx, tg, 0.01f, 0.2f, true, whole);

  Tensor sx = be->from_vector(x, shape), sg = be->from_vector(g, shape);
  be->sgld_step(sx.slice(0, 2), sg.slice(0, 2), 0.01f, 0.2f, true, NoiseKey{kSeed, 7, 3, 0});
  be->sgld_step(sx.slice(2, 5), sg.slice(2, 5), 0.01f, 0.2f, true, NoiseKey{kSeed, 7, 3, 2});
  EXPECT_TRUE(bitwise_equal(be->to_vector(sx), be->to_vector(tx)));

  // ... and a second batch that forgot its sample_base would NOT match.
  Tensor wx = be->from_vector(x, shape);
  be->sgld_step(wx.slice(0, 2), sg.slice(0, 2), 0.01f, 0.2f, true, NoiseKey{kSeed, 7, 3, 0});
  be->sgld_step(wx.slice(2, 5), sg.slice(2, 5), 0.01f, 0.2f, true, NoiseKey{kSeed, 7, 3, 0});
  EXPECT_FALSE(bitwise_equal(be->to_vector(wx), be->to_vector(tx)));
}

TEST(SamplerOps, SgldAndGatherSameForOneAndTwoThreads) {
  auto be1 = make_cpu_backend(1);
  auto be2 = make_cpu_backend(2);
  const Shape shape{7, 3, 5, 5};  // odd batch, 75 elements per sample
  const Vec x = random_vector(shape.numel(), 12, -1.0f, 1.0f);
  const Vec g = random_vector(shape.numel(), 13, -1.0f, 1.0f);
  Vec r1, r2;
  for (Backend* be : {be1.get(), be2.get()}) {
    Tensor tx = be->from_vector(x, shape), tg = be->from_vector(g, shape);
    be->sgld_step(tx, tg, 0.01f, 0.1f, true, kKey);
    (be == be1.get() ? r1 : r2) = be->to_vector(tx);
  }
  EXPECT_TRUE(bitwise_equal(r1, r2));

  const Shape bshape{9, 3, 5, 5};
  const Vec buf = random_vector(bshape.numel(), 14);
  const IVec index{8, 0, 3, 3, 5, 1, 7};
  const IVec reinit{1, 0, 1, 0, 0, 1, 1};
  Vec o1, o2;
  for (Backend* be : {be1.get(), be2.get()}) {
    Tensor out = be->empty(shape);
    be->buffer_gather(be->from_vector(buf, bshape), i32_tensor(*be, index), i32_tensor(*be, reinit),
                      out, kKey);
    (be == be1.get() ? o1 : o2) = be->to_vector(out);
  }
  EXPECT_TRUE(bitwise_equal(o1, o2));
}

TEST(SamplerOps, SgldStepRejectsBadShapes) {
  auto be = make_cpu_backend(1);
  Tensor x = be->empty({2, 3}), g = be->empty({3, 2});
  EXPECT_THROW(be->sgld_step(x, g, 0.1f, 0.1f, false, kKey), Error);
  Tensor gi = be->empty({2, 3}, DType::I32);
  EXPECT_THROW(be->sgld_step(x, gi, 0.1f, 0.1f, false, kKey), Error);
}

// ================================================================================================
// Replay buffer
// ================================================================================================

TEST(SamplerOps, BufferGatherCopiesOrReinitializes) {
  auto be = make_cpu_backend(2);
  const int S = 10, B = 6;
  const Shape bshape{S, 1, 3, 3};  // 9 elements per sample: the last Philox block is partial
  const Shape oshape{B, 1, 3, 3};
  const std::size_t per = 9;
  const Vec buf = random_vector(bshape.numel(), 20);
  const IVec index{7, 2, 9, 0, 2, 4};
  const IVec reinit{0, 1, 0, 1, 0, 1};
  Tensor out = be->from_vector(Vec(oshape.numel(), 42.0f), oshape);  // stale values to overwrite
  be->buffer_gather(be->from_vector(buf, bshape), i32_tensor(*be, index), i32_tensor(*be, reinit),
                    out, kKey);
  const Vec got = be->to_vector(out);
  for (int b = 0; b < B; ++b)
    for (std::size_t e = 0; e < per; ++e) {
      const float v = got[b * per + e];
      if (reinit[b]) {
        const float want = philox_uniform_pm1(kSeed, RngStream::BufferReinit, kKey.iteration,
                                              kKey.step, kKey.sample_base + b, std::uint32_t(e));
        ASSERT_EQ(std::bit_cast<std::uint32_t>(v), std::bit_cast<std::uint32_t>(want))
            << "sample " << b << " element " << e;
        ASSERT_GE(v, -1.0f);
        ASSERT_LT(v, 1.0f);
      } else {
        ASSERT_EQ(std::bit_cast<std::uint32_t>(v),
                  std::bit_cast<std::uint32_t>(buf[std::size_t(index[b]) * per + e]))
            << "sample " << b << " element " << e;
      }
    }

  // Many reinitialised rows: every value in [-1, 1), and the values fill the interval.
  const int B2 = 32;
  const Shape o2{B2, 3, 4, 4};
  Tensor out2 = be->empty(o2);
  be->buffer_gather(be->from_vector(Vec(std::size_t(S) * 48, 0.0f), Shape{S, 3, 4, 4}),
                    i32_tensor(*be, IVec(B2, 0)), i32_tensor(*be, IVec(B2, 1)), out2, kKey);
  const Vec r = be->to_vector(out2);
  EXPECT_GE(*std::min_element(r.begin(), r.end()), -1.0f);
  EXPECT_LT(*std::max_element(r.begin(), r.end()), 1.0f);
  EXPECT_LT(*std::min_element(r.begin(), r.end()), -0.99f);
  EXPECT_GT(*std::max_element(r.begin(), r.end()), 0.99f);
}

TEST(SamplerOps, BufferGatherRejectsBadIndexTensors) {
  auto be = make_cpu_backend(1);
  const Tensor buf = be->empty({5, 2, 2});
  const Tensor out = be->empty({3, 2, 2});
  const Tensor good = i32_tensor(*be, {0, 1, 2});
  const Tensor zeros = i32_tensor(*be, {0, 0, 0});
  const Tensor f32 = be->from_vector({0, 1, 2}, Shape{3});
  const Tensor short_i = i32_tensor(*be, {0, 1});
  const Tensor long_i = i32_tensor(*be, {0, 1, 2, 3});
  EXPECT_NO_THROW(be->buffer_gather(buf, good, zeros, out, kKey));
  EXPECT_THROW(be->buffer_gather(buf, f32, zeros, out, kKey), Error);
  EXPECT_THROW(be->buffer_gather(buf, short_i, zeros, out, kKey), Error);
  EXPECT_THROW(be->buffer_gather(buf, long_i, zeros, out, kKey), Error);
  EXPECT_THROW(be->buffer_gather(buf, good, f32, out, kKey), Error);
  EXPECT_THROW(be->buffer_gather(buf, good, short_i, out, kKey), Error);
  EXPECT_THROW(be->buffer_gather(buf, good, Tensor(), out, kKey), Error);
  // Samples of different sizes.
  EXPECT_THROW(be->buffer_gather(be->empty({5, 2, 3}), good, zeros, out, kKey), Error);
  // Slots outside the buffer.
  EXPECT_THROW(be->buffer_gather(buf, i32_tensor(*be, {0, 5, 1}), zeros, out, kKey), Error);
  EXPECT_THROW(be->buffer_gather(buf, i32_tensor(*be, {0, -1, 1}), zeros, out, kKey), Error);
  // ... but a reinitialised row never reads its slot, so its index is not checked.
  EXPECT_NO_THROW(be->buffer_gather(buf, i32_tensor(*be, {0, 99, 1}), i32_tensor(*be, {0, 1, 0}),
                                    out, kKey));
  // An empty buffer (no slot to read; its per-sample size is undefined).
  EXPECT_THROW(be->buffer_gather(be->empty({0, 2, 2}), good, zeros, out, kKey), Error);
  // Scatter checks its index the same way.
  EXPECT_THROW(be->buffer_scatter(out, f32, buf), Error);
  EXPECT_THROW(be->buffer_scatter(out, short_i, buf), Error);
  EXPECT_THROW(be->buffer_scatter(out, i32_tensor(*be, {0, 1, 5}), buf), Error);
}

TEST(SamplerOps, BufferScatterWritesExactlyTheDrawnSlots) {
  auto be = make_cpu_backend(2);
  const int S = 12, B = 4;
  const std::size_t per = 2 * 3 * 3;
  const Shape bshape{S, 2, 3, 3}, xshape{B, 2, 3, 3};
  const Vec buf0 = random_vector(bshape.numel(), 30, 2.0f, 3.0f);  // disjoint from x's range
  const Vec x = random_vector(xshape.numel(), 31, -1.0f, 1.0f);
  const IVec index{5, 0, 11, 7};
  Tensor tb = be->from_vector(buf0, bshape);
  be->buffer_scatter(be->from_vector(x, xshape), i32_tensor(*be, index), tb);
  const Vec got = be->to_vector(tb);
  Vec want = buf0;
  for (int b = 0; b < B; ++b)
    std::copy(x.begin() + b * per, x.begin() + (b + 1) * per, want.begin() + index[b] * per);
  EXPECT_TRUE(bitwise_equal(got, want));

  // Gathering the same slots back returns x exactly.
  Tensor back = be->empty(xshape);
  be->buffer_gather(tb, i32_tensor(*be, index), i32_tensor(*be, IVec(B, 0)), back, kKey);
  EXPECT_TRUE(bitwise_equal(be->to_vector(back), x));
}

// ================================================================================================
// Class energy and squared energy
// ================================================================================================

TEST(SamplerOps, ClassEnergyMatchesNaiveLoop) {
  auto be = make_cpu_backend(2);
  const int N = 6, K = 10;
  const Vec logits = random_vector(N * K, 40, -5.0f, 5.0f);
  const IVec labels{3, 0, 9, 9, 4, 1};
  const float scale = 0.7f;
  Tensor tl = be->from_vector(logits, Shape{N, K});
  Tensor te = be->from_vector(Vec(N, 99.0f), Shape{N});
  Tensor td = be->from_vector(Vec(N * K, 99.0f), Shape{N, K});  // stale: must be overwritten
  be->class_energy_forward_backward(tl, i32_tensor(*be, labels), te, td, scale);
  Vec e_want(N), d_want(N * K, 0.0f);
  for (int n = 0; n < N; ++n) {
    e_want[n] = -logits[n * K + labels[n]];
    d_want[n * K + labels[n]] = -scale;
  }
  EXPECT_TRUE(bitwise_equal(be->to_vector(te), e_want));
  EXPECT_TRUE(bitwise_equal(be->to_vector(td), d_want));
}

TEST(SamplerOps, ClassEnergyRejectsBadLabels) {
  auto be = make_cpu_backend(1);
  const int N = 3, K = 4;
  Tensor tl = be->from_vector(random_vector(N * K, 41), Shape{N, K});
  Tensor te = be->empty({N}), td = be->empty({N, K});
  EXPECT_NO_THROW(be->class_energy_forward_backward(tl, i32_tensor(*be, {0, 3, 2}), te, td, 1.0f));
  EXPECT_THROW(be->class_energy_forward_backward(tl, i32_tensor(*be, {0, 4, 2}), te, td, 1.0f), Error);
  EXPECT_THROW(be->class_energy_forward_backward(tl, i32_tensor(*be, {0, 1, -1}), te, td, 1.0f), Error);
  EXPECT_THROW(be->class_energy_forward_backward(tl, i32_tensor(*be, {0, 1}), te, td, 1.0f), Error);
  EXPECT_THROW(be->class_energy_forward_backward(tl, be->from_vector({0, 1, 2}, Shape{3}), te, td, 1.0f),
               Error);
}

// E[n] = -logsumexp(logits[n]) in double, shifted by the row maximum.
double energy_ref(const double* row, int K) {
  double m = row[0];
  for (int k = 1; k < K; ++k) m = std::max(m, row[k]);
  double s = 0;
  for (int k = 0; k < K; ++k) s += std::exp(row[k] - m);
  return -(m + std::log(s));
}

TEST(SamplerOps, EnergySqMatchesAnalyticGradientAndFiniteDifferences) {
  auto be = make_cpu_backend(2);
  const int N = 5, K = 7;
  Vec logits = random_vector(N * K, 50, -3.0f, 3.0f);
  for (int k = 0; k < K; ++k) logits[3 * K + k] += 40.0f;  // a large row: E ~ -43, E^2 ~ 1800
  struct Case {
    float grad_scale, sq_scale;
  };
  // (0.6, 0.25): the squared term's factor 2 q E (~ -2) outweighs and flips the sign of the
  // linear one; (-1, 0.1) a negative weight; (1, 0) must reduce to the plain energy.
  for (const Case c : {Case{0.6f, 0.25f}, Case{-1.0f, 0.1f}, Case{1.0f, 0.0f}}) {
    SCOPED_TRACE(::testing::Message() << "grad_scale " << c.grad_scale << " sq_scale " << c.sq_scale);
    Tensor tl = be->from_vector(logits, Shape{N, K});
    Tensor te = be->empty({N}), td = be->from_vector(Vec(N * K, 99.0f), Shape{N, K});
    be->energy_sq_forward_backward(tl, te, td, c.grad_scale, c.sq_scale);
    const Vec e = be->to_vector(te), d = be->to_vector(td);

    std::vector<double> L(logits.begin(), logits.end());
    const double g = c.grad_scale, q = c.sq_scale;
    // Objective sum_n (g E_n + q E_n^2), in double.
    auto objective = [&](const std::vector<double>& l) {
      double s = 0;
      for (int n = 0; n < N; ++n) {
        const double En = energy_ref(&l[n * K], K);
        s += g * En + q * En * En;
      }
      return s;
    };
    for (int n = 0; n < N; ++n) {
      const double En = energy_ref(&L[n * K], K);
      // The op rounds E once to float after a double log-sum-exp: a few u of |E| (>= 1 for the
      // shift by the maximum).
      EXPECT_NEAR(e[n], En, 16 * kU * std::max(1.0, std::fabs(En))) << "row " << n;
      for (int k = 0; k < K; ++k) {
        const double p = std::exp(L[n * K + k] + En);  // softmax = exp(l - lse)
        const double want = (g + 2 * q * En) * -p;     // d(gE + qE^2)/dl = (g + 2qE) * (-softmax)
        // The op forms softmax (rounded to float), the factor g + 2 q E in float (which may cancel:
        // its error is relative to |g| + 2|q||E|, not to the result) and their product: a few
        // roundings, each <= u of p (|g| + 2|q||E|). 16 u covers them.
        const double tol = 16 * kU * (std::fabs(g) + 2 * std::fabs(q) * std::fabs(En)) * p + 1e-30;
        EXPECT_NEAR(d[n * K + k], want, tol) << "row " << n << " class " << k;

        // Central finite difference of the double objective. Step h = 1e-4: the truncation error
        // is h^2/6 |L'''|, and with |E'| <= 1, |E''| <= 1/4, |E'''| <= 1/(6 sqrt 3) along one
        // logit, |L'''| <= 0.1|g| + |q| (0.2|E| + 1.5) < 3 here, so < 1e-8; the rounding error of
        // the double objective (|L| < 1e3) over 2h is < 1e-9. The backend's float gradient
        // carries the analytic tolerance above; 1e-7 on top covers the finite difference.
        const double h = 1e-4;
        std::vector<double> lp = L, lm = L;
        lp[n * K + k] += h;
        lm[n * K + k] -= h;
        const double fd = (objective(lp) - objective(lm)) / (2 * h);
        EXPECT_NEAR(d[n * K + k], fd, tol + 1e-7) << "finite difference, row " << n << " class " << k;
      }
    }
  }
}

TEST(SamplerOps, EnergySqRejectsBadShapes) {
  auto be = make_cpu_backend(1);
  Tensor tl = be->empty({3, 4});
  EXPECT_THROW(be->energy_sq_forward_backward(tl, be->empty({2}), be->empty({3, 4}), 1, 1), Error);
  EXPECT_THROW(be->energy_sq_forward_backward(tl, be->empty({3}), be->empty({4, 3}), 1, 1), Error);
}

// ================================================================================================
// Optimizers
// ================================================================================================

// torch.optim.Adam / AdamW as documented (https://pytorch.org/docs/stable/generated/
// torch.optim.Adam.html and ...AdamW.html), in double, for one parameter:
//   Adam:  g <- g + wd * p
//   AdamW: p <- p - lr * wd * p
//   m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2
//   mhat = m / (1 - b1^t);   vhat = v / (1 - b2^t)
//   p <- p - lr * mhat / (sqrt(vhat) + eps)
struct AdamRef {
  double p, m = 0, v = 0;
  double bound = 0;  // accumulated float32 error allowance for p (see the test)
};

struct AdamCase {
  float lr, wd;
  bool decoupled;
  float gscale;  // gradients uniform in [-gscale, gscale)
};

TEST(OptimOps, AdamMatchesPyTorchAlgorithmForThreeSteps) {
  auto be = make_cpu_backend(2);
  const int P = 37;
  const float beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f;
  // The last case has gradients ~1e-7, so that sqrt(vhat) ~ 1e-7 and eps = 1e-8 changes the
  // step by ~10%: it proves where eps enters (outside the square root).
  for (const AdamCase c : {AdamCase{1e-2f, 0.0f, false, 1.0f}, AdamCase{1e-2f, 0.05f, false, 1.0f},
                           AdamCase{1e-2f, 0.1f, true, 1.0f}, AdamCase{1e-2f, 0.0f, false, 1e-7f}}) {
    SCOPED_TRACE(::testing::Message() << "lr " << c.lr << " wd " << c.wd << " decoupled "
                                      << c.decoupled << " gradient scale " << c.gscale);
    Vec p0 = random_vector(P, 60, -1.0f, 1.0f);
    p0[5] = 0.0f;  // with a zero gradient below: must stay exactly 0 (no 0/0)
    Tensor tp = be->from_vector(p0, Shape{P});
    Tensor tm = be->empty({P}), tv = be->empty({P});
    std::vector<AdamRef> ref;
    for (float x : p0) ref.push_back(AdamRef{x});
    double max_g = 0;

    for (int t = 1; t <= 3; ++t) {
      Vec g = random_vector(P, 60 + t, -c.gscale, c.gscale);
      g[5] = 0.0f;
      AdamStep s;
      s.lr = c.lr;
      s.beta1 = beta1;
      s.beta2 = beta2;
      s.eps = eps;
      s.weight_decay = c.wd;
      s.decoupled = c.decoupled;
      // The host's part: the bias corrections of step t.
      s.bias1 = float(1.0 - std::pow(double(beta1), t));
      s.bias2 = float(1.0 - std::pow(double(beta2), t));
      be->adam_step(tp, be->from_vector(g, Shape{P}), tm, tv, s);

      const double b1 = beta1, b2 = beta2, lr = c.lr, wd = c.wd;
      for (int i = 0; i < P; ++i) {
        AdamRef& r = ref[i];
        double gi = g[i];
        if (c.decoupled) r.p -= lr * wd * r.p;
        else gi += wd * r.p;
        max_g = std::max(max_g, std::fabs(gi));
        r.m = b1 * r.m + (1 - b1) * gi;
        r.v = b2 * r.v + (1 - b2) * gi * gi;
        const double mhat = r.m / (1 - std::pow(b1, t));
        const double vhat = r.v / (1 - std::pow(b2, t));
        const double ratio = mhat / (std::sqrt(vhat) + double(eps));
        r.p -= lr * ratio;
        // Float32 error allowance of this step: p's own roundings (decay and update, ~2 u |p|)
        // and lr times the error of the ratio. The ratio is ~10 roundings of m, v, the bias
        // corrections (rounded to float by the host) and the quotient, plus the error m and v
        // inherited from earlier steps (m may cancel: its error is relative to the weighted sum
        // of |g|, which for t <= 3 is <= ~1 sqrt(vhat) by Cauchy-Schwarz; hence the + 1).
        // 4 u and 32 u are those counts with a factor ~2 of margin. A wrong rule (a missing bias
        // correction, a misplaced weight decay) moves p by ~lr * 0.1 = 1e-3, > 1000x this.
        r.bound += 4 * kU * std::fabs(r.p) + 32 * kU * lr * (std::fabs(ratio) + 1);
      }

      const Vec p = be->to_vector(tp), m = be->to_vector(tm), v = be->to_vector(tv);
      for (int i = 0; i < P; ++i) {
        ASSERT_NEAR(p[i], ref[i].p, ref[i].bound) << "step " << t << " param " << i;
        // m: each step adds a few roundings relative to max |g|; v is a sum of positive terms,
        // so its error is relative: a few u per step.
        ASSERT_NEAR(m[i], ref[i].m, 4 * t * kU * max_g) << "step " << t << " m " << i;
        ASSERT_NEAR(v[i], ref[i].v, 4 * t * kU * ref[i].v + 1e-30) << "step " << t << " v " << i;
      }
      EXPECT_EQ(p[5], 0.0f);
    }
  }
}

TEST(OptimOps, AdamRejectsMismatchedSizes) {
  auto be = make_cpu_backend(1);
  Tensor p = be->empty({8}), g = be->empty({8}), m = be->empty({8}), v = be->empty({7});
  AdamStep s;
  s.lr = 1e-3f;
  EXPECT_THROW(be->adam_step(p, g, m, v, s), Error);
  EXPECT_THROW(be->adam_step(p, be->empty({9}), m, be->empty({8}), s), Error);
}

// torch.optim.SGD as documented (dampening 0, no Nesterov), in double:
//   g <- g + wd p;  if momentum: buf <- (t == 1 ? g : momentum buf + g), g <- buf;  p <- p - lr g
TEST(OptimOps, SgdMatchesPyTorchAlgorithmForThreeSteps) {
  auto be = make_cpu_backend(2);
  const int P = 29;
  struct Case {
    float lr, momentum, wd;
  };
  for (const Case c : {Case{0.05f, 0.9f, 0.1f}, Case{0.1f, 0.0f, 0.01f}, Case{0.05f, 0.5f, 0.0f}}) {
    SCOPED_TRACE(::testing::Message() << "lr " << c.lr << " momentum " << c.momentum << " wd " << c.wd);
    const Vec p0 = random_vector(P, 70, -1.0f, 1.0f);
    Tensor tp = be->from_vector(p0, Shape{P}), tb = be->empty({P});  // the buffer starts at zero
    std::vector<double> p(p0.begin(), p0.end()), buf(P, 0.0), bound(P, 0.0);
    for (int t = 1; t <= 3; ++t) {
      const Vec g = random_vector(P, 70 + t, -1.0f, 1.0f);
      be->sgd_step(tp, be->from_vector(g, Shape{P}), tb, c.lr, c.momentum, c.wd);
      for (int i = 0; i < P; ++i) {
        double d = g[i] + double(c.wd) * p[i];
        if (c.momentum != 0.0f) {
          buf[i] = t == 1 ? d : double(c.momentum) * buf[i] + d;
          d = buf[i];
        }
        // Per step: the decay product and sum, the momentum product and sum, lr * buf and the
        // update, each <= u of the magnitudes involved (|p| and lr * (|g| + wd |p| + m |buf|));
        // 8 u covers them with margin, accumulated over the steps (the buffer's error feeds on).
        bound[i] += 8 * kU * (std::fabs(p[i]) + c.lr * (std::fabs(g[i]) + c.wd * std::fabs(p[i]) +
                                                         c.momentum * std::fabs(buf[i]) + std::fabs(d)));
        p[i] -= double(c.lr) * d;
      }
      const Vec pg = be->to_vector(tp), bg = be->to_vector(tb);
      for (int i = 0; i < P; ++i) {
        ASSERT_NEAR(pg[i], p[i], bound[i]) << "step " << t << " param " << i;
        if (c.momentum != 0.0f) {
          ASSERT_NEAR(bg[i], buf[i], bound[i] / c.lr + 1e-30) << "step " << t << " buf " << i;
        }
      }
    }
  }
}

TEST(OptimOps, SumSquaresMatchesDoubleLoop) {
  auto be1 = make_cpu_backend(1);
  auto be2 = make_cpu_backend(2);
  // Around the internal chunk of 4096 and not a multiple of it.
  for (std::size_t n : {std::size_t(0), std::size_t(1), std::size_t(7), std::size_t(4095),
                        std::size_t(4096), std::size_t(4097), std::size_t(3 * 4096 + 123)}) {
    SCOPED_TRACE(::testing::Message() << "n " << n);
    const Vec x = random_vector(n, 80 + n, -2.0f, 2.0f);
    double want = 0;
    for (float v : x) want += double(v) * double(v);
    const double s1 = be1->sum_squares(be1->from_vector(x, Shape{std::int64_t(n)}));
    const double s2 = be2->sum_squares(be2->from_vector(x, Shape{std::int64_t(n)}));
    // A float squared is exact in double (24 + 24 bits <= 53), so only the additions round. The
    // terms are all >= 0, so any summation order is within gamma_{n-1} ~ (n - 1) 2^-53 of the
    // exact sum (Higham 4.2): the op (chunked) and this loop (sequential) differ by at most twice
    // that. Relative 1e-12 would NOT be a valid bound: at n = 12411, 2 n 2^-53 = 2.8e-12 (the
    // observed gap is usually far smaller, ~sqrt(n) 2^-53, but the bound is what is guaranteed).
    EXPECT_NEAR(s1, want, 2.0 * double(n) * kUd * want);
    // Fixed chunk order: bit-identical whatever the thread count.
    EXPECT_EQ(std::bit_cast<std::uint64_t>(s1), std::bit_cast<std::uint64_t>(s2));

    // Small integers: every partial sum is an integer < 2^53, exact in any order, so the
    // result must be exact; a dropped or doubled element anywhere (a chunk edge) shows.
    Vec ints(n);
    double exact = 0;
    for (std::size_t i = 0; i < n; ++i) {
      ints[i] = float(int(i % 7) - 3);
      exact += double(ints[i]) * ints[i];
    }
    EXPECT_EQ(be2->sum_squares(be2->from_vector(ints, Shape{std::int64_t(n)})), exact);
  }
  // A lone value in the last, partial chunk.
  Vec one(3 * 4096 + 5, 0.0f);
  one.back() = 3.0f;
  EXPECT_EQ(be2->sum_squares(be2->from_vector(one, Shape{std::int64_t(one.size())})), 9.0);
}

TEST(OptimOps, ScaleMultiplies) {
  auto be = make_cpu_backend(2);
  const std::size_t n = 4097;
  const Vec x = random_vector(n, 90, -5.0f, 5.0f);
  for (float alpha : {0.37f, -2.0f, 0.0f, 1.0f}) {
    Tensor t = be->from_vector(x, Shape{std::int64_t(n)});
    be->scale(t, alpha);
    Vec want(n);
    for (std::size_t i = 0; i < n; ++i) want[i] = x[i] * alpha;  // one float multiply each
    EXPECT_TRUE(bitwise_equal(be->to_vector(t), want)) << "alpha " << alpha;
  }
  // A view: only its elements change.
  Tensor t = be->from_vector(x, Shape{std::int64_t(n)});
  be->scale(t.slice(10, 20), 2.0f);
  const Vec got = be->to_vector(t);
  for (std::size_t i = 0; i < n; ++i)
    ASSERT_EQ(got[i], (i >= 10 && i < 20) ? x[i] * 2.0f : x[i]) << i;
}

}  // namespace
}  // namespace jem::test
