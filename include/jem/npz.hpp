// NumPy .npz archives: a zip file of .npy arrays, written with 'stored' (uncompressed) entries
// so that numpy.load reads them and nothing beyond zlib's crc32 is needed.
//
// .npy v1.0: the magic "\x93NUMPY", version 1 0, a u16 little-endian header length, an ASCII
// dict {'descr': '<f4', 'fortran_order': False, 'shape': (N, C, H, W), } padded with spaces
// and a newline so that the data starts at a multiple of 64 bytes, then the raw C-order data.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace jem {

struct NpyArray {
  std::string name;                 // entry name without ".npy"
  std::vector<std::int64_t> shape;  // empty for a scalar
  std::string descr = "<f4";        // "<f4" (f32) or "<i4" (i32)
  std::vector<float> f32;           // used when descr == "<f4"
  std::vector<std::int32_t> i32;    // used when descr == "<i4"

  static NpyArray floats(std::string name, std::vector<std::int64_t> shape, std::vector<float> data);
  static NpyArray ints(std::string name, std::vector<std::int64_t> shape, std::vector<std::int32_t> data);
  std::int64_t numel() const;
};

// The bytes of one .npy v1.0 file.
std::vector<std::uint8_t> npy_bytes(const NpyArray& a);
// Parses one .npy file (v1.0 or v2.0, little-endian f4 or i4, C order); `label` names it in errors.
NpyArray parse_npy(const std::vector<std::uint8_t>& bytes, const std::string& label);

// Writes the arrays as NAME.npy entries of a zip archive, atomically (temporary file + rename).
void write_npz(const std::string& path, const std::vector<NpyArray>& arrays);
// Reads an archive of stored (uncompressed) entries, as write_npz writes; errors name the file
// and the entry. A deflated archive (numpy.savez_compressed) is rejected with a clear message.
std::vector<NpyArray> read_npz(const std::string& path);

}  // namespace jem
