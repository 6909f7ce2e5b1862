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
  JEM_CHECK(!t.channels_last() || supports_channels_last(), op, ": tensor '", what,
            "' is channels-last (NHWC), which the ", to_string(device()), " backend does not support");
}

void Backend::check_same_layout(const char* op, std::initializer_list<const Tensor*> ts) {
  const Tensor* first = nullptr;
  for (const Tensor* t : ts) {
    if (!t->defined()) continue;
    if (!first) first = t;
    JEM_CHECK(t->layout() == first->layout(), op, ": operands in different layouts (",
              to_string(first->layout()), " and ", to_string(t->layout()), ")");
  }
}

void Backend::check_nchw(const Tensor& t, const char* op, const char* what) {
  JEM_CHECK(!t.channels_last(), op, ": tensor '", what, "' must be NCHW, got a channels-last (NHWC) one");
}

void Backend::global_avg_pool_forward_nhwc_impl(int, int, int, const float*, float*) {
  JEM_FAIL("global_avg_pool_forward: ", name(), " has no channels-last version");
}

void Backend::global_avg_pool_backward_nhwc_impl(int, int, int, const float*, float*) {
  JEM_FAIL("global_avg_pool_backward: ", name(), " has no channels-last version");
}

std::unique_ptr<CapturedOps> Backend::capture(const NoiseKey& /*key*/,
                                              const std::function<void()>& /*ops*/,
                                              std::string* why) {
  if (why) *why = name() + " runs every op directly (no capture)";
  return nullptr;
}

bool Backend::launch(const CapturedOps& /*ops*/, const NoiseKey& /*key*/) {
  JEM_FAIL("launch: ", name(), " captures no ops, so it has none to launch");
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
  check_same_layout("copy", {&src, &dst});
  // Channels-last elements are in another order than a reshaped view's: only the same shape.
  JEM_CHECK(!src.channels_last() || src.shape() == dst.shape(), "copy: channels-last ",
            src.shape().str(), " -> ", dst.shape().str(), " (the shapes must match)");
  copy_impl(src, dst);
}

void Backend::axpy(float alpha, const Tensor& x, const Tensor& y) {
  check_tensor(x, "axpy", "x");
  check_tensor(y, "axpy", "y");
  JEM_CHECK(x.shape() == y.shape(), "axpy: x ", x.shape().str(), " vs y ", y.shape().str());
  check_same_layout("axpy", {&x, &y});
  axpy_impl(alpha, x, y);
}

void Backend::add(const Tensor& a, const Tensor& b, const Tensor& y) {
  check_tensor(a, "add", "a");
  check_tensor(b, "add", "b");
  check_tensor(y, "add", "y");
  JEM_CHECK(a.shape() == b.shape() && a.shape() == y.shape(), "add: a ", a.shape().str(), ", b ",
            b.shape().str(), ", y ", y.shape().str());
  check_same_layout("add", {&a, &b, &y});
  add_impl(a, b, y);
}

