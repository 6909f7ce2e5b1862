// The FID Inception-v3 network; see include/jem/inception_v3.hpp for the
// architecture.
#include "jem/inception_v3.hpp"

#include <algorithm>
#include <cmath>
#include <map>

#include "jem/safetensors.hpp"

namespace jem {
namespace {

// One BasicConv2d: its pytorch-fid prefix and geometry.
struct ConvSpec {
  std::string prefix;
  int cin, cout, kh, kw, stride, ph, pw;
};

// Every BasicConv2d of the network, in network order.
std::vector<ConvSpec> conv_specs() {
  std::vector<ConvSpec> s;
  auto add = [&](const std::string& p, int cin, int cout, int kh, int kw, int stride = 1,
                 int ph = 0, int pw = 0) {
    s.push_back({p, cin, cout, kh, kw, stride, ph, pw});
  };
  add("Conv2d_1a_3x3", 3, 32, 3, 3, 2);
  add("Conv2d_2a_3x3", 32, 32, 3, 3);
  add("Conv2d_2b_3x3", 32, 64, 3, 3, 1, 1, 1);
  add("Conv2d_3b_1x1", 64, 80, 1, 1);
  add("Conv2d_4a_3x3", 80, 192, 3, 3);
  // FIDInceptionA: 64 + 64 + 96 + pool_features output channels.
  const struct {
    const char* name;
    int in, pool;
  } a_blocks[] = {{"Mixed_5b", 192, 32}, {"Mixed_5c", 256, 64}, {"Mixed_5d", 288, 64}};
  for (const auto& b : a_blocks) {
    const std::string p = std::string(b.name) + ".";
    add(p + "branch1x1", b.in, 64, 1, 1);
    add(p + "branch5x5_1", b.in, 48, 1, 1);
    add(p + "branch5x5_2", 48, 64, 5, 5, 1, 2, 2);
    add(p + "branch3x3dbl_1", b.in, 64, 1, 1);
    add(p + "branch3x3dbl_2", 64, 96, 3, 3, 1, 1, 1);
    add(p + "branch3x3dbl_3", 96, 96, 3, 3, 1, 1, 1);
    add(p + "branch_pool", b.in, b.pool, 1, 1);
  }
  // InceptionB: 384 + 96 + 288 (max-pooled input) = 768.
  add("Mixed_6a.branch3x3", 288, 384, 3, 3, 2);
  add("Mixed_6a.branch3x3dbl_1", 288, 64, 1, 1);
  add("Mixed_6a.branch3x3dbl_2", 64, 96, 3, 3, 1, 1, 1);
  add("Mixed_6a.branch3x3dbl_3", 96, 96, 3, 3, 2);
  // FIDInceptionC: 4 x 192 = 768, with factorised 1x7 / 7x1 convolutions of c7
  // channels.
  const struct {
    const char* name;
    int c7;
  } c_blocks[] = {{"Mixed_6b", 128}, {"Mixed_6c", 160}, {"Mixed_6d", 160}, {"Mixed_6e", 192}};
  for (const auto& b : c_blocks) {
    const std::string p = std::string(b.name) + ".";
    const int c7 = b.c7;
    add(p + "branch1x1", 768, 192, 1, 1);
    add(p + "branch7x7_1", 768, c7, 1, 1);
    add(p + "branch7x7_2", c7, c7, 1, 7, 1, 0, 3);
    add(p + "branch7x7_3", c7, 192, 7, 1, 1, 3, 0);
    add(p + "branch7x7dbl_1", 768, c7, 1, 1);
    add(p + "branch7x7dbl_2", c7, c7, 7, 1, 1, 3, 0);
    add(p + "branch7x7dbl_3", c7, c7, 1, 7, 1, 0, 3);
    add(p + "branch7x7dbl_4", c7, c7, 7, 1, 1, 3, 0);
    add(p + "branch7x7dbl_5", c7, 192, 1, 7, 1, 0, 3);
    add(p + "branch_pool", 768, 192, 1, 1);
  }
  // InceptionD: 320 + 192 + 768 (max-pooled input) = 1280.
  add("Mixed_7a.branch3x3_1", 768, 192, 1, 1);
  add("Mixed_7a.branch3x3_2", 192, 320, 3, 3, 2);
  add("Mixed_7a.branch7x7x3_1", 768, 192, 1, 1);
  add("Mixed_7a.branch7x7x3_2", 192, 192, 1, 7, 1, 0, 3);
  add("Mixed_7a.branch7x7x3_3", 192, 192, 7, 1, 1, 3, 0);
  add("Mixed_7a.branch7x7x3_4", 192, 192, 3, 3, 2);
  // FIDInceptionE_1 / E_2: 320 + 2 x 384 + 2 x 384 + 192 = 2048.
  const struct {
    const char* name;
    int in;
  } e_blocks[] = {{"Mixed_7b", 1280}, {"Mixed_7c", 2048}};
  for (const auto& b : e_blocks) {
    const std::string p = std::string(b.name) + ".";
    add(p + "branch1x1", b.in, 320, 1, 1);
    add(p + "branch3x3_1", b.in, 384, 1, 1);
    add(p + "branch3x3_2a", 384, 384, 1, 3, 1, 0, 1);
    add(p + "branch3x3_2b", 384, 384, 3, 1, 1, 1, 0);
    add(p + "branch3x3dbl_1", b.in, 448, 1, 1);
    add(p + "branch3x3dbl_2", 448, 384, 3, 3, 1, 1, 1);
    add(p + "branch3x3dbl_3a", 384, 384, 1, 3, 1, 0, 1);
    add(p + "branch3x3dbl_3b", 384, 384, 3, 1, 1, 1, 0);
    add(p + "branch_pool", b.in, 192, 1, 1);
  }
  return s;
}

const char* const kBnParts[] = {"weight", "bias", "running_mean", "running_var"};

}  // namespace

std::vector<InceptionTensorSpec> InceptionV3::tensor_specs() {
  std::vector<InceptionTensorSpec> out;
  for (const ConvSpec& c : conv_specs()) {
    out.push_back({c.prefix + ".conv.weight", {c.cout, c.cin, c.kh, c.kw}});
    for (const char* part : kBnParts) out.push_back({c.prefix + ".bn." + part, {c.cout}});
  }
  out.push_back({"fc.weight", {kLogitDim, kFeatureDim}});
  out.push_back({"fc.bias", {kLogitDim}});
  return out;
}

InceptionV3::InceptionV3(Backend& backend, const std::string& weights_path, int image_size)
    : be_(backend), image_size_(image_size) {
  // 75 x 75 is the smallest input whose every stride-2 stage still has a pixel
  // left.
  JEM_CHECK(image_size >= 75, "InceptionV3: image size ", image_size, " is below the minimum 75");
  const safetensors::File file = safetensors::File::read(weights_path);
  auto read = [&](const std::string& name, const std::vector<std::int64_t>& shape) {
    JEM_CHECK(file.contains(name), weights_path, ": missing tensor '", name,
              "' (expected pytorch-fid's FID Inception weights converted by "
              "tools/convert_inception_weights.py)");
    return file.f32_checked(name, shape);  // names the tensor on a shape or dtype mismatch
  };

  const std::vector<ConvSpec> specs = conv_specs();
  std::int64_t total = std::int64_t(kLogitDim) * kFeatureDim + kLogitDim;
  for (const ConvSpec& c : specs) total += std::int64_t(c.cout) * c.cin * c.kh * c.kw + c.cout;
  std::vector<float> host(static_cast<std::size_t>(total));  // the flat buffer, on the host
  std::vector<std::pair<std::size_t, std::size_t>> offsets;  // (weight, bias) of each conv
  std::size_t at = 0;
  for (const ConvSpec& c : specs) {
    const std::int64_t per_out = std::int64_t(c.cin) * c.kh * c.kw;
    const std::vector<float> w = read(c.prefix + ".conv.weight", {c.cout, c.cin, c.kh, c.kw});
    std::vector<float> bn[4];
    for (int i = 0; i < 4; ++i) bn[i] = read(c.prefix + ".bn." + kBnParts[i], {c.cout});
    const std::size_t w_at = at, b_at = at + static_cast<std::size_t>(c.cout * per_out);
    for (int k = 0; k < c.cout; ++k) {
      const double var = bn[3][std::size_t(k)];
      JEM_CHECK(var + kBnEps > 0.0, weights_path, ": tensor '", c.prefix,
                ".bn.running_var' has a negative entry ", var, " at ", k);
      const double scale = double(bn[0][std::size_t(k)]) / std::sqrt(var + kBnEps);
      for (std::int64_t i = 0; i < per_out; ++i)
        host[w_at + std::size_t(k * per_out + i)] = float(w[std::size_t(k * per_out + i)] * scale);
      host[b_at + std::size_t(k)] =
          float(double(bn[1][std::size_t(k)]) - double(bn[2][std::size_t(k)]) * scale);
    }
    offsets.emplace_back(w_at, b_at);
    at = b_at + std::size_t(c.cout);
  }
  const std::vector<float> fc_w = read("fc.weight", {kLogitDim, kFeatureDim});
  const std::vector<float> fc_b = read("fc.bias", {kLogitDim});
  const std::size_t fc_at = at;
  std::copy(fc_w.begin(), fc_w.end(), host.begin() + std::ptrdiff_t(fc_at));
  std::copy(fc_b.begin(), fc_b.end(), host.begin() + std::ptrdiff_t(fc_at + fc_w.size()));

  params_ = be_.empty(Shape{total});  // [total]
  be_.upload(host.data(), params_);
  for (std::size_t i = 0; i < specs.size(); ++i) {
    const ConvSpec& s = specs[i];
    Conv c;
    c.cin = s.cin, c.cout = s.cout, c.kh = s.kh, c.kw = s.kw;
    c.stride = s.stride, c.ph = s.ph, c.pw = s.pw;
    c.w = params_.view(offsets[i].first, Shape{s.cout, s.cin, s.kh, s.kw});
    c.b = params_.view(offsets[i].second, Shape{s.cout});
    convs_.emplace_back(s.prefix, std::move(c));
  }
  fc_w_ = params_.view(fc_at, Shape{kLogitDim, kFeatureDim});
  fc_b_ = params_.view(fc_at + fc_w.size(), Shape{kLogitDim});
}

Tensor InceptionV3::conv(const std::string& name, const Tensor& x) {
  // Linear search over ~94 layers: negligible next to one convolution.
  auto it =
      std::find_if(convs_.begin(), convs_.end(), [&](const auto& p) { return p.first == name; });
  JEM_CHECK(it != convs_.end(), "InceptionV3: no layer '", name, "'");
  const Conv& c = it->second;
  const std::int64_t P = (x.dim(2) + 2 * c.ph - c.kh) / c.stride + 1;
  const std::int64_t Q = (x.dim(3) + 2 * c.pw - c.kw) / c.stride + 1;
  Tensor y = act(Shape{x.dim(0), c.cout, P, Q});  // [N, cout, P, Q]
  be_.conv2d_forward(x, c.w, c.b, y, c.stride, c.ph, c.pw);
  be_.leaky_relu_forward(y, y, 0.0f);  // ReLU
  return y;
}

Tensor InceptionV3::pool(const Tensor& x, bool is_max, int kernel, int stride, int pad) {
  const std::int64_t P = (x.dim(2) + 2 * pad - kernel) / stride + 1;
  const std::int64_t Q = (x.dim(3) + 2 * pad - kernel) / stride + 1;
  Tensor y = act(Shape{x.dim(0), x.dim(1), P, Q});  // [N, C, P, Q]
  if (is_max)
    be_.max_pool2d_forward(x, y, kernel, stride, pad);
  else
    be_.avg_pool2d_forward(x, y, kernel, stride, pad);
  return y;
}

Tensor InceptionV3::concat(const std::vector<Tensor>& parts) {
  std::int64_t C = 0;
  for (const Tensor& t : parts) C += t.dim(1);
  const Tensor& f = parts.front();
  Tensor y = act(Shape{f.dim(0), C, f.dim(2), f.dim(3)});  // [N, sum C, H, W]
  int offset = 0;
  for (const Tensor& t : parts) {
    be_.copy_channels(t, y, offset);
    offset += int(t.dim(1));
  }
  return y;
}

// FIDInceptionA: the branch pool averages over in-image taps only.
Tensor InceptionV3::block_a(const std::string& p, const Tensor& x) {
  Tensor b1 = conv(p + ".branch1x1", x);
  Tensor b5 = conv(p + ".branch5x5_2", conv(p + ".branch5x5_1", x));
  Tensor b3 =
      conv(p + ".branch3x3dbl_3", conv(p + ".branch3x3dbl_2", conv(p + ".branch3x3dbl_1", x)));
  Tensor bp = conv(p + ".branch_pool", pool(x, false, 3, 1, 1));
  return concat({b1, b5, b3, bp});
}

// InceptionB: two stride-2 branches and a stride-2 max pool of the input.
Tensor InceptionV3::block_b(const std::string& p, const Tensor& x) {
  Tensor b3 = conv(p + ".branch3x3", x);
  Tensor bd =
      conv(p + ".branch3x3dbl_3", conv(p + ".branch3x3dbl_2", conv(p + ".branch3x3dbl_1", x)));
  return concat({b3, bd, pool(x, true, 3, 2, 0)});
}

// FIDInceptionC: factorised 7x7 branches; the branch pool does not count
// padding.
Tensor InceptionV3::block_c(const std::string& p, const Tensor& x) {
  Tensor b1 = conv(p + ".branch1x1", x);
  Tensor b7 = conv(p + ".branch7x7_3", conv(p + ".branch7x7_2", conv(p + ".branch7x7_1", x)));
  Tensor bd = conv(p + ".branch7x7dbl_1", x);
  for (const char* s : {".branch7x7dbl_2", ".branch7x7dbl_3", ".branch7x7dbl_4", ".branch7x7dbl_5"})
    bd = conv(p + s, bd);
  Tensor bp = conv(p + ".branch_pool", pool(x, false, 3, 1, 1));
  return concat({b1, b7, bd, bp});
}

// InceptionD: stride-2 reduction to 8 x 8 at 299.
Tensor InceptionV3::block_d(const std::string& p, const Tensor& x) {
  Tensor b3 = conv(p + ".branch3x3_2", conv(p + ".branch3x3_1", x));
  Tensor b7 = conv(p + ".branch7x7x3_1", x);
  for (const char* s : {".branch7x7x3_2", ".branch7x7x3_3", ".branch7x7x3_4"}) b7 = conv(p + s, b7);
  return concat({b3, b7, pool(x, true, 3, 2, 0)});
}

// FIDInceptionE_1 (average pool without padding counted) / E_2 (max pool)
// branch pools; the 3x3 branches split into a 1x3 and a 3x1 half, concatenated
// in that order.
Tensor InceptionV3::block_e(const std::string& p, const Tensor& x, bool max_pool_branch) {
  Tensor b1 = conv(p + ".branch1x1", x);
  Tensor t3 = conv(p + ".branch3x3_1", x);
  Tensor b3a = conv(p + ".branch3x3_2a", t3);
  Tensor b3b = conv(p + ".branch3x3_2b", t3);
  Tensor td = conv(p + ".branch3x3dbl_2", conv(p + ".branch3x3dbl_1", x));
  Tensor bda = conv(p + ".branch3x3dbl_3a", td);
  Tensor bdb = conv(p + ".branch3x3dbl_3b", td);
  Tensor bp = conv(p + ".branch_pool", pool(x, max_pool_branch, 3, 1, 1));
  return concat({b1, b3a, b3b, bda, bdb, bp});
}

Tensor InceptionV3::act(Shape shape) {
  // The k-th activation of a forward pass has the same shape on every pass with the same input
  // shape: reuse it, else (first pass, or a new batch size) allocate and keep it.
  if (next_act_ == acts_.size()) acts_.emplace_back();
  Tensor& t = acts_[next_act_++];
  if (!t.defined() || t.shape() != shape) t = be_.empty(shape);
  return t;
}

void InceptionV3::forward(const Tensor& x, const Tensor& features, const Tensor& logits) {
  next_act_ = 0;
  JEM_CHECK(x.defined() && x.shape().rank() == 4 && (x.dim(1) == 1 || x.dim(1) == 3),
            "InceptionV3: input must be [N, 1 or 3, H, W], got ",
            x.defined() ? x.shape().str() : std::string("undefined"));
  const std::int64_t N = x.dim(0);
  JEM_CHECK(features.defined() && features.shape() == (Shape{N, kFeatureDim}),
            "InceptionV3: features must be [", N, ", ", kFeatureDim, "]");
  JEM_CHECK(logits.defined() && logits.shape() == (Shape{N, kLogitDim}),
            "InceptionV3: logits must be [", N, ", ", kLogitDim, "]");
  const int S = image_size_;
  Tensor h = x;
  if (x.dim(2) != S || x.dim(3) != S) {
    h = act(Shape{N, x.dim(1), S, S});  // [N, C, S, S]
    be_.resize_bilinear_forward(x, h);
  }
  if (h.dim(1) == 1) {  // grey -> RGB by replication (after resizing: a third of the work)
    Tensor rgb = act(Shape{N, 3, S, S});  // [N, 3, S, S]
    for (int c = 0; c < 3; ++c) be_.copy_channels(h, rgb, c);
    h = rgb;
  }
  h = conv("Conv2d_1a_3x3", h);  // [N, 32, 149, 149] at 299
  h = conv("Conv2d_2a_3x3", h);  // [N, 32, 147, 147]
  h = conv("Conv2d_2b_3x3", h);  // [N, 64, 147, 147]
  h = pool(h, true, 3, 2, 0);    // [N, 64, 73, 73]
  h = conv("Conv2d_3b_1x1", h);  // [N, 80, 73, 73]
  h = conv("Conv2d_4a_3x3", h);  // [N, 192, 71, 71]
  h = pool(h, true, 3, 2, 0);    // [N, 192, 35, 35]
  h = block_a("Mixed_5b", h);    // [N, 256, 35, 35]
  h = block_a("Mixed_5c", h);    // [N, 288, 35, 35]
  h = block_a("Mixed_5d", h);    // [N, 288, 35, 35]
  h = block_b("Mixed_6a", h);    // [N, 768, 17, 17]
  for (const char* b : {"Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"}) h = block_c(b, h);
  h = block_d("Mixed_7a", h);                          // [N, 1280, 8, 8]
  h = block_e("Mixed_7b", h, false);                   // [N, 2048, 8, 8]
  h = block_e("Mixed_7c", h, true);                    // [N, 2048, 8, 8]
  be_.global_avg_pool_forward(h, features);            // [N, 2048]
  be_.linear_forward(features, fc_w_, fc_b_, logits);  // [N, 1008]
}

void InceptionV3::features_and_logits(const Tensor& host_images, std::int64_t batch_size,
                                      std::vector<float>* features, std::vector<float>* logits) {
  JEM_CHECK(host_images.defined() && host_images.device() == Device::CPU &&
                host_images.dtype() == DType::F32,
            "InceptionV3: images must be a float tensor on the host");
  JEM_CHECK(host_images.shape().rank() == 4 && (host_images.dim(1) == 1 || host_images.dim(1) == 3),
            "InceptionV3: images must be [N, 1 or 3, H, W], got ", host_images.shape().str());
  JEM_CHECK(batch_size >= 1, "InceptionV3: batch size ", batch_size);
  const std::int64_t N = host_images.dim(0);
  features->assign(static_cast<std::size_t>(N * kFeatureDim), 0.0f);
  logits->assign(static_cast<std::size_t>(N * kLogitDim), 0.0f);
  for (std::int64_t begin = 0; begin < N; begin += batch_size) {
    const std::int64_t end = std::min(N, begin + batch_size), B = end - begin;
    const Tensor host = host_images.slice(begin, end);
    Tensor x = be_.empty(host.shape());  // [B, C, H, W]
    be_.upload(host.data<float>(), x);
    Tensor f = be_.empty(Shape{B, kFeatureDim});  // [B, 2048]
    Tensor l = be_.empty(Shape{B, kLogitDim});    // [B, 1008]
    forward(x, f, l);
    be_.download(f, features->data() + begin * kFeatureDim);
    be_.download(l, logits->data() + begin * kLogitDim);
  }
}

}  // namespace jem
