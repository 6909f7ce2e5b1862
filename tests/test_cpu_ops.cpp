// Every op of the CPU backend, proved two independent ways:
//   (a) against the naive nested-loop reference ops of tests/support/naive_ops.hpp, and
//   (b) each backward op against central finite differences of its forward op (or, for the
//       losses, of their definition evaluated in double),
// plus the conventions of include/jem/backend.hpp: parameter gradients accumulate, activation
// gradients overwrite, the allowed aliasing, shape checks, numerical stability of the losses and
// deterministic threading.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <ostream>
#include <string>
#include <vector>

#include "jem/backend.hpp"
#include "naive_ops.hpp"
#include "conv_case.hpp"
#include "test_support.hpp"

namespace jem::test {
namespace {

using Vec = std::vector<float>;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// ---- tolerances -----------------------------------------------------------------------------------
// Unit roundoff of float32.
constexpr double kU = 0x1p-24;

// gamma_k (Higham, "Accuracy and Stability of Numerical Algorithms", 2nd ed., 3.1 and 3.5): a
// float32 sum of k products, added in ANY order (blocked BLAS kernels, FMAs, per-thread partial
// sums reduced afterwards), is within gamma_k * sum|terms| of the exact sum.
double gamma(int k) { return k * kU / (1.0 - k * kU); }

double norm(const Vec& v) {
  double s = 0.0;
  for (float x : v) s += double(x) * x;
  return std::sqrt(s);
}

Vec abs_of(const Vec& v) {
  Vec a(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) a[i] = std::fabs(v[i]);
  return a;
}

Vec sum_of(const Vec& a, const Vec& b) { return naive::add(a, b); }

// ---- the Winograd F(2x2, 3x3) path (src/cpu/conv3x3_winograd.hpp) ---------------------------------
// It does not sum the same products as the naive loops, so sum_tolerance's bound does not cover
// it. Its own bound, by the same analysis: every float32 rounding on the way to an output is
// one of
//   V = B^T d B (2 stages of 2-term sums: 2), U = G w G^T (2 stages of 3-term sums, the 1/2
//   exact: 4), the C products and sums of M = sum_c U_c .* V_c (one FMA each: C), y = A^T M A
//   (2 stages of 3-term sums: 4), + bias, + residual (2),
// so |y - exact| <= gamma_{C + 12} times the same computation done on absolute values:
//   mag[y] = |A^T| (sum_c |G| |w_c| |G^T| .* |B^T| |d_c| |B|) |A| + |b| + |z|,
// d_c being the output's 4x4 input tile. winograd_magnitude computes that (without |b| and |z|).
int winograd_terms(const ConvGeom& g) { return g.C + 12; }

// The absolute values of the transform matrices: |G| (4x3), |B^T| (4x4), |A^T| (2x4).
constexpr double kAbsG[4][3] = {{1, 0, 0}, {0.5, 0.5, 0.5}, {0.5, 0.5, 0.5}, {0, 0, 1}};
constexpr double kAbsBt[4][4] = {{1, 0, 1, 0}, {0, 1, 1, 1}, {0, 1, 1, 0}, {0, 0, 0, 1}};
constexpr double kAbsAt[2][4] = {{1, 1, 1, 0}, {0, 1, 1, 1}};

// v = |B^T| d |B| for the 4x4 input tile d of output tile (ty, tx) of image n, channel c of the
// [N, C, H, W] tensor ax (zero outside the image: the padding).
void abs_input_transform(const ConvGeom& g, const Vec& ax, int n, int c, int ty, int tx, double (&v)[4][4]) {
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 4; ++j) {
      v[i][j] = 0.0;
      for (int r = 0; r < 4; ++r)
        for (int t = 0; t < 4; ++t) {
          const int h = 2 * ty + r - 1, w = 2 * tx + t - 1;
          if (h < 0 || h >= g.H || w < 0 || w >= g.W) continue;
          v[i][j] += kAbsBt[i][r] * ax[((static_cast<std::size_t>(n) * g.C + c) * g.H + h) * g.W + w] * kAbsBt[j][t];
        }
    }
}

// The stride-1, pad-1 3x3 convolutions that kBest and kWinogradAvx2 may run by Winograd.
bool may_take_winograd(CpuConvKernels kernels, const ConvGeom& g) {
  return (kernels == CpuConvKernels::kBest || kernels == CpuConvKernels::kWinogradAvx2) && g.R == 3 &&
         g.S == 3 && g.stride == 1 && g.pad_h == 1 && g.pad_w == 1;
}

// mag (see above) for y [N, K, H, W] = conv3x3(x [N, C, H, W], w [K, C, 3, 3]), stride 1, pad 1,
// from |x| and |w| (the caller passes absolute values).
Vec winograd_magnitude(const ConvGeom& g, const Vec& ax, const Vec& aw) {
  Vec mag(static_cast<std::size_t>(g.N) * g.K * g.H * g.W, 0.0f);
  for (int n = 0; n < g.N; ++n)
    for (int k = 0; k < g.K; ++k)
      for (int ty = 0; 2 * ty < g.H; ++ty)
        for (int tx = 0; 2 * tx < g.W; ++tx) {
          double m[4][4] = {};
          for (int c = 0; c < g.C; ++c) {
            double u[4][4] = {}, v[4][4];
            const float* f = &aw[(static_cast<std::size_t>(k) * g.C + c) * 9];
            for (int i = 0; i < 4; ++i)
              for (int j = 0; j < 4; ++j)
                for (int r = 0; r < 3; ++r)
                  for (int t = 0; t < 3; ++t) u[i][j] += kAbsG[i][r] * f[r * 3 + t] * kAbsG[j][t];
            abs_input_transform(g, ax, n, c, ty, tx, v);
            for (int i = 0; i < 4; ++i)
              for (int j = 0; j < 4; ++j) m[i][j] += u[i][j] * v[i][j];
          }
          for (int a = 0; a < 2 && 2 * ty + a < g.H; ++a)
            for (int b = 0; b < 2 && 2 * tx + b < g.W; ++b) {
              double y = 0.0;
              for (int i = 0; i < 4; ++i)
                for (int j = 0; j < 4; ++j) y += kAbsAt[a][i] * m[i][j] * kAbsAt[b][j];
              mag[((static_cast<std::size_t>(n) * g.K + k) * g.H + 2 * ty + a) * g.W + 2 * tx + b] = float(y);
            }
        }
  return mag;
}

// The weight gradient by the same transforms (src/cpu/conv3x3_winograd.hpp):
// dw[k, c] = G^T (sum over images and tiles of (A dy_t A^T) .* (B^T x_t B)) G, taken where the
// forward pass may take Winograd, on images >= 14 wide. Its roundings: 2 for each transform, one
// FMA per tile on the way to an output (at most N x tiles), 3 for a vector's horizontal sum, the
// sums across images and threads, 6 for G^T m G: fewer than N x tiles + 16 in all (the tile
// count rounded up to whole vectors of 8). Its magnitude is that computation on |x|, |dy| and
// the absolute transform matrices.
bool may_take_winograd_filter_grad(CpuConvKernels kernels, const ConvGeom& g) {
  return may_take_winograd(kernels, g) && g.W >= 14;
}
int winograd_filter_grad_terms(const ConvGeom& g) {
  return g.N * ((g.H + 1) / 2) * (((g.W + 1) / 2 + 7) / 8 * 8) + 16;
}
Vec winograd_filter_grad_magnitude(const ConvGeom& g, const Vec& ax, const Vec& ady) {
  std::vector<double> m(static_cast<std::size_t>(g.K) * g.C * 16, 0.0);
  for (int n = 0; n < g.N; ++n)
    for (int ty = 0; 2 * ty < g.H; ++ty)
      for (int tx = 0; 2 * tx < g.W; ++tx)
        for (int k = 0; k < g.K; ++k) {
          double dt[4][4] = {};  // |A| |dy tile| |A^T|
          for (int i = 0; i < 4; ++i)
            for (int j = 0; j < 4; ++j)
              for (int a = 0; a < 2; ++a)
                for (int b = 0; b < 2; ++b) {
                  const int h = 2 * ty + a, w = 2 * tx + b;
                  if (h >= g.H || w >= g.W) continue;
                  dt[i][j] += kAbsAt[a][i] * ady[((static_cast<std::size_t>(n) * g.K + k) * g.H + h) * g.W + w] * kAbsAt[b][j];
                }
          for (int c = 0; c < g.C; ++c) {
            double v[4][4];
            abs_input_transform(g, ax, n, c, ty, tx, v);
            for (int xi = 0; xi < 16; ++xi)
              m[(static_cast<std::size_t>(k) * g.C + c) * 16 + xi] += dt[xi / 4][xi % 4] * v[xi / 4][xi % 4];
          }
        }
  Vec mag(static_cast<std::size_t>(g.K) * g.C * 9);
  for (std::size_t kc = 0; kc < static_cast<std::size_t>(g.K) * g.C; ++kc)
    for (int r = 0; r < 3; ++r)
      for (int t = 0; t < 3; ++t) {
        double y = 0.0;
        for (int i = 0; i < 4; ++i)
          for (int j = 0; j < 4; ++j) y += kAbsG[i][r] * m[kc * 16 + i * 4 + j] * kAbsG[j][t];
        mag[kc * 9 + r * 3 + t] = float(y);
      }
  return mag;
}

// Tolerance on rel_error(backend, naive) for an op whose every output is a float32 sum of at most
// k products. `magnitude` is the same op applied to the absolute values of its inputs, i.e.
// magnitude[i] = sum|terms of output i|, so the bound above gives
//   ||backend - exact|| <= gamma_k ||magnitude||,
// and the reference's own final rounding to float adds u ||exact||. This is a rigorous bound, not
// a fitted number; for random-sign data ||magnitude|| / ||exact|| is about sqrt(k), so it stays
// near k^1.5 u (~2e-4 at k = 245, ~1e-5 at k = 28), while one wrong entry among n costs about
// 1/sqrt(n) >= 2e-2 at the sizes checked against it (n <= ~2000).
double sum_tolerance(int k, const Vec& magnitude, const Vec& reference) {
  return gamma(k) * norm(magnitude) / norm(reference) + kU;
}

// The data gradient of a stride-1 3x3 convolution as the forward pass the backend runs it as:
// dy [N, K, H, W] convolved with the flipped kernel, channels swapped (wt [C, K, 3, 3]).
ConvGeom transposed(const ConvGeom& g) {
  ConvGeom t = g;
  t.C = g.K;
  t.K = g.C;
  return t;
}
Vec flipped_transposed(const ConvGeom& g, const Vec& w) {
  Vec wt(w.size());
  for (int k = 0; k < g.K; ++k)
    for (int c = 0; c < g.C; ++c)
      for (int r = 0; r < 9; ++r)
        wt[(static_cast<std::size_t>(c) * g.K + k) * 9 + (8 - r)] = w[(static_cast<std::size_t>(k) * g.C + c) * 9 + r];
  return wt;
}

// |b| at every output of a [N, K, H, W] result.
Vec broadcast_bias(const ConvGeom& g, const Vec& b) {
  Vec out(static_cast<std::size_t>(g.N) * g.K * g.H * g.W);
  const std::size_t plane = static_cast<std::size_t>(g.H) * g.W;
  for (std::size_t i = 0; i < out.size(); ++i) out[i] = std::fabs(b[(i / plane) % static_cast<std::size_t>(g.K)]);
  return out;
}

// The fused losses compute each output from a handful of roundings (the shift by the row
// maximum, exp, log, the division by the sum, the scale by grad_scale), each at most u relative
// when done in double and rounded once, or a few u when done in float: 16 u (~1e-6) bounds them.
// It does not depend on the size of the logits: the losses depend on differences of logits only.
constexpr double kLossTol = 16 * kU;

// Step for finite differences through the float32 forward ops. Conv, linear and pooling outputs
// are linear in every input element, so L = sum(y * r) is exactly linear along every probe
// direction and the central difference has NO truncation error, whatever the step: a large step
// only shrinks the float32 rounding noise of L (the few outputs that read the probed element
// change with rounding errors around sqrt(k) u |y| ~ 1e-6) when it is divided by 2h. h = 0.5 makes
// that noise ~1e-6 of a typical gradient entry.
constexpr float kLinearStep = 0.5f;
// Leaky ReLU is only piecewise linear: the step must not cross the kink at 0, so the inputs of its
// finite-difference check are kept at least 0.1 away from 0 and h = 0.05 < 0.1. One output changes
// per probe (no accumulation), so the noise is u |y| / 2h ~ 1e-6 of an entry.
constexpr float kKinkStep = 0.05f;
// Against that noise (<= ~1e-5 relative), 1e-4 is a safe margin, while one wrong gradient entry
// among the <= 256 probed costs about 1/sqrt(256) = 6e-2 (1/4 among the convolutions' 16).
constexpr double kFdTol = 1e-4;

// Finite differences of the losses are taken in double on their definition (logsumexp), with
// h = 1e-4: truncation h^2/6 max|f'''| < 2e-9 (third derivatives of logsumexp are below 1) and
// cancellation ~1e-16 |L| / h ~ 1e-11, so the check measures the backend's float32 rounding of
// dlogits, bounded by kLossTol ~ 1e-6 like the naive comparison; 1e-5 leaves a 10x margin.
constexpr double kLossStep = 1e-4;
constexpr double kLossFdTol = 1e-5;

void expect_close(const Vec& got, const Vec& want, double tol, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  const double err = rel_error(got, want);
  // NaN compares false, so an output left at its NaN prefill fails here too.
  EXPECT_LE(err, tol) << what << ": relative error " << err << " exceeds " << tol;
}

void expect_bit_identical(const Vec& a, const Vec& b, const std::string& what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0)
      << what << ": not bit-identical (max |diff| " << max_abs_diff(a, b) << ")";
}

