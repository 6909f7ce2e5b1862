// Image classification data sets for JEM training, read from their distribution formats into
// memory as uint8 NCHW. Every failure is a jem::Error that names the file (and, where the file
// is missing, how to get it).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace jem {

struct Dataset {     // images in memory as uint8, NCHW, labels int32 in [0, classes)
  std::string name;  // e.g. "fashion-mnist train"
  int count = 0, channels = 0, height = 0, width = 0, classes = 0;
  std::vector<std::uint8_t> images;  // [count, channels, height, width]
  std::vector<std::int32_t> labels;  // [count]
};

// MNIST / Fashion-MNIST IDX files (images magic 0x00000803 [N, rows, cols], labels 0x00000801
// [N], big-endian), gzip-compressed or raw, told apart by the gzip magic bytes 1f 8b.
// Debian: apt-get install dataset-fashion-mnist -> /usr/share/datasets/fashion-mnist/.
Dataset read_idx(const std::string& images_path, const std::string& labels_path, int classes = 10);

// CIFAR-10 binary batches (data_batch_N.bin, test_batch.bin): records of 1 label byte and 3072
// pixel bytes (R, G, B planes of 32x32). The files are concatenated in the given order.
Dataset read_cifar10(const std::vector<std::string>& batch_files);

// CIFAR-100 binary files (train.bin, test.bin): records of a coarse label byte, a fine label byte
// and 3072 pixel bytes; 100 fine or 20 coarse classes.
Dataset read_cifar100(const std::vector<std::string>& files, bool fine_labels = true);

// SVHN cropped digits (train_32x32.mat, test_32x32.mat; MATLAB v5 or v7.3): X uint8
// [H, W, 3, N] in MATLAB's column-major order and y [N, 1] with labels 1..10, where 10 is the
// digit 0 and becomes label 0.
Dataset read_svhn_mat(const std::string& path);

namespace detail {
// Shared by the readers in src/data/ (not meant for other callers).
// The whole file; a missing or unreadable file names the path, strerror and `how_to_get`.
std::vector<std::uint8_t> read_file_bytes(const std::string& path, const std::string& how_to_get);
// Throws naming `file` if a label is outside [0, classes).
void check_labels(const std::int32_t* labels, std::size_t count, int classes, const std::string& file);
// "dir/x/train-images.gz" -> "train-images.gz": for Dataset::name.
std::string base_name(const std::string& path);
}  // namespace detail

}  // namespace jem
