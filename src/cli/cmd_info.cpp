// `jem info`: build options, CPU threads, CUDA devices, library versions.
#include <cstdio>

#include "cli/commands.hpp"
#include "jem/runtime.hpp"

namespace jem::cli {

void register_info(CLI::App& app) {
  auto* cmd = app.add_subcommand("info", "Print build options, CPU threads, CUDA devices and library versions");
  cmd->callback([] { std::fputs(info_report().c_str(), stdout); });
}

}  // namespace jem::cli
