// The CUDA backend: construction, memory, synchronisation, device-side error reports, and the
// ops that are one kernel launch each. Convolutions: cudnn_conv.cpp; linear: cuda_linear.cpp.
#include "cuda_backend.hpp"

#include <cublas_v2.h>
#include <cuda_profiler_api.h>

#include <cstdlib>
#include <cstring>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "conv_fusion.hpp"  // from_nchw / to_nchw: host-side layout changes
#include "cuda_check.hpp"
#include "cudnn_conv.hpp"
#include "kernels.hpp"

namespace jem::cuda {

MathMode default_math_mode(int device) {
  int major = 0;
  JEM_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  return major >= 8 ? MathMode::TF32 : MathMode::FP32;
}

CudaBackend::CudaBackend(int device, MathMode math, Layout layout)
    : device_(device), math_(math), layout_(layout) {
  int count = 0;
  JEM_CUDA_CHECK(cudaGetDeviceCount(&count));
  JEM_CHECK(device >= 0 && device < count, "cuda:", device, " does not exist (", count,
            " CUDA device", count == 1 ? "" : "s", " found)");
  JEM_CUDA_CHECK(cudaSetDevice(device_));
  cudaDeviceProp prop{};
  JEM_CUDA_CHECK(cudaGetDeviceProperties(&prop, device_));
  device_name_ = prop.name;
  cc_major_ = prop.major;
  cc_minor_ = prop.minor;
  sms_ = prop.multiProcessorCount;
  JEM_CHECK(math_ == MathMode::FP32 || cc_major_ >= 8, "cuda:", device_, " (", device_name_,
            ", sm_", cc_major_, cc_minor_, ") has no TF32 tensor cores: use FP32 math");

  // A constructor that throws runs no destructor: the catch below releases what was created.
  try {
    JEM_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    cublasHandle_t h = nullptr;
    JEM_CUBLAS_CHECK(cublasCreate(&h));
    cublas_ = h;
    JEM_CUBLAS_CHECK(cublasSetStream(cublas_, stream_));
    JEM_CUBLAS_CHECK(cublasSetMathMode(
        cublas_, math_ == MathMode::TF32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH));
    // cuBLAS's workspace is set explicitly, from the backend's counted memory. With its default
    // pool, cuBLAS takes workspace inside a CUDA Graph capture: before CUDA 12.2 a new one per
    // capture (PyTorch met the memory growth, pytorch#83461), since then stream-ordered
    // allocations inside the graph; either way memory the backend's plan does not see. A set
    // workspace is used as it is. The sizes cublasSetWorkspace's documentation recommends: 32 MiB
    // on Hopper and later, else 4 MiB. (cublasSetStream resets the workspace to the default
    // pool, hence after it.)
    const std::size_t cublas_ws = std::size_t(cc_major_ >= 9 ? 32 : 4) << 20;
    JEM_CUBLAS_CHECK(
        cublasSetWorkspace(cublas_, cublas_workspace_.ensure(cublas_ws, stream_), cublas_ws));
    conv_ = std::make_unique<ConvEngine>(stream_, math_);
    JEM_CUDA_CHECK(cudaMalloc(&error_dev_, kernels::kErrorWords * sizeof(int)));
    JEM_CUDA_CHECK(cudaMemsetAsync(error_dev_, 0, kernels::kErrorWords * sizeof(int), stream_));
    JEM_CUDA_CHECK(cudaMallocHost(&error_host_, kernels::kErrorWords * sizeof(int)));
    JEM_CUDA_CHECK(cudaMallocHost(&reduce_host_, sizeof(double)));
    JEM_CUDA_CHECK(cudaMalloc(&live_key_, sizeof(NoiseKey)));
    staging_ = std::make_unique<UploadStaging>();
    // sum_squares' partials for up to 2^28 elements (512 KiB): sized here, not at the first
    // gradient norm, which a training run first computes at iteration log_every, in its loop.
    (void)reduce_.ensure(std::size_t(kernels::sum_squares_partials(std::int64_t(1) << 28) + 1) * sizeof(double),
                         stream_);
    JEM_CUDA_CHECK(cudaStreamSynchronize(stream_));
  } catch (...) {
    release();
    throw;
  }
}

CudaBackend::~CudaBackend() { release(); }

void CudaBackend::release() noexcept {
  // Errors are ignored: a destructor must not throw, and at exit the context may be gone.
  (void)cudaSetDevice(device_);  // the handles are destroyed on the device that made them
  if (stream_) (void)cudaStreamSynchronize(stream_);
  conv_.reset();
  staging_.reset();
  if (cublas_) cublasDestroy(cublas_);
  cublas_ = nullptr;
  if (error_dev_) (void)cudaFree(error_dev_);
  error_dev_ = nullptr;
  if (error_host_) (void)cudaFreeHost(error_host_);
  error_host_ = nullptr;
  if (reduce_host_) (void)cudaFreeHost(reduce_host_);
  reduce_host_ = nullptr;
  if (live_key_) (void)cudaFree(live_key_);
  live_key_ = nullptr;
  if (stream_) (void)cudaStreamDestroy(stream_);
  stream_ = nullptr;
  (void)cudaGetLastError();
}

std::string CudaBackend::name() const {
  std::ostringstream os;
  os << "cuda:" << device_ << " (" << device_name_ << ", sm_" << cc_major_ << cc_minor_ << ", "
     << sms_ << " SMs, " << to_string(math_) << " math"
     << (layout_ == Layout::NHWC ? ", NHWC activations" : "")
     << (capture_enabled_ ? ", CUDA Graphs" : "") << ")";
  return os.str();
}

void CudaBackend::bind() const {
  int current = -1;
  JEM_CUDA_CHECK(cudaGetDevice(&current));
  if (current != device_) JEM_CUDA_CHECK(cudaSetDevice(device_));
}

void CudaBackend::check_on_device(const Tensor& t, const char* op) const {
  JEM_CHECK(t.defined() && t.device() == Device::CUDA, op, ": tensor must live on cuda");
}

void CudaBackend::sync_and_check() {
  JEM_CUDA_CHECK(cudaMemcpyAsync(error_host_, error_dev_, kernels::kErrorWords * sizeof(int),
                                 cudaMemcpyDeviceToHost, stream_));
  JEM_CUDA_CHECK(cudaStreamSynchronize(stream_));
  if (error_host_[0] == kernels::kNoError) return;
  const int code = error_host_[0], row = error_host_[1], value = error_host_[2];
  // Clear the record so that the backend stays usable after the error is handled.
  JEM_CUDA_CHECK(cudaMemsetAsync(error_dev_, 0, kernels::kErrorWords * sizeof(int), stream_));
  JEM_CUDA_CHECK(cudaStreamSynchronize(stream_));
  switch (code) {
    case kernels::kCrossEntropyLabel:
      JEM_FAIL("cross_entropy (cuda): label ", value, " of row ", row, " outside [0, classes)");
    case kernels::kClassEnergyLabel:
      JEM_FAIL("class_energy (cuda): label ", value, " of row ", row, " outside [0, classes)");
    case kernels::kGatherSlot:
      JEM_FAIL("buffer_gather (cuda): index[", row, "] = ", value, " outside the buffer");
    case kernels::kScatterSlot:
      JEM_FAIL("buffer_scatter (cuda): index[", row, "] = ", value, " outside the buffer");
    default:
      JEM_FAIL("cuda: unknown device-side error code ", code);
  }
}

std::int64_t CudaBackend::slots_in(const float* buffer, std::int64_t per) const {
  const std::size_t bytes = bytes_to_allocation_end(buffer);
  // Not from this backend's allocator (cannot happen through Tensor): leave it unbounded.
  if (bytes == 0) return std::numeric_limits<std::int32_t>::max();
  return per <= 0 ? 0 : std::int64_t(bytes / (std::size_t(per) * sizeof(float)));
}

// ---- memory --------------------------------------------------------------------------------------

Tensor CudaBackend::empty(Shape shape, DType dtype) {
  bind();
  const std::size_t bytes = std::size_t(shape.numel()) * dtype_size(dtype);
  void* p = device_alloc(bytes);
  auto storage = std::make_shared<Storage>(p, bytes, Device::CUDA, &device_free);
  // Zero-filled, as Backend::empty promises; stream-ordered before any op on the tensor.
  if (bytes > 0) JEM_CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, stream_));
  return Tensor(std::move(storage), 0, shape, dtype);
}

