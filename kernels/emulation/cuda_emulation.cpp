// The grid runner and runtime stand-ins of cuda_emulation.hpp.
//
// A launch runs on a pool of OS threads, one per thread of a block, kept between launches, and
// reused for every block. Three kinds of barrier:
//   * `next_block` (all threads of the block, every block): its completion step, which runs on
//     one thread while the others wait, sets up the next block (fresh block and warp barriers,
//     cleared exit flags), so no thread can start block b + 1 while another still runs block b;
//   * the block barrier of __syncthreads, and one barrier per warp for the shuffles: rebuilt for
//     every block, because a thread that returns early leaves them for good (arrive_and_drop).
// A kernel whose first launch used neither runs sequentially on the calling thread afterwards.
#include "cuda_emulation.hpp"

#include <atomic>
#include <barrier>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace jem::emu {
namespace {

// The built-in variables of the emulated thread running on this OS thread.
thread_local uint3 thread_idx;
thread_local uint3 block_idx;
thread_local uint3 block_dims;
thread_local uint3 grid_dims;

constexpr int kWarp = 32;

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

// The OS threads that play the CUDA threads, kept between launches (starting 256 threads per
// launch cost more than most emulated kernels). Grows to the largest block launched.
class WorkerPool {
 public:
  static WorkerPool& instance() {
    static WorkerPool pool;
    return pool;
  }

  // Runs job(t) for t in [0, n) on n threads; returns when every call has returned. One caller
  // at a time (run_grid holds the launch mutex).
  void run(int n, const std::function<void(int)>& job) {
    std::unique_lock<std::mutex> lock(mutex_);
    while (int(threads_.size()) < n) {
      const int index = int(threads_.size());
      threads_.emplace_back([this, index] { serve(index); });
    }
    job_ = &job;
    active_ = n;
    remaining_ = n;
    ++generation_;
    start_.notify_all();
    done_.wait(lock, [this] { return remaining_ == 0; });
    job_ = nullptr;
  }

  ~WorkerPool() {
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    start_.notify_all();
    for (auto& t : threads_) t.join();
  }

 private:
  WorkerPool() = default;

