// Backend: the op set the model and the trainer run on. Nothing here knows about JEM.
//
// Conventions (written once, followed by every op on every backend):
//   * Tensors are dense, row-major, float32 unless stated: images NCHW, matrices [rows, cols],
//     conv weights OIHW ([K, C, R, S]), linear weights [out, in] (as PyTorch stores them).
//   * Layouts (tensor.hpp): shapes are always logical ([N, C, H, W]). A backend that
//     supports_channels_last() also takes 4-D tensors stored NHWC, in the ops whose contract
//     says so: the convolutions (x and y may differ: the backend converts), the elementwise ops
//     and activations (all operands in one layout), bias_leaky_relu_forward and the global
//     average pool. The images of the sampler and the Inception network's ops stay NCHW.
//   * Parameter gradients ACCUMULATE (dw += ..., db += ...): the trainer zeroes the flat
//     gradient buffer once per iteration and several passes may add into it.
//   * Activation gradients OVERWRITE (dx = ...): each is produced by exactly one op.
//   * Every public op checks shapes and devices here, once, then calls the backend's *_impl.
//     A failed check throws jem::Error naming the op and the offending shapes.
#pragma once

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "jem/optim_math.hpp"
#include "jem/tensor.hpp"

namespace jem {

// Where an op's Philox noise comes from (see philox.hpp): sample b of the batch uses the global
// sample index sample_base + b, so the noise does not depend on how a batch is split.
struct NoiseKey {
  std::uint64_t seed = 0;
  std::uint32_t iteration = 0;
  std::uint32_t step = 0;
  std::uint32_t sample_base = 0;
};

// Geometry of one 2-D convolution: x[N, C, H, W] * w[K, C, R, S] -> y[N, K, P, Q].
// Kernels may be rectangular (R rows by S columns, as Inception-v3's 1x7 and 7x1 filters) and
// padded differently along H (pad_h rows above and below) and W (pad_w columns left and right).
struct ConvGeom {
  int N = 0, C = 0, H = 0, W = 0;  // input
  int K = 0, R = 0, S = 0;         // output channels, kernel height, kernel width
  int stride = 1, pad_h = 0, pad_w = 0;
  // How x (dx) and y (dy) are stored; the filters are always KCRS.
  Layout x_layout = Layout::NCHW, y_layout = Layout::NCHW;
  int P() const { return (H + 2 * pad_h - R) / stride + 1; }
  int Q() const { return (W + 2 * pad_w - S) / stride + 1; }
  // Multiply-adds of the forward pass (backward-data and backward-filter cost the same).
  double macs() const { return double(N) * K * P() * Q() * C * R * S; }
};

// Geometry of one 2-D pooling: x[N, C, H, W] -> y[N, C, P, Q], a square `kernel` window moved
// by `stride` over x padded by `pad` on every side; P = (H + 2 pad - kernel) / stride + 1.
struct PoolGeom {
  int N = 0, C = 0, H = 0, W = 0;
  int kernel = 1, stride = 1, pad = 0;
  int P() const { return (H + 2 * pad - kernel) / stride + 1; }
  int Q() const { return (W + 2 * pad - kernel) / stride + 1; }
};

// What a backend has allocated for its tensors (empty()) and, on a device, its scratch buffers:
// the trainer prints the start-up total (the memory plan), and tests and `jem bench` check with
// it that training iterations allocate nothing.
struct MemoryCounters {
  std::int64_t allocations = 0;  // allocations made so far
  std::int64_t live_bytes = 0;   // bytes held now
  std::int64_t peak_bytes = 0;   // the most bytes held at once
};

// Ops recorded by Backend::capture, to be run again by Backend::launch (a CUDA Graph).
class CapturedOps {
 public:
  virtual ~CapturedOps() = default;
};

class Backend {
 public:
  virtual ~Backend() = default;