void CudaBackend::upload(const float* src, const Tensor& dst) {
  check_on_device(dst, "upload");
  bind();
  if (dst.bytes() == 0) return;
  if (dst.channels_last()) {  // the host's NCHW order, stored channels-last
    const std::vector<float> nhwc =
        from_nchw(std::vector<float>(src, src + dst.numel()), int(dst.dim(0)), int(dst.dim(1)),
                  int(dst.dim(2)), int(dst.dim(3)), Layout::NHWC);
    staging_->upload(dst.data<float>(), nhwc.data(), dst.bytes(), stream_);
    return;
  }
  staging_->upload(dst.data<float>(), src, dst.bytes(), stream_);
}

void CudaBackend::upload_i32(const std::int32_t* src, const Tensor& dst) {
  check_on_device(dst, "upload_i32");
  bind();
  if (dst.bytes() == 0) return;
  staging_->upload(dst.data<std::int32_t>(), src, dst.bytes(), stream_);
}

void CudaBackend::download(const Tensor& src, float* dst) {
  check_on_device(src, "download");
  bind();
  if (src.channels_last() && src.bytes() > 0) {  // returned in NCHW order
    std::vector<float> nhwc(std::size_t(src.numel()));
    JEM_CUDA_CHECK(cudaMemcpyAsync(nhwc.data(), src.data<float>(), src.bytes(),
                                   cudaMemcpyDeviceToHost, stream_));
    sync_and_check();
    const std::vector<float> nchw = to_nchw(nhwc, int(src.dim(0)), int(src.dim(1)),
                                            int(src.dim(2)), int(src.dim(3)), Layout::NHWC);
    std::memcpy(dst, nchw.data(), src.bytes());
    return;
  }
  if (src.bytes() > 0)
    JEM_CUDA_CHECK(cudaMemcpyAsync(dst, src.data<float>(), src.bytes(), cudaMemcpyDeviceToHost,
                                   stream_));
  sync_and_check();
}

