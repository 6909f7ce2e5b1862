// Data set readers: small files written here in the real formats (gzip/raw IDX, CIFAR binary
// records, MATLAB v5/v7.3 via matio), exact pixel placement, and errors that name the file.
#include <gtest/gtest.h>
#include <matio.h>
#include <zlib.h>

#include <array>
#include <filesystem>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <tuple>
#include <utility>

#include "jem/datasets.hpp"
#include "jem/error.hpp"
#include "test_support.hpp"

using namespace jem;

namespace {

// ---- writers for the formats -------------------------------------------------------------------

void write_raw(const std::string& path, const std::vector<std::uint8_t>& b) {
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
  ASSERT_TRUE(f.good()) << path;
}

void write_gz(const std::string& path, const std::vector<std::uint8_t>& b) {
  gzFile gz = gzopen(path.c_str(), "wb");
  ASSERT_NE(gz, nullptr) << path;
  ASSERT_EQ(gzwrite(gz, b.data(), static_cast<unsigned>(b.size())), static_cast<int>(b.size()));
  ASSERT_EQ(gzclose(gz), Z_OK);
}

void put_be32(std::vector<std::uint8_t>& b, std::uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8) b.push_back(static_cast<std::uint8_t>(v >> shift));
}

// A distinct value for every pixel of the small test images (all fit in a byte), so any
// misplaced pixel shows.
std::uint8_t pixel(int n, int c, int h, int w) { return static_cast<std::uint8_t>(1 + n * 60 + c * 20 + h * 5 + w); }

// IDX images [n, h, w] (h < 4, w < 5) and labels.
std::vector<std::uint8_t> idx_images(int n, int h, int w) {
  std::vector<std::uint8_t> b;
  for (std::uint32_t v : {0x00000803u, std::uint32_t(n), std::uint32_t(h), std::uint32_t(w)}) put_be32(b, v);
  for (int i = 0; i < n; ++i)
    for (int y = 0; y < h; ++y)
      for (int x = 0; x < w; ++x) b.push_back(pixel(i, 0, y, x));
  return b;
}
std::vector<std::uint8_t> idx_labels(const std::vector<std::uint8_t>& labels) {
  std::vector<std::uint8_t> b;
  put_be32(b, 0x00000801u);
  put_be32(b, static_cast<std::uint32_t>(labels.size()));
  b.insert(b.end(), labels.begin(), labels.end());
  return b;
}

// CIFAR record: label bytes then R, G, B planes of 32x32, row-major. Pixel values here are not
// unique (3072 > 256) but differ between (h, w) and (w, h) wherever h != w.
std::uint8_t cifar_pixel(int n, int c, int h, int w) {
  return static_cast<std::uint8_t>(n * 101 + c * 37 + h * 3 + w * 7);
}
void append_cifar_record(std::vector<std::uint8_t>& b, std::initializer_list<std::uint8_t> label_bytes, int n) {
  b.insert(b.end(), label_bytes);
  for (int c = 0; c < 3; ++c)
    for (int h = 0; h < 32; ++h)
      for (int w = 0; w < 32; ++w) b.push_back(cifar_pixel(n, c, h, w));
}

// A MAT file with X [H, W, 3, N] (column-major: X(h,w,c,n) at h + H*(w + W*(c + 3*n))) and
// y [N, 1] of class `y_class`. Each variable can be left out or given another shape.
struct MatSpec {
  int H = 4, W = 5, C = 3, N = 2;
  bool with_x = true, with_y = true;
  matio_classes x_class = MAT_C_UINT8;
  std::vector<double> y = {10, 3};
  matio_classes y_class = MAT_C_DOUBLE;
  int x_rank = 4;
};

