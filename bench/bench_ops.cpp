// Every backend op on the shapes of three models, on the CPU and (when one is
// usable) the GPU:
//   wrn28x10  WRN-28-10 on 3x32x32 (the JEM paper's model)
//   wrn28x2   WRN-28-2 on 3x32x32 (the CPU comparison with PyTorch, issue #7)
//   wrn10x1   WRN-10-1 on 1x28x28 (the quickstart, configs/fashion-mnist.toml)
// at batch 64 (one SGLD step's chains; the training step runs 2-3x as many
// rows).
//
//   bench_ops [--benchmark_filter=REGEX]      threads: OMP_NUM_THREADS
//   (default: all cores) bench_ops --benchmark_filter='conv_fwd/cpu/wrn10x1'
//   one op family, one device, one model
//
// Names: OP/DEVICE/MODEL/SHAPE[/VARIANT]. Convolutions run once per distinct
// geometry of the model (SHAPE = CxHxW-K-kRsS); counters: FLOP/s (2 per
// multiply-add), elementwise ops bytes/s. Kernel variants
// (cpu_conv_variants.hpp) run beside the backend's kernel under the same name
// with another VARIANT; each is checked against the backend's result before it
// is timed (a mismatch skips it with an error), so a faster variant is proven
// before it replaces the kernel. The CPU backend's own kernel choices run side
// by side too: DEVICE cpu (its best kernels), cpu-im2col (im2col + sgemm) and
// cpu-avx2 (no AVX-512 kernel), e.g.
//   bench_ops --benchmark_filter='conv_bwd_filter/cpu[^/]*/wrn10x1'
// Each timed iteration ends with
// backend.synchronize(), so GPU times are the ops' own.
#include <benchmark/benchmark.h>
#include <omp.h>

#include <cmath>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "cpu_conv_variants.hpp"
#ifdef JEM_HAVE_CUDA
#include "../cuda/cuda_backend.hpp"
#endif
#include "jem/blas_kernels.hpp"
#include "jem/flops.hpp"
#include "jem/runtime.hpp"
#include "jem/wide_resnet.hpp"

namespace {

using jem::Backend;
using jem::ConvGeom;
using jem::Shape;
using jem::Tensor;

constexpr int kBatch = 64;
constexpr int kBufferSlots = 10000; // the replay buffer of every shipped config

struct Model {
  const char *tag;
  jem::WrnConfig cfg;
};
const Model kModels[] = {{"wrn28x10", {28, 10, 3, 32, 10}},
                         {"wrn28x2", {28, 2, 3, 32, 10}},
                         {"wrn10x1", {10, 1, 1, 28, 10}}};

struct Device {
  std::string tag;
  std::shared_ptr<Backend> be;
};

std::vector<Device> devices() {
  std::vector<Device> out{{"cpu", jem::make_cpu_backend(0)}};
  if (!jem::cuda_devices().empty())
    out.push_back({"cuda", jem::make_backend("cuda")});
  return out;
}

Tensor random_tensor(Backend &be, Shape shape, std::uint32_t seed,
                     float lo = -1.0f, float hi = 1.0f) {
  std::vector<float> v(std::size_t(shape.numel()));
  std::uint32_t s = seed * 2654435761u +
                    1u; // a small LCG: values only need to be non-trivial
  for (float &x : v) {
    s = s * 1664525u + 1013904223u;
    x = lo + (hi - lo) * float(s >> 8) / float(1u << 24);
  }
  return be.from_vector(v, shape);
}

void reg(const std::string &name, std::function<void(benchmark::State &)> fn) {
  benchmark::RegisterBenchmark(name.c_str(), std::move(fn))
      ->UseRealTime()
      ->Unit(benchmark::kMicrosecond);
}

// Runs `op` in the timed loop, synchronising after each call.
template <class Op> void loop(benchmark::State &state, Backend &be, Op op) {
  op(); // warm-up: cuDNN's algorithm search, first touch
  be.synchronize();
  for (auto _ : state) {
    op();
    be.synchronize();
  }
}

// The CUDA backend's way of running a convolution with a bias and a residual
// (ConvEpilogue); nothing on the CPU.
constexpr int kTimed = 0, kFused = 1, kUnfused = 2;
void set_epilogue([[maybe_unused]] Backend &be, [[maybe_unused]] int e) {
#ifdef JEM_HAVE_CUDA
  if (auto *cuda = dynamic_cast<jem::cuda::CudaBackend *>(&be))
    cuda->set_conv_epilogue(e == kFused     ? jem::cuda::ConvEpilogue::Fused
                            : e == kUnfused ? jem::cuda::ConvEpilogue::Unfused
                                            : jem::cuda::ConvEpilogue::Timed);
#endif
}

void flop_counter(benchmark::State &state, double flops) {
  state.counters["FLOP/s"] =
      benchmark::Counter(flops, benchmark::Counter::kIsIterationInvariantRate);
}

std::string geom_tag(const ConvGeom &g) {
  return std::to_string(g.C) + "x" + std::to_string(g.H) + "x" +
         std::to_string(g.W) + "-" + std::to_string(g.K) + "-k" +
         std::to_string(g.R) + "s" + std::to_string(g.stride);
}

double max_rel_diff(const std::vector<float> &a, const std::vector<float> &b) {
  double scale = 0, diff = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    scale = std::max(scale, double(std::fabs(b[i])));
    diff = std::max(diff, double(std::fabs(a[i] - b[i])));
  }
  return diff / std::max(scale, 1e-30);
}

