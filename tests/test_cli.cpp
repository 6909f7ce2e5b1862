// The `jem` executable: configs that ship with the project, exit codes and one-line errors on
// bad input, and the train -> eval -> sample path on a tiny synthetic run.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "jem/blas_kernels.hpp"
#include "jem/runtime.hpp"
#include "jem/train_config.hpp"
#include "synthetic_data.hpp"
#include "test_support.hpp"

using namespace jem;
using jem::test::run_command;
namespace fs = std::filesystem;

namespace {

using jem::test::jem_cmd;

// The last non-empty line of a command's output.
std::string last_line(const std::string& out) {
  auto end = out.find_last_not_of('\n');
  if (end == std::string::npos) return "";
  auto begin = out.rfind('\n', end);
  return out.substr(begin == std::string::npos ? 0 : begin + 1, end - (begin == std::string::npos ? 0 : begin + 1) + 1);
}

TEST(Configs, EveryShippedConfigParsesAndValidates) {
  const std::pair<const char*, int> configs[] = {
      {"configs/cifar10.toml", 10}, {"configs/cifar100.toml", 100}, {"configs/svhn.toml", 10}, {"configs/fashion-mnist.toml", 10}};
  for (const auto& [file, classes] : configs) {
    TrainConfig c;
    ASSERT_NO_THROW(c = parse_train_config({"--config", jem::test::source_path(file)})) << file;
    EXPECT_NO_THROW(validate(c, classes)) << file;
  }
  // The official recipe where the paper gives it.
  const TrainConfig c = parse_train_config({"--config", jem::test::source_path("configs/cifar10.toml")});
  EXPECT_EQ(c.depth, 28);
  EXPECT_EQ(c.width, 10);
  EXPECT_EQ(c.sgld_steps, 20);
  EXPECT_DOUBLE_EQ(c.lr, 1e-4);
  EXPECT_FALSE(parse_train_config({"--config", jem::test::source_path("configs/svhn.toml")}).flip);
  const TrainConfig q = parse_train_config({"--config", jem::test::source_path("configs/fashion-mnist.toml")});
  EXPECT_DOUBLE_EQ(q.w_px, 1.0);  // the quickstart is a real JEM: p(x) on, buffer on, >= 10 steps
  EXPECT_GE(q.sgld_steps, 10);
  EXPECT_LT(q.reinit_freq, 1.0);
  // The stability choices of docs/stability.md: the quickstart keeps the L2 energy term and a
  // guard limit of 1e4; the paper's configs keep the official w_l2 = 0 and 1e8, guard on.
  EXPECT_DOUBLE_EQ(q.w_l2, 0.1);
  EXPECT_TRUE(q.guard);
  EXPECT_DOUBLE_EQ(q.guard_limit, 1e4);
  for (const char* file : {"configs/cifar10.toml", "configs/cifar100.toml", "configs/svhn.toml"}) {
    const TrainConfig p = parse_train_config({"--config", jem::test::source_path(file)});
    EXPECT_DOUBLE_EQ(p.w_l2, 0.0) << file;
    EXPECT_TRUE(p.guard) << file;
    EXPECT_DOUBLE_EQ(p.guard_limit, 1e8) << file;
  }
}

class Cli : public ::testing::Test {
 protected:
  void SetUp() override { root_ = jem::test::temp_dir("cli"); }
  void TearDown() override { fs::remove_all(root_); }
  std::string root_;
};

TEST_F(Cli, BadInputGivesOneLineErrorAndNonZeroExit) {
  std::string out;
  EXPECT_NE(run_command(jem_cmd(""), &out), 0);
  EXPECT_NE(run_command(jem_cmd("train --config " + root_ + "/missing.toml --out " + root_ + "/r"), &out), 0);
  EXPECT_NE(out.find("missing.toml"), std::string::npos) << out;
  {
    std::ofstream(root_ + "/bad.toml") << "depth = 10\nsgld_stepz = 5\n";
  }
  EXPECT_NE(run_command(jem_cmd("train --config " + root_ + "/bad.toml --out " + root_ + "/r"), &out), 0);
  EXPECT_NE(out.find("sgld_stepz"), std::string::npos) << out;
  EXPECT_NE(run_command(jem_cmd("train --bogus 1"), &out), 0);
  EXPECT_NE(out.find("bogus"), std::string::npos) << out;
  EXPECT_NE(run_command(jem_cmd("train --device cpu --dataset mnist --data_dir " + root_ + "/nowhere --out " + root_ + "/r"), &out), 0);
  EXPECT_NE(out.find("nowhere"), std::string::npos) << out;
  EXPECT_EQ(out.find('\n'), out.size() - 1) << "expected one line: " << out;
  EXPECT_FALSE(fs::exists(root_ + "/r")) << "a failed start must not create the run directory";
  EXPECT_NE(run_command(jem_cmd("eval --checkpoint " + root_ + "/none.safetensors"), &out), 0);
  EXPECT_NE(out.find("none.safetensors"), std::string::npos) << out;
  EXPECT_NE(run_command(jem_cmd("train --resume " + root_ + "/r --config " + jem::test::source_path("configs/fashion-mnist.toml")), &out), 0);
  EXPECT_NE(out.find("do not pass --config"), std::string::npos) << out;
}

// OpenBLAS's fallback to its generic kernels on a CPU it does not know (jem/blas_kernels.hpp):
// which kernel set jem asks for, and that the program does ask for it.
TEST(OpenBlasKernels, CoretypeForTheFallback) {
  EXPECT_EQ(openblas_coretype_for("Prescott", true, true), "SkylakeX");
  EXPECT_EQ(openblas_coretype_for("Prescott", true, false), "Haswell");
  EXPECT_EQ(openblas_coretype_for("Prescott", false, false), "");  // an SSE3-only CPU: right as it is
  for (const char* known : {"Haswell", "SkylakeX", "Cooperlake", "Zen", "Sandybridge"})
    EXPECT_EQ(openblas_coretype_for(known, true, true), "") << known;  // detected: left alone
}

TEST(OpenBlasKernels, TheProgramNeverRunsTheFallbackOnAnAvx2Cpu) {
  __builtin_cpu_init();
  if (!(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")))
    GTEST_SKIP() << "no AVX2 + FMA: OpenBLAS's generic kernels are the right ones here";
  std::string out;
  ASSERT_EQ(run_command("env -u OPENBLAS_CORETYPE " + jem_cmd("info"), &out), 0) << out;
  const auto at = out.find("OpenBLAS: ");
  ASSERT_NE(at, std::string::npos) << out;
  const std::string line = out.substr(at, out.find('\n', at) - at);
  EXPECT_EQ(line.find("Prescott"), std::string::npos) << line;
  // A kernel set the user chose is kept.
  ASSERT_EQ(run_command("OPENBLAS_CORETYPE=Haswell " + jem_cmd("info"), &out), 0) << out;
  EXPECT_NE(out.find("Haswell"), std::string::npos) << out;
}

TEST_F(Cli, DeviceCudaWithoutGpuFailsClearlyAndAutoFallsBack) {
  if (!cuda_devices().empty()) GTEST_SKIP() << "this machine has a CUDA device";
  std::string out;
  const std::string data = root_ + "/data";
  fs::create_directories(data);
  jem::test::write_synthetic_mnist(data, 64, 16, 8, 10);
  const std::string base = "train --dataset mnist --data_dir " + data + " --depth 10 --width 1 --batch_size 8 "
                           "--n_valid 8 --buffer_size 40 --sgld_steps 1 --max_iters 2 --eval_batch 16 --threads 1 ";
  EXPECT_NE(run_command(jem_cmd(base + "--device cuda --out " + root_ + "/c"), &out), 0);
  EXPECT_NE(out.find("CUDA"), std::string::npos) << out;
  EXPECT_FALSE(fs::exists(root_ + "/c"));
  EXPECT_EQ(run_command(jem_cmd(base + "--device auto --out " + root_ + "/a"), &out), 0) << out;
  EXPECT_NE(out.find("running on the CPU"), std::string::npos) << out;
}

TEST_F(Cli, TrainResumeEvalSample) {
  const std::string data = root_ + "/data";
  fs::create_directories(data);
  jem::test::write_synthetic_mnist(data, 120, 40, 8, 10);
  const std::string run = root_ + "/run";
  const std::string args = "train --dataset mnist --data_dir " + data + " --depth 10 --width 1 --batch_size 8 "
                           "--n_valid 16 --buffer_size 40 --sgld_steps 2 --eval_batch 16 --threads 2 --device cpu "
                           "--log_every 2 --out " + run;
  std::string out;
  ASSERT_EQ(run_command(jem_cmd(args + " --max_iters 4"), &out), 0) << out;
  EXPECT_NE(out.find("test accuracy"), std::string::npos) << out;
  // Continue to 6 iterations with a flag override on top of the saved config.
  ASSERT_EQ(run_command(jem_cmd("train --resume " + run + " --max_iters 6"), &out), 0) << out;
  EXPECT_NE(out.find("trained 6 iterations"), std::string::npos) << out;
  const std::string ck = run + "/checkpoints/ckpt_000000006.safetensors";
  ASSERT_TRUE(fs::exists(ck));
  ASSERT_EQ(run_command(jem_cmd("eval --device cpu --checkpoint " + ck), &out), 0) << out;
  EXPECT_NE(last_line(out).find("accuracy"), std::string::npos) << out;
  ASSERT_EQ(run_command(jem_cmd("sample --device cpu --checkpoint " + ck + " --out " + root_ + "/s.png --n 10 --steps 2"), &out), 0) << out;
  EXPECT_TRUE(fs::exists(root_ + "/s.png"));
  ASSERT_EQ(run_command(jem_cmd("sample --device cpu --checkpoint " + ck + " --out " + root_ + "/c.png --n 10 --steps 2 --conditional --from buffer"), &out), 0) << out;
  EXPECT_TRUE(fs::exists(root_ + "/c.png"));
}

}  // namespace