  virtual Device device() const = 0;
  virtual std::string name() const = 0;  // "cpu (2 threads, OpenBLAS 0.3.21)"
  // Whether the ops take channels-last (NHWC) tensors (see the conventions above).
  virtual bool supports_channels_last() const { return false; }
  // The layout a model should allocate its 4-D activations in: the backend's fastest.
  virtual Layout activation_layout() const { return Layout::NCHW; }

  // ---- memory -------------------------------------------------------------------------------
  // Zero-filled tensor on this backend's device.
  virtual Tensor empty(Shape shape, DType dtype = DType::F32) = 0;
  // Host <-> device copies; sizes must match. `dst`/`src` on the host are plain vectors.
  virtual void upload(const float* src, const Tensor& dst) = 0;
  virtual void download(const Tensor& src, float* dst) = 0;
  virtual void upload_i32(const std::int32_t* src, const Tensor& dst) = 0;
  // Waits until every op issued so far has finished (no-op on the CPU).
  virtual void synchronize() {}
  // Marks where an external profiler should start and stop recording (on CUDA, for
  // `ncu --profile-from-start off`: the part of `jem bench` that is timed); no-op on the CPU.
  virtual void profiler_start() {}
  virtual void profiler_stop() {}

  // ---- captured op sequences (CUDA Graphs) --------------------------------------------------
  // A backend that can_capture() records the ops that `ops` issues, without running them, and
  // launch() then runs the recording as a whole: one host call instead of one per op (on a GPU,
  // the launch cost of every kernel and cuDNN call; the SGLD chains issue thousands per
  // iteration). Only the CUDA backend captures, and only when asked to (JEM_CUDA_GRAPHS=1).
  //   * What a launch may change: the contents of tensors, and the seed, iteration and
  //     sample_base of the noise: the ops that take a NoiseKey read those from launch()'s key when
  //     they run (each keeps the step it was captured with). Everything else (which ops, their
  //     tensors, shapes and scalars) is fixed at capture.
  //   * Inside `ops`: no host reads (download, sum_squares, synchronize), no allocation, and
  //     every NoiseKey with `key`'s seed, iteration and sample_base. Host-side bookkeeping of the
  //     ops (counters, caches) happens once, at capture.
  //   * Returns nullptr when the ops could not be captured, with the reason in `why` (a call
  //     that capture refuses, an op that threw): nothing of `ops` has run then, and the caller
  //     runs them directly. The default (the CPU backend) always does.
  virtual bool can_capture() const { return false; }
  virtual std::unique_ptr<CapturedOps> capture(const NoiseKey& key,
                                               const std::function<void()>& ops, std::string* why);
  // Runs `ops` (captured by this backend) with the noise of `key`, asynchronously, as any op,
  // and returns true; or returns false and runs nothing when the ops no longer can run: a scratch
  // buffer they use has moved since the capture (a larger shape made it grow), or a fused cuDNN
  // plan they hold has failed in a direct call since. The caller then runs the ops directly, and
  // may capture them again.
  virtual bool launch(const CapturedOps& ops, const NoiseKey& key);
  // How many launch() calls this backend has run (`jem bench` reports those of its timed
  // iterations: whether the chains ran as graphs).
  virtual std::int64_t graph_launches() const { return 0; }
  // How many conv2d_forward_leaky_relu calls ran the convolution and its activation as one
  // library call (the CUDA backend's cuDNN fusions; 0 elsewhere). Counted when the host issues
  // the call: a captured call counts once, at capture, and a CUDA Graph's launches replay it
  // without counting.
  virtual std::int64_t fused_conv_calls() const { return 0; }
  // Peak bytes of memory held for this backend's tensors, or -1 when unknown (`jem bench`).
  // The default, for backends whose tensors live in host memory, is the process's peak resident
  // set (VmHWM in /proc/self/status); a device backend reports its allocator's peak instead.
  virtual std::int64_t peak_memory_bytes() const;
  // Bytes in use on the backend's device as its driver reports them now (every allocation of
  // every library in every process on it, and the context), or -1 where that means nothing
  // (the CPU backend, whose peak_memory_bytes already is the process's whole footprint).
  virtual std::int64_t device_memory_used_bytes() const { return -1; }
  // The CPU backend counts its own tensors; the CUDA backend counts everything allocated on its
  // device through it and other CUDA backends of the process (tensors, cuDNN workspace,
  // reduction scratch; not the CUDA context or the libraries' internal memory).
  virtual MemoryCounters memory_counters() const = 0;

