// The structural check of mat5_check.hpp: walks a MAT v5 file's element tree far enough to bound
// every allocation libmatio makes from a size in the file.
//
// The v5 layout (MATLAB's "MAT-File Format" document): a 128-byte header (116 bytes of text, an
// 8-byte subsystem offset, a 2-byte version, the 2-byte endian indicator), then data elements.
// An element is a tag (uint32 type, uint32 byte count) and its data, padded to 8 bytes inside a
// matrix; data of at most 4 bytes may use the small form, one uint32 with the byte count in the
// high 16 bits and the type in the low 16, then the data in the next 4 bytes. At the top level
// there are matrices (miMATRIX) and compressed elements (miCOMPRESSED: a zlib stream holding one
// miMATRIX). A matrix holds sub-elements: array flags (2 x uint32: the class in the low byte of
// the first, sparse nzmax in the second), dimensions (int32 x rank), name (int8), then by class
//   numeric, char:           real part [, imaginary part]
//   sparse:                  ir, jc, real part [, imaginary part]
//   cell, function handle:   one matrix per element
//   struct:                  field name length (int32), field names (int8), one matrix per
//                            element and field
//   object:                  class name (int8), then as a struct
//   opaque:                  no dimensions; names, then matrices.
#include "data/mat5_check.hpp"

#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>

#include "jem/error.hpp"

namespace jem::detail {
namespace {

// MAT data types (element tags) and array classes (array flags).
constexpr std::uint32_t miINT8 = 1, miUINT8 = 2, miINT16 = 3, miUINT16 = 4, miINT32 = 5, miUINT32 = 6, miSINGLE = 7,
                        miDOUBLE = 9, miINT64 = 12, miUINT64 = 13, miMATRIX = 14, miCOMPRESSED = 15, miUTF8 = 16,
                        miUTF16 = 17, miUTF32 = 18;
constexpr std::uint32_t kCell = 1, kStruct = 2, kObject = 3, kSparse = 5, kFunction = 16, kOpaque = 17;

// Bounds on header fields that no real file comes near, well below what would cost memory.
constexpr std::uint32_t kMaxRank = 32;
constexpr std::uint32_t kMaxName = 64 * 1024;  // MATLAB names are at most 63 characters
constexpr int kMaxDepth = 32;                  // cells in cells: matio reads them recursively
// Deflate emits at least 2 bits per 258-byte match, so a stream never inflates to more than 1032
// times its size (zlib's documented limit); a compressed matrix claiming more is not one.
constexpr std::uint64_t kMaxInflateRatio = 1032;

// Bytes per element of the numeric MAT data types; 0 for the others.
std::uint32_t type_size(std::uint32_t type) {
  switch (type) {
    case miINT8:
    case miUINT8:
    case miUTF8:
      return 1;
    case miINT16:
    case miUINT16:
    case miUTF16:
      return 2;
    case miINT32:
    case miUINT32:
    case miSINGLE:
    case miUTF32:
      return 4;
    case miDOUBLE:
    case miINT64:
    case miUINT64:
      return 8;
    default:
      return 0;
  }
}

std::uint32_t load_u32(const unsigned char* p, bool big_endian) {
  return big_endian ? std::uint32_t(p[0]) << 24 | std::uint32_t(p[1]) << 16 | std::uint32_t(p[2]) << 8 | p[3]
                    : std::uint32_t(p[3]) << 24 | std::uint32_t(p[2]) << 16 | std::uint32_t(p[1]) << 8 | p[0];
}

// Bytes from a damaged file, fit for a one-line message.
std::string printable(const char* s, std::size_t n) {
  std::string out;
  for (std::size_t i = 0; i < n && i < 64; ++i) out += (s[i] >= 0x20 && s[i] < 0x7f) ? s[i] : '?';
  if (n > 64) out += "...";
  return out;
}

std::string hex4(unsigned v) {
  char s[8];
  std::snprintf(s, sizeof s, "0x%04x", v & 0xffff);
  return s;
}

// Where a problem is, for the message: the file and the element ("variable 'X' (element at byte
// 128, compressed), cell 3").
struct Where {
  const std::string& path;
  std::string what;
};

#define MAT_CHECK(where, cond, ...) JEM_CHECK(cond, (where).path, ": ", (where).what, ": ", __VA_ARGS__)

// The bytes of one top-level element in order, from the file or inflated. read/skip return false
// (and why() says why) when the bytes cannot be had.
class Source {
 public:
  virtual ~Source() = default;
  virtual bool read(void* dst, std::size_t n) = 0;
  virtual bool skip(std::uint64_t n) = 0;
  const std::string& why() const { return why_; }

