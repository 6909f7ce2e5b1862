#include "device_memory.hpp"

#include <cstdint>
#include <map>
#include <mutex>

#include "cuda_check.hpp"

namespace jem::cuda {
namespace {

struct Registry {
  std::mutex mutex;
  std::map<std::uintptr_t, std::size_t> extents;  // base address -> bytes
};

// Never destroyed: tensors freed during static destruction (after this translation unit's
// statics are gone) must still find it.
Registry& registry() {
  static Registry* r = new Registry;
  return *r;
}

}  // namespace

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
  r.extents[reinterpret_cast<std::uintptr_t>(p)] = request;
  return p;
}

void device_free(void* p) noexcept {
  if (!p) return;
  {
    Registry& r = registry();
    std::lock_guard<std::mutex> lock(r.mutex);
    r.extents.erase(reinterpret_cast<std::uintptr_t>(p));
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
  const std::uintptr_t end = it->first + it->second;
  return a < end ? std::size_t(end - a) : 0;
}

DeviceBuffer::~DeviceBuffer() {
  if (ptr_) {
    (void)cudaFree(ptr_);
    (void)cudaGetLastError();
  }
}

void* DeviceBuffer::ensure(std::size_t bytes, cudaStream_t stream) {
  if (bytes <= bytes_ && ptr_) return ptr_;
  JEM_CUDA_CHECK(cudaStreamSynchronize(stream));
  if (ptr_) JEM_CUDA_CHECK(cudaFree(ptr_));
  ptr_ = nullptr;
  bytes_ = 0;
  JEM_CUDA_CHECK(cudaMalloc(&ptr_, bytes == 0 ? 256 : bytes));
  bytes_ = bytes;
  return ptr_;
}

}  // namespace jem::cuda
