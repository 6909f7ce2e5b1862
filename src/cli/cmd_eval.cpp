// `jem eval --checkpoint FILE --mode accuracy|calibration|ood|samples|robustness|fid|all`:
// the evaluation suite, one or more modes (comma-separated), numbers on stdout, plots and
// arrays in --out. See docs/evaluation.md.
#include <memory>

#include "cli/commands.hpp"
#include "cli/eval_common.hpp"

namespace jem::cli {

void register_eval(CLI::App& app) {
  auto a = std::make_shared<EvalArgs>();
  auto mode = std::make_shared<std::string>("accuracy");
  auto* cmd = app.add_subcommand("eval",
                                 "Evaluate a checkpoint: accuracy, calibration, OOD detection, samples, "
                                 "adversarial robustness, FID");
  add_eval_options(cmd, *a);
  cmd->add_option("--mode", *mode,
                  "accuracy, calibration, ood, samples, robustness, fid or all (comma-separated; "
                  "all includes fid only with --inception)")
      ->capture_default_str();
  cmd->callback([a, mode] {
    const auto modes = parse_modes(*mode, !a->opt.inception.empty());
    SuiteResults res;
    run_eval_modes(*a, modes, res);
  });
}

}  // namespace jem::cli
