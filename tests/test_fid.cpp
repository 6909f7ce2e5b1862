// FID / Inception Score math (Frechet distance, Gaussian statistics, Inception
// Score, the symmetric eigensolver) against closed forms and naive loops, and
// the FID Inception-v3 network on random weights: output shapes, and clear
// errors for a missing or misshapen tensor.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "inception_weights.hpp"
#include "jem/fid.hpp"
#include "jem/inception_v3.hpp"
#include "jem/safetensors.hpp"
#include "test_support.hpp"

namespace jem::test {
namespace {

constexpr double kEps = 0x1p-52;  // double unit roundoff * 2

std::vector<double> random_symmetric_psd(int d, int rank, std::uint64_t seed) {
  // A = B B^T with B [d, rank] standard normal: PSD, rank min(d, rank).
  std::mt19937_64 gen(seed);
  std::normal_distribution<double> nd;
  std::vector<double> b(std::size_t(d) * rank), a(std::size_t(d) * d, 0.0);
  for (double& v : b) v = nd(gen);
  for (int i = 0; i < d; ++i)
    for (int j = 0; j < d; ++j)
      for (int k = 0; k < rank; ++k)
        a[std::size_t(i) * d + j] += b[std::size_t(i) * rank + k] * b[std::size_t(j) * rank + k];
  return a;
}

double trace(const std::vector<double>& a, int d) {
  double t = 0.0;
  for (int i = 0; i < d; ++i) t += a[std::size_t(i) * d + i];
  return t;
}

// ---- symmetric eigensolver ----------------------------------------------------------------------
TEST(SymmetricEigen, KnownTwoByTwo) {
  std::vector<double> values, vectors;
  symmetric_eigen({2, 1, 1, 2}, 2, &values, &vectors);
  EXPECT_NEAR(values[0], 1.0, 1e-15);
  EXPECT_NEAR(values[1], 3.0, 1e-15);
  // Eigenvector of 3 is (1, 1)/sqrt(2) up to sign: column 1.
  EXPECT_NEAR(std::fabs(vectors[1]), std::sqrt(0.5), 1e-15);
  EXPECT_NEAR(std::fabs(vectors[3]), std::sqrt(0.5), 1e-15);
}

// A = V diag(values) V^T and V^T V = I on a random symmetric matrix, to a
// backward-stable solver's accuracy: residual <= c d eps ||A|| (c = 10 covers
// LAPACK's constant).
TEST(SymmetricEigen, ReconstructsRandomMatrix) {
  const int d = 40;
  const std::vector<double> a = random_symmetric_psd(d, 25, 3);  // rank 25: 15 zero eigenvalues
  std::vector<double> values, v;
  symmetric_eigen(a, d, &values, &v);
  double norm_a = 0.0;
  for (double x : a) norm_a = std::max(norm_a, std::fabs(x));
  for (int i = 1; i < d; ++i) EXPECT_LE(values[std::size_t(i - 1)], values[std::size_t(i)]);
  for (int i = 0; i < d; ++i)
    for (int j = 0; j < d; ++j) {
      double r = 0.0, o = 0.0;
      for (int k = 0; k < d; ++k) {
        r += v[std::size_t(i) * d + k] * values[std::size_t(k)] * v[std::size_t(j) * d + k];
        o += v[std::size_t(k) * d + i] * v[std::size_t(k) * d + j];
      }
      ASSERT_NEAR(r, a[std::size_t(i) * d + j], 10 * d * kEps * norm_a * d) << i << "," << j;
      ASSERT_NEAR(o, i == j ? 1.0 : 0.0, 10 * d * kEps) << i << "," << j;
    }
  EXPECT_THROW(symmetric_eigen(a, d + 1, &values, nullptr), Error);
}

// ---- Gaussian statistics ------------------------------------------------------------------------
TEST(GaussianStats, MatchesNaive) {
  const int n = 700, d = 6;  // n > 512: more than one centred block
  const std::vector<float> f = random_vector(std::size_t(n) * d, 5, -2.0f, 3.0f);
  const GaussianStats s = gaussian_stats(f.data(), n, d);
  for (int j = 0; j < d; ++j) {
    double m = 0.0;
    for (int i = 0; i < n; ++i) m += f[std::size_t(i) * d + j];
    m /= n;
    EXPECT_NEAR(s.mean[std::size_t(j)], m, 1e-13);
  }
  for (int a = 0; a < d; ++a)
    for (int b = 0; b < d; ++b) {
      double c = 0.0;
      for (int i = 0; i < n; ++i)
        c += (f[std::size_t(i) * d + a] - s.mean[std::size_t(a)]) *
             (f[std::size_t(i) * d + b] - s.mean[std::size_t(b)]);
      EXPECT_NEAR(s.cov[std::size_t(a) * d + b], c / (n - 1), 1e-12) << a << "," << b;
    }
  EXPECT_THROW(gaussian_stats(f.data(), 1, d), Error);
}

// ---- Frechet distance ---------------------------------------------------------------------------
// A set against itself: exactly 0 in exact arithmetic. With n > d the covariance
// is well conditioned (Wishart: eigenvalues within ~(1 +- sqrt(d/n))^2 of each
// other, condition ~20), so each eigenvalue of sqrt(S) S sqrt(S) = S^2 is found
// to ~d eps ||S||^2 and its square root to ~d eps cond(S) ||S||: the total
// stays below d^2 eps cond tr(S) ~ 2e-10 tr(S) for d = 64, and 1e-9 tr(S) is
// the bound checked.
TEST(FrechetDistance, SetWithItselfIsZero) {
  const int n = 400, d = 64;
  const std::vector<float> f = random_vector(std::size_t(n) * d, 7);
  const GaussianStats s = gaussian_stats(f.data(), n, d);
  const double fd = frechet_distance(s, s);
  EXPECT_LE(std::fabs(fd), 1e-9 * trace(s.cov, d)) << "FD(x, x) = " << fd;
}

// Rank-deficient covariance (n < d, as with few generated images): S's zero
// eigenvalues come back as +-d eps ||S||. frechet_distance drops those below
// d eps lambda_max (their square roots, ~sqrt(d eps ||S||) each, would leave
// FD(x, x) at the sqrt(eps) level instead), so the result stays at
// the rounding level: the same 1e-9 tr(S) bound as the full-rank case.
TEST(FrechetDistance, SetWithItselfRankDeficient) {
  const int n = 30, d = 64;
  const std::vector<float> f = random_vector(std::size_t(n) * d, 8);
  const GaussianStats s = gaussian_stats(f.data(), n, d);
  const double fd = frechet_distance(s, s);
  EXPECT_LE(std::fabs(fd), 1e-9 * trace(s.cov, d)) << "FD(x, x) = " << fd;
}

// Two 2-d Gaussians with non-commuting covariances: for 2x2 matrices, S1 S2 has
// eigenvalues mu1, mu2 with mu1 + mu2 = tr(S1 S2) and mu1 mu2 = det(S1)
// det(S2), so
//   tr sqrt(S1 S2) = sqrt(mu1) + sqrt(mu2) = sqrt(tr(S1 S2) + 2 sqrt(det S1 det
//   S2)).
TEST(FrechetDistance, TwoByTwoClosedForm) {
  const std::vector<double> m1{0.5, -1.0}, m2{2.0, 0.25};
  const std::vector<double> s1{2.0, 0.7, 0.7, 1.0}, s2{0.5, -0.3, -0.3, 3.0};
  const double tr12 = s1[0] * s2[0] + s1[1] * s2[2] + s1[2] * s2[1] + s1[3] * s2[3];
  const double det1 = s1[0] * s1[3] - s1[1] * s1[2], det2 = s2[0] * s2[3] - s2[1] * s2[2];
  const double want = (1.5 * 1.5 + 1.25 * 1.25) + (3.0 + 3.5) -
                      2.0 * std::sqrt(tr12 + 2.0 * std::sqrt(det1 * det2));
  EXPECT_NEAR(frechet_distance(m1, s1, m2, s2, 2), want, 1e-13);
  EXPECT_NEAR(frechet_distance(m2, s2, m1, s1, 2), want, 1e-13);  // symmetric
}

// Commuting covariances in a random rotation Q: S_i = Q diag(a_i) Q^T, so
//   FD = |m1 - m2|^2 + sum_k (sqrt(a1_k) - sqrt(a2_k))^2.
TEST(FrechetDistance, RotatedDiagonalClosedForm) {
  const int d = 12;
  std::vector<double> q, unused;
  symmetric_eigen(random_symmetric_psd(d, d, 11), d, &unused,
                  &q);  // an orthogonal matrix
  std::mt19937_64 gen(12);
  std::uniform_real_distribution<double> u(0.1, 4.0);
  std::vector<double> a1(d), a2(d), m1(d), m2(d);
  double want = 0.0;
  for (int k = 0; k < d; ++k) {
    a1[std::size_t(k)] = u(gen), a2[std::size_t(k)] = u(gen);
    m1[std::size_t(k)] = u(gen), m2[std::size_t(k)] = u(gen);
    want += std::pow(m1[std::size_t(k)] - m2[std::size_t(k)], 2) +
            std::pow(std::sqrt(a1[std::size_t(k)]) - std::sqrt(a2[std::size_t(k)]), 2);
  }
  auto build = [&](const std::vector<double>& a) {
    std::vector<double> s(std::size_t(d) * d, 0.0);
    for (int i = 0; i < d; ++i)
      for (int j = 0; j < d; ++j)
        for (int k = 0; k < d; ++k)
          s[std::size_t(i) * d + j] +=
              q[std::size_t(i) * d + k] * a[std::size_t(k)] * q[std::size_t(j) * d + k];
    return s;
  };
  // Scale of the terms ~ sum a ~ 50; rounding ~d^2 eps on each: 1e-11 absolute.
  EXPECT_NEAR(frechet_distance(m1, build(a1), m2, build(a2), d), want, 1e-11);
}

TEST(FrechetDistance, RejectsMismatchedSizes) {
  EXPECT_THROW(frechet_distance({0, 0}, {1, 0, 0, 1}, {0}, {1}, 2), Error);
}

// ---- Inception Score ----------------------------------------------------------------------------
TEST(InceptionScoreTest, UniformPredictionsScoreOne) {
  const std::vector<float> logits(50 * 7, 0.0f);
  const InceptionScore s = inception_score(logits.data(), 50, 7, 5);
  EXPECT_NEAR(s.mean, 1.0, 1e-14);
  EXPECT_NEAR(s.std, 0.0, 1e-14);
}

// Confident predictions spread evenly over k classes within every split: p(y|x)
// one-hot, p(y) uniform over k, KL = log k for every image, so the score is
// exactly k.
TEST(InceptionScoreTest, ConfidentDistinctClassesScoreTheirCount) {
  const int k = 6, classes = 20, splits = 4, n = k * splits * 3;
  std::vector<float> logits(std::size_t(n) * classes, 0.0f);
  for (int i = 0; i < n; ++i) logits[std::size_t(i) * classes + (i % k) * 3] = 200.0f;
  const InceptionScore s = inception_score(logits.data(), n, classes, splits);
  EXPECT_NEAR(s.mean, double(k), 1e-12);
  EXPECT_NEAR(s.std, 0.0, 1e-12);
}

// Hand-worked: two images with p = (3/4, 1/4) and (1/4, 3/4): p(y) = (1/2,
// 1/2), and each KL is 3/4 log(3/2) + 1/4 log(1/2). Splits of one image each
// score exp(0) = 1: mean 1, std 0... and the two-split spread is checked on a
// set whose splits differ.
TEST(InceptionScoreTest, HandWorkedValueAndSplits) {
  const float l = float(std::log(3.0));  // softmax(log 3, 0) = (3/4, 1/4)
  const std::vector<float> logits{l, 0.0f, 0.0f, l};
  const double kl = 0.75 * std::log(1.5) + 0.25 * std::log(0.5);
  EXPECT_NEAR(inception_score(logits.data(), 2, 2, 1).mean, std::exp(kl), 1e-7);
  const InceptionScore one_each = inception_score(logits.data(), 2, 2, 2);
  EXPECT_NEAR(one_each.mean, 1.0, 1e-14);
  // Splits {uniform, uniform} and {the pair above}: scores 1 and exp(kl).
  const std::vector<float> four{0, 0, 0, 0, l, 0, 0, l};
  const InceptionScore two = inception_score(four.data(), 4, 2, 2);
  EXPECT_NEAR(two.mean, (1.0 + std::exp(kl)) / 2, 1e-7);
  EXPECT_NEAR(two.std, (std::exp(kl) - 1.0) / 2, 1e-7);
  EXPECT_THROW(inception_score(logits.data(), 2, 2, 3), Error);
}

// ---- the network on random weights --------------------------------------------------------------
// One random-weights file (95 MB) for the tests that run the network.
class InceptionNetwork : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(temp_dir("inception_net"));
    path_ = new std::string(write_random_weights(*dir_));
  }
  static void TearDownTestSuite() {
    std::filesystem::remove_all(*dir_);
    delete dir_;
    delete path_;
  }
  static std::string* dir_;
  static std::string* path_;
};
std::string* InceptionNetwork::dir_ = nullptr;
std::string* InceptionNetwork::path_ = nullptr;

