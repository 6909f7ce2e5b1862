// `jem bench --config FILE [--device D] [--threads N] [--iterations N]
// [--warmup N] [--json OUT]
// [--key value ...]`: times the configured model's JEM training iteration on
// synthetic data (see bench.hpp). Every training config key is also a flag, as
// for `jem train`.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>

#include "cli/commands.hpp"
#include "jem/bench.hpp"
#include "jem/error.hpp"
#include "jem/runtime.hpp"

namespace jem::cli {

namespace {

struct BenchArgs {
  TrainConfig cfg;
  BenchOptions opt;
  std::string json;
};

// Writes `text` to `path` through a temp file and a rename, so a reader never
// sees half a file.
void write_file(const std::string &path, const std::string &text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    JEM_CHECK(out.good(), "--json ", path, ": cannot open ", tmp,
              " for writing");
    out << text;
    out.flush();
    JEM_CHECK(out.good(), "--json ", path, ": write failed");
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  JEM_CHECK(!ec, "--json ", path,
            ": cannot rename the temp file into place: ", ec.message());
}

} // namespace

void register_bench(CLI::App &app) {
  auto args = std::make_shared<BenchArgs>();
  auto *cmd = app.add_subcommand(
      "bench", "Time the configured model's JEM training iteration on "
               "synthetic data (every config key is also a --flag)");
  add_train_options(*cmd, args->cfg);
  cmd->add_option("--iterations", args->opt.iterations, "Timed iterations")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--warmup", args->opt.warmup,
                  "Untimed iterations before the timed ones")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--json", args->json,
                  "Also write the results as JSON to this file");
  cmd->callback([args] {
    // Check the output's directory before spending minutes on the benchmark.
    if (!args->json.empty()) {
      const auto dir = std::filesystem::path(args->json).parent_path();
      JEM_CHECK(dir.empty() || std::filesystem::is_directory(dir), "--json ",
                args->json, ": directory ", dir.string(), " does not exist");
    }
    auto backend = make_backend(args->cfg.device, args->cfg.threads);
    const BenchResult r = run_bench(*backend, args->cfg, args->opt);
    std::fputs(bench_report(r).c_str(), stdout);
    if (!args->json.empty())
      write_file(args->json, bench_json(r, args->cfg, args->opt));
  });
}

} // namespace jem::cli