void register_convs(const Device &d, const Model &m) {
  std::set<std::string> seen, seen_tail;
  for (const jem::ConvLayer &layer : jem::wrn_conv_layers(m.cfg)) {
    ConvGeom g = layer.geom;
    g.N = kBatch;
    const std::string tag = geom_tag(g);
    const std::string suffix = "/" + d.tag + "/" + m.tag + "/" + tag;
    const double flops = 2.0 * g.macs();
    auto be = d.be;
    const Shape xs{g.N, g.C, g.H, g.W}, ws{g.K, g.C, g.R, g.R},
        ys{g.N, g.K, g.P(), g.Q()};
    if (layer.name.size() > 6 &&
        layer.name.compare(layer.name.size() - 6, 6, ".conv2") == 0 &&
        seen_tail.insert(tag).second) {
      // A block's tail: conv2, its bias, the residual add and the next
      // LeakyReLU. The model's op (conv2d_forward_leaky_relu), the convolution
      // op with the residual followed by the LeakyReLU op, and the separate
      // ops; on a GPU also each of the convolution op's two ways (cuDNN's fused
      // epilogue, the searched algorithm + the bias_residual_add pass), of
      // which the backend keeps the faster (cudnn_conv.hpp).
      struct Tail {
        Tensor x, w, b, z, y, act;
      };
      auto tail_tensors = [=] {
        return Tail{random_tensor(*be, xs, 1),
                    random_tensor(*be, ws, 2, -0.1f, 0.1f),
                    random_tensor(*be, Shape{g.K}, 3),
                    random_tensor(*be, ys, 5),
                    be->empty(ys),
                    be->empty(ys)};
      };
      // `body(t)` timed with the convolution op's epilogue set to `epilogue`.
      auto with_epilogue = [=](int epilogue, auto body) {
        return [=](benchmark::State &st) {
          set_epilogue(*be, epilogue);
          const Tail t = tail_tensors();
          loop(st, *be, [&] { body(t); });
          set_epilogue(*be, kTimed);
          flop_counter(st, flops);
        };
      };
      auto conv_add_tail = [=](int epilogue) {
        return with_epilogue(epilogue, [=](const Tail &t) {
          be->conv2d_forward_add(t.x, t.w, t.b, t.z, t.y, g.stride, g.pad_h);
          be->leaky_relu_forward(t.y, t.act, 0.2f);
        });
      };
      reg("conv2_tail" + suffix + "/conv_add+leaky_relu", conv_add_tail(kTimed));
      if (d.tag == "cuda") {
        reg("conv2_tail" + suffix + "/conv_add+leaky_relu/fused", conv_add_tail(kFused));
        reg("conv2_tail" + suffix + "/conv_add+leaky_relu/unfused", conv_add_tail(kUnfused));
      }
      // The model's own call: one op for the convolution, its bias and residual (t) and the next
      // LeakyReLU (y); on a GPU the activation is written by the epilogue's pass (unfused
      // epilogue) or by a pass of its own after cuDNN's fused call, each way timed.
      auto model_tail = [=](int epilogue) {
        return with_epilogue(epilogue, [=](const Tail &t) {
          be->conv2d_forward_leaky_relu(t.x, t.w, t.b, t.z, t.y, t.act, g.stride, g.pad_h, 0.2f);
        });
      };
      reg("conv2_tail" + suffix + "/conv_leaky_relu", model_tail(kTimed));
      if (d.tag == "cuda") {
        reg("conv2_tail" + suffix + "/conv_leaky_relu/fused", model_tail(kFused));
        reg("conv2_tail" + suffix + "/conv_leaky_relu/unfused", model_tail(kUnfused));
      }
      reg("conv2_tail" + suffix + "/conv+add+leaky_relu",
          [=](benchmark::State &st) {
            const Tail t = tail_tensors();
            loop(st, *be, [&] {
              be->conv2d_forward(t.x, t.w, t.b, t.y, g.stride, g.pad_h);
              be->add(t.y, t.z, t.y);
              be->leaky_relu_forward(t.y, t.act, 0.2f);
            });
            flop_counter(st, flops);
          });
    }
    if (!seen.insert(tag).second)
      continue;
    reg("conv_fwd" + suffix + "/backend", [=](benchmark::State &st) {
      const Tensor x = random_tensor(*be, xs, 1),
                   w = random_tensor(*be, ws, 2, -0.1f, 0.1f);
      const Tensor b = random_tensor(*be, Shape{g.K}, 3), y = be->empty(ys);
      loop(st, *be, [&] { be->conv2d_forward(x, w, b, y, g.stride, g.pad_h); });
      flop_counter(st, flops);
    });
    reg("conv_bwd_data" + suffix + "/backend", [=](benchmark::State &st) {
      const Tensor dy = random_tensor(*be, ys, 4),
                   w = random_tensor(*be, ws, 2, -0.1f, 0.1f);
      const Tensor dx = be->empty(xs);
      loop(st, *be,
           [&] { be->conv2d_backward_data(dy, w, dx, g.stride, g.pad_h); });
      flop_counter(st, flops);
    });
    reg("conv_bwd_filter" + suffix + "/backend", [=](benchmark::State &st) {
      const Tensor x = random_tensor(*be, xs, 1),
                   dy = random_tensor(*be, ys, 4);
      const Tensor dw = be->empty(ws), db = be->empty(Shape{g.K});
      loop(st, *be,
           [&] { be->conv2d_backward_filter(x, dy, dw, db, g.stride, g.pad_h); });
      flop_counter(st, flops);
    });
    if (d.tag == "cuda") {
      // The same ops on channels-last tensors (JEM_CUDA_LAYOUT=nhwc: no cuDNN transposes, the
      // filter converted to KRSC in each call), and the model's conv1 call, conv + bias +
      // LeakyReLU, in both layouts (NHWC with TF32: one cuDNN graph-API call where cuDNN has a
      // plan). The values are the NCHW ones read in the other order: only the time matters.
      const auto nhwc = jem::Layout::NHWC;
      reg("conv_fwd" + suffix + "/nhwc", [=](benchmark::State &st) {
        const Tensor x = random_tensor(*be, xs, 1).as_layout(nhwc),
                     w = random_tensor(*be, ws, 2, -0.1f, 0.1f);
        const Tensor b = random_tensor(*be, Shape{g.K}, 3), y = be->empty(ys).as_layout(nhwc);
        loop(st, *be, [&] { be->conv2d_forward(x, w, b, y, g.stride, g.pad_h); });
        flop_counter(st, flops);
      });
      reg("conv_bwd_data" + suffix + "/nhwc", [=](benchmark::State &st) {
        const Tensor dy = random_tensor(*be, ys, 4).as_layout(nhwc),
                     w = random_tensor(*be, ws, 2, -0.1f, 0.1f);
        const Tensor dx = be->empty(xs).as_layout(nhwc);
        loop(st, *be, [&] { be->conv2d_backward_data(dy, w, dx, g.stride, g.pad_h); });
        flop_counter(st, flops);
      });
      reg("conv_bwd_filter" + suffix + "/nhwc", [=](benchmark::State &st) {
        const Tensor x = random_tensor(*be, xs, 1).as_layout(nhwc),
                     dy = random_tensor(*be, ys, 4).as_layout(nhwc);
        const Tensor dw = be->empty(ws), db = be->empty(Shape{g.K});
        loop(st, *be, [&] { be->conv2d_backward_filter(x, dy, dw, db, g.stride, g.pad_h); });
        flop_counter(st, flops);
      });
      for (const jem::Layout l : {jem::Layout::NCHW, nhwc})
        reg("conv_bias_lrelu" + suffix + (l == nhwc ? "/nhwc" : "/nchw"),
            [=](benchmark::State &st) {
              const Tensor x = random_tensor(*be, xs, 1).as_layout(l),
                           w = random_tensor(*be, ws, 2, -0.1f, 0.1f);
              const Tensor b = random_tensor(*be, Shape{g.K}, 3), y = be->empty(ys).as_layout(l);
              loop(st, *be, [&] {
                be->conv2d_forward_leaky_relu(x, w, b, Tensor(), Tensor(), y, g.stride, g.pad_h, 0.2f);
              });
              flop_counter(st, flops);
            });
    }
    if (d.tag != "cpu")
      continue;
    // CPU forward variants, checked against the backend's kernel first.
    reg("conv_fwd" + suffix + "/batched_gemm", [=](benchmark::State &st) {
      const Tensor x = random_tensor(*be, xs, 1),
                   w = random_tensor(*be, ws, 2, -0.1f, 0.1f);
      const Tensor b = random_tensor(*be, Shape{g.K}, 3), y = be->empty(ys),
                   ref = be->empty(ys);
      const int threads = omp_get_max_threads();
      jem::bench::BatchedGemmScratch scratch(g, threads);
      auto run = [&] {
        jem::bench::conv2d_forward_batched_gemm(
            g, x.data<float>(), w.data<float>(), b.data<float>(),
            y.data<float>(), scratch, threads);
      };
      be->conv2d_forward(x, w, b, ref, g.stride, g.pad_h);
      run();
      // Both sum the same products in a different order: float rounding only.
      const double err = max_rel_diff(be->to_vector(y), be->to_vector(ref));
      if (err > 1e-5) {
        st.SkipWithError(("differs from the backend's result: max rel diff " +
                          std::to_string(err))
                             .c_str());
        return;
      }
      loop(st, *be, run);
      flop_counter(st, flops);
    });
  }
}

