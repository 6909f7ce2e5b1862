// `jem sample --checkpoint FILE --out grid.png`: samples from a trained JEM as a PNG grid,
// from fresh uniform-noise chains or from the checkpoint's replay buffer, marginal or
// class-conditional (row-major classes 0..K-1 repeating).
#include <cstdio>
#include <memory>
#include <vector>

#include "cli/checkpoint_config.hpp"
#include "cli/commands.hpp"
#include "jem/checkpoint.hpp"
#include "jem/png_grid.hpp"
#include "jem/runtime.hpp"
#include "jem/safetensors.hpp"
#include "jem/sampler.hpp"
#include "jem/samples.hpp"
#include "jem/eval_io.hpp"

namespace jem::cli {

namespace {
struct SampleArgs {
  std::string checkpoint, out, from = "fresh", device = "auto", weights = "auto";
  int n = 64, steps = -1, rounds = 1, threads = 0;
  bool conditional = false;
  std::uint64_t seed = 1;
};
}  // namespace

void register_sample(CLI::App& app) {
  auto a = std::make_shared<SampleArgs>();
  auto* cmd = app.add_subcommand("sample", "Draw samples from a checkpoint into a PNG grid");
  cmd->add_option("--checkpoint", a->checkpoint, "Checkpoint written by jem train")->required();
  cmd->add_option("--out", a->out, "Output PNG file")->required();
  cmd->add_option("--from", a->from, "fresh (uniform noise chains) or buffer (the replay buffer)")
      ->check(CLI::IsMember({"fresh", "buffer"}))->capture_default_str();
  cmd->add_option("--n", a->n, "Number of samples")->check(CLI::PositiveNumber)->capture_default_str();
  cmd->add_option("--steps", a->steps, "SGLD steps per round (default: the run's sgld_steps)");
  cmd->add_option("--rounds", a->rounds, "Rounds of steps (fresh chains need many)")->check(CLI::PositiveNumber)->capture_default_str();
  cmd->add_flag("--conditional", a->conditional, "Class-conditional chains, E(x, y) = -logits[y]");
  cmd->add_option("--seed", a->seed, "Seed of the chains' noise")->capture_default_str();
  cmd->add_option("--weights", a->weights,
                  "auto (the moving average of the parameters when the checkpoint has one), ema or raw")
      ->check(CLI::IsMember({"auto", "ema", "raw"}))
      ->capture_default_str();
  cmd->add_option("--device", a->device, "auto, cpu, cuda or cuda:N")->capture_default_str();
  cmd->add_option("--threads", a->threads, "CPU threads (0 = all cores)")->capture_default_str();
  cmd->callback([a] {
    const TrainConfig cfg = config_from_checkpoint(a->checkpoint);
    const WrnConfig mc = checkpoint_model_config(a->checkpoint);
    auto backend = make_backend(a->device, a->threads);
    const int chunk = std::min(a->n, 64);
    WideResNet model(mc, *backend, chunk);
    const auto file = safetensors::File::read(a->checkpoint);
    load_model_weights(file, model, a->weights);
    SamplerConfig sc;
    sc.step_size = float(cfg.sgld_lr);
    sc.noise_std = float(cfg.sgld_std);
    sc.clamp = cfg.clamp;
    sc.n_classes = mc.n_classes;
    SgldSampler sampler(*backend, model, sc, chunk);
    const int steps = a->steps >= 0 ? a->steps : cfg.sgld_steps;
    const std::int64_t per = std::int64_t(mc.in_channels) * mc.image_size * mc.image_size;
    // Starting points: fresh noise, or n slots spread evenly over the buffer.
    std::vector<float> all;
    if (a->from == "fresh") {
      all = fresh_noise(*backend, a->n, mc.in_channels, mc.image_size, a->seed);
    } else {
      const auto buf = file.f32("replay_buffer");
      const std::int64_t slots = std::int64_t(buf.size()) / per;
      JEM_CHECK(slots >= 1, a->checkpoint, ": empty replay buffer");
      all.resize(std::size_t(a->n * per));
      for (int i = 0; i < a->n; ++i) {
        const std::int64_t s = std::int64_t(i) * slots / a->n;
        std::copy_n(buf.begin() + s * per, per, all.begin() + i * per);
      }
    }
    std::vector<std::int32_t> y;
    if (a->conditional)
      for (int i = 0; i < a->n; ++i) y.push_back(i % mc.n_classes);
    ProgressBar bar("sample");
    run_sgld_chains(*backend, sampler, mc, chunk, all, a->n, y, a->rounds, steps, a->seed,
                    [&](std::int64_t done, std::int64_t total) { bar.update(done, total); });
    bar.finish();
    const int columns = a->conditional ? mc.n_classes : 0;
    write_png_grid(a->out, all.data(), a->n, mc.in_channels, mc.image_size, mc.image_size, columns);
    std::printf("wrote %d samples to %s\n", a->n, a->out.c_str());
  });
}

}  // namespace jem::cli
