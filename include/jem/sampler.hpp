// The replay buffer and the SGLD sampler of JEM (persistent contrastive divergence).
//
// Each iteration draws B buffer slots, replaces each with fresh U[-1, 1) noise with probability
// reinit_freq, runs `steps` Langevin steps  x <- x - a dE/dx + s N(0, I)  (E the marginal energy
// -logsumexp(logits), or E(x, y) = -logits[y] for class-conditional chains), and writes the
// samples back into the same slots. Every random choice comes from Philox keyed by
// (seed, iteration, global sample index), so a run's samples do not depend on the backend, the
// thread count or how the batch is split across ranks.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "jem/backend.hpp"
#include "jem/wide_resnet.hpp"

namespace jem {

struct SamplerConfig {
  int buffer_size = 10000;
  float reinit_freq = 0.05f;
  int steps = 20;
  float step_size = 1.0f;
  float noise_std = 0.01f;
  bool clamp = false;
  int n_classes = 10;  // the buffer is split into this many equal segments for conditional draws
};

// Which slots of the GLOBAL replay buffer [S, C, H, W] one rank owns under data parallelism.
// The buffer is `segments` equal class segments (1 when unsegmented); every segment is split
// evenly (split_rows) over the ranks, and a rank's local buffer is its part of segment 0, then of
// segment 1, ...: again `segments` equal segments, so conditional draws work on the shard as on
// the whole buffer. Every global slot belongs to exactly one rank. World 1: local = global.
struct BufferShard {
  int global_size = 0;  // S, a multiple of segments
  int segments = 1;
  int world = 1, rank = 0;

  int segment_rows() const;  // rows of each segment owned here
  int local_size() const { return segments * segment_rows(); }
  int global_row(int local_row) const;
};
// Checks S % segments == 0 and the ranges (a one-line error naming the values).
BufferShard make_buffer_shard(int global_size, int segments, int world, int rank);

class ReplayBuffer {
 public:
  // `size` slots of [channels, image_size, image_size] on the backend.
  ReplayBuffer(Backend& backend, int size, int channels, int image_size, int n_classes);

  // Every slot U[-1, 1) from Philox (stream BufferReinit, iteration 0xFFFFFF reserved for this).
  void init_uniform(std::uint64_t seed);
  // The same for a shard: local slot i gets the noise of global slot shard.global_row(i), so the
  // global buffer starts out the same whatever the world size.
  void init_uniform(std::uint64_t seed, const BufferShard& shard);
  const Tensor& data() const { return data_; }  // [size, C, H, W]
  int size() const { return size_; }
  int n_classes() const { return n_classes_; }
  // Slots [y * size/K, (y+1) * size/K) hold class y's chains.
  int segment_size() const { return size_ / n_classes_; }

 private:
  // Local slots [first, first + count) from the noise of global slots [global_first, ...).
  void init_range(std::uint64_t seed, int first, int count, int global_first);

  Backend& backend_;
  int size_, n_classes_;
  Tensor data_;
};

// The slots and reinit decisions of one iteration's draw, computed on the host from Philox.
struct BufferDraw {
  std::vector<std::int32_t> slots;   // distinct
  std::vector<std::int32_t> reinit;  // 0/1
};
// Draws `count` distinct slots for global samples sample_base .. sample_base + count - 1.
// labels == nullptr: uniform over the buffer; else sample b's slot is in segment labels[b].
void draw_slots(const ReplayBuffer& buffer, float reinit_freq, std::uint64_t seed,
                std::uint32_t iteration, std::uint32_t sample_base, int count,
                const std::int32_t* labels, BufferDraw& out);

class SgldSampler {
 public:
  // Scratch for up to `max_batch` chains is allocated here, once.
  SgldSampler(Backend& backend, WideResNet& model, const SamplerConfig& config, int max_batch);

  const SamplerConfig& config() const { return config_; }

  // Runs one iteration's chains and writes them back. labels (host, [count]) selects
  // class-conditional chains; nullptr for the marginal energy. Returns x_q [count, C, H, W], a
  // view valid until the next call. Mean energy of the final samples is left in last_energy().
  Tensor sample(ReplayBuffer& buffer, std::uint64_t seed, std::uint32_t iteration,
                std::uint32_t sample_base, int count, const std::int32_t* labels);

  // Runs `steps` Langevin steps on x in place, from fresh or given starting points (jem sample,
  // evaluation). `labels_dev` (I32 on the backend, or undefined) selects conditional chains.
  // On a backend that can_capture() (CUDA Graphs), the second run of the same chains (the same
  // x, batch, labels tensor and step count) is captured, and later runs launch the capture: the
  // same ops with the same results, issued in one call. The first run of a shape runs directly,
  // as does every run after a capture failed (reported once on stderr, and by
  // graph_failure()). The captures of the last 4 shapes are kept; one that went stale (a
  // larger shape, an evaluation batch, moved the backend's scratch memory) is run directly
  // once and captured again.
  void run_chains(const Tensor& x, const Tensor& labels_dev, std::uint64_t seed,
                  std::uint32_t iteration, std::uint32_t sample_base, int steps);

  // Why the chains stopped using CUDA Graphs; empty while they use them (or never tried).
  const std::string& graph_failure() const { return graph_failure_; }

 private:
  // The chains a capture is valid for: their tensors and step count.
  struct ChainShape {
    const float* x = nullptr;
    int batch = 0;
    const std::int32_t* labels = nullptr;
    int steps = 0;
    bool operator==(const ChainShape&) const = default;
  };
  // The Langevin steps themselves, issued op by op (key.step is ignored: step t uses t).
  void run_steps(const Tensor& x, const Tensor& labels_dev, const NoiseKey& key, int steps);

  Backend& backend_;
  WideResNet& model_;
  SamplerConfig config_;
  int max_batch_;
  Tensor x_, grad_, energy_, dlogits_, slots_, reinit_, labels_;
  BufferDraw draw_;
  // CUDA Graphs: the chains seen last (a training iteration may run two kinds, marginal and
  // class-conditional), each with its capture once it has one (a capture follows a direct run of
  // the same chains), and why capture stopped.
  struct ChainGraph {
    ChainShape shape;
    std::unique_ptr<CapturedOps> ops;
  };
  static constexpr std::size_t kChainGraphs = 4;
  std::vector<ChainGraph> graphs_;
  std::string graph_failure_;
};

}  // namespace jem