// ---- finite differences -----------------------------------------------------------------------------
// Indices to probe: all of a small tensor, an evenly spread subset of a larger one (each probe
// costs two forward passes). The first and last elements (image corners, padding) are always in.
std::vector<std::size_t> probe_indices(std::size_t n, std::size_t max_count = 256) {
  std::vector<std::size_t> idx;
  const std::size_t count = std::min(n, max_count);
  for (std::size_t j = 0; j < count; ++j)
    idx.push_back(count == 1 ? 0 : j * (n - 1) / (count - 1));
  return idx;
}

Vec gather(const Vec& v, const std::vector<std::size_t>& idx) {
  Vec out;
  for (std::size_t i : idx) out.push_back(v[i]);
  return out;
}

// dL/dv_i ~ (L(v + h e_i) - L(v - h e_i)) / (actual step), for i in idx. The divisor is the
// difference of the two perturbed values as stored in float, not 2h, so that rounding v_i +- h
// to float does not enter the estimate.
Vec central_differences(const Vec& v, const std::vector<std::size_t>& idx, float h,
                        const std::function<double(const Vec&)>& L) {
  Vec probe = v;
  Vec out;
  for (std::size_t i : idx) {
    probe[i] = v[i] + h;
    const double up_at = probe[i], up = L(probe);
    probe[i] = v[i] - h;
    const double down_at = probe[i], down = L(probe);
    probe[i] = v[i];
    out.push_back(static_cast<float>((up - down) / (up_at - down_at)));
  }
  return out;
}

// Finite differences along random directions (the check PyTorch's gradcheck makes in its fast
// mode): for each of `count` directions u, entries uniform in [-1, 1], the change of L from
// v - h u to v + h u against the change the analytic gradient predicts, <grad, v+ - v->, with v+
// and v- as stored in float (so that rounding v +- h u does not enter, as above). Every entry of
// the gradient enters every direction, so a wrong entry shows wherever it is, where a probe per
// element covers only the elements it probes. An entry wrong by its own size moves a direction by
// about 1/sqrt(n) of its value: >= 4e-3 for the largest tensors checked this way (n <= 52k), 40x
// kFdTol. For L linear in v the difference has no truncation error; its rounding noise is that
// of the per-element probes (~u sqrt(k) |L| / h, below 1e-5 relative).
struct Directional {
  Vec fd, analytic;  // [count] each: (L(v+) - L(v-)) / 2h and <grad, v+ - v-> / 2h
};
Directional directional_differences(const Vec& v, const Vec& grad, int count, float h,
                                    std::uint64_t seed,
                                    const std::function<double(const Vec&)>& L) {
  Directional d;
  Vec up(v.size()), down(v.size());
  for (int j = 0; j < count; ++j) {
    const Vec u = random_vector(v.size(), seed + std::uint64_t(j));
    double predicted = 0.0;
    for (std::size_t i = 0; i < v.size(); ++i) {
      up[i] = v[i] + h * u[i];
      down[i] = v[i] - h * u[i];
      predicted += double(grad[i]) * (double(up[i]) - double(down[i]));
    }
    d.fd.push_back(static_cast<float>((L(up) - L(down)) / (2.0 * h)));
    d.analytic.push_back(static_cast<float>(predicted / (2.0 * h)));
  }
  return d;
}

// The same in double, for functions evaluated in double.
Vec central_differences_f64(const std::vector<double>& v, double h,
                            const std::function<double(const std::vector<double>&)>& L) {
  std::vector<double> probe = v;
  Vec out;
  for (std::size_t i = 0; i < v.size(); ++i) {
    probe[i] = v[i] + h;
    const double up = L(probe);
    probe[i] = v[i] - h;
    const double down = L(probe);
    probe[i] = v[i];
    out.push_back(static_cast<float>((up - down) / (2 * h)));
  }
  return out;
}

// L = sum(y * r) in double: the scalar whose gradient with respect to y is r.
double weighted_sum(const Vec& y, const Vec& r) {
  double s = 0.0;
  for (std::size_t i = 0; i < y.size(); ++i) s += double(y[i]) * r[i];
  return s;
}

// Uniform values in [-1.1, -0.1] U [0.1, 1.1]: at least 0.1 from leaky ReLU's kink.
Vec away_from_zero(std::size_t n, std::uint64_t seed) {
  Vec v = random_vector(n, seed);
  for (float& x : v) x = x < 0.0f ? x - 0.1f : x + 0.1f;
  return v;
}

// ---- convolution through the backend ------------------------------------------------------------------

ConvGeom geom(const ConvCase& c) {
  ConvGeom g;
  g.N = c.N;
  g.C = c.C;
  g.H = g.W = c.HW;
  g.K = c.K;
  g.R = g.S = c.R;
  g.stride = c.stride;
  g.pad_h = g.pad_w = c.pad;
  return g;
}

Shape x_shape(const ConvGeom& g) { return Shape{g.N, g.C, g.H, g.W}; }
Shape w_shape(const ConvGeom& g) { return Shape{g.K, g.C, g.R, g.S}; }
Shape y_shape(const ConvGeom& g) {
  return Shape{g.N, g.K, naive::conv_out_size(g.H, g.R, g.stride, g.pad_h),
               naive::conv_out_size(g.W, g.S, g.stride, g.pad_w)};
}
std::size_t numel(const Shape& s) { return static_cast<std::size_t>(s.numel()); }

// y[N,K,P,Q]; y starts as NaN, so an op that reads its output instead of overwriting it fails.
Vec cpu_conv_forward(Backend& be, const ConvGeom& g, const Vec& x, const Vec& w, const Vec& b) {
  Tensor y = be.empty(y_shape(g));
  be.fill(y, kNaN);
  be.conv2d_forward(be.from_vector(x, x_shape(g)), be.from_vector(w, w_shape(g)),
                    be.from_vector(b, Shape{g.K}), y, g.stride, g.pad_h, g.pad_w);
  return be.to_vector(y);
}

// dx[N,C,H,W], prefilled with NaN (it must be overwritten).
Vec cpu_conv_backward_data(Backend& be, const ConvGeom& g, const Vec& dy, const Vec& w) {
  Tensor dx = be.empty(x_shape(g));
  be.fill(dx, kNaN);
  be.conv2d_backward_data(be.from_vector(dy, y_shape(g)), be.from_vector(w, w_shape(g)), dx,
                          g.stride, g.pad_h);
  return be.to_vector(dx);
}

struct FilterGrad {
  Vec dw;  // [K, C, R, R]
  Vec db;  // [K], empty when db was left undefined
};

// dw/db start from the given prior contents (they accumulate); an empty db0 leaves db undefined.
FilterGrad cpu_conv_backward_filter(Backend& be, const ConvGeom& g, const Vec& x, const Vec& dy,
                                    const Vec& dw0, const Vec& db0) {
  Tensor dw = be.from_vector(dw0, w_shape(g));
  Tensor db = db0.empty() ? Tensor() : be.from_vector(db0, Shape{g.K});
  be.conv2d_backward_filter(be.from_vector(x, x_shape(g)), be.from_vector(dy, y_shape(g)), dw, db,
                            g.stride, g.pad_h);
  return {be.to_vector(dw), db0.empty() ? Vec{} : be.to_vector(db)};
}

// Random inputs of one convolution, fixed by the case's seed.
struct ConvData {
  Vec x, w, b, dy;  // [N,C,H,W], [K,C,R,R], [K], [N,K,P,Q]
  explicit ConvData(const ConvGeom& g, std::uint64_t seed = 1)
      : x(random_vector(numel(x_shape(g)), seed)),
        w(random_vector(numel(w_shape(g)), seed + 1)),
        b(random_vector(static_cast<std::size_t>(g.K), seed + 2)),
        dy(random_vector(numel(y_shape(g)), seed + 3)) {}
};

// Number of products summed into one output of each convolution op.
int forward_terms(const ConvGeom& g) { return g.C * g.R * g.R + 1; }  // + the bias
int backward_data_terms(const ConvGeom& g) { return g.K * g.R * g.R; }
int backward_filter_terms(const ConvGeom& g) {
  return g.N * naive::conv_out_size(g.H, g.R, g.stride, g.pad_h) *
         naive::conv_out_size(g.W, g.S, g.stride, g.pad_w);
}

// Every case runs on every convolution path of the CPU backend: "im2col" (im2col + sgemm),
// "avx2" (the AVX2 direct 3x3 kernels where they apply: 3x3, stride 1 or 2, pad 1, on an AVX2
// CPU) and "best". On an AVX-512 CPU "best" takes, for 3x3 pad-1 convolutions: the flat weight
// gradient (conv3x3_wgrad512) at stride 1 and 2; the flat stride-2 forward and data gradient
// (conv3x3_s2_flat512); the channel-vectorised kernel (conv3x3_cvec512) for the forward and
// stride-1 data gradient where rows have <= 8 pixels and >= 64 output channels; the AVX-512
// direct kernel for other stride-1 rows wider than 8 pixels; AVX2 otherwise. (On a CPU without
// AVX-512, "best" is "avx2": CpuOpsConvKernels.Avx512KernelsRun says so.)
class CpuOpsConv : public ::testing::TestWithParam<std::tuple<ConvCase, CpuConvKernels>> {
 protected:
  CpuConvKernels kernels = std::get<1>(GetParam());
  std::unique_ptr<Backend> be = make_cpu_backend(2, kernels);
  ConvGeom g = geom(std::get<0>(GetParam()));
  ConvData d{g};
  Vec zero_dw = Vec(numel(w_shape(g)), 0.0f);
  Vec zero_db = Vec(static_cast<std::size_t>(g.K), 0.0f);
};

TEST_P(CpuOpsConv, ForwardMatchesNaive) {
  const Vec got = cpu_conv_forward(*be, g, d.x, d.w, d.b);
  const Vec want = naive::conv2d_forward(g, d.x, d.w, d.b);
  const Vec mag = naive::conv2d_forward(g, abs_of(d.x), abs_of(d.w), abs_of(d.b));
  double tol = sum_tolerance(forward_terms(g), mag, want);
  if (may_take_winograd(kernels, g))
    tol = std::max(tol, sum_tolerance(winograd_terms(g),
                                      sum_of(winograd_magnitude(g, abs_of(d.x), abs_of(d.w)), broadcast_bias(g, d.b)),
                                      want));
  expect_close(got, want, tol, "conv2d_forward");
}