  std::vector<float> to_vector(const Tensor& t);
  Tensor from_vector(const std::vector<float>& v, Shape shape);

  // ---- weights held constant ----------------------------------------------------------------
  // Between begin_constant_weights(params) and end_constant_weights() the caller promises that
  // nothing writes `params` (a flat parameter buffer): a backend may then keep derived forms of
  // the weights in it and reuse them. The CUDA backend with NHWC tensors converts each filter
  // to KRSC once per scope instead of at every convolution (the SGLD chains: 20 forward and
  // backward passes on fixed weights). Scopes do not nest; ConstantWeights is the RAII form.
  virtual void begin_constant_weights(const Tensor& params) { (void)params; }
  virtual void end_constant_weights() noexcept {}

  // ---- elementwise / memory ops -------------------------------------------------------------
  void fill(const Tensor& t, float value);
  void copy(const Tensor& src, const Tensor& dst);
  // y += alpha * x
  void axpy(float alpha, const Tensor& x, const Tensor& y);
  // y = a + b (the residual add; y may alias a or b)
  void add(const Tensor& a, const Tensor& b, const Tensor& y);

  // ---- convolution --------------------------------------------------------------------------
  // y[N,K,P,Q] = conv(x[N,C,H,W], w[K,C,R,S]) + b[K]           (overwrite; b may be undefined:
  // no bias, for a bias that the next op adds, as bias_leaky_relu_forward)
  void conv2d_forward(const Tensor& x, const Tensor& w, const Tensor& b, const Tensor& y,
                      int stride, int pad);
  // The same with separate padding along H and W (for 1xS and Rx1 kernels).
  void conv2d_forward(const Tensor& x, const Tensor& w, const Tensor& b, const Tensor& y,
                      int stride, int pad_h, int pad_w);
  // y = conv(x, w) + b + z   z [N,K,P,Q] (overwrite; b may be undefined; z must not overlap y).
  // A convolution with its bias and a residual add in one op: cuDNN can run both in the
  // convolution's epilogue (cudnnConvolutionBiasActivationForward), which saves the separate
  // passes over y.
  void conv2d_forward_add(const Tensor& x, const Tensor& w, const Tensor& b, const Tensor& z,
                          const Tensor& y, int stride, int pad);
  // dx[N,C,H,W] = conv_transpose(dy[N,K,P,Q], w)                (overwrite)
  void conv2d_backward_data(const Tensor& dy, const Tensor& w, const Tensor& dx, int stride,
                            int pad);
  // A convolution and the LeakyReLU after it, in one op (the Wide-ResNet's):
  //   t = conv(x, w) + b + z,  y = leaky_relu(t)                  (overwrite)
  // b, z and t may be undefined; with t undefined only y is stored. The result is the one of
  // conv2d_forward(_add) into t followed by leaky_relu_forward(t, y), bit for bit, except that
  // with b defined and neither z nor t the bias is added after the convolution's sum, as
  // bias_leaky_relu_forward does. A backend runs the activation inside the convolution's output
  // pass (the CPU: on each image while it is in cache), saving a pass over y. The CUDA backend
  // with channels-last tensors and TF32 math runs all of it as one cuDNN graph-API call where
  // cuDNN has a plan: then the bits are that plan's, within the convolution's TF32 tolerance of
  // the unfused ops. z must not overlap t or y, nor t overlap y.
  void conv2d_forward_leaky_relu(const Tensor& x, const Tensor& w, const Tensor& b, const Tensor& z,
                                 const Tensor& t, const Tensor& y, int stride, int pad, float slope);
  // The data gradient through a convolution and the LeakyReLU before it:
  //   dx = conv_transpose(dy, w) * (m > 0 ? 1 : slope) + z       (overwrite; z may be undefined)
  // m as leaky_relu_backward's x (the activation's input, or its output). The result is the one
  // of conv2d_backward_data into dx followed by leaky_relu_backward(_add) in place, bit for bit.
  // Neither m nor z may overlap dx.
  void conv2d_backward_data_leaky_relu(const Tensor& dy, const Tensor& w, const Tensor& m,
                                       const Tensor& z, const Tensor& dx, int stride, int pad,
                                       float slope);
  // dw[K,C,R,S] += x (*) dy ; db[K] += sum_{n,p,q} dy          (accumulate; db may be undefined)
  void conv2d_backward_filter(const Tensor& x, const Tensor& dy, const Tensor& dw,
                              const Tensor& db, int stride, int pad);

