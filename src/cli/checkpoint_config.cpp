#include "cli/checkpoint_config.hpp"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include "jem/checkpoint.hpp"
#include "jem/error.hpp"

namespace jem::cli {

TrainConfig config_from_checkpoint(const std::string& checkpoint) {
  const std::string text = checkpoint_config(checkpoint);
  // CLI11 reads config files by path: round-trip the text through a private temp file.
  std::string tmpl = (std::filesystem::temp_directory_path() / "jem_config_XXXXXX").string();
  const int fd = mkstemp(tmpl.data());
  JEM_CHECK(fd >= 0, "cannot create a temporary file for the checkpoint's config");
  const bool ok = write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
  close(fd);
  try {
    JEM_CHECK(ok, "cannot write a temporary file for the checkpoint's config");
    TrainConfig c = parse_train_config({"--config", tmpl});
    std::remove(tmpl.c_str());
    return c;
  } catch (const Error& e) {
    std::remove(tmpl.c_str());
    JEM_FAIL(checkpoint, ": its stored config does not parse: ", e.what());
  }
}

}  // namespace jem::cli
