#include "upload_staging.hpp"

#include <algorithm>
#include <cstring>

#include "cuda_check.hpp"

namespace jem::cuda {

UploadStaging::UploadStaging() {
  // A constructor that throws runs no destructor: the catch releases what was created.
  try {
    for (Slot& s : slots_) {
      JEM_CUDA_CHECK(cudaHostAlloc(&s.host, kSlotBytes, cudaHostAllocPortable));
      JEM_CUDA_CHECK(cudaEventCreateWithFlags(&s.copied, cudaEventDisableTiming));
    }
  } catch (...) {
    release();
    throw;
  }
}

UploadStaging::~UploadStaging() { release(); }

void UploadStaging::release() noexcept {
  // Errors are ignored: a destructor must not throw. A slot's pending DMA is waited for before
  // its memory is freed (cudaFreeHost would also wait, but only for the whole device).
  for (Slot& s : slots_) {
    if (s.copied) {
      (void)cudaEventSynchronize(s.copied);
      (void)cudaEventDestroy(s.copied);
    }
    if (s.host) (void)cudaFreeHost(s.host);
    s = Slot{};
  }
  (void)cudaGetLastError();
}

void UploadStaging::upload(void* dst, const void* src, std::size_t bytes, cudaStream_t stream) {
  auto* d = static_cast<char*>(dst);
  const auto* h = static_cast<const char*>(src);
  for (std::size_t done = 0; done < bytes;) {
    const std::size_t n = std::min(kSlotBytes, bytes - done);
    Slot& s = slots_[std::size_t(next_)];
    next_ = (next_ + 1) % kSlots;
    // The DMA queued from this slot kSlots chunks ago must have read it before it is refilled
    // (an event never recorded counts as complete).
    JEM_CUDA_CHECK(cudaEventSynchronize(s.copied));
    std::memcpy(s.host, h + done, n);
    JEM_CUDA_CHECK(cudaMemcpyAsync(d + done, s.host, n, cudaMemcpyHostToDevice, stream));
    JEM_CUDA_CHECK(cudaEventRecord(s.copied, stream));
    done += n;
  }
}

}  // namespace jem::cuda
