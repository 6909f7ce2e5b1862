// The jem command line: subcommands are registered by src/cli/cmd_*.cpp.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <exception>

#include "cli/commands.hpp"

int main(int argc, char** argv) {
  CLI::App app{"jem: Joint Energy-based Model trainer (CPU and CUDA)", "jem"};
  app.require_subcommand(1);
  app.set_version_flag("--version", JEM_VERSION);
  jem::cli::register_info(app);
  jem::cli::register_train(app);
  jem::cli::register_sample(app);
  jem::cli::register_eval(app);
  jem::cli::register_report(app);
  jem::cli::register_inception_check(app);
  jem::cli::register_bench(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "jem: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
