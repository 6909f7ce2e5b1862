#include "jem/sampler.hpp"

#include <algorithm>
#include <cstdio>
#include <string>
#include <utility>

#include "jem/communicator.hpp"
#include "jem/philox.hpp"

namespace jem {

namespace {
// The iteration value reserved for the buffer's initial noise (real iterations stay below it
// for the first 16.7 M iterations; see philox.hpp).
constexpr std::uint32_t kInitIteration = 0xFFFFFF;
}  // namespace

ReplayBuffer::ReplayBuffer(Backend& backend, int size, int channels, int image_size, int n_classes)
    : backend_(backend), size_(size), n_classes_(n_classes) {
  JEM_CHECK(size >= 1, "replay buffer size ", size, " must be >= 1");
  JEM_CHECK(n_classes >= 1, "replay buffer: n_classes ", n_classes);
  data_ = backend_.empty(Shape{size, channels, image_size, image_size});
}

void ReplayBuffer::init_uniform(std::uint64_t seed) { init_range(seed, 0, size_, 0); }

void ReplayBuffer::init_uniform(std::uint64_t seed, const BufferShard& shard) {
  JEM_CHECK(shard.local_size() == size_ && shard.segments == n_classes_, "replay buffer of ", size_, " slots in ",
            n_classes_, " segments does not match its shard (", shard.local_size(), " slots in ", shard.segments,
            " segments)");
  const int n = shard.segment_rows();
  for (int y = 0; y < shard.segments; ++y)
    if (n > 0) init_range(seed, y * n, n, shard.global_row(y * n));
}

void ReplayBuffer::init_range(std::uint64_t seed, int first_slot, int count, int global_first) {
  // All slots marked for reinit: the gather op fills them from Philox. Done in chunks so the
  // index tensors stay small.
  const int chunk = std::min(count, 1024);
  const Tensor idx = backend_.empty(Shape{chunk}, DType::I32);
  const Tensor re = backend_.empty(Shape{chunk}, DType::I32);
  std::vector<std::int32_t> host_idx(std::size_t(chunk), 0), ones(std::size_t(chunk), 1);
  for (int done = 0; done < count; done += chunk) {
    const int n = std::min(chunk, count - done);
    const Tensor out = data_.slice(first_slot + done, first_slot + done + n);
    const Tensor idx_n = idx.slice(0, n), re_n = re.slice(0, n);
    backend_.upload_i32(host_idx.data(), idx_n);
    backend_.upload_i32(ones.data(), re_n);
    backend_.buffer_gather(data_, idx_n, re_n, out,
                           NoiseKey{seed, kInitIteration, 0, std::uint32_t(global_first + done)});
  }
}

int BufferShard::segment_rows() const { return split_rows(global_size / segments, world, rank).size(); }

int BufferShard::global_row(int local_row) const {
  const int n = segment_rows();
  JEM_CHECK(local_row >= 0 && local_row < segments * n, "buffer shard: local slot ", local_row, " outside [0, ",
            segments * n, ")");
  const int seg = global_size / segments;
  return (local_row / n) * seg + split_rows(seg, world, rank).begin + local_row % n;
}

BufferShard make_buffer_shard(int global_size, int segments, int world, int rank) {
  JEM_CHECK(segments >= 1 && global_size >= segments && global_size % segments == 0, "replay buffer of ",
            global_size, " slots cannot be split into ", segments, " equal segments");
  JEM_CHECK(world >= 1 && rank >= 0 && rank < world, "buffer shard: rank ", rank, " of ", world);
  BufferShard s;
  s.global_size = global_size;
  s.segments = segments;
  s.world = world;
  s.rank = rank;
  return s;
}

void draw_slots(const ReplayBuffer& buffer, float reinit_freq, std::uint64_t seed,
                std::uint32_t iteration, std::uint32_t sample_base, int count,
                const std::int32_t* labels, BufferDraw& d) {
  JEM_CHECK(count <= buffer.size(), "cannot draw ", count, " distinct slots from a buffer of ",
            buffer.size());
  const int seg = buffer.segment_size();
  if (labels) JEM_CHECK(count <= seg, "cannot draw ", count, " distinct slots from a segment of ", seg);
  d.slots.resize(std::size_t(count));  // no allocation once the vectors have grown
  d.reinit.resize(std::size_t(count));
  for (int b = 0; b < count; ++b) {
    const std::uint32_t sample = sample_base + std::uint32_t(b);
    // Redraw on a collision (step = attempt): slots must be distinct so that the write-back is
    // well defined on every backend. Collisions are rare (B << buffer size), so this is cheap.
    for (std::uint32_t attempt = 0;; ++attempt) {
      const std::uint32_t u = philox_uint32(seed, RngStream::BufferDraw, iteration, attempt, sample, 0);
      std::int32_t slot;
      if (labels) {
        JEM_CHECK(labels[b] >= 0 && labels[b] < buffer.n_classes(), "draw_slots: label ",
                  labels[b], " outside [0, ", buffer.n_classes(), ")");
        slot = labels[b] * seg + std::int32_t(u % std::uint32_t(seg));
      } else {
        slot = std::int32_t(u % std::uint32_t(buffer.size()));
      }
      // A linear scan: B is small (64), and it needs no allocation.
      if (std::find(d.slots.begin(), d.slots.begin() + b, slot) == d.slots.begin() + b) {
        d.slots[std::size_t(b)] = slot;
        break;
      }
    }
    d.reinit[std::size_t(b)] =
        philox_uniform(seed, RngStream::BufferDraw, iteration, 0, sample, 1) < reinit_freq ? 1 : 0;
  }
}

SgldSampler::SgldSampler(Backend& backend, WideResNet& model, const SamplerConfig& config,
                         int max_batch)
    : backend_(backend), model_(model), config_(config), max_batch_(max_batch) {
  JEM_CHECK(max_batch >= 1 && max_batch <= model.max_batch(), "sampler batch ", max_batch,
            " must be in [1, model max batch ", model.max_batch(), "]");
  const auto& m = model.config();
  const Shape xs{max_batch, m.in_channels, m.image_size, m.image_size};
  x_ = backend_.empty(xs);
  grad_ = backend_.empty(xs);
  energy_ = backend_.empty(Shape{max_batch});
  dlogits_ = backend_.empty(Shape{max_batch, m.n_classes});
  slots_ = backend_.empty(Shape{max_batch}, DType::I32);
  reinit_ = backend_.empty(Shape{max_batch}, DType::I32);
  labels_ = backend_.empty(Shape{max_batch}, DType::I32);
}

void SgldSampler::run_chains(const Tensor& x, const Tensor& labels_dev, std::uint64_t seed,
                             std::uint32_t iteration, std::uint32_t sample_base, int steps) {
  const int B = int(x.dim(0));
  JEM_CHECK(B <= max_batch_, "sampler: ", B, " chains, at most ", max_batch_);
  const NoiseKey key{seed, iteration, 0, sample_base};
  if (!backend_.can_capture() || !graph_failure_.empty() || steps < 1) {
    run_steps(x, labels_dev, key, steps);
    return;
  }
  const ChainShape shape{x.data<float>(), B, labels_dev.defined() ? labels_dev.data<std::int32_t>() : nullptr,
                         steps};
  auto known = std::find_if(graphs_.begin(), graphs_.end(), [&](const ChainGraph& g) { return g.shape == shape; });
  if (known != graphs_.end() && known->ops) {
    if (backend_.launch(*known->ops, key)) return;
    // The capture went stale (a larger shape moved a scratch buffer): run directly, capture anew
    // at the next run.
    known->ops.reset();
    run_steps(x, labels_dev, key, steps);
    return;
  }
  if (known != graphs_.end()) {
    // The second run of these chains: everything the first use of a shape does once (cuDNN's
    // algorithm search, scratch buffers growing) is done, so the steps can be captured.
    std::string why;
    known->ops = backend_.capture(key, [&] { run_steps(x, labels_dev, key, steps); }, &why);
    if (known->ops && backend_.launch(*known->ops, key)) return;
    if (known->ops) {  // cannot happen (nothing ran between capture and launch); run directly
      known->ops.reset();
      run_steps(x, labels_dev, key, steps);
      return;
    }
    graph_failure_ = why.empty() ? std::string("capture failed") : why;
    graphs_.clear();
    std::fprintf(stderr, "jem: the SGLD chains run without CUDA Graphs from now on: %s\n",
                 graph_failure_.c_str());
  } else {
    // A new shape: remembered (the oldest forgotten when kChainGraphs are known), run directly.
    if (graphs_.size() == kChainGraphs) graphs_.erase(graphs_.begin());
    graphs_.push_back(ChainGraph{shape, nullptr});
  }
  run_steps(x, labels_dev, key, steps);
}

void SgldSampler::run_steps(const Tensor& x, const Tensor& labels_dev, const NoiseKey& key,
                            int steps) {
  const int B = int(x.dim(0));
  const Tensor grad = grad_.slice(0, B), energy = energy_.slice(0, B), dl = dlogits_.slice(0, B);
  // Only x changes in the chains: the backend may reuse what it derives from the weights.
  const ConstantWeights fixed(backend_, model_.param_buffer());
  for (int t = 0; t < steps; ++t) {
    const Tensor logits = model_.forward(x);  // [B, classes]
    // d(sum_b E_b)/dlogits: each chain moves on its own energy.
    if (labels_dev.defined()) backend_.class_energy_forward_backward(logits, labels_dev, energy, dl, 1.0f);
    else backend_.energy_forward_backward(logits, energy, dl, 1.0f);
    model_.backward_input(dl, grad);  // dE/dx, no weight-gradient work
    backend_.sgld_step(x, grad, config_.step_size, config_.noise_std, config_.clamp,
                       NoiseKey{key.seed, key.iteration, std::uint32_t(t), key.sample_base});
  }
}

Tensor SgldSampler::sample(ReplayBuffer& buffer, std::uint64_t seed, std::uint32_t iteration,
                           std::uint32_t sample_base, int count, const std::int32_t* labels) {
  JEM_CHECK(count >= 1 && count <= max_batch_, "sampler: ", count, " chains, at most ", max_batch_);
  BufferDraw& d = draw_;
  draw_slots(buffer, config_.reinit_freq, seed, iteration, sample_base, count, labels, d);
  const Tensor slots = slots_.slice(0, count), reinit = reinit_.slice(0, count);
  backend_.upload_i32(d.slots.data(), slots);
  backend_.upload_i32(d.reinit.data(), reinit);
  Tensor x = x_.slice(0, count);  // not const: returned by move
  backend_.buffer_gather(buffer.data(), slots, reinit, x, NoiseKey{seed, iteration, 0, sample_base});
  Tensor labels_dev;
  if (labels) {
    labels_dev = labels_.slice(0, count);
    backend_.upload_i32(labels, labels_dev);
  }
  run_chains(x, labels_dev, seed, iteration, sample_base, config_.steps);
  backend_.buffer_scatter(x, slots, buffer.data());
  return x;
}

}  // namespace jem