  // ---- activations --------------------------------------------------------------------------
  // y = x > 0 ? x : slope * x   (y may alias x)
  void leaky_relu_forward(const Tensor& x, const Tensor& y, float slope);
  // dx = dy * (x > 0 ? 1 : slope)   (dx may alias dy; x is the forward INPUT, or its OUTPUT when
  // slope >= 0: y > 0 exactly where x > 0, so the result is the same)
  void leaky_relu_backward(const Tensor& x, const Tensor& dy, const Tensor& dx, float slope);
  // Fused passes (each one read and write of the tensors instead of two; the Wide-ResNet's):
  // y[n,c,...] = leaky_relu(x[n,c,...] + b[c])   x, y [N, C, ...], b [C]   (y may alias x)
  // (a convolution's bias added in the activation that follows it)
  void bias_leaky_relu_forward(const Tensor& x, const Tensor& b, const Tensor& y, float slope);
  // dx = dy * (x > 0 ? 1 : slope) + other   (a LeakyReLU's backward and the residual gradient
  // sum; x as for leaky_relu_backward; dx may alias dy or other)
  void leaky_relu_backward_add(const Tensor& x, const Tensor& dy, const Tensor& other,
                               const Tensor& dx, float slope);

  // ---- pooling ------------------------------------------------------------------------------
  // y[N,C] = mean_{h,w} x[N,C,H,W]
  void global_avg_pool_forward(const Tensor& x, const Tensor& y);
  // dx[N,C,H,W] = dy[N,C] / (H*W)                               (overwrite)
  void global_avg_pool_backward(const Tensor& dy, const Tensor& dx);

  // ---- inference-only image ops (the Inception-v3 feature network of FID / IS) ---------------
  // These have no backward: nothing trains through them.
  // y[N,C,P,Q] = max over the kernel x kernel window at (p*stride - pad, q*stride - pad);
  // padded positions never win (PyTorch's max_pool2d: padding is -inf). P = (H+2pad-k)/stride+1.
  void max_pool2d_forward(const Tensor& x, const Tensor& y, int kernel, int stride, int pad);
  // y = the mean of the window's taps that lie inside x: padded positions are not counted
  // (PyTorch's avg_pool2d with count_include_pad=False). Same geometry as max_pool2d.
  void avg_pool2d_forward(const Tensor& x, const Tensor& y, int kernel, int stride, int pad);
  // y[N,C,P,Q] = x[N,C,H,W] resized bilinearly with PyTorch's align_corners=False convention
  // (no antialiasing): source row of output row p is max(0, (p + 0.5) * H / P - 0.5), its two
  // neighbours clamped to the image.
  void resize_bilinear_forward(const Tensor& x, const Tensor& y);
  // dst[n, channel_offset + c, h, w] = src[n, c, h, w]: writes src into a channel slice of dst
  // (channel concatenation, one branch at a time). src [N, Cs, H, W], dst [N, Cd, H, W].
  void copy_channels(const Tensor& src, const Tensor& dst, int channel_offset);

