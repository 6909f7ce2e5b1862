// The MPI communicator (MPI_COMM_WORLD): the CPU backend's collectives and the host collectives
// of every multi-process run. Compiled only when the build found MPI (JEM_MPI).
//
// Failure behaviour. MPI errors are returned, not fatal (MPI_ERRORS_RETURN), and become a
// jem::Error naming the rank. A watchdog thread ends the whole job (MPI_Abort) when one
// collective waits longer than the timeout: a peer that died, hung or threw would otherwise keep
// this rank waiting forever.
#ifdef JEM_HAVE_MPI

#include <mpi.h>

#include <chrono>
#include <climits>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include "jem/communicator.hpp"

namespace jem {

namespace {

using Clock = std::chrono::steady_clock;

// Calls `what` and converts an MPI error into a jem::Error naming the rank.
void mpi_check(int rc, const char* what, int rank) {
  if (rc == MPI_SUCCESS) return;
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  JEM_FAIL("rank ", rank, ": ", what, " failed: ", std::string(msg, std::size_t(len)));
}

MPI_Op mpi_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::Sum:
      return MPI_SUM;
    case ReduceOp::Max:
      return MPI_MAX;
    case ReduceOp::Min:
      return MPI_MIN;
  }
  return MPI_SUM;
}

// Ends the job when a collective has been armed for longer than the timeout. The thread sleeps
// on a condition variable until a collective starts, then until its deadline or its end.
class Watchdog {
 public:
  Watchdog(double timeout_s, int rank, bool can_abort)
      : timeout_(std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(timeout_s))),
        timeout_s_(timeout_s),
        rank_(rank),
        can_abort_(can_abort) {
    if (timeout_s > 0) thread_ = std::thread(&Watchdog::run, this);
  }
  ~Watchdog() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    cv_.notify_one();
    if (thread_.joinable()) thread_.join();
  }
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

  void arm(const char* what) {
    if (!thread_.joinable()) return;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      what_ = what;
      deadline_ = Clock::now() + timeout_;
      armed_ = true;
      ++epoch_;
    }
    cv_.notify_one();
  }
  void disarm() {
    if (!thread_.joinable()) return;
    std::lock_guard<std::mutex> lock(mutex_);
    armed_ = false;  // the watchdog wakes at the old deadline at the latest and goes back to sleep
  }

 private:
  void run() {
    std::unique_lock<std::mutex> lock(mutex_);
    while (!stop_) {
      if (!armed_) {
        cv_.wait(lock, [&] { return stop_ || armed_; });
        continue;
      }
      const std::uint64_t epoch = epoch_;
      const Clock::time_point deadline = deadline_;
      if (cv_.wait_until(lock, deadline, [&] { return stop_ || !armed_ || epoch_ != epoch; })) continue;
      std::fprintf(stderr,
                   "jem: rank %d: error: %s timed out after %.0f s (another rank died, hung or failed; "
                   "--comm_timeout sets the limit); aborting the job\n",
                   rank_, what_, timeout_s_);
      std::fflush(stderr);
      // MPI_Abort may be called from this thread only at MPI_THREAD_MULTIPLE; otherwise this
      // process ends itself, and the launcher ends the others (a rank exited before finalising).
      if (can_abort_) MPI_Abort(MPI_COMM_WORLD, 3);
      std::_Exit(3);
    }
  }

  const Clock::duration timeout_;
  const double timeout_s_;
  const int rank_;
  const bool can_abort_;
  std::mutex mutex_;
  std::condition_variable cv_;
  bool stop_ = false, armed_ = false;
  std::uint64_t epoch_ = 0;
  Clock::time_point deadline_;
  const char* what_ = "";
  std::thread thread_;
};

// Arms the watchdog for the lifetime of one collective call.
class Armed {
 public:
  Armed(Watchdog& w, const char* what) : w_(w) { w_.arm(what); }
  ~Armed() { w_.disarm(); }
  Armed(const Armed&) = delete;
  Armed& operator=(const Armed&) = delete;

 private:
  Watchdog& w_;
};

int init_mpi(int* thread_level) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (initialized) {
    MPI_Query_thread(thread_level);
    return 0;
  }
  const int rc = MPI_Init_thread(nullptr, nullptr, MPI_THREAD_MULTIPLE, thread_level);
  JEM_CHECK(rc == MPI_SUCCESS, "MPI_Init_thread failed (error ", rc, ")");
  return 1;
}

