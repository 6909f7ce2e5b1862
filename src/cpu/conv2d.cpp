// CPU convolutions: im2col lowering + OpenBLAS sgemm, one image per OpenMP thread at a time;
// by the direct AVX2 kernels of conv3x3_direct.hpp where the CPU has them: 3x3 pad-1 forward
// and data gradient (stride 1 and 2), and the stride-1 weight gradient; and on AVX-512 CPUs by
// the flat-layout kernels, several images per call: the 3x3 pad-1 weight gradient of stride 1
// and 2 (conv3x3_wgrad512.hpp) and the stride-2 forward and data gradient
// (conv3x3_s2_flat512.hpp); and, for small images with many channels, by the
// channel-vectorised kernel (conv3x3_cvec512.hpp): forward and stride-1 data gradient; on AVX2
// CPUs without AVX-512 by Winograd F(2x2, 3x3) (conv3x3_winograd.hpp): the stride-1 3x3 forward
// and data gradient with >= 8 channels on images >= 14 wide (use_winograd), and the weight
// gradient with >= 16.
//
// Per image n, with CRR = C*R*S (the kernel is R rows by S columns) and PQ = P*Q:
//   forward          y_n[K, PQ]   = w[K, CRR] * col_n[CRR, PQ] + b
//   backward-data    dcol[CRR, PQ] = w^T[CRR, K] * dy_n[K, PQ];  dx_n = col2im(dcol)
//   backward-filter  dw[K, CRR]  += dy_n[K, PQ] * col_n^T[PQ, CRR]
// A 1x1, stride-1, unpadded convolution needs no lowering: col_n is x_n itself.
// Weight gradients go to per-thread partial buffers first, then are added to dw in thread order,
// so the sum is the same for the same thread count (static schedule). Forward and backward-data
// compute each image on its own, so they take images dynamically: a thread slowed down by
// another process on its core does not hold the other back at the barrier, and the result is
// the same whichever thread computes an image.
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cstring>

#include "cpu/conv3x3_cvec512.hpp"
#include "cpu/conv3x3_direct.hpp"
#include "cpu/conv3x3_s2_flat512.hpp"
#include "cpu/conv3x3_wgrad512.hpp"
#include "cpu/conv3x3_winograd.hpp"
#include "cpu/flat_layout.hpp"
#include "cpu/cpu_backend.hpp"
#include "cpu/leaky_relu_spans.hpp"

