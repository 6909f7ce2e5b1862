#include "device_memory.hpp"

#include <algorithm>
#include <cstdint>
#include <map>
#include <mutex>

#include "cuda_check.hpp"

namespace jem::cuda {
namespace {

struct Extent {
  std::size_t bytes = 0;
  int device = 0;
};

struct Usage {
  std::size_t live = 0, peak = 0;
  std::int64_t allocations = 0;
};

struct Registry {
  std::mutex mutex;
  std::map<std::uintptr_t, Extent> extents;  // base address -> bytes, device
  std::map<int, Usage> usage;                // per device: bytes held now, and at most
};

// Never destroyed: tensors freed during static destruction (after this translation unit's
// statics are gone) must still find it.
Registry& registry() {
  static Registry* r = new Registry;
  return *r;
}

int current_device() {
  int device = 0;
  (void)cudaGetDevice(&device);
  return device;
}

// Byte counts; the caller holds r.mutex.
void count_alloc(Registry& r, int device, std::size_t bytes) {
  Usage& u = r.usage[device];
  ++u.allocations;
  u.live += bytes;
  u.peak = std::max(u.peak, u.live);
}
void count_free(Registry& r, int device, std::size_t bytes) {
  Usage& u = r.usage[device];
  u.live -= std::min(u.live, bytes);
}

}  // namespace

std::size_t peak_allocated_bytes(int device) { return std::size_t(allocation_counts(device).peak_bytes); }

MemoryCounters allocation_counts(int device) {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  MemoryCounters m;
  auto it = r.usage.find(device);
  if (it == r.usage.end()) return m;
  m.allocations = it->second.allocations;
  m.live_bytes = std::int64_t(it->second.live);
  m.peak_bytes = std::int64_t(it->second.peak);
  return m;
}

void count_transient_allocation() {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  ++r.usage[current_device()].allocations;
}

void* device_alloc(std::size_t bytes) {
  const std::size_t request = bytes == 0 ? 256 : bytes;
  void* p = nullptr;
  const cudaError_t err = cudaMalloc(&p, request);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();  // an out-of-memory error is not sticky; clear it
    std::size_t free_b = 0, total_b = 0;
    (void)cudaMemGetInfo(&free_b, &total_b);
    JEM_FAIL("CUDA allocation of ", bytes, " bytes failed: ", cudaGetErrorString(err), " (",
             free_b >> 20, " MiB free of ", total_b >> 20, " MiB)");
  }
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  const int device = current_device();
  r.extents[reinterpret_cast<std::uintptr_t>(p)] = Extent{request, device};
  count_alloc(r, device, request);
  return p;
}

void device_free(void* p) noexcept {
  if (!p) return;
  {
    Registry& r = registry();
    std::lock_guard<std::mutex> lock(r.mutex);
    auto it = r.extents.find(reinterpret_cast<std::uintptr_t>(p));
    if (it != r.extents.end()) {
      count_free(r, it->second.device, it->second.bytes);
      r.extents.erase(it);
    }
  }
  (void)cudaFree(p);
  (void)cudaGetLastError();
}

std::size_t bytes_to_allocation_end(const void* p) {
  const auto a = reinterpret_cast<std::uintptr_t>(p);
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  auto it = r.extents.upper_bound(a);
  if (it == r.extents.begin()) return 0;
  --it;
  const std::uintptr_t end = it->first + it->second.bytes;
  return a < end ? std::size_t(end - a) : 0;
}

DeviceBuffer::~DeviceBuffer() {
  if (ptr_) {
    {
      Registry& r = registry();
      std::lock_guard<std::mutex> lock(r.mutex);
      count_free(r, device_, bytes_ == 0 ? 256 : bytes_);
    }
    (void)cudaFree(ptr_);
    (void)cudaGetLastError();
  }
}

void* DeviceBuffer::ensure(std::size_t bytes, cudaStream_t stream) {
  if (bytes <= bytes_ && ptr_) return ptr_;
  JEM_CUDA_CHECK(cudaStreamSynchronize(stream));
  Registry& r = registry();
  if (ptr_) {
    JEM_CUDA_CHECK(cudaFree(ptr_));
    std::lock_guard<std::mutex> lock(r.mutex);
    count_free(r, device_, bytes_ == 0 ? 256 : bytes_);
  }
  ptr_ = nullptr;
  bytes_ = 0;
  ++moves_;  // counted before the allocation: a failed one has freed the old buffer too
  JEM_CUDA_CHECK(cudaMalloc(&ptr_, bytes == 0 ? 256 : bytes));
  bytes_ = bytes;
  device_ = current_device();
  std::lock_guard<std::mutex> lock(r.mutex);
  count_alloc(r, device_, bytes == 0 ? 256 : bytes);
  return ptr_;
}

}  // namespace jem::cuda
