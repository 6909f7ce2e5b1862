// Shared by the fuzz targets in fuzz/: the readers under test take paths, so
// each input is written to a scratch file first. One file per tag and process:
// libFuzzer runs one input at a time per process, and -jobs/-workers start
// separate processes.
#pragma once

#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

#include "jem/error.hpp"

namespace jem::fuzz {

// Writes `size` bytes to <tmp>/jem_fuzz_<pid>_<tag> (replacing it) and returns
// the path.
inline std::string scratch_file(const std::string& tag, const std::uint8_t* data, std::size_t size) {
  const std::string path =
      (std::filesystem::temp_directory_path() / ("jem_fuzz_" + std::to_string(::getpid()) + "_" + tag)).string();
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f)
    std::abort();  // the scratch directory itself is broken: not the input's
                   // fault
  if (size != 0 && std::fwrite(data, 1, size, f) != size) std::abort();
  std::fclose(f);
  return path;
}

// a * b * c * d without wrapping around (a wrapped product could hide a short buffer).
inline bool product_is(std::size_t expected, std::size_t a, std::size_t b, std::size_t c, std::size_t d = 1) {
  std::size_t p = 0;
  return !__builtin_mul_overflow(a, b, &p) && !__builtin_mul_overflow(p, c, &p) && !__builtin_mul_overflow(p, d, &p) &&
         p == expected;
}

// A reader's expected rejection of a bad input. JEM_FUZZ_VERBOSE=1 prints it
// (to see which seeds a reader accepts and what it says about the others).
inline void rejected(const jem::Error& e) {
  if (std::getenv("JEM_FUZZ_VERBOSE")) std::fprintf(stderr, "rejected: %s\n", e.what());
}

}  // namespace jem::fuzz
