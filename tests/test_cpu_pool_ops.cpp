// The CPU backend's inference-only image ops (the Inception-v3 feature network
// of FID / IS): rectangular / asymmetrically padded convolution, max and
// average pooling, bilinear resize and channel concatenation, each against a
// naive loop written from its definition in backend.hpp (PyTorch's semantics),
// plus hand-checked values and the shape checks.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <ostream>
#include <string>
#include <vector>

#include "jem/backend.hpp"
#include "naive_ops.hpp"
#include "test_support.hpp"

namespace jem::test {
namespace {

using Vec = std::vector<float>;
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr double kU = 0x1p-24;  // float32 unit roundoff

// ---- naive references ---------------------------------------------------------------------------
std::size_t at(int C, int H, int W, int n, int c, int h, int w) {
  return ((std::size_t(n) * C + c) * H + h) * W + w;
}

int pool_out(int in, int k, int s, int p) { return (in + 2 * p - k) / s + 1; }

// y = max (or mean) over the window taps with 0 <= h < H, 0 <= w < W (padding
// ignored).
Vec naive_pool(bool is_max, int N, int C, int H, int W, int k, int s, int p, const Vec& x) {
  const int P = pool_out(H, k, s, p), Q = pool_out(W, k, s, p);
  Vec y(std::size_t(N) * C * P * Q);
  for (int n = 0; n < N; ++n)
    for (int c = 0; c < C; ++c)
      for (int i = 0; i < P; ++i)
        for (int j = 0; j < Q; ++j) {
          double best = -std::numeric_limits<double>::infinity(), sum = 0.0;
          int count = 0;
          for (int a = 0; a < k; ++a)
            for (int b = 0; b < k; ++b) {
              const int h = i * s - p + a, w = j * s - p + b;
              if (h < 0 || h >= H || w < 0 || w >= W) continue;
              const double v = x[at(C, H, W, n, c, h, w)];
              best = std::max(best, v);
              sum += v;
              ++count;
            }
          y[at(C, P, Q, n, c, i, j)] = float(is_max ? best : sum / count);
        }
  return y;
}

// PyTorch's bilinear interpolation, align_corners=False, in double: source
// coordinate (o + 0.5) * in / out - 0.5 clamped at 0; neighbours floor(src) and
// floor(src) + 1 clamped.
Vec naive_resize(int NC, int H, int W, int P, int Q, const Vec& x) {
  auto tap = [](int in, int out, int o, int& i0, int& i1, double& f) {
    double src = (o + 0.5) * double(in) / double(out) - 0.5;
    if (src < 0) src = 0;
    i0 = std::min(int(std::floor(src)), in - 1);
    i1 = std::min(i0 + 1, in - 1);
    f = src - i0;
  };
  Vec y(std::size_t(NC) * P * Q);
  for (int pl = 0; pl < NC; ++pl)
    for (int p = 0; p < P; ++p)
      for (int q = 0; q < Q; ++q) {
        int h0, h1, w0, w1;
        double fh, fw;
        tap(H, P, p, h0, h1, fh);
        tap(W, Q, q, w0, w1, fw);
        auto v = [&](int h, int w) { return double(x[at(1, H, W, pl, 0, h, w)]); };
        y[at(1, P, Q, pl, 0, p, q)] = float((1 - fh) * ((1 - fw) * v(h0, w0) + fw * v(h0, w1)) +
                                            fh * ((1 - fw) * v(h1, w0) + fw * v(h1, w1)));
      }
  return y;
}

void expect_all_near(const Vec& got, const Vec& want, double tol, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  int bad = 0;
  for (std::size_t i = 0; i < got.size(); ++i)
    if (!(std::fabs(double(got[i]) - want[i]) <= tol * std::max(1.0, std::fabs(double(want[i])))) &&
        ++bad <= 5)
      ADD_FAILURE() << what << "[" << i << "]: got " << got[i] << ", want " << want[i];
  EXPECT_EQ(bad, 0) << what;
}

// ---- rectangular / asymmetrically padded convolution --------------------------------------------
struct RectConv {
  int N, C, H, W, K, R, S, stride, pad_h, pad_w;
};

void PrintTo(const RectConv& c, std::ostream* os) {
  *os << "n" << c.N << "_c" << c.C << "_" << c.H << "x" << c.W << "_k" << c.K << "_" << c.R << "x"
      << c.S << "_s" << c.stride << "_p" << c.pad_h << "," << c.pad_w;
}

class CpuRectConv : public ::testing::TestWithParam<RectConv> {};

// Forward against the naive convolution. Each output is a float32 sum of C*R*S
// + 1 terms; the backend's error is at most gamma_k * sum|terms| (Higham), so
// |got - want| is bounded by k * u * (|x| |w| summed) + u |want|: checked per
// element with the magnitude pass.
TEST_P(CpuRectConv, ForwardMatchesNaive) {
  const RectConv c = GetParam();
  ConvGeom g;
  g.N = c.N, g.C = c.C, g.H = c.H, g.W = c.W, g.K = c.K, g.R = c.R, g.S = c.S;
  g.stride = c.stride, g.pad_h = c.pad_h, g.pad_w = c.pad_w;
  auto be = make_cpu_backend(2);
  const Vec x = random_vector(std::size_t(g.N) * g.C * g.H * g.W, 1);
  const Vec w = random_vector(std::size_t(g.K) * g.C * g.R * g.S, 2);
  const Vec b = random_vector(std::size_t(g.K), 3);
  Tensor y = be->empty(Shape{g.N, g.K, g.P(), g.Q()});
  be->fill(y, kNaN);
  be->conv2d_forward(be->from_vector(x, Shape{g.N, g.C, g.H, g.W}),
                     be->from_vector(w, Shape{g.K, g.C, g.R, g.S}), be->from_vector(b, Shape{g.K}),
                     y, g.stride, g.pad_h, g.pad_w);
  const Vec got = be->to_vector(y);
  const Vec want = naive::conv2d_forward(g, x, w, b);
  Vec ax(x.size()), aw(w.size()), ab(b.size());
  for (std::size_t i = 0; i < x.size(); ++i) ax[i] = std::fabs(x[i]);
  for (std::size_t i = 0; i < w.size(); ++i) aw[i] = std::fabs(w[i]);
  for (std::size_t i = 0; i < b.size(); ++i) ab[i] = std::fabs(b[i]);
  const Vec mag = naive::conv2d_forward(g, ax, aw, ab);
  ASSERT_EQ(got.size(), want.size());
  const int k = g.C * g.R * g.S + 1;
  for (std::size_t i = 0; i < got.size(); ++i) {
    const double tol = k * kU * mag[i] / (1 - k * kU) + kU * std::fabs(want[i]);
    ASSERT_LE(std::fabs(double(got[i]) - want[i]), tol) << "element " << i;
  }
}

// The backward ops with rectangular kernels (symmetric padding: the public backward ops take
// one pad). Not used by the Inception network (inference only), but ConvGeom's R x S
// generalisation runs through them. Backward-data against the naive adjoint, same bound with
// K*R*S terms.
class CpuRectConvBackward : public ::testing::TestWithParam<RectConv> {};

TEST_P(CpuRectConvBackward, BackwardDataMatchesNaive) {
  const RectConv c = GetParam();
  ASSERT_EQ(c.pad_h, c.pad_w) << "the backward ops take one pad for both axes";
  ConvGeom g;
  g.N = c.N, g.C = c.C, g.H = c.H, g.W = c.W, g.K = c.K, g.R = c.R, g.S = c.S;
  g.stride = c.stride, g.pad_h = c.pad_h, g.pad_w = c.pad_w;
  auto be = make_cpu_backend(2);
  const Vec dy = random_vector(std::size_t(g.N) * g.K * g.P() * g.Q(), 4);
  const Vec w = random_vector(std::size_t(g.K) * g.C * g.R * g.S, 5);
  Tensor dx = be->empty(Shape{g.N, g.C, g.H, g.W});
  be->fill(dx, kNaN);
  be->conv2d_backward_data(be->from_vector(dy, Shape{g.N, g.K, g.P(), g.Q()}),
                           be->from_vector(w, Shape{g.K, g.C, g.R, g.S}), dx, g.stride, g.pad_h);
  const Vec got = be->to_vector(dx);
  const Vec want = naive::conv2d_backward_data(g, dy, w);
  // |dy|, |w| <= 1: each sum's magnitude is at most its K*R*S term count.
  const int k = g.K * g.R * g.S;
  expect_all_near(got, want, 2.0 * k * k * kU, "conv2d_backward_data (rectangular)");
}

// Backward-filter of a rectangular kernel: dw accumulates onto its prior contents and db is
// the sum of dy. Each entry sums N*P*Q (+1 for the prior) products of magnitude <= 1, so the
// same k^2 u bound with k = N*P*Q + 1.
TEST_P(CpuRectConvBackward, BackwardFilterMatchesNaive) {
  const RectConv c = GetParam();
  ASSERT_EQ(c.pad_h, c.pad_w) << "the backward ops take one pad for both axes";
  ConvGeom g;
  g.N = c.N, g.C = c.C, g.H = c.H, g.W = c.W, g.K = c.K, g.R = c.R, g.S = c.S;
  g.stride = c.stride, g.pad_h = c.pad_h, g.pad_w = c.pad_w;
  auto be = make_cpu_backend(2);
  const Vec x = random_vector(std::size_t(g.N) * g.C * g.H * g.W, 6);
  const Vec dy = random_vector(std::size_t(g.N) * g.K * g.P() * g.Q(), 7);
  const Vec dw0 = random_vector(std::size_t(g.K) * g.C * g.R * g.S, 8);
  const Vec db0 = random_vector(std::size_t(g.K), 9);
  Tensor dw = be->from_vector(dw0, Shape{g.K, g.C, g.R, g.S}),
         db = be->from_vector(db0, Shape{g.K});
  be->conv2d_backward_filter(be->from_vector(x, Shape{g.N, g.C, g.H, g.W}),
                             be->from_vector(dy, Shape{g.N, g.K, g.P(), g.Q()}), dw, db, g.stride,
                             g.pad_h);
  const naive::ConvFilterGrad fresh = naive::conv2d_backward_filter(g, x, dy);
  Vec want_dw = fresh.dw, want_db = fresh.db;
  for (std::size_t i = 0; i < want_dw.size(); ++i) want_dw[i] += dw0[i];
  for (std::size_t i = 0; i < want_db.size(); ++i) want_db[i] += db0[i];
  const int k = g.N * g.P() * g.Q() + 1;
  expect_all_near(be->to_vector(dw), want_dw, 2.0 * k * k * kU, "conv2d dw (rectangular)");
  expect_all_near(be->to_vector(db), want_db, 2.0 * k * k * kU, "conv2d db (rectangular)");
}

INSTANTIATE_TEST_SUITE_P(
    Inception, CpuRectConv,
    ::testing::Values(RectConv{2, 3, 9, 11, 4, 1, 7, 1, 0, 3},   // 1x7, pad (0, 3)
                      RectConv{2, 3, 11, 9, 4, 7, 1, 1, 3, 0},   // 7x1, pad (3, 0)
                      RectConv{1, 5, 8, 8, 6, 1, 3, 1, 0, 1},    // 1x3, pad (0, 1)
                      RectConv{1, 5, 8, 8, 6, 3, 1, 1, 1, 0},    // 3x1, pad (1, 0)
                      RectConv{2, 3, 13, 12, 5, 3, 3, 2, 0, 0},  // 3x3 stride 2 unpadded
                      RectConv{2, 2, 9, 10, 3, 3, 5, 2, 1, 2},   // 3x5 stride 2, pad (1, 2)
                      RectConv{2, 4, 7, 9, 3, 3, 5, 1, 1, 1},    // 3x5 symmetric pad 1
                      RectConv{2, 4, 7, 9, 3, 3, 5, 1, 1, 2},    // 3x5 "same" padding
                      RectConv{1, 4, 6, 6, 3, 1, 1, 1, 0, 0}));

// Rectangular kernels with one padding for both axes (what the backward ops accept).
INSTANTIATE_TEST_SUITE_P(Rectangular, CpuRectConvBackward,
                         ::testing::Values(RectConv{2, 3, 9, 11, 4, 1, 7, 1, 0, 0},
                                           RectConv{2, 3, 11, 9, 4, 7, 1, 2, 1, 1},
                                           RectConv{2, 3, 13, 12, 5, 3, 3, 2, 0, 0},
                                           RectConv{2, 4, 7, 9, 3, 3, 5, 1, 1, 1},
                                           RectConv{1, 4, 6, 6, 3, 1, 1, 1, 0, 0}));  // pointwise

// ---- pooling ------------------------------------------------------------------------------------
struct PoolCase {
  int N, C, H, W, k, s, p;
};

void PrintTo(const PoolCase& c, std::ostream* os) {
  *os << "n" << c.N << "_c" << c.C << "_" << c.H << "x" << c.W << "_k" << c.k << "_s" << c.s << "_p"
      << c.p;
}

class CpuPool : public ::testing::TestWithParam<PoolCase> {};

// Both pools against the naive loop. Inputs are all negative in half of the
// channels: a max pool that padded with 0 instead of -inf, or an average that
// counted padding, fails at the border. Max is exact; the average is a sum of
// at most k*k floats divided once: bound (k*k + 1) u.
TEST_P(CpuPool, MaxAndAverageMatchNaive) {
  const PoolCase c = GetParam();
  auto be = make_cpu_backend(2);
  Vec x = random_vector(std::size_t(c.N) * c.C * c.H * c.W, 7, -1.0f, 1.0f);
  for (std::size_t i = 0; i < x.size(); ++i)
    if ((i / (std::size_t(c.H) * c.W)) % 2 == 1) x[i] = -1.5f - std::fabs(x[i]);
  const int P = pool_out(c.H, c.k, c.s, c.p), Q = pool_out(c.W, c.k, c.s, c.p);
  const Tensor xt = be->from_vector(x, Shape{c.N, c.C, c.H, c.W});
  Tensor y = be->empty(Shape{c.N, c.C, P, Q});
  be->fill(y, kNaN);
  be->max_pool2d_forward(xt, y, c.k, c.s, c.p);
  const Vec want_max = naive_pool(true, c.N, c.C, c.H, c.W, c.k, c.s, c.p, x);
  expect_all_near(be->to_vector(y), want_max, 0.0, "max_pool2d");
  be->fill(y, kNaN);
  be->avg_pool2d_forward(xt, y, c.k, c.s, c.p);
  const Vec want_avg = naive_pool(false, c.N, c.C, c.H, c.W, c.k, c.s, c.p, x);
  expect_all_near(be->to_vector(y), want_avg, 2.0 * (c.k * c.k + 1) * kU, "avg_pool2d");
}

INSTANTIATE_TEST_SUITE_P(Inception, CpuPool,
                         ::testing::Values(PoolCase{2, 4, 9, 9, 3, 2, 0},    // stem max pool
                                           PoolCase{2, 4, 8, 7, 3, 2, 0},    // even/odd sizes
                                           PoolCase{2, 4, 7, 6, 3, 1, 1},    // branch pools
                                           PoolCase{1, 2, 5, 5, 2, 2, 1},    // even window
                                           PoolCase{1, 2, 1, 1, 3, 1, 1}));  // 1x1 image

// Hand-checked: average pooling of a 2x2 image of 1..4, window 3, pad 1
// (count_include_pad=False): every window covers all four pixels, so every
// output is 2.5 (counting padding would give 10/9 = 1.11). Max of an
// all-negative image with padding is its own max, never 0.
TEST(CpuPoolValues, AverageExcludesPaddingAndMaxIgnoresIt) {
  auto be = make_cpu_backend(1);
  const Tensor x = be->from_vector({1, 2, 3, 4}, Shape{1, 1, 2, 2});
  Tensor y = be->empty(Shape{1, 1, 2, 2});
  be->avg_pool2d_forward(x, y, 3, 1, 1);
  for (float v : be->to_vector(y)) EXPECT_FLOAT_EQ(v, 2.5f);
  const Tensor neg = be->from_vector({-4, -3, -2, -1}, Shape{1, 1, 2, 2});
  be->max_pool2d_forward(neg, y, 3, 1, 1);
  for (float v : be->to_vector(y)) EXPECT_FLOAT_EQ(v, -1.0f);
}

TEST(CpuPoolValues, ShapeChecks) {
  auto be = make_cpu_backend(1);
  const Tensor x = be->empty(Shape{1, 2, 5, 5});
  Tensor y = be->empty(Shape{1, 2, 2, 2});
  EXPECT_NO_THROW(be->max_pool2d_forward(x, y, 3, 2, 0));
  EXPECT_THROW(be->max_pool2d_forward(x, y, 3, 1, 0),
               Error);  // wrong output size
  Tensor y5 = be->empty(Shape{1, 2, 5, 5});
  EXPECT_THROW(be->avg_pool2d_forward(x, y5, 3, 1, 2),
               Error);                                          // pad > kernel / 2
  EXPECT_THROW(be->avg_pool2d_forward(x, y5, 0, 1, 0), Error);  // empty window
}

// ---- bilinear resize ----------------------------------------------------------------------------
struct ResizeCase {
  int NC, H, W, P, Q;
};

void PrintTo(const ResizeCase& c, std::ostream* os) {
  *os << c.NC << "_planes_" << c.H << "x" << c.W << "_to_" << c.P << "x" << c.Q;
}

class CpuResize : public ::testing::TestWithParam<ResizeCase> {};

// Against the double-precision naive version. The backend computes source
// coordinates in float (as PyTorch does for float images): scale = in/out and
// scale * (o + 0.5) - 0.5 each round once, so the coordinate, of size < in, is
// off by at most ~2 (in + 1) u; neighbouring values of this [-1, 1] input
// differ by at most 2, so that moves the output by <= 4 (in + 1) u. The blend
// of four values with weights summing to 1 adds a few u more: tolerance (4 (in
// + 2) + 8) u.
TEST_P(CpuResize, MatchesNaive) {
  const ResizeCase c = GetParam();
  auto be = make_cpu_backend(2);
  const Vec x = random_vector(std::size_t(c.NC) * c.H * c.W, 9);
  Tensor y = be->empty(Shape{1, c.NC, c.P, c.Q});
  be->fill(y, kNaN);
  be->resize_bilinear_forward(be->from_vector(x, Shape{1, c.NC, c.H, c.W}), y);
  const double tol = (4.0 * (std::max(c.H, c.W) + 2) + 8) * kU;
  expect_all_near(be->to_vector(y), naive_resize(c.NC, c.H, c.W, c.P, c.Q, x), tol,
                  "resize_bilinear");
}

INSTANTIATE_TEST_SUITE_P(Inception, CpuResize,
                         ::testing::Values(ResizeCase{3, 32, 32, 299, 299},  // CIFAR -> Inception
                                           ResizeCase{2, 28, 28, 75, 75},
                                           ResizeCase{2, 40, 30, 17, 23},  // downsampling
                                           ResizeCase{1, 5, 7, 5, 7},      // identity
                                           ResizeCase{1, 1, 1, 4, 3}));

// Known PyTorch results: interpolate([[0, 1]], size=4, mode='linear',
// align_corners=False) is [0, 0.25, 0.75, 1] (the outermost outputs clamp to
// the edge pixels); and the same size is the identity.
TEST(CpuResizeValues, UpsampleByTwoAndIdentity) {
  auto be = make_cpu_backend(1);
  Tensor y = be->empty(Shape{1, 1, 1, 4});
  be->resize_bilinear_forward(be->from_vector({0, 1}, Shape{1, 1, 1, 2}), y);
  const Vec got = be->to_vector(y);
  const Vec want{0.0f, 0.25f, 0.75f, 1.0f};
  for (int i = 0; i < 4; ++i) EXPECT_FLOAT_EQ(got[std::size_t(i)], want[std::size_t(i)]) << i;
  const Vec x = random_vector(30, 3);
  Tensor same = be->empty(Shape{1, 2, 3, 5});
  be->resize_bilinear_forward(be->from_vector(x, Shape{1, 2, 3, 5}), same);
  EXPECT_EQ(be->to_vector(same), x);
  EXPECT_THROW(
      be->resize_bilinear_forward(be->empty(Shape{1, 2, 3, 5}), be->empty(Shape{1, 3, 4, 4})),
      Error);
}

// ---- channel concatenation ----------------------------------------------------------------------
TEST(CpuCopyChannels, WritesOnlyItsSlice) {
  auto be = make_cpu_backend(2);
  const int N = 3, Cs = 2, Cd = 5, H = 4, W = 3, off = 2;
  const Vec src = random_vector(std::size_t(N) * Cs * H * W, 13);
  Tensor dst = be->empty(Shape{N, Cd, H, W});
  be->fill(dst, 7.0f);
  be->copy_channels(be->from_vector(src, Shape{N, Cs, H, W}), dst, off);
  const Vec got = be->to_vector(dst);
  for (int n = 0; n < N; ++n)
    for (int c = 0; c < Cd; ++c)
      for (int h = 0; h < H; ++h)
        for (int w = 0; w < W; ++w) {
          const bool inside = c >= off && c < off + Cs;
          const float want = inside ? src[at(Cs, H, W, n, c - off, h, w)] : 7.0f;
          ASSERT_EQ(got[at(Cd, H, W, n, c, h, w)], want) << n << " " << c << " " << h << " " << w;
        }
  EXPECT_THROW(be->copy_channels(be->from_vector(src, Shape{N, Cs, H, W}), dst, 4), Error);
  EXPECT_THROW(be->copy_channels(be->empty(Shape{N, Cs, H, W + 1}), dst, 0), Error);
}

}  // namespace
}  // namespace jem::test
