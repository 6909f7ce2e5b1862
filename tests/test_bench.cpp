// Benchmarks: the FLOP counter against a hand count and against the model, the
// device peak table, the timed iteration in-process, and `jem bench` (JSON
// output, bad flags).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "jem/bench.hpp"
#include "jem/flops.hpp"
#include "jem/wide_resnet.hpp"
#include "short_run.hpp"
#include "test_support.hpp"

using namespace jem;
using jem::test::tiny_bench_config;
namespace fs = std::filesystem;

namespace {

// WRN-10-1 (one block per stage) on 1x4x4 images, 2 classes: small enough to
// count by hand.
const WrnConfig kTiny{10, 1, 1, 4, 2};

TEST(Flops, TinyNetworkMatchesAHandCount) {
  // Multiply-adds per image, layer by layer: K * C * R * R * P * Q.
  const double stem = 16.0 * 1 * 9 * (4 * 4); // 1 -> 16, 4x4
  const double l1 =
      16.0 * 16 * 9 * 16 + 16.0 * 16 * 9 * 16; // 16 -> 16 twice, 4x4, identity
  const double l2 = 32.0 * 16 * 9 * 16         // conv1 16 -> 32 at 4x4
                    + 32.0 * 32 * 9 * 4        // conv2 32 -> 32, stride 2: 2x2
                    + 32.0 * 16 * 1 * 4;       // shortcut 1x1 stride 2: 2x2
  const double l3 = 64.0 * 32 * 9 * 4          // conv1 32 -> 64 at 2x2
                    + 64.0 * 64 * 9 * 1        // conv2 stride 2: 1x1
                    + 64.0 * 32 * 1 * 1;       // shortcut
  const double head = 64.0 * 2;
  const double macs = stem + l1 + l2 + l3 + head;
  ASSERT_DOUBLE_EQ(macs, 301440.0); // the sum written out once more, by hand
  EXPECT_DOUBLE_EQ(wrn_forward_flops(kTiny, 1), 2 * macs);
  EXPECT_DOUBLE_EQ(wrn_forward_flops(kTiny, 7), 7 * 2 * macs);

  const auto layers = wrn_conv_layers(kTiny);
  ASSERT_EQ(layers.size(), 9u); // stem + 3 blocks x 2 convs + 2 shortcuts
  EXPECT_EQ(layers[0].name, "f.conv1");
  EXPECT_EQ(layers[5].name, "f.layer2.0.shortcut.0");
  EXPECT_EQ(layers[5].geom.stride, 2);
  EXPECT_EQ(layers[5].geom.P(), 2);
}

TEST(Flops, IterationIsSgldPlusStepByTheConvention) {
  const double F = wrn_forward_flops(kTiny, 1);
  // 16 chains x 10 steps of forward + input-only backward (2F); 96 rows of
  // forward + full backward (3F).
  const IterationFlops it = jem_iteration_flops(kTiny, 16, 10, 96);
  EXPECT_DOUBLE_EQ(it.sgld, 16 * 10 * 2 * F);
  EXPECT_DOUBLE_EQ(it.step, 96 * 3 * F);
  EXPECT_DOUBLE_EQ(it.total(), it.sgld + it.step);
  EXPECT_DOUBLE_EQ(jem_iteration_flops(kTiny, 0, 10, 4).sgld, 0.0);
}

TEST(Flops, AgreesWithTheModelsLayoutAndMacCount) {
  auto be = make_cpu_backend(1);
  for (const WrnConfig &cfg :
       {WrnConfig{10, 1, 1, 28, 10}, WrnConfig{16, 2, 3, 32, 10},
        WrnConfig{28, 10, 3, 32, 100}}) {
    WideResNet model(cfg, *be, 1);
    EXPECT_DOUBLE_EQ(wrn_forward_flops(cfg, 3), 2.0 * model.forward_macs(3))
        << cfg.str();
    // Every counted convolution is a weight of the model with the counted
    // shape, and the counted layers are all of the model's convolutions.
    int conv_weights = 0;
    for (const ParamSpec &p : model.params())
      conv_weights += p.shape.rank() == 4;
    const auto layers = wrn_conv_layers(cfg);
    EXPECT_EQ(int(layers.size()), conv_weights) << cfg.str();
    for (const ConvLayer &l : layers) {
      const Tensor w = model.param(l.name + ".weight");
      EXPECT_EQ(w.shape(), (Shape{l.geom.K, l.geom.C, l.geom.R, l.geom.R}))
          << l.name;
    }
  }
}

TEST(Flops, OfficialRecipeMatchesJemMd) {
  // /work/shared/JEM.md: one iteration of WRN-28-10 (64 labelled + 64 p(x) rows
  // + 64 chains of 20 SGLD steps) is about 37 TFLOP, 82% of it in SGLD. (The
  // JEM block strides in conv2, so its forward pass is 5.95 G multiply-adds,
  // not the 5.25 G of the original WRN-28-10.)
  const WrnConfig w{28, 10, 3, 32, 10};
  EXPECT_NEAR(wrn_forward_flops(w, 1) / 2e9, 5.95, 0.01);
  const IterationFlops it = jem_iteration_flops(w, 64, 20, 192);
  EXPECT_NEAR(it.total() / 1e12, 37.0, 0.5);
  EXPECT_NEAR(it.sgld / it.total(), 0.82, 0.005);
}

TEST(Flops, TinyNetworkTrafficMatchesAHandCount) {
  // Floats per image of kTiny (1x4x4). conv1 outputs (bias + LeakyReLU, then
  // its backward): 256, 512, 256 = 1024. Block inputs (LeakyReLU backward +
  // gradient sum): 256, 256, 128 = 640. conv2 outputs (the LeakyReLU after
  // the residual add): 256, 128, 64 = 448. Stem output 256 (the first
  // LeakyReLU); features 64.
  const double fwd = 2 * 256 + 2 * 1024 + 2 * 448 + 64;   // + pooling read
  const double bwd = 3 * 1024 + 4 * 640 + (3 * 64 + 64);  // + pooling write
  ASSERT_DOUBLE_EQ(fwd, 3520.0);
  ASSERT_DOUBLE_EQ(bwd, 5888.0);
  // Forward: bias adds on the stem and shortcut outputs (read + write: 256 +
  // 128 + 64), the residual read by conv2's fused epilogue (448); bias
  // gradients on every output (conv1's too): 896 + 1024.
  const double bias_fwd = 2 * (256 + 128 + 64) + 448, all_outputs = 1920;
  ASSERT_DOUBLE_EQ(bias_fwd, 1344.0);
  // 3 chains x 2 steps (+ the update, 3 passes over a 16-float image), 5 rows,
  // 8 passes over 1000 parameters.
  const IterationTraffic t = jem_iteration_traffic(kTiny, 3, 2, 5, 1000, 8.0);
  EXPECT_DOUBLE_EQ(t.custom,
                   4 * (6 * (fwd + bwd + 3 * 16) + 5 * (fwd + bwd) + 8000));
  EXPECT_DOUBLE_EQ(t.custom, 447104.0);
  EXPECT_DOUBLE_EQ(t.bias, 4 * (6 * bias_fwd + 5 * (bias_fwd + all_outputs)));
  EXPECT_DOUBLE_EQ(t.total(), t.custom + t.bias);
  // With the forward fused into cuDNN (channels-last TF32 on a GPU), conv1's and conv2's passes
  // leave jem's kernels: the stem's LeakyReLU and the pooling read remain; nothing else changes.
  const double fused_fwd = 2 * 256 + 64;
  const IterationTraffic f = jem_iteration_traffic(kTiny, 3, 2, 5, 1000, 8.0, true);
  EXPECT_DOUBLE_EQ(f.custom, 4 * (6 * (fused_fwd + bwd + 3 * 16) + 5 * (fused_fwd + bwd) + 8000));
  EXPECT_DOUBLE_EQ(f.bias, t.bias);
}

TEST(Flops, OfficialRecipeTraffic) {
  // One SGLD step of 64 WRN-28-10 chains, counted independently by a Python
  // walk of the blocks (forward and input backward, without the pooling and the
  // update): 3.684696064 GB in jem's kernels, 0.448790528 GB in cuDNN's bias
  // adds and fused epilogues.
  const WrnConfig w{28, 10, 3, 32, 10};
  const IterationTraffic t = jem_iteration_traffic(w, 64, 1, 0, 0, 0.0);
  const double pooling_and_update = 4.0 * 64 * (640 * 8 * 8 * 5 + 3 * 3072);
  EXPECT_DOUBLE_EQ(t.custom - pooling_and_update, 3684696064.0);
  EXPECT_DOUBLE_EQ(t.bias, 448790528.0);
  // Fused forward: 2 + 2 passes fewer per element of every conv1 and conv2 output. conv1 keeps
  // its block's input resolution (the official block strides in conv2): outputs per image
  // 4 x 160 x 32^2 + (320 x 32^2 + 3 x 320 x 16^2) + (640 x 16^2 + 3 x 640 x 8^2) = 1515520;
  // conv2's 4 x (160 x 32^2 + 320 x 16^2 + 640 x 8^2) = 1146880. So 2 x 2662400 floats fewer per
  // chain: 2.32 GB per step instead of 3.68 (without the pooling and the update).
  const IterationTraffic f = jem_iteration_traffic(w, 64, 1, 0, 0, 0.0, true);
  EXPECT_DOUBLE_EQ(f.custom - pooling_and_update, 3684696064.0 - 4.0 * 64 * 2 * 2662400);
  EXPECT_DOUBLE_EQ(f.custom - pooling_and_update, 2321547264.0);
  EXPECT_DOUBLE_EQ(f.bias, t.bias);
}

TEST(Bench, FusedCallsIfAllFused) {
  // WRN-28-10: conv1 and conv2 of 12 blocks per forward (not the stem); per iteration 20 SGLD
  // steps of one chain batch and the training pass's forward: 24 x 21.
  const WrnConfig w{28, 10, 3, 32, 10};
  EXPECT_EQ(fused_calls_if_all_fused(w, 20, 1, 1, 0), 504);
  EXPECT_EQ(fused_calls_if_all_fused(w, 20, 1, 5, 0), 2520);  // gpu-check's 5 timed iterations
  EXPECT_EQ(fused_calls_if_all_fused(w, 20, 2, 1, 0), 24 * 41);  // p(x) and p(x, y) chains
  // With the chains launched as CUDA Graphs (one launch per chain batch per iteration) only the
  // training forwards issue calls.
  EXPECT_EQ(fused_calls_if_all_fused(w, 20, 1, 5, 5), 24 * 5);
  // WRN-10-1: 1 block per stage.
  EXPECT_EQ(fused_calls_if_all_fused(WrnConfig{10, 1, 1, 28, 10}, 2, 1, 2, 0), 6 * 3 * 2);
}

TEST(Flops, GpuPeakBandwidthTable) {
  EXPECT_DOUBLE_EQ(gpu_peak_bandwidth("NVIDIA H200"), 4.8e12);
  EXPECT_DOUBLE_EQ(gpu_peak_bandwidth("NVIDIA H100 80GB HBM3"), 3.35e12);
  EXPECT_DOUBLE_EQ(gpu_peak_bandwidth("NVIDIA H100 PCIe"), 2.0e12);
  EXPECT_DOUBLE_EQ(gpu_peak_bandwidth("NVIDIA A100-SXM4-80GB"), 2.039e12);
  EXPECT_DOUBLE_EQ(gpu_peak_bandwidth("NVIDIA A100-SXM4-40GB"), 1.555e12);
  EXPECT_DOUBLE_EQ(gpu_peak_bandwidth("NVIDIA GeForce RTX 3090"), 0.0);
}

TEST(Flops, GpuPeakTable) {
  EXPECT_DOUBLE_EQ(gpu_peak_flops("NVIDIA H200", true), 494.7e12);
  EXPECT_DOUBLE_EQ(gpu_peak_flops("NVIDIA H100 80GB HBM3", false), 66.9e12);
  EXPECT_DOUBLE_EQ(gpu_peak_flops("NVIDIA H100 PCIe", true),
                   378e12); // not the SXM figure
  EXPECT_DOUBLE_EQ(gpu_peak_flops("NVIDIA A100-SXM4-80GB", true), 156e12);
  EXPECT_DOUBLE_EQ(gpu_peak_flops("Tesla V100-SXM2-16GB", false), 15.7e12);
  EXPECT_DOUBLE_EQ(gpu_peak_flops("NVIDIA GeForce RTX 3090", true), 0.0);
}

TEST(Bench, DatasetShapes) {
  EXPECT_EQ(dataset_shape("fashion-mnist").channels, 1);
  EXPECT_EQ(dataset_shape("cifar10").image_size, 32);
  EXPECT_EQ(dataset_shape("cifar100").classes, 100);
  EXPECT_THROW(dataset_shape("imagenet"), Error);
}

TEST(Bench, TimesEveryPhaseOfEveryIteration) {
  auto be = make_cpu_backend(1);
  const TrainConfig c = tiny_bench_config();
  const BenchResult r = run_bench(*be, c, BenchOptions{3, 1});
  ASSERT_EQ(r.ms.total.size(), 3u);
  ASSERT_EQ(r.ms.sgld.size(), 3u);
  for (std::size_t i = 0; i < 3; ++i) {
    EXPECT_GT(r.ms.sgld[i], 0.0);
    EXPECT_GT(r.ms.step[i], 0.0);
    EXPECT_GT(r.ms.optimizer[i], 0.0);
    // The phases tile the iteration: total is measured from the same time
    // points.
    EXPECT_NEAR(r.ms.total[i], r.ms.sgld[i] + r.ms.step[i] + r.ms.optimizer[i],
                1e-6 * r.ms.total[i]);
  }
  EXPECT_EQ(r.rows, 4 + 2 * 2);
  EXPECT_EQ(r.sgld_chains, 2);
  const WrnConfig w{10, 1, 1, 28, 10};
  EXPECT_DOUBLE_EQ(r.flops_sgld + r.flops_step,
                   jem_iteration_flops(w, 2, 2, 8).total());
  EXPECT_DOUBLE_EQ(r.peak_device_flops, 0.0); // a CPU: unknown
  EXPECT_GT(r.peak_memory_bytes, 0);          // VmHWM of this process
  EXPECT_EQ(r.device_memory_used_bytes, -1);  // no device: not measured (null in the JSON)
  EXPECT_EQ(r.timed_allocations, 0);          // every buffer exists after the warm-up
}

// scripts/gpu_check_headlines.py run on `dir`: its JSON in *h (a non-zero exit fails the caller,
// which wraps the call in ASSERT_NO_FATAL_FAILURE).
void run_headlines(const std::string& dir, nlohmann::json* h) {
  std::string out;
  ASSERT_EQ(jem::test::run_command(
                "python3 " + jem::test::source_path("scripts/gpu_check_headlines.py") + " " + dir, &out),
            0)
      << out;
  *h = nlohmann::json::parse(out);
}

// gpu-check.sh's headline numbers, read from the files the GPU run writes: jem bench's JSON under
// the names gpu-check gives them, and compare.sh's rounds (PyTorch's JSON has the same fields).
TEST(Bench, GpuCheckHeadlinesReadTheBenchFiles) {
  const std::string dir = jem::test::temp_dir("headlines");
  auto be = make_cpu_backend(1);
  const TrainConfig c = tiny_bench_config();
  const BenchOptions opt{2, 1};
  const BenchResult r = run_bench(*be, c, opt);
  std::ofstream(dir + "/jem_bench_wrn28x10_tf32.json") << bench_json(r, c, opt);
  fs::create_directories(dir + "/compare_tf32");
  // Three rounds: PyTorch 2x, 10x and 4x slower than jem; the median ratio is 4 (the mean 5.3).
  auto j = nlohmann::json::parse(bench_json(r, c, opt));
  const double jem_ms = j["ms_per_iteration"]["total"].get<double>();
  const double slower[] = {2.0, 10.0, 4.0};
  for (int round : {1, 2, 3}) {
    std::ofstream(dir + "/compare_tf32/jem_" + std::to_string(round) + ".json") << j.dump();
    nlohmann::json t = j;
    t["ms_per_iteration"]["total"] = jem_ms * slower[round - 1];
    std::ofstream(dir + "/compare_tf32/torch_" + std::to_string(round) + ".json") << t.dump();
  }
  nlohmann::json h;
  ASSERT_NO_FATAL_FAILURE(run_headlines(dir, &h));
  const auto& tf32 = h["jem_bench"]["wrn28x10_tf32"];
  EXPECT_DOUBLE_EQ(tf32["ms_per_iteration"].get<double>(), jem_ms);
  EXPECT_EQ(tf32["allocations_during_timed_iterations"], 0);
  EXPECT_NEAR(tf32["peak_memory_gib"].get<double>(), double(r.peak_memory_bytes) / (1024.0 * 1024 * 1024), 1e-12);
  EXPECT_TRUE(h["jem_bench"]["wrn28x10_fp32"].is_null());  // not written: null, not an error
  EXPECT_DOUBLE_EQ(h["pytorch_over_jem_tf32"].get<double>(), 4.0);
  EXPECT_EQ(h["targets"]["at_least_3x_pytorch"], true);
  EXPECT_EQ(h["targets"]["iteration_at_most_0.30_s"], jem_ms <= 300.0);
  EXPECT_TRUE(h["kernel_profile"].is_null());  // no profile written
  EXPECT_TRUE(h["cudnn_fusion"].is_null());    // no fusion probe written
  EXPECT_TRUE(h["targets"]["custom_kernels_under_5_percent"].is_null());
  EXPECT_TRUE(h["pytorch_channels_last_over_jem_faster_layout"].is_null());  // no PyTorch run
  // PyTorch in channels-last (3x jem's NCHW time) against jem's faster layout: NHWC at half the
  // NCHW time, so the ratio is 6.
  nlohmann::json nhwc = j, cl = j;
  nhwc["ms_per_iteration"]["total"] = jem_ms / 2;
  cl["ms_per_iteration"]["total"] = jem_ms * 3;
  std::ofstream(dir + "/jem_bench_wrn28x10_tf32_nhwc.json") << nhwc.dump();
  std::ofstream(dir + "/pytorch_tf32_channels_last.json") << cl.dump();
  ASSERT_NO_FATAL_FAILURE(run_headlines(dir, &h));
  EXPECT_DOUBLE_EQ(h["pytorch_tf32_channels_last"]["ms_per_iteration"].get<double>(), jem_ms * 3);
  EXPECT_DOUBLE_EQ(h["pytorch_channels_last_over_jem_faster_layout"].get<double>(), 6.0);
  // CUDA Graphs: no graph runs yet, so no speed-ups; then graphs at a quarter of the NCHW time
  // (the faster layout, NHWC, takes half of it: a speed-up of 2), and at batch 1 in 40 ms
  // against 100 ms without (2.5). The launch count is passed through.
  EXPECT_TRUE(h["cuda_graphs_speedup"]["batch_64"].is_null());
  EXPECT_TRUE(h["cuda_graphs_speedup"]["batch_1"].is_null());
  nlohmann::json graphs = j, batch1 = j, batch1_graphs = j;
  graphs["ms_per_iteration"]["total"] = jem_ms / 4;
  graphs["graph_launches_during_timed_iterations"] = 10;
  graphs["fused_conv_calls_during_timed_iterations"] = 48;
  batch1["ms_per_iteration"]["total"] = 100.0;
  batch1_graphs["ms_per_iteration"]["total"] = 40.0;
  std::ofstream(dir + "/jem_bench_wrn28x10_tf32_graphs.json") << graphs.dump();
  std::ofstream(dir + "/jem_bench_wrn28x10_tf32_batch1.json") << batch1.dump();
  std::ofstream(dir + "/jem_bench_wrn28x10_tf32_batch1_graphs.json") << batch1_graphs.dump();
  ASSERT_NO_FATAL_FAILURE(run_headlines(dir, &h));
  EXPECT_DOUBLE_EQ(h["cuda_graphs_speedup"]["batch_64"].get<double>(), 2.0);
  EXPECT_DOUBLE_EQ(h["cuda_graphs_speedup"]["batch_1"].get<double>(), 2.5);
  EXPECT_EQ(h["jem_bench"]["wrn28x10_tf32_graphs"]["graph_launches_during_timed_iterations"], 10);
  EXPECT_EQ(h["jem_bench"]["wrn28x10_tf32"]["graph_launches_during_timed_iterations"], 0);
  EXPECT_EQ(h["jem_bench"]["wrn28x10_tf32_graphs"]["fused_conv_calls_during_timed_iterations"], 48);
  fs::remove_all(dir);
}

// jem bench's JSON of one timed iteration of the tiny config on the CPU: the file the headline
// tests edit into the GPU runs' files.
nlohmann::json tiny_bench_json() {
  auto be = make_cpu_backend(1);
  const TrainConfig c = tiny_bench_config();
  const BenchOptions opt{1, 0};
  return nlohmann::json::parse(bench_json(run_bench(*be, c, opt), c, opt));
}

// The 0.30 s target takes the faster TF32 layout's time, and names the device it ran on, since
// the target is stated for an H200.
TEST(Bench, GpuCheckHeadlinesIterationTargetTakesTheFasterLayout) {
  const std::string dir = jem::test::temp_dir("headlines_target");
  auto j = tiny_bench_json();
  j["ms_per_iteration"]["total"] = 400.0;
  j["backend"] = "cuda:0 (NVIDIA H100 80GB HBM3, sm_90, 132 SMs, TF32 math)";
  std::ofstream(dir + "/jem_bench_wrn28x10_tf32.json") << j.dump();
  nlohmann::json h;
  ASSERT_NO_FATAL_FAILURE(run_headlines(dir, &h));
  EXPECT_EQ(h["targets"]["iteration_at_most_0.30_s"], false);  // NCHW alone: 400 ms
  EXPECT_EQ(h["targets"]["device"], j["backend"]);
  EXPECT_EQ(h["targets"]["device_is_the_targets_h200"], false);
  nlohmann::json nhwc = j;
  nhwc["ms_per_iteration"]["total"] = 250.0;
  std::ofstream(dir + "/jem_bench_wrn28x10_tf32_nhwc.json") << nhwc.dump();
  j["backend"] = "cuda:0 (NVIDIA H200, sm_90, 132 SMs, TF32 math)";
  std::ofstream(dir + "/jem_bench_wrn28x10_tf32.json") << j.dump();
  ASSERT_NO_FATAL_FAILURE(run_headlines(dir, &h));
  EXPECT_EQ(h["targets"]["iteration_at_most_0.30_s"], true);  // NHWC: 250 ms
  EXPECT_EQ(h["targets"]["device_is_the_targets_h200"], true);
  fs::remove_all(dir);
}

// The 24 GiB target counts the device's own in-use reading (context and libraries included) when
// it exceeds jem's registry peak: a small registry peak alone does not pass it.
TEST(Bench, GpuCheckHeadlinesMemoryTargetCountsTheDeviceReading) {
  const std::string dir = jem::test::temp_dir("headlines_memory");
  auto j = tiny_bench_json();
  EXPECT_TRUE(j["device_memory_used_bytes"].is_null());  // the CPU backend: not a device
  const double gib = 1024.0 * 1024.0 * 1024.0;
  for (const double used_gib : {2.0, 25.0}) {
    j["peak_memory_bytes"] = std::int64_t(1.5 * gib);
    j["device_memory_used_bytes"] = std::int64_t(used_gib * gib);
    std::ofstream(dir + "/jem_bench_wrn28x10_tf32.json") << j.dump();
    nlohmann::json h;
    ASSERT_NO_FATAL_FAILURE(run_headlines(dir, &h));
    EXPECT_NEAR(h["jem_bench"]["wrn28x10_tf32"]["device_memory_used_gib"].get<double>(), used_gib, 1e-9);
    EXPECT_EQ(h["targets"]["peak_memory_under_24_gib"], used_gib < 24.0) << used_gib;
  }
  fs::remove_all(dir);
}

// The fused-convolution probe's results (bench/cudnn_fusion_probe --time), grouped per pattern
// and layout: how many shapes ran fused, the median speed-up, the worst error, whether all agreed.
TEST(Bench, GpuCheckHeadlinesFusionSummary) {
  const std::string dir = jem::test::temp_dir("headlines_fusion");
  auto result = [](const char* shape, const char* layout, nlohmann::json timing) {
    return nlohmann::json{{"shape", shape}, {"pattern", "conv+bias+lrelu"}, {"layout", layout}, {"timing", timing}};
  };
  const nlohmann::json j{{"results",
                          {result("a", "NHWC", {{"speedup", 1.5}, {"rel_error", 0.002}, {"ok", true}}),
                           result("b", "NHWC", {{"speedup", 2.5}, {"rel_error", 0.004}, {"ok", true}}),
                           result("c", "NHWC", {{"speedup", 0.5}, {"rel_error", 0.001}, {"ok", false}}),
                           result("a", "NCHW", {{"fused", "no plan: no engine configuration proposed"}})}}};
  std::ofstream(dir + "/cudnn_fusion.json") << j.dump();
  nlohmann::json headlines;
  ASSERT_NO_FATAL_FAILURE(run_headlines(dir, &headlines));
  const auto& h = headlines["cudnn_fusion"];
  const auto& nhwc = h["conv+bias+lrelu NHWC"];
  EXPECT_EQ(nhwc["ran"], 3);
  EXPECT_EQ(nhwc["of"], 3);
  EXPECT_DOUBLE_EQ(nhwc["median_speedup"].get<double>(), 1.5);
  EXPECT_DOUBLE_EQ(nhwc["max_rel_error"].get<double>(), 0.004);
  EXPECT_EQ(nhwc["all_ok"], false);  // one of the three disagreed
  const auto& nchw = h["conv+bias+lrelu NCHW"];
  EXPECT_EQ(nchw["ran"], 0);
  EXPECT_EQ(nchw["of"], 1);
  EXPECT_TRUE(nchw["median_speedup"].is_null());
  EXPECT_TRUE(nchw["all_ok"].is_null());  // nothing ran: unknown, not agreed
  fs::remove_all(dir);
}

// The custom kernels' share, from nsys stats' kernel summary (its CSV columns; names as nsys
// demangles them): jem::kernels, Thrust and CUB kernels against cuDNN's and cuBLAS's.
TEST(Bench, GpuCheckHeadlinesKernelShare) {
  const std::string dir = jem::test::temp_dir("headlines_profile");
  std::ofstream(dir + "/kernel_profile_cuda_gpu_kern_sum.csv")
      << "Time (%),Total Time (ns),Instances,Avg (ns),Med (ns),Min (ns),Max (ns),StdDev (ns),Name\n"
      << "80.0,\"800,000\",10,80000.0,80000.0,1,1,0.0,sm90_xmma_fprop_implicit_gemm_tf32f32_tf32f32_f32_nchwkcrs_nchw\n"
      << "12.0,120000,5,24000.0,24000.0,1,1,0.0,\"cudnn::engines_precompiled::nchwToNhwcKernel(float const*, float*)\"\n"
      << "5.0,50000,20,2500.0,2500.0,1,1,0.0,\"jem::kernels::(anonymous namespace)::sgld_kernel(int, long, float*, "
         "const float*, float, float, bool, jem::NoiseKey)\"\n"
      << "3.0,30000,4,7500.0,7500.0,1,1,0.0,\"void cub::CUB_300000_SM_900::detail::transform::transform_kernel<...>\"\n";
  nlohmann::json h;
  ASSERT_NO_FATAL_FAILURE(run_headlines(dir, &h));
  EXPECT_EQ(h["kernel_profile"]["kernels"], 4);
  EXPECT_DOUBLE_EQ(h["kernel_profile"]["all_kernels_ms"].get<double>(), 1.0);
  EXPECT_DOUBLE_EQ(h["kernel_profile"]["custom_ms"].get<double>(), 0.08);
  EXPECT_DOUBLE_EQ(h["kernel_profile"]["custom_fraction"].get<double>(), 0.08);
  EXPECT_EQ(h["targets"]["custom_kernels_under_5_percent"], false);
  fs::remove_all(dir);
}

// Where nsys is missing (the lent H200s have none on the PATH), gpu-check profiles with ncu: its
// per-kernel summary (ncu's notes first, then CSV rows of kernel name, launch configuration,
// invocations and the average gpu__time_duration.sum in the row's unit) gives the share too.
TEST(Bench, GpuCheckHeadlinesKernelShareFromNcu) {
  const std::string dir = jem::test::temp_dir("headlines_ncu");
  const std::string header =
      "\"Process ID\",\"Process Name\",\"Host Name\",\"Kernel Name\",\"Block Size\",\"Grid Size\","
      "\"Device\",\"CC\",\"Invocations\",\"Section Name\",\"Metric Name\",\"Metric Unit\","
      "\"Minimum\",\"Maximum\",\"Average\"\n";
  auto row = [](const char* name, const char* invocations, const char* unit, const char* average) {
    return std::string("\"1\",\"jem\",\"127.0.0.1\",\"") + name +
           "\",\"(256, 1, 1)\",\"(8, 1, 1)\",\"0\",\"9.0\",\"" + invocations +
           "\",\"Command line profiler metrics\",\"gpu__time_duration.sum\",\"" + unit + "\",\"0\",\"0\",\"" +
           average + "\"\n";
  };
  std::ofstream(dir + "/kernel_profile.csv")
      << "==WARNING== Note: Running with uncontrolled GPU caches.\n==PROF== Connected to process 1\n"
      << header << row("sm90_xmma_dgrad_implicit_gemm_f32f32_tf32f32_f32_nhwckrsc_nhwc", "1,000", "ns", "700.00")
      << row("jem::<unnamed>::bias_leaky_relu_kernel(unsigned int, const float *)", "10", "us", "10.00")
      << row("void cub::transform_kernel<cub::policy_hub<1>, jem::<unnamed>::LeakyForwardOp>", "4", "ns",
             "12,500.00")
      << row("void engines_precompiled::nchwToNhwcKernel<float, float, float, 0, 1, 0>", "2", "ms", "0.05");
  nlohmann::json h;
  ASSERT_NO_FATAL_FAILURE(run_headlines(dir, &h));
  // 0.7 ms + 0.1 ms + 0.05 ms + 0.1 ms = 0.95 ms, of which jem's and CUB's 0.15 ms.
  EXPECT_EQ(h["kernel_profile"]["kernels"], 4);
  EXPECT_EQ(h["kernel_profile"]["source"], "ncu");
  EXPECT_NEAR(h["kernel_profile"]["all_kernels_ms"].get<double>(), 0.95, 1e-12);
  EXPECT_NEAR(h["kernel_profile"]["custom_ms"].get<double>(), 0.15, 1e-12);
  EXPECT_NEAR(h["kernel_profile"]["custom_fraction"].get<double>(), 0.15 / 0.95, 1e-12);
  EXPECT_EQ(h["targets"]["custom_kernels_under_5_percent"], false);

  // With both files, nsys' summary (a trace of the real run, not kernel replays) is the one read.
  std::ofstream(dir + "/kernel_profile_cuda_gpu_kern_sum.csv")
      << "Time (%),Total Time (ns),Instances,Avg (ns),Med (ns),Min (ns),Max (ns),StdDev (ns),Name\n"
      << "96.0,960000,10,96000.0,96000.0,1,1,0.0,sm90_xmma_fprop_implicit_gemm\n"
      << "4.0,40000,20,2000.0,2000.0,1,1,0.0,\"jem::kernels::(anonymous namespace)::sgld_kernel(int)\"\n";
  nlohmann::json both;
  ASSERT_NO_FATAL_FAILURE(run_headlines(dir, &both));
  EXPECT_EQ(both["kernel_profile"]["source"], "nsys");
  EXPECT_NEAR(both["kernel_profile"]["custom_fraction"].get<double>(), 0.04, 1e-12);
  EXPECT_EQ(both["targets"]["custom_kernels_under_5_percent"], true);
  fs::remove_all(dir);
}

TEST(Bench, ConditionalChainsAndNoPxTerm) {
  auto be = make_cpu_backend(1);
  TrainConfig c = tiny_bench_config();
  c.batch_size = 2;
  c.w_pxy = 1.0; // conditional chains for the labelled batch, after the
                 // unconditional ones
  BenchResult r = run_bench(*be, c, BenchOptions{1, 0});
  EXPECT_EQ(r.sgld_chains, 2 + 2);
  EXPECT_EQ(r.rows, 2 + 2 * 2 + 2);
  c.w_pxy = 0.0;
  c.w_px = 0.0; // a plain classifier: no chains at all
  r = run_bench(*be, c, BenchOptions{1, 0});
  EXPECT_EQ(r.sgld_chains, 0);
  EXPECT_EQ(r.flops_sgld, 0.0);
  EXPECT_EQ(r.rows, 2);
}

TEST(Bench, RejectsBadOptionsAndConfigs) {
  auto be = make_cpu_backend(1);
  EXPECT_THROW(run_bench(*be, tiny_bench_config(), BenchOptions{0, 1}), Error);
  EXPECT_THROW(run_bench(*be, tiny_bench_config(), BenchOptions{1, -1}), Error);
  TrainConfig c = tiny_bench_config();
  c.depth = 11;
  EXPECT_THROW(run_bench(*be, c, BenchOptions{1, 0}), Error);
}

class BenchCli : public ::testing::Test {
protected:
  void SetUp() override {
    root_ = jem::test::temp_dir("bench");
    // A tiny JEM; the flags of each test come on top (a flag overrides the
    // file).
    std::ofstream(root_ + "/tiny.toml")
        << "dataset = \"fashion-mnist\"\ndepth = 10\nwidth = 1\nbatch_size = "
           "4\n"
           "px_batch_size = 2\nsgld_steps = 2\nbuffer_size = 20\neval_batch = "
           "8\n";
  }
  void TearDown() override { fs::remove_all(root_); }
  std::string jem(const std::string &args) const {
    return jem::test::jem_binary() +
           " bench --device cpu --threads 1 --config " + root_ + "/tiny.toml " +
           args;
  }
  std::string root_;
};

TEST_F(BenchCli, WritesJsonWithEveryField) {
  std::string out;
  const std::string json_path = root_ + "/b.json";
  ASSERT_EQ(jem::test::run_command(
                jem("--iterations 2 --warmup 1 --json " + json_path), &out),
            0)
      << out;
  EXPECT_NE(out.find("ms/iteration"), std::string::npos) << out;
  std::ifstream in(json_path);
  ASSERT_TRUE(in.good()) << json_path;
  const auto j = nlohmann::json::parse(in);
  EXPECT_EQ(j["iterations"], 2);
  EXPECT_EQ(j["warmup_iterations"], 1);
  ASSERT_EQ(j["iteration_ms"].size(), 2u);
  for (const char *phase : {"sgld", "step", "optimizer", "total"}) {
    EXPECT_GT(j["ms_per_iteration"][phase].get<double>(), 0.0) << phase;
    EXPECT_GT(j["ms_per_iteration_mean"][phase].get<double>(), 0.0) << phase;
  }
  EXPECT_EQ(j["model"], "WRN-10-1, 1x28x28, 10 classes");
  EXPECT_EQ(j["rows"], 8);
  // The elementwise traffic of this iteration (Adam, no moving average: 7 + 1
  // passes over the parameters); no bandwidth known for a CPU.
  const IterationTraffic t = jem_iteration_traffic(
      WrnConfig{10, 1, 1, 28, 10}, j["sgld_chains"].get<int>(),
      j["sgld_steps"].get<int>(), 8, j["params"].get<std::int64_t>(), 8.0);
  EXPECT_DOUBLE_EQ(j["elementwise_bytes_per_iteration"]["custom"].get<double>(), t.custom);
  EXPECT_DOUBLE_EQ(j["elementwise_bytes_per_iteration"]["bias"].get<double>(), t.bias);
  EXPECT_TRUE(j["device_peak_bandwidth_bytes_per_second"].is_null());
  EXPECT_TRUE(j["custom_kernels_floor_ms"].is_null());
  EXPECT_EQ(j["fused_conv_calls_during_timed_iterations"], 0);  // the CPU backend fuses nothing
  EXPECT_EQ(j["fused_conv_calls_if_all_fused"], 6 * 3 * 2);  // 3 blocks x (2 steps + 1) x 2
  EXPECT_NE(out.find("elementwise passes move"), std::string::npos) << out;
  EXPECT_EQ(j["sgld_chains"], 2);
  EXPECT_EQ(j["batch_size"], 4);
  const double flops =
      jem_iteration_flops(WrnConfig{10, 1, 1, 28, 10}, 2, 2, 8).total();
  EXPECT_DOUBLE_EQ(j["flops_per_iteration"]["total"].get<double>(), flops);
  // Rates follow from the median iteration time.
  const double total_s = j["ms_per_iteration"]["total"].get<double>() / 1e3;
  EXPECT_NEAR(j["images_per_second"].get<double>(), 4 / total_s,
              1e-9 * 4 / total_s);
  EXPECT_NEAR(j["achieved_flops_per_second"].get<double>(), flops / total_s,
              1e-9 * flops / total_s);
  EXPECT_TRUE(j["device_peak_flops_per_second"].is_null());
  EXPECT_TRUE(j["fraction_of_peak"].is_null());
  EXPECT_GT(j["peak_memory_bytes"].get<double>(), 0.0);
  EXPECT_EQ(j["allocations_during_timed_iterations"], 0);
  EXPECT_FALSE(fs::exists(json_path + ".tmp"));
}

TEST_F(BenchCli, BadFlagsFailWithOneLineNamingThem) {
  struct Case {
    std::string args, needle;
  };
  const Case cases[] = {
      {"--iterations 0", "--iterations"},
      {"--iterations abc", "--iterations"},
      {"--warmup -1", "--warmup"},
      {"--bogus 3", "bogus"},
      {"--depth 11", "depth"},
      {"--dataset imagenet", "dataset"},
      {"--json " + root_ + "/no/such/dir/b.json", "no/such/dir"},
      {"--batch_size 40", "buffer_size"}, // 40 slots needed, the buffer has 20
  };
  for (const Case &c : cases) {
    std::string out;
    EXPECT_NE(jem::test::run_command(jem(c.args), &out), 0) << c.args;
    // The first line says what is wrong (CLI11's parse errors add "Run with
    // --help ...").
    EXPECT_NE(out.substr(0, out.find('\n')).find(c.needle), std::string::npos)
        << c.args << ": " << out;
  }
  std::string out;
  EXPECT_NE(jem::test::run_command(jem::test::jem_binary() +
                                       " bench --config " + root_ +
                                       "/missing.toml",
                                   &out),
            0);
  EXPECT_NE(out.substr(0, out.find('\n')).find("missing.toml"),
            std::string::npos)
      << out;
  EXPECT_FALSE(fs::exists(root_ + "/no"));
}

} // namespace