// The residual form y = conv(x, w) + b + z (one more term per output), with and without a bias,
// into a NaN-filled y (overwritten, not added to). Both kernel paths add z themselves (the direct
// kernel as it stores each vector, im2col by starting the GEMM's output at b + z).
TEST_P(CpuOpsConv, ForwardAddMatchesNaive) {
  const Vec z = random_vector(numel(y_shape(g)), 5);
  for (const bool with_bias : {true, false}) {
    const Vec bias = with_bias ? d.b : Vec(static_cast<std::size_t>(g.K), 0.0f);
    Tensor y = be->empty(y_shape(g));
    be->fill(y, kNaN);
    be->conv2d_forward_add(be->from_vector(d.x, x_shape(g)), be->from_vector(d.w, w_shape(g)),
                           with_bias ? be->from_vector(bias, Shape{g.K}) : Tensor(),
                           be->from_vector(z, y_shape(g)), y, g.stride, g.pad_h);
    const Vec want = sum_of(naive::conv2d_forward(g, d.x, d.w, bias), z);
    const Vec mag = sum_of(naive::conv2d_forward(g, abs_of(d.x), abs_of(d.w), abs_of(bias)), abs_of(z));
    double tol = sum_tolerance(forward_terms(g) + 1, mag, want);
    if (may_take_winograd(kernels, g))
      tol = std::max(tol, sum_tolerance(winograd_terms(g),
                                        sum_of(sum_of(winograd_magnitude(g, abs_of(d.x), abs_of(d.w)),
                                                      broadcast_bias(g, bias)),
                                               abs_of(z)),
                                        want));
    expect_close(be->to_vector(y), want, tol,
                 with_bias ? "conv2d_forward_add" : "conv2d_forward_add without bias");
  }
}

// The fused convolution + LeakyReLU ops give the bits of the unfused ops they replace (the
// Backend's contract; the CPU runs the activation on each image as soon as it is written, on
// every kernel path), for every combination of bias, residual and pre-activation output.
TEST_P(CpuOpsConv, FusedForwardLeakyReluIsTheUnfusedOps) {
  const float slope = 0.2f;
  const Vec zv = random_vector(numel(y_shape(g)), 5);
  const Tensor x = be->from_vector(d.x, x_shape(g)), w = be->from_vector(d.w, w_shape(g));
  for (const bool with_b : {true, false})
    for (const bool with_z : {true, false})
      for (const bool with_t : {true, false}) {
        const std::string what = std::string("b ") + (with_b ? "yes" : "no") + ", z " + (with_z ? "yes" : "no") +
                                 ", t " + (with_t ? "yes" : "no");
        const Tensor b = with_b ? be->from_vector(d.b, Shape{g.K}) : Tensor();
        const Tensor z = with_z ? be->from_vector(zv, y_shape(g)) : Tensor();
        // The unfused ops: conv1's way (conv, then bias + activation) when there is only a
        // bias; otherwise the convolution with its bias and residual, then the activation.
        Tensor t_want = be->empty(y_shape(g)), y_want = be->empty(y_shape(g));
        if (with_b && !with_z && !with_t) {
          be->conv2d_forward(x, w, Tensor(), t_want, g.stride, g.pad_h);
          be->bias_leaky_relu_forward(t_want, b, y_want, slope);
        } else {
          if (with_z) be->conv2d_forward_add(x, w, b, z, t_want, g.stride, g.pad_h);
          else be->conv2d_forward(x, w, b, t_want, g.stride, g.pad_h);
          be->leaky_relu_forward(t_want, y_want, slope);
        }
        Tensor t = with_t ? be->empty(y_shape(g)) : Tensor(), y = be->empty(y_shape(g));
        if (with_t) be->fill(t, kNaN);
        be->fill(y, kNaN);
        be->conv2d_forward_leaky_relu(x, w, b, z, t, y, g.stride, g.pad_h, slope);
        expect_bit_identical(be->to_vector(y), be->to_vector(y_want), "y, " + what);
        if (with_t) expect_bit_identical(be->to_vector(t), be->to_vector(t_want), "t, " + what);
      }
}

TEST_P(CpuOpsConv, FusedBackwardDataLeakyReluIsTheUnfusedOps) {
  const float slope = 0.2f;
  const Tensor dy = be->from_vector(d.dy, y_shape(g)), w = be->from_vector(d.w, w_shape(g));
  const Tensor m = be->from_vector(random_vector(numel(x_shape(g)), 6), x_shape(g));
  for (const bool with_z : {true, false}) {
    const Tensor z = with_z ? be->from_vector(random_vector(numel(x_shape(g)), 7), x_shape(g)) : Tensor();
    Tensor want = be->empty(x_shape(g));
    be->conv2d_backward_data(dy, w, want, g.stride, g.pad_h);
    if (with_z) be->leaky_relu_backward_add(m, want, z, want, slope);
    else be->leaky_relu_backward(m, want, want, slope);
    Tensor dx = be->empty(x_shape(g));
    be->fill(dx, kNaN);
    be->conv2d_backward_data_leaky_relu(dy, w, m, z, dx, g.stride, g.pad_h, slope);
    expect_bit_identical(be->to_vector(dx), be->to_vector(want), with_z ? "with z" : "without z");
  }
}

TEST_P(CpuOpsConv, BackwardDataMatchesNaive) {
  const Vec got = cpu_conv_backward_data(*be, g, d.dy, d.w);
  const Vec want = naive::conv2d_backward_data(g, d.dy, d.w);
  const Vec mag = naive::conv2d_backward_data(g, abs_of(d.dy), abs_of(d.w));
  double tol = sum_tolerance(backward_data_terms(g), mag, want);
  if (may_take_winograd(kernels, g)) {
    const ConvGeom tg = transposed(g);
    tol = std::max(tol, sum_tolerance(winograd_terms(tg),
                                      winograd_magnitude(tg, abs_of(d.dy), abs_of(flipped_transposed(g, d.w))), want));
  }
  expect_close(got, want, tol, "conv2d_backward_data");
}

TEST_P(CpuOpsConv, BackwardFilterMatchesNaive) {
  const FilterGrad got = cpu_conv_backward_filter(*be, g, d.x, d.dy, zero_dw, zero_db);
  const naive::ConvFilterGrad want = naive::conv2d_backward_filter(g, d.x, d.dy);
  const naive::ConvFilterGrad mag = naive::conv2d_backward_filter(g, abs_of(d.x), abs_of(d.dy));
  const int k = backward_filter_terms(g);
  double tol = sum_tolerance(k, mag.dw, want.dw);
  if (may_take_winograd_filter_grad(kernels, g))
    tol = std::max(tol, sum_tolerance(winograd_filter_grad_terms(g),
                                      winograd_filter_grad_magnitude(g, abs_of(d.x), abs_of(d.dy)), want.dw));
  expect_close(got.dw, want.dw, tol, "conv dw");
  expect_close(got.db, want.db, sum_tolerance(k, mag.db, want.db), "conv db");
}

// Parameter gradients ACCUMULATE: dw = dw0 + x (*) dy, db = db0 + sum dy (one more term each).
TEST_P(CpuOpsConv, BackwardFilterAccumulates) {
  const Vec dw0 = random_vector(zero_dw.size(), 11), db0 = random_vector(zero_db.size(), 12);
  const FilterGrad got = cpu_conv_backward_filter(*be, g, d.x, d.dy, dw0, db0);
  const naive::ConvFilterGrad fresh = naive::conv2d_backward_filter(g, d.x, d.dy);
  const naive::ConvFilterGrad mag = naive::conv2d_backward_filter(g, abs_of(d.x), abs_of(d.dy));
  const int k = backward_filter_terms(g) + 1;
  const Vec want_dw = sum_of(dw0, fresh.dw), want_db = sum_of(db0, fresh.db);
  double tol = sum_tolerance(k, sum_of(abs_of(dw0), mag.dw), want_dw);
  if (may_take_winograd_filter_grad(kernels, g))
    tol = std::max(tol, sum_tolerance(winograd_filter_grad_terms(g) + 1,
                                      sum_of(abs_of(dw0), winograd_filter_grad_magnitude(g, abs_of(d.x), abs_of(d.dy))),
                                      want_dw));
  expect_close(got.dw, want_dw, tol, "dw");
  expect_close(got.db, want_db, sum_tolerance(k, sum_of(abs_of(db0), mag.db), want_db), "db");
}

// The bias is optional in forward too (a following op adds it): no bias is a zero bias.
TEST_P(CpuOpsConv, ForwardWithoutBiasIsZeroBias) {
  const Tensor x = be->from_vector(d.x, x_shape(g)), w = be->from_vector(d.w, w_shape(g));
  const Tensor y0 = be->empty(y_shape(g)), y1 = be->empty(y_shape(g));
  be->fill(y1, 5.0f);  // overwritten, not added to
  be->conv2d_forward(x, w, be->empty(Shape{g.K}), y0, g.stride, g.pad_h, g.pad_w);
  be->conv2d_forward(x, w, Tensor(), y1, g.stride, g.pad_h, g.pad_w);
  expect_bit_identical(be->to_vector(y1), be->to_vector(y0), "no bias vs zero bias");
}

// db is optional: leaving it undefined must not change dw.
TEST_P(CpuOpsConv, BackwardFilterWithoutBias) {
  const FilterGrad with_db = cpu_conv_backward_filter(*be, g, d.x, d.dy, zero_dw, zero_db);
  const FilterGrad without = cpu_conv_backward_filter(*be, g, d.x, d.dy, zero_dw, Vec{});
  expect_bit_identical(without.dw, with_db.dw, "dw without db");
}

// The convolutions' gradients against finite differences, two ways, each pair of forward passes
// paid in every case: kConvProbes single elements, spread evenly with both corners in (a wrong
// entry there is named by its position), and kConvDirections random directions (every entry
// checked at once). Both at kFdTol. The naive loops above check every entry one by one.
constexpr std::size_t kConvProbes = 16;
constexpr int kConvDirections = 4;

// Both finite-difference checks of the gradient `analytic` of L at v.
void expect_gradient_matches_fd(const Vec& v, const Vec& analytic, std::uint64_t seed,
                                const std::function<double(const Vec&)>& L,
                                const std::string& what) {
  const auto idx = probe_indices(v.size(), kConvProbes);
  expect_close(gather(analytic, idx), central_differences(v, idx, kLinearStep, L), kFdTol,
               what + " vs finite differences");
  const Directional dir =
      directional_differences(v, analytic, kConvDirections, kLinearStep, seed, L);
  expect_close(dir.analytic, dir.fd, kFdTol,
               what + " vs finite differences along random directions");
}

// dx = dL/dx of L(x) = sum(conv(x) * r): backward-data applied to r.
TEST_P(CpuOpsConv, BackwardDataMatchesFiniteDifferences) {
  const Vec r = random_vector(numel(y_shape(g)), 21);
  const Vec analytic = cpu_conv_backward_data(*be, g, r, d.w);
  expect_gradient_matches_fd(d.x, analytic, 31, [&](const Vec& x) {
    return weighted_sum(cpu_conv_forward(*be, g, x, d.w, d.b), r);
  }, "conv dx");
}

// dw, db = dL/dw, dL/db of the same L, from backward-filter applied to r.
// (Where the forward pass may run by Winograd, L is taken through the direct kernels' forward
// instead: Winograd multiplies a weight by padding through transforms whose roundings do not
// cancel exactly, so on a 1x1 image, where every weight but the centre tap has an exact zero
// gradient, the finite differences of those weights are pure rounding noise and a relative
// comparison with the zeros is meaningless. The direct kernels multiply padding by exact zeros.
// The Winograd forward itself is checked against the naive loops in ForwardMatchesNaive.)
TEST_P(CpuOpsConv, BackwardFilterMatchesFiniteDifferences) {
  const Vec r = random_vector(numel(y_shape(g)), 22);
  const FilterGrad analytic = cpu_conv_backward_filter(*be, g, d.x, r, zero_dw, zero_db);
  const std::unique_ptr<Backend> direct = make_cpu_backend(2, CpuConvKernels::kDirectAvx2);
  Backend& fwd = may_take_winograd(kernels, g) ? *direct : *be;
  expect_gradient_matches_fd(d.w, analytic.dw, 41, [&](const Vec& w) {
    return weighted_sum(cpu_conv_forward(fwd, g, d.x, w, d.b), r);
  }, "conv dw");
  expect_gradient_matches_fd(d.b, analytic.db, 51, [&](const Vec& b) {
    return weighted_sum(cpu_conv_forward(fwd, g, d.x, d.w, b), r);
  }, "conv db");
}

