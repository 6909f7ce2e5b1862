// SVHN cropped digits from the distributed .mat files, read with libmatio (MATLAB v5; v7.3 via
// matio's HDF5 support).
#include <matio.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>

#include "data/mat5_check.hpp"
#include "jem/datasets.hpp"
#include "jem/error.hpp"

namespace jem {
namespace {

const char* const kHowToGet = "SVHN: get train_32x32.mat / test_32x32.mat from http://ufldl.stanford.edu/housenumbers/";

struct MatCloser {
  void operator()(mat_t* m) const { Mat_Close(m); }
};
struct VarFreer {
  void operator()(matvar_t* v) const { Mat_VarFree(v); }
};
using MatPtr = std::unique_ptr<mat_t, MatCloser>;
using VarPtr = std::unique_ptr<matvar_t, VarFreer>;

std::size_t numel(const matvar_t& v) {
  std::size_t n = 1;
  for (int d = 0; d < v.rank; ++d) n *= v.dims[d];
  return n;
}

// Element i of a real numeric array of any MATLAB class, as a double (labels may be saved as
// uint8 or as double).
double numeric_at(const matvar_t& v, std::size_t i, const std::string& path) {
  switch (v.data_type) {
    case MAT_T_UINT8:
      return static_cast<const std::uint8_t*>(v.data)[i];
    case MAT_T_INT8:
      return static_cast<const std::int8_t*>(v.data)[i];
    case MAT_T_UINT16:
      return static_cast<const std::uint16_t*>(v.data)[i];
    case MAT_T_INT16:
      return static_cast<const std::int16_t*>(v.data)[i];
    case MAT_T_UINT32:
      return static_cast<const std::uint32_t*>(v.data)[i];
    case MAT_T_INT32:
      return static_cast<const std::int32_t*>(v.data)[i];
    case MAT_T_UINT64:
      return static_cast<double>(static_cast<const std::uint64_t*>(v.data)[i]);
    case MAT_T_INT64:
      return static_cast<double>(static_cast<const std::int64_t*>(v.data)[i]);
    case MAT_T_SINGLE:
      return static_cast<const float*>(v.data)[i];
    case MAT_T_DOUBLE:
      return static_cast<const double*>(v.data)[i];
    default:
      JEM_FAIL(path, ": variable ", v.name, " is not a real numeric array (MAT data type ", int(v.data_type), ")");
  }
}

}  // namespace

Dataset read_svhn_mat(const std::string& path) {
  {  // Mat_Open does not say why it failed: check that the file opens first, for errno.
    FILE* f = std::fopen(path.c_str(), "rb");
    JEM_CHECK(f, "cannot open ", path, ": ", std::strerror(errno), " (", kHowToGet, ")");
    std::fclose(f);
  }
  // libmatio allocates what the file's headers say before it checks them against the file (GBs
  // for 282-byte files); the structure is checked here first (data/mat5_check.hpp).
  detail::check_mat_file(path);
  MatPtr mat(Mat_Open(path.c_str(), MAT_ACC_RDONLY));
  JEM_CHECK(mat, path, ": not a MATLAB v5 or v7.3 file that libmatio can read");
  VarPtr x(Mat_VarRead(mat.get(), "X"));
  JEM_CHECK(x, path, ": no variable X (the images)");
  VarPtr y(Mat_VarRead(mat.get(), "y"));
  JEM_CHECK(y, path, ": no variable y (the labels)");

  JEM_CHECK(x->class_type == MAT_C_UINT8 && x->data_type == MAT_T_UINT8 && !x->isComplex, path,
            ": X must be a real uint8 array (MAT class ", int(x->class_type), ")");
  JEM_CHECK(x->rank == 4, path, ": X must have 4 dimensions [H, W, 3, N], it has ", x->rank);
  const std::size_t H = x->dims[0], W = x->dims[1], C = x->dims[2], N = x->dims[3];
  JEM_CHECK(C == 3 && H > 0 && W > 0 && N > 0 && N < (1u << 31) && H < 65536 && W < 65536, path,
            ": X must be [H, W, 3, N], it is [", H, ", ", W, ", ", C, ", ", N, "]");
  JEM_CHECK(x->data, path, ": X has no data");

  JEM_CHECK(
      !y->isComplex && y->class_type != MAT_C_CHAR && y->class_type >= MAT_C_DOUBLE && y->class_type <= MAT_C_UINT64,
      path, ": y must be a real numeric array (MAT class ", int(y->class_type), ")");
  JEM_CHECK(y->rank == 2 && (y->dims[0] == 1 || y->dims[1] == 1), path, ": y must be [N, 1], it has rank ", y->rank);
  JEM_CHECK(numel(*y) == N, path, ": X has ", N, " images but y has ", numel(*y), " labels");
  JEM_CHECK(y->data, path, ": y has no data");

  Dataset d;
  d.name = detail::base_name(path);
  d.count = static_cast<int>(N);
  d.channels = 3;
  d.height = static_cast<int>(H);
  d.width = static_cast<int>(W);
  d.classes = 10;
  d.images.resize(N * C * H * W);
  // MATLAB is column-major: X(h, w, c, n) is at h + H * (w + W * (c + C * n)). Walking the
  // source in memory order keeps the reads sequential.
  const auto* src = static_cast<const std::uint8_t*>(x->data);
  for (std::size_t n = 0; n < N; ++n)
    for (std::size_t c = 0; c < C; ++c)
      for (std::size_t w = 0; w < W; ++w)
        for (std::size_t h = 0; h < H; ++h) d.images[((n * C + c) * H + h) * W + w] = *src++;

  d.labels.resize(N);
  for (std::size_t i = 0; i < N; ++i) {
    const double v = numeric_at(*y, i, path);
    JEM_CHECK(v >= 1 && v <= 10 && v == std::floor(v), path, ": label y(", i + 1, ") = ", v,
              " is not an integer in 1..10");
    d.labels[i] = static_cast<std::int32_t>(v) % 10;  // SVHN writes the digit 0 as 10
  }
  return d;
}

}  // namespace jem
