// `jem report --checkpoint FILE [--ood SETS]`: runs the whole evaluation suite and writes
// report.md (the paper's table layouts, its numbers beside ours, the plots) and report.json.
#include <cstdio>
#include <filesystem>
#include <memory>

#include "cli/commands.hpp"
#include "cli/eval_common.hpp"
#include "jem/report.hpp"

namespace jem::cli {

void register_report(CLI::App& app) {
  auto a = std::make_shared<EvalArgs>();
  auto* cmd = app.add_subcommand("report", "Run the evaluation suite and write report.md and report.json");
  add_eval_options(cmd, *a);
  cmd->callback([a] {
    // FID joins when the Inception weights are given (and fails clearly if not built in).
    const auto modes = parse_modes("all", !a->opt.inception.empty());
    if (a->out.empty()) {
      const std::filesystem::path p(a->checkpoint);
      a->out = (p.parent_path() / (p.stem().string() + "_report")).string();
    }
    SuiteResults res;
    run_eval_modes(*a, modes, res);
    write_report(a->out, res);
    std::printf("wrote %s/report.md and %s/report.json\n", a->out.c_str(), a->out.c_str());
  });
}

}  // namespace jem::cli