// Both the Wide-ResNet shapes (3x3 pad 1, 1x1 pad 0 shortcut; stride 1 and 2) and the edges:
// 1 and 3 input channels, odd batches and images, channel counts that are not powers of two,
// windows that do not tile the image, a 1x1 image.
INSTANTIATE_TEST_SUITE_P(
    Shapes, CpuOpsConv,
    ::testing::Combine(
    ::testing::Values(ConvCase{1, 3, 7, 5, 3, 1, 1},    // RGB stem at batch 1
                      ConvCase{3, 1, 7, 6, 3, 1, 1},    // grayscale stem
                      ConvCase{5, 3, 7, 6, 3, 2, 1},    // 3x3 stride 2, odd image
                      ConvCase{3, 6, 8, 10, 3, 2, 1},   // 3x3 stride 2, even image
                      ConvCase{5, 5, 7, 7, 3, 1, 1},    // block conv, odd channels
                      ConvCase{3, 6, 7, 10, 1, 1, 0},   // 1x1 stride 1: the no-im2col path
                      ConvCase{5, 6, 7, 10, 1, 2, 0},   // 1x1 stride 2 shortcut, odd image
                      ConvCase{3, 5, 8, 12, 1, 2, 0},   // 1x1 stride 2 shortcut, even image
                      ConvCase{1, 3, 5, 3, 3, 1, 0},    // unpadded 3x3
                      ConvCase{3, 2, 4, 3, 3, 2, 0},    // last row/column never read
                      ConvCase{3, 3, 1, 5, 3, 1, 1},    // 1x1 image: all but one tap is padding
                      // The direct 3x3 kernel's edges: rows of 8-pixel vectors with a partial
                      // last one (W = 9, 14, 28), blocks of 4 output channels with a partial
                      // last one (K = 1, 9), a 3-vector tile block that wraps across rows.
                      ConvCase{1, 8, 28, 8, 3, 1, 1},    // the quickstart's first image size
                      ConvCase{2, 5, 9, 9, 3, 1, 1},
                      ConvCase{3, 4, 14, 1, 3, 1, 1},    // K = 1: the image gradient's shape
                      ConvCase{1, 2, 16, 8, 3, 1, 1},    // W a multiple of 8
                      // The direct weight gradient (W >= 16): partial vectors and channel blocks.
                      ConvCase{2, 3, 17, 6, 3, 1, 1},
                      // The direct stride-2 forward and data gradient: output rows of 14 (a
                      // partial vector) and of 9 from an odd image, a partial channel block.
                      ConvCase{2, 4, 28, 6, 3, 2, 1},
                      ConvCase{1, 3, 17, 5, 3, 2, 1},
                      // Stride-2 images of 1 and 2 pixels: data-gradient phases that are empty.
                      ConvCase{2, 3, 1, 5, 3, 2, 1},
                      ConvCase{2, 3, 2, 4, 3, 2, 1},
                      // The AVX-512 flat weight gradient (conv3x3_wgrad512.hpp): chunks of 2
                      // images of 28x28 with a partial last one (3 images on the second of 2
                      // threads) and channel blocks of 3 + 2 + 2; stride-2 chunks of one 63x63
                      // image each (odd, so the last padded row and column are zero).
                      ConvCase{5, 3, 28, 7, 3, 1, 1},
                      ConvCase{4, 2, 63, 4, 3, 2, 1},
                      // The AVX-512 channel-vectorised kernel (conv3x3_cvec512.hpp: rows of <= 8
                      // pixels, >= 64 output channels): a partial channel group (70 = 64 + 6) and
                      // 64 pixels in blocks of 6 (the last of 4); the data gradient, whose
                      // output channels are C = 67; stride 2 with 8x8 outputs of an odd image.
                      ConvCase{2, 5, 8, 70, 3, 1, 1},
                      ConvCase{2, 67, 6, 64, 3, 1, 1},
                      ConvCase{3, 3, 15, 65, 3, 2, 1},
                      // ... groups of 3 and 2 vectors (100 = 64 + 36 output channels; the data
                      // gradient's 90 = 64 + 26), fewer pixels than one block of 6 (5x5: the
                      // last block holds 1; 1x1), a last vector of exactly 16 lanes (80).
                      ConvCase{2, 3, 5, 100, 3, 1, 1},
                      ConvCase{2, 90, 4, 64, 3, 1, 1},
                      ConvCase{2, 64, 1, 64, 3, 1, 1},
                      ConvCase{2, 3, 2, 80, 3, 2, 1},
                      // The flat weight gradient's partial last chunk at stride 2 (2 images of
                      // 32x32 blocks per chunk, 3 images per thread).
                      ConvCase{6, 2, 61, 3, 3, 2, 1}),
    ::testing::Values(CpuConvKernels::kBest, CpuConvKernels::kIm2col, CpuConvKernels::kDirectAvx2,
                      CpuConvKernels::kWinogradAvx2)),
    [](const ::testing::TestParamInfo<std::tuple<ConvCase, CpuConvKernels>>& info) {
      return conv_tag(std::get<0>(info.param)) +
             (std::get<1>(info.param) == CpuConvKernels::kBest          ? "_best"
              : std::get<1>(info.param) == CpuConvKernels::kIm2col      ? "_im2col"
              : std::get<1>(info.param) == CpuConvKernels::kDirectAvx2  ? "_avx2"
                                                                        : "_winograd");
    });

// The "best" kernels on an AVX-512 CPU are not the AVX2 ones: on each shape that a new AVX-512
// kernel takes, the result's bits differ from the AVX2 path's (another summation order), while
// CpuOpsConv checks both against the naive loops. Skipped (and said so) on CPUs without
// AVX-512, where those cases run the AVX2 and im2col paths only.
TEST(CpuOpsConvKernels, Avx512KernelsRun) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  if (!__builtin_cpu_supports("avx512f")) GTEST_SKIP() << "no AVX-512 on this CPU: the AVX-512 kernels were not tested";
#else
  GTEST_SKIP() << "not an x86-64 build: the AVX-512 kernels were not tested";
#endif
  auto best = make_cpu_backend(2, CpuConvKernels::kBest), avx2 = make_cpu_backend(2, CpuConvKernels::kDirectAvx2);
  struct Case {
    ConvCase cc;
    bool fwd, dx, dw;  // which results a new AVX-512 kernel computes
  };
  for (const Case& k : {Case{{3, 8, 28, 8, 3, 1, 1}, false, false, true},  // flat weight gradient
                        // flat stride 2 (its forward adds the products in the AVX2 kernel's
                        // order, bias, channels, taps, so only its gradients' bits differ)
                        Case{{3, 6, 14, 10, 3, 2, 1}, false, true, true},
                        Case{{2, 64, 6, 64, 3, 1, 1}, true, true, true}}) {  // channel-vectorised
    const ConvGeom g = geom(k.cc);
    const ConvData d(g, 61);
    const std::string tag = conv_tag(k.cc);
    if (k.fwd) {
      EXPECT_NE(cpu_conv_forward(*best, g, d.x, d.w, d.b), cpu_conv_forward(*avx2, g, d.x, d.w, d.b)) << tag;
    }
    if (k.dx) {
      EXPECT_NE(cpu_conv_backward_data(*best, g, d.dy, d.w), cpu_conv_backward_data(*avx2, g, d.dy, d.w)) << tag;
    }
    if (k.dw) {
      const Vec zw(d.w.size(), 0.0f), zb(d.b.size(), 0.0f);
      EXPECT_NE(cpu_conv_backward_filter(*best, g, d.x, d.dy, zw, zb).dw,
                cpu_conv_backward_filter(*avx2, g, d.x, d.dy, zw, zb).dw)
          << tag;
    }
  }
}

// Scratch buffers are reused between calls: a big convolution followed by a small one (and the
// other way round) must give the same small result as a fresh backend.
TEST(CpuOpsConvScratch, ReuseAcrossShapes) {
  const ConvGeom big = geom({5, 6, 8, 10, 3, 1, 1}), small = geom({3, 2, 5, 3, 3, 2, 1});
  const ConvData db(big, 31), ds(small, 41);
  auto fresh = make_cpu_backend(2);
  const Vec want_y = cpu_conv_forward(*fresh, small, ds.x, ds.w, ds.b);
  const Vec want_dx = cpu_conv_backward_data(*fresh, small, ds.dy, ds.w);
  const Vec zero_w(numel(w_shape(small)), 0.0f), zero_b(3, 0.0f);
  const FilterGrad want_g = cpu_conv_backward_filter(*fresh, small, ds.x, ds.dy, zero_w, zero_b);

  auto be = make_cpu_backend(2);
  const Vec big_zero_w(numel(w_shape(big)), 0.0f), big_zero_b(10, 0.0f);
  cpu_conv_forward(*be, big, db.x, db.w, db.b);
  cpu_conv_backward_data(*be, big, db.dy, db.w);
  cpu_conv_backward_filter(*be, big, db.x, db.dy, big_zero_w, big_zero_b);
  expect_bit_identical(cpu_conv_forward(*be, small, ds.x, ds.w, ds.b), want_y, "y");
  expect_bit_identical(cpu_conv_backward_data(*be, small, ds.dy, ds.w), want_dx, "dx");
  const FilterGrad got = cpu_conv_backward_filter(*be, small, ds.x, ds.dy, zero_w, zero_b);
  expect_bit_identical(got.dw, want_g.dw, "dw");
  expect_bit_identical(got.db, want_g.db, "db");
}

