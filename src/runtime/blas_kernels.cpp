// See jem/blas_kernels.hpp.
#include "jem/blas_kernels.hpp"

#include <unistd.h>

#include <cblas.h>

#include <cstdlib>

namespace jem {

std::string openblas_coretype_for(const std::string& corename, bool avx2_fma, bool avx512) {
  if (corename != "Prescott" || !avx2_fma) return "";
  return avx512 ? "SkylakeX" : "Haswell";
}

std::string openblas_coretype_override() {
  if (std::getenv("OPENBLAS_CORETYPE") != nullptr) return "";
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  const bool avx2_fma = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
  const char* core = openblas_get_corename();
  return openblas_coretype_for(core ? core : "", avx2_fma, avx512);
#else
  return "";
#endif
}

void rerun_with_openblas_coretype(char** argv) {
  if (const std::string core = openblas_coretype_override(); !core.empty()) {
    ::setenv("OPENBLAS_CORETYPE", core.c_str(), 1);
    ::execv("/proc/self/exe", argv);
  }
}

}  // namespace jem
