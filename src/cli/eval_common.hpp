// What `jem eval` and `jem report` share: their options, loading a checkpoint with its data
// split, and running a list of evaluation modes.
#pragma once

#include <CLI/CLI.hpp>
#include <string>
#include <vector>

#include "jem/eval_suite.hpp"

namespace jem::cli {

struct EvalArgs {
  std::string checkpoint, split = "test", device = "auto", data_dir, dataset, out, weights = "auto";
  int threads = 0, batch = 256;
  std::vector<std::string> eps_linf, eps_l2;  // as typed: "0.031" or "8/255"
  EvalOptions opt;
};

// Registers the shared options on `cmd`.
void add_eval_options(CLI::App* cmd, EvalArgs& a);

// "accuracy,ood" or "all" -> the modes, in suite order; unknown names are a one-line error.
// "all" includes fid only when `with_fid`.
std::vector<std::string> parse_modes(const std::string& spec, bool with_fid);

// Loads the checkpoint and the split, runs `modes`, fills `results` (printing one summary line
// per mode on stdout).
void run_eval_modes(EvalArgs& a, const std::vector<std::string>& modes, SuiteResults& results);

}  // namespace jem::cli
