// CPU backend: memory, elementwise ops, pooling, linear layer and the fused losses.
// The convolutions live in conv2d.cpp.
#include "cpu/cpu_backend.hpp"

#include <cblas.h>
#include <omp.h>
#include <xmmintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <sstream>

#include "cpu/leaky_relu_spans.hpp"
#include "jem/elementwise_math.hpp"

namespace jem::cpu {

CpuBackend::CpuBackend(int threads, CpuConvKernels kernels)
    : threads_(threads > 0 ? threads : omp_get_max_threads()), kernels_(kernels) {
  // OpenBLAS runs inside our OpenMP threads: one BLAS thread each (see the header).
  openblas_set_num_threads(1);
  scratch_.resize(static_cast<std::size_t>(threads_));
  // Flush denormals to zero (FTZ) and read them as zero (DAZ) on every thread of the pool.
  // Once JEM's softmax saturates, dE/dlogits holds values like exp(-100) whose products in the
  // backward pass are denormal; x86 handles those in microcode, ~100x slower per operation,
  // and a training run slowed down threefold within 50 iterations. Values below 1.2e-38 do not
  // matter to any quantity JEM computes. libgomp keeps its threads, so this sticks.
#pragma omp parallel num_threads(threads_)
  _mm_setcsr(_mm_getcsr() | 0x8040);
}

std::string CpuBackend::name() const {
  std::ostringstream os;
  os << "cpu (" << threads_ << " threads, " << openblas_get_config() << ")";
  return os.str();
}

float* CpuBackend::scratch(int thread, int slot, std::size_t n) {
  auto& slots = scratch_[static_cast<std::size_t>(thread)];
  if (slots.size() <= static_cast<std::size_t>(slot)) slots.resize(static_cast<std::size_t>(slot) + 1);
  auto& buf = slots[static_cast<std::size_t>(slot)];
  if (buf.size() < n) buf.resize(n);
  return buf.data();
}

Tensor CpuBackend::empty(Shape shape, DType dtype) {
  const Tensor t = Tensor::host(shape, dtype);
  const auto bytes = static_cast<std::int64_t>(t.storage()->bytes());
  Counters& c = *counters_;
  c.allocations.fetch_add(1);
  const std::int64_t live = c.live.fetch_add(bytes) + bytes;
  for (std::int64_t peak = c.peak.load(); live > peak && !c.peak.compare_exchange_weak(peak, live);) {
  }
  // The returned tensor shares the same Storage through a second owner whose deleter counts the
  // bytes as freed before it lets the Storage go (Storage's own deleter is a plain function
  // with no room for the counters).
  std::shared_ptr<Storage> counted(t.storage().get(), [owner = t.storage(), counters = counters_](Storage* s) mutable {
    counters->live.fetch_sub(static_cast<std::int64_t>(s->bytes()));
    owner.reset();
  });
  return Tensor(std::move(counted), 0, shape, dtype);
}

MemoryCounters CpuBackend::memory_counters() const {
  MemoryCounters m;
  m.allocations = counters_->allocations.load();
  m.live_bytes = counters_->live.load();
  m.peak_bytes = counters_->peak.load();
  return m;
}

// memcpy with a null pointer is undefined even for 0 bytes (UBSan), and an empty
// std::vector's data() may be null: empty copies are skipped.
// A channels-last tensor is refused (this backend has none; a raw copy would break the host's
// NCHW order, tensor.hpp).
void CpuBackend::upload(const float* src, const Tensor& dst) {
  check_nchw(dst, "upload", "dst");
  if (dst.bytes() != 0) std::memcpy(dst.data<float>(), src, dst.bytes());
}
void CpuBackend::download(const Tensor& src, float* dst) {
  check_nchw(src, "download", "src");
  if (src.bytes() != 0) std::memcpy(dst, src.data<float>(), src.bytes());
}
void CpuBackend::upload_i32(const std::int32_t* src, const Tensor& dst) {
  if (dst.bytes() != 0) std::memcpy(dst.data<std::int32_t>(), src, dst.bytes());
}

void CpuBackend::fill_impl(const Tensor& t, float value) {
  if (t.dtype() == DType::I32) {
    std::fill_n(t.data<std::int32_t>(), t.numel(), static_cast<std::int32_t>(value));
    return;
  }
  std::fill_n(t.data<float>(), t.numel(), value);
}

void CpuBackend::copy_impl(const Tensor& src, const Tensor& dst) {
  std::memmove(dst.data<float>(), src.data<float>(), src.bytes());
}

void CpuBackend::axpy_impl(float alpha, const Tensor& x, const Tensor& y) {
  const float* xp = x.data<float>();
  float* yp = y.data<float>();
  const std::int64_t n = x.numel();
#pragma omp parallel for schedule(static) num_threads(threads_) if (n > 65536)
  for (std::int64_t i = 0; i < n; ++i) yp[i] += alpha * xp[i];
}

void CpuBackend::add_impl(const Tensor& a, const Tensor& b, const Tensor& y) {
  const float* ap = a.data<float>();
  const float* bp = b.data<float>();
  float* yp = y.data<float>();
  const std::int64_t n = a.numel();
#pragma omp parallel for schedule(static) num_threads(threads_) if (n > 65536)
  for (std::int64_t i = 0; i < n; ++i) yp[i] = ap[i] + bp[i];
}

// Runs span(begin, count) over [0, n): one contiguous span per thread, or one span when n is too
// small for threads to pay.
template <class Span>
static void for_each_span(std::int64_t n, int threads, Span&& span) {
  const int T = n > 65536 ? threads : 1;
#pragma omp parallel for schedule(static) num_threads(T) if (T > 1)
  for (int t = 0; t < T; ++t) {
    const std::int64_t begin = n * t / T, end = n * (t + 1) / T;
    span(begin, end - begin);
  }
}

void CpuBackend::leaky_relu_forward_impl(std::int64_t n, const float* x, float* y, float slope) {
  for_each_span(n, threads_, [&](std::int64_t i, std::int64_t k) { leaky_relu_span(k, x + i, y + i, slope); });
}

void CpuBackend::leaky_relu_backward_impl(std::int64_t n, const float* x, const float* dy,
                                          float* dx, float slope) {
  for_each_span(n, threads_,
                [&](std::int64_t i, std::int64_t k) { leaky_relu_grad_span(k, x + i, dy + i, dx + i, slope); });
}

void CpuBackend::bias_leaky_relu_forward_impl(std::int64_t planes, int C, std::int64_t HW, const float* x,
                                              const float* b, float* y, float slope) {
#pragma omp parallel for schedule(static) num_threads(threads_) if (planes * HW > 65536)
  for (std::int64_t p = 0; p < planes; ++p) bias_leaky_relu_span(HW, x + p * HW, b[p % C], y + p * HW, slope);
}

void CpuBackend::leaky_relu_backward_add_impl(std::int64_t n, const float* x, const float* dy,
                                              const float* other, float* dx, float slope) {
  for_each_span(n, threads_, [&](std::int64_t i, std::int64_t k) {
    leaky_relu_grad_add_span(k, x + i, dy + i, other + i, dx + i, slope);
  });
}

void CpuBackend::global_avg_pool_forward_impl(int N, int C, int HW, const float* x, float* y) {
  const float inv = 1.0f / static_cast<float>(HW);
#pragma omp parallel for schedule(static) num_threads(threads_)
  for (int nc = 0; nc < N * C; ++nc) {
    const float* p = x + static_cast<std::int64_t>(nc) * HW;
    float s = 0.0f;
    for (int i = 0; i < HW; ++i) s += p[i];
    y[nc] = s * inv;
  }
}

void CpuBackend::global_avg_pool_backward_impl(int N, int C, int HW, const float* dy, float* dx) {
  const float inv = 1.0f / static_cast<float>(HW);
#pragma omp parallel for schedule(static) num_threads(threads_)
  for (int nc = 0; nc < N * C; ++nc) {
    float* p = dx + static_cast<std::int64_t>(nc) * HW;
    const float g = dy[nc] * inv;
    for (int i = 0; i < HW; ++i) p[i] = g;
  }
}

void CpuBackend::linear_forward_impl(int N, int I, int O, const float* x, const float* w,
                                     const float* b, float* y) {
  // y[N,O] = x[N,I] w[O,I]^T, then + b per row
  for (int n = 0; n < N; ++n) std::copy_n(b, O, y + static_cast<std::int64_t>(n) * O);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, O, I, 1.0f, x, I, w, I, 1.0f, y, O);
}

