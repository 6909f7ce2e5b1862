// Whole-model CPU timings: one forward, one forward + full backward, and one forward +
// input-only backward (the SGLD step's cost) at batch 64, for WRN-28-2 (3x32x32, the CIFAR
// shape) and WRN-10-2 (1x28x28, the Fashion-MNIST shape).
//   bench_model [--benchmark_filter=...]   (threads: OMP_NUM_THREADS, default all cores)
// Counters: images/s and GFLOP/s, with FLOPs = 2 * multiply-adds; a backward pass costs two
// forward passes (data and filter gradients), the input-only backward one.
#include <benchmark/benchmark.h>

#include "jem/backend.hpp"
#include "jem/blas_kernels.hpp"
#include "jem/wide_resnet.hpp"

namespace {

enum class Pass { Forward, ForwardBackward, ForwardInputBackward };

void run_k(benchmark::State& state, jem::WrnConfig cfg, Pass pass, int B,
           jem::CpuConvKernels kernels) {
  auto be = jem::make_cpu_backend(0, kernels);
  jem::WideResNet model(cfg, *be, B);
  model.init(1);
  const jem::Tensor x = be->empty(jem::Shape{B, cfg.in_channels, cfg.image_size, cfg.image_size});
  be->fill(x, 0.25f);
  const jem::Tensor dx = be->empty(x.shape());
  const jem::Tensor energy = be->empty(jem::Shape{B});
  const jem::Tensor dlogits = be->empty(jem::Shape{B, cfg.n_classes});
  for (auto _ : state) {
    const jem::Tensor logits = model.forward(x);
    if (pass == Pass::Forward) continue;
    be->energy_forward_backward(logits, energy, dlogits, 1.0f);
    if (pass == Pass::ForwardBackward) model.backward(dlogits, dx);
    else model.backward_input(dlogits, dx);
  }
  const double passes = pass == Pass::Forward ? 1.0 : pass == Pass::ForwardBackward ? 3.0 : 2.0;
  const double flops = 2.0 * model.forward_macs(B) * passes;
  state.counters["images/s"] = benchmark::Counter(double(B), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["GFLOP/s"] = benchmark::Counter(flops / 1e9, benchmark::Counter::kIsIterationInvariantRate);
}

void run_b(benchmark::State& state, jem::WrnConfig cfg, Pass pass, int B) {
  run_k(state, cfg, pass, B, jem::CpuConvKernels::kBest);
}
void run(benchmark::State& state, jem::WrnConfig cfg, Pass pass) { run_b(state, cfg, pass, 64); }

const jem::WrnConfig kWrn28x2{28, 2, 3, 32, 10};
const jem::WrnConfig kWrn10x1{10, 1, 1, 28, 10};
const jem::WrnConfig kWrn10x2{10, 2, 1, 28, 10};

}  // namespace

BENCHMARK_CAPTURE(run, wrn28x2_forward, kWrn28x2, Pass::Forward)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(run, wrn28x2_forward_backward, kWrn28x2, Pass::ForwardBackward)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(run, wrn28x2_forward_input_backward, kWrn28x2, Pass::ForwardInputBackward)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(run, wrn10x2_forward, kWrn10x2, Pass::Forward)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(run, wrn10x2_forward_backward, kWrn10x2, Pass::ForwardBackward)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(run, wrn10x2_forward_input_backward, kWrn10x2, Pass::ForwardInputBackward)->Unit(benchmark::kMillisecond)->UseRealTime();


// The quickstart model: an SGLD step (batch 64) and the training step (3 x 64 rows).
BENCHMARK_CAPTURE(run, wrn10x1_sgld_step, kWrn10x1, Pass::ForwardInputBackward)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(run_b, wrn10x1_train_step_192, kWrn10x1, Pass::ForwardBackward, 192)->Unit(benchmark::kMillisecond)->UseRealTime();

// The same steps with every convolution on im2col + sgemm: what the direct 3x3 kernel gains.
BENCHMARK_CAPTURE(run_k, wrn10x1_sgld_step_im2col, kWrn10x1, Pass::ForwardInputBackward, 64, jem::CpuConvKernels::kIm2col)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(run_k, wrn10x1_train_step_192_im2col, kWrn10x1, Pass::ForwardBackward, 192, jem::CpuConvKernels::kIm2col)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(run_k, wrn28x2_forward_input_backward_im2col, kWrn28x2, Pass::ForwardInputBackward, 64, jem::CpuConvKernels::kIm2col)->Unit(benchmark::kMillisecond)->UseRealTime();

int main(int argc, char** argv) {
  jem::rerun_with_openblas_coretype(argv);  // OpenBLAS's own kernels, as `jem bench` has them
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
