// The CUDA backend's inference-only image ops (FID Inception network) against the CPU backend:
// rectangular / asymmetrically padded cuDNN convolutions, max / average pooling, bilinear
// resize, channel concatenation, and the whole Inception-v3 forward pass on random weights.
// Skips, with the reason, without a usable GPU.
#include <gtest/gtest.h>

#include <filesystem>
#include <random>
#include <string>

#include "cuda_test_support.hpp"
#include "jem/inception_v3.hpp"
#include "jem/safetensors.hpp"

namespace jem::test {
namespace {

class CudaImageOps : public ::testing::Test {
 protected:
  void SetUp() override {
    JEM_SKIP_WITHOUT_CUDA();
    cpu = make_cpu_backend(2);
    gpu = cuda::make_cuda_backend(0, MathMode::FP32);
  }
  std::unique_ptr<Backend> cpu, gpu;
};

// cuDNN with R != S and pad_h != pad_w, FP32 math: the convolution tolerance of
// cuda_test_support.hpp (32 sqrt(k) u relative to the sum's RSS).
TEST_F(CudaImageOps, RectangularConvolutionMatchesCpu) {
  struct Case {
    int N, C, H, W, K, R, S, stride, ph, pw;
  };
  for (const Case c : {Case{2, 5, 17, 17, 6, 1, 7, 1, 0, 3}, Case{2, 5, 17, 17, 6, 7, 1, 1, 3, 0},
                       Case{1, 8, 8, 8, 4, 1, 3, 1, 0, 1}, Case{1, 8, 8, 8, 4, 3, 1, 1, 1, 0},
                       Case{3, 3, 35, 33, 5, 3, 3, 2, 0, 0}, Case{2, 4, 9, 10, 3, 3, 5, 2, 1, 2}}) {
    const Shape xs{c.N, c.C, c.H, c.W}, ws{c.K, c.C, c.R, c.S};
    const int P = (c.H + 2 * c.ph - c.R) / c.stride + 1, Q = (c.W + 2 * c.pw - c.S) / c.stride + 1;
    const Shape ys{c.N, c.K, P, Q};
    const Vec x = random_vector(std::size_t(xs.numel()), 1),
              w = random_vector(std::size_t(ws.numel()), 2);
    const Vec b = random_vector(std::size_t(c.K), 3);
    auto run = [&](Backend& be, const Vec& xv, const Vec& wv, const Vec& bv) {
      Tensor y = nan_tensor(be, ys);
      be.conv2d_forward(be.from_vector(xv, xs), be.from_vector(wv, ws),
                        be.from_vector(bv, Shape{c.K}), y, c.stride, c.ph, c.pw);
      return be.to_vector(y);
    };
    const Vec want = run(*cpu, x, w, b);
    const double ratio = rss_ratio(run(*cpu, squares(x), squares(w), squares(b)), want);
    expect_close(run(*gpu, x, w, b), want, sum_tol(MathMode::FP32, c.C * c.R * c.S + 1, ratio),
                 "conv " + std::to_string(c.R) + "x" + std::to_string(c.S));
  }
}

// Both sides evaluate the same per-element functions (image_ops_math.hpp). Max pooling and the
// channel copy move values: bit-identical. The average adds the same taps in the same order and
// divides once: bit-identical too. Bilinear resize may differ by nvcc contracting a * b + c into
// one FMA (one rounding instead of two) in the blend: a few ulp of values <= 1, 8 u checked.
TEST_F(CudaImageOps, PoolResizeAndCopyMatchCpu) {
  const Shape xs{3, 5, 35, 33};
  const Vec x = random_vector(std::size_t(xs.numel()), 4);
  const Tensor xc = cpu->from_vector(x, xs), xg = gpu->from_vector(x, xs);
  struct Pool {
    int k, s, p;
  };
  for (const Pool pc : {Pool{3, 2, 0}, Pool{3, 1, 1}, Pool{2, 2, 1}}) {
    const Shape ys{3, 5, (35 + 2 * pc.p - pc.k) / pc.s + 1, (33 + 2 * pc.p - pc.k) / pc.s + 1};
    for (bool is_max : {true, false}) {
      Tensor yc = nan_tensor(*cpu, ys), yg = nan_tensor(*gpu, ys);
      if (is_max) {
        cpu->max_pool2d_forward(xc, yc, pc.k, pc.s, pc.p);
        gpu->max_pool2d_forward(xg, yg, pc.k, pc.s, pc.p);
      } else {
        cpu->avg_pool2d_forward(xc, yc, pc.k, pc.s, pc.p);
        gpu->avg_pool2d_forward(xg, yg, pc.k, pc.s, pc.p);
      }
      expect_bit_equal(gpu->to_vector(yg), cpu->to_vector(yc),
                       is_max ? "max_pool2d" : "avg_pool2d");
    }
  }
  for (const Shape rs : {Shape{3, 5, 299, 299}, Shape{3, 5, 17, 20}}) {
    Tensor yc = nan_tensor(*cpu, rs), yg = nan_tensor(*gpu, rs);
    cpu->resize_bilinear_forward(xc, yc);
    gpu->resize_bilinear_forward(xg, yg);
    const Vec got = gpu->to_vector(yg), want = cpu->to_vector(yc);
    EXPECT_LE(max_abs_diff(got, want), 8 * kU) << "resize to " << rs.str();
  }
  Tensor dc = cpu->empty(Shape{3, 9, 35, 33}), dg = gpu->empty(Shape{3, 9, 35, 33});
  cpu->fill(dc, 2.0f);
  gpu->fill(dg, 2.0f);
  cpu->copy_channels(xc, dc, 3);
  gpu->copy_channels(xg, dg, 3);
  expect_bit_equal(gpu->to_vector(dg), cpu->to_vector(dc), "copy_channels");
}

// The whole network on random weights at a small size: FP32 cuDNN against the CPU. Each layer
// agrees to the convolution tolerance (~1e-6 relative); compounded over the 17 stages the
// outputs stay within 1e-4 (the PyTorch comparison of tests/test_inception_reference.cpp
// measured 8e-7 between two float32 implementations).
TEST_F(CudaImageOps, InceptionForwardMatchesCpu) {
  const std::string dir = temp_dir("cuda_inception");
  safetensors::Writer writer;
  std::mt19937_64 gen(7);
  for (const InceptionTensorSpec& t : InceptionV3::tensor_specs()) {
    std::int64_t n = 1;
    for (auto d : t.shape) n *= d;
    const std::int64_t fan_in = t.shape.size() > 1 ? n / t.shape[0] : 1;
    const bool conv = t.shape.size() > 1;
    const bool around_one = t.name.find("bn.weight") != std::string::npos ||
                            t.name.find("running_var") != std::string::npos;
    std::normal_distribution<float> nd(0.0f, conv ? float(std::sqrt(2.0 / double(fan_in))) : 0.05f);
    Vec v(static_cast<std::size_t>(n));
    for (float& e : v) e = (around_one ? 1.0f : 0.0f) + nd(gen);
    writer.add_f32(t.name, t.shape, v.data());
  }
  const std::string path = dir + "/w.safetensors";
  writer.write(path);
  InceptionV3 net_cpu(*cpu, path, 107), net_gpu(*gpu, path, 107);
  const Tensor images = Tensor::host(Shape{4, 3, 32, 32});
  const Vec r = random_vector(std::size_t(images.numel()), 9);
  std::copy(r.begin(), r.end(), images.data<float>());
  Vec fc, lc, fg, lg;
  net_cpu.features_and_logits(images, 4, &fc, &lc);
  net_gpu.features_and_logits(images, 3, &fg, &lg);
  EXPECT_LE(rel_error(fg, fc), 1e-4);
  EXPECT_LE(rel_error(lg, lc), 1e-4);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace jem::test
