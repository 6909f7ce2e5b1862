// cuDNN's graph (backend) API on the CPU, for the calls cuda/conv_fusion.cpp makes: enough of it
// that the CUDA backend's fused convolutions (ConvEngine::forward_leaky_relu) and FusedConv run
// on the emulated device and are checked against the CPU backend, instead of always taking their
// fallback.
//
// What is emulated, and how it answers (the answers follow what an H200 gave, docs/cudnn-fusion.md):
// - Descriptors keep the attributes set on them; finalization checks what conv_fusion.cpp relies
//   on (float tensors of rank 4 packed NCHW or NHWC with a unique id, a 2-d convolution with equal
//   pre- and post-padding, the pointwise modes ADD, RELU_FWD and RELU_BWD, operations whose
//   operand shapes agree, an operation graph with one convolution whose virtual tensors are each
//   produced before they are read) and refuses the rest with cuDNN's status codes and a message
//   for cudnnGetLastErrorString.
// - The heuristics propose, for a graph with a LeakyReLU (RELU_FWD / RELU_BWD), only a tensor-core,
//   runtime-compiled engine (global index 7), and only when every operand is channels-last:
//   nothing in NCHW or in mixed layouts. A graph without one (a convolution, its bias) gets a
//   tensor-core engine (1) and an FMA engine (0) in either layout.
// - A plan needs the handle it runs on (set on it, and the one execution gets); a plan of a
//   tensor-core engine needs a workspace (1 KiB, written in full at each execution, as an
//   engine may: a caller passing a smaller one writes past it, which AddressSanitizer reports in
//   a sanitizer build of the emulated device); the FMA engine needs none.
// - Execution binds each non-virtual tensor to the variant pack's pointer by its unique id
//   (a missing one, or one below the tensor's declared byte alignment, is refused), runs the
//   convolution through the emulated legacy calls (cudnn_on_cpu.cpp: sums in double, TF32
//   rounding of the inputs on tensor-core engines) and the pointwise operations in float, in
//   dependency order. JEM_EMULATED_CUDNN_EXECUTE_FAILS=1 makes every execution fail
//   (CUDNN_STATUS_EXECUTION_FAILED), so that tests can check the callers' fallback.
// - Device-property descriptors (deviceless plans) are not emulated: refused.
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"

#include <cudnn.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "emulation/stream_capture.hpp"

namespace {

// cudnnGetLastErrorString's message: per thread, as cuDNN keeps it.
std::string& last_error() {
  thread_local std::string message;
  return message;
}
cudnnStatus_t refuse(cudnnStatus_t st, const std::string& why) {
  last_error() = "emulated cuDNN: " + why;
  return st;
}

std::size_t element_size(cudnnBackendAttributeType_t t) {
  switch (t) {
    case CUDNN_TYPE_HANDLE: return sizeof(cudnnHandle_t);
    case CUDNN_TYPE_DATA_TYPE: return sizeof(cudnnDataType_t);
    case CUDNN_TYPE_BOOLEAN: return sizeof(bool);
    case CUDNN_TYPE_INT64: return sizeof(std::int64_t);
    case CUDNN_TYPE_FLOAT: return sizeof(float);
    case CUDNN_TYPE_DOUBLE: return sizeof(double);
    case CUDNN_TYPE_VOID_PTR: return sizeof(void*);
    case CUDNN_TYPE_CONVOLUTION_MODE: return sizeof(cudnnConvolutionMode_t);
    case CUDNN_TYPE_HEUR_MODE: return sizeof(cudnnBackendHeurMode_t);
    case CUDNN_TYPE_NUMERICAL_NOTE: return sizeof(cudnnBackendNumericalNote_t);
    case CUDNN_TYPE_POINTWISE_MODE: return sizeof(cudnnPointwiseMode_t);
    case CUDNN_TYPE_BACKEND_DESCRIPTOR: return sizeof(cudnnBackendDescriptor_t);
    case CUDNN_TYPE_BEHAVIOR_NOTE: return sizeof(cudnnBackendBehaviorNote_t);
    case CUDNN_TYPE_INT32: return sizeof(std::int32_t);
    case CUDNN_TYPE_CHAR: return 1;
    default: return 0;
  }
}

struct Attr {
  cudnnBackendAttributeType_t type;
  std::int64_t count;
  std::vector<unsigned char> bytes;
};

struct Engine {
  std::int64_t index = -1;
  bool tensor_cores = false;
  bool runtime_compiled = false;
};

enum class Layout { NCHW, NHWC };
using Dims = std::array<std::int64_t, 4>;

struct Desc;

// One operation of a graph, as finalized: its kind and operands (tensor descriptors).
struct Operation {
  enum Kind { ConvForward, ConvBackwardData, Pointwise } kind;
  const Desc* conv = nullptr;  // ConvForward, ConvBackwardData: the convolution descriptor
  const Desc* pw = nullptr;    // Pointwise: the pointwise descriptor
  float alpha = 1.0f, beta = 0.0f;
  // ConvForward: x, w -> y. ConvBackwardData: dy (in[0]), w (in[1]) -> dx. Pointwise: x[, b] ->
  // y, or for RELU_BWD dy (in[0]), x (in[1]) -> dx.
  std::vector<const Desc*> in;
  const Desc* out = nullptr;
};

constexpr std::uint32_t kMagic = 0x6a656d67;  // "jemg": a descriptor made here

// The object behind a cudnnBackendDescriptor_t.
struct Desc {
  std::uint32_t magic = kMagic;
  cudnnBackendDescriptorType_t type;
  bool finalized = false;
  std::map<int, Attr> attrs;