// Derives the geometry from x and w and checks y (or dy) against it.
static ConvGeom conv_geom(const char* op, const Tensor& x_like, const Tensor& w, const Tensor& y_like,
                          int stride, int pad_h, int pad_w) {
  JEM_CHECK(x_like.shape().rank() == 4, op, ": input must be NCHW, got ", x_like.shape().str());
  JEM_CHECK(w.shape().rank() == 4, op, ": weight must be KCRS, got ", w.shape().str());
  JEM_CHECK(y_like.shape().rank() == 4, op, ": output must be NKPQ, got ", y_like.shape().str());
  JEM_CHECK(stride >= 1 && pad_h >= 0 && pad_w >= 0, op, ": stride ", stride, " pad ", pad_h, ",",
            pad_w);
  ConvGeom g;
  g.N = int(x_like.dim(0));
  g.C = int(x_like.dim(1));
  g.H = int(x_like.dim(2));
  g.W = int(x_like.dim(3));
  g.K = int(w.dim(0));
  g.R = int(w.dim(2));
  g.S = int(w.dim(3));
  g.stride = stride;
  g.pad_h = pad_h;
  g.pad_w = pad_w;
  g.x_layout = x_like.layout();
  g.y_layout = y_like.layout();
  Backend::check_nchw(w, op, "w");
  JEM_CHECK(w.dim(1) == g.C && g.R >= 1 && g.S >= 1, op, ": weight ", w.shape().str(),
            " does not fit input ", x_like.shape().str());
  // The window must fit the padded image at least once. (ConvGeom::P() alone cannot tell: C++
  // division truncates toward zero, so (H + 2*pad - R) / stride + 1 is 1, not 0, when the
  // window is up to stride - 1 pixels too large.)
  JEM_CHECK(g.H + 2 * pad_h >= g.R && g.W + 2 * pad_w >= g.S, op, ": ", g.R, "x", g.S,
            " window does not fit input ", x_like.shape().str(), " padded by ", pad_h, ",", pad_w);
  JEM_CHECK(g.P() > 0 && g.Q() > 0, op, ": empty output for input ", x_like.shape().str());
  const Shape expect{g.N, g.K, g.P(), g.Q()};
  JEM_CHECK(y_like.shape() == expect, op, ": output ", y_like.shape().str(), ", expected ",
            expect.str());
  return g;
}

void Backend::conv2d_forward(const Tensor& x, const Tensor& w, const Tensor& b, const Tensor& y,
                             int stride, int pad) {
  conv2d_forward(x, w, b, y, stride, pad, pad);
}

void Backend::conv2d_forward(const Tensor& x, const Tensor& w, const Tensor& b, const Tensor& y,
                             int stride, int pad_h, int pad_w) {
  check_tensor(x, "conv2d_forward", "x");
  check_tensor(w, "conv2d_forward", "w");
  if (b.defined()) check_tensor(b, "conv2d_forward", "b");
  check_tensor(y, "conv2d_forward", "y");
  const ConvGeom g = conv_geom("conv2d_forward", x, w, y, stride, pad_h, pad_w);
  if (b.defined())
    JEM_CHECK(b.numel() == g.K, "conv2d_forward: bias ", b.shape().str(), " for ", g.K, " filters");
  if (g.N == 0) return;  // an empty batch: nothing to compute or to add (cuDNN rejects 0-sized descriptors)
  conv2d_forward_impl(g, x.data<float>(), w.data<float>(), b.defined() ? b.data<float>() : nullptr,
                      nullptr, y.data<float>());
}

void Backend::conv2d_forward_add(const Tensor& x, const Tensor& w, const Tensor& b, const Tensor& z,
                                 const Tensor& y, int stride, int pad) {
  check_tensor(x, "conv2d_forward_add", "x");
  check_tensor(w, "conv2d_forward_add", "w");
  if (b.defined()) check_tensor(b, "conv2d_forward_add", "b");
  check_tensor(z, "conv2d_forward_add", "z");
  check_tensor(y, "conv2d_forward_add", "y");
  const ConvGeom g = conv_geom("conv2d_forward_add", x, w, y, stride, pad, pad);
  if (b.defined())
    JEM_CHECK(b.numel() == g.K, "conv2d_forward_add: bias ", b.shape().str(), " for ", g.K, " filters");
  JEM_CHECK(z.shape() == y.shape(), "conv2d_forward_add: z ", z.shape().str(), " vs y ", y.shape().str());
  check_same_layout("conv2d_forward_add", {&y, &z});
  // The unfused paths add z after writing y: an overlap would read outputs as residuals.
  const float *z0 = z.data<float>(), *y0 = y.data<float>();
  JEM_CHECK(z0 + z.numel() <= y0 || y0 + y.numel() <= z0, "conv2d_forward_add: z overlaps y");
  if (g.N == 0) return;
  conv2d_forward_impl(g, x.data<float>(), w.data<float>(), b.defined() ? b.data<float>() : nullptr,
                      z0, y.data<float>());
}

