// The CUDA backend: every op of jem::Backend on one GPU.
//
//   * One compute stream: ops are queued in program order and run asynchronously; download(),
//     synchronize() and sum_squares() wait for them. Uploads go through a ring of pinned slots
//     (upload_staging.hpp): the source may be reused as soon as upload() returns, and the host
//     does not wait for the stream unless it is a whole ring of uploads ahead of the device.
//   * Convolutions: cuDNN (cudnn_conv.hpp). Linear layer: cuBLAS (cuda_linear.cpp). Everything
//     else: the kernels of kernels/, which call the same per-element functions as the CPU.
//   * Activation layout: NCHW (the default) or NHWC (channels-last, JEM_CUDA_LAYOUT=nhwc), in
//     which cuDNN's tensor-core kernels read their operands without transposing them first (on
//     an H200 its own NCHW<->NHWC transposes took 19% of a WRN-28-10 iteration's kernel time).
//     The model allocates its activations in activation_layout(); every op also takes NHWC
//     tensors where backend.hpp allows them, and upload()/download() convert to and from the
//     host's NCHW order.
//   * Math mode (convolutions and GEMMs only): TF32 uses tensor cores with inputs rounded to a
//     10-bit mantissa (~1e-3 relative error, several times faster); FP32 is plain float FMA
//     math, within a few ulp of the CPU, with deterministic cuDNN backward algorithms.
//   * Errors the kernels detect (a label or buffer slot out of range, known only on the device)
//     are reported by the next download(), synchronize() or sum_squares(), as jem::Error.
//   * CUDA Graphs (cuda_graphs.cpp, when set_capture_enabled(true); JEM_CUDA_GRAPHS=1 through
//     make_cuda_backend(device)): capture() records ops by stream capture, launch() replays
//     them. The noise key's seed, iteration and sample_base reach captured SGLD and gather
//     kernels through one device-side NoiseKey that launch() writes before each replay.
//   * Ops must be issued from one host thread at a time (as for every Backend); each op makes
//     the backend's device current first, so several backends on several GPUs can share a
//     thread.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <string>

#include "device_memory.hpp"
#include "jem/backend.hpp"
#include "cudnn_conv.hpp"
#include "math_mode.hpp"
#include "upload_staging.hpp"

struct cublasContext;  // cublasHandle_t is cublasContext*; keeps cuBLAS out of this header

namespace jem::cuda {

// TF32 on devices that have TF32 tensor cores (compute capability 8.0 and newer), else FP32.
MathMode default_math_mode(int device);

class CudaBackend final : public Backend {
 public:
  CudaBackend(int device, MathMode math, Layout layout = Layout::NCHW);
  ~CudaBackend() override;
  CudaBackend(const CudaBackend&) = delete;
  CudaBackend& operator=(const CudaBackend&) = delete;

  Device device() const override { return Device::CUDA; }
  // "cuda:0 (NVIDIA H200, sm_90, 132 SMs, TF32 math)"
  std::string name() const override;
  int device_index() const { return device_; }
  MathMode math() const { return math_; }
  bool supports_channels_last() const override { return true; }
  Layout activation_layout() const override { return layout_; }
  cudaStream_t stream() const { return stream_; }
  // How convolutions with a bias and a residual run (cudnn_conv.hpp; default Timed). For tests
  // and benchmarks that compare the fused and unfused ways.
  void set_conv_epilogue(ConvEpilogue e);
  // How many convolutions ran as one fused cuDNN graph-API call (conv + bias + LeakyReLU, with or
  // without the residual) since the backend was made: tests and benchmarks check that the fused
  // path runs where it should, not only that the results agree.
  std::int64_t fused_conv_calls() const override;
  // Whether capture() records ops (CUDA Graphs); off unless asked for.
  void set_capture_enabled(bool on) { capture_enabled_ = on; }
  bool can_capture() const override { return capture_enabled_; }
  // cuda_graphs.cpp
  std::unique_ptr<CapturedOps> capture(const NoiseKey& key, const std::function<void()>& ops,
                                       std::string* why) override;
  bool launch(const CapturedOps& ops, const NoiseKey& key) override;
  // How many captures succeeded and how many graphs were launched (launch() returning true) since
  // the backend was made (tests and benchmarks check that the graph path ran).
  std::int64_t graphs_captured() const { return graphs_captured_; }
  std::int64_t graph_launches() const override { return graph_launches_; }
  // Filters inside `params` are converted to KRSC once per scope (NHWC convolutions).
  void begin_constant_weights(const Tensor& params) override;
  void end_constant_weights() noexcept override;

