// The training configuration. One list of keys (visit_keys) drives the command line, the config
// file and to_toml, so a key is added in two places: the struct and that list.
#include "jem/train_config.hpp"

#include <CLI/CLI.hpp>

#include <algorithm>
#include <array>
#include <cctype>
#include <charconv>
#include <cmath>
#include <concepts>
#include <functional>
#include <set>
#include <string_view>
#include <type_traits>

#include "jem/error.hpp"

namespace jem {
namespace {

// Every key as f(group, key, field, help); C is TrainConfig or const TrainConfig. The group is a
// section of --help and a comment in the saved file (the file itself stays flat).
template <class C, class F>
void visit_keys(C& c, F&& f) {
  f("run", "out", c.out, "Run directory (checkpoints, logs, samples, config.toml)");
  f("run", "seed", c.seed, "Random seed");
  f("run", "device", c.device, "auto, cpu, cuda or cuda:N");
  f("run", "threads", c.threads, "CPU threads (0 = all cores)");
  f("run", "allreduce_bucket_mb", c.allreduce_bucket_mb,
    "Several processes: all-reduce the gradient in buckets of this many MiB while the backward pass "
    "goes on (0 = one all-reduce after it)");

  f("data", "dataset", c.dataset, "fashion-mnist, mnist, cifar10, cifar100 or svhn");
  f("data", "data_dir", c.data_dir,
    "Dataset directory (\"\" = /usr/share/datasets/fashion-mnist for fashion-mnist, else data/<dataset>)");
  f("data", "n_valid", c.n_valid, "Training images held out for validation");
  f("data", "augment", c.augment, "Reflect-pad 4 and random crop (true|false)");
  f("data", "flip", c.flip, "Random horizontal flip when augmenting (true|false)");
  f("data", "sigma", c.sigma, "Std of the Gaussian noise added to every image");
  f("data", "batch_size", c.batch_size, "Batch size (of the p(x) batch and of the labelled batch)");
  f("data", "px_batch_size", c.px_batch_size,
    "Size of the p(x) batch and number of SGLD chains per iteration, if not batch_size (0 = batch_size)");

  f("model", "depth", c.depth, "Wide-ResNet depth (6n+4)");
  f("model", "width", c.width, "Wide-ResNet width multiplier");
  f("model", "slope", c.slope, "LeakyReLU negative slope");

  f("sampler", "buffer_size", c.buffer_size, "Replay buffer size");
  f("sampler", "reinit_freq", c.reinit_freq, "Probability that a drawn buffer entry restarts from noise");
  f("sampler", "sgld_steps", c.sgld_steps, "SGLD steps per iteration");
  f("sampler", "sgld_lr", c.sgld_lr, "SGLD step size on dE/dx");
  f("sampler", "sgld_std", c.sgld_std, "SGLD noise std");
  f("sampler", "clamp", c.clamp, "Clamp samples to [-1, 1] after each step (true|false)");
  f("sampler", "class_cond_buffer", c.class_cond_buffer, "One buffer segment per class (true|false)");

  f("objective", "w_px", c.w_px, "Weight of the log p(x) term");
  f("objective", "w_pxy", c.w_pxy, "Weight of the log p(x, y) term");
  f("objective", "w_l2", c.w_l2, "Weight of the L2 penalty on energies");

  f("optimizer", "optimizer", c.optimizer, "adam, adamw or sgd");
  f("optimizer", "lr", c.lr, "Learning rate");
  f("optimizer", "beta1", c.beta1, "Adam beta1");
  f("optimizer", "beta2", c.beta2, "Adam beta2");
  f("optimizer", "eps", c.eps, "Adam epsilon");
  f("optimizer", "weight_decay", c.weight_decay, "Weight decay");
  f("optimizer", "momentum", c.momentum, "SGD momentum");
  f("optimizer", "warmup_iters", c.warmup_iters, "Iterations of linear lr warmup");
  f("optimizer", "decay_epochs", c.decay_epochs, "Epochs at which lr is multiplied by decay_rate");
  f("optimizer", "decay_rate", c.decay_rate, "lr factor at each of decay_epochs");
  f("optimizer", "lr_schedule", c.lr_schedule,
    "step (x decay_rate at decay_epochs) or cosine (after warmup, from lr to 0 at the last iteration)");
  f("optimizer", "ema", c.ema,
    "Decay of the parameters' exponential moving average, used for evaluation (0 = off; e.g. 0.999)");

  f("schedule", "epochs", c.epochs, "Training epochs");
  f("schedule", "max_iters", c.max_iters, "Stop after this many iterations (0 = run all epochs)");
  f("schedule", "max_minutes", c.max_minutes, "Stop cleanly and checkpoint after this wall time (0 = no limit)");
  f("schedule", "eval_every", c.eval_every, "Evaluate every this many epochs");
  f("schedule", "log_every", c.log_every, "Log every this many iterations");
  f("schedule", "stats_every", c.stats_every,
    "Read the step statistics back every this many iterations (and at every log, sample, checkpoint "
    "and evaluation); the divergence guard checks each iteration then");
  f("schedule", "sample_every", c.sample_every, "Save samples every this many iterations");
  f("schedule", "ckpt_every", c.ckpt_every, "Checkpoint every this many iterations");
  f("schedule", "keep_ckpts", c.keep_ckpts, "Checkpoints kept on disk");
  f("schedule", "eval_batch", c.eval_batch, "Batch size for evaluation");

  f("guard", "guard", c.guard, "Restart from the last checkpoint on divergence (true|false)");
  f("guard", "guard_retries", c.guard_retries, "Restarts allowed");
  f("guard", "guard_lr_factor", c.guard_lr_factor, "lr factor after each restart");
  f("guard", "guard_limit", c.guard_limit, "|loss| or |energy| above this counts as divergence");
}

// ---- values as the config file writes them (also the defaults shown by --help) ----------------

std::string toml_value(bool v) { return v ? "true" : "false"; }

template <std::integral T>
std::string toml_value(T v) {
  return std::to_string(v);
}

std::string toml_value(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  const auto format = [v](int precision) {  // 0: the shortest form that std::from_chars reads back
    char buf[64];
    std::string s(buf, precision ? std::to_chars(buf, buf + sizeof buf, v, std::chars_format::general, precision).ptr
                                 : std::to_chars(buf, buf + sizeof buf, v).ptr);
    if (const auto e = s.find('e'); e != std::string::npos) {  // "1e-04" -> "1e-4", "1e+08" -> "1e8"
      const auto digits = s.find_first_not_of("+-0", e + 1);
      s = s.substr(0, e + 1) + (s[e + 1] == '-' ? "-" : "") + s.substr(digits);
    } else if (s.find('.') == std::string::npos) {
      s += ".0";  // a TOML float, not an integer
    }
    return s;
  };
  // CLI11 reads floats with strtold and then casts to double: two roundings, which can miss v
  // from its shortest form; 17 significant digits always give v back.
  std::string s = format(0);
  double back = 0;
  return CLI::detail::lexical_cast(s, back) && back == v ? s : format(17);
}

std::string toml_value(const std::vector<int>& v) {
  std::string s = "[";
  for (std::size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s + "]";
}

// Why CLI11 2.1.2's config reader would not give `s` back, or "" when it would. The reader has
// no escapes: it strips one pair of quotes (two when the value holds a space or a comma), cuts
// the line at the first '#' even inside quotes, and treats \" or \' as an escaped quote.
std::string unsavable(const std::string& s) {
  if (s.find('#') != std::string::npos) return "it contains '#'";
  if (std::any_of(s.begin(), s.end(), [](unsigned char ch) { return std::iscntrl(ch); }))
    return "it contains a control character";
  if (s.find('"') != std::string::npos && s.find('\'') != std::string::npos)
    return "it contains both ' and \"";
  if (s.size() > 1 && (s.front() == '"' || s.front() == '\'') && s.front() == s.back())
    return "it is wrapped in quotes";
  if (!s.empty() && s.back() == '\\') return "it ends with a backslash";
  return "";
}

// Single quotes (a TOML literal string, no escapes) when the string holds " or \, else double
// quotes; either way CLI11 reads the characters between the quotes as they are.
std::string toml_value(const std::string& s) {
  const bool literal = s.find_first_of("\"\\") != std::string::npos && s.find('\'') == std::string::npos;
  const char q = literal ? '\'' : '"';
  return q + s + q;
}

// ---- the config file ----------------------------------------------------------------------------

// CLI11 2.1.2's set_config() is not used: it reads the config file of the top-level App only and
// silently ignores a subcommand's (even a missing file), and `jem train` is a subcommand. This
// does what CLI11 does for a top-level App, for any App, with CLI11's own TOML reader: each key
// sets its option unless the command line already did. It runs as the --config option's
// callback, i.e. after the whole command line has been parsed.
void apply_config_file(CLI::App& cmd, const std::string& path) {
  std::set<std::string> seen;
  for (const CLI::ConfigItem& item : CLI::ConfigTOML().from_file(path)) {
    if (!item.parents.empty())
      throw CLI::ConfigError(path + ": [" + item.parents.front() + "]: the config file has no sections");
    CLI::Option* opt = cmd.get_option_no_throw("--" + item.name);
    if (opt == nullptr) throw CLI::ConfigError(path + ": unknown key '" + item.name + "'");
    if (!opt->get_configurable())
      throw CLI::ConfigError(path + ": key '" + item.name + "' is not allowed in a config file");
    if (!seen.insert(item.name).second)
      throw CLI::ConfigError(path + ": key '" + item.name + "' is set twice");
    if (opt->count() > 0) continue;  // set on the command line, which wins
    try {
      opt->add_result(item.inputs);
      opt->run_callback();  // converts and stores the value; CLI11 then skips this option
    } catch (const CLI::ParseError& e) {
      throw CLI::ConfigError(path + ": " + e.what());
    }
  }
}

bool known_device(const std::string& d) {
  if (d == "auto" || d == "cpu" || d == "cuda") return true;
  const std::string n = d.substr(std::min<std::size_t>(d.size(), 5));
  return d.rfind("cuda:", 0) == 0 && !n.empty() && n.size() <= 4 &&
         std::all_of(n.begin(), n.end(), [](unsigned char ch) { return std::isdigit(ch); });
}

template <std::size_t N>
bool one_of(const std::string& s, const std::array<std::string_view, N>& names) {
  return std::find(names.begin(), names.end(), s) != names.end();
}

}  // namespace

void add_train_options(CLI::App& cmd, TrainConfig& cfg) {
  cmd.allow_extras(false);  // an unknown flag is an error naming it (CLI11's default, made explicit)
  cmd.add_option_function<std::string>(
         "--config", [&cmd](const std::string& path) { apply_config_file(cmd, path); },
         "TOML config file of `key = value` lines (the keys are these flags' names); flags override it")
      ->configurable(false);
  visit_keys(cfg, [&cmd](const char* group, const char* key, auto& field, const char* help) {
    CLI::Option* opt = cmd.add_option(std::string("--") + key, field, help);
    opt->default_str(toml_value(field))->group(group);
    // CLI11 2.1.2 reads "-1" into an unsigned integer as 2^64 - 1 without a word.
    using T = std::remove_cvref_t<decltype(field)>;
    if constexpr (std::is_unsigned_v<T> && !std::is_same_v<T, bool>) opt->check(CLI::NonNegativeNumber);
  });
}

TrainConfig parse_train_config(const std::vector<std::string>& args) {
  TrainConfig cfg;
  CLI::App app{"jem training configuration"};
  add_train_options(app, cfg);
  std::vector<std::string> reversed(args.rbegin(), args.rend());  // CLI11 consumes from the back
  try {
    app.parse(reversed);
  } catch (const CLI::ParseError& e) {
    JEM_FAIL(e.what());
  }
  return cfg;
}

// A failed check names the key and its value: "config: sgld_steps = -3 must be >= 0".
#define JEM_CONFIG_CHECK(cond, key, ...) \
  JEM_CHECK(cond, "config: " #key " = ", toml_value(cfg.key), " ", __VA_ARGS__)

void validate(const TrainConfig& cfg, int n_classes) {
  static constexpr std::array<std::string_view, 5> kDatasets{"fashion-mnist", "mnist", "cifar10", "cifar100",
                                                             "svhn"};
  static constexpr std::array<std::string_view, 3> kOptimizers{"adam", "adamw", "sgd"};
  static constexpr std::array<std::string_view, 2> kSchedules{"step", "cosine"};
  JEM_CHECK(n_classes >= 1, "validate: n_classes = ", n_classes, " must be >= 1");

  JEM_CONFIG_CHECK(!cfg.out.empty(), out, "must not be empty");
  JEM_CONFIG_CHECK(unsavable(cfg.out).empty(), out, "cannot be saved in config.toml: ", unsavable(cfg.out));
  JEM_CONFIG_CHECK(known_device(cfg.device), device, "must be auto, cpu, cuda or cuda:N");
  JEM_CONFIG_CHECK(cfg.threads >= 0, threads, "must be >= 0");

  JEM_CONFIG_CHECK(one_of(cfg.dataset, kDatasets), dataset, "is not one of fashion-mnist, mnist, cifar10, cifar100, svhn");
  JEM_CONFIG_CHECK(unsavable(cfg.data_dir).empty(), data_dir, "cannot be saved in config.toml: ",
                   unsavable(cfg.data_dir));
  JEM_CONFIG_CHECK(cfg.n_valid >= 0, n_valid, "must be >= 0");
  JEM_CONFIG_CHECK(cfg.sigma >= 0, sigma, "must be >= 0");
  JEM_CONFIG_CHECK(cfg.batch_size >= 1, batch_size, "must be >= 1");
  JEM_CONFIG_CHECK(cfg.px_batch_size >= 0, px_batch_size, "must be >= 0 (0 = batch_size)");

  JEM_CONFIG_CHECK(cfg.depth >= 10 && (cfg.depth - 4) % 6 == 0, depth, "must be 6n+4 (10, 16, 22, 28, ...)");
  JEM_CONFIG_CHECK(cfg.width >= 1, width, "must be >= 1");
  JEM_CONFIG_CHECK(cfg.slope >= 0 && cfg.slope <= 1, slope, "must be in [0, 1]");

  JEM_CONFIG_CHECK(cfg.buffer_size >= cfg.batch_size, buffer_size, "must be >= batch_size (", cfg.batch_size, ")");
  JEM_CONFIG_CHECK(cfg.buffer_size >= cfg.px_batch_size, buffer_size, "must be >= px_batch_size (", cfg.px_batch_size, ")");
  JEM_CONFIG_CHECK(cfg.reinit_freq >= 0 && cfg.reinit_freq <= 1, reinit_freq, "must be in [0, 1]");
  JEM_CONFIG_CHECK(cfg.sgld_steps >= 0, sgld_steps, "must be >= 0");
  JEM_CONFIG_CHECK(cfg.sgld_lr >= 0, sgld_lr, "must be >= 0");
  JEM_CONFIG_CHECK(cfg.sgld_std >= 0, sgld_std, "must be >= 0");

  JEM_CONFIG_CHECK(cfg.w_px >= 0, w_px, "must be >= 0");
  JEM_CONFIG_CHECK(cfg.w_pxy >= 0, w_pxy, "must be >= 0");
  JEM_CONFIG_CHECK(cfg.w_l2 >= 0, w_l2, "must be >= 0");

  JEM_CONFIG_CHECK(one_of(cfg.optimizer, kOptimizers), optimizer, "is not one of adam, adamw, sgd");
  JEM_CONFIG_CHECK(one_of(cfg.lr_schedule, kSchedules), lr_schedule, "is not one of step, cosine");
  JEM_CONFIG_CHECK(cfg.lr > 0, lr, "must be > 0");
  JEM_CONFIG_CHECK(cfg.beta1 >= 0 && cfg.beta1 < 1, beta1, "must be in [0, 1)");
  JEM_CONFIG_CHECK(cfg.beta2 >= 0 && cfg.beta2 < 1, beta2, "must be in [0, 1)");
  JEM_CONFIG_CHECK(cfg.eps > 0, eps, "must be > 0");
  JEM_CONFIG_CHECK(cfg.weight_decay >= 0, weight_decay, "must be >= 0");
  JEM_CONFIG_CHECK(cfg.momentum >= 0 && cfg.momentum < 1, momentum, "must be in [0, 1)");
  JEM_CONFIG_CHECK(cfg.ema >= 0 && cfg.ema < 1, ema, "must be in [0, 1) (0 = off)");
  JEM_CONFIG_CHECK(cfg.warmup_iters >= 0, warmup_iters, "must be >= 0");
  // CLI11 2.1.2 cannot read an empty list (from a flag or the file), so none is allowed here.
  JEM_CONFIG_CHECK(!cfg.decay_epochs.empty(), decay_epochs, "must list at least one epoch (decay_rate = 1.0 keeps lr constant)");
  JEM_CONFIG_CHECK(cfg.decay_epochs.front() >= 1, decay_epochs, "must be >= 1");
  JEM_CONFIG_CHECK(std::adjacent_find(cfg.decay_epochs.begin(), cfg.decay_epochs.end(), std::greater_equal<>()) ==
                       cfg.decay_epochs.end(),
                   decay_epochs, "must be strictly ascending");
  JEM_CONFIG_CHECK(cfg.decay_rate > 0, decay_rate, "must be > 0");

  JEM_CONFIG_CHECK(cfg.epochs >= 1, epochs, "must be >= 1");
  JEM_CONFIG_CHECK(cfg.max_iters >= 0, max_iters, "must be >= 0");
  JEM_CONFIG_CHECK(cfg.max_minutes >= 0, max_minutes, "must be >= 0");
  JEM_CONFIG_CHECK(cfg.eval_every >= 1, eval_every, "must be >= 1");
  JEM_CONFIG_CHECK(cfg.log_every >= 1, log_every, "must be >= 1");
  JEM_CONFIG_CHECK(cfg.allreduce_bucket_mb >= 0 && cfg.allreduce_bucket_mb <= 4096, allreduce_bucket_mb,
                   "must be in [0, 4096]");
  JEM_CONFIG_CHECK(cfg.stats_every >= 1 && cfg.stats_every <= 1000, stats_every, "must be in [1, 1000]");
  JEM_CONFIG_CHECK(cfg.sample_every >= 1, sample_every, "must be >= 1");
  JEM_CONFIG_CHECK(cfg.ckpt_every >= 1, ckpt_every, "must be >= 1");
  JEM_CONFIG_CHECK(cfg.keep_ckpts >= 1, keep_ckpts, "must be >= 1");
  JEM_CONFIG_CHECK(cfg.eval_batch >= 1, eval_batch, "must be >= 1");

  JEM_CONFIG_CHECK(cfg.guard_retries >= 0, guard_retries, "must be >= 0");
  JEM_CONFIG_CHECK(cfg.guard_lr_factor > 0 && cfg.guard_lr_factor < 1, guard_lr_factor, "must be in (0, 1)");
  JEM_CONFIG_CHECK(cfg.guard_limit > 0, guard_limit, "must be > 0");

  // Class-conditional sampling splits the buffer into equal per-class segments.
  if (cfg.class_cond_buffer || cfg.w_pxy > 0) {
    JEM_CONFIG_CHECK(cfg.buffer_size % n_classes == 0, buffer_size, "is not divisible by the ", n_classes,
                     " classes (needed by ", cfg.class_cond_buffer ? "class_cond_buffer" : "w_pxy > 0", ")");
  }
}

#undef JEM_CONFIG_CHECK

std::string to_toml(const TrainConfig& cfg) {
  std::string s =
      "# jem " JEM_VERSION " training configuration, resolved: the defaults, then the --config file,\n"
      "# then the flags. Flat TOML, one key per line; read it back with --config FILE.\n";
  std::string group;
  visit_keys(cfg, [&](const char* g, const char* key, const auto& field, const char*) {
    if (group != g) s += "\n# " + (group = g) + "\n";
    if constexpr (std::is_same_v<std::remove_cvref_t<decltype(field)>, std::string>)
      JEM_CHECK(unsavable(field).empty(), "to_toml: ", key, " = ", toml_value(field),
                " cannot be saved: ", unsavable(field));
    s += std::string(key) + " = " + toml_value(field) + "\n";
  });
  return s;
}

std::string effective_data_dir(const TrainConfig& cfg) {
  if (!cfg.data_dir.empty()) return cfg.data_dir;
  if (cfg.dataset == "fashion-mnist") return "/usr/share/datasets/fashion-mnist";
  return "data/" + cfg.dataset;
}

}  // namespace jem
