#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <bit>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <set>

#include "jem/error.hpp"
#include "jem/safetensors.hpp"
#include "test_support.hpp"

namespace fs = std::filesystem;
using jem::safetensors::File;
using jem::safetensors::Writer;

namespace {

using Bytes = std::vector<std::uint8_t>;

Bytes slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return Bytes(std::istreambuf_iterator<char>(in), {});
}

void spit(const std::string& path, const Bytes& b) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}

std::uint64_t header_len(const Bytes& b) {
  std::uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= std::uint64_t(b[i]) << (8 * i);
  return n;
}

void set_header_len(Bytes& b, std::uint64_t n) {
  for (int i = 0; i < 8; ++i) b[i] = std::uint8_t(n >> (8 * i));
}

// A file from a hand-written header and `data_bytes` filler bytes of data.
Bytes raw_file(const std::string& header, std::size_t data_bytes) {
  Bytes b(8 + header.size() + data_bytes, 0xAB);
  set_header_len(b, header.size());
  std::copy(header.begin(), header.end(), b.begin() + 8);
  return b;
}

// The message of the jem::Error that `f` throws ("" plus a test failure if it throws none).
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const jem::Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected a jem::Error";
  return "";
}

void expect_contains(const std::string& msg, const std::string& part) {
  EXPECT_NE(msg.find(part), std::string::npos) << "message \"" << msg << "\" lacks \"" << part << "\"";
}

template <typename T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

std::set<std::string> dir_entries(const std::string& dir) {
  std::set<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.insert(e.path().filename().string());
  return out;
}

}  // namespace

// ---- round trip ----------------------------------------------------------------------------------

TEST(SafetensorsRoundTrip, AllDtypesAndMetadataAreBitExact) {
  // Floats whose bits a lossy path would change: NaN payloads, -0, infinities, a denormal.
  std::vector<float> f = jem::test::random_vector(2 * 3 * 4, 7);
  f[0] = std::bit_cast<float>(0x7fc01234u);
  f[1] = std::bit_cast<float>(0xffa00001u);
  f[2] = -0.0f;
  f[3] = std::numeric_limits<float>::infinity();
  f[4] = -std::numeric_limits<float>::infinity();
  f[5] = std::numeric_limits<float>::denorm_min();
  const std::vector<std::int64_t> l = {std::numeric_limits<std::int64_t>::min(), -1, 0, 1,
                                       std::numeric_limits<std::int64_t>::max()};
  const std::vector<std::int32_t> i = {std::numeric_limits<std::int32_t>::min(), -7, 0, 123456,
                                       std::numeric_limits<std::int32_t>::max(), 42};
  std::vector<std::uint8_t> u(256);
  for (int k = 0; k < 256; ++k) u[k] = std::uint8_t(255 - k);
  const float scalar = 3.25f;

  Writer w;
  w.add_f32("weights", {2, 3, 4}, f.data());
  w.add_i64("labels", {5}, l.data());
  w.add_i32("ints", {2, 3}, i.data());
  w.add_u8("bytes", {16, 16}, u.data());
  w.add_f32("scalar", {}, &scalar);
  w.add_f32("empty", {0, 3}, nullptr);
  w.set_metadata("depth", "10");
  w.set_metadata("quote\"and\\slash", "line\nbreak \xc3\xa9");
  w.set_metadata("empty", "");
  const std::string path = jem::test::temp_dir("st_rt") + "/rt.safetensors";
  w.write(path);

  const File r = File::read(path);
  EXPECT_EQ(r.path(), path);
  EXPECT_EQ(r.names(), (std::vector<std::string>{"bytes", "empty", "ints", "labels", "scalar", "weights"}));
  EXPECT_TRUE(same_bits(r.f32("weights"), f));
  EXPECT_TRUE(same_bits(r.i64("labels"), l));
  EXPECT_TRUE(same_bits(r.i32("ints"), i));
  EXPECT_TRUE(same_bits(r.u8("bytes"), u));
  EXPECT_TRUE(same_bits(r.f32("scalar"), std::vector<float>{scalar}));
  EXPECT_TRUE(r.f32("empty").empty());
  EXPECT_EQ(r.info("weights").shape, (std::vector<std::int64_t>{2, 3, 4}));
  EXPECT_EQ(r.info("weights").dtype, "F32");
  EXPECT_EQ(r.info("labels").dtype, "I64");
  EXPECT_EQ(r.info("ints").dtype, "I32");
  EXPECT_EQ(r.info("bytes").dtype, "U8");
  EXPECT_TRUE(r.info("scalar").shape.empty());
  EXPECT_EQ(r.info("empty").shape, (std::vector<std::int64_t>{0, 3}));
  const std::map<std::string, std::string> meta = {
      {"depth", "10"}, {"quote\"and\\slash", "line\nbreak \xc3\xa9"}, {"empty", ""}};
  EXPECT_EQ(r.metadata(), meta);
}