 protected:
  std::string why_;
};

class FileSource final : public Source {
 public:
  explicit FileSource(std::FILE* f) : f_(f) {}
  bool read(void* dst, std::size_t n) override {
    if (std::fread(dst, 1, n, f_) == n) return true;
    // Sizes were checked against the file's size, so only an I/O error or a file that shrank
    // while being read gets here.
    why_ = std::ferror(f_) ? std::strerror(errno) : "the file ended early";
    return false;
  }
  bool skip(std::uint64_t n) override {
    if (fseeko(f_, static_cast<off_t>(n), SEEK_CUR) == 0) return true;
    why_ = std::strerror(errno);
    return false;
  }

 private:
  std::FILE* f_;
};

// Inflates the `compressed` bytes that follow the file position, as far as they are read.
class InflateSource final : public Source {
 public:
  InflateSource(std::FILE* f, std::uint64_t compressed) : f_(f), in_left_(compressed) {
    ready_ = inflateInit(&z_) == Z_OK;
    if (!ready_) why_ = "zlib cannot start (out of memory)";
  }
  ~InflateSource() override {
    if (ready_) inflateEnd(&z_);
  }
  InflateSource(const InflateSource&) = delete;
  InflateSource& operator=(const InflateSource&) = delete;

  bool read(void* dst, std::size_t n) override {
    if (!ready_) return false;
    z_.next_out = static_cast<Bytef*>(dst);
    z_.avail_out = static_cast<uInt>(n);  // callers read at most kMaxName bytes at once
    while (z_.avail_out > 0) {
      if (ended_) return fail("the compressed data ends early");
      if (z_.avail_in == 0 && in_left_ > 0) {
        const std::size_t want = static_cast<std::size_t>(std::min<std::uint64_t>(sizeof in_, in_left_));
        if (std::fread(in_, 1, want, f_) != want)
          return fail(std::ferror(f_) ? std::strerror(errno) : "the file ended early");
        in_left_ -= want;
        z_.next_in = in_;
        z_.avail_in = static_cast<uInt>(want);
      }
      const int rc = inflate(&z_, Z_NO_FLUSH);
      if (rc == Z_STREAM_END) {
        ended_ = true;
      } else if (rc == Z_BUF_ERROR && z_.avail_in == 0 && in_left_ == 0) {
        return fail("the compressed data is cut short");
      } else if (rc != Z_OK && rc != Z_BUF_ERROR) {
        return fail(std::string("corrupt compressed data (zlib: ") + (z_.msg ? z_.msg : zError(rc)) + ")");
      }
    }
    return true;
  }
  bool skip(std::uint64_t n) override {
    unsigned char sink[4096];
    while (n > 0) {
      const std::size_t k = static_cast<std::size_t>(std::min<std::uint64_t>(sizeof sink, n));
      if (!read(sink, k)) return false;
      n -= k;
    }
    return true;
  }

 private:
  bool fail(std::string why) {
    why_ = std::move(why);
    return false;
  }
  std::FILE* f_;
  std::uint64_t in_left_;  // compressed bytes not yet read from the file
  z_stream z_{};
  bool ready_ = false, ended_ = false;
  unsigned char in_[16384];
};

struct Tag {
  std::uint32_t type = 0, nbytes = 0;
  bool small = false;  // the small form: data in the 4 bytes after the tag word
};

// The contents of one matrix, read front to back with the bytes left in it counted, so that no
// sub-element can claim more than the matrix holds.
class Region {
 public:
  Region(Source& src, std::uint64_t bytes, bool big_endian, const Where& where)
      : src_(src), left_(bytes), big_(big_endian), w_(where) {}
  std::uint64_t left() const { return left_; }
  std::uint32_t u32(const unsigned char* p) const { return load_u32(p, big_); }