void Backend::conv2d_backward_data(const Tensor& dy, const Tensor& w, const Tensor& dx, int stride,
                                   int pad) {
  check_tensor(dy, "conv2d_backward_data", "dy");
  check_tensor(w, "conv2d_backward_data", "w");
  check_tensor(dx, "conv2d_backward_data", "dx");
  const ConvGeom g = conv_geom("conv2d_backward_data", dx, w, dy, stride, pad, pad);
  if (g.N == 0) return;  // an empty batch: nothing to compute or to add (cuDNN rejects 0-sized descriptors)
  conv2d_backward_data_impl(g, dy.data<float>(), w.data<float>(), dx.data<float>());
}

// True when the float ranges of a and b share an element (undefined tensors share nothing).
static bool overlaps(const Tensor& a, const Tensor& b) {
  if (!a.defined() || !b.defined() || a.numel() == 0 || b.numel() == 0) return false;
  const float *a0 = a.data<float>(), *b0 = b.data<float>();
  return a0 < b0 + b.numel() && b0 < a0 + a.numel();
}

void Backend::conv2d_forward_leaky_relu(const Tensor& x, const Tensor& w, const Tensor& b,
                                        const Tensor& z, const Tensor& t, const Tensor& y,
                                        int stride, int pad, float slope) {
  const char* op = "conv2d_forward_leaky_relu";
  check_tensor(x, op, "x");
  check_tensor(w, op, "w");
  if (b.defined()) check_tensor(b, op, "b");
  if (z.defined()) check_tensor(z, op, "z");
  if (t.defined()) check_tensor(t, op, "t");
  check_tensor(y, op, "y");
  const ConvGeom g = conv_geom(op, x, w, y, stride, pad, pad);
  if (b.defined()) JEM_CHECK(b.numel() == g.K, op, ": bias ", b.shape().str(), " for ", g.K, " filters");
  if (z.defined()) JEM_CHECK(z.shape() == y.shape(), op, ": z ", z.shape().str(), " vs y ", y.shape().str());
  if (t.defined()) JEM_CHECK(t.shape() == y.shape(), op, ": t ", t.shape().str(), " vs y ", y.shape().str());
  check_same_layout(op, {&y, &z, &t});
  // The convolution writes its output before the activation reads it, and adds z while it does.
  JEM_CHECK(!overlaps(z, y) && !overlaps(z, t), op, ": z overlaps an output");
  JEM_CHECK(!overlaps(t, y), op, ": t overlaps y");
  JEM_CHECK(!overlaps(x, y) && !overlaps(x, t), op, ": x overlaps an output");
  if (g.N == 0) return;
  conv2d_forward_leaky_relu_impl(g, x.data<float>(), w.data<float>(), b.defined() ? b.data<float>() : nullptr,
                                 z.defined() ? z.data<float>() : nullptr, t.defined() ? t.data<float>() : nullptr,
                                 y.data<float>(), slope);
}

void Backend::conv2d_backward_data_leaky_relu(const Tensor& dy, const Tensor& w, const Tensor& m,
                                              const Tensor& z, const Tensor& dx, int stride, int pad,
                                              float slope) {
  const char* op = "conv2d_backward_data_leaky_relu";
  check_tensor(dy, op, "dy");
  check_tensor(w, op, "w");
  check_tensor(m, op, "m");
  if (z.defined()) check_tensor(z, op, "z");
  check_tensor(dx, op, "dx");
  const ConvGeom g = conv_geom(op, dx, w, dy, stride, pad, pad);
  JEM_CHECK(m.shape() == dx.shape(), op, ": m ", m.shape().str(), " vs dx ", dx.shape().str());
  if (z.defined()) JEM_CHECK(z.shape() == dx.shape(), op, ": z ", z.shape().str(), " vs dx ", dx.shape().str());
  check_same_layout(op, {&dx, &m, &z});
  // The data gradient is written into dx before m and z are read.
  JEM_CHECK(!overlaps(m, dx) && !overlaps(z, dx), op, ": m or z overlaps dx");
  JEM_CHECK(!overlaps(dy, dx), op, ": dy overlaps dx");
  if (g.N == 0) return;
  conv2d_backward_data_leaky_relu_impl(g, dy.data<float>(), w.data<float>(), m.data<float>(),
                                       z.defined() ? z.data<float>() : nullptr, dx.data<float>(), slope);
}