namespace jem::cpu {
namespace {

// run(first_image, images, thread) over the stride-2 flat kernels' chunks of images
// (s2flat_chunk_images each, the last one possibly short), one chunk per task.
template <class Run>
void for_each_s2flat_chunk(const ConvGeom& g, int threads, Run&& run) {
  const int B = s2flat_chunk_images(g, threads);
  const int chunks = (g.N + B - 1) / B;
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
  for (int i = 0; i < chunks; ++i) run(i * B, B, omp_get_thread_num());
}

bool is_pointwise(const ConvGeom& g) {
  return g.R == 1 && g.S == 1 && g.stride == 1 && g.pad_h == 0 && g.pad_w == 0;
}

// col[(c*R + kh)*S + kw, p*Q + q] = x[c, p*stride - pad_h + kh, q*stride - pad_w + kw] (0 outside)
void im2col(const ConvGeom& g, const float* x, float* col) {
  const int P = g.P(), Q = g.Q();
  for (int c = 0; c < g.C; ++c) {
    const float* xc = x + static_cast<std::int64_t>(c) * g.H * g.W;
    for (int kh = 0; kh < g.R; ++kh) {
      for (int kw = 0; kw < g.S; ++kw) {
        float* row = col + (static_cast<std::int64_t>(c * g.R + kh) * g.S + kw) * P * Q;
        for (int p = 0; p < P; ++p) {
          const int ih = p * g.stride - g.pad_h + kh;
          float* out = row + static_cast<std::int64_t>(p) * Q;
          if (ih < 0 || ih >= g.H) {
            std::fill_n(out, Q, 0.0f);
            continue;
          }
          const float* xrow = xc + static_cast<std::int64_t>(ih) * g.W;
          if (g.stride == 1) {
            // A contiguous run: zeros at the borders, a straight copy in between. Written as
            // plain loops: the runs are short (one image row), too short for memcpy's call.
            const int q_begin = std::max(0, g.pad_w - kw);
            const int q_end = std::max(q_begin, std::min(Q, g.W + g.pad_w - kw));
            const int shift = kw - g.pad_w;  // out[q] = xrow[q + shift]
            for (int q = 0; q < q_begin; ++q) out[q] = 0.0f;
#pragma omp simd
            for (int q = q_begin; q < q_end; ++q) out[q] = xrow[q + shift];
            for (int q = q_end; q < Q; ++q) out[q] = 0.0f;
          } else {
            // The same with a stride: the q reading inside the row form one interval
            // [q_begin, q_end) (as in col2im below), copied without a branch per pixel.
            const int shift = kw - g.pad_w;  // out[q] = xrow[q * stride + shift]
            const int q_begin = std::min(Q, std::max(0, (g.stride - 1 - shift) / g.stride));
            const int last = g.W - 1 - shift;
            const int q_end = std::max(q_begin, std::min(Q, last < 0 ? 0 : last / g.stride + 1));
            for (int q = 0; q < q_begin; ++q) out[q] = 0.0f;
            for (int q = q_begin; q < q_end; ++q) out[q] = xrow[q * g.stride + shift];
            for (int q = q_end; q < Q; ++q) out[q] = 0.0f;
          }
        }
      }
    }
  }
}

// The adjoint of im2col: dx = 0, then dx[c, ih, iw] += dcol[...] for every tap that read it.
// Same run structure as im2col: for each (c, kh, kw, p) the valid q form one interval, so the
// inner loop is a branch-free, vectorisable add (stride 1) or a strided one.
void col2im(const ConvGeom& g, const float* col, float* dx) {
  const int P = g.P(), Q = g.Q();
  std::fill_n(dx, static_cast<std::int64_t>(g.C) * g.H * g.W, 0.0f);
  for (int c = 0; c < g.C; ++c) {
    float* dxc = dx + static_cast<std::int64_t>(c) * g.H * g.W;
    for (int kh = 0; kh < g.R; ++kh) {
      for (int kw = 0; kw < g.S; ++kw) {
        const float* row = col + (static_cast<std::int64_t>(c * g.R + kh) * g.S + kw) * P * Q;
        // q such that 0 <= q*stride - pad_w + kw < W. The upper bound's numerator is negative
        // when the tap lies wholly right of the image (a 1-pixel image, kw > pad_w): it needs
        // floor division, which C++'s / (truncation) is not (found by the stride-2 1x1 case).
        const int q_begin = std::max(0, (g.pad_w - kw + g.stride - 1) / g.stride);
        const int last = g.W - 1 + g.pad_w - kw;
        const int q_end = std::min(Q, last < 0 ? 0 : last / g.stride + 1);
        if (q_end <= q_begin) continue;
        for (int p = 0; p < P; ++p) {
          const int ih = p * g.stride - g.pad_h + kh;
          if (ih < 0 || ih >= g.H) continue;
          float* __restrict dxrow = dxc + static_cast<std::int64_t>(ih) * g.W + (kw - g.pad_w);
          const float* __restrict in = row + static_cast<std::int64_t>(p) * Q;
          if (g.stride == 1) {
#pragma omp simd
            for (int q = q_begin; q < q_end; ++q) dxrow[q] += in[q];
          } else {
            for (int q = q_begin; q < q_end; ++q) dxrow[q * g.stride] += in[q];
          }
        }
      }
    }
  }
}

// Scratch slots (per thread): 0 im2col columns, the padded image of the direct kernel or the
// flat-layout chunk of the AVX-512 kernels, 1 partial weight gradients, 2 the flipped kernel of
// backward-data, 3 the direct, flat, channel-vectorised or Winograd kernels' packed weights, 4
// the direct weight gradient's per-lane sums or the Winograd one's transform-domain sums. Slots 2
// and 3 are filled by thread 0's entry before a parallel loop and only read inside it.
constexpr int kSlotCol = 0, kSlotPartial = 1, kSlotFlipped = 2, kSlotPacked = 3, kSlotLanes = 4;

}  // namespace

bool CpuBackend::use_direct3x3(const ConvGeom& g) const {
  return kernels_ != CpuConvKernels::kIm2col && direct3x3_applies(g);
}

// The channel-vectorised AVX-512 kernel where pixel vectors would be mostly empty: output rows of
// at most 8 pixels, and at least 64 output channels (4 full vectors per register block).
// Measured at 1 thread: WRN-28-2's 128-channel 8x8 layers at batch 64, forward 16.6 -> 8.8 ms
// and data gradient 16.7 -> 9.1 ms; its stride-2 128-channel layer 12.1 -> 10.4 ms (forward);
// on 16x16 images with 64 channels it was 5% slower, on 16x16 with 128 output channels 20%
// slower than the pixel-vector kernels.
bool CpuBackend::use_cvec(const ConvGeom& g) const {
  return kernels_ == CpuConvKernels::kBest && use_direct3x3(g) && cvec_applies(g) && g.K >= 64 && g.Q() <= 8;
}

// Winograd F(2x2, 3x3) for stride-1 3x3 convolutions: always under kWinogradAvx2; under kBest on
// CPUs without AVX-512 (those have the 16-pixel direct kernels, against which it has not been
// measured), with both channel counts >= 8 and images >= 14 wide. Measured at 1 thread, Zen 4
// (AVX2), batch 64, bench_ops conv_fwd / conv_bwd_data, direct -> Winograd:
//   WRN-10-1: 16->16 28x28 3.76 -> 3.28 ms, 16->32 28x28 7.41 -> 6.01, 32->64 14x14 6.92 -> 4.71;
//   WRN-28-2: 32->32 32x32 15.6 -> 10.9, 64->64 16x16 15.5 -> 8.5, 64->128 16x16 29.8 -> 16.4;
//   slower: 128->128 8x8 15.3 -> 17.0 (4 tiles per row in an 8-tile vector: half of them
//   padding), and the stems (1 or 3 input channels, or as the data gradient 1 or 3 outputs: a
//   4-channel block mostly empty), 0.49 -> 1.07 and 1.27 -> 1.42.
// The data gradient of a stride-1 convolution is the forward pass of its transposed kernel, so
// the same rule is asked of that geometry.
bool CpuBackend::use_winograd(const ConvGeom& g) const {
  if (kernels_ == CpuConvKernels::kWinogradAvx2) return winograd_applies(g);
  return kernels_ == CpuConvKernels::kBest && use_direct3x3(g) && winograd_applies(g) &&
         !flat::cpu_has_avx512f() && g.C >= 8 && g.K >= 8 && g.W >= 14;
}

// The AVX-512 flat-layout kernels (kBest only, so that kDirectAvx2 keeps testing the AVX2 ones).
bool CpuBackend::use_s2flat(const ConvGeom& g) const {
  return kernels_ == CpuConvKernels::kBest && use_direct3x3(g) && s2flat_applies(g);
}

// The fused ops' tail (see cpu_backend.hpp): forward, act = leaky_relu(out + bias[c]) (bias may
// be null, act may be out); backward, out = leaky_relu'(m) out + z (z may be null). The spans are
// the unfused ops' own (leaky_relu_spans.hpp), so the two ways give the same bits.
struct CpuBackend::ConvTail {
  bool backward = false;
  float slope = 0.0f;
  int channels = 0;         // per image: `channels` planes of `plane` elements
  std::int64_t plane = 0;
  const float* bias = nullptr;  // forward
  float* act = nullptr;
  const float* m = nullptr;     // backward
  const float* z = nullptr;