  // The next sub-element's tag; its data must fit in what is left.
  Tag tag() {
    MAT_CHECK(w_, left_ >= 8, "a sub-element's tag needs 8 bytes but only ", left_, " are left in the matrix");
    unsigned char b[4];
    take(b, 4);
    Tag t;
    const std::uint32_t word = u32(b);
    if (word >> 16) {
      t = {word & 0xffff, word >> 16, true};
      MAT_CHECK(w_, t.nbytes <= 4, "a small sub-element (data type ", t.type, ") claims ", t.nbytes,
                " bytes; the small form holds at most 4");
      return t;
    }
    take(b, 4);
    t = {word, u32(b), false};
    MAT_CHECK(w_, t.nbytes <= left_, "a sub-element of data type ", t.type, " claims ", t.nbytes, " bytes but only ",
              left_, " are left in the matrix");
    return t;
  }
  // The data of t (t.nbytes bytes into dst), then its padding.
  void read_data(const Tag& t, void* dst) {
    if (t.small) {
      unsigned char b[4];
      take(b, 4);
      std::memcpy(dst, b, t.nbytes);
      return;
    }
    take(dst, t.nbytes);
    skip_padding(t);
  }
  void skip_data(const Tag& t) {
    if (t.small) return drop(4);
    drop(t.nbytes);
    skip_padding(t);
  }
  // A nested matrix of t's bytes: counted here now, read through the returned region; call
  // skip_padding(t) once it has been read to its end.
  Region open(const Tag& t, const Where& where) {
    left_ -= t.nbytes;
    return Region(src_, t.nbytes, big_, where);
  }
  // Padding to 8 bytes; a last sub-element may come without it.
  void skip_padding(const Tag& t) { drop(std::min<std::uint64_t>((8 - t.nbytes % 8) % 8, left_)); }
  void skip_rest() { drop(left_); }

