#include "jem/safetensors.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>

#include "jem/error.hpp"

// Tensor bytes are copied straight between the file and memory.
static_assert(std::endian::native == std::endian::little, "safetensors I/O assumes a little-endian host");

namespace jem::safetensors {
namespace {

// A header larger than this is certainly corrupt (real ones are a few KB); refusing it early
// keeps a bad length field from driving a huge JSON parse.
constexpr std::uint64_t kMaxHeaderBytes = 100ull * 1000 * 1000;

// Element size of each dtype safetensors defines; 0 = unknown.
std::size_t dtype_bytes(const std::string& d) {
  static const std::map<std::string, std::size_t> sizes = {
      {"F64", 8}, {"F32", 4},  {"F16", 2},  {"BF16", 2}, {"F8_E4M3", 1}, {"F8_E5M2", 1}, {"I64", 8},
      {"I32", 4}, {"I16", 2},  {"I8", 1},   {"U64", 8},  {"U32", 4},     {"U16", 2},     {"U8", 1},
      {"BOOL", 1}};
  const auto it = sizes.find(d);
  return it == sizes.end() ? 0 : it->second;
}

std::string shape_str(const std::vector<std::int64_t>& s) {
  std::ostringstream os;
  os << '[';
  for (std::size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  os << ']';
  return os.str();
}

// numel(shape) * elem_size, or false if it does not fit in 64 bits. A zero dimension makes the
// product zero whatever the others are, so it is looked for before multiplying.
bool checked_byte_size(const std::vector<std::int64_t>& shape, std::uint64_t elem_size, std::uint64_t* out) {
  if (std::find(shape.begin(), shape.end(), 0) != shape.end()) {
    *out = 0;
    return true;
  }
  constexpr std::uint64_t kMax = std::numeric_limits<std::uint64_t>::max();
  std::uint64_t n = elem_size;
  for (const std::int64_t d : shape) {
    const auto ud = static_cast<std::uint64_t>(d);
    if (n > kMax / ud) return false;
    n *= ud;
  }
  *out = n;
  return true;
}

// Validates one tensor entry of the header; `data_size` is the length of the data section.
TensorInfo parse_tensor(const std::string& file, const std::string& name, const nlohmann::json& v,
                        std::uint64_t data_size) {
  const std::string where = file + ": tensor '" + name + "'";
  JEM_CHECK(v.is_object(), where, ": header entry is not an object");
  TensorInfo t;
  t.name = name;

  const auto dt = v.find("dtype");
  JEM_CHECK(dt != v.end() && dt->is_string(), where, ": missing or non-string \"dtype\"");
  t.dtype = dt->get<std::string>();
  const std::size_t esize = dtype_bytes(t.dtype);
  JEM_CHECK(esize != 0, where, ": unknown dtype \"", t.dtype, "\"");

  const auto sh = v.find("shape");
  JEM_CHECK(sh != v.end() && sh->is_array(), where, ": missing or non-array \"shape\"");
  for (const auto& d : *sh) {
    JEM_CHECK(d.is_number_integer(), where, ": shape entry ", d.dump(), " is not an integer");
    if (d.is_number_unsigned()) {
      const auto u = d.get<std::uint64_t>();
      JEM_CHECK(u <= static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()), where,
                ": shape dimension ", u, " is too large");
      t.shape.push_back(static_cast<std::int64_t>(u));
    } else {
      const auto s = d.get<std::int64_t>();
      JEM_CHECK(s >= 0, where, ": shape has negative dimension ", s);
      t.shape.push_back(s);
    }
  }

  const auto off = v.find("data_offsets");
  JEM_CHECK(off != v.end() && off->is_array() && off->size() == 2 && (*off)[0].is_number_unsigned() &&
                (*off)[1].is_number_unsigned(),
            where, ": \"data_offsets\" must be [begin, end] of non-negative integers");
  t.begin = (*off)[0].get<std::uint64_t>();
  t.end = (*off)[1].get<std::uint64_t>();
  JEM_CHECK(t.begin <= t.end, where, ": data_offsets [", t.begin, ", ", t.end, "] have begin > end");
  JEM_CHECK(t.end <= data_size, where, ": data_offsets end ", t.end, " lies beyond the ", data_size,
            "-byte data section (truncated file?)");

  std::uint64_t bytes = 0;
  JEM_CHECK(checked_byte_size(t.shape, esize, &bytes), where, ": shape ", shape_str(t.shape),
            " is too large (byte size overflows)");
  JEM_CHECK(bytes == t.end - t.begin, where, ": shape ", shape_str(t.shape), " of ", t.dtype, " needs ", bytes,
            " bytes but data_offsets [", t.begin, ", ", t.end, "] hold ", t.end - t.begin);
  return t;
}

}  // namespace

// ---- File ----------------------------------------------------------------------------------------

File File::read(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  JEM_CHECK(f != nullptr, path, ": cannot open: ", std::strerror(errno));
  // fstat first: fopen succeeds on a directory, and the size lets us read in one go.
  struct stat st {};
  errno = 0;
  if (::fstat(::fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
    const int e = errno;
    std::fclose(f);
    if (S_ISDIR(st.st_mode)) JEM_FAIL(path, ": cannot read: is a directory");
    JEM_FAIL(path, ": cannot read: ", e ? std::strerror(e) : "not a regular file");
  }
  std::vector<std::uint8_t> bytes(static_cast<std::size_t>(st.st_size));
  const std::size_t got = std::fread(bytes.data(), 1, bytes.size(), f);
  const int e = errno;
  const bool failed = std::ferror(f) != 0;
  std::fclose(f);
  JEM_CHECK(!failed, path, ": read error: ", std::strerror(e));
  JEM_CHECK(got == bytes.size(), path, ": file shrank while reading (", got, " of ", bytes.size(), " bytes)");
  return from_bytes(std::move(bytes), path);
}

File File::from_bytes(std::vector<std::uint8_t> bytes, const std::string& label) {
  File file;
  file.path_ = label;
  file.bytes_ = std::move(bytes);
  const auto& b = file.bytes_;

  JEM_CHECK(b.size() >= 8, label, ": file is ", b.size(), " bytes, shorter than the 8-byte header length");
  std::uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<std::uint64_t>(b[i]) << (8 * i);
  JEM_CHECK(n <= kMaxHeaderBytes, label, ": header length ", n, " is absurd (limit ", kMaxHeaderBytes, ")");
  JEM_CHECK(n <= b.size() - 8, label, ": header length ", n, " is larger than the file (", b.size(),
            " bytes); truncated file?");
  file.data_start_ = 8 + static_cast<std::size_t>(n);
  const std::uint64_t data_size = b.size() - file.data_start_;

  // allow_exceptions=false: a parse error yields a "discarded" value instead of throwing.
  const auto header = nlohmann::json::parse(b.begin() + 8, b.begin() + 8 + static_cast<std::ptrdiff_t>(n),
                                            nullptr, /*allow_exceptions=*/false);
  JEM_CHECK(!header.is_discarded(), label, ": header is not valid JSON");
  JEM_CHECK(header.is_object(), label, ": header is not a JSON object");

  for (const auto& [key, value] : header.items()) {
    if (key == "__metadata__") {
      JEM_CHECK(value.is_object(), label, ": __metadata__ is not an object");
      for (const auto& [mk, mv] : value.items()) {
        JEM_CHECK(mv.is_string(), label, ": __metadata__ value of '", mk, "' is not a string");
        file.metadata_[mk] = mv.get<std::string>();
      }
      continue;
    }
    file.tensors_[key] = parse_tensor(label, key, value, data_size);
  }

  // Overlapping byte ranges mean a corrupt header (or aliasing no writer produces): reject them.
  std::vector<const TensorInfo*> by_begin;
  for (const auto& [name, t] : file.tensors_)
    if (t.end > t.begin) by_begin.push_back(&t);
  std::sort(by_begin.begin(), by_begin.end(), [](auto* a, auto* c) { return a->begin < c->begin; });
  for (std::size_t i = 1; i < by_begin.size(); ++i)
    JEM_CHECK(by_begin[i]->begin >= by_begin[i - 1]->end, label, ": tensors '", by_begin[i - 1]->name, "' and '",
              by_begin[i]->name, "' overlap");
  return file;
}

std::vector<std::string> File::names() const {
  std::vector<std::string> out;
  out.reserve(tensors_.size());
  for (const auto& [name, t] : tensors_) out.push_back(name);  // std::map: already sorted
  return out;
}

const TensorInfo& File::info(const std::string& name) const {
  const auto it = tensors_.find(name);
  JEM_CHECK(it != tensors_.end(), path_, ": no tensor '", name, "'");
  return it->second;
}

namespace {
template <typename T>
std::vector<T> copy_elements(const std::uint8_t* src, const TensorInfo& t) {
  std::vector<T> out((t.end - t.begin) / sizeof(T));
  if (!out.empty()) std::memcpy(out.data(), src, out.size() * sizeof(T));
  return out;
}
}  // namespace

std::vector<float> File::f32(const std::string& name) const {
  const TensorInfo& t = info(name);
  if (t.dtype == "F32") return copy_elements<float>(data_of(t), t);
  JEM_CHECK(t.dtype == "F64", path_, ": tensor '", name, "' has dtype ", t.dtype, ", expected F32 (or F64)");
  const auto d = copy_elements<double>(data_of(t), t);
  return std::vector<float>(d.begin(), d.end());  // rounds to nearest float
}

std::vector<std::int64_t> File::i64(const std::string& name) const {
  const TensorInfo& t = info(name);
  JEM_CHECK(t.dtype == "I64", path_, ": tensor '", name, "' has dtype ", t.dtype, ", expected I64");
  return copy_elements<std::int64_t>(data_of(t), t);
}

std::vector<std::int32_t> File::i32(const std::string& name) const {
  const TensorInfo& t = info(name);
  JEM_CHECK(t.dtype == "I32", path_, ": tensor '", name, "' has dtype ", t.dtype, ", expected I32");
  return copy_elements<std::int32_t>(data_of(t), t);
}

std::vector<std::uint8_t> File::u8(const std::string& name) const {
  const TensorInfo& t = info(name);
  JEM_CHECK(t.dtype == "U8", path_, ": tensor '", name, "' has dtype ", t.dtype, ", expected U8");
  return copy_elements<std::uint8_t>(data_of(t), t);
}

std::vector<float> File::f32_checked(const std::string& name, const std::vector<std::int64_t>& expected_shape) const {
  const TensorInfo& t = info(name);
  JEM_CHECK(t.shape == expected_shape, path_, ": tensor '", name, "' has shape ", shape_str(t.shape), ", expected ",
            shape_str(expected_shape));
  return f32(name);
}

// ---- Writer --------------------------------------------------------------------------------------

void Writer::add(const std::string& name, const char* dtype, std::size_t elem_size,
                 const std::vector<std::int64_t>& shape, const void* data) {
  JEM_CHECK(name != "__metadata__", "safetensors: '__metadata__' is reserved and cannot name a tensor");
  for (const auto& e : entries_) JEM_CHECK(e.name != name, "safetensors: duplicate tensor name '", name, "'");
  for (const auto d : shape) JEM_CHECK(d >= 0, "safetensors: tensor '", name, "' has negative dimension ", d);
  std::uint64_t bytes = 0;
  JEM_CHECK(checked_byte_size(shape, elem_size, &bytes) && bytes <= std::numeric_limits<std::size_t>::max(),
            "safetensors: tensor '", name, "' shape ", shape_str(shape), " is too large");
  JEM_CHECK(bytes == 0 || data != nullptr, "safetensors: tensor '", name, "' has no data");
  Entry e{name, dtype, shape, std::vector<std::uint8_t>(static_cast<std::size_t>(bytes))};
  if (bytes != 0) std::memcpy(e.bytes.data(), data, e.bytes.size());
  entries_.push_back(std::move(e));
}

void Writer::add_f32(const std::string& name, const std::vector<std::int64_t>& shape, const float* data) {
  add(name, "F32", sizeof(float), shape, data);
}
void Writer::add_i64(const std::string& name, const std::vector<std::int64_t>& shape, const std::int64_t* data) {
  add(name, "I64", sizeof(std::int64_t), shape, data);
}
void Writer::add_i32(const std::string& name, const std::vector<std::int64_t>& shape, const std::int32_t* data) {
  add(name, "I32", sizeof(std::int32_t), shape, data);
}
void Writer::add_u8(const std::string& name, const std::vector<std::int64_t>& shape, const std::uint8_t* data) {
  add(name, "U8", 1, shape, data);
}

void Writer::set_metadata(const std::string& key, const std::string& value) { metadata_[key] = value; }

void Writer::write(const std::string& path) const {
  // Tensors are packed back to back with no gaps: the reference safetensors loader rejects
  // files whose data section has holes, so 8-byte alignment of every tensor is not attempted.
  // ordered_json keeps the header in insertion order, matching the data.
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata_.empty()) header["__metadata__"] = metadata_;
  std::uint64_t offset = 0;
  for (const auto& e : entries_) {
    header[e.name] = {{"dtype", e.dtype}, {"shape", e.shape}, {"data_offsets", {offset, offset + e.bytes.size()}}};
    offset += e.bytes.size();
  }
  std::string text = header.dump();
  // Pad with spaces so the data section starts 8-byte aligned (allowed by the format).
  text.append((8 - (8 + text.size()) % 8) % 8, ' ');
  std::uint8_t len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<std::uint8_t>(static_cast<std::uint64_t>(text.size()) >> (8 * i));

  // Write-then-rename so a crash or full disk never leaves a half-written checkpoint at `path`.
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  std::FILE* f = nullptr;
  const auto fail = [&](const char* what) {
    const int e = errno;
    if (f) std::fclose(f);
    std::remove(tmp.c_str());
    JEM_FAIL(path, ": ", what, ": ", e ? std::strerror(e) : "unknown error");
  };
  errno = 0;
  f = std::fopen(tmp.c_str(), "wb");
  if (!f) fail("cannot create temporary file");
  const auto put = [&](const void* p, std::size_t n) {
    errno = 0;
    if (n != 0 && std::fwrite(p, 1, n, f) != n) fail("write failed");
  };
  put(len, sizeof len);
  put(text.data(), text.size());
  for (const auto& e : entries_) put(e.bytes.data(), e.bytes.size());
  errno = 0;
  if (std::fflush(f) != 0) fail("write failed");
  if (::fsync(::fileno(f)) != 0) fail("fsync failed");
  std::FILE* closing = f;
  f = nullptr;  // fclose releases the stream even when it fails; `fail` must not close it again
  if (std::fclose(closing) != 0) fail("close failed");
  if (std::rename(tmp.c_str(), path.c_str()) != 0) fail("cannot rename temporary file over it");

  // The rename is only durable once the directory entry is synced.
  std::string dir = std::filesystem::path(path).parent_path().string();
  if (dir.empty()) dir = ".";
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  const bool synced = fd >= 0 && ::fsync(fd) == 0;
  const int e = errno;
  if (fd >= 0) ::close(fd);
  JEM_CHECK(synced, path, ": written, but syncing directory ", dir, " failed: ", std::strerror(e));
}

}  // namespace jem::safetensors
