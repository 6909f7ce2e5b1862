// The cuDNN calls of cuda/cudnn_conv.cpp, implemented on the CPU as the cuDNN documentation
// defines them: 4-d float tensors, NCHW or NHWC (channels-last), and filters, KCRS or KRSC (the
// NHWC filter format), 2-d convolution descriptors (padding,
// stride, dilation, cross-correlation or convolution), y = alpha op(...) + beta y with the output
// left unread when beta is 0, and the documented restriction of the fused
// cudnnConvolutionBiasActivationForward (an identity activation runs only with
// IMPLICIT_PRECOMP_GEMM). Anything else is refused with cuDNN's status codes, so that a wrong
// descriptor or a mismatched shape in the caller fails here as it would on a GPU. A convolution
// whose x, w and y are not all in one format is refused too (CUDNN_STATUS_NOT_SUPPORTED): cuDNN
// documents its channels-last tensor-core path for all-NHWC operands, and jem converts the odd
// operand itself (cudnn_conv.cpp), which this makes the tests check.
//
// Arithmetic: sums in double, rounded once; with tensor-op math (TF32) the inputs are first
// rounded to TF32's 10-bit mantissa, as the tensor cores read them. The algorithm search reports
// two algorithms per op (one deterministic with a workspace, one non-deterministic without),
// both computing the same thing, and times them on the host clock; a call with less workspace
// than its algorithm needs is refused. The graph (backend) API is in cudnn_graph_on_cpu.cpp.
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"

#include <cudnn.h>

#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

#include "emulation/stream_capture.hpp"

struct cudnnContext {
  cudaStream_t stream = nullptr;
};
struct cudnnTensorStruct {
  bool set = false;
  int n = 0, c = 0, h = 0, w = 0;
  bool nhwc = false;  // stored channels-last
};
struct cudnnFilterStruct {
  bool set = false;
  int k = 0, c = 0, r = 0, s = 0;
  bool nhwc = false;  // stored KRSC
};
struct cudnnConvolutionStruct {
  bool set = false;
  int pad_h = 0, pad_w = 0, u = 1, v = 1, dil_h = 1, dil_w = 1;
  bool flip = false;  // CUDNN_CONVOLUTION (true) or CUDNN_CROSS_CORRELATION
  cudnnMathType_t math = CUDNN_DEFAULT_MATH;
};
struct cudnnActivationStruct {
  cudnnActivationMode_t mode = CUDNN_ACTIVATION_IDENTITY;
  double coef = 0.0;
};

