// Shared test helpers: seeded random tensors, relative errors, paths to test data.
#pragma once

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "jem/backend.hpp"

namespace jem::test {

// Path of a file in tests/data.
std::string data_path(const std::string& name);
// Path of a file in the source tree (e.g. "configs/cifar10.toml").
std::string source_path(const std::string& relative);
// Runs a shell command, returns its exit status; its stdout+stderr land in *output.
int run_command(const std::string& command, std::string* output);
// Path of the built `jem` executable.
std::string jem_binary();
// A fresh, empty temporary directory (removed at process exit is NOT promised).
std::string temp_dir(const std::string& tag);

// Uniform values in [lo, hi) from a seeded generator.
std::vector<float> random_vector(std::size_t n, std::uint64_t seed, float lo = -1.0f, float hi = 1.0f);

// ||a - b|| / max(||b||, tiny): the metric every numerical test reports.
double rel_error(const std::vector<float>& a, const std::vector<float>& b);
double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b);

}  // namespace jem::test