void CpuBackend::linear_backward_impl(int N, int I, int O, const float* x, const float* w,
                                      const float* dy, float* dx, float* dw, float* db) {
  // dx[N,I] = dy[N,O] w[O,I]
  if (dx) cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, I, O, 1.0f, dy, O, w, I, 0.0f, dx, I);
  // dw[O,I] += dy^T[O,N] x[N,I]
  if (dw) cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, O, I, N, 1.0f, dy, O, x, I, 1.0f, dw, I);
  if (db)
    for (int n = 0; n < N; ++n)
      for (int o = 0; o < O; ++o) db[o] += dy[static_cast<std::int64_t>(n) * O + o];
}

// A row's maximum and log(sum_k exp(row[k] - max)), in double. The losses below are computed
// relative to the maximum and rounded to float once: the shifted terms cannot overflow, and
// logits around 1e4 are as accurate as logits around 0. (Rounding the full logsumexp to float
// first, and subtracting it from the logits, would put an error of ulp(1e4) ~ 1e-3 into every
// softmax and loss.)
struct RowLse {
  double max;
  double log_sum;
};

static RowLse row_logsumexp(const float* row, int K) {
  float m = row[0];
  for (int k = 1; k < K; ++k) m = std::max(m, row[k]);
  double s = 0.0;
  for (int k = 0; k < K; ++k) s += std::exp(static_cast<double>(row[k]) - m);
  return {m, std::log(s)};
}

