// safetensors: the checkpoint and reference-data format (https://github.com/huggingface/safetensors).
//
// Layout: u64 little-endian header length N, N bytes of JSON header, then the raw little-endian
// tensor data; each tensor's "data_offsets" are relative to the start of the data section.
// File::read validates the whole header up front, so a File that exists is consistent: every
// accessor can copy bytes without further bounds checks. Every error names the file (and the
// tensor where there is one).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace jem::safetensors {

struct TensorInfo {
  std::string name;
  std::string dtype;                 // "F32", "I64", ... as spelled in the file
  std::vector<std::int64_t> shape;   // empty for a scalar
  std::uint64_t begin = 0, end = 0;  // byte range within the data section
};

class File {
 public:
  // Reads the whole file and validates the header against it; throws jem::Error on any problem.
  static File read(const std::string& path);
  // The same from bytes already in memory (for fuzzing); `label` stands for the path in errors.
  static File from_bytes(std::vector<std::uint8_t> bytes, const std::string& label);

  const std::string& path() const { return path_; }
  bool contains(const std::string& name) const { return tensors_.count(name) != 0; }
  std::vector<std::string> names() const;  // sorted
  const TensorInfo& info(const std::string& name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  // Typed copies of a tensor's elements; each throws unless the stored dtype matches.
  // f32 also accepts an F64 tensor and rounds each element to float (reference data written
  // in double precision is still usable by the float trainer).
  std::vector<float> f32(const std::string& name) const;
  std::vector<std::int64_t> i64(const std::string& name) const;
  std::vector<std::int32_t> i32(const std::string& name) const;
  std::vector<std::uint8_t> u8(const std::string& name) const;

  // f32(name), after checking the shape: throws "FILE: tensor 'NAME' has shape [..], expected [..]".
  std::vector<float> f32_checked(const std::string& name,
                                 const std::vector<std::int64_t>& expected_shape) const;

 private:
  File() = default;
  const std::uint8_t* data_of(const TensorInfo& t) const { return bytes_.data() + data_start_ + t.begin; }

  std::string path_;
  std::vector<std::uint8_t> bytes_;  // the whole file
  std::size_t data_start_ = 0;       // 8 + header length
  std::map<std::string, TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

class Writer {
 public:
  // Each add copies `numel(shape)` elements from `data`; names must be unique.
  void add_f32(const std::string& name, const std::vector<std::int64_t>& shape, const float* data);
  void add_i64(const std::string& name, const std::vector<std::int64_t>& shape, const std::int64_t* data);
  void add_i32(const std::string& name, const std::vector<std::int64_t>& shape, const std::int32_t* data);
  void add_u8(const std::string& name, const std::vector<std::int64_t>& shape, const std::uint8_t* data);
  void set_metadata(const std::string& key, const std::string& value);

  // Writes atomically: a temporary file next to `path` is written, synced and renamed over
  // `path`. On failure the temporary is removed, any existing file at `path` is untouched, and
  // a jem::Error names the path and the system error.
  void write(const std::string& path) const;

 private:
  struct Entry {
    std::string name, dtype;
    std::vector<std::int64_t> shape;
    std::vector<std::uint8_t> bytes;
  };
  void add(const std::string& name, const char* dtype, std::size_t elem_size,
           const std::vector<std::int64_t>& shape, const void* data);

  std::vector<Entry> entries_;  // insertion order = order in the data section
  std::map<std::string, std::string> metadata_;
};

}  // namespace jem::safetensors
