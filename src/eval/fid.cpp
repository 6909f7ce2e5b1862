// FID and Inception Score; see include/jem/fid.hpp for the definitions.
#include "jem/fid.hpp"

#include <cblas.h>

#include <algorithm>
#include <cmath>

#include "jem/inception_v3.hpp"

namespace jem {

GaussianStats gaussian_stats(const float* features, std::int64_t n, int dim) {
  JEM_CHECK(n >= 2 && dim >= 1, "gaussian_stats: need at least 2 rows of >= 1 feature, got ", n,
            " x ", dim);
  GaussianStats s;
  s.dim = dim;
  s.n = n;
  s.mean.assign(std::size_t(dim), 0.0);
  for (std::int64_t i = 0; i < n; ++i)
    for (int j = 0; j < dim; ++j) {
      const float v = features[i * dim + j];
      JEM_CHECK(std::isfinite(v), "gaussian_stats: feature ", j, " of row ", i, " is ", v);
      s.mean[std::size_t(j)] += v;
    }
  for (double& m : s.mean) m /= double(n);
  // Two passes (mean first, then centred products) in double: no cancellation
  // between E[x x^T] and mu mu^T. Rows go through a centred block of kChunk
  // rows at a time, so memory stays O(kChunk * dim) for any n.
  constexpr std::int64_t kChunk = 512;
  s.cov.assign(std::size_t(dim) * std::size_t(dim), 0.0);
  std::vector<double> block(std::size_t(kChunk) * std::size_t(dim));  // [rows, dim], centred
  for (std::int64_t begin = 0; begin < n; begin += kChunk) {
    const std::int64_t rows = std::min(kChunk, n - begin);
    for (std::int64_t i = 0; i < rows; ++i)
      for (int j = 0; j < dim; ++j)
        block[std::size_t(i * dim + j)] =
            double(features[(begin + i) * dim + j]) - s.mean[std::size_t(j)];
    // cov (upper triangle) += block^T block
    cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, dim, int(rows), 1.0, block.data(), dim, 1.0,
                s.cov.data(), dim);
  }
  const double inv = 1.0 / double(n - 1);
  for (int r = 0; r < dim; ++r)
    for (int c = r; c < dim; ++c) {
      const double v = s.cov[std::size_t(r) * dim + c] * inv;
      s.cov[std::size_t(r) * dim + c] = v;
      s.cov[std::size_t(c) * dim + r] = v;
    }
  return s;
}

double frechet_distance(const std::vector<double>& mean1, const std::vector<double>& cov1,
                        const std::vector<double>& mean2, const std::vector<double>& cov2,
                        int dim) {
  const std::size_t d = std::size_t(dim), dd = d * d;
  JEM_CHECK(
      dim >= 1 && mean1.size() == d && mean2.size() == d && cov1.size() == dd && cov2.size() == dd,
      "frechet_distance: means of ", mean1.size(), " and ", mean2.size(),
      " values and covariances of ", cov1.size(), " and ", cov2.size(), " for dimension ", dim);
  double diff2 = 0.0, tr1 = 0.0, tr2 = 0.0;
  for (std::size_t i = 0; i < d; ++i) {
    const double e = mean1[i] - mean2[i];
    diff2 += e * e;
    tr1 += cov1[i * d + i];
    tr2 += cov2[i * d + i];
  }
  // S1 = V diag(lambda) V^T. Conjugating sqrt(S1) S2 sqrt(S1) by V gives
  //   N = diag(sqrt(lambda)) V^T S2 V diag(sqrt(lambda)),
  // whose rows and columns of zero eigenvalues vanish: its nonzero eigenvalues are those of
  // the r x r matrix B^T S2 B, B = V_r diag(sqrt(lambda_r)) [d, r], over the r eigenvalues
  // above tau = d eps lambda_max. A backward-stable eigensolver returns S1's eigenvalues only to
  // ~d eps ||S1||, so those below tau are rounding noise around 0; keeping them would add their
  // square roots, ~sqrt(tau ||S2||) each, to the trace. With fewer samples than dimensions
  // (r < d) this also makes the second eigen-decomposition small.
  std::vector<double> lambda, V;
  symmetric_eigen(cov1, dim, &lambda, &V);
  const double tau = double(dim) * 2.220446049250313e-16 * std::max(lambda.back(), 0.0);
  std::vector<std::size_t> keep;
  for (std::size_t i = 0; i < d; ++i)
    if (lambda[i] > tau) keep.push_back(i);
  const int r = int(keep.size());
  double tr_sqrt = 0.0;
  if (r > 0) {
    std::vector<double> B(d * std::size_t(r));  // [d, r]
    for (std::size_t row = 0; row < d; ++row)
      for (int k = 0; k < r; ++k)
        B[row * std::size_t(r) + std::size_t(k)] =
            V[row * d + keep[std::size_t(k)]] * std::sqrt(lambda[keep[std::size_t(k)]]);
    std::vector<double> s2b(d * std::size_t(r)), m(std::size_t(r) * std::size_t(r));
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, dim, r, dim, 1.0, cov2.data(), dim,
                B.data(), r, 0.0, s2b.data(), r);  // S2 B [d, r]
    cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, r, r, dim, 1.0, B.data(), r, s2b.data(),
                r, 0.0, m.data(), r);  // B^T S2 B [r, r]
    const std::size_t rr = std::size_t(r);
    for (std::size_t i = 0; i < rr; ++i)  // symmetric in exact arithmetic: remove rounding skew
      for (std::size_t j = i + 1; j < rr; ++j)
        m[i * rr + j] = m[j * rr + i] = 0.5 * (m[i * rr + j] + m[j * rr + i]);
    std::vector<double> mu;
    symmetric_eigen(m, r, &mu, nullptr);
    // Eigenvalues of a PSD matrix that rounding pushes below zero count as zero.
    for (double v : mu) tr_sqrt += std::sqrt(std::max(v, 0.0));
  }
  return diff2 + tr1 + tr2 - 2.0 * tr_sqrt;
}