class MpiCommunicator final : public Communicator {
 public:
  explicit MpiCommunicator(double timeout_s) {
    owns_mpi_ = init_mpi(&thread_level_) != 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &world_);
    mpi_check(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler", rank_);
    // The processes sharing this node's memory: the local rank picks the GPU.
    MPI_Comm node;
    mpi_check(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node),
              "MPI_Comm_split_type", rank_);
    MPI_Comm_rank(node, &local_rank_);
    MPI_Comm_size(node, &local_world_);
    MPI_Comm_free(&node);
    watchdog_ = std::make_unique<Watchdog>(timeout_s, rank_, thread_level_ >= MPI_THREAD_MULTIPLE);
    pending_.reserve(256);
  }
  ~MpiCommunicator() override {
    watchdog_.reset();
    // Unwinding from an error that nobody turned into abort(): MPI_Finalize would wait for the
    // other ranks forever, so end the job instead.
    if (std::uncaught_exceptions() > 0 && world_ > 1)
      abort("jem: rank " + std::to_string(rank_) + ": error: leaving after an error; ending the job", 1);
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (owns_mpi_ && !finalized) MPI_Finalize();
  }

  int rank() const override { return rank_; }
  int world() const override { return world_; }
  int local_rank() const override { return local_rank_; }
  int local_world() const override { return local_world_; }
  std::string name() const override { return "MPI, " + std::to_string(world_) + " ranks"; }

  void all_reduce(const Tensor& t, ReduceOp op) override {
    host_tensor(t, "all_reduce");
    Armed a(*watchdog_, "all_reduce of a tensor");
    float* p = t.data<float>();
    for (std::int64_t done = 0, n = t.numel(); done < n;) {
      const int c = int(std::min<std::int64_t>(n - done, INT_MAX));
      mpi_check(MPI_Allreduce(MPI_IN_PLACE, p + done, c, MPI_FLOAT, mpi_op(op), MPI_COMM_WORLD), "MPI_Allreduce",
                rank_);
      done += c;
    }
  }
  void all_reduce_start(const Tensor& t, ReduceOp op) override {
    host_tensor(t, "all_reduce_start");
    JEM_CHECK(t.numel() <= INT_MAX, "rank ", rank_, ": all_reduce_start of ", t.numel(),
              " floats: a bucket must be under 2^31 elements");
    MPI_Request req = MPI_REQUEST_NULL;
    mpi_check(MPI_Iallreduce(MPI_IN_PLACE, t.data<float>(), int(t.numel()), MPI_FLOAT, mpi_op(op), MPI_COMM_WORLD,
                             &req),
              "MPI_Iallreduce", rank_);
    pending_.push_back(req);  // capacity reserved at construction: no allocation per iteration
    // Without an asynchronous progress thread MPI advances a nonblocking collective only inside
    // MPI calls: give the earlier buckets a turn.
    int done = 0;
    mpi_check(MPI_Testall(int(pending_.size()), pending_.data(), &done, MPI_STATUSES_IGNORE), "MPI_Testall", rank_);
  }
  void all_reduce_finish() override {
    if (pending_.empty()) return;
    Armed a(*watchdog_, "all_reduce of gradient buckets");
    const int rc = MPI_Waitall(int(pending_.size()), pending_.data(), MPI_STATUSES_IGNORE);
    pending_.clear();
    mpi_check(rc, "MPI_Waitall", rank_);
  }
  void broadcast(const Tensor& t, int root) override {
    host_tensor(t, "broadcast");
    broadcast_host(t.data<float>(), t.bytes(), root);
  }
  void all_reduce_host(double* v, int n, ReduceOp op) override {
    Armed a(*watchdog_, "all_reduce");
    mpi_check(MPI_Allreduce(MPI_IN_PLACE, v, n, MPI_DOUBLE, mpi_op(op), MPI_COMM_WORLD), "MPI_Allreduce", rank_);
  }
  void broadcast_host(void* data, std::size_t bytes, int root) override {
    Armed a(*watchdog_, "broadcast");
    auto* p = static_cast<char*>(data);
    for (std::size_t done = 0; done < bytes;) {
      const int c = int(std::min<std::size_t>(bytes - done, INT_MAX));
      mpi_check(MPI_Bcast(p + done, c, MPI_BYTE, root, MPI_COMM_WORLD), "MPI_Bcast", rank_);
      done += std::size_t(c);
    }
  }
  void all_gather_host(const float* send, std::size_t count, float* recv) override {
    JEM_CHECK(count <= std::size_t(INT_MAX), "rank ", rank_, ": all_gather of ", count, " floats per rank");
    Armed a(*watchdog_, "all_gather");
    mpi_check(MPI_Allgather(send, int(count), MPI_FLOAT, recv, int(count), MPI_FLOAT, MPI_COMM_WORLD), "MPI_Allgather",
              rank_);
  }
  void gather_host(const float* send, std::size_t count, float* recv, int root) override {
    JEM_CHECK(count <= std::size_t(INT_MAX), "rank ", rank_, ": gather of ", count, " floats per rank");
    Armed a(*watchdog_, "gather");
    mpi_check(MPI_Gather(send, int(count), MPI_FLOAT, recv, int(count), MPI_FLOAT, root, MPI_COMM_WORLD), "MPI_Gather",
              rank_);
  }
  void barrier() override {
    Armed a(*watchdog_, "barrier");
    mpi_check(MPI_Barrier(MPI_COMM_WORLD), "MPI_Barrier", rank_);
  }
  void abort(const std::string& message, int code) override {
    std::fprintf(stderr, "%s\n", message.c_str());
    std::fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, code);
    std::_Exit(code);  // MPI_Abort does not return; this is for an MPI that does
  }

 private:
  void host_tensor(const Tensor& t, const char* op) const {
    JEM_CHECK(t.defined() && t.dtype() == DType::F32, "rank ", rank_, ": MPI ", op, " needs an F32 tensor");
    JEM_CHECK(t.device() == Device::CPU, "rank ", rank_, ": MPI ", op, " of a ", to_string(t.device()),
              " tensor: device tensors go through NCCL (--comm nccl or auto)");
  }

  bool owns_mpi_ = false;
  int thread_level_ = 0;
  int rank_ = 0, world_ = 1, local_rank_ = 0, local_world_ = 1;
  std::unique_ptr<Watchdog> watchdog_;
  std::vector<MPI_Request> pending_;  // all_reduce_start()'s, until all_reduce_finish()
};

}  // namespace

bool built_with_mpi() { return true; }

std::unique_ptr<Communicator> make_mpi_communicator(double timeout_s) {
  return std::make_unique<MpiCommunicator>(timeout_s);
}

}  // namespace jem

#endif  // JEM_HAVE_MPI
