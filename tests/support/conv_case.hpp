// One convolution shape of a parameterised op test, shared by the CPU and CUDA op tests.
#pragma once

#include <ostream>
#include <string>

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

}  // namespace jem::test