namespace {

// The geometry of one convolution, checked against all four descriptors.
struct Geom {
  int N, C, H, W, K, R, S, P, Q;
  const cudnnConvolutionStruct* conv;
  bool nhwc;  // every operand channels-last (geometry() refuses a mix)
};

cudnnStatus_t geometry(const cudnnTensorStruct* x, const cudnnFilterStruct* w,
                       const cudnnConvolutionStruct* conv, const cudnnTensorStruct* y, Geom* g) {
  if (!x || !w || !conv || !y || !x->set || !w->set || !conv->set || !y->set)
    return CUDNN_STATUS_BAD_PARAM;
  if (x->c != w->c) return CUDNN_STATUS_BAD_PARAM;
  if (x->nhwc != y->nhwc || x->nhwc != w->nhwc) return CUDNN_STATUS_NOT_SUPPORTED;
  const int P = (x->h + 2 * conv->pad_h - conv->dil_h * (w->r - 1) - 1) / conv->u + 1;
  const int Q = (x->w + 2 * conv->pad_w - conv->dil_w * (w->s - 1) - 1) / conv->v + 1;
  if (y->n != x->n || y->c != w->k || y->h != P || y->w != Q) return CUDNN_STATUS_BAD_PARAM;
  *g = Geom{x->n, x->c, x->h, x->w, w->k, w->r, w->s, P, Q, conv, x->nhwc};
  return CUDNN_STATUS_SUCCESS;
}

bool tensor_op(cudnnMathType_t m) {
  return m == CUDNN_TENSOR_OP_MATH || m == CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION ||
         m == CUDNN_DEFAULT_MATH;  // cuDNN's default math allows TF32 on sm_80+
}

// Round to TF32 (10 explicit mantissa bits), to nearest even.
float to_tf32(float f) {
  std::uint32_t b;
  std::memcpy(&b, &f, 4);
  if ((b & 0x7f800000u) == 0x7f800000u) return f;  // inf, NaN
  b += 0xfffu + ((b >> 13) & 1u);
  b &= 0xffffe000u;
  std::memcpy(&f, &b, 4);
  return f;
}

// An operand [N, C, HW] as the NCHW (KCRS) array the sums below read: a copy, or the
// conversion of a channels-last (KRSC) one; rounded to TF32 when the math uses tensor cores.
std::vector<float> operand(const void* p, int N, int C, std::size_t HW, bool nhwc, bool tf32) {
  const auto* f = static_cast<const float*>(p);
  std::vector<float> v(std::size_t(N) * C * HW);
  for (std::size_t n = 0; n < std::size_t(N); ++n)
    for (std::size_t c = 0; c < std::size_t(C); ++c)
      for (std::size_t i = 0; i < HW; ++i)
        v[(n * C + c) * HW + i] = nhwc ? f[(n * HW + i) * C + c] : f[(n * C + c) * HW + i];
  if (tf32)
    for (float& x : v) x = to_tf32(x);
  return v;
}

// An NCHW result [N, C, HW] in the output's storage order.
std::vector<double> stored(std::vector<double> acc, int N, int C, std::size_t HW, bool nhwc) {
  if (!nhwc) return acc;
  std::vector<double> out(acc.size());
  for (std::size_t n = 0; n < std::size_t(N); ++n)
    for (std::size_t c = 0; c < std::size_t(C); ++c)
      for (std::size_t i = 0; i < HW; ++i) out[(n * HW + i) * C + c] = acc[(n * C + c) * HW + i];
  return out;
}

// out = alpha acc + beta out (out not read when beta is 0).
void blend(const std::vector<double>& acc, float alpha, float beta, float* out) {
  for (std::size_t i = 0; i < acc.size(); ++i)
    out[i] = beta == 0.0f ? float(alpha * acc[i]) : float(alpha * acc[i] + double(beta) * out[i]);
}

// Where element [n, c, h, w] of a tensor lies in its storage.
std::size_t offset_of(const cudnnTensorStruct* d, int n, int c, int h, int w) {
  if (d->nhwc) return ((std::size_t(n) * d->h + h) * d->w + w) * d->c + c;
  return ((std::size_t(n) * d->c + c) * d->h + h) * d->w + w;
}

int tap(const Geom& g, int r, bool rows) {  // the filter index a tap reads (flipped or not)
  if (!g.conv->flip) return r;
  return rows ? g.R - 1 - r : g.S - 1 - r;
}

// The output positions o in [lo, hi) whose tap t reads an input inside [0, size): the input is
// o * stride - pad + t * dil (the loops below then need no bounds test per element).
void valid_range(int out, int size, int stride, int pad, int t, int dil, int* lo, int* hi) {
  const int off = t * dil - pad;  // input index = o * stride + off
  int a = off >= 0 ? 0 : (-off + stride - 1) / stride;
  int b = size - 1 - off < 0 ? 0 : (size - 1 - off) / stride + 1;
  *lo = a;
  *hi = b < out ? b : out;
  if (*hi < *lo) *hi = *lo;
}

// acc[n, k, p, q] = sum_{c, r, s} x[n, c, p u - pad_h + r dil_h, q v - pad_w + s dil_w] w[k, c, r',
// s']
std::vector<double> forward_sum(const Geom& g, const float* x, const float* w) {
  std::vector<double> acc(std::size_t(g.N) * g.K * g.P * g.Q, 0.0);
  for (int n = 0; n < g.N; ++n)
    for (int k = 0; k < g.K; ++k) {
      double* a = acc.data() + (std::size_t(n) * g.K + k) * g.P * g.Q;
      for (int c = 0; c < g.C; ++c)
        for (int r = 0; r < g.R; ++r)
          for (int s = 0; s < g.S; ++s) {
            const double wv =
                w[((std::size_t(k) * g.C + c) * g.R + tap(g, r, true)) * g.S + tap(g, s, false)];
            const float* xp = x + (std::size_t(n) * g.C + c) * g.H * g.W;
            int p0, p1, q0, q1;
            valid_range(g.P, g.H, g.conv->u, g.conv->pad_h, r, g.conv->dil_h, &p0, &p1);
            valid_range(g.Q, g.W, g.conv->v, g.conv->pad_w, s, g.conv->dil_w, &q0, &q1);
            const int dh = r * g.conv->dil_h - g.conv->pad_h,
                      dw = s * g.conv->dil_w - g.conv->pad_w;
            for (int p = p0; p < p1; ++p) {
              const std::ptrdiff_t row = std::ptrdiff_t(p * g.conv->u + dh) * g.W + dw;
              double* ar = a + p * g.Q;
              for (int q = q0; q < q1; ++q) ar[q] += wv * xp[row + q * g.conv->v];
            }
          }
    }
  return acc;
}

std::vector<double> backward_data_sum(const Geom& g, const float* dy, const float* w) {
  std::vector<double> acc(std::size_t(g.N) * g.C * g.H * g.W, 0.0);
  for (int n = 0; n < g.N; ++n)
    for (int c = 0; c < g.C; ++c) {
      double* a = acc.data() + (std::size_t(n) * g.C + c) * g.H * g.W;
      for (int k = 0; k < g.K; ++k)
        for (int r = 0; r < g.R; ++r)
          for (int s = 0; s < g.S; ++s) {
            const double wv =
                w[((std::size_t(k) * g.C + c) * g.R + tap(g, r, true)) * g.S + tap(g, s, false)];
            const float* dp = dy + (std::size_t(n) * g.K + k) * g.P * g.Q;
            int p0, p1, q0, q1;
            valid_range(g.P, g.H, g.conv->u, g.conv->pad_h, r, g.conv->dil_h, &p0, &p1);
            valid_range(g.Q, g.W, g.conv->v, g.conv->pad_w, s, g.conv->dil_w, &q0, &q1);
            const int dh = r * g.conv->dil_h - g.conv->pad_h,
                      dw = s * g.conv->dil_w - g.conv->pad_w;
            for (int p = p0; p < p1; ++p) {
              const std::ptrdiff_t row = std::ptrdiff_t(p * g.conv->u + dh) * g.W + dw;
              const float* dr = dp + p * g.Q;
              for (int q = q0; q < q1; ++q) a[row + q * g.conv->v] += wv * dr[q];
            }
          }
    }
  return acc;
}

std::vector<double> backward_filter_sum(const Geom& g, const float* x, const float* dy) {
  std::vector<double> acc(std::size_t(g.K) * g.C * g.R * g.S, 0.0);
  for (int k = 0; k < g.K; ++k)
    for (int c = 0; c < g.C; ++c)
      for (int r = 0; r < g.R; ++r)
        for (int s = 0; s < g.S; ++s) {
          double sum = 0.0;
          int p0, p1, q0, q1;
          valid_range(g.P, g.H, g.conv->u, g.conv->pad_h, r, g.conv->dil_h, &p0, &p1);
          valid_range(g.Q, g.W, g.conv->v, g.conv->pad_w, s, g.conv->dil_w, &q0, &q1);
          const int dh = r * g.conv->dil_h - g.conv->pad_h, dw = s * g.conv->dil_w - g.conv->pad_w;
          for (int n = 0; n < g.N; ++n) {
            const float* xp = x + (std::size_t(n) * g.C + c) * g.H * g.W;
            const float* dp = dy + (std::size_t(n) * g.K + k) * g.P * g.Q;
            for (int p = p0; p < p1; ++p) {
              const std::ptrdiff_t row = std::ptrdiff_t(p * g.conv->u + dh) * g.W + dw;
              const float* dr = dp + p * g.Q;
              for (int q = q0; q < q1; ++q) sum += double(dr[q]) * xp[row + q * g.conv->v];
            }
          }
          acc[((std::size_t(k) * g.C + c) * g.R + tap(g, r, true)) * g.S + tap(g, s, false)] = sum;
        }
  return acc;
}

// The two algorithms every op offers: id 1 deterministic with a workspace of one float per
// filter element (so that the caller's workspace plumbing is exercised), id 0 without.
std::size_t workspace_of(int algo, const Geom& g) {
  return algo == 1 ? std::size_t(g.K) * g.C * g.R * g.S * sizeof(float) : 0;
}

template <typename Perf, typename Run>
cudnnStatus_t find(const Geom& g, int requested, int* returned, Perf* perf, std::size_t ws_bytes,
                   Run run) {
  *returned = 0;
  for (const int algo : {1, 0}) {
    if (*returned >= requested) break;
    Perf& p = perf[(*returned)++];
    std::memset(&p, 0, sizeof p);
    p.algo = decltype(p.algo)(algo);
    p.memory = workspace_of(algo, g);
    p.determinism = algo == 1 ? CUDNN_DETERMINISTIC : CUDNN_NON_DETERMINISTIC;
    p.mathType = tensor_op(g.conv->math) ? CUDNN_TENSOR_OP_MATH : CUDNN_FMA_MATH;
    if (p.memory > ws_bytes) {
      p.status = CUDNN_STATUS_NOT_SUPPORTED;  // too little workspace to try it
      p.time = -1.0f;
      continue;
    }
    const auto t0 = std::chrono::steady_clock::now();
    run();
    p.time =
        std::chrono::duration<float, std::milli>(std::chrono::steady_clock::now() - t0).count();
    p.status = CUDNN_STATUS_SUCCESS;
  }
  return CUDNN_STATUS_SUCCESS;
}

float scalar(const void* p) { return *static_cast<const float*>(p); }

// Runs work(g) on the handle's stream: at once, or when the graph runs if the stream is capturing.
// The work keeps its own copy of the convolution descriptor, as a captured cuDNN call keeps the
// parameters it was made with whatever happens to the descriptor afterwards.
template <typename Work>
void enqueue_conv(cudnnHandle_t h, const Geom& g, Work work) {
  jem::emu::enqueue(h->stream, [geom = g, conv = *g.conv, work]() mutable {
    geom.conv = &conv;
    work(geom);
  });
}

// cudnnFind* times algorithms on the stream, which a capturing thread may not synchronise.
bool search_refused() {
  return jem::emu::refuse_if_capturing("cudnnFind*AlgorithmEx") != cudaSuccess;
}

}  // namespace