TEST(SafetensorsRoundTrip, DataFollowsInsertionOrderAndIsAligned) {
  const std::vector<float> a(3, 1.0f), b(5, 2.0f), c(2, 3.0f);
  Writer w;
  w.add_f32("z_first", {3}, a.data());
  w.add_f32("a_second", {5}, b.data());
  w.add_f32("m_third", {2}, c.data());
  const std::string path = jem::test::temp_dir("st_order") + "/o.safetensors";
  w.write(path);

  const File r = File::read(path);
  EXPECT_EQ(r.info("z_first").begin, 0u);
  EXPECT_EQ(r.info("a_second").begin, r.info("z_first").end);
  EXPECT_EQ(r.info("m_third").begin, r.info("a_second").end);
  const Bytes raw = slurp(path);
  EXPECT_EQ((8 + header_len(raw)) % 8, 0u) << "data section should start 8-byte aligned";
  EXPECT_EQ(raw.size(), 8 + header_len(raw) + (3 + 5 + 2) * sizeof(float));
}

TEST(SafetensorsRoundTrip, F64IsConvertedToF32OnRead) {
  const double vals[3] = {1.5, -2.25, 0.1};
  Bytes b = raw_file(R"({"d":{"dtype":"F64","shape":[3],"data_offsets":[0,24]}})", 24);
  std::memcpy(b.data() + b.size() - 24, vals, 24);
  const std::string path = jem::test::temp_dir("st_f64") + "/f64.safetensors";
  spit(path, b);
  const File r = File::read(path);
  EXPECT_EQ(r.f32("d"), (std::vector<float>{1.5f, -2.25f, static_cast<float>(0.1)}));
  expect_contains(error_of([&] { r.i64("d"); }), "'d'");
}

TEST(SafetensorsWriter, RejectsBadTensors) {
  Writer w;
  const float x[4] = {};
  w.add_f32("x", {4}, x);
  expect_contains(error_of([&] { w.add_f32("x", {4}, x); }), "duplicate tensor name 'x'");
  expect_contains(error_of([&] { w.add_i32("x", {1}, nullptr); }), "'x'");
  expect_contains(error_of([&] { w.add_f32("neg", {-1, 4}, x); }), "'neg'");
  expect_contains(error_of([&] { w.add_f32("__metadata__", {1}, x); }), "reserved");
  expect_contains(error_of([&] { w.add_f32("null", {2}, nullptr); }), "'null'");
}

// ---- reference files -----------------------------------------------------------------------------

struct RefCase {
  const char* file;
  const char* width;
  std::int64_t channels;
  std::int64_t image_size;
};

class SafetensorsReference : public ::testing::TestWithParam<RefCase> {};