TEST_F(InceptionNetwork, OutputShapesOnRandomWeights) {
  const std::string path = *path_;
  auto be = make_cpu_backend(2);
  InceptionV3 net(*be, path,
                  75);  // the smallest size: the shapes do not depend on it
  EXPECT_GT(net.parameter_count(),
            23000000);  // Inception-v3 without the aux head: ~23.8M
  for (int channels : {3, 1}) {
    const Tensor images = Tensor::host(Shape{3, channels, 28, 30});
    const std::vector<float> r = random_vector(std::size_t(images.numel()), 21);
    std::copy(r.begin(), r.end(), images.data<float>());
    std::vector<float> features, logits;
    net.features_and_logits(images, 2, &features,
                            &logits);  // batches of 2 and 1
    ASSERT_EQ(features.size(), std::size_t(3) * 2048);
    ASSERT_EQ(logits.size(), std::size_t(3) * 1008);
    Tensor f = be->empty(Shape{3, 2048}), l = be->empty(Shape{3, 1008});
    Tensor x = be->from_vector(r, images.shape());
    net.forward(x, f,
                l);  // the device-level entry point: [N, 2048] and [N, 1008]
    EXPECT_EQ(be->to_vector(f),
              features);  // batching does not change a sample's result
    EXPECT_EQ(be->to_vector(l), logits);
    double fsum = 0.0;
    for (float v : features) {
      ASSERT_TRUE(std::isfinite(v));
      ASSERT_GE(v, 0.0f);  // ReLU then mean
      fsum += v;
    }
    EXPECT_GT(fsum, 0.0);
    for (float v : logits) ASSERT_TRUE(std::isfinite(v));
  }
  Tensor bad = be->empty(Shape{1, 2, 28, 28}), f = be->empty(Shape{1, 2048}),
         l = be->empty(Shape{1, 1008});
  EXPECT_THROW(net.forward(bad, f, l), Error);  // 2 channels
}

