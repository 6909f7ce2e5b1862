// `jem eval --checkpoint FILE [--split test|valid|train]`: accuracy and mean cross-entropy.
#include <cstdio>
#include <memory>

#include "cli/checkpoint_config.hpp"
#include "cli/commands.hpp"
#include "jem/checkpoint.hpp"
#include "jem/data_pipeline.hpp"
#include "jem/evaluate.hpp"
#include "jem/runtime.hpp"
#include "jem/safetensors.hpp"

namespace jem::cli {

namespace {
struct EvalArgs {
  std::string checkpoint, split = "test", device = "auto", data_dir;
  int threads = 0, batch = 256;
};
}  // namespace

void register_eval(CLI::App& app) {
  auto a = std::make_shared<EvalArgs>();
  auto* cmd = app.add_subcommand("eval", "Evaluate a checkpoint: accuracy and mean cross-entropy on a split");
  cmd->add_option("--checkpoint", a->checkpoint, "Checkpoint (.safetensors) written by jem train")->required();
  cmd->add_option("--split", a->split, "test, valid or train")->check(CLI::IsMember({"test", "valid", "train"}))->capture_default_str();
  cmd->add_option("--device", a->device, "auto, cpu, cuda or cuda:N")->capture_default_str();
  cmd->add_option("--threads", a->threads, "CPU threads (0 = all cores)")->capture_default_str();
  cmd->add_option("--data_dir", a->data_dir, "Override the data directory of the checkpoint's config");
  cmd->add_option("--batch", a->batch, "Images per batch")->check(CLI::PositiveNumber)->capture_default_str();
  cmd->callback([a] {
    TrainConfig cfg = config_from_checkpoint(a->checkpoint);
    if (!a->data_dir.empty()) cfg.data_dir = a->data_dir;
    const WrnConfig mc = checkpoint_model_config(a->checkpoint);
    auto backend = make_backend(a->device, a->threads);
    WideResNet model(mc, *backend, a->batch);
    model.load(safetensors::File::read(a->checkpoint));
    const DataSplits splits = load_splits(cfg.dataset, effective_data_dir(cfg), cfg.n_valid, cfg.seed);
    const Dataset& d = a->split == "test" ? splits.test : a->split == "valid" ? splits.valid : splits.train;
    JEM_CHECK(d.count > 0, "split '", a->split, "' of ", cfg.dataset, " is empty (n_valid = ", cfg.n_valid, ")");
    const EvalResult r = evaluate(model, d, float(cfg.sigma), cfg.seed, [](std::int64_t done, std::int64_t total) {
      std::fprintf(stderr, "\reval %lld/%lld", static_cast<long long>(done), static_cast<long long>(total));
    });
    std::fprintf(stderr, "\n");
    std::printf("%s %s: accuracy %.4f, mean CE %.4f, mean energy %.4f (%lld images)\n", cfg.dataset.c_str(),
                a->split.c_str(), r.accuracy, r.mean_ce, r.mean_energy, static_cast<long long>(r.count));
  });
}

}  // namespace jem::cli
