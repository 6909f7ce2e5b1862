// The CUDA backend against the CPU backend (the reference), op by op, on the same random inputs
// (odd sizes, stride 2, 1x1 kernels and images, 1 and 3 channels, odd batches), with the
// tolerances of cuda_test_support.hpp; the Wide-ResNet against PyTorch's reference vectors; and
// device selection. Every test that needs a GPU skips, with the reason, when none is usable:
// only the device-selection tests without a GPU run on a machine that has none.
#include <cuda_runtime_api.h>
#include <gtest/gtest-spi.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <memory>
#include <ostream>
#include <string>
#include <tuple>

#include "conv_case.hpp"
#include "cuda_test_support.hpp"
#include "reference_model.hpp"
#include "jem/philox.hpp"
#include "jem/safetensors.hpp"
#include "jem/wide_resnet.hpp"

namespace jem::test {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// A CPU reference and a GPU backend (FP32 math unless a test asks otherwise).
class CudaOps : public ::testing::Test {
 protected:
  void SetUp() override {
    JEM_SKIP_WITHOUT_CUDA();
    cpu = make_cpu_backend(2);
    gpu = cuda::make_cuda_backend(0, MathMode::FP32);
  }
  // The same values on both backends.
  std::pair<Tensor, Tensor> both(const Vec& v, const Shape& s) {
    return {cpu->from_vector(v, s), gpu->from_vector(v, s)};
  }
  std::unique_ptr<Backend> cpu, gpu;
};

// ================================================================================================
// Memory
// ================================================================================================

TEST_F(CudaOps, EmptyIsZeroFilledAndOnTheDevice) {
  const Tensor t = gpu->empty(Shape{3, 5, 7, 9});
  EXPECT_EQ(t.device(), Device::CUDA);
  for (float v : gpu->to_vector(t)) ASSERT_EQ(v, 0.0f);
  // A recycled allocation must be zeroed too: dirty one, free it, allocate the same size.
  {
    Tensor dirty = gpu->empty(Shape{3, 5, 7, 9});
    gpu->fill(dirty, 7.0f);
    gpu->synchronize();
  }
  for (float v : gpu->to_vector(gpu->empty(Shape{3, 5, 7, 9}))) ASSERT_EQ(v, 0.0f);
  EXPECT_EQ(gpu->to_vector(gpu->empty(Shape{0})).size(), 0u);
}

TEST_F(CudaOps, UploadDownloadRoundTripsViews) {
  const Vec v = random_vector(3 * 5 * 7, 1);
  const Tensor t = gpu->from_vector(v, Shape{3, 5, 7});
  expect_bit_equal(gpu->to_vector(t), v, "round trip");
  // A view at an offset downloads its own elements.
  const Vec row1 = gpu->to_vector(t.slice(1, 2));
  expect_bit_equal(row1, Vec(v.begin() + 35, v.begin() + 70), "slice");
  // Upload into a view leaves the rest alone.
  const Vec ones(35, 1.0f);
  gpu->upload(ones.data(), t.slice(2, 3));
  Vec want = v;
  std::fill(want.begin() + 70, want.end(), 1.0f);
  expect_bit_equal(gpu->to_vector(t), want, "upload into a view");
}

// Uploads go through a ring of pinned slots (upload_staging.hpp). The source may be reused as
// soon as upload() returns: here one host buffer is refilled right after each of 3 rings' worth
// of uploads, queued behind slow work so that the device is far behind the host; every tensor
// must hold what the buffer held at its upload.
TEST_F(CudaOps, UploadSourceMayBeReusedAtOnce) {
  constexpr int kUploads = 3 * cuda::UploadStaging::kSlots;
  std::vector<Tensor> dst;
  for (int u = 0; u < kUploads; ++u) dst.push_back(gpu->empty(Shape{1000}));
  // Keeps the stream busy for milliseconds (40 fills of 256 MiB: 10 GiB of writes), so that the
  // host laps the ring of slots while their copies are still queued and must wait for them.
  const Tensor big = gpu->empty(Shape{std::int64_t(1) << 26});
  for (int i = 0; i < 40; ++i) gpu->fill(big, float(i + 1));
  Vec host(1000);
  for (int u = 0; u < kUploads; ++u) {
    for (std::size_t i = 0; i < host.size(); ++i) host[i] = float(u * 1000 + int(i));
    gpu->upload(host.data(), dst[std::size_t(u)]);
  }
  std::fill(host.begin(), host.end(), -1.0f);
  for (int u = 0; u < kUploads; ++u) {
    const Vec got = gpu->to_vector(dst[std::size_t(u)]);
    for (std::size_t i = 0; i < got.size(); ++i)
      ASSERT_EQ(got[i], float(u * 1000 + int(i))) << "upload " << u << ", element " << i;
  }
}

// An upload larger than a staging slot goes through in chunks, including a partial last one.
TEST_F(CudaOps, UploadLargerThanAStagingSlot) {
  const std::size_t n = 2 * cuda::UploadStaging::kSlotBytes / sizeof(float) + 12345;
  const Vec v = random_vector(n, 3);
  const Tensor t = gpu->empty(Shape{std::int64_t(n)});
  gpu->upload(v.data(), t);
  expect_bit_equal(gpu->to_vector(t), v, "chunked upload");
  IVec labels(n);
  for (std::size_t i = 0; i < n; ++i) labels[i] = std::int32_t(i * 7 % 1000003);
  const Tensor ti = gpu->empty(Shape{std::int64_t(n)}, DType::I32);
  gpu->upload_i32(labels.data(), ti);
  // Back through the float path (download reads F32): the bits of each int32, through an F32
  // view of the same storage.
  Vec bits(n);
  gpu->download(Tensor(ti.storage(), ti.offset(), ti.shape(), DType::F32), bits.data());
  for (std::size_t i = 0; i < n; ++i) {
    std::int32_t got = 0;
    std::memcpy(&got, &bits[i], sizeof got);
    ASSERT_EQ(got, labels[i]) << "element " << i;
  }
}

TEST_F(CudaOps, NameAndMathMode) {
  const std::string n = gpu->name();
  EXPECT_NE(n.find("cuda:0"), std::string::npos) << n;
  EXPECT_NE(n.find("FP32"), std::string::npos) << n;
  auto tf32 = cuda::make_cuda_backend(0, MathMode::TF32);
  EXPECT_NE(tf32->name().find("TF32"), std::string::npos) << tf32->name();
}

TEST_F(CudaOps, RejectsHostTensors) {
  const Tensor host = cpu->empty(Shape{4});
  const Tensor dev = gpu->empty(Shape{4});
  EXPECT_THROW(gpu->add(host, dev, dev), Error);
  EXPECT_THROW(gpu->copy(host, dev), Error);
  EXPECT_THROW(gpu->to_vector(host), Error);
}

// ================================================================================================
// Elementwise: one rounding (or none) per element, so bit-identical to the CPU, except axpy,
// which nvcc contracts into an FMA (one rounding instead of the CPU's two).
// ================================================================================================

TEST_F(CudaOps, FillF32AndI32) {
  const Tensor t = gpu->empty(Shape{3, 5, 7});
  gpu->fill(t, -2.5f);
  for (float v : gpu->to_vector(t)) ASSERT_EQ(v, -2.5f);
  gpu->fill(t, 0.0f);
  for (float v : gpu->to_vector(t)) ASSERT_EQ(std::bit_cast<std::uint32_t>(v), 0u);
  gpu->fill(t, -0.0f);  // not all-zero bits: must not take the memset path
  for (float v : gpu->to_vector(t)) ASSERT_EQ(std::bit_cast<std::uint32_t>(v), 0x80000000u);
  // I32: fill an index tensor with 2 and gather with it: every row is slot 2.
  const Vec buf = random_vector(4 * 6, 2);
  const Tensor idx = gpu->empty(Shape{5}, DType::I32);
  gpu->fill(idx, 2.0f);
  const Tensor out = gpu->empty(Shape{5, 6});
  gpu->buffer_gather(gpu->from_vector(buf, Shape{4, 6}), idx, gpu->empty(Shape{5}, DType::I32), out,
                     NoiseKey{});
  const Vec got = gpu->to_vector(out);
  for (int b = 0; b < 5; ++b)
    for (int e = 0; e < 6; ++e) ASSERT_EQ(got[b * 6 + e], buf[2 * 6 + e]);
}

TEST_F(CudaOps, CopyIncludingOverlappingViews) {
  const Vec src = random_vector(105, 3);
  const Tensor dst = gpu->empty(Shape{105});
  gpu->copy(gpu->from_vector(src, Shape{3, 5, 7}), dst);
  expect_bit_equal(gpu->to_vector(dst), src, "copy");
  // Overlapping views of one buffer: memmove semantics, as the CPU's copy.
  const Vec v = random_vector(100, 4);
  auto [c, g] = both(v, Shape{100});
  for (Backend* be : {cpu.get(), gpu.get()}) {
    const Tensor& t = be == cpu.get() ? c : g;
    be->copy(t.view(0, Shape{60}), t.view(20, Shape{60}));  // forward overlap
    be->copy(t.view(30, Shape{50}), t.view(10, Shape{50}));  // backward overlap
  }
  expect_bit_equal(gpu->to_vector(g), cpu->to_vector(c), "overlapping copies");
}

TEST_F(CudaOps, AddScaleAndAliasing) {
  const Shape s{5, 3, 7, 7};
  const Vec a = random_vector(s.numel(), 5), b = random_vector(s.numel(), 6);
  auto [ca, ga] = both(a, s);
  auto [cb, gb] = both(b, s);
  const Tensor cy = cpu->empty(s), gy = nan_tensor(*gpu, s);
  cpu->add(ca, cb, cy);
  gpu->add(ga, gb, gy);
  expect_bit_equal(gpu->to_vector(gy), cpu->to_vector(cy), "add");
  gpu->add(ga, gb, ga);  // y == a
  expect_bit_equal(gpu->to_vector(ga), cpu->to_vector(cy), "add y == a");
  gpu->scale(ga, -0.37f);
  cpu->scale(cy, -0.37f);
  expect_bit_equal(gpu->to_vector(ga), cpu->to_vector(cy), "scale");
}

TEST_F(CudaOps, AxpyWithinOneRounding) {
  for (std::int64_t n : {1, 77, 70001}) {
    const Vec x = random_vector(std::size_t(n), 7), y0 = random_vector(std::size_t(n), 8);
    const float alpha = -0.37f;
    auto [cx, gx] = both(x, Shape{n});
    auto [cy, gy] = both(y0, Shape{n});
    cpu->axpy(alpha, cx, cy);
    gpu->axpy(alpha, gx, gy);
    const Vec got = gpu->to_vector(gy), want = cpu->to_vector(cy);
    // CPU: round(y + round(alpha x)), error <= u (2 |alpha x| + |y|); GPU: round(y + alpha x),
    // error <= u (|y| + |alpha x|). They differ by at most 3 u (|y| + |alpha x|).
    for (std::size_t i = 0; i < got.size(); ++i)
      ASSERT_LE(std::fabs(double(got[i]) - want[i]),
                3 * kU * (std::fabs(y0[i]) + std::fabs(alpha * x[i])))
          << "n " << n << " element " << i;
  }
}

TEST_F(CudaOps, LeakyReluForwardBackwardInPlace) {
  constexpr float slope = 0.2f;
  for (const Shape& s : {Shape{3, 5, 7, 7}, Shape{5, 10, 37, 37}}) {
    Vec x = random_vector(s.numel(), 9);
    for (std::size_t i = 0; i < x.size(); i += 7) x[i] = 0.0f;  // x == 0: the slope side
    const Vec dy = random_vector(s.numel(), 10);
    auto [cx, gx] = both(x, s);
    const Tensor cy = cpu->empty(s), gy = nan_tensor(*gpu, s);
    cpu->leaky_relu_forward(cx, cy, slope);
    gpu->leaky_relu_forward(gx, gy, slope);
    expect_bit_equal(gpu->to_vector(gy), cpu->to_vector(cy), "forward " + s.str());
    auto [cd, gd] = both(dy, s);
    cpu->leaky_relu_backward(cx, cd, cd, slope);  // dx == dy
    gpu->leaky_relu_backward(gx, gd, gd, slope);
    expect_bit_equal(gpu->to_vector(gd), cpu->to_vector(cd), "backward in place " + s.str());
    gpu->leaky_relu_forward(gx, gx, slope);  // y == x
    expect_bit_equal(gpu->to_vector(gx), cpu->to_vector(cy), "forward in place " + s.str());
  }
}

// The fused activation passes of the Wide-ResNet: the same float operations as the CPU's, so
// bit-identical, except leaky_relu_backward_add, where either compiler may contract the product
// and the sum into one fused multiply-add: at most 2u of the terms' size apart.
TEST_F(CudaOps, FusedActivationPassesMatchCpu) {
  constexpr float slope = 0.2f;
  // (Shape{4, 6, 8, 8}: planes of 64, the float4 kernels; the others the scalar ones.)
  for (const Shape& s : {Shape{3, 5, 7, 7}, Shape{5, 10, 37, 37}, Shape{2, 7}, Shape{4, 6, 8, 8}}) {
    Vec x = random_vector(s.numel(), 13);
    for (std::size_t i = 0; i < x.size(); i += 7) x[i] = 0.0f;
    const Vec b = random_vector(std::size_t(s[1]), 14), other = random_vector(s.numel(), 15);
    auto [cx, gx] = both(x, s);
    auto [cb, gb] = both(b, Shape{s[1]});
    auto [co, go] = both(other, s);
    const Tensor cy = cpu->empty(s), gy = nan_tensor(*gpu, s);
    cpu->bias_leaky_relu_forward(cx, cb, cy, slope);
    gpu->bias_leaky_relu_forward(gx, gb, gy, slope);
    expect_bit_equal(gpu->to_vector(gy), cpu->to_vector(cy), "bias_leaky_relu " + s.str());
    gpu->bias_leaky_relu_forward(gx, gb, gx, slope);  // y == x
    expect_bit_equal(gpu->to_vector(gx), cpu->to_vector(cy), "bias_leaky_relu in place " + s.str());
    // Backward from the output (cy), into `other` (dx == other), as the model calls it.
    const Vec dy = random_vector(s.numel(), 16);
    auto [cd, gd] = both(dy, s);
    cpu->leaky_relu_backward_add(cy, cd, co, co, slope);
    gpu->leaky_relu_backward_add(gy, gd, go, go, slope);
    const Vec want = cpu->to_vector(co), got = gpu->to_vector(go);
    for (std::size_t i = 0; i < got.size(); ++i) {
      const double scale = std::fabs(double(dy[i])) + std::fabs(double(other[i]));
      ASSERT_LE(std::fabs(double(got[i]) - want[i]), 2 * kU * scale) << "backward_add element " << i;
    }
  }
}

// v uploaded into a channels-last tensor (the host's order stays NCHW).
Tensor nhwc_from(Backend& be, const Vec& v, const Shape& s) {
  const Tensor t = be.empty(s).as_layout(Layout::NHWC);
  be.upload(v.data(), t);
  return t;
}

// The same passes on channels-last tensors (the bias indexed by element % C): the same bits as
// the CPU's NCHW ones, element for element. Shape{2, 8, 5, 5} and {3, 4, 2, 3} have C % 4 == 0
// (the float4 channels-last kernels), the others the scalar kernel.
TEST_F(CudaOps, FusedActivationPassesMatchCpuChannelsLast) {
  constexpr float slope = 0.2f;
  for (const Shape& s : {Shape{3, 5, 7, 7}, Shape{2, 8, 5, 5}, Shape{3, 4, 2, 3}, Shape{1, 6, 1, 1}}) {
    Vec x = random_vector(s.numel(), 23);
    for (std::size_t i = 0; i < x.size(); i += 7) x[i] = 0.0f;
    const Vec b = random_vector(std::size_t(s[1]), 24);
    const Tensor cx = cpu->from_vector(x, s), gx = nhwc_from(*gpu, x, s);
    auto [cb, gb] = both(b, Shape{s[1]});
    const Tensor cy = cpu->empty(s), gy = nan_tensor(*gpu, s).as_layout(Layout::NHWC);
    cpu->bias_leaky_relu_forward(cx, cb, cy, slope);
    gpu->bias_leaky_relu_forward(gx, gb, gy, slope);
    expect_bit_equal(gpu->to_vector(gy), cpu->to_vector(cy), "bias_leaky_relu NHWC " + s.str());
    gpu->bias_leaky_relu_forward(gx, gb, gx, slope);  // y == x
    expect_bit_equal(gpu->to_vector(gx), cpu->to_vector(cy), "bias_leaky_relu NHWC in place " + s.str());
  }
}

// Layouts are checked: operands of an elementwise op in different layouts, a channels-last
// image for the sampler or a channels-last filter are refused with the op's name.
TEST_F(CudaOps, MixedLayoutsAreRefused) {
  const Shape s{2, 3, 4, 4};
  const Tensor a = gpu->empty(s), b = gpu->empty(s).as_layout(Layout::NHWC);
  EXPECT_THROW(gpu->add(a, b, a), Error);
  EXPECT_THROW(gpu->copy(a, b), Error);
  EXPECT_THROW(gpu->leaky_relu_forward(a, b, 0.2f), Error);
  try {
    gpu->axpy(1.0f, a, b);
    FAIL() << "axpy of NCHW into NHWC must throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("axpy: operands in different layouts"), std::string::npos)
        << e.what();
  }
  EXPECT_THROW(gpu->sgld_step(b, b, 0.1f, 0.0f, false, NoiseKey{}), Error);
  // Two channels-last tensors of the same size but another shape: their orders differ.
  EXPECT_THROW(gpu->copy(b, gpu->empty(Shape{2, 4, 3, 4}).as_layout(Layout::NHWC)), Error);
  const Tensor w = gpu->empty(Shape{3, 3, 3, 3}).as_layout(Layout::NHWC), y = gpu->empty(s);
  EXPECT_THROW(gpu->conv2d_forward(a, w, Tensor(), y, 1, 1), Error);
  EXPECT_THROW(gpu->max_pool2d_forward(b, gpu->empty(Shape{2, 3, 2, 2}), 2, 2, 0), Error);
  // The same ops in one layout run.
  gpu->add(b, b, b);
  gpu->leaky_relu_forward(b, b, 0.2f);
}

// A convolution without bias (the model's conv1, whose bias the activation adds) is one with a
// zero bias.
TEST_F(CudaOps, ConvForwardWithoutBias) {
  const Vec xv = random_vector(2 * 3 * 9 * 9, 17), wv = random_vector(4 * 3 * 3 * 3, 18);
  const Tensor x = gpu->from_vector(xv, Shape{2, 3, 9, 9}), w = gpu->from_vector(wv, Shape{4, 3, 3, 3});
  const Tensor y0 = gpu->empty(Shape{2, 4, 9, 9}), y1 = nan_tensor(*gpu, Shape{2, 4, 9, 9});
  gpu->conv2d_forward(x, w, gpu->empty(Shape{4}), y0, 1, 1);
  gpu->conv2d_forward(x, w, Tensor(), y1, 1, 1);
  const Vec v0 = gpu->to_vector(y0), v1 = gpu->to_vector(y1);
  for (std::size_t i = 0; i < v0.size(); ++i) ASSERT_EQ(v1[i], v0[i]) << "element " << i;  // +0 == -0
}

// ================================================================================================
// Convolution (cuDNN), in both math modes
// ================================================================================================


struct ConvShapes {
  Shape x, w, b, y;
  int P, Q;
  explicit ConvShapes(const ConvCase& c)
      : P((c.HW + 2 * c.pad - c.R) / c.stride + 1), Q(P) {
    x = Shape{c.N, c.C, c.HW, c.HW};
    w = Shape{c.K, c.C, c.R, c.R};
    b = Shape{c.K};
    y = Shape{c.N, c.K, P, Q};
  }
};

// How the GPU stores a convolution's operands: x-like ones (x, dx, m and the data gradient's z)
// in `x`, y-like ones (y, dy, t and the forward's z) in `y`. The CPU's are always NCHW, and the
// host sees NCHW order either way (upload / download convert), so the same vectors compare.
struct ConvLayouts {
  Layout x = Layout::NCHW, y = Layout::NCHW;
};
constexpr ConvLayouts kNchw{}, kNhwc{Layout::NHWC, Layout::NHWC},
    kNchwToNhwc{Layout::NCHW, Layout::NHWC};  // the stem on a channels-last backend

class CudaConv : public ::testing::TestWithParam<std::tuple<ConvCase, MathMode, ConvLayouts>> {
 protected:
  void SetUp() override {
    JEM_SKIP_WITHOUT_CUDA();
    cpu = make_cpu_backend(2);
    gpu = cuda::make_cuda_backend(0, math);
  }
  const ConvCase c = std::get<0>(GetParam());
  const MathMode math = std::get<1>(GetParam());
  const ConvLayouts layouts = std::get<2>(GetParam());
  const ConvShapes s{c};
  const Vec x = random_vector(s.x.numel(), 11), w = random_vector(s.w.numel(), 12);
  const Vec b = random_vector(s.b.numel(), 13), dy = random_vector(s.y.numel(), 14);
  std::unique_ptr<Backend> cpu, gpu;

