// cuDNN convolutions; see cudnn_conv.hpp.
//
// cuDNN 9 marks its whole legacy convolution API deprecated (in favour of the graph API) but
// still ships it in libcudnn_cnn. The deprecation warnings are silenced for this file only: the
// legacy calls are the deliberate choice here (one call per op, benchmarked algorithm search).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"

#include "cudnn_conv.hpp"

#include <cudnn.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <stdexcept>
#include <string>
#include <vector>

#include "conv_fusion.hpp"
#include "cuda_check.hpp"
#include "kernels.hpp"

namespace jem::cuda {
namespace {

// RAII owners of the descriptors.
cudnnTensorFormat_t format_of(Layout l) { return l == Layout::NHWC ? CUDNN_TENSOR_NHWC : CUDNN_TENSOR_NCHW; }

struct TensorDesc {
  cudnnTensorDescriptor_t d = nullptr;
  TensorDesc(int n, int c, int h, int w, Layout l) {
    JEM_CUDNN_CHECK(cudnnCreateTensorDescriptor(&d));
    JEM_CUDNN_CHECK(cudnnSetTensor4dDescriptor(d, format_of(l), CUDNN_DATA_FLOAT, n, c, h, w));
  }
  ~TensorDesc() { cudnnDestroyTensorDescriptor(d); }
  TensorDesc(const TensorDesc&) = delete;
  TensorDesc& operator=(const TensorDesc&) = delete;
};

struct FilterDesc {
  cudnnFilterDescriptor_t d = nullptr;
  // [K, C, R, S]: R rows, S columns; stored KCRS (NCHW) or KRSC (NHWC).
  FilterDesc(int k, int c, int r, int s, Layout l) {
    JEM_CUDNN_CHECK(cudnnCreateFilterDescriptor(&d));
    JEM_CUDNN_CHECK(cudnnSetFilter4dDescriptor(d, CUDNN_DATA_FLOAT, format_of(l), k, c, r, s));
  }
  ~FilterDesc() { cudnnDestroyFilterDescriptor(d); }
  FilterDesc(const FilterDesc&) = delete;
  FilterDesc& operator=(const FilterDesc&) = delete;
};

struct ConvDesc {
  cudnnConvolutionDescriptor_t d = nullptr;
  ConvDesc(int pad_h, int pad_w, int stride) {
    JEM_CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&d));
    // Cross-correlation (no kernel flip): what PyTorch and the CPU backend compute.
    JEM_CUDNN_CHECK(cudnnSetConvolution2dDescriptor(d, pad_h, pad_w, stride, stride, 1, 1,
                                                    CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
  }
  ~ConvDesc() { cudnnDestroyConvolutionDescriptor(d); }
  ConvDesc(const ConvDesc&) = delete;
  ConvDesc& operator=(const ConvDesc&) = delete;
};

const char* op_name(int op) {
  switch (op) {
    case 0: return "conv2d_forward";
    case 1: return "conv2d_backward_data";
    case 2: return "conv2d_backward_filter";
    default: return "conv2d_forward_add";
  }
}

std::string describe(const ConvGeom& g) {
  char buf[160];
  std::snprintf(buf, sizeof buf, "x[%d, %d, %d, %d] * w[%d, %d, %d, %d] stride %d pad %d,%d%s", g.N,
                g.C, g.H, g.W, g.K, g.C, g.R, g.S, g.stride, g.pad_h, g.pad_w,
                g.y_layout == Layout::NHWC ? " NHWC" : "");
  return buf;
}

const char* math_name(cudnnMathType_t m) {
  switch (m) {
    case CUDNN_DEFAULT_MATH: return "default";
    case CUDNN_TENSOR_OP_MATH: return "tensor-op";
    case CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION: return "tensor-op-conversion";
    case CUDNN_FMA_MATH: return "FMA";
  }
  return "?";
}

bool uses_tensor_cores(cudnnMathType_t m) {
  return m == CUDNN_TENSOR_OP_MATH || m == CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION;
}

// The fastest acceptable result of a search (cuDNN sorts them by time). FP32 mode accepts no
// tensor-core algorithm and prefers deterministic ones (forward too: tests and resumed runs
// compare FP32 results bit for bit, and a forward algorithm may split its reduction): their summation
// order is fixed, so one shape gives the same bits on every call and run (BWD_FILTER_ALGO_0 /
// ALGO_3 and BWD_DATA_ALGO_0 accumulate with atomics). Only when no deterministic algorithm
// works does it fall back to the fastest non-deterministic one. In FP32 mode it also prefers
// results timed with FMA math: the search may time an algorithm with CUDNN_DEFAULT_MATH too,
// which on sm_80+ lets TF32 kernels in, and the chosen algorithm runs with FMA math (a
// default-math result is taken only when no FMA one qualifies; its time may then be a TF32
// kernel's, so the FP32 choice can be slower than the best FMA algorithm: JEM_CUDNN_VERBOSE
// shows the math each choice was timed with).
//
// Returns the indices of the qualifying results, best first (each at most once): search()
// takes the first one whose workspace query succeeds under the math type it will run with.
template <typename Perf>
std::vector<int> candidates(const std::vector<Perf>& perf, int returned, bool fp32, bool want_deterministic,
                            std::size_t max_workspace) {
  std::vector<int> order;
  std::vector<bool> taken(std::size_t(std::max(returned, 0)), false);
  for (int pass = want_deterministic ? 0 : 1; pass < 2; ++pass)
    for (int strict = fp32 ? 1 : 0; strict >= 0; --strict)
      for (int i = 0; i < returned; ++i) {
        const Perf& p = perf[std::size_t(i)];
        if (taken[std::size_t(i)]) continue;
        if (p.status != CUDNN_STATUS_SUCCESS || p.memory > max_workspace) continue;
        if (fp32 && uses_tensor_cores(p.mathType)) continue;
        if (strict && p.mathType != CUDNN_FMA_MATH) continue;
        if (pass == 0 && p.determinism != CUDNN_DETERMINISTIC) continue;
        taken[std::size_t(i)] = true;
        order.push_back(i);
      }
  return order;
}

// Whether `stream` is capturing a CUDA Graph (cuda_graphs.cpp). A call that fails while capturing
// may have failed because capture refused it, not because the shape cannot run it: such failures
// are rethrown (the capture is abandoned and the ops run directly) rather than taken as a
// verdict on the plan.
bool capturing(cudaStream_t stream) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  return cudaStreamIsCapturing(stream, &status) == cudaSuccess &&
         status != cudaStreamCaptureStatusNone;
}

// log2 of a pointer's alignment, capped at 8 (256 bytes, cudaMalloc's), in 4 bits per pointer
// (up to 6 pointers): a plan searched on 256-byte-aligned pointers is not reused for pointers
// that are only 16-byte aligned (views at float offsets in the flat parameter buffer), in case
// the chosen kernel needs more than that. A null pointer is class 15. The price: weights of
// one shape at differently aligned offsets get a search each (at start-up only).
int alignment_classes(std::initializer_list<const void*> ptrs) {
  int key = 0, shift = 0;
  for (const void* p : ptrs) {
    const auto a = reinterpret_cast<std::uintptr_t>(p);
    int c = 15;
    if (p) {
      c = 0;
      while (c < 8 && (a >> c & 1) == 0) ++c;
    }
    key |= c << shift;
    shift += 4;
  }
  return key;
}

// A temporary device buffer for the search: as much of the workspace cap as a quarter of the free
// memory allows, or none (then only algorithms without workspace are tried).
struct SearchBuffer {
  void* ptr = nullptr;
  std::size_t bytes = 0;
  explicit SearchBuffer(std::size_t cap) {
    std::size_t free_b = 0, total_b = 0;
    JEM_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
    bytes = std::min(cap, free_b / 4);
    if (bytes > 0 && cudaMalloc(&ptr, bytes) != cudaSuccess) {
      (void)cudaGetLastError();
      ptr = nullptr;
      bytes = 0;
    }
  }
  ~SearchBuffer() {
    if (ptr) cudaFree(ptr);
  }
};

}  // namespace

