// Locating the data set files, reading them, and the seeded train / validation split.
#include <cstring>
#include <filesystem>
#include <utility>

#include "jem/data_pipeline.hpp"
#include "jem/error.hpp"
#include "jem/philox.hpp"

namespace jem {
namespace {

namespace fs = std::filesystem;

bool is_file(const fs::path& p) {
  std::error_code ec;
  return fs::is_regular_file(p, ec);
}

// The folder among `dir` and `dir/subfolder` (the name inside the official archives) that holds
// `probe`; failing that, an error naming the file, both folders and how to get the data.
fs::path find_folder(const std::string& dataset, const std::string& dir, const std::string& subfolder,
                     const std::string& probe, const std::string& how_to_get) {
  const fs::path candidates[] = {fs::path(dir), fs::path(dir) / subfolder};
  for (const fs::path& c : candidates)
    if (is_file(c / probe)) return c;
  JEM_FAIL(dataset, ": ", probe, " not found in ", dir, " (nor in ", candidates[1].string(), "): ", how_to_get);
}

// Every file of the set must be there before reading starts, so that a half-unpacked archive
// names the missing file instead of failing in the middle.
void require_files(const std::string& dataset, const fs::path& folder, const std::vector<std::string>& names,
                   const std::string& how_to_get) {
  for (const std::string& n : names)
    JEM_CHECK(is_file(folder / n), dataset, ": ", n, " not found in ", folder.string(), ": ", how_to_get);
}

// IDX files may be gzip-compressed (the distributed form) or unpacked; read_idx takes both.
std::string idx_file(const std::string& dataset, const std::string& dir, const std::string& name,
                     const std::string& how_to_get) {
  for (const std::string& n : {name + ".gz", name})
    if (is_file(fs::path(dir) / n)) return (fs::path(dir) / n).string();
  JEM_FAIL(dataset, ": ", name, ".gz (or ", name, ") not found in ", dir, ": ", how_to_get);
}

std::pair<Dataset, Dataset> read_train_test(const std::string& dataset, const std::string& dir) {
  if (dataset == "fashion-mnist" || dataset == "mnist") {
    const std::string how =
        dataset == "mnist"
            ? "download the four MNIST files (train-images-idx3-ubyte.gz etc.) from http://yann.lecun.com/exdb/mnist/ "
              "into " + dir
            : "apt-get install dataset-fashion-mnist (files in /usr/share/datasets/fashion-mnist/), or download the "
              "four files from https://github.com/zalandoresearch/fashion-mnist into " + dir;
    // Check all four before reading any.
    const std::string tri = idx_file(dataset, dir, "train-images-idx3-ubyte", how);
    const std::string trl = idx_file(dataset, dir, "train-labels-idx1-ubyte", how);
    const std::string tei = idx_file(dataset, dir, "t10k-images-idx3-ubyte", how);
    const std::string tel = idx_file(dataset, dir, "t10k-labels-idx1-ubyte", how);
    return {read_idx(tri, trl), read_idx(tei, tel)};
  }
  if (dataset == "cifar10") {
    const std::string how = "download the CIFAR-10 binary version (cifar-10-binary.tar.gz) from "
                            "https://www.cs.toronto.edu/~kriz/cifar.html and unpack it into " + dir;
    const fs::path f = find_folder(dataset, dir, "cifar-10-batches-bin", "data_batch_1.bin", how);
    std::vector<std::string> names;
    for (int i = 1; i <= 5; ++i) names.push_back("data_batch_" + std::to_string(i) + ".bin");
    require_files(dataset, f, names, how);
    require_files(dataset, f, {"test_batch.bin"}, how);
    std::vector<std::string> train;
    for (const std::string& n : names) train.push_back((f / n).string());
    return {read_cifar10(train), read_cifar10({(f / "test_batch.bin").string()})};
  }
  if (dataset == "cifar100") {
    const std::string how = "download the CIFAR-100 binary version (cifar-100-binary.tar.gz) from "
                            "https://www.cs.toronto.edu/~kriz/cifar.html and unpack it into " + dir;
    const fs::path f = find_folder(dataset, dir, "cifar-100-binary", "train.bin", how);
    require_files(dataset, f, {"test.bin"}, how);
    return {read_cifar100({(f / "train.bin").string()}), read_cifar100({(f / "test.bin").string()})};
  }
  if (dataset == "svhn") {
    const std::string how = "download train_32x32.mat and test_32x32.mat (format 2, cropped digits) from "
                            "http://ufldl.stanford.edu/housenumbers/ into " + dir;
    require_files(dataset, fs::path(dir), {"train_32x32.mat", "test_32x32.mat"}, how);
    return {read_svhn_mat((fs::path(dir) / "train_32x32.mat").string()),
            read_svhn_mat((fs::path(dir) / "test_32x32.mat").string())};
  }
  JEM_FAIL("unknown data set '", dataset, "' (known: fashion-mnist, mnist, cifar10, cifar100, svhn)");
}

// The images at `indices` (in that order), with the shape and classes of `full`.
Dataset subset(const Dataset& full, const std::vector<std::int32_t>& indices, const std::string& name) {
  Dataset d;
  d.name = name;
  d.count = static_cast<int>(indices.size());
  d.channels = full.channels;
  d.height = full.height;
  d.width = full.width;
  d.classes = full.classes;
  const std::size_t image = std::size_t(full.channels) * full.height * full.width;
  d.images.resize(indices.size() * image);
  d.labels.resize(indices.size());
  for (std::size_t i = 0; i < indices.size(); ++i) {
    std::memcpy(d.images.data() + i * image, full.images.data() + std::size_t(indices[i]) * image, image);
    d.labels[i] = full.labels[std::size_t(indices[i])];
  }
  return d;
}

// "cifar10 train" -> "cifar10": the readers name the set, the split adds the part.
std::string set_name(const Dataset& d) {
  const auto space = d.name.find(' ');
  return space == std::string::npos ? d.name : d.name.substr(0, space);
}

}  // namespace

std::vector<std::int32_t> philox_permutation(int n, std::uint64_t seed, std::uint32_t iteration, std::uint32_t step) {
  JEM_CHECK(n >= 0, "philox_permutation: negative size ", n);
  std::vector<std::int32_t> p(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) p[std::size_t(i)] = i;
  // Fisher-Yates from the top: position i swaps with a uniform j in [0, i]. The modulo bias is
  // below n / 2^32 (1e-5 for 50 000 images): irrelevant for shuffling.
  for (int i = n - 1; i > 0; --i) {
    const std::uint32_t w = philox_uint32(seed, RngStream::Shuffle, iteration, step, 0, static_cast<std::uint32_t>(i));
    std::swap(p[std::size_t(i)], p[w % static_cast<std::uint32_t>(i + 1)]);
  }
  return p;
}

void split_train_valid(const Dataset& full, int n_valid, std::uint64_t seed, Dataset* train, Dataset* valid) {
  JEM_CHECK(n_valid >= 0 && n_valid < full.count, full.name, ": n_valid = ", n_valid,
            " validation images must be in [0, ", full.count, ") (the training set has ", full.count, " images)");
  const std::vector<std::int32_t> perm = philox_permutation(full.count, seed, kSplitIteration, 0);
  std::vector<char> held(std::size_t(full.count), 0);
  for (int i = 0; i < n_valid; ++i) held[std::size_t(perm[std::size_t(i)])] = 1;
  // Both parts keep the file order: the split is a set, the order of training comes later from
  // BatchStream, and validation reads in file order.
  std::vector<std::int32_t> t, v;
  t.reserve(std::size_t(full.count - n_valid));
  v.reserve(std::size_t(n_valid));
  for (int i = 0; i < full.count; ++i) (held[std::size_t(i)] ? v : t).push_back(i);
  const std::string name = set_name(full);
  *train = subset(full, t, name + " train");
  *valid = subset(full, v, name + " valid");
}

DataSplits load_splits(const std::string& dataset, const std::string& dir, int n_valid, std::uint64_t seed) {
  auto [full, test] = read_train_test(dataset, dir);
  DataSplits s;
  full.name = dataset;
  split_train_valid(full, n_valid, seed, &s.train, &s.valid);
  s.test = std::move(test);
  s.test.name = dataset + " test";
  return s;
}

}  // namespace jem
