// Helpers of the CUDA backend tests: the skip check, tolerances, comparisons, tensor helpers.
#pragma once

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <optional>
#include <ostream>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "../../cuda/cuda_backend.hpp"
#include "jem/backend.hpp"
#include "jem/runtime.hpp"
#include "test_support.hpp"

namespace jem::cuda {
// Readable parameter names in gtest output.
inline void PrintTo(MathMode m, std::ostream* os) { *os << to_string(m); }
}  // namespace jem::cuda

namespace jem::test {

using Vec = std::vector<float>;
using IVec = std::vector<std::int32_t>;
using cuda::MathMode;

// Why no CUDA device is usable, or "" when one is.
inline std::string no_cuda_reason() {
  std::string why;
  if (!cuda_devices(&why).empty()) return "";
  return why.empty() ? "the CUDA runtime reports no device" : why;
}

// True when the environment says a GPU must be there (JEM_REQUIRE_CUDA=1, as gpu-check.sh sets
// it): then a missing or unusable device fails the CUDA tests instead of skipping them, so that a
// GPU machine whose runtime cannot start does not report "0 failed".
inline bool cuda_required() {
  const char* v = std::getenv("JEM_REQUIRE_CUDA");
  return v != nullptr && *v != '\0' && std::string(v) != "0";
}

// First statement of every test that needs a GPU (GTEST_SKIP returns from the calling function,
// so this must be a macro; in a fixture's SetUp it skips the test body).
#define JEM_SKIP_WITHOUT_CUDA()                                                        \
  do {                                                                                 \
    const std::string jem_why_ = ::jem::test::no_cuda_reason();                        \
    if (!jem_why_.empty()) {                                                           \
      if (::jem::test::cuda_required())                                                \
        GTEST_FAIL() << "no CUDA device, and JEM_REQUIRE_CUDA is set: " << jem_why_;   \
      GTEST_SKIP() << "no CUDA device: " << jem_why_;                                  \
    }                                                                                  \
  } while (0)

// ---- tolerances ----------------------------------------------------------------------------------
// Unit roundoff of float32.
constexpr double kU = 0x1p-24;

// Convolutions and GEMMs: every output is a float32 sum of (at most) k products t_j. Their
// tolerances are relative to the reference's norm, scaled by
//   ratio = RSS / ||reference||,   RSS = sqrt(sum over outputs and terms of t_j^2),
// which the tests compute exactly by running the CPU op on the squared inputs (the ops are
// bilinear, so op(x^2, w^2) = sum_j t_j^2 per output). For random-sign data ratio ~ 1; it grows
// where outputs cancel (a sum of large terms that is small), which is exactly where rounding
// errors relative to the output grow.
//
// FP32: a recursive float sum of k terms errs by ~sqrt(k/2) u RSS (a random walk of k roundings
// of partial sums whose size grows like sqrt(j)); both backends do, so they differ by ~sqrt(k)
// u RSS. cuDNN may pick Winograd or FFT algorithms, whose transforms amplify rounding up to
// ~10x: 32 sqrt(k) u ratio leaves a 3x margin on that. A wrong tap, stride or transpose costs
// 1e-2 or more.
constexpr double kFp32Ulps = 32.0;
// TF32: each input is rounded (or truncated) to a 10-bit mantissa, <= 2^-10 relative. Truncation
// shrinks every product by ~2^-10 on average: a systematic 2^-10 of the output itself. The rest
// fluctuates, ~2^-10 rms per product, so ~2^-10 RSS for the sum; 4x that is the margin.
constexpr double kTf32Unit = 0x1p-10;
// For comparisons without a magnitude (results of one GPU run against another).
constexpr double kTf32Tol = 5 * kTf32Unit;

inline double sum_tol(MathMode math, int k, double ratio) {
  return math == MathMode::TF32 ? kTf32Unit + 4 * kTf32Unit * ratio
                                : kFp32Ulps * std::sqrt(double(k)) * kU * ratio;
}

inline Vec squares(const Vec& v) {
  Vec s(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) s[i] = v[i] * v[i];
  return s;
}

// RSS / ||reference|| from the op applied to squared inputs (see above).
inline double rss_ratio(const Vec& op_of_squares, const Vec& reference) {
  double rss = 0.0, ref = 0.0;
  for (float v : op_of_squares) rss += v;
  for (float v : reference) ref += double(v) * v;
  return std::sqrt(rss) / std::max(std::sqrt(ref), 1e-30);
}

// The fused losses: CUDA computes them in float (kernels/energy.cu explains the arrangement),
// at worst about 16 u per output against the CPU's double-then-round (a host emulation with
// CUDA's +-2 ulp expf / log1pf stayed below 6 u); 64 u is a 4x margin on the worst case.
constexpr double kLossTol = 64 * kU;

// Normals: Box-Muller through CUDA's logf (1 ulp), sinf/cosf (2 ulp), against glibc's (< 1 ulp):
// a few ulp of the normal; 16 is twice the sum of the documented bounds.
constexpr std::int64_t kNormalUlps = 16;

// ---- comparisons ---------------------------------------------------------------------------------
inline bool bit_equal(const Vec& a, const Vec& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

inline void expect_bit_equal(const Vec& got, const Vec& want, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  EXPECT_TRUE(bit_equal(got, want)) << what << ": not bit-identical (max |diff| "
                                    << max_abs_diff(got, want) << ")";
}

inline void expect_close(const Vec& got, const Vec& want, double tol, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  const double err = rel_error(got, want);  // NaN fails: an output left at its NaN prefill
  EXPECT_LE(err, tol) << what << ": relative error " << err << " exceeds " << tol;
}

// Distance in units in the last place (floats mapped to a monotone integer line).
inline std::int64_t ulp_distance(float a, float b) {
  auto ordered = [](float f) {
    const std::int64_t i = std::bit_cast<std::int32_t>(f);
    return i >= 0 ? i : std::int64_t(INT32_MIN) - i;
  };
  const std::int64_t d = ordered(a) - ordered(b);
  return d < 0 ? -d : d;
}

// ---- tensors -------------------------------------------------------------------------------------
inline Tensor i32_tensor(Backend& be, const IVec& v) {
  Tensor t = be.empty(Shape{std::int64_t(v.size())}, DType::I32);
  be.upload_i32(v.data(), t);
  return t;
}

// Whether device 0 is sm_90 or later, where cuDNN must build the fused graph-API convolutions
// (an H200 did; the emulated device reports sm_90).
inline bool sm90_or_later() {
  cudaDeviceProp prop{};
  return cudaGetDeviceProperties(&prop, 0) == cudaSuccess && prop.major >= 9;
}

inline Tensor nan_tensor(Backend& be, const Shape& s) {
  Tensor t = be.empty(s);
  be.fill(t, std::nanf(""));
  return t;
}

}  // namespace jem::test