void Backend::conv2d_forward_leaky_relu_impl(const ConvGeom& g, const float* x, const float* w,
                                             const float* b, const float* z, float* t, float* y,
                                             float slope) {
  const std::int64_t PQ = std::int64_t(g.P()) * g.Q(), n = std::int64_t(g.N) * g.K * PQ;
  if (b && !z && !t) {  // conv1's way: the bias joins the activation's pass
    conv2d_forward_impl(g, x, w, nullptr, nullptr, y);
    // Channels-last: planes of one element each, channel = element % K.
    if (g.y_layout == Layout::NHWC) bias_leaky_relu_forward_impl(n, g.K, 1, y, b, y, slope);
    else bias_leaky_relu_forward_impl(std::int64_t(g.N) * g.K, g.K, PQ, y, b, y, slope);
    return;
  }
  float* out = t ? t : y;
  conv2d_forward_impl(g, x, w, b, z, out);
  leaky_relu_forward_impl(n, out, y, slope);
}

void Backend::conv2d_backward_data_leaky_relu_impl(const ConvGeom& g, const float* dy, const float* w,
                                                   const float* m, const float* z, float* dx, float slope) {
  const std::int64_t n = std::int64_t(g.N) * g.C * g.H * g.W;
  conv2d_backward_data_impl(g, dy, w, dx);
  if (z) leaky_relu_backward_add_impl(n, m, dx, z, dx, slope);
  else leaky_relu_backward_impl(n, m, dx, dx, slope);
}

void Backend::conv2d_backward_filter(const Tensor& x, const Tensor& dy, const Tensor& dw,
                                     const Tensor& db, int stride, int pad) {
  check_tensor(x, "conv2d_backward_filter", "x");
  check_tensor(dy, "conv2d_backward_filter", "dy");
  check_tensor(dw, "conv2d_backward_filter", "dw");
  const ConvGeom g = conv_geom("conv2d_backward_filter", x, dw, dy, stride, pad, pad);
  float* db_ptr = nullptr;
  if (db.defined()) {
    check_tensor(db, "conv2d_backward_filter", "db");
    JEM_CHECK(db.numel() == g.K, "conv2d_backward_filter: db ", db.shape().str(), " for ", g.K,
              " filters");
    db_ptr = db.data<float>();
  }
  if (g.N == 0) return;  // an empty batch: nothing to compute or to add (cuDNN rejects 0-sized descriptors)
  conv2d_backward_filter_impl(g, x.data<float>(), dy.data<float>(), dw.data<float>(), db_ptr);
}

void Backend::leaky_relu_forward(const Tensor& x, const Tensor& y, float slope) {
  check_tensor(x, "leaky_relu_forward", "x");
  check_tensor(y, "leaky_relu_forward", "y");
  JEM_CHECK(x.shape() == y.shape(), "leaky_relu_forward: x ", x.shape().str(), " vs y ",
            y.shape().str());
  check_same_layout("leaky_relu_forward", {&x, &y});
  leaky_relu_forward_impl(x.numel(), x.data<float>(), y.data<float>(), slope);
}

void Backend::leaky_relu_backward(const Tensor& x, const Tensor& dy, const Tensor& dx,
                                  float slope) {
  check_tensor(x, "leaky_relu_backward", "x");
  check_tensor(dy, "leaky_relu_backward", "dy");
  check_tensor(dx, "leaky_relu_backward", "dx");
  JEM_CHECK(x.shape() == dy.shape() && x.shape() == dx.shape(), "leaky_relu_backward: x ",
            x.shape().str(), ", dy ", dy.shape().str(), ", dx ", dx.shape().str());
  check_same_layout("leaky_relu_backward", {&x, &dy, &dx});
  leaky_relu_backward_impl(x.numel(), x.data<float>(), dy.data<float>(), dx.data<float>(), slope);
}

