// The shape and device checks of every op, written once for all backends.
#include "jem/backend.hpp"

#include <fstream>
#include <sstream>

namespace jem {

void Backend::check_tensor(const Tensor& t, const char* op, const char* what) const {
  JEM_CHECK(t.defined(), op, ": tensor '", what, "' is undefined");
  JEM_CHECK(t.dtype() == DType::F32, op, ": tensor '", what, "' has dtype ", to_string(t.dtype()),
            ", expected F32");
  JEM_CHECK(t.device() == device(), op, ": tensor '", what, "' lives on ", to_string(t.device()),
            ", backend is ", to_string(device()));
}

std::int64_t Backend::peak_memory_bytes() const {
  // "VmHWM:    123456 kB"; absent (e.g. not Linux): unknown.
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmHWM:", 0) != 0) continue;
    std::istringstream fields(line.substr(6));
    std::int64_t kib = -1;
    fields >> kib;
    return kib >= 0 ? kib * 1024 : -1;
  }
  return -1;
}

std::vector<float> Backend::to_vector(const Tensor& t) {
  check_tensor(t, "to_vector", "t");
  std::vector<float> v(static_cast<std::size_t>(t.numel()));
  download(t, v.data());
  return v;
}

Tensor Backend::from_vector(const std::vector<float>& v, Shape shape) {
  JEM_CHECK(static_cast<std::int64_t>(v.size()) == shape.numel(), "from_vector: ", v.size(),
            " values for shape ", shape.str());
  Tensor t = empty(shape);
  upload(v.data(), t);
  return t;
}

void Backend::fill(const Tensor& t, float value) {
  JEM_CHECK(t.defined() && t.device() == device(), "fill: tensor undefined or on another device");
  fill_impl(t, value);
}

void Backend::copy(const Tensor& src, const Tensor& dst) {
  check_tensor(src, "copy", "src");
  check_tensor(dst, "copy", "dst");
  JEM_CHECK(src.numel() == dst.numel(), "copy: ", src.shape().str(), " -> ", dst.shape().str());
  copy_impl(src, dst);
}

void Backend::axpy(float alpha, const Tensor& x, const Tensor& y) {
  check_tensor(x, "axpy", "x");
  check_tensor(y, "axpy", "y");
  JEM_CHECK(x.shape() == y.shape(), "axpy: x ", x.shape().str(), " vs y ", y.shape().str());
  axpy_impl(alpha, x, y);
}

void Backend::add(const Tensor& a, const Tensor& b, const Tensor& y) {
  check_tensor(a, "add", "a");
  check_tensor(b, "add", "b");
  check_tensor(y, "add", "y");
  JEM_CHECK(a.shape() == b.shape() && a.shape() == y.shape(), "add: a ", a.shape().str(), ", b ",
            b.shape().str(), ", y ", y.shape().str());
  add_impl(a, b, y);
}

// Derives the geometry from x and w and checks y (or dy) against it.
static ConvGeom conv_geom(const char* op, const Tensor& x_like, const Tensor& w, const Tensor& y_like,
                          int stride, int pad) {
  JEM_CHECK(x_like.shape().rank() == 4, op, ": input must be NCHW, got ", x_like.shape().str());
  JEM_CHECK(w.shape().rank() == 4, op, ": weight must be KCRR, got ", w.shape().str());
  JEM_CHECK(y_like.shape().rank() == 4, op, ": output must be NKPQ, got ", y_like.shape().str());
  JEM_CHECK(stride >= 1 && pad >= 0, op, ": stride ", stride, " pad ", pad);
  ConvGeom g;
  g.N = int(x_like.dim(0));
  g.C = int(x_like.dim(1));
  g.H = int(x_like.dim(2));
  g.W = int(x_like.dim(3));
  g.K = int(w.dim(0));
  g.R = int(w.dim(2));
  g.stride = stride;
  g.pad = pad;
  JEM_CHECK(w.dim(1) == g.C && w.dim(3) == g.R && g.R >= 1, op, ": weight ", w.shape().str(),
            " does not fit input ", x_like.shape().str());
  // The window must fit the padded image at least once. (ConvGeom::P() alone cannot tell: C++
  // division truncates toward zero, so (H + 2*pad - R) / stride + 1 is 1, not 0, when the
  // window is up to stride - 1 pixels too large.)
  JEM_CHECK(g.H + 2 * pad >= g.R && g.W + 2 * pad >= g.R, op, ": ", g.R, "x", g.R,
            " window does not fit input ", x_like.shape().str(), " padded by ", pad);
  JEM_CHECK(g.P() > 0 && g.Q() > 0, op, ": empty output for input ", x_like.shape().str());
  const Shape expect{g.N, g.K, g.P(), g.Q()};
  JEM_CHECK(y_like.shape() == expect, op, ": output ", y_like.shape().str(), ", expected ",
            expect.str());
  return g;
}

