// CIFAR-10 and CIFAR-100 binary versions: fixed-size records, label byte(s) then 3 x 32 x 32
// pixels already in CHW order (R plane, G plane, B plane, each row-major).
#include <cstring>

#include "jem/datasets.hpp"
#include "jem/error.hpp"

namespace jem {
namespace {

constexpr int kSide = 32, kChannels = 3, kPixels = kChannels * kSide * kSide;  // 3072

// Reads records of `label_bytes` label bytes + 3072 pixels; keeps the label at `label_at`.
Dataset read_cifar(const std::vector<std::string>& files, int label_bytes, int label_at, int classes,
                   const std::string& name, const char* how_to_get) {
  JEM_CHECK(!files.empty(), name, ": no files given");
  const std::size_t record = std::size_t(label_bytes) + kPixels;
  Dataset d;
  d.name = name;
  d.channels = kChannels;
  d.height = d.width = kSide;
  d.classes = classes;
  for (const std::string& path : files) {
    const std::vector<std::uint8_t> b = detail::read_file_bytes(path, how_to_get);
    JEM_CHECK(!b.empty() && b.size() % record == 0, path, ": size ", b.size(), " is not a positive multiple of the ",
              record, "-byte ", name, " record (truncated, or not a ", name, " binary file)");
    const std::size_t n = b.size() / record;
    const std::size_t first = d.labels.size();
    d.images.resize((first + n) * kPixels);
    d.labels.resize(first + n);
    for (std::size_t i = 0; i < n; ++i) {
      const std::uint8_t* r = b.data() + i * record;
      d.labels[first + i] = r[label_at];
      std::memcpy(d.images.data() + (first + i) * kPixels, r + label_bytes, kPixels);
    }
    // Labels of this file only, so that the error names the right file.
    detail::check_labels(d.labels.data() + first, n, classes, path);
  }
  JEM_CHECK(d.labels.size() < (1u << 31), name, ": too many records");
  d.count = static_cast<int>(d.labels.size());
  return d;
}

}  // namespace

Dataset read_cifar10(const std::vector<std::string>& batch_files) {
  return read_cifar(batch_files, 1, 0, 10, "cifar10",
                    "get cifar-10-binary.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html");
}

Dataset read_cifar100(const std::vector<std::string>& files, bool fine_labels) {
  return read_cifar(files, 2, fine_labels ? 1 : 0, fine_labels ? 100 : 20, fine_labels ? "cifar100" : "cifar100-coarse",
                    "get cifar-100-binary.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html");
}

}  // namespace jem