  Tensor empty(Shape shape, DType dtype) override;
  void upload(const float* src, const Tensor& dst) override;
  void download(const Tensor& src, float* dst) override;
  void upload_i32(const std::int32_t* src, const Tensor& dst) override;
  void synchronize() override;
  void profiler_start() override;
  void profiler_stop() override;
  // Peak bytes of this device's tensors and scratch buffers (device_memory.hpp), not the
  // process's host memory.
  std::int64_t peak_memory_bytes() const override {
    return static_cast<std::int64_t>(peak_allocated_bytes(device_));
  }
  MemoryCounters memory_counters() const override { return allocation_counts(device_); }
  // total - free from cudaMemGetInfo on this backend's device: also the CUDA context, cuBLAS'
  // and cuDNN's internal memory, which peak_memory_bytes does not see.
  std::int64_t device_memory_used_bytes() const override;

 protected:
  void fill_impl(const Tensor& t, float value) override;
  void copy_impl(const Tensor& src, const Tensor& dst) override;
  void axpy_impl(float alpha, const Tensor& x, const Tensor& y) override;
  void add_impl(const Tensor& a, const Tensor& b, const Tensor& y) override;
  void conv2d_forward_impl(const ConvGeom& g, const float* x, const float* w, const float* b,
                           const float* z, float* y) override;
  void conv2d_backward_data_impl(const ConvGeom& g, const float* dy, const float* w,
                                 float* dx) override;
  // One cuDNN graph-API call where ConvEngine::forward_leaky_relu has a plan, else the unfused ops.
  void conv2d_forward_leaky_relu_impl(const ConvGeom& g, const float* x, const float* w,
                                      const float* b, const float* z, float* t, float* y,
                                      float slope) override;
  void conv2d_backward_filter_impl(const ConvGeom& g, const float* x, const float* dy, float* dw,
                                   float* db) override;
  void leaky_relu_forward_impl(std::int64_t n, const float* x, float* y, float slope) override;
  void leaky_relu_backward_impl(std::int64_t n, const float* x, const float* dy, float* dx,
                                float slope) override;
  void bias_leaky_relu_forward_impl(std::int64_t planes, int C, std::int64_t HW, const float* x,
                                    const float* b, float* y, float slope) override;
  void leaky_relu_backward_add_impl(std::int64_t n, const float* x, const float* dy,
                                    const float* other, float* dx, float slope) override;
  void global_avg_pool_forward_impl(int N, int C, int HW, const float* x, float* y) override;
  void global_avg_pool_backward_impl(int N, int C, int HW, const float* dy, float* dx) override;
  void global_avg_pool_forward_nhwc_impl(int N, int C, int HW, const float* x, float* y) override;
  void global_avg_pool_backward_nhwc_impl(int N, int C, int HW, const float* dy,
                                          float* dx) override;
  void max_pool2d_forward_impl(const PoolGeom& g, const float* x, float* y) override;
  void avg_pool2d_forward_impl(const PoolGeom& g, const float* x, float* y) override;
  void resize_bilinear_forward_impl(std::int64_t NC, int H, int W, int P, int Q, const float* x,
                                    float* y) override;
  void copy_channels_impl(int N, int Cs, int Cd, std::int64_t HW, int offset, const float* src,
                          float* dst) override;
  // cuda_linear.cpp
  void linear_forward_impl(int N, int I, int O, const float* x, const float* w, const float* b,
                           float* y) override;
  void linear_backward_impl(int N, int I, int O, const float* x, const float* w, const float* dy,
                            float* dx, float* dw, float* db) override;
  void energy_impl(int N, int K, const float* logits, float* energy, float* dlogits,
                   float grad_scale) override;
  void cross_entropy_impl(int N, int K, const float* logits, const std::int32_t* labels,
                          float* loss, float* dlogits, float grad_scale) override;
  void class_energy_impl(int N, int K, const float* logits, const std::int32_t* labels,
                         float* energy, float* dlogits, float grad_scale) override;
  void energy_sq_impl(int N, int K, const float* logits, float* energy, float* dlogits,
                      float grad_scale, float sq_scale) override;
  void buffer_gather_impl(int B, std::int64_t per, const float* buffer, const std::int32_t* index,
                          const std::int32_t* reinit, float* out, const NoiseKey& key) override;
  void buffer_scatter_impl(int B, std::int64_t per, const float* x, const std::int32_t* index,
                           float* buffer) override;
  void sgld_step_impl(int B, std::int64_t per, float* x, const float* grad, float step_size,
                      float noise_std, bool clamp, const NoiseKey& key) override;
  void adam_step_impl(std::int64_t n, float* p, const float* g, float* m, float* v,
                      const AdamStep& step) override;
  void sgd_step_impl(std::int64_t n, float* p, const float* g, float* buf, float lr,
                     float momentum, float weight_decay) override;
  double sum_squares_impl(std::int64_t n, const float* x) override;
  void scale_impl(std::int64_t n, float* x, float alpha) override;