TEST_P(SafetensorsReference, NamesShapesAndMetadata) {
  const RefCase c = GetParam();
  const File r = File::read(jem::test::data_path(c.file));

  // The file name states depth, width, channels and image size; the metadata must agree.
  const auto& m = r.metadata();
  ASSERT_TRUE(m.count("depth") && m.count("width") && m.count("channels") && m.count("image_size") &&
              m.count("n_classes") && m.count("batch"));
  EXPECT_EQ(m.at("depth"), "10");
  EXPECT_EQ(m.at("width"), c.width);
  EXPECT_EQ(m.at("channels"), std::to_string(c.channels));
  EXPECT_EQ(m.at("image_size"), std::to_string(c.image_size));
  const std::int64_t batch = std::stoll(m.at("batch"));
  const std::int64_t classes = std::stoll(m.at("n_classes"));
  ASSERT_GT(batch, 0);
  ASSERT_GT(classes, 1);

  const auto names = r.names();
  EXPECT_TRUE(std::is_sorted(names.begin(), names.end()));
  for (const char* n : {"input.x", "input.y", "input.x_data", "input.x_q", "output.logits", "output.energy",
                        "f.conv1.weight", "class_output.weight"})
    EXPECT_TRUE(r.contains(n)) << n;

  const std::int64_t s = c.image_size;
  EXPECT_EQ(r.f32_checked("input.x", {batch, c.channels, s, s}).size(), std::size_t(batch * c.channels * s * s));
  r.f32_checked("input.x_data", {batch, c.channels, s, s});
  r.f32_checked("output.logits", {batch, classes});
  r.f32_checked("f.conv1.weight", {16, c.channels, 3, 3});
  // A wide ResNet's last stage has 64 * width channels.
  r.f32_checked("class_output.weight", {classes, 64 * std::stoll(c.width)});

  EXPECT_EQ(r.info("input.y").dtype, "I64");
  const auto y = r.i64("input.y");
  ASSERT_EQ(y.size(), std::size_t(batch));
  for (const auto label : y) {
    EXPECT_GE(label, 0);
    EXPECT_LT(label, classes);
  }
}

TEST_P(SafetensorsReference, EveryTensorReadsWithItsElementCount) {
  const File r = File::read(jem::test::data_path(GetParam().file));
  for (const auto& name : r.names()) {
    const auto& t = r.info(name);
    std::size_t numel = 1;
    for (const auto d : t.shape) numel *= std::size_t(d);
    const std::size_t got = t.dtype == "I64" ? r.i64(name).size() : r.f32(name).size();
    EXPECT_EQ(got, numel) << name;
    // Every parameter comes with its gradient, of the same shape.
    if (name.starts_with("f.") || name.starts_with("class_output.") || name.starts_with("energy_output.")) {
      ASSERT_TRUE(r.contains("grad." + name)) << name;
      EXPECT_EQ(r.info("grad." + name).shape, t.shape) << name;
    }
  }
}

TEST_P(SafetensorsReference, AccessorErrorsNameTensorAndFile) {
  const File r = File::read(jem::test::data_path(GetParam().file));
  const std::string msg = error_of([&] { r.info("no.such.tensor"); });
  expect_contains(msg, "no.such.tensor");
  expect_contains(msg, GetParam().file);
  expect_contains(error_of([&] { r.i64("input.x"); }), "'input.x'");
  expect_contains(error_of([&] { r.f32("input.y"); }), "'input.y'");
  expect_contains(error_of([&] { r.i32("input.y"); }), GetParam().file);
  expect_contains(error_of([&] { r.u8("input.x"); }), "'input.x'");

  const auto shape = r.info("input.x").shape;
  auto wrong = shape;
  wrong[0] += 1;
  const std::string bad = error_of([&] { r.f32_checked("input.x", wrong); });
  std::string want_shape = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) want_shape += (i ? ", " : "") + std::to_string(shape[i]);
  want_shape += "]";
  expect_contains(bad, std::string(GetParam().file) + ": tensor 'input.x' has shape " + want_shape + ", expected [" +
                           std::to_string(wrong[0]) + ", ");
}

// Keeps ctest's test names readable (gtest would print the struct's bytes).
void PrintTo(const RefCase& c, std::ostream* os) { *os << c.file; }

INSTANTIATE_TEST_SUITE_P(Files, SafetensorsReference,
                         ::testing::Values(RefCase{"wrn10x2_rgb32.safetensors", "2", 3, 32},
                                           RefCase{"wrn10x1_gray28.safetensors", "1", 1, 28}),
                         [](const auto& info) { return std::string(info.param.width == std::string("2") ? "rgb32" : "gray28"); });

// ---- malformed input -----------------------------------------------------------------------------

