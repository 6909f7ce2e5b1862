// Launchers of the CUDA backend's own kernels (one op family per .cu file). Plain C++: the host
// side (cuda/*.cpp) includes this without nvcc. Every launcher enqueues on `stream`, returns
// without waiting, does nothing for empty inputs, and throws jem::Error on a launch error.
//
// The per-element math is the JEM_HD functions of include/jem/*_math.hpp and philox.hpp, the
// same code the CPU backend runs.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "jem/backend.hpp"

namespace jem::kernels {

// ---- device-side errors ------------------------------------------------------------------------
// A kernel that finds bad input it cannot throw for (a label or buffer slot out of range, known
// only on the device) writes the first such error into the backend's 4-word error record
// {code, row, value, 0} and leaves NaN in the affected outputs; the backend reads the record at
// its next synchronisation point and throws there.
enum DeviceErrorCode : int {
  kNoError = 0,
  kCrossEntropyLabel = 1,
  kClassEnergyLabel = 2,
  kGatherSlot = 3,
  kScatterSlot = 4,
};
constexpr int kErrorWords = 4;

// ---- elementwise.cu ----------------------------------------------------------------------------
void fill_f32(float* p, std::int64_t n, float value, cudaStream_t stream);
void fill_i32(std::int32_t* p, std::int64_t n, std::int32_t value, cudaStream_t stream);
// memmove semantics: dst and src may overlap.
void copy_f32(const float* src, float* dst, std::int64_t n, cudaStream_t stream);
void axpy(float alpha, const float* x, float* y, std::int64_t n, cudaStream_t stream);
void add(const float* a, const float* b, float* y, std::int64_t n, cudaStream_t stream);
void scale(float* x, std::int64_t n, float alpha, cudaStream_t stream);

// ---- activation.cu: the activation passes of the Wide-ResNet (see Backend) ---------------------
// y = leaky_relu(x), dx = leaky_relu_grad(x, dy) (y may be x, dx may be dy).
void leaky_relu_forward(const float* x, float* y, std::int64_t n, float slope, cudaStream_t stream);
void leaky_relu_backward(const float* x, const float* dy, float* dx, std::int64_t n, float slope,
                         cudaStream_t stream);
// y[p, i] = leaky_relu(x[p, i] + b[p % C]) over planes p < `planes` of HW elements (y may be x).
// Channels-last tensors (NHWC) are planes = N * H * W * C of HW = 1 element: channel i % C.
void bias_leaky_relu_forward(std::int64_t planes, int C, std::int64_t HW, const float* x,
                             const float* b, float* y, float slope, cudaStream_t stream);
// dx = leaky_relu_grad(x, dy) + other (dx may be dy or other).
void leaky_relu_backward_add(std::int64_t n, const float* x, const float* dy, const float* other,
                             float* dx, float slope, cudaStream_t stream);

// ---- bias_residual.cu: a convolution's unfused epilogue (cudnn_conv.cpp) -----------------------
// y[n, c, i] = (y[n, c, i] + b[c]) + z[n, c, i] over N images of C planes of HW elements (b, z
// may be null: no such term). Channels-last tensors (NHWC): N * H * W "images" of C planes of
// HW = 1 element.
void bias_residual_add(int N, int C, std::int64_t HW, const float* b, const float* z, float* y,
                       cudaStream_t stream);
// The same, and act = leaky_relu(y) in the same pass when act is not null (act must not overlap
// y, b or z).
void bias_residual_add_leaky_relu(int N, int C, std::int64_t HW, const float* b, const float* z,
                                  float* y, float* act, float slope, cudaStream_t stream);

// ---- pool.cu -----------------------------------------------------------------------------------
void global_avg_pool_forward(int N, int C, int HW, const float* x, float* y, cudaStream_t stream);
void global_avg_pool_backward(int N, int C, int HW, const float* dy, float* dx,
                              cudaStream_t stream);
// The same for channels-last x [N, HW, C] (NHWC); y and dy stay [N, C]. The forward sums each
// (n, c) in the NCHW kernel's order (32 lane-strided partials, then the butterfly), so both
// layouts give the same bits.
void global_avg_pool_forward_nhwc(int N, int C, int HW, const float* x, float* y,
                                  cudaStream_t stream);
void global_avg_pool_backward_nhwc(int N, int C, int HW, const float* dy, float* dx,
                                   cudaStream_t stream);

// ---- layout.cu: NCHW <-> NHWC ------------------------------------------------------------------
// dst[n, j, i] = src[n, i, j] for n < N, i < A, j < B: N matrices [A, B] to their transposes.
// NCHW -> NHWC is (N, A = C, B = H * W), NHWC -> NCHW (N, A = H * W, B = C), KCRS filters to
// KRSC (K, C, R * S). src and dst must not overlap. With `accumulate`, dst += the transpose (a
// KRSC weight gradient added into the KCRS gradient buffer).
void batched_transpose(std::int64_t N, std::int64_t A, std::int64_t B, const float* src, float* dst,
                       bool accumulate, cudaStream_t stream);

// ---- image_ops.cu (inference only: the FID Inception network) ---------------------------------
void max_pool2d_forward(const PoolGeom& g, const float* x, float* y, cudaStream_t stream);
void avg_pool2d_forward(const PoolGeom& g, const float* x, float* y, cudaStream_t stream);
void resize_bilinear_forward(std::int64_t NC, int H, int W, int P, int Q, const float* x, float* y,
                             cudaStream_t stream);
void copy_channels(int N, int Cs, int Cd, std::int64_t HW, int offset, const float* src, float* dst,
                   cudaStream_t stream);

// ---- linear.cu (the parts of the linear layer that are not GEMMs) ------------------------------
// y[n, o] = b[o] for every row n.
void broadcast_rows(int N, int O, const float* b, float* y, cudaStream_t stream);
// db[o] += sum_n dy[n, o], summed in row order.
void column_sums_accumulate(int N, int O, const float* dy, float* db, cudaStream_t stream);

// ---- energy.cu ---------------------------------------------------------------------------------
// sq_scale == 0 and squared == false: the plain energy; see Backend for the formulas.
void energy_forward_backward(int N, int K, const float* logits, float* energy, float* dlogits,
                             float grad_scale, float sq_scale, bool squared, cudaStream_t stream);
void cross_entropy_forward_backward(int N, int K, const float* logits, const std::int32_t* labels,
                                    float* loss, float* dlogits, float grad_scale, int* error,
                                    cudaStream_t stream);
void class_energy_forward_backward(int N, int K, const float* logits, const std::int32_t* labels,
                                   float* energy, float* dlogits, float grad_scale, int* error,
                                   cudaStream_t stream);

// ---- sampler.cu --------------------------------------------------------------------------------
// `slots`: rows of the buffer that may be read or written (indices outside [0, slots) are
// reported through `error`).
// `live_key` (device memory, or null): where the kernel reads the noise key's seed, iteration and
// sample_base when it runs, instead of from `key` (whose step it still uses). A launch captured
// in a CUDA Graph is replayed with its arguments as they were at capture; the key it reads
// through live_key follows the replays (write_noise_key before each).
void buffer_gather(int B, std::int64_t per, const float* buffer, std::int64_t slots,
                   const std::int32_t* index, const std::int32_t* reinit, float* out,
                   const NoiseKey& key, int* error, cudaStream_t stream,
                   const NoiseKey* live_key = nullptr);
void buffer_scatter(int B, std::int64_t per, const float* x, const std::int32_t* index,
                    float* buffer, std::int64_t slots, int* error, cudaStream_t stream);
void sgld_step(int B, std::int64_t per, float* x, const float* grad, float step_size,
               float noise_std, bool clamp, const NoiseKey& key, cudaStream_t stream,
               const NoiseKey* live_key = nullptr);
// *dst = key, in stream order (one thread; the key travels as a kernel argument, so the host may
// change its copy at once).
void write_noise_key(NoiseKey* dst, const NoiseKey& key, cudaStream_t stream);

// ---- optim.cu ----------------------------------------------------------------------------------
void adam_step(std::int64_t n, float* p, const float* g, float* m, float* v, const AdamStep& step,
               cudaStream_t stream);
void sgd_step(std::int64_t n, float* p, const float* g, float* buf, float lr, float momentum,
              float weight_decay, cudaStream_t stream);
// Elements per first-pass chunk of sum_squares, and the scratch it needs: one double per chunk.
constexpr std::int64_t kSumSquaresChunk = 4096;
std::int64_t sum_squares_partials(std::int64_t n);
// result[0] = sum_i x_i^2 in double, in a fixed order that depends on n only. `partials` holds
// sum_squares_partials(n) doubles.
void sum_squares(std::int64_t n, const float* x, double* partials, double* result,
                 cudaStream_t stream);

}  // namespace jem::kernels
