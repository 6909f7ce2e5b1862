// `jem train --config FILE [--key value ...]` and `jem train --resume RUN_DIR [--key value ...]`,
// alone or as one of several processes: `mpirun -np 8 jem train --config FILE` (or srun).
#include <algorithm>
#include <csignal>
#include <cstdio>
#include <exception>
#include <memory>
#include <thread>

#include "cli/commands.hpp"
#include "jem/communicator.hpp"
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
  std::string comm = "auto";
  double comm_timeout = 600;
};

}  // namespace

void register_train(CLI::App& app) {
  auto args = std::make_shared<TrainArgs>();
  auto* cmd = app.add_subcommand("train", "Train a JEM (every config key is also a --flag)");
  add_train_options(*cmd, args->cfg);
  cmd->add_option("--resume", args->resume,
                  "Continue the run in this directory from its newest checkpoint (with its saved "
                  "config; flags given here override it)");
  cmd->add_option("--comm", args->comm,
                  "Multi-process communication: auto (MPI/NCCL when mpirun or srun started several "
                  "processes), none, mpi, or nccl (also for one process)")
      ->check(CLI::IsMember({"auto", "none", "mpi", "nccl"}))
      ->capture_default_str();
  cmd->add_option("--comm_timeout", args->comm_timeout,
                  "Seconds a collective may wait for the other ranks before the job is ended (0 = forever)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->callback([cmd, args] {
    TrainConfig cfg = args->cfg;
    TrainOptions opt;
    if (!args->resume.empty()) {
      JEM_CHECK(cmd->get_option("--config")->count() == 0,
                "--resume uses the run's saved config.toml; do not pass --config");
      // The saved config, then every flag given on this command line on top of it.
      std::vector<std::string> argv{"--config", args->resume + "/config.toml"};
      for (const CLI::Option* o : cmd->get_options()) {
        const std::string& n = o->get_name();
        if (o->count() == 0 || n == "--resume" || n == "--help" || n == "--comm" || n == "--comm_timeout") continue;
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
    // One process per GPU (mpirun / srun): MPI first, for the rank that picks the device.
    const auto host = make_host_communicator(args->comm, args->comm_timeout);
    try {
      const std::string device = device_for_rank(cfg.device, *host);
      int threads = cfg.threads;
      if (threads == 0 && host->local_world() > 1)  // the node's cores, shared by its ranks
        threads = std::max(1, int(std::thread::hardware_concurrency()) / host->local_world());
      auto backend = make_backend(device, threads);
      const auto nccl = make_device_communicator(*host, *backend, args->comm, args->comm_timeout);
      // A plain one-process run keeps the single-process path; --comm mpi|nccl forces collectives.
      if (nccl) opt.comm = nccl.get();
      else if (host->world() > 1 || args->comm == "mpi") opt.comm = host.get();
      const TrainResult r = train(*backend, cfg, opt);
      if (host->rank() != 0) return;
      std::printf("trained %lld iterations in %.1f s (%.2f it/s)%s\n", static_cast<long long>(r.iterations),
                  r.seconds, r.iterations_per_second, r.stopped_early ? ", stopped early" : "");
      if (r.test_accuracy >= 0) std::printf("test accuracy %.4f\n", r.test_accuracy);
      if (r.valid_accuracy >= 0) std::printf("valid accuracy %.4f\n", r.valid_accuracy);
      std::printf("run directory %s\n", cfg.out.c_str());
    } catch (const std::exception& e) {
      // Several ranks: end them all now, naming this one, instead of leaving them waiting.
      if (host->world() > 1) host->abort("jem: rank " + std::to_string(host->rank()) + ": error: " + e.what(), 1);
      throw;
    }
  });
}

}  // namespace jem::cli
