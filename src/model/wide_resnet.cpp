// The JEM Wide-ResNet: layout of the flat parameter buffer, activation plan, forward, backward.
#include "jem/wide_resnet.hpp"

#include <algorithm>
#include <sstream>

namespace jem {

void WrnConfig::validate() const {
  JEM_CHECK(depth >= 10 && (depth - 4) % 6 == 0, "model depth ", depth,
            " is not of the form 6n+4 with n >= 1 (e.g. 10, 16, 22, 28)");
  JEM_CHECK(width >= 1, "model width ", width, " must be >= 1");
  JEM_CHECK(in_channels == 1 || in_channels == 3, "model in_channels ", in_channels,
            " must be 1 or 3");
  JEM_CHECK(image_size >= 4 && image_size % 4 == 0, "image size ", image_size,
            " must be a positive multiple of 4");
  JEM_CHECK(n_classes >= 2, "n_classes ", n_classes, " must be >= 2");
  JEM_CHECK(slope >= 0.0f && slope < 1.0f, "LeakyReLU slope ", slope, " must be in [0, 1)");
}

std::string WrnConfig::str() const {
  std::ostringstream os;
  os << "WRN-" << depth << "-" << width << ", " << in_channels << "x" << image_size << "x"
     << image_size << ", " << n_classes << " classes";
  return os.str();
}

WideResNet::WideResNet(const WrnConfig& config, Backend& backend, int max_batch)
    : config_(config), backend_(backend), max_batch_(max_batch) {
  config_.validate();
  JEM_CHECK(max_batch >= 1, "max_batch ", max_batch, " must be >= 1");
  build_layout();
  params_ = backend_.empty(Shape{static_cast<std::int64_t>(
      specs_.back().offset + static_cast<std::size_t>(specs_.back().shape.numel()))});
  grads_ = backend_.empty(params_.shape());
  plan_activations();
}

void WideResNet::build_layout() {
  // Phase 1: the specs in the official state_dict order.
  std::size_t offset = 0;
  auto add = [&](const std::string& name, Shape shape, std::int64_t fan_in) {
    specs_.push_back(ParamSpec{name, shape, offset, fan_in});
    offset += static_cast<std::size_t>(shape.numel());
  };
  auto add_conv = [&](const std::string& prefix, int out, int in, int r) {
    add(prefix + ".weight", Shape{out, in, r, r}, std::int64_t(in) * r * r);
    add(prefix + ".bias", Shape{out}, std::int64_t(in) * r * r);
  };
  const int k = config_.width, n = config_.blocks_per_stage();
  const int widths[3] = {16 * k, 32 * k, 64 * k};
  add_conv("f.conv1", 16, config_.in_channels, 3);
  int in_planes = 16, size = config_.image_size;
  for (int s = 0; s < 3; ++s) {
    for (int b = 0; b < n; ++b) {
      const int stride = (s > 0 && b == 0) ? 2 : 1;
      const int planes = widths[s];
      const std::string pre = "f.layer" + std::to_string(s + 1) + "." + std::to_string(b);
      add_conv(pre + ".conv1", planes, in_planes, 3);
      add_conv(pre + ".conv2", planes, planes, 3);
      if (stride != 1 || in_planes != planes) add_conv(pre + ".shortcut.0", planes, in_planes, 1);
      Block blk;
      blk.in_planes = in_planes;
      blk.planes = planes;
      blk.stride = stride;
      blk.in_size = size;
      blk.out_size = size / stride;
      blocks_.push_back(blk);
      in_planes = planes;
      size /= stride;
    }
  }
  add("class_output.weight", Shape{config_.n_classes, widths[2]}, widths[2]);
  add("class_output.bias", Shape{config_.n_classes}, widths[2]);
  for (std::size_t i = 0; i < specs_.size(); ++i) by_name_[specs_[i].name] = i;

  // Phase 2: wire the layers to their specs (specs_ no longer moves).
  auto spec = [&](const std::string& name) { return &specs_[by_name_.at(name)]; };
  auto conv = [&](const std::string& prefix, int stride, int pad) {
    return Conv{spec(prefix + ".weight"), spec(prefix + ".bias"), stride, pad};
  };
  stem_ = conv("f.conv1", 1, 1);
  for (std::size_t i = 0; i < blocks_.size(); ++i) {
    Block& blk = blocks_[i];
    const std::string pre = "f.layer" + std::to_string(i / n + 1) + "." + std::to_string(i % n);
    blk.conv1 = conv(pre + ".conv1", 1, 1);
    blk.conv2 = conv(pre + ".conv2", blk.stride, 1);
    if (by_name_.count(pre + ".shortcut.0.weight")) blk.shortcut = conv(pre + ".shortcut.0", blk.stride, 0);
  }
  head_w_ = spec("class_output.weight");
  head_b_ = spec("class_output.bias");
}

void WideResNet::plan_activations() {
  const std::int64_t M = max_batch_, S = config_.image_size;
  std::int64_t largest = M * config_.in_channels * S * S;
  // In the backend's activation layout (NHWC on a channels-last CUDA backend); the input x and
  // its gradient dx stay NCHW images (the backend converts at the stem).
  auto act = [&](std::int64_t c, std::int64_t h) {
    largest = std::max(largest, M * c * h * h);
    return backend_.empty(Shape{M, c, h, h}).as_layout(backend_.activation_layout());
  };
  stem_out_ = act(16, S);
  for (Block& b : blocks_) {
    b.a1 = act(b.in_planes, b.in_size);
    b.a2 = act(b.planes, b.in_size);
    b.out = act(b.planes, b.out_size);
  }
  final_act_ = act(config_.feature_dim(), S / 4);
  pooled_ = backend_.empty(Shape{M, config_.feature_dim()});
  dpooled_ = backend_.empty(Shape{M, config_.feature_dim()});
  logits_ = backend_.empty(Shape{M, config_.n_classes});
  for (Tensor* t : {&grad_a_, &grad_b_, &tmp1_, &tmp2_}) *t = backend_.empty(Shape{largest});
}

std::size_t WideResNet::activation_bytes() const {
  std::size_t bytes = stem_out_.bytes() + final_act_.bytes() + pooled_.bytes() + dpooled_.bytes() +
                      logits_.bytes() + 4 * grad_a_.bytes();
  for (const Block& b : blocks_) bytes += b.a1.bytes() + b.a2.bytes() + b.out.bytes();
  return bytes;
}

Tensor WideResNet::act_view(const Tensor& scratch, const Shape& shape) const {
  return scratch.view(0, shape).as_layout(backend_.activation_layout());
}

Tensor WideResNet::p(const ParamSpec* s) const { return params_.view(s->offset, s->shape); }
Tensor WideResNet::g(const ParamSpec* s) const { return grads_.view(s->offset, s->shape); }

Tensor WideResNet::param(const std::string& name) const {
  auto it = by_name_.find(name);
  JEM_CHECK(it != by_name_.end(), "model ", config_.str(), " has no parameter '", name, "'");
  return p(&specs_[it->second]);
}

Tensor WideResNet::grad(const std::string& name) const {
  auto it = by_name_.find(name);
  JEM_CHECK(it != by_name_.end(), "model ", config_.str(), " has no parameter '", name, "'");
  return g(&specs_[it->second]);
}

double WideResNet::forward_macs(int batch) const {
  auto conv_macs = [&](const Conv& c, int in_size) {
    ConvGeom geo;
    geo.N = batch;
    geo.C = int(c.w->shape[1]);
    geo.H = geo.W = in_size;
    geo.K = int(c.w->shape[0]);
    geo.R = int(c.w->shape[2]);
    geo.stride = c.stride;
    geo.S = int(c.w->shape[3]);
    geo.pad_h = geo.pad_w = c.pad;
    return geo.macs();
  };
  double macs = conv_macs(stem_, config_.image_size);
  for (const Block& b : blocks_) {
    macs += conv_macs(b.conv1, b.in_size) + conv_macs(b.conv2, b.in_size);
    if (b.shortcut.w) macs += conv_macs(b.shortcut, b.in_size);
  }
  return macs + double(batch) * config_.feature_dim() * config_.n_classes;
}

// Rows [0, B) of a planned activation.
static Tensor rows(const Tensor& t, int B) { return t.slice(0, B); }

Tensor WideResNet::forward(const Tensor& x) {
  const int S = config_.image_size;
  JEM_CHECK(x.shape().rank() == 4 && x.dim(1) == config_.in_channels && x.dim(2) == S &&
                x.dim(3) == S,
            "model ", config_.str(), ": input ", x.shape().str(), " does not match");
  const int B = int(x.dim(0));
  JEM_CHECK(B >= 1 && B <= max_batch_, "model: batch ", B, " outside [1, ", max_batch_, "]");
  const float slope = config_.slope;
  input_ = x;
  batch_ = B;

  // Each convolution runs with the activation that follows it, in one op
  // (conv2d_forward_leaky_relu): the stem and each block's conv2 keep their pre-activation
  // output too (the next residual), conv1 only its activation.
  const Tensor none;
  Tensor cur = rows(stem_out_, B);                                   // [B, 16, S, S]
  backend_.conv2d_forward_leaky_relu(x, p(stem_.w), p(stem_.b), none, cur, rows(blocks_.front().a1, B), 1, 1,
                                     slope);
  for (std::size_t i = 0; i < blocks_.size(); ++i) {
    Block& b = blocks_[i];
    const Tensor a1 = rows(b.a1, B), a2 = rows(b.a2, B), out = rows(b.out, B);
    // a2 = lrelu(conv1(a1) + b1)                                        [B, planes, H, H]
    backend_.conv2d_forward_leaky_relu(a1, p(b.conv1.w), p(b.conv1.b), none, none, a2, 1, 1, slope);
    // out = conv2(a2) + b2 + the other path (the block's input, or its 1x1 shortcut, which
    // reads the raw input, not lrelu(x)); next = lrelu(out), the next block's a1 or the final
    // activation.                                                       [B, planes, H/s, H/s]
    const Tensor next = i + 1 < blocks_.size() ? rows(blocks_[i + 1].a1, B) : rows(final_act_, B);
    Tensor other = cur;
    if (b.shortcut.w) {
      other = act_view(tmp1_, out.shape());
      backend_.conv2d_forward(cur, p(b.shortcut.w), p(b.shortcut.b), other, b.stride, 0);
    }
    backend_.conv2d_forward_leaky_relu(a2, p(b.conv2.w), p(b.conv2.b), other, out, next, b.stride, 1, slope);
    cur = out;
  }
  const Tensor fa = rows(final_act_, B);                              // [B, 64k, S/4, S/4]
  const Tensor pooled = rows(pooled_, B);                             // [B, 64k]
  backend_.global_avg_pool_forward(fa, pooled);
  const Tensor logits = rows(logits_, B);                             // [B, classes]
  backend_.linear_forward(pooled, p(head_w_), p(head_b_), logits);
  return logits;
}

void WideResNet::backward(const Tensor& dlogits, const Tensor& dx) { backward_impl(dlogits, dx, true); }

void WideResNet::backward_input(const Tensor& dlogits, const Tensor& dx) {
  JEM_CHECK(dx.defined(), "backward_input needs an input-gradient tensor");
  backward_impl(dlogits, dx, false);
}

void WideResNet::backward_impl(const Tensor& dlogits, const Tensor& dx, bool weights) {
  const int B = batch_;
  JEM_CHECK(B > 0, "model: backward before forward");
  JEM_CHECK(dlogits.shape() == (Shape{B, config_.n_classes}), "model: dlogits ",
            dlogits.shape().str(), " does not match the last forward's logits [", B, ", ",
            config_.n_classes, "]");
  if (dx.defined())
    JEM_CHECK(dx.shape() == input_.shape(), "model: dx ", dx.shape().str(), " vs input ",
              input_.shape().str());
  const float slope = config_.slope;
  const Tensor none;

  // Head: dpooled = dlogits W (and W, b grads).
  const Tensor dpooled = rows(dpooled_, B);
  if (weights) backend_.linear_backward(rows(pooled_, B), p(head_w_), dlogits, dpooled, g(head_w_), g(head_b_));
  else backend_.linear_backward(rows(pooled_, B), p(head_w_), dlogits, dpooled, none, none);
  const bool hook = weights && grad_ready_;
  if (hook) grad_ready_(std::min(head_w_->offset, head_b_->offset));

  // Pool and final lrelu: dcur = d(last block out).
  const Block& last = blocks_.back();
  const Shape last_shape = rows(last.out, B).shape();
  Tensor dcur = act_view(grad_a_, last_shape);
  backend_.global_avg_pool_backward(dpooled, dcur);
  backend_.leaky_relu_backward(rows(last.out, B), dcur, dcur, slope);

  const Tensor* pingpong[2] = {&grad_a_, &grad_b_};  // dcur lives in pingpong[cur]
  int cur = 0;
  for (int i = int(blocks_.size()) - 1; i >= 0; --i) {
    const Block& b = blocks_[std::size_t(i)];
    const Tensor x = i == 0 ? rows(stem_out_, B) : rows(blocks_[std::size_t(i - 1)].out, B);
    const Tensor a1 = rows(b.a1, B), a2 = rows(b.a2, B);
    // conv2: d(h1) = lrelu'(a2) conv2^T(dcur) into tmp1, in one op (a2 > 0 where h1 > 0).
    const Tensor d_h1 = act_view(tmp1_, a2.shape());
    if (weights) backend_.conv2d_backward_filter(a2, dcur, g(b.conv2.w), g(b.conv2.b), b.stride, 1);
    backend_.conv2d_backward_data_leaky_relu(dcur, p(b.conv2.w), a2, none, d_h1, b.stride, 1, slope);
    // conv1 (its bias gradient is d(h1)'s sums, as for a bias in the conv).
    if (weights) backend_.conv2d_backward_filter(a1, d_h1, g(b.conv1.w), g(b.conv1.b), 1, 1);
    // The other path's gradient: the shortcut's (into tmp2), or dcur itself.
    Tensor d_other = dcur;
    if (b.shortcut.w) {
      d_other = act_view(tmp2_, x.shape());
      if (weights) backend_.conv2d_backward_filter(x, dcur, g(b.shortcut.w), g(b.shortcut.b), b.stride, 0);
      backend_.conv2d_backward_data(dcur, p(b.shortcut.w), d_other, b.stride, 0);
    }
    // d(x) = lrelu'(x) conv1^T(d(h1)) + the other path's gradient, in one op into the other
    // ping-pong buffer.
    const Tensor dprev = act_view(*pingpong[1 - cur], x.shape());
    backend_.conv2d_backward_data_leaky_relu(d_h1, p(b.conv1.w), x, d_other, dprev, 1, 1, slope);
    cur = 1 - cur;
    dcur = dprev;
    if (hook) grad_ready_(b.conv1.w->offset);  // the block's first parameter
  }

  // Stem conv: dcur = d(stem_out).
  if (weights) backend_.conv2d_backward_filter(input_, dcur, g(stem_.w), g(stem_.b), 1, 1);
  if (hook) grad_ready_(0);
  if (dx.defined()) backend_.conv2d_backward_data(dcur, p(stem_.w), dx, 1, 1);
}

}  // namespace jem