  void apply(float* out, int n0, int n1) const {
    const std::int64_t per = channels * plane;
    for (std::int64_t n = n0; n < n1; ++n) {
      const std::int64_t o = n * per;
      if (backward) {
        if (z) leaky_relu_grad_add_span(per, m + o, out + o, z + o, out + o, slope);
        else leaky_relu_grad_span(per, m + o, out + o, out + o, slope);
      } else if (bias) {
        for (int c = 0; c < channels; ++c)
          bias_leaky_relu_span(plane, out + o + c * plane, bias[c], act + o + c * plane, slope);
      } else {
        leaky_relu_span(per, out + o, act + o, slope);
      }
    }
  }
};

void CpuBackend::conv2d_forward_impl(const ConvGeom& g, const float* x, const float* w,
                                     const float* b, const float* z, float* y) {
  conv2d_forward_with(g, x, w, b, z, y, nullptr);
}

void CpuBackend::conv2d_forward_leaky_relu_impl(const ConvGeom& g, const float* x, const float* w,
                                                const float* b, const float* z, float* t, float* y,
                                                float slope) {
  ConvTail tail;
  tail.slope = slope;
  tail.channels = g.K;
  tail.plane = std::int64_t(g.P()) * g.Q();
  tail.act = y;
  if (b && !z && !t) {  // the bias joins the activation, as bias_leaky_relu_forward
    tail.bias = b;
    conv2d_forward_with(g, x, w, nullptr, nullptr, y, &tail);
  } else {
    conv2d_forward_with(g, x, w, b, z, t ? t : y, &tail);
  }
}

void CpuBackend::conv2d_forward_with(const ConvGeom& g, const float* x, const float* w, const float* b,
                                     const float* z, float* y, const ConvTail* tail) {
  const int PQ = g.P() * g.Q();
  const int CRR = g.C * g.R * g.S;
  const std::int64_t x_stride = static_cast<std::int64_t>(g.C) * g.H * g.W;
  const std::int64_t y_stride = static_cast<std::int64_t>(g.K) * PQ;
  // kernel(x_n, z_n or null, y_n, thread) for every image, taken dynamically by the threads,
  // each image's tail run right after it.
  auto each_image = [&](auto&& kernel) {
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads_)
    for (int n = 0; n < g.N; ++n) {
      kernel(x + n * x_stride, z ? z + n * y_stride : nullptr, y + n * y_stride, omp_get_thread_num());
      if (tail) tail->apply(y, n, n + 1);
    }
  };
  if (use_cvec(g)) {
    float* wp = scratch(0, kSlotPacked, cvec_packed_size(g));
    cvec_pack(g, w, wp);
    each_image([&](const float* xn, const float* zn, float* yn, int t) {
      cvec_image(g, xn, wp, b, zn, scratch(t, kSlotCol, cvec_scratch_size(g)), yn);
    });
    return;
  }
  if (use_s2flat(g)) {
    float* wp = scratch(0, kSlotPacked, s2flat_forward_packed_size(g));
    s2flat_forward_pack(g, w, wp);
    for_each_s2flat_chunk(g, threads_, [&](int n0, int B, int thread) {
      s2flat_forward_chunk(g, x, wp, b, z, n0, B,
                           scratch(thread, kSlotCol, s2flat_forward_scratch_size(g, B)), y);
      if (tail) tail->apply(y, n0, std::min(n0 + B, g.N));
    });
    return;
  }
  if (use_winograd(g)) {
    float* U = scratch(0, kSlotPacked, winograd_packed_size(g));
    winograd_pack(g, w, U);
    each_image([&](const float* xn, const float* zn, float* yn, int t) {
      winograd_image(g, xn, U, b, zn, scratch(t, kSlotCol, winograd_scratch_size(g)), yn);
    });
    return;
  }
  if (use_direct3x3(g)) {
    float* wp = scratch(0, kSlotPacked, direct3x3_packed_weight_size(g));
    direct3x3_pack_weights(g, w, wp);
    each_image([&](const float* xn, const float* zn, float* yn, int t) {
      direct3x3_image(g, xn, wp, b, zn, scratch(t, kSlotCol, direct3x3_scratch_size(g)), yn,
                      kernels_ == CpuConvKernels::kBest);
    });
    return;
  }
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads_)
  for (int n = 0; n < g.N; ++n) {
    const float* xn = x + n * x_stride;
    float* yn = y + n * y_stride;
    const float* col = xn;
    if (!is_pointwise(g)) {
      float* buf = scratch(omp_get_thread_num(), kSlotCol, static_cast<std::size_t>(CRR) * PQ);
      im2col(g, xn, buf);
      col = buf;
    }
    // y starts as bias + residual; the GEMM adds the convolution (beta = 1).
    for (int k = 0; k < g.K; ++k) {
      float* yk = yn + static_cast<std::int64_t>(k) * PQ;
      const float bk = b ? b[k] : 0.0f;
      if (z) {
        const float* zk = z + n * y_stride + static_cast<std::int64_t>(k) * PQ;
        for (int i = 0; i < PQ; ++i) yk[i] = zk[i] + bk;
      } else {
        std::fill_n(yk, PQ, bk);
      }
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, g.K, PQ, CRR, 1.0f, w, CRR, col, PQ,
                1.0f, yn, PQ);
    if (tail) tail->apply(y, n, n + 1);
  }
}

