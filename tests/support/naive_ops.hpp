// Naive reference versions of every backend op, written straight from the definitions in
// include/jem/backend.hpp: nested loops over the output (or the gradient) index, no lowering, no
// BLAS, no threads, every sum accumulated in double and rounded to float once at the end.
// They are slow and meant to be obviously correct; the op tests compare each backend with them.
//
// Layouts are the backend's: dense row-major, images NCHW, conv weights [K, C, R, R], linear
// weights [O, I]. Inputs are const references; outputs are returned by value.
#pragma once

#include <cstdint>
#include <vector>

#include "jem/backend.hpp"  // ConvGeom

namespace jem::test::naive {

using Vec = std::vector<float>;

// ---- elementwise -------------------------------------------------------------------------------
// y = a + b
Vec add(const Vec& a, const Vec& b);
// y + alpha * x
Vec axpy(float alpha, const Vec& x, const Vec& y);

// ---- convolution --------------------------------------------------------------------------------
// Output size of a `R`-wide window sliding over `in + 2*pad` positions in steps of `stride`.
int conv_out_size(int in, int R, int stride, int pad);

// y[N,K,P,Q] = b[k] + sum_{c,kh,kw} w[k,c,kh,kw] * x[n,c, p*stride-pad+kh, q*stride-pad+kw]
// (taps outside x read 0).
Vec conv2d_forward(const ConvGeom& g, const Vec& x, const Vec& w, const Vec& b);

// dx[N,C,H,W] = dL/dx of L = sum(y * dy): every (k, kh, kw) tap whose window position lands on
// (h, w) contributes dy[n,k,p,q] * w[k,c,kh,kw].
Vec conv2d_backward_data(const ConvGeom& g, const Vec& dy, const Vec& w);

struct ConvFilterGrad {
  Vec dw;  // [K, C, R, R]
  Vec db;  // [K]
};
// dw[k,c,kh,kw] = sum_{n,p,q} dy[n,k,p,q] * x[n,c, p*stride-pad+kh, q*stride-pad+kw];
// db[k] = sum_{n,p,q} dy[n,k,p,q]. (Fresh values: the caller adds any prior contents.)
ConvFilterGrad conv2d_backward_filter(const ConvGeom& g, const Vec& x, const Vec& dy);

// ---- activations --------------------------------------------------------------------------------
// y = x > 0 ? x : slope * x
Vec leaky_relu_forward(const Vec& x, float slope);
// dx = dy * (x > 0 ? 1 : slope), x the forward input (x == 0 takes the slope side).
Vec leaky_relu_backward(const Vec& x, const Vec& dy, float slope);

// ---- pooling ------------------------------------------------------------------------------------
// y[N,C] = (1/HW) sum_i x[n,c,i]
Vec global_avg_pool_forward(int N, int C, int HW, const Vec& x);
// dx[N,C,HW] = dy[n,c] / HW
Vec global_avg_pool_backward(int N, int C, int HW, const Vec& dy);

// ---- linear -------------------------------------------------------------------------------------
// y[N,O] = b[o] + sum_i x[n,i] * w[o,i]
Vec linear_forward(int N, int I, int O, const Vec& x, const Vec& w, const Vec& b);

struct LinearGrad {
  Vec dx;  // [N, I] = sum_o dy[n,o] w[o,i]
  Vec dw;  // [O, I] = sum_n dy[n,o] x[n,i]
  Vec db;  // [O]    = sum_n dy[n,o]
};
LinearGrad linear_backward(int N, int I, int O, const Vec& x, const Vec& w, const Vec& dy);

// ---- losses -------------------------------------------------------------------------------------
// log(sum_k exp(row[k])) in double, shifted by the row maximum so that it cannot overflow.
double logsumexp(const double* row, int K);

struct LossGrad {
  Vec value;    // [N] energy or loss per row
  Vec dlogits;  // [N, K]
};
// E[n] = -logsumexp(logits[n]);  dlogits[n,k] = -grad_scale * softmax(logits[n])[k]
LossGrad energy(int N, int K, const Vec& logits, float grad_scale);
// loss[n] = logsumexp(logits[n]) - logits[n, y[n]];
// dlogits[n,k] = grad_scale * (softmax(logits[n])[k] - [k == y[n]])
LossGrad cross_entropy(int N, int K, const Vec& logits, const std::vector<std::int32_t>& labels,
                       float grad_scale);

}  // namespace jem::test::naive
