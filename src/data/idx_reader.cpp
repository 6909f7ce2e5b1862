// MNIST / Fashion-MNIST IDX files, gzip-compressed or raw.
#include <zlib.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>

#include "jem/datasets.hpp"
#include "jem/error.hpp"

namespace jem {
namespace {

const char* const kHowToGet =
    "Fashion-MNIST: apt-get install dataset-fashion-mnist, files in /usr/share/datasets/fashion-mnist/";
constexpr std::uint32_t kImagesMagic = 0x00000803;  // unsigned bytes, 3 dimensions
constexpr std::uint32_t kLabelsMagic = 0x00000801;  // unsigned bytes, 1 dimension

std::string hex32(std::uint32_t v) {
  char s[16];
  std::snprintf(s, sizeof s, "0x%08x", v);
  return s;
}

// zlib's gzread decides by the gzip magic (1f 8b) whether to inflate or to copy the file as it
// is (gzdirect), so one loop reads both kinds.
std::vector<std::uint8_t> read_maybe_gzip(const std::string& path) {
  errno = 0;
  std::unique_ptr<gzFile_s, int (*)(gzFile)> gz(gzopen(path.c_str(), "rb"), &gzclose);
  JEM_CHECK(gz, "cannot open ", path, ": ", errno ? std::strerror(errno) : "gzopen failed", " (", kHowToGet, ")");
  gzbuffer(gz.get(), 1 << 20);
  std::vector<std::uint8_t> bytes;
  std::uint8_t chunk[1 << 16];
  int n;
  while ((n = gzread(gz.get(), chunk, sizeof chunk)) > 0) bytes.insert(bytes.end(), chunk, chunk + n);
  int err = Z_OK;
  const char* msg = gzerror(gz.get(), &err);
  // A gzip stream cut short reads as end of data with Z_BUF_ERROR; a corrupt one fails.
  JEM_CHECK(n == 0 && err == Z_OK, path, ": cannot decompress (", msg, "): truncated or corrupt gzip file");
  return bytes;
}

std::uint32_t be32(const std::vector<std::uint8_t>& b, std::size_t at) {
  return (std::uint32_t(b[at]) << 24) | (std::uint32_t(b[at + 1]) << 16) | (std::uint32_t(b[at + 2]) << 8) |
         std::uint32_t(b[at + 3]);
}

// Checks the header of an IDX file of `rank` dimensions and returns them; the data follow.
std::vector<std::uint64_t> idx_header(const std::vector<std::uint8_t>& b, const std::string& path, std::uint32_t magic,
                                      int rank, const char* what) {
  // The magic first: a swapped images/labels pair should say so, not "truncated".
  const std::size_t header = 4 + 4 * std::size_t(rank);
  JEM_CHECK(b.size() >= 4, path, ": truncated: ", b.size(), " bytes, shorter than an IDX magic number");
  JEM_CHECK(be32(b, 0) == magic, path, ": wrong magic number ", hex32(be32(b, 0)), ", expected ", hex32(magic),
            " (IDX ", what, ")");
  JEM_CHECK(b.size() >= header, path, ": truncated: ", b.size(), " bytes, shorter than the IDX header (", header,
            " bytes)");
  std::vector<std::uint64_t> dims;
  std::uint64_t items = 1;
  for (int d = 0; d < rank; ++d) {
    dims.push_back(be32(b, 4 + 4 * std::size_t(d)));
    JEM_CHECK(dims.back() > 0 && dims.back() < (1u << 31), path, ": dimension ", d, " is ", dims.back());
    // Three dimensions below 2^31 can multiply past 2^64 and wrap to a small size that the
    // length checks below would accept (found by fuzz_idx: corpus idx/regress_dims_wrap_to_zero).
    JEM_CHECK(!__builtin_mul_overflow(items, dims.back(), &items), path, ": truncated: the header's dimensions need more",
              " than 2^64 bytes of ", what);
  }
  JEM_CHECK(b.size() >= header + items, path, ": truncated: the header says ", items, " bytes of ", what,
            ", the file has ", b.size() - header);
  JEM_CHECK(b.size() == header + items, path, ": ", b.size() - header - items,
            " unexpected bytes after the data the header describes");
  return dims;
}

}  // namespace

Dataset read_idx(const std::string& images_path, const std::string& labels_path, int classes) {
  JEM_CHECK(classes > 0 && classes <= 256, "read_idx: classes must be in [1, 256], got ", classes);
  const std::vector<std::uint8_t> ib = read_maybe_gzip(images_path);
  const std::vector<std::uint8_t> lb = read_maybe_gzip(labels_path);
  const auto idims = idx_header(ib, images_path, kImagesMagic, 3, "images");
  const auto ldims = idx_header(lb, labels_path, kLabelsMagic, 1, "labels");
  JEM_CHECK(idims[0] == ldims[0], images_path, " has ", idims[0], " images but ", labels_path, " has ", ldims[0],
            " labels");

  Dataset d;
  d.name = detail::base_name(images_path);
  d.count = static_cast<int>(idims[0]);
  d.channels = 1;
  d.height = static_cast<int>(idims[1]);
  d.width = static_cast<int>(idims[2]);
  d.classes = classes;
  d.images.assign(ib.begin() + 16, ib.end());  // IDX rows are already [N, H, W] with C = 1
  d.labels.assign(lb.begin() + 8, lb.end());
  detail::check_labels(d.labels.data(), d.labels.size(), classes, labels_path);
  return d;
}

}  // namespace jem
