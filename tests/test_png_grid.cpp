// PNG grids: written, read back through libpng, every pixel checked (tiles and padding), gray and
// RGB, clamping and rounding, atomic replacement, and errors that name the path.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>

#include "jem/error.hpp"
#include "jem/png_grid.hpp"
#include "test_support.hpp"

using namespace jem;

namespace {

// The float that maps to byte k: (k / 255) * 2 - 1.
float from_byte(int k) { return float(k / 255.0 * 2.0 - 1.0); }

// Distinct bytes for image i, channel c, pixel (h, w) of small images (all below 256).
int value(int i, int c, int h, int w) { return 3 + i * 40 + c * 13 + h * 4 + w; }

std::vector<float> make_images(int n, int C, int H, int W) {
  std::vector<float> x;
  for (int i = 0; i < n; ++i)
    for (int c = 0; c < C; ++c)
      for (int h = 0; h < H; ++h)
        for (int w = 0; w < W; ++w) x.push_back(from_byte(value(i, c, h, w)));
  return x;
}

std::vector<std::uint8_t> file_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

// Checks every pixel of a grid read back: inside tile (r, c) the image's value, elsewhere 0.
void check_grid(const std::vector<std::uint8_t>& px, int gw, int gh, int n, int C, int H, int W, int cols, int pad) {
  for (int Y = 0; Y < gh; ++Y)
    for (int X = 0; X < gw; ++X)
      for (int c = 0; c < C; ++c) {
        int expected = 0;
        const int ty = Y - pad, tx = X - pad;  // position relative to the first tile
        if (ty >= 0 && tx >= 0 && ty % (H + pad) < H && tx % (W + pad) < W) {
          const int i = (ty / (H + pad)) * cols + tx / (W + pad);
          if (i < n) expected = value(i, c, ty % (H + pad), tx % (W + pad));
        }
        ASSERT_EQ(int(px[(std::size_t(Y) * gw + X) * C + c]), expected) << "pixel (" << Y << ", " << X << ") channel " << c;
      }
}

}  // namespace

TEST(PngGrid, GrayRoundTrip) {
  const std::string dir = test::temp_dir("png_gray");
  const std::string path = dir + "/gray.png";
  // 5 images 3x4, default columns ceil(sqrt(5)) = 3, so 2 rows with one empty tile.
  write_png_grid(path, make_images(5, 1, 3, 4).data(), 5, 1, 3, 4);
  int w = 0, h = 0, c = 0;
  const std::vector<std::uint8_t> px = read_png_gray_or_rgb(path, &w, &h, &c);
  EXPECT_EQ(w, 3 * (4 + 2) + 2);
  EXPECT_EQ(h, 2 * (3 + 2) + 2);
  EXPECT_EQ(c, 1);
  check_grid(px, w, h, 5, 1, 3, 4, 3, 2);
  // The file itself: PNG signature, IHDR bit depth 8, colour type 0 (grayscale).
  const std::vector<std::uint8_t> b = file_bytes(path);
  ASSERT_GT(b.size(), 26u);
  EXPECT_EQ(b[1], 'P');
  EXPECT_EQ(b[24], 8);
  EXPECT_EQ(b[25], 0);
  std::filesystem::remove_all(dir);
}

TEST(PngGrid, RgbRoundTrip) {
  const std::string dir = test::temp_dir("png_rgb");
  const std::string path = dir + "/rgb.png";
  write_png_grid(path, make_images(4, 3, 2, 3).data(), 4, 3, 2, 3, /*columns=*/3, /*padding=*/1);
  int w = 0, h = 0, c = 0;
  const std::vector<std::uint8_t> px = read_png_gray_or_rgb(path, &w, &h, &c);
  EXPECT_EQ(w, 3 * (3 + 1) + 1);
  EXPECT_EQ(h, 2 * (2 + 1) + 1);
  EXPECT_EQ(c, 3);
  check_grid(px, w, h, 4, 3, 2, 3, 3, 1);
  EXPECT_EQ(file_bytes(path)[25], 2);  // colour type 2: RGB
  std::filesystem::remove_all(dir);
}

