// The training data pipeline: train / validation / test splits, augmented and noised batches,
// and a background prefetcher.
//
// Determinism: every batch is a pure function of (seed, stream id, iteration). The order of an
// epoch, the crop offsets, the flips and the noise all come from Philox (jem/philox.hpp) keyed
// by these coordinates, never from a stateful generator, so a run resumed at iteration i sees
// exactly the batches an uninterrupted run would, whatever thread prepares them.
//
// Philox coordinates used here (iteration, step, sample, element):
//   Shuffle    epoch order   (epoch, stream_id, 0, i)           Fisher-Yates word for position i
//   Shuffle    valid split   (kSplitIteration, 0, 0, i)         same, one reserved "epoch"
//   Augment    crop / flip   (iteration, stream_id, b, 0|1|2)   row offset, column offset, flip
//   DataNoise  data noise    (iteration, stream_id, b, e)       e = (c * H + h) * W + w
//   Eval       eval noise    (0, 0, image index, e)
// where b is the position inside the batch.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "jem/datasets.hpp"

namespace jem {

// The Philox "epoch" reserved for the validation split (the largest 24-bit iteration: a run
// would need 16.7 M epochs to reach it).
inline constexpr std::uint32_t kSplitIteration = 0xFFFFFFu;

struct DataSplits {
  Dataset train, valid, test;
};

// Reads `dataset` ("fashion-mnist", "mnist", "cifar10", "cifar100", "svhn") from `dir` and holds
// out n_valid training images for validation (see split_train_valid). A missing file is an error
// naming the file, the directory and where to get it; nothing is downloaded.
DataSplits load_splits(const std::string& dataset, const std::string& dir, int n_valid, std::uint64_t seed);

// The first n_valid images of a seeded permutation of `full` become `valid`, the rest `train`;
// both keep the original order of `full`. n_valid in [0, full.count).
void split_train_valid(const Dataset& full, int n_valid, std::uint64_t seed, Dataset* train, Dataset* valid);

// Fisher-Yates permutation of 0..n-1 driven by philox_uint32(seed, Shuffle, iteration, step, 0, i).
std::vector<std::int32_t> philox_permutation(int n, std::uint64_t seed, std::uint32_t iteration, std::uint32_t step);

struct AugmentSpec {
  bool augment = true;  // reflect-pad + random crop (+ flip)
  bool flip = true;     // random horizontal flip (off for SVHN: digits are not mirror-symmetric)
  int pad = 4;          // reflection padding before the crop; must be < height and < width
  float sigma = 0.0f;   // std of the Gaussian noise added after scaling to [-1, 1]
};

// uint8 pixel -> [-1, 1]: x / 255 * 2 - 1 (torchvision's ToTensor + Normalize(.5, .5)).
float scale_pixel(std::uint8_t v);

// One endless stream of training batches over a data set (which must outlive the stream).
class BatchStream {
 public:
  BatchStream(const Dataset& data, int batch, AugmentSpec spec, std::uint64_t seed, std::uint32_t stream_id);

  // Full batches per epoch: count / batch (the last partial batch is dropped).
  int batches_per_epoch() const { return batches_per_epoch_; }
  int batch() const { return batch_; }
  const Dataset& data() const { return *data_; }
  std::size_t image_size() const;  // floats per image: channels * height * width

  // Batch `iteration` into x [batch, C, H, W] and y [batch]. A pure function of
  // (seed, stream_id, iteration); thread-safe.
  void make_batch(std::uint64_t iteration, float* x, std::int32_t* y) const;
  // Rows [first_row, first_row + count) of that batch into x [count, C, H, W] and y [count]:
  // one rank's share under data parallelism, equal to the same rows of make_batch.
  void make_rows(std::uint64_t iteration, int first_row, int count, float* x, std::int32_t* y) const;

  // The order of the data set in `epoch` (the cached permutation when it is the current one).
  std::shared_ptr<const std::vector<std::int32_t>> epoch_order(std::uint64_t epoch) const;

 private:
  const Dataset* data_;
  int batch_, batches_per_epoch_;
  AugmentSpec spec_;
  std::uint64_t seed_;
  std::uint32_t stream_id_;
  // The two most recent epochs' orders: an epoch's order costs a shuffle of the whole set, and
  // a prefetcher one epoch ahead of another caller must not make them recompute it each call.
  mutable std::mutex cache_mutex_;
  mutable std::uint64_t cached_epoch_[2] = {~0ull, ~0ull};
  mutable std::shared_ptr<const std::vector<std::int32_t>> cached_order_[2];
  mutable int cache_next_ = 0;
};

// Images first .. first+count-1 of `data` in order, scaled to [-1, 1], no augmentation, plus
// sigma * N(0, I) keyed by the image index (Eval stream): independent of the batch size.
void make_eval_batch(const Dataset& data, std::int64_t first, int count, float sigma, std::uint64_t seed, float* x,
                     std::int32_t* y);

// Prepares the batches of upcoming iterations on a background thread into a ring of `depth`
// host buffers, so that data preparation overlaps the compute.
class Prefetcher {
 public:
  struct Batch {
    std::uint64_t iteration = 0;
    std::vector<std::vector<float>> x;         // x[s]: [batch, C, H, W] of stream s
    std::vector<std::vector<std::int32_t>> y;  // y[s]: [batch] of stream s
  };
  // Fills `out` (already sized like the prototype) with the batches of `iteration`.
  using FillFn = std::function<void(std::uint64_t iteration, Batch& out)>;

  // One x and y per stream, filled by BatchStream::make_batch. The streams must outlive this.
  Prefetcher(std::vector<const BatchStream*> streams, std::uint64_t first_iteration, int depth = 2);
  // Any producer: every slot starts as a copy of `prototype` (so that the fill never allocates).
  Prefetcher(FillFn fill, const Batch& prototype, std::uint64_t first_iteration, int depth = 2);
  ~Prefetcher();
  Prefetcher(const Prefetcher&) = delete;
  Prefetcher& operator=(const Prefetcher&) = delete;

  // The batches of the next iteration (first_iteration, then +1 each call), blocking until they
  // are ready. The reference stays valid until the following next(). An exception thrown while
  // preparing the batch is rethrown here (and by every later call).
  const Batch& next();

 private:
  void start(const Batch& prototype, int depth);
  void worker();

  FillFn fill_;
  std::uint64_t first_iteration_;
  std::vector<Batch> slots_;
  std::mutex mutex_;
  std::condition_variable cv_;
  // Counters of batches since construction: the worker fills batch `produced_` when
  // produced_ < released_ + depth; next() takes batch `taken_` and releases the previous one.
  std::uint64_t produced_ = 0, taken_ = 0, released_ = 0;
  bool stop_ = false;
  std::exception_ptr error_;
  std::thread thread_;
};

}  // namespace jem
