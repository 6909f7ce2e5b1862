// Stream capture for the emulation (cuda_emulation.hpp): which streams record instead of run, and
// the work they recorded. The emulated runtime (tests/emulation/device/cuda_runtime_on_cpu.cpp)
// builds cudaStreamBeginCapture / EndCapture and the graph calls on these.
//
// The capture mode emulated is cudaStreamCaptureModeThreadLocal (the one the CUDA backend uses):
// a refused call invalidates the capture only when the thread that began it makes the call, so
// that a data-loading thread allocating meanwhile does not break another thread's capture.
#include "stream_capture.hpp"

#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "cuda_emulation.hpp"

namespace jem::emu {
namespace {

struct Capture {
  std::thread::id thread;
  std::vector<std::function<void()>> work;
  bool invalidated = false;
};

struct Captures {
  std::mutex mutex;
  std::map<cudaStream_t, Capture> by_stream;
};

Captures& captures() {
  static Captures c;
  return c;
}

}  // namespace

void enqueue(cudaStream_t stream, std::function<void()> work) {
  {
    Captures& c = captures();
    const std::lock_guard<std::mutex> lock(c.mutex);
    const auto it = c.by_stream.find(stream);
    if (it != c.by_stream.end()) {
      it->second.work.push_back(std::move(work));
      return;
    }
  }
  work();  // outside the lock: the work may enqueue more (a cuDNN call running kernels)
}

bool capturing(cudaStream_t stream) {
  Captures& c = captures();
  const std::lock_guard<std::mutex> lock(c.mutex);
  return c.by_stream.count(stream) != 0;
}

cudaError_t begin_capture(cudaStream_t stream) {
  if (stream == nullptr) {
    set_last_error(cudaErrorStreamCaptureUnsupported, "the legacy stream cannot be captured");
    return cudaErrorStreamCaptureUnsupported;
  }
  Captures& c = captures();
  const std::lock_guard<std::mutex> lock(c.mutex);
  if (!c.by_stream.emplace(stream, Capture{std::this_thread::get_id(), {}, false}).second) {
    set_last_error(cudaErrorIllegalState, "the stream is already capturing");
    return cudaErrorIllegalState;
  }
  return cudaSuccess;
}

cudaError_t end_capture(cudaStream_t stream, std::vector<std::function<void()>>* work) {
  work->clear();
  Captures& c = captures();
  const std::lock_guard<std::mutex> lock(c.mutex);
  const auto it = c.by_stream.find(stream);
  if (it == c.by_stream.end()) {
    set_last_error(cudaErrorIllegalState, "cudaStreamEndCapture on a stream that is not capturing");
    return cudaErrorIllegalState;
  }
  const bool invalidated = it->second.invalidated;
  if (!invalidated) *work = std::move(it->second.work);
  c.by_stream.erase(it);
  if (invalidated) {
    set_last_error(cudaErrorStreamCaptureInvalidated,
                   "the capture was invalidated by a call that capturing streams refuse");
    return cudaErrorStreamCaptureInvalidated;
  }
  return cudaSuccess;
}

cudaError_t refuse_if_capturing(const char* call) {
  Captures& c = captures();
  bool refused = false;
  {
    const std::lock_guard<std::mutex> lock(c.mutex);
    for (auto& [stream, capture] : c.by_stream) {
      if (capture.thread != std::this_thread::get_id()) continue;
      capture.invalidated = true;
      refused = true;
    }
  }
  if (!refused) return cudaSuccess;
  set_last_error(cudaErrorStreamCaptureUnsupported,
                 std::string(call) + " is not permitted while this thread's stream is capturing");
  return cudaErrorStreamCaptureUnsupported;
}

void report_failed_work(const char* what) { set_last_error(cudaErrorLaunchFailure, what); }

}  // namespace jem::emu
