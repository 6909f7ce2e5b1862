// Errors: every failure in the library is a jem::Error thrown with the file and line where it
// was detected. Library code never calls exit(); the CLI catches, prints one line, returns != 0.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace jem {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace detail {
[[noreturn]] inline void throw_error(const char* file, int line, const std::string& msg) {
  // Strip the directory: "tensor.cpp:42: ..." reads better than an absolute path.
  std::string f(file);
  const auto slash = f.find_last_of('/');
  if (slash != std::string::npos) f = f.substr(slash + 1);
  throw Error(f + ":" + std::to_string(line) + ": " + msg);
}

// Builds a message from stream-able parts: JEM_FAIL("bad shape ", a, " vs ", b).
template <typename... Args>
std::string concat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}
}  // namespace detail

}  // namespace jem

// Throws jem::Error("file:line: message").
#define JEM_FAIL(...) ::jem::detail::throw_error(__FILE__, __LINE__, ::jem::detail::concat(__VA_ARGS__))

// Checks a condition that depends on input (shapes, files, configs), in every build type.
#define JEM_CHECK(cond, ...)                                                          \
  do {                                                                                \
    if (!(cond)) JEM_FAIL(__VA_ARGS__);                                               \
  } while (0)
