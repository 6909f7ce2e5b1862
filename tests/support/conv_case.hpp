// One convolution shape of a parameterised op test, shared by the CPU and CUDA op tests.
#pragma once

#include <gtest/gtest.h>

#include <ostream>
#include <string>
#include <vector>

#include "jem/backend.hpp"

namespace jem::test {

struct ConvCase {
  int N, C, HW, K, R, stride, pad;
};

// "n1_c3_hw7_k5_r3_s1_p1": the test-name suffix.
inline std::string conv_tag(const ConvCase& c) {
  return "n" + std::to_string(c.N) + "_c" + std::to_string(c.C) + "_hw" + std::to_string(c.HW) +
         "_k" + std::to_string(c.K) + "_r" + std::to_string(c.R) + "_s" +
         std::to_string(c.stride) + "_p" + std::to_string(c.pad);
}

// Readable test names in gtest and ctest output (instead of the raw bytes of the struct).
inline void PrintTo(const ConvCase& c, std::ostream* os) { *os << conv_tag(c); }

// An empty batch (N = 0) is a no-op for every convolution op on every backend: nothing written,
// the parameter gradients unchanged (cuDNN would reject the 0-sized descriptors; the backend's
// wrapper returns first).
inline void expect_empty_batch_conv_is_noop(Backend& be) {
  using Vec = std::vector<float>;
  const Tensor x = be.empty(Shape{0, 2, 5, 5}), y = be.empty(Shape{0, 3, 5, 5});  // [0, C, H, W]
  const Tensor w = be.from_vector(Vec(3 * 2 * 9, 0.5f), Shape{3, 2, 3, 3});
  const Tensor b = be.from_vector(Vec{1.0f, 2.0f, 3.0f}, Shape{3});
  const Tensor dw = be.from_vector(Vec(3 * 2 * 9, 7.0f), Shape{3, 2, 3, 3});
  const Tensor db = be.from_vector(Vec{4.0f, 5.0f, 6.0f}, Shape{3});
  EXPECT_NO_THROW(be.conv2d_forward(x, w, b, y, 1, 1));
  EXPECT_NO_THROW(be.conv2d_backward_data(y, w, x, 1, 1));
  EXPECT_NO_THROW(be.conv2d_backward_filter(x, y, dw, db, 1, 1));
  EXPECT_EQ(be.to_vector(dw), Vec(3 * 2 * 9, 7.0f));
  EXPECT_EQ(be.to_vector(db), (Vec{4.0f, 5.0f, 6.0f}));
}

}  // namespace jem::test