class SafetensorsBadInput : public ::testing::Test {
 protected:
  // Writes `b` as `name` in a fresh directory and returns the message File::read throws; every
  // message must name the file.
  std::string read_error(const std::string& name, const Bytes& b) {
    const std::string path = dir_ + "/" + name;
    spit(path, b);
    const std::string msg = error_of([&] { File::read(path); });
    expect_contains(msg, name);
    return msg;
  }
  Bytes reference() const { return slurp(jem::test::data_path("wrn10x2_rgb32.safetensors")); }

  std::string dir_ = jem::test::temp_dir("st_bad");
};

TEST_F(SafetensorsBadInput, MissingFileAndDirectory) {
  const std::string missing = dir_ + "/missing.safetensors";
  const std::string msg = error_of([&] { File::read(missing); });
  expect_contains(msg, missing);
  expect_contains(msg, std::strerror(ENOENT));
  expect_contains(error_of([&] { File::read(dir_); }), dir_);
}

TEST_F(SafetensorsBadInput, ShorterThanLengthField) {
  Bytes b = reference();
  expect_contains(read_error("empty.safetensors", {}), "shorter");
  b.resize(7);
  expect_contains(read_error("seven.safetensors", b), "shorter");
}

TEST_F(SafetensorsBadInput, HeaderLengthBeyondFileOrAbsurd) {
  Bytes b = reference();
  set_header_len(b, b.size() - 7);  // one byte more than follows the length field
  expect_contains(read_error("long_header.safetensors", b), "larger than the file");
  Bytes tiny = raw_file("{}", 0);
  set_header_len(tiny, std::uint64_t(1) << 62);
  expect_contains(read_error("absurd.safetensors", tiny), "absurd");
  set_header_len(tiny, std::numeric_limits<std::uint64_t>::max());
  expect_contains(read_error("max_header.safetensors", tiny), "absurd");
}

TEST_F(SafetensorsBadInput, HeaderNotJsonOrNotObject) {
  Bytes b = reference();
  set_header_len(b, header_len(b) / 2);  // cuts the JSON in the middle
  expect_contains(read_error("half_json.safetensors", b), "not valid JSON");
  expect_contains(read_error("garbage.safetensors", raw_file("{not json", 0)), "not valid JSON");
  expect_contains(read_error("array.safetensors", raw_file("[1, 2]", 0)), "not a JSON object");
  expect_contains(read_error("meta.safetensors", raw_file(R"({"__metadata__": {"k": 1}})", 0)), "'k'");
  expect_contains(read_error("meta2.safetensors", raw_file(R"({"__metadata__": [1]})", 0)), "__metadata__");
  expect_contains(read_error("entry.safetensors", raw_file(R"({"w": 3})", 0)), "'w'");
}

TEST_F(SafetensorsBadInput, UnknownDtype) {
  // Edit the reference header in place: same length, so every offset stays valid.
  Bytes b = reference();
  const std::string from = "\"F32\"", to = "\"F17\"";
  const auto end = b.begin() + 8 + std::ptrdiff_t(header_len(b));
  const auto at = std::search(b.begin() + 8, end, from.begin(), from.end());
  ASSERT_NE(at, end);
  std::copy(to.begin(), to.end(), at);
  const std::string msg = read_error("f17.safetensors", b);
  expect_contains(msg, "unknown dtype");
  expect_contains(msg, "F17");

  expect_contains(read_error("dt.safetensors", raw_file(R"({"w":{"dtype":"Q4","shape":[1],"data_offsets":[0,1]}})", 1)),
                  "tensor 'w': unknown dtype");
  expect_contains(read_error("dt2.safetensors", raw_file(R"({"w":{"dtype":4,"shape":[1],"data_offsets":[0,4]}})", 4)),
                  "'w'");
}

