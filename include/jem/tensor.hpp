// Tensor: a shape-checked view over storage owned by one device.
//
// Storage is dense. The shape is always the logical one ([N, C, H, W] for images, [rows, cols] for
// matrices); a 4-D tensor stores its elements either row-major in that order (NCHW, the default
// and the only layout of the CPU backend) or channels-last (NHWC: element [n, c, h, w] at
// ((n * H + h) * W + w) * C + c), which the CUDA backend may use for its activations
// (Backend::activation_layout). Copies to and from the host (Backend::upload / download) always
// see NCHW order, whatever the device stores. A Tensor holds
// a shared reference to its Storage plus an element offset, so views of one flat buffer (every
// parameter of the model lives in one) are cheap and keep the buffer alive.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>

#include "jem/error.hpp"

namespace jem {

enum class Device { CPU, CUDA };
enum class DType { F32, I32 };
enum class Layout { NCHW, NHWC };

const char* to_string(Device d);
const char* to_string(DType t);
const char* to_string(Layout l);  // "NCHW", "NHWC"
std::size_t dtype_size(DType t);

// Up to 4 dimensions; unused trailing dimensions are absent (rank says how many count).
class Shape {
 public:
  static constexpr int kMaxRank = 4;
  Shape() = default;
  Shape(std::initializer_list<std::int64_t> dims);

  int rank() const { return rank_; }
  std::int64_t operator[](int i) const;
  std::int64_t numel() const;
  bool operator==(const Shape& o) const;
  bool operator!=(const Shape& o) const { return !(*this == o); }
  std::string str() const;  // "[4, 3, 32, 32]"

 private:
  std::array<std::int64_t, kMaxRank> d_{};
  int rank_ = 0;
};

// A block of memory on one device. The deleter returns it to whoever allocated it.
class Storage {
 public:
  using Deleter = void (*)(void*);
  Storage(void* ptr, std::size_t bytes, Device device, Deleter deleter)
      : ptr_(ptr), bytes_(bytes), device_(device), deleter_(deleter) {}
  ~Storage() {
    if (ptr_ && deleter_) deleter_(ptr_);
  }
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* ptr() const { return ptr_; }
  std::size_t bytes() const { return bytes_; }
  Device device() const { return device_; }

 private:
  void* ptr_;
  std::size_t bytes_;
  Device device_;
  Deleter deleter_;
};

class Tensor {
 public:
  Tensor() = default;
  Tensor(std::shared_ptr<Storage> storage, std::size_t offset, Shape shape, DType dtype);

  // Host tensor, zero-filled, 64-byte aligned (for SIMD and BLAS).
  static Tensor host(Shape shape, DType dtype = DType::F32);

  bool defined() const { return storage_ != nullptr; }
  const Shape& shape() const { return shape_; }
  std::int64_t dim(int i) const { return shape_[i]; }
  std::int64_t numel() const { return shape_.numel(); }
  DType dtype() const { return dtype_; }
  Layout layout() const { return layout_; }
  bool channels_last() const { return layout_ == Layout::NHWC; }
  Device device() const;
  std::size_t bytes() const { return static_cast<std::size_t>(numel()) * dtype_size(dtype_); }

  // Typed pointer; throws if T does not match the dtype.
  template <typename T>
  T* data() const;

  // A view of `shape.numel()` elements starting `offset` elements into this tensor, in NCHW
  // order (a fresh reading of the memory: the layout is not inherited).
  Tensor view(std::size_t offset, Shape shape) const;
  // The same elements read in `layout`; NHWC needs a 4-D shape.
  Tensor as_layout(Layout layout) const;
  // The same elements under another shape with the same element count (row-major order). A
  // channels-last tensor reshapes only where its order is the NCHW one too (C == 1 or
  // H * W == 1); the result is NCHW.
  Tensor reshape(Shape shape) const;
  // Rows [begin, end) of the first dimension (the layout is kept: an image is contiguous in both).
  Tensor slice(std::int64_t begin, std::int64_t end) const;

  const std::shared_ptr<Storage>& storage() const { return storage_; }
  std::size_t offset() const { return offset_; }

 private:
  std::shared_ptr<Storage> storage_;
  std::size_t offset_ = 0;  // in elements
  Shape shape_;
  DType dtype_ = DType::F32;
  Layout layout_ = Layout::NCHW;
};

template <>
float* Tensor::data<float>() const;
template <>
std::int32_t* Tensor::data<std::int32_t>() const;

}  // namespace jem