  // v on `be`, in layout l on a GPU backend.
  static bool on_gpu(const Backend& be) { return be.device() == Device::CUDA; }
  Tensor put(Backend& be, const Vec& v, const Shape& shape, Layout l) {
    if (!on_gpu(be) || l == Layout::NCHW) return be.from_vector(v, shape);
    const Tensor t = be.empty(shape).as_layout(l);
    be.upload(v.data(), t);
    return t;
  }
  Tensor put_x(Backend& be, const Vec& v) { return put(be, v, s.x, layouts.x); }
  Tensor put_y(Backend& be, const Vec& v) { return put(be, v, s.y, layouts.y); }
  // NaN-filled outputs (an element the op does not write shows).
  Tensor nan_x(Backend& be) { return nan_tensor(be, s.x).as_layout(on_gpu(be) ? layouts.x : Layout::NCHW); }
  Tensor nan_y(Backend& be) { return nan_tensor(be, s.y).as_layout(on_gpu(be) ? layouts.y : Layout::NCHW); }

  Vec forward(Backend& be, const Vec& x_, const Vec& w_, const Vec& b_) {
    const Tensor y = nan_y(be);  // must be overwritten
    be.conv2d_forward(put_x(be, x_), be.from_vector(w_, s.w), be.from_vector(b_, s.b), y,
                      c.stride, c.pad);
    return be.to_vector(y);
  }
  // y = conv(x, w) + b + z (an empty b_: no bias).
  Vec forward_add(Backend& be, const Vec& x_, const Vec& w_, const Vec& b_, const Vec& z_) {
    const Tensor y = nan_y(be);  // must be overwritten
    const Tensor bt = b_.empty() ? Tensor() : be.from_vector(b_, s.b);
    be.conv2d_forward_add(put_x(be, x_), be.from_vector(w_, s.w), bt, put_y(be, z_), y, c.stride,
                          c.pad);
    return be.to_vector(y);
  }
  Vec backward_data(Backend& be, const Vec& dy_, const Vec& w_) {
    const Tensor dx = nan_x(be);
    be.conv2d_backward_data(put_y(be, dy_), be.from_vector(w_, s.w), dx, c.stride, c.pad);
    return be.to_vector(dx);
  }
  // dw, db start from dw0, db0 (they accumulate); an empty db0 leaves db undefined.
  std::pair<Vec, Vec> backward_filter(Backend& be, const Vec& x_, const Vec& dy_, const Vec& dw0,
                                      const Vec& db0) {
    const Tensor dw = be.from_vector(dw0, s.w);
    const Tensor db = db0.empty() ? Tensor() : be.from_vector(db0, s.b);
    be.conv2d_backward_filter(put_x(be, x_), put_y(be, dy_), dw, db, c.stride, c.pad);
    return {be.to_vector(dw), db0.empty() ? Vec{} : be.to_vector(db)};
  }
};

// Each test: GPU against CPU, with the tolerance scaled by the terms' RSS (the CPU op on squared
// inputs; cuda_test_support.hpp).
TEST_P(CudaConv, ForwardMatchesCpu) {
  const Vec want = forward(*cpu, x, w, b);
  const double ratio = rss_ratio(forward(*cpu, squares(x), squares(w), squares(b)), want);
  expect_close(forward(*gpu, x, w, b), want, sum_tol(math, c.C * c.R * c.R + 1, ratio),
               "conv forward");
}

// The convolution with a bias and a residual, each way the engine can run it (the timed choice,
// cuDNN's fused call, the searched algorithm + bias_residual_add), with and without a bias,
// against the CPU: two more terms per output than the plain forward (b and z). In FP32 mode the
// same call twice gives the same bits (the plan, fused or not, is cached).
TEST_P(CudaConv, ForwardAddMatchesCpuWithEachEpilogue) {
  using cuda::ConvEpilogue;
  const Vec z = random_vector(s.y.numel(), 17);
  auto& engine = dynamic_cast<cuda::CudaBackend&>(*gpu);
  for (const Vec& bias : {b, Vec{}}) {
    const Vec want = forward_add(*cpu, x, w, bias, z);
    const double ratio =
        rss_ratio(forward_add(*cpu, squares(x), squares(w), squares(bias), squares(z)), want);
    for (const ConvEpilogue e : {ConvEpilogue::Timed, ConvEpilogue::Fused, ConvEpilogue::Unfused}) {
      const std::string what = std::string("conv forward_add, epilogue ") +
                               (e == ConvEpilogue::Timed ? "timed" : e == ConvEpilogue::Fused ? "fused" : "unfused") +
                               (bias.empty() ? ", no bias" : "");
      engine.set_conv_epilogue(e);
      const Vec got = forward_add(*gpu, x, w, bias, z);
      expect_close(got, want, sum_tol(math, c.C * c.R * c.R + 2, ratio), what);
      if (math == MathMode::FP32) expect_bit_equal(forward_add(*gpu, x, w, bias, z), got, what + ", twice");
    }
  }
  engine.set_conv_epilogue(ConvEpilogue::Timed);
}

// The fused convolution + LeakyReLU ops (the model's calls) against the CPU's. LeakyReLU and its
// gradient scale each output by 1 or the slope, so the convolution's error bound carries over;
// the RSS ratio is taken against the activated output, whose norm the slope shrinks. The forward
// op runs every way the backend can run it: the graph-API plan where it applies (NHWC, TF32),
// and, with that off (JEM_CUDNN_FUSION=0) or where it does not apply, each epilogue of the
// convolution with a bias and a residual (the legacy fused call followed by the LeakyReLU pass,
// or the searched algorithm followed by the pass that adds b and z and writes the activation).
TEST_P(CudaConv, FusedLeakyReluOpsMatchCpu) {
  using cuda::ConvEpilogue;
  std::unique_ptr<Backend> no_graph;
  {
    const ScopedEnv off("JEM_CUDNN_FUSION", "0");  // read when the backend is made
    no_graph = cuda::make_cuda_backend(0, math);
  }
  const float slope = 0.2f;
  const Vec zy = random_vector(s.y.numel(), 18), zx = random_vector(s.x.numel(), 19),
            m = random_vector(s.x.numel(), 20);
  auto forward_lrelu = [&](Backend& be, const Vec& x_, const Vec& w_, const Vec& b_, const Vec& z_, bool with_t,
                           float sl) {
    const Tensor t = with_t ? nan_y(be) : Tensor(), y = nan_y(be);
    be.conv2d_forward_leaky_relu(put_x(be, x_), be.from_vector(w_, s.w),
                                 b_.empty() ? Tensor() : be.from_vector(b_, s.b),
                                 z_.empty() ? Tensor() : put_y(be, z_), t, y, c.stride, c.pad, sl);
    return std::make_pair(be.to_vector(y), with_t ? be.to_vector(t) : Vec{});
  };
  for (const bool with_b : {true, false})
    for (const bool with_z : {true, false})
      for (const bool with_t : {true, false}) {
        const std::string what = std::string("conv2d_forward_leaky_relu") + (with_b ? ", b" : "") +
                                 (with_z ? ", z" : "") + (with_t ? ", t" : "");
        const Vec bias = with_b ? b : Vec{}, z = with_z ? zy : Vec{};
        const auto want = forward_lrelu(*cpu, x, w, bias, z, with_t, slope);
        // slope 1: the bare sums of squares (every term's square, each one positive).
        const Vec sq = forward_lrelu(*cpu, squares(x), squares(w), squares(bias), squares(z), false, 1.0f).first;
        const int k = c.C * c.R * c.R + 2;
        for (Backend* be : {gpu.get(), no_graph.get()}) {
          auto& engine = dynamic_cast<cuda::CudaBackend&>(*be);
          // The graph-API plan takes the call (NHWC, TF32, a bias, a residual only with its t);
          // sm_90 must have it. Otherwise the epilogue matters only with a bias and a residual.
          const bool graph = be == gpu.get() && math == MathMode::TF32 && layouts.x == Layout::NHWC &&
                             layouts.y == Layout::NHWC && with_b && with_z == with_t;
          std::vector<ConvEpilogue> ways{ConvEpilogue::Timed};
          if (!graph && with_b && with_z) ways = {ConvEpilogue::Fused, ConvEpilogue::Unfused};
          for (const ConvEpilogue e : ways) {
            engine.set_conv_epilogue(e);
            const std::string way = what + (be == gpu.get() ? "" : ", graph fusion off") +
                                    (e == ConvEpilogue::Timed ? "" : e == ConvEpilogue::Fused ? ", fused epilogue" : ", unfused epilogue");
            const std::int64_t before = engine.fused_conv_calls();
            const auto got = forward_lrelu(*be, x, w, bias, z, with_t, slope);
            expect_close(got.first, want.first, sum_tol(math, k, rss_ratio(sq, want.first)), way + " (y)");
            if (with_t) expect_close(got.second, want.second, sum_tol(math, k, rss_ratio(sq, want.second)), way + " (t)");
            if (!graph) {
              EXPECT_EQ(engine.fused_conv_calls(), before) << way << ": ran as a graph-API call";
            } else if (sm90_or_later()) {
              EXPECT_EQ(engine.fused_conv_calls(), before + 1) << way << ": did not run as a graph-API call";
            }
            engine.set_conv_epilogue(ConvEpilogue::Timed);
          }
        }
      }
  auto backward_lrelu = [&](Backend& be, const Vec& dy_, const Vec& w_, const Vec& z_) {
    const Tensor dx = nan_x(be);
    be.conv2d_backward_data_leaky_relu(put_y(be, dy_), be.from_vector(w_, s.w), put_x(be, m),
                                       z_.empty() ? Tensor() : put_x(be, z_), dx, c.stride, c.pad, slope);
    return be.to_vector(dx);
  };
  for (const bool with_z : {true, false}) {
    const Vec z = with_z ? zx : Vec{};
    const Vec want = backward_lrelu(*cpu, dy, w, z);
    // Every term's square: the data gradient's (unscaled by the slope: an upper bound) and z's.
    Vec sq = backward_data(*cpu, squares(dy), squares(w));
    if (with_z)
      for (std::size_t i = 0; i < sq.size(); ++i) sq[i] += zx[i] * zx[i];
    expect_close(backward_lrelu(*gpu, dy, w, z), want, sum_tol(math, c.K * c.R * c.R + 1, rss_ratio(sq, want)),
                 with_z ? "conv2d_backward_data_leaky_relu, z" : "conv2d_backward_data_leaky_relu");
  }
}

TEST_P(CudaConv, BackwardDataMatchesCpu) {
  const Vec want = backward_data(*cpu, dy, w);
  const double ratio = rss_ratio(backward_data(*cpu, squares(dy), squares(w)), want);
  expect_close(backward_data(*gpu, dy, w), want, sum_tol(math, c.K * c.R * c.R, ratio),
               "conv backward data");
}

TEST_P(CudaConv, BackwardFilterAccumulatesLikeCpu) {
  const Vec dw0 = random_vector(s.w.numel(), 15), db0 = random_vector(s.b.numel(), 16);
  const auto [gdw, gdb] = backward_filter(*gpu, x, dy, dw0, db0);
  const auto [cdw, cdb] = backward_filter(*cpu, x, dy, dw0, db0);
  // The prior contents are one more term: accumulate their squares too.
  const auto [sq_dw, sq_db] = backward_filter(*cpu, squares(x), squares(dy), squares(dw0), squares(db0));
  const int k = c.N * s.P * s.Q + 1;
  expect_close(gdw, cdw, sum_tol(math, k, rss_ratio(sq_dw, cdw)), "conv dw");
  // The bias gradient is a plain float reduction in both modes.
  expect_close(gdb, cdb, sum_tol(MathMode::FP32, k, rss_ratio(sq_db, cdb)), "conv db");
}

TEST_P(CudaConv, BackwardFilterWithoutBiasAndRepeatable) {
  const Vec zero_w(std::size_t(s.w.numel()), 0.0f), zero_b(std::size_t(s.b.numel()), 0.0f);
  const Vec with_db = backward_filter(*gpu, x, dy, zero_w, zero_b).first;
  const Vec without = backward_filter(*gpu, x, dy, zero_w, Vec{}).first;
  if (math == MathMode::FP32) {
    // FP32 mode picks deterministic algorithms: the same call gives the same bits.
    expect_bit_equal(without, with_db, "dw without db");
    expect_bit_equal(backward_data(*gpu, dy, w), backward_data(*gpu, dy, w), "dx twice");
  } else {
    // TF32 may use a non-deterministic algorithm (atomics): equal up to rounding.
    expect_close(without, with_db, kTf32Tol, "dw without db");
  }
}

const ConvCase kConvCases[] = {
    {1, 3, 7, 5, 3, 1, 1},     // RGB stem at batch 1
    {3, 1, 7, 6, 3, 1, 1},     // grayscale stem
    {5, 3, 7, 6, 3, 2, 1},     // 3x3 stride 2, odd image
    {3, 6, 8, 10, 3, 2, 1},    // 3x3 stride 2, even image
    {5, 5, 7, 7, 3, 1, 1},     // odd channels
    {3, 6, 7, 10, 1, 1, 0},    // 1x1 stride 1
    {5, 6, 7, 10, 1, 2, 0},    // 1x1 stride 2 shortcut, odd image
    {3, 5, 8, 12, 1, 2, 0},    // 1x1 stride 2 shortcut, even image
    {1, 3, 5, 3, 3, 1, 0},     // unpadded 3x3
    {3, 2, 4, 3, 3, 2, 0},     // last row/column never read
    {3, 3, 1, 5, 3, 1, 1},     // 1x1 image: all but one tap is padding
    {7, 16, 16, 32, 3, 1, 1},  // Wide-ResNet-sized: tensor-core and Winograd algorithms apply
    {5, 32, 16, 64, 3, 2, 1},  // its stride-2 stage transition
};

std::string conv_param_name(const ::testing::TestParamInfo<std::tuple<ConvCase, MathMode, ConvLayouts>>& info) {
  const ConvLayouts l = std::get<2>(info.param);
  const char* layouts = l.x == Layout::NCHW ? (l.y == Layout::NCHW ? "" : "_nchw_to_nhwc") : "_nhwc";
  return conv_tag(std::get<0>(info.param)) + "_" + cuda::to_string(std::get<1>(info.param)) + layouts;
}

INSTANTIATE_TEST_SUITE_P(Shapes, CudaConv,
                         ::testing::Combine(::testing::ValuesIn(kConvCases),
                                            ::testing::Values(MathMode::FP32, MathMode::TF32),
                                            ::testing::Values(kNchw)),
                         conv_param_name);

// Channels-last operands (JEM_CUDA_LAYOUT=nhwc), and the stem's mix of NCHW images and NHWC
// activations, which the engine converts (cudnn_conv.cpp): FP32 on every shape (the tolerances
// are the NCHW ones: the sums are the same, only their order may differ), TF32 on the
// Wide-ResNet-sized ones.
INSTANTIATE_TEST_SUITE_P(ChannelsLast, CudaConv,
                         ::testing::Combine(::testing::ValuesIn(kConvCases),
                                            ::testing::Values(MathMode::FP32),
                                            ::testing::Values(kNhwc, kNchwToNhwc)),
                         conv_param_name);
INSTANTIATE_TEST_SUITE_P(ChannelsLastTf32, CudaConv,
                         ::testing::Combine(::testing::Values(kConvCases[11], kConvCases[12]),
                                            ::testing::Values(MathMode::TF32),
                                            ::testing::Values(kNhwc, kNchwToNhwc)),
                         conv_param_name);

// An empty batch is a no-op, as on the CPU (cuDNN would reject the 0-sized descriptors).
TEST_F(CudaOps, ConvEmptyBatchIsANoOp) { expect_empty_batch_conv_is_noop(*gpu); }

// The shared workspace grows for a big shape; a small shape run before and after it must give
// the same bits (its cached plan is reused, and the regrown workspace does not disturb it). The
// comparison stays within one backend: another backend's search may time another algorithm
// fastest.
TEST_F(CudaOps, ConvPlansAndWorkspaceAcrossShapes) {
  const ConvCase big{7, 16, 16, 32, 3, 1, 1}, small{3, 2, 5, 3, 3, 2, 1};
  auto run = [](Backend& be, const ConvCase& c) {
    const ConvShapes s(c);
    const Tensor x = be.from_vector(random_vector(s.x.numel(), 21), s.x);
    const Tensor w = be.from_vector(random_vector(s.w.numel(), 22), s.w);
    const Tensor dy = be.from_vector(random_vector(s.y.numel(), 23), s.y);
    const Tensor y = be.empty(s.y), dx = be.empty(s.x), dw = be.empty(s.w), db = be.empty(s.b);
    be.conv2d_forward(x, w, be.from_vector(random_vector(s.b.numel(), 24), s.b), y, c.stride, c.pad);
    be.conv2d_backward_data(dy, w, dx, c.stride, c.pad);
    be.conv2d_backward_filter(x, dy, dw, db, c.stride, c.pad);
    Vec all = be.to_vector(y);
    for (const Tensor* t : {&dx, &dw, &db}) {
      const Vec v = be.to_vector(*t);
      all.insert(all.end(), v.begin(), v.end());
    }
    return all;
  };
  const Vec before = run(*gpu, small);
  run(*gpu, big);
  expect_bit_equal(run(*gpu, small), before, "small after big");
}

// ================================================================================================
// Pooling and linear
// ================================================================================================

TEST_F(CudaOps, GlobalAvgPool) {
  struct Case {
    int N, C, HW;
  };
  for (const Case& k : {Case{1, 3, 7}, Case{3, 10, 8}, Case{5, 7, 1}, Case{5, 6, 5}, Case{2, 3, 33}}) {
    const Shape xs{k.N, k.C, k.HW, k.HW}, ys{k.N, k.C};
    auto [cx, gx] = both(random_vector(xs.numel(), 31), xs);
    const Tensor cy = cpu->empty(ys), gy = nan_tensor(*gpu, ys);
    cpu->global_avg_pool_forward(cx, cy);
    gpu->global_avg_pool_forward(gx, gy);
    // A float sum of HW terms in another order (a warp's butterfly), then the same scaling.
    // The terms are x / HW: their RSS is sqrt(sum pool(x^2) / HW).
    const Tensor sq = cpu->empty(ys);
    cpu->global_avg_pool_forward(cpu->from_vector(squares(cpu->to_vector(cx)), xs), sq);
    Vec sq_terms = cpu->to_vector(sq);
    for (float& v : sq_terms) v /= float(k.HW * k.HW);
    const Vec want = cpu->to_vector(cy);
    expect_close(gpu->to_vector(gy), want,
                 sum_tol(MathMode::FP32, k.HW * k.HW, rss_ratio(sq_terms, want)),
                 "pool forward " + xs.str());
    auto [cdy, gdy] = both(random_vector(ys.numel(), 32), ys);
    const Tensor cdx = cpu->empty(xs), gdx = nan_tensor(*gpu, xs);
    cpu->global_avg_pool_backward(cdy, cdx);
    gpu->global_avg_pool_backward(gdy, gdx);
    expect_bit_equal(gpu->to_vector(gdx), cpu->to_vector(cdx), "pool backward " + xs.str());
    // Channels-last: the forward sums in the NCHW kernel's order (the same bits as the GPU's
    // NCHW result), the backward is the CPU's exactly.
    const Tensor hx = nhwc_from(*gpu, cpu->to_vector(cx), xs), hy = nan_tensor(*gpu, ys);
    gpu->global_avg_pool_forward(hx, hy);
    expect_bit_equal(gpu->to_vector(hy), gpu->to_vector(gy), "pool forward NHWC " + xs.str());
    const Tensor hdx = nan_tensor(*gpu, xs).as_layout(Layout::NHWC);
    gpu->global_avg_pool_backward(gdy, hdx);
    expect_bit_equal(gpu->to_vector(hdx), cpu->to_vector(cdx), "pool backward NHWC " + xs.str());
  }
}

// upload / download of a channels-last tensor keep the host's NCHW order, and the device holds
// the NHWC one (read through an NCHW view of the same memory).
TEST_F(CudaOps, ChannelsLastUploadDownload) {
  const Shape s{2, 3, 2, 5};
  const Vec v = random_vector(s.numel(), 41);
  const Tensor t = nhwc_from(*gpu, v, s);
  expect_bit_equal(gpu->to_vector(t), v, "NHWC round trip");
  const Vec raw = gpu->to_vector(t.as_layout(Layout::NCHW));
  for (int n = 0; n < 2; ++n)
    for (int c = 0; c < 3; ++c)
      for (int i = 0; i < 10; ++i)
        ASSERT_EQ(raw[std::size_t((n * 10 + i) * 3 + c)], v[std::size_t((n * 3 + c) * 10 + i)])
            << "n " << n << " c " << c << " pixel " << i;
  EXPECT_THROW((void)t.reshape(Shape{2, 30}), Error);
  EXPECT_EQ(t.slice(1, 2).layout(), Layout::NHWC);
}

class CudaLinear : public ::testing::TestWithParam<MathMode> {
 protected:
  void SetUp() override {
    JEM_SKIP_WITHOUT_CUDA();
    cpu = make_cpu_backend(2);
    gpu = cuda::make_cuda_backend(0, GetParam());
  }
  std::unique_ptr<Backend> cpu, gpu;
};

TEST_P(CudaLinear, ForwardAndBackwardMatchCpu) {
  const MathMode math = GetParam();
  struct Case {
    int N, I, O;
  };
  for (const Case& k : {Case{1, 1, 1}, Case{5, 37, 10}, Case{7, 640, 10}, Case{64, 128, 33}}) {
    const std::string tag = std::to_string(k.N) + "x" + std::to_string(k.I) + "->" + std::to_string(k.O);
    const Vec x = random_vector(std::size_t(k.N) * k.I, 41), w = random_vector(std::size_t(k.O) * k.I, 42);
    const Vec b = random_vector(std::size_t(k.O), 43), dy = random_vector(std::size_t(k.N) * k.O, 44);
    const Vec dw0 = random_vector(w.size(), 45), db0 = random_vector(b.size(), 46);
    // [0] CPU, [1] GPU, [2] CPU on the squared inputs (the terms' squares, for the tolerances).
    Vec y[3], dx[3], dw[3], db[3];
    for (int i = 0; i < 3; ++i) {
      Backend& be = i == 1 ? *gpu : *cpu;
      auto in = [&](const Vec& v) { return i == 2 ? squares(v) : v; };
      const Tensor tx = be.from_vector(in(x), Shape{k.N, k.I}), tw = be.from_vector(in(w), Shape{k.O, k.I});
      const Tensor ty = nan_tensor(be, Shape{k.N, k.O}), tdx = nan_tensor(be, Shape{k.N, k.I});
      const Tensor tdw = be.from_vector(in(dw0), Shape{k.O, k.I}), tdb = be.from_vector(in(db0), Shape{k.O});
      be.linear_forward(tx, tw, be.from_vector(in(b), Shape{k.O}), ty);
      be.linear_backward(tx, tw, be.from_vector(in(dy), Shape{k.N, k.O}), tdx, tdw, tdb);
      y[i] = be.to_vector(ty);
      dx[i] = be.to_vector(tdx);
      dw[i] = be.to_vector(tdw);
      db[i] = be.to_vector(tdb);
    }
    expect_close(y[1], y[0], sum_tol(math, k.I + 1, rss_ratio(y[2], y[0])), "linear y " + tag);
    expect_close(dx[1], dx[0], sum_tol(math, k.O, rss_ratio(dx[2], dx[0])), "linear dx " + tag);
    expect_close(dw[1], dw[0], sum_tol(math, k.N + 1, rss_ratio(dw[2], dw[0])), "linear dw " + tag);
    // db: the same float additions in the same order as the CPU loop.
    expect_bit_equal(db[1], db[0], "linear db " + tag);
  }
}

// Undefined dx / dw / db skip their work and leave everything else as with all three.
TEST_P(CudaLinear, OptionalGradients) {
  const int N = 5, I = 37, O = 10;
  const Tensor x = gpu->from_vector(random_vector(N * I, 47), Shape{N, I});
  const Tensor w = gpu->from_vector(random_vector(O * I, 48), Shape{O, I});
  const Tensor dy = gpu->from_vector(random_vector(N * O, 49), Shape{N, O});
  const Tensor dx_all = gpu->empty(Shape{N, I}), dw_all = gpu->empty(Shape{O, I}),
               db_all = gpu->empty(Shape{O});
  gpu->linear_backward(x, w, dy, dx_all, dw_all, db_all);
  const Tensor dx_only = gpu->empty(Shape{N, I});
  gpu->linear_backward(x, w, dy, dx_only, Tensor(), Tensor());
  expect_bit_equal(gpu->to_vector(dx_only), gpu->to_vector(dx_all), "dx alone");
  const Tensor dw_only = gpu->empty(Shape{O, I}), db_only = gpu->empty(Shape{O});
  gpu->linear_backward(x, w, dy, Tensor(), dw_only, db_only);
  expect_bit_equal(gpu->to_vector(dw_only), gpu->to_vector(dw_all), "dw without dx");
  expect_bit_equal(gpu->to_vector(db_only), gpu->to_vector(db_all), "db without dx");
}

INSTANTIATE_TEST_SUITE_P(Math, CudaLinear, ::testing::Values(MathMode::FP32, MathMode::TF32),
                         [](const ::testing::TestParamInfo<MathMode>& info) {
                           return std::string(cuda::to_string(info.param));
                         });

// ================================================================================================
// Losses
// ================================================================================================

// Logit rows of several regimes: random, a large common offset (logsumexp relative to the
// maximum), one dominant logit per row (log_sum ~ 5e-5 << 1, softmax_y - 1 ~ -5e-5: float
// log(1 + others) or softmax - 1 would lose ~1e-3 of it; the margin of 12 keeps the CPU's
// double reference itself accurate, which a margin of 30 would not: double log(1 + 1e-12) is
// good to only ~1e-4), ties.
struct Logits {
  std::string what;
  int N, K;
  Vec v;
};

std::vector<Logits> logit_cases() {
  std::vector<Logits> out;
  out.push_back({"random K=10", 7, 10, random_vector(70, 51, -5.0f, 5.0f)});
  out.push_back({"K=1", 3, 1, random_vector(3, 52, -5.0f, 5.0f)});
  out.push_back({"K=37 (more than a warp)", 5, 37, random_vector(185, 53, -5.0f, 5.0f)});
  out.push_back({"K=100", 3, 100, random_vector(300, 54, -5.0f, 5.0f)});
  Vec offset = random_vector(70, 55, -3.0f, 3.0f);
  for (float& x : offset) x += 1e4f;
  out.push_back({"offset 1e4", 7, 10, offset});
  Vec dominant = random_vector(50, 56, -1.0f, 1.0f);
  for (int n = 0; n < 5; ++n) dominant[n * 10 + (n * 3) % 10] = 12.0f;
  out.push_back({"dominant", 5, 10, dominant});
  Vec ties(40, 1.5f);
  for (int n = 0; n < 4; ++n) ties[n * 10 + n] = -2.0f;
  out.push_back({"ties", 4, 10, ties});
  return out;
}

// Labels: for "dominant" rows the dominant class (the accurate softmax_y - 1 path), else mixed.
IVec labels_for(const Logits& l) {
  IVec y(std::size_t(l.N));
  for (int n = 0; n < l.N; ++n)
    y[n] = l.what == "dominant" ? (n * 3) % l.K : (n * 7 + 3) % l.K;
  return y;
}

// The squared variant scales -softmax by grad_scale + 2 sq_scale E, computed in float from the
// rounded E on both backends; where that factor cancels (near 0) neither is accurate relative to
// it, so the scales here keep it in [0.75, 1] for E in [-12, 0] (and -199 for the 1e4 offset).
TEST_F(CudaOps, EnergyAndSquaredEnergy) {
  for (const Logits& l : logit_cases()) {
    const Shape s{l.N, l.K};
    auto [cl, gl] = both(l.v, s);
    for (int squared = 0; squared < 2; ++squared) {
      const Tensor ce = cpu->empty(Shape{l.N}), cd = cpu->empty(s);
      const Tensor ge = nan_tensor(*gpu, Shape{l.N}), gd = nan_tensor(*gpu, s);
      if (squared) {
        cpu->energy_sq_forward_backward(cl, ce, cd, 1.0f, 0.01f);
        gpu->energy_sq_forward_backward(gl, ge, gd, 1.0f, 0.01f);
      } else {
        cpu->energy_forward_backward(cl, ce, cd, -0.37f);
        gpu->energy_forward_backward(gl, ge, gd, -0.37f);
      }
      const std::string tag = l.what + (squared ? " squared" : "");
      expect_close(gpu->to_vector(ge), cpu->to_vector(ce), kLossTol, "energy " + tag);
      expect_close(gpu->to_vector(gd), cpu->to_vector(cd), kLossTol, "dlogits " + tag);
    }
  }
}

TEST_F(CudaOps, CrossEntropy) {
  for (const Logits& l : logit_cases()) {
    const Shape s{l.N, l.K};
    const IVec y = labels_for(l);
    auto [cl, gl] = both(l.v, s);
    const Tensor closs = cpu->empty(Shape{l.N}), cd = cpu->empty(s);
    const Tensor gloss = nan_tensor(*gpu, Shape{l.N}), gd = nan_tensor(*gpu, s);
    cpu->cross_entropy_forward_backward(cl, i32_tensor(*cpu, y), closs, cd, 0.25f);
    gpu->cross_entropy_forward_backward(gl, i32_tensor(*gpu, y), gloss, gd, 0.25f);
    // For "dominant" the losses are ~5e-5 and the label entries of dlogits ~-5e-5: relative
    // accuracy there needs log1p and the -others/sum form (no cancellation against 1).
    expect_close(gpu->to_vector(gloss), cpu->to_vector(closs), kLossTol, "loss " + l.what);
    expect_close(gpu->to_vector(gd), cpu->to_vector(cd), kLossTol, "dlogits " + l.what);
  }
}

TEST_F(CudaOps, ClassEnergyIsExact) {
  const int N = 6, K = 10;
  const Vec logits = random_vector(N * K, 57, -5.0f, 5.0f);
  const IVec y{3, 0, 9, 9, 4, 1};
  auto [cl, gl] = both(logits, Shape{N, K});
  const Tensor ce = cpu->empty(Shape{N}), cd = cpu->empty(Shape{N, K});
  const Tensor ge = nan_tensor(*gpu, Shape{N}), gd = nan_tensor(*gpu, Shape{N, K});
  cpu->class_energy_forward_backward(cl, i32_tensor(*cpu, y), ce, cd, 0.7f);
  gpu->class_energy_forward_backward(gl, i32_tensor(*gpu, y), ge, gd, 0.7f);
  expect_bit_equal(gpu->to_vector(ge), cpu->to_vector(ce), "class energy");
  expect_bit_equal(gpu->to_vector(gd), cpu->to_vector(cd), "class energy dlogits");
}

// A label out of range is known only on the device: the next synchronisation point throws,
// naming the op, the row and the label, and the backend stays usable afterwards.
TEST_F(CudaOps, BadLabelsThrowAtTheNextSync) {
  const int N = 4, K = 10;
  const Tensor logits = gpu->from_vector(random_vector(N * K, 58), Shape{N, K});
  const Tensor loss = gpu->empty(Shape{N}), d = gpu->empty(Shape{N, K});
  gpu->cross_entropy_forward_backward(logits, i32_tensor(*gpu, {1, 2, 10, 3}), loss, d, 1.0f);
  try {
    gpu->synchronize();
    FAIL() << "label 10 of 10 classes must be reported";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("cross_entropy"), std::string::npos) << msg;
    EXPECT_NE(msg.find("label 10 of row 2"), std::string::npos) << msg;
  }
  gpu->class_energy_forward_backward(logits, i32_tensor(*gpu, {-1, 0, 0, 0}), loss, d, 1.0f);
  EXPECT_THROW(gpu->to_vector(loss), Error);
  // Usable again: a good call goes through.
  gpu->cross_entropy_forward_backward(logits, i32_tensor(*gpu, {1, 2, 9, 3}), loss, d, 1.0f);
  for (float v : gpu->to_vector(loss)) EXPECT_TRUE(std::isfinite(v));
}

