// The evaluation library on the CUDA backend against the CPU backend: OOD scores (the input
// gradient included), a PGD attack, and SGLD sample chains on a tiny random WRN-10-1, all in FP32
// math (TF32 would need tolerances of its own and tests nothing more about the eval code).
#include <gtest/gtest.h>

#include <cmath>

#include "cuda_test_support.hpp"
#include "jem/ood.hpp"
#include "jem/pgd.hpp"
#include "jem/samples.hpp"

namespace jem::test {
namespace {

struct Pair {
  std::unique_ptr<Backend> cpu = make_cpu_backend(1);
  std::unique_ptr<Backend> gpu = cuda::make_cuda_backend(0, MathMode::FP32);
  WideResNet mc, mg;
  explicit Pair(int batch)
      : mc(WrnConfig{10, 1, 1, 8, 10, 0.2f}, *cpu, batch), mg(WrnConfig{10, 1, 1, 8, 10, 0.2f}, *gpu, batch) {
    mc.init(5);
    mg.init(5);
  }
};

// Relative error of two score vectors.
double rel(const std::vector<double>& a, const std::vector<double>& b) {
  double d = 0, n = 0;
  for (std::size_t i = 0; i < a.size(); ++i) d += (a[i] - b[i]) * (a[i] - b[i]), n += b[i] * b[i];
  return std::sqrt(d / std::max(n, 1e-30));
}

TEST(CudaEval, OodScoresMatchCpu) {
  JEM_SKIP_WITHOUT_CUDA();
  Pair p(8);
  const int n = 20;  // more than one batch
  const Vec x = random_vector(std::size_t(n) * 64, 3);
  const OodScores c = compute_ood_scores(p.mc, x, n), g = compute_ood_scores(p.mg, x, n);
  // FP32 forward and backward of a 10-layer net on both sides: agreement to ~1e-6 relative;
  // 1e-4 leaves room for different summation orders (cuDNN algorithms) without hiding a bug,
  // which would show as O(1) differences.
  EXPECT_LT(rel(g.logsumexp, c.logsumexp), 1e-4);
  EXPECT_LT(rel(g.max_softmax, c.max_softmax), 1e-4);
  EXPECT_LT(rel(g.grad_norm, c.grad_norm), 1e-4);
}

TEST(CudaEval, PgdMatchesCpuAndStaysInItsBall) {
  JEM_SKIP_WITHOUT_CUDA();
  Pair p(4);
  const int B = 4;
  const Vec x = random_vector(std::size_t(B) * 64, 9, -0.8f, 0.8f);
  const IVec y = {1, 3, 5, 7};
  for (PgdNorm norm : {PgdNorm::Linf, PgdNorm::L2}) {
    const float eps = norm == PgdNorm::Linf ? 8.0f / 255 : 0.5f;
    double loss[2];
    Vec adv[2];
    Backend* bes[2] = {p.cpu.get(), p.gpu.get()};
    WideResNet* ms[2] = {&p.mc, &p.mg};
    for (int k = 0; k < 2; ++k) {
      Backend& be = *bes[k];
      const Tensor xd = be.from_vector(x, Shape{B, 1, 8, 8}), ad = be.empty(Shape{B, 1, 8, 8});
      const Tensor yd = be.empty(Shape{B}, DType::I32);
      be.upload_i32(y.data(), yd);
      loss[k] = pgd_attack(*ms[k], xd, yd, PgdConfig{norm, eps, 5, 0.0f}, ad);
      adv[k] = be.to_vector(ad);
    }
    // The L-inf steps take sign(g): a gradient component near 0 may flip its sign between
    // backends and move a pixel the other way, so the images may differ in a few pixels; the
    // loss they reach agrees closely.
    EXPECT_NEAR(loss[1], loss[0], 1e-3 * std::abs(loss[0]) + 1e-5) << to_string(norm);
    for (int b = 0; b < B; ++b) {
      double linf = 0, l2 = 0;
      for (int e = 0; e < 64; ++e) {
        const double d = double(adv[1][std::size_t(b * 64 + e)]) - x[std::size_t(b * 64 + e)];
        linf = std::max(linf, std::abs(d));
        l2 += d * d;
      }
      if (norm == PgdNorm::Linf)
        EXPECT_LE(linf, 2.0 * eps + 1e-6);
      else
        EXPECT_LE(std::sqrt(l2), 2.0 * eps * (1 + 1e-6));
    }
  }
}

TEST(CudaEval, SampleChainsMatchCpu) {
  JEM_SKIP_WITHOUT_CUDA();
  Pair p(8);
  SamplerConfig sc;
  sc.n_classes = 10;
  SgldSampler sc_cpu(*p.cpu, p.mc, sc, 8), sc_gpu(*p.gpu, p.mg, sc, 8);
  const int n = 12;
  Vec a = fresh_noise(*p.cpu, n, 1, 8, 4), b = fresh_noise(*p.gpu, n, 1, 8, 4);
  EXPECT_EQ(a, b);  // Philox on both sides
  IVec labels(n);
  for (int i = 0; i < n; ++i) labels[std::size_t(i)] = i % 10;
  run_sgld_chains(*p.cpu, sc_cpu, p.mc.config(), 8, a, n, labels, 2, 3, 7);
  run_sgld_chains(*p.gpu, sc_gpu, p.mg.config(), 8, b, n, labels, 2, 3, 7);
  // 6 steps of size 1 on the gradient: rounding differences of ~1e-6 stay small.
  EXPECT_LT(rel_error(b, a), 1e-4);
}

}  // namespace
}  // namespace jem::test