void Backend::bias_leaky_relu_forward(const Tensor& x, const Tensor& b, const Tensor& y, float slope) {
  check_tensor(x, "bias_leaky_relu_forward", "x");
  check_tensor(b, "bias_leaky_relu_forward", "b");
  check_tensor(y, "bias_leaky_relu_forward", "y");
  JEM_CHECK(x.shape().rank() >= 2 && x.shape() == y.shape() && b.numel() == x.dim(1),
            "bias_leaky_relu_forward: x ", x.shape().str(), ", b ", b.shape().str(), ", y ", y.shape().str(),
            " (want x == y [N, C, ...] and b [C])");
  check_same_layout("bias_leaky_relu_forward", {&x, &y});
  if (x.channels_last()) {  // planes of one element each: channel = element % C
    bias_leaky_relu_forward_impl(x.numel(), int(x.dim(1)), 1, x.data<float>(), b.data<float>(),
                                 y.data<float>(), slope);
    return;
  }
  const std::int64_t planes = x.dim(0) * x.dim(1);
  bias_leaky_relu_forward_impl(planes, int(x.dim(1)), planes > 0 ? x.numel() / planes : 0, x.data<float>(),
                               b.data<float>(), y.data<float>(), slope);
}

void Backend::leaky_relu_backward_add(const Tensor& x, const Tensor& dy, const Tensor& other, const Tensor& dx,
                                      float slope) {
  check_tensor(x, "leaky_relu_backward_add", "x");
  check_tensor(dy, "leaky_relu_backward_add", "dy");
  check_tensor(other, "leaky_relu_backward_add", "other");
  check_tensor(dx, "leaky_relu_backward_add", "dx");
  JEM_CHECK(x.shape() == dy.shape() && x.shape() == other.shape() && x.shape() == dx.shape(),
            "leaky_relu_backward_add: x ", x.shape().str(), ", dy ", dy.shape().str(), ", other ",
            other.shape().str(), ", dx ", dx.shape().str());
  check_same_layout("leaky_relu_backward_add", {&x, &dy, &other, &dx});
  leaky_relu_backward_add_impl(x.numel(), x.data<float>(), dy.data<float>(), other.data<float>(),
                               dx.data<float>(), slope);
}

void Backend::global_avg_pool_forward(const Tensor& x, const Tensor& y) {
  check_tensor(x, "global_avg_pool_forward", "x");
  check_tensor(y, "global_avg_pool_forward", "y");
  JEM_CHECK(x.shape().rank() == 4, "global_avg_pool_forward: x must be NCHW, got ", x.shape().str());
  const Shape expect{x.dim(0), x.dim(1)};
  JEM_CHECK(y.shape() == expect, "global_avg_pool_forward: y ", y.shape().str(), ", expected ",
            expect.str());
  if (x.channels_last())
    global_avg_pool_forward_nhwc_impl(int(x.dim(0)), int(x.dim(1)), int(x.dim(2) * x.dim(3)),
                                      x.data<float>(), y.data<float>());
  else
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
  if (dx.channels_last())
    global_avg_pool_backward_nhwc_impl(int(dx.dim(0)), int(dx.dim(1)), int(dx.dim(2) * dx.dim(3)),
                                       dy.data<float>(), dx.data<float>());
  else
    global_avg_pool_backward_impl(int(dx.dim(0)), int(dx.dim(1)), int(dx.dim(2) * dx.dim(3)),
                                  dy.data<float>(), dx.data<float>());
}

// Checks x[N,C,H,W] and y[N,C,P,Q] of a pooling op against its window.
static PoolGeom pool_geom(const char* op, const Tensor& x, const Tensor& y, int kernel, int stride,
                          int pad) {
  Backend::check_nchw(x, op, "x");
  Backend::check_nchw(y, op, "y");
  JEM_CHECK(x.shape().rank() == 4, op, ": x must be NCHW, got ", x.shape().str());
  JEM_CHECK(kernel >= 1 && stride >= 1 && pad >= 0, op, ": kernel ", kernel, " stride ", stride,
            " pad ", pad);
  // A window made only of padding would have no taps (max of nothing, mean of nothing):
  // PyTorch forbids it the same way.
  JEM_CHECK(2 * pad <= kernel, op, ": pad ", pad, " exceeds half the kernel ", kernel);
  PoolGeom g;
  g.N = int(x.dim(0));
  g.C = int(x.dim(1));
  g.H = int(x.dim(2));
  g.W = int(x.dim(3));
  g.kernel = kernel;
  g.stride = stride;
  g.pad = pad;
  JEM_CHECK(g.H + 2 * pad >= kernel && g.W + 2 * pad >= kernel, op, ": ", kernel, "x", kernel,
            " window does not fit input ", x.shape().str(), " padded by ", pad);
  const Shape expect{g.N, g.C, g.P(), g.Q()};
  JEM_CHECK(y.shape() == expect, op, ": y ", y.shape().str(), ", expected ", expect.str());
  return g;
}

