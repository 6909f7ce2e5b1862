// The training configuration: one flat struct whose defaults are the official CIFAR-10 recipe
// (see JEM.md), read from a flat TOML file (`--config FILE`) and command-line flags (`--key value`,
// which override the file), checked by validate(), and saved with each run by to_toml().
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace CLI {
class App;
}

namespace jem {

struct TrainConfig {
  // run
  std::string out = "runs/jem";  // run directory
  std::uint64_t seed = 1;
  std::string device = "auto";   // auto | cpu | cuda | cuda:N
  int threads = 0;               // CPU threads; 0 = all cores
  double allreduce_bucket_mb = 25;  // data parallelism: gradient all-reduced in buckets of this size during backward

  // data
  std::string dataset = "cifar10";  // fashion-mnist | mnist | cifar10 | cifar100 | svhn
  std::string data_dir;             // "" = the dataset's default location (effective_data_dir)
  int n_valid = 5000;               // training images held out for validation
  bool augment = true;              // reflect-pad 4 + random crop
  bool flip = true;                 // random horizontal flip (when augmenting)
  double sigma = 0.03;              // std of the Gaussian noise added to every image
  int batch_size = 64;              // per batch (the p(x) and the labelled batch each)
  int px_batch_size = 0;            // p(x) batch and SGLD chains per iteration; 0 = batch_size

  // model: Wide-ResNet-depth-width, LeakyReLU(slope)
  int depth = 28;  // 6n + 4
  int width = 10;
  double slope = 0.2;

  // sampler: SGLD with a persistent replay buffer
  int buffer_size = 10000;
  double reinit_freq = 0.05;  // probability that a drawn buffer entry restarts from noise
  int sgld_steps = 20;
  double sgld_lr = 1.0;
  double sgld_std = 0.01;
  bool clamp = false;              // clamp samples to [-1, 1] after each step (JEM++)
  bool class_cond_buffer = false;  // buffer split into one segment per class

  // objective: CE + w_px * (p(x) term) + w_pxy * (p(x, y) term) + w_l2 * (L2 penalty on energies)
  double w_px = 1.0;
  double w_pxy = 0.0;
  double w_l2 = 0.0;

  // optimizer
  std::string optimizer = "adam";  // adam | adamw | sgd
  double lr = 1e-4;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;
  double momentum = 0.9;  // sgd only
  int warmup_iters = 1000;                  // linear warmup
  std::vector<int> decay_epochs{160, 180};  // lr *= decay_rate at each of these epochs
  double decay_rate = 0.3;
  std::string lr_schedule = "step";         // step (decay_epochs) | cosine (to 0 at the last iteration)
  double ema = 0.0;  // decay of the parameters' moving average, which evaluation uses (0 = off)

  // schedule (every *_every and keep_ckpts is >= 1 after validate)
  int epochs = 200;
  std::int64_t max_iters = 0;  // 0 = run all epochs; else stop after this many iterations
  double max_minutes = 0.0;    // 0 = no limit; else stop cleanly and checkpoint after this time
  int eval_every = 1;          // epochs
  int log_every = 100;         // iterations
  int stats_every = 10;        // iterations between host reads of the step statistics (the guard's input)
  int sample_every = 1000;     // iterations
  int ckpt_every = 1000;       // iterations
  int keep_ckpts = 3;
  int eval_batch = 256;

  // guard: divergence detection and restart from the last checkpoint
  bool guard = true;
  int guard_retries = 5;
  double guard_lr_factor = 0.5;  // lr multiplier after each restart
  double guard_limit = 1e8;      // |loss| or |energy| above this counts as divergence

  bool operator==(const TrainConfig&) const = default;
};

// Registers every key on `cmd` as `--key value` (bools as `--augment true|false`), with help
// and the default, plus `--config FILE`: a flat TOML file whose keys are the same names; flags on
// the command line override the file. Unknown flags and unknown keys in the file are errors.
// Works on a top-level App and on a subcommand alike. Values land in `cfg` (which must outlive
// the parse) when CLI11 runs the option callbacks, i.e. before any App callback.
void add_train_options(CLI::App& cmd, TrainConfig& cfg);

// Throws jem::Error with a one-line message naming the key ("config: sgld_steps = -3 must be
// >= 0"). n_classes: of the dataset, for the class-conditional buffer split.
void validate(const TrainConfig& cfg, int n_classes);

// Every key, one per line, in the flat format --config reads, under a comment header. Reading
// it back gives an identical struct. Throws jem::Error for a string CLI11 cannot read back
// (validate() rejects those too).
std::string to_toml(const TrainConfig& cfg);

// Parses command-line style arguments, e.g. {"--config", path, "--lr", "3e-4"}, starting from
// the defaults. Parse errors become jem::Error carrying CLI11's message. Does not validate.
TrainConfig parse_train_config(const std::vector<std::string>& args);

// cfg.data_dir, or when empty the dataset's default location: /usr/share/datasets/fashion-mnist
// for fashion-mnist (Debian's dataset-fashion-mnist), else "data/<dataset>".
std::string effective_data_dir(const TrainConfig& cfg);

}  // namespace jem
