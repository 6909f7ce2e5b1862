// The convolution ops on cuDNN (the legacy convolution API of libcudnn_cnn): forward (with an
// optional residual), backward-data, backward-filter. All of the backend's cuDNN code lives
// behind this class. Tensors may be NCHW or NHWC (ConvGeom's layouts): each op computes in its
// output's layout, converting an input in the other one (cudnn_conv.cpp, "layouts").
//
// Per shape, ONCE: descriptors are built and the algorithm is chosen by cuDNN's benchmarked
// search (cudnnFind*AlgorithmEx on the call's own pointers, so the pointer alignment it measured
// is the one it runs with; the alignment, up to 256 bytes, of each pointer the op reads or
// writes is part of the cache key). After that a call is the cuDNN call itself: no allocation,
// no search, no synchronisation. In FP32 mode the search prefers deterministic algorithms, so a
// process repeats its own bits; another process may time another algorithm (or epilogue)
// fastest and round differently.
//
// Workspace: one buffer shared by every shape, grown at the first call of a shape whose chosen
// algorithm needs more (never in a steady-state loop). The search itself borrows a temporary
// buffer of up to the workspace cap (512 MiB, JEM_CUDNN_WORKSPACE_MB) and returns it.
#pragma once

#include <cuda_runtime_api.h>

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <vector>

#include "device_memory.hpp"
#include "jem/backend.hpp"
#include "math_mode.hpp"

struct cudnnContext;  // cudnnHandle_t is cudnnContext*

namespace jem::cuda {

class FusedConv;  // conv_fusion.hpp

// The cap on one convolution algorithm's workspace: JEM_CUDNN_WORKSPACE_MB MiB, or
// ConvEngine::kDefaultMaxWorkspace when unset; a clear error for anything but a whole number in
// [1, 1048576]. cuDNN's search only tries algorithms that fit (and a quarter of the free memory);
// a larger cap lets algorithms with big workspaces (FFT, split-K reductions) compete, at the cost
// of that memory, allocated once.
std::size_t workspace_cap_from_env();

// How forward() with a bias and a residual runs (see there). Timed: the faster of the two, timed
// at the first call of each shape (the default). Fused / Unfused: always that one (tests and
// benchmarks compare both).
enum class ConvEpilogue { Timed, Fused, Unfused };

class ConvEngine {
 public:
  // Creates the cuDNN handle, bound to `stream` (call with the device current).
  ConvEngine(cudaStream_t stream, MathMode math);
  ~ConvEngine();
  ConvEngine(const ConvEngine&) = delete;
  ConvEngine& operator=(const ConvEngine&) = delete;

  // y = conv(x, w) + b + z   (overwrite; b and z may be null; z must not overlap y)
  //
  // With a bias and a residual z there are two ways, and the first call of a shape times both
  // on its own pointers and keeps the faster: unfused, the searched algorithm followed by one
  // kernel that adds b and z (kernels::bias_residual_add: one more pass over y); or fused, one
  // cudnnConvolutionBiasActivationForward call that adds them in the convolution's epilogue
  // (identity activation, which cuDNN runs only with IMPLICIT_PRECOMP_GEMM, which may be slower
  // than the searched algorithm: hence the timing). JEM_CUDNN_VERBOSE=1 prints the choice.
  //
  // act (optional): also act = leaky_relu(y, slope), the model's conv2 (and stem) with the
  // activation after it. Unfused, the activation joins the bias + residual pass
  // (kernels::bias_residual_add_leaky_relu: one more write, no more reads); after the fused call
  // it is a pass of its own. The timing of the two ways includes it.
  void forward(const ConvGeom& g, const float* x, const float* w, const float* b, const float* z,
               float* y, float* act = nullptr, float slope = 0.0f);
  // Later forward calls with a bias and a residual use this choice (the default is Timed): the
  // first call of each shape after it chooses again (timing synchronises the stream). Without a
  // bias the call always runs unfused (the fused call needs one).
  void set_epilogue(ConvEpilogue e);
  // The convolution and the LeakyReLU after it in one call of cuDNN's graph API (conv_fusion.hpp):
  // y = lrelu(conv(x, w) + b) (z and t null: the model's conv1), or t = conv(x, w) + b + z and
  // y = lrelu(t) (its conv2 with the residual). Only channels-last, TF32, with a bias: the
  // configuration in which an H200 ran these fusions, 1.29x and 1.32x faster than the
  // convolution followed by jem's kernel (docs/cudnn-fusion.md). Returns false, having run
  // nothing, for any other call, or when cuDNN builds no plan for the shape (tried once per
  // shape; JEM_CUDNN_VERBOSE=1 prints why): the caller then runs the unfused ops.
  // JEM_CUDNN_FUSION=0 turns the fused calls off (benchmarks compare both).
  bool forward_leaky_relu(const ConvGeom& g, const float* x, const float* w, const float* b,
                          const float* z, float* t, float* y, float slope);
  // How many forward_leaky_relu calls ran fused (returned true).
  std::int64_t fused_calls() const { return fused_calls_; }
  // The moves of the scratch buffers whose addresses convolutions pass to cuDNN and the kernels
  // (workspace, converted operands and filters), plus the fused plans retired since: a CUDA
  // Graph captured when this was n holds valid addresses, and only plans that still run, while
  // it still is n (cuda_graphs.cpp).
  std::uint64_t scratch_moves() const {
    return workspace_.moves() + operand_.moves() + filter_.moves() + const_krsc_.moves() +
           retired_fused_.size();
  }
  // Backend::begin_constant_weights: until end_constant_weights(), a filter that lies inside
  // [params, params + n) is converted to KRSC at its first NHWC use only, into a mirror of the
  // buffer (allocated at the first such use, then kept), and reused.
  void begin_constant_weights(const float* params, std::int64_t n);
  void end_constant_weights() noexcept;
  // dx = conv_transpose(dy, w)   (overwrite)
  void backward_data(const ConvGeom& g, const float* dy, const float* w, float* dx);
  // dw += x (*) dy, db += sum dy   (accumulate: beta = 1; db may be null)
  void backward_filter(const ConvGeom& g, const float* x, const float* dy, float* dw, float* db);