void CudaBackend::synchronize() {
  bind();
  sync_and_check();
}

std::int64_t CudaBackend::device_memory_used_bytes() const {
  bind();
  std::size_t free_b = 0, total_b = 0;
  JEM_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
  return static_cast<std::int64_t>(total_b - free_b);
}

// Without a profiler attached these do nothing. A profiler's refusal must not stop a benchmark:
// its result is ignored (and cleared, so that the next check does not report it).
void CudaBackend::profiler_start() {
  bind();
  sync_and_check();  // the work before the range stays out of it
  (void)cudaProfilerStart();
  (void)cudaGetLastError();
}

void CudaBackend::profiler_stop() {
  bind();
  sync_and_check();
  (void)cudaProfilerStop();
  (void)cudaGetLastError();
}

// ---- elementwise ---------------------------------------------------------------------------------

void CudaBackend::fill_impl(const Tensor& t, float value) {
  bind();
  if (t.dtype() == DType::I32)
    kernels::fill_i32(t.data<std::int32_t>(), t.numel(), static_cast<std::int32_t>(value), stream_);
  else
    kernels::fill_f32(t.data<float>(), t.numel(), value, stream_);
}

void CudaBackend::copy_impl(const Tensor& src, const Tensor& dst) {
  bind();
  kernels::copy_f32(src.data<float>(), dst.data<float>(), src.numel(), stream_);
}

