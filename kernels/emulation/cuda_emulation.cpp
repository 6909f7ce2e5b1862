// The grid runner and runtime stand-ins of cuda_emulation.hpp.
//
// A launch runs its blocks one after another, on the launching OS thread. The threads of a block
// are fibers (fiber.hpp), one per CUDA thread, each on its own stack. The runner resumes every
// thread that can run, each until it waits at __syncthreads or a shuffle, or returns; then it
// releases the barriers that every live thread concerned has reached (the block's; each warp's,
// for the shuffles), and goes round again. A thread that has returned no longer counts, as an
// exited GPU thread does. When threads wait and no barrier can be released (threads that miss
// each other, which hangs a GPU), the launch fails with a message that says who waits where.
//
// The order of the threads alternates between blocks: ascending in even blocks, descending in odd
// ones. Without a barrier between a write to shared memory and another thread's read of it, the
// read then comes before the write in one of the two orders, whichever thread reads.
//
// A kernel whose first launch used neither barriers nor shuffles runs sequentially on the calling
// thread afterwards, in the same orders (no fibers: most launches are elementwise).
#include "cuda_emulation.hpp"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "fiber.hpp"

namespace jem::emu {
namespace {

// The built-in variables of the emulated thread running now (set by the runner before it
// resumes a thread's fiber).
thread_local uint3 thread_idx;
thread_local uint3 block_idx;
thread_local uint3 block_dims;
thread_local uint3 grid_dims;

constexpr int kWarp = 32;
// Each fiber's stack. The kernels' frames take a few hundred bytes; the error path formats
// strings, and the sanitizer build's frames are larger.
constexpr std::size_t kFiberStackBytes = 256 * 1024;

// The calling (host) thread's last error, as cudaGetLastError keeps it, and its
// message.
thread_local cudaError_t last_error = cudaSuccess;
thread_local std::string last_message;

std::string hex(unsigned v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08x", v);
  return buf;
}

std::atomic<std::int64_t> block_cap{65535};

// One launch at a time in the process: __shared__ statics are per kernel, not per launch.
std::mutex launch_mutex;
std::string last_launched;  // guarded by launch_mutex

// The fibers that play the CUDA threads, and their stacks, kept between launches (used under the
// launch mutex). Grows to the largest block launched.
class FiberPool {
 public:
  static FiberPool& instance() {
    static FiberPool pool;
    return pool;
  }
  void ensure(int n) {
    while (int(fibers_.size()) < n) {
      stacks_.push_back(std::make_unique<FiberStack>(kFiberStackBytes));
      fibers_.push_back(std::make_unique<Fiber>());
    }
  }
  Fiber& fiber(int t) { return *fibers_[std::size_t(t)]; }
  FiberStack& stack(int t) { return *stacks_[std::size_t(t)]; }

 private:
  std::vector<std::unique_ptr<FiberStack>> stacks_;
  std::vector<std::unique_ptr<Fiber>> fibers_;
};

class GridRun;
thread_local GridRun* current_run = nullptr;  // the launch this emulated thread belongs to
thread_local int current_thread = 0;          // its linear index in the block

class GridRun {
 public:
  GridRun(const char* kernel, dim3 grid, dim3 block, const std::function<void()>& body)
      : kernel_(kernel),
        grid_(grid),
        block_(block),
        body_(body),
        threads_(int(block.x * block.y * block.z)),
        blocks_(std::int64_t(grid.x) * grid.y * grid.z),
        slots_(std::size_t(threads_)),
        sites_(std::size_t(threads_)),
        wait_(std::size_t(threads_), Wait::None) {}

  // Runs the blocks, each thread a fiber, until the first error; returns it (empty when none).
  std::string run() {
    FiberPool& pool = FiberPool::instance();
    pool.ensure(threads_);
    current_run = this;
    block_dims = uint3{block_.x, block_.y, block_.z};
    grid_dims = uint3{grid_.x, grid_.y, grid_.z};
    for (std::int64_t b = 0; b < blocks_ && error_.empty(); ++b) run_block(pool, b);
    current_run = nullptr;
    return error_;
  }

  // Sequentially, on the calling thread: every thread of every block in turn (in the order
  // run_block takes). Only for kernels
  // that a fiber launch showed to use no barrier or shuffle (the threads of a block then cannot
  // observe each other's order); one that does anyway is stopped and reported.
  std::string run_sequentially() {
    sequential_ = true;
    current_run = this;
    block_dims = uint3{block_.x, block_.y, block_.z};
    grid_dims = uint3{grid_.x, grid_.y, grid_.z};
    for (std::int64_t b = 0; b < blocks_ && error_.empty(); ++b) {
      block_idx = block_coordinates(b);
      const bool descending = b % 2 == 1;  // as in run_block
      for (int i = 0; i < threads_; ++i) {
        const int t = descending ? threads_ - 1 - i : i;
        current_thread = t;
        thread_idx = thread_coordinates(t);
        call_body();
      }
    }
    current_run = nullptr;
    return error_;
  }

