#include <gtest/gtest.h>

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
