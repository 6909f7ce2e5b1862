// The CUDA backend's own kernels (kernels/*.cu), run on the CPU through kernels/emulation/, against
// the CPU backend: every launcher on odd sizes, partial blocks and warps, several chunks and
// blocks, aliasing and bad input. These are the kernels' logic checks that need no GPU; the
// GPU tests (tests/cuda/) repeat them on the device, where nvcc's arithmetic differs in the last
// bits.
//
// Tolerances. The emulation compiles the kernels with the host compiler and runs glibc's expf /
// logf / sinf, so where a kernel performs the same float operations in the same order as the CPU
// backend the results are bit-identical, and the tests demand that. Where the order differs by
// design (warp butterflies against sequential sums, float against the CPU's double), the bound
// is the one the GPU tests use, derived in their comments (tests/cuda/cuda_test_support.hpp),
// restated here for each.
//
// First, self-tests of the emulation: that it runs every thread of a 3-D grid once, that its
// barriers and shuffles work, and that it reports the faults it promises to report.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "jem/backend.hpp"
#include "jem/elementwise_math.hpp"
#include "jem/error.hpp"
#include "jem/philox.hpp"
#include "kernel_util.cuh"
#include "kernels.hpp"
#include "test_support.hpp"

namespace jem::test {
namespace {

using Vec = std::vector<float>;
using IVec = std::vector<std::int32_t>;
constexpr double kU = 0x1p-24;  // unit roundoff of float32
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
const cudaStream_t kStream = nullptr;

// ---- self-tests of the emulation
// -----------------------------------------------------------------

// Each thread of the grid counts itself at its global (x, y, z) position.
__global__ void count_threads_kernel(int* counts) {
  const unsigned x = blockIdx.x * blockDim.x + threadIdx.x;
  const unsigned y = blockIdx.y * blockDim.y + threadIdx.y;
  const unsigned z = blockIdx.z * blockDim.z + threadIdx.z;
  const unsigned X = gridDim.x * blockDim.x, Y = gridDim.y * blockDim.y;
  std::atomic_ref<int>(counts[(z * Y + y) * X + x]).fetch_add(1);
}

TEST(Emulation, RunsEveryThreadOfA3DGridOnce) {
  const dim3 grid(3, 2, 2), block(5, 3, 2);
  std::vector<int> counts(3 * 5 * 2 * 3 * 2 * 2, 0);
  JEM_LAUNCH(count_threads_kernel, grid, block, kStream)(counts.data());
  JEM_CUDA_CHECK_LAUNCH();
  for (std::size_t i = 0; i < counts.size(); ++i) ASSERT_EQ(counts[i], 1) << "thread " << i;
}

// Thread t writes t + 1 to shared memory; after the barrier it reads its mirror's value, which
// only a working barrier guarantees to be there.
__global__ void mirror_kernel(int* out) {
  __shared__ int shared[96];
  shared[threadIdx.x] = int(blockIdx.x * 1000 + threadIdx.x) + 1;  // differs per block
  __syncthreads();
  out[blockIdx.x * blockDim.x + threadIdx.x] = shared[blockDim.x - 1 - threadIdx.x];
}

TEST(Emulation, SyncthreadsOrdersSharedMemoryWithinEachBlock) {
  std::vector<int> out(2 * 96, 0);
  JEM_LAUNCH(mirror_kernel, 2, 96, kStream)(out.data());
  JEM_CUDA_CHECK_LAUNCH();
  for (int b = 0; b < 2; ++b)
    for (int t = 0; t < 96; ++t)
      ASSERT_EQ(out[std::size_t(b * 96 + t)], b * 1000 + 96 - t) << b << " " << t;
}

// A warp sum of the lane numbers, every lane of every warp.
__global__ void warp_sum_kernel(float* out) {
  const float s = kernels::warp_sum(float(threadIdx.x % kernels::kWarp));
  out[threadIdx.x] = s;
}

TEST(Emulation, ShufflesReduceEachWarp) {
  std::vector<float> out(64, -1.0f);
  JEM_LAUNCH(warp_sum_kernel, 1, 64, kStream)(out.data());
  JEM_CUDA_CHECK_LAUNCH();
  for (float v : out) ASSERT_EQ(v, 496.0f);  // 0 + 1 + ... + 31
}

// Thread t writes its value and, with no barrier, reads its lower neighbour's: a race on a GPU.
// The emulation runs a block's threads in ascending order in even blocks and descending in odd
// ones, so the read comes before the write in one of the two: the missing barrier shows.
__global__ void neighbour_without_barrier_kernel(int* out) {
  __shared__ int shared[64];
  shared[threadIdx.x] = int(blockIdx.x * 1000 + threadIdx.x) + 1;
  out[blockIdx.x * blockDim.x + threadIdx.x] = threadIdx.x == 0 ? 0 : shared[threadIdx.x - 1];
}

TEST(Emulation, AMissingBarrierShowsInOneOfTwoBlocks) {
  // The first launch runs on fibers; the kernel has no barrier, so the second runs sequentially.
  for (const char* launch : {"first", "second"}) {
    std::vector<int> out(2 * 64, -1);
    JEM_LAUNCH(neighbour_without_barrier_kernel, 2, 64, kStream)(out.data());
    JEM_CUDA_CHECK_LAUNCH();
    int stale[2] = {0, 0};  // reads that did not see the neighbour's write, per block
    for (int b = 0; b < 2; ++b)
      for (int t = 1; t < 64; ++t) stale[b] += out[std::size_t(b * 64 + t)] != b * 1000 + t;
    EXPECT_EQ(stale[0], 0) << launch << " launch";   // ascending: each neighbour had written
    EXPECT_EQ(stale[1], 63) << launch << " launch";  // descending: none had
  }
}

// Lanes 0..15 wait at a shuffle, lanes 16..31 at __syncthreads: neither can complete (a GPU
// hangs). The emulation reports who waits where instead of hanging.
__global__ void divergent_barriers_kernel(float* out) {
  if (threadIdx.x < 16) out[threadIdx.x] = kernels::warp_sum(1.0f);
  else __syncthreads();
}

TEST(Emulation, ReportsThreadsThatWaitForEachOtherForever) {
  std::vector<float> out(32, 0.0f);
  JEM_LAUNCH(divergent_barriers_kernel, 1, 32, kStream)(out.data());
  const std::string error = error_of([] { JEM_CUDA_CHECK_LAUNCH(); });
  EXPECT_NE(error.find("divergent_barriers_kernel, block (0, 0, 0): threads wait for each other "
                       "forever (a GPU would hang): at __syncthreads: 16, 17,"),
            std::string::npos)
      << error;
  EXPECT_NE(error.find("at a shuffle: 0, 1, 2,"), std::string::npos) << error;
  // The runner is usable afterwards: the abandoned threads' stacks are reused.
  std::vector<float> sums(64, -1.0f);
  JEM_LAUNCH(warp_sum_kernel, 1, 64, kStream)(sums.data());
  JEM_CUDA_CHECK_LAUNCH();
  for (float v : sums) ASSERT_EQ(v, 496.0f);
}

// A block of 40 threads has a partial second warp: lanes 8..31 do not exist, and a full-mask
// butterfly there reads them (undefined on a GPU; the kernels only launch whole warps).
TEST(Emulation, ReportsAShuffleBeyondAPartialWarp) {
  std::vector<float> out(40, -1.0f);
  JEM_LAUNCH(warp_sum_kernel, 1, 40, kStream)(out.data());
  const std::string error = error_of([] { JEM_CUDA_CHECK_LAUNCH(); });
  EXPECT_NE(error.find("outside the warp or the mask"), std::string::npos) << error;
}

// Lanes 16..31 return before the butterfly: lanes 0..15 then read exited lanes.
__global__ void shuffle_after_exit_kernel(float* out) {
  if (threadIdx.x >= 16) return;
  out[threadIdx.x] = kernels::warp_sum(1.0f);
}

TEST(Emulation, ReportsAShuffleWithAnExitedLane) {
  std::vector<float> out(32, 0.0f);
  JEM_LAUNCH(shuffle_after_exit_kernel, 1, 32, kStream)(out.data());
  const std::string error = error_of([] { JEM_CUDA_CHECK_LAUNCH(); });
  EXPECT_NE(error.find("shuffle_after_exit_kernel"), std::string::npos) << error;
  EXPECT_NE(error.find("which has exited"), std::string::npos) << error;
  // The emulation clears the error once read (on a GPU a launch failure is sticky).
  EXPECT_NO_THROW(JEM_CUDA_CHECK_LAUNCH());
}

// All 32 lanes shuffle with a mask of lanes 0..15 (and lanes 16..31 omit themselves).
__global__ void shuffle_partial_mask_kernel(float* out) {
  out[threadIdx.x] = __shfl_xor_sync(0x0000FFFFu, 1.0f, 1);
}

TEST(Emulation, ReportsAPartialMaskShuffle) {
  std::vector<float> out(32, 0.0f);
  JEM_LAUNCH(shuffle_partial_mask_kernel, 1, 32, kStream)(out.data());
  const std::string error = error_of([] { JEM_CUDA_CHECK_LAUNCH(); });
  EXPECT_NE(error.find("partial-mask shuffles are not emulated"), std::string::npos) << error;
}

// Even lanes reduce with warp_sum, odd lanes with warp_max: the lanes meet at different
// shuffles, which a GPU would pair silently.
__global__ void mismatched_shuffles_kernel(float* out) {
  const float v = float(threadIdx.x);
  out[threadIdx.x] = threadIdx.x % 2 ? kernels::warp_max(v) : kernels::warp_sum(v);
}

TEST(Emulation, ReportsLanesAtDifferentShuffles) {
  std::vector<float> out(32, 0.0f);
  JEM_LAUNCH(mismatched_shuffles_kernel, 1, 32, kStream)(out.data());
  const std::string error = error_of([] { JEM_CUDA_CHECK_LAUNCH(); });
  EXPECT_NE(error.find("at a different shuffle"), std::string::npos) << error;
}

// Thread 40 of block 1 throws; the others run to the end.
__global__ void throwing_kernel(int* out) {
  if (blockIdx.x == 1 && threadIdx.x == 40) throw std::runtime_error("thrown in a kernel");
  out[blockIdx.x * blockDim.x + threadIdx.x] = 1;
}

TEST(Emulation, ReportsAnExceptionWithItsBlockAndThread) {
  std::vector<int> out(2 * 64, 0);
  JEM_LAUNCH(throwing_kernel, 2, 64, kStream)(out.data());
  const std::string error = error_of([] { JEM_CUDA_CHECK_LAUNCH(); });
  EXPECT_NE(error.find("cudaErrorLaunchFailure"), std::string::npos) << error;
  EXPECT_NE(
      error.find("throwing_kernel, block (1, 0, 0), thread 40: exception: thrown in a kernel"),
      std::string::npos)
      << error;
  EXPECT_EQ(std::count(out.begin(), out.end(), 1), 2 * 64 - 1);
}

TEST(Emulation, ReportsAnInvalidConfiguration) {
  std::vector<int> counts(2048, 0);
  JEM_LAUNCH(count_threads_kernel, 1, 2048, kStream)(counts.data());  // > 1024 threads per block
  const std::string error = error_of([] { JEM_CUDA_CHECK_LAUNCH(); });
  EXPECT_NE(error.find("cudaErrorInvalidConfiguration"), std::string::npos) << error;
  EXPECT_EQ(*std::max_element(counts.begin(), counts.end()), 0) << "no thread may run";
}

// ---- helpers
// ---------------------------------------------------------------------------------------

class EmulatedKernels : public ::testing::Test {
 protected:
  void SetUp() override { cpu = make_cpu_backend(1); }
  Tensor tensor(const Vec& v, const Shape& s) { return cpu->from_vector(v, s); }
  Tensor i32(const IVec& v) {
    const Tensor t = cpu->empty(Shape{std::int64_t(v.size())}, DType::I32);
    cpu->upload_i32(v.data(), t);
    return t;
  }
  Vec vec(const Tensor& t) { return cpu->to_vector(t); }
  std::unique_ptr<Backend> cpu;
};

void expect_bit_equal(const Vec& got, const Vec& want, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  EXPECT_EQ(std::memcmp(got.data(), want.data(), got.size() * sizeof(float)), 0)
      << what << ": not bit-identical (max |diff| " << max_abs_diff(got, want) << ")";
}

// Per element: |got - want| <= tol * max(|want|, floor); NaN fails.
void expect_within(const Vec& got, const Vec& want, double tol, double floor,
                   const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (std::size_t i = 0; i < got.size(); ++i)
    ASSERT_LE(std::fabs(double(got[i]) - want[i]),
              tol * std::max(std::fabs(double(want[i])), floor))
        << what << " element " << i << ": " << got[i] << " vs " << want[i];
}

// ---- elementwise.cu (through Thrust's host system here)
// -------------------------------------------

TEST_F(EmulatedKernels, FillsCopiesAndMaps) {
  constexpr std::int64_t n = 1001;
  Vec p(n, kNaN);
  kernels::fill_f32(p.data(), n, 0.0f, kStream);  // the memset path
  for (float v : p) ASSERT_EQ(std::bit_cast<std::uint32_t>(v), 0u);
  kernels::fill_f32(p.data(), n, -2.5f, kStream);
  for (float v : p) ASSERT_EQ(v, -2.5f);
  IVec q(n, 7);
  kernels::fill_i32(q.data(), n, 0, kStream);
  for (int v : q) ASSERT_EQ(v, 0);
  kernels::fill_i32(q.data(), n - 1, -3, kStream);
  EXPECT_EQ(q[n - 2], -3);
  EXPECT_EQ(q[n - 1], 0) << "fill_i32 wrote past n";

  // copy_f32 is a memmove: disjoint ranges, and overlapping both ways.
  const Vec src = random_vector(n, 1);
  Vec dst(n, kNaN);
  kernels::copy_f32(src.data(), dst.data(), n, kStream);
  expect_bit_equal(dst, src, "copy");
  Vec over = src;
  kernels::copy_f32(over.data(), over.data() + 10, n - 10, kStream);  // forward overlap
  Vec want = src;
  std::memmove(want.data() + 10, want.data(), (n - 10) * sizeof(float));
  expect_bit_equal(over, want, "overlapping copy forward");
  over = src;
  kernels::copy_f32(over.data() + 10, over.data(), n - 10, kStream);  // backward overlap
  want = src;
  std::memmove(want.data(), want.data() + 10, (n - 10) * sizeof(float));
  expect_bit_equal(over, want, "overlapping copy backward");

  // add, scale and LeakyReLU: the same float operation per element as the CPU (bit-identical).
  const Vec a = random_vector(n, 2), b = random_vector(n, 3);
  const Shape s{n};
  Vec y(n, kNaN);
  kernels::add(a.data(), b.data(), y.data(), n, kStream);
  const Tensor cy = cpu->empty(s);
  cpu->add(tensor(a, s), tensor(b, s), cy);
  expect_bit_equal(y, vec(cy), "add");
  Vec x = a;
  kernels::scale(x.data(), n, -0.75f, kStream);
  const Tensor cx = tensor(a, s);
  cpu->scale(cx, -0.75f);
  expect_bit_equal(x, vec(cx), "scale");
  Vec xl = a;
  for (std::size_t i = 0; i < xl.size(); i += 9) xl[i] = 0.0f;  // x == 0 takes the slope side
  kernels::leaky_relu_forward(xl.data(), y.data(), n, 0.2f, kStream);
  cpu->leaky_relu_forward(tensor(xl, s), cy, 0.2f);
  expect_bit_equal(y, vec(cy), "leaky_relu_forward");
  Vec dx = b;  // dx == dy, as the backend allows
  kernels::leaky_relu_backward(xl.data(), dx.data(), dx.data(), n, 0.2f, kStream);
  const Tensor cd = tensor(b, s);
  cpu->leaky_relu_backward(tensor(xl, s), cd, cd, 0.2f);
  expect_bit_equal(dx, vec(cd), "leaky_relu_backward in place");
}

TEST_F(EmulatedKernels, AxpyWithinOneRounding) {
  constexpr std::int64_t n = 777;
  const Vec x = random_vector(n, 4), y0 = random_vector(n, 5);
  const float alpha = -0.37f;
  Vec y = y0;
  kernels::axpy(alpha, x.data(), y.data(), n, kStream);
  const Tensor cy = tensor(y0, Shape{n});
  cpu->axpy(alpha, tensor(x, Shape{n}), cy);
  const Vec want = vec(cy);
  // The kernel computes round(y + round(alpha x)) unless the compiler contracts it to one fused
  // multiply-add; the CPU's BLAS may do either: at most 3 u (|y| + |alpha x|) apart.
  for (std::int64_t i = 0; i < n; ++i)
    ASSERT_LE(std::fabs(double(y[i]) - want[i]),
              3 * kU * (std::fabs(y0[i]) + std::fabs(alpha * x[i])))
        << "element " << i;
}

// ---- activation.cu, bias_residual.cu ------------------------------------------------------------

TEST_F(EmulatedKernels, FusedActivationPassesAreTheCpuOps) {
  constexpr float slope = 0.2f;
  for (const Shape& s : {Shape{3, 5, 7, 7}, Shape{2, 3, 1, 1}, Shape{1, 7, 33, 17}}) {
    const int C = int(s[1]);
    const std::int64_t HW = s[2] * s[3];
    const Vec x = random_vector(s.numel(), 6), b = random_vector(std::size_t(C), 7);
    Vec y(s.numel(), kNaN);
    kernels::bias_leaky_relu_forward(s[0] * C, C, HW, x.data(), b.data(), y.data(), slope, kStream);
    const Tensor cy = cpu->empty(s);
    cpu->bias_leaky_relu_forward(tensor(x, s), tensor(b, Shape{C}), cy, slope);
    expect_bit_equal(y, vec(cy), "bias_leaky_relu_forward " + s.str());

    // dx = lrelu'(x) dy + other, in place over `other` (dx == other is allowed). Either side may
    // contract the product and the sum into one fused multiply-add: 2 u of the terms apart.
    const Vec dy = random_vector(s.numel(), 8), other = random_vector(s.numel(), 9);
    Vec dx = other;
    kernels::leaky_relu_backward_add(s.numel(), x.data(), dy.data(), dx.data(), dx.data(), slope,
                                     kStream);
    const Tensor cd = tensor(other, s);
    cpu->leaky_relu_backward_add(tensor(x, s), tensor(dy, s), cd, cd, slope);
    const Vec want = vec(cd);
    for (std::size_t i = 0; i < dx.size(); ++i)
      ASSERT_LE(std::fabs(double(dx[i]) - want[i]),
                2 * kU * (std::fabs(dy[i]) + std::fabs(other[i])))
          << s.str() << " element " << i;
  }
}

TEST_F(EmulatedKernels, BiasResidualAddIsConvPlusBiasThenResidual) {
  const int N = 3, C = 5;
  const std::int64_t HW = 37;
  const std::size_t n = std::size_t(N * C * HW);
  const Vec y0 = random_vector(n, 10), z = random_vector(n, 11), b = random_vector(C, 12);
  for (const bool with_bias : {true, false}) {
    Vec y = y0;
    kernels::bias_residual_add(N, C, HW, with_bias ? b.data() : nullptr, z.data(), y.data(),
                               kStream);
    Vec want(n);  // naive loops, in the kernel's documented order: (y + b) + z
    for (int i = 0; i < N; ++i)
      for (int c = 0; c < C; ++c)
        for (std::int64_t e = 0; e < HW; ++e) {
          const std::size_t k = std::size_t((i * C + c) * HW + e);
          want[k] = (with_bias ? y0[k] + b[std::size_t(c)] : y0[k]) + z[k];
        }
    expect_bit_equal(y, want, with_bias ? "with bias" : "without bias");
  }
}

// The three passes move a float4 per thread where the plane size (or n) is a multiple of 4 and
// every address 16-byte aligned, else one float: both variants give the scalar results, and each
// runs exactly where it should (a view one float into an aligned buffer takes the scalar kernel).
TEST_F(EmulatedKernels, FusedPassesTakeTheirFloat4KernelExactlyWhereAligned) {
  constexpr float slope = 0.2f;
  // One block per grid: the float4 loops take several turns (2x6x256: 768 float4s, 3 turns).
  const emu::GridBlockCap one_block(1);
  struct Case {
    int N, C;
    std::int64_t HW;
    std::size_t offset;  // floats into the buffers: 1 breaks the alignment
    bool vec4;  // the bias passes' float4 kernel: HW a multiple of 4, aligned
  };
  for (const Case& k : {Case{2, 6, 64, 0, true}, Case{3, 5, 12, 0, true}, Case{1, 3, 4, 0, true},
                        Case{2, 6, 256, 0, true}, Case{2, 6, 64, 1, false},
                        Case{3, 5, 49, 0, false}, Case{2, 3, 6, 0, false}}) {
    const std::int64_t n = std::int64_t(k.N) * k.C * k.HW;
    const std::string what = std::to_string(k.N) + "x" + std::to_string(k.C) + "x" +
                             std::to_string(k.HW) + " offset " + std::to_string(k.offset);
    const Vec xb = random_vector(std::size_t(n) + k.offset, 60),
              db = random_vector(std::size_t(n) + k.offset, 61),
              ob = random_vector(std::size_t(n) + k.offset, 62), b = random_vector(k.C, 63);
    for (const Vec* v : {&xb, &db, &ob})
      ASSERT_EQ(reinterpret_cast<std::uintptr_t>(v->data()) % 16, 0u) << "the test's buffers";
    const float *x = xb.data() + k.offset, *dy = db.data() + k.offset, *other = ob.data() + k.offset;
    // (leaky_relu_backward_add has no channels: n a multiple of 4 is enough, as for 2x3x6.)
    auto ran = [&](const std::string& base, bool vec4) {
      EXPECT_EQ(emu::last_launched_kernel(), base + (vec4 ? "_vec4_kernel" : "_kernel")) << what;
    };

    // bias + LeakyReLU, out of place and in place (y == x).
    Vec yb(std::size_t(n) + k.offset, kNaN);
    kernels::bias_leaky_relu_forward(std::int64_t(k.N) * k.C, k.C, k.HW, x, b.data(),
                                     yb.data() + k.offset, slope, kStream);
    ran("bias_leaky_relu", k.vec4);
    Vec want(static_cast<std::size_t>(n)), in_place(xb);
    for (std::int64_t i = 0; i < n; ++i)
      want[std::size_t(i)] = leaky_relu(x[i] + b[std::size_t((i / k.HW) % k.C)], slope);
    expect_bit_equal(Vec(yb.begin() + std::ptrdiff_t(k.offset), yb.end()), want,
                     "bias_leaky_relu " + what);
    kernels::bias_leaky_relu_forward(std::int64_t(k.N) * k.C, k.C, k.HW, in_place.data() + k.offset,
                                     b.data(), in_place.data() + k.offset, slope, kStream);
    expect_bit_equal(Vec(in_place.begin() + std::ptrdiff_t(k.offset), in_place.end()), want,
                     "bias_leaky_relu in place " + what);

    // LeakyReLU backward + other, into `other` (dx == other), against the shared scalar math.
    Vec dxb(ob);
    kernels::leaky_relu_backward_add(n, x, dy, dxb.data() + k.offset, dxb.data() + k.offset, slope,
                                     kStream);
    ran("leaky_relu_backward_add", n % 4 == 0 && k.offset == 0);
    for (std::int64_t i = 0; i < n; ++i)
      want[std::size_t(i)] = leaky_relu_grad(x[i], dy[i], slope) + other[i];
    expect_bit_equal(Vec(dxb.begin() + std::ptrdiff_t(k.offset), dxb.end()), want,
                     "leaky_relu_backward_add " + what);

    // y += b + z, with and without a bias.
    for (const bool with_bias : {true, false}) {
      Vec rb(db);
      kernels::bias_residual_add(k.N, k.C, k.HW, with_bias ? b.data() : nullptr, other,
                                 rb.data() + k.offset, kStream);
      ran("bias_residual_add", k.vec4);
      for (std::int64_t i = 0; i < n; ++i)
        want[std::size_t(i)] =
            (with_bias ? dy[i] + b[std::size_t((i / k.HW) % k.C)] : dy[i]) + other[i];
      expect_bit_equal(Vec(rb.begin() + std::ptrdiff_t(k.offset), rb.end()), want,
                       std::string("bias_residual_add ") + (with_bias ? "with" : "without") +
                           " bias " + what);
    }
  }
}

// Each pointer a launcher reads or writes as float4 is in its alignment check: one of them a
// float off (the others aligned) takes the scalar kernel, with the same results.
TEST_F(EmulatedKernels, OneMisalignedPointerTakesTheScalarKernel) {
  constexpr float slope = 0.2f;
  const int N = 2, C = 3;
  const std::int64_t HW = 16, n = N * C * HW;
  const Vec x0 = random_vector(std::size_t(n), 70), d0 = random_vector(std::size_t(n), 71),
            o0 = random_vector(std::size_t(n), 72), b = random_vector(C, 73);
  // A copy of v at `off` floats into an aligned buffer (kept alive in `keep`).
  std::vector<Vec> keep;
  auto at = [&](const Vec& v, std::size_t off) -> float* {
    Vec& buf = keep.emplace_back(v.size() + 1, kNaN);
    EXPECT_EQ(reinterpret_cast<std::uintptr_t>(buf.data()) % 16, 0u);
    std::copy(v.begin(), v.end(), buf.begin() + std::ptrdiff_t(off));
    return buf.data() + off;
  };
  auto values = [&](const float* p) { return Vec(p, p + n); };
  auto expect_scalar = [&](const std::string& kernel, const std::string& what) {
    EXPECT_EQ(emu::last_launched_kernel(), kernel) << what;
  };
  Vec want(static_cast<std::size_t>(n));

  for (int moved = 0; moved < 2; ++moved) {  // x, then y
    const float* x = at(x0, moved == 0);
    float* y = at(Vec(std::size_t(n), kNaN), moved == 1);
    kernels::bias_leaky_relu_forward(N * C, C, HW, x, b.data(), y, slope, kStream);
    expect_scalar("bias_leaky_relu_kernel", moved == 0 ? "x off" : "y off");
    for (std::int64_t i = 0; i < n; ++i)
      want[std::size_t(i)] = leaky_relu(x0[std::size_t(i)] + b[std::size_t((i / HW) % C)], slope);
    expect_bit_equal(values(y), want, moved == 0 ? "bias_leaky_relu, x off" : "y off");
  }
  for (int moved = 0; moved < 4; ++moved) {  // x, dy, other, dx
    const float* x = at(x0, moved == 0);
    const float* dy = at(d0, moved == 1);
    const float* other = at(o0, moved == 2);
    float* dx = at(Vec(std::size_t(n), kNaN), moved == 3);
    kernels::leaky_relu_backward_add(n, x, dy, other, dx, slope, kStream);
    const std::string what = "leaky_relu_backward_add, pointer " + std::to_string(moved) + " off";
    expect_scalar("leaky_relu_backward_add_kernel", what);
    for (std::size_t i = 0; i < want.size(); ++i)
      want[i] = leaky_relu_grad(x0[i], d0[i], slope) + o0[i];
    expect_bit_equal(values(dx), want, what);
  }
  for (int moved = 0; moved < 2; ++moved) {  // z, then y
    const float* z = at(o0, moved == 0);
    float* y = at(d0, moved == 1);
    kernels::bias_residual_add(N, C, HW, b.data(), z, y, kStream);
    const std::string what = moved == 0 ? "bias_residual_add, z off" : "bias_residual_add, y off";
    expect_scalar("bias_residual_add_kernel", what);
    for (std::int64_t i = 0; i < n; ++i)
      want[std::size_t(i)] =
          (d0[std::size_t(i)] + b[std::size_t((i / HW) % C)]) + o0[std::size_t(i)];
    expect_bit_equal(values(y), want, what);
  }
}

// Channels-last tensors reach the bias passes as planes of one element (HW = 1, channel = i % C):
// the float4 kernel for them ("_cl4") takes C % 4 == 0 with aligned pointers, the scalar kernel
// the rest, and both are the naive loop bit for bit.
TEST_F(EmulatedKernels, ChannelsLastBiasPassesTakeTheirFloat4KernelExactlyWhereAligned) {
  constexpr float slope = 0.2f;
  const emu::GridBlockCap one_block(1);  // several turns of each loop
  struct Case {
    int pixels, C;
    std::size_t offset;
    bool vec4;
  };
  for (const Case& k : {Case{50, 8, 0, true}, Case{7, 4, 0, true}, Case{9, 12, 0, true},
                        Case{50, 8, 1, false}, Case{11, 6, 0, false}, Case{5, 3, 0, false}}) {
    const std::int64_t n = std::int64_t(k.pixels) * k.C;
    const std::string what = std::to_string(k.pixels) + " pixels x " + std::to_string(k.C) +
                             " channels, offset " + std::to_string(k.offset);
    const Vec xb = random_vector(std::size_t(n) + k.offset, 64),
              zb = random_vector(std::size_t(n) + k.offset, 65), b = random_vector(k.C, 66);
    const float *x = xb.data() + k.offset, *z = zb.data() + k.offset;
    const std::string kernel_suffix = k.vec4 ? "_cl4_kernel" : "_kernel";
    Vec yb(std::size_t(n) + k.offset, kNaN), want(static_cast<std::size_t>(n));
    kernels::bias_leaky_relu_forward(n, k.C, 1, x, b.data(), yb.data() + k.offset, slope, kStream);
    EXPECT_EQ(emu::last_launched_kernel(), "bias_leaky_relu" + kernel_suffix) << what;
    for (std::int64_t i = 0; i < n; ++i)
      want[std::size_t(i)] = leaky_relu(x[i] + b[std::size_t(i % k.C)], slope);
    expect_bit_equal(Vec(yb.begin() + std::ptrdiff_t(k.offset), yb.end()), want,
                     "bias_leaky_relu NHWC " + what);
    for (const bool with_bias : {true, false}) {
      Vec rb(xb);
      kernels::bias_residual_add(k.pixels, k.C, 1, with_bias ? b.data() : nullptr, z,
                                 rb.data() + k.offset, kStream);
      EXPECT_EQ(emu::last_launched_kernel(), "bias_residual_add" + kernel_suffix) << what;
      for (std::int64_t i = 0; i < n; ++i)
        want[std::size_t(i)] = (with_bias ? x[i] + b[std::size_t(i % k.C)] : x[i]) + z[i];
      expect_bit_equal(Vec(rb.begin() + std::ptrdiff_t(k.offset), rb.end()), want,
                       std::string("bias_residual_add NHWC ") + (with_bias ? "with" : "without") +
                           " bias " + what);
    }
  }
}

// The epilogue with the activation (bias_residual_add_leaky_relu: conv2 and the stem): y = (y + b)
// + z and act = lrelu(y) in one pass, every combination of b and z (a missing one is not added:
// a -0 stays -0), in each variant: NCHW float4 planes, channels-last float4 (HW = 1, C % 4 == 0)
// and the scalar kernel, which a misaligned act alone must select. Naive loops, bit for bit.
TEST_F(EmulatedKernels, EpilogueWithActivationIsTheNaiveLoopInEveryVariant) {
  constexpr float slope = 0.2f;
  const emu::GridBlockCap one_block(1);  // several turns of each loop
  struct Case {
    int N, C;
    std::int64_t HW;
    std::size_t act_offset;  // floats: 1 misaligns act only
    const char* kernel;
  };
  for (const Case& k : {Case{2, 6, 64, 0, "bias_residual_add_vec4_kernel"},
                        Case{96, 8, 1, 0, "bias_residual_add_cl4_kernel"},
                        Case{2, 6, 64, 1, "bias_residual_add_kernel"},
                        Case{96, 8, 1, 1, "bias_residual_add_kernel"},
                        Case{3, 5, 7, 0, "bias_residual_add_kernel"}}) {
    const std::int64_t n = std::int64_t(k.N) * k.C * k.HW;
    Vec y0 = random_vector(std::size_t(n), 80);
    for (std::size_t i = 0; i < y0.size(); i += 7) y0[i] = -0.0f;  // signed zeros kept without terms
    const Vec z = random_vector(std::size_t(n), 81), b = random_vector(std::size_t(k.C), 82);
    for (const bool with_b : {true, false})
      for (const bool with_z : {true, false}) {
        const std::string what = std::string(k.kernel) + " " + std::to_string(k.N) + "x" +
                                 std::to_string(k.C) + "x" + std::to_string(k.HW) +
                                 (with_b ? ", b" : "") + (with_z ? ", z" : "") + ", act offset " +
                                 std::to_string(k.act_offset);
        Vec y = y0, actb(std::size_t(n) + k.act_offset, kNaN);
        float* act = actb.data() + k.act_offset;
        kernels::bias_residual_add_leaky_relu(k.N, k.C, k.HW, with_b ? b.data() : nullptr,
                                              with_z ? z.data() : nullptr, y.data(), act, slope, kStream);
        EXPECT_EQ(emu::last_launched_kernel(), k.kernel) << what;
        Vec want_y(y0.size()), want_act(y0.size());
        for (std::int64_t i = 0; i < n; ++i) {
          float v = y0[std::size_t(i)];
          if (with_b) v += b[std::size_t((i / k.HW) % k.C)];
          if (with_z) v += z[std::size_t(i)];
          want_y[std::size_t(i)] = v;
          want_act[std::size_t(i)] = leaky_relu(v, slope);
        }
        expect_bit_equal(y, want_y, what + " (y)");
        expect_bit_equal(Vec(act, act + n), want_act, what + " (act)");
      }
  }
}

// LeakyReLU and its gradient (the passes after the legacy fused call and conv2's data gradient):
// a float4 per thread where n is a multiple of 4 and every pointer aligned, else one float; both
// the CPU's elementwise math bit for bit, in place too (y == x, dx == dy).
TEST_F(EmulatedKernels, LeakyReluPassesTakeTheirFloat4KernelExactlyWhereAligned) {
  constexpr float slope = 0.2f;
  const emu::GridBlockCap one_block(1);
  struct Case {
    std::int64_t n;
    int moved;  // which pointer is one float off: -1 none, 0 x, 1 dy, 2 the output
  };
  for (const Case& k : {Case{2048, -1}, Case{12, -1}, Case{2048, 0}, Case{2048, 1}, Case{2048, 2},
                        Case{1001, -1}}) {
    const bool vec4 = k.n % 4 == 0 && k.moved < 0;
    const bool forward_vec4 = k.n % 4 == 0 && k.moved != 0 && k.moved != 2;  // it reads no dy
    const std::string what = "n " + std::to_string(k.n) + ", pointer " + std::to_string(k.moved) + " off";
    Vec xb = random_vector(std::size_t(k.n) + 1, 84), db = random_vector(std::size_t(k.n) + 1, 85);
    for (std::size_t i = 0; i < xb.size(); i += 9) xb[i] = i % 2 ? -0.0f : 0.0f;  // the slope side
    const float* x = xb.data() + (k.moved == 0);
    const float* dy = db.data() + (k.moved == 1);
    Vec ob(std::size_t(k.n) + 1, kNaN);
    float* out = ob.data() + (k.moved == 2);
    Vec want(static_cast<std::size_t>(k.n));

    kernels::leaky_relu_forward(x, out, k.n, slope, kStream);
    EXPECT_EQ(emu::last_launched_kernel(), forward_vec4 ? "leaky_relu_forward_vec4_kernel" : "leaky_relu_forward_kernel")
        << what;
    for (std::int64_t i = 0; i < k.n; ++i) want[std::size_t(i)] = leaky_relu(x[i], slope);
    expect_bit_equal(Vec(out, out + k.n), want, "leaky_relu_forward " + what);

    kernels::leaky_relu_backward(x, dy, out, k.n, slope, kStream);
    EXPECT_EQ(emu::last_launched_kernel(), vec4 ? "leaky_relu_backward_vec4_kernel" : "leaky_relu_backward_kernel")
        << what;
    for (std::int64_t i = 0; i < k.n; ++i) want[std::size_t(i)] = leaky_relu_grad(x[i], dy[i], slope);
    expect_bit_equal(Vec(out, out + k.n), want, "leaky_relu_backward " + what);

    if (k.moved >= 0) continue;  // in place needs one pointer for two roles
    Vec in_place(x, x + k.n);
    kernels::leaky_relu_forward(in_place.data(), in_place.data(), k.n, slope, kStream);
    for (std::int64_t i = 0; i < k.n; ++i) want[std::size_t(i)] = leaky_relu(x[i], slope);
    expect_bit_equal(in_place, want, "leaky_relu_forward in place " + what);
    Vec grad(dy, dy + k.n);
    kernels::leaky_relu_backward(x, grad.data(), grad.data(), k.n, slope, kStream);
    for (std::int64_t i = 0; i < k.n; ++i) want[std::size_t(i)] = leaky_relu_grad(x[i], dy[i], slope);
    expect_bit_equal(grad, want, "leaky_relu_backward in place " + what);
  }
}

// ---- layout.cu
// ------------------------------------------------------------------------------------

// Each matrix of the batch transposed (thin ones as the backend's, a single row or column,
// wider ones), written or added into dst, and NCHW -> NHWC -> NCHW the identity.
TEST_F(EmulatedKernels, BatchedTransposeIsTheNaiveOne) {
  const emu::GridBlockCap two_blocks(2);  // the grid-stride loop takes several turns
  struct Case {
    int N, A, B;
  };
  for (const Case& k : {Case{3, 5, 49}, Case{2, 64, 33}, Case{1, 1, 70}, Case{4, 37, 1},
                        Case{2, 40, 9}}) {
    const std::size_t n = std::size_t(k.N) * k.A * k.B;
    const std::string what = std::to_string(k.N) + " x [" + std::to_string(k.A) + ", " +
                             std::to_string(k.B) + "]";
    const Vec src = random_vector(n, 90), base = random_vector(n, 91);
    Vec want(n), want_add(n);
    for (int m = 0; m < k.N; ++m)
      for (int i = 0; i < k.A; ++i)
        for (int j = 0; j < k.B; ++j) {
          const std::size_t to = (std::size_t(m) * k.B + j) * k.A + i;
          want[to] = src[(std::size_t(m) * k.A + i) * k.B + j];
          want_add[to] = base[to] + want[to];
        }
    Vec dst(n, kNaN);
    kernels::batched_transpose(k.N, k.A, k.B, src.data(), dst.data(), false, kStream);
    expect_bit_equal(dst, want, "transpose " + what);
    Vec acc(base);
    kernels::batched_transpose(k.N, k.A, k.B, src.data(), acc.data(), true, kStream);
    expect_bit_equal(acc, want_add, "transpose-add " + what);
    Vec back(n, kNaN);
    kernels::batched_transpose(k.N, k.B, k.A, dst.data(), back.data(), false, kStream);
    expect_bit_equal(back, src, "transpose twice " + what);
  }
}

// ---- pool.cu, image_ops.cu, linear.cu
// -------------------------------------------------------------

// Channels-last pooling: the forward the same bits as the NCHW kernel's (the same order of
// sums) on the transposed input, the backward the naive loop's.
TEST_F(EmulatedKernels, GlobalAvgPoolChannelsLast) {
  for (const int HW : {1, 33, 64}) {
    const int N = 5, C = 9;
    const Vec x = random_vector(std::size_t(N * C * HW), 14);
    Vec nhwc(x.size());
    for (int n = 0; n < N; ++n)
      for (int c = 0; c < C; ++c)
        for (int i = 0; i < HW; ++i)
          nhwc[(std::size_t(n) * HW + i) * C + c] = x[(std::size_t(n) * C + c) * HW + i];
    Vec want(std::size_t(N * C), kNaN), got(std::size_t(N * C), kNaN);
    kernels::global_avg_pool_forward(N, C, HW, x.data(), want.data(), kStream);
    kernels::global_avg_pool_forward_nhwc(N, C, HW, nhwc.data(), got.data(), kStream);
    expect_bit_equal(got, want, "pool forward NHWC, HW " + std::to_string(HW));
    const Vec dy = random_vector(std::size_t(N * C), 15);
    Vec dx(x.size(), kNaN), dx_want(x.size());
    kernels::global_avg_pool_backward_nhwc(N, C, HW, dy.data(), dx.data(), kStream);
    for (int n = 0; n < N; ++n)
      for (int c = 0; c < C; ++c)
        for (int i = 0; i < HW; ++i)
          dx_want[(std::size_t(n) * HW + i) * C + c] =
              dy[std::size_t(n) * C + c] * (1.0f / static_cast<float>(HW));
    expect_bit_equal(dx, dx_want, "pool backward NHWC, HW " + std::to_string(HW));
  }
}

TEST_F(EmulatedKernels, GlobalAvgPool) {
  // 7 * 9 = 63 planes: 8 blocks of 8 warps, the last block with one warp idle; HW 1, 33 (a
  // partial second pass of the lanes) and 64.
  for (const int HW : {1, 33, 64}) {
    const int N = 7, C = 9;
    const Shape s{N, C, 1, HW};
    const Vec x = random_vector(s.numel(), 13);
    Vec y(std::size_t(N * C), kNaN);
    kernels::global_avg_pool_forward(N, C, HW, x.data(), y.data(), kStream);
    const Tensor cy = cpu->empty(Shape{N, C});
    cpu->global_avg_pool_forward(tensor(x, s), cy);
    // A float sum of HW terms in two orders (butterfly, sequential): each errs by at most
    // (HW - 1) u sum|x_i|, then one rounding of the product by 1 / HW each: at most
    // 2 (HW - 1) u sum|x_i| / HW + 2 u |y| apart.
    const Vec want = vec(cy);
    for (int p = 0; p < N * C; ++p) {
      double abs_sum = 0.0;
      for (int i = 0; i < HW; ++i) abs_sum += std::fabs(x[std::size_t(p * HW + i)]);
      ASSERT_LE(
          std::fabs(double(y[std::size_t(p)]) - want[std::size_t(p)]),
          2.0 * (HW - 1) * kU * abs_sum / HW + 2.0 * kU * std::fabs(want[std::size_t(p)]) + 1e-30)
          << "HW " << HW << " plane " << p;
    }
    const Vec dy = random_vector(std::size_t(N * C), 14);
    Vec dx(s.numel(), kNaN);
    kernels::global_avg_pool_backward(N, C, HW, dy.data(), dx.data(), kStream);
    const Tensor cdx = cpu->empty(s);
    cpu->global_avg_pool_backward(tensor(dy, Shape{N, C}), cdx);
    expect_bit_equal(dx, vec(cdx), "backward HW " + std::to_string(HW));
  }
}

TEST_F(EmulatedKernels, PoolingResizeAndChannelCopyAreTheCpuOps) {
  const Shape s{2, 3, 11, 9};
  const Vec x = random_vector(s.numel(), 15);
  for (const auto& [kernel, stride, pad] :
       {std::tuple{3, 2, 0}, std::tuple{3, 1, 1}, std::tuple{2, 2, 1}}) {
    const PoolGeom g{2, 3, 11, 9, kernel, stride, pad};
    const Shape ys{2, 3, g.P(), g.Q()};
    const std::string what =
        std::to_string(kernel) + "/" + std::to_string(stride) + "/" + std::to_string(pad);
    Vec y(ys.numel(), kNaN);
    const Tensor cy = cpu->empty(ys);
    kernels::max_pool2d_forward(g, x.data(), y.data(), kStream);
    cpu->max_pool2d_forward(tensor(x, s), cy, kernel, stride, pad);
    expect_bit_equal(y, vec(cy), "max pool " + what);
    kernels::avg_pool2d_forward(g, x.data(), y.data(), kStream);
    cpu->avg_pool2d_forward(tensor(x, s), cy, kernel, stride, pad);
    expect_bit_equal(y, vec(cy), "avg pool " + what);
  }
  for (const auto& [P, Q] : {std::pair{23, 5}, std::pair{11, 9}, std::pair{4, 17}}) {
    const Shape ys{2, 3, P, Q};
    Vec y(ys.numel(), kNaN);
    kernels::resize_bilinear_forward(6, 11, 9, P, Q, x.data(), y.data(), kStream);
    const Tensor cy = cpu->empty(ys);
    cpu->resize_bilinear_forward(tensor(x, s), cy);
    expect_bit_equal(y, vec(cy), "resize to " + std::to_string(P) + "x" + std::to_string(Q));
  }
  // Channels 3..5 of a 7-channel destination; the rest untouched.
  const Shape ds{2, 7, 11, 9};
  const Vec d0 = random_vector(ds.numel(), 16);
  Vec d = d0;
  kernels::copy_channels(2, 3, 7, 99, 3, x.data(), d.data(), kStream);
  const Tensor cd = tensor(d0, ds);
  cpu->copy_channels(tensor(x, s), cd, 3);
  expect_bit_equal(d, vec(cd), "copy_channels");
}

TEST_F(EmulatedKernels, LinearBiasBroadcastAndColumnSums) {
  // O = 300 columns: 3 blocks of 128 threads for the column sums, the last one partial.
  const int N = 13, O = 300;
  const Vec b = random_vector(O, 17), dy = random_vector(std::size_t(N * O), 18);
  Vec y(std::size_t(N * O), kNaN);
  kernels::broadcast_rows(N, O, b.data(), y.data(), kStream);
  for (int n = 0; n < N; ++n)
    for (int o = 0; o < O; ++o) ASSERT_EQ(y[std::size_t(n * O + o)], b[std::size_t(o)]);
  const Vec db0 = random_vector(O, 19);
  Vec db = db0;
  kernels::column_sums_accumulate(N, O, dy.data(), db.data(), kStream);
  Vec want = db0;  // db[o] += sum_n dy[n, o], rows in order: the kernel's and the CPU's loop
  for (int o = 0; o < O; ++o)
    for (int n = 0; n < N; ++n) want[std::size_t(o)] += dy[std::size_t(n * O + o)];
  expect_bit_equal(db, want, "column sums");
}

// ---- energy.cu
// -------------------------------------------------------------------------------------

// Logit rows: random, one dominant logit (the log1p path), ties at the maximum, a constant row.
Vec loss_logits(int N, int K, std::uint64_t seed) {
  Vec v = random_vector(std::size_t(N) * K, seed, -4.0f, 4.0f);
  if (N > 1) v[std::size_t(K) + 2 % K] = 40.0f;
  if (N > 2) v[2 * std::size_t(K)] = v[2 * std::size_t(K) + std::size_t(K - 1)] = 5.0f;
  if (N > 3) std::fill(v.begin() + 3 * K, v.begin() + 4 * K, 0.5f);
  return v;
}

// The CUDA kernels compute in float, arranged so that nothing cancels (energy.cu): at most about
// 16 u per output; 64 u is the GPU tests' bound. The energies are compared with the CPU backend,
// relative to max(|E|, 1). The gradients are compared with naive loops in long double, element
// by element relative to the size of the terms that make the entry (below), not with the CPU:
// where one logit dominates, the label's entry softmax_y - 1 is a tiny number that the kernel
// gets to a few u and the CPU's double 1 - p rounds to 0 or to one double ulp.
constexpr double kLossTol = 64 * kU;

enum class Loss { Energy, SquaredEnergy, CrossEntropy };

// want: the exact gradient entries; size: what each entry's error is relative to.
//   energy:          -gs p_k,                    size |gs| p_k
//   squared energy:  -(gs + 2 sq E) p_k,         size (|gs| + 2 |sq E|) p_k  (gs + 2 sq E may
//   cancel) cross-entropy:   gs (p_k - [k == y]),        size |gs| |p_k - [k == y]|
void exact_loss_gradient(const Vec& logits, int N, int K, Loss loss, const IVec& labels, float gs,
                         float sq, Vec& want, std::vector<double>& size) {
  want.assign(std::size_t(N * K), 0.0f);
  size.assign(std::size_t(N * K), 0.0);
  for (int n = 0; n < N; ++n) {
    const float* row = logits.data() + std::size_t(n * K);
    long double m = row[0], sum = 0.0L;
    for (int k = 0; k < K; ++k) m = std::max<long double>(m, row[k]);
    for (int k = 0; k < K; ++k) sum += std::exp((long double)row[k] - m);
    const long double E = -(m + std::log(sum));
    for (int k = 0; k < K; ++k) {
      const long double p = std::exp((long double)row[k] - m) / sum;
      long double d = 0.0L, mag = 0.0L;
      if (loss == Loss::Energy) {
        d = -gs * p;
        mag = std::fabs(gs) * p;
      } else if (loss == Loss::SquaredEnergy) {
        d = -(gs + 2.0L * sq * E) * p;
        mag = (std::fabs(gs) + 2.0L * std::fabs(sq * E)) * p;
      } else {
        // p - 1 for the label, computed without cancellation as -(sum of the others) / sum.
        long double others = 0.0L;
        if (k == labels[std::size_t(n)])
          for (int j = 0; j < K; ++j)
            if (j != k) others += std::exp((long double)row[j] - m);
        d = k == labels[std::size_t(n)] ? -gs * (others / sum) : gs * p;
        mag = std::fabs(d);
      }
      want[std::size_t(n * K + k)] = float(d);
      size[std::size_t(n * K + k)] = double(mag);
    }
  }
}

void expect_loss_gradient(const Vec& got, const Vec& logits, int N, int K, Loss loss,
                          const IVec& labels, float gs, float sq, const std::string& what) {
  Vec want;
  std::vector<double> size;
  exact_loss_gradient(logits, N, K, loss, labels, gs, sq, want, size);
  for (std::size_t i = 0; i < got.size(); ++i)
    ASSERT_LE(std::fabs(double(got[i]) - want[i]), kLossTol * size[i] + 1e-38)
        << what << " row " << i / std::size_t(K) << " class " << i % std::size_t(K) << ": "
        << got[i] << " vs " << want[i];
}

TEST_F(EmulatedKernels, EnergySquaredEnergyAndCrossEntropy) {
  // K = 10 (CIFAR-10), 100 (a lane sees 3 or 4 entries) and 1; N = 13: the second block has 5
  // rows for 8 warps (3 warps leave at once).
  for (const int K : {10, 100, 1}) {
    const int N = 13;
    const Shape ls{N, K};
    const Vec logits = loss_logits(N, K, 20 + K);
    const std::string tag = " K " + std::to_string(K);
    Vec E(N, kNaN), dl(std::size_t(N * K), kNaN);
    const Tensor cE = cpu->empty(Shape{N}), cdl = cpu->empty(ls);

    kernels::energy_forward_backward(N, K, logits.data(), E.data(), dl.data(), 0.5f, 0.0f, false,
                                     kStream);
    cpu->energy_forward_backward(tensor(logits, ls), cE, cdl, 0.5f);  // cdl: not compared
    expect_within(E, vec(cE), kLossTol, 1.0, "energy" + tag);
    expect_loss_gradient(dl, logits, N, K, Loss::Energy, {}, 0.5f, 0.0f, "energy gradient" + tag);

    kernels::energy_forward_backward(N, K, logits.data(), E.data(), dl.data(), 0.5f, 0.1f, true,
                                     kStream);
    cpu->energy_sq_forward_backward(tensor(logits, ls), cE, cdl, 0.5f, 0.1f);
    expect_within(E, vec(cE), kLossTol, 1.0, "squared energy" + tag);
    expect_loss_gradient(dl, logits, N, K, Loss::SquaredEnergy, {}, 0.5f, 0.1f,
                         "squared energy gradient" + tag);

    IVec labels(N);
    for (int n = 0; n < N; ++n) labels[std::size_t(n)] = (3 * n + 1) % K;
    if (K > 2) labels[1] = 2 % K;  // row 1's label holds its dominant logit
    int error[kernels::kErrorWords] = {};
    kernels::cross_entropy_forward_backward(N, K, logits.data(), labels.data(), E.data(), dl.data(),
                                            0.25f, error, kStream);
    EXPECT_EQ(error[0], kernels::kNoError) << tag;
    cpu->cross_entropy_forward_backward(tensor(logits, ls), i32(labels), cE, cdl, 0.25f);
    expect_within(E, vec(cE), kLossTol, 1.0, "cross-entropy" + tag);
    // And relative to the loss itself, against long double: row 1's loss is ~1e-16 (its label
    // holds a logit 36 above the rest), which only log1p(others) gets to a few u.
    for (int n = 0; n < N; ++n) {
      const float* row = logits.data() + std::size_t(n * K);
      const int y = labels[std::size_t(n)];
      long double m = row[0], others = 0.0L;
      for (int k = 0; k < K; ++k) m = std::max<long double>(m, row[k]);
      int first = 0;
      while (row[first] != m) ++first;
      for (int k = 0; k < K; ++k)
        if (k != first) others += std::exp((long double)row[k] - m);
      const double exact = double((m - row[y]) + std::log1p(others));
      ASSERT_LE(std::fabs(double(E[std::size_t(n)]) - exact), kLossTol * std::fabs(exact) + 1e-38)
          << "cross-entropy" << tag << " row " << n << ": " << E[std::size_t(n)] << " vs " << exact;
    }
    expect_loss_gradient(dl, logits, N, K, Loss::CrossEntropy, labels, 0.25f, 0.0f,
                         "cross-entropy gradient" + tag);

    kernels::class_energy_forward_backward(N, K, logits.data(), labels.data(), E.data(), dl.data(),
                                           0.25f, error, kStream);
    EXPECT_EQ(error[0], kernels::kNoError) << tag;
    cpu->class_energy_forward_backward(tensor(logits, ls), i32(labels), cE, cdl, 0.25f);
    expect_bit_equal(E, vec(cE), "class energy" + tag);  // -logit and -grad_scale: exact
    expect_bit_equal(dl, vec(cdl), "class energy gradient" + tag);
  }
}

TEST_F(EmulatedKernels, BadLabelsAreReportedAndPoisonTheirRowOnly) {
  const int N = 5, K = 10;
  const Vec logits = loss_logits(N, K, 30);
  const IVec labels{1, 2, 10, 3, -1};  // rows 2 and 4 are out of range; row 2 comes first
  for (const bool class_energy : {false, true}) {
    Vec out(N, 0.0f), dl(N * K, 0.0f);
    int error[kernels::kErrorWords] = {};
    if (class_energy)
      kernels::class_energy_forward_backward(N, K, logits.data(), labels.data(), out.data(),
                                             dl.data(), 1.0f, error, kStream);
    else
      kernels::cross_entropy_forward_backward(N, K, logits.data(), labels.data(), out.data(),
                                              dl.data(), 1.0f, error, kStream);
    EXPECT_EQ(error[0], class_energy ? kernels::kClassEnergyLabel : kernels::kCrossEntropyLabel);
    // One of the two bad rows, with its label (the first to claim the record wins).
    EXPECT_TRUE((error[1] == 2 && error[2] == 10) || (error[1] == 4 && error[2] == -1))
        << error[1] << " " << error[2];
    for (int n = 0; n < N; ++n) {
      const bool bad = n == 2 || n == 4;
      EXPECT_EQ(std::isnan(out[std::size_t(n)]), bad) << "row " << n;
      for (int k = 0; k < K; ++k)
        ASSERT_EQ(std::isnan(dl[std::size_t(n * K + k)]), bad) << n << " " << k;
    }
  }
}

// ---- sampler.cu
// --------------------------------------------------------------------------------------

TEST_F(EmulatedKernels, BufferGatherAndScatterAreTheCpuOps) {
  // per = 3 * 17 * 19 = 969 elements (4 blocks of 256, the last partial), 5 samples.
  const int B = 5, S = 9;
  const Shape ss{3, 17, 19};
  const std::int64_t per = ss.numel();
  const Vec buffer = random_vector(std::size_t(S * per), 31);
  const IVec index{8, 0, 3, 5, 7}, reinit{0, 1, 0, 0, 1};
  const NoiseKey key{1234, 7, 2, 100};
  Vec out(std::size_t(B * per), kNaN);
  int error[kernels::kErrorWords] = {};
  kernels::buffer_gather(B, per, buffer.data(), S, index.data(), reinit.data(), out.data(), key,
                         error, kStream);
  EXPECT_EQ(error[0], kernels::kNoError);
  const Tensor cbuf = tensor(buffer, Shape{S, 3, 17, 19}), cout = cpu->empty(Shape{B, 3, 17, 19});
  cpu->buffer_gather(cbuf, i32(index), i32(reinit), cout, key);
  // Copies and the reinit noise (integer Philox and one exact scaling): bit-identical.
  expect_bit_equal(out, vec(cout), "gather");

  const Vec x = random_vector(std::size_t(B * per), 32);
  Vec buf = buffer;
  kernels::buffer_scatter(B, per, x.data(), index.data(), buf.data(), S, error, kStream);
  EXPECT_EQ(error[0], kernels::kNoError);
  cpu->buffer_scatter(tensor(x, Shape{B, 3, 17, 19}), i32(index), cbuf);
  expect_bit_equal(buf, vec(cbuf), "scatter");
}

TEST_F(EmulatedKernels, BufferSlotsOutOfRangeAreReportedAndNeverWritten) {
  const int B = 3, S = 4;
  const std::int64_t per = 300;
  const Vec buffer = random_vector(std::size_t(S * per), 33);
  const IVec index{1, 4, 2}, reinit{0, 0, 0};  // slot 4 is one past the end
  Vec out(std::size_t(B * per), 0.0f);
  int error[kernels::kErrorWords] = {};
  kernels::buffer_gather(B, per, buffer.data(), S, index.data(), reinit.data(), out.data(),
                         NoiseKey{}, error, kStream);
  EXPECT_EQ(error[0], kernels::kGatherSlot);
  EXPECT_EQ(error[1], 1);
  EXPECT_EQ(error[2], 4);
  for (std::int64_t e = 0; e < per; ++e) {
    ASSERT_EQ(out[std::size_t(e)], buffer[std::size_t(per + e)]);  // sample 0 = slot 1
    ASSERT_TRUE(std::isnan(out[std::size_t(per + e)]));            // sample 1: poisoned
  }
  // Scatter into a buffer followed by a guard region: nothing past the S slots changes.
  Vec guarded(std::size_t((S + 1) * per), 9.0f);
  std::copy(buffer.begin(), buffer.end(), guarded.begin());
  int error2[kernels::kErrorWords] = {};
  kernels::buffer_scatter(B, per, out.data(), index.data(), guarded.data(), S, error2, kStream);
  EXPECT_EQ(error2[0], kernels::kScatterSlot);
  EXPECT_EQ(error2[1], 1);
  for (std::int64_t e = S * per; e < (S + 1) * per; ++e) ASSERT_EQ(guarded[std::size_t(e)], 9.0f);
}

TEST_F(EmulatedKernels, SgldStepIsTheCpuStep) {
  // per = 3 * 5 * 7 = 105: 27 Philox blocks of 4, the last one with a single element (the
  // tail); clamp on and off; 4 samples at a sample base, as a rank's shard would have.
  const int B = 4;
  const Shape s{B, 3, 5, 7};
  const std::int64_t per = s.numel() / B;
  const Vec x0 = random_vector(s.numel(), 34, -1.2f, 1.2f), g = random_vector(s.numel(), 35);
  for (const bool clamp : {false, true}) {
    const NoiseKey key{99, 3, 11, 64};
    Vec x = x0;
    kernels::sgld_step(B, per, x.data(), g.data(), 1.0f, 0.01f, clamp, key, kStream);
    const Tensor cx = tensor(x0, s);
    cpu->sgld_step(cx, tensor(g, s), 1.0f, 0.01f, clamp, key);
    // The same Philox blocks and the same host Box-Muller (glibc's logf / sinf / cosf) as the
    // CPU: bit-identical here. On a GPU, CUDA's versions differ by a few ulp (tests/cuda/).
    expect_bit_equal(x, vec(cx), clamp ? "clamped" : "unclamped");
  }
}

// ---- optim.cu
// ----------------------------------------------------------------------------------------

TEST_F(EmulatedKernels, AdamAndSgdAreTheCpuUpdates) {
  constexpr std::int64_t n = 1000;
  const Vec p0 = random_vector(n, 36), g = random_vector(n, 37),
            m0 = random_vector(n, 38, -0.1f, 0.1f);
  Vec v0 = random_vector(n, 39, 0.0f, 0.01f);
  const Shape s{n};
  for (const float wd : {0.0f, 0.01f}) {
    AdamStep step;  // step 3; Adam with L2 decay, then AdamW
    step.lr = 1e-3f;
    step.weight_decay = wd;
    step.decoupled = wd > 0.0f;
    step.bias1 = 1.0f - 0.9f * 0.9f * 0.9f;
    step.bias2 = 1.0f - 0.999f * 0.999f * 0.999f;
    Vec p = p0, m = m0, v = v0;
    kernels::adam_step(n, p.data(), g.data(), m.data(), v.data(), step, kStream);
    const Tensor cp = tensor(p0, s), cm = tensor(m0, s), cv = tensor(v0, s);
    cpu->adam_step(cp, tensor(g, s), cm, cv, step);
    // One shared adam_update (optim_math.hpp), compiled by the same compiler: bit-identical.
    expect_bit_equal(p, vec(cp), "adam params");
    expect_bit_equal(m, vec(cm), "adam m");
    expect_bit_equal(v, vec(cv), "adam v");

    Vec q = p0, buf = m0;
    kernels::sgd_step(n, q.data(), g.data(), buf.data(), 0.1f, 0.9f, wd, kStream);
    const Tensor cq = tensor(p0, s), cb = tensor(m0, s);
    cpu->sgd_step(cq, tensor(g, s), cb, 0.1f, 0.9f, wd);
    expect_bit_equal(q, vec(cq), "sgd params");
    expect_bit_equal(buf, vec(cb), "sgd momentum");
  }
}

TEST_F(EmulatedKernels, SumSquaresOverManyChunks) {
  // 1 element; 3 chunks and a partial one; 300 chunks, more than the 256 threads of the second
  // pass, which then takes two partials per thread.
  for (const std::int64_t n :
       {std::int64_t(1), 3 * kernels::kSumSquaresChunk + 17, 300 * kernels::kSumSquaresChunk - 5}) {
    const Vec x = random_vector(std::size_t(n), 40);
    std::vector<double> partials(std::size_t(kernels::sum_squares_partials(n)), kNaN);
    double result = kNaN, again = kNaN;
    kernels::sum_squares(n, x.data(), partials.data(), &result, kStream);
    kernels::sum_squares(n, x.data(), partials.data(), &again, kStream);
    EXPECT_EQ(std::bit_cast<std::uint64_t>(result), std::bit_cast<std::uint64_t>(again))
        << "n " << n << ": not deterministic";
    double exact = 0.0;  // the squares of floats are exact in double; the sum errs by ~n eps
    for (float v : x) exact += double(v) * v;
    EXPECT_LE(std::fabs(result - exact), 4.0 * double(n) * 0x1p-53 * exact) << "n " << n;
    const double cpu_result = cpu->sum_squares(tensor(x, Shape{n}));
    EXPECT_LE(std::fabs(result - cpu_result), 4.0 * double(n) * 0x1p-53 * exact) << "n " << n;
  }
  double zero = kNaN;
  kernels::sum_squares(0, nullptr, nullptr, &zero, kStream);
  EXPECT_EQ(zero, 0.0);
}

// ---- grid-stride loops --------------------------------------------------------------------------

// On a GPU, grid_for caps grids at 65535 blocks, so a grid-stride loop takes a second turn only
// beyond 16.7 million elements, sizes the tests above do not reach. Here the cap is lowered to 2
// blocks (and the sampler's sample grid to 2 rows): every grid-stride launcher must give the
// same bits as with a block per 256 elements.
TEST_F(EmulatedKernels, GridStrideLoopsTakeSeveralTurns) {
  constexpr float slope = 0.2f;
  const int N = 3, C = 5, K = 10, B = 5;
  const std::int64_t HW = 77, n = std::int64_t(N) * C * HW, per = 3 * 17 * 19;
  const Vec x = random_vector(std::size_t(n), 50), b = random_vector(C, 51),
            z = random_vector(std::size_t(n), 52), logits = random_vector(std::size_t(N * K), 53);
  const Vec buffer = random_vector(std::size_t(9 * per), 54), g = random_vector(std::size_t(n), 55);
  const IVec labels{3, 0, 9}, index{8, 0, 3, 5, 7}, reinit{0, 1, 0, 0, 1};
  const PoolGeom pg{N, C, 7, 11, 3, 2, 1};
  const AdamStep step{1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f, true, 0.1f, 0.002f};

  // Every grid-stride launcher once, each output in its own vector.
  auto run_all = [&] {
    std::vector<Vec> out;
    auto fresh = [&](std::size_t size) -> float* { return out.emplace_back(size, kNaN).data(); };
    kernels::bias_leaky_relu_forward(N * C, C, HW, x.data(), b.data(), fresh(x.size()), slope,
                                     kStream);
    kernels::leaky_relu_backward_add(n, x.data(), z.data(), g.data(), fresh(x.size()), slope,
                                     kStream);
    float* y = fresh(x.size());
    std::copy(z.begin(), z.end(), y);
    kernels::bias_residual_add(N, C, HW, b.data(), x.data(), y, kStream);
    int error[kernels::kErrorWords] = {};
    kernels::class_energy_forward_backward(N, K, logits.data(), labels.data(), fresh(N),
                                           fresh(logits.size()), 0.5f, error, kStream);
    kernels::global_avg_pool_backward(N, C, int(HW), z.data(), fresh(x.size()), kStream);
    kernels::max_pool2d_forward(pg, x.data(), fresh(std::size_t(N * C * pg.P() * pg.Q())), kStream);
    kernels::resize_bilinear_forward(N * C, 7, 11, 13, 5, x.data(),
                                     fresh(std::size_t(N * C * 13 * 5)), kStream);
    kernels::copy_channels(N, C, C + 2, HW, 1, x.data(), fresh(std::size_t(N * (C + 2) * HW)),
                           kStream);
    kernels::broadcast_rows(N, int(HW) * C, x.data(), fresh(std::size_t(N) * HW * C), kStream);
    float* db = fresh(std::size_t(HW) * C);
    std::fill(db, db + HW * C, 0.0f);
    kernels::column_sums_accumulate(N, int(HW) * C, x.data(), db, kStream);
    float *p = fresh(x.size()), *m = fresh(x.size()), *v = fresh(x.size());
    std::copy(x.begin(), x.end(), p);
    std::fill(m, m + n, 0.01f);
    std::fill(v, v + n, 0.001f);
    kernels::adam_step(n, p, g.data(), m, v, step, kStream);
    float *q = fresh(x.size()), *buf = fresh(x.size());
    std::copy(x.begin(), x.end(), q);
    std::fill(buf, buf + n, 0.1f);
    kernels::sgd_step(n, q, g.data(), buf, 0.1f, 0.9f, 1e-4f, kStream);
    const NoiseKey key{77, 1, 2, 30};
    float* gathered = fresh(std::size_t(B * per));
    kernels::buffer_gather(B, per, buffer.data(), 9, index.data(), reinit.data(), gathered, key,
                           error, kStream);
    float* sampled = fresh(std::size_t(B * per));
    std::copy(gathered, gathered + B * per, sampled);
    kernels::sgld_step(B, per, sampled, buffer.data(), 1.0f, 0.01f, true, key, kStream);
    float* scattered = fresh(buffer.size());
    std::copy(buffer.begin(), buffer.end(), scattered);
    kernels::buffer_scatter(B, per, sampled, index.data(), scattered, 9, error, kStream);
    EXPECT_EQ(error[0], kernels::kNoError);
    return out;
  };
  const std::vector<Vec> wide = run_all();
  std::vector<Vec> narrow;
  {
    const emu::GridBlockCap cap(2);
    narrow = run_all();
  }
  ASSERT_EQ(wide.size(), narrow.size());
  for (std::size_t i = 0; i < wide.size(); ++i)
    expect_bit_equal(narrow[i], wide[i], "output " + std::to_string(i));
}

}  // namespace
}  // namespace jem::test