// ================================================================================================
// Replay buffer and SGLD (Philox noise)
// ================================================================================================

constexpr std::uint64_t kSeed = 0x1234'5678'9ABC'DEF0ull;
const NoiseKey kKey{kSeed, 7, 3, 100};

TEST_F(CudaOps, BufferGatherBitIdenticalIncludingReinitNoise) {
  struct Case {
    int S, B;
    Shape sample;  // per-sample shape (rank 3)
  };
  // 9 elements per sample: the last Philox block is partial; 48: several blocks; odd batches.
  for (const Case& k : {Case{10, 7, Shape{1, 3, 3}}, Case{9, 33, Shape{3, 4, 4}}}) {
    const Shape bs{k.S, k.sample[0], k.sample[1], k.sample[2]};
    const Shape os{k.B, k.sample[0], k.sample[1], k.sample[2]};
    const Vec buf = random_vector(bs.numel(), 61);
    IVec index(std::size_t(k.B)), reinit(std::size_t(k.B));
    for (int b = 0; b < k.B; ++b) {
      index[b] = (b * 5 + 2) % k.S;
      reinit[b] = b % 3 == 1;
    }
    Vec out[2];
    for (int i = 0; i < 2; ++i) {
      Backend& be = i == 0 ? *cpu : *gpu;
      const Tensor o = nan_tensor(be, os);
      be.buffer_gather(be.from_vector(buf, bs), i32_tensor(be, index), i32_tensor(be, reinit), o, kKey);
      out[i] = be.to_vector(o);
    }
    expect_bit_equal(out[1], out[0], "gather " + os.str());
  }
}