bool write_mat(const std::string& path, const MatSpec& s, mat_ft version) {
  mat_t* mat = Mat_CreateVer(path.c_str(), nullptr, version);
  if (!mat) return false;
  std::vector<std::uint8_t> x8(std::size_t(s.H) * s.W * s.C * s.N);
  for (int n = 0; n < s.N; ++n)
    for (int c = 0; c < s.C; ++c)
      for (int w = 0; w < s.W; ++w)
        for (int h = 0; h < s.H; ++h) x8[h + s.H * (w + s.W * (c + s.C * n))] = pixel(n, c, h, w);
  std::vector<double> xd(x8.begin(), x8.end());
  if (s.with_x) {
    std::size_t dims[4] = {std::size_t(s.H), std::size_t(s.W), std::size_t(s.C), std::size_t(s.N)};
    if (s.x_rank == 3) dims[2] *= dims[3];  // the same bytes as [H, W, 3N]
    const bool u8 = s.x_class == MAT_C_UINT8;
    matvar_t* v = Mat_VarCreate("X", s.x_class, u8 ? MAT_T_UINT8 : MAT_T_DOUBLE, s.x_rank, dims,
                                u8 ? static_cast<void*>(x8.data()) : static_cast<void*>(xd.data()), 0);
    EXPECT_NE(v, nullptr);
    EXPECT_EQ(Mat_VarWrite(mat, v, MAT_COMPRESSION_ZLIB), 0);  // the real SVHN files are compressed
    Mat_VarFree(v);
  }
  if (s.with_y) {
    std::size_t dims[2] = {s.y.size(), 1};
    std::vector<std::uint8_t> y8(s.y.begin(), s.y.end());
    std::vector<double> yd = s.y;
    const bool u8 = s.y_class == MAT_C_UINT8;
    matvar_t* v = Mat_VarCreate("y", s.y_class, u8 ? MAT_T_UINT8 : MAT_T_DOUBLE, 2, dims,
                                u8 ? static_cast<void*>(y8.data()) : static_cast<void*>(yd.data()), 0);
    EXPECT_NE(v, nullptr);
    EXPECT_EQ(Mat_VarWrite(mat, v, MAT_COMPRESSION_NONE), 0);
    Mat_VarFree(v);
  }
  Mat_Close(mat);
  return true;
}

void expect_svhn_pixels(const Dataset& d, const MatSpec& s) {
  ASSERT_EQ(d.count, s.N);
  ASSERT_EQ(d.channels, 3);
  ASSERT_EQ(d.height, s.H);
  ASSERT_EQ(d.width, s.W);
  ASSERT_EQ(d.images.size(), std::size_t(s.N) * 3 * s.H * s.W);
  for (int n = 0; n < s.N; ++n)
    for (int c = 0; c < 3; ++c)
      for (int h = 0; h < s.H; ++h)
        for (int w = 0; w < s.W; ++w)
          ASSERT_EQ(d.images[((n * 3 + c) * s.H + h) * s.W + w], pixel(n, c, h, w)) << n << c << h << w;
}

}  // namespace

// ---- IDX ---------------------------------------------------------------------------------------

TEST(DatasetsIdx, GzipAndRawFilesReadExactly) {
  const std::string dir = test::temp_dir("idx");
  const int N = 3, H = 3, W = 4;  // H != W: a transposed read fails
  write_gz(dir + "/img.gz", idx_images(N, H, W));
  write_raw(dir + "/img.raw", idx_images(N, H, W));
  write_raw(dir + "/lab.raw", idx_labels({7, 0, 9}));
  write_gz(dir + "/lab.gz", idx_labels({7, 0, 9}));
  for (const auto& [img, lab] :
       {std::pair{"/img.gz", "/lab.gz"}, std::pair{"/img.raw", "/lab.raw"}, std::pair{"/img.gz", "/lab.raw"}}) {
    SCOPED_TRACE(std::string(img) + " " + lab);
    const Dataset d = read_idx(dir + img, dir + lab);
    EXPECT_EQ(d.count, N);
    EXPECT_EQ(d.channels, 1);
    EXPECT_EQ(d.height, H);
    EXPECT_EQ(d.width, W);
    EXPECT_EQ(d.classes, 10);
    EXPECT_FALSE(d.name.empty());
    EXPECT_EQ(d.labels, (std::vector<std::int32_t>{7, 0, 9}));
    ASSERT_EQ(d.images.size(), std::size_t(N * H * W));
    for (int n = 0; n < N; ++n)
      for (int h = 0; h < H; ++h)
        for (int w = 0; w < W; ++w) EXPECT_EQ(d.images[(n * H + h) * W + w], pixel(n, 0, h, w));
  }
}