  // Whether a thread waited at a barrier or shuffled (then the kernel needs fibers).
  bool synchronized() const { return synchronized_; }

  void syncthreads() {
    if (sequential_) stop_sequential("__syncthreads");
    synchronized_ = true;
    wait(Wait::Block);
  }

  // Warp-synchronous exchange: every lane that has not exited must take part (mask covering
  // all of them: partial-mask shuffles are not emulated, and are reported), and all must be at
  // the same shuffle (call site and lane mask), which the second check verifies.
  std::uint64_t shuffle_xor(unsigned mask, std::uint64_t bits, int lane_mask, unsigned site) {
    if (sequential_) stop_sequential("a warp shuffle");
    synchronized_ = true;
    const int t = current_thread, lane = t % kWarp, warp = t / kWarp;
    const int first = warp * kWarp, lanes = std::min(kWarp, threads_ - first);
    for (int l = 0; l < lanes; ++l)
      if (((mask >> l) & 1u) == 0 && !exited(first + l)) {
        fail("lane " + std::to_string(lane) + " shuffles with mask " + hex(mask) +
             ", which omits live lane " + std::to_string(l) +
             " (partial-mask shuffles are not emulated)");
        return bits;
      }
    slots_[std::size_t(t)] = bits;
    sites_[std::size_t(t)] = Site{site, lane_mask, mask};
    wait(Wait::Warp);  // every live lane has written its value
    const int src_lane = lane ^ lane_mask, src = first + src_lane;
    std::uint64_t result = bits;
    if (lane_mask < 0 || src_lane >= lanes || ((mask >> src_lane) & 1u) == 0)
      fail("lane " + std::to_string(lane) + " shuffles with lane " + std::to_string(src_lane) +
           ", outside the warp or the mask");
    else if (exited(src))
      fail("lane " + std::to_string(lane) + " of warp " + std::to_string(warp) +
           " shuffles with lane " + std::to_string(src_lane) + ", which has exited");
    else if (!(sites_[std::size_t(src)] == sites_[std::size_t(t)]))
      fail("lane " + std::to_string(lane) + " (shuffle at line " + std::to_string(site) + ", xor " +
           std::to_string(lane_mask) + ") meets lane " + std::to_string(src_lane) +
           " at a different shuffle (line " + std::to_string(sites_[std::size_t(src)].line) +
           ", xor " + std::to_string(sites_[std::size_t(src)].lane_mask) + ")");
    else
      result = slots_[std::size_t(src)];
    wait(Wait::Warp);  // every lane has read before the next write
    return result;
  }

  void fail(const std::string& what) {
    if (error_.empty())
      error_ = std::string(kernel_) + ", block (" + std::to_string(blockIdx.x) + ", " +
               std::to_string(blockIdx.y) + ", " + std::to_string(blockIdx.z) + "), thread " +
               std::to_string(current_thread) + ": " + what;
  }

 private:
  // Where a thread is, between two resumes: runnable, waiting at the block's barrier or at its
  // warp's, or returned.
  enum class Wait : unsigned char { None, Block, Warp, Exited };

  bool exited(int t) const { return wait_[std::size_t(t)] == Wait::Exited; }

  // On a thread's fiber: wait at a barrier (back to the runner until it is released).
  void wait(Wait w) {
    const int t = current_thread;
    wait_[std::size_t(t)] = w;
    FiberPool::instance().fiber(t).suspend();
  }

  // Each fiber's entry: the kernel body, then out of every barrier for good.
  static void thread_main(void* p) {
    auto* run = static_cast<GridRun*>(p);
    run->call_body();
    const int t = current_thread;
    run->wait_[std::size_t(t)] = Wait::Exited;
    --run->live_;
    FiberPool::instance().fiber(t).finish();
  }

  void run_block(FiberPool& pool, std::int64_t b) {
    block_idx = block_coordinates(b);
    for (int t = 0; t < threads_; ++t) {
      wait_[std::size_t(t)] = Wait::None;
      pool.fiber(t).start(pool.stack(t), &GridRun::thread_main, this);
    }
    live_ = threads_;
    const bool descending = b % 2 == 1;
    for (;;) {
      for (int i = 0; i < threads_; ++i) {
        const int t = descending ? threads_ - 1 - i : i;
        if (wait_[std::size_t(t)] != Wait::None) continue;
        current_thread = t;
        thread_idx = thread_coordinates(t);
        pool.fiber(t).resume();
      }
      if (live_ == 0) return;
      if (!release()) {
        report_deadlock();
        return;  // the waiting fibers are abandoned; start() reuses their stacks
      }
    }
  }