extern "C" {

const char* cudnnGetErrorString(cudnnStatus_t st) {
  switch (st) {
    case CUDNN_STATUS_SUCCESS:
      return "CUDNN_STATUS_SUCCESS";
    case CUDNN_STATUS_BAD_PARAM:
      return "CUDNN_STATUS_BAD_PARAM (emulated cuDNN)";
    case CUDNN_STATUS_NOT_SUPPORTED:
      return "CUDNN_STATUS_NOT_SUPPORTED (emulated cuDNN)";
    default:
      return "CUDNN_STATUS (emulated cuDNN)";
  }
}

size_t cudnnGetVersion(void) { return CUDNN_VERSION; }

cudnnStatus_t cudnnCreate(cudnnHandle_t* h) {
  *h = new cudnnContext;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnDestroy(cudnnHandle_t h) {
  delete h;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnSetStream(cudnnHandle_t h, cudaStream_t s) {
  h->stream = s;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnGetStream(cudnnHandle_t h, cudaStream_t* s) {
  *s = h->stream;
  return CUDNN_STATUS_SUCCESS;
}

// ---- descriptors
// ---------------------------------------------------------------------------------

cudnnStatus_t cudnnCreateTensorDescriptor(cudnnTensorDescriptor_t* d) {
  *d = new cudnnTensorStruct;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnDestroyTensorDescriptor(cudnnTensorDescriptor_t d) {
  delete d;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnSetTensor4dDescriptor(cudnnTensorDescriptor_t d, cudnnTensorFormat_t format,
                                         cudnnDataType_t type, int n, int c, int h, int w) {
  if ((format != CUDNN_TENSOR_NCHW && format != CUDNN_TENSOR_NHWC) || type != CUDNN_DATA_FLOAT)
    return CUDNN_STATUS_NOT_SUPPORTED;
  if (n <= 0 || c <= 0 || h <= 0 || w <= 0) return CUDNN_STATUS_BAD_PARAM;
  *d = cudnnTensorStruct{true, n, c, h, w, format == CUDNN_TENSOR_NHWC};
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnCreateFilterDescriptor(cudnnFilterDescriptor_t* d) {
  *d = new cudnnFilterStruct;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnDestroyFilterDescriptor(cudnnFilterDescriptor_t d) {
  delete d;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnSetFilter4dDescriptor(cudnnFilterDescriptor_t d, cudnnDataType_t type,
                                         cudnnTensorFormat_t format, int k, int c, int r, int s) {
  if ((format != CUDNN_TENSOR_NCHW && format != CUDNN_TENSOR_NHWC) || type != CUDNN_DATA_FLOAT)
    return CUDNN_STATUS_NOT_SUPPORTED;
  if (k <= 0 || c <= 0 || r <= 0 || s <= 0) return CUDNN_STATUS_BAD_PARAM;
  *d = cudnnFilterStruct{true, k, c, r, s, format == CUDNN_TENSOR_NHWC};
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnCreateConvolutionDescriptor(cudnnConvolutionDescriptor_t* d) {
  *d = new cudnnConvolutionStruct;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnDestroyConvolutionDescriptor(cudnnConvolutionDescriptor_t d) {
  delete d;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnSetConvolution2dDescriptor(cudnnConvolutionDescriptor_t d, int pad_h, int pad_w,
                                              int u, int v, int dil_h, int dil_w,
                                              cudnnConvolutionMode_t mode, cudnnDataType_t type) {
  if (type != CUDNN_DATA_FLOAT) return CUDNN_STATUS_NOT_SUPPORTED;
  if (pad_h < 0 || pad_w < 0 || u <= 0 || v <= 0 || dil_h <= 0 || dil_w <= 0)
    return CUDNN_STATUS_BAD_PARAM;
  const cudnnMathType_t math = d->math;
  *d = cudnnConvolutionStruct{true, pad_h, pad_w, u, v, dil_h, dil_w, mode == CUDNN_CONVOLUTION,
                              math};
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnSetConvolutionMathType(cudnnConvolutionDescriptor_t d, cudnnMathType_t m) {
  d->math = m;
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnCreateActivationDescriptor(cudnnActivationDescriptor_t* d) {
  *d = new cudnnActivationStruct;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnDestroyActivationDescriptor(cudnnActivationDescriptor_t d) {
  delete d;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnSetActivationDescriptor(cudnnActivationDescriptor_t d,
                                           cudnnActivationMode_t mode, cudnnNanPropagation_t,
                                           double coef) {
  if (mode != CUDNN_ACTIVATION_IDENTITY && mode != CUDNN_ACTIVATION_RELU)
    return CUDNN_STATUS_NOT_SUPPORTED;
  *d = cudnnActivationStruct{mode, coef};
  return CUDNN_STATUS_SUCCESS;
}

// ---- algorithm search and workspaces
// ---------------------------------------------------------------

cudnnStatus_t cudnnGetConvolutionForwardAlgorithmMaxCount(cudnnHandle_t, int* count) {
  *count = 2;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnGetConvolutionBackwardDataAlgorithmMaxCount(cudnnHandle_t, int* count) {
  *count = 2;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnGetConvolutionBackwardFilterAlgorithmMaxCount(cudnnHandle_t, int* count) {
  *count = 2;
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnGetConvolutionForwardWorkspaceSize(
    cudnnHandle_t, const cudnnTensorDescriptor_t x, const cudnnFilterDescriptor_t w,
    const cudnnConvolutionDescriptor_t conv, const cudnnTensorDescriptor_t y,
    cudnnConvolutionFwdAlgo_t algo, size_t* bytes) {
  Geom g;
  if (const cudnnStatus_t st = geometry(x, w, conv, y, &g); st != CUDNN_STATUS_SUCCESS) return st;
  if (int(algo) > 1) return CUDNN_STATUS_NOT_SUPPORTED;
  *bytes = workspace_of(int(algo), g);
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnGetConvolutionBackwardDataWorkspaceSize(
    cudnnHandle_t, const cudnnFilterDescriptor_t w, const cudnnTensorDescriptor_t dy,
    const cudnnConvolutionDescriptor_t conv, const cudnnTensorDescriptor_t dx,
    cudnnConvolutionBwdDataAlgo_t algo, size_t* bytes) {
  Geom g;
  if (const cudnnStatus_t st = geometry(dx, w, conv, dy, &g); st != CUDNN_STATUS_SUCCESS) return st;
  if (int(algo) > 1) return CUDNN_STATUS_NOT_SUPPORTED;
  *bytes = workspace_of(int(algo), g);
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnGetConvolutionBackwardFilterWorkspaceSize(
    cudnnHandle_t, const cudnnTensorDescriptor_t x, const cudnnTensorDescriptor_t dy,
    const cudnnConvolutionDescriptor_t conv, const cudnnFilterDescriptor_t dw,
    cudnnConvolutionBwdFilterAlgo_t algo, size_t* bytes) {
  Geom g;
  if (const cudnnStatus_t st = geometry(x, dw, conv, dy, &g); st != CUDNN_STATUS_SUCCESS) return st;
  if (int(algo) > 1) return CUDNN_STATUS_NOT_SUPPORTED;
  *bytes = workspace_of(int(algo), g);
  return CUDNN_STATUS_SUCCESS;
}

// ---- the convolutions
// ------------------------------------------------------------------------------

cudnnStatus_t cudnnConvolutionForward(cudnnHandle_t h, const void* alpha,
                                      const cudnnTensorDescriptor_t xd, const void* x,
                                      const cudnnFilterDescriptor_t wd, const void* w,
                                      const cudnnConvolutionDescriptor_t conv,
                                      cudnnConvolutionFwdAlgo_t algo, void*, size_t ws_bytes,
                                      const void* beta, const cudnnTensorDescriptor_t yd, void* y) {
  Geom g;
  if (const cudnnStatus_t st = geometry(xd, wd, conv, yd, &g); st != CUDNN_STATUS_SUCCESS)
    return st;
  if (int(algo) > 1) return CUDNN_STATUS_NOT_SUPPORTED;
  if (ws_bytes < workspace_of(int(algo), g)) return CUDNN_STATUS_BAD_PARAM;
  const float al = scalar(alpha), be = scalar(beta);
  enqueue_conv(h, g, [=](const Geom& g) {
    const bool tf32 = tensor_op(g.conv->math);
    const auto xv = operand(x, g.N, g.C, std::size_t(g.H) * g.W, g.nhwc, tf32);
    const auto wv = operand(w, g.K, g.C, std::size_t(g.R) * g.S, g.nhwc, tf32);
    blend(stored(forward_sum(g, xv.data(), wv.data()), g.N, g.K, std::size_t(g.P) * g.Q, g.nhwc),
          al, be, static_cast<float*>(y));
  });
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnFindConvolutionForwardAlgorithmEx(
    cudnnHandle_t h, const cudnnTensorDescriptor_t xd, const void* x,
    const cudnnFilterDescriptor_t wd, const void* w, const cudnnConvolutionDescriptor_t conv,
    const cudnnTensorDescriptor_t yd, void* y, const int requested, int* returned,
    cudnnConvolutionFwdAlgoPerf_t* perf, void* ws, size_t ws_bytes) {
  if (search_refused()) return CUDNN_STATUS_EXECUTION_FAILED_CUDART;
  Geom g;
  if (const cudnnStatus_t st = geometry(xd, wd, conv, yd, &g); st != CUDNN_STATUS_SUCCESS)
    return st;
  const float one = 1.0f, zero = 0.0f;
  return find(g, requested, returned, perf, ws_bytes, [&] {
    (void)cudnnConvolutionForward(h, &one, xd, x, wd, w, conv,
                                  CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM, ws, ws_bytes, &zero, yd,
                                  y);
  });
}

cudnnStatus_t cudnnConvolutionBiasActivationForward(
    cudnnHandle_t h, const void* alpha1, const cudnnTensorDescriptor_t xd, const void* x,
    const cudnnFilterDescriptor_t wd, const void* w, const cudnnConvolutionDescriptor_t conv,
    cudnnConvolutionFwdAlgo_t algo, void* ws, size_t ws_bytes, const void* alpha2,
    const cudnnTensorDescriptor_t zd, const void* z, const cudnnTensorDescriptor_t bd,
    const void* bias, const cudnnActivationDescriptor_t act, const cudnnTensorDescriptor_t yd,
    void* y) {
  Geom g;
  if (const cudnnStatus_t st = geometry(xd, wd, conv, yd, &g); st != CUDNN_STATUS_SUCCESS)
    return st;
  // cuDNN's documented restriction: the identity activation only with IMPLICIT_PRECOMP_GEMM.
  if (act->mode == CUDNN_ACTIVATION_IDENTITY &&
      algo != CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM)
    return CUDNN_STATUS_NOT_SUPPORTED;
  if (!zd->set || zd->n != yd->n || zd->c != yd->c || zd->h != yd->h || zd->w != yd->w ||
      zd->nhwc != yd->nhwc)
    return CUDNN_STATUS_BAD_PARAM;
  if (!bd->set || bd->n != 1 || bd->c != g.K || bd->h != 1 || bd->w != 1)
    return CUDNN_STATUS_BAD_PARAM;
  if (ws_bytes < workspace_of(int(algo), g)) return CUDNN_STATUS_BAD_PARAM;
  (void)ws;
  const float a1 = scalar(alpha1), a2 = scalar(alpha2);
  const bool relu = act->mode == CUDNN_ACTIVATION_RELU;
  enqueue_conv(h, g, [=](const Geom& g) {
    const bool tf32 = tensor_op(g.conv->math);
    const auto xv = operand(x, g.N, g.C, std::size_t(g.H) * g.W, g.nhwc, tf32);
    const auto wv = operand(w, g.K, g.C, std::size_t(g.R) * g.S, g.nhwc, tf32);
    const std::vector<double> acc =
        stored(forward_sum(g, xv.data(), wv.data()), g.N, g.K, std::size_t(g.P) * g.Q, g.nhwc);
    const auto* zp = static_cast<const float*>(z);
    const auto* bp = static_cast<const float*>(bias);
    auto* yp = static_cast<float*>(y);
    const std::size_t plane = std::size_t(g.P) * g.Q;
    for (std::size_t i = 0; i < acc.size(); ++i) {
      const std::size_t k = g.nhwc ? i % std::size_t(g.K) : (i / plane) % std::size_t(g.K);
      double v = a1 * acc[i] + double(a2) * zp[i] + bp[k];
      if (relu && v < 0.0) v = 0.0;
      yp[i] = float(v);
    }
  });
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnConvolutionBackwardData(cudnnHandle_t h, const void* alpha,
                                           const cudnnFilterDescriptor_t wd, const void* w,
                                           const cudnnTensorDescriptor_t dyd, const void* dy,
                                           const cudnnConvolutionDescriptor_t conv,
                                           cudnnConvolutionBwdDataAlgo_t algo, void*,
                                           size_t ws_bytes, const void* beta,
                                           const cudnnTensorDescriptor_t dxd, void* dx) {
  Geom g;
  if (const cudnnStatus_t st = geometry(dxd, wd, conv, dyd, &g); st != CUDNN_STATUS_SUCCESS)
    return st;
  if (int(algo) > 1) return CUDNN_STATUS_NOT_SUPPORTED;
  if (ws_bytes < workspace_of(int(algo), g)) return CUDNN_STATUS_BAD_PARAM;
  const float al = scalar(alpha), be = scalar(beta);
  enqueue_conv(h, g, [=](const Geom& g) {
    const bool tf32 = tensor_op(g.conv->math);
    const auto dyv = operand(dy, g.N, g.K, std::size_t(g.P) * g.Q, g.nhwc, tf32);
    const auto wv = operand(w, g.K, g.C, std::size_t(g.R) * g.S, g.nhwc, tf32);
    blend(stored(backward_data_sum(g, dyv.data(), wv.data()), g.N, g.C, std::size_t(g.H) * g.W,
                 g.nhwc),
          al, be, static_cast<float*>(dx));
  });
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnFindConvolutionBackwardDataAlgorithmEx(
    cudnnHandle_t h, const cudnnFilterDescriptor_t wd, const void* w,
    const cudnnTensorDescriptor_t dyd, const void* dy, const cudnnConvolutionDescriptor_t conv,
    const cudnnTensorDescriptor_t dxd, void* dx, const int requested, int* returned,
    cudnnConvolutionBwdDataAlgoPerf_t* perf, void* ws, size_t ws_bytes) {
  if (search_refused()) return CUDNN_STATUS_EXECUTION_FAILED_CUDART;
  Geom g;
  if (const cudnnStatus_t st = geometry(dxd, wd, conv, dyd, &g); st != CUDNN_STATUS_SUCCESS)
    return st;
  const float one = 1.0f, zero = 0.0f;
  return find(g, requested, returned, perf, ws_bytes, [&] {
    (void)cudnnConvolutionBackwardData(h, &one, wd, w, dyd, dy, conv,
                                       CUDNN_CONVOLUTION_BWD_DATA_ALGO_0, ws, ws_bytes, &zero, dxd,
                                       dx);
  });
}

cudnnStatus_t cudnnConvolutionBackwardFilter(cudnnHandle_t h, const void* alpha,
                                             const cudnnTensorDescriptor_t xd, const void* x,
                                             const cudnnTensorDescriptor_t dyd, const void* dy,
                                             const cudnnConvolutionDescriptor_t conv,
                                             cudnnConvolutionBwdFilterAlgo_t algo, void*,
                                             size_t ws_bytes, const void* beta,
                                             const cudnnFilterDescriptor_t dwd, void* dw) {
  Geom g;
  if (const cudnnStatus_t st = geometry(xd, dwd, conv, dyd, &g); st != CUDNN_STATUS_SUCCESS)
    return st;
  if (int(algo) > 1) return CUDNN_STATUS_NOT_SUPPORTED;
  if (ws_bytes < workspace_of(int(algo), g)) return CUDNN_STATUS_BAD_PARAM;
  const float al = scalar(alpha), be = scalar(beta);
  enqueue_conv(h, g, [=](const Geom& g) {
    const bool tf32 = tensor_op(g.conv->math);
    const auto xv = operand(x, g.N, g.C, std::size_t(g.H) * g.W, g.nhwc, tf32);
    const auto dyv = operand(dy, g.N, g.K, std::size_t(g.P) * g.Q, g.nhwc, tf32);
    blend(stored(backward_filter_sum(g, xv.data(), dyv.data()), g.K, g.C, std::size_t(g.R) * g.S,
                 g.nhwc),
          al, be, static_cast<float*>(dw));
  });
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnFindConvolutionBackwardFilterAlgorithmEx(
    cudnnHandle_t h, const cudnnTensorDescriptor_t xd, const void* x,
    const cudnnTensorDescriptor_t dyd, const void* dy, const cudnnConvolutionDescriptor_t conv,
    const cudnnFilterDescriptor_t dwd, void* dw, const int requested, int* returned,
    cudnnConvolutionBwdFilterAlgoPerf_t* perf, void* ws, size_t ws_bytes) {
  if (search_refused()) return CUDNN_STATUS_EXECUTION_FAILED_CUDART;
  Geom g;
  if (const cudnnStatus_t st = geometry(xd, dwd, conv, dyd, &g); st != CUDNN_STATUS_SUCCESS)
    return st;
  const float one = 1.0f, zero = 0.0f;
  return find(g, requested, returned, perf, ws_bytes, [&] {
    (void)cudnnConvolutionBackwardFilter(h, &one, xd, x, dyd, dy, conv,
                                         CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0, ws, ws_bytes, &zero,
                                         dwd, dw);
  });
}

// db[k] = alpha sum_{n, p, q} dy[n, k, p, q] + beta db[k]
cudnnStatus_t cudnnConvolutionBackwardBias(cudnnHandle_t handle, const void* alpha,
                                           const cudnnTensorDescriptor_t dyd, const void* dy,
                                           const void* beta, const cudnnTensorDescriptor_t dbd,
                                           void* db) {
  if (!dyd->set || !dbd->set || dbd->n != 1 || dbd->c != dyd->c || dbd->h != 1 || dbd->w != 1)
    return CUDNN_STATUS_BAD_PARAM;
  const float al = scalar(alpha), be = scalar(beta);
  jem::emu::enqueue(handle->stream, [=, dyt = *dyd] {
    std::vector<double> acc(std::size_t(dyt.c), 0.0);
    const auto* d = static_cast<const float*>(dy);
    for (int n = 0; n < dyt.n; ++n)
      for (int k = 0; k < dyt.c; ++k)
        for (int h = 0; h < dyt.h; ++h)
          for (int w = 0; w < dyt.w; ++w) acc[std::size_t(k)] += d[offset_of(&dyt, n, k, h, w)];
    blend(acc, al, be, static_cast<float*>(db));
  });
  return CUDNN_STATUS_SUCCESS;
}

// C = alpha A + beta C, A broadcast along its dimensions of size 1 (here: a bias [1, C, 1, 1]).
cudnnStatus_t cudnnAddTensor(cudnnHandle_t h, const void* alpha, const cudnnTensorDescriptor_t ad,
                             const void* a, const void* beta, const cudnnTensorDescriptor_t cd,
                             void* c) {
  if (!ad->set || !cd->set) return CUDNN_STATUS_BAD_PARAM;
  auto fits = [](int da, int dc) { return da == dc || da == 1; };
  if (!fits(ad->n, cd->n) || !fits(ad->c, cd->c) || !fits(ad->h, cd->h) || !fits(ad->w, cd->w))
    return CUDNN_STATUS_BAD_PARAM;
  const float al = scalar(alpha), be = scalar(beta);
  jem::emu::enqueue(h->stream, [=, at = *ad, ct = *cd] {
    const auto* ap = static_cast<const float*>(a);
    auto* cp = static_cast<float*>(c);
    for (int n = 0; n < ct.n; ++n)
      for (int k = 0; k < ct.c; ++k)
        for (int i = 0; i < ct.h; ++i)
          for (int j = 0; j < ct.w; ++j) {
            const std::size_t ci = offset_of(&ct, n, k, i, j);
            const std::size_t ai = offset_of(&at, at.n == 1 ? 0 : n, at.c == 1 ? 0 : k,
                                             at.h == 1 ? 0 : i, at.w == 1 ? 0 : j);
            cp[ci] = float(double(al) * ap[ai] + double(be) * cp[ci]);
          }
  });
  return CUDNN_STATUS_SUCCESS;
}

}  // extern "C"