  // ---- linear -------------------------------------------------------------------------------
  // y[N,O] = x[N,I] w[O,I]^T + b[O]
  void linear_forward(const Tensor& x, const Tensor& w, const Tensor& b, const Tensor& y);
  // dx[N,I] = dy w (overwrite, if dx defined); dw[O,I] += dy^T x, db[O] += sum_n dy
  // (accumulate, if defined). Leaving dw/db undefined skips the weight-gradient work.
  void linear_backward(const Tensor& x, const Tensor& w, const Tensor& dy, const Tensor& dx,
                       const Tensor& dw, const Tensor& db);

  // ---- losses -------------------------------------------------------------------------------
  // Energy per row, fused with its gradient:
  //   E[n] = -logsumexp_k logits[n,k];  dlogits[n,k] = grad_scale * dE[n]/dlogits[n,k]
  //                                                  = -grad_scale * softmax(logits[n])[k]
  // `grad_scale` folds in the objective's weight (1 for SGLD's d(sum E)/dx).
  void energy_forward_backward(const Tensor& logits, const Tensor& energy,
                               const Tensor& dlogits, float grad_scale);
  // Cross-entropy per row, fused with its gradient (labels I32 in [0, K)):
  //   loss[n] = logsumexp(logits[n]) - logits[n, y[n]]
  //   dlogits[n,k] = grad_scale * (softmax(logits[n])[k] - [k == y[n]])
  void cross_entropy_forward_backward(const Tensor& logits, const Tensor& labels,
                                      const Tensor& loss, const Tensor& dlogits,
                                      float grad_scale);

  // Class energy E(x, y) = -logits[n, y[n]] fused with its gradient (the p(x, y) term and
  // class-conditional SGLD): dlogits[n, k] = -grad_scale * [k == y[n]].
  void class_energy_forward_backward(const Tensor& logits, const Tensor& labels,
                                     const Tensor& energy, const Tensor& dlogits, float grad_scale);
  // Energy with a squared term, for the L2 energy regulariser (one pass):
  //   E[n] = -logsumexp(logits[n]);  dlogits[n] = (grad_scale + 2 sq_scale E[n]) dE[n]/dlogits[n]
  // i.e. the gradient of grad_scale * E + sq_scale * E^2.
  void energy_sq_forward_backward(const Tensor& logits, const Tensor& energy,
                                  const Tensor& dlogits, float grad_scale, float sq_scale);

  // ---- replay buffer and SGLD ---------------------------------------------------------------
  // out[b] = reinit[b] ? U[-1, 1) noise : buffer[index[b]]       (whole batch per call)
  // buffer[S, C, H, W], index and reinit I32 [B], out[B, C, H, W]. Reinit noise element e of
  // sample b: philox_uniform_pm1(seed, BufferReinit, iteration, step, sample_base + b, e).
  void buffer_gather(const Tensor& buffer, const Tensor& index, const Tensor& reinit,
                     const Tensor& out, const NoiseKey& key);
  // buffer[index[b]] = x[b]   (indices must be distinct)
  void buffer_scatter(const Tensor& x, const Tensor& index, const Tensor& buffer);
  // One Langevin step, in place: x = x - step_size * grad + noise_std * z, then clamp to
  // [-1, 1] if asked. z element e of sample b: philox_normal(seed, SgldNoise, iteration, step,
  // sample_base + b, e). x and grad [B, ...].
  void sgld_step(const Tensor& x, const Tensor& grad, float step_size, float noise_std,
                 bool clamp, const NoiseKey& key);

  // ---- optimizers over the flat buffers ------------------------------------------------------
  // params, grads, m, v: the same [P]; see optim_math.hpp for the rule.
  void adam_step(const Tensor& params, const Tensor& grads, const Tensor& m, const Tensor& v,
                 const AdamStep& step);
  void sgd_step(const Tensor& params, const Tensor& grads, const Tensor& momentum_buf, float lr,
                float momentum, float weight_decay);
  // sum_i x_i^2 in double, in a fixed order (the same result on every run and thread count of
  // one backend): the gradient norm that the metrics and the divergence guard read.
  double sum_squares(const Tensor& x);
  // x *= alpha
  void scale(const Tensor& x, float alpha);