// The fused ops read z (and m) after writing their outputs: overlaps are refused, by name.
TEST(CpuOpsConvFused, OverlapsAreRefused) {
  auto be = make_cpu_backend(1);
  const ConvGeom g = geom(ConvCase{2, 3, 6, 3, 3, 1, 1});
  const Tensor x = be->empty(x_shape(g)), w = be->empty(w_shape(g)), b = be->empty(Shape{g.K});
  be->fill(x, 1.0f);
  be->fill(w, 1.0f);
  be->fill(b, 0.0f);
  const Tensor buf = be->empty(Shape{2 * y_shape(g).numel()});
  const Tensor y = buf.view(0, y_shape(g)), t = buf.view(numel(y_shape(g)), y_shape(g));
  auto message = [](auto&& f) {
    try {
      f();
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message([&] { be->conv2d_forward_leaky_relu(x, w, b, y, Tensor(), y, 1, 1, 0.2f); }).find("z overlaps"),
            std::string::npos);
  EXPECT_NE(message([&] { be->conv2d_forward_leaky_relu(x, w, b, Tensor(), y, y, 1, 1, 0.2f); }).find("t overlaps y"),
            std::string::npos);
  EXPECT_NE(message([&] { be->conv2d_forward_leaky_relu(x, w, b, t, t, y, 1, 1, 0.2f); }).find("z overlaps"),
            std::string::npos);
  const Tensor xy = be->empty(y_shape(g));  // x's shape equals y's here (3 -> 3 channels, stride 1, pad 1)
  be->fill(xy, 1.0f);
  EXPECT_NE(message([&] { be->conv2d_forward_leaky_relu(xy, w, b, Tensor(), Tensor(), xy, 1, 1, 0.2f); })
                .find("x overlaps"),
            std::string::npos);
  EXPECT_EQ(message([&] { be->conv2d_forward_leaky_relu(x, w, b, Tensor(), t, y, 1, 1, 0.2f); }), "no error");
  const Tensor dy = be->empty(y_shape(g)), dx = be->empty(x_shape(g));
  be->fill(dy, 1.0f);
  EXPECT_NE(message([&] { be->conv2d_backward_data_leaky_relu(dy, w, dx, Tensor(), dx, 1, 1, 0.2f); })
                .find("overlaps dx"),
            std::string::npos);
  EXPECT_NE(message([&] { be->conv2d_backward_data_leaky_relu(dy, w, x, dx, dx, 1, 1, 0.2f); }).find("overlaps dx"),
            std::string::npos);
  const Tensor dyx = be->empty(x_shape(g));  // dy's shape equals dx's here
  be->fill(dyx, 1.0f);
  EXPECT_NE(message([&] { be->conv2d_backward_data_leaky_relu(dyx, w, x, Tensor(), dyx, 1, 1, 0.2f); })
                .find("dy overlaps dx"),
            std::string::npos);
}

TEST(CpuOpsConvScratch, EmptyBatchIsANoOp) {
  auto be = make_cpu_backend(2);
  expect_empty_batch_conv_is_noop(*be);
}

// ---- elementwise ----------------------------------------------------------------------------------
TEST(CpuOpsElementwise, FillAndCopy) {
  auto be = make_cpu_backend(2);
  Tensor t = be->empty(Shape{3, 5, 7});  // [3, 5, 7]
  be->fill(t, -2.5f);
  for (float v : be->to_vector(t)) ASSERT_EQ(v, -2.5f);
  const Vec src = random_vector(105, 51);
  Tensor dst = be->empty(Shape{105});  // same elements, another shape: allowed
  be->copy(be->from_vector(src, Shape{3, 5, 7}), dst);
  expect_bit_identical(be->to_vector(dst), src, "copy");
}

TEST(CpuOpsElementwise, AddMatchesNaive) {
  auto be = make_cpu_backend(2);
  const Vec a = random_vector(3 * 5 * 7 * 7, 52), b = random_vector(a.size(), 53);
  const Shape s{3, 5, 7, 7};
  Tensor y = be->empty(s);
  be->fill(y, kNaN);
  be->add(be->from_vector(a, s), be->from_vector(b, s), y);
  // One float addition per element, correctly rounded both ways: bit-identical.
  expect_bit_identical(be->to_vector(y), naive::add(a, b), "add");
}

// The residual add may write into either operand.
TEST(CpuOpsElementwise, AddAliasing) {
  auto be = make_cpu_backend(2);
  const Shape s{5, 3, 7, 7};
  const Vec a = random_vector(numel(s), 54), b = random_vector(numel(s), 55);
  const Vec want = naive::add(a, b);
  Tensor ta = be->from_vector(a, s), tb = be->from_vector(b, s);
  be->add(ta, tb, ta);  // y == a
  expect_bit_identical(be->to_vector(ta), want, "add y == a");
  ta = be->from_vector(a, s);
  be->add(ta, tb, tb);  // y == b
  expect_bit_identical(be->to_vector(tb), want, "add y == b");
  ta = be->from_vector(a, s);
  be->add(ta, ta, ta);  // all three
  expect_bit_identical(be->to_vector(ta), naive::add(a, a), "add y == a == b");
}

// Above the 65536-element threshold the elementwise ops run threaded: check that path too.
TEST(CpuOpsElementwise, AxpyMatchesNaive) {
  auto be = make_cpu_backend(2);
  for (std::size_t n : {std::size_t{1}, std::size_t{77}, std::size_t{70001}}) {
    const Vec x = random_vector(n, 56), y0 = random_vector(n, 57);
    const float alpha = -0.37f;
    Tensor y = be->from_vector(y0, Shape{static_cast<std::int64_t>(n)});
    be->axpy(alpha, be->from_vector(x, Shape{static_cast<std::int64_t>(n)}), y);
    const Vec want = naive::axpy(alpha, x, y0);
    // y + (alpha * x): two roundings (a product and a sum).
    const Vec mag = sum_of(abs_of(y0), naive::axpy(std::fabs(alpha), abs_of(x), Vec(n, 0.0f)));
    expect_close(be->to_vector(y), want, sum_tolerance(2, mag, want), "axpy n=" + std::to_string(n));
  }
}

// ---- leaky ReLU -----------------------------------------------------------------------------------
constexpr float kSlope = 0.2f;

// x with exact zeros mixed in: x == 0 takes the slope side of the gradient.
Vec with_zeros(std::size_t n, std::uint64_t seed) {
  Vec x = random_vector(n, seed);
  for (std::size_t i = 0; i < n; i += 7) x[i] = 0.0f;
  return x;
}

Vec cpu_leaky_forward(Backend& be, const Vec& x, const Shape& s) {
  Tensor y = be.empty(s);
  be.fill(y, kNaN);
  be.leaky_relu_forward(be.from_vector(x, s), y, kSlope);
  return be.to_vector(y);
}

Vec cpu_leaky_backward(Backend& be, const Vec& x, const Vec& dy, const Shape& s, float slope = kSlope) {
  Tensor dx = be.empty(s);
  be.fill(dx, kNaN);
  be.leaky_relu_backward(be.from_vector(x, s), be.from_vector(dy, s), dx, slope);
  return be.to_vector(dx);
}

// A single correctly rounded product (or none) per element: bit-identical to the reference.
// Sizes below and above the threading threshold.
TEST(CpuOpsLeakyRelu, MatchesNaive) {
  auto be = make_cpu_backend(2);
  for (const Shape& s : {Shape{3, 5, 7, 7}, Shape{5, 10, 37, 37}}) {
    const Vec x = with_zeros(numel(s), 61), dy = random_vector(numel(s), 62);
    expect_bit_identical(cpu_leaky_forward(*be, x, s), naive::leaky_relu_forward(x, kSlope),
                         "forward " + s.str());
    expect_bit_identical(cpu_leaky_backward(*be, x, dy, s),
                         naive::leaky_relu_backward(x, dy, kSlope), "backward " + s.str());
  }
}

TEST(CpuOpsLeakyRelu, InPlace) {
  auto be = make_cpu_backend(2);
  const Shape s{3, 5, 7, 7};
  const Vec x = with_zeros(numel(s), 63), dy = random_vector(numel(s), 64);
  Tensor t = be->from_vector(x, s);
  be->leaky_relu_forward(t, t, kSlope);  // y == x
  expect_bit_identical(be->to_vector(t), naive::leaky_relu_forward(x, kSlope), "y == x");
  Tensor g = be->from_vector(dy, s);
  be->leaky_relu_backward(be->from_vector(x, s), g, g, kSlope);  // dx == dy
  expect_bit_identical(be->to_vector(g), naive::leaky_relu_backward(x, dy, kSlope), "dx == dy");
}

TEST(CpuOpsLeakyRelu, BackwardMatchesFiniteDifferences) {
  auto be = make_cpu_backend(2);
  const Shape s{3, 5, 7, 7};
  const Vec x = away_from_zero(numel(s), 65), r = random_vector(numel(s), 66);
  const Vec analytic = cpu_leaky_backward(*be, x, r, s);
  const auto idx = probe_indices(x.size());
  const Vec fd = central_differences(x, idx, kKinkStep, [&](const Vec& v) {
    return weighted_sum(cpu_leaky_forward(*be, v, s), r);
  });
  expect_close(gather(analytic, idx), fd, kFdTol, "leaky dx vs finite differences");
}

// ---- the fused activation passes ------------------------------------------------------------------
// Each is two existing ops in one pass; the same float operations per element, so bit-identical
// to the two naive steps, except where the compiler contracts a product and a sum into one fused
// multiply-add (leaky_relu_backward_add): one rounding fewer, at most 2u of the terms' size.
TEST(CpuOpsFusedActivation, BiasLeakyReluMatchesNaive) {
  auto be = make_cpu_backend(2);
  for (const Shape& s : {Shape{3, 5, 7, 7}, Shape{5, 10, 37, 37}, Shape{2, 7}}) {
    const Vec x = with_zeros(numel(s), 71), b = random_vector(std::size_t(s[1]), 72);
    const std::int64_t hw = numel(s) / (s[0] * s[1]);
    Vec shifted(x.size());
    for (std::size_t i = 0; i < x.size(); ++i) shifted[i] = x[i] + b[std::size_t(std::int64_t(i) / hw % s[1])];
    const Vec want = naive::leaky_relu_forward(shifted, kSlope);
    const Tensor tx = be->from_vector(x, s), ty = be->empty(s);
    be->bias_leaky_relu_forward(tx, be->from_vector(b, Shape{s[1]}), ty, kSlope);
    expect_bit_identical(be->to_vector(ty), want, "bias_leaky_relu " + s.str());
    be->bias_leaky_relu_forward(tx, be->from_vector(b, Shape{s[1]}), tx, kSlope);  // y == x
    expect_bit_identical(be->to_vector(tx), want, "in place " + s.str());
  }
  const Tensor x = be->empty(Shape{2, 3, 4, 4});
  EXPECT_THROW(be->bias_leaky_relu_forward(x, be->empty(Shape{4}), x, kSlope), Error);  // b not [C]
  EXPECT_THROW(be->bias_leaky_relu_forward(x, be->empty(Shape{3}), be->empty(Shape{2, 3, 4, 3}), kSlope),
               Error);
}

TEST(CpuOpsFusedActivation, LeakyReluBackwardAddMatchesNaive) {
  auto be = make_cpu_backend(2);
  for (const Shape& s : {Shape{3, 5, 7, 7}, Shape{5, 10, 37, 37}}) {
    const Vec x = with_zeros(numel(s), 75), dy = random_vector(numel(s), 76), other = random_vector(numel(s), 77);
    const Vec grad = naive::leaky_relu_backward(x, dy, kSlope);
    const Vec want = sum_of(grad, other);
    const Tensor tdy = be->from_vector(dy, s), tother = be->from_vector(other, s);
    be->leaky_relu_backward_add(be->from_vector(x, s), tdy, tother, tother, kSlope);  // dx == other
    const Vec got = be->to_vector(tother);
    for (std::size_t i = 0; i < got.size(); ++i)
      ASSERT_LE(std::fabs(double(got[i]) - want[i]), 2 * 0x1p-24 * (std::fabs(grad[i]) + std::fabs(other[i])))
          << "element " << i << " of " << s.str();
  }
  const Tensor t = be->empty(Shape{2, 3});
  EXPECT_THROW(be->leaky_relu_backward_add(t, t, be->empty(Shape{6}), t, kSlope), Error);
}

// LeakyReLU's backward may read the activation's output instead of its input (the Wide-ResNet
// keeps only lrelu(conv1 + b)): for slope >= 0 the sign is the same, so the result is identical;
// and through bias_leaky_relu_forward it is the gradient by finite differences.
TEST(CpuOpsFusedActivation, BackwardFromTheOutputIsTheGradient) {
  auto be = make_cpu_backend(2);
  const Shape s{3, 5, 7, 7};
  for (float slope : {kSlope, 0.0f}) {
    const Vec x = with_zeros(numel(s), 78), dy = random_vector(numel(s), 79);
    Vec y = x;
    for (float& v : y) v = leaky_relu(v, slope);
    expect_bit_identical(cpu_leaky_backward(*be, y, dy, s, slope), cpu_leaky_backward(*be, x, dy, s, slope),
                         "from y vs from x");
  }
  // |x| >= 0.1 and |b| <= 0.04: x + b stays farther than the step from the kink.
  const Vec x = away_from_zero(numel(s), 80), b = random_vector(5, 81, -0.04f, 0.04f),
            r = random_vector(numel(s), 82);
  const Tensor tb = be->from_vector(b, Shape{5});
  auto forward = [&](const Vec& v) {
    const Tensor y = be->empty(s);
    be->bias_leaky_relu_forward(be->from_vector(v, s), tb, y, kSlope);
    return be->to_vector(y);
  };
  const Vec y = forward(x);
  const Vec analytic = cpu_leaky_backward(*be, y, r, s, kSlope);
  const auto idx = probe_indices(x.size());
  const Vec fd = central_differences(x, idx, kKinkStep, [&](const Vec& v) { return weighted_sum(forward(v), r); });
  expect_close(gather(analytic, idx), fd, kFdTol, "bias_leaky_relu dx vs finite differences");
}

// ---- global average pooling ------------------------------------------------------------------------
struct PoolCase {
  int N, C, HW;  // x [N, C, HW, HW]
};
const PoolCase kPoolCases[] = {{1, 3, 7}, {3, 10, 8}, {5, 7, 1}, {5, 6, 5}};

Vec cpu_pool_forward(Backend& be, const PoolCase& c, const Vec& x) {
  Tensor y = be.empty(Shape{c.N, c.C});
  be.fill(y, kNaN);
  be.global_avg_pool_forward(be.from_vector(x, Shape{c.N, c.C, c.HW, c.HW}), y);
  return be.to_vector(y);
}

Vec cpu_pool_backward(Backend& be, const PoolCase& c, const Vec& dy) {
  Tensor dx = be.empty(Shape{c.N, c.C, c.HW, c.HW});
  be.fill(dx, kNaN);
  be.global_avg_pool_backward(be.from_vector(dy, Shape{c.N, c.C}), dx);
  return be.to_vector(dx);
}

TEST(CpuOpsPool, MatchesNaive) {
  auto be = make_cpu_backend(2);
  for (const PoolCase& c : kPoolCases) {
    const int HW = c.HW * c.HW;
    const Vec x = random_vector(std::size_t(c.N) * c.C * HW, 71);
    const Vec dy = random_vector(std::size_t(c.N) * c.C, 72);
    const std::string tag = " N" + std::to_string(c.N) + " C" + std::to_string(c.C);
    // Forward: HW terms, times 1/HW (itself rounded): HW + 1 roundings.
    const Vec want_y = naive::global_avg_pool_forward(c.N, c.C, HW, x);
    const Vec mag_y = naive::global_avg_pool_forward(c.N, c.C, HW, abs_of(x));
    expect_close(cpu_pool_forward(*be, c, x), want_y, sum_tolerance(HW + 1, mag_y, want_y),
                 "pool forward" + tag);
    // Backward: dy * (1/HW): two roundings.
    const Vec want_dx = naive::global_avg_pool_backward(c.N, c.C, HW, dy);
    expect_close(cpu_pool_backward(*be, c, dy), want_dx,
                 sum_tolerance(2, abs_of(want_dx), want_dx), "pool backward" + tag);
  }
}

TEST(CpuOpsPool, BackwardMatchesFiniteDifferences) {
  auto be = make_cpu_backend(2);
  for (const PoolCase& c : kPoolCases) {
    const Vec x = random_vector(std::size_t(c.N) * c.C * c.HW * c.HW, 73);
    const Vec r = random_vector(std::size_t(c.N) * c.C, 74);
    const Vec analytic = cpu_pool_backward(*be, c, r);
    const auto idx = probe_indices(x.size());
    const Vec fd = central_differences(x, idx, kLinearStep, [&](const Vec& v) {
      return weighted_sum(cpu_pool_forward(*be, c, v), r);
    });
    expect_close(gather(analytic, idx), fd, kFdTol, "pool dx vs finite differences");
  }
}

// ---- linear ---------------------------------------------------------------------------------------
struct LinearCase {
  int N, I, O;
};
const LinearCase kLinearCases[] = {{1, 7, 10}, {3, 12, 10}, {5, 33, 7}, {4, 1, 1}};

struct LinearData {
  Vec x, w, b, dy;  // [N, I], [O, I], [O], [N, O]
  explicit LinearData(const LinearCase& c, std::uint64_t seed = 81)
      : x(random_vector(std::size_t(c.N) * c.I, seed)),
        w(random_vector(std::size_t(c.O) * c.I, seed + 1)),
        b(random_vector(std::size_t(c.O), seed + 2)),
        dy(random_vector(std::size_t(c.N) * c.O, seed + 3)) {}
};

std::string tag(const LinearCase& c) {
  return " N" + std::to_string(c.N) + " I" + std::to_string(c.I) + " O" + std::to_string(c.O);
}

Vec cpu_linear_forward(Backend& be, const LinearCase& c, const Vec& x, const Vec& w,
                       const Vec& b) {
  Tensor y = be.empty(Shape{c.N, c.O});
  be.fill(y, kNaN);
  be.linear_forward(be.from_vector(x, Shape{c.N, c.I}), be.from_vector(w, Shape{c.O, c.I}),
                    be.from_vector(b, Shape{c.O}), y);
  return be.to_vector(y);
}

struct LinearGrads {
  Vec dx, dw, db;  // empty when that output was left undefined
};

// dx starts as NaN (overwritten); dw/db start from dw0/db0 (accumulated). An empty prior (or
// want_dx false) leaves that gradient undefined.
LinearGrads cpu_linear_backward(Backend& be, const LinearCase& c, const LinearData& d,
                                bool want_dx, const Vec& dw0, const Vec& db0) {
  Tensor dx, dw, db;
  if (want_dx) {
    dx = be.empty(Shape{c.N, c.I});
    be.fill(dx, kNaN);
  }
  if (!dw0.empty()) dw = be.from_vector(dw0, Shape{c.O, c.I});
  if (!db0.empty()) db = be.from_vector(db0, Shape{c.O});
  be.linear_backward(be.from_vector(d.x, Shape{c.N, c.I}), be.from_vector(d.w, Shape{c.O, c.I}),
                     be.from_vector(d.dy, Shape{c.N, c.O}), dx, dw, db);
  LinearGrads g;
  if (dx.defined()) g.dx = be.to_vector(dx);
  if (dw.defined()) g.dw = be.to_vector(dw);
  if (db.defined()) g.db = be.to_vector(db);
  return g;
}

TEST(CpuOpsLinear, ForwardMatchesNaive) {
  auto be = make_cpu_backend(2);
  for (const LinearCase& c : kLinearCases) {
    const LinearData d(c);
    const Vec want = naive::linear_forward(c.N, c.I, c.O, d.x, d.w, d.b);
    const Vec mag = naive::linear_forward(c.N, c.I, c.O, abs_of(d.x), abs_of(d.w), abs_of(d.b));
    expect_close(cpu_linear_forward(*be, c, d.x, d.w, d.b), want,
                 sum_tolerance(c.I + 1, mag, want), "linear forward" + tag(c));
  }
}

TEST(CpuOpsLinear, BackwardMatchesNaive) {
  auto be = make_cpu_backend(2);
  for (const LinearCase& c : kLinearCases) {
    const LinearData d(c);
    const Vec zero_w(d.w.size(), 0.0f), zero_b(d.b.size(), 0.0f);
    const LinearGrads got = cpu_linear_backward(*be, c, d, true, zero_w, zero_b);
    const naive::LinearGrad want = naive::linear_backward(c.N, c.I, c.O, d.x, d.w, d.dy);
    const naive::LinearGrad mag =
        naive::linear_backward(c.N, c.I, c.O, abs_of(d.x), abs_of(d.w), abs_of(d.dy));
    expect_close(got.dx, want.dx, sum_tolerance(c.O, mag.dx, want.dx), "linear dx" + tag(c));
    expect_close(got.dw, want.dw, sum_tolerance(c.N, mag.dw, want.dw), "linear dw" + tag(c));
    expect_close(got.db, want.db, sum_tolerance(c.N, mag.db, want.db), "linear db" + tag(c));
  }
}

// dw, db ACCUMULATE onto their prior contents; dx is OVERWRITTEN (it starts as NaN).
TEST(CpuOpsLinear, BackwardAccumulatesParametersOverwritesInput) {
  auto be = make_cpu_backend(2);
  for (const LinearCase& c : kLinearCases) {
    const LinearData d(c);
    const Vec dw0 = random_vector(d.w.size(), 91), db0 = random_vector(d.b.size(), 92);
    const LinearGrads got = cpu_linear_backward(*be, c, d, true, dw0, db0);
    const naive::LinearGrad fresh = naive::linear_backward(c.N, c.I, c.O, d.x, d.w, d.dy);
    const naive::LinearGrad mag =
        naive::linear_backward(c.N, c.I, c.O, abs_of(d.x), abs_of(d.w), abs_of(d.dy));
    const Vec want_dw = sum_of(dw0, fresh.dw), want_db = sum_of(db0, fresh.db);
    expect_close(got.dx, fresh.dx, sum_tolerance(c.O, mag.dx, fresh.dx), "dx" + tag(c));
    expect_close(got.dw, want_dw, sum_tolerance(c.N + 1, sum_of(abs_of(dw0), mag.dw), want_dw),
                 "dw" + tag(c));
    expect_close(got.db, want_db, sum_tolerance(c.N + 1, sum_of(abs_of(db0), mag.db), want_db),
                 "db" + tag(c));
  }
}

// Each of dx, dw, db may be left undefined; the others must not change.
TEST(CpuOpsLinear, BackwardOptionalOutputs) {
  auto be = make_cpu_backend(2);
  const LinearCase c{3, 12, 10};
  const LinearData d(c);
  const Vec zero_w(d.w.size(), 0.0f), zero_b(d.b.size(), 0.0f);
  const LinearGrads all = cpu_linear_backward(*be, c, d, true, zero_w, zero_b);
  expect_bit_identical(cpu_linear_backward(*be, c, d, true, {}, {}).dx, all.dx, "dx only");
  const LinearGrads params = cpu_linear_backward(*be, c, d, false, zero_w, zero_b);
  expect_bit_identical(params.dw, all.dw, "dw without dx");
  expect_bit_identical(params.db, all.db, "db without dx");
  expect_bit_identical(cpu_linear_backward(*be, c, d, false, zero_w, {}).dw, all.dw, "dw only");
  expect_bit_identical(cpu_linear_backward(*be, c, d, false, {}, zero_b).db, all.db, "db only");
}

TEST(CpuOpsLinear, BackwardMatchesFiniteDifferences) {
  auto be = make_cpu_backend(2);
  for (const LinearCase& c : kLinearCases) {
    LinearData d(c);
    const Vec r = random_vector(std::size_t(c.N) * c.O, 93);
    d.dy = r;  // backward of L = sum(y * r) is backward with dy = r
    const Vec zero_w(d.w.size(), 0.0f), zero_b(d.b.size(), 0.0f);
    const LinearGrads analytic = cpu_linear_backward(*be, c, d, true, zero_w, zero_b);
    const auto L = [&](const Vec& x, const Vec& w, const Vec& b) {
      return weighted_sum(cpu_linear_forward(*be, c, x, w, b), r);
    };
    const auto xi = probe_indices(d.x.size()), wi = probe_indices(d.w.size()),
               bi = probe_indices(d.b.size());
    expect_close(gather(analytic.dx, xi),
                 central_differences(d.x, xi, kLinearStep,
                                     [&](const Vec& x) { return L(x, d.w, d.b); }),
                 kFdTol, "linear dx vs finite differences" + tag(c));
    expect_close(gather(analytic.dw, wi),
                 central_differences(d.w, wi, kLinearStep,
                                     [&](const Vec& w) { return L(d.x, w, d.b); }),
                 kFdTol, "linear dw vs finite differences" + tag(c));
    expect_close(gather(analytic.db, bi),
                 central_differences(d.b, bi, kLinearStep,
                                     [&](const Vec& b) { return L(d.x, d.w, b); }),
                 kFdTol, "linear db vs finite differences" + tag(c));
  }
}

// ---- losses ---------------------------------------------------------------------------------------
struct LossCase {
  int N, K;
};
const LossCase kLossCases[] = {{1, 10}, {3, 10}, {5, 7}, {3, 1}};
constexpr float kGradScale = -0.37f;  // not 1, and negative: the scale must reach every entry

std::vector<std::int32_t> labels_for(const LossCase& c, std::uint64_t seed) {
  std::vector<std::int32_t> y(static_cast<std::size_t>(c.N));
  const Vec u = random_vector(y.size(), seed, 0.0f, 1.0f);
  for (std::size_t n = 0; n < y.size(); ++n)
    y[n] = std::min(c.K - 1, static_cast<std::int32_t>(u[n] * static_cast<float>(c.K)));
  return y;
}

struct LossOut {
  Vec value, dlogits;  // [N], [N, K]
};

LossOut cpu_energy(Backend& be, const LossCase& c, const Vec& logits, float grad_scale) {
  Tensor e = be.empty(Shape{c.N}), dl = be.empty(Shape{c.N, c.K});
  be.fill(e, kNaN);
  be.fill(dl, kNaN);
  be.energy_forward_backward(be.from_vector(logits, Shape{c.N, c.K}), e, dl, grad_scale);
  return {be.to_vector(e), be.to_vector(dl)};
}

Tensor label_tensor(Backend& be, const std::vector<std::int32_t>& y) {
  Tensor t = be.empty(Shape{static_cast<std::int64_t>(y.size())}, DType::I32);
  be.upload_i32(y.data(), t);
  return t;
}

LossOut cpu_cross_entropy(Backend& be, const LossCase& c, const Vec& logits,
                          const std::vector<std::int32_t>& y, float grad_scale) {
  Tensor loss = be.empty(Shape{c.N}), dl = be.empty(Shape{c.N, c.K});
  be.fill(loss, kNaN);
  be.fill(dl, kNaN);
  be.cross_entropy_forward_backward(be.from_vector(logits, Shape{c.N, c.K}), label_tensor(be, y),
                                    loss, dl, grad_scale);
  return {be.to_vector(loss), be.to_vector(dl)};
}

std::string tag(const LossCase& c) {
  return " N" + std::to_string(c.N) + " K" + std::to_string(c.K);
}

// Logits spread over [-4, 4] (softmax far from uniform), optionally shifted by `offset`.
Vec loss_logits(const LossCase& c, std::uint64_t seed, float offset = 0.0f) {
  Vec l = random_vector(std::size_t(c.N) * c.K, seed, -4.0f, 4.0f);
  for (float& v : l) v += offset;
  return l;
}

void expect_losses_match_naive(Backend& be, const LossCase& c, const Vec& logits,
                               const std::string& what) {
  const LossOut e = cpu_energy(be, c, logits, kGradScale);
  const naive::LossGrad want_e = naive::energy(c.N, c.K, logits, kGradScale);
  expect_close(e.value, want_e.value, kLossTol, "energy" + what + tag(c));
  expect_close(e.dlogits, want_e.dlogits, kLossTol, "energy dlogits" + what + tag(c));

  const auto y = labels_for(c, 101);
  const LossOut ce = cpu_cross_entropy(be, c, logits, y, kGradScale);
  const naive::LossGrad want_ce = naive::cross_entropy(c.N, c.K, logits, y, kGradScale);
  if (c.K > 1) {  // with one class the loss is exactly 0: no relative error to speak of
    expect_close(ce.value, want_ce.value, kLossTol, "cross-entropy" + what + tag(c));
    expect_close(ce.dlogits, want_ce.dlogits, kLossTol, "cross-entropy dlogits" + what + tag(c));
  } else {
    for (float v : ce.value) EXPECT_EQ(v, 0.0f) << "one-class cross-entropy";
    for (float v : ce.dlogits) EXPECT_EQ(v, 0.0f) << "one-class cross-entropy gradient";
  }
}

TEST(CpuOpsLoss, MatchesNaive) {
  auto be = make_cpu_backend(2);
  for (const LossCase& c : kLossCases) expect_losses_match_naive(*be, c, loss_logits(c, 111), "");
}

// Logits around +-1e4 overflow exp() in float unless shifted; and since the losses depend only on
// differences of logits, they must be as accurate there as near 0 (same tolerance).
TEST(CpuOpsLoss, StableForLargeLogits) {
  auto be = make_cpu_backend(2);
  for (const LossCase& c : kLossCases)
    for (float offset : {1e4f, -1e4f}) {
      const Vec logits = loss_logits(c, 112, offset);
      const std::string what = " at " + std::to_string(offset);
      for (float v : cpu_energy(*be, c, logits, kGradScale).dlogits)
        ASSERT_TRUE(std::isfinite(v)) << "energy gradient not finite" << what;
      expect_losses_match_naive(*be, c, logits, what);
    }
}

// Energy: one row dominates by 1e4: softmax is one-hot, E = -max, and nothing overflows.
TEST(CpuOpsLoss, DominantLogit) {
  auto be = make_cpu_backend(2);
  const LossCase c{1, 4};
  const Vec logits{0.0f, 1e4f, -3.0f, 2.0f};
  const LossOut e = cpu_energy(*be, c, logits, 1.0f);
  expect_losses_match_naive(*be, c, logits, " one-hot");
  EXPECT_EQ(e.value[0], -1e4f);
  EXPECT_EQ(e.dlogits[1], -1.0f);
}

// dlogits = grad_scale * dE/dlogits, against central differences of E = -logsumexp in double.
TEST(CpuOpsLoss, EnergyGradientMatchesFiniteDifferences) {
  auto be = make_cpu_backend(2);
  for (const LossCase& c : kLossCases) {
    const Vec logits = loss_logits(c, 121);
    const LossOut got = cpu_energy(*be, c, logits, kGradScale);
    const auto L = [&](const std::vector<double>& l) {
      double s = 0.0;
      for (int n = 0; n < c.N; ++n) s -= naive::logsumexp(l.data() + std::size_t(n) * c.K, c.K);
      return kGradScale * s;
    };
    const Vec fd =
        central_differences_f64(std::vector<double>(logits.begin(), logits.end()), kLossStep, L);
    expect_close(got.dlogits, fd, kLossFdTol, "energy dlogits vs finite differences" + tag(c));
  }
}

TEST(CpuOpsLoss, CrossEntropyGradientMatchesFiniteDifferences) {
  auto be = make_cpu_backend(2);
  for (const LossCase& c : kLossCases) {
    if (c.K == 1) continue;  // the gradient is exactly 0: checked in MatchesNaive
    const Vec logits = loss_logits(c, 122);
    const auto y = labels_for(c, 123);
    const LossOut got = cpu_cross_entropy(*be, c, logits, y, kGradScale);
    const auto L = [&](const std::vector<double>& l) {
      double s = 0.0;
      for (int n = 0; n < c.N; ++n) {
        const double* row = l.data() + std::size_t(n) * c.K;
        s += naive::logsumexp(row, c.K) - row[y[std::size_t(n)]];
      }
      return kGradScale * s;
    };
    const Vec fd =
        central_differences_f64(std::vector<double>(logits.begin(), logits.end()), kLossStep, L);
    expect_close(got.dlogits, fd, kLossFdTol, "cross-entropy dlogits vs finite differences" + tag(c));
  }
}

TEST(CpuOpsLoss, CrossEntropyRejectsOutOfRangeLabels) {
  auto be = make_cpu_backend(2);
  const LossCase c{3, 10};
  const Vec logits = loss_logits(c, 131);
  for (std::int32_t bad : {-1, 10, 1 << 30}) {
    std::vector<std::int32_t> y{0, bad, 9};
    EXPECT_THROW(cpu_cross_entropy(*be, c, logits, y, 1.0f), Error) << "label " << bad;
  }
}

// ---- shape and argument checks ---------------------------------------------------------------------
TEST(CpuOpsChecks, ConvShapeMismatchesThrow) {
  auto be = make_cpu_backend(2);
  Tensor x = be->empty(Shape{2, 3, 7, 7}), w = be->empty(Shape{4, 3, 3, 3});
  Tensor b = be->empty(Shape{4}), y = be->empty(Shape{2, 4, 7, 7});
  be->conv2d_forward(x, w, b, y, 1, 1);  // the consistent call works
  EXPECT_THROW(be->conv2d_forward(x, w, b, be->empty(Shape{2, 4, 6, 6}), 1, 1), Error);  // y size
  EXPECT_THROW(be->conv2d_forward(x, w, b, be->empty(Shape{2, 5, 7, 7}), 1, 1), Error);  // y chans
  EXPECT_THROW(be->conv2d_forward(x, w, b, y, 2, 1), Error);                            // stride
  EXPECT_THROW(be->conv2d_forward(x, be->empty(Shape{4, 2, 3, 3}), b, y, 1, 1), Error); // w C
  EXPECT_THROW(be->conv2d_forward(x, be->empty(Shape{4, 3, 3, 1}), b, y, 1, 1), Error); // not RxR
  EXPECT_THROW(be->conv2d_forward(x, be->empty(Shape{4, 27}), b, y, 1, 1), Error);      // rank
  EXPECT_THROW(be->conv2d_forward(be->empty(Shape{2, 3, 49}), w, b, y, 1, 1), Error);   // rank
  EXPECT_THROW(be->conv2d_forward(x, w, be->empty(Shape{3}), y, 1, 1), Error);          // bias
  EXPECT_THROW(be->conv2d_forward(x, w, b, y, 0, 1), Error);                            // stride 0
  EXPECT_THROW(be->conv2d_forward(x, w, b, y, 1, -1), Error);                           // pad < 0
  EXPECT_THROW(be->conv2d_forward(be->empty(Shape{2, 3, 7, 7}, DType::I32), w, b, y, 1, 1), Error);
  // A window larger than the padded image has no valid position, whatever the stride.
  Tensor tiny = be->empty(Shape{1, 1, 2, 2}), w3 = be->empty(Shape{1, 1, 3, 3});
  Tensor b1 = be->empty(Shape{1});
  EXPECT_THROW(be->conv2d_forward(tiny, w3, b1, be->empty(Shape{1, 1, 1, 1}), 2, 0), Error);
  EXPECT_THROW(be->conv2d_forward(tiny, w3, b1, be->empty(Shape{1, 1, 0, 0}), 1, 0), Error);
  // The residual form: z must have y's shape and must not overlap it.
  Tensor z = be->empty(Shape{2, 4, 7, 7});
  be->conv2d_forward_add(x, w, b, z, y, 1, 1);  // the consistent call works
  EXPECT_THROW(be->conv2d_forward_add(x, w, b, be->empty(Shape{2, 4, 6, 6}), y, 1, 1), Error);
  EXPECT_THROW(be->conv2d_forward_add(x, w, b, y, y, 1, 1), Error);  // z == y
  Tensor yz = be->empty(Shape{4, 4, 7, 7});
  EXPECT_THROW(be->conv2d_forward_add(x, w, b, yz.slice(1, 3), yz.slice(0, 2), 1, 1), Error);  // overlap
  be->conv2d_forward_add(x, w, b, yz.slice(2, 4), yz.slice(0, 2), 1, 1);  // adjacent rows are fine

  Tensor dy = be->empty(Shape{2, 4, 7, 7});
  EXPECT_THROW(be->conv2d_backward_data(dy, w, be->empty(Shape{2, 3, 8, 8}), 1, 1), Error);
  EXPECT_THROW(be->conv2d_backward_data(be->empty(Shape{2, 4, 4, 4}), w, x, 1, 1), Error);
  EXPECT_THROW(be->conv2d_backward_data(dy, w, x, 2, 1), Error);
  EXPECT_THROW(be->conv2d_backward_filter(x, dy, be->empty(Shape{4, 3, 1, 1}), b, 1, 1), Error);
  EXPECT_THROW(be->conv2d_backward_filter(x, dy, be->empty(Shape{4, 3, 3, 3}), be->empty(Shape{5}), 1, 1),
               Error);
  EXPECT_THROW(be->conv2d_backward_filter(x, be->empty(Shape{3, 4, 7, 7}), w, b, 1, 1), Error);
  EXPECT_THROW(be->conv2d_backward_filter(Tensor(), dy, w, b, 1, 1), Error);
}

TEST(CpuOpsChecks, ElementwiseShapeMismatchesThrow) {
  auto be = make_cpu_backend(2);
  Tensor a = be->empty(Shape{2, 3}), b = be->empty(Shape{3, 2}), c = be->empty(Shape{2, 3});
  EXPECT_THROW(be->add(a, b, c), Error);
  EXPECT_THROW(be->add(a, c, b), Error);
  EXPECT_THROW(be->axpy(1.0f, a, b), Error);
  EXPECT_THROW(be->copy(a, be->empty(Shape{7})), Error);
  EXPECT_THROW(be->leaky_relu_forward(a, b, 0.2f), Error);
  EXPECT_THROW(be->leaky_relu_backward(a, c, b, 0.2f), Error);
  EXPECT_THROW(be->leaky_relu_backward(a, b, c, 0.2f), Error);
  EXPECT_THROW(be->leaky_relu_backward(b, a, c, 0.2f), Error);
  EXPECT_THROW(be->add(a, Tensor(), c), Error);
  EXPECT_THROW(be->add(a, c, be->empty(Shape{2, 3}, DType::I32)), Error);
}

TEST(CpuOpsChecks, PoolShapeMismatchesThrow) {
  auto be = make_cpu_backend(2);
  Tensor x = be->empty(Shape{3, 5, 4, 4});
  EXPECT_THROW(be->global_avg_pool_forward(x, be->empty(Shape{5, 3})), Error);
  EXPECT_THROW(be->global_avg_pool_forward(x, be->empty(Shape{15})), Error);
  EXPECT_THROW(be->global_avg_pool_forward(be->empty(Shape{3, 5}), be->empty(Shape{3, 5})), Error);
  EXPECT_THROW(be->global_avg_pool_backward(be->empty(Shape{3, 4}), x), Error);
  EXPECT_THROW(be->global_avg_pool_backward(be->empty(Shape{3, 5}), be->empty(Shape{3, 5, 16})),
               Error);
}

TEST(CpuOpsChecks, LinearShapeMismatchesThrow) {
  auto be = make_cpu_backend(2);
  Tensor x = be->empty(Shape{3, 8}), w = be->empty(Shape{10, 8}), b = be->empty(Shape{10});
  Tensor y = be->empty(Shape{3, 10});
  be->linear_forward(x, w, b, y);  // the consistent call works
  EXPECT_THROW(be->linear_forward(x, be->empty(Shape{10, 7}), b, y), Error);
  EXPECT_THROW(be->linear_forward(x, be->empty(Shape{8, 10}), b, y), Error);
  EXPECT_THROW(be->linear_forward(x, w, be->empty(Shape{9}), y), Error);
  EXPECT_THROW(be->linear_forward(x, w, b, be->empty(Shape{3, 9})), Error);
  EXPECT_THROW(be->linear_forward(x, w, b, be->empty(Shape{4, 10})), Error);
  EXPECT_THROW(be->linear_forward(be->empty(Shape{3, 8, 1}), w, b, y), Error);
  Tensor dy = y, dx = be->empty(Shape{3, 8}), dw = be->empty(Shape{10, 8});
  be->linear_backward(x, w, dy, dx, dw, b);
  EXPECT_THROW(be->linear_backward(x, w, be->empty(Shape{3, 9}), dx, dw, b), Error);
  EXPECT_THROW(be->linear_backward(x, w, be->empty(Shape{2, 10}), dx, dw, b), Error);
  EXPECT_THROW(be->linear_backward(x, w, dy, be->empty(Shape{8, 3}), dw, b), Error);
  EXPECT_THROW(be->linear_backward(x, w, dy, dx, be->empty(Shape{8, 10}), b), Error);
  EXPECT_THROW(be->linear_backward(x, w, dy, dx, dw, be->empty(Shape{8})), Error);
}

TEST(CpuOpsChecks, LossShapeMismatchesThrow) {
  auto be = make_cpu_backend(2);
  Tensor logits = be->empty(Shape{3, 10}), e = be->empty(Shape{3}), dl = be->empty(Shape{3, 10});
  be->energy_forward_backward(logits, e, dl, 1.0f);  // the consistent call works
  EXPECT_THROW(be->energy_forward_backward(logits, be->empty(Shape{4}), dl, 1.0f), Error);
  EXPECT_THROW(be->energy_forward_backward(logits, e, be->empty(Shape{10, 3}), 1.0f), Error);
  EXPECT_THROW(be->energy_forward_backward(be->empty(Shape{30}), e, dl, 1.0f), Error);
  // No classes: logsumexp over an empty row has no finite value.
  EXPECT_THROW(be->energy_forward_backward(be->empty(Shape{3, 0}), e, be->empty(Shape{3, 0}), 1.0f),
               Error);
  const std::vector<std::int32_t> y3{1, 2, 3};
  Tensor labels = label_tensor(*be, y3);
  be->cross_entropy_forward_backward(logits, labels, e, dl, 1.0f);
  EXPECT_THROW(be->cross_entropy_forward_backward(logits, be->empty(Shape{3}), e, dl, 1.0f),
               Error);  // F32 labels
  EXPECT_THROW(be->cross_entropy_forward_backward(logits, label_tensor(*be, {1, 2}), e, dl, 1.0f),
               Error);
  EXPECT_THROW(be->cross_entropy_forward_backward(logits, labels, be->empty(Shape{2}), dl, 1.0f),
               Error);
  EXPECT_THROW(be->cross_entropy_forward_backward(logits, labels, e, be->empty(Shape{3, 9}), 1.0f),
               Error);
}

// ---- threads ----------------------------------------------------------------------------------------
// The outputs of every op on fixed inputs, in a fixed order, with their tolerance against the
// naive reference (used to bound the difference between thread counts).
struct OpResult {
  std::string name;
  Vec got;
  double tol;  // rigorous bound on rel_error(got, exact), see sum_tolerance
};

std::vector<OpResult> run_every_op(Backend& be) {
  std::vector<OpResult> out;
  // A 3x3 and a 1x1 shortcut; a stride-2 3x3 (the flat AVX-512 kernels' chunks depend on the
  // thread count: 5 images on 1 thread, 3 + 2 on 2) and a channel-vectorised one.
  for (const ConvCase& cc : {ConvCase{5, 3, 7, 6, 3, 1, 1}, ConvCase{5, 6, 7, 10, 1, 2, 0},
                             ConvCase{5, 3, 7, 6, 3, 2, 1}, ConvCase{3, 5, 8, 70, 3, 1, 1}}) {
    const ConvGeom g = geom(cc);
    const ConvData d(g, 141);
    const Vec y = naive::conv2d_forward(g, d.x, d.w, d.b);
    out.push_back({"conv y", cpu_conv_forward(be, g, d.x, d.w, d.b),
                   sum_tolerance(forward_terms(g),
                                 naive::conv2d_forward(g, abs_of(d.x), abs_of(d.w), abs_of(d.b)), y)});
    const Vec dx = naive::conv2d_backward_data(g, d.dy, d.w);
    out.push_back({"conv dx", cpu_conv_backward_data(be, g, d.dy, d.w),
                   sum_tolerance(backward_data_terms(g),
                                 naive::conv2d_backward_data(g, abs_of(d.dy), abs_of(d.w)), dx)});
    const FilterGrad fg = cpu_conv_backward_filter(be, g, d.x, d.dy, Vec(d.w.size(), 0.0f),
                                                   Vec(d.b.size(), 0.0f));
    const naive::ConvFilterGrad want = naive::conv2d_backward_filter(g, d.x, d.dy);
    const naive::ConvFilterGrad mag = naive::conv2d_backward_filter(g, abs_of(d.x), abs_of(d.dy));
    out.push_back({"conv dw", fg.dw, sum_tolerance(backward_filter_terms(g), mag.dw, want.dw)});
    out.push_back({"conv db", fg.db, sum_tolerance(backward_filter_terms(g), mag.db, want.db)});
    // The fused ops (the activation runs per image or chunk, whichever thread wrote it): their
    // output, as the plain convolution's, within its tolerance and bit-identical across threads.
    const Tensor zy = be.from_vector(random_vector(numel(y_shape(g)), 142), y_shape(g));
    Tensor t = be.empty(y_shape(g)), ya = be.empty(y_shape(g));
    be.conv2d_forward_leaky_relu(be.from_vector(d.x, x_shape(g)), be.from_vector(d.w, w_shape(g)),
                                 be.from_vector(d.b, Shape{g.K}), zy, t, ya, g.stride, g.pad_h, 0.2f);
    out.push_back({"conv lrelu y", be.to_vector(ya), out[out.size() - 4].tol});
    const Tensor m = be.from_vector(random_vector(numel(x_shape(g)), 143), x_shape(g));
    const Tensor zx = be.from_vector(random_vector(numel(x_shape(g)), 144), x_shape(g));
    Tensor dxa = be.empty(x_shape(g));
    be.conv2d_backward_data_leaky_relu(be.from_vector(d.dy, y_shape(g)), be.from_vector(d.w, w_shape(g)), m, zx,
                                       dxa, g.stride, g.pad_h, 0.2f);
    out.push_back({"conv lrelu dx", be.to_vector(dxa), out[out.size() - 4].tol});
  }
  const LinearCase lc{5, 33, 7};
  const LinearData ld(lc, 151);
  const Vec zero_w(ld.w.size(), 0.0f), zero_b(ld.b.size(), 0.0f);
  const naive::LinearGrad lw = naive::linear_backward(lc.N, lc.I, lc.O, ld.x, ld.w, ld.dy);
  const naive::LinearGrad lm =
      naive::linear_backward(lc.N, lc.I, lc.O, abs_of(ld.x), abs_of(ld.w), abs_of(ld.dy));
  const Vec ly = naive::linear_forward(lc.N, lc.I, lc.O, ld.x, ld.w, ld.b);
  out.push_back({"linear y", cpu_linear_forward(be, lc, ld.x, ld.w, ld.b),
                 sum_tolerance(lc.I + 1,
                               naive::linear_forward(lc.N, lc.I, lc.O, abs_of(ld.x), abs_of(ld.w),
                                                     abs_of(ld.b)),
                               ly)});
  const LinearGrads lg = cpu_linear_backward(be, lc, ld, true, zero_w, zero_b);
  out.push_back({"linear dx", lg.dx, sum_tolerance(lc.O, lm.dx, lw.dx)});
  out.push_back({"linear dw", lg.dw, sum_tolerance(lc.N, lm.dw, lw.dw)});
  out.push_back({"linear db", lg.db, sum_tolerance(lc.N, lm.db, lw.db)});
  const PoolCase pc{5, 6, 5};
  const Vec px = random_vector(5 * 6 * 25, 161);
  out.push_back({"pool y", cpu_pool_forward(be, pc, px),
                 sum_tolerance(26, naive::global_avg_pool_forward(5, 6, 25, abs_of(px)),
                               naive::global_avg_pool_forward(5, 6, 25, px))});
  const LossCase lsc{5, 7};
  const Vec logits = loss_logits(lsc, 171);
  const LossOut e = cpu_energy(be, lsc, logits, kGradScale);
  out.push_back({"energy", e.value, kLossTol});
  out.push_back({"energy dlogits", e.dlogits, kLossTol});
  const LossOut ce = cpu_cross_entropy(be, lsc, logits, labels_for(lsc, 172), kGradScale);
  out.push_back({"cross-entropy", ce.value, kLossTol});
  out.push_back({"cross-entropy dlogits", ce.dlogits, kLossTol});
  return out;
}

// Same thread count, same inputs: the same bits, whether the backend (and its scratch buffers)
// is reused or fresh.
TEST(CpuOpsThreads, BitIdenticalForSameThreadCount) {
  auto be = make_cpu_backend(2), other = make_cpu_backend(2);
  const auto first = run_every_op(*be), second = run_every_op(*be), fresh = run_every_op(*other);
  for (std::size_t i = 0; i < first.size(); ++i) {
    expect_bit_identical(second[i].got, first[i].got, first[i].name + " (same backend)");
    expect_bit_identical(fresh[i].got, first[i].got, first[i].name + " (fresh backend)");
  }
}

// 1 and 2 threads sum the weight gradients in different orders: each is within its bound of the
// exact value, so the two are within twice that bound of each other. A convolution's output and
// data gradient are summed in the same order whichever thread computes an image and however
// the flat AVX-512 kernels chunk the images: those are bit-identical.
TEST(CpuOpsThreads, OneAndTwoThreadsAgree) {
  auto one = make_cpu_backend(1), two = make_cpu_backend(2);
  const auto a = run_every_op(*one), b = run_every_op(*two);
  for (std::size_t i = 0; i < a.size(); ++i) {
    expect_close(a[i].got, b[i].got, 2 * b[i].tol, a[i].name + ": 1 vs 2 threads");
    if (a[i].name == "conv y" || a[i].name == "conv dx" || a[i].name == "conv lrelu y" ||
        a[i].name == "conv lrelu dx")
      expect_bit_identical(a[i].got, b[i].got, a[i].name + ": 1 vs 2 threads");
  }
}

// Restores OpenMP's max-active-levels on scope exit.
class ActiveLevelsGuard {
 public:
  explicit ActiveLevelsGuard(int levels) : saved_(omp_get_max_active_levels()) {
    omp_set_max_active_levels(levels);
  }
  ~ActiveLevelsGuard() { omp_set_max_active_levels(saved_); }
  ActiveLevelsGuard(const ActiveLevelsGuard&) = delete;
  ActiveLevelsGuard& operator=(const ActiveLevelsGuard&) = delete;

 private:
  int saved_;
};

// OpenMP may grant fewer threads than a num_threads clause asks for (nested inside another
// parallel region, a thread limit, dynamic adjustment). The ops must still be complete and correct:
// here every parallel region is made inactive, so each runs on one thread.
TEST(CpuOpsThreads, CorrectWhenOpenMPGrantsFewerThreads) {
  auto be = make_cpu_backend(2);
  const auto want = run_every_op(*be);
  std::vector<OpResult> got;
  {
    ActiveLevelsGuard serial(0);
    got = run_every_op(*be);
  }
  for (std::size_t i = 0; i < got.size(); ++i)
    expect_close(got[i].got, want[i].got, 2 * want[i].tol, got[i].name + " with one thread");
}

}  // namespace
}  // namespace jem::test