void register_elementwise(const Device &d, const Model &m) {
  auto be = d.be;
  const std::string suffix = "/" + d.tag + "/" + m.tag + "/";
  const int S = m.cfg.image_size, k = m.cfg.width, K = m.cfg.n_classes;
  // One activation shape per stage.
  const std::pair<int, int> stages[] = {
      {16 * k, S}, {32 * k, S / 2}, {64 * k, S / 4}};
  for (auto [c, h] : stages) {
    const Shape s{kBatch, c, h, h};
    const std::string tag = suffix + std::to_string(c) + "x" +
                            std::to_string(h) + "x" + std::to_string(h);
    const double bytes = double(s.numel()) * 4;
    reg("leaky_relu_fwd" + tag, [=](benchmark::State &st) {
      const Tensor x = random_tensor(*be, s, 1), y = be->empty(s);
      loop(st, *be, [&] { be->leaky_relu_forward(x, y, 0.2f); });
      st.SetBytesProcessed(std::int64_t(st.iterations() * 2 * bytes));
    });
    reg("leaky_relu_bwd" + tag, [=](benchmark::State &st) {
      const Tensor x = random_tensor(*be, s, 1), dy = random_tensor(*be, s, 2),
                   dx = be->empty(s);
      loop(st, *be, [&] { be->leaky_relu_backward(x, dy, dx, 0.2f); });
      st.SetBytesProcessed(std::int64_t(st.iterations() * 3 * bytes));
    });
    reg("add" + tag, [=](benchmark::State &st) {
      const Tensor a = random_tensor(*be, s, 1), b = random_tensor(*be, s, 2),
                   y = be->empty(s);
      loop(st, *be, [&] { be->add(a, b, y); });
      st.SetBytesProcessed(std::int64_t(st.iterations() * 3 * bytes));
    });
    // The model's fused passes (each replaces two of the ops above).
    reg("bias_leaky_relu_fwd" + tag, [=](benchmark::State &st) {
      const Tensor x = random_tensor(*be, s, 1), y = be->empty(s),
                   b = random_tensor(*be, Shape{c}, 2);
      loop(st, *be, [&] { be->bias_leaky_relu_forward(x, b, y, 0.2f); });
      st.SetBytesProcessed(std::int64_t(st.iterations() * 2 * bytes));
    });
    reg("leaky_relu_bwd_add" + tag, [=](benchmark::State &st) {
      const Tensor x = random_tensor(*be, s, 1), dy = random_tensor(*be, s, 2),
                   other = random_tensor(*be, s, 3), dx = be->empty(s);
      loop(st, *be,
           [&] { be->leaky_relu_backward_add(x, dy, other, dx, 0.2f); });
      st.SetBytesProcessed(std::int64_t(st.iterations() * 4 * bytes));
    });
  }
  // Head: pool, linear, losses.
  const int F = m.cfg.feature_dim(), H = S / 4;
  const Shape fs{kBatch, F, H, H};
  reg("global_avg_pool_fwd" + suffix + std::to_string(F) + "x" +
          std::to_string(H),
      [=](benchmark::State &st) {
        const Tensor x = random_tensor(*be, fs, 1),
                     y = be->empty(Shape{kBatch, F});
        loop(st, *be, [&] { be->global_avg_pool_forward(x, y); });
        st.SetBytesProcessed(std::int64_t(st.iterations() * fs.numel() * 4));
      });
  reg("global_avg_pool_bwd" + suffix + std::to_string(F) + "x" +
          std::to_string(H),
      [=](benchmark::State &st) {
        const Tensor dy = random_tensor(*be, Shape{kBatch, F}, 1),
                     dx = be->empty(fs);
        loop(st, *be, [&] { be->global_avg_pool_backward(dy, dx); });
        st.SetBytesProcessed(std::int64_t(st.iterations() * fs.numel() * 4));
      });
  const std::string lin = suffix + std::to_string(F) + "-" + std::to_string(K);
  reg("linear_fwd" + lin, [=](benchmark::State &st) {
    const Tensor x = random_tensor(*be, Shape{kBatch, F}, 1),
                 w = random_tensor(*be, Shape{K, F}, 2);
    const Tensor b = random_tensor(*be, Shape{K}, 3),
                 y = be->empty(Shape{kBatch, K});
    loop(st, *be, [&] { be->linear_forward(x, w, b, y); });
    flop_counter(st, 2.0 * kBatch * F * K);
  });
  reg("linear_bwd" + lin, [=](benchmark::State &st) {
    const Tensor x = random_tensor(*be, Shape{kBatch, F}, 1),
                 w = random_tensor(*be, Shape{K, F}, 2);
    const Tensor dy = random_tensor(*be, Shape{kBatch, K}, 3),
                 dx = be->empty(Shape{kBatch, F});
    const Tensor dw = be->empty(Shape{K, F}), db = be->empty(Shape{K});
    loop(st, *be, [&] { be->linear_backward(x, w, dy, dx, dw, db); });
    flop_counter(st, 4.0 * kBatch * F * K);
  });
  const Shape ls{kBatch, K};
  const std::string lt =
      suffix + std::to_string(kBatch) + "x" + std::to_string(K);
  auto labels_on = [be, K](Backend &b) {
    std::vector<std::int32_t> y(kBatch);
    for (int i = 0; i < kBatch; ++i)
      y[std::size_t(i)] = i % K;
    const Tensor t = b.empty(Shape{kBatch}, jem::DType::I32);
    b.upload_i32(y.data(), t);
    return t;
  };
  reg("energy" + lt, [=](benchmark::State &st) {
    const Tensor l = random_tensor(*be, ls, 1, -5, 5),
                 e = be->empty(Shape{kBatch}), dl = be->empty(ls);
    loop(st, *be, [&] { be->energy_forward_backward(l, e, dl, 1.0f); });
  });
  reg("energy_sq" + lt, [=](benchmark::State &st) {
    const Tensor l = random_tensor(*be, ls, 1, -5, 5),
                 e = be->empty(Shape{kBatch}), dl = be->empty(ls);
    loop(st, *be,
         [&] { be->energy_sq_forward_backward(l, e, dl, 1.0f, 0.1f); });
  });
  reg("cross_entropy" + lt, [=](benchmark::State &st) {
    const Tensor l = random_tensor(*be, ls, 1, -5, 5),
                 loss = be->empty(Shape{kBatch}), dl = be->empty(ls);
    const Tensor y = labels_on(*be);
    loop(st, *be, [&] {
      be->cross_entropy_forward_backward(l, y, loss, dl, 1.0f / kBatch);
    });
  });
  reg("class_energy" + lt, [=](benchmark::State &st) {
    const Tensor l = random_tensor(*be, ls, 1, -5, 5),
                 e = be->empty(Shape{kBatch}), dl = be->empty(ls);
    const Tensor y = labels_on(*be);
    loop(st, *be,
         [&] { be->class_energy_forward_backward(l, y, e, dl, 1.0f); });
  });

  // Replay buffer and SGLD on [64, C, S, S] images.
  const Shape img{kBatch, m.cfg.in_channels, S, S};
  const std::string it = suffix + std::to_string(kBatch) + "x" +
                         std::to_string(m.cfg.in_channels) + "x" +
                         std::to_string(S) + "x" + std::to_string(S);
  auto slots_on = [](Backend &b, bool reinit) {
    std::vector<std::int32_t> v(kBatch);
    for (int i = 0; i < kBatch; ++i)
      v[std::size_t(i)] = reinit ? (i % 20 == 0) : i * 151 % kBufferSlots;
    const Tensor t = b.empty(Shape{kBatch}, jem::DType::I32);
    b.upload_i32(v.data(), t);
    return t;
  };
  const double img_bytes = double(img.numel()) * 4;
  reg("buffer_gather" + it, [=](benchmark::State &st) {
    const Tensor buf = be->empty(Shape{kBufferSlots, m.cfg.in_channels, S, S}),
                 out = be->empty(img);
    const Tensor idx = slots_on(*be, false), re = slots_on(*be, true);
    loop(st, *be, [&] {
      be->buffer_gather(buf, idx, re, out, jem::NoiseKey{1, 2, 0, 0});
    });
    st.SetBytesProcessed(std::int64_t(st.iterations() * 2 * img_bytes));
  });
  reg("buffer_scatter" + it, [=](benchmark::State &st) {
    const Tensor buf = be->empty(Shape{kBufferSlots, m.cfg.in_channels, S, S}),
                 x = random_tensor(*be, img, 1);
    const Tensor idx = slots_on(*be, false);
    loop(st, *be, [&] { be->buffer_scatter(x, idx, buf); });
    st.SetBytesProcessed(std::int64_t(st.iterations() * 2 * img_bytes));
  });
  reg("sgld_step" + it, [=](benchmark::State &st) {
    const Tensor x = random_tensor(*be, img, 1),
                 g = random_tensor(*be, img, 2, -1e-3f, 1e-3f);
    loop(st, *be, [&] {
      be->sgld_step(x, g, 1.0f, 0.01f, true, jem::NoiseKey{1, 2, 3, 0});
    });
    st.SetBytesProcessed(std::int64_t(st.iterations() * 3 * img_bytes));
  });
}