struct ConvEngine::Activation {
  cudnnActivationDescriptor_t d = nullptr;
  Activation() {
    JEM_CUDNN_CHECK(cudnnCreateActivationDescriptor(&d));
    JEM_CUDNN_CHECK(cudnnSetActivationDescriptor(d, CUDNN_ACTIVATION_IDENTITY, CUDNN_NOT_PROPAGATE_NAN, 0.0));
  }
  ~Activation() { cudnnDestroyActivationDescriptor(d); }
  Activation(const Activation&) = delete;
  Activation& operator=(const Activation&) = delete;
};

struct ConvEngine::Plan {
  ConvGeom g;
  TensorDesc x, y, bias;
  FilterDesc w;
  ConvDesc conv;
  int algo = 0;                // cudnnConvolution{Fwd,BwdData,BwdFilter}Algo_t of the op
  std::size_t workspace = 0;   // bytes the chosen algorithm needs
  // The search's choice (search() sets algo and workspace to these too; choose_epilogue may
  // replace them by the fused call's).
  int searched_algo = 0;
  std::size_t searched_workspace = 0;
  cudnnMathType_t searched_math = CUDNN_DEFAULT_MATH;
  bool fused = false;            // ForwardAdd: one cudnnConvolutionBiasActivationForward call
  bool epilogue_chosen = false;  // ForwardAdd: choose_epilogue has run
  // Every descriptor in the layout the op computes in (the output's, y or dy; see "layouts"
  // below).
  explicit Plan(const ConvGeom& geom)
      : g(geom), x(g.N, g.C, g.H, g.W, g.y_layout), y(g.N, g.K, g.P(), g.Q(), g.y_layout),
        bias(1, g.K, 1, 1, g.y_layout), w(g.K, g.C, g.R, g.S, g.y_layout),
        conv(g.pad_h, g.pad_w, g.stride) {}
};