  // Largest workspace an algorithm may use (and the search may borrow), unless
  // JEM_CUDNN_WORKSPACE_MB says otherwise (workspace_cap_from_env).
  static constexpr std::size_t kDefaultMaxWorkspace = std::size_t(512) << 20;
  std::size_t max_workspace() const { return max_workspace_; }

 private:
  // ForwardAdd: forward with a residual z (its plan may be the fused call).
  enum class Op { Forward, BackwardData, BackwardFilter, ForwardAdd };
  struct Plan;
  struct Activation;
  // {op, N, C, H, W, K, R, S, stride, pad_h, pad_w, alignment classes of the pointers, layout}
  using Key = std::array<int, 13>;

  // The cached plan of (op, g, alignment), searched on first use with the call's pointers
  // (extra, extra2, extra3: z, the bias and the activation output of ForwardAdd, else null).
  Plan& plan(Op op, const ConvGeom& g, const float* a, const float* b, float* out,
             const float* extra = nullptr, const float* extra2 = nullptr,
             const float* extra3 = nullptr);
  void search(Op op, const ConvGeom& g, Plan& p, const float* a, const float* b, float* out);
  // ForwardAdd with a bias: sets the plan to the fused call or to the searched algorithm, as
  // epilogue_ says (Timed: times both on the call's pointers and keeps the faster).
  void choose_epilogue(const ConvGeom& g, Plan& p, const float* x, const float* w,
                       const float* b, const float* z, float* y, float* act, float slope);
  // The ops of one forward call as the plan says (statuses, not exceptions: choose_epilogue
  // tries calls that may be unsupported).
  int run_unfused(Plan& p, const float* x, const float* w, const float* b, const float* z,
                  float* y, float* act, float slope);
  int run_fused(Plan& p, const float* x, const float* w, const float* b, const float* z,
                float* y, float* act, float slope);
  // src ([N, C, HW] in layout `from`) in layout `to`: src itself when they agree, else its
  // conversion in operand_.
  const float* to_layout(const float* src, int N, int C, std::int64_t HW, Layout from, Layout to);
  // The filter as the op's layout wants it: w (KCRS) for NCHW, its KRSC copy in filter_ for NHWC.
  const float* filter_for(const ConvGeom& g, const float* w);

  cudnnContext* handle_ = nullptr;
  cudaStream_t stream_;
  MathMode math_;
  // JEM_CUDNN_VERBOSE=1: print each chosen algorithm to stderr; 2: also every search result.
  int verbose_ = 0;
  std::size_t max_workspace_ = kDefaultMaxWorkspace;  // JEM_CUDNN_WORKSPACE_MB
  std::map<Key, std::unique_ptr<Plan>> plans_;
  std::unique_ptr<Activation> identity_;  // the fused call's activation: none
  ConvEpilogue epilogue_ = ConvEpilogue::Timed;
  // The graph-API plans of forward_leaky_relu by {pattern, N, C, H, W, K, R, S, stride, pad_h,
  // pad_w, slope's bits}; null: none could be built.
  std::map<std::array<std::int64_t, 12>, std::unique_ptr<FusedConv>> fused_;
  // Plans that failed to run (their shape runs unfused since), kept until the engine dies.
  std::vector<std::unique_ptr<FusedConv>> retired_fused_;
  bool fusion_ = true;  // JEM_CUDNN_FUSION != 0
  std::int64_t fused_calls_ = 0;
  DeviceBuffer workspace_;
  DeviceBuffer operand_;  // an input (or data gradient) converted between NCHW and NHWC
  DeviceBuffer filter_;   // a KRSC filter, or a KRSC weight gradient, for NHWC convolutions
  // The constant-weights scope: the buffer, its KRSC mirror (filters at their offsets in the
  // buffer) and the offsets converted in this scope.
  const float* const_params_ = nullptr;
  std::int64_t const_n_ = 0;
  DeviceBuffer const_krsc_;
  std::vector<std::int64_t> const_done_;
};

}  // namespace jem::cuda
