// cuDNN graph-API fused convolutions; see conv_fusion.hpp.
//
// The graph API is a set of descriptors, each built by setting attributes and then finalized:
// tensors, a convolution, pointwise ops, the operations that connect them, the operation graph;
// the heuristics propose engine configurations for the graph, and an execution plan is one
// configuration finalized for a device (or, deviceless, for a device-property descriptor).
//
// The handle attributes of the operation graph and the execution plan are deprecated in cuDNN 9
// in favour of device-property descriptors; on a device they are still the way to bind the plan
// to the handle it runs on, so their warnings are silenced for this file.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"

#include "conv_fusion.hpp"

#include <cudnn.h>

#include <algorithm>
#include <array>
#include <deque>
#include <fstream>
#include <sstream>
#include <utility>

#include "cuda_check.hpp"

namespace jem::cuda {
namespace {

std::string last_error() {
  char buf[1024] = "";
  cudnnGetLastErrorString(buf, sizeof buf);
  return buf;
}

// One backend descriptor, owned. Setters throw with the attribute and cuDNN's reason.
class Desc {
 public:
  explicit Desc(cudnnBackendDescriptorType_t type) {
    const cudnnStatus_t st = cudnnBackendCreateDescriptor(type, &d_);
    if (st != CUDNN_STATUS_SUCCESS)
      JEM_FAIL("cuDNN error in cudnnBackendCreateDescriptor(", int(type), "): ", cudnnGetErrorString(st));
  }
  ~Desc() {
    if (d_) cudnnBackendDestroyDescriptor(d_);
  }
  Desc(Desc&& o) noexcept : d_(std::exchange(o.d_, nullptr)) {}
  Desc& operator=(Desc&& o) noexcept {
    std::swap(d_, o.d_);
    return *this;
  }
  Desc(const Desc&) = delete;
  Desc& operator=(const Desc&) = delete;

  cudnnBackendDescriptor_t get() const { return d_; }
  cudnnBackendDescriptor_t release() { return std::exchange(d_, nullptr); }

  Desc& set(cudnnBackendAttributeName_t a, cudnnBackendAttributeType_t type, std::int64_t count,
            const void* values) {
    const cudnnStatus_t st = cudnnBackendSetAttribute(d_, a, type, count, values);
    if (st != CUDNN_STATUS_SUCCESS)
      JEM_FAIL("cuDNN error setting graph attribute ", int(a), ": ", cudnnGetErrorString(st), " (",
               last_error(), ")");
    return *this;
  }
  Desc& set_i64(cudnnBackendAttributeName_t a, std::vector<std::int64_t> v) {
    return set(a, CUDNN_TYPE_INT64, std::int64_t(v.size()), v.data());
  }
  Desc& set_desc(cudnnBackendAttributeName_t a, const Desc& d) {
    cudnnBackendDescriptor_t p = d.get();
    return set(a, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &p);
  }
  Desc& set_data_type(cudnnBackendAttributeName_t a) {
    const cudnnDataType_t t = CUDNN_DATA_FLOAT;
    return set(a, CUDNN_TYPE_DATA_TYPE, 1, &t);
  }
  // Finalization's status: refusals are answers here, not errors.
  cudnnStatus_t try_finalize() { return cudnnBackendFinalize(d_); }
  Desc& finalize(const char* what) {
    const cudnnStatus_t st = try_finalize();
    if (st != CUDNN_STATUS_SUCCESS)
      JEM_FAIL("cuDNN refused the ", what, ": ", cudnnGetErrorString(st), " (", last_error(), ")");
    return *this;
  }