void CpuBackend::conv2d_backward_data_impl(const ConvGeom& g, const float* dy, const float* w,
                                           float* dx) {
  conv2d_backward_data_with(g, dy, w, dx, nullptr);
}

void CpuBackend::conv2d_backward_data_leaky_relu_impl(const ConvGeom& g, const float* dy, const float* w,
                                                      const float* m, const float* z, float* dx,
                                                      float slope) {
  ConvTail tail;
  tail.backward = true;
  tail.slope = slope;
  tail.channels = g.C;
  tail.plane = std::int64_t(g.H) * g.W;
  tail.m = m;
  tail.z = z;
  conv2d_backward_data_with(g, dy, w, dx, &tail);
}

void CpuBackend::conv2d_backward_data_with(const ConvGeom& g, const float* dy, const float* w, float* dx,
                                           const ConvTail* tail) {
  const int PQ = g.P() * g.Q();
  const int CRR = g.C * g.R * g.S;
  const std::int64_t x_stride = static_cast<std::int64_t>(g.C) * g.H * g.W;
  const std::int64_t y_stride = static_cast<std::int64_t>(g.K) * PQ;
  // A stride-1 convolution's data gradient is itself a stride-1 convolution of dy with the
  // flipped, channel-transposed kernel and padding (R-1-pad_h, S-1-pad_w):
  //   dx[c, h, w] = sum_{k, r, s} dy[k, h + pad_h - r, w + pad_w - s] * W[k, c, r, s]
  //              = conv(dy, W'), W'[c, k, r', s'] = W[k, c, R-1-r', S-1-s'].
  // Lowering it like a forward pass (im2col of dy, one GEMM straight into dx) skips the col2im
  // scatter and the zeroing of a 9x larger column buffer that the adjoint form needs.
  const bool as_forward = g.stride == 1 && !is_pointwise(g) && 2 * g.pad_h == g.R - 1 &&
                          2 * g.pad_w == g.S - 1;
  float* wt = nullptr;
  ConvGeom tg;
  if (as_forward) {
    wt = scratch(0, kSlotFlipped, static_cast<std::size_t>(g.K) * CRR);
    for (int k = 0; k < g.K; ++k)
      for (int c = 0; c < g.C; ++c)
        for (int r = 0; r < g.R; ++r)
          for (int t = 0; t < g.S; ++t)
            wt[((static_cast<std::int64_t>(c) * g.K + k) * g.R + (g.R - 1 - r)) * g.S + (g.S - 1 - t)] =
                w[((static_cast<std::int64_t>(k) * g.C + c) * g.R + r) * g.S + t];
    tg = g;  // input dy [K, P, Q] -> output dx [C, H, W]; P == H and Q == W here
    tg.C = g.K;
    tg.K = g.C;
    tg.H = g.P();
    tg.W = g.Q();
    tg.pad_h = g.R - 1 - g.pad_h;
    tg.pad_w = g.S - 1 - g.pad_w;
  }
  // kernel(dy_n, dx_n, thread) for every image, taken dynamically by the threads, each image's
  // tail run right after it.
  auto each_image = [&](auto&& kernel) {
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads_)
    for (int n = 0; n < g.N; ++n) {
      kernel(dy + n * y_stride, dx + n * x_stride, omp_get_thread_num());
      if (tail) tail->apply(dx, n, n + 1);
    }
  };
  if (as_forward && use_cvec(tg)) {
    float* wp = scratch(0, kSlotPacked, cvec_packed_size(tg));
    cvec_pack(tg, wt, wp);
    each_image([&](const float* dyn, float* dxn, int t) {
      cvec_image(tg, dyn, wp, nullptr, nullptr, scratch(t, kSlotCol, cvec_scratch_size(tg)), dxn);
    });
    return;
  }
  if (as_forward && use_winograd(tg)) {
    float* U = scratch(0, kSlotPacked, winograd_packed_size(tg));
    winograd_pack(tg, wt, U);
    each_image([&](const float* dyn, float* dxn, int t) {
      winograd_image(tg, dyn, U, nullptr, nullptr, scratch(t, kSlotCol, winograd_scratch_size(tg)), dxn);
    });
    return;
  }
  float* wp = nullptr;
  if (as_forward && use_direct3x3(tg)) {
    wp = scratch(0, kSlotPacked, direct3x3_packed_weight_size(tg));
    direct3x3_pack_weights(tg, wt, wp);
  }
  if (use_s2flat(g)) {
    float* wq = scratch(0, kSlotPacked, s2flat_data_grad_packed_size(g));
    s2flat_data_grad_pack(g, w, wq);
    for_each_s2flat_chunk(g, threads_, [&](int n0, int B, int thread) {
      s2flat_data_grad_chunk(g, dy, wq, n0, B,
                             scratch(thread, kSlotCol, s2flat_data_grad_scratch_size(g, B)), dx);
      if (tail) tail->apply(dx, n0, std::min(n0 + B, g.N));
    });
    return;
  }
  if (g.stride == 2 && use_direct3x3(g)) {
    float* wq = scratch(0, kSlotPacked, direct3x3_s2_data_grad_packed_size(g));
    direct3x3_s2_data_grad_pack(g, w, wq);
    each_image([&](const float* dyn, float* dxn, int t) {
      direct3x3_s2_data_grad_image(g, dyn, wq, scratch(t, kSlotCol, direct3x3_s2_data_grad_scratch_size(g)), dxn);
    });
    return;
  }
  // One image's data gradient by the first way that applies.
  auto image = [&](int n) {
    const float* dyn = dy + n * y_stride;
    float* dxn = dx + n * x_stride;
    if (is_pointwise(g)) {
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, CRR, PQ, g.K, 1.0f, w, CRR, dyn, PQ,
                  0.0f, dxn, PQ);
      return;
    }
    if (wp != nullptr) {
      direct3x3_image(tg, dyn, wp, nullptr, nullptr,
                      scratch(omp_get_thread_num(), kSlotCol, direct3x3_scratch_size(tg)), dxn,
                      kernels_ == CpuConvKernels::kBest);
      return;
    }
    if (as_forward) {
      const int KRR = g.K * g.R * g.S, HW = g.H * g.W;
      float* col = scratch(omp_get_thread_num(), kSlotCol, static_cast<std::size_t>(KRR) * HW);
      im2col(tg, dyn, col);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, g.C, HW, KRR, 1.0f, wt, KRR, col, HW,
                  0.0f, dxn, HW);
      return;
    }
    float* dcol = scratch(omp_get_thread_num(), kSlotCol, static_cast<std::size_t>(CRR) * PQ);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, CRR, PQ, g.K, 1.0f, w, CRR, dyn, PQ, 0.0f,
                dcol, PQ);
    col2im(g, dcol, dxn);
  };
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads_)
  for (int n = 0; n < g.N; ++n) {
    image(n);
    if (tail) tail->apply(dx, n, n + 1);
  }
}