  // Tensor.
  Dims dims{}, strides{};
  std::int64_t uid = 0, alignment = 1;
  bool is_virtual = false;
  // Convolution.
  std::int64_t pad[2]{}, stride[2]{}, dil[2]{};
  bool flip = false;
  // Pointwise.
  cudnnPointwiseMode_t mode = CUDNN_POINTWISE_ADD;
  double slope = 0.0;
  // Operations.
  Operation op{};
  // Operation graph: the operations in an order that runs each after its inputs' producers.
  std::vector<const Desc*> order;
  // Heuristics: the proposed engines. Engine configuration, engine, execution plan: the engine.
  std::vector<Engine> proposed;
  Engine engine;
  const Desc* graph = nullptr;  // heuristics, configuration, plan: the operation graph
  std::int64_t workspace = 0;   // plan
  cudnnHandle_t handle = nullptr;  // plan: the handle it was built for
  // Variant pack.
  std::map<std::int64_t, void*> pointers;
  void* workspace_ptr = nullptr;

  explicit Desc(cudnnBackendDescriptorType_t t) : type(t) {}
};

Desc* cast(cudnnBackendDescriptor_t d) {
  auto* p = static_cast<Desc*>(d);
  return p && p->magic == kMagic ? p : nullptr;
}

template <typename T>
bool get(const Desc& d, cudnnBackendAttributeName_t a, cudnnBackendAttributeType_t type,
         std::vector<T>* out) {
  const auto it = d.attrs.find(int(a));
  if (it == d.attrs.end() || it->second.type != type) return false;
  out->resize(std::size_t(it->second.count));
  std::memcpy(out->data(), it->second.bytes.data(), it->second.bytes.size());
  return true;
}
template <typename T>
bool get_one(const Desc& d, cudnnBackendAttributeName_t a, cudnnBackendAttributeType_t type, T* out) {
  const auto it = d.attrs.find(int(a));
  if (it == d.attrs.end() || it->second.type != type || it->second.count != 1 ||
      it->second.bytes.size() != sizeof(T))
    return false;
  std::memcpy(out, it->second.bytes.data(), sizeof(T));
  return true;
}
// A descriptor attribute: finalized, of `want`'s type.
const Desc* get_desc(const Desc& d, cudnnBackendAttributeName_t a, cudnnBackendDescriptorType_t want) {
  cudnnBackendDescriptor_t raw = nullptr;
  if (!get_one(d, a, CUDNN_TYPE_BACKEND_DESCRIPTOR, &raw)) return nullptr;
  const Desc* p = cast(raw);
  return p && p->finalized && p->type == want ? p : nullptr;
}

Dims packed(const Dims& d, Layout l) {
  if (l == Layout::NCHW) return {d[1] * d[2] * d[3], d[2] * d[3], d[3], 1};
  return {d[1] * d[2] * d[3], 1, d[3] * d[1], d[1]};
}
std::int64_t numel(const Dims& d) { return d[0] * d[1] * d[2] * d[3]; }

// The layout of a tensor's strides: `prefer` when they are its packing, else the other (finalize
// accepted only these two).
Layout layout_of(const Desc& t, Layout prefer) {
  const Layout other = prefer == Layout::NCHW ? Layout::NHWC : Layout::NCHW;
  return t.strides == packed(t.dims, prefer) ? prefer : other;
}
// Whether the tensor's layout is visible in its storage (more than one channel and pixel).
bool layout_matters(const Desc& t) { return t.dims[1] > 1 && t.dims[2] * t.dims[3] > 1; }

// ---- finalization, per descriptor type ----------------------------------------------------------

cudnnStatus_t finalize_tensor(Desc& t) {
  cudnnDataType_t type{};
  std::vector<std::int64_t> dims, strides;
  if (!get_one(t, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, &type) ||
      !get(t, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, &dims) ||
      !get(t, CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, &strides) ||
      !get_one(t, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, &t.uid))
    return refuse(CUDNN_STATUS_BAD_PARAM, "tensor: data type, dimensions, strides and unique id are required");
  if (type != CUDNN_DATA_FLOAT) return refuse(CUDNN_STATUS_NOT_SUPPORTED, "tensor: float only");
  if (dims.size() != 4 || strides.size() != 4)
    return refuse(CUDNN_STATUS_NOT_SUPPORTED, "tensor: rank 4 only");
  std::copy(dims.begin(), dims.end(), t.dims.begin());
  std::copy(strides.begin(), strides.end(), t.strides.begin());
  for (const std::int64_t d : t.dims)
    if (d <= 0) return refuse(CUDNN_STATUS_BAD_PARAM, "tensor: a dimension is not positive");
  if (t.strides != packed(t.dims, Layout::NCHW) && t.strides != packed(t.dims, Layout::NHWC))
    return refuse(CUDNN_STATUS_NOT_SUPPORTED, "tensor: strides neither packed NCHW nor NHWC");
  (void)get_one(t, CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, &t.is_virtual);
  (void)get_one(t, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, &t.alignment);
  if (t.alignment <= 0) return refuse(CUDNN_STATUS_BAD_PARAM, "tensor: byte alignment not positive");
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t finalize_convolution(Desc& c) {
  cudnnDataType_t type{};
  cudnnConvolutionMode_t mode{};
  std::vector<std::int64_t> spatial, dil, stride, pre, post;
  if (!get_one(c, CUDNN_ATTR_CONVOLUTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, &type) ||
      !get_one(c, CUDNN_ATTR_CONVOLUTION_CONV_MODE, CUDNN_TYPE_CONVOLUTION_MODE, &mode) ||
      !get(c, CUDNN_ATTR_CONVOLUTION_SPATIAL_DIMS, CUDNN_TYPE_INT64, &spatial) ||
      !get(c, CUDNN_ATTR_CONVOLUTION_DILATIONS, CUDNN_TYPE_INT64, &dil) ||
      !get(c, CUDNN_ATTR_CONVOLUTION_FILTER_STRIDES, CUDNN_TYPE_INT64, &stride) ||
      !get(c, CUDNN_ATTR_CONVOLUTION_PRE_PADDINGS, CUDNN_TYPE_INT64, &pre) ||
      !get(c, CUDNN_ATTR_CONVOLUTION_POST_PADDINGS, CUDNN_TYPE_INT64, &post))
    return refuse(CUDNN_STATUS_BAD_PARAM, "convolution: an attribute is missing");
  if (type != CUDNN_DATA_FLOAT) return refuse(CUDNN_STATUS_NOT_SUPPORTED, "convolution: float only");
  if (spatial.size() != 1 || spatial[0] != 2 || dil.size() != 2 || stride.size() != 2 ||
      pre.size() != 2 || post.size() != 2)
    return refuse(CUDNN_STATUS_NOT_SUPPORTED, "convolution: 2 spatial dimensions only");
  if (pre != post) return refuse(CUDNN_STATUS_NOT_SUPPORTED, "convolution: asymmetric padding");
  for (int i = 0; i < 2; ++i) {
    if (pre[i] < 0 || stride[i] <= 0 || dil[i] <= 0)
      return refuse(CUDNN_STATUS_BAD_PARAM, "convolution: bad padding, stride or dilation");
    c.pad[i] = pre[i];
    c.stride[i] = stride[i];
    c.dil[i] = dil[i];
  }
  c.flip = mode == CUDNN_CONVOLUTION;
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t finalize_pointwise(Desc& p) {
  if (!get_one(p, CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, &p.mode))
    return refuse(CUDNN_STATUS_BAD_PARAM, "pointwise: no mode");
  if (p.mode != CUDNN_POINTWISE_ADD && p.mode != CUDNN_POINTWISE_RELU_FWD &&
      p.mode != CUDNN_POINTWISE_RELU_BWD)
    return refuse(CUDNN_STATUS_NOT_SUPPORTED, "pointwise: only ADD, RELU_FWD and RELU_BWD");
  cudnnDataType_t prec = CUDNN_DATA_FLOAT;
  (void)get_one(p, CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_TYPE_DATA_TYPE, &prec);
  if (prec != CUDNN_DATA_FLOAT) return refuse(CUDNN_STATUS_NOT_SUPPORTED, "pointwise: float math only");
  (void)get_one(p, CUDNN_ATTR_POINTWISE_RELU_LOWER_CLIP_SLOPE, CUDNN_TYPE_DOUBLE, &p.slope);
  return CUDNN_STATUS_SUCCESS;
}

// The output size of a convolution along one axis.
std::int64_t out_size(std::int64_t in, std::int64_t k, const Desc& c, int axis) {
  return (in + 2 * c.pad[axis] - c.dil[axis] * (k - 1) - 1) / c.stride[axis] + 1;
}

// x [N, C, H, W], w [K, C, R, S], y [N, K, P, Q] agree with convolution c.
bool conv_shapes_agree(const Desc& x, const Desc& w, const Desc& y, const Desc& c) {
  return x.dims[1] == w.dims[1] && y.dims[0] == x.dims[0] && y.dims[1] == w.dims[0] &&
         y.dims[2] == out_size(x.dims[2], w.dims[2], c, 0) &&
         y.dims[3] == out_size(x.dims[3], w.dims[3], c, 1);
}

cudnnStatus_t finalize_conv_op(Desc& d, bool forward) {
  Operation& op = d.op;
  op.kind = forward ? Operation::ConvForward : Operation::ConvBackwardData;
  const auto T = CUDNN_BACKEND_TENSOR_DESCRIPTOR;
  if (forward) {
    op.conv = get_desc(d, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_CONV_DESC, CUDNN_BACKEND_CONVOLUTION_DESCRIPTOR);
    op.in = {get_desc(d, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_X, T),
             get_desc(d, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_W, T)};
    op.out = get_desc(d, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_Y, T);
    (void)get_one(d, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_ALPHA, CUDNN_TYPE_FLOAT, &op.alpha);
    (void)get_one(d, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_BETA, CUDNN_TYPE_FLOAT, &op.beta);
  } else {
    op.conv = get_desc(d, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_CONV_DESC, CUDNN_BACKEND_CONVOLUTION_DESCRIPTOR);
    op.in = {get_desc(d, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_DY, T),
             get_desc(d, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_W, T)};
    op.out = get_desc(d, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_DX, T);
    (void)get_one(d, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_ALPHA, CUDNN_TYPE_FLOAT, &op.alpha);
    (void)get_one(d, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_BETA, CUDNN_TYPE_FLOAT, &op.beta);
  }
  if (!op.conv || !op.in[0] || !op.in[1] || !op.out)
    return refuse(CUDNN_STATUS_BAD_PARAM, "convolution operation: a finalized descriptor is missing");
  const Desc& x = forward ? *op.in[0] : *op.out;
  const Desc& y = forward ? *op.out : *op.in[0];
  if (!conv_shapes_agree(x, *op.in[1], y, *op.conv))
    return refuse(CUDNN_STATUS_BAD_PARAM, "convolution operation: the tensors' shapes do not agree");
  return CUDNN_STATUS_SUCCESS;
}

// b's dimensions are out's or 1 (broadcast).
bool broadcasts_to(const Dims& b, const Dims& out) {
  for (int i = 0; i < 4; ++i)
    if (b[i] != out[i] && b[i] != 1) return false;
  return true;
}

cudnnStatus_t finalize_pointwise_op(Desc& d) {
  Operation& op = d.op;
  op.kind = Operation::Pointwise;
  const auto T = CUDNN_BACKEND_TENSOR_DESCRIPTOR;
  op.pw = get_desc(d, CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, CUDNN_BACKEND_POINTWISE_DESCRIPTOR);
  if (!op.pw) return refuse(CUDNN_STATUS_BAD_PARAM, "pointwise operation: no pointwise descriptor");
  if (op.pw->mode == CUDNN_POINTWISE_RELU_BWD) {
    op.in = {get_desc(d, CUDNN_ATTR_OPERATION_POINTWISE_DYDESC, T),
             get_desc(d, CUDNN_ATTR_OPERATION_POINTWISE_XDESC, T)};
    op.out = get_desc(d, CUDNN_ATTR_OPERATION_POINTWISE_DXDESC, T);
  } else {
    op.in = {get_desc(d, CUDNN_ATTR_OPERATION_POINTWISE_XDESC, T)};
    if (op.pw->mode == CUDNN_POINTWISE_ADD)
      op.in.push_back(get_desc(d, CUDNN_ATTR_OPERATION_POINTWISE_BDESC, T));
    op.out = get_desc(d, CUDNN_ATTR_OPERATION_POINTWISE_YDESC, T);
  }
  if (!op.out || std::find(op.in.begin(), op.in.end(), nullptr) != op.in.end())
    return refuse(CUDNN_STATUS_BAD_PARAM, "pointwise operation: a finalized tensor is missing");
  for (const Desc* t : op.in)
    if (!broadcasts_to(t->dims, op.out->dims))
      return refuse(CUDNN_STATUS_BAD_PARAM, "pointwise operation: an input does not broadcast to the output");
  return CUDNN_STATUS_SUCCESS;
}

// The operations in dependency order: a tensor that no operation writes is the caller's; one
// that an operation writes is ready after it.
cudnnStatus_t finalize_graph(Desc& g) {
  std::vector<cudnnBackendDescriptor_t> raw;
  if (!get(g, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, &raw) || raw.empty())
    return refuse(CUDNN_STATUS_BAD_PARAM, "operation graph: no operations");
  std::vector<const Desc*> ops;
  int convs = 0;
  for (cudnnBackendDescriptor_t r : raw) {
    const Desc* op = cast(r);
    if (!op || !op->finalized)
      return refuse(CUDNN_STATUS_BAD_PARAM, "operation graph: an operation is not finalized");
    if (op->type != CUDNN_BACKEND_OPERATION_CONVOLUTION_FORWARD_DESCRIPTOR &&
        op->type != CUDNN_BACKEND_OPERATION_CONVOLUTION_BACKWARD_DATA_DESCRIPTOR &&
        op->type != CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR)
      return refuse(CUDNN_STATUS_NOT_SUPPORTED, "operation graph: an operation of another kind");
    convs += op->op.kind != Operation::Pointwise;
    ops.push_back(op);
  }
  if (convs != 1) return refuse(CUDNN_STATUS_NOT_SUPPORTED, "operation graph: one convolution only");
  std::map<std::int64_t, int> writers;
  for (const Desc* op : ops)
    if (++writers[op->op.out->uid] > 1)
      return refuse(CUDNN_STATUS_BAD_PARAM, "operation graph: a tensor written twice");
  std::vector<std::int64_t> ready;
  for (const Desc* op : ops)
    for (const Desc* t : op->op.in) {
      if (writers.count(t->uid)) continue;
      if (t->is_virtual) return refuse(CUDNN_STATUS_BAD_PARAM, "operation graph: a virtual tensor nothing writes");
      ready.push_back(t->uid);
    }
  g.order.clear();
  while (g.order.size() < ops.size()) {
    bool progress = false;
    for (const Desc* op : ops) {
      if (std::find(g.order.begin(), g.order.end(), op) != g.order.end()) continue;
      bool inputs_ready = true;
      for (const Desc* t : op->op.in)
        inputs_ready = inputs_ready && std::find(ready.begin(), ready.end(), t->uid) != ready.end();
      if (!inputs_ready) continue;
      g.order.push_back(op);
      ready.push_back(op->op.out->uid);
      progress = true;
    }
    if (!progress) return refuse(CUDNN_STATUS_BAD_PARAM, "operation graph: a cycle");
  }
  return CUDNN_STATUS_SUCCESS;
}

// Every tensor of a graph, once each.
std::vector<const Desc*> tensors_of(const Desc& graph) {
  std::vector<const Desc*> out;
  for (const Desc* op : graph.order) {
    std::vector<const Desc*> ts = op->op.in;
    ts.push_back(op->op.out);
    for (const Desc* t : ts)
      if (std::none_of(out.begin(), out.end(), [&](const Desc* o) { return o->uid == t->uid; }))
        out.push_back(t);
  }
  return out;
}

// The engines the heuristics propose for a graph (see the top of the file).
std::vector<Engine> propose(const Desc& graph) {
  bool lrelu = false;
  for (const Desc* op : graph.order)
    lrelu = lrelu || (op->op.kind == Operation::Pointwise && op->op.pw->mode != CUDNN_POINTWISE_ADD);
  bool nchw = false, nhwc = false;
  for (const Desc* t : tensors_of(graph)) {
    if (!layout_matters(*t)) continue;
    (layout_of(*t, Layout::NCHW) == Layout::NCHW ? nchw : nhwc) = true;
  }
  if (nchw && nhwc) return {};
  if (lrelu) return nchw ? std::vector<Engine>{} : std::vector<Engine>{{7, true, true}};
  return {{1, true, false}, {0, false, false}};
}

cudnnStatus_t finalize_heuristics(Desc& h) {
  h.graph = get_desc(h, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR);
  cudnnBackendHeurMode_t mode{};
  if (!h.graph || !get_one(h, CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, &mode))
    return refuse(CUDNN_STATUS_BAD_PARAM, "heuristics: no finalized operation graph or no mode");
  h.proposed = propose(*h.graph);
  if (mode == CUDNN_HEUR_MODE_FALLBACK)  // the fallback list: engines without tensor cores first
    std::stable_sort(h.proposed.begin(), h.proposed.end(),
                     [](const Engine& a, const Engine& b) { return !a.tensor_cores && b.tensor_cores; });
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t finalize_plan(Desc& p) {
  const Desc* cfg = get_desc(p, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, CUDNN_BACKEND_ENGINECFG_DESCRIPTOR);
  if (!cfg || !cfg->graph) return refuse(CUDNN_STATUS_BAD_PARAM, "execution plan: no engine configuration");
  // A plan is built for a device: its handle's (device-property targets are not emulated).
  if (!get_one(p, CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, &p.handle) || !p.handle)
    return refuse(CUDNN_STATUS_BAD_PARAM, "execution plan: no handle");
  p.graph = cfg->graph;
  p.engine = cfg->engine;
  p.workspace = p.engine.tensor_cores ? 1024 : 0;
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t finalize_variant_pack(Desc& v) {
  std::vector<void*> ptrs;
  std::vector<std::int64_t> uids;
  if (!get(v, CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, &ptrs) ||
      !get(v, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, &uids) || ptrs.size() != uids.size())
    return refuse(CUDNN_STATUS_BAD_PARAM, "variant pack: pointers and unique ids do not pair up");
  v.pointers.clear();
  for (std::size_t i = 0; i < ptrs.size(); ++i) v.pointers[uids[i]] = ptrs[i];
  (void)get_one(v, CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, &v.workspace_ptr);
  return CUDNN_STATUS_SUCCESS;
}

// ---- execution ---------------------------------------------------------------------------------

// Legacy descriptors of one convolution operation (the emulated legacy calls compute it).
struct LegacyConv {
  cudnnTensorDescriptor_t x = nullptr, y = nullptr;
  cudnnFilterDescriptor_t w = nullptr;
  cudnnConvolutionDescriptor_t conv = nullptr;
  LegacyConv() {
    cudnnCreateTensorDescriptor(&x);
    cudnnCreateTensorDescriptor(&y);
    cudnnCreateFilterDescriptor(&w);
    cudnnCreateConvolutionDescriptor(&conv);
  }
  ~LegacyConv() {
    cudnnDestroyTensorDescriptor(x);
    cudnnDestroyTensorDescriptor(y);
    cudnnDestroyFilterDescriptor(w);
    cudnnDestroyConvolutionDescriptor(conv);
  }
  LegacyConv(const LegacyConv&) = delete;
  LegacyConv& operator=(const LegacyConv&) = delete;
};

cudnnTensorFormat_t format(Layout l) { return l == Layout::NHWC ? CUDNN_TENSOR_NHWC : CUDNN_TENSOR_NCHW; }

cudnnStatus_t run_convolution(cudnnHandle_t handle, const Operation& op, const Engine& e,
                              const std::map<std::int64_t, float*>& data) {
  const bool forward = op.kind == Operation::ConvForward;
  const Desc& xt = forward ? *op.in[0] : *op.out;
  const Desc& yt = forward ? *op.out : *op.in[0];
  const Desc& wt = *op.in[1];
  // The output's layout decides a tensor whose strides fit both.
  const Layout l = layout_of(*op.out, Layout::NCHW);
  LegacyConv d;
  auto dim = [](std::int64_t v) { return int(v); };
  cudnnStatus_t st = cudnnSetTensor4dDescriptor(d.x, format(layout_of(xt, l)), CUDNN_DATA_FLOAT, dim(xt.dims[0]),
                                                dim(xt.dims[1]), dim(xt.dims[2]), dim(xt.dims[3]));
  if (st == CUDNN_STATUS_SUCCESS)
    st = cudnnSetTensor4dDescriptor(d.y, format(layout_of(yt, l)), CUDNN_DATA_FLOAT, dim(yt.dims[0]),
                                    dim(yt.dims[1]), dim(yt.dims[2]), dim(yt.dims[3]));
  if (st == CUDNN_STATUS_SUCCESS)
    st = cudnnSetFilter4dDescriptor(d.w, CUDNN_DATA_FLOAT, format(layout_of(wt, l)), dim(wt.dims[0]),
                                    dim(wt.dims[1]), dim(wt.dims[2]), dim(wt.dims[3]));
  const Desc& c = *op.conv;
  if (st == CUDNN_STATUS_SUCCESS)
    st = cudnnSetConvolution2dDescriptor(d.conv, dim(c.pad[0]), dim(c.pad[1]), dim(c.stride[0]),
                                         dim(c.stride[1]), dim(c.dil[0]), dim(c.dil[1]),
                                         c.flip ? CUDNN_CONVOLUTION : CUDNN_CROSS_CORRELATION,
                                         CUDNN_DATA_FLOAT);
  if (st == CUDNN_STATUS_SUCCESS)
    st = cudnnSetConvolutionMathType(d.conv, e.tensor_cores ? CUDNN_TENSOR_OP_MATH : CUDNN_FMA_MATH);
  if (st != CUDNN_STATUS_SUCCESS) return st;
  const float* a = data.at(op.in[0]->uid);
  const float* w = data.at(wt.uid);
  float* out = data.at(op.out->uid);
  if (forward)
    return cudnnConvolutionForward(handle, &op.alpha, d.x, a, d.w, w, d.conv,
                                   CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM, nullptr, 0, &op.beta, d.y, out);
  return cudnnConvolutionBackwardData(handle, &op.alpha, d.w, w, d.y, a, d.conv,
                                      CUDNN_CONVOLUTION_BWD_DATA_ALGO_0, nullptr, 0, &op.beta, d.x, out);
}

// The storage offset of element [n, c, h, w] of t, broadcast along its dimensions of size 1.
std::int64_t offset(const Desc& t, const Dims& at) {
  std::int64_t o = 0;
  for (int i = 0; i < 4; ++i) o += (t.dims[i] == 1 ? 0 : at[i]) * t.strides[i];
  return o;
}

void run_pointwise(const Operation& op, const std::map<std::int64_t, float*>& data) {
  const Desc& out = *op.out;
  float* y = data.at(out.uid);
  const float* a = data.at(op.in[0]->uid);
  const float* b = op.in.size() > 1 ? data.at(op.in[1]->uid) : nullptr;
  const float slope = float(op.pw->slope);
  Dims i{};
  for (i[0] = 0; i[0] < out.dims[0]; ++i[0])
    for (i[1] = 0; i[1] < out.dims[1]; ++i[1])
      for (i[2] = 0; i[2] < out.dims[2]; ++i[2])
        for (i[3] = 0; i[3] < out.dims[3]; ++i[3]) {
          const float av = a[offset(*op.in[0], i)];
          float v = 0.0f;
          switch (op.pw->mode) {
            case CUDNN_POINTWISE_ADD: v = av + b[offset(*op.in[1], i)]; break;
            case CUDNN_POINTWISE_RELU_FWD: v = av > 0.0f ? av : slope * av; break;
            default:  // RELU_BWD: a = dy, b = x (the mask)
              v = b[offset(*op.in[1], i)] > 0.0f ? av : slope * av;
              break;
          }
          y[offset(out, i)] = v;
        }
}

cudnnStatus_t execute(cudnnHandle_t handle, const Desc& plan, const Desc& pack) {
  if (const char* f = std::getenv("JEM_EMULATED_CUDNN_EXECUTE_FAILS"); f && std::string(f) == "1")
    return refuse(CUDNN_STATUS_EXECUTION_FAILED, "execution failed (JEM_EMULATED_CUDNN_EXECUTE_FAILS=1)");
  if (handle != plan.handle) return refuse(CUDNN_STATUS_BAD_PARAM, "execute: another handle than the plan's");
  const std::vector<const Desc*> ts = tensors_of(*plan.graph);
  for (const auto& [uid, ptr] : pack.pointers) {
    const auto t = std::find_if(ts.begin(), ts.end(), [&](const Desc* d) { return d->uid == uid; });
    if (t == ts.end() || (*t)->is_virtual)
      return refuse(CUDNN_STATUS_BAD_PARAM, "variant pack: uid " + std::to_string(uid) + " is no tensor of the graph it binds");
  }
  if (plan.workspace > 0 && !pack.workspace_ptr)
    return refuse(CUDNN_STATUS_BAD_PARAM, "variant pack: the plan needs a workspace");
  std::map<std::int64_t, float*> data;
  std::vector<std::pair<std::int64_t, std::size_t>> virtuals;  // uid, elements
  for (const Desc* t : ts) {
    if (t->is_virtual) {
      virtuals.emplace_back(t->uid, std::size_t(numel(t->dims)));
      continue;
    }
    const auto it = pack.pointers.find(t->uid);
    if (it == pack.pointers.end() || !it->second)
      return refuse(CUDNN_STATUS_BAD_PARAM, "variant pack: no pointer for tensor uid " + std::to_string(t->uid));
    if (reinterpret_cast<std::uintptr_t>(it->second) % std::uintptr_t(t->alignment) != 0)
      return refuse(CUDNN_STATUS_BAD_PARAM_MISALIGNED_POINTER,
                    "tensor uid " + std::to_string(t->uid) + " is below its declared byte alignment");
    data[t->uid] = static_cast<float*>(it->second);
  }
  // The computation, on the handle's stream: now, or when the graph runs if the stream is
  // capturing. The pointers are bound now (the variant pack may change or go afterwards, as on a
  // GPU); the plan's operations are read when it runs, so the plan must outlive a captured graph
  // here (real cuDNN copies what it needs; jem keeps its plans as long as the backend).
  const Desc* graph = plan.graph;
  const Engine engine = plan.engine;
  const std::size_t ws_bytes = std::size_t(plan.workspace);
  void* ws = pack.workspace_ptr;
  auto run = [=]() mutable -> cudnnStatus_t {
    if (ws_bytes > 0) std::memset(ws, 0xa5, ws_bytes);
    std::map<std::int64_t, std::vector<float>> intermediates;
    for (const auto& [uid, n] : virtuals) {
      intermediates[uid].assign(n, 0.0f);
      data[uid] = intermediates[uid].data();
    }
    for (const Desc* op : graph->order) {
      if (op->op.kind == Operation::Pointwise) {
        run_pointwise(op->op, data);
      } else if (const cudnnStatus_t st = run_convolution(handle, op->op, engine, data);
                 st != CUDNN_STATUS_SUCCESS) {
        return st;
      }
    }
    return CUDNN_STATUS_SUCCESS;
  };
  cudaStream_t stream = nullptr;
  cudnnGetStream(handle, &stream);
  if (!jem::emu::capturing(stream)) {
    const cudnnStatus_t st = run();
    return st == CUDNN_STATUS_SUCCESS ? st : refuse(st, "the convolution of the plan failed");
  }
  jem::emu::enqueue(stream, [run]() mutable {
    if (run() != CUDNN_STATUS_SUCCESS)
      jem::emu::report_failed_work("cudnnBackendExecute (emulated): the convolution of the plan failed");
  });
  return CUDNN_STATUS_SUCCESS;
}

// Writes n elements of `type` from src to the caller's array (at most `requested`).
template <typename T>
cudnnStatus_t give(const std::vector<T>& src, cudnnBackendAttributeType_t type, cudnnBackendAttributeType_t want,
                   std::int64_t requested, std::int64_t* count, void* out) {
  if (type != want) return refuse(CUDNN_STATUS_BAD_PARAM, "attribute read with another type");
  // elementCount is the attribute's number of elements; at most `requested` of them are written.
  const std::int64_t n = std::min<std::int64_t>(requested, std::int64_t(src.size()));
  if (count) *count = std::int64_t(src.size());
  if (out && n > 0) std::memcpy(out, src.data(), std::size_t(n) * sizeof(T));
  return CUDNN_STATUS_SUCCESS;
}

}  // namespace

extern "C" {

void cudnnGetLastErrorString(char* message, size_t max_size) {
  if (message && max_size > 0) std::snprintf(message, max_size, "%s", last_error().c_str());
}

cudnnStatus_t cudnnBackendCreateDescriptor(cudnnBackendDescriptorType_t type, cudnnBackendDescriptor_t* d) {
  *d = nullptr;
  switch (type) {
    case CUDNN_BACKEND_TENSOR_DESCRIPTOR:
    case CUDNN_BACKEND_CONVOLUTION_DESCRIPTOR:
    case CUDNN_BACKEND_POINTWISE_DESCRIPTOR:
    case CUDNN_BACKEND_OPERATION_CONVOLUTION_FORWARD_DESCRIPTOR:
    case CUDNN_BACKEND_OPERATION_CONVOLUTION_BACKWARD_DATA_DESCRIPTOR:
    case CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR:
    case CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR:
    case CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR:
    case CUDNN_BACKEND_ENGINECFG_DESCRIPTOR:
    case CUDNN_BACKEND_ENGINE_DESCRIPTOR:
    case CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR:
    case CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR:
      *d = new Desc(type);
      return CUDNN_STATUS_SUCCESS;
    default:
      return refuse(CUDNN_STATUS_NOT_SUPPORTED, "descriptor type " + std::to_string(int(type)) + " is not emulated");
  }
}

cudnnStatus_t cudnnBackendDestroyDescriptor(cudnnBackendDescriptor_t d) {
  Desc* p = cast(d);
  if (!p) return d ? CUDNN_STATUS_BAD_PARAM : CUDNN_STATUS_SUCCESS;
  p->magic = 0;
  delete p;
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnBackendSetAttribute(cudnnBackendDescriptor_t d, cudnnBackendAttributeName_t name,
                                       cudnnBackendAttributeType_t type, int64_t count, const void* values) {
  Desc* p = cast(d);
  if (!p) return refuse(CUDNN_STATUS_BAD_PARAM, "not a descriptor");
  if (p->finalized) return refuse(CUDNN_STATUS_BAD_PARAM, "attribute set on a finalized descriptor");
  const std::size_t size = element_size(type);
  if (size == 0) return refuse(CUDNN_STATUS_NOT_SUPPORTED, "attribute type " + std::to_string(int(type)));
  if (count < 0 || (count > 0 && !values)) return refuse(CUDNN_STATUS_BAD_PARAM, "attribute without values");
  if (name == CUDNN_ATTR_ENGINEHEUR_DEVICEPROP || name == CUDNN_ATTR_EXECUTION_PLAN_DEVICEPROP)
    return refuse(CUDNN_STATUS_NOT_SUPPORTED, "device-property targets (deviceless plans)");
  Attr a{type, count, std::vector<unsigned char>(std::size_t(count) * size)};
  if (count > 0) std::memcpy(a.bytes.data(), values, a.bytes.size());
  p->attrs[int(name)] = std::move(a);
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnBackendFinalize(cudnnBackendDescriptor_t d) {
  Desc* p = cast(d);
  if (!p) return refuse(CUDNN_STATUS_BAD_PARAM, "not a descriptor");
  if (p->finalized) return refuse(CUDNN_STATUS_BAD_PARAM, "finalized twice");
  cudnnStatus_t st = CUDNN_STATUS_SUCCESS;
  switch (p->type) {
    case CUDNN_BACKEND_TENSOR_DESCRIPTOR: st = finalize_tensor(*p); break;
    case CUDNN_BACKEND_CONVOLUTION_DESCRIPTOR: st = finalize_convolution(*p); break;
    case CUDNN_BACKEND_POINTWISE_DESCRIPTOR: st = finalize_pointwise(*p); break;
    case CUDNN_BACKEND_OPERATION_CONVOLUTION_FORWARD_DESCRIPTOR: st = finalize_conv_op(*p, true); break;
    case CUDNN_BACKEND_OPERATION_CONVOLUTION_BACKWARD_DATA_DESCRIPTOR: st = finalize_conv_op(*p, false); break;
    case CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR: st = finalize_pointwise_op(*p); break;
    case CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR: st = finalize_graph(*p); break;
    case CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR: st = finalize_heuristics(*p); break;
    case CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR: st = finalize_plan(*p); break;
    case CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR: st = finalize_variant_pack(*p); break;
    default:  // engine configurations and engines are filled by cuDNN, not finalized by callers
      st = refuse(CUDNN_STATUS_NOT_SUPPORTED, "finalizing descriptor type " + std::to_string(int(p->type)));
  }
  p->finalized = st == CUDNN_STATUS_SUCCESS;
  return st;
}

cudnnStatus_t cudnnBackendGetAttribute(cudnnBackendDescriptor_t const d, cudnnBackendAttributeName_t name,
                                       cudnnBackendAttributeType_t type, int64_t requested,
                                       int64_t* count, void* out) {
  const Desc* p = cast(d);
  if (!p || !p->finalized) return refuse(CUDNN_STATUS_BAD_PARAM, "attribute read from a descriptor not finalized");
  switch (name) {
    case CUDNN_ATTR_ENGINEHEUR_RESULTS: {
      if (p->type != CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR || type != CUDNN_TYPE_BACKEND_DESCRIPTOR) break;
      const std::int64_t n = std::min<std::int64_t>(requested, std::int64_t(p->proposed.size()));
      if (count) *count = std::int64_t(p->proposed.size());
      for (std::int64_t i = 0; out && i < n; ++i) {
        Desc* cfg = cast(static_cast<cudnnBackendDescriptor_t*>(out)[i]);
        if (!cfg || cfg->type != CUDNN_BACKEND_ENGINECFG_DESCRIPTOR)
          return refuse(CUDNN_STATUS_BAD_PARAM, "heuristics' results read into something not an engine configuration");
        cfg->engine = p->proposed[std::size_t(i)];
        cfg->graph = p->graph;
        cfg->finalized = true;
      }
      return CUDNN_STATUS_SUCCESS;
    }
    case CUDNN_ATTR_ENGINECFG_ENGINE: {
      if (p->type != CUDNN_BACKEND_ENGINECFG_DESCRIPTOR || type != CUDNN_TYPE_BACKEND_DESCRIPTOR || !out ||
          requested < 1)
        break;
      Desc* e = cast(*static_cast<cudnnBackendDescriptor_t*>(out));
      if (!e || e->type != CUDNN_BACKEND_ENGINE_DESCRIPTOR) break;
      e->engine = p->engine;
      e->graph = p->graph;
      e->finalized = true;
      if (count) *count = 1;
      return CUDNN_STATUS_SUCCESS;
    }
    case CUDNN_ATTR_ENGINE_GLOBAL_INDEX:
      if (p->type != CUDNN_BACKEND_ENGINE_DESCRIPTOR) break;
      return give(std::vector<std::int64_t>{p->engine.index}, type, CUDNN_TYPE_INT64, requested, count, out);
    case CUDNN_ATTR_ENGINE_NUMERICAL_NOTE: {
      if (p->type != CUDNN_BACKEND_ENGINE_DESCRIPTOR) break;
      std::vector<cudnnBackendNumericalNote_t> notes;
      if (p->engine.tensor_cores) notes.push_back(CUDNN_NUMERICAL_NOTE_TENSOR_CORE);
      return give(notes, type, CUDNN_TYPE_NUMERICAL_NOTE, requested, count, out);
    }
    case CUDNN_ATTR_ENGINE_BEHAVIOR_NOTE: {
      if (p->type != CUDNN_BACKEND_ENGINE_DESCRIPTOR) break;
      std::vector<cudnnBackendBehaviorNote_t> notes;
      if (p->engine.runtime_compiled) notes.push_back(CUDNN_BEHAVIOR_NOTE_RUNTIME_COMPILATION);
      return give(notes, type, CUDNN_TYPE_BEHAVIOR_NOTE, requested, count, out);
    }
    case CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE:
      if (p->type != CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR) break;
      return give(std::vector<std::int64_t>{p->workspace}, type, CUDNN_TYPE_INT64, requested, count, out);
    default:
      break;
  }
  return refuse(CUDNN_STATUS_NOT_SUPPORTED, "reading attribute " + std::to_string(int(name)) +
                                                " of descriptor type " + std::to_string(int(p->type)));
}

cudnnStatus_t cudnnBackendExecute(cudnnHandle_t handle, cudnnBackendDescriptor_t plan,
                                  cudnnBackendDescriptor_t pack) {
  const Desc* pl = cast(plan);
  const Desc* pk = cast(pack);
  if (!handle || !pl || !pk || !pl->finalized || !pk->finalized ||
      pl->type != CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR || pk->type != CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR)
    return refuse(CUDNN_STATUS_BAD_PARAM, "execute: a handle, a finalized plan and a finalized variant pack");
  return execute(handle, *pl, *pk);
}

}  // extern "C"
