#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>
#include <sstream>

#include "jem/bench.hpp"
#include "jem/flops.hpp"
#include "jem/objective.hpp"
#include "jem/optimizer.hpp"
#include "jem/sampler.hpp"
#include "jem/train_components.hpp"
#include "jem/wide_resnet.hpp"

namespace jem {

namespace {

using Clock = std::chrono::steady_clock;

// "cuda:0 (NVIDIA H200, sm_90, 132 SMs, TF32 math)" -> "NVIDIA H200"
// (CudaBackend::name()'s format); "" for any other backend.
std::string gpu_name(const std::string &backend_name) {
  if (backend_name.rfind("cuda", 0) != 0)
    return "";
  const auto open = backend_name.find('(');
  if (open == std::string::npos)
    return "";
  const auto end = backend_name.find(',', open);
  return backend_name.substr(
      open + 1, end == std::string::npos ? std::string::npos : end - open - 1);
}

} // namespace

DatasetShape dataset_shape(const std::string &dataset) {
  if (dataset == "fashion-mnist" || dataset == "mnist")
    return {1, 28, 10};
  if (dataset == "cifar10" || dataset == "svhn")
    return {3, 32, 10};
  if (dataset == "cifar100")
    return {3, 32, 100};
  JEM_FAIL("dataset '", dataset,
           "': expected fashion-mnist, mnist, cifar10, cifar100 or svhn");
}

double median(std::vector<double> v) {
  if (v.empty())
    return 0.0;
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

double mean(const std::vector<double> &v) {
  return v.empty()
             ? 0.0
             : std::accumulate(v.begin(), v.end(), 0.0) / double(v.size());
}

std::int64_t fused_calls_if_all_fused(const WrnConfig &cfg, int sgld_steps, int chain_batches,
                                      int iterations, std::int64_t graph_launches) {
  // The calls that can fuse: conv1 and conv2 of every block (the stem keeps its pre-activation
  // output without a residual, a pattern the fusions do not cover; the shortcuts have no
  // activation after them).
  std::int64_t per_forward = 0;
  for (const ConvLayer &l : wrn_conv_layers(cfg)) {
    const std::string &n = l.name;
    const bool conv1 = n.size() > 6 && n.compare(n.size() - 6, 6, ".conv1") == 0;
    const bool conv2 = n.size() > 6 && n.compare(n.size() - 6, 6, ".conv2") == 0;
    if ((conv1 && n != "f.conv1") || conv2) ++per_forward;
  }
  // A forward per SGLD step of each chain batch and one of the training pass per iteration; a
  // graph launch replays one chain batch's steps without issuing (or counting) their calls.
  const std::int64_t forwards = std::int64_t(iterations) * (1 + std::int64_t(chain_batches) * sgld_steps) -
                                graph_launches * sgld_steps;
  return per_forward * forwards;
}

BenchResult run_bench(Backend &backend, const TrainConfig &cfg,
                      const BenchOptions &opt) {
  JEM_CHECK(opt.iterations >= 1, "bench: --iterations ", opt.iterations,
            " must be >= 1");
  JEM_CHECK(opt.warmup >= 0, "bench: --warmup ", opt.warmup, " must be >= 0");
  const DatasetShape ds = dataset_shape(cfg.dataset);
  validate(cfg, ds.classes);

  // The trainer's components, configured as the trainer configures them.
  const WrnConfig wcfg =
      model_config(cfg, ds.channels, ds.image_size, ds.classes);
  const ObjectiveConfig ocfg = objective_config(cfg);
  const OptimizerConfig optcfg = optimizer_config(cfg);
  const int B = cfg.batch_size, Bp = px_batch(cfg);
  WideResNet model(wcfg, backend, model_max_batch(cfg));
  JemObjective objective(backend, model, ocfg, B, Bp);
  SgldSampler sampler(backend, model, sampler_config(cfg, ds.classes),
                      std::max(B, Bp));
  ReplayBuffer buffer(backend, cfg.buffer_size, ds.channels, ds.image_size,
                      segmented_buffer(cfg) ? ds.classes : 1);
  Optimizer optimizer(backend, optcfg, model.num_params());
  model.init(cfg.seed);
  buffer.init_uniform(cfg.seed);
  optimizer.reset();

  // Synthetic batches: fixed uniform images, labels b mod K (every class
  // present).
  const std::size_t image =
      std::size_t(ds.channels) * ds.image_size * ds.image_size;
  std::mt19937_64 gen(cfg.seed);
  std::uniform_real_distribution<float> uni(-1.0f, 1.0f);
  std::vector<float> x_lab(std::size_t(B) * image),
      x_data(std::size_t(Bp) * image);
  for (float &v : x_lab)
    v = uni(gen);
  for (float &v : x_data)
    v = uni(gen);
  std::vector<std::int32_t> labels(static_cast<std::size_t>(B));
  for (int b = 0; b < B; ++b)
    labels[std::size_t(b)] = b % ds.classes;

  BenchResult r;
  r.model = wcfg.str();
  r.backend = backend.name();
  r.params = model.num_params();
  r.batch = B;
  r.px_batch = Bp;
  r.sgld_steps = cfg.sgld_steps;
  r.sgld_chains =
      (objective.uses_px() ? Bp : 0) + (objective.uses_pxy() ? B : 0);
  r.rows = JemObjective::rows_needed(ocfg, B, Bp);
  const IterationFlops fl =
      jem_iteration_flops(wcfg, r.sgld_chains, r.sgld_steps, r.rows);
  r.flops_sgld = fl.sgld;
  r.flops_step = fl.step;
  // Passes over the parameters: the update (Adam/AdamW: read p, g, m, v and
  // write p, m, v; SGD: p, g, buffer and p, buffer), zeroing the gradient, and
  // the moving average (scale it: read, write; then axpy p into it: read p and
  // it, write it).
  const double optimizer_passes = (optcfg.kind == "sgd" ? 5.0 : 7.0) + 1.0 +
                                  (optcfg.ema > 0.0f ? 5.0 : 0.0);
  const std::string gpu = gpu_name(r.backend);
  if (!gpu.empty()) {
    r.peak_device_flops =
        gpu_peak_flops(gpu, r.backend.find("TF32") != std::string::npos);
    r.peak_device_bandwidth = gpu_peak_bandwidth(gpu);
  }

  const std::uint64_t seed = cfg.seed;
  backend.synchronize();
  std::int64_t allocations_before = backend.memory_counters().allocations;
  std::int64_t launches_before = backend.graph_launches();
  std::int64_t fused_before = backend.fused_conv_calls();
  for (int i = 0; i < opt.warmup + opt.iterations; ++i) {
    const auto iter = std::uint32_t(i);
    // A profiler started with ncu --profile-from-start off, or nsys --capture-range
    // cudaProfilerApi, records the timed iterations only (not the warm-up's cuDNN searches).
    if (i == opt.warmup) {
      backend.profiler_start();
      allocations_before = backend.memory_counters().allocations;
      launches_before = backend.graph_launches();
      fused_before = backend.fused_conv_calls();
    }
    const auto t0 = Clock::now();
    // sgld: as trainer.cpp, unconditional chains first, conditional ones after
    // them.
    if (objective.uses_px()) {
      const Tensor xq = sampler.sample(buffer, seed, iter, 0, Bp, nullptr);
      backend.copy(xq, objective.x_q());
    }
    if (objective.uses_pxy()) {
      const Tensor xqy = sampler.sample(buffer, seed, iter, std::uint32_t(Bp),
                                        B, labels.data());
      backend.copy(xqy, objective.x_q_y());
    }
    backend.synchronize();
    const auto t1 = Clock::now();
    // step: the batch arrives from the host, as from the trainer's prefetcher.
    backend.upload(x_lab.data(), objective.x_lab());
    objective.set_labels(labels.data());
    if (objective.uses_px())
      backend.upload(x_data.data(), objective.x_data());
    const StepStats s = objective.compute();
    backend.synchronize();
    const auto t2 = Clock::now();
    // optimizer: the update (the trainer computes the gradient norm only on
    // the iterations it logs).
    optimizer.step(model.param_buffer(), model.grad_buffer(),
                   scheduled_lr(optcfg, i, 0));
    backend.synchronize();
    const auto t3 = Clock::now();
    (void)s;
    if (i < opt.warmup)
      continue;
    auto ms = [](Clock::time_point a, Clock::time_point b) {
      return std::chrono::duration<double, std::milli>(b - a).count();
    };
    r.ms.sgld.push_back(ms(t0, t1));
    r.ms.step.push_back(ms(t1, t2));
    r.ms.optimizer.push_back(ms(t2, t3));
    r.ms.total.push_back(ms(t0, t3));
  }
  backend.profiler_stop();
  r.peak_memory_bytes = backend.peak_memory_bytes();
  r.device_memory_used_bytes = backend.device_memory_used_bytes();
  r.timed_allocations = backend.memory_counters().allocations - allocations_before;
  r.timed_graph_launches = backend.graph_launches() - launches_before;
  r.timed_fused_conv_calls = backend.fused_conv_calls() - fused_before;
  r.fused_conv_calls_if_all_fused =
      fused_calls_if_all_fused(wcfg, r.sgld_steps,
                               (objective.uses_px() ? 1 : 0) + (objective.uses_pxy() ? 1 : 0),
                               opt.iterations, r.timed_graph_launches);
  // Counted as fused only when every call fused: a partial fusion (a shape without a plan)
  // keeps the unfused count, whose floor is then the conservative one.
  r.traffic = jem_iteration_traffic(
      wcfg, r.sgld_chains, r.sgld_steps, r.rows, r.params, optimizer_passes,
      r.timed_fused_conv_calls > 0 && r.timed_fused_conv_calls == r.fused_conv_calls_if_all_fused);
  return r;
}

double custom_kernels_floor_ms(const BenchResult &r) {
  return r.peak_device_bandwidth > 0
             ? 1e3 * r.traffic.custom / r.peak_device_bandwidth
             : 0.0;
}

std::string bench_json(const BenchResult &r, const TrainConfig &cfg,
                       const BenchOptions &opt) {
  using nlohmann::json;
  auto phases = [&](auto stat) {
    return json{{"sgld", stat(r.ms.sgld)},
                {"step", stat(r.ms.step)},
                {"optimizer", stat(r.ms.optimizer)},
                {"total", stat(r.ms.total)}};
  };
  const double total_s = median(r.ms.total) / 1e3;
  const double flops = r.flops_sgld + r.flops_step;
  const double achieved = total_s > 0 ? flops / total_s : 0.0;
  json j;
  j["model"] = r.model;
  j["depth"] = cfg.depth;
  j["width"] = cfg.width;
  j["dataset"] = cfg.dataset;
  j["params"] = r.params;
  j["backend"] = r.backend;
  j["threads"] = cfg.threads;
  j["batch_size"] = r.batch;
  j["px_batch_size"] = r.px_batch;
  j["sgld_steps"] = r.sgld_steps;
  j["sgld_chains"] = r.sgld_chains;
  j["rows"] = r.rows;
  j["optimizer"] = cfg.optimizer;
  j["warmup_iterations"] = opt.warmup;
  j["iterations"] = opt.iterations;
  j["ms_per_iteration"] =
      phases([](const std::vector<double> &v) { return median(v); });
  j["ms_per_iteration_mean"] =
      phases([](const std::vector<double> &v) { return mean(v); });
  j["iteration_ms"] = r.ms.total;
  j["images_per_second"] = total_s > 0 ? r.batch / total_s : 0.0;
  j["flops_per_iteration"] = {
      {"sgld", r.flops_sgld}, {"step", r.flops_step}, {"total", flops}};
  j["achieved_flops_per_second"] = achieved;
  j["device_peak_flops_per_second"] =
      r.peak_device_flops > 0 ? json(r.peak_device_flops) : json(nullptr);
  j["fraction_of_peak"] = r.peak_device_flops > 0
                              ? json(achieved / r.peak_device_flops)
                              : json(nullptr);
  j["peak_memory_bytes"] =
      r.peak_memory_bytes >= 0 ? json(r.peak_memory_bytes) : json(nullptr);
  j["device_memory_used_bytes"] = r.device_memory_used_bytes >= 0
                                      ? json(r.device_memory_used_bytes)
                                      : json(nullptr);
  j["allocations_during_timed_iterations"] = r.timed_allocations;
  j["graph_launches_during_timed_iterations"] = r.timed_graph_launches;
  j["fused_conv_calls_during_timed_iterations"] = r.timed_fused_conv_calls;
  j["fused_conv_calls_if_all_fused"] = r.fused_conv_calls_if_all_fused;
  j["elementwise_bytes_per_iteration"] = {{"custom", r.traffic.custom},
                                          {"bias", r.traffic.bias}};
  j["device_peak_bandwidth_bytes_per_second"] =
      r.peak_device_bandwidth > 0 ? json(r.peak_device_bandwidth)
                                  : json(nullptr);
  // Its share of the measured iteration: the target is < 5%.
  const double floor_ms = custom_kernels_floor_ms(r);
  j["custom_kernels_floor_ms"] =
      r.peak_device_bandwidth > 0 ? json(floor_ms) : json(nullptr);
  j["custom_kernels_floor_fraction"] =
      r.peak_device_bandwidth > 0 && total_s > 0
          ? json(floor_ms / (1e3 * total_s))
          : json(nullptr);
  return j.dump(2) + "\n";
}

std::string bench_report(const BenchResult &r) {
  const double sgld = median(r.ms.sgld), step = median(r.ms.step),
               optim = median(r.ms.optimizer), total = median(r.ms.total);
  const double flops = r.flops_sgld + r.flops_step;
  const double achieved = total > 0 ? flops / (total / 1e3) : 0.0;
  char buf[512];
  std::ostringstream os;
  os << "jem bench: " << r.model << ", " << r.params << " parameters, "
     << r.backend << "\n";
  std::snprintf(buf, sizeof buf,
                "batch %d + p(x) batch %d (%d rows), %d SGLD chains x %d "
                "steps; %zu timed iterations\n",
                r.batch, r.px_batch, r.rows, r.sgld_chains, r.sgld_steps,
                r.ms.total.size());
  os << buf;
  std::snprintf(buf, sizeof buf,
                "ms/iteration (medians): total %.2f; sgld %.2f, step %.2f, "
                "optimizer %.2f\n",
                total, sgld, step, optim);
  os << buf;
  auto rate = [](double f) {
    char b[64];
    if (f >= 1e12)
      std::snprintf(b, sizeof b, "%.2f TFLOP/s", f / 1e12);
    else
      std::snprintf(b, sizeof b, "%.1f GFLOP/s", f / 1e9);
    return std::string(b);
  };
  std::snprintf(buf, sizeof buf, "%.1f images/s, %.3g GFLOP/iteration, %s",
                total > 0 ? r.batch / (total / 1e3) : 0.0, flops / 1e9,
                rate(achieved).c_str());
  os << buf;
  if (r.peak_device_flops > 0) {
    std::snprintf(buf, sizeof buf, " = %.1f%% of the device's peak (%s)",
                  100.0 * achieved / r.peak_device_flops,
                  rate(r.peak_device_flops).c_str());
    os << buf;
  }
  os << "\n";
  if (r.peak_memory_bytes >= 0) {
    std::snprintf(buf, sizeof buf, "peak memory %.1f MiB; ",
                  double(r.peak_memory_bytes) / (1024.0 * 1024.0));
    os << buf;
  }
  if (r.device_memory_used_bytes >= 0) {
    std::snprintf(buf, sizeof buf,
                  "%.1f MiB in use on the device (context and libraries "
                  "included); ",
                  double(r.device_memory_used_bytes) / (1024.0 * 1024.0));
    os << buf;
  }
  os << r.timed_allocations
     << " allocations during the timed iterations\n";
  if (r.timed_graph_launches > 0)
    os << r.timed_graph_launches
       << " CUDA Graph launches during the timed iterations (the SGLD chains)\n";
  if (r.timed_fused_conv_calls > 0)
    os << r.timed_fused_conv_calls << " of " << r.fused_conv_calls_if_all_fused
       << " convolution + LeakyReLU calls issued during the timed iterations ran fused in cuDNN"
       << (r.timed_fused_conv_calls == r.fused_conv_calls_if_all_fused
               ? "\n"
               : " (not all: the traffic below counts them as unfused)\n");
  std::snprintf(buf, sizeof buf,
                "elementwise passes move %.3g GB per iteration in jem's "
                "kernels%s, %.3g GB in the convolutions' bias adds",
                r.traffic.custom / 1e9,
                r.timed_fused_conv_calls > 0 &&
                        r.timed_fused_conv_calls == r.fused_conv_calls_if_all_fused
                    ? " (the forward's fused into cuDNN)"
                    : "",
                r.traffic.bias / 1e9);
  os << buf;
  if (r.peak_device_bandwidth > 0 && total > 0) {
    const double floor_ms = custom_kernels_floor_ms(r);
    std::snprintf(buf, sizeof buf,
                  "; at the device's %.2f TB/s jem's take at least %.2f ms "
                  "(%.1f%% of the iteration)",
                  r.peak_device_bandwidth / 1e12, floor_ms,
                  100.0 * floor_ms / total);
    os << buf;
  }
  os << "\n";
  return os.str();
}

} // namespace jem
