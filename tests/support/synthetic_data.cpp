#include "synthetic_data.hpp"

#include <cstdint>
#include <fstream>
#include <random>
#include <stdexcept>
#include <vector>

namespace jem::test {

namespace {
void put_be32(std::ofstream& out, std::uint32_t v) {
  const unsigned char b[4] = {static_cast<unsigned char>(v >> 24), static_cast<unsigned char>(v >> 16),
                              static_cast<unsigned char>(v >> 8), static_cast<unsigned char>(v)};
  out.write(reinterpret_cast<const char*>(b), 4);
}

void write_set(const std::string& dir, const std::string& prefix, int n, int size, int classes, std::mt19937& rng) {
  std::ofstream img(dir + "/" + prefix + "-images-idx3-ubyte", std::ios::binary);
  std::ofstream lab(dir + "/" + prefix + "-labels-idx1-ubyte", std::ios::binary);
  if (!img || !lab) throw std::runtime_error("cannot write synthetic data into " + dir);
  put_be32(img, 0x00000803);
  put_be32(img, std::uint32_t(n));
  put_be32(img, std::uint32_t(size));
  put_be32(img, std::uint32_t(size));
  put_be32(lab, 0x00000801);
  put_be32(lab, std::uint32_t(n));
  std::uniform_int_distribution<int> noise(0, 60);
  std::vector<unsigned char> pixels(std::size_t(size) * std::size_t(size));
  for (int i = 0; i < n; ++i) {
    const int y = i % classes;
    for (auto& p : pixels) p = static_cast<unsigned char>(noise(rng));
    // A 2-pixel-high bright bar whose row encodes the class.
    const int row = (y * (size - 2)) / std::max(1, classes - 1);
    for (int r = row; r < row + 2 && r < size; ++r)
      for (int c = 1; c < size - 1; ++c) pixels[std::size_t(r * size + c)] = 230;
    img.write(reinterpret_cast<const char*>(pixels.data()), std::streamsize(pixels.size()));
    const unsigned char l = static_cast<unsigned char>(y);
    lab.write(reinterpret_cast<const char*>(&l), 1);
  }
}
}  // namespace

void write_synthetic_mnist(const std::string& dir, int n_train, int n_test, int size, int classes, unsigned seed) {
  std::mt19937 rng(seed);
  write_set(dir, "train", n_train, size, classes, rng);
  write_set(dir, "t10k", n_test, size, classes, rng);
}

}  // namespace jem::test
