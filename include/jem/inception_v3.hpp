// The FID Inception-v3 network of pytorch-fid ("pt_inception-2015-12-05"),
// inference only.
//
// This is the TensorFlow 2015-12-05 Inception graph that the FID and Inception
// Score literature uses, as pytorch-fid ports it: torchvision's Inception-v3
// layout with 1008 classes and four altered blocks (FIDInceptionA /
// FIDInceptionC / FIDInceptionE_1: the branch average pool does not count
// padding; FIDInceptionE_2: the branch pool is a max pool). Its weights are
// supplied by the user (docs/fid.md): pytorch-fid's .pth file converted to
// safetensors with tools/convert_inception_weights.py, keeping pytorch-fid's
// parameter names.
//
//   input x[N, C, H, W] in [-1, 1], C = 1 (replicated to 3) or 3, any H x W
//   -> bilinear resize to 299 x 299 (align_corners=False)     [N, 3, 299, 299]
//   -> Conv2d_1a_3x3 (s2), 2a_3x3, 2b_3x3 (p1), max-pool 3/2   [N, 64, 73, 73]
//   -> Conv2d_3b_1x1, 4a_3x3, max-pool 3/2                     [N, 192, 35, 35]
//   -> Mixed_5b/5c/5d (A)                                      [N, 288, 35, 35]
//   -> Mixed_6a (B)                                            [N, 768, 17, 17]
//   -> Mixed_6b..6e (C)                                        [N, 768, 17, 17]
//   -> Mixed_7a (D)                                            [N, 1280, 8, 8]
//   -> Mixed_7b (E_1), Mixed_7c (E_2)                          [N, 2048, 8, 8]
//   -> global average pool = the pool3 features of FID         [N, 2048]
//   -> fc = the logits of the Inception Score                  [N, 1008]
//
// pytorch-fid scales its [0, 1] input to [-1, 1] after resizing; jem's images
// already are in
// [-1, 1], and bilinear resizing commutes with that affine map, so they go in
// unchanged.
//
// Every "BasicConv2d" is conv (no bias) + BatchNorm (eval mode, eps 1e-3) +
// ReLU; the BatchNorm is folded into the convolution's weight and a bias at
// load time:
//   w' = w * gamma / sqrt(var + eps),   b' = beta - mean * gamma / sqrt(var +
//   eps).
// All folded parameters live in one flat buffer on the backend's device.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "jem/backend.hpp"

namespace jem {

// One tensor the weights file must hold: pytorch-fid's name and shape.
struct InceptionTensorSpec {
  std::string name;  // "Mixed_6b.branch7x7_2.conv.weight", "fc.bias", ...
  std::vector<std::int64_t> shape;
};

class InceptionV3 {
 public:
  static constexpr int kFeatureDim = 2048;  // pool3
  static constexpr int kLogitDim = 1008;    // fc
  static constexpr int kImageSize = 299;    // what pytorch-fid resizes to
  static constexpr double kBnEps = 1e-3;

  // Every tensor the network reads, in network order (BatchNorm's
  // num_batches_tracked and any other extra tensor of the file are ignored).
  static std::vector<InceptionTensorSpec> tensor_specs();

  // Reads and folds the weights. A missing tensor or a wrong shape throws one
  // jem::Error naming the file and the tensor. `image_size` is what inputs are
  // resized to: 299 for FID / IS; anything >= 75 runs (the tests use small
  // sizes to stay fast).
  InceptionV3(Backend& backend, const std::string& weights_path, int image_size = kImageSize);

  int image_size() const { return image_size_; }
  std::int64_t parameter_count() const { return params_.numel(); }

  // x [N, C, H, W] on the backend's device, values in [-1, 1], C = 1 or 3.
  // Writes features [N, 2048] and logits [N, 1008] (both on the device,
  // overwritten). Activations are allocated on the first call and reused while
  // the input shape stays the same.
  void forward(const Tensor& x, const Tensor& features, const Tensor& logits);

  // Convenience: host images [N, C, H, W] in [-1, 1] -> host features [N, 2048]
  // and logits [N, 1008], `batch_size` images at a time.
  void features_and_logits(const Tensor& host_images, std::int64_t batch_size,
                           std::vector<float>* features, std::vector<float>* logits);

  struct Conv {
    int cin = 0, cout = 0, kh = 1, kw = 1, stride = 1, ph = 0, pw = 0;
    Tensor w, b;  // folded: [cout, cin, kh, kw], [cout]
  };

 private:
  Tensor conv(const std::string& name,
              const Tensor& x);  // conv + folded BN + ReLU
  Tensor pool(const Tensor& x, bool is_max, int kernel, int stride, int pad);
  Tensor block_a(const std::string& p, const Tensor& x);
  Tensor block_b(const std::string& p, const Tensor& x);
  Tensor block_c(const std::string& p, const Tensor& x);
  Tensor block_d(const std::string& p, const Tensor& x);
  Tensor block_e(const std::string& p, const Tensor& x, bool max_pool_branch);
  Tensor concat(const std::vector<Tensor>& parts);
  // The next activation of this forward pass (see act_ below).
  Tensor act(Shape shape);

  Backend& be_;
  int image_size_;
  Tensor params_;  // every folded weight, bias and the fc layer, one flat buffer
  std::vector<std::pair<std::string, Conv>> convs_;  // by prefix, e.g. "Mixed_5b.branch1x1"
  Tensor fc_w_, fc_b_;                               // [1008, 2048], [1008]
  // Every activation of the last forward pass, in allocation order, reused while the input
  // shape stays the same: no allocation per layer and batch (on the GPU a cudaFree would
  // synchronise). Holds ~48 MB per image at 299 x 299.
  std::vector<Tensor> acts_;
  std::size_t next_act_ = 0;
};

}  // namespace jem