void CpuBackend::conv2d_backward_filter_impl(const ConvGeom& g, const float* x, const float* dy,
                                             float* dw, float* db) {
  const int PQ = g.P() * g.Q();
  const int CRR = g.C * g.R * g.S;
  const std::int64_t x_stride = static_cast<std::int64_t>(g.C) * g.H * g.W;
  const std::int64_t y_stride = static_cast<std::int64_t>(g.K) * PQ;
  const std::size_t wsize = static_cast<std::size_t>(g.K) * CRR;
  const int T = std::min(threads_, g.N);
  // The direct weight gradient walks each image row by 8-pixel vectors: on narrow outputs (a
  // masked partial vector per row, short rows) the GEMM wins. Measured at 1 thread, batch 64
  // (bench_ops conv_bwd_filter, AVX2 Zen 4 unless noted):
  //   stride 1: W >= 16 direct 1.1-2x faster (WRN-28-2 32x32 and 16x16, WRN-10-1 28x28);
  //             W = 14 (32->64) and W = 8 (128->128) the GEMM 5-13% faster;
  //   stride 2: output 14 wide (WRN-10-1 32->32) direct 6.1 against 7.6 ms, 16 wide (WRN-28-2
  //             64->64) 20.9 against 26.1 ms; 7 and 8 wide the GEMM 1.4-1.5x faster.
  const bool direct = use_direct3x3(g) && (g.stride == 1 ? g.W >= 16 : g.Q() >= 14);
  // Winograd (conv3x3_winograd.hpp) on images >= 14 wide: under kWinogradAvx2 wherever the
  // forward pass may take it; under kBest where it also has >= 16 channels each way. Measured at
  // 1 thread, batch 64, Zen 4 (AVX2), direct or GEMM -> Winograd: WRN-10-1 16->16 28x28 3.96 ->
  // 3.27 ms, 16->32 28x28 8.04 -> 6.66, 32->64 14x14 8.02 -> 6.36; WRN-28-2 16->32 32x32 8.01 ->
  // 7.86, 32->32 32x32 15.7 -> 12.6, 32->64 32x32 30.4 -> 29.5, 64->64 16x16 16.7 -> 13.9,
  // 64->128 16x16 34.3 -> 25.6.
  const bool wino = use_winograd(g) && g.W >= 14 &&
                    (kernels_ == CpuConvKernels::kWinogradAvx2 || (g.C >= 16 && g.K >= 16));
  // On AVX-512 CPUs the flat-layout kernel (conv3x3_wgrad512.hpp) takes every 3x3 pad-1
  // convolution of stride 1 or 2, several images per pass.
  const bool flat512 = kernels_ == CpuConvKernels::kBest && use_direct3x3(g) && wgrad512_applies(g);
  std::vector<float*> partial(static_cast<std::size_t>(T));
  // OpenMP may grant fewer threads than asked (nested regions, thread limits): only the threads
  // that exist own a partial sum, and only theirs are reduced.
  int granted = 0;
#pragma omp parallel num_threads(T)
  {
    const int t = omp_get_thread_num();
#pragma omp single
    granted = omp_get_num_threads();
    // Slot 1: partial dw, then K entries of partial db.
    float* part = scratch(t, kSlotPartial, wsize + static_cast<std::size_t>(g.K));
    std::fill_n(part, wsize + static_cast<std::size_t>(g.K), 0.0f);
    partial[static_cast<std::size_t>(t)] = part;
    float* lanes = nullptr;
    if (wino) {
      lanes = scratch(t, kSlotLanes, winograd_filter_grad_acc_size(g));
      std::fill_n(lanes, winograd_filter_grad_acc_size(g), 0.0f);
    } else if (direct && !flat512) {
      lanes = scratch(t, kSlotLanes, direct3x3_filter_grad_lanes_size(g));
      std::fill_n(lanes, direct3x3_filter_grad_lanes_size(g), 0.0f);
    }
    if (flat512) {
      // A contiguous split fixed by N and the team size (deterministic, like schedule(static)):
      // thread t takes images [n0, n1).
      const int nt = omp_get_num_threads();
      const int n0 = static_cast<int>(static_cast<std::int64_t>(g.N) * t / nt);
      const int n1 = static_cast<int>(static_cast<std::int64_t>(g.N) * (t + 1) / nt);
      wgrad512_images(g, x, dy, n0, n1, scratch(t, kSlotCol, wgrad512_scratch_size(g, n1 - n0)), part,
                      db != nullptr ? part + wsize : nullptr);
    }
#pragma omp for schedule(static)
    for (int n = 0; n < (flat512 ? 0 : g.N); ++n) {
      const float* xn = x + n * x_stride;
      const float* dyn = dy + n * y_stride;
      if (wino) {
        winograd_filter_grad_image(g, xn, dyn, scratch(t, kSlotCol, winograd_filter_grad_scratch_size(g)), lanes);
      } else if (direct) {
        direct3x3_filter_grad_image(g, xn, dyn, scratch(t, kSlotCol, direct3x3_scratch_size(g)), lanes);
      } else {
        const float* col = xn;
        if (!is_pointwise(g)) {
          float* buf = scratch(t, kSlotCol, static_cast<std::size_t>(CRR) * PQ);
          im2col(g, xn, buf);
          col = buf;
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, g.K, CRR, PQ, 1.0f, dyn, PQ, col, PQ,
                    1.0f, part, CRR);
      }
      if (db) {
        float* pdb = part + wsize;
        for (int k = 0; k < g.K; ++k) {
          const float* row = dyn + static_cast<std::int64_t>(k) * PQ;
          // The sum in vector lanes (a fixed order per build): a plain loop is one chain of
          // dependent adds, 3% of the quickstart's iteration at 1 thread.
          float s = 0.0f;
#pragma omp simd reduction(+ : s)
          for (int i = 0; i < PQ; ++i) s += row[i];
          pdb[k] += s;
        }
      }
    }
    // (The loop's implicit barrier is not needed here: each thread finishes its own lanes.)
    if (wino) winograd_filter_grad_finish(g, lanes, part);
    else if (lanes != nullptr) direct3x3_filter_grad_finish(g, lanes, part);
  }
  // Reduce the partials in thread order (deterministic), split over the weight elements.
#pragma omp parallel for schedule(static) num_threads(threads_)
  for (std::int64_t i = 0; i < static_cast<std::int64_t>(wsize); ++i) {
    float s = 0.0f;
    for (int t = 0; t < granted; ++t) s += partial[static_cast<std::size_t>(t)][i];
    dw[i] += s;
  }
  if (db)
    for (int k = 0; k < g.K; ++k) {
      float s = 0.0f;
      for (int t = 0; t < granted; ++t) s += partial[static_cast<std::size_t>(t)][wsize + k];
      db[k] += s;
    }
}

}  // namespace jem::cpu
