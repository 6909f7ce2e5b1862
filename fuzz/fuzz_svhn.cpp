// Fuzz target: SVHN .mat reader (libmatio underneath: MATLAB v5, and v7.3 when
// matio has HDF5).
#include <cstddef>
#include <cstdint>

#include "fuzz_support.hpp"
#include "jem/datasets.hpp"
#include "jem/error.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string path = jem::fuzz::scratch_file("svhn.mat", data, size);
  try {
    const jem::Dataset d = jem::read_svhn_mat(path);
    if (!jem::fuzz::product_is(d.images.size(), std::size_t(d.count), 3, std::size_t(d.height), std::size_t(d.width)) ||
        d.labels.size() != std::size_t(d.count))
      __builtin_trap();
  } catch (const jem::Error& e) {
    jem::fuzz::rejected(e);
  }
  return 0;
}
