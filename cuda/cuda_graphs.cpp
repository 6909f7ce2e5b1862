// CUDA Graphs for the CUDA backend: capture() records a sequence of ops by stream capture,
// launch() replays it (Backend's contract in backend.hpp).
//
// Why: the SGLD chains issue the same forward and input-gradient passes 20 times per iteration,
// thousands of kernel and cuDNN calls whose host-side cost (tens of microseconds for some cuDNN
// calls) the GPU hides only while each of them runs longer than it takes to issue. A graph is
// issued in one call.
//
// What varies between replays: tensor contents, and the noise key. Kernel arguments are frozen at
// capture, so the SGLD and gather kernels captured here read the key's seed, iteration and
// sample_base from live_key_ (device memory) instead, and launch() writes the new key there, in
// stream order, just before the graph runs.
//
// Capture mode: thread-local, so that another thread's CUDA calls (a data loader's uploads) do
// not invalidate this thread's capture. A call that capture refuses (a synchronisation, an
// allocation, a cuDNN algorithm search: the first use of a shape must happen before its capture)
// invalidates it: capture() then ends it, clears the error and returns nullptr with the reason.
#include <cuda_runtime_api.h>

#include <cstdint>
#include <exception>
#include <memory>
#include <string>

#include "cuda_backend.hpp"
#include "cuda_check.hpp"
#include "kernels.hpp"

namespace jem::cuda {
namespace {

class CudaGraphOps final : public CapturedOps {
 public:
  CudaGraphOps(const CudaBackend* owner, cudaGraphExec_t exec, std::uint64_t scratch_moves)
      : owner_(owner), exec_(exec), scratch_moves_(scratch_moves) {}
  ~CudaGraphOps() override { (void)cudaGraphExecDestroy(exec_); }
  CudaGraphOps(const CudaGraphOps&) = delete;
  CudaGraphOps& operator=(const CudaGraphOps&) = delete;

  const CudaBackend* owner() const { return owner_; }
  cudaGraphExec_t exec() const { return exec_; }
  // ConvEngine::scratch_moves() at capture: the graph's scratch addresses are valid while it is.
  std::uint64_t scratch_moves() const { return scratch_moves_; }

 private:
  const CudaBackend* owner_;
  cudaGraphExec_t exec_;
  std::uint64_t scratch_moves_;
};

bool same_noise(const NoiseKey& a, const NoiseKey& b) {
  return a.seed == b.seed && a.iteration == b.iteration && a.sample_base == b.sample_base;
}

}  // namespace

const NoiseKey* CudaBackend::live_key_for(const NoiseKey& key, const char* op) const {
  if (!capturing_) return nullptr;
  JEM_CHECK(same_noise(key, capture_key_), op, " (cuda): a captured op's noise key (seed ",
            key.seed, ", iteration ", key.iteration, ", sample_base ", key.sample_base,
            ") must be the capture's (seed ", capture_key_.seed, ", iteration ",
            capture_key_.iteration, ", sample_base ", capture_key_.sample_base,
            "): only that key follows the launches");
  return live_key_;
}

std::unique_ptr<CapturedOps> CudaBackend::capture(const NoiseKey& key,
                                                  const std::function<void()>& ops,
                                                  std::string* why) {
  auto refuse = [why](const std::string& reason) -> std::unique_ptr<CapturedOps> {
    if (why) *why = reason;
    return nullptr;
  };
  if (!capture_enabled_) return refuse(name() + ": CUDA Graphs are off (JEM_CUDA_GRAPHS=1)");
  JEM_CHECK(!capturing_, "capture (cuda): captures do not nest");
  bind();
  JEM_CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
  capturing_ = true;
  capture_key_ = key;
  std::string failure;
  try {
    ops();
  } catch (const std::exception& e) {
    failure = e.what();
  } catch (...) {  // whatever it was, the stream must leave capture mode
    failure = "an exception that is not a std::exception";
  }
  capturing_ = false;
  cudaGraph_t graph = nullptr;
  const cudaError_t ended = cudaStreamEndCapture(stream_, &graph);
  // A refused call's error is not sticky, but it stays the thread's last error until read.
  (void)cudaGetLastError();
  if (failure.empty() && ended != cudaSuccess)
    failure = std::string("cudaStreamEndCapture: ") + cudaGetErrorString(ended);
  if (!failure.empty()) {
    if (graph) (void)cudaGraphDestroy(graph);
    return refuse("the ops could not be captured: " + failure);
  }
  cudaGraphExec_t exec = nullptr;
  const cudaError_t made = cudaGraphInstantiate(&exec, graph, 0);
  (void)cudaGraphDestroy(graph);  // the executable graph is independent of it
  if (made != cudaSuccess) {
    (void)cudaGetLastError();
    return refuse(std::string("cudaGraphInstantiate: ") + cudaGetErrorString(made));
  }
  ++graphs_captured_;
  return std::make_unique<CudaGraphOps>(this, exec, conv_->scratch_moves());
}

bool CudaBackend::launch(const CapturedOps& ops, const NoiseKey& key) {
  const auto* graph = dynamic_cast<const CudaGraphOps*>(&ops);
  JEM_CHECK(graph != nullptr && graph->owner() == this, "launch (cuda): the ops were captured by ",
            graph ? "another CUDA backend" : "another kind of backend", ", not by ", name());
  JEM_CHECK(!capturing_, "launch (cuda): cannot launch captured ops inside a capture");
  // A scratch buffer reallocated since the capture (growing waits for the stream and frees the
  // old one) would leave the graph reading and writing freed memory.
  if (conv_->scratch_moves() != graph->scratch_moves()) return false;
  bind();
  kernels::write_noise_key(live_key_, key, stream_);
  JEM_CUDA_CHECK(cudaGraphLaunch(graph->exec(), stream_));
  ++graph_launches_;
  return true;
}

}  // namespace jem::cuda