TEST(DatasetsIdx, BadInputsNameTheFile) {
  const std::string dir = test::temp_dir("idx_bad");
  const std::string img = dir + "/img.gz", lab = dir + "/lab.gz";
  write_gz(img, idx_images(3, 2, 2));
  write_gz(lab, idx_labels({1, 2, 3}));
  ASSERT_NO_THROW(read_idx(img, lab));

  const std::string missing = dir + "/no-such-file.gz";
  EXPECT_ERROR_HAS(read_idx(missing, lab), missing, "cannot open", "No such file", "dataset-fashion-mnist");
  EXPECT_ERROR_HAS(read_idx(img, missing), missing, "cannot open");

  // Truncated raw: the header says 3 images of 2x2, only 2 are there.
  auto short_img = idx_images(3, 2, 2);
  short_img.resize(short_img.size() - 4);
  write_raw(dir + "/short.raw", short_img);
  EXPECT_ERROR_HAS(read_idx(dir + "/short.raw", lab), dir + "/short.raw", "truncated");
  // Shorter than the header itself.
  write_raw(dir + "/tiny.raw", {0, 0, 8});
  EXPECT_ERROR_HAS(read_idx(dir + "/tiny.raw", lab), dir + "/tiny.raw", "truncated");
  write_raw(dir + "/head.raw", {0, 0, 8, 3, 0, 0, 0, 1});
  EXPECT_ERROR_HAS(read_idx(dir + "/head.raw", lab), dir + "/head.raw", "truncated", "header");

  // Truncated gzip stream: the compressed file cut short.
  std::vector<std::uint8_t> big;
  for (int i = 0; i < 20000; ++i) big.push_back(static_cast<std::uint8_t>(i * 7919 >> 3));
  write_gz(dir + "/full.gz", big);
  std::vector<std::uint8_t> gz_bytes(std::filesystem::file_size(dir + "/full.gz"));
  std::ifstream(dir + "/full.gz", std::ios::binary).read(reinterpret_cast<char*>(gz_bytes.data()), gz_bytes.size());
  gz_bytes.resize(gz_bytes.size() / 2);
  write_raw(dir + "/cut.gz", gz_bytes);
  EXPECT_ERROR_HAS(read_idx(dir + "/cut.gz", lab), dir + "/cut.gz", "gzip");

  // Wrong magic: images and labels swapped.
  EXPECT_ERROR_HAS(read_idx(lab, img), lab, "magic", "0x00000801", "0x00000803");
  EXPECT_ERROR_HAS(read_idx(img, img), img, "magic", "0x00000803", "0x00000801");

  // Counts disagree: both files named.
  write_gz(dir + "/lab2.gz", idx_labels({1, 2}));
  EXPECT_ERROR_HAS(read_idx(img, dir + "/lab2.gz"), img, dir + "/lab2.gz", "3", "2");

  // Label outside [0, classes).
  write_gz(dir + "/lab10.gz", idx_labels({1, 10, 3}));
  EXPECT_ERROR_HAS(read_idx(img, dir + "/lab10.gz"), dir + "/lab10.gz", "label 10");
  EXPECT_NO_THROW(read_idx(img, dir + "/lab10.gz", 11));

  // Bytes after the data the header describes.
  auto long_lab = idx_labels({1, 2, 3});
  long_lab.push_back(0);
  write_raw(dir + "/long.raw", long_lab);
  EXPECT_ERROR_HAS(read_idx(img, dir + "/long.raw"), dir + "/long.raw");
}

