// The fused convolutions JEM's Wide-ResNet could use, on cuDNN's graph (backend) API: which of
// them cuDNN can run, for a device or, deviceless, for a device described by its properties
// (cuDNN >= 9.8), and running them.
//
// Why: the model's elementwise passes (bias + LeakyReLU after conv1, LeakyReLU after each block,
// the LeakyReLU gradients in the backward pass) are jem's own kernels today, and their memory
// traffic alone is more than 5% of a WRN-28-10 iteration on an H200 (bench/README.md). The
// legacy cuDNN API fuses a bias, a residual and a plain ReLU into the forward convolution, but
// no LeakyReLU; the graph API's runtime-fusion engines can. Which layouts and data types they
// take is what this module finds out, per pattern and shape, before the backend is changed to use
// them (docs/cudnn-fusion.md has what it found).
//
// Everything here is built for one geometry at a time and fp32 tensors; the layout is a choice:
// NCHW (the backend's) or NHWC (channels innermost, which the runtime-fusion engines want).
// All cuDNN types stay inside conv_fusion.cpp.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "jem/backend.hpp"

struct cudnnContext;  // cudnnHandle_t is cudnnContext*

namespace jem::cuda {

// Layouts are jem::Layout (tensor.hpp): NCHW, or NHWC (channels innermost).

// The patterns, named after what the model computes now (src/model/wide_resnet.cpp):
enum class FusionPattern {
  Conv,              // y = conv(x, w)                        the plain convolution (reference)
  ConvBias,          // y = conv(x, w) + b                    what the legacy API fuses too
  ConvBiasLrelu,     // y = lrelu(conv(x, w) + b)             conv1 + bias_leaky_relu_forward
  ConvBiasAddLrelu,  // t = conv(x, w) + b + z, y = lrelu(t)  conv2 + the next activation (two
                     //                                       outputs: t is the next residual)
  DgradDrelu,        // dx = lrelu'(m) * conv_T(dy, w)        backward_data + leaky_relu_backward
  DgradDreluAdd,     // dx = lrelu'(m) * conv_T(dy, w) + z    + leaky_relu_backward_add
};
const char* to_string(FusionPattern p);
using jem::to_string;  // of a Layout
std::vector<FusionPattern> all_fusion_patterns();
// The pattern named by to_string(); throws naming `name` when there is none.
FusionPattern fusion_pattern_from_string(const std::string& name);
bool is_backward(FusionPattern p);

// Deviceless plans (device-property descriptors) need cuDNN 9.8 or later, at run time, that can
// make such a descriptor.
bool deviceless_supported();

// Sets a device-property descriptor's device id (CUDNN_ATTR_DEVICEPROP_DEVICE_ID). cuDNN takes
// it as an INT32 and rejects an INT64 with CUDNN_STATUS_BAD_PARAM_ATTRIBUTE_TYPE (how the first
// run on an H200 failed to save its properties). Returns cuDNN's status; from_handle() throws on
// a failure. Needs no GPU.
int set_device_property_device_id(void* descriptor, int device);

// Where execution plans are built for: a device (by its cuDNN handle), or deviceless, a device
// described by the JSON of its cuDNN device properties (what from_handle() can save on a GPU
// machine, e.g. configs/devices/h200.json). Holds cuDNN's device-property descriptor.
class FusionTarget {
 public:
  // Throws naming `path` when it cannot be read or cuDNN rejects it (with cuDNN's reason, e.g. a
  // missing member).
  static FusionTarget from_json_file(const std::string& path);
  static FusionTarget from_json(const std::string& json, const std::string& what);
  static FusionTarget from_handle(cudnnContext* handle);
  ~FusionTarget();
  FusionTarget(FusionTarget&&) noexcept;
  FusionTarget& operator=(FusionTarget&&) noexcept;
  FusionTarget(const FusionTarget&) = delete;
  FusionTarget& operator=(const FusionTarget&) = delete;

  std::string json() const;  // cuDNN's serialization of the properties
  void* descriptor() const { return desc_; }