void Backend::max_pool2d_forward(const Tensor& x, const Tensor& y, int kernel, int stride,
                                 int pad) {
  check_tensor(x, "max_pool2d_forward", "x");
  check_tensor(y, "max_pool2d_forward", "y");
  const PoolGeom g = pool_geom("max_pool2d_forward", x, y, kernel, stride, pad);
  max_pool2d_forward_impl(g, x.data<float>(), y.data<float>());
}

void Backend::avg_pool2d_forward(const Tensor& x, const Tensor& y, int kernel, int stride,
                                 int pad) {
  check_tensor(x, "avg_pool2d_forward", "x");
  check_tensor(y, "avg_pool2d_forward", "y");
  const PoolGeom g = pool_geom("avg_pool2d_forward", x, y, kernel, stride, pad);
  avg_pool2d_forward_impl(g, x.data<float>(), y.data<float>());
}

void Backend::resize_bilinear_forward(const Tensor& x, const Tensor& y) {
  check_tensor(x, "resize_bilinear_forward", "x");
  check_tensor(y, "resize_bilinear_forward", "y");
  check_nchw(x, "resize_bilinear_forward", "x");
  check_nchw(y, "resize_bilinear_forward", "y");
  JEM_CHECK(x.shape().rank() == 4 && y.shape().rank() == 4,
            "resize_bilinear_forward: x and y must be NCHW, got ", x.shape().str(), " and ",
            y.shape().str());
  JEM_CHECK(x.dim(0) == y.dim(0) && x.dim(1) == y.dim(1), "resize_bilinear_forward: x ",
            x.shape().str(), " and y ", y.shape().str(), " differ in N or C");
  JEM_CHECK(x.dim(2) > 0 && x.dim(3) > 0 && y.dim(2) > 0 && y.dim(3) > 0,
            "resize_bilinear_forward: empty image ", x.shape().str(), " -> ", y.shape().str());
  resize_bilinear_forward_impl(x.dim(0) * x.dim(1), int(x.dim(2)), int(x.dim(3)), int(y.dim(2)),
                               int(y.dim(3)), x.data<float>(), y.data<float>());
}

void Backend::copy_channels(const Tensor& src, const Tensor& dst, int channel_offset) {
  check_tensor(src, "copy_channels", "src");
  check_tensor(dst, "copy_channels", "dst");
  check_nchw(src, "copy_channels", "src");
  check_nchw(dst, "copy_channels", "dst");
  JEM_CHECK(src.shape().rank() == 4 && dst.shape().rank() == 4,
            "copy_channels: src and dst must be NCHW, got ", src.shape().str(), " and ",
            dst.shape().str());
  JEM_CHECK(src.dim(0) == dst.dim(0) && src.dim(2) == dst.dim(2) && src.dim(3) == dst.dim(3),
            "copy_channels: src ", src.shape().str(), " and dst ", dst.shape().str(),
            " differ in N, H or W");
  JEM_CHECK(channel_offset >= 0 && channel_offset + src.dim(1) <= dst.dim(1),
            "copy_channels: channels [", channel_offset, ", ", channel_offset + src.dim(1),
            ") do not fit dst ", dst.shape().str());
  copy_channels_impl(int(src.dim(0)), int(src.dim(1)), int(dst.dim(1)), src.dim(2) * src.dim(3),
                     channel_offset, src.data<float>(), dst.data<float>());
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