TEST_F(CudaOps, BufferScatterBitIdentical) {
  const Shape bs{12, 2, 3, 3}, xs{4, 2, 3, 3};
  const Vec buf0 = random_vector(bs.numel(), 62, 2.0f, 3.0f), x = random_vector(xs.numel(), 63);
  const IVec index{5, 0, 11, 7};
  Vec out[2];
  for (int i = 0; i < 2; ++i) {
    Backend& be = i == 0 ? *cpu : *gpu;
    const Tensor tb = be.from_vector(buf0, bs);
    be.buffer_scatter(be.from_vector(x, xs), i32_tensor(be, index), tb);
    out[i] = be.to_vector(tb);
  }
  expect_bit_equal(out[1], out[0], "scatter");
}

// Device-side slots are checked against the buffer's allocation: an out-of-range slot neither
// reads nor writes outside it, and the next sync reports it.
TEST_F(CudaOps, BufferSlotsOutOfRangeThrowAtTheNextSync) {
  const Tensor buf = gpu->empty(Shape{5, 2, 2});
  const Tensor out = gpu->empty(Shape{3, 2, 2});
  gpu->buffer_gather(buf, i32_tensor(*gpu, {0, 5, 1}), i32_tensor(*gpu, {0, 0, 0}), out, kKey);
  EXPECT_THROW(gpu->synchronize(), Error);
  gpu->buffer_scatter(out, i32_tensor(*gpu, {0, 1, 99}), buf);
  EXPECT_THROW(gpu->synchronize(), Error);
  // A reinitialised row does not read its slot: no error.
  gpu->buffer_gather(buf, i32_tensor(*gpu, {0, 99, 1}), i32_tensor(*gpu, {0, 1, 0}), out, kKey);
  EXPECT_NO_THROW(gpu->synchronize());
}