// Optimizer and flat-buffer ops over the model's parameter count.
void register_flat(const Device &d, const Model &m) {
  auto be = d.be;
  std::int64_t P = 0;
  {
    jem::WideResNet model(m.cfg, *be, 1);
    P = model.num_params();
  }
  const Shape s{P};
  const std::string tag = "/" + d.tag + "/" + m.tag + "/" + std::to_string(P);
  const double bytes = double(P) * 4;
  reg("adam_step" + tag, [=](benchmark::State &st) {
    const Tensor p = random_tensor(*be, s, 1), g = random_tensor(*be, s, 2),
                 mm = be->empty(s), v = be->empty(s);
    jem::AdamStep a;
    a.lr = 1e-4f;
    a.bias1 = 0.1f;
    a.bias2 = 0.001f;
    loop(st, *be, [&] { be->adam_step(p, g, mm, v, a); });
    st.SetBytesProcessed(std::int64_t(st.iterations() * 7 *
                                      bytes)); // p, m, v read+write, g read
  });
  reg("sgd_step" + tag, [=](benchmark::State &st) {
    const Tensor p = random_tensor(*be, s, 1), g = random_tensor(*be, s, 2),
                 buf = be->empty(s);
    loop(st, *be, [&] { be->sgd_step(p, g, buf, 1e-4f, 0.9f, 0.0f); });
    st.SetBytesProcessed(std::int64_t(st.iterations() * 5 * bytes));
  });
  reg("sum_squares" + tag, [=](benchmark::State &st) {
    const Tensor g = random_tensor(*be, s, 2);
    double sink = 0;
    loop(st, *be, [&] { sink += be->sum_squares(g); });
    benchmark::DoNotOptimize(sink);
    st.SetBytesProcessed(std::int64_t(st.iterations() * bytes));
  });
  reg("fill" + tag, [=](benchmark::State &st) {
    const Tensor g = be->empty(s);
    loop(st, *be, [&] { be->fill(g, 0.0f); });
    st.SetBytesProcessed(std::int64_t(st.iterations() * bytes));
  });
  reg("scale" + tag, [=](benchmark::State &st) {
    const Tensor g = random_tensor(*be, s, 2);
    loop(st, *be, [&] { be->scale(g, 1.0f); });
    st.SetBytesProcessed(std::int64_t(st.iterations() * 2 * bytes));
  });
  reg("copy" + tag, [=](benchmark::State &st) {
    const Tensor a = random_tensor(*be, s, 1), b = be->empty(s);
    loop(st, *be, [&] { be->copy(a, b); });
    st.SetBytesProcessed(std::int64_t(st.iterations() * 2 * bytes));
  });
  reg("axpy" + tag, [=](benchmark::State &st) {
    const Tensor a = random_tensor(*be, s, 1), b = be->empty(s);
    loop(st, *be, [&] { be->axpy(1e-3f, a, b); });
    st.SetBytesProcessed(std::int64_t(st.iterations() * 3 * bytes));
  });
}

} // namespace

int main(int argc, char **argv) {
  jem::rerun_with_openblas_coretype(argv);  // OpenBLAS's own kernels, as `jem bench` has them
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv))
    return 1;
  for (const Device &d : devices())
    for (const Model &m : kModels) {
      register_convs(d, m);
      register_elementwise(d, m);
      register_flat(d, m);
    }
  // The CPU backend's other convolution kernels on the same shapes, side by side with its
  // choice (DEVICE "cpu"): im2col + sgemm everywhere, the AVX2 direct kernels only (no AVX-512
  // kernel, no Winograd), and the AVX2 kernels with Winograd F(2x2, 3x3) wherever it applies.
  for (const Device &d :
       {Device{"cpu-im2col", jem::make_cpu_backend(0, jem::CpuConvKernels::kIm2col)},
        Device{"cpu-avx2", jem::make_cpu_backend(0, jem::CpuConvKernels::kDirectAvx2)},
        Device{"cpu-winograd", jem::make_cpu_backend(0, jem::CpuConvKernels::kWinogradAvx2)}})
    for (const Model &m : kModels)
      register_convs(d, m);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