std::size_t workspace_cap_from_env() {
  const char* env = std::getenv("JEM_CUDNN_WORKSPACE_MB");
  if (!env || !*env) return ConvEngine::kDefaultMaxWorkspace;
  const std::string s(env);
  std::size_t used = 0;
  long long mib = 0;
  try {
    mib = std::stoll(s, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  JEM_CHECK(used == s.size() && mib > 0 && mib <= (1LL << 20), "JEM_CUDNN_WORKSPACE_MB='", s,
            "': expected a whole number of MiB from 1 to 1048576");
  return std::size_t(mib) << 20;
}

ConvEngine::ConvEngine(cudaStream_t stream, MathMode math) : stream_(stream), math_(math) {
  cudnnHandle_t h = nullptr;
  JEM_CUDNN_CHECK(cudnnCreate(&h));
  handle_ = h;
  JEM_CUDNN_CHECK(cudnnSetStream(handle_, stream_));
  identity_ = std::make_unique<Activation>();
  const char* v = std::getenv("JEM_CUDNN_VERBOSE");
  verbose_ = !v || !*v || std::string(v) == "0" ? 0 : std::string(v) == "2" ? 2 : 1;
  max_workspace_ = workspace_cap_from_env();
  const char* f = std::getenv("JEM_CUDNN_FUSION");
  fusion_ = !(f && std::string(f) == "0");
}

ConvEngine::~ConvEngine() {
  plans_.clear();  // descriptors before the handle
  fused_.clear();
  retired_fused_.clear();
  identity_.reset();
  if (handle_) cudnnDestroy(handle_);
}

ConvEngine::Plan& ConvEngine::plan(Op op, const ConvGeom& g, const float* a, const float* b,
                                   float* out, const float* extra, const float* extra2,
                                   const float* extra3) {
  const Key key{int(op), g.N,      g.C,      g.H,      g.W,     g.K,
                g.R,     g.S,      g.stride, g.pad_h, g.pad_w,
                alignment_classes({a, b, out, extra, extra2, extra3}), int(g.y_layout)};
  auto it = plans_.find(key);
  if (it != plans_.end()) return *it->second;
  // A search synchronises and allocates, which a CUDA Graph capture refuses: said plainly here
  // rather than as the runtime's capture error (the sampler captures only chains it has run).
  JEM_CHECK(!capturing(stream_), "cuDNN: ", describe(g),
            " has no searched algorithm yet, and a CUDA Graph capture cannot search: run the "
            "ops once before capturing them");
  auto p = std::make_unique<Plan>(g);
  search(op, g, *p, a, b, out);
  // The search may leave a non-sticky error of cuDNN's own runtime calls (an algorithm that could
  // not get its memory) in this thread's last-error slot, which the next kernel launch's check
  // would report as its own. Sticky errors stay visible to the next call.
  (void)cudaGetLastError();
  workspace_.ensure(p->workspace, stream_);
  return *plans_.emplace(key, std::move(p)).first->second;
}

void ConvEngine::search(Op op, const ConvGeom& g, Plan& p, const float* a, const float* b,
                        float* out) {
  const bool fp32 = math_ == MathMode::FP32;
  // FMA math restricts the search to float FMA kernels; tensor-op math lets TF32 kernels in.
  JEM_CUDNN_CHECK(cudnnSetConvolutionMathType(p.conv.d, fp32 ? CUDNN_FMA_MATH : CUDNN_TENSOR_OP_MATH));
  // The search runs (and times) the algorithms synchronously; queued work must not be timed.
  JEM_CUDA_CHECK(cudaStreamSynchronize(stream_));
  count_transient_allocation();  // the search's buffers, for Backend::memory_counters
  SearchBuffer ws(max_workspace_);
  int count = 0, returned = 0;
  cudnnMathType_t math = fp32 ? CUDNN_FMA_MATH : CUDNN_TENSOR_OP_MATH;  // the chosen one runs with
  cudnnMathType_t timed_math = math;  // ... and was timed with
  const char* chosen_determinism = "";
  float ms = 0.0f;
  // The workspace `algo` needs when run with `run_math` (set on the descriptor, where it stays
  // for the chosen one). The size query, not only the search's figure: the two can differ (the
  // math type is set again here), and too small a workspace makes the call fail where too large
  // costs only memory, so the plan takes the larger.
  auto workspace_query = [&](int algo, cudnnMathType_t run_math, std::size_t* need) {
    JEM_CUDNN_CHECK(cudnnSetConvolutionMathType(p.conv.d, run_math));
    if (op == Op::Forward || op == Op::ForwardAdd)
      return cudnnGetConvolutionForwardWorkspaceSize(handle_, p.x.d, p.w.d, p.conv.d, p.y.d,
                                                     cudnnConvolutionFwdAlgo_t(algo), need);
    if (op == Op::BackwardData)
      return cudnnGetConvolutionBackwardDataWorkspaceSize(handle_, p.w.d, p.y.d, p.conv.d, p.x.d,
                                                          cudnnConvolutionBwdDataAlgo_t(algo), need);
    return cudnnGetConvolutionBackwardFilterWorkspaceSize(handle_, p.x.d, p.y.d, p.conv.d, p.w.d,
                                                          cudnnConvolutionBwdFilterAlgo_t(algo), need);
  };
  // JEM_CUDNN_VERBOSE=2: every result of the search, so that a log shows what the choice left out
  // (an algorithm over the workspace cap, a faster non-deterministic one in FP32 mode).
  auto list_results = [&](const auto& perf) {
    for (int i = 0; i < returned; ++i) {
      const auto& r = perf[std::size_t(i)];
      std::fprintf(stderr, "jem: cuDNN   %s %s result %d: algo %d, %s, %.3f ms, %zu KiB workspace%s, %s, %s math\n",
                   op_name(int(op)), describe(g).c_str(), i, int(r.algo), cudnnGetErrorString(r.status),
                   double(r.time), r.memory >> 10, r.memory > max_workspace_ ? " (over the cap)" : "",
                   r.determinism == CUDNN_DETERMINISTIC ? "deterministic" : "non-deterministic",
                   math_name(r.mathType));
    }
  };
  // The first qualifying result (see candidates()) that cuDNN also accepts with the math type it
  // will run with (in FP32 mode FMA math, always; else the math it was timed with). The three
  // searches' perf structs share these fields.
  auto choose = [&](const auto& perf) -> bool {
    if (verbose_ >= 2) list_results(perf);
    for (const int i : candidates(perf, returned, fp32, fp32, max_workspace_)) {
      const auto& r = perf[std::size_t(i)];
      const cudnnMathType_t run_math = fp32 ? CUDNN_FMA_MATH : r.mathType;
      std::size_t need = 0;
      // The size it will run with is held to the cap too (the query can exceed the search's figure).
      if (workspace_query(int(r.algo), run_math, &need) != CUDNN_STATUS_SUCCESS || need > max_workspace_)
        continue;
      p.algo = int(r.algo);
      p.workspace = std::max(need, r.memory);
      math = run_math;
      timed_math = r.mathType;
      ms = r.time;
      chosen_determinism = r.determinism == CUDNN_DETERMINISTIC ? "deterministic" : "non-deterministic";
      return true;
    }
    return false;
  };

  if (op == Op::Forward || op == Op::ForwardAdd) {
    JEM_CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithmMaxCount(handle_, &count));
    std::vector<cudnnConvolutionFwdAlgoPerf_t> perf(std::size_t(std::max(count, 1)));
    JEM_CUDNN_CHECK(cudnnFindConvolutionForwardAlgorithmEx(handle_, p.x.d, a, p.w.d, b, p.conv.d,
                                                           p.y.d, out, count, &returned,
                                                           perf.data(), ws.ptr, ws.bytes));
    JEM_CHECK(choose(perf), "conv2d_forward: cuDNN found no usable algorithm for ", describe(g));
  } else if (op == Op::BackwardData) {
    JEM_CUDNN_CHECK(cudnnGetConvolutionBackwardDataAlgorithmMaxCount(handle_, &count));
    std::vector<cudnnConvolutionBwdDataAlgoPerf_t> perf(std::size_t(std::max(count, 1)));
    // a = dy, b = w, out = dx (which the op overwrites anyway).
    JEM_CUDNN_CHECK(cudnnFindConvolutionBackwardDataAlgorithmEx(handle_, p.w.d, b, p.y.d, a,
                                                                p.conv.d, p.x.d, out, count,
                                                                &returned, perf.data(), ws.ptr,
                                                                ws.bytes));
    JEM_CHECK(choose(perf), "conv2d_backward_data: cuDNN found no usable algorithm for ", describe(g));
  } else {
    JEM_CUDNN_CHECK(cudnnGetConvolutionBackwardFilterAlgorithmMaxCount(handle_, &count));
    std::vector<cudnnConvolutionBwdFilterAlgoPerf_t> perf(std::size_t(std::max(count, 1)));
    // The search writes its output, and dw must keep the gradients it accumulates: search into
    // a scratch filter at the same alignment (mod 256, cudaMalloc's alignment) as dw.
    const std::size_t dw_bytes = std::size_t(g.K) * g.C * g.R * g.S * sizeof(float);
    const std::size_t shift = reinterpret_cast<std::uintptr_t>(out) % 256;
    void* scratch = nullptr;
    JEM_CUDA_CHECK(cudaMalloc(&scratch, dw_bytes + shift));
    const cudnnStatus_t st = cudnnFindConvolutionBackwardFilterAlgorithmEx(
        handle_, p.x.d, a, p.y.d, b, p.conv.d, p.w.d, static_cast<char*>(scratch) + shift, count,
        &returned, perf.data(), ws.ptr, ws.bytes);
    cudaFree(scratch);
    JEM_CUDNN_CHECK(st);
    JEM_CHECK(choose(perf), "conv2d_backward_filter: cuDNN found no usable algorithm for ", describe(g));
  }

  p.searched_algo = p.algo;
  p.searched_workspace = p.workspace;
  p.searched_math = math;
  if (verbose_)
    std::fprintf(stderr,
                 "jem: cuDNN %s %s: algo %d (%s, runs with %s math, %.3f ms timed with %s math, "
                 "%zu KiB workspace)\n",
                 op_name(int(op)), describe(g).c_str(), p.algo, chosen_determinism, math_name(math),
                 double(ms), math_name(timed_math), p.workspace >> 10);
}

// ---- layouts ----------------------------------------------------------------------------------------
// A convolution computes in its output's layout (y, or dy for the backward ops): an input in the
// other layout is converted into operand_ first (the stem's NCHW images on a channels-last
// backend), a data gradient wanted in the other layout is computed into operand_ and converted
// after. In NHWC, cuDNN reads KRSC filters (its NHWC filter format, the one its channels-last
// tensor-core kernels take): the KCRS filter of the flat buffer is converted into filter_ at each
// call, and a weight gradient is computed there and added into the KCRS gradient transposed.

const float* ConvEngine::to_layout(const float* src, int N, int C, std::int64_t HW, Layout from,
                                   Layout to) {
  if (from == to) return src;
  auto* dst = static_cast<float*>(operand_.ensure(std::size_t(N) * C * HW * sizeof(float), stream_));
  if (from == Layout::NCHW) kernels::batched_transpose(N, C, HW, src, dst, false, stream_);
  else kernels::batched_transpose(N, HW, C, src, dst, false, stream_);
  return dst;
}

void ConvEngine::begin_constant_weights(const float* params, std::int64_t n) {
  const_params_ = params;
  const_n_ = n;
  const_done_.clear();  // keeps its capacity: no host allocation after the first scope
}

void ConvEngine::end_constant_weights() noexcept {
  const_params_ = nullptr;
  const_n_ = 0;
  const_done_.clear();
}

const float* ConvEngine::filter_for(const ConvGeom& g, const float* w) {
  // A 1x1 filter is the same array in KCRS and KRSC (the shortcuts).
  if (g.y_layout == Layout::NCHW || g.R * g.S == 1) return w;
  const std::int64_t size = std::int64_t(g.K) * g.C * g.R * g.S;
  if (const_params_ && w >= const_params_ && w + size <= const_params_ + const_n_) {
    // Converted once per constant-weights scope, at the filter's own offset in the mirror (both
    // buffers start at a cudaMalloc, so the copy has the filter's alignment, part of the plans'
    // key).
    const std::int64_t off = w - const_params_;
    float* mirror = static_cast<float*>(const_krsc_.ensure(std::size_t(const_n_) * sizeof(float), stream_)) + off;
    if (std::find(const_done_.begin(), const_done_.end(), off) == const_done_.end()) {
      kernels::batched_transpose(g.K, g.C, std::int64_t(g.R) * g.S, w, mirror, false, stream_);
      const_done_.push_back(off);
    }
    return mirror;
  }
  auto* krsc = static_cast<float*>(filter_.ensure(std::size_t(g.K) * g.C * g.R * g.S * sizeof(float), stream_));
  kernels::batched_transpose(g.K, g.C, std::int64_t(g.R) * g.S, w, krsc, false, stream_);
  return krsc;
}

void ConvEngine::forward(const ConvGeom& g, const float* x_in, const float* w_in, const float* b,
                         const float* z, float* y, float* act, float slope) {
  const float* x = to_layout(x_in, g.N, g.C, std::int64_t(g.H) * g.W, g.x_layout, g.y_layout);
  const float* w = filter_for(g, w_in);
  // With a residual, the bias pointer is in the key too: a call without a bias never meets a
  // plan chosen fused (the fused call needs one), and the fused call reads it at its alignment.
  // The activation's pointer is in the key too: the epilogue choice is timed with or without it.
  Plan& p = z ? plan(Op::ForwardAdd, g, x, w, y, z, b, act) : plan(Op::Forward, g, x, w, y);
  if (z && b && !p.epilogue_chosen) choose_epilogue(g, p, x, w, b, z, y, act, slope);
  const bool fused = p.fused && z && b;
  const cudnnStatus_t st = cudnnStatus_t(fused ? run_fused(p, x, w, b, z, y, act, slope)
                                               : run_unfused(p, x, w, b, z, y, act, slope));
  if (st != CUDNN_STATUS_SUCCESS)
    JEM_FAIL("cuDNN error in ", op_name(z ? 3 : 0), " ", describe(g),
             fused ? " (cudnnConvolutionBiasActivationForward)" : "", ": ",
             cudnnGetErrorString(st), " (status ", int(st), ")");
}

int ConvEngine::run_unfused(Plan& p, const float* x, const float* w, const float* b,
                            const float* z, float* y, float* act, float slope) {
  const float one = 1.0f, zero = 0.0f;
  cudnnStatus_t st = cudnnConvolutionForward(handle_, &one, p.x.d, x, p.w.d, w, p.conv.d,
                                             cudnnConvolutionFwdAlgo_t(p.algo), workspace_.get(),
                                             p.workspace, &zero, p.y.d, y);
  if (st != CUDNN_STATUS_SUCCESS) return int(st);
  if (z || act) {
    // y += b + z and act = lrelu(y) in one pass (b, z, act may be null). Channels-last: N * P * Q
    // pixels of K channels.
    const std::int64_t PQ = std::int64_t(p.g.P()) * p.g.Q();
    if (p.g.y_layout == Layout::NHWC)
      kernels::bias_residual_add_leaky_relu(int(p.g.N * PQ), p.g.K, 1, b, z, y, act, slope, stream_);
    else
      kernels::bias_residual_add_leaky_relu(p.g.N, p.g.K, PQ, b, z, y, act, slope, stream_);
  } else if (b) {
    // y += b, broadcast over N, P, Q (no bias: the next op adds it, see Backend::conv2d_forward).
    st = cudnnAddTensor(handle_, &one, p.bias.d, b, &one, p.y.d, y);
  }
  return int(st);
}

int ConvEngine::run_fused(Plan& p, const float* x, const float* w, const float* b, const float* z,
                          float* y, float* act, float slope) {
  // y = identity(1 * conv(x) + 1 * z + b)
  const float one = 1.0f;
  const cudnnStatus_t st = cudnnConvolutionBiasActivationForward(
      handle_, &one, p.x.d, x, p.w.d, w, p.conv.d, cudnnConvolutionFwdAlgo_t(p.algo),
      workspace_.get(), p.workspace, &one, p.y.d, z, p.bias.d, b, identity_->d, p.y.d, y);
  // The legacy call's activations have no LeakyReLU: a pass of its own.
  if (st == CUDNN_STATUS_SUCCESS && act)
    kernels::leaky_relu_forward(y, act, std::int64_t(p.g.N) * p.g.K * p.g.P() * p.g.Q(), slope, stream_);
  return int(st);
}

namespace {

// Device time in ms of `run` (which queues work on `stream` and returns a cuDNN status): the
// best of three calls after one warm-up call; negative when a call fails (then the runtime's
// last-error slot is cleared, so that the failed trial does not surface at the next launch
// check).
template <typename Run>
float time_calls(cudaStream_t stream, Run run) {
  struct Events {
    cudaEvent_t start = nullptr, stop = nullptr;
    Events() {
      JEM_CUDA_CHECK(cudaEventCreate(&start));
      JEM_CUDA_CHECK(cudaEventCreate(&stop));
    }
    ~Events() {
      cudaEventDestroy(start);
      cudaEventDestroy(stop);
    }
  } ev;
  auto failed = [] {
    (void)cudaGetLastError();
    return -1.0f;
  };
  if (run() != CUDNN_STATUS_SUCCESS) return failed();
  float best = -1.0f;
  for (int i = 0; i < 3; ++i) {
    JEM_CUDA_CHECK(cudaEventRecord(ev.start, stream));
    if (run() != CUDNN_STATUS_SUCCESS) return failed();
    JEM_CUDA_CHECK(cudaEventRecord(ev.stop, stream));
    JEM_CUDA_CHECK(cudaEventSynchronize(ev.stop));
    float ms = 0.0f;
    JEM_CUDA_CHECK(cudaEventElapsedTime(&ms, ev.start, ev.stop));
    if (best < 0.0f || ms < best) best = ms;
  }
  return best;
}

}  // namespace

void ConvEngine::set_epilogue(ConvEpilogue e) {
  epilogue_ = e;
  for (auto& [key, plan] : plans_) plan->epilogue_chosen = false;  // chosen again at the next call
}

void ConvEngine::choose_epilogue(const ConvGeom& g, Plan& p, const float* x, const float* w,
                                 const float* b, const float* z, float* y, float* act, float slope) {
  auto use_searched = [&] {
    JEM_CUDNN_CHECK(cudnnSetConvolutionMathType(p.conv.d, p.searched_math));
    p.algo = p.searched_algo;
    p.workspace = p.searched_workspace;
    p.fused = false;
    workspace_.ensure(p.workspace, stream_);  // a no-op, unless growing it for the fused call failed
  };
  // The fused call: IMPLICIT_PRECOMP_GEMM (the only algorithm cuDNN runs with an identity
  // activation); tensor-op math in TF32 mode, FMA in FP32 mode (deterministic either way).
  const cudnnMathType_t fused_math = math_ == MathMode::FP32 ? CUDNN_FMA_MATH : CUDNN_TENSOR_OP_MATH;
  const int fused_algo = int(CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM);
  // False (and the plan left as searched) when cuDNN cannot run it for this shape or its
  // workspace does not fit.
  auto use_fused = [&]() -> bool {
    JEM_CUDNN_CHECK(cudnnSetConvolutionMathType(p.conv.d, fused_math));
    std::size_t need = 0;
    bool ok = cudnnGetConvolutionForwardWorkspaceSize(handle_, p.x.d, p.w.d, p.conv.d, p.y.d,
                                                      cudnnConvolutionFwdAlgo_t(fused_algo),
                                                      &need) == CUDNN_STATUS_SUCCESS &&
              need <= max_workspace_;
    if (ok) {
      try {
        workspace_.ensure(need, stream_);
      } catch (const Error&) {  // out of memory: the searched plan needs less
        if (capturing(stream_)) throw;
        ok = false;
      }
    }
    if (!ok) {
      use_searched();
      return false;
    }
    p.algo = fused_algo;
    p.workspace = need;
    p.fused = true;
    return true;
  };

  if (epilogue_ == ConvEpilogue::Unfused) {
    use_searched();
    p.epilogue_chosen = true;
    return;
  }
  if (epilogue_ == ConvEpilogue::Fused) {
    const bool ok = use_fused();
    if (!ok) use_searched();
    JEM_CHECK(ok, "conv2d_forward_add: cuDNN has no fused bias + residual convolution for ",
              describe(g), " (ConvEpilogue::Fused)");
    p.epilogue_chosen = true;
    return;
  }
  // Timed. Each variant as forward() would run it, on this call's pointers (y is overwritten
  // either way). On an exception the plan is left as the search made it, to be chosen again.
  float fused_ms = -1.0f, unfused_ms = -1.0f;
  try {
    if (use_fused())
      fused_ms = time_calls(stream_, [&] { return cudnnStatus_t(run_fused(p, x, w, b, z, y, act, slope)); });
    use_searched();
    unfused_ms = time_calls(stream_, [&] { return cudnnStatus_t(run_unfused(p, x, w, b, z, y, act, slope)); });
  } catch (...) {
    p.algo = p.searched_algo;
    p.workspace = p.searched_workspace;
    p.fused = false;
    (void)cudnnSetConvolutionMathType(p.conv.d, p.searched_math);
    throw;
  }
  JEM_CHECK(unfused_ms >= 0.0f, "conv2d_forward_add: the searched algorithm failed for ", describe(g));
  if (fused_ms >= 0.0f && fused_ms < unfused_ms) use_fused();
  p.epilogue_chosen = true;
  if (verbose_) {
    char fused_time[32] = "unsupported";
    if (fused_ms >= 0.0f) std::snprintf(fused_time, sizeof fused_time, "%.3f ms", double(fused_ms));
    std::fprintf(stderr,
                 "jem: cuDNN conv2d_forward_add %s: %s (fused bias + residual%s: %s; algo %d + "
                 "bias_residual_add%s: %.3f ms)\n",
                 describe(g).c_str(), p.fused ? "fused" : "unfused", act ? " + leaky_relu" : "",
                 fused_time, p.searched_algo, act ? "_leaky_relu" : "", double(unfused_ms));
  }
}

bool ConvEngine::forward_leaky_relu(const ConvGeom& g, const float* x, const float* w, const float* b,
                                    const float* z, float* t, float* y, float slope) {
  if (!fusion_ || math_ != MathMode::TF32 || g.x_layout != Layout::NHWC ||
      g.y_layout != Layout::NHWC || !b || (z == nullptr) != (t == nullptr))
    return false;
  // The plans are built for 16-byte-aligned tensors. The model's are (its channel counts are
  // multiples of 4, its weights at 16-byte offsets of the flat buffer); a view at an odd offset
  // runs unfused. The filter as the plan reads it: filter_'s KRSC copy, the constant-weights
  // mirror at the parameter's offset, or w itself (1x1).
  auto aligned = [](const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; };
  if (!aligned(x) || !aligned(b) || !aligned(z) || !aligned(t) || !aligned(y)) return false;
  const FusionPattern pattern = z ? FusionPattern::ConvBiasAddLrelu : FusionPattern::ConvBiasLrelu;
  std::uint32_t slope_bits = 0;
  std::memcpy(&slope_bits, &slope, sizeof slope_bits);
  const std::array<std::int64_t, 12> key{int(pattern), g.N, g.C, g.H, g.W, g.K, g.R, g.S,
                                         g.stride, g.pad_h, g.pad_w, slope_bits};
  auto it = fused_.find(key);
  if (it == fused_.end()) {
    // Building may compile kernels (NVRTC, about a second) and synchronises: once per shape, and
    // never inside a capture (outside the try below: that is no verdict on the shape's plan).
    JEM_CHECK(!capturing(stream_), "cuDNN: ", describe(g),
              " has no fused plan built yet, and a CUDA Graph capture cannot build one: run "
              "the ops once before capturing them");
    std::string why;
    std::unique_ptr<FusedConv> f;
    try {
      f = FusedConv::build(handle_, pattern, Layout::NHWC, g, slope, true, &why);
    } catch (const Error& e) {  // a cuDNN without the graph API, or one that fails halfway
      why = e.what();
    }
    (void)cudaGetLastError();  // as after plan()'s search: cuDNN's leftovers are not ours
    if (verbose_)
      std::fprintf(stderr, "jem: cuDNN %s %s: %s\n", to_string(pattern), describe(g).c_str(),
                   f ? ("graph-API plan, engine " + std::to_string(f->engine())).c_str()
                     : ("no fused plan, unfused ops (" + why + ")").c_str());
    it = fused_.emplace(key, std::move(f)).first;
  }
  FusedConv* f = it->second.get();
  if (!f) return false;
  const float* wk = filter_for(g, w);
  if (!aligned(wk)) return false;
  FusedConv::Args a;
  a.x = x;
  a.w = wk;
  a.b = b;
  a.z = z;
  a.t = t;
  a.y = y;
  try {
    f->run(handle_, a, workspace_.ensure(f->workspace_bytes(), stream_));
  } catch (const Error& e) {
    if (capturing(stream_)) throw;  // not the plan's fault: see capturing()
    // A plan that built but does not run (its variant pack refused, the execution failed before
    // any launch): the shape runs unfused from now on, and this call too.
    if (verbose_)
      std::fprintf(stderr, "jem: cuDNN %s %s: the fused plan failed (%s); unfused ops from now on\n",
                   to_string(pattern), describe(g).c_str(), e.what());
    // Kept alive, not destroyed: a CUDA Graph captured earlier may hold the plan's kernels
    // (engines compiled at run time, whose modules may go with the plan). The count makes such
    // graphs stale.
    retired_fused_.push_back(std::move(it->second));
    return false;
  }
  ++fused_calls_;
  return true;
}

void ConvEngine::backward_data(const ConvGeom& g, const float* dy, const float* w_in, float* dx_out) {
  const float* w = filter_for(g, w_in);
  const std::int64_t HW = std::int64_t(g.H) * g.W;
  float* dx = dx_out;
  if (g.x_layout != g.y_layout)
    dx = static_cast<float*>(operand_.ensure(std::size_t(g.N) * g.C * HW * sizeof(float), stream_));
  Plan& p = plan(Op::BackwardData, g, dy, w, dx);
  const float one = 1.0f, zero = 0.0f;
  JEM_CUDNN_CHECK(cudnnConvolutionBackwardData(handle_, &one, p.w.d, w, p.y.d, dy, p.conv.d,
                                               cudnnConvolutionBwdDataAlgo_t(p.algo),
                                               workspace_.get(), p.workspace, &zero, p.x.d,
                                               dx));
  if (dx == dx_out) return;
  if (g.y_layout == Layout::NHWC) kernels::batched_transpose(g.N, HW, g.C, dx, dx_out, false, stream_);
  else kernels::batched_transpose(g.N, g.C, HW, dx, dx_out, false, stream_);
}

void ConvEngine::backward_filter(const ConvGeom& g, const float* x_in, const float* dy, float* dw_kcrs,
                                 float* db) {
  const float* x = to_layout(x_in, g.N, g.C, std::int64_t(g.H) * g.W, g.x_layout, g.y_layout);
  // NHWC: a KRSC gradient to convert, except for 1x1 filters (the same array either way).
  const bool nhwc = g.y_layout == Layout::NHWC && g.R * g.S > 1;
  float* dw = dw_kcrs;
  if (nhwc)
    dw = static_cast<float*>(filter_.ensure(std::size_t(g.K) * g.C * g.R * g.S * sizeof(float), stream_));
  Plan& p = plan(Op::BackwardFilter, g, x, dy, dw);
  // beta = 1: parameter gradients accumulate (backend.hpp). In NHWC the KRSC gradient is written
  // (beta = 0) and then added into the KCRS one.
  const float one = 1.0f, zero = 0.0f;
  JEM_CUDNN_CHECK(cudnnConvolutionBackwardFilter(handle_, &one, p.x.d, x, p.y.d, dy, p.conv.d,
                                                 cudnnConvolutionBwdFilterAlgo_t(p.algo),
                                                 workspace_.get(), p.workspace, nhwc ? &zero : &one,
                                                 p.w.d, dw));
  if (nhwc) kernels::batched_transpose(g.K, std::int64_t(g.R) * g.S, g.C, dw, dw_kcrs, true, stream_);
  if (db) JEM_CUDNN_CHECK(cudnnConvolutionBackwardBias(handle_, &one, p.y.d, dy, &one, p.bias.d, db));
}

}  // namespace jem::cuda

#pragma GCC diagnostic pop
