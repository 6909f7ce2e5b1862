// `jem eval --mode ...` and `jem report` end to end on a tiny trained checkpoint, their errors on
// bad input, and official PyTorch checkpoints converted by tools/convert_official_checkpoint.py.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "jem/checkpoint.hpp"
#include "jem/npz.hpp"
#include "jem/png_grid.hpp"
#include "inception_weights.hpp"
#include "jem/safetensors.hpp"
#include "synthetic_data.hpp"
#include "test_support.hpp"

using namespace jem;
using jem::test::run_command;
namespace fs = std::filesystem;

namespace {

using jem::test::jem_cmd;

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

bool one_line(const std::string& out) { return !out.empty() && out.find('\n') == out.size() - 1; }

// One tiny trained checkpoint (WRN-10-1 on 8x8 synthetic digits, 4 iterations) shared by the
// tests of this file: training is the slow part.
class EvalCli : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = new std::string(jem::test::temp_dir("eval_cli"));
    data_ = new std::string(*root_ + "/data");
    fs::create_directories(*data_);
    jem::test::write_synthetic_mnist(*data_, 120, 40, 8, 10);
    const std::string run = *root_ + "/run";
    std::string out;
    const int rc = run_command(jem_cmd("train --dataset mnist --data_dir " + *data_ +
                                       " --depth 10 --width 1 --batch_size 8 --n_valid 16 --buffer_size 40 "
                                       "--sgld_steps 2 --eval_batch 16 --threads 1 --device cpu --max_iters 4 --out " +
                                       run),
                               &out);
    ASSERT_EQ(rc, 0) << out;
    ckpt_ = new std::string(run + "/checkpoints/ckpt_000000004.safetensors");
    ASSERT_TRUE(fs::exists(*ckpt_));
  }
  static void TearDownTestSuite() {
    fs::remove_all(*root_);
    delete root_;
    delete data_;
    delete ckpt_;
  }
  static std::string* root_;
  static std::string* data_;
  static std::string* ckpt_;
  // Small settings for every mode: 24 images, 2 PGD steps, 1 round of 2 SGLD steps.
  static std::string small() {
    return " --device cpu --threads 1 --batch 16 --limit 24 --robust_count 8 --pgd_steps 2 --eps_linf 0,8/255 "
           "--eps_l2 0,0.5 --n_samples 4 --per_class 2 --rounds 1 --steps 2 ";
  }
};
std::string* EvalCli::root_ = nullptr;
std::string* EvalCli::data_ = nullptr;
std::string* EvalCli::ckpt_ = nullptr;

TEST_F(EvalCli, ReportWritesTablesJsonPlotsAndSamples) {
  const std::string out_dir = *root_ + "/report";
  std::string out;
  // The test set itself as an OOD "data set": identical images on both sides give AUROC 1/2.
  ASSERT_EQ(run_command(jem_cmd("report --checkpoint " + *ckpt_ + small() + "--out " + out_dir +
                                " --purify_steps 1 --ood interp,noise,constant,mnist:" + *data_),
                        &out),
            0)
      << out;
  const std::string md = read_text(out_dir + "/report.md");
  for (const char* s : {"## Classification and generation", "## Calibration", "## Out-of-distribution detection",
                        "## Adversarial robustness", "92.9", "4.87%", "![reliability diagram](reliability.png)"})
    EXPECT_NE(md.find(s), std::string::npos) << s << "\n" << md;
  const auto j = nlohmann::json::parse(read_text(out_dir + "/report.json"));
  EXPECT_EQ(j["images"], 24);
  const double acc = j["accuracy"]["accuracy"];
  EXPECT_GE(acc, 0.0);
  EXPECT_LE(acc, 1.0);
  const double ece = j["calibration"]["ece"];
  EXPECT_GE(ece, 0.0);
  EXPECT_LE(ece, 1.0);
  EXPECT_EQ(j["calibration"]["bins"].size(), 20u);
  for (const char* set : {"interp", "noise", "constant", "mnist"})
    for (const char* score : {"logsumexp", "max_softmax", "grad_norm"}) {
      const double a = j["ood"][set]["auroc"][score];
      EXPECT_TRUE(a >= 0.0 && a <= 1.0) << set << " " << score;
    }
  for (const char* score : {"logsumexp", "max_softmax", "grad_norm"})
    EXPECT_NEAR(double(j["ood"]["mnist"]["auroc"][score]), 0.5, 1e-12) << score;
  ASSERT_EQ(j["robustness"]["points"].size(), 4u);
  EXPECT_EQ(j["robustness"]["purify_steps"], 1);
  EXPECT_NE(md.find("1 SGLD purification steps"), std::string::npos) << md;
  // eps = 0 is the clean accuracy of the attacked images; a larger budget cannot help.
  for (const auto& p : j["robustness"]["points"]) {
    const double a = p["accuracy"];
    EXPECT_TRUE(a >= 0.0 && a <= 1.0);
  }
  for (const char* f : {"reliability.png", "ood_logsumexp.png", "ood_max_softmax.png", "ood_grad_norm.png",
                        "robustness.png", "samples_fresh.png", "samples_conditional.png", "buffer_by_class.png"}) {
    int w = 0, h = 0, c = 0;
    EXPECT_NO_THROW(read_png_gray_or_rgb(out_dir + "/" + f, &w, &h, &c)) << f;
  }
  const auto arrays = read_npz(out_dir + "/samples.npz");
  std::map<std::string, NpyArray> by_name;
  for (const auto& a : arrays) by_name[a.name] = a;
  EXPECT_EQ(by_name["fresh"].shape, (std::vector<std::int64_t>{4, 1, 8, 8}));
  EXPECT_EQ(by_name["conditional"].shape, (std::vector<std::int64_t>{20, 1, 8, 8}));
  EXPECT_EQ(by_name["conditional_labels"].i32[19], 9);
  EXPECT_EQ(by_name["buffer_by_class"].shape, (std::vector<std::int64_t>{20, 1, 8, 8}));
  for (const char* mode : {"accuracy", "calibration", "ood", "samples", "robustness"})
    EXPECT_TRUE(j["seconds"].contains(mode)) << mode;
  EXPECT_FALSE(j.contains("fid"));
}