 private:
  cudnnBackendDescriptor_t d_ = nullptr;
};

// Thrown inside graph() when cuDNN refuses a finalization that tells whether the pattern is
// supported (the operation graph): probe_fusion reports it instead of failing.
struct Refused {
  std::string why;
};
void finalize_or_refuse(Desc& d, const char* what) {
  const cudnnStatus_t st = d.try_finalize();
  if (st != CUDNN_STATUS_SUCCESS)
    throw Refused{std::string(what) + ": " + cudnnGetErrorString(st) + " (" + last_error() + ")"};
}

// The tensors' unique ids (the variant pack binds pointers to them); virtual ones from 100.
enum Uid : std::int64_t { kX = 1, kW, kB, kZ, kY, kT, kDY, kM, kDX, kVirtual = 100 };

std::vector<std::int64_t> strides_of(const std::vector<std::int64_t>& d, Layout l) {
  // d = [N, C, H, W] in every layout (cuDNN's dimensions are always in this order).
  if (l == Layout::NCHW) return {d[1] * d[2] * d[3], d[2] * d[3], d[3], 1};
  return {d[1] * d[2] * d[3], 1, d[3] * d[1], d[1]};
}

Desc tensor(std::int64_t uid, const std::vector<std::int64_t>& dims, Layout l, bool is_virtual) {
  Desc t(CUDNN_BACKEND_TENSOR_DESCRIPTOR);
  const bool v = is_virtual;
  t.set_data_type(CUDNN_ATTR_TENSOR_DATA_TYPE)
      .set_i64(CUDNN_ATTR_TENSOR_DIMENSIONS, dims)
      .set_i64(CUDNN_ATTR_TENSOR_STRIDES, strides_of(dims, l))
      .set_i64(CUDNN_ATTR_TENSOR_UNIQUE_ID, {uid})
      // 16 bytes: what cudaMalloc'd buffers and the 16-byte-aligned parameter slices give.
      .set_i64(CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, {16})
      .set(CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, 1, &v);
  t.finalize("tensor descriptor");
  return t;
}

Desc pointwise(cudnnPointwiseMode_t mode, double slope) {
  Desc p(CUDNN_BACKEND_POINTWISE_DESCRIPTOR);
  p.set(CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &mode)
      .set_data_type(CUDNN_ATTR_POINTWISE_MATH_PREC);
  // LeakyReLU: relu with a slope below the lower clip (0): y = x > 0 ? x : slope x, and
  // RELU_BWD's dx = x > 0 ? dy : slope dy.
  if (mode == CUDNN_POINTWISE_RELU_FWD || mode == CUDNN_POINTWISE_RELU_BWD)
    p.set(CUDNN_ATTR_POINTWISE_RELU_LOWER_CLIP_SLOPE, CUDNN_TYPE_DOUBLE, 1, &slope);
  p.finalize("pointwise descriptor");
  return p;
}

// The pieces of one pattern's graph, kept alive until the graph is finalized.
struct GraphParts {
  std::deque<Desc> keep;  // a deque: add()'s references stay valid as it grows
  std::vector<cudnnBackendDescriptor_t> ops;
  Desc& add(Desc d) {
    keep.push_back(std::move(d));
    return keep.back();
  }
  void op(Desc d) { ops.push_back(add(std::move(d)).get()); }
};

// out = mode(a[, b]); binary ops take b, RELU_BWD takes (dy = a, x = b).
void pointwise_op(GraphParts& parts, cudnnPointwiseMode_t mode, double slope, const Desc& a,
                  const Desc* b, const Desc& out) {
  const Desc& pw = parts.add(pointwise(mode, slope));
  Desc op(CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR);
  op.set_desc(CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, pw);
  if (mode == CUDNN_POINTWISE_RELU_BWD) {
    op.set_desc(CUDNN_ATTR_OPERATION_POINTWISE_DYDESC, a)
        .set_desc(CUDNN_ATTR_OPERATION_POINTWISE_XDESC, *b)
        .set_desc(CUDNN_ATTR_OPERATION_POINTWISE_DXDESC, out);
  } else {
    op.set_desc(CUDNN_ATTR_OPERATION_POINTWISE_XDESC, a);
    if (b) op.set_desc(CUDNN_ATTR_OPERATION_POINTWISE_BDESC, *b);
    op.set_desc(CUDNN_ATTR_OPERATION_POINTWISE_YDESC, out);
  }
  op.finalize("pointwise operation");
  parts.op(std::move(op));
}

// The uids a pattern's variant pack binds (at most kMaxBound, the rest 0), in a fixed-size array:
// FusedConv::run runs in the training loop and allocates nothing.
constexpr std::size_t kMaxBound = 6;
using Bound = std::array<std::int64_t, kMaxBound>;
Bound uids_of(FusionPattern p) {
  switch (p) {
    case FusionPattern::Conv: return {kX, kW, kY};
    case FusionPattern::ConvBias:
    case FusionPattern::ConvBiasLrelu: return {kX, kW, kB, kY};
    case FusionPattern::ConvBiasAddLrelu: return {kX, kW, kB, kZ, kT, kY};
    case FusionPattern::DgradDrelu: return {kDY, kW, kM, kDX};
    case FusionPattern::DgradDreluAdd: return {kDY, kW, kM, kZ, kDX};
  }
  return {};
}
std::size_t bound_count(const Bound& uids) {
  return std::size_t(std::find(uids.begin(), uids.end(), 0) - uids.begin());
}

// A finalized operation graph with the descriptors it was built from: cuDNN's graph, engine
// configurations and plans may refer to them, so they live as long as it does.
struct Graph {
  GraphParts parts;
  Desc og{CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR};
};

std::unique_ptr<Graph> build_graph(FusionPattern pattern, Layout l, const ConvGeom& g, float slope,
                                   cudnnHandle_t handle);

// The operation graph of `pattern` (bound to `handle` when given: a plan built on a device).
// Throws Refused when cuDNN refuses the graph or one of its operations.
std::unique_ptr<Graph> graph(FusionPattern pattern, Layout l, const ConvGeom& g, float slope,
                             cudnnHandle_t handle) {
  try {
    return build_graph(pattern, l, g, slope, handle);
  } catch (const Error& e) {
    throw Refused{e.what()};
  }
}

std::unique_ptr<Graph> build_graph(FusionPattern pattern, Layout l, const ConvGeom& g, float slope,
                                   cudnnHandle_t handle) {
  auto result = std::make_unique<Graph>();
  GraphParts& parts = result->parts;
  const std::vector<std::int64_t> xd{g.N, g.C, g.H, g.W}, yd{g.N, g.K, g.P(), g.Q()},
      wd{g.K, g.C, g.R, g.S}, bd{1, g.K, 1, 1};
  Desc& conv = parts.add(Desc(CUDNN_BACKEND_CONVOLUTION_DESCRIPTOR));
  // Cross-correlation (no kernel flip), as the CPU backend and the legacy path compute.
  const cudnnConvolutionMode_t mode = CUDNN_CROSS_CORRELATION;
  conv.set_data_type(CUDNN_ATTR_CONVOLUTION_COMP_TYPE)
      .set(CUDNN_ATTR_CONVOLUTION_CONV_MODE, CUDNN_TYPE_CONVOLUTION_MODE, 1, &mode)
      .set_i64(CUDNN_ATTR_CONVOLUTION_SPATIAL_DIMS, {2})
      .set_i64(CUDNN_ATTR_CONVOLUTION_DILATIONS, {1, 1})
      .set_i64(CUDNN_ATTR_CONVOLUTION_FILTER_STRIDES, {g.stride, g.stride})
      .set_i64(CUDNN_ATTR_CONVOLUTION_PRE_PADDINGS, {g.pad_h, g.pad_w})
      .set_i64(CUDNN_ATTR_CONVOLUTION_POST_PADDINGS, {g.pad_h, g.pad_w});
  conv.finalize("convolution descriptor");
  const float alpha = 1.0f, beta = 0.0f;
  std::int64_t next_virtual = kVirtual;
  auto virt = [&](const std::vector<std::int64_t>& d) -> Desc& {
    return parts.add(tensor(next_virtual++, d, l, true));
  };
  const Desc& w = parts.add(tensor(kW, wd, l, false));

  if (!is_backward(pattern)) {
    const Desc& x = parts.add(tensor(kX, xd, l, false));
    const Desc& y = parts.add(tensor(kY, yd, l, false));
    const Desc& conv_out = pattern == FusionPattern::Conv ? y : virt(yd);
    Desc op(CUDNN_BACKEND_OPERATION_CONVOLUTION_FORWARD_DESCRIPTOR);
    op.set(CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_ALPHA, CUDNN_TYPE_FLOAT, 1, &alpha)
        .set(CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_BETA, CUDNN_TYPE_FLOAT, 1, &beta)
        .set_desc(CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_CONV_DESC, conv)
        .set_desc(CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_X, x)
        .set_desc(CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_W, w)
        .set_desc(CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_Y, conv_out);
    op.finalize("convolution forward operation");
    parts.op(std::move(op));
    if (pattern != FusionPattern::Conv) {
      const Desc& b = parts.add(tensor(kB, bd, l, false));
      const Desc& biased = pattern == FusionPattern::ConvBias ? y : virt(yd);
      pointwise_op(parts, CUDNN_POINTWISE_ADD, 0.0, conv_out, &b, biased);
      if (pattern == FusionPattern::ConvBiasLrelu) {
        pointwise_op(parts, CUDNN_POINTWISE_RELU_FWD, slope, biased, nullptr, y);
      } else if (pattern == FusionPattern::ConvBiasAddLrelu) {
        const Desc& z = parts.add(tensor(kZ, yd, l, false));
        const Desc& t = parts.add(tensor(kT, yd, l, false));  // an output too
        pointwise_op(parts, CUDNN_POINTWISE_ADD, 0.0, biased, &z, t);
        pointwise_op(parts, CUDNN_POINTWISE_RELU_FWD, slope, t, nullptr, y);
      }
    }
  } else {
    const Desc& dy = parts.add(tensor(kDY, yd, l, false));
    const Desc& m = parts.add(tensor(kM, xd, l, false));
    const Desc& dx = parts.add(tensor(kDX, xd, l, false));
    const Desc& dgrad = virt(xd);
    Desc op(CUDNN_BACKEND_OPERATION_CONVOLUTION_BACKWARD_DATA_DESCRIPTOR);
    op.set(CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_ALPHA, CUDNN_TYPE_FLOAT, 1, &alpha)
        .set(CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_BETA, CUDNN_TYPE_FLOAT, 1, &beta)
        .set_desc(CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_CONV_DESC, conv)
        .set_desc(CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_W, w)
        .set_desc(CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_DY, dy)
        .set_desc(CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_DX, dgrad);
    op.finalize("convolution backward-data operation");
    parts.op(std::move(op));
    if (pattern == FusionPattern::DgradDrelu) {
      pointwise_op(parts, CUDNN_POINTWISE_RELU_BWD, slope, dgrad, &m, dx);
    } else {
      const Desc& z = parts.add(tensor(kZ, xd, l, false));
      const Desc& masked = virt(xd);
      pointwise_op(parts, CUDNN_POINTWISE_RELU_BWD, slope, dgrad, &m, masked);
      pointwise_op(parts, CUDNN_POINTWISE_ADD, 0.0, masked, &z, dx);
    }
  }

  Desc& og = result->og;
  og.set(CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, std::int64_t(parts.ops.size()),
         parts.ops.data());
  if (handle) og.set(CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle);
  finalize_or_refuse(og, "operation graph");
  return result;
}

// The heuristics' configurations for graph `og`: mode A's, then the fallback list's.
std::vector<Desc> engine_configs(const Desc& og, const FusionTarget* target) {
  std::vector<Desc> out;
  for (const cudnnBackendHeurMode_t mode : {CUDNN_HEUR_MODE_A, CUDNN_HEUR_MODE_FALLBACK}) {
    Desc h(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR);
    h.set_desc(CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, og)
        .set(CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode);
    if (target) {
      cudnnBackendDescriptor_t dp = target->descriptor();
      h.set(CUDNN_ATTR_ENGINEHEUR_DEVICEPROP, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &dp);
    }
    if (h.try_finalize() != CUDNN_STATUS_SUCCESS) continue;  // no configuration in this mode
    std::int64_t count = 0;
    if (cudnnBackendGetAttribute(h.get(), CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR,
                                 0, &count, nullptr) != CUDNN_STATUS_SUCCESS || count <= 0)
      continue;
    std::vector<Desc> cfgs;
    std::vector<cudnnBackendDescriptor_t> raw;
    for (std::int64_t i = 0; i < count; ++i) {
      cfgs.emplace_back(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR);
      raw.push_back(cfgs.back().get());
    }
    std::int64_t got = 0;
    JEM_CUDNN_CHECK(cudnnBackendGetAttribute(h.get(), CUDNN_ATTR_ENGINEHEUR_RESULTS,
                                             CUDNN_TYPE_BACKEND_DESCRIPTOR, count, &got, raw.data()));
    for (std::int64_t i = 0; i < got; ++i) out.push_back(std::move(cfgs[std::size_t(i)]));
  }
  return out;
}

// The engine behind a configuration: its index and notes.
EngineCandidate describe_engine(const Desc& cfg) {
  EngineCandidate c;
  Desc engine(CUDNN_BACKEND_ENGINE_DESCRIPTOR);
  cudnnBackendDescriptor_t e = engine.get();
  std::int64_t n = 0;
  if (cudnnBackendGetAttribute(cfg.get(), CUDNN_ATTR_ENGINECFG_ENGINE, CUDNN_TYPE_BACKEND_DESCRIPTOR,
                               1, &n, &e) != CUDNN_STATUS_SUCCESS)
    return c;
  (void)cudnnBackendGetAttribute(e, CUDNN_ATTR_ENGINE_GLOBAL_INDEX, CUDNN_TYPE_INT64, 1, &n, &c.engine);
  cudnnBackendNumericalNote_t notes[CUDNN_NUMERICAL_NOTE_TYPE_COUNT];
  if (cudnnBackendGetAttribute(e, CUDNN_ATTR_ENGINE_NUMERICAL_NOTE, CUDNN_TYPE_NUMERICAL_NOTE,
                               CUDNN_NUMERICAL_NOTE_TYPE_COUNT, &n, notes) == CUDNN_STATUS_SUCCESS)
    for (std::int64_t i = 0; i < n; ++i)
      c.tensor_cores = c.tensor_cores || notes[i] == CUDNN_NUMERICAL_NOTE_TENSOR_CORE;
  cudnnBackendBehaviorNote_t behavior[CUDNN_BEHAVIOR_NOTE_TYPE_COUNT];
  if (cudnnBackendGetAttribute(e, CUDNN_ATTR_ENGINE_BEHAVIOR_NOTE, CUDNN_TYPE_BEHAVIOR_NOTE,
                               CUDNN_BEHAVIOR_NOTE_TYPE_COUNT, &n, behavior) == CUDNN_STATUS_SUCCESS)
    for (std::int64_t i = 0; i < n; ++i)
      c.runtime_compiled = c.runtime_compiled || behavior[i] == CUDNN_BEHAVIOR_NOTE_RUNTIME_COMPILATION;
  return c;
}

// An execution plan of `cfg`, for a device-property target or a handle; its finalization status.
cudnnStatus_t make_plan(Desc& plan, const Desc& cfg, const FusionTarget* target, cudnnHandle_t handle) {
  plan.set_desc(CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, cfg);
  if (handle) plan.set(CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle);
  if (target) {
    cudnnBackendDescriptor_t dp = target->descriptor();
    plan.set(CUDNN_ATTR_EXECUTION_PLAN_DEVICEPROP, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &dp);
  }
  return plan.try_finalize();
}

}  // namespace

const char* to_string(FusionPattern p) {
  switch (p) {
    case FusionPattern::Conv: return "conv";
    case FusionPattern::ConvBias: return "conv+bias";
    case FusionPattern::ConvBiasLrelu: return "conv+bias+lrelu";
    case FusionPattern::ConvBiasAddLrelu: return "conv+bias+add+lrelu";
    case FusionPattern::DgradDrelu: return "dgrad+drelu";
    case FusionPattern::DgradDreluAdd: return "dgrad+drelu+add";
  }
  return "?";
}


bool is_backward(FusionPattern p) {
  return p == FusionPattern::DgradDrelu || p == FusionPattern::DgradDreluAdd;
}

FusionPattern fusion_pattern_from_string(const std::string& name) {
  for (const FusionPattern p : all_fusion_patterns())
    if (name == to_string(p)) return p;
  JEM_FAIL("unknown fusion pattern '", name, "' (conv, conv+bias, conv+bias+lrelu, conv+bias+add+lrelu, ",
           "dgrad+drelu, dgrad+drelu+add)");
}

bool deviceless_supported() {
  static const bool supported = [] {
    if (cudnnGetVersion() < 90800) return false;
    // A library that cannot make the descriptor (the emulated cuDNN of tests/emulation) has none.
    cudnnBackendDescriptor_t d = nullptr;
    if (cudnnBackendCreateDescriptor(CUDNN_BACKEND_DEVICEPROP_DESCRIPTOR, &d) != CUDNN_STATUS_SUCCESS) return false;
    cudnnBackendDestroyDescriptor(d);
    return true;
  }();
  return supported;
}

std::vector<FusionPattern> all_fusion_patterns() {
  return {FusionPattern::Conv,           FusionPattern::ConvBias,   FusionPattern::ConvBiasLrelu,
          FusionPattern::ConvBiasAddLrelu, FusionPattern::DgradDrelu, FusionPattern::DgradDreluAdd};
}

// ---- FusionTarget --------------------------------------------------------------------------------

FusionTarget FusionTarget::from_json(const std::string& json, const std::string& what) {
  JEM_CHECK(deviceless_supported(), what, ": cuDNN ", cudnnGetVersion(),
            " cannot build plans from device properties (9.8 or later)");
  Desc d(CUDNN_BACKEND_DEVICEPROP_DESCRIPTOR);
  cudnnStatus_t st = cudnnBackendSetAttribute(d.get(), CUDNN_ATTR_DEVICEPROP_JSON_REPRESENTATION,
                                              CUDNN_TYPE_CHAR, std::int64_t(json.size()), json.data());
  if (st == CUDNN_STATUS_SUCCESS) st = d.try_finalize();
  JEM_CHECK(st == CUDNN_STATUS_SUCCESS, what, ": cuDNN rejects these device properties: ",
            cudnnGetErrorString(st), " (", last_error(), ")");
  FusionTarget t;
  t.desc_ = d.release();
  return t;
}

FusionTarget FusionTarget::from_json_file(const std::string& path) {
  std::ifstream in(path);
  JEM_CHECK(in.good(), path, ": cannot read the device-properties file");
  std::stringstream ss;
  ss << in.rdbuf();
  return from_json(ss.str(), path);
}

int set_device_property_device_id(void* descriptor, int device) {
  const std::int32_t id = device;
  return int(cudnnBackendSetAttribute(static_cast<cudnnBackendDescriptor_t>(descriptor),
                                      CUDNN_ATTR_DEVICEPROP_DEVICE_ID, CUDNN_TYPE_INT32, 1, &id));
}

FusionTarget FusionTarget::from_handle(cudnnContext* handle) {
  JEM_CHECK(deviceless_supported(), "cuDNN ", cudnnGetVersion(), " has no device-property descriptors (9.8 or later)");
  int device = 0;
  JEM_CUDA_CHECK(cudaGetDevice(&device));
  Desc d(CUDNN_BACKEND_DEVICEPROP_DESCRIPTOR);
  d.set(CUDNN_ATTR_DEVICEPROP_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle);
  const auto st = cudnnStatus_t(set_device_property_device_id(d.get(), device));
  if (st != CUDNN_STATUS_SUCCESS)
    JEM_FAIL("cuDNN error setting the device id ", device, " of a device-property descriptor: ",
             cudnnGetErrorString(st), " (status ", int(st), ")");
  d.finalize("device properties of the handle's device");
  FusionTarget t;
  t.desc_ = d.release();
  return t;
}

FusionTarget::~FusionTarget() {
  if (desc_) cudnnBackendDestroyDescriptor(desc_);
}
FusionTarget::FusionTarget(FusionTarget&& o) noexcept : desc_(std::exchange(o.desc_, nullptr)) {}
FusionTarget& FusionTarget::operator=(FusionTarget&& o) noexcept {
  std::swap(desc_, o.desc_);
  return *this;
}

std::string FusionTarget::json() const {
  std::int64_t n = 0;
  JEM_CUDNN_CHECK(cudnnBackendGetAttribute(desc_, CUDNN_ATTR_DEVICEPROP_JSON_REPRESENTATION,
                                           CUDNN_TYPE_CHAR, 0, &n, nullptr));
  std::string s(std::size_t(n), '\0');
  JEM_CUDNN_CHECK(cudnnBackendGetAttribute(desc_, CUDNN_ATTR_DEVICEPROP_JSON_REPRESENTATION,
                                           CUDNN_TYPE_CHAR, n, &n, s.data()));
  s.resize(std::size_t(n));
  while (!s.empty() && s.back() == '\0') s.pop_back();
  return s;
}

// ---- probing -------------------------------------------------------------------------------------

bool FusionSupport::any_plan(bool allow_tensor_cores) const {
  for (const EngineCandidate& c : candidates)
    if (c.plan_built && (allow_tensor_cores || !c.tensor_cores)) return true;
  return false;
}

namespace {
void probe_engines(FusionSupport& s, const Graph& gr, const FusionTarget& target, int max_candidates);
}  // namespace

FusionSupport probe_fusion(const FusionTarget& target, FusionPattern pattern, Layout layout,
                           const ConvGeom& g, float slope, int max_candidates) {
  FusionSupport s;
  s.pattern = pattern;
  s.layout = layout;
  s.geom = g;
  std::unique_ptr<Graph> gr;
  try {
    gr = graph(pattern, layout, g, slope, nullptr);
  } catch (const Refused& r) {
    s.graph_status = r.why;
    return s;
  }
  s.graph_status = "ok";
  try {
    probe_engines(s, *gr, target, max_candidates);
  } catch (const Error& e) {  // a refusal past the graph (a configuration's attributes, say)
    s.graph_status = std::string("ok; then: ") + e.what();
  }
  return s;
}

namespace {
// The heuristics' configurations of a finalized graph, their engines, and up to max_candidates
// plans.
void probe_engines(FusionSupport& s, const Graph& gr, const FusionTarget& target, int max_candidates) {
  std::vector<Desc> cfgs = engine_configs(gr.og, &target);
  s.configs = int(cfgs.size());
  for (const Desc& cfg : cfgs) {
    EngineCandidate c = describe_engine(cfg);
    bool seen = false;
    for (const EngineCandidate& e : s.engines) seen = seen || e.engine == c.engine;
    if (!seen) s.engines.push_back(std::move(c));
  }
  for (std::size_t i = 0; i < cfgs.size() && int(i) < max_candidates; ++i) {
    EngineCandidate c = describe_engine(cfgs[i]);
    Desc plan(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR);
    const cudnnStatus_t st = make_plan(plan, cfgs[i], &target, nullptr);
    c.status = cudnnGetErrorString(st);
    c.plan_built = st == CUDNN_STATUS_SUCCESS;
    if (c.plan_built) {
      std::int64_t n = 0;
      (void)cudnnBackendGetAttribute(plan.get(), CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE,
                                     CUDNN_TYPE_INT64, 1, &n, &c.workspace);
    } else {
      c.reason = last_error();
    }
    s.candidates.push_back(std::move(c));
  }
}
}  // namespace

// ---- FusedConv -----------------------------------------------------------------------------------

// The plan and everything it was built from (see Graph).
struct FusedConv::State {
  std::unique_ptr<Graph> graph;
  std::vector<Desc> configs;
  Desc plan{CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR};
  // Variant packs by the pointers they bind (the workspace last): a caller alternating between a
  // few buffer sets (ping-pong buffers, the probe's two input sets) reuses them.
  // 32: every block of a shape, with the per-call filter copy and the constant-weights mirror,
  // fits for models far deeper than WRN-28 (more sets than this would rebuild a pack per call).
  static constexpr std::size_t kPacks = 32;
  using PackKey = std::array<void*, kMaxBound + 1>;
  std::vector<std::pair<PackKey, std::unique_ptr<Desc>>> packs;
};

FusedConv::FusedConv() = default;
FusedConv::~FusedConv() = default;

std::unique_ptr<FusedConv> FusedConv::build(cudnnContext* handle, FusionPattern pattern,
                                            Layout layout, const ConvGeom& g, float slope,
                                            bool allow_tensor_cores, std::string* why,
                                            int max_attempts) {
  auto state = std::make_unique<State>();
  try {
    state->graph = graph(pattern, layout, g, slope, handle);
  } catch (const Refused& r) {
    if (why) *why = r.why;
    return nullptr;
  }
  std::vector<Desc>& cfgs = state->configs;
  cfgs = engine_configs(state->graph->og, nullptr);
  std::string last = cfgs.empty() ? "no engine configuration proposed" : "";
  std::vector<std::int64_t> failed;
  int attempts = 0;
  for (Desc& cfg : cfgs) {
    const EngineCandidate c = describe_engine(cfg);
    if (c.tensor_cores && !allow_tensor_cores) {
      if (last.empty()) last = "only tensor-core (TF32) engines";
      continue;
    }
    if (std::find(failed.begin(), failed.end(), c.engine) != failed.end()) continue;
    if (attempts++ == max_attempts) {
      last += " (gave up after " + std::to_string(max_attempts) + " plans)";
      break;
    }
    Desc& plan = state->plan;
    plan = Desc(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR);
    const cudnnStatus_t st = make_plan(plan, cfg, nullptr, handle);
    if (st != CUDNN_STATUS_SUCCESS) {
      last = std::string("engine ") + std::to_string(c.engine) + ": " + cudnnGetErrorString(st) +
             " (" + last_error() + ")";
      failed.push_back(c.engine);
      continue;
    }
    std::int64_t n = 0, ws = 0;
    JEM_CUDNN_CHECK(cudnnBackendGetAttribute(plan.get(), CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE,
                                             CUDNN_TYPE_INT64, 1, &n, &ws));
    std::unique_ptr<FusedConv> f(new FusedConv());
    f->pattern_ = pattern;
    f->state_ = std::move(state);
    f->workspace_ = std::size_t(ws);
    f->engine_ = c.engine;
    f->tensor_cores_ = c.tensor_cores;
    f->runtime_compiled_ = c.runtime_compiled;
    return f;
  }
  if (why) *why = last;
  return nullptr;
}


void FusedConv::run(cudnnContext* handle, const Args& a, void* workspace) {
  const Bound uids = uids_of(pattern_);
  const std::size_t n = bound_count(uids);
  State::PackKey key{};  // the bound pointers, then the workspace
  for (std::size_t i = 0; i < n; ++i) {
    const std::int64_t uid = uids[i];
    const void* p = nullptr;
    switch (uid) {
      case kX: p = a.x; break;
      case kW: p = a.w; break;
      case kB: p = a.b; break;
      case kZ: p = a.z; break;
      case kY: p = a.y; break;
      case kT: p = a.t; break;
      case kDY: p = a.dy; break;
      case kM: p = a.m; break;
      case kDX: p = a.dx; break;
      default: break;
    }
    JEM_CHECK(p != nullptr, "fused ", to_string(pattern_), ": tensor uid ", uid, " is not given");
    key[i] = const_cast<void*>(p);
  }
  key[kMaxBound] = workspace;
  auto& packs = state_->packs;
  auto hit = std::find_if(packs.begin(), packs.end(), [&](const auto& p) { return p.first == key; });
  if (hit == packs.end()) {
    auto pack = std::make_unique<Desc>(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR);
    pack->set(CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, std::int64_t(n), key.data())
        .set(CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, std::int64_t(n), uids.data())
        .set(CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &workspace);
    pack->finalize("variant pack");
    if (packs.size() == State::kPacks) packs.erase(packs.begin());  // the oldest
    packs.emplace_back(std::move(key), std::move(pack));
    hit = packs.end() - 1;
  }
  JEM_CUDNN_CHECK(cudnnBackendExecute(handle, state_->plan.get(), hit->second->get()));
}

// ---- helpers -------------------------------------------------------------------------------------

std::vector<float> from_nchw(const std::vector<float>& v, int N, int C, int H, int W, Layout to) {
  if (to == Layout::NCHW) return v;
  std::vector<float> out(v.size());
  const std::size_t HW = std::size_t(H) * W;
  for (std::size_t n = 0; n < std::size_t(N); ++n)
    for (std::size_t c = 0; c < std::size_t(C); ++c)
      for (std::size_t i = 0; i < HW; ++i) out[(n * HW + i) * C + c] = v[(n * C + c) * HW + i];
  return out;
}

std::vector<float> to_nchw(const std::vector<float>& v, int N, int C, int H, int W, Layout from) {
  if (from == Layout::NCHW) return v;
  std::vector<float> out(v.size());
  const std::size_t HW = std::size_t(H) * W;
  for (std::size_t n = 0; n < std::size_t(N); ++n)
    for (std::size_t c = 0; c < std::size_t(C); ++c)
      for (std::size_t i = 0; i < HW; ++i) out[(n * C + c) * HW + i] = v[(n * HW + i) * C + c];
  return out;
}

void run_unfused(Backend& be, FusionPattern p, const ConvGeom& g, float slope, const PatternTensors& t) {
  JEM_CHECK(g.pad_h == g.pad_w, "run_unfused: padding ", g.pad_h, ",", g.pad_w, " is not square");
  const Tensor none;
  switch (p) {
    case FusionPattern::Conv: be.conv2d_forward(t.x, t.w, none, t.y, g.stride, g.pad_h); break;
    case FusionPattern::ConvBias: be.conv2d_forward(t.x, t.w, t.b, t.y, g.stride, g.pad_h); break;
    case FusionPattern::ConvBiasLrelu:  // the model's conv1 (the bias joins the activation)
      be.conv2d_forward_leaky_relu(t.x, t.w, t.b, none, none, t.y, g.stride, g.pad_h, slope);
      break;
    case FusionPattern::ConvBiasAddLrelu:  // conv2 with its residual, then the next activation
      be.conv2d_forward_leaky_relu(t.x, t.w, t.b, t.z, t.t, t.y, g.stride, g.pad_h, slope);
      break;
    case FusionPattern::DgradDrelu:  // conv2's data gradient through conv1's activation
      be.conv2d_backward_data_leaky_relu(t.dy, t.w, t.x, none, t.dx, g.stride, g.pad_h, slope);
      break;
    case FusionPattern::DgradDreluAdd:  // conv1's, through the block input's, plus the other path
      be.conv2d_backward_data_leaky_relu(t.dy, t.w, t.x, t.z, t.dx, g.stride, g.pad_h, slope);
      break;
  }
}

}  // namespace jem::cuda

#pragma GCC diagnostic pop
