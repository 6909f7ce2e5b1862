// A few full JEM iterations of a tiny model through train(), for comparing two backends (or two
// kernel variants of one): the same config and seed give both the same data order, buffer draws
// and Philox noise, so their runs differ only by floating-point rounding.
#pragma once

#include <string>
#include <vector>

#include "jem/backend.hpp"
#include "jem/trainer.hpp"

namespace jem::test {

struct ShortRun {
  TrainResult result;
  std::vector<float> params_at_start;         // the iteration-0 checkpoint's
  std::vector<double> loss, ce, e_data, e_q;  // per iteration (metrics.jsonl, log_every = 1)
  std::vector<float> params;                  // after the last iteration (its checkpoint)
  std::vector<float> replay_buffer;           // the SGLD samples written back, same checkpoint
};

// The config: WRN-10-1 on 8x8 synthetic digits (written into `root`/data once), batch 8 + 8
// chains x 3 SGLD steps, buffer of 100 with reinit 5%, SGD with momentum (continuous in the
// gradient, unlike Adam's first step, lr * sign(g)), every iteration logged and checked.
TrainConfig short_run_config(const std::string& root, int iterations);

// The smallest run `jem bench` times in the tests: WRN-10-1 on 28x28 grey images (fashion-mnist,
// synthesized by the bench), batch 4 + 2 chains of 2 SGLD steps, a buffer of 20.
TrainConfig tiny_bench_config();

// Trains `cfg` on `backend` into cfg.out (which must not exist) and reads the run back.
ShortRun run_short(Backend& backend, const TrainConfig& cfg);

// The number after "key": in one JSON line of metrics.jsonl (NaN when absent).
double json_number(const std::string& line, const std::string& key);

// ||a - b|| / ||b||; a and b must have the same size.
double relative_l2(const std::vector<float>& a, const std::vector<float>& b);

// The most terms any float sum of the config's model has (a 3x3 convolution over the widest
// layer's 64 * width channels): what per-op rounding tolerances scale with (sqrt of it).
int max_sum_terms(const TrainConfig& cfg);

// Expects `got` to agree with `ref` within relative tolerance `tol`: parameters and replay
// buffer in relative L2, each iteration's loss, cross-entropy and energies relative to their
// size; and first that the comparison means something: both ran every iteration, and the
// parameters moved by far more than `tol`.
void expect_runs_agree(const ShortRun& got, const ShortRun& ref, double tol);

}  // namespace jem::test