TEST_F(EvalCli, SingleModesAndFidWithoutInception) {
  std::string out;
  ASSERT_EQ(
      run_command(jem_cmd("eval --checkpoint " + *ckpt_ + small() + "--mode calibration --out " + *root_ + "/c"), &out),
      0)
      << out;
  EXPECT_NE(out.find("calibration: ECE"), std::string::npos) << out;
  EXPECT_TRUE(fs::exists(*root_ + "/c/reliability.png"));
  ASSERT_EQ(run_command(jem_cmd("eval --checkpoint " + *ckpt_ + small() + "--mode accuracy,ood --ood noise --out " +
                                *root_ + "/o"),
                        &out),
            0)
      << out;
  EXPECT_NE(out.find("ood noise"), std::string::npos) << out;
  // fid without weights: a clear one-line error naming the missing file, never a number.
  EXPECT_NE(run_command(jem_cmd("eval --checkpoint " + *ckpt_ + small() + "--mode fid --inception x.bin"), &out), 0);
  EXPECT_NE(out.find("x.bin: Inception weights not found"), std::string::npos) << out;
  EXPECT_TRUE(one_line(out)) << out;
  // fid with (random) Inception weights: the whole path, samples to FID and IS, on 4 images.
  const std::string weights = jem::test::write_random_weights(*root_);
  ASSERT_EQ(run_command(jem_cmd("eval --checkpoint " + *ckpt_ + small() + "--mode fid --fid_count 4 --is_splits 2 --inception " +
                                weights + " --out " + *root_ + "/f"),
                        &out),
            0)
      << out;
  EXPECT_NE(out.find("FID"), std::string::npos) << out;
}

TEST_F(EvalCli, BadInputGivesOneLineErrorsNamingIt) {
  std::string out;
  EXPECT_NE(run_command(jem_cmd("eval --checkpoint " + *ckpt_ + " --device cpu --mode wrong"), &out), 0);
  EXPECT_NE(out.find("'wrong'"), std::string::npos) << out;
  EXPECT_TRUE(one_line(out)) << out;
  EXPECT_NE(run_command(jem_cmd("report --checkpoint " + *root_ + "/none.safetensors --device cpu"), &out), 0);
  EXPECT_NE(out.find("none.safetensors"), std::string::npos) << out;
  EXPECT_TRUE(one_line(out)) << out;
  EXPECT_NE(run_command(jem_cmd("eval --checkpoint " + *ckpt_ + " --device cpu --mode ood --ood noise,imagenet"), &out),
            0);
  EXPECT_NE(out.find("'imagenet'"), std::string::npos) << out;
  EXPECT_TRUE(one_line(out)) << out;
  // A data set the checkpoint's model does not fit: 12x12 images for a model of 8x8.
  const std::string big = *root_ + "/big";
  fs::create_directories(big);
  jem::test::write_synthetic_mnist(big, 40, 16, 12, 10);
  EXPECT_NE(run_command(jem_cmd("eval --checkpoint " + *ckpt_ + " --device cpu --data_dir " + big), &out), 0);
  EXPECT_NE(out.find("1x12x12"), std::string::npos) << out;
  EXPECT_TRUE(one_line(out)) << out;
  // A checkpoint whose tensors belong to another model than its metadata says (width 2).
  {
    const auto f = safetensors::File::read(*ckpt_);
    safetensors::Writer w;
    for (const std::string& n : f.names())
      if (f.info(n).dtype == "F32") w.add_f32(n, f.info(n).shape, f.f32(n).data());
    for (const auto& [k, v] : f.metadata()) w.set_metadata(k, k == "width" ? "2" : v);
    w.write(*root_ + "/other_model.safetensors");
  }
  EXPECT_NE(run_command(jem_cmd("eval --checkpoint " + *root_ + "/other_model.safetensors --device cpu"), &out), 0);
  EXPECT_NE(out.find("other_model.safetensors"), std::string::npos) << out;
  EXPECT_NE(out.find("f.layer1.0.conv1.weight"), std::string::npos) << out;
  EXPECT_TRUE(one_line(out)) << out;
  // A file that is not a checkpoint.
  std::ofstream(*root_ + "/junk.safetensors") << "not a checkpoint";
  EXPECT_NE(run_command(jem_cmd("eval --checkpoint " + *root_ + "/junk.safetensors --device cpu"), &out), 0);
  EXPECT_NE(out.find("junk.safetensors"), std::string::npos) << out;
  EXPECT_TRUE(one_line(out)) << out;
  // A bad budget names its option.
  EXPECT_NE(
      run_command(jem_cmd("eval --checkpoint " + *ckpt_ + " --device cpu --mode robustness --eps_linf 8/x"), &out), 0);
  EXPECT_NE(out.find("--eps_linf"), std::string::npos) << out;
  // --weights ema on a checkpoint of a run without a moving average (this one trained with ema 0).
  EXPECT_NE(run_command(jem_cmd("eval --checkpoint " + *ckpt_ + " --device cpu --weights ema"), &out), 0);
  EXPECT_NE(out.find("optim.ema"), std::string::npos) << out;
  EXPECT_NE(out.find(fs::path(*ckpt_).filename().string()), std::string::npos) << out;
  EXPECT_TRUE(one_line(out)) << out;
  EXPECT_NE(run_command(jem_cmd("sample --checkpoint " + *ckpt_ + " --device cpu --out " + *root_ +
                                "/g.png --weights ema"),
                        &out),
            0);
  EXPECT_NE(out.find("optim.ema"), std::string::npos) << out;
}

