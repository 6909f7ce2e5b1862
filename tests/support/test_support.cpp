#include "test_support.hpp"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <cstdio>
#include <sys/wait.h>

#include "jem/error.hpp"

namespace jem::test {

std::string data_path(const std::string& name) { return std::string(JEM_TEST_DATA_DIR) + "/" + name; }

std::string jem_binary() { return JEM_BINARY; }
std::string jem_cmd(const std::string& args) { return jem_binary() + " " + args; }

std::string source_path(const std::string& relative) { return std::string(JEM_SOURCE_DIR) + "/" + relative; }

int run_command(const std::string& command, std::string* output) {
  FILE* p = popen((command + " 2>&1").c_str(), "r");
  if (!p) return -1;
  std::string out;
  char buf[4096];
  std::size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  const int status = pclose(p);
  if (output) *output = out;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

std::string temp_dir(const std::string& tag) {
  namespace fs = std::filesystem;
  static std::mt19937_64 rng(std::random_device{}());
  fs::path p = fs::temp_directory_path() / ("jem_test_" + tag + "_" + std::to_string(rng()));
  fs::create_directories(p);
  return p.string();
}

std::vector<float> random_vector(std::size_t n, std::uint64_t seed, float lo, float hi) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

double rel_error(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0.0, den = 0.0;
  const std::size_t n = std::min(a.size(), b.size());
  for (std::size_t i = 0; i < n; ++i) {
    const double d = double(a[i]) - double(b[i]);
    num += d * d;
    den += double(b[i]) * double(b[i]);
  }
  if (a.size() != b.size()) return INFINITY;
  return std::sqrt(num) / std::max(std::sqrt(den), 1e-30);
}

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return INFINITY;
  double m = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i) m = std::max(m, std::fabs(double(a[i]) - double(b[i])));
  return m;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const jem::Error& e) {
    return e.what();
  }
  return "<no jem::Error thrown>";
}

}  // namespace jem::test