  // Throws unless every defined tensor of `ts` has the layout of the first.
  static void check_same_layout(const char* op, std::initializer_list<const Tensor*> ts);
  // Throws unless `t` is NCHW (the ops that take no other layout).
  static void check_nchw(const Tensor& t, const char* op, const char* what);

 protected:
  virtual void adam_step_impl(std::int64_t n, float* p, const float* g, float* m, float* v,
                              const AdamStep& step) = 0;
  virtual void sgd_step_impl(std::int64_t n, float* p, const float* g, float* buf, float lr,
                             float momentum, float weight_decay) = 0;
  virtual double sum_squares_impl(std::int64_t n, const float* x) = 0;
  virtual void scale_impl(std::int64_t n, float* x, float alpha) = 0;
  virtual void class_energy_impl(int N, int K, const float* logits, const std::int32_t* labels,
                                 float* energy, float* dlogits, float grad_scale) = 0;
  virtual void energy_sq_impl(int N, int K, const float* logits, float* energy, float* dlogits,
                              float grad_scale, float sq_scale) = 0;
  virtual void buffer_gather_impl(int B, std::int64_t sample_numel, const float* buffer,
                                  const std::int32_t* index, const std::int32_t* reinit,
                                  float* out, const NoiseKey& key) = 0;
  virtual void buffer_scatter_impl(int B, std::int64_t sample_numel, const float* x,
                                   const std::int32_t* index, float* buffer) = 0;
  virtual void sgld_step_impl(int B, std::int64_t sample_numel, float* x, const float* grad,
                              float step_size, float noise_std, bool clamp,
                              const NoiseKey& key) = 0;
  virtual void fill_impl(const Tensor& t, float value) = 0;
  virtual void copy_impl(const Tensor& src, const Tensor& dst) = 0;
  virtual void axpy_impl(float alpha, const Tensor& x, const Tensor& y) = 0;
  virtual void add_impl(const Tensor& a, const Tensor& b, const Tensor& y) = 0;
  // b and z may be null (no bias, no residual).
  virtual void conv2d_forward_impl(const ConvGeom& g, const float* x, const float* w,
                                   const float* b, const float* z, float* y) = 0;
  virtual void conv2d_backward_data_impl(const ConvGeom& g, const float* dy, const float* w,
                                         float* dx) = 0;
  // The fused ops above (b, z, t may be null). Their defaults run the unfused ops' _impls in
  // turn; a backend overrides them to fuse.
  virtual void conv2d_forward_leaky_relu_impl(const ConvGeom& g, const float* x, const float* w,
                                              const float* b, const float* z, float* t, float* y,
                                              float slope);
  virtual void conv2d_backward_data_leaky_relu_impl(const ConvGeom& g, const float* dy,
                                                    const float* w, const float* m,
                                                    const float* z, float* dx, float slope);
  // db may be null.
  virtual void conv2d_backward_filter_impl(const ConvGeom& g, const float* x, const float* dy,
                                           float* dw, float* db) = 0;
  virtual void leaky_relu_forward_impl(std::int64_t n, const float* x, float* y, float slope) = 0;
  virtual void leaky_relu_backward_impl(std::int64_t n, const float* x, const float* dy,
                                        float* dx, float slope) = 0;
  // x, y [planes = N * C, HW], b [C]: plane i takes b[i % C].
  virtual void bias_leaky_relu_forward_impl(std::int64_t planes, int C, std::int64_t HW,
                                            const float* x, const float* b, float* y,
                                            float slope) = 0;
  virtual void leaky_relu_backward_add_impl(std::int64_t n, const float* x, const float* dy,
                                            const float* other, float* dx, float slope) = 0;
  virtual void global_avg_pool_forward_impl(int N, int C, int HW, const float* x, float* y) = 0;
  virtual void global_avg_pool_backward_impl(int N, int C, int HW, const float* dy,
                                             float* dx) = 0;
  // x (dx) channels-last [N, HW, C]; only called on a backend that supports_channels_last().
  virtual void global_avg_pool_forward_nhwc_impl(int N, int C, int HW, const float* x, float* y);
  virtual void global_avg_pool_backward_nhwc_impl(int N, int C, int HW, const float* dy,
                                                  float* dx);
  virtual void max_pool2d_forward_impl(const PoolGeom& g, const float* x, float* y) = 0;
  virtual void avg_pool2d_forward_impl(const PoolGeom& g, const float* x, float* y) = 0;
  // x[NC, H, W] -> y[NC, P, Q] (NC = N * C planes).
  virtual void resize_bilinear_forward_impl(std::int64_t NC, int H, int W, int P, int Q,
                                            const float* x, float* y) = 0;
  // src [N, Cs, HW] into dst [N, Cd, HW] at channel `offset`.
  virtual void copy_channels_impl(int N, int Cs, int Cd, std::int64_t HW, int offset,
                                  const float* src, float* dst) = 0;
  virtual void linear_forward_impl(int N, int I, int O, const float* x, const float* w,
                                   const float* b, float* y) = 0;
  // dx, dw, db may each be null.
  virtual void linear_backward_impl(int N, int I, int O, const float* x, const float* w,
                                    const float* dy, float* dx, float* dw, float* db) = 0;
  virtual void energy_impl(int N, int K, const float* logits, float* energy, float* dlogits,
                           float grad_scale) = 0;
  virtual void cross_entropy_impl(int N, int K, const float* logits, const std::int32_t* labels,
                                  float* loss, float* dlogits, float grad_scale) = 0;