TEST(PngGrid, ClampingAndRounding) {
  const std::string dir = test::temp_dir("png_clamp");
  const std::string path = dir + "/clamp.png";
  // (x + 1) / 2 * 255 = 10.4 -> 10 and 10.6 -> 11; 0 -> 127.5 -> 128; out of range and NaN clamp.
  const float x[8] = {-5.0f, -1.0f, 10.4f / 127.5f - 1.0f, 10.6f / 127.5f - 1.0f, 0.0f, 1.0f, 7.0f,
                      std::numeric_limits<float>::quiet_NaN()};
  write_png_grid(path, x, 1, 1, 1, 8, 0, /*padding=*/0);
  int w = 0, h = 0, c = 0;
  const std::vector<std::uint8_t> px = read_png_gray_or_rgb(path, &w, &h, &c);
  ASSERT_EQ(w, 8);
  ASSERT_EQ(h, 1);
  EXPECT_EQ(px, (std::vector<std::uint8_t>{0, 0, 10, 11, 128, 255, 255, 0}));
  std::filesystem::remove_all(dir);
}

TEST(PngGrid, GridShapes) {
  const std::string dir = test::temp_dir("png_shape");
  const std::vector<float> x = make_images(10, 1, 2, 2);
  int w = 0, h = 0, c = 0;
  write_png_grid(dir + "/a.png", x.data(), 10, 1, 2, 2, 0, 0);  // ceil(sqrt(10)) = 4 columns, 3 rows
  read_png_gray_or_rgb(dir + "/a.png", &w, &h, &c);
  EXPECT_EQ(w, 8);
  EXPECT_EQ(h, 6);
  write_png_grid(dir + "/b.png", x.data(), 9, 1, 2, 2, 0, 0);  // exactly 3 x 3
  read_png_gray_or_rgb(dir + "/b.png", &w, &h, &c);
  EXPECT_EQ(w, 6);
  EXPECT_EQ(h, 6);
  write_png_grid(dir + "/c.png", x.data(), 2, 1, 2, 2, 16, 1);  // more columns than images: 2
  read_png_gray_or_rgb(dir + "/c.png", &w, &h, &c);
  EXPECT_EQ(w, 7);
  EXPECT_EQ(h, 4);
  std::filesystem::remove_all(dir);
}

TEST(PngGrid, ReplacesAtomicallyAndLeavesNoTemporaryFile) {
  const std::string dir = test::temp_dir("png_atomic");
  const std::string path = dir + "/img.png";
  const std::vector<float> x = make_images(2, 1, 3, 3);
  write_png_grid(path, x.data(), 1, 1, 3, 3, 0, 0);
  write_png_grid(path, x.data() + 9, 1, 1, 3, 3, 0, 0);  // over the first
  int w = 0, h = 0, c = 0;
  const std::vector<std::uint8_t> px = read_png_gray_or_rgb(path, &w, &h, &c);
  EXPECT_EQ(int(px[0]), value(1, 0, 0, 0));
  int files = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    ++files;
    EXPECT_EQ(e.path().filename(), "img.png");
  }
  EXPECT_EQ(files, 1);
  std::filesystem::remove_all(dir);
}

TEST(PngGrid, ErrorsNameThePath) {
  const std::string dir = test::temp_dir("png_err");
  const std::string bad = dir + "/no_such_folder/grid.png";
  const std::vector<float> x = make_images(1, 1, 2, 2);
  try {
    write_png_grid(bad, x.data(), 1, 1, 2, 2);
    ADD_FAILURE() << "no error for " << bad;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(bad), std::string::npos) << e.what();
  }
  try {
    int w, h, c;
    read_png_gray_or_rgb(bad, &w, &h, &c);
    ADD_FAILURE() << "no error reading " << bad;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(bad), std::string::npos) << e.what();
  }
  EXPECT_THROW(write_png_grid(dir + "/x.png", x.data(), 1, 2, 2, 1), Error);  // 2 channels
  EXPECT_THROW(write_png_grid(dir + "/x.png", x.data(), 0, 1, 2, 2), Error);  // no images
  EXPECT_FALSE(std::filesystem::exists(dir + "/x.png"));
  std::filesystem::remove_all(dir);
}
