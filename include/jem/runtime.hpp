// What the running program has: the build's options, the CUDA devices, library versions, and
// the backend chosen by a --device string. This layer sits above the CPU and CUDA backends.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "jem/backend.hpp"

namespace jem {

struct CudaDeviceInfo {
  int index = 0;
  std::string name;
  int cc_major = 0, cc_minor = 0;
  std::size_t memory_bytes = 0;
  int multiprocessors = 0;
};

// Whether this binary contains the CUDA backend.
bool built_with_cuda();
// Usable CUDA devices; empty when none (or the build has no CUDA). `why_none` says why.
std::vector<CudaDeviceInfo> cuda_devices(std::string* why_none = nullptr);
// "name version" lines of every library linked in (OpenBLAS, CUDA runtime, cuDNN, ...).
std::vector<std::string> library_versions();
// Multi-line report printed by `jem info`.
std::string info_report();

// "cpu", "cuda", "cuda:N" or "auto" (the first GPU when one is usable, else the CPU with a
// one-line notice on stderr). Throws a clear error for an unusable request.
std::unique_ptr<Backend> make_backend(const std::string& device, int cpu_threads = 0);

}  // namespace jem