// bench/pytorch_jem.py, when Debian's PyTorch is installed: its network and
// objective match the official code's reference vectors (the ones jem's model
// is tested against), and on the same config it runs the same iteration as `jem
// bench` (parameters, rows, chains, FLOPs).
class PyTorchJem : public BenchCli {
protected:
  void SetUp() override {
    BenchCli::SetUp();
    std::string out;
    if (jem::test::run_command("/usr/bin/python3 -c 'import torch'", &out) != 0)
      GTEST_SKIP()
          << "/usr/bin/python3 has no torch (Debian package python3-torch)";
  }
  std::string script() const {
    return "/usr/bin/python3 " + jem::test::source_path("bench/pytorch_jem.py");
  }
};

TEST_F(PyTorchJem, NetworkMatchesTheReferenceVectors) {
  std::string out;
  EXPECT_EQ(jem::test::run_command(
                script() + " --check-reference " +
                    jem::test::data_path("wrn10x1_gray28.safetensors") + " " +
                    jem::test::data_path("wrn10x2_rgb32.safetensors"),
                &out),
            0)
      << out;
  // One line per file.
  const auto first = out.find("match the reference");
  ASSERT_NE(first, std::string::npos) << out;
  EXPECT_NE(out.find("match the reference", first + 1), std::string::npos)
      << out;
}