  void serve(int index) {
    std::uint64_t seen = 0;
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      seen = generation_;  // a thread started for the current launch takes part in it
      if (index < active_ && remaining_ > 0) --seen;
    }
    for (;;) {
      const std::function<void(int)>* job = nullptr;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        start_.wait(lock, [&] { return stop_ || generation_ != seen; });
        if (stop_) return;
        seen = generation_;
        if (index >= active_) continue;
        job = job_;
      }
      (*job)(index);
      const std::lock_guard<std::mutex> lock(mutex_);
      if (--remaining_ == 0) done_.notify_one();
    }
  }

  std::mutex mutex_;
  std::condition_variable start_, done_;
  std::vector<std::thread> threads_;
  const std::function<void(int)>* job_ = nullptr;
  std::uint64_t generation_ = 0;
  int active_ = 0, remaining_ = 0;
  bool stop_ = false;
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
        exited_(std::make_unique<std::atomic<bool>[]>(std::size_t(threads_))),
        next_block_(threads_, Advance{this}) {}

  // Runs every block; returns the first error (empty when none).
  // Concurrently: one OS thread per CUDA thread of a block, blocks in order.
  std::string run() {
    WorkerPool::instance().run(threads_, [this](int t) { work(t); });
    return error_;
  }

  // Sequentially, on the calling thread: every thread of every block in turn. Only for kernels
  // that a concurrent launch showed to use no barrier or shuffle (the threads of a block then
  // cannot observe each other's order); one that does anyway is stopped and reported.
  std::string run_sequentially() {
    sequential_ = true;
    current_run = this;
    block_dims = uint3{block_.x, block_.y, block_.z};
    grid_dims = uint3{grid_.x, grid_.y, grid_.z};
    for (std::int64_t b = 0; b < blocks_ && error_.empty(); ++b) {
      block_idx = block_coordinates(b);
      for (int t = 0; t < threads_; ++t) {
        current_thread = t;
        thread_idx = thread_coordinates(t);
        call_body();
      }
    }
    current_run = nullptr;
    return error_;
  }

  // Whether a thread waited at a barrier or shuffled (then the kernel needs the concurrent run).
  bool synchronized() const { return synchronized_.load(); }

  void syncthreads() {
    if (sequential_) stop_sequential("__syncthreads");
    synchronized_.store(true, std::memory_order_relaxed);
    block_barrier_->arrive_and_wait();
  }

  // Warp-synchronous exchange: every lane that has not exited must take part (mask covering
  // all of them: partial-mask shuffles are not emulated, and are reported), and all must be at
  // the same shuffle (call site and lane mask), which the second check verifies.
  std::uint64_t shuffle_xor(unsigned mask, std::uint64_t bits, int lane_mask, unsigned site) {
    if (sequential_) stop_sequential("a warp shuffle");
    synchronized_.store(true, std::memory_order_relaxed);
    const int t = current_thread, lane = t % kWarp, warp = t / kWarp;
    const int first = warp * kWarp, lanes = std::min(kWarp, threads_ - first);
    for (int l = 0; l < lanes; ++l)
      if (((mask >> l) & 1u) == 0 &&
          !exited_[std::size_t(first + l)].load(std::memory_order_relaxed)) {
        fail("lane " + std::to_string(lane) + " shuffles with mask " + hex(mask) +
             ", which omits live lane " + std::to_string(l) +
             " (partial-mask shuffles are not emulated)");
        return bits;
      }
    slots_[std::size_t(t)] = bits;
    sites_[std::size_t(t)] = Site{site, lane_mask, mask};
    warp_barriers_[std::size_t(warp)].arrive_and_wait();  // every live lane has written its value
    const int src_lane = lane ^ lane_mask, src = first + src_lane;
    std::uint64_t result = bits;
    if (lane_mask < 0 || src_lane >= lanes || ((mask >> src_lane) & 1u) == 0)
      fail("lane " + std::to_string(lane) + " shuffles with lane " + std::to_string(src_lane) +
           ", outside the warp or the mask");
    else if (exited_[std::size_t(src)].load(std::memory_order_relaxed))
      fail("lane " + std::to_string(lane) + " of warp " + std::to_string(warp) +
           " shuffles with lane " + std::to_string(src_lane) + ", which has exited");
    else if (!(sites_[std::size_t(src)] == sites_[std::size_t(t)]))
      fail("lane " + std::to_string(lane) + " (shuffle at line " + std::to_string(site) + ", xor " +
           std::to_string(lane_mask) + ") meets lane " + std::to_string(src_lane) +
           " at a different shuffle (line " + std::to_string(sites_[std::size_t(src)].line) +
           ", xor " + std::to_string(sites_[std::size_t(src)].lane_mask) + ")");
    else
      result = slots_[std::size_t(src)];
    warp_barriers_[std::size_t(warp)]
        .arrive_and_wait();  // every lane has read before the next write
    return result;
  }

  void fail(const std::string& what) {
    const std::lock_guard<std::mutex> lock(error_mutex_);
    if (error_.empty())
      error_ = std::string(kernel_) + ", block (" + std::to_string(blockIdx.x) + ", " +
               std::to_string(blockIdx.y) + ", " + std::to_string(blockIdx.z) + "), thread " +
               std::to_string(current_thread) + ": " + what;
  }

 private:
  // Completion step of next_block_: runs once all threads have finished the previous block.
  struct Advance {
    GridRun* run;
    void operator()() noexcept { run->advance(); }
  };

  void advance() {
    if (block_index_ + 1 >= blocks_) {
      done_ = true;
      return;
    }
    ++block_index_;
    block_barrier_.emplace(threads_);
    warp_barriers_.clear();
    for (int w = 0; w * kWarp < threads_; ++w)
      warp_barriers_.emplace_back(std::min(kWarp, threads_ - w * kWarp));
    for (int t = 0; t < threads_; ++t)
      exited_[std::size_t(t)].store(false, std::memory_order_relaxed);
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

  void work(int t) {
    current_run = this;
    current_thread = t;
    thread_idx = thread_coordinates(t);
    block_dims = uint3{block_.x, block_.y, block_.z};
    grid_dims = uint3{grid_.x, grid_.y, grid_.z};
    for (;;) {
      next_block_.arrive_and_wait();
      if (done_) break;
      block_idx = block_coordinates(block_index_);
      call_body();
      // Returned: leave this block's barriers as an exited GPU thread does.
      exited_[std::size_t(t)].store(true, std::memory_order_relaxed);
      block_barrier_->arrive_and_drop();
      warp_barriers_[std::size_t(t / kWarp)].arrive_and_drop();
    }
    current_run = nullptr;
  }

  const char* kernel_;
  dim3 grid_;
  dim3 block_;
  const std::function<void()>& body_;
  int threads_;
  std::int64_t blocks_;
  std::int64_t block_index_ = -1;
  bool done_ = false;
  bool sequential_ = false;
  std::atomic<bool> synchronized_{false};
  struct Site {  // where a lane's shuffle was called, and how
    unsigned line = 0;
    int lane_mask = 0;
    unsigned mask = 0;
    bool operator==(const Site&) const = default;
  };
  std::vector<std::uint64_t> slots_;             // one shuffle value per thread
  std::vector<Site> sites_;                      // per thread: the shuffle its slot was written at
  std::unique_ptr<std::atomic<bool>[]> exited_;  // per thread, for the current block
  std::optional<std::barrier<>> block_barrier_;  // __syncthreads
  std::deque<std::barrier<>> warp_barriers_;     // the shuffles (a deque: barriers do not move)
  std::barrier<Advance> next_block_;
  std::mutex error_mutex_;
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