// The noise alone (x = 0, step 0, std 1 leaves exactly z on both backends, FMA or not).
TEST_F(CudaOps, SgldNoiseWithinFewUlpOfCpu) {
  for (const Shape& s : {Shape{4, 1, 3, 3}, Shape{5, 1}, Shape{3, 1, 1, 13}, Shape{7, 3, 32, 32}}) {
    const Vec zero(std::size_t(s.numel()), 0.0f), g = random_vector(s.numel(), 64);
    Vec z[2];
    for (int i = 0; i < 2; ++i) {
      Backend& be = i == 0 ? *cpu : *gpu;
      const Tensor x = be.from_vector(zero, s);
      be.sgld_step(x, be.from_vector(g, s), 0.0f, 1.0f, false, kKey);
      z[i] = be.to_vector(x);
    }
    std::int64_t worst = 0;
    for (std::size_t e = 0; e < z[0].size(); ++e) worst = std::max(worst, ulp_distance(z[1][e], z[0][e]));
    EXPECT_LE(worst, kNormalUlps) << s.str();
  }
}

// A whole step: x - a g + s z (clamped or not). The CPU rounds four times (two products, two
// sums: <= 3 u of |x| + |a g| + |s z|), the GPU, with nvcc's FMA contraction, twice (<= 2 u);
// the normals differ by kNormalUlps. Per element: 6 u of the terms plus s |z| kNormalUlps u.
// Clamping is 1-Lipschitz, so the bound holds for clamped steps too.
TEST_F(CudaOps, SgldStepMatchesCpu) {
  for (const bool clamp : {false, true})
    for (const Shape& s : {Shape{5, 3, 7, 7}, Shape{3, 2}, Shape{7, 1, 28, 28}}) {
      const int B = int(s[0]);
      const std::size_t per = std::size_t(s.numel()) / B;
      const Vec x = random_vector(s.numel(), 65, -1.0f, 1.0f), g = random_vector(s.numel(), 66, -3.0f, 3.0f);
      const float a = 0.05f, sd = 0.3f;
      Vec out[2];
      for (int i = 0; i < 2; ++i) {
        Backend& be = i == 0 ? *cpu : *gpu;
        const Tensor t = be.from_vector(x, s);
        be.sgld_step(t, be.from_vector(g, s), a, sd, clamp, kKey);
        out[i] = be.to_vector(t);
      }
      for (std::size_t e = 0; e < x.size(); ++e) {
        const float z = philox_normal(kSeed, RngStream::SgldNoise, kKey.iteration, kKey.step,
                                      kKey.sample_base + std::uint32_t(e / per), std::uint32_t(e % per));
        const double terms = std::fabs(x[e]) + std::fabs(a * g[e]) + std::fabs(sd * z);
        ASSERT_LE(std::fabs(double(out[1][e]) - out[0][e]), 6 * kU * terms + sd * std::fabs(z) * kNormalUlps * kU)
            << s.str() << (clamp ? " clamped" : "") << " element " << e;
        if (clamp) {
          ASSERT_TRUE(out[1][e] >= -1.0f && out[1][e] <= 1.0f) << e;
        }
      }
    }
}

