// Versions of the CUDA libraries linked in; none of these calls needs a GPU.
#include <cublas_v2.h>
#ifdef JEM_HAVE_CUDNN
#include <cudnn.h>
#endif
#ifdef JEM_HAVE_NCCL
#include <nccl.h>
#endif

#include <string>
#include <vector>

namespace jem::cuda {

std::string runtime_version();

std::vector<std::string> library_versions() {
  std::vector<std::string> out;
  out.push_back("CUDA runtime " + runtime_version());
  int major = 0, minor = 0, patch = 0;
  cublasGetProperty(MAJOR_VERSION, &major);
  cublasGetProperty(MINOR_VERSION, &minor);
  cublasGetProperty(PATCH_LEVEL, &patch);
  out.push_back("cuBLAS " + std::to_string(major) + "." + std::to_string(minor) + "." +
                std::to_string(patch));
#ifdef JEM_HAVE_CUDNN
  const auto v = cudnnGetVersion();  // e.g. 91000 for 9.10.0
  out.push_back("cuDNN " + std::to_string(v / 10000) + "." + std::to_string((v % 10000) / 100) +
                "." + std::to_string(v % 100));
#endif
#ifdef JEM_HAVE_NCCL
  int nv = 0;
  ncclGetVersion(&nv);
  out.push_back("NCCL " + std::to_string(nv / 10000) + "." + std::to_string((nv % 10000) / 100) +
                "." + std::to_string(nv % 100));
#endif
  return out;
}

}  // namespace jem::cuda
