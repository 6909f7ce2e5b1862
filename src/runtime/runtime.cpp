// Build information, device discovery and backend selection.
#include "jem/runtime.hpp"

#include <CLI/Version.hpp>
#include <cblas.h>
#include <matio.h>
#include <omp.h>
#include <png.h>
#include <zlib.h>

#include <cstdio>
#include <nlohmann/json.hpp>
#include <sstream>

namespace jem {

#ifdef JEM_HAVE_CUDA
namespace cuda {
std::vector<CudaDeviceInfo> query_devices(std::string* why_none);
std::vector<std::string> library_versions();
// cuda/cuda_backend.hpp: the CUDA backend on device `device` (math mode from JEM_CUDA_MATH, else
// TF32 on sm_80+ and FP32 before).
std::unique_ptr<Backend> make_cuda_backend(int device);
}  // namespace cuda
bool built_with_cuda() { return true; }
std::vector<CudaDeviceInfo> cuda_devices(std::string* why_none) {
  return cuda::query_devices(why_none);
}
#else
bool built_with_cuda() { return false; }
std::vector<CudaDeviceInfo> cuda_devices(std::string* why_none) {
  if (why_none) *why_none = "this jem was built without CUDA (JEM_CUDA=OFF or no nvcc)";
  return {};
}
#endif

std::vector<std::string> library_versions() {
  std::vector<std::string> out;
  out.push_back(std::string("OpenBLAS: ") + openblas_get_config());
  int mj = 0, mn = 0, rl = 0;
  Mat_GetLibraryVersion(&mj, &mn, &rl);
  out.push_back("matio " + std::to_string(mj) + "." + std::to_string(mn) + "." + std::to_string(rl));
  out.push_back(std::string("zlib ") + zlibVersion());
  out.push_back(std::string("libpng ") + png_get_libpng_ver(nullptr));
  out.push_back(std::string("CLI11 ") + CLI11_VERSION);
  out.push_back("nlohmann_json " + std::to_string(NLOHMANN_JSON_VERSION_MAJOR) + "." +
                std::to_string(NLOHMANN_JSON_VERSION_MINOR) + "." +
                std::to_string(NLOHMANN_JSON_VERSION_PATCH));
#ifdef JEM_HAVE_CUDA
  for (auto& s : cuda::library_versions()) out.push_back(s);
#endif
  return out;
}

std::string info_report() {
  std::ostringstream os;
  os << "jem " << JEM_VERSION << "\n";
  os << "build: CUDA backend " << (built_with_cuda() ? "yes" : "no");
#ifdef JEM_CUDA_ARCHITECTURES
  os << " (sm " << JEM_CUDA_ARCHITECTURES << ")";
#endif
  os << "\n";
  os << "cpu: " << omp_get_max_threads() << " OpenMP threads (OMP_NUM_THREADS or --threads to change)\n";
  std::string why;
  const auto devices = cuda_devices(&why);
  if (devices.empty()) {
    os << "cuda: no CUDA device (" << why << ")\n";
  } else {
    for (const auto& d : devices) {
      char mem[32];
      std::snprintf(mem, sizeof mem, "%.1f GiB", double(d.memory_bytes) / (1024.0 * 1024 * 1024));
      os << "cuda:" << d.index << ": " << d.name << ", sm_" << d.cc_major << d.cc_minor << ", "
         << mem << ", " << d.multiprocessors << " SMs\n";
    }
  }
  os << "libraries:\n";
  for (const auto& l : library_versions()) os << "  " << l << "\n";
  return os.str();
}

std::unique_ptr<Backend> make_backend(const std::string& device, int cpu_threads) {
  if (device == "cpu") return make_cpu_backend(cpu_threads);
  const bool is_auto = device == "auto";
  const bool is_cuda = device == "cuda" || device.rfind("cuda:", 0) == 0;
  JEM_CHECK(is_auto || is_cuda, "--device '", device, "': expected auto, cpu, cuda or cuda:N");
  std::string why;
  const auto devices = cuda_devices(&why);
  if (devices.empty()) {
    if (is_auto) {
      std::fprintf(stderr, "jem: no usable CUDA device (%s); running on the CPU\n", why.c_str());
      return make_cpu_backend(cpu_threads);
    }
    JEM_FAIL("--device ", device, ": no usable CUDA device (", why, ")");
  }
#ifdef JEM_HAVE_CUDA
  // "auto" takes the first GPU; if it cannot be initialised, the CPU (with a notice).
  if (is_auto) {
    try {
      return cuda::make_cuda_backend(0);
    } catch (const Error& e) {
      std::fprintf(stderr, "jem: cuda:0 is unusable (%s); running on the CPU\n", e.what());
      return make_cpu_backend(cpu_threads);
    }
  }
  // "cuda" is cuda:0; "cuda:N" needs N to be a device index in range.
  int index = 0;
  if (device != "cuda") {
    const std::string digits = device.substr(5);
    const bool numeric = !digits.empty() && digits.size() <= 6 &&
                         digits.find_first_not_of("0123456789") == std::string::npos;
    JEM_CHECK(numeric, "--device '", device, "': expected cuda:N with N a device index");
    index = std::stoi(digits);
  }
  const int count = static_cast<int>(devices.size());
  JEM_CHECK(index < count, "--device ", device, ": no such CUDA device (", count, " found: cuda:0",
            count > 1 ? " to cuda:" + std::to_string(count - 1) : std::string(), ")");
  return cuda::make_cuda_backend(index);
#else
  JEM_FAIL("--device ", device, ": this jem was built without CUDA");
#endif
}

}  // namespace jem
