// Pinned staging for the CUDA backend's host-to-device copies (upload, upload_i32).
//
// Why: cudaMemcpyAsync from pageable memory is only asynchronous as far as the driver decides; it
// may make the host wait for the stream before it copies, which would stall the training loop's
// host thread on every data batch. Here each upload is copied by the host into one of a fixed
// ring of pinned slots, the DMA is queued from that slot, and an event marks when the device has
// read it. So:
//   * the caller may reuse its source as soon as upload() returns (the bytes are in the slot);
//   * the host waits only when it laps the ring, i.e. when it is kSlots uploads ahead of the
//     device, which bounds how far it runs ahead instead of stalling on every copy;
//   * nothing is allocated after construction (uploads larger than a slot go through in chunks).
#pragma once

#include <cuda_runtime_api.h>

#include <array>
#include <cstddef>

namespace jem::cuda {

class UploadStaging {
 public:
  // 8 slots of 4 MiB (32 MiB pinned): a WRN-28-10 batch (64x3x32x32 floats, 768 KiB) fits one
  // slot, and the ~6 uploads of a training iteration fit the ring.
  static constexpr int kSlots = 8;
  static constexpr std::size_t kSlotBytes = std::size_t(4) << 20;

  // Allocates the slots (portable pinned memory, so the ring may serve any device) and their
  // events. Throws jem::Error when pinned memory cannot be had.
  UploadStaging();
  ~UploadStaging();
  UploadStaging(const UploadStaging&) = delete;
  UploadStaging& operator=(const UploadStaging&) = delete;

  // Queues the copy of `bytes` from host `src` to device `dst` on `stream`; `src` may be reused
  // once this returns. Copies are ordered on `stream` like any other op.
  void upload(void* dst, const void* src, std::size_t bytes, cudaStream_t stream);

 private:
  struct Slot {
    void* host = nullptr;             // kSlotBytes of pinned memory
    cudaEvent_t copied = nullptr;     // recorded after the DMA that reads `host`
  };
  void release() noexcept;

  std::array<Slot, kSlots> slots_{};
  int next_ = 0;  // the slot the next chunk goes through
};

}  // namespace jem::cuda
