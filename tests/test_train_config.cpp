// The training configuration: defaults are the official recipe, the TOML file and the flags (which
// win) set every key, unknown keys and flags and bad values fail naming the key, validate() names
// the key and value, and to_toml() reads back into an identical struct.
#include <gtest/gtest.h>

#include <CLI/CLI.hpp>

#include <bit>
#include <cmath>
#include <fstream>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "jem/error.hpp"
#include "jem/train_config.hpp"
#include "test_support.hpp"

using namespace jem;

namespace {

// Writes `text` to a fresh file under one temporary directory and returns its path.
std::string write_toml(const std::string& text) {
  static const std::string dir = test::temp_dir("train_config");
  static int n = 0;
  const std::string path = dir + "/config" + std::to_string(n++) + ".toml";
  std::ofstream f(path);
  f << text;
  EXPECT_TRUE(f.good()) << path;
  return path;
}

// The jem::Error message of parse_train_config(args), or "" when it did not throw.
std::string parse_error(const std::vector<std::string>& args) {
  try {
    parse_train_config(args);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// The jem::Error message of validate(cfg, n_classes), or "" when it did not throw.
std::string validate_error(const TrainConfig& cfg, int n_classes = 10) {
  try {
    validate(cfg, n_classes);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TrainConfig round_trip(const TrainConfig& cfg) { return parse_train_config({"--config", write_toml(to_toml(cfg))}); }

}  // namespace

TEST(TrainConfig, DefaultsAreTheOfficialRecipe) {
  const TrainConfig c;
  EXPECT_EQ(c.out, "runs/jem");
  EXPECT_EQ(c.seed, 1u);
  EXPECT_EQ(c.device, "auto");
  EXPECT_EQ(c.threads, 0);
  EXPECT_EQ(c.dataset, "cifar10");
  EXPECT_EQ(c.data_dir, "");
  EXPECT_EQ(c.n_valid, 5000);
  EXPECT_TRUE(c.augment);
  EXPECT_TRUE(c.flip);
  EXPECT_EQ(c.sigma, 0.03);
  EXPECT_EQ(c.batch_size, 64);
  EXPECT_EQ(c.depth, 28);
  EXPECT_EQ(c.width, 10);
  EXPECT_EQ(c.slope, 0.2);
  EXPECT_EQ(c.buffer_size, 10000);
  EXPECT_EQ(c.reinit_freq, 0.05);
  EXPECT_EQ(c.sgld_steps, 20);
  EXPECT_EQ(c.sgld_lr, 1.0);
  EXPECT_EQ(c.sgld_std, 0.01);
  EXPECT_FALSE(c.clamp);
  EXPECT_FALSE(c.class_cond_buffer);
  EXPECT_EQ(c.w_px, 1.0);
  EXPECT_EQ(c.w_pxy, 0.0);
  EXPECT_EQ(c.w_l2, 0.0);
  EXPECT_EQ(c.optimizer, "adam");
  EXPECT_EQ(c.lr, 1e-4);
  EXPECT_EQ(c.beta1, 0.9);
  EXPECT_EQ(c.beta2, 0.999);
  EXPECT_EQ(c.eps, 1e-8);
  EXPECT_EQ(c.weight_decay, 0.0);
  EXPECT_EQ(c.momentum, 0.9);
  EXPECT_EQ(c.warmup_iters, 1000);
  EXPECT_EQ(c.decay_epochs, (std::vector<int>{160, 180}));
  EXPECT_EQ(c.decay_rate, 0.3);
  EXPECT_EQ(c.epochs, 200);
  EXPECT_EQ(c.max_iters, 0);
  EXPECT_EQ(c.max_minutes, 0.0);
  EXPECT_EQ(c.eval_every, 1);
  EXPECT_EQ(c.log_every, 100);
  EXPECT_EQ(c.stats_every, 10);
  EXPECT_EQ(c.allreduce_bucket_mb, 25.0);
  EXPECT_EQ(c.sample_every, 1000);
  EXPECT_EQ(c.ckpt_every, 1000);
  EXPECT_EQ(c.keep_ckpts, 3);
  EXPECT_EQ(c.eval_batch, 256);
  EXPECT_TRUE(c.guard);
  EXPECT_EQ(c.guard_retries, 5);
  EXPECT_EQ(c.guard_lr_factor, 0.5);
  EXPECT_EQ(c.guard_limit, 1e8);

  EXPECT_EQ(validate_error(c, 10), "");
  EXPECT_EQ(validate_error(c, 100), "");
  EXPECT_TRUE(parse_train_config({}) == c);  // registering the options changes nothing
}

TEST(TrainConfig, TomlFileSetsValues) {
  const std::string path = write_toml(
      "# a comment line\n"
      "out = \"runs/my run\"\n"
      "dataset = \"svhn\"\n"
      "augment = false\n"
      "flip = false  # inline comment\n"
      "clamp = true\n"
      "lr = 3e-4\n"
      "sgld_steps = 10\n"
      "seed = 18446744073709551615\n"
      "max_iters = 5000000000\n"
      "decay_epochs = [10, 20, 30]\n"
      "optimizer = 'sgd'\n");
  const TrainConfig c = parse_train_config({"--config", path});
  EXPECT_EQ(c.out, "runs/my run");
  EXPECT_EQ(c.dataset, "svhn");
  EXPECT_FALSE(c.augment);
  EXPECT_FALSE(c.flip);
  EXPECT_TRUE(c.clamp);
  EXPECT_EQ(c.lr, 3e-4);
  EXPECT_EQ(c.sgld_steps, 10);
  EXPECT_EQ(c.seed, std::numeric_limits<std::uint64_t>::max());
  EXPECT_EQ(c.max_iters, 5000000000LL);
  EXPECT_EQ(c.decay_epochs, (std::vector<int>{10, 20, 30}));
  EXPECT_EQ(c.optimizer, "sgd");
  EXPECT_EQ(c.depth, 28);  // keys not in the file keep their defaults
  EXPECT_TRUE(c.guard);
}

TEST(TrainConfig, FlagsSetValues) {
  const TrainConfig c = parse_train_config(
      {"--augment", "false", "--decay_epochs", "5", "7", "--device", "cuda:1", "--w_pxy", "0.5", "--guard", "0"});
  EXPECT_FALSE(c.augment);
  EXPECT_EQ(c.decay_epochs, (std::vector<int>{5, 7}));
  EXPECT_EQ(c.device, "cuda:1");
  EXPECT_EQ(c.w_pxy, 0.5);
  EXPECT_FALSE(c.guard);
}

TEST(TrainConfig, FlagOverridesFile) {
  const std::string path =
      write_toml("lr = 0.5\nsgld_steps = 7\naugment = false\ndecay_epochs = [1, 2]\nwidth = 2\n");
  // Before and after --config alike: the command line wins, the file fills the rest.
  for (const auto& args : {std::vector<std::string>{"--lr", "3e-4", "--config", path, "--augment", "true",
                                                    "--decay_epochs", "50"},
                           std::vector<std::string>{"--config", path, "--decay_epochs", "50", "--augment", "true",
                                                    "--lr", "3e-4"}}) {
    const TrainConfig c = parse_train_config(args);
    EXPECT_EQ(c.lr, 3e-4);
    EXPECT_TRUE(c.augment);
    EXPECT_EQ(c.decay_epochs, std::vector<int>{50});
    EXPECT_EQ(c.sgld_steps, 7);
    EXPECT_EQ(c.width, 2);
  }
}

TEST(TrainConfig, UnknownKeyInFileFailsNamingIt) {
  const std::string msg = parse_error({"--config", write_toml("lr = 0.1\nbogus_key = 3\n")});
  EXPECT_NE(msg.find("unknown key 'bogus_key'"), std::string::npos) << msg;
  // The file is flat: a section is an error, not a silently ignored block.
  const std::string sect = parse_error({"--config", write_toml("[model]\ndepth = 16\n")});
  EXPECT_NE(sect.find("[model]"), std::string::npos) << sect;
  const std::string twice = parse_error({"--config", write_toml("lr = 0.1\ndepth = 16\nlr = 0.2\n")});
  EXPECT_NE(twice.find("'lr' is set twice"), std::string::npos) << twice;
  const std::string cfg = parse_error({"--config", write_toml("config = \"other.toml\"\n")});
  EXPECT_NE(cfg.find("'config' is not allowed"), std::string::npos) << cfg;
  const std::string missing = parse_error({"--config", "/nonexistent/jem.toml"});
  EXPECT_NE(missing.find("/nonexistent/jem.toml"), std::string::npos) << missing;
}

TEST(TrainConfig, UnknownFlagFailsNamingIt) {
  const std::string msg = parse_error({"--lr", "0.1", "--bogus_flag", "3"});
  EXPECT_NE(msg.find("--bogus_flag"), std::string::npos) << msg;
}

TEST(TrainConfig, WrongTypeFailsNamingKey) {
  const std::string file = parse_error({"--config", write_toml("lr = abc\n")});
  EXPECT_NE(file.find("--lr = abc"), std::string::npos) << file;
  const std::string list = parse_error({"--config", write_toml("decay_epochs = [10, x]\n")});
  EXPECT_NE(list.find("--decay_epochs"), std::string::npos) << list;
  const std::string flag = parse_error({"--sgld_steps", "2.5"});
  EXPECT_NE(flag.find("--sgld_steps"), std::string::npos) << flag;
  const std::string boolean = parse_error({"--augment", "maybe"});
  EXPECT_NE(boolean.find("--augment"), std::string::npos) << boolean;
  // CLI11 alone would read -1 into the unsigned seed as 2^64 - 1.
  const std::string seed = parse_error({"--seed", "-1"});
  EXPECT_NE(seed.find("--seed"), std::string::npos) << seed;
}

// `jem train` is a subcommand, where CLI11 2.1.2's own set_config() would ignore the file.
TEST(TrainConfig, WorksOnASubcommand) {
  const std::string path = write_toml("lr = 0.5\nsgld_steps = 7\n");
  CLI::App app{"jem"};
  TrainConfig cfg;
  double lr_seen = 0;
  int steps_seen = 0;
  auto* train = app.add_subcommand("train", "Train");
  add_train_options(*train, cfg);
  train->callback([&] { lr_seen = cfg.lr, steps_seen = cfg.sgld_steps; });  // runs after the file is read
  std::vector<std::string> args{"3", "--sgld_steps", path, "--config", "train"};  // reversed
  app.parse(args);
  EXPECT_EQ(lr_seen, 0.5);
  EXPECT_EQ(steps_seen, 3);

  CLI::App app2{"jem"};
  TrainConfig cfg2;
  add_train_options(*app2.add_subcommand("train", "Train"), cfg2);
  std::vector<std::string> bad{write_toml("bogus_key = 1\n"), "--config", "train"};
  try {
    app2.parse(bad);
    ADD_FAILURE() << "an unknown key on a subcommand did not fail";
  } catch (const CLI::ParseError& e) {
    EXPECT_NE(std::string(e.what()).find("bogus_key"), std::string::npos) << e.what();
  }
}

TEST(TrainConfig, HelpShowsKeysAndDefaults) {
  CLI::App app{"jem"};
  TrainConfig cfg;
  add_train_options(app, cfg);
  const std::string help = app.help();
  for (const char* s : {"--config", "--sgld_steps", "=20", "--lr", "=1e-4", "\"runs/jem\"", "[160, 180]",
                        "--guard_limit", "=1e8", "--augment", "=true"})
    EXPECT_NE(help.find(s), std::string::npos) << s << " not in\n" << help;
}

TEST(TrainConfig, ValidateNamesKeyAndValue) {
  const std::vector<std::pair<std::function<void(TrainConfig&)>, std::string>> cases{
      {[](TrainConfig& c) { c.sgld_steps = -3; }, "config: sgld_steps = -3 must be >= 0"},
      {[](TrainConfig& c) { c.batch_size = 0; }, "config: batch_size = 0 must be >= 1"},
      {[](TrainConfig& c) { c.buffer_size = 63; }, "config: buffer_size = 63 must be >= batch_size (64)"},
      {[](TrainConfig& c) { c.lr = 0; }, "config: lr = 0.0 must be > 0"},
      {[](TrainConfig& c) { c.lr = std::nan(""); }, "config: lr = nan must be > 0"},
      {[](TrainConfig& c) { c.reinit_freq = 1.5; }, "config: reinit_freq = 1.5 must be in [0, 1]"},
      {[](TrainConfig& c) { c.reinit_freq = -0.1; }, "config: reinit_freq = -0.1 must be in [0, 1]"},
      {[](TrainConfig& c) { c.depth = 27; }, "config: depth = 27 must be 6n+4"},
      {[](TrainConfig& c) { c.depth = 4; }, "config: depth = 4 must be 6n+4"},
      {[](TrainConfig& c) { c.width = 0; }, "config: width = 0 must be >= 1"},
      {[](TrainConfig& c) { c.epochs = 0; }, "config: epochs = 0 must be >= 1"},
      {[](TrainConfig& c) { c.keep_ckpts = 0; }, "config: keep_ckpts = 0 must be >= 1"},
      {[](TrainConfig& c) { c.decay_epochs = {180, 160}; }, "config: decay_epochs = [180, 160] must be strictly ascending"},
      {[](TrainConfig& c) { c.decay_epochs = {160, 160}; }, "config: decay_epochs = [160, 160] must be strictly ascending"},
      {[](TrainConfig& c) { c.decay_epochs = {0, 160}; }, "config: decay_epochs = [0, 160] must be >= 1"},
      {[](TrainConfig& c) { c.decay_epochs = {}; }, "config: decay_epochs = [] must list at least one epoch"},
      {[](TrainConfig& c) { c.guard_lr_factor = 1.0; }, "config: guard_lr_factor = 1.0 must be in (0, 1)"},
      {[](TrainConfig& c) { c.guard_lr_factor = 0.0; }, "config: guard_lr_factor = 0.0 must be in (0, 1)"},
      {[](TrainConfig& c) { c.dataset = "imagenet"; }, "config: dataset = \"imagenet\" is not one of"},
      {[](TrainConfig& c) { c.optimizer = "lamb"; }, "config: optimizer = \"lamb\" is not one of adam, adamw, sgd"},
      {[](TrainConfig& c) { c.lr_schedule = "linear"; }, "config: lr_schedule = \"linear\" is not one of step, cosine"},
      {[](TrainConfig& c) { c.device = "gpu"; }, "config: device = \"gpu\" must be auto, cpu, cuda or cuda:N"},
      {[](TrainConfig& c) { c.device = "cuda:"; }, "config: device = \"cuda:\" must be"},
      {[](TrainConfig& c) { c.device = "cuda:x"; }, "config: device = \"cuda:x\" must be"},
      {[](TrainConfig& c) { c.threads = -1; }, "config: threads = -1 must be >= 0"},
      {[](TrainConfig& c) { c.n_valid = -1; }, "config: n_valid = -1 must be >= 0"},
      {[](TrainConfig& c) { c.sigma = -0.5; }, "config: sigma = -0.5 must be >= 0"},
      {[](TrainConfig& c) { c.beta2 = 1.0; }, "config: beta2 = 1.0 must be in [0, 1)"},
      {[](TrainConfig& c) { c.eps = 0; }, "config: eps = 0.0 must be > 0"},
      {[](TrainConfig& c) { c.warmup_iters = -1; }, "config: warmup_iters = -1 must be >= 0"},
      {[](TrainConfig& c) { c.max_iters = -1; }, "config: max_iters = -1 must be >= 0"},
      {[](TrainConfig& c) { c.max_minutes = -1; }, "config: max_minutes = -1.0 must be >= 0"},
      {[](TrainConfig& c) { c.log_every = 0; }, "config: log_every = 0 must be >= 1"},
      {[](TrainConfig& c) { c.stats_every = 0; }, "config: stats_every = 0 must be in [1, 1000]"},
      {[](TrainConfig& c) { c.allreduce_bucket_mb = -1; }, "config: allreduce_bucket_mb = -1.0 must be in [0, 4096]"},
      {[](TrainConfig& c) { c.stats_every = 1001; }, "config: stats_every = 1001 must be in [1, 1000]"},
      {[](TrainConfig& c) { c.guard_limit = 0; }, "config: guard_limit = 0.0 must be > 0"},
      {[](TrainConfig& c) { c.out = ""; }, "config: out = \"\" must not be empty"},
      {[](TrainConfig& c) { c.out = "runs/#1"; }, "config: out = \"runs/#1\" cannot be saved in config.toml: it contains '#'"},
      {[](TrainConfig& c) { c.data_dir = "it's \"x\""; }, "config: data_dir = "},
  };
  for (const auto& [mutate, expected] : cases) {
    TrainConfig c;
    mutate(c);
    const std::string msg = validate_error(c);
    EXPECT_NE(msg.find(expected), std::string::npos) << "expected \"" << expected << "\", got \"" << msg << "\"";
  }
  // Boundaries that are allowed.
  TrainConfig ok;
  ok.depth = 10, ok.sgld_steps = 0, ok.buffer_size = ok.batch_size, ok.reinit_freq = 1, ok.device = "cuda:3";
  ok.dataset = "fashion-mnist", ok.decay_epochs = {1};
  EXPECT_EQ(validate_error(ok), "");
}

TEST(TrainConfig, ClassConditionalBufferMustDivideByClasses) {
  TrainConfig c;
  c.buffer_size = 10001;
  EXPECT_EQ(validate_error(c, 10), "");  // unconditional sampling: any size
  c.class_cond_buffer = true;
  std::string msg = validate_error(c, 10);
  EXPECT_NE(msg.find("config: buffer_size = 10001 is not divisible by the 10 classes (needed by class_cond_buffer)"),
            std::string::npos)
      << msg;
  c.class_cond_buffer = false, c.w_pxy = 1.0;
  msg = validate_error(c, 10);
  EXPECT_NE(msg.find("is not divisible by the 10 classes (needed by w_pxy > 0)"), std::string::npos) << msg;
  c.buffer_size = 10000;
  EXPECT_EQ(validate_error(c, 100), "");
  EXPECT_NE(validate_error(c, 3).find("not divisible by the 3 classes"), std::string::npos);
}

// Every key differs from its default here, so a key missing from to_toml() breaks the equality.
TEST(TrainConfig, TomlRoundTripIsExact) {
  TrainConfig c;
  c.out = "runs/my \"quoted\" run, v2";
  c.seed = std::numeric_limits<std::uint64_t>::max();
  c.device = "cuda:7";
  c.threads = 12;
  c.dataset = "fashion-mnist";
  c.data_dir = "it's a dir\\with backslash, and comma";
  c.n_valid = 0;
  c.augment = false;
  c.flip = false;
  c.sigma = 0.1 + 0.2;  // 0.30000000000000004
  c.batch_size = 7;
  c.depth = 16;
  c.width = 3;
  c.slope = 1.0 / 3;
  c.buffer_size = 70;
  c.reinit_freq = 0.0;
  c.sgld_steps = 0;
  c.sgld_lr = 2.5e-300;
  c.sgld_std = 5e-324;  // the smallest subnormal
  c.clamp = true;
  c.class_cond_buffer = true;
  c.w_px = 0.0;
  c.w_pxy = 1e20;
  c.w_l2 = 0.125;
  c.optimizer = "adamw";
  c.lr = 3e-4;
  c.beta1 = 0.5;
  c.beta2 = 0.99;
  c.eps = 1e-12;
  c.weight_decay = 5e-4;
  c.momentum = 0.0;
  c.warmup_iters = 0;
  c.decay_epochs = {5};
  c.decay_rate = 1.0;
  c.epochs = 1;
  c.max_iters = (std::int64_t{1} << 40) + 1;
  c.max_minutes = 90.5;
  c.eval_every = 2;
  c.log_every = 1;
  c.sample_every = 2;
  c.ckpt_every = 3;
  c.keep_ckpts = 1;
  c.eval_batch = 1;
  c.guard = false;
  c.guard_retries = 0;
  c.guard_lr_factor = 0.1;
  c.guard_limit = std::numeric_limits<double>::infinity();

  const std::string text = to_toml(c);
  EXPECT_EQ(text.rfind("# ", 0), 0u) << "no comment header:\n" << text;
  const TrainConfig back = round_trip(c);
  EXPECT_TRUE(back == c) << text << "\nread back as\n" << to_toml(back);
  EXPECT_EQ(back.out, c.out);
  EXPECT_EQ(back.data_dir, c.data_dir);
  EXPECT_TRUE(round_trip(TrainConfig{}) == TrainConfig{});
  // The other quoting: a string with ' (double quotes) and one wrapped in spaces.
  TrainConfig q;
  q.out = "  it's  ";
  q.data_dir = "plain";
  EXPECT_TRUE(round_trip(q) == q) << to_toml(q);
}

TEST(TrainConfig, TomlRoundTripOfRandomDoubles) {
  std::mt19937_64 rng(42);
  for (int i = 0; i < 100; ++i) {
    TrainConfig c;
    for (double* d : {&c.sigma, &c.slope, &c.reinit_freq, &c.sgld_lr, &c.sgld_std, &c.lr, &c.beta1, &c.beta2, &c.eps,
                      &c.w_l2, &c.guard_limit}) {
      do *d = std::bit_cast<double>(rng()); while (!std::isfinite(*d));
    }
    const TrainConfig back = round_trip(c);
    ASSERT_TRUE(back == c) << to_toml(c) << "\nread back as\n" << to_toml(back);
  }
}

TEST(TrainConfig, UnsavableStringsAreRejected) {
  for (const std::string& s : {std::string("a#b"), std::string("both ' and \""), std::string("line\nbreak"),
                               std::string("\"wrapped\""), std::string("ends\\")}) {
    TrainConfig c;
    c.out = s;
    EXPECT_NE(validate_error(c).find("config: out = "), std::string::npos) << s;
    EXPECT_THROW(to_toml(c), Error) << s;
  }
}

TEST(TrainConfig, EffectiveDataDir) {
  TrainConfig c;
  EXPECT_EQ(effective_data_dir(c), "data/cifar10");
  c.dataset = "fashion-mnist";
  EXPECT_EQ(effective_data_dir(c), "/usr/share/datasets/fashion-mnist");
  c.data_dir = "/mnt/fm";
  EXPECT_EQ(effective_data_dir(c), "/mnt/fm");
}