TEST_F(SafetensorsBadInput, BadShape) {
  expect_contains(read_error("neg.safetensors", raw_file(R"({"w":{"dtype":"F32","shape":[-2,2],"data_offsets":[0,16]}})", 16)),
                  "tensor 'w': shape has negative dimension -2");
  expect_contains(read_error("frac.safetensors", raw_file(R"({"w":{"dtype":"F32","shape":[2.5],"data_offsets":[0,8]}})", 8)),
                  "'w'");
  expect_contains(read_error("noshape.safetensors", raw_file(R"({"w":{"dtype":"F32","data_offsets":[0,8]}})", 8)),
                  "'w'");
  expect_contains(read_error("huge_dim.safetensors",
                             raw_file(R"({"w":{"dtype":"F32","shape":[18446744073709551615],"data_offsets":[0,4]}})", 4)),
                  "'w'");
  // 2^32 * 2^32 * 4 bytes wraps to 0 in 64 bits: must be caught, not matched against [0, 0].
  expect_contains(
      read_error("overflow.safetensors",
                 raw_file(R"({"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]}})", 0)),
      "tensor 'w': shape [4294967296, 4294967296] is too large");
  // With a zero dimension the product is 0, however large the others are.
  spit(dir_ + "/zero.safetensors",
       raw_file(R"({"w":{"dtype":"F32","shape":[9223372036854775807,9223372036854775807,0],"data_offsets":[0,0]}})", 0));
  EXPECT_TRUE(File::read(dir_ + "/zero.safetensors").f32("w").empty());
}

TEST_F(SafetensorsBadInput, BadDataOffsets) {
  const auto file = [](const std::string& offsets) {
    return raw_file(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":)" + offsets + "}}", 8);
  };
  expect_contains(read_error("reversed.safetensors", file("[8,0]")), "tensor 'w': data_offsets [8, 0] have begin > end");
  expect_contains(read_error("one.safetensors", file("[0]")), "tensor 'w': \"data_offsets\" must be");
  expect_contains(read_error("three.safetensors", file("[0,4,8]")), "'w'");
  expect_contains(read_error("negative.safetensors", file("[-8,0]")), "'w'");
  expect_contains(read_error("string.safetensors", file("\"0-8\"")), "'w'");
  expect_contains(read_error("beyond.safetensors", file("[8,16]")), "'w'");
}

TEST_F(SafetensorsBadInput, Truncated) {
  Bytes b = reference();
  b.resize(b.size() - 100);
  expect_contains(read_error("cut.safetensors", b), "truncated");
  expect_contains(read_error("cut2.safetensors", raw_file(R"({"w":{"dtype":"I64","shape":[2],"data_offsets":[0,16]}})", 8)),
                  "tensor 'w'");
}

TEST_F(SafetensorsBadInput, ByteSizeMismatch) {
  const std::string msg =
      read_error("size.safetensors", raw_file(R"({"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,12]}})", 16));
  expect_contains(msg, "tensor 'w'");
  expect_contains(msg, "16 bytes");
}

TEST_F(SafetensorsBadInput, OverlappingTensors) {
  const std::string msg = read_error(
      "overlap.safetensors",
      raw_file(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}})",
               24));
  expect_contains(msg, "'a'");
  expect_contains(msg, "'b'");
  expect_contains(msg, "overlap");
}

// Not a fuzzer, but the cheap part of one: every prefix and many single-byte edits of a valid
// file must either load or throw jem::Error; nothing else may escape, nothing may crash.
TEST(SafetensorsRobustness, PrefixesAndByteEditsNeverCrash) {
  const std::vector<float> f = {1, 2, 3, 4, 5, 6};
  const std::vector<std::int64_t> l = {7, 8};
  Writer w;
  w.add_f32("f", {2, 3}, f.data());
  w.add_i64("l", {2}, l.data());
  w.set_metadata("k", "v");
  const std::string path = jem::test::temp_dir("st_fuzz") + "/v.safetensors";
  w.write(path);
  const Bytes good = slurp(path);
  ASSERT_NO_THROW(File::from_bytes(good, "v"));

  for (std::size_t n = 0; n < good.size(); ++n)
    EXPECT_THROW(File::from_bytes(Bytes(good.begin(), good.begin() + std::ptrdiff_t(n)), "v"), jem::Error) << n;

  std::mt19937 rng(1234);
  int loaded = 0;
  for (std::size_t pos = 0; pos < good.size(); ++pos) {
    for (int k = 0; k < 4; ++k) {
      Bytes b = good;
      b[pos] = std::uint8_t(k == 0 ? b[pos] ^ 0x80 : rng());
      try {
        const File r = File::from_bytes(std::move(b), "v");
        for (const auto& name : r.names()) {  // whatever loads must be readable
          const auto& t = r.info(name);
          if (t.dtype == "F32") r.f32(name);
          if (t.dtype == "I64") r.i64(name);
        }
        ++loaded;
      } catch (const jem::Error&) {
      }
    }
  }
  EXPECT_GT(loaded, 0);  // edits inside the tensor data leave a valid file
}