  // Throws unless `t` is defined, F32 and on this backend's device, and channels-last only where
  // the backend supports it.
  void check_tensor(const Tensor& t, const char* op, const char* what) const;
};

// Backend::begin_constant_weights / end_constant_weights for one scope.
class ConstantWeights {
 public:
  ConstantWeights(Backend& backend, const Tensor& params) : backend_(backend) {
    backend_.begin_constant_weights(params);
  }
  ~ConstantWeights() { backend_.end_constant_weights(); }
  ConstantWeights(const ConstantWeights&) = delete;
  ConstantWeights& operator=(const ConstantWeights&) = delete;

 private:
  Backend& backend_;
};

// The CPU backend: the reference. `threads` <= 0 means OpenMP's default.
// Which convolution kernels the CPU backend may use: kBest takes the direct 3x3 kernel
// (src/cpu/conv3x3_direct.hpp) where it applies, in its AVX-512 version where the CPU has one,
// and on AVX-512 CPUs the flat-layout kernels (conv3x3_wgrad512.hpp: weight gradients;
// conv3x3_s2_flat512.hpp: stride-2 forward and data gradient) and the channel-vectorised one
// (conv3x3_cvec512.hpp: rows of <= 8 pixels, >= 64 output channels); kIm2col forces im2col + sgemm
// everywhere, so that tests and benchmarks can hold the paths side by side.
// kDirectAvx2: the AVX2 direct kernels only, never an AVX-512 one (so tests cover both on an
// AVX-512 CPU). On CPUs without AVX-512, kBest takes the Winograd F(2x2, 3x3) kernel
// (conv3x3_winograd.hpp) for the stride-1 3x3 forward pass and data gradient where it pays;
// kWinogradAvx2 takes it wherever it applies, and the AVX2 direct kernels elsewhere, on any
// AVX2 CPU (so tests cover it on an AVX-512 CPU too).
enum class CpuConvKernels { kBest, kIm2col, kDirectAvx2, kWinogradAvx2 };
std::unique_ptr<Backend> make_cpu_backend(int threads = 0,
                                          CpuConvKernels kernels = CpuConvKernels::kBest);

}  // namespace jem
