// Fuzz target: CIFAR-10 and CIFAR-100 binary readers on the same bytes.
#include <cstddef>
#include <cstdint>

#include "fuzz_support.hpp"
#include "jem/datasets.hpp"
#include "jem/error.hpp"

namespace {
void check(const jem::Dataset& d) {
  if (d.images.size() != std::size_t(d.count) * 3 * 32 * 32 || d.labels.size() != std::size_t(d.count))
    __builtin_trap();
  for (const auto y : d.labels)
    if (y < 0 || y >= d.classes) __builtin_trap();
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string path = jem::fuzz::scratch_file("cifar", data, size);
  try {
    check(jem::read_cifar10({path}));
  } catch (const jem::Error& e) {
    jem::fuzz::rejected(e);
  }
  try {
    check(jem::read_cifar100({path, path}, true));
  } catch (const jem::Error& e) {
    jem::fuzz::rejected(e);
  }
  try {
    check(jem::read_cifar100({path}, false));
  } catch (const jem::Error& e) {
    jem::fuzz::rejected(e);
  }
  return 0;
}