// The whole evaluation on a few images: the counts come back, two different sets score an FID
// within its bounds from their feature statistics, and the IS equals the score of the
// logits computed separately (>= 1: a KL is >= 0). The network runs at 75 x 75 to stay fast (the
// path through fid_and_inception_score is the same at 299); FID(x, x) = 0 is checked on the
// small-dimensional cases above, each 2048-d Frechet distance costing seconds of eigensolver.
TEST_F(InceptionNetwork, FidAndInceptionScoreEndToEnd) {
  auto be = make_cpu_backend(2);
  InceptionV3 net(*be, *path_, 75);
  const Tensor a = Tensor::host(Shape{4, 1, 20, 20}), b = Tensor::host(Shape{3, 3, 24, 20});
  const std::vector<float> ra = random_vector(std::size_t(a.numel()), 31);
  const std::vector<float> rb = random_vector(std::size_t(b.numel()), 32, -1.0f, 0.0f);
  std::copy(ra.begin(), ra.end(), a.data<float>());
  std::copy(rb.begin(), rb.end(), b.data<float>());
  const FidIsResult r = fid_and_inception_score(net, a, b, 3, 2);
  EXPECT_EQ(r.n_generated, 4);
  EXPECT_EQ(r.n_reference, 3);
  std::vector<float> fa, la, fb, lb;
  net.features_and_logits(a, 3, &fa, &la);
  net.features_and_logits(b, 3, &fb, &lb);
  const int D = InceptionV3::kFeatureDim;
  const GaussianStats sa = gaussian_stats(fa.data(), 4, D), sb = gaussian_stats(fb.data(), 3, D);
  // FID = |dmu|^2 + (squared Bures distance of the covariances, in [0, tr Sa + tr Sb]): the
  // bounds check the wiring (which features, which statistics) without a second 2048-d solve.
  double dmu2 = 0.0;
  for (int j = 0; j < D; ++j)
    dmu2 += std::pow(sa.mean[std::size_t(j)] - sb.mean[std::size_t(j)], 2);
  const double trs = trace(sa.cov, D) + trace(sb.cov, D);
  EXPECT_GE(r.fid, dmu2 * (1 - 1e-9) - 1e-6 * trs);
  EXPECT_LE(r.fid, dmu2 + trs * (1 + 1e-9));
  EXPECT_GT(dmu2, 0.0);
  const InceptionScore is = inception_score(la.data(), 4, InceptionV3::kLogitDim, 2);
  EXPECT_GE(r.is_mean, 1.0);
  EXPECT_NEAR(r.is_mean, is.mean, 1e-12);
  EXPECT_NEAR(r.is_std, is.std, 1e-12);
  std::printf("FID %.4g, IS %.4f +- %.4f\n", r.fid, r.is_mean, r.is_std);
  EXPECT_THROW(fid_and_inception_score(net, a, b, 4, 5), Error);  // 5 splits of 4
}