  // Frees the barriers whose live threads have all arrived: the block's, or each warp's. False
  // when none can be freed.
  bool release() {
    bool all_at_block = true;
    for (int t = 0; t < threads_; ++t)
      if (wait_[std::size_t(t)] != Wait::Block && !exited(t)) all_at_block = false;
    if (all_at_block) {
      for (Wait& w : wait_)
        if (w == Wait::Block) w = Wait::None;
      return true;
    }
    bool released = false;
    for (int first = 0; first < threads_; first += kWarp) {
      const int last = std::min(first + kWarp, threads_);
      bool all_at_warp = true, any = false;
      for (int t = first; t < last; ++t) {
        if (exited(t)) continue;
        any = true;
        if (wait_[std::size_t(t)] != Wait::Warp) all_at_warp = false;
      }
      if (!any || !all_at_warp) continue;
      for (int t = first; t < last; ++t)
        if (wait_[std::size_t(t)] == Wait::Warp) wait_[std::size_t(t)] = Wait::None;
      released = true;
    }
    return released;
  }

  // Threads that wait for each other forever (a GPU hangs): who waits where.
  void report_deadlock() {
    std::string block_waiters, warp_waiters;
    int exited_count = 0;
    for (int t = 0; t < threads_; ++t) {
      const Wait w = wait_[std::size_t(t)];
      if (w == Wait::Exited) ++exited_count;
      std::string& list = w == Wait::Block ? block_waiters : warp_waiters;
      if (w == Wait::Block || w == Wait::Warp) list += (list.empty() ? "" : ", ") + std::to_string(t);
    }
    error_ = std::string(kernel_) + ", block (" + std::to_string(block_idx.x) + ", " +
             std::to_string(block_idx.y) + ", " + std::to_string(block_idx.z) +
             "): threads wait for each other forever (a GPU would hang): at __syncthreads: " +
             (block_waiters.empty() ? "none" : block_waiters) +
             "; at a shuffle: " + (warp_waiters.empty() ? "none" : warp_waiters) + "; " +
             std::to_string(exited_count) + " returned";
  }

  uint3 thread_coordinates(int t) const {
    return uint3{unsigned(t) % block_.x, (unsigned(t) / block_.x) % block_.y,
                 unsigned(t) / (block_.x * block_.y)};
  }
  uint3 block_coordinates(std::int64_t b) const {
    return uint3{unsigned(b % grid_.x), unsigned(b / grid_.x % grid_.y),
                 unsigned(b / (std::int64_t(grid_.x) * grid_.y))};
  }

  // Thrown out of a sequential run's kernel at its first barrier or shuffle.
  struct SequentialStop {};
  [[noreturn]] void stop_sequential(const char* what) {
    fail(std::string("uses ") + what +
         ", which its first launch did not (a kernel must use "
         "barriers and shuffles on every launch or on none)");
    throw SequentialStop{};
  }

  void call_body() {
    try {
      body_();
    } catch (const SequentialStop&) {
    } catch (const std::exception& e) {
      fail(std::string("exception: ") + e.what());
    } catch (...) {
      fail("unknown exception");
    }
  }

