// The three convolution ops on cuDNN (the legacy convolution API of libcudnn_cnn). All of the
// backend's cuDNN code lives behind this class.
//
// Per shape, ONCE: descriptors are built and the algorithm is chosen by cuDNN's benchmarked
// search (cudnnFind*AlgorithmEx on the call's own pointers, so the pointer alignment it measured
// is the one it runs with; alignment is part of the cache key). After that a call is the cuDNN
// call itself: no allocation, no search, no synchronisation.
//
// Workspace: one buffer shared by every shape, grown at the first call of a shape whose chosen
// algorithm needs more (never in a steady-state loop). The search itself borrows a temporary
// buffer of up to kMaxWorkspace and returns it.
#pragma once

#include <cuda_runtime_api.h>

#include <array>
#include <map>
#include <memory>

#include "device_memory.hpp"
#include "jem/backend.hpp"
#include "math_mode.hpp"

struct cudnnContext;  // cudnnHandle_t is cudnnContext*

namespace jem::cuda {

class ConvEngine {
 public:
  // Creates the cuDNN handle, bound to `stream` (call with the device current).
  ConvEngine(cudaStream_t stream, MathMode math);
  ~ConvEngine();
  ConvEngine(const ConvEngine&) = delete;
  ConvEngine& operator=(const ConvEngine&) = delete;

  // y = conv(x, w) + b   (overwrite)
  void forward(const ConvGeom& g, const float* x, const float* w, const float* b, float* y);
  // dx = conv_transpose(dy, w)   (overwrite)
  void backward_data(const ConvGeom& g, const float* dy, const float* w, float* dx);
  // dw += x (*) dy, db += sum dy   (accumulate: beta = 1; db may be null)
  void backward_filter(const ConvGeom& g, const float* x, const float* dy, float* dw, float* db);

  // Largest workspace an algorithm may use (and the search may borrow).
  static constexpr std::size_t kMaxWorkspace = std::size_t(512) << 20;

 private:
  enum class Op { Forward, BackwardData, BackwardFilter };
  struct Plan;
  // {op, N, C, H, W, K, R, S, stride, pad_h, pad_w, alignment bits of the pointers}
  using Key = std::array<int, 12>;

  // The cached plan of (op, g, alignment), searched on first use with the call's pointers.
  Plan& plan(Op op, const ConvGeom& g, const float* a, const float* b, float* out);
  void search(Op op, const ConvGeom& g, Plan& p, const float* a, const float* b, float* out);

  cudnnContext* handle_ = nullptr;
  cudaStream_t stream_;
  MathMode math_;
  bool verbose_ = false;  // JEM_CUDNN_VERBOSE=1: print each chosen algorithm to stderr
  std::map<Key, std::unique_ptr<Plan>> plans_;
  DeviceBuffer workspace_;
};

}  // namespace jem::cuda