// The loader reads tensors in network order, so a truncated file (the first
// layers only) finds its fault as a full one would, at a fraction of the 95 MB.
TEST(InceptionWeights, MissingOrMisshapenTensorIsNamed) {
  const std::string dir = temp_dir("inception_errors");
  auto be = make_cpu_backend(1);
  // Tensors 0-9: Conv2d_1a_3x3 and Conv2d_2a_3x3 (weight + 4 BatchNorm tensors
  // each).
  const std::string missing = write_random_weights(dir, "Conv2d_2a_3x3.bn.running_var", "", 10);
  try {
    InceptionV3 net(*be, missing, 75);
    FAIL() << "a missing tensor loaded";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("missing tensor 'Conv2d_2a_3x3.bn.running_var'"),
              std::string::npos)
        << e.what();
    EXPECT_NE(std::string(e.what()).find(missing), std::string::npos) << e.what();
  }
  const std::string misshapen = write_random_weights(dir, "", "Conv2d_2a_3x3.conv.weight", 10);
  try {
    InceptionV3 net(*be, misshapen, 75);
    FAIL() << "a misshapen tensor loaded";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("Conv2d_2a_3x3.conv.weight"), std::string::npos)
        << e.what();
    EXPECT_NE(std::string(e.what()).find("expected [32, 32, 3, 3]"), std::string::npos) << e.what();
  }
  // The file ends after tensor 9: the next one is reported missing.
  const std::string truncated = write_random_weights(dir, "", "", 10);
  try {
    InceptionV3 net(*be, truncated, 75);
    FAIL() << "a truncated file loaded";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("Conv2d_2b_3x3.conv.weight"), std::string::npos)
        << e.what();
  }
  EXPECT_THROW(InceptionV3(*be, dir + "/no_such_file.safetensors", 75), Error);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace jem::test