// Sample b draws with sample_base + b: a batch stepped whole equals it stepped in two parts.
TEST_F(CudaOps, SgldNoiseIndependentOfBatchSplit) {
  const Shape s{5, 1, 3, 3};
  const Vec x = random_vector(s.numel(), 67, -0.5f, 0.5f), g = random_vector(s.numel(), 68);
  const Tensor whole = gpu->from_vector(x, s), split = gpu->from_vector(x, s), tg = gpu->from_vector(g, s);
  gpu->sgld_step(whole, tg, 0.01f, 0.2f, true, NoiseKey{kSeed, 7, 3, 0});
  gpu->sgld_step(split.slice(0, 2), tg.slice(0, 2), 0.01f, 0.2f, true, NoiseKey{kSeed, 7, 3, 0});
  gpu->sgld_step(split.slice(2, 5), tg.slice(2, 5), 0.01f, 0.2f, true, NoiseKey{kSeed, 7, 3, 2});
  expect_bit_equal(gpu->to_vector(split), gpu->to_vector(whole), "split batch");
}

// ================================================================================================
// Optimizers
// ================================================================================================

// Three steps of Adam, AdamW and SGD on both backends. Per element the update is the shared
// function; nvcc contracts its multiply-adds into FMAs, so each of p, m, v (buf) differs from the
// CPU by a few roundings: 16 u in norm.
TEST_F(CudaOps, AdamAdamWAndSgdMatchCpu) {
  const std::int64_t n = 100003;  // not a multiple of the block size
  const Vec p0 = random_vector(std::size_t(n), 71), g0 = random_vector(std::size_t(n), 72, -0.1f, 0.1f);
  for (int kind = 0; kind < 3; ++kind) {
    const std::string what = kind == 0 ? "adam" : kind == 1 ? "adamw" : "sgd";
    Tensor p[2], g[2], m[2], v[2];
    for (int i = 0; i < 2; ++i) {
      Backend& be = i == 0 ? *cpu : *gpu;
      p[i] = be.from_vector(p0, Shape{n});
      g[i] = be.from_vector(g0, Shape{n});
      m[i] = be.empty(Shape{n});
      v[i] = be.empty(Shape{n});
    }
    for (int t = 1; t <= 3; ++t) {
      AdamStep st;
      st.lr = 1e-3f;
      st.weight_decay = kind == 0 ? 1e-4f : 1e-2f;
      st.decoupled = kind == 1;
      st.bias1 = 1.0f - std::pow(st.beta1, float(t));
      st.bias2 = 1.0f - std::pow(st.beta2, float(t));
      for (int i = 0; i < 2; ++i) {
        Backend& be = i == 0 ? *cpu : *gpu;
        if (kind < 2) be.adam_step(p[i], g[i], m[i], v[i], st);
        else be.sgd_step(p[i], g[i], m[i], 0.1f, 0.9f, 5e-4f);
        be.scale(g[i], 1.1f);  // a different gradient next step
      }
      const std::string tag = what + " step " + std::to_string(t);
      expect_close(gpu->to_vector(p[1]), cpu->to_vector(p[0]), 16 * kU, tag + " params");
      expect_close(gpu->to_vector(m[1]), cpu->to_vector(m[0]), 16 * kU, tag + " m / momentum");
      if (kind < 2) expect_close(gpu->to_vector(v[1]), cpu->to_vector(v[0]), 16 * kU, tag + " v");
    }
  }
}

