// `jem inception-check --inception FILE`: loads converted FID Inception weights
// (docs/fid.md), runs one random batch through the network and prints the
// output shapes and timings: a quick check that a weights file is complete and
// that the chosen device runs the network.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <memory>
#include <random>
#include <vector>

#include "cli/commands.hpp"
#include "jem/inception_v3.hpp"
#include "jem/runtime.hpp"

namespace jem::cli {

namespace {
struct InceptionCheckArgs {
  std::string weights, device = "auto";
  int batch = 16, size = 32, channels = 3, threads = 0, repeats = 2;
};

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}
}  // namespace

void register_inception_check(CLI::App& app) {
  auto a = std::make_shared<InceptionCheckArgs>();
  auto* cmd = app.add_subcommand("inception-check",
                                 "Load FID Inception weights and time one "
                                 "random batch through the network");
  cmd->add_option("--inception", a->weights,
                  "Inception weights (safetensors from "
                  "tools/convert_inception_weights.py)")
      ->required();
  cmd->add_option("--batch", a->batch, "Images in the random batch")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--size", a->size, "Height and width of the random images (resized to 299)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--channels", a->channels, "1 or 3")
      ->check(CLI::IsMember({1, 3}))
      ->capture_default_str();
  cmd->add_option("--repeats", a->repeats, "Forward passes to time (the first includes warm-up)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--device", a->device, "auto, cpu, cuda or cuda:N")->capture_default_str();
  cmd->add_option("--threads", a->threads, "CPU threads (0 = all cores)")->capture_default_str();
  cmd->callback([a] {
    auto backend = make_backend(a->device, a->threads);
    std::printf("backend: %s\n", backend->name().c_str());
    auto t0 = std::chrono::steady_clock::now();
    InceptionV3 net(*backend, a->weights);
    backend->synchronize();
    std::printf("loaded %s: %lld parameters (BatchNorm folded) in %.2f s\n", a->weights.c_str(),
                static_cast<long long>(net.parameter_count()), seconds_since(t0));

    // Uniform [-1, 1] images, the range jem's images live in.
    std::vector<float> pixels(std::size_t(a->batch) * a->channels * a->size * a->size);
    std::mt19937 gen(1);
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    for (float& v : pixels) v = u(gen);
    const Shape shape{a->batch, a->channels, a->size, a->size};
    Tensor x = backend->from_vector(pixels, shape);  // [B, C, size, size]
    Tensor features = backend->empty(Shape{a->batch, InceptionV3::kFeatureDim});  // [B, 2048]
    Tensor logits = backend->empty(Shape{a->batch, InceptionV3::kLogitDim});      // [B, 1008]
    for (int r = 0; r < a->repeats; ++r) {
      t0 = std::chrono::steady_clock::now();
      const std::clock_t c0 = std::clock();  // process CPU time: tells a busy machine apart
      net.forward(x, features, logits);
      backend->synchronize();
      const double s = seconds_since(t0), cpu = double(std::clock() - c0) / CLOCKS_PER_SEC;
      std::printf(
          "forward %d: input %s -> features %s, logits %s in %.3f s (%.1f images/s; %.3f s CPU)\n",
          r + 1, shape.str().c_str(), features.shape().str().c_str(), logits.shape().str().c_str(),
          s, a->batch / s, cpu);
    }
    const std::vector<float> f = backend->to_vector(features), l = backend->to_vector(logits);
    double fmean = 0.0;
    bool finite = true;
    for (float v : f) fmean += v, finite = finite && std::isfinite(v);
    for (float v : l) finite = finite && std::isfinite(v);
    JEM_CHECK(finite, a->weights, ": the network produced non-finite outputs");
    std::printf("mean pool3 feature %.4f; all outputs finite\n", fmean / double(f.size()));
  });
}

}  // namespace jem::cli
