// Naive reference ops: see naive_ops.hpp. Each loop nest mirrors its formula in the header.
#include "naive_ops.hpp"

#include <algorithm>
#include <cmath>
#include <cstddef>

#include "jem/error.hpp"

namespace jem::test::naive {
namespace {

// Flat offset of element [a, b, c, d] of a dense [*, B, C, D] tensor.
std::size_t at4(int B, int C, int D, int a, int b, int c, int d) {
  return ((static_cast<std::size_t>(a) * B + b) * C + c) * D + d;
}

// Flat offset of element [a, b] of a dense [*, B] matrix.
std::size_t at2(int B, int a, int b) { return static_cast<std::size_t>(a) * B + b; }

}  // namespace

Vec add(const Vec& a, const Vec& b) {
  Vec y(a.size());
  for (std::size_t i = 0; i < a.size(); ++i) y[i] = static_cast<float>(double(a[i]) + double(b[i]));
  return y;
}

Vec axpy(float alpha, const Vec& x, const Vec& y) {
  Vec out(y.size());
  for (std::size_t i = 0; i < y.size(); ++i)
    out[i] = static_cast<float>(double(y[i]) + double(alpha) * double(x[i]));
  return out;
}

int conv_out_size(int in, int R, int stride, int pad) {
  // Window start positions 0, stride, 2*stride, ... while the window fits in the padded input.
  JEM_CHECK(in + 2 * pad >= R && stride >= 1, "naive conv: window ", R, " does not fit ", in,
            " + 2*", pad);
  int count = 0;
  for (int start = 0; start + R <= in + 2 * pad; start += stride) ++count;
  return count;
}

Vec conv2d_forward(const ConvGeom& g, const Vec& x, const Vec& w, const Vec& b) {
  const int P = conv_out_size(g.H, g.R, g.stride, g.pad_h);
  const int Q = conv_out_size(g.W, g.S, g.stride, g.pad_w);
  Vec y(static_cast<std::size_t>(g.N) * g.K * P * Q);  // [N, K, P, Q]
  for (int n = 0; n < g.N; ++n)
    for (int k = 0; k < g.K; ++k)
      for (int p = 0; p < P; ++p)
        for (int q = 0; q < Q; ++q) {
          double s = b[static_cast<std::size_t>(k)];
          for (int c = 0; c < g.C; ++c)
            for (int kh = 0; kh < g.R; ++kh)
              for (int kw = 0; kw < g.S; ++kw) {
                const int h = p * g.stride - g.pad_h + kh;
                const int v = q * g.stride - g.pad_w + kw;
                if (h < 0 || h >= g.H || v < 0 || v >= g.W) continue;  // zero padding
                s += double(x[at4(g.C, g.H, g.W, n, c, h, v)]) *
                     double(w[at4(g.C, g.R, g.S, k, c, kh, kw)]);
              }
          y[at4(g.K, P, Q, n, k, p, q)] = static_cast<float>(s);
        }
  return y;
}

Vec conv2d_backward_data(const ConvGeom& g, const Vec& dy, const Vec& w) {
  const int P = conv_out_size(g.H, g.R, g.stride, g.pad_h);
  const int Q = conv_out_size(g.W, g.S, g.stride, g.pad_w);
  Vec dx(static_cast<std::size_t>(g.N) * g.C * g.H * g.W);  // [N, C, H, W]
  for (int n = 0; n < g.N; ++n)
    for (int c = 0; c < g.C; ++c)
      for (int h = 0; h < g.H; ++h)
        for (int v = 0; v < g.W; ++v) {
          // y[n,k,p,q] reads x[n,c,h,v] through tap (kh, kw) exactly when
          // p*stride - pad + kh == h and q*stride - pad + kw == v.
          double s = 0.0;
          for (int k = 0; k < g.K; ++k)
            for (int p = 0; p < P; ++p)
              for (int q = 0; q < Q; ++q) {
                const int kh = h + g.pad_h - p * g.stride;
                const int kw = v + g.pad_w - q * g.stride;
                if (kh < 0 || kh >= g.R || kw < 0 || kw >= g.S) continue;
                s += double(dy[at4(g.K, P, Q, n, k, p, q)]) *
                     double(w[at4(g.C, g.R, g.S, k, c, kh, kw)]);
              }
          dx[at4(g.C, g.H, g.W, n, c, h, v)] = static_cast<float>(s);
        }
  return dx;
}

ConvFilterGrad conv2d_backward_filter(const ConvGeom& g, const Vec& x, const Vec& dy) {
  const int P = conv_out_size(g.H, g.R, g.stride, g.pad_h);
  const int Q = conv_out_size(g.W, g.S, g.stride, g.pad_w);
  ConvFilterGrad out;
  out.dw.resize(static_cast<std::size_t>(g.K) * g.C * g.R * g.S);  // [K, C, R, S]
  out.db.resize(static_cast<std::size_t>(g.K));                    // [K]
  for (int k = 0; k < g.K; ++k) {
    for (int c = 0; c < g.C; ++c)
      for (int kh = 0; kh < g.R; ++kh)
        for (int kw = 0; kw < g.S; ++kw) {
          double s = 0.0;
          for (int n = 0; n < g.N; ++n)
            for (int p = 0; p < P; ++p)
              for (int q = 0; q < Q; ++q) {
                const int h = p * g.stride - g.pad_h + kh;
                const int v = q * g.stride - g.pad_w + kw;
                if (h < 0 || h >= g.H || v < 0 || v >= g.W) continue;
                s += double(dy[at4(g.K, P, Q, n, k, p, q)]) *
                     double(x[at4(g.C, g.H, g.W, n, c, h, v)]);
              }
          out.dw[at4(g.C, g.R, g.S, k, c, kh, kw)] = static_cast<float>(s);
        }
    double s = 0.0;
    for (int n = 0; n < g.N; ++n)
      for (int p = 0; p < P; ++p)
        for (int q = 0; q < Q; ++q) s += dy[at4(g.K, P, Q, n, k, p, q)];
    out.db[static_cast<std::size_t>(k)] = static_cast<float>(s);
  }
  return out;
}

Vec leaky_relu_forward(const Vec& x, float slope) {
  Vec y(x.size());
  for (std::size_t i = 0; i < x.size(); ++i)
    y[i] = x[i] > 0.0f ? x[i] : static_cast<float>(double(slope) * double(x[i]));
  return y;
}

Vec leaky_relu_backward(const Vec& x, const Vec& dy, float slope) {
  Vec dx(x.size());
  for (std::size_t i = 0; i < x.size(); ++i)
    dx[i] = x[i] > 0.0f ? dy[i] : static_cast<float>(double(slope) * double(dy[i]));
  return dx;
}

Vec global_avg_pool_forward(int N, int C, int HW, const Vec& x) {
  Vec y(static_cast<std::size_t>(N) * C);  // [N, C]
  for (int n = 0; n < N; ++n)
    for (int c = 0; c < C; ++c) {
      double s = 0.0;
      for (int i = 0; i < HW; ++i) s += x[at4(C, HW, 1, n, c, i, 0)];
      y[at2(C, n, c)] = static_cast<float>(s / HW);
    }
  return y;
}

Vec global_avg_pool_backward(int N, int C, int HW, const Vec& dy) {
  Vec dx(static_cast<std::size_t>(N) * C * HW);  // [N, C, HW]
  for (int n = 0; n < N; ++n)
    for (int c = 0; c < C; ++c)
      for (int i = 0; i < HW; ++i)
        dx[at4(C, HW, 1, n, c, i, 0)] = static_cast<float>(double(dy[at2(C, n, c)]) / HW);
  return dx;
}

Vec linear_forward(int N, int I, int O, const Vec& x, const Vec& w, const Vec& b) {
  Vec y(static_cast<std::size_t>(N) * O);  // [N, O]
  for (int n = 0; n < N; ++n)
    for (int o = 0; o < O; ++o) {
      double s = b[static_cast<std::size_t>(o)];
      for (int i = 0; i < I; ++i) s += double(x[at2(I, n, i)]) * double(w[at2(I, o, i)]);
      y[at2(O, n, o)] = static_cast<float>(s);
    }
  return y;
}

LinearGrad linear_backward(int N, int I, int O, const Vec& x, const Vec& w, const Vec& dy) {
  LinearGrad g;
  g.dx.resize(static_cast<std::size_t>(N) * I);  // [N, I]
  g.dw.resize(static_cast<std::size_t>(O) * I);  // [O, I]
  g.db.resize(static_cast<std::size_t>(O));      // [O]
  for (int n = 0; n < N; ++n)
    for (int i = 0; i < I; ++i) {
      double s = 0.0;
      for (int o = 0; o < O; ++o) s += double(dy[at2(O, n, o)]) * double(w[at2(I, o, i)]);
      g.dx[at2(I, n, i)] = static_cast<float>(s);
    }
  for (int o = 0; o < O; ++o) {
    for (int i = 0; i < I; ++i) {
      double s = 0.0;
      for (int n = 0; n < N; ++n) s += double(dy[at2(O, n, o)]) * double(x[at2(I, n, i)]);
      g.dw[at2(I, o, i)] = static_cast<float>(s);
    }
    double s = 0.0;
    for (int n = 0; n < N; ++n) s += dy[at2(O, n, o)];
    g.db[static_cast<std::size_t>(o)] = static_cast<float>(s);
  }
  return g;
}

double logsumexp(const double* row, int K) {
  const double m = *std::max_element(row, row + K);
  double s = 0.0;
  for (int k = 0; k < K; ++k) s += std::exp(row[k] - m);  // every term <= 1: no overflow
  return m + std::log(s);
}

namespace {
// One row of logits as doubles.
std::vector<double> row_as_double(const Vec& logits, int K, int n) {
  const auto first = logits.begin() + static_cast<std::ptrdiff_t>(n) * K;
  return std::vector<double>(first, first + K);
}
}  // namespace

LossGrad energy(int N, int K, const Vec& logits, float grad_scale) {
  LossGrad out;
  out.value.resize(static_cast<std::size_t>(N));               // [N]
  out.dlogits.resize(static_cast<std::size_t>(N) * K);         // [N, K]
  for (int n = 0; n < N; ++n) {
    const std::vector<double> row = row_as_double(logits, K, n);
    const double lse = logsumexp(row.data(), K);
    out.value[static_cast<std::size_t>(n)] = static_cast<float>(-lse);
    for (int k = 0; k < K; ++k) {
      const double softmax = std::exp(row[static_cast<std::size_t>(k)] - lse);
      out.dlogits[at2(K, n, k)] = static_cast<float>(-double(grad_scale) * softmax);
    }
  }
  return out;
}

LossGrad cross_entropy(int N, int K, const Vec& logits, const std::vector<std::int32_t>& labels,
                       float grad_scale) {
  LossGrad out;
  out.value.resize(static_cast<std::size_t>(N));        // [N]
  out.dlogits.resize(static_cast<std::size_t>(N) * K);  // [N, K]
  for (int n = 0; n < N; ++n) {
    const int y = labels[static_cast<std::size_t>(n)];
    JEM_CHECK(y >= 0 && y < K, "naive cross_entropy: label ", y, " outside [0, ", K, ")");
    const std::vector<double> row = row_as_double(logits, K, n);
    const double lse = logsumexp(row.data(), K);
    out.value[static_cast<std::size_t>(n)] = static_cast<float>(lse - row[static_cast<std::size_t>(y)]);
    for (int k = 0; k < K; ++k) {
      const double softmax = std::exp(row[static_cast<std::size_t>(k)] - lse);
      const double onehot = k == y ? 1.0 : 0.0;
      out.dlogits[at2(K, n, k)] = static_cast<float>(double(grad_scale) * (softmax - onehot));
    }
  }
  return out;
}

}  // namespace jem::test::naive