TEST_F(CudaOps, SumSquaresDeterministicAndAccurate) {
  for (std::int64_t n : {1, 4095, 4096, 4097, 1000003}) {
    const Vec x = random_vector(std::size_t(n), 73);
    auto [cx, gx] = both(x, Shape{n});
    const double want = cpu->sum_squares(cx);
    const double got = gpu->sum_squares(gx);
    // Two double sums of the same float squares in different orders: ~n * 1e-16 relative at worst.
    EXPECT_NEAR(got, want, 1e-12 * want) << "n " << n;
    EXPECT_EQ(std::bit_cast<std::uint64_t>(gpu->sum_squares(gx)), std::bit_cast<std::uint64_t>(got))
        << "n " << n << ": not repeatable";
  }
  // A view at an offset.
  const Vec x = random_vector(10000, 74);
  auto [cx, gx] = both(x, Shape{10000});
  EXPECT_NEAR(gpu->sum_squares(gx.slice(3, 9000)), cpu->sum_squares(cx.slice(3, 9000)),
              1e-12 * cpu->sum_squares(cx.slice(3, 9000)));
}

// ================================================================================================
// The Wide-ResNet against PyTorch's reference vectors, FP32 math (as tests/test_wide_resnet.cpp
// does for the CPU, with its tolerance: PyTorch float32 stays under 5e-5 on these files).
// ================================================================================================

constexpr double kRefTol = 2e-4;

using jem::test::reference_config;

// Each reference model on a backend with NCHW activations and on one with NHWC ones (the model
// allocates its activations in the backend's activation_layout(); the images stay NCHW).
class CudaWideResNet : public ::testing::TestWithParam<std::tuple<const char*, Layout>> {
 protected:
  void SetUp() override {
    JEM_SKIP_WITHOUT_CUDA();
    file = std::make_unique<safetensors::File>(safetensors::File::read(data_path(std::get<0>(GetParam()))));
    cfg = reference_config(*file);
    B = std::stoi(file->metadata().at("batch"));
  }
  std::unique_ptr<WideResNet> model(Backend& be) {
    auto m = std::make_unique<WideResNet>(cfg, be, B);
    m->load(*file);
    return m;
  }
  Tensor input(Backend& be, const std::string& name) {
    return be.from_vector(file->f32(name), Shape{B, cfg.in_channels, cfg.image_size, cfg.image_size});
  }
  std::unique_ptr<Backend> backend(MathMode math) { return cuda::make_cuda_backend(0, math, layout); }
  const Layout layout = std::get<1>(GetParam());
  std::unique_ptr<safetensors::File> file;
  WrnConfig cfg;
  int B = 0;
};

TEST_P(CudaWideResNet, LogitsEnergyAndInputGradientFp32) {
  auto gpu = backend(MathMode::FP32);
  ASSERT_EQ(gpu->activation_layout(), layout);
  auto m = model(*gpu);
  const Tensor x = input(*gpu, "input.x");
  const Tensor logits = m->forward(x);
  EXPECT_LE(rel_error(gpu->to_vector(logits), file->f32("output.logits")), kRefTol);
  const Tensor energy = gpu->empty(Shape{B}), dlogits = gpu->empty(logits.shape());
  gpu->energy_forward_backward(logits, energy, dlogits, 1.0f);
  EXPECT_LE(rel_error(gpu->to_vector(energy), file->f32("output.energy")), kRefTol);
  const Tensor dx = gpu->empty(x.shape());
  gpu->fill(m->grad_buffer(), 0.0f);
  m->backward(dlogits, dx);
  EXPECT_LE(rel_error(gpu->to_vector(dx), file->f32("output.dE_dx")), kRefTol);
  // The input-only backward runs the same deterministic algorithms: the same bits, and no
  // parameter gradient touched.
  const Tensor dx_only = gpu->empty(x.shape());
  gpu->fill(m->grad_buffer(), 0.0f);
  m->backward_input(dlogits, dx_only);
  expect_bit_equal(gpu->to_vector(dx_only), gpu->to_vector(dx), "backward_input");
  for (float v : gpu->to_vector(m->grad_buffer())) ASSERT_EQ(v, 0.0f);
}

TEST_P(CudaWideResNet, LossAndEveryParameterGradientFp32) {
  auto gpu = backend(MathMode::FP32);
  auto m = model(*gpu);
  const float inv_b = 1.0f / float(B);
  const Tensor dlogits = gpu->empty(Shape{B, cfg.n_classes}), per_row = gpu->empty(Shape{B});
  auto mean = [&](const Tensor& t) {
    double s = 0;
    for (float v : gpu->to_vector(t)) s += v;
    return s / B;
  };
  IVec y;
  for (auto v : file->i64("input.y")) y.push_back(static_cast<std::int32_t>(v));
  auto run = [&]() {  // CE(x, y) + mean E(x_data) - mean E(x_q), as the CPU test
    gpu->fill(m->grad_buffer(), 0.0f);
    gpu->cross_entropy_forward_backward(m->forward(input(*gpu, "input.x")), i32_tensor(*gpu, y),
                                        per_row, dlogits, inv_b);
    const double ce = mean(per_row);
    m->backward(dlogits, Tensor());
    gpu->energy_forward_backward(m->forward(input(*gpu, "input.x_data")), per_row, dlogits, inv_b);
    const double e_data = mean(per_row);
    m->backward(dlogits, Tensor());
    gpu->energy_forward_backward(m->forward(input(*gpu, "input.x_q")), per_row, dlogits, -inv_b);
    const double e_q = mean(per_row);
    m->backward(dlogits, Tensor());
    return std::tuple{ce, e_data, e_q};
  };
  const auto [ce, e_data, e_q] = run();
  const float ref_ce = file->f32("output.ce")[0], ref_loss = file->f32("output.loss")[0];
  EXPECT_NEAR(ce, ref_ce, 2e-4 * std::fabs(ref_ce));
  EXPECT_NEAR(ce + e_data - e_q, ref_loss, 2e-4 * std::max(1.0f, std::fabs(ref_loss)));
  for (const ParamSpec& s : m->params())
    EXPECT_LE(rel_error(gpu->to_vector(m->grad(s.name)), file->f32("grad." + s.name)), kRefTol) << s.name;
  // FP32 mode is deterministic: the whole pass again gives the same gradient bits.
  const Vec first = gpu->to_vector(m->grad_buffer());
  run();
  expect_bit_equal(gpu->to_vector(m->grad_buffer()), first, "gradients of a repeated pass");
}

