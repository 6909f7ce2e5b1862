// Training and evaluation batches: epoch order, reflect-pad + crop + flip, scaling, noise.
#include "jem/data_pipeline.hpp"

#include <algorithm>
#include <array>
#include <cmath>

#include "jem/error.hpp"
#include "jem/philox.hpp"

namespace jem {
namespace {

// All 256 scaled values, computed in double so that 0 -> -1 and 255 -> 1 exactly.
const std::array<float, 256>& scale_table() {
  static const std::array<float, 256> table = [] {
    std::array<float, 256> t{};
    for (int v = 0; v < 256; ++v) t[std::size_t(v)] = static_cast<float>(v / 255.0 * 2.0 - 1.0);
    return t;
  }();
  return table;
}

// Index into an image of size n seen through reflection padding, without repeating the edge
// pixel (torch.nn.ReflectionPad2d): -1 -> 1, n -> n - 2. Valid for i in [-(n-1), 2n-2].
int reflect(int i, int n) {
  if (i < 0) return -i;
  if (i >= n) return 2 * (n - 1) - i;
  return i;
}

// dst[c, h, w] = scaled src[c, reflect(h + oy - pad), reflect(w' + ox - pad)], with
// w' = W-1-w when flipped: the crop of the padded image at (oy, ox), then the mirror (the order
// of torchvision's RandomCrop followed by RandomHorizontalFlip).
void place_image(const std::uint8_t* src, int C, int H, int W, int pad, int oy, int ox, bool flip, float* dst) {
  const std::array<float, 256>& t = scale_table();
  for (int c = 0; c < C; ++c)
    for (int h = 0; h < H; ++h) {
      const std::uint8_t* row = src + (std::size_t(c) * H + std::size_t(reflect(h + oy - pad, H))) * W;
      float* out = dst + (std::size_t(c) * H + h) * W;
      for (int w = 0; w < W; ++w) out[w] = t[row[reflect((flip ? W - 1 - w : w) + ox - pad, W)]];
    }
}

// dst[e] += sigma * philox_normal(seed, s, iteration, step, sample, e) for e < n, four at a time
// (philox_normal4 gives the same values as four philox_normal calls).
void add_noise(float* dst, std::size_t n, float sigma, std::uint64_t seed, RngStream s, std::uint32_t iteration,
               std::uint32_t step, std::uint32_t sample) {
  for (std::size_t block = 0; 4 * block < n; ++block) {
    const Normal4 z = philox_normal4(seed, s, iteration, step, sample, static_cast<std::uint32_t>(block));
    for (std::size_t k = 0; k < 4 && 4 * block + k < n; ++k) dst[4 * block + k] += sigma * z.z[k];
  }
}

}  // namespace

float scale_pixel(std::uint8_t v) { return scale_table()[v]; }

BatchStream::BatchStream(const Dataset& data, int batch, AugmentSpec spec, std::uint64_t seed, std::uint32_t stream_id)
    : data_(&data), batch_(batch), batches_per_epoch_(0), spec_(spec), seed_(seed), stream_id_(stream_id) {
  JEM_CHECK(batch >= 1, data.name, ": batch size ", batch, " must be positive");
  JEM_CHECK(data.count >= batch, data.name, ": ", data.count, " images are fewer than one batch of ", batch);
  JEM_CHECK(data.images.size() == std::size_t(data.count) * image_size() && data.labels.size() == std::size_t(data.count),
            data.name, ": images / labels do not match count ", data.count, " and shape ", data.channels, "x",
            data.height, "x", data.width);
  JEM_CHECK(spec.pad >= 0 && (!spec.augment || (spec.pad < data.height && spec.pad < data.width)), data.name,
            ": reflection padding ", spec.pad, " must be in [0, min(height, width) = ",
            std::min(data.height, data.width), ")");
  JEM_CHECK(std::isfinite(spec.sigma) && spec.sigma >= 0.0f, data.name, ": noise sigma ", spec.sigma,
            " must be finite and >= 0");
  batches_per_epoch_ = data.count / batch;
}

std::size_t BatchStream::image_size() const {
  return std::size_t(data_->channels) * std::size_t(data_->height) * std::size_t(data_->width);
}

std::shared_ptr<const std::vector<std::int32_t>> BatchStream::epoch_order(std::uint64_t epoch) const {
  std::lock_guard<std::mutex> lock(cache_mutex_);
  for (int k = 0; k < 2; ++k)
    if (cached_order_[k] && cached_epoch_[k] == epoch) return cached_order_[k];
  // Computed under the lock: a second caller for the same epoch waits instead of shuffling too.
  // Callers keep their shared_ptr, so replacing the cache never pulls an order from under them.
  auto order = std::make_shared<const std::vector<std::int32_t>>(
      philox_permutation(data_->count, seed_, static_cast<std::uint32_t>(epoch), stream_id_));
  cached_epoch_[cache_next_] = epoch;
  cached_order_[cache_next_] = order;
  cache_next_ ^= 1;
  return order;
}

void BatchStream::make_batch(std::uint64_t iteration, float* x, std::int32_t* y) const {
  make_rows(iteration, 0, batch_, x, y);
}

void BatchStream::make_rows(std::uint64_t iteration, int first_row, int count, float* x, std::int32_t* y) const {
  JEM_CHECK(first_row >= 0 && count >= 0 && first_row + count <= batch_, data_->name, ": rows [", first_row, ", ",
            first_row + count, ") of a batch of ", batch_);
  const std::uint64_t epoch = iteration / std::uint64_t(batches_per_epoch_);
  const std::size_t first = std::size_t(iteration % std::uint64_t(batches_per_epoch_)) * std::size_t(batch_);
  const std::shared_ptr<const std::vector<std::int32_t>> order = epoch_order(epoch);
  const Dataset& d = *data_;
  const std::size_t image = image_size();
  const std::uint32_t it = static_cast<std::uint32_t>(iteration);  // Philox keeps 24 bits
  for (int b = first_row; b < first_row + count; ++b) {
    const std::size_t idx = std::size_t((*order)[first + std::size_t(b)]);
    int pad = 0, oy = 0, ox = 0;
    bool flip = false;
    if (spec_.augment) {
      // Row offset, column offset and flip bit are words 0, 1, 2 of one Philox block.
      const Philox4 w = philox_block(seed_, RngStream::Augment, it, stream_id_, std::uint32_t(b), 0);
      const std::uint32_t span = static_cast<std::uint32_t>(2 * spec_.pad + 1);
      pad = spec_.pad;
      oy = static_cast<int>(w.v[0] % span);
      ox = static_cast<int>(w.v[1] % span);
      flip = spec_.flip && (w.v[2] & 1u);
    }
    float* out = x + std::size_t(b - first_row) * image;
    place_image(d.images.data() + idx * image, d.channels, d.height, d.width, pad, oy, ox, flip, out);
    if (spec_.sigma != 0.0f)
      add_noise(out, image, spec_.sigma, seed_, RngStream::DataNoise, it, stream_id_, std::uint32_t(b));
    y[b - first_row] = d.labels[idx];
  }
}

void make_eval_batch(const Dataset& data, std::int64_t first, int count, float sigma, std::uint64_t seed, float* x,
                     std::int32_t* y) {
  JEM_CHECK(first >= 0 && count >= 0 && first + count <= data.count, data.name, ": images [", first, ", ",
            first + count, ") are outside [0, ", data.count, ")");
  const std::size_t image = std::size_t(data.channels) * data.height * data.width;
  for (int i = 0; i < count; ++i) {
    const std::size_t idx = std::size_t(first) + std::size_t(i);
    float* out = x + std::size_t(i) * image;
    place_image(data.images.data() + idx * image, data.channels, data.height, data.width, 0, 0, 0, false, out);
    // Keyed by the image index alone: the same test image gets the same noise whatever the
    // batch size or the order of evaluation.
    if (sigma != 0.0f) add_noise(out, image, sigma, seed, RngStream::Eval, 0, 0, static_cast<std::uint32_t>(idx));
    y[i] = data.labels[idx];
  }
}

}  // namespace jem