 private:
  FusionTarget() = default;
  void* desc_ = nullptr;  // cudnnBackendDescriptor_t
};

// One engine configuration that cuDNN's heuristics proposed for a pattern, and whether an
// execution plan of it could be finalized for the target.
struct EngineCandidate {
  std::int64_t engine = -1;        // cuDNN's global engine index
  bool tensor_cores = false;       // numerical note TENSOR_CORE: TF32 on fp32 data
  bool runtime_compiled = false;   // behavior note RUNTIME_COMPILATION (NVRTC at plan time)
  bool plan_built = false;
  std::int64_t workspace = -1;     // bytes, when plan_built
  std::string status;              // cuDNN's status of the plan's finalization
  std::string reason;              // cuDNN's last error message when it failed
};

struct FusionSupport {
  FusionPattern pattern = FusionPattern::Conv;
  Layout layout = Layout::NCHW;
  ConvGeom geom;
  std::string graph_status;  // "ok", or why cuDNN refused the operation graph (or one of its ops)
  // Engine configurations proposed: heuristics mode A's, then the fallback list's (which repeats
  // engines of mode A's with default knobs).
  int configs = 0;
  // The distinct engines among them, in order of first appearance, with their notes (no plan
  // built: plan_built false, status empty).
  std::vector<EngineCandidate> engines;
  std::vector<EngineCandidate> candidates;  // plans tried for the first max_candidates configs
  bool any_plan(bool allow_tensor_cores) const;
};

// Builds the pattern's operation graph for `g` (slope: LeakyReLU's negative slope), asks the
// heuristics, and tries to finalize a plan for up to `max_candidates` configurations (0: none,
// only the graph and the heuristics). Never throws for what cuDNN refuses (that is the answer).
FusionSupport probe_fusion(const FusionTarget& target, FusionPattern pattern, Layout layout,
                           const ConvGeom& g, float slope, int max_candidates);

// An execution plan of one pattern, built on a device: the first configuration the heuristics
// propose whose plan finalizes (tensor-core engines only when allowed: TF32 math).
class FusedConv {
 public:
  // nullptr when no configuration works; *why then says what cuDNN answered. At most
  // `max_attempts` plans are tried (each may be a runtime compilation, ~1 s), one per engine:
  // a configuration of an engine that already failed is skipped.
  static std::unique_ptr<FusedConv> build(cudnnContext* handle, FusionPattern pattern,
                                          Layout layout, const ConvGeom& g, float slope,
                                          bool allow_tensor_cores, std::string* why,
                                          int max_attempts = 3);
  ~FusedConv();
  FusedConv(const FusedConv&) = delete;
  FusedConv& operator=(const FusedConv&) = delete;

  // The tensors of a pattern (device pointers, in the pattern's layout; unused ones null):
  // forward: x, w, b, z (residual), y (output), t (ConvBiasAddLrelu's pre-activation output);
  // backward: dy, w, m (the tensor whose sign selects lrelu's slope), z (added), dx (output).
  struct Args {
    const float *x = nullptr, *w = nullptr, *b = nullptr, *z = nullptr, *dy = nullptr,
                *m = nullptr;
    float *y = nullptr, *t = nullptr, *dx = nullptr;
  };
  std::size_t workspace_bytes() const { return workspace_; }
  std::int64_t engine() const { return engine_; }
  bool tensor_cores() const { return tensor_cores_; }  // TF32 on fp32 data
  bool runtime_compiled() const { return runtime_compiled_; }
  // Runs on the handle's stream; `workspace` must hold workspace_bytes(). The variant pack (the
  // pointers) is built at the first call with a set of pointers and kept (the last 4 sets).
  void run(cudnnContext* handle, const Args& a, void* workspace);

 private:
  struct State;  // the execution plan and the graph it was built from
  FusedConv();
  FusionPattern pattern_ = FusionPattern::Conv;
  std::unique_ptr<State> state_;
  std::size_t workspace_ = 0;
  std::int64_t engine_ = -1;
  bool tensor_cores_ = false, runtime_compiled_ = false;
};

// Host-side layout changes of [N, C, H, W] data (the probe and the tests).
std::vector<float> from_nchw(const std::vector<float>& v, int N, int C, int H, int W, Layout to);
std::vector<float> to_nchw(const std::vector<float>& v, int N, int C, int H, int W, Layout from);

// A pattern computed by a backend's own ops, all NCHW: what the model calls (the LeakyReLU
// patterns through Backend::conv2d_forward_leaky_relu and conv2d_backward_data_leaky_relu, which
// the CUDA backend runs unfused on NCHW tensors; on NHWC ones in TF32 it runs the forward two
// through FusedConv, cudnn_conv.hpp), and the reference of the fused plans. In: x (the mask m
// of the backward patterns), w, b, z, dy. Out: y, and t for ConvBiasAddLrelu (forward), or dx
// (backward). Square padding only (pad_h == pad_w).
struct PatternTensors {
  Tensor x, w, b, z, dy, y, t, dx;
};
void run_unfused(Backend& be, FusionPattern p, const ConvGeom& g, float slope, const PatternTensors& t);

}  // namespace jem::cuda