void Backend::conv2d_forward(const Tensor& x, const Tensor& w, const Tensor& b, const Tensor& y,
                             int stride, int pad) {
  check_tensor(x, "conv2d_forward", "x");
  check_tensor(w, "conv2d_forward", "w");
  check_tensor(b, "conv2d_forward", "b");
  check_tensor(y, "conv2d_forward", "y");
  const ConvGeom g = conv_geom("conv2d_forward", x, w, y, stride, pad);
  JEM_CHECK(b.numel() == g.K, "conv2d_forward: bias ", b.shape().str(), " for ", g.K, " filters");
  conv2d_forward_impl(g, x.data<float>(), w.data<float>(), b.data<float>(), y.data<float>());
}

void Backend::conv2d_backward_data(const Tensor& dy, const Tensor& w, const Tensor& dx, int stride,
                                   int pad) {
  check_tensor(dy, "conv2d_backward_data", "dy");
  check_tensor(w, "conv2d_backward_data", "w");
  check_tensor(dx, "conv2d_backward_data", "dx");
  const ConvGeom g = conv_geom("conv2d_backward_data", dx, w, dy, stride, pad);
  conv2d_backward_data_impl(g, dy.data<float>(), w.data<float>(), dx.data<float>());
}

void Backend::conv2d_backward_filter(const Tensor& x, const Tensor& dy, const Tensor& dw,
                                     const Tensor& db, int stride, int pad) {
  check_tensor(x, "conv2d_backward_filter", "x");
  check_tensor(dy, "conv2d_backward_filter", "dy");
  check_tensor(dw, "conv2d_backward_filter", "dw");
  const ConvGeom g = conv_geom("conv2d_backward_filter", x, dw, dy, stride, pad);
  float* db_ptr = nullptr;
  if (db.defined()) {
    check_tensor(db, "conv2d_backward_filter", "db");
    JEM_CHECK(db.numel() == g.K, "conv2d_backward_filter: db ", db.shape().str(), " for ", g.K,
              " filters");
    db_ptr = db.data<float>();
  }
  conv2d_backward_filter_impl(g, x.data<float>(), dy.data<float>(), dw.data<float>(), db_ptr);
}

void Backend::leaky_relu_forward(const Tensor& x, const Tensor& y, float slope) {
  check_tensor(x, "leaky_relu_forward", "x");
  check_tensor(y, "leaky_relu_forward", "y");
  JEM_CHECK(x.shape() == y.shape(), "leaky_relu_forward: x ", x.shape().str(), " vs y ",
            y.shape().str());
  leaky_relu_forward_impl(x.numel(), x.data<float>(), y.data<float>(), slope);
}

void Backend::leaky_relu_backward(const Tensor& x, const Tensor& dy, const Tensor& dx,
                                  float slope) {
  check_tensor(x, "leaky_relu_backward", "x");
  check_tensor(dy, "leaky_relu_backward", "dy");
  check_tensor(dx, "leaky_relu_backward", "dx");
  JEM_CHECK(x.shape() == dy.shape() && x.shape() == dx.shape(), "leaky_relu_backward: x ",
            x.shape().str(), ", dy ", dy.shape().str(), ", dx ", dx.shape().str());
  leaky_relu_backward_impl(x.numel(), x.data<float>(), dy.data<float>(), dx.data<float>(), slope);
}

void Backend::global_avg_pool_forward(const Tensor& x, const Tensor& y) {
  check_tensor(x, "global_avg_pool_forward", "x");
  check_tensor(y, "global_avg_pool_forward", "y");
  JEM_CHECK(x.shape().rank() == 4, "global_avg_pool_forward: x must be NCHW, got ", x.shape().str());
  const Shape expect{x.dim(0), x.dim(1)};
  JEM_CHECK(y.shape() == expect, "global_avg_pool_forward: y ", y.shape().str(), ", expected ",
            expect.str());
  global_avg_pool_forward_impl(int(x.dim(0)), int(x.dim(1)), int(x.dim(2) * x.dim(3)),
                               x.data<float>(), y.data<float>());
}

void Backend::global_avg_pool_backward(const Tensor& dy, const Tensor& dx) {
  check_tensor(dy, "global_avg_pool_backward", "dy");
  check_tensor(dx, "global_avg_pool_backward", "dx");
  JEM_CHECK(dx.shape().rank() == 4, "global_avg_pool_backward: dx must be NCHW, got ",
            dx.shape().str());
  const Shape expect{dx.dim(0), dx.dim(1)};
  JEM_CHECK(dy.shape() == expect, "global_avg_pool_backward: dy ", dy.shape().str(), ", expected ",
            expect.str());
  global_avg_pool_backward_impl(int(dx.dim(0)), int(dx.dim(1)), int(dx.dim(2) * dx.dim(3)),
                                dy.data<float>(), dx.data<float>());
}

