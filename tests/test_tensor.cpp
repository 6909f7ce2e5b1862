#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "jem/backend.hpp"
#include "jem/tensor.hpp"

using namespace jem;

TEST(Tensor, ShapeAndViews) {
  Tensor t = Tensor::host(Shape{4, 3, 2, 2});
  EXPECT_EQ(t.numel(), 48);
  Tensor s = t.slice(1, 3);
  EXPECT_EQ(s.shape(), (Shape{2, 3, 2, 2}));
  EXPECT_EQ(s.data<float>(), t.data<float>() + 12);
  Tensor v = t.view(40, Shape{8});
  EXPECT_EQ(v.data<float>(), t.data<float>() + 40);
  EXPECT_THROW(t.view(41, Shape{8}), Error);
  EXPECT_THROW(t.reshape(Shape{5, 10}), Error);
  EXPECT_THROW(t.data<std::int32_t>(), Error);
  EXPECT_THROW(t.slice(3, 5), Error);
}

// Layouts: a 4-D tensor may be read channels-last; slices keep the layout (an image is
// contiguous in both), views start afresh in NCHW, and a channels-last tensor reshapes only
// where its element order is the row-major one.
TEST(Tensor, Layouts) {
  const Tensor t = Tensor::host(Shape{2, 3, 4, 5});
  EXPECT_EQ(t.layout(), Layout::NCHW);
  EXPECT_FALSE(t.channels_last());
  const Tensor c = t.as_layout(Layout::NHWC);
  EXPECT_TRUE(c.channels_last());
  EXPECT_EQ(c.shape(), t.shape());
  EXPECT_EQ(c.data<float>(), t.data<float>());
  EXPECT_EQ(c.slice(1, 2).layout(), Layout::NHWC);
  EXPECT_EQ(c.slice(1, 2).data<float>(), t.data<float>() + 60);
  EXPECT_EQ(c.view(0, Shape{2, 3, 4, 5}).layout(), Layout::NCHW);
  EXPECT_EQ(c.reshape(Shape{2, 3, 4, 5}).layout(), Layout::NHWC);  // the same shape: kept
  EXPECT_THROW((void)c.reshape(Shape{6, 20}), Error);
  EXPECT_THROW((void)Tensor::host(Shape{6, 20}).as_layout(Layout::NHWC), Error);
  // [N, C, 1, 1] and [N, 1, H, W] are in row-major order either way.
  EXPECT_EQ(Tensor::host(Shape{2, 7, 1, 1}).as_layout(Layout::NHWC).reshape(Shape{2, 7}).layout(),
            Layout::NCHW);
  EXPECT_NO_THROW((void)Tensor::host(Shape{2, 1, 3, 3}).as_layout(Layout::NHWC).reshape(Shape{2, 9}));
  EXPECT_STREQ(to_string(Layout::NHWC), "NHWC");
}

// The CPU backend keeps to NCHW: a channels-last tensor is refused, naming the op and tensor.
TEST(Tensor, CpuBackendRefusesChannelsLast) {
  auto cpu = make_cpu_backend(1);
  const Shape s{2, 3, 4, 4};
  const Tensor a = cpu->empty(s), b = cpu->empty(s).as_layout(Layout::NHWC);
  EXPECT_FALSE(cpu->supports_channels_last());
  std::vector<float> host(std::size_t(s.numel()), 1.0f);
  EXPECT_THROW(cpu->upload(host.data(), b), Error);
  EXPECT_THROW(cpu->download(b, host.data()), Error);
  EXPECT_EQ(cpu->activation_layout(), Layout::NCHW);
  try {
    cpu->leaky_relu_forward(b, a, 0.2f);
    FAIL() << "the CPU backend must refuse an NHWC tensor";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("leaky_relu_forward: tensor 'x' is channels-last (NHWC)"),
              std::string::npos)
        << e.what();
  }
}
