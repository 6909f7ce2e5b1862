// The JEM Wide-ResNet (official `norm=None` variant), with explicit forward and backward passes.
//
//   f.conv1: 3x3 conv, 16 filters                             x[B,Cin,S,S] -> [B,16,S,S]
//   f.layer{1,2,3}.{b}: n = (depth-4)/6 blocks per stage, widths 16k, 32k, 64k; the first
//     block of stages 2 and 3 has stride 2 (in its conv2). A block computes
//       out = conv2(lrelu(conv1(lrelu(x)))) + shortcut(x)
//     with shortcut = 1x1 conv (with bias and the block's stride) when the stride is not 1 or the
//     width changes, else the identity.
//   then lrelu, global average pool over H and W, and class_output (Linear 64k -> classes).
//
// All parameters live in one flat buffer, their gradients in another of the same layout, in the
// order of the official state_dict, under the official names. Activations for `max_batch`
// images are allocated once at construction; forward and backward allocate nothing.
//
// Gradient convention (as every backend op): parameter gradients accumulate into the flat
// gradient buffer (the caller zeroes it), the input gradient `dx` is overwritten.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "jem/backend.hpp"

namespace jem {

namespace safetensors {
class File;
class Writer;
}  // namespace safetensors

struct WrnConfig {
  int depth = 28;       // 6n + 4
  int width = 10;       // k
  int in_channels = 3;  // 1 or 3
  int image_size = 32;  // square, divisible by 4
  int n_classes = 10;
  float slope = 0.2f;   // LeakyReLU negative slope

  // Throws a clear error for an impossible architecture.
  void validate() const;
  int blocks_per_stage() const { return (depth - 4) / 6; }
  int feature_dim() const { return 64 * width; }
  std::string str() const;  // "WRN-28-10, 3x32x32, 10 classes"
};

struct ParamSpec {
  std::string name;  // official name, e.g. "f.layer2.0.shortcut.0.weight"
  Shape shape;
  std::size_t offset = 0;  // into the flat buffer, in floats
  std::int64_t fan_in = 0; // for PyTorch's default initialisation
};

class WideResNet {
 public:
  WideResNet(const WrnConfig& config, Backend& backend, int max_batch);

  const WrnConfig& config() const { return config_; }
  int max_batch() const { return max_batch_; }
  Backend& backend() const { return backend_; }
  const std::vector<ParamSpec>& params() const { return specs_; }
  std::int64_t num_params() const { return params_.numel(); }

  // The flat buffers: [num_params].
  const Tensor& param_buffer() const { return params_; }
  const Tensor& grad_buffer() const { return grads_; }
  // Views of one parameter (or its gradient) by official name.
  Tensor param(const std::string& name) const;
  Tensor grad(const std::string& name) const;

  // PyTorch's default initialisation (kaiming-uniform, a = sqrt(5), i.e. U(+-1/sqrt(fan_in))
  // for weights and biases alike), deterministic in `seed`.
  void init(std::uint64_t seed);
  // Loads every parameter from a safetensors file under the official names. Ignores tensors it
  // does not use (f.linear.*, energy_output.*, optimizer state, ...). A missing tensor or a wrong
  // shape throws an error naming the tensor and the file.
  void load(const safetensors::File& file);
  // Adds every parameter under its official name.
  void save(safetensors::Writer& writer) const;

  // x[B, Cin, S, S] with B <= max_batch -> logits[B, classes] (a view valid until the next
  // forward). `x` must stay unchanged until backward() has run: the first conv's weight
  // gradient reads it.
  Tensor forward(const Tensor& x);
  // Backward to the parameters (accumulated into grad_buffer()) and, if dx is defined, to the
  // input (dx[B, Cin, S, S], overwritten). dlogits[B, classes] from the loss.
  void backward(const Tensor& dlogits, const Tensor& dx);
  // Backward to the input only: no weight-gradient work at all (what SGLD needs).
  void backward_input(const Tensor& dlogits, const Tensor& dx);
  // Called by backward() (not backward_input) each time a stage's parameter gradients are
  // final: from then on every gradient in [first, num_params) is final. The flat buffer is laid
  // out stem first and backward runs head first, so `first` only decreases: the head, each block
  // from the last, then 0 after the stem. Data parallelism all-reduces the finished part of the
  // gradient while the backward pass goes on (grad_buckets.hpp). An empty function: no calls.
  void set_grad_ready_hook(std::function<void(std::size_t first)> hook) { grad_ready_ = std::move(hook); }

  // Multiply-adds of one forward pass for `batch` images (backward costs about twice that).
  double forward_macs(int batch) const;
  // Bytes of the activation plan.
  std::size_t activation_bytes() const;

 private:
  struct Conv {
    const ParamSpec* w = nullptr;
    const ParamSpec* b = nullptr;
    int stride = 1, pad = 1;
  };
  struct Block {
    int in_planes = 0, planes = 0, stride = 1, in_size = 0, out_size = 0;
    Conv conv1, conv2, shortcut;  // shortcut.w == nullptr: identity
    // Activations for max_batch images (forward keeps them for backward). conv1's output h1 =
    // conv1(a1) + b1 is not kept: the fused op (Backend::conv2d_forward_leaky_relu) writes
    // lrelu(h1) into a2 directly; its backward reads a2's sign, which is h1's.
    Tensor a1;   // lrelu(x)          [M, in, H, H]
    Tensor a2;   // lrelu(h1)         [M, planes, H, H]
    Tensor out;  // conv2(a2) + sc(x) [M, planes, H/s, H/s]
  };

  void build_layout();
  void plan_activations();
  Tensor p(const ParamSpec* s) const;
  Tensor g(const ParamSpec* s) const;
  // The first shape.numel() floats of a scratch buffer as an activation (in the backend's layout).
  Tensor act_view(const Tensor& scratch, const Shape& shape) const;
  void backward_impl(const Tensor& dlogits, const Tensor& dx, bool weights);

  WrnConfig config_;
  Backend& backend_;
  int max_batch_;
  std::vector<ParamSpec> specs_;
  std::map<std::string, std::size_t> by_name_;
  Tensor params_, grads_;

  Conv stem_;
  std::vector<Block> blocks_;
  const ParamSpec* head_w_ = nullptr;
  const ParamSpec* head_b_ = nullptr;

  Tensor input_;     // the x of the last forward (a view held for backward)
  int batch_ = 0;    // B of the last forward
  Tensor stem_out_;  // [M, 16, S, S]
  Tensor final_act_; // lrelu(last block out) [M, 64k, S/4, S/4]
  Tensor pooled_;    // [M, 64k]
  Tensor logits_;    // [M, classes]
  // Scratch, each as large as the largest activation: gradients in backward (tmp1_ a block's
  // d(h1), tmp2_ its shortcut's data gradient); in forward tmp1_ holds the shortcut's output.
  Tensor grad_a_, grad_b_, tmp1_, tmp2_;
  Tensor dpooled_;   // [M, 64k]
  std::function<void(std::size_t)> grad_ready_;
};

}  // namespace jem
