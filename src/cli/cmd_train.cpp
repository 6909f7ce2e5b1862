// `jem train --config FILE [--key value ...]` and `jem train --resume RUN_DIR [--key value ...]`.
#include <csignal>
#include <cstdio>
#include <memory>

#include "cli/commands.hpp"
#include "jem/error.hpp"
#include "jem/runtime.hpp"
#include "jem/trainer.hpp"

namespace jem::cli {

namespace {

// The one piece of global state: what a signal handler may touch.
volatile std::sig_atomic_t g_stop = 0;
extern "C" void on_stop_signal(int) { g_stop = 1; }

struct TrainArgs {
  TrainConfig cfg;
  std::string resume;
};

}  // namespace

void register_train(CLI::App& app) {
  auto args = std::make_shared<TrainArgs>();
  auto* cmd = app.add_subcommand("train", "Train a JEM (every config key is also a --flag)");
  add_train_options(*cmd, args->cfg);
  cmd->add_option("--resume", args->resume,
                  "Continue the run in this directory from its newest checkpoint (with its saved "
                  "config; flags given here override it)");
  cmd->callback([cmd, args] {
    TrainConfig cfg = args->cfg;
    TrainOptions opt;
    if (!args->resume.empty()) {
      JEM_CHECK(cmd->get_option("--config")->count() == 0,
                "--resume uses the run's saved config.toml; do not pass --config");
      // The saved config, then every flag given on this command line on top of it.
      std::vector<std::string> argv{"--config", args->resume + "/config.toml"};
      for (const CLI::Option* o : cmd->get_options()) {
        if (o->count() == 0 || o->get_name() == "--resume" || o->get_name() == "--help") continue;
        argv.push_back(o->get_name());
        for (const auto& v : o->results()) argv.push_back(v);
      }
      cfg = parse_train_config(argv);
      JEM_CHECK(cmd->get_option("--out")->count() == 0 || cfg.out == args->resume,
                "--resume ", args->resume, " conflicts with --out ", cfg.out);
      cfg.out = args->resume;
      opt.resume = true;
    }
    opt.stop_flag = &g_stop;
    std::signal(SIGINT, on_stop_signal);
    std::signal(SIGTERM, on_stop_signal);
    // A file size limit (ulimit -f) must fail the write with EFBIG, which the checkpoint writer
    // reports and cleans up after, instead of killing the process mid-write.
    std::signal(SIGXFSZ, SIG_IGN);
    auto backend = make_backend(cfg.device, cfg.threads);
    const TrainResult r = train(*backend, cfg, opt);
    std::printf("trained %lld iterations in %.1f s (%.2f it/s)%s\n", static_cast<long long>(r.iterations),
                r.seconds, r.iterations_per_second, r.stopped_early ? ", stopped early" : "");
    if (r.test_accuracy >= 0) std::printf("test accuracy %.4f\n", r.test_accuracy);
    if (r.valid_accuracy >= 0) std::printf("valid accuracy %.4f\n", r.valid_accuracy);
    std::printf("run directory %s\n", cfg.out.c_str());
  });
}

}  // namespace jem::cli
