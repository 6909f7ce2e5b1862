// The MAT file structure check run before libmatio (src/data/mat5_check.hpp): the fuzz inputs
// that made matio allocate gigabytes fail fast naming the file; files written by matio (cells,
// structs, sparse and complex arrays included) and hand-built files in both byte orders pass
// and read; hand-built damage fails with a message that says what is wrong.
#include <gtest/gtest.h>
#include <matio.h>
#include <zlib.h>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <iterator>
#include <string>
#include <vector>

#include "data/mat5_check.hpp"
#include "jem/datasets.hpp"
#include "jem/error.hpp"
#include "test_support.hpp"

using namespace jem;

namespace {

using Bytes = std::vector<std::uint8_t>;

// MAT data types and array classes used below.
constexpr std::uint32_t miINT8 = 1, miUINT8 = 2, miINT16 = 3, miINT32 = 5, miUINT32 = 6, miDOUBLE = 9, miMATRIX = 14,
                        miCOMPRESSED = 15;
constexpr std::uint32_t kCell = 1, kStruct = 2, kSparse = 5, kDouble = 6, kUint8 = 9;

Bytes operator+(Bytes a, const Bytes& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

void write_bytes(const std::string& path, const Bytes& b) {
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
  ASSERT_TRUE(f.good()) << path;
}

Bytes read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return Bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

// MAT v5 bytes built by hand in either byte order, so that any field can be set wrong.
struct Mat5 {
  bool big = false;

  Bytes u32s(std::initializer_list<std::uint32_t> vs) const {
    Bytes b;
    for (std::uint32_t v : vs)
      for (int i = 0; i < 4; ++i) b.push_back(static_cast<std::uint8_t>(v >> (big ? 24 - 8 * i : 8 * i)));
    return b;
  }
  Bytes doubles(std::initializer_list<double> vs) const {
    Bytes b;
    for (double d : vs) {
      std::uint64_t v;
      std::memcpy(&v, &d, 8);
      for (int i = 0; i < 8; ++i) b.push_back(static_cast<std::uint8_t>(v >> (big ? 56 - 8 * i : 8 * i)));
    }
    return b;
  }
  // Text, version and endian indicator ("IM" written little-endian, "MI" big-endian).
  Bytes header(std::uint16_t version = 0x0100, const char* endian = nullptr) const {
    Bytes b(128, ' ');
    const char text[] = "MATLAB 5.0 MAT-file, written by test_mat5_check";
    std::memcpy(b.data(), text, sizeof text - 1);
    std::fill(b.begin() + 116, b.begin() + 124, 0);
    b[124] = static_cast<std::uint8_t>(big ? version >> 8 : version);
    b[125] = static_cast<std::uint8_t>(big ? version : version >> 8);
    const char* e = endian ? endian : big ? "MI" : "IM";
    b[126] = static_cast<std::uint8_t>(e[0]);
    b[127] = static_cast<std::uint8_t>(e[1]);
    return b;
  }
  // Tag, data and padding to 8 bytes.
  Bytes element(std::uint32_t type, const Bytes& data, bool pad = true) const {
    Bytes b = u32s({type, std::uint32_t(data.size())}) + data;
    while (pad && b.size() % 8) b.push_back(0);
    return b;
  }
  Bytes matrix(std::uint32_t cls, const std::vector<std::int32_t>& dims, const std::string& name,
               const Bytes& contents) const {
    Bytes d;
    for (std::int32_t v : dims) d = d + u32s({std::uint32_t(v)});
    return element(miMATRIX, element(miUINT32, u32s({cls, 0})) + element(miINT32, d) +
                                 element(miINT8, Bytes(name.begin(), name.end())) + contents);
  }
  // A miCOMPRESSED element holding `inner` deflated (no padding, as MATLAB writes it).
  Bytes compressed(const Bytes& inner) const {
    uLongf n = compressBound(static_cast<uLong>(inner.size()));
    Bytes z(n);
    EXPECT_EQ(compress(z.data(), &n, inner.data(), static_cast<uLong>(inner.size())), Z_OK);
    z.resize(n);
    return element(miCOMPRESSED, z, false);
  }
  // An SVHN file: X uint8 [2, 2, 3, 1] holding 1..12 in file order, y double [1, 1] = 10.0,
  // stored as uint8 (as MATLAB saves whole-valued doubles) or as double.
  Bytes svhn(bool compress_x, bool y_as_uint8) const {
    Bytes pixels;
    for (int i = 1; i <= 12; ++i) pixels.push_back(static_cast<std::uint8_t>(i));
    const Bytes x = matrix(kUint8, {2, 2, 3, 1}, "X", element(miUINT8, pixels));
    const Bytes y =
        matrix(kDouble, {1, 1}, "y", y_as_uint8 ? element(miUINT8, Bytes{10}) : element(miDOUBLE, doubles({10.0})));
    return header() + (compress_x ? compressed(x) : x) + y;
  }
};

// ---- the fuzz inputs ---------------------------------------------------------------------------

// Each made libmatio 1.5.23 allocate 1.5-31 GB (seconds each) before jem saw a variable.
TEST(Mat5Check, FuzzInputsThatMadeMatioAllocateGigabytesFailFast) {
  const struct {
    const char* file;
    const char* says;
  } cases[] = {
      // array flags tag claiming 0x06000008 bytes (matio: a 1.5 GB name from the next tag)
      {"regress_matio_v5_huge_alloc", "a sub-element of data type 6 claims 100663304 bytes but only 64 are left"},
      // a name tag claiming 0xf7ffffff bytes (matio: malloc(4,160,749,569))
      {"regress_matio_v5_4gb_alloc", "a sub-element of data type 1 claims 4160749567 bytes but only 32 are left"},
      // dims [0x68000002, 1] and [0x01000002, 234] of double (matio: 14 GB, 31 GB); the data tag
      // is damaged too, and comes first
      {"regress_matio_v5_14gb_malloc", "variable 'y' (element at byte 202): a small sub-element (data type 9)"},
      {"regress_matio_v5_31gb_malloc", "variable 'y' (element at byte 202): a small sub-element (data type 9)"},
  };
  for (const auto& c : cases) {
    const std::string path = test::source_path(std::string("fuzz/corpus/svhn/") + c.file);
    ASSERT_TRUE(std::filesystem::exists(path)) << path;
    const auto start = std::chrono::steady_clock::now();
    EXPECT_ERROR_HAS(read_svhn_mat(path), path, c.says);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    // Measured ~1 ms; 0.5 s leaves room for a loaded machine and is still far below the 1.8 s and
    // 10.7 s matio took on two of these (the 14 and 31 GB mallocs failed fast: their message says it).
    EXPECT_LT(seconds, 0.5) << path;
  }
}

// The 14 GB and 31 GB inputs with their data tag repaired: the dimensions alone are caught,
// against the 16 bytes of data the variable stores.
TEST(Mat5Check, FuzzDimensionsAloneAreCaught) {
  const std::string dir = test::temp_dir("mat5_dims");
  const struct {
    const char* file;
    const char* says;
  } cases[] = {
      {"regress_matio_v5_14gb_malloc", "dimensions [1744830466, 1] count 1744830466 elements of 8 bytes"},
      {"regress_matio_v5_31gb_malloc", "dimensions [16777218, 234] count 3925869012 elements of 8 bytes"},
  };
  for (const auto& c : cases) {
    Bytes b = read_bytes(test::source_path(std::string("fuzz/corpus/svhn/") + c.file));
    ASSERT_EQ(b.size(), 282u);
    ASSERT_EQ(b[0x102], miDOUBLE);
    ASSERT_EQ(b[0x104], 0x10);
    b[0x104] = 0;  // the data tag back to the normal form: 16 bytes of double
    const std::string path = dir + "/" + c.file;
    write_bytes(path, b);
    EXPECT_ERROR_HAS(read_svhn_mat(path), path, "variable 'y'", c.says, "but the data element holds 16 bytes");
  }
}

// ---- valid files -------------------------------------------------------------------------------

// Hand-built SVHN files in both byte orders, X plain or compressed, y stored as uint8 (as MATLAB
// saves whole-valued doubles: 1 byte stored per 8-byte element) or as double: the check passes
// them and matio reads the same pixels and label. A check that ignored the endian indicator
// would read the big-endian tags as garbage and reject those files.
TEST(Mat5Check, HandBuiltFilesInBothByteOrdersRead) {
  const std::string dir = test::temp_dir("mat5_valid");
  for (bool big : {false, true})
    for (bool compress_x : {false, true})
      for (bool y_u8 : {false, true}) {
        const std::string path =
            dir + "/" + (big ? "be" : "le") + (compress_x ? "_zx" : "") + (y_u8 ? "_y8" : "_y64") + ".mat";
        SCOPED_TRACE(path);
        write_bytes(path, Mat5{big}.svhn(compress_x, y_u8));
        EXPECT_NO_THROW(detail::check_mat_file(path));
        Dataset d;
        EXPECT_NO_THROW(d = read_svhn_mat(path));
        ASSERT_EQ(d.count, 1);
        ASSERT_EQ(d.height, 2);
        ASSERT_EQ(d.width, 2);
        ASSERT_EQ(d.images.size(), 12u);
        // X(h, w, c) was written in column-major order as 1..12; jem stores [c][h][w].
        for (int c = 0; c < 3; ++c)
          for (int h = 0; h < 2; ++h)
            for (int w = 0; w < 2; ++w) EXPECT_EQ(d.images[(c * 2 + h) * 2 + w], 1 + h + 2 * (w + 2 * c));
        EXPECT_EQ(d.labels, std::vector<std::int32_t>{0});  // SVHN's 10 is the digit 0
      }
}

matvar_t* mat_var(const char* name, matio_classes cls, matio_types type, std::vector<std::size_t> dims, void* data,
                  int opt = 0) {
  matvar_t* v = Mat_VarCreate(name, cls, type, static_cast<int>(dims.size()), dims.data(), data, opt);
  EXPECT_NE(v, nullptr) << name;
  return v;
}

void write_var(mat_t* mat, matvar_t* v, matio_compression compression) {
  EXPECT_EQ(Mat_VarWrite(mat, v, compression), 0) << v->name;
  Mat_VarFree(v);
}

// Every other kind of variable matio writes, before X and y, plain and compressed: the check
// walks into the cells and structs (nested matrices with empty names, field name tables) and
// over sparse (ir/jc), complex (two data parts) and char arrays without rejecting any.
TEST(Mat5Check, MatioWrittenCellsStructsSparseComplexAndCharPass) {
  const std::string dir = test::temp_dir("mat5_matio");
  for (matio_compression compression : {MAT_COMPRESSION_NONE, MAT_COMPRESSION_ZLIB}) {
    const std::string path = dir + (compression == MAT_COMPRESSION_ZLIB ? "/zlib.mat" : "/plain.mat");
    SCOPED_TRACE(path);
    mat_t* mat = Mat_CreateVer(path.c_str(), nullptr, MAT_FT_MAT5);
    ASSERT_NE(mat, nullptr);

    double a[3] = {1, 2, 3};
    char text[] = "hi";
    const char* fields[] = {"a", "bb", nullptr};
    matvar_t* s = Mat_VarCreateStruct2("s", 2, std::vector<std::size_t>{1, 2}.data(), fields);
    ASSERT_NE(s, nullptr);
    for (std::size_t i = 0; i < 2; ++i) {
      Mat_VarSetStructFieldByName(s, "a", i, mat_var(nullptr, MAT_C_DOUBLE, MAT_T_DOUBLE, {1, 3}, a));
      Mat_VarSetStructFieldByName(s, "bb", i, mat_var(nullptr, MAT_C_CHAR, MAT_T_UINT8, {1, 2}, text));
    }
    write_var(mat, s, compression);

    std::uint8_t u[4] = {1, 2, 3, 4};
    matvar_t* c = mat_var("c", MAT_C_CELL, MAT_T_CELL, {1, 2}, nullptr);
    Mat_VarSetCell(c, 0, mat_var(nullptr, MAT_C_UINT8, MAT_T_UINT8, {2, 2}, u));
    Mat_VarSetCell(c, 1, mat_var(nullptr, MAT_C_DOUBLE, MAT_T_DOUBLE, {0, 0}, nullptr));
    write_var(mat, c, compression);

    mat_uint32_t ir[2] = {0, 2}, jc[4] = {0, 1, 1, 2};
    double values[2] = {5, 6};
    mat_sparse_t sparse{};
    sparse.nzmax = 2;
    sparse.ir = ir;
    sparse.nir = 2;
    sparse.jc = jc;
    sparse.njc = 4;
    sparse.ndata = 2;
    sparse.data = values;
    write_var(mat, mat_var("sp", MAT_C_SPARSE, MAT_T_DOUBLE, {3, 3}, &sparse), compression);

    double re[2] = {1, 2}, im[2] = {3, 4};
    mat_complex_split_t z{re, im};
    write_var(mat, mat_var("z", MAT_C_DOUBLE, MAT_T_DOUBLE, {1, 2}, &z, MAT_F_COMPLEX), compression);
    write_var(mat, mat_var("t", MAT_C_CHAR, MAT_T_UINT8, {1, 2}, text), compression);

    std::uint8_t x[12];
    for (int i = 0; i < 12; ++i) x[i] = static_cast<std::uint8_t>(i + 1);
    double y = 7;
    write_var(mat, mat_var("X", MAT_C_UINT8, MAT_T_UINT8, {2, 2, 3, 1}, x), compression);
    write_var(mat, mat_var("y", MAT_C_DOUBLE, MAT_T_DOUBLE, {1, 1}, &y), compression);
    Mat_Close(mat);

    EXPECT_NO_THROW(detail::check_mat_file(path));
    Dataset d;
    EXPECT_NO_THROW(d = read_svhn_mat(path));
    EXPECT_EQ(d.labels, std::vector<std::int32_t>{7});
  }
}

// After a v7.3 header comes an HDF5 file, for matio's HDF5 reader: not walked as v5 elements
// (DatasetsSvhn.Mat73WhenMatioSupportsIt reads a real one).
TEST(Mat5Check, V73HeaderIsLeftToHdf5) {
  const std::string path = test::temp_dir("mat5_v73") + "/v73.mat";
  write_bytes(path, Mat5{}.header(0x0200) + Bytes(400, 0xff));
  EXPECT_NO_THROW(detail::check_mat_file(path));
}

// ---- damaged files -----------------------------------------------------------------------------

TEST(Mat5Check, DamagedFilesFailNamingTheFileAndTheProblem) {
  const std::string dir = test::temp_dir("mat5_bad");
  const Mat5 le{false}, be{true};
  auto expect_rejected = [&](const std::string& name, const Bytes& b, std::initializer_list<std::string> says) {
    SCOPED_TRACE(name);
    const std::string path = dir + "/" + name + ".mat";
    write_bytes(path, b);
    const std::string msg = jem::test::error_of([&] { read_svhn_mat(path); });
    EXPECT_NE(msg.find(path), std::string::npos) << msg;
    for (const std::string& part : says)
      EXPECT_NE(msg.find(part), std::string::npos) << "'" << part << "' not in: " << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;  // one line, even with junk bytes in a name
  };
  // Layout of le.svhn(false, true): X's element at byte 128 (88 bytes with its tag), y's at 216:
  // tag, flags (224), dims (240), name tag (256) and data (272), 64 bytes after the tag.
  const Bytes good = le.svhn(false, true);
  ASSERT_EQ(good.size(), 288u);

  // Element byte counts past the end of the file or of their matrix.
  expect_rejected("past_eof", Bytes(good.begin(), good.end() - 8),
                  {"element at byte 216: claims 64 bytes but the file has 56 after its tag"});
  Bytes name_past = good;
  name_past[260] = 0x01, name_past[263] = 0x60;  // the name tag claims 0x60000001 bytes
  expect_rejected("name_past_matrix", name_past,
                  {"element at byte 216: a sub-element of data type 1 claims 1610612737 bytes but only 24 are left in "
                   "the matrix"});
  Bytes flags_bad = le.header() + le.element(miMATRIX, le.element(miUINT32, le.u32s({0xfa, 0})));
  expect_rejected("bad_class", flags_bad, {"array class 250 is not a MATLAB class"});

  // Compressed variables whose inflated header claims absurd sizes.
  const Bytes two = le.element(miDOUBLE, le.doubles({1, 2}));
  expect_rejected("huge_dims", le.header() + le.compressed(le.matrix(kDouble, {2147483647, 2147483647}, "y", two)),
                  {"variable 'y' (element at byte 128, compressed): dimensions [2147483647, 2147483647] count "
                   "4611686014132420609 elements of 8 bytes but the data element holds 16 bytes"});
  expect_rejected(
      "huge_dims_be",
      be.header() + be.compressed(be.matrix(kDouble, {2147483647, 2}, "y", be.element(miDOUBLE, be.doubles({1, 2})))),
      {"dimensions [2147483647, 2] count 4294967294 elements of 8 bytes"});
  expect_rejected("rank_1000",
                  le.header() + le.compressed(le.matrix(kDouble, std::vector<std::int32_t>(1000, 1), "y", two)),
                  {"element at byte 128, compressed: dimensions of 4000 bytes", "rank above 32"});
  const Bytes int16_dims =
      le.element(miMATRIX, le.element(miUINT32, le.u32s({kDouble, 0})) + le.element(miINT16, Bytes{2, 0, 1, 0}));
  expect_rejected("int16_dims", le.header() + le.compressed(int16_dims),
                  {"dimensions must be int32, found data type 3"});
  expect_rejected("long_name", le.header() + le.matrix(kDouble, {1, 1}, std::string(70000, 'n'), two),
                  {"a name of 70000 bytes (at most 65536)"});
  expect_rejected("no_data", le.header() + le.matrix(kDouble, {2, 1}, "y", {}), {"variable 'y'", "[2, 1] but no data"});
  const Bytes bomb = le.compressed(le.u32s({miMATRIX, 0xffffff00}) + Bytes(64, 0));
  expect_rejected("inflates_too_far", le.header() + bomb,
                  {"its matrix claims 4294967040 bytes, more than ", " compressed bytes can inflate to"});

  // Compressed data cut short or corrupt.
  const Bytes x = le.compressed(le.matrix(kUint8, {2, 2, 3, 1}, "X", le.element(miUINT8, Bytes(12, 1))));
  Bytes cut(x.begin(), x.begin() + 8 + 12);
  cut[4] = 12;  // the element's byte count, now 12 bytes of zlib stream
  expect_rejected("zlib_cut", le.header() + cut,
                  {"element at byte 128, compressed", "the compressed data is cut short"});
  Bytes corrupt = x;
  std::fill(corrupt.begin() + 8 + 2, corrupt.end(), 0xff);  // keep the 2-byte zlib header
  expect_rejected("zlib_corrupt", le.header() + corrupt, {"corrupt compressed data (zlib: "});

  // Cells: more cells than bytes, damage inside a cell, nesting without end.
  expect_rejected("many_cells", le.header() + le.matrix(kCell, {100000, 100000}, "c", {}),
                  {"variable 'c' (element at byte 128): dimensions [100000, 100000] count 10000000000 cells but only 0 "
                   "bytes are left for them"});
  Bytes inner = le.matrix(kDouble, {1, 1}, "", le.element(miDOUBLE, le.doubles({1})));
  inner[44] = 0x01, inner[47] = 0x60;  // the nested name tag (tag 8 + flags 16 + dims 16 + 4) claims 0x60000001
  expect_rejected("bad_in_cell", le.header() + le.matrix(kCell, {1, 1}, "c", inner),
                  {"variable 'c' (element at byte 128), cell 1: a sub-element of data type 1 claims 1610612737"});
  expect_rejected("bad_in_cell_z", le.header() + le.compressed(le.matrix(kCell, {1, 1}, "c", inner)),
                  {"variable 'c' (element at byte 128, compressed), cell 1: a sub-element of data type 1"});
  Bytes deep = le.matrix(kDouble, {1, 1}, "", le.element(miDOUBLE, le.doubles({1})));
  for (int i = 0; i < 40; ++i) deep = le.matrix(kCell, {1, 1}, i == 39 ? "c" : "", deep);
  expect_rejected("deep_cells", le.header() + le.compressed(deep), {"nested more than 32 deep"});

  // A struct with more field values than bytes (one field "a", names 8 bytes long).
  const Bytes fields = le.element(miINT32, le.u32s({8})) + le.element(miINT8, Bytes{'a', 0, 0, 0, 0, 0, 0, 0});
  expect_rejected("many_fields", le.header() + le.compressed(le.matrix(kStruct, {65536, 65536}, "s", fields)),
                  {"variable 's' (element at byte 128, compressed): dimensions [65536, 65536] x 1 fields count more "
                   "field values than the 0 bytes left can hold"});

  // A sparse array's ir claiming more than its matrix holds (matio sizes ir by this tag).
  expect_rejected("sparse_ir",
                  le.header() + le.matrix(kSparse, {3, 3}, "sp", le.u32s({miINT32, 0x7ffffff0}) + Bytes(8, 0)),
                  {"variable 'sp' (element at byte 128): a sub-element of data type 5 claims 2147483632 bytes"});

  // Headers matio refuses without saying why, and one too short to hold the header.
  Bytes endian = good;
  endian[126] = 'X', endian[127] = 'X';
  expect_rejected("bad_endian", endian, {"endian indicator is 'XX', not IM or MI"});
  Bytes version = good;
  version[125] = 3;
  expect_rejected("bad_version", version, {"MAT header version 0x0300, not 0x0100 (v5) or 0x0200 (v7.3)"});
  expect_rejected("short_header", Bytes(good.begin(), good.begin() + 100),
                  {"truncated: 100 bytes, less than the 128-byte MAT header"});
  expect_rejected("top_level_double", le.header() + le.element(miDOUBLE, le.doubles({1})),
                  {"element at byte 128: data type 9 at the top level"});
}

}  // namespace