 private:
  // Frees what the constructor created (the destructor, and a constructor that failed halfway).
  void release() noexcept;
  // Makes this backend's device current on the calling thread (cheap when it already is).
  void bind() const;
  // Waits for the stream, then throws if a kernel recorded a device-side error.
  void sync_and_check();
  // Rows of `per` floats from `buffer` to the end of its allocation: the slots a device-side
  // index may address (the impl does not receive the buffer's row count).
  std::int64_t slots_in(const float* buffer, std::int64_t per) const;
  void check_on_device(const Tensor& t, const char* op) const;
  // The device-side key an op with `key` reads its noise from: null outside a capture; inside
  // one, live_key_ (throws unless key has the capture's seed, iteration and sample_base).
  const NoiseKey* live_key_for(const NoiseKey& key, const char* op) const;

  int device_;
  MathMode math_;
  Layout layout_;
  std::string device_name_;
  int cc_major_ = 0, cc_minor_ = 0, sms_ = 0;
  cudaStream_t stream_ = nullptr;
  cublasContext* cublas_ = nullptr;
  DeviceBuffer cublas_workspace_;  // cuBLAS's workspace, ours (see the constructor)
  std::unique_ptr<ConvEngine> conv_;
  int* error_dev_ = nullptr;   // kernels::kErrorWords ints on the device
  int* error_host_ = nullptr;  // pinned mirror, read after a stream sync
  DeviceBuffer reduce_;        // sum_squares' per-chunk partials
  double* reduce_host_ = nullptr;  // pinned: sum_squares' result
  std::unique_ptr<UploadStaging> staging_;  // pinned slots that upload() copies through
  // CUDA Graphs (cuda_graphs.cpp)
  bool capture_enabled_ = false;
  bool capturing_ = false;
  NoiseKey capture_key_{};
  NoiseKey* live_key_ = nullptr;  // device: the key captured noise ops read at launch time
  std::int64_t graphs_captured_ = 0, graph_launches_ = 0;
};

// The backend on CUDA device `device` with the given math mode. Throws jem::Error when the
// device does not exist or cannot be initialised.
std::unique_ptr<Backend> make_cuda_backend(int device, MathMode math,
                                           Layout layout = Layout::NCHW);
// The layout from the environment variable JEM_CUDA_LAYOUT ("nchw" or "nhwc"; NCHW when unset);
// throws on any other value.
Layout layout_from_env();
// Whether JEM_CUDA_GRAPHS asks for CUDA Graphs ("1" or "0"; off when unset); throws on any other
// value.
bool graphs_from_env();
// The same with the math mode from the environment variable JEM_CUDA_MATH ("fp32" or "tf32"),
// or default_math_mode(device) when it is unset, the layout from layout_from_env(), and CUDA
// Graphs from graphs_from_env().
std::unique_ptr<Backend> make_cuda_backend(int device);

}  // namespace jem::cuda
