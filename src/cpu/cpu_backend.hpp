// The CPU backend: the reference implementation of every op. OpenMP parallelises over images
// (or rows); OpenBLAS runs single-threaded inside each thread, so that the two thread pools never
// oversubscribe the cores and results are bit-identical for a fixed thread count (every
// reduction has a fixed order: static schedules and per-thread partial sums reduced in order).
#pragma once

#include <atomic>
#include <memory>
#include <vector>

#include "jem/backend.hpp"

namespace jem::cpu {

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(int threads, CpuConvKernels kernels = CpuConvKernels::kBest);

  Device device() const override { return Device::CPU; }
  std::string name() const override;
  int threads() const { return threads_; }

  Tensor empty(Shape shape, DType dtype) override;
  void upload(const float* src, const Tensor& dst) override;
  void download(const Tensor& src, float* dst) override;
  void upload_i32(const std::int32_t* src, const Tensor& dst) override;
  // Tensors from empty() only: the per-thread scratch below grows on a shape's first use and is
  // not counted.
  MemoryCounters memory_counters() const override;

 protected:
  void fill_impl(const Tensor& t, float value) override;
  void copy_impl(const Tensor& src, const Tensor& dst) override;
  void axpy_impl(float alpha, const Tensor& x, const Tensor& y) override;
  void add_impl(const Tensor& a, const Tensor& b, const Tensor& y) override;
  void conv2d_forward_impl(const ConvGeom& g, const float* x, const float* w, const float* b,
                           const float* z, float* y) override;
  void conv2d_backward_data_impl(const ConvGeom& g, const float* dy, const float* w,
                                 float* dx) override;
  void conv2d_backward_filter_impl(const ConvGeom& g, const float* x, const float* dy, float* dw,
                                   float* db) override;
  // The fused ops: the activation (or its gradient) runs on each image right after the
  // convolution wrote it, while it is in cache (conv2d.cpp).
  void conv2d_forward_leaky_relu_impl(const ConvGeom& g, const float* x, const float* w,
                                      const float* b, const float* z, float* t, float* y,
                                      float slope) override;
  void conv2d_backward_data_leaky_relu_impl(const ConvGeom& g, const float* dy, const float* w,
                                            const float* m, const float* z, float* dx,
                                            float slope) override;
  void leaky_relu_forward_impl(std::int64_t n, const float* x, float* y, float slope) override;
  void leaky_relu_backward_impl(std::int64_t n, const float* x, const float* dy, float* dx,
                                float slope) override;
  void bias_leaky_relu_forward_impl(std::int64_t planes, int C, std::int64_t HW, const float* x,
                                    const float* b, float* y, float slope) override;
  void leaky_relu_backward_add_impl(std::int64_t n, const float* x, const float* dy,
                                    const float* other, float* dx, float slope) override;
  void global_avg_pool_forward_impl(int N, int C, int HW, const float* x, float* y) override;
  void global_avg_pool_backward_impl(int N, int C, int HW, const float* dy, float* dx) override;
  // image_ops.cpp (inference only)
  void max_pool2d_forward_impl(const PoolGeom& g, const float* x, float* y) override;
  void avg_pool2d_forward_impl(const PoolGeom& g, const float* x, float* y) override;
  void resize_bilinear_forward_impl(std::int64_t NC, int H, int W, int P, int Q, const float* x,
                                    float* y) override;
  void copy_channels_impl(int N, int Cs, int Cd, std::int64_t HW, int offset, const float* src,
                          float* dst) override;
  void linear_forward_impl(int N, int I, int O, const float* x, const float* w, const float* b,
                           float* y) override;
  void linear_backward_impl(int N, int I, int O, const float* x, const float* w, const float* dy,
                            float* dx, float* dw, float* db) override;
  void energy_impl(int N, int K, const float* logits, float* energy, float* dlogits,
                   float grad_scale) override;
  void cross_entropy_impl(int N, int K, const float* logits, const std::int32_t* labels,
                          float* loss, float* dlogits, float grad_scale) override;
  // optim_ops.cpp
  void adam_step_impl(std::int64_t n, float* p, const float* g, float* m, float* v,
                      const AdamStep& step) override;
  void sgd_step_impl(std::int64_t n, float* p, const float* g, float* buf, float lr,
                     float momentum, float weight_decay) override;
  double sum_squares_impl(std::int64_t n, const float* x) override;
  void scale_impl(std::int64_t n, float* x, float alpha) override;
  // sampler_ops.cpp
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

 private:
  // Per-thread scratch (im2col columns, padded images and flat chunks of the direct kernels,
  // packed weights, partial weight gradients; slots in conv2d.cpp). Grown on first use of a
  // shape and then reused: after the first iteration the training loop allocates nothing.
  float* scratch(int thread, int slot, std::size_t n);

  // What a fused op does to images [n0, n1) of the convolution's output once they are written
  // (conv2d.cpp); null for the plain convolutions.
  struct ConvTail;
  void conv2d_forward_with(const ConvGeom& g, const float* x, const float* w, const float* b,
                           const float* z, float* y, const ConvTail* tail);
  void conv2d_backward_data_with(const ConvGeom& g, const float* dy, const float* w, float* dx,
                                 const ConvTail* tail);

  bool use_direct3x3(const ConvGeom& g) const;
  bool use_s2flat(const ConvGeom& g) const;
  bool use_cvec(const ConvGeom& g) const;
  bool use_winograd(const ConvGeom& g) const;

  // Shared with every tensor's deleter, so that a tensor outliving its backend stays safe to
  // free. Atomic: a tensor may be freed on another thread.
  struct Counters {
    std::atomic<std::int64_t> allocations{0}, live{0}, peak{0};
  };

  int threads_;
  CpuConvKernels kernels_;
  std::shared_ptr<Counters> counters_ = std::make_shared<Counters>();
  std::vector<std::vector<std::vector<float>>> scratch_;  // [thread][slot]
  std::vector<double> reduce_scratch_;                    // sum_squares' chunk sums
};

}  // namespace jem::cpu
