// The JEM training loop (`jem train`): data, sampler, objective, optimizer, evaluation,
// metrics, sample grids, checkpoints, resume and the divergence guard.
//
// Files of a run directory:
//   config.toml            the resolved configuration (written before the first iteration)
//   metrics.jsonl          one JSON object per log_every iterations, and one per evaluation
//   log.txt                what the run printed
//   samples/*.png          grids of x_q every sample_every iterations, and at the end
//   checkpoints/*.safetensors  the last keep_ckpts checkpoints (see checkpoint.hpp)
//   summary.json           the final accuracies and timings
// With several ranks, rank 0 writes all of them; a checkpoint holds every rank's buffer shard.
#pragma once

#include <csignal>
#include <cstdint>
#include <string>

#include "jem/backend.hpp"
#include "jem/train_config.hpp"

namespace jem {

class Communicator;

struct TrainOptions {
  // Data parallelism (see communicator.hpp): every rank calls train() with the same config; each
  // computes its rows of every global batch and runs SGLD on its shard of the replay buffer,
  // the gradient is all-reduced, rank 0 alone writes the run directory. nullptr: one process.
  Communicator* comm = nullptr;
  bool resume = false;  // continue the run in cfg.out from its newest readable checkpoint
  bool quiet = false;   // no stderr output (tests)
  // Set asynchronously (SIGINT/SIGTERM): the loop saves a checkpoint and returns.
  const volatile std::sig_atomic_t* stop_flag = nullptr;
  // Testing hook: pretend the loss is NaN at this iteration (once), to exercise the guard.
  std::int64_t inject_nan_at = -1;
};

struct TrainResult {
  std::int64_t iterations = 0;  // completed, in total (including a resumed run's earlier ones)
  double seconds = 0;           // wall time of this invocation
  double iterations_per_second = 0;
  double valid_accuracy = -1, test_accuracy = -1;  // -1: not evaluated
  int rollbacks = 0;
  double peak_abs_energy = 0;   // largest max |E| over the kept iterations of this invocation
  bool stopped_early = false;   // signal or max_minutes
  // The memory plan: backend memory held when the loop starts (parameters, gradients, optimizer
  // state, replay buffer, activations; see Backend::memory_counters), and the allocations made
  // inside this invocation's iterations after its first (which may grow scratch buffers and
  // cuDNN's workspace). Outputs between iterations (evaluation, samples) are not counted.
  std::int64_t startup_bytes = 0;
  std::int64_t iteration_allocations = 0;  // 0 by design
};

// Trains as configured, on `backend` (the caller builds it from cfg.device and cfg.threads, see
// make_backend in runtime.hpp). Bad configs, data or run directories throw jem::Error before
// anything in the run directory is created or changed.
TrainResult train(Backend& backend, const TrainConfig& cfg, const TrainOptions& options);

}  // namespace jem