// Inside a constant-weights scope (the SGLD chains') the NHWC backend converts each filter once
// and reuses it: the passes agree with those outside a scope, and a scope begun after the
// weights changed uses the new weights (a conversion kept from the last scope would give the old
// logits). Within FP32 rounding, not bit for bit: the cached filter has another address than the
// per-call copy, so cuDNN's search may pick another algorithm.
TEST_P(CudaWideResNet, ConstantWeightsScopeUsesTheCurrentWeights) {
  auto gpu = backend(MathMode::FP32);
  auto m = model(*gpu);
  const Tensor x = input(*gpu, "input.x");
  const Tensor energy = gpu->empty(Shape{B}), dlogits = gpu->empty(Shape{B, cfg.n_classes});
  const Tensor dx = gpu->empty(x.shape());
  auto pass = [&] {  // logits and dE/dx, as one SGLD step computes them
    const Tensor logits = m->forward(x);
    gpu->energy_forward_backward(logits, energy, dlogits, 1.0f);
    const Vec l = gpu->to_vector(logits);
    m->backward_input(dlogits, dx);
    return std::make_pair(l, gpu->to_vector(dx));
  };
  const auto before = pass();
  {
    const ConstantWeights fixed(*gpu, m->param_buffer());
    for (int i = 0; i < 2; ++i) {  // the first pass converts, the second reuses
      const auto got = pass();
      EXPECT_LE(rel_error(got.first, before.first), 1e-5) << "logits, pass " << i;
      EXPECT_LE(rel_error(got.second, before.second), 1e-5) << "dx, pass " << i;
    }
  }
  gpu->scale(m->param_buffer(), 0.5f);
  const auto halved = pass();
  ASSERT_GT(rel_error(halved.first, before.first), 1e-2);
  {
    const ConstantWeights fixed(*gpu, m->param_buffer());
    const auto got = pass();
    EXPECT_LE(rel_error(got.first, halved.first), 1e-5) << "logits after the weights changed";
    EXPECT_LE(rel_error(got.second, halved.second), 1e-5) << "dx after the weights changed";
  }
}

// TF32 on the same network: a sanity bound, not an accuracy claim. Each of the ~10 convolutions
// adds ~1e-3 relative error (see kTf32Unit); through the depth that compounds to a few 1e-3.
// Channels-last on sm_90 and later: every block's conv1 and conv2 run as fused cuDNN graph-API
// calls (test_cuda_fused_conv.cpp), so the model's own tensors (views into its planned
// activations) meet the plans' alignment; the stem never fuses (its input is NCHW, and it keeps
// its pre-activation output without a residual, which no fused pattern covers). NCHW never fuses.
TEST_P(CudaWideResNet, LogitsTf32WithinTf32Accuracy) {
  auto gpu = backend(MathMode::TF32);
  auto m = model(*gpu);
  EXPECT_LE(rel_error(gpu->to_vector(m->forward(input(*gpu, "input.x"))), file->f32("output.logits")),
            2e-2);
  const std::int64_t fused = dynamic_cast<cuda::CudaBackend&>(*gpu).fused_conv_calls();
  if (layout == Layout::NCHW) {
    EXPECT_EQ(fused, 0);
  } else if (sm90_or_later()) {  // deliberately a failure, not a skip: a missing plan is news
    EXPECT_EQ(fused, 2 * 3 * cfg.blocks_per_stage());
  }
}

INSTANTIATE_TEST_SUITE_P(Reference, CudaWideResNet,
                         ::testing::Combine(::testing::Values("wrn10x2_rgb32.safetensors",
                                                              "wrn10x1_gray28.safetensors"),
                                            ::testing::Values(Layout::NCHW, Layout::NHWC)),
                         [](const ::testing::TestParamInfo<std::tuple<const char*, Layout>>& info) {
                           std::string n = std::get<0>(info.param);
                           return n.substr(0, n.find('.')) +
                                  (std::get<1>(info.param) == Layout::NHWC ? "_nhwc" : "");
                         });

// ================================================================================================
// Device selection (make_backend). The no-GPU half runs on machines without a GPU.
// ================================================================================================

TEST(CudaDeviceSelection, CudaRequestWithoutGpuThrowsClearError) {
  if (no_cuda_reason().empty()) GTEST_SKIP() << "a CUDA device is present (see ...WithGpu)";
  for (const char* dev : {"cuda", "cuda:0", "cuda:1"}) {
    try {
      (void)make_backend(dev);
      FAIL() << dev << " must not succeed without a GPU";
    } catch (const Error& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find("no usable CUDA device"), std::string::npos) << msg;
      EXPECT_NE(msg.find(dev), std::string::npos) << msg;
    }
  }
  // The backend's own factory fails cleanly too (no crash, a jem::Error naming the CUDA call).
  try {
    (void)cuda::make_cuda_backend(0, MathMode::FP32);
    FAIL() << "make_cuda_backend must not succeed without a GPU";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("CUDA error"), std::string::npos) << e.what();
  }
}

// JEM_REQUIRE_CUDA=1 (gpu-check.sh sets it) turns the skip of a test that needs a GPU into a
// failure, so that a GPU machine whose runtime cannot start does not report "0 failed".
static void needs_cuda() { JEM_SKIP_WITHOUT_CUDA(); }

TEST(CudaDeviceSelection, RequiredCudaFailsInsteadOfSkipping) {
  if (no_cuda_reason().empty()) GTEST_SKIP() << "a CUDA device is present: nothing would skip";
  const char* before = std::getenv("JEM_REQUIRE_CUDA");
  const std::string saved = before ? before : "";
  ::setenv("JEM_REQUIRE_CUDA", "1", 1);
  EXPECT_FATAL_FAILURE(needs_cuda(), "JEM_REQUIRE_CUDA is set");
  ::setenv("JEM_REQUIRE_CUDA", "0", 1);
  EXPECT_FALSE(cuda_required());
  if (before) ::setenv("JEM_REQUIRE_CUDA", saved.c_str(), 1);
  else ::unsetenv("JEM_REQUIRE_CUDA");
}

TEST(CudaDeviceSelection, AutoPicksGpuOrFallsBackToCpu) {
  const bool have_gpu = no_cuda_reason().empty();
  auto be = make_backend("auto", 1);
  EXPECT_EQ(be->device(), have_gpu ? Device::CUDA : Device::CPU) << be->name();
  EXPECT_EQ(make_backend("cpu", 1)->device(), Device::CPU);
}

TEST(CudaDeviceSelection, IndicesWithGpu) {
  JEM_SKIP_WITHOUT_CUDA();
  const int count = int(cuda_devices().size());
  auto be = make_backend("cuda:0");
  EXPECT_EQ(be->device(), Device::CUDA);
  EXPECT_NE(be->name().find("cuda:0"), std::string::npos) << be->name();
  EXPECT_EQ(make_backend("cuda")->device(), Device::CUDA);
  for (const std::string& bad : {"cuda:" + std::to_string(count), std::string("cuda:99")}) {
    try {
      (void)make_backend(bad);
      FAIL() << bad << " is out of range";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("no such CUDA device"), std::string::npos) << e.what();
    }
  }
  for (const char* bad : {"cuda:", "cuda:x", "cuda:-1", "cuda:0x"})
    EXPECT_THROW((void)make_backend(bad), Error) << bad;
}

TEST(CudaDeviceSelection, MathModeFromEnvironmentWithGpu) {
  JEM_SKIP_WITHOUT_CUDA();
  ::setenv("JEM_CUDA_MATH", "fp32", 1);
  EXPECT_NE(cuda::make_cuda_backend(0)->name().find("FP32"), std::string::npos);
  ::setenv("JEM_CUDA_MATH", "fast", 1);
  EXPECT_THROW((void)cuda::make_cuda_backend(0), Error);
  ::unsetenv("JEM_CUDA_MATH");
}

// JEM_CUDA_LAYOUT: NCHW when unset, either case accepted, anything else a clear error (no GPU
// needed to read it); the backend made from it allocates the model's activations in it.
TEST(CudaDeviceSelection, LayoutFromEnvironment) {
  ::unsetenv("JEM_CUDA_LAYOUT");
  EXPECT_EQ(cuda::layout_from_env(), Layout::NCHW);
  ::setenv("JEM_CUDA_LAYOUT", "NHWC", 1);
  EXPECT_EQ(cuda::layout_from_env(), Layout::NHWC);
  ::setenv("JEM_CUDA_LAYOUT", "nchw", 1);
  EXPECT_EQ(cuda::layout_from_env(), Layout::NCHW);
  ::setenv("JEM_CUDA_LAYOUT", "chw", 1);
  try {
    (void)cuda::layout_from_env();
    ADD_FAILURE() << "JEM_CUDA_LAYOUT=chw must be refused";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("JEM_CUDA_LAYOUT='chw': expected nchw or nhwc"), std::string::npos)
        << e.what();
  }
  if (no_cuda_reason().empty()) {
    ::setenv("JEM_CUDA_LAYOUT", "nhwc", 1);
    auto gpu = cuda::make_cuda_backend(0);
    EXPECT_EQ(gpu->activation_layout(), Layout::NHWC);
    EXPECT_NE(gpu->name().find("NHWC activations"), std::string::npos) << gpu->name();
  }
  ::unsetenv("JEM_CUDA_LAYOUT");
}

}  // namespace
}  // namespace jem::test
