// Fuzz target: safetensors::File::from_bytes and every typed accessor on every
// tensor it accepts.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "fuzz_support.hpp"
#include "jem/error.hpp"
#include "jem/safetensors.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const auto f = jem::safetensors::File::from_bytes(std::vector<std::uint8_t>(data, data + size), "fuzz");
    for (const auto& name : f.names()) {
      const auto& t = f.info(name);
      // Each accessor either copies exactly the tensor's bytes or throws (wrong
      // dtype).
      try {
        if (f.f32(name).size() * (t.dtype == "F64" ? 8 : 4) != t.end - t.begin) __builtin_trap();
      } catch (const jem::Error& e) {
        jem::fuzz::rejected(e);
      }
      try {
        if (f.i64(name).size() * 8 != t.end - t.begin) __builtin_trap();
      } catch (const jem::Error& e) {
        jem::fuzz::rejected(e);
      }
      try {
        if (f.i32(name).size() * 4 != t.end - t.begin) __builtin_trap();
      } catch (const jem::Error& e) {
        jem::fuzz::rejected(e);
      }
      try {
        if (f.u8(name).size() != t.end - t.begin) __builtin_trap();
      } catch (const jem::Error& e) {
        jem::fuzz::rejected(e);
      }
      try {
        (void)f.f32_checked(name, t.shape);
      } catch (const jem::Error& e) {
        jem::fuzz::rejected(e);
      }
    }
  } catch (const jem::Error& e) {
    jem::fuzz::rejected(e);
  }
  return 0;
}