 private:
  void take(void* dst, std::size_t n) {
    MAT_CHECK(w_, src_.read(dst, n), "cannot read the matrix: ", src_.why());
    left_ -= n;
  }
  void drop(std::uint64_t n) {
    MAT_CHECK(w_, src_.skip(n), "cannot read the matrix: ", src_.why());
    left_ -= n;
  }
  Source& src_;
  std::uint64_t left_;
  bool big_;
  const Where& w_;
};

void check_matrix(Region& r, Where& w, bool top_level, int depth);

// The matrix whose tag comes next in r: a cell, struct field or object part.
void check_nested(Region& r, const Where& outer, const std::string& label, int depth) {
  Where w{outer.path, outer.what + ", " + label};
  const Tag t = r.tag();
  MAT_CHECK(w, t.type == miMATRIX && !t.small, "data type ", t.type, " where a matrix (14) belongs");
  Region inner = r.open(t, w);
  check_matrix(inner, w, false, depth + 1);
  inner.skip_rest();
  r.skip_padding(t);
}

// Sub-elements of a class whose layout matio reads from their own tags (sparse, opaque): each
// must fit; nested matrices are checked in turn.
void check_rest(Region& r, const Where& w, int depth) {
  for (int i = 1; r.left() >= 8; ++i) {
    const Tag t = r.tag();
    if (t.type == miMATRIX && !t.small) {
      Where iw{w.path, w.what + ", part " + std::to_string(i)};
      Region inner = r.open(t, iw);
      check_matrix(inner, iw, false, depth + 1);
      inner.skip_rest();
      r.skip_padding(t);
    } else {
      r.skip_data(t);
    }
  }
}

void check_matrix(Region& r, Where& w, bool top_level, int depth) {
  MAT_CHECK(w, depth <= kMaxDepth, "cells or structs nested more than ", kMaxDepth, " deep");
  if (r.left() == 0) return;  // an empty matrix, which matio reads as an empty variable

  Tag t = r.tag();
  MAT_CHECK(w, t.type == miUINT32 && t.nbytes == 8 && !t.small, "array flags must be 8 bytes of uint32, found ",
            t.nbytes, " bytes of data type ", t.type);
  unsigned char flags[8];
  r.read_data(t, flags);
  const std::uint32_t cls = r.u32(flags) & 0xff;
  MAT_CHECK(w, cls >= kCell && cls <= kOpaque, "array class ", cls, " is not a MATLAB class (1..17)");
  if (cls == kOpaque) return check_rest(r, w, depth);  // no dimensions (matio reads none either)

  t = r.tag();
  MAT_CHECK(w, t.type == miINT32, "dimensions must be int32, found data type ", t.type);
  MAT_CHECK(w, t.nbytes % 4 == 0 && t.nbytes / 4 <= kMaxRank, "dimensions of ", t.nbytes,
            " bytes: not a whole number of int32 or a rank above ", kMaxRank);
  unsigned char dim_bytes[4 * kMaxRank];
  r.read_data(t, dim_bytes);
  const std::uint32_t rank = t.nbytes / 4;
  std::string dims = "[";
  std::uint64_t numel = 1;
  bool wraps = false;
  for (std::uint32_t i = 0; i < rank; ++i) {
    const auto d = static_cast<std::int32_t>(r.u32(dim_bytes + 4 * i));
    dims += (i ? ", " : "") + std::to_string(d);
    MAT_CHECK(w, d >= 0, "negative dimension ", d);
    wraps = wraps || __builtin_mul_overflow(numel, std::uint64_t(d), &numel);
  }
  dims += "]";
  if (numel == 0) wraps = false;  // a zero dimension empties the array whatever the others say
  MAT_CHECK(w, !wraps, "dimensions ", dims, " count more than 2^64 elements");

  t = r.tag();
  MAT_CHECK(w, t.type == miINT8, "the name must be int8 text, found data type ", t.type);
  MAT_CHECK(w, t.nbytes <= kMaxName, "a name of ", t.nbytes, " bytes (at most ", kMaxName, ")");
  std::string name(t.nbytes, '\0');
  r.read_data(t, name.data());
  if (top_level) w.what = "variable '" + printable(name.data(), name.size()) + "' (" + w.what + ")";

  if (cls == kCell || cls == kFunction) {
    // matio allocates a pointer per element before reading them; each takes at least a tag.
    MAT_CHECK(w, numel <= r.left() / 8, "dimensions ", dims, " count ", numel, " cells but only ", r.left(),
              " bytes are left for them");
    for (std::uint64_t i = 0; i < numel; ++i) check_nested(r, w, "cell " + std::to_string(i + 1), depth);
  } else if (cls == kStruct || cls == kObject) {
    if (cls == kObject) {
      t = r.tag();
      MAT_CHECK(w, t.type == miINT8 && t.nbytes <= kMaxName, "the class name must be int8 text of at most ", kMaxName,
                " bytes, found ", t.nbytes, " bytes of data type ", t.type);
      r.skip_data(t);
    }
    t = r.tag();
    MAT_CHECK(w, t.type == miINT32 && t.nbytes == 4, "the field name length must be one int32, found ", t.nbytes,
              " bytes of data type ", t.type);
    unsigned char b[4];
    r.read_data(t, b);
    const std::uint32_t name_len = r.u32(b);
    MAT_CHECK(w, name_len >= 1 && name_len <= kMaxName, "field name length ", name_len, " (1..", kMaxName, ")");
    t = r.tag();
    MAT_CHECK(w, t.type == miINT8 && t.nbytes % name_len == 0, "field names: ", t.nbytes, " bytes of data type ",
              t.type, ", not int8 names of ", name_len, " bytes");
    const std::uint64_t fields = t.nbytes / name_len;
    r.skip_data(t);
    // matio allocates a pointer per element and field before reading them.
    std::uint64_t values = 0;
    MAT_CHECK(w, !__builtin_mul_overflow(numel, fields, &values) && values <= r.left() / 8, "dimensions ", dims, " x ",
              fields, " fields count more field values than the ", r.left(), " bytes left can hold");
    for (std::uint64_t i = 0; i < values; ++i) check_nested(r, w, "field value " + std::to_string(i + 1), depth);
  } else if (cls == kSparse) {
    check_rest(r, w, depth);  // matio sizes ir, jc and the values by their own tags
  } else {                    // numeric or char: matio allocates numel x the class size, then reads the data
    if (numel == 0) return;
    MAT_CHECK(w, r.left() > 0, "dimensions ", dims, " but no data");
    t = r.tag();
    const std::uint32_t size = type_size(t.type);
    MAT_CHECK(w, size != 0, "data of type ", t.type, ", not a numeric MAT type");
    // The stored type may be narrower than the class (MATLAB saves whole-valued doubles as
    // uint8), so the bound is the stored size: the class is at most 8 times wider.
    MAT_CHECK(w, numel <= t.nbytes / size, "dimensions ", dims, " count ", numel, " elements of ", size,
              " bytes but the data element holds ", t.nbytes, " bytes");
  }
}

struct FileCloser {
  void operator()(std::FILE* f) const { std::fclose(f); }
};

}  // namespace

void check_mat_file(const std::string& path) {
  std::unique_ptr<std::FILE, FileCloser> file(std::fopen(path.c_str(), "rb"));
  JEM_CHECK(file, "cannot open ", path, ": ", std::strerror(errno));
  std::FILE* f = file.get();
  unsigned char h[128];
  const std::size_t got = std::fread(h, 1, sizeof h, f);
  // v5 and v7.3 files open with a text header "MATLAB 5.0 MAT-file..." / "MATLAB 7.3 ...".
  // Anything else would go to matio's headerless v4 reader, which allocates and clears as many
  // bytes as the first few bytes say: a 189-byte file took 0.7 GB and seconds (found by
  // fuzz_svhn: corpus svhn/regress_v4_huge_alloc). SVHN was never distributed as v4.
  JEM_CHECK(got >= 6 && std::memcmp(h, "MATLAB", 6) == 0, path,
            ": not a MATLAB v5 or v7.3 file (no \"MATLAB\" text header)");
  JEM_CHECK(got == sizeof h, path, ": truncated: ", got, " bytes, less than the 128-byte MAT header");
  // The endian indicator orders every number after it. matio 1.5.23 refuses a header with
  // neither IM nor MI, or another version, without saying why; the message here does.
  bool big_endian = false;
  if (h[126] == 'M' && h[127] == 'I')
    big_endian = true;
  else
    JEM_CHECK(h[126] == 'I' && h[127] == 'M', path, ": the MAT header's endian indicator is '",
              printable(reinterpret_cast<const char*>(h + 126), 2), "', not IM or MI");
  const unsigned version = big_endian ? h[124] << 8 | h[125] : h[125] << 8 | h[124];
  if (version == 0x0200) return;  // v7.3: an HDF5 file behind the header, for matio's HDF5 reader
  JEM_CHECK(version == 0x0100, path, ": MAT header version ", hex4(version), ", not 0x0100 (v5) or 0x0200 (v7.3)");

  JEM_CHECK(fseeko(f, 0, SEEK_END) == 0, path, ": cannot seek: ", std::strerror(errno));
  const off_t end = ftello(f);
  JEM_CHECK(end >= 0, path, ": cannot tell its size: ", std::strerror(errno));
  const auto size = static_cast<std::uint64_t>(end);

  // Fewer than 8 bytes after the last element are no tag; matio stops there as well.
  for (std::uint64_t pos = sizeof h; size - pos >= 8;) {
    Where w{path, "element at byte " + std::to_string(pos)};
    JEM_CHECK(fseeko(f, static_cast<off_t>(pos), SEEK_SET) == 0, path, ": cannot seek: ", std::strerror(errno));
    unsigned char tag[8];
    MAT_CHECK(w, std::fread(tag, 1, 8, f) == 8, "cannot read its tag");
    const std::uint32_t type = load_u32(tag, big_endian), nbytes = load_u32(tag + 4, big_endian);
    const std::uint64_t room = size - pos - 8;
    MAT_CHECK(w, nbytes <= room, "claims ", nbytes, " bytes but the file has ", room, " after its tag");
    if (type == miMATRIX) {
      FileSource src(f);
      Region r(src, nbytes, big_endian, w);
      check_matrix(r, w, true, 0);
    } else if (type == miCOMPRESSED) {
      w.what += ", compressed";
      InflateSource src(f, nbytes);
      unsigned char inner[8];
      MAT_CHECK(w, src.read(inner, 8), "cannot inflate its first 8 bytes: ", src.why());
      const std::uint32_t inner_type = load_u32(inner, big_endian), inner_bytes = load_u32(inner + 4, big_endian);
      MAT_CHECK(w, inner_type == miMATRIX, "holds data type ", inner_type, ", not a matrix (14)");
      MAT_CHECK(w, std::uint64_t(inner_bytes) + 8 <= kMaxInflateRatio * nbytes, "its matrix claims ", inner_bytes,
                " bytes, more than ", nbytes, " compressed bytes can inflate to");
      Region r(src, inner_bytes, big_endian, w);
      check_matrix(r, w, true, 0);
    } else {
      JEM_FAIL(path, ": ", w.what, ": data type ", type, " at the top level, where a MAT v5 file holds matrices (14) ",
               "and compressed matrices (15)");
    }
    pos += 8 + std::uint64_t(nbytes);
  }
}

}  // namespace jem::detail
