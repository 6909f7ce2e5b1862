// Each subcommand registers itself on the app; its callback runs when it is chosen and throws
// jem::Error on failure (main prints one line and exits non-zero).
#pragma once

#include <CLI/CLI.hpp>

namespace jem::cli {
void register_info(CLI::App& app);
void register_train(CLI::App& app);
void register_sample(CLI::App& app);
void register_eval(CLI::App& app);
void register_report(CLI::App& app);
void register_inception_check(CLI::App& app);
void register_bench(CLI::App& app);
}  // namespace jem::cli
