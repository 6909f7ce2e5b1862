// A convolution's unfused epilogue with a residual: y += b[c] + z, one pass. ConvEngine runs it
// after the searched cuDNN algorithm when cuDNN's fused bias + residual call is slower
// (cudnn_conv.hpp); the CPU backend adds both inside its convolution. As in activation.cu, a
// thread moves a float4 per turn where sizes and addresses allow, else one float.
#include "kernel_util.cuh"
#include "kernels.hpp"

namespace jem::kernels {
namespace {

// Element i lies in plane i / HW, whose channel is plane % C (32-bit division, as in
// activation.cu; the host checks that the index fits). b may be null.
__global__ void bias_residual_add_kernel(std::uint32_t n, std::uint32_t C, std::uint32_t HW,
                                         const float* b, const float* z, float* y) {
  for (std::int64_t i = global_thread(); i < n; i += grid_stride()) {
    const float bias = b ? b[(std::uint32_t(i) / HW) % C] : 0.0f;
    y[i] = (y[i] + bias) + z[i];  // the order of cuDNN's unfused ops: conv + bias, then + z
  }
}

// The same over float4s, HW4 = HW / 4 of them per plane (HW a multiple of 4).
__global__ void bias_residual_add_vec4_kernel(std::uint32_t n4, std::uint32_t C, std::uint32_t HW4,
                                              const float* b, const float4* z, float4* y) {
  for (std::int64_t i = global_thread(); i < n4; i += grid_stride()) {
    const float bias = b ? b[(std::uint32_t(i) / HW4) % C] : 0.0f;
    const float4 zv = z[i];
    float4 v = y[i];
    v.x = (v.x + bias) + zv.x;
    v.y = (v.y + bias) + zv.y;
    v.z = (v.z + bias) + zv.z;
    v.w = (v.w + bias) + zv.w;
    y[i] = v;
  }
}

// Channels-last (NHWC: HW = 1 at the launcher, element i is channel i % C) over float4s, C a
// multiple of 4: the four elements of a float4 are channels c..c+3 of one pixel.
__global__ void bias_residual_add_cl4_kernel(std::uint32_t n4, std::uint32_t C, const float* b,
                                             const float4* z, float4* y) {
  for (std::int64_t i = global_thread(); i < n4; i += grid_stride()) {
    const std::uint32_t c = (std::uint32_t(i) * 4u) % C;
    const float4 zv = z[i];
    float4 v = y[i];
    v.x = (v.x + (b ? b[c] : 0.0f)) + zv.x;
    v.y = (v.y + (b ? b[c + 1] : 0.0f)) + zv.y;
    v.z = (v.z + (b ? b[c + 2] : 0.0f)) + zv.z;
    v.w = (v.w + (b ? b[c + 3] : 0.0f)) + zv.w;
    y[i] = v;
  }
}

}  // namespace

void bias_residual_add(int N, int C, std::int64_t HW, const float* b, const float* z, float* y,
                       cudaStream_t stream) {
  const std::int64_t n = std::int64_t(N) * C * HW;
  if (n <= 0) return;
  JEM_CHECK(n <= std::int64_t(0xFFFFFFFF), "bias_residual_add: ", n,
            " elements exceed the kernel's 32-bit index");
  if (vectorizable4(HW, {z, y})) {
    const std::int64_t n4 = n / 4;
    JEM_LAUNCH(bias_residual_add_vec4_kernel, grid_for(n4), kThreads, stream)(
        std::uint32_t(n4), std::uint32_t(C), std::uint32_t(HW / 4), b,
        reinterpret_cast<const float4*>(z), reinterpret_cast<float4*>(y));
  } else if (HW == 1 && C % 4 == 0 && vectorizable4(n, {z, y})) {
    const std::int64_t n4 = n / 4;
    JEM_LAUNCH(bias_residual_add_cl4_kernel, grid_for(n4), kThreads, stream)(
        std::uint32_t(n4), std::uint32_t(C), b, reinterpret_cast<const float4*>(z),
        reinterpret_cast<float4*>(y));
  } else {
    JEM_LAUNCH(bias_residual_add_kernel, grid_for(n), kThreads, stream)(
        std::uint32_t(n), std::uint32_t(C), std::uint32_t(HW), b, z, y);
  }
  JEM_CUDA_CHECK_LAUNCH();
}

}  // namespace jem::kernels
