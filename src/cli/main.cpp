// The jem command line: subcommands are registered by src/cli/cmd_*.cpp.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <cstdlib>
#include <exception>

#include "cli/commands.hpp"
#include "jem/blas_kernels.hpp"

int main(int argc, char** argv) {
  // OpenBLAS fell back to its generic kernels on a CPU it does not know: run again with the
  // kernel set the CPU supports (jem/blas_kernels.hpp).
  jem::rerun_with_openblas_coretype(argv);
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
