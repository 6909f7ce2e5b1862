// Layout changes between NCHW and NHWC (and KCRS and KRSC filters): a batch of 2-D transposes.
// The CUDA backend keeps its activations channels-last when asked (JEM_CUDA_LAYOUT=nhwc, see
// cuda_backend.hpp) and converts at the edges: the images (3 channels, NCHW everywhere) into the
// stem convolution, the stem's input gradient back, and the KCRS filters of the flat parameter
// buffer to the KRSC ones cuDNN reads with NHWC tensors (and their gradients back).
//
// Every one of those matrices is thin (3 channels, or R * S = 9 or 1 filter taps), so a tiled
// shared-memory transpose would leave most of each 32 x 32 tile empty. One thread per output
// element instead: writes coalesced, reads strided by the thin dimension (at most 9 floats),
// whose sectors the neighbouring threads read too (from L2). A filter of WRN-28-10 (at most
// 14.7 MB) is transposed in microseconds.
#include "kernel_util.cuh"
#include "kernels.hpp"

namespace jem::kernels {
namespace {

// dst[m, j, i] (= dst element e, in order) = src[m, i, j]; 32-bit index arithmetic (the host
// checks that it fits: a 64-bit division per element would cost more than the memory traffic).
__global__ void transpose_kernel(std::uint32_t n, std::uint32_t A, std::uint32_t B,
                                 const float* src, float* dst, bool accumulate) {
  const std::uint32_t AB = A * B;
  for (std::int64_t e = global_thread(); e < n; e += grid_stride()) {
    const std::uint32_t m = std::uint32_t(e) / AB, r = std::uint32_t(e) % AB;
    const std::uint32_t j = r / A, i = r % A;
    const float v = src[std::int64_t(m) * AB + std::int64_t(i) * B + j];
    dst[e] = accumulate ? dst[e] + v : v;
  }
}

}  // namespace

void batched_transpose(std::int64_t N, std::int64_t A, std::int64_t B, const float* src, float* dst,
                       bool accumulate, cudaStream_t stream) {
  if (N <= 0 || A <= 0 || B <= 0) return;
  const std::int64_t n = N * A * B;
  JEM_CHECK(n <= std::int64_t(0xFFFFFFFF), "batched_transpose: ", n,
            " elements exceed the kernel's 32-bit index");
  JEM_LAUNCH(transpose_kernel, grid_for(n), kThreads, stream)(
      std::uint32_t(n), std::uint32_t(A), std::uint32_t(B), src, dst, accumulate);
  JEM_CUDA_CHECK_LAUNCH();
}

}  // namespace jem::kernels