// ---- atomic write --------------------------------------------------------------------------------

class SafetensorsAtomicWrite : public ::testing::Test {
 protected:
  void SetUp() override {
    data_.assign(64 * 1024, 0.5f);
    Writer original;
    const float one = 1.0f;
    original.add_f32("original", {1}, &one);
    original.write(target_);
    before_ = slurp(target_);
    ASSERT_FALSE(before_.empty());
    writer_.add_f32("big", {std::int64_t(data_.size())}, data_.data());
  }

  std::string dir_ = jem::test::temp_dir("st_atomic");
  std::string target_ = dir_ + "/ckpt.safetensors";
  Bytes before_;
  std::vector<float> data_;
  Writer writer_;
};

TEST_F(SafetensorsAtomicWrite, ReplacesFileAndLeavesNoTemporary) {
  writer_.write(target_);
  EXPECT_EQ(dir_entries(dir_), std::set<std::string>{"ckpt.safetensors"});
  const File r = File::read(target_);
  EXPECT_FALSE(r.contains("original"));
  EXPECT_EQ(r.f32("big"), data_);
}

TEST_F(SafetensorsAtomicWrite, MissingDirectoryFails) {
  const std::string path = dir_ + "/no_such_dir/ckpt.safetensors";
  const std::string msg = error_of([&] { writer_.write(path); });
  expect_contains(msg, path);
  expect_contains(msg, std::strerror(ENOENT));
  EXPECT_EQ(dir_entries(dir_), std::set<std::string>{"ckpt.safetensors"});
}

TEST_F(SafetensorsAtomicWrite, PathThatIsADirectoryIsLeftAlone) {
  const std::string path = dir_ + "/a_dir";
  fs::create_directory(path);
  spit(path + "/inside", {1, 2, 3});
  const std::string msg = error_of([&] { writer_.write(path); });
  expect_contains(msg, path);
  EXPECT_TRUE(fs::is_directory(path));
  EXPECT_EQ(slurp(path + "/inside"), (Bytes{1, 2, 3}));
  EXPECT_EQ(dir_entries(dir_), (std::set<std::string>{"a_dir", "ckpt.safetensors"}));
}

TEST_F(SafetensorsAtomicWrite, DiskFullLeavesExistingFileUnchanged) {
  // RLIMIT_FSIZE makes writes past 16 KiB fail with EFBIG, as a full disk would fail with ENOSPC.
  rlimit old{};
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &old), 0);
  const auto old_handler = std::signal(SIGXFSZ, SIG_IGN);
  rlimit small = old;
  small.rlim_cur = 16 * 1024;
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &small), 0);
  const std::string msg = error_of([&] { writer_.write(target_); });
  setrlimit(RLIMIT_FSIZE, &old);
  std::signal(SIGXFSZ, old_handler);

  expect_contains(msg, target_);
  expect_contains(msg, std::strerror(EFBIG));
  EXPECT_EQ(slurp(target_), before_);
  EXPECT_EQ(dir_entries(dir_), std::set<std::string>{"ckpt.safetensors"});
}

TEST_F(SafetensorsAtomicWrite, UnwritableDirectoryLeavesExistingFileUnchanged) {
  if (geteuid() == 0) GTEST_SKIP() << "root ignores directory permissions";
  ASSERT_EQ(chmod(dir_.c_str(), 0555), 0);
  const std::string msg = error_of([&] { writer_.write(target_); });
  chmod(dir_.c_str(), 0755);
  expect_contains(msg, target_);
  expect_contains(msg, std::strerror(EACCES));
  EXPECT_EQ(slurp(target_), before_);
  EXPECT_EQ(dir_entries(dir_), std::set<std::string>{"ckpt.safetensors"});
}
