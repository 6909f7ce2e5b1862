// Frechet Inception Distance and Inception Score of generated images (Heusel et
// al. 2017; Salimans et al. 2016), computed with pytorch-fid's FID Inception-v3
// (inception_v3.hpp).
//
//   FID = |mu_g - mu_r|^2 + tr(S_g) + tr(S_r) - 2 tr((S_g S_r)^(1/2))
//     over the 2048-d pool3 features of generated (g) and reference (r) images;
//     mu the mean and S the unbiased covariance (numpy.cov's ddof = 1), all in
//     double. tr((S1 S2)^(1/2)) = tr((S1^(1/2) S2 S1^(1/2))^(1/2)): S1 S2 is
//     similar to the symmetric PSD matrix S1^(1/2) S2 S1^(1/2), so the trace is
//     the sum of the square roots of that matrix's eigenvalues, computed with
//     LAPACK's symmetric eigensolver (dsyevd). Eigenvalues of S1 at rounding
//     level (below d eps lambda_max) and eigenvalues that rounding pushes below
//     zero count as zero (src/eval/fid.cpp explains why).
//   IS = exp(E_x KL(p(y|x) || p(y))) over the 1008-way softmax of the logits,
//   p(y) the mean of
//     p(y|x) over the split; reported as mean and (population) standard
//     deviation over `splits` consecutive equal splits, as in the original
//     implementation.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "jem/backend.hpp"

namespace jem {

struct FidIsResult {
  double fid;
  double is_mean;
  double is_std;
  std::int64_t n_generated;
  std::int64_t n_reference;
};

// The whole evaluation: loads the Inception weights (pytorch-fid names,
// safetensors; see docs/fid.md), runs the network on `backend` over both image
// sets, `batch_size` images at a time, and returns FID(generated, reference)
// and the Inception Score of `generated`. generated / reference: host float
// tensors [N, C, H, W] in [-1, 1], C = 1 or 3, any H x W (resized to 299 x
// 299), N >= 2 each; 1 <= is_splits <= n_generated.
FidIsResult fid_and_inception_score(Backend& backend, const std::string& weights_path,
                                    const Tensor& generated, const Tensor& reference,
                                    std::int64_t batch_size, int is_splits = 10);

class InceptionV3;
// The same with a network already loaded (several evaluations, or another input size).
FidIsResult fid_and_inception_score(InceptionV3& net, const Tensor& generated,
                                    const Tensor& reference, std::int64_t batch_size,
                                    int is_splits = 10);

// ---- the pieces
// -------------------------------------------------------------------------------
struct GaussianStats {
  int dim = 0;
  std::int64_t n = 0;
  std::vector<double> mean;  // [dim]
  std::vector<double> cov;   // [dim, dim], row-major, unbiased (divided by n - 1)
};

// Mean and covariance of `n` rows of `dim` features (row-major [n, dim]); n
// >= 2.
GaussianStats gaussian_stats(const float* features, std::int64_t n, int dim);

// The Frechet distance between N(mean1, cov1) and N(mean2, cov2) (see the top
// of this file).
double frechet_distance(const std::vector<double>& mean1, const std::vector<double>& cov1,
                        const std::vector<double>& mean2, const std::vector<double>& cov2, int dim);
double frechet_distance(const GaussianStats& a, const GaussianStats& b);

struct InceptionScore {
  double mean = 0.0, std = 0.0;
};
// logits [n, classes] (row-major); splits in [1, n]: split i holds rows
// [i * n / splits, (i + 1) * n / splits).
InceptionScore inception_score(const float* logits, std::int64_t n, int classes, int splits);

// Eigen-decomposition of a symmetric matrix a [n, n] (row-major; only its
// values matter, both triangles must agree): eigenvalues ascending, and if
// `vectors` is non-null the orthonormal eigenvectors as the COLUMNS of vectors
// [n, n] (row-major), so a = V diag(values) V^T.
void symmetric_eigen(const std::vector<double>& a, int n, std::vector<double>* values,
                     std::vector<double>* vectors);

}  // namespace jem
