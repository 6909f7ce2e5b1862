// Stream capture for the emulation: the part of cuda_emulation.hpp that the emulated libraries
// of tests/emulation/device (runtime, cuDNN, cuBLAS) also use, without the kernel macros.
#pragma once

#include <cuda_runtime_api.h>

#include <functional>
#include <vector>

namespace jem::emu {

// ---- stream capture (CUDA Graphs) ----
// Every stream-ordered call of the emulation (kernel launches, the memory calls, and the emulated
// cuDNN and cuBLAS of tests/emulation/device) hands its work to enqueue(), which runs it at once,
// unless the stream is capturing: then the work is recorded, and nothing of it runs until the
// graph made from the recording is launched (as on a GPU, where a captured call only adds a node).
// The emulated runtime's cudaStreamBeginCapture / EndCapture / GraphLaunch use the rest.
void enqueue(cudaStream_t stream, std::function<void()> work);
bool capturing(cudaStream_t stream);
// Starts recording `stream`'s work for the calling thread. cudaErrorIllegalState when the stream
// already captures; cudaErrorStreamCaptureUnsupported for the legacy stream (nullptr).
cudaError_t begin_capture(cudaStream_t stream);
// Stops the capture and hands over the recorded work; cudaErrorStreamCaptureInvalidated (and no
// work) when a refused call invalidated it, cudaErrorIllegalState when the stream did not capture.
cudaError_t end_capture(cudaStream_t stream, std::vector<std::function<void()>>* work);
// The calls CUDA refuses from a thread whose stream captures (cudaStreamCaptureModeThreadLocal:
// allocation, synchronisation, synchronous copies): when the calling thread captures, records
// cudaErrorStreamCaptureUnsupported naming `call` as the last error, invalidates its capture and
// returns that error; cudaSuccess otherwise.
cudaError_t refuse_if_capturing(const char* call);
// Work that fails when it runs (a captured library call whose arguments were accepted) reports
// here: cudaErrorLaunchFailure with `what` as the last error, as a failed kernel of a graph.
void report_failed_work(const char* what);

}  // namespace jem::emu