void CudaBackend::axpy_impl(float alpha, const Tensor& x, const Tensor& y) {
  bind();
  kernels::axpy(alpha, x.data<float>(), y.data<float>(), x.numel(), stream_);
}

void CudaBackend::add_impl(const Tensor& a, const Tensor& b, const Tensor& y) {
  bind();
  kernels::add(a.data<float>(), b.data<float>(), y.data<float>(), a.numel(), stream_);
}

void CudaBackend::scale_impl(std::int64_t n, float* x, float alpha) {
  bind();
  kernels::scale(x, n, alpha, stream_);
}

void CudaBackend::leaky_relu_forward_impl(std::int64_t n, const float* x, float* y, float slope) {
  bind();
  kernels::leaky_relu_forward(x, y, n, slope, stream_);
}

void CudaBackend::leaky_relu_backward_impl(std::int64_t n, const float* x, const float* dy,
                                           float* dx, float slope) {
  bind();
  kernels::leaky_relu_backward(x, dy, dx, n, slope, stream_);
}

void CudaBackend::bias_leaky_relu_forward_impl(std::int64_t planes, int C, std::int64_t HW, const float* x,
                                               const float* b, float* y, float slope) {
  bind();
  kernels::bias_leaky_relu_forward(planes, C, HW, x, b, y, slope, stream_);
}

void CudaBackend::leaky_relu_backward_add_impl(std::int64_t n, const float* x, const float* dy,
                                               const float* other, float* dx, float slope) {
  bind();
  kernels::leaky_relu_backward_add(n, x, dy, other, dx, slope, stream_);
}

// ---- convolution (cuDNN) -------------------------------------------------------------------------

void CudaBackend::set_conv_epilogue(ConvEpilogue e) {
  bind();
  conv_->set_epilogue(e);
}

std::int64_t CudaBackend::fused_conv_calls() const { return conv_->fused_calls(); }

void CudaBackend::begin_constant_weights(const Tensor& params) {
  check_on_device(params, "begin_constant_weights");
  conv_->begin_constant_weights(params.data<float>(), params.numel());
}

void CudaBackend::end_constant_weights() noexcept { conv_->end_constant_weights(); }

void CudaBackend::conv2d_forward_impl(const ConvGeom& g, const float* x, const float* w,
                                      const float* b, const float* z, float* y) {
  bind();
  conv_->forward(g, x, w, b, z, y);
}

void CudaBackend::conv2d_forward_leaky_relu_impl(const ConvGeom& g, const float* x, const float* w,
                                                 const float* b, const float* z, float* t, float* y,
                                                 float slope) {
  bind();
  if (conv_->forward_leaky_relu(g, x, w, b, z, t, y, slope)) return;  // one cuDNN graph-API call
  if (t) {
    // conv2 with its residual, and the stem: t = conv + b [+ z] and y = lrelu(t), the activation
    // in the epilogue's pass (ConvEngine::forward).
    conv_->forward(g, x, w, b, z, t, y, slope);
    return;
  }
  // conv1 (bias_leaky_relu after the convolution), or a residual without t (in place in y).
  Backend::conv2d_forward_leaky_relu_impl(g, x, w, b, z, t, y, slope);
}

void CudaBackend::conv2d_backward_data_impl(const ConvGeom& g, const float* dy, const float* w,
                                            float* dx) {
  bind();
  conv_->backward_data(g, dy, w, dx);
}

void CudaBackend::conv2d_backward_filter_impl(const ConvGeom& g, const float* x, const float* dy,
                                              float* dw, float* db) {
  bind();
  conv_->backward_filter(g, x, dy, dw, db);
}

// ---- pooling -------------------------------------------------------------------------------------