// softmax(row)[k] from the row's RowLse.
static double softmax_at(const float* row, int k, const RowLse& r) {
  return std::exp((static_cast<double>(row[k]) - r.max) - r.log_sum);
}

void CpuBackend::energy_impl(int N, int K, const float* logits, float* energy, float* dlogits,
                             float grad_scale) {
  for (int n = 0; n < N; ++n) {
    const float* row = logits + static_cast<std::int64_t>(n) * K;
    float* drow = dlogits + static_cast<std::int64_t>(n) * K;
    const RowLse r = row_logsumexp(row, K);
    energy[n] = static_cast<float>(-(r.max + r.log_sum));
    for (int k = 0; k < K; ++k)
      drow[k] = static_cast<float>(-static_cast<double>(grad_scale) * softmax_at(row, k, r));
  }
}

void CpuBackend::cross_entropy_impl(int N, int K, const float* logits, const std::int32_t* labels,
                                    float* loss, float* dlogits, float grad_scale) {
  for (int n = 0; n < N; ++n) {
    const int y = labels[n];
    JEM_CHECK(y >= 0 && y < K, "cross_entropy: label ", y, " of row ", n, " outside [0, ", K, ")");
    const float* row = logits + static_cast<std::int64_t>(n) * K;
    float* drow = dlogits + static_cast<std::int64_t>(n) * K;
    const RowLse r = row_logsumexp(row, K);
    // logsumexp - row[y] = (max - row[y]) + log_sum: a difference of logits plus an O(1) term.
    loss[n] = static_cast<float>((r.max - row[y]) + r.log_sum);
    for (int k = 0; k < K; ++k)
      drow[k] = static_cast<float>(static_cast<double>(grad_scale) *
                                   (softmax_at(row, k, r) - (k == y ? 1.0 : 0.0)));
  }
}

}  // namespace jem::cpu

namespace jem {
std::unique_ptr<Backend> make_cpu_backend(int threads, CpuConvKernels kernels) {
  return std::make_unique<cpu::CpuBackend>(threads, kernels);
}
}  // namespace jem