double frechet_distance(const GaussianStats& a, const GaussianStats& b) {
  JEM_CHECK(a.dim == b.dim, "frechet_distance: dimensions ", a.dim, " and ", b.dim, " differ");
  return frechet_distance(a.mean, a.cov, b.mean, b.cov, a.dim);
}

InceptionScore inception_score(const float* logits, std::int64_t n, int classes, int splits) {
  JEM_CHECK(classes >= 1 && n >= 1, "inception_score: ", n, " rows of ", classes, " classes");
  JEM_CHECK(splits >= 1 && splits <= n, "inception_score: ", splits, " splits of ", n, " rows");
  std::vector<double> p(std::size_t(n) * std::size_t(classes));  // softmax rows, in double
  for (std::int64_t i = 0; i < n; ++i) {
    const float* row = logits + i * classes;
    double mx = -INFINITY;
    for (int k = 0; k < classes; ++k) {
      JEM_CHECK(std::isfinite(row[k]), "inception_score: logit ", k, " of row ", i, " is ", row[k]);
      mx = std::max(mx, double(row[k]));
    }
    double z = 0.0;
    for (int k = 0; k < classes; ++k) z += std::exp(double(row[k]) - mx);
    for (int k = 0; k < classes; ++k)
      p[std::size_t(i * classes + k)] = std::exp(double(row[k]) - mx) / z;
  }
  std::vector<double> scores;
  std::vector<double> py(static_cast<std::size_t>(classes));
  for (int s = 0; s < splits; ++s) {
    const std::int64_t begin = s * n / splits, end = (s + 1) * n / splits;
    std::fill(py.begin(), py.end(), 0.0);
    for (std::int64_t i = begin; i < end; ++i)
      for (int k = 0; k < classes; ++k) py[std::size_t(k)] += p[std::size_t(i * classes + k)];
    for (double& v : py) v /= double(end - begin);
    double kl = 0.0;  // sum over the split of KL(p(y|x) || p(y)); 0 log 0 = 0
    for (std::int64_t i = begin; i < end; ++i)
      for (int k = 0; k < classes; ++k) {
        const double q = p[std::size_t(i * classes + k)];
        if (q > 0.0) kl += q * (std::log(q) - std::log(py[std::size_t(k)]));
      }
    scores.push_back(std::exp(kl / double(end - begin)));
  }
  InceptionScore r;
  for (double v : scores) r.mean += v;
  r.mean /= double(splits);
  for (double v : scores) r.std += (v - r.mean) * (v - r.mean);
  r.std = std::sqrt(r.std / double(splits));
  return r;
}

namespace {
// Checked before the weights load, so that bad arguments fail fast.
void check_image_sets(const Tensor& generated, const Tensor& reference, int is_splits) {
  for (const Tensor* t : {&generated, &reference})
    JEM_CHECK(t->defined() && t->shape().rank() == 4 && t->dim(0) >= 2,
              "fid_and_inception_score: image sets must be [N >= 2, C, H, W], got ",
              t->defined() ? t->shape().str() : std::string("undefined"));
  JEM_CHECK(is_splits >= 1 && is_splits <= generated.dim(0), "fid_and_inception_score: ", is_splits,
            " Inception Score splits of ", generated.dim(0), " generated images");
}
}  // namespace

FidIsResult fid_and_inception_score(Backend& backend, const std::string& weights_path,
                                    const Tensor& generated, const Tensor& reference,
                                    std::int64_t batch_size, int is_splits) {
  check_image_sets(generated, reference, is_splits);
  InceptionV3 net(backend, weights_path);
  return fid_and_inception_score(net, generated, reference, batch_size, is_splits);
}

FidIsResult fid_and_inception_score(InceptionV3& net, const Tensor& generated,
                                    const Tensor& reference, std::int64_t batch_size,
                                    int is_splits) {
  check_image_sets(generated, reference, is_splits);
  // Features [N, 2048] and logits [N, 1008] of both sets (the reference logits go unused).
  std::vector<float> gen_features, gen_logits, ref_features, ref_logits;
  net.features_and_logits(generated, batch_size, &gen_features, &gen_logits);
  net.features_and_logits(reference, batch_size, &ref_features, &ref_logits);
  const int D = InceptionV3::kFeatureDim;
  const GaussianStats g = gaussian_stats(gen_features.data(), generated.dim(0), D);
  const GaussianStats r = gaussian_stats(ref_features.data(), reference.dim(0), D);
  const InceptionScore is =
      inception_score(gen_logits.data(), generated.dim(0), InceptionV3::kLogitDim, is_splits);
  return FidIsResult{frechet_distance(g, r), is.mean, is.std, generated.dim(0), reference.dim(0)};
}

}  // namespace jem