void CudaBackend::global_avg_pool_forward_impl(int N, int C, int HW, const float* x, float* y) {
  bind();
  kernels::global_avg_pool_forward(N, C, HW, x, y, stream_);
}

void CudaBackend::global_avg_pool_backward_impl(int N, int C, int HW, const float* dy, float* dx) {
  bind();
  kernels::global_avg_pool_backward(N, C, HW, dy, dx, stream_);
}

void CudaBackend::global_avg_pool_forward_nhwc_impl(int N, int C, int HW, const float* x, float* y) {
  bind();
  kernels::global_avg_pool_forward_nhwc(N, C, HW, x, y, stream_);
}

void CudaBackend::global_avg_pool_backward_nhwc_impl(int N, int C, int HW, const float* dy,
                                                     float* dx) {
  bind();
  kernels::global_avg_pool_backward_nhwc(N, C, HW, dy, dx, stream_);
}

// ---- inference-only image ops (kernels/image_ops.cu) ---------------------------------------------

void CudaBackend::max_pool2d_forward_impl(const PoolGeom& g, const float* x, float* y) {
  bind();
  kernels::max_pool2d_forward(g, x, y, stream_);
}

void CudaBackend::avg_pool2d_forward_impl(const PoolGeom& g, const float* x, float* y) {
  bind();
  kernels::avg_pool2d_forward(g, x, y, stream_);
}

void CudaBackend::resize_bilinear_forward_impl(std::int64_t NC, int H, int W, int P, int Q,
                                               const float* x, float* y) {
  bind();
  kernels::resize_bilinear_forward(NC, H, W, P, Q, x, y, stream_);
}

void CudaBackend::copy_channels_impl(int N, int Cs, int Cd, std::int64_t HW, int offset,
                                     const float* src, float* dst) {
  bind();
  kernels::copy_channels(N, Cs, Cd, HW, offset, src, dst, stream_);
}

// ---- losses --------------------------------------------------------------------------------------

void CudaBackend::energy_impl(int N, int K, const float* logits, float* energy, float* dlogits,
                              float grad_scale) {
  bind();
  kernels::energy_forward_backward(N, K, logits, energy, dlogits, grad_scale, 0.0f, false, stream_);
}

void CudaBackend::energy_sq_impl(int N, int K, const float* logits, float* energy, float* dlogits,
                                 float grad_scale, float sq_scale) {
  // K == 0 has no logsumexp; the CPU would read row[0] of an empty row.
  JEM_CHECK(K > 0 || N == 0, "energy_sq: logits have no classes");
  bind();
  kernels::energy_forward_backward(N, K, logits, energy, dlogits, grad_scale, sq_scale, true,
                                   stream_);
}

void CudaBackend::cross_entropy_impl(int N, int K, const float* logits, const std::int32_t* labels,
                                     float* loss, float* dlogits, float grad_scale) {
  bind();
  kernels::cross_entropy_forward_backward(N, K, logits, labels, loss, dlogits, grad_scale,
                                          error_dev_, stream_);
}

void CudaBackend::class_energy_impl(int N, int K, const float* logits, const std::int32_t* labels,
                                    float* energy, float* dlogits, float grad_scale) {
  // Every label is out of range when there are no classes (the CPU throws for row 0).
  JEM_CHECK(K > 0 || N == 0, "class_energy: logits have no classes");
  bind();
  kernels::class_energy_forward_backward(N, K, logits, labels, energy, dlogits, grad_scale,
                                         error_dev_, stream_);
}

// ---- replay buffer and SGLD ----------------------------------------------------------------------

void CudaBackend::buffer_gather_impl(int B, std::int64_t per, const float* buffer,
                                     const std::int32_t* index, const std::int32_t* reinit,
                                     float* out, const NoiseKey& key) {
  bind();
  kernels::buffer_gather(B, per, buffer, slots_in(buffer, per), index, reinit, out, key, error_dev_,
                         stream_, live_key_for(key, "buffer_gather"));
}