bool have_torch(std::string* why) {
  std::string out;
  if (run_command("/usr/bin/python3 -c 'import torch, numpy'", &out) == 0) return true;
  *why = "/usr/bin/python3 cannot import torch and numpy (apt-get install python3-torch): " + out;
  return false;
}

TEST_F(EvalCli, ConvertedOfficialCheckpointGivesPyTorchsLogits) {
  std::string why;
  if (!have_torch(&why)) GTEST_SKIP() << why;
  const std::string dir = *root_ + "/official";
  fs::create_directories(dir);
  const std::string tools = jem::test::source_path("tools");
  std::string out;
  // One Python process writes the official checkpoint, the PyTorch logits, and converts it
  // (the torch import dominates the time of this test).
  ASSERT_EQ(
      run_command("/usr/bin/python3 " + tools + "/make_official_test_checkpoint.py " + dir + "/official.pt " + dir +
                      "/ref.npz --depth 10 --width 2 --channels 1 --image_size 8 --classes 10 --n 12 --convert " + dir +
                      "/converted.safetensors --dataset mnist",
                  &out),
      0)
      << out;
  const WrnConfig mc = checkpoint_model_config(dir + "/converted.safetensors");
  EXPECT_EQ(mc.depth, 10);
  EXPECT_EQ(mc.width, 2);
  EXPECT_EQ(mc.image_size, 8);
  const auto ref = read_npz(dir + "/ref.npz");
  ASSERT_EQ(ref.size(), 2u);
  const NpyArray& x = ref[0].name == "inputs" ? ref[0] : ref[1];
  const NpyArray& want = ref[0].name == "logits" ? ref[0] : ref[1];
  auto be = make_cpu_backend(1);
  WideResNet model(mc, *be, 12);
  model.load(safetensors::File::read(dir + "/converted.safetensors"));
  const auto got = be->to_vector(model.forward(be->from_vector(x.f32, Shape{12, 1, 8, 8})));
  // float32 forward against PyTorch's float64: rounding of a 10-layer net, ~1e-6 relative.
  EXPECT_LT(jem::test::rel_error(got, want.f32), 1e-5);
  double spread = 0;  // the logits differ between classes (a collapsed model would pass trivially)
  for (std::size_t i = 1; i < 10; ++i) spread = std::max(spread, std::abs(double(want.f32[i]) - want.f32[0]));
  EXPECT_GT(spread, 1e-2);
  // jem evaluates it like its own checkpoints.
  ASSERT_EQ(
      run_command(
          jem_cmd("eval --checkpoint " + dir + "/converted.safetensors --device cpu --threads 1 --data_dir " + *data_ +
                  " --limit 16 --mode accuracy,samples --n_samples 2 --per_class 1 --rounds 1 --steps 1 --out " + dir +
                  "/e"),
          &out),
      0)
      << out;
  EXPECT_TRUE(fs::exists(dir + "/e/buffer_by_class.png"));
  // The converter's errors: one line naming the file.
  std::ofstream(dir + "/junk.pt") << "junk";
  EXPECT_NE(run_command("/usr/bin/python3 " + tools + "/convert_official_checkpoint.py " + dir + "/junk.pt " + dir +
                            "/j.safetensors",
                        &out),
            0);
  EXPECT_NE(out.find("junk.pt"), std::string::npos) << out;
  EXPECT_TRUE(one_line(out)) << out;
  EXPECT_FALSE(fs::exists(dir + "/j.safetensors"));
}

}  // namespace
