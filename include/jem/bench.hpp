// `jem bench`: times the real JEM training iteration of a configuration on
// synthetic data.
//
// The iteration is built from the trainer's own components (WideResNet,
// ReplayBuffer, SgldSampler, JemObjective, Optimizer, configured by
// train_components.hpp) and runs the trainer's sequence of calls:
//   sgld       draw from the replay buffer, sgld_steps x (forward + input-only
//   backward), write
//              back, copy x_q into the objective's batch (and the conditional
//              chains if w_pxy)
//   step       upload x_lab, labels and x_data, then the objective's forward +
//   full backward over
//              all rows and its statistics
//   optimizer  the gradient norm (the divergence guard's input) and the
//   optimizer's update
// with backend.synchronize() at every phase boundary, so each phase's time is
// its own on a GPU too. The data is synthetic (uniform [-1, 1) images of the
// dataset's shape, labels b mod K), so no dataset file is needed. Warm-up
// iterations (cuDNN algorithm search, first touch of memory) are run first and
// not timed.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "jem/backend.hpp"
#include "jem/flops.hpp"
#include "jem/train_config.hpp"

namespace jem {

// Images of a dataset: channels, side, classes. Throws for an unknown name.
struct DatasetShape {
  int channels = 0, image_size = 0, classes = 0;
};
DatasetShape dataset_shape(const std::string &dataset);

struct BenchOptions {
  int iterations = 10; // timed
  int warmup = 2;      // untimed, before the timed ones
};

struct PhaseTimes { // milliseconds, one entry per timed iteration
  std::vector<double> sgld, step, optimizer, total;
};

struct BenchResult {
  std::string model;   // "WRN-10-1, 1x28x28, 10 classes"
  std::string backend; // Backend::name()
  std::int64_t params = 0;
  int batch = 0, px_batch = 0, sgld_chains = 0, sgld_steps = 0, rows = 0;
  PhaseTimes ms;
  double flops_sgld = 0, flops_step = 0; // per iteration, see flops.hpp
  double peak_device_flops = 0;        // 0: unknown (every CPU, unlisted GPUs)
  IterationTraffic traffic;            // the elementwise passes' bytes (flops.hpp)
  double peak_device_bandwidth = 0;    // bytes/s; 0: unknown
  std::int64_t peak_memory_bytes = -1; // Backend::peak_memory_bytes()
  // Backend::device_memory_used_bytes() after the timed iterations (-1: not a device backend):
  // what the whole process holds on the GPU, context and libraries included.
  std::int64_t device_memory_used_bytes = -1;
  // Backend allocations made during the timed iterations (Backend::memory_counters): 0 when the
  // iteration allocates nothing after warm-up, as it must.
  std::int64_t timed_allocations = 0;
  // Backend::graph_launches() during the timed iterations: the SGLD chains captured in CUDA
  // Graphs launch one per chain batch per iteration (JEM_CUDA_GRAPHS=1); 0 when they run op by op.
  std::int64_t timed_graph_launches = 0;
  // Backend::fused_conv_calls() during the timed iterations (not those a graph launch replays),
  // and how many there would be if every call that can fuse did (fused_calls_if_all_fused).
  // When the two agree, `traffic` counts the forward passes as fused (flops.hpp, fused_forward).
  std::int64_t timed_fused_conv_calls = 0;
  std::int64_t fused_conv_calls_if_all_fused = 0;
};

// The conv2d_forward_leaky_relu calls that fuse when every one can (conv1 and conv2 of each
// block; not the stem) in `iterations` timed iterations of `chain_batches` batches of SGLD chains
// of `sgld_steps` steps and one training forward each, less those replayed by `graph_launches`
// CUDA Graph launches (one chain batch each), which the backend does not count.
std::int64_t fused_calls_if_all_fused(const WrnConfig &cfg, int sgld_steps, int chain_batches,
                                      int iterations, std::int64_t graph_launches);

// Builds the components on `backend` and times `opt.iterations` iterations
// after `opt.warmup`. Validates `cfg` (a bad key value throws naming it).
// cfg.out, the data and schedule keys are not used.
BenchResult run_bench(Backend &backend, const TrainConfig &cfg,
                      const BenchOptions &opt);

// The least time jem's elementwise kernels can take per iteration at the device's peak
// bandwidth (r.traffic.custom / r.peak_device_bandwidth), in ms; 0 when the bandwidth is unknown.
double custom_kernels_floor_ms(const BenchResult &r);

double median(std::vector<double> v);
double mean(const std::vector<double> &v);

// The result as one JSON object (see README "jem bench" for the fields).
std::string bench_json(const BenchResult &r, const TrainConfig &cfg,
                       const BenchOptions &opt);
// A few human-readable lines.
std::string bench_report(const BenchResult &r);

} // namespace jem
