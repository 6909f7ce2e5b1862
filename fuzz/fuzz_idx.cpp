// Fuzz target: MNIST / Fashion-MNIST IDX reader (gzip or raw), read_idx.
// Input layout: byte 0 and 1 = little-endian length L of the labels file
// (clamped to what is there), then L bytes of labels file, then the images
// file. Both files are fuzzed together so that the count cross-check and the
// gzip path of each are reached.
#include <cstddef>
#include <cstdint>

#include "fuzz_support.hpp"
#include "jem/datasets.hpp"
#include "jem/error.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 2) return 0;
  std::size_t labels_len = std::size_t(data[0]) | (std::size_t(data[1]) << 8);
  data += 2;
  size -= 2;
  if (labels_len > size) labels_len = size;
  const std::string labels = jem::fuzz::scratch_file("idx_labels", data, labels_len);
  const std::string images = jem::fuzz::scratch_file("idx_images", data + labels_len, size - labels_len);
  try {
    const jem::Dataset d = jem::read_idx(images, labels, 10);
    // The reader promises consistent sizes: touch every byte it claims to hold.
    if (!jem::fuzz::product_is(d.images.size(), std::size_t(d.count), std::size_t(d.height), std::size_t(d.width)) ||
        d.labels.size() != std::size_t(d.count))
      __builtin_trap();
  } catch (const jem::Error& e) {
    jem::fuzz::rejected(e);
  }
  return 0;
}
