// Helpers shared by the data set readers.
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>

#include "jem/datasets.hpp"
#include "jem/error.hpp"

namespace jem::detail {

std::vector<std::uint8_t> read_file_bytes(const std::string& path, const std::string& how_to_get) {
  std::unique_ptr<FILE, int (*)(FILE*)> f(std::fopen(path.c_str(), "rb"), &std::fclose);
  JEM_CHECK(f, "cannot open ", path, ": ", std::strerror(errno),
            how_to_get.empty() ? std::string() : " (" + how_to_get + ")");
  std::vector<std::uint8_t> bytes;
  std::uint8_t chunk[1 << 16];
  std::size_t n;
  while ((n = std::fread(chunk, 1, sizeof chunk, f.get())) > 0) bytes.insert(bytes.end(), chunk, chunk + n);
  JEM_CHECK(!std::ferror(f.get()), "cannot read ", path, ": ", std::strerror(errno));
  return bytes;
}

void check_labels(const std::int32_t* labels, std::size_t count, int classes, const std::string& file) {
  for (std::size_t i = 0; i < count; ++i) {
    JEM_CHECK(labels[i] >= 0 && labels[i] < classes, file, ": label ", labels[i], " of item ", i, " is outside [0, ",
              classes, ")");
  }
}

std::string base_name(const std::string& path) {
  const auto slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

}  // namespace jem::detail
