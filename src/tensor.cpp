#include "jem/tensor.hpp"

#include <cstdlib>
#include <cstring>
#include <sstream>

namespace jem {

const char* to_string(Device d) { return d == Device::CPU ? "cpu" : "cuda"; }
const char* to_string(DType t) { return t == DType::F32 ? "F32" : "I32"; }
const char* to_string(Layout l) { return l == Layout::NCHW ? "NCHW" : "NHWC"; }
std::size_t dtype_size(DType) { return 4; }  // both supported dtypes are 32-bit

Shape::Shape(std::initializer_list<std::int64_t> dims) {
  JEM_CHECK(dims.size() <= kMaxRank, "shape rank ", dims.size(), " exceeds ", kMaxRank);
  for (auto v : dims) {
    JEM_CHECK(v >= 0, "negative dimension ", v, " in shape");
    d_[rank_++] = v;
  }
}

std::int64_t Shape::operator[](int i) const {
  JEM_CHECK(i >= 0 && i < rank_, "dimension ", i, " out of range for shape ", str());
  return d_[i];
}

std::int64_t Shape::numel() const {
  std::int64_t n = 1;
  for (int i = 0; i < rank_; ++i) n *= d_[i];
  return n;
}

bool Shape::operator==(const Shape& o) const {
  if (rank_ != o.rank_) return false;
  for (int i = 0; i < rank_; ++i)
    if (d_[i] != o.d_[i]) return false;
  return true;
}

std::string Shape::str() const {
  std::ostringstream os;
  os << '[';
  for (int i = 0; i < rank_; ++i) os << (i ? ", " : "") << d_[i];
  os << ']';
  return os.str();
}

Tensor::Tensor(std::shared_ptr<Storage> storage, std::size_t offset, Shape shape, DType dtype)
    : storage_(std::move(storage)), offset_(offset), shape_(shape), dtype_(dtype) {
  JEM_CHECK(storage_ != nullptr, "tensor without storage");
  JEM_CHECK((offset_ + static_cast<std::size_t>(shape_.numel())) * dtype_size(dtype_) <= storage_->bytes(),
            "tensor view ", shape_.str(), " at offset ", offset_, " exceeds its storage of ",
            storage_->bytes(), " bytes");
}

static void free_host(void* p) { std::free(p); }

Tensor Tensor::host(Shape shape, DType dtype) {
  const std::size_t bytes = static_cast<std::size_t>(shape.numel()) * dtype_size(dtype);
  const std::size_t rounded = ((bytes + 63) / 64) * 64;  // aligned_alloc wants a multiple
  void* p = std::aligned_alloc(64, rounded == 0 ? 64 : rounded);
  JEM_CHECK(p != nullptr, "host allocation of ", bytes, " bytes failed");
  std::memset(p, 0, rounded == 0 ? 64 : rounded);
  return Tensor(std::make_shared<Storage>(p, bytes, Device::CPU, &free_host), 0, shape, dtype);
}

Device Tensor::device() const {
  JEM_CHECK(defined(), "undefined tensor has no device");
  return storage_->device();
}

template <>
float* Tensor::data<float>() const {
  JEM_CHECK(defined(), "data() of an undefined tensor");
  JEM_CHECK(dtype_ == DType::F32, "tensor of dtype ", to_string(dtype_), " read as F32");
  return static_cast<float*>(storage_->ptr()) + offset_;
}

template <>
std::int32_t* Tensor::data<std::int32_t>() const {
  JEM_CHECK(defined(), "data() of an undefined tensor");
  JEM_CHECK(dtype_ == DType::I32, "tensor of dtype ", to_string(dtype_), " read as I32");
  return static_cast<std::int32_t*>(storage_->ptr()) + offset_;
}

Tensor Tensor::view(std::size_t offset, Shape shape) const {
  JEM_CHECK(offset + static_cast<std::size_t>(shape.numel()) <= static_cast<std::size_t>(numel()),
            "view ", shape.str(), " at offset ", offset, " exceeds tensor ", shape_.str());
  return Tensor(storage_, offset_ + offset, shape, dtype_);
}

Tensor Tensor::as_layout(Layout layout) const {
  JEM_CHECK(layout == Layout::NCHW || shape_.rank() == 4, "a ", to_string(layout), " tensor must be 4-D, got ",
            shape_.str());
  Tensor t = *this;
  t.layout_ = layout;
  return t;
}

Tensor Tensor::reshape(Shape shape) const {
  JEM_CHECK(shape.numel() == numel(), "cannot reshape ", shape_.str(), " to ", shape.str());
  if (channels_last()) {
    if (shape == shape_) return *this;
    JEM_CHECK(shape_[1] == 1 || shape_[2] * shape_[3] == 1, "cannot reshape the channels-last (NHWC) tensor ",
              shape_.str(), " to ", shape.str(), ": its elements are not in row-major order");
  }
  return Tensor(storage_, offset_, shape, dtype_);
}

Tensor Tensor::slice(std::int64_t begin, std::int64_t end) const {
  JEM_CHECK(shape_.rank() >= 1, "slice of a scalar tensor");
  JEM_CHECK(0 <= begin && begin <= end && end <= shape_[0], "slice [", begin, ", ", end,
            ") out of range for ", shape_.str());
  const std::int64_t row = shape_[0] == 0 ? 0 : numel() / shape_[0];
  Shape s;
  switch (shape_.rank()) {
    case 1: s = Shape{end - begin}; break;
    case 2: s = Shape{end - begin, shape_[1]}; break;
    case 3: s = Shape{end - begin, shape_[1], shape_[2]}; break;
    default: s = Shape{end - begin, shape_[1], shape_[2], shape_[3]}; break;
  }
  Tensor t(storage_, offset_ + static_cast<std::size_t>(begin * row), s, dtype_);
  t.layout_ = layout_;
  return t;
}

}  // namespace jem
