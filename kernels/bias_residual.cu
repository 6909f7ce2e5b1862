// A convolution's unfused epilogue: y = (y + b[c]) + z in one pass, and, where the model's
// LeakyReLU follows (conv2 with its residual, the stem), act = leaky_relu(y) in the same pass, so
// that the activation costs one more write instead of a pass that reads y again. ConvEngine runs
// it after the searched cuDNN algorithm: with a residual when cuDNN's fused bias + residual call
// is slower (the timed choice, cudnn_conv.hpp), and always for the stem's bias + activation; the
// CPU backend adds both inside its convolution. b, z and act may each be
// null (no term, no activation). As in activation.cu, a thread moves a float4 per turn where sizes
// and addresses allow, else one float.
#include "jem/elementwise_math.hpp"
#include "kernel_util.cuh"
#include "kernels.hpp"

namespace jem::kernels {
namespace {

// One element: the order of cuDNN's unfused ops (conv + bias, then + z); a missing term is not
// added (so a -0 stays -0, as on the CPU).
__device__ __forceinline__ float epilogue(float y, const float* b, std::uint32_t c, const float* z,
                                          std::int64_t i) {
  if (b) y += b[c];
  if (z) y += z[i];
  return y;
}

// Element i lies in plane i / HW, whose channel is plane % C (32-bit division, as in
// activation.cu; the host checks that the index fits).
__global__ void bias_residual_add_kernel(std::uint32_t n, std::uint32_t C, std::uint32_t HW,
                                         const float* b, const float* z, float* y, float* act,
                                         float slope) {
  for (std::int64_t i = global_thread(); i < n; i += grid_stride()) {
    const float v = epilogue(y[i], b, (std::uint32_t(i) / HW) % C, z, i);
    if (b || z) y[i] = v;
    if (act) act[i] = leaky_relu(v, slope);
  }
}

// The four elements of a float4 through epilogue(): channels c[0..3], z's float4 zv.
__device__ __forceinline__ float4 epilogue4(float4 v, const float* b, const std::uint32_t (&c)[4],
                                            const float4* z, std::int64_t i) {
  if (b) {
    v.x += b[c[0]];
    v.y += b[c[1]];
    v.z += b[c[2]];
    v.w += b[c[3]];
  }
  if (z) {
    const float4 zv = z[i];
    v.x += zv.x;
    v.y += zv.y;
    v.z += zv.z;
    v.w += zv.w;
  }
  return v;
}

__device__ __forceinline__ float4 leaky_relu4(float4 v, float slope) {
  v.x = leaky_relu(v.x, slope);
  v.y = leaky_relu(v.y, slope);
  v.z = leaky_relu(v.z, slope);
  v.w = leaky_relu(v.w, slope);
  return v;
}

// The same over float4s, HW4 = HW / 4 of them per plane (HW a multiple of 4: one channel each).
__global__ void bias_residual_add_vec4_kernel(std::uint32_t n4, std::uint32_t C, std::uint32_t HW4,
                                              const float* b, const float4* z, float4* y,
                                              float4* act, float slope) {
  for (std::int64_t i = global_thread(); i < n4; i += grid_stride()) {
    const std::uint32_t c = (std::uint32_t(i) / HW4) % C;
    const float4 v = epilogue4(y[i], b, {c, c, c, c}, z, i);
    if (b || z) y[i] = v;
    if (act) act[i] = leaky_relu4(v, slope);
  }
}

// Channels-last (NHWC: HW = 1 at the launcher, element i is channel i % C) over float4s, C a
// multiple of 4: the four elements of a float4 are channels c..c+3 of one pixel.
__global__ void bias_residual_add_cl4_kernel(std::uint32_t n4, std::uint32_t C, const float* b,
                                             const float4* z, float4* y, float4* act, float slope) {
  for (std::int64_t i = global_thread(); i < n4; i += grid_stride()) {
    const std::uint32_t c = (std::uint32_t(i) * 4u) % C;
    const float4 v = epilogue4(y[i], b, {c, c + 1, c + 2, c + 3}, z, i);
    if (b || z) y[i] = v;
    if (act) act[i] = leaky_relu4(v, slope);
  }
}

}  // namespace

void bias_residual_add_leaky_relu(int N, int C, std::int64_t HW, const float* b, const float* z,
                                  float* y, float* act, float slope, cudaStream_t stream) {
  const std::int64_t n = std::int64_t(N) * C * HW;
  if (n <= 0 || (!b && !z && !act)) return;
  JEM_CHECK(n <= std::int64_t(0xFFFFFFFF), "bias_residual_add: ", n,
            " elements exceed the kernel's 32-bit index");
  auto* z4 = reinterpret_cast<const float4*>(z);
  auto* y4 = reinterpret_cast<float4*>(y);
  auto* act4 = reinterpret_cast<float4*>(act);
  if (vectorizable4(HW, {z, y, act})) {
    const std::int64_t n4 = n / 4;
    JEM_LAUNCH(bias_residual_add_vec4_kernel, grid_for(n4), kThreads, stream)(
        std::uint32_t(n4), std::uint32_t(C), std::uint32_t(HW / 4), b, z4, y4, act4, slope);
  } else if (HW == 1 && C % 4 == 0 && vectorizable4(n, {z, y, act})) {
    const std::int64_t n4 = n / 4;
    JEM_LAUNCH(bias_residual_add_cl4_kernel, grid_for(n4), kThreads, stream)(
        std::uint32_t(n4), std::uint32_t(C), b, z4, y4, act4, slope);
  } else {
    JEM_LAUNCH(bias_residual_add_kernel, grid_for(n), kThreads, stream)(
        std::uint32_t(n), std::uint32_t(C), std::uint32_t(HW), b, z, y, act, slope);
  }
  JEM_CUDA_CHECK_LAUNCH();
}

void bias_residual_add(int N, int C, std::int64_t HW, const float* b, const float* z, float* y,
                       cudaStream_t stream) {
  bias_residual_add_leaky_relu(N, C, HW, b, z, y, nullptr, 0.0f, stream);
}

}  // namespace jem::kernels
