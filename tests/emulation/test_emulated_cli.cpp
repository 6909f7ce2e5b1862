// The `jem` program with `--device cuda` on the emulated device (tests/emulation/README.md): the
// CLI's CUDA paths end to end, train -> resume -> eval -> sample and bench, which the GPU tests
// of tests/cuda reach only through the library. A checkpoint written by the CUDA backend must
// load on the CPU backend and give the same accuracy there.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "synthetic_data.hpp"
#include "test_support.hpp"

namespace fs = std::filesystem;

namespace {

using jem::test::jem_cmd;

// The number after `key` in the output ("test accuracy 0.1234" -> 0.1234), or -1.
double number_after(const std::string& out, const std::string& key) {
  const auto at = out.rfind(key);
  if (at == std::string::npos) return -1.0;
  return std::stod(out.substr(at + key.size()));
}

class EmulatedCli : public ::testing::Test {
 protected:
  void SetUp() override { root_ = jem::test::temp_dir("emulated_cli"); }
  void TearDown() override { fs::remove_all(root_); }
  std::string root_;
};

TEST_F(EmulatedCli, InfoListsTheEmulatedDevice) {
  std::string out;
  ASSERT_EQ(jem::test::run_command(jem_cmd("info"), &out), 0) << out;
  EXPECT_NE(out.find("emulated CUDA device (CPU)"), std::string::npos) << out;
}

TEST_F(EmulatedCli, TrainResumeEvalSampleOnTheCudaBackend) {
  const std::string data = root_ + "/data", run = root_ + "/run";
  fs::create_directories(data);
  jem::test::write_synthetic_mnist(data, 120, 40, 8, 10);
  const std::string args = "train --dataset mnist --data_dir " + data +
                           " --depth 10 --width 1 --batch_size 8 --n_valid 16 --buffer_size 40"
                           " --sgld_steps 2 --eval_batch 16 --device cuda --log_every 2 --out " +
                           run;
  std::string out;
  ASSERT_EQ(jem::test::run_command(jem_cmd(args + " --max_iters 4"), &out), 0) << out;
  EXPECT_NE(out.find("cuda:0"), std::string::npos) << "the run must say it is on the GPU\n" << out;
  EXPECT_NE(out.find("test accuracy"), std::string::npos) << out;
  ASSERT_EQ(jem::test::run_command(jem_cmd("train --resume " + run + " --max_iters 6"), &out), 0)
      << out;
  EXPECT_NE(out.find("trained 6 iterations"), std::string::npos) << out;
  const std::string ck = run + "/checkpoints/ckpt_000000006.safetensors";
  ASSERT_TRUE(fs::exists(ck));

  // The same checkpoint evaluated on both backends: the same accuracy (argmax of logits that
  // agree to float rounding; a tie broken differently would move it by 1/40 at most).
  std::string cuda_out, cpu_out;
  ASSERT_EQ(jem::test::run_command(jem_cmd("eval --device cuda --checkpoint " + ck), &cuda_out), 0)
      << cuda_out;
  ASSERT_EQ(jem::test::run_command(jem_cmd("eval --device cpu --checkpoint " + ck), &cpu_out), 0)
      << cpu_out;
  const double cuda_acc = number_after(cuda_out, "accuracy"),
               cpu_acc = number_after(cpu_out, "accuracy");
  ASSERT_GE(cuda_acc, 0.0) << cuda_out;
  EXPECT_NEAR(cuda_acc, cpu_acc, 1.0 / 40 + 1e-9) << cuda_out << "\n" << cpu_out;

  ASSERT_EQ(jem::test::run_command(jem_cmd("sample --device cuda --checkpoint " + ck + " --out " +
                                           root_ + "/s.png --n 10 --steps 2 --conditional"),
                                   &out),
            0)
      << out;
  EXPECT_TRUE(fs::exists(root_ + "/s.png"));
}

TEST_F(EmulatedCli, BenchOnTheCudaBackendWritesItsJson) {
  std::ofstream(root_ + "/tiny.toml")
      << "dataset = \"fashion-mnist\"\ndepth = 10\nwidth = 1\nbatch_size = 4\n"
         "px_batch_size = 2\nsgld_steps = 2\nbuffer_size = 20\neval_batch = 8\n";
  const std::string json_path = root_ + "/b.json";
  std::string out;
  ASSERT_EQ(jem::test::run_command(jem_cmd("bench --device cuda --config " + root_ +
                                           "/tiny.toml --iterations 2 --warmup 1 --json " +
                                           json_path),
                                   &out),
            0)
      << out;
  std::ifstream in(json_path);
  ASSERT_TRUE(in.good()) << json_path << "\n" << out;
  const auto j = nlohmann::json::parse(in);
  EXPECT_NE(j.dump().find("emulated CUDA device"), std::string::npos) << j.dump(2);
  ASSERT_EQ(j["iteration_ms"].size(), 2u);
  EXPECT_GT(j["ms_per_iteration"]["total"].get<double>(), 0.0);
  // The device's memory in use is reported on a CUDA backend (the emulated runtime counts it).
  EXPECT_GT(j["device_memory_used_bytes"].get<double>(), 0.0) << j.dump(2);
  EXPECT_EQ(j["graph_launches_during_timed_iterations"], 0);
  // With JEM_CUDA_GRAPHS=1 the backend says so, and the timed iterations launch the captured
  // chains (warm-up 2: the first runs them directly, the second captures): one per iteration.
  ASSERT_EQ(jem::test::run_command("JEM_CUDA_GRAPHS=1 " +
                                       jem_cmd("bench --device cuda --config " + root_ +
                                               "/tiny.toml --iterations 2 --warmup 2 --json " +
                                               json_path),
                                   &out),
            0)
      << out;
  std::ifstream in_graphs(json_path);
  const auto g = nlohmann::json::parse(in_graphs);
  EXPECT_NE(g["backend"].get<std::string>().find("CUDA Graphs"), std::string::npos) << g.dump(2);
  EXPECT_EQ(g["graph_launches_during_timed_iterations"], 2) << out;
  EXPECT_NE(out.find("2 CUDA Graph launches during the timed iterations"), std::string::npos) << out;
}

}  // namespace