void Backend::linear_forward(const Tensor& x, const Tensor& w, const Tensor& b, const Tensor& y) {
  check_tensor(x, "linear_forward", "x");
  check_tensor(w, "linear_forward", "w");
  check_tensor(b, "linear_forward", "b");
  check_tensor(y, "linear_forward", "y");
  JEM_CHECK(x.shape().rank() == 2 && w.shape().rank() == 2 && y.shape().rank() == 2,
            "linear_forward: x ", x.shape().str(), ", w ", w.shape().str(), ", y ", y.shape().str());
  const int N = int(x.dim(0)), I = int(x.dim(1)), O = int(w.dim(0));
  JEM_CHECK(w.dim(1) == I && b.numel() == O && y.dim(0) == N && y.dim(1) == O, "linear_forward: x ",
            x.shape().str(), ", w ", w.shape().str(), ", b ", b.shape().str(), ", y ",
            y.shape().str());
  linear_forward_impl(N, I, O, x.data<float>(), w.data<float>(), b.data<float>(), y.data<float>());
}

void Backend::linear_backward(const Tensor& x, const Tensor& w, const Tensor& dy, const Tensor& dx,
                              const Tensor& dw, const Tensor& db) {
  check_tensor(x, "linear_backward", "x");
  check_tensor(w, "linear_backward", "w");
  check_tensor(dy, "linear_backward", "dy");
  JEM_CHECK(x.shape().rank() == 2 && w.shape().rank() == 2 && dy.shape().rank() == 2,
            "linear_backward: x ", x.shape().str(), ", w ", w.shape().str(), ", dy ",
            dy.shape().str());
  const int N = int(x.dim(0)), I = int(x.dim(1)), O = int(w.dim(0));
  JEM_CHECK(w.dim(1) == I && dy.dim(0) == N && dy.dim(1) == O, "linear_backward: x ",
            x.shape().str(), ", w ", w.shape().str(), ", dy ", dy.shape().str());
  float* dx_ptr = nullptr;
  float* dw_ptr = nullptr;
  float* db_ptr = nullptr;
  if (dx.defined()) {
    check_tensor(dx, "linear_backward", "dx");
    JEM_CHECK(dx.shape() == x.shape(), "linear_backward: dx ", dx.shape().str(), " vs x ",
              x.shape().str());
    dx_ptr = dx.data<float>();
  }
  if (dw.defined()) {
    check_tensor(dw, "linear_backward", "dw");
    JEM_CHECK(dw.shape() == w.shape(), "linear_backward: dw ", dw.shape().str(), " vs w ",
              w.shape().str());
    dw_ptr = dw.data<float>();
  }
  if (db.defined()) {
    check_tensor(db, "linear_backward", "db");
    JEM_CHECK(db.numel() == O, "linear_backward: db ", db.shape().str(), " for ", O, " outputs");
    db_ptr = db.data<float>();
  }
  linear_backward_impl(N, I, O, x.data<float>(), w.data<float>(), dy.data<float>(), dx_ptr, dw_ptr,
                       db_ptr);
}

void Backend::energy_forward_backward(const Tensor& logits, const Tensor& energy,
                                      const Tensor& dlogits, float grad_scale) {
  check_tensor(logits, "energy", "logits");
  check_tensor(energy, "energy", "energy");
  check_tensor(dlogits, "energy", "dlogits");
  JEM_CHECK(logits.shape().rank() == 2, "energy: logits must be [N, K], got ",
            logits.shape().str());
  const int N = int(logits.dim(0)), K = int(logits.dim(1));
  JEM_CHECK(K > 0, "energy: logits ", logits.shape().str(), " have no classes");
  JEM_CHECK(energy.numel() == N && dlogits.shape() == logits.shape(), "energy: logits ",
            logits.shape().str(), ", energy ", energy.shape().str(), ", dlogits ",
            dlogits.shape().str());
  energy_impl(N, K, logits.data<float>(), energy.data<float>(), dlogits.data<float>(), grad_scale);
}

void Backend::cross_entropy_forward_backward(const Tensor& logits, const Tensor& labels,
                                             const Tensor& loss, const Tensor& dlogits,
                                             float grad_scale) {
  check_tensor(logits, "cross_entropy", "logits");
  check_tensor(loss, "cross_entropy", "loss");
  check_tensor(dlogits, "cross_entropy", "dlogits");
  JEM_CHECK(labels.defined() && labels.dtype() == DType::I32 && labels.device() == device(),
            "cross_entropy: labels must be I32 on ", to_string(device()));
  JEM_CHECK(logits.shape().rank() == 2, "cross_entropy: logits must be [N, K], got ",
            logits.shape().str());
  const int N = int(logits.dim(0)), K = int(logits.dim(1));
  JEM_CHECK(K > 0, "cross_entropy: logits ", logits.shape().str(), " have no classes");
  JEM_CHECK(labels.numel() == N && loss.numel() == N && dlogits.shape() == logits.shape(),
            "cross_entropy: logits ", logits.shape().str(), ", labels ", labels.shape().str(),
            ", loss ", loss.shape().str(), ", dlogits ", dlogits.shape().str());
  cross_entropy_impl(N, K, logits.data<float>(), labels.data<std::int32_t>(), loss.data<float>(),
                     dlogits.data<float>(), grad_scale);
}

}  // namespace jem
