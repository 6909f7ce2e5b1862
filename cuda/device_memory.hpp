// Device memory of the CUDA backend: tensor allocations (with a registry of their extents, so
// that kernels indexing a tensor by device-side values can be bounded) and grow-only scratch
// buffers (cuDNN's workspace, reduction partials).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "jem/backend.hpp"

namespace jem::cuda {

// cudaMalloc of at least `bytes` (a zero-byte request still gets a real, unique pointer), on the
// current device, recorded in the registry. Throws jem::Error when the device is out of memory.
void* device_alloc(std::size_t bytes);
// The Storage deleter: a plain function, as Storage requires. Ignores errors: at process exit
// the CUDA context may already be gone, and a destructor must not throw.
void device_free(void* p) noexcept;
// Bytes from `p` to the end of the device_alloc allocation that contains it; 0 when `p` lies in
// none (memory this backend did not allocate).
std::size_t bytes_to_allocation_end(const void* p);

// Peak bytes held at once on CUDA device `device` through device_alloc and DeviceBuffer (the
// tensors and the backends' scratch buffers, cuBLAS's workspace among them) since the process
// started. Not counted: the CUDA context, and the temporaries of cuDNN's one-time algorithm
// search.
std::size_t peak_allocated_bytes(int device);
// The same registry's counts for `device`: allocations so far (tensors, every growth of a
// scratch buffer, and each cuDNN algorithm search, see below), bytes held now, peak bytes.
MemoryCounters allocation_counts(int device);
// Counts one allocation on the current device without holding bytes: a cuDNN algorithm search,
// whose temporaries (up to a quarter of free memory) come and go within the call. A search in a
// training iteration is a one-time cost the loop must not have, so it counts.
void count_transient_allocation();

// A scratch buffer that only grows. Growing waits for `stream` first, so work already queued on
// the old buffer finishes before it is freed; that is the only synchronisation, and it happens
// only when a new, larger request arrives (the first call of a new shape), never in a steady
// loop.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  ~DeviceBuffer();
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void* ensure(std::size_t bytes, cudaStream_t stream);
  void* get() const { return ptr_; }
  std::size_t bytes() const { return bytes_; }
  // How many times the buffer has moved (been allocated anew): work captured in a CUDA Graph
  // holds its address, so a graph captured before a move must not run after it.
  std::uint64_t moves() const { return moves_; }

 private:
  void* ptr_ = nullptr;
  std::size_t bytes_ = 0;
  std::uint64_t moves_ = 0;
  int device_ = 0;  // where ptr_ was allocated (for the byte counts)
};

}  // namespace jem::cuda
