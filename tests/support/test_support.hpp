// Shared test helpers: seeded random tensors, relative errors, paths to test data.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <functional>
#include <initializer_list>
#include <optional>
#include <random>
#include <string>
#include <utility>
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
// The shell command that runs the jem program with `args` (for run_command).
std::string jem_cmd(const std::string& args);
// A fresh, empty temporary directory (removed at process exit is NOT promised).
std::string temp_dir(const std::string& tag);

// Uniform values in [lo, hi) from a seeded generator.
std::vector<float> random_vector(std::size_t n, std::uint64_t seed, float lo = -1.0f, float hi = 1.0f);

// ||a - b|| / max(||b||, tiny): the metric every numerical test reports.
double rel_error(const std::vector<float>& a, const std::vector<float>& b);
double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b);

// The message of the jem::Error that f throws, or a marker when it throws none.
std::string error_of(const std::function<void()>& f);

// Sets environment variables for one scope (a null value unsets one) and restores what was there.
class ScopedEnv {
 public:
  ScopedEnv(std::initializer_list<std::pair<const char*, const char*>> vars) {
    for (const auto& [name, value] : vars) {
      const char* old = std::getenv(name);
      saved_.emplace_back(name, old ? std::optional<std::string>(old) : std::nullopt);
      if (value) ::setenv(name, value, 1);
      else ::unsetenv(name);
    }
  }
  ScopedEnv(const char* name, const char* value) : ScopedEnv({{name, value}}) {}
  ~ScopedEnv() {
    for (auto it = saved_.rbegin(); it != saved_.rend(); ++it) {
      if (it->second) ::setenv(it->first.c_str(), it->second->c_str(), 1);
      else ::unsetenv(it->first.c_str());
    }
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  std::vector<std::pair<std::string, std::optional<std::string>>> saved_;
};

}  // namespace jem::test

// Expects `stmt` to throw a jem::Error whose message contains every one of the strings given.
#define EXPECT_ERROR_HAS(stmt, ...)                                                           \
  do {                                                                                        \
    const std::string msg_ = ::jem::test::error_of([&] { stmt; });                            \
    for (const std::string& part_ : std::initializer_list<std::string>{__VA_ARGS__})          \
      EXPECT_NE(msg_.find(part_), std::string::npos) << "'" << part_ << "' not in: " << msg_; \
  } while (0)