void CudaBackend::buffer_scatter_impl(int B, std::int64_t per, const float* x,
                                      const std::int32_t* index, float* buffer) {
  bind();
  kernels::buffer_scatter(B, per, x, index, buffer, slots_in(buffer, per), error_dev_, stream_);
}

void CudaBackend::sgld_step_impl(int B, std::int64_t per, float* x, const float* grad,
                                 float step_size, float noise_std, bool clamp,
                                 const NoiseKey& key) {
  bind();
  kernels::sgld_step(B, per, x, grad, step_size, noise_std, clamp, key, stream_,
                     live_key_for(key, "sgld_step"));
}

// ---- optimizers ----------------------------------------------------------------------------------

void CudaBackend::adam_step_impl(std::int64_t n, float* p, const float* g, float* m, float* v,
                                 const AdamStep& step) {
  bind();
  kernels::adam_step(n, p, g, m, v, step, stream_);
}

void CudaBackend::sgd_step_impl(std::int64_t n, float* p, const float* g, float* buf, float lr,
                                float momentum, float weight_decay) {
  bind();
  kernels::sgd_step(n, p, g, buf, lr, momentum, weight_decay, stream_);
}

double CudaBackend::sum_squares_impl(std::int64_t n, const float* x) {
  bind();
  // One double per chunk plus the result; the constructor sized it for any realistic model.
  const std::int64_t partials = kernels::sum_squares_partials(n);
  auto* scratch = static_cast<double*>(reduce_.ensure(std::size_t(partials + 1) * sizeof(double), stream_));
  kernels::sum_squares(n, x, scratch, scratch + partials, stream_);
  JEM_CUDA_CHECK(cudaMemcpyAsync(reduce_host_, scratch + partials, sizeof(double),
                                 cudaMemcpyDeviceToHost, stream_));
  sync_and_check();
  return *reduce_host_;
}

// ---- factory -------------------------------------------------------------------------------------

std::unique_ptr<Backend> make_cuda_backend(int device, MathMode math, Layout layout) {
  return std::make_unique<CudaBackend>(device, math, layout);
}

Layout layout_from_env() {
  const char* env = std::getenv("JEM_CUDA_LAYOUT");
  if (!env || !*env) return Layout::NCHW;
  const std::string l(env);
  if (l == "nchw" || l == "NCHW") return Layout::NCHW;
  if (l == "nhwc" || l == "NHWC") return Layout::NHWC;
  JEM_FAIL("JEM_CUDA_LAYOUT='", l, "': expected nchw or nhwc");
}

bool graphs_from_env() {
  const char* env = std::getenv("JEM_CUDA_GRAPHS");
  if (!env || !*env) return false;
  const std::string g(env);
  if (g == "1") return true;
  if (g == "0") return false;
  JEM_FAIL("JEM_CUDA_GRAPHS='", g, "': expected 1 (capture the SGLD chains in CUDA Graphs) or 0");
}

std::unique_ptr<Backend> make_cuda_backend(int device) {
  int count = 0;
  JEM_CUDA_CHECK(cudaGetDeviceCount(&count));
  JEM_CHECK(device >= 0 && device < count, "cuda:", device, " does not exist (", count,
            " CUDA device", count == 1 ? "" : "s", " found)");
  const Layout layout = layout_from_env();
  const bool graphs = graphs_from_env();
  MathMode math = MathMode::FP32;
  const char* env = std::getenv("JEM_CUDA_MATH");
  const std::string m(env ? env : "");
  if (m.empty()) math = default_math_mode(device);
  else if (m == "fp32" || m == "FP32") math = MathMode::FP32;
  else if (m == "tf32" || m == "TF32") math = MathMode::TF32;
  else JEM_FAIL("JEM_CUDA_MATH='", m, "': expected fp32 or tf32");
  auto backend = std::make_unique<CudaBackend>(device, math, layout);
  backend->set_capture_enabled(graphs);
  return backend;
}

}  // namespace jem::cuda