// The same network in channels-last memory format (--channels-last, the counterpart of jem's
// NHWC layout) computes the same tensors.
TEST_F(PyTorchJem, ChannelsLastNetworkMatchesTheReferenceVectors) {
  std::string out;
  EXPECT_EQ(jem::test::run_command(script() + " --channels-last --check-reference " +
                                       jem::test::data_path("wrn10x2_rgb32.safetensors"),
                                   &out),
            0)
      << out;
  EXPECT_NE(out.find("channels-last: 26 tensors match the reference"), std::string::npos) << out;
}

TEST_F(PyTorchJem, RunsTheSameIterationAsJemBench) {
  std::string out;
  const std::string flags = " --threads 1 --config " + root_ +
                            "/tiny.toml --iterations 1 --warmup 0 --json ";
  ASSERT_EQ(
      jem::test::run_command(script() + flags + root_ + "/torch.json", &out), 0)
      << out;
  ASSERT_EQ(jem::test::run_command(
                jem(" --iterations 1 --warmup 0 --json " + root_ + "/jem.json"),
                &out),
            0)
      << out;
  const auto t = nlohmann::json::parse(std::ifstream(root_ + "/torch.json"));
  const auto j = nlohmann::json::parse(std::ifstream(root_ + "/jem.json"));
  for (const char *key : {"model", "params", "rows", "sgld_chains",
                          "sgld_steps", "batch_size", "px_batch_size"})
    EXPECT_EQ(t[key], j[key]) << key;
  for (const char *phase : {"sgld", "step", "total"})
    EXPECT_DOUBLE_EQ(t["flops_per_iteration"][phase].get<double>(),
                     j["flops_per_iteration"][phase].get<double>())
        << phase;
  EXPECT_GT(t["ms_per_iteration"]["total"].get<double>(), 0.0);
}
