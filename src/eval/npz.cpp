// .npy / .npz writing and reading (see npz.hpp for the layout).
#include "jem/npz.hpp"

#include <zlib.h>

#include <cstring>
#include <fstream>
#include <iterator>

#include "jem/error.hpp"
#include "jem/eval_io.hpp"

namespace jem {
namespace {

void put_u16(std::string& s, std::uint32_t v) {
  s.push_back(char(v & 0xFF));
  s.push_back(char((v >> 8) & 0xFF));
}
void put_u32(std::string& s, std::uint32_t v) {
  put_u16(s, v & 0xFFFF);
  put_u16(s, v >> 16);
}
std::uint32_t get_u16(const std::uint8_t* p) { return std::uint32_t(p[0]) | (std::uint32_t(p[1]) << 8); }
std::uint32_t get_u32(const std::uint8_t* p) { return get_u16(p) | (get_u16(p + 2) << 16); }

std::string shape_tuple(const std::vector<std::int64_t>& shape) {
  std::string s = "(";
  for (std::size_t i = 0; i < shape.size(); ++i) s += std::to_string(shape[i]) + ", ";
  if (shape.size() > 1)
    s.resize(s.size() - 1), s.back() = ')';  // "(2, 3)"
  else
    s += ")";  // "()" or "(5, )"
  return s;
}

}  // namespace

NpyArray NpyArray::floats(std::string name, std::vector<std::int64_t> shape, std::vector<float> data) {
  NpyArray a;
  a.name = std::move(name);
  a.shape = std::move(shape);
  a.descr = "<f4";
  a.f32 = std::move(data);
  JEM_CHECK(std::int64_t(a.f32.size()) == a.numel(), "npz: array '", a.name, "' has ", a.f32.size(),
            " values for shape ", shape_tuple(a.shape));
  return a;
}

NpyArray NpyArray::ints(std::string name, std::vector<std::int64_t> shape, std::vector<std::int32_t> data) {
  NpyArray a;
  a.name = std::move(name);
  a.shape = std::move(shape);
  a.descr = "<i4";
  a.i32 = std::move(data);
  JEM_CHECK(std::int64_t(a.i32.size()) == a.numel(), "npz: array '", a.name, "' has ", a.i32.size(),
            " values for shape ", shape_tuple(a.shape));
  return a;
}

std::int64_t NpyArray::numel() const {
  std::int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

std::vector<std::uint8_t> npy_bytes(const NpyArray& a) {
  JEM_CHECK(a.descr == "<f4" || a.descr == "<i4", "npz: array '", a.name, "': unsupported dtype ", a.descr);
  std::string header = "{'descr': '" + a.descr + "', 'fortran_order': False, 'shape': " + shape_tuple(a.shape) + ", }";
  // magic (6) + version (2) + length (2) + header + '\n' is padded to a multiple of 64.
  const std::size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header.push_back('\n');
  std::string out = "\x93NUMPY";
  out.push_back('\x01');
  out.push_back('\x00');
  put_u16(out, std::uint32_t(header.size()));
  out += header;
  std::vector<std::uint8_t> bytes(out.begin(), out.end());
  const void* src = a.descr == "<f4" ? static_cast<const void*>(a.f32.data()) : a.i32.data();
  const std::size_t n = std::size_t(a.numel()) * 4;  // both dtypes are 4 bytes, little-endian hosts
  bytes.resize(bytes.size() + n);
  if (n) std::memcpy(bytes.data() + out.size(), src, n);
  return bytes;
}

NpyArray parse_npy(const std::vector<std::uint8_t>& b, const std::string& label) {
  JEM_CHECK(b.size() >= 10 && std::memcmp(b.data(), "\x93NUMPY", 6) == 0, label, ": not a .npy file (bad magic)");
  const int major = b[6];
  JEM_CHECK(major == 1 || major == 2, label, ": .npy version ", major, " not supported");
  const std::size_t hl = major == 1 ? get_u16(b.data() + 8) : get_u32(b.data() + 8);
  const std::size_t start = major == 1 ? 10 : 12;
  JEM_CHECK(b.size() >= start + hl, label, ": truncated .npy header");
  const std::string h(b.begin() + std::ptrdiff_t(start), b.begin() + std::ptrdiff_t(start + hl));
  NpyArray a;
  a.name = label;
  auto value_after = [&](const std::string& key) {
    const auto k = h.find("'" + key + "'");
    JEM_CHECK(k != std::string::npos, label, ": .npy header lacks '", key, "'");
    auto c = h.find(':', k);
    JEM_CHECK(c != std::string::npos, label, ": damaged .npy header");
    ++c;
    while (c < h.size() && h[c] == ' ') ++c;
    return c;
  };
  {
    const auto c = value_after("descr");
    const auto e = h.find('\'', c + 1);
    JEM_CHECK(h[c] == '\'' && e != std::string::npos, label, ": damaged 'descr' in the .npy header");
    a.descr = h.substr(c + 1, e - c - 1);
    JEM_CHECK(a.descr == "<f4" || a.descr == "<i4", label, ": dtype ", a.descr, " not supported (only <f4, <i4)");
  }
  JEM_CHECK(h.compare(value_after("fortran_order"), 5, "False") == 0, label, ": Fortran-order arrays not supported");
  {
    const auto c = value_after("shape");
    const auto e = h.find(')', c);
    JEM_CHECK(h[c] == '(' && e != std::string::npos, label, ": damaged 'shape' in the .npy header");
    std::string dims = h.substr(c + 1, e - c - 1);
    std::size_t p = 0;
    while (p < dims.size()) {
      while (p < dims.size() && (dims[p] == ' ' || dims[p] == ',')) ++p;
      if (p >= dims.size()) break;
      std::size_t used = 0;
      try {
        a.shape.push_back(std::stoll(dims.substr(p), &used));
      } catch (const std::logic_error&) {
        JEM_FAIL(label, ": damaged 'shape' in the .npy header");
      }
      JEM_CHECK(a.shape.back() >= 0, label, ": negative dimension in the .npy header");
      p += used;
    }
  }
  const std::size_t n = std::size_t(a.numel()) * 4, data = start + hl;
  JEM_CHECK(b.size() == data + n, label, ": ", b.size() - data, " data bytes, expected ", n);
  if (a.descr == "<f4") {
    a.f32.resize(std::size_t(a.numel()));
    if (n) std::memcpy(a.f32.data(), b.data() + data, n);
  } else {
    a.i32.resize(std::size_t(a.numel()));
    if (n) std::memcpy(a.i32.data(), b.data() + data, n);
  }
  return a;
}

void write_npz(const std::string& path, const std::vector<NpyArray>& arrays) {
  // Local headers + data, then the central directory, then its end record. No zip64: each entry
  // and the archive must stay below 4 GiB (checked).
  std::string out, central;
  for (const NpyArray& a : arrays) {
    const std::vector<std::uint8_t> data = npy_bytes(a);
    const std::string name = a.name + ".npy";
    JEM_CHECK(data.size() < 0xFFFFFFFFull && out.size() < 0xFFFFFFFFull, path, ": array '", a.name,
              "' makes the archive larger than 4 GiB (zip64 not supported)");
    const std::uint32_t crc = std::uint32_t(crc32(0L, data.data(), uInt(data.size())));
    const std::uint32_t offset = std::uint32_t(out.size()), size = std::uint32_t(data.size());
    put_u32(out, 0x04034b50);  // local file header
    put_u16(out, 20);          // version needed: 2.0
    put_u16(out, 0);           // flags
    put_u16(out, 0);           // method: stored
    put_u16(out, 0);           // mod time
    put_u16(out, 0x21);        // mod date: 1980-01-01
    put_u32(out, crc);
    put_u32(out, size);  // compressed size
    put_u32(out, size);  // uncompressed size
    put_u16(out, std::uint32_t(name.size()));
    put_u16(out, 0);  // extra length
    out += name;
    out.append(reinterpret_cast<const char*>(data.data()), data.size());

    put_u32(central, 0x02014b50);  // central directory header
    put_u16(central, 20);          // version made by
    put_u16(central, 20);          // version needed
    put_u16(central, 0);
    put_u16(central, 0);
    put_u16(central, 0);
    put_u16(central, 0x21);
    put_u32(central, crc);
    put_u32(central, size);
    put_u32(central, size);
    put_u16(central, std::uint32_t(name.size()));
    put_u16(central, 0);  // extra
    put_u16(central, 0);  // comment
    put_u16(central, 0);  // disk
    put_u16(central, 0);  // internal attributes
    put_u32(central, 0);  // external attributes
    put_u32(central, offset);
    central += name;
  }
  const std::uint32_t cd_offset = std::uint32_t(out.size());
  out += central;
  put_u32(out, 0x06054b50);  // end of central directory
  put_u16(out, 0);
  put_u16(out, 0);
  put_u16(out, std::uint32_t(arrays.size()));
  put_u16(out, std::uint32_t(arrays.size()));
  put_u32(out, std::uint32_t(central.size()));
  put_u32(out, cd_offset);
  put_u16(out, 0);  // comment length
  write_file_atomic(path, out);
}

std::vector<NpyArray> read_npz(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  JEM_CHECK(in, path, ": cannot open (", std::strerror(errno), ")");
  const std::vector<std::uint8_t> b((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  // Walk the local headers in order until the central directory starts.
  std::vector<NpyArray> arrays;
  std::size_t p = 0;
  while (p + 4 <= b.size() && get_u32(b.data() + p) == 0x04034b50) {
    JEM_CHECK(p + 30 <= b.size(), path, ": truncated zip entry header");
    const std::uint32_t flags = get_u16(b.data() + p + 6), method = get_u16(b.data() + p + 8);
    const std::uint32_t crc = get_u32(b.data() + p + 14);
    std::uint64_t size = get_u32(b.data() + p + 18);
    const std::uint32_t name_len = get_u16(b.data() + p + 26), extra_len = get_u16(b.data() + p + 28);
    JEM_CHECK(p + 30 + name_len + extra_len <= b.size(), path, ": truncated zip entry header");
    const std::string name(b.begin() + std::ptrdiff_t(p + 30), b.begin() + std::ptrdiff_t(p + 30 + name_len));
    if (size == 0xFFFFFFFFu) {  // zip64: the sizes are in the extra field 0x0001 (uncompressed first)
      bool found = false;
      for (std::size_t e = p + 30 + name_len; e + 4 <= p + 30 + name_len + extra_len;) {
        const std::uint32_t id = get_u16(b.data() + e), len = get_u16(b.data() + e + 2);
        if (id == 1 && len >= 16) {
          size = std::uint64_t(get_u32(b.data() + e + 12)) | (std::uint64_t(get_u32(b.data() + e + 16)) << 32);
          found = true;
          break;
        }
        e += 4 + len;
      }
      JEM_CHECK(found, path, ": entry '", name, "' has a zip64 size but no zip64 extra field");
    }
    JEM_CHECK(method == 0, path, ": entry '", name, "' is compressed (method ", method,
              "); only stored entries are read (numpy.savez, not savez_compressed)");
    JEM_CHECK(!(flags & 0x8), path, ": entry '", name, "' has a data descriptor (streamed zip), not supported");
    const std::size_t data = p + 30 + name_len + extra_len;
    JEM_CHECK(data + size <= b.size(), path, ": entry '", name, "' is truncated");
    const std::vector<std::uint8_t> bytes(b.begin() + std::ptrdiff_t(data), b.begin() + std::ptrdiff_t(data + size));
    JEM_CHECK(std::uint32_t(crc32(0L, bytes.data(), uInt(bytes.size()))) == crc, path, ": entry '", name,
              "' fails its CRC-32 check");
    NpyArray a = parse_npy(bytes, path + ":" + name);
    a.name = name.size() > 4 && name.compare(name.size() - 4, 4, ".npy") == 0 ? name.substr(0, name.size() - 4) : name;
    arrays.push_back(std::move(a));
    p = data + size;
  }
  JEM_CHECK(p + 4 <= b.size() && (get_u32(b.data() + p) == 0x02014b50 || get_u32(b.data() + p) == 0x06054b50), path,
            ": not a zip archive of stored entries");
  return arrays;
}

}  // namespace jem
