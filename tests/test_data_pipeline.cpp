// Data pipeline: the validation split, batches as pure functions of (seed, stream, iteration),
// epoch order, scaling, reflect-pad + crop + flip checked by hand, noise statistics and keying,
// evaluation batches, the prefetcher, and loading real / missing data sets.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <future>
#include <random>
#include <set>
#include <thread>

#include "jem/data_pipeline.hpp"
#include "jem/error.hpp"
#include "jem/philox.hpp"
#include "test_support.hpp"

using namespace jem;

namespace {

// `count` random images whose label is their index, so that a label identifies the image.
Dataset make_set(int count, int C, int H, int W, std::uint64_t seed = 1) {
  Dataset d;
  d.name = "synthetic";
  d.count = count;
  d.channels = C;
  d.height = H;
  d.width = W;
  d.classes = count;
  std::mt19937 rng(static_cast<unsigned>(seed));
  d.images.resize(std::size_t(count) * C * H * W);
  for (auto& v : d.images) v = static_cast<std::uint8_t>(rng() & 0xFF);
  d.labels.resize(std::size_t(count));
  for (int i = 0; i < count; ++i) d.labels[std::size_t(i)] = i;
  return d;
}

std::size_t image_size(const Dataset& d) { return std::size_t(d.channels) * d.height * d.width; }

// The batch of one iteration, as vectors.
struct Host {
  std::vector<float> x;
  std::vector<std::int32_t> y;
};
Host batch_of(const BatchStream& s, std::uint64_t iteration) {
  Host h{std::vector<float>(std::size_t(s.batch()) * s.image_size()), std::vector<std::int32_t>(std::size_t(s.batch()))};
  s.make_batch(iteration, h.x.data(), h.y.data());
  return h;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

using jem::test::error_of;

}  // namespace

// ---- split --------------------------------------------------------------------------------------

TEST(DataPipelineSplit, DisjointCoversTrainSetAndIsSeeded) {
  const Dataset full = make_set(1000, 1, 3, 3);
  Dataset train, valid;
  split_train_valid(full, 100, 7, &train, &valid);
  ASSERT_EQ(train.count, 900);
  ASSERT_EQ(valid.count, 100);
  ASSERT_EQ(train.labels.size(), 900u);
  ASSERT_EQ(valid.images.size(), 100u * 9);
  // Every original image exactly once in train or valid, with its own pixels; file order kept.
  std::vector<int> seen(1000, 0);
  for (const Dataset* part : {&train, &valid}) {
    EXPECT_TRUE(std::is_sorted(part->labels.begin(), part->labels.end()));
    EXPECT_EQ(part->channels, 1);
    EXPECT_EQ(part->classes, 1000);
    for (int i = 0; i < part->count; ++i) {
      const int id = part->labels[std::size_t(i)];
      ++seen[std::size_t(id)];
      EXPECT_EQ(0, std::memcmp(part->images.data() + std::size_t(i) * 9, full.images.data() + std::size_t(id) * 9, 9));
    }
  }
  for (int i = 0; i < 1000; ++i) ASSERT_EQ(seen[std::size_t(i)], 1) << "image " << i;

  Dataset train2, valid2, train3, valid3;
  split_train_valid(full, 100, 7, &train2, &valid2);
  EXPECT_EQ(valid2.labels, valid.labels);
  EXPECT_EQ(train2.labels, train.labels);
  split_train_valid(full, 100, 8, &train3, &valid3);
  EXPECT_NE(valid3.labels, valid.labels);
  // Held out at random, not the first or last images.
  EXPECT_LT(valid.labels.front(), 100);
  EXPECT_GT(valid.labels.back(), 900);
}

TEST(DataPipelineSplit, ZeroValidationAndTooManyIsAnError) {
  const Dataset full = make_set(50, 1, 2, 2);
  Dataset train, valid;
  split_train_valid(full, 0, 3, &train, &valid);
  EXPECT_EQ(train.count, 50);
  EXPECT_EQ(valid.count, 0);
  EXPECT_EQ(train.images, full.images);
  EXPECT_NE(error_of([&] { split_train_valid(full, 50, 3, &train, &valid); }).find("n_valid = 50"), std::string::npos);
  EXPECT_NE(error_of([&] { split_train_valid(full, -1, 3, &train, &valid); }).find("n_valid = -1"), std::string::npos);
}

TEST(DataPipelineSplit, PermutationKeying) {
  // n = 2: one Fisher-Yates step, position 1 swaps with j = word 1 % 2: a swap when j = 0.
  for (std::uint64_t seed = 0; seed < 8; ++seed) {
    const bool swap = philox_uint32(seed, RngStream::Shuffle, 9, 4, 0, 1) % 2 == 0;
    EXPECT_EQ(philox_permutation(2, seed, 9, 4), (swap ? std::vector<std::int32_t>{1, 0} : std::vector<std::int32_t>{0, 1}));
  }
  std::vector<std::int32_t> p = philox_permutation(1000, 5, 0, 0);
  std::vector<std::int32_t> sorted = p;
  std::sort(sorted.begin(), sorted.end());
  for (int i = 0; i < 1000; ++i) ASSERT_EQ(sorted[std::size_t(i)], i);
  EXPECT_NE(p, philox_permutation(1000, 5, 1, 0));  // another epoch
  EXPECT_NE(p, philox_permutation(1000, 5, 0, 1));  // another stream
}

// ---- batches ------------------------------------------------------------------------------------

TEST(DataPipelineBatch, PureFunctionOfIteration) {
  const Dataset d = make_set(100, 3, 6, 5);
  const AugmentSpec spec{true, true, 2, 0.03f};
  const BatchStream a(d, 16, spec, 42, 0), b(d, 16, spec, 42, 0);
  ASSERT_EQ(a.batches_per_epoch(), 6);
  // In order from one object; in reverse (every call a different epoch than the last) from the
  // other; then again from the first after its cache moved on.
  std::vector<Host> forward;
  for (std::uint64_t it = 0; it < 20; ++it) forward.push_back(batch_of(a, it));
  for (std::uint64_t it = 20; it-- > 0;) {
    const Host h = batch_of(b, it);
    ASSERT_TRUE(same_bits(h.x, forward[it].x)) << "iteration " << it;
    ASSERT_EQ(h.y, forward[it].y) << "iteration " << it;
  }
  for (std::uint64_t it : {3u, 17u, 0u, 11u}) {
    const Host h = batch_of(a, it);
    EXPECT_TRUE(same_bits(h.x, forward[it].x)) << "iteration " << it;
  }
  // And from two threads at once (the prefetcher's situation).
  std::vector<Host> t1(20), t2(20);
  std::thread th([&] {
    for (std::uint64_t it = 0; it < 20; ++it) t1[it] = batch_of(a, it);
  });
  for (std::uint64_t it = 20; it-- > 0;) t2[it] = batch_of(a, it);
  th.join();
  for (std::uint64_t it = 0; it < 20; ++it) {
    EXPECT_TRUE(same_bits(t1[it].x, forward[it].x) && same_bits(t2[it].x, forward[it].x)) << it;
  }
  // A different seed gives different batches.
  const BatchStream c(d, 16, spec, 43, 0);
  EXPECT_NE(batch_of(c, 0).y, forward[0].y);
}

TEST(DataPipelineBatch, StreamIdsGiveDifferentOrders) {
  const Dataset d = make_set(200, 1, 2, 2);
  const AugmentSpec spec{false, false, 0, 0.0f};
  const BatchStream s0(d, 50, spec, 1, 0), s1(d, 50, spec, 1, 1);
  EXPECT_NE(batch_of(s0, 0).y, batch_of(s1, 0).y);
  EXPECT_NE(batch_of(s0, 2).y, batch_of(s1, 2).y);
}

TEST(DataPipelineBatch, EveryImageOncePerEpoch) {
  const Dataset d = make_set(100, 1, 2, 2);
  const BatchStream s(d, 16, AugmentSpec{false, false, 0, 0.0f}, 9, 3);
  ASSERT_EQ(s.batches_per_epoch(), 6);  // 100 / 16: the last 4 images of each epoch's order dropped
  std::vector<std::int32_t> epoch_labels[2];
  for (int e = 0; e < 2; ++e) {
    for (int j = 0; j < 6; ++j) {
      const Host h = batch_of(s, std::uint64_t(e * 6 + j));
      epoch_labels[e].insert(epoch_labels[e].end(), h.y.begin(), h.y.end());
    }
    const std::set<std::int32_t> distinct(epoch_labels[e].begin(), epoch_labels[e].end());
    EXPECT_EQ(distinct.size(), 96u) << "epoch " << e;
    // The batches are the epoch's order, consecutively.
    const auto order = s.epoch_order(std::uint64_t(e));
    EXPECT_TRUE(std::equal(epoch_labels[e].begin(), epoch_labels[e].end(), order->begin()));
  }
  EXPECT_NE(epoch_labels[0], epoch_labels[1]);  // reshuffled every epoch
}

TEST(DataPipelineBatch, ScalingEndpoints) {
  EXPECT_EQ(scale_pixel(0), -1.0f);
  EXPECT_EQ(scale_pixel(255), 1.0f);
  EXPECT_NEAR(scale_pixel(51), 51.0 / 255.0 * 2.0 - 1.0, 1e-7);
  EXPECT_NEAR(scale_pixel(128), 0.00392157, 1e-7);
  for (int v = 1; v < 256; ++v) ASSERT_GT(scale_pixel(std::uint8_t(v)), scale_pixel(std::uint8_t(v - 1)));
}

TEST(DataPipelineBatch, NoAugmentationNoNoiseIsTheScaledImage) {
  Dataset d = make_set(40, 3, 4, 5);
  d.images[0] = 0;
  d.images[1] = 255;
  const BatchStream s(d, 8, AugmentSpec{false, true, 4, 0.0f}, 5, 0);
  const std::size_t n = image_size(d);
  for (std::uint64_t it = 0; it < 5; ++it) {
    const Host h = batch_of(s, it);
    for (int b = 0; b < 8; ++b) {
      const std::size_t id = std::size_t(h.y[std::size_t(b)]);
      for (std::size_t e = 0; e < n; ++e)
        ASSERT_EQ(h.x[std::size_t(b) * n + e], scale_pixel(d.images[id * n + e])) << "image " << id << " element " << e;
    }
  }
}

TEST(DataPipelineBatch, InvalidConfigurations) {
  const Dataset d = make_set(10, 1, 4, 4);
  EXPECT_NE(error_of([&] { BatchStream(d, 11, AugmentSpec{}, 0, 0); }).find("fewer than one batch of 11"),
            std::string::npos);
  EXPECT_NE(error_of([&] { BatchStream(d, 2, AugmentSpec{true, true, 4, 0.0f}, 0, 0); }).find("padding 4"),
            std::string::npos);
  EXPECT_THROW(BatchStream(d, 0, AugmentSpec{}, 0, 0), Error);
  EXPECT_THROW(BatchStream(d, 2, AugmentSpec{false, false, 0, -1.0f}, 0, 0), Error);
}

// ---- augmentation by hand ----------------------------------------------------------------------

namespace {

// A 1x4x4 image with value 10 * row + column (all distinct), one image per batch.
Dataset tiny_image() {
  Dataset d = make_set(1, 1, 4, 4);
  for (int h = 0; h < 4; ++h)
    for (int w = 0; w < 4; ++w) d.images[std::size_t(h * 4 + w)] = static_cast<std::uint8_t>(10 * h + w);
  return d;
}

// The first iteration whose Augment words give (row offset, column offset, flip bit) with pad 2.
std::uint64_t find_iteration(std::uint64_t seed, std::uint32_t stream, int oy, int ox, int flip) {
  for (std::uint32_t it = 0; it < 100000; ++it) {
    const Philox4 w = philox_block(seed, RngStream::Augment, it, stream, 0, 0);
    if (int(w.v[0] % 5) == oy && int(w.v[1] % 5) == ox && int(w.v[2] & 1u) == flip) return it;
  }
  ADD_FAILURE() << "no iteration with offsets " << oy << "," << ox << " flip " << flip;
  return 0;
}

void expect_pixels(const Host& h, const int (&expected)[4][4], const char* what) {
  for (int r = 0; r < 4; ++r)
    for (int c = 0; c < 4; ++c)
      EXPECT_EQ(h.x[std::size_t(r * 4 + c)], scale_pixel(std::uint8_t(expected[r][c])))
          << what << ": pixel (" << r << ", " << c << ")";
}

}  // namespace

TEST(DataPipelineAugment, ReflectPadCropAndFlipByHand) {
  const Dataset d = tiny_image();
  const std::uint64_t seed = 11;
  const BatchStream s(d, 1, AugmentSpec{true, true, 2, 0.0f}, seed, 2);
  // Rows of the image padded by 2 with reflection (edge not repeated), indices -2..5:
  //   row 2, row 1 | rows 0 1 2 3 | row 2, row 1; the same for the columns.
  // Offset (0, 0): padded rows/cols 0..3 = image rows/cols 2, 1, 0, 1.
  const int top_left[4][4] = {{22, 21, 20, 21}, {12, 11, 10, 11}, {2, 1, 0, 1}, {12, 11, 10, 11}};
  expect_pixels(batch_of(s, find_iteration(seed, 2, 0, 0, 0)), top_left, "offset (0, 0)");
  // Offset (4, 4): padded 4..7 = image 2, 3, 2, 1.
  const int bottom_right[4][4] = {{22, 23, 22, 21}, {32, 33, 32, 31}, {22, 23, 22, 21}, {12, 13, 12, 11}};
  expect_pixels(batch_of(s, find_iteration(seed, 2, 4, 4, 0)), bottom_right, "offset (4, 4)");
  // Offset (2, 2): the image itself.
  const int centre[4][4] = {{0, 1, 2, 3}, {10, 11, 12, 13}, {20, 21, 22, 23}, {30, 31, 32, 33}};
  expect_pixels(batch_of(s, find_iteration(seed, 2, 2, 2, 0)), centre, "offset (2, 2)");
  // Offset (1, 3), flipped: rows 1, 0, 1, 2; columns 1, 2, 3, 2, then mirrored -> 2, 3, 2, 1.
  const int flipped[4][4] = {{12, 13, 12, 11}, {2, 3, 2, 1}, {12, 13, 12, 11}, {22, 23, 22, 21}};
  expect_pixels(batch_of(s, find_iteration(seed, 2, 1, 3, 1)), flipped, "offset (1, 3) flipped");
}

TEST(DataPipelineAugment, FlipMirrorsAndCanBeOff) {
  const Dataset d = tiny_image();
  const int centre[4][4] = {{0, 1, 2, 3}, {10, 11, 12, 13}, {20, 21, 22, 23}, {30, 31, 32, 33}};
  const int mirrored[4][4] = {{3, 2, 1, 0}, {13, 12, 11, 10}, {23, 22, 21, 20}, {33, 32, 31, 30}};
  // pad 0: the crop is the image, only the flip acts.
  const BatchStream with(d, 1, AugmentSpec{true, true, 0, 0.0f}, 3, 0);
  const BatchStream without(d, 1, AugmentSpec{true, false, 0, 0.0f}, 3, 0);
  int flips = 0;
  for (std::uint32_t it = 0; it < 64; ++it) {
    const bool flip = philox_uint32(3, RngStream::Augment, it, 0, 0, 2) & 1u;
    flips += flip;
    expect_pixels(batch_of(with, it), flip ? mirrored : centre, "flip on");
    expect_pixels(batch_of(without, it), centre, "flip off");
  }
  EXPECT_GT(flips, 10);  // about half of 64 (the chance of <= 10 is below 1e-7)
  EXPECT_LT(flips, 54);
}

TEST(DataPipelineAugment, CropOffsetsCoverTheRange) {
  // Over many images every offset in [0, 2 pad] occurs: the random crop is not stuck.
  const Dataset d = tiny_image();
  std::set<int> rows, cols;
  for (std::uint32_t b = 0; b < 200; ++b) {
    const Philox4 w = philox_block(1, RngStream::Augment, 0, 0, b, 0);
    rows.insert(int(w.v[0] % 5));
    cols.insert(int(w.v[1] % 5));
  }
  EXPECT_EQ(rows.size(), 5u);
  EXPECT_EQ(cols.size(), 5u);
}

// ---- noise --------------------------------------------------------------------------------------

TEST(DataPipelineNoise, StandardDeviationAndKeying) {
  const Dataset d = make_set(64, 3, 32, 32);
  const float sigma = 0.03f;
  const BatchStream noisy(d, 64, AugmentSpec{false, false, 0, sigma}, 77, 1);
  const BatchStream clean(d, 64, AugmentSpec{false, false, 0, 0.0f}, 77, 1);
  const Host a = batch_of(noisy, 5), b = batch_of(clean, 5), c = batch_of(noisy, 6);
  ASSERT_EQ(a.y, b.y);
  // n = 196608 residuals. For Gaussian noise the sample std has relative standard error
  // 1/sqrt(2n) = 0.0016 and the mean has standard error sigma/sqrt(n) = 6.8e-5: 6-sigma bounds
  // are 1% and 4.1e-4, which a wrong sigma (or uniform noise, or noise added twice) misses.
  const std::size_t n = a.x.size();
  double sum = 0.0, sum2 = 0.0;
  for (std::size_t i = 0; i < n; ++i) {
    const double r = double(a.x[i]) - double(b.x[i]);
    sum += r;
    sum2 += r * r;
  }
  const double mean = sum / double(n);
  const double sd = std::sqrt(sum2 / double(n) - mean * mean);
  EXPECT_NEAR(sd / sigma, 1.0, 0.01);
  EXPECT_NEAR(mean, 0.0, 4.1e-4);
  // Keying: element e of batch position p is sigma * philox_normal(seed, DataNoise, it, stream, p, e).
  const std::size_t img = image_size(d);
  for (std::uint32_t p : {0u, 1u, 63u})
    for (std::uint32_t e : {0u, 1u, 2u, 3u, 4u, 1000u, 3071u}) {
      const float expected = sigma * philox_normal(77, RngStream::DataNoise, 5, 1, p, e);
      EXPECT_NEAR(a.x[p * img + e] - b.x[p * img + e], expected, 1e-6) << p << " " << e;
    }
  // Other iterations get other noise.
  const Host cc = batch_of(clean, 6);
  EXPECT_NE(a.x[0] - b.x[0], c.x[0] - cc.x[0]);
}

// ---- evaluation batches -----------------------------------------------------------------------

TEST(DataPipelineEval, InOrderDeterministicAndIndependentOfBatchSize) {
  const Dataset d = make_set(10, 1, 3, 3);
  const std::size_t n = image_size(d);
  std::vector<float> whole(10 * n), parts(10 * n), clean(10 * n);
  std::vector<std::int32_t> y(10), y2(10);
  make_eval_batch(d, 0, 10, 0.03f, 4, whole.data(), y.data());
  make_eval_batch(d, 0, 4, 0.03f, 4, parts.data(), y2.data());
  make_eval_batch(d, 4, 6, 0.03f, 4, parts.data() + 4 * n, y2.data() + 4);
  EXPECT_TRUE(same_bits(whole, parts));
  EXPECT_EQ(y, y2);
  for (int i = 0; i < 10; ++i) EXPECT_EQ(y[std::size_t(i)], i);
  make_eval_batch(d, 0, 10, 0.0f, 4, clean.data(), y2.data());
  for (std::size_t e = 0; e < 10 * n; ++e) ASSERT_EQ(clean[e], scale_pixel(d.images[e]));
  for (std::uint32_t idx : {0u, 7u})
    for (std::uint32_t e : {0u, 5u, 8u})
      EXPECT_NEAR(whole[idx * n + e] - clean[idx * n + e], 0.03f * philox_normal(4, RngStream::Eval, 0, 0, idx, e),
                  1e-6);
  EXPECT_NE(error_of([&] { make_eval_batch(d, 8, 3, 0.0f, 4, clean.data(), y2.data()); }).find("[8, 11)"),
            std::string::npos);
}

// ---- prefetcher ---------------------------------------------------------------------------------

TEST(DataPipelinePrefetch, YieldsTheBatchesOfMakeBatch) {
  const Dataset d = make_set(70, 3, 8, 8);
  const BatchStream data(d, 16, AugmentSpec{true, true, 2, 0.03f}, 21, 0);
  const BatchStream lab(d, 8, AugmentSpec{true, true, 2, 0.03f}, 21, 1);
  for (int depth : {1, 2, 3}) {
    Prefetcher pf({&data, &lab}, 5, depth);
    for (std::uint64_t it = 5; it < 25; ++it) {  // crosses epoch boundaries of both streams
      const Prefetcher::Batch& got = pf.next();
      ASSERT_EQ(got.iteration, it);
      ASSERT_EQ(got.x.size(), 2u);
      const Host want_data = batch_of(data, it), want_lab = batch_of(lab, it);
      ASSERT_TRUE(same_bits(got.x[0], want_data.x)) << "depth " << depth << " iteration " << it;
      ASSERT_EQ(got.y[0], want_data.y);
      ASSERT_TRUE(same_bits(got.x[1], want_lab.x)) << "depth " << depth << " iteration " << it;
      ASSERT_EQ(got.y[1], want_lab.y);
    }
  }
}

TEST(DataPipelinePrefetch, RethrowsWorkerErrors) {
  Prefetcher::Batch proto;
  proto.x.emplace_back(4);
  proto.y.emplace_back(1);
  Prefetcher pf(
      [](std::uint64_t it, Prefetcher::Batch& out) {
        if (it == 3) throw Error("broken batch 3");
        out.x[0][0] = float(it);
      },
      proto, 0, 2);
  for (std::uint64_t it = 0; it < 3; ++it) EXPECT_EQ(pf.next().x[0][0], float(it));
  EXPECT_NE(error_of([&] { pf.next(); }).find("broken batch 3"), std::string::npos);
  EXPECT_NE(error_of([&] { pf.next(); }).find("broken batch 3"), std::string::npos);  // and stays failed
}

TEST(DataPipelinePrefetch, ShutsDownCleanlyWhenDestroyedEarly) {
  // Destroyed with the worker blocked on a full ring, after a few batches, and right away.
  // Each destruction runs on a helper thread so that a hang fails the test instead of the run.
  const Dataset d = make_set(40, 1, 4, 4);
  const BatchStream s(d, 4, AugmentSpec{true, true, 2, 0.03f}, 1, 0);
  for (int taken : {0, 1, 5}) {
    auto pf = std::make_unique<Prefetcher>(std::vector<const BatchStream*>{&s}, 0, 2);
    for (int i = 0; i < taken; ++i) pf->next();
    if (taken == 0) std::this_thread::sleep_for(std::chrono::milliseconds(20));  // let the ring fill
    std::promise<void> done;
    std::future<void> f = done.get_future();
    std::thread destroyer([&] {
      pf.reset();
      done.set_value();
    });
    if (f.wait_for(std::chrono::seconds(10)) != std::future_status::ready) {
      ADD_FAILURE() << "Prefetcher destructor hangs (after " << taken << " batches)";
      std::_Exit(1);
    }
    destroyer.join();
  }
  // A fill that counts calls: the worker stops at depth batches ahead of the consumer.
  std::atomic<int> fills{0};
  Prefetcher::Batch proto;
  proto.x.emplace_back(1);
  proto.y.emplace_back(1);
  {
    Prefetcher pf([&](std::uint64_t, Prefetcher::Batch&) { ++fills; }, proto, 0, 3);
    pf.next();
    // Wait (bounded) for the worker to fill the ring, then give it time to overrun if it would.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (fills.load() < 3 && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    std::this_thread::sleep_for(std::chrono::milliseconds(30));
    EXPECT_EQ(fills.load(), 3);  // depth 3 = the batch held by the consumer + 2 ahead
  }
}

// ---- loading ------------------------------------------------------------------------------------

TEST(DataPipelineLoad, RealFashionMnist) {
  const std::string dir = "/usr/share/datasets/fashion-mnist";
  if (!std::filesystem::exists(dir + "/train-images-idx3-ubyte.gz"))
    GTEST_SKIP() << "Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)";
  const DataSplits s = load_splits("fashion-mnist", dir, 5000, 1);
  EXPECT_EQ(s.train.count, 55000);
  EXPECT_EQ(s.valid.count, 5000);
  EXPECT_EQ(s.test.count, 10000);
  EXPECT_EQ(s.train.channels, 1);
  EXPECT_EQ(s.train.height, 28);
  EXPECT_EQ(s.valid.width, 28);
  EXPECT_EQ(s.test.classes, 10);
  EXPECT_EQ(s.train.name, "fashion-mnist train");
  EXPECT_EQ(s.valid.name, "fashion-mnist valid");
  EXPECT_EQ(s.test.name, "fashion-mnist test");
  // Fashion-MNIST has 6000 training and 1000 test images per class: the split loses none.
  std::vector<int> per_class(10, 0), test_class(10, 0), valid_class(10, 0);
  for (std::int32_t l : s.train.labels) ++per_class[std::size_t(l)];
  for (std::int32_t l : s.valid.labels) ++per_class[std::size_t(l)], ++valid_class[std::size_t(l)];
  for (std::int32_t l : s.test.labels) ++test_class[std::size_t(l)];
  for (int k = 0; k < 10; ++k) {
    EXPECT_EQ(per_class[std::size_t(k)], 6000) << "class " << k;
    EXPECT_EQ(test_class[std::size_t(k)], 1000) << "class " << k;
    // A random 5000 holds about 500 of each class (binomial std 21).
    EXPECT_NEAR(valid_class[std::size_t(k)], 500, 130) << "class " << k;
  }
}

TEST(DataPipelineLoad, MissingFilesNameFileDirectoryAndSource) {
  const std::string dir = test::temp_dir("dp_missing");
  std::string msg = error_of([&] { load_splits("cifar10", dir, 10, 1); });
  EXPECT_NE(msg.find("data_batch_1.bin"), std::string::npos) << msg;
  EXPECT_NE(msg.find(dir), std::string::npos) << msg;
  EXPECT_NE(msg.find("https://www.cs.toronto.edu/~kriz/cifar.html"), std::string::npos) << msg;
  msg = error_of([&] { load_splits("cifar100", dir, 10, 1); });
  EXPECT_NE(msg.find("train.bin"), std::string::npos) << msg;
  msg = error_of([&] { load_splits("svhn", dir, 10, 1); });
  EXPECT_NE(msg.find("train_32x32.mat"), std::string::npos) << msg;
  EXPECT_NE(msg.find(dir), std::string::npos) << msg;
  msg = error_of([&] { load_splits("mnist", dir, 10, 1); });
  EXPECT_NE(msg.find("train-images-idx3-ubyte"), std::string::npos) << msg;
  msg = error_of([&] { load_splits("imagenet", dir, 10, 1); });
  EXPECT_NE(msg.find("unknown data set 'imagenet'"), std::string::npos) << msg;
  // A half-unpacked archive names the first missing batch.
  const std::filesystem::path sub = std::filesystem::path(dir) / "cifar-10-batches-bin";
  std::filesystem::create_directories(sub);
  std::ofstream(sub / "data_batch_1.bin") << "x";
  std::ofstream(sub / "data_batch_2.bin") << "x";
  msg = error_of([&] { load_splits("cifar10", dir, 10, 1); });
  EXPECT_NE(msg.find("data_batch_3.bin"), std::string::npos) << msg;
  EXPECT_NE(msg.find(sub.string()), std::string::npos) << msg;
  std::filesystem::remove_all(dir);
}

TEST(DataPipelineLoad, SmallCifar10InItsArchiveFolder) {
  // Six tiny CIFAR-10 files (two records each) under cifar-10-batches-bin/.
  const std::string dir = test::temp_dir("dp_cifar");
  const std::filesystem::path sub = std::filesystem::path(dir) / "cifar-10-batches-bin";
  std::filesystem::create_directories(sub);
  int record = 0;
  for (const char* name : {"data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin",
                           "data_batch_5.bin", "test_batch.bin"}) {
    std::ofstream f(sub / name, std::ios::binary);
    for (int r = 0; r < 2; ++r, ++record) {
      f.put(char(record % 10));
      for (int i = 0; i < 3072; ++i) f.put(char(record));
    }
  }
  const DataSplits s = load_splits("cifar10", dir, 3, 5);
  EXPECT_EQ(s.train.count, 7);
  EXPECT_EQ(s.valid.count, 3);
  EXPECT_EQ(s.test.count, 2);
  EXPECT_EQ(s.train.channels, 3);
  EXPECT_EQ(s.test.labels, (std::vector<std::int32_t>{0, 1}));  // records 10, 11
  EXPECT_EQ(s.test.images[0], 10);
  std::set<int> first_pixels;
  for (const Dataset* p : {&s.train, &s.valid})
    for (int i = 0; i < p->count; ++i) first_pixels.insert(p->images[std::size_t(i) * 3072]);
  EXPECT_EQ(first_pixels.size(), 10u);  // records 0..9, each once
  EXPECT_NE(error_of([&] { load_splits("cifar10", dir, 10, 5); }).find("n_valid = 10"), std::string::npos);
  std::filesystem::remove_all(dir);
}
