// OpenBLAS's kernel set on CPUs it does not know.
//
// OpenBLAS picks its kernels (by CPU model) when the library loads, from the environment variable
// OPENBLAS_CORETYPE when that is set. Debian 12's 0.3.21 does not know the newest x86 models
// (Intel's Emerald Rapids, family 6 model 207, for one) and falls back to its generic "Prescott"
// (SSE3) kernels there: the quickstart iteration took 192-223 ms with them against 158-178 ms
// with the SkylakeX kernels on such a machine (2 threads, measured). The jem program therefore
// runs itself again with OPENBLAS_CORETYPE set when the library fell back on a CPU with AVX2 and
// FMA (rerun_with_openblas_coretype below; the CLI and the benchmark programs call it). Library
// users can set the variable themselves.
#pragma once

#include <string>

namespace jem {

// The kernel set OpenBLAS should be told to use: "" when `corename` (openblas_get_corename()) is
// not the Prescott fallback or the CPU has no AVX2 + FMA; else "SkylakeX" (AVX-512 F, BW, DQ
// and VL) or "Haswell".
std::string openblas_coretype_for(const std::string& corename, bool avx2_fma, bool avx512);

// The same for this process: its OpenBLAS and its CPU; "" also when OPENBLAS_CORETYPE is set.
std::string openblas_coretype_override();

// Call first thing in main(): when openblas_coretype_override() names a kernel set, sets
// OPENBLAS_CORETYPE and runs this program again with the same argv (it does not return then).
// The variable, once set, stops a second round; if the new image cannot start, this one goes on
// with the slower kernels. Used by the jem CLI and the benchmark programs.
void rerun_with_openblas_coretype(char** argv);

}  // namespace jem