// The real Fashion-MNIST from the Debian package dataset-fashion-mnist, when installed.
TEST(DatasetsIdx, RealFashionMnist) {
  const std::string dir = "/usr/share/datasets/fashion-mnist/";
  const std::array<std::string, 4> files = {"train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                                            "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"};
  for (const auto& f : files)
    if (!std::filesystem::exists(dir + f))
      GTEST_SKIP() << dir + f << " is absent: apt-get install dataset-fashion-mnist";
  for (const auto& [images, labels, count] :
       {std::tuple{files[0], files[1], 60000}, std::tuple{files[2], files[3], 10000}}) {
    const Dataset d = read_idx(dir + images, dir + labels);
    EXPECT_EQ(d.count, count);
    EXPECT_EQ(d.channels, 1);
    EXPECT_EQ(d.height, 28);
    EXPECT_EQ(d.width, 28);
    EXPECT_EQ(d.classes, 10);
    EXPECT_EQ(d.images.size(), std::size_t(count) * 28 * 28);
    // Fashion-MNIST is balanced by construction: count / 10 images per class.
    std::array<int, 10> per_class{};
    for (auto l : d.labels) ++per_class[l];
    for (int c = 0; c < 10; ++c) EXPECT_EQ(per_class[c], count / 10) << images << " class " << c;
    // Dark background, bright garments: the mean pixel is well inside (0, 255).
    double sum = 0;
    for (auto p : d.images) sum += p;
    EXPECT_GT(sum / d.images.size(), 40.0);
    EXPECT_LT(sum / d.images.size(), 120.0);
  }
}

// ---- CIFAR -------------------------------------------------------------------------------------

TEST(DatasetsCifar, Cifar10RecordsLandInPlace) {
  const std::string dir = test::temp_dir("cifar10");
  std::vector<std::uint8_t> a, b;
  append_cifar_record(a, {6}, 0);
  append_cifar_record(a, {9}, 1);
  append_cifar_record(b, {0}, 2);
  write_raw(dir + "/data_batch_1.bin", a);
  write_raw(dir + "/data_batch_2.bin", b);
  const Dataset d = read_cifar10({dir + "/data_batch_1.bin", dir + "/data_batch_2.bin"});
  EXPECT_EQ(d.count, 3);
  EXPECT_EQ(d.channels, 3);
  EXPECT_EQ(d.height, 32);
  EXPECT_EQ(d.width, 32);
  EXPECT_EQ(d.classes, 10);
  EXPECT_EQ(d.labels, (std::vector<std::int32_t>{6, 9, 0}));
  ASSERT_EQ(d.images.size(), std::size_t(3) * 3072);
  for (int n = 0; n < 3; ++n)
    for (int c = 0; c < 3; ++c)
      for (int h = 0; h < 32; ++h)
        for (int w = 0; w < 32; ++w)
          ASSERT_EQ(d.images[((n * 3 + c) * 32 + h) * 32 + w], cifar_pixel(n, c, h, w))
              << n << " " << c << " " << h << " " << w;
}

TEST(DatasetsCifar, Cifar100FineAndCoarseLabels) {
  const std::string dir = test::temp_dir("cifar100");
  std::vector<std::uint8_t> b;
  append_cifar_record(b, {19, 99}, 0);  // coarse, fine
  append_cifar_record(b, {3, 42}, 1);
  write_raw(dir + "/train.bin", b);
  const Dataset fine = read_cifar100({dir + "/train.bin"});
  EXPECT_EQ(fine.classes, 100);
  EXPECT_EQ(fine.labels, (std::vector<std::int32_t>{99, 42}));
  const Dataset coarse = read_cifar100({dir + "/train.bin"}, false);
  EXPECT_EQ(coarse.classes, 20);
  EXPECT_EQ(coarse.labels, (std::vector<std::int32_t>{19, 3}));
  ASSERT_EQ(fine.images.size(), std::size_t(2) * 3072);
  for (int n = 0; n < 2; ++n)
    for (int c = 0; c < 3; ++c)
      for (int h = 0; h < 32; ++h)
        for (int w = 0; w < 32; ++w) ASSERT_EQ(fine.images[((n * 3 + c) * 32 + h) * 32 + w], cifar_pixel(n, c, h, w));
  EXPECT_EQ(fine.images, coarse.images);
}

TEST(DatasetsCifar, BadInputsNameTheFile) {
  const std::string dir = test::temp_dir("cifar_bad");
  std::vector<std::uint8_t> good, bad_label, fine100;
  append_cifar_record(good, {1}, 0);
  append_cifar_record(bad_label, {10}, 0);
  append_cifar_record(fine100, {5, 100}, 0);
  write_raw(dir + "/good.bin", good);
  write_raw(dir + "/bad_label.bin", bad_label);
  write_raw(dir + "/fine100.bin", fine100);
  auto partial = good;
  partial.resize(good.size() + 100, 0);  // one record and a piece of the next
  write_raw(dir + "/partial.bin", partial);
  write_raw(dir + "/empty.bin", {});

  EXPECT_ERROR_HAS(read_cifar10({dir + "/good.bin", dir + "/missing.bin"}), dir + "/missing.bin", "cannot open",
                   "cifar");
  EXPECT_ERROR_HAS(read_cifar10({dir + "/partial.bin"}), dir + "/partial.bin", "3073");
  EXPECT_ERROR_HAS(read_cifar10({dir + "/empty.bin"}), dir + "/empty.bin");
  // The second file has the bad label, and is the one named.
  const std::string msg = jem::test::error_of([&] { read_cifar10({dir + "/good.bin", dir + "/bad_label.bin"}); });
  EXPECT_NE(msg.find(dir + "/bad_label.bin"), std::string::npos) << msg;
  EXPECT_EQ(msg.find(dir + "/good.bin"), std::string::npos) << msg;
  EXPECT_ERROR_HAS(read_cifar100({dir + "/fine100.bin"}), dir + "/fine100.bin", "label 100");
  EXPECT_NO_THROW(read_cifar100({dir + "/fine100.bin"}, false));
  // A CIFAR-10 file is not a whole number of CIFAR-100 records (3073 vs 3074 bytes).
  EXPECT_ERROR_HAS(read_cifar100({dir + "/good.bin"}), dir + "/good.bin", "3074");
  EXPECT_THROW(read_cifar10({}), Error);
}

// ---- SVHN --------------------------------------------------------------------------------------

TEST(DatasetsSvhn, Mat5ColumnMajorPixelsAndLabelTenIsZero) {
  const std::string dir = test::temp_dir("svhn");
  MatSpec s;  // X [4, 5, 3, 2], y = {10, 3} as double
  ASSERT_TRUE(write_mat(dir + "/train_32x32.mat", s, MAT_FT_MAT5));
  const Dataset d = read_svhn_mat(dir + "/train_32x32.mat");
  expect_svhn_pixels(d, s);
  EXPECT_EQ(d.classes, 10);
  EXPECT_EQ(d.labels, (std::vector<std::int32_t>{0, 3}));

  // y saved as uint8, as in the distributed files.
  s.y = {1, 10};
  s.y_class = MAT_C_UINT8;
  ASSERT_TRUE(write_mat(dir + "/u8.mat", s, MAT_FT_MAT5));
  EXPECT_EQ(read_svhn_mat(dir + "/u8.mat").labels, (std::vector<std::int32_t>{1, 0}));
}

TEST(DatasetsSvhn, Mat73WhenMatioSupportsIt) {
  const std::string dir = test::temp_dir("svhn73");
  MatSpec s;
  s.N = 3;
  s.y = {2, 10, 9};
  if (!write_mat(dir + "/test_32x32.mat", s, MAT_FT_MAT73))
    GTEST_SKIP() << "this libmatio was built without HDF5 (v7.3)";
  const Dataset d = read_svhn_mat(dir + "/test_32x32.mat");
  expect_svhn_pixels(d, s);
  EXPECT_EQ(d.labels, (std::vector<std::int32_t>{2, 0, 9}));
}

TEST(DatasetsSvhn, BadInputsNameTheFile) {
  const std::string dir = test::temp_dir("svhn_bad");
  auto case_file = [&](const std::string& name, const MatSpec& s) {
    const std::string p = dir + "/" + name + ".mat";
    EXPECT_TRUE(write_mat(p, s, MAT_FT_MAT5));
    return p;
  };
  const std::string missing = dir + "/missing.mat";
  EXPECT_ERROR_HAS(read_svhn_mat(missing), missing, "cannot open", "No such file");

  write_raw(dir + "/text.mat", std::vector<std::uint8_t>(200, 'x'));
  EXPECT_ERROR_HAS(read_svhn_mat(dir + "/text.mat"), dir + "/text.mat", "MATLAB");

  MatSpec s;
  s.with_x = false;
  const std::string no_x = case_file("no_x", s);
  EXPECT_ERROR_HAS(read_svhn_mat(no_x), no_x, "X");

  s = MatSpec{};
  s.with_y = false;
  const std::string no_y = case_file("no_y", s);
  EXPECT_ERROR_HAS(read_svhn_mat(no_y), no_y, "variable y");

  s = MatSpec{};
  s.x_class = MAT_C_DOUBLE;
  const std::string x_double = case_file("x_double", s);
  EXPECT_ERROR_HAS(read_svhn_mat(x_double), x_double, "uint8");

  s = MatSpec{};
  s.x_rank = 3;
  const std::string x_rank3 = case_file("x_rank3", s);
  EXPECT_ERROR_HAS(read_svhn_mat(x_rank3), x_rank3, "4 dimensions");

  s = MatSpec{};
  s.C = 2;
  const std::string two_channels = case_file("two_channels", s);
  EXPECT_ERROR_HAS(read_svhn_mat(two_channels), two_channels, "[4, 5, 2, 2]");

  s = MatSpec{};
  s.y = {1, 2, 3};
  const std::string count = case_file("count", s);
  EXPECT_ERROR_HAS(read_svhn_mat(count), count, "2 images", "3 labels");

  for (double bad : {0.0, 11.0, 2.5}) {
    s = MatSpec{};
    s.y = {1, bad};
    const std::string p = case_file("label", s);
    EXPECT_ERROR_HAS(read_svhn_mat(p), p, "1..10");
  }
}