  const char* kernel_;
  dim3 grid_;
  dim3 block_;
  const std::function<void()>& body_;
  int threads_;
  std::int64_t blocks_;
  int live_ = 0;  // threads of the current block that have not returned
  bool sequential_ = false;
  bool synchronized_ = false;
  struct Site {  // where a lane's shuffle was called, and how
    unsigned line = 0;
    int lane_mask = 0;
    unsigned mask = 0;
    bool operator==(const Site&) const = default;
  };
  std::vector<std::uint64_t> slots_;  // one shuffle value per thread
  std::vector<Site> sites_;           // per thread: the shuffle its slot was written at
  std::vector<Wait> wait_;            // per thread, for the current block
  std::string error_;
};

}  // namespace

void set_last_error(cudaError_t e, const std::string& message) {
  last_error = e;
  last_message = message;
}

const uint3& thread_index() { return thread_idx; }
const uint3& block_index() { return block_idx; }
const uint3& block_dim() { return block_dims; }
const uint3& grid_dim() { return grid_dims; }

bool launch_configuration_ok(const char* kernel, dim3 grid, dim3 block) {
  // The limits of every GPU since compute capability 3.0
  // (cudaErrorInvalidConfiguration there).
  const std::int64_t threads = std::int64_t(block.x) * block.y * block.z;
  if (threads < 1 || threads > 1024 || block.z > 64 || grid.x < 1 || grid.y < 1 || grid.z < 1 ||
      grid.x > 0x7FFFFFFFu || grid.y > 65535 || grid.z > 65535) {
    set_last_error(cudaErrorInvalidConfiguration,
                   std::string(kernel) + ": invalid launch configuration, grid (" +
                       std::to_string(grid.x) + ", " + std::to_string(grid.y) + ", " +
                       std::to_string(grid.z) + "), block (" + std::to_string(block.x) + ", " +
                       std::to_string(block.y) + ", " + std::to_string(block.z) + ")");
    return false;
  }
  return true;
}

void run_grid(const char* kernel, dim3 grid, dim3 block, const std::function<void()>& body) {
  if (!launch_configuration_ok(kernel, grid, block)) return;
  const std::lock_guard<std::mutex> one_launch_at_a_time(launch_mutex);
  last_launched = kernel;
  // Kernels whose first launch used no barrier and no shuffle run sequentially from then on (no
  // thread switches: most launches are elementwise). Keyed by the launch site's kernel name.
  static std::map<std::string, bool> barrier_free;
  const auto known = barrier_free.find(kernel);
  GridRun run(kernel, grid, block, body);
  const bool sequential = known != barrier_free.end() && known->second;
  const std::string error = sequential ? run.run_sequentially() : run.run();
  if (known == barrier_free.end() && error.empty()) barrier_free[kernel] = !run.synchronized();
  if (!error.empty()) set_last_error(cudaErrorLaunchFailure, error);
}

std::string last_launched_kernel() {
  const std::lock_guard<std::mutex> lock(launch_mutex);
  return last_launched;
}

void syncthreads() { current_run->syncthreads(); }

std::int64_t grid_block_cap() { return block_cap.load(); }
GridBlockCap::GridBlockCap(std::int64_t cap) : previous_(block_cap.exchange(cap)) {}
GridBlockCap::~GridBlockCap() { block_cap.store(previous_); }

std::uint64_t shuffle_xor(unsigned mask, std::uint64_t bits, int lane_mask, unsigned site) {
  return current_run->shuffle_xor(mask, bits, lane_mask, site);
}

cudaError_t peek_last_error() { return last_error; }

cudaError_t get_last_error() {
  const cudaError_t e = last_error;
  last_error = cudaSuccess;
  return e;
}

const char* error_name(cudaError_t e) {
  switch (e) {
    case cudaSuccess:
      return "cudaSuccess";
    case cudaErrorInvalidConfiguration:
      return "cudaErrorInvalidConfiguration";
    case cudaErrorLaunchFailure:
      return "cudaErrorLaunchFailure";
    case cudaErrorMemoryAllocation:
      return "cudaErrorMemoryAllocation";
    case cudaErrorIllegalState:
      return "cudaErrorIllegalState";
    case cudaErrorStreamCaptureUnsupported:
      return "cudaErrorStreamCaptureUnsupported";
    case cudaErrorStreamCaptureInvalidated:
      return "cudaErrorStreamCaptureInvalidated";
    default:
      return "cudaError (emulated)";
  }
}

// The message of the last failed launch (the emulation knows which thread
// failed and why).
const char* error_string(cudaError_t e) {
  return e == cudaSuccess ? "no error" : last_message.c_str();
}

cudaError_t memset_async(void* p, int value, std::size_t bytes, cudaStream_t stream) {
  enqueue(stream, [=] { std::memset(p, value, bytes); });
  return cudaSuccess;
}

// cudaMemcpy's contract: the ranges must not overlap. std::memcpy has the same
// one, which AddressSanitizer checks (memcpy-param-overlap) in the sanitizer
// build.
cudaError_t memcpy_async(void* dst, const void* src, std::size_t bytes, cudaMemcpyKind /*kind*/,
                         cudaStream_t stream) {
  enqueue(stream, [=] { std::memcpy(dst, src, bytes); });
  return cudaSuccess;
}

// A stream-ordered allocation is a graph node on a GPU; here it is refused while capturing, as the
// CUDA backend never allocates in captured work (its graphs would then own memory).
cudaError_t malloc_async(void** p, std::size_t bytes, cudaStream_t /*stream*/) {
  if (const cudaError_t e = refuse_if_capturing("cudaMallocAsync"); e != cudaSuccess) return e;
  *p = std::malloc(bytes);
  if (*p == nullptr && bytes > 0) {
    set_last_error(cudaErrorMemoryAllocation, "out of host memory");
    return cudaErrorMemoryAllocation;
  }
  return cudaSuccess;
}

cudaError_t free_async(void* p, cudaStream_t /*stream*/) {
  if (const cudaError_t e = refuse_if_capturing("cudaFreeAsync"); e != cudaSuccess) return e;
  std::free(p);
  return cudaSuccess;
}

}  // namespace jem::emu

int atomicCAS(int* address, int compare, int value) {
  std::atomic_ref<int>(*address).compare_exchange_strong(compare, value);
  return compare;  // the old value: compare_exchange leaves it in `compare`
                   // either way
}
