// The NCCL communicator: device collectives of the CUDA backend on a dedicated stream,
// bootstrapped by the host (MPI) communicator, which also does the host collectives (it must
// outlive this one).
//
//   set-up   rank 0 creates the ncclUniqueId, the host communicator broadcasts it, every rank
//            joins with ncclCommInitRankConfig in non-blocking mode (so that a rank that never
//            arrives cannot hang the others: the join is polled against the timeout);
//   a call   the NCCL stream waits for the compute stream (event), runs the collective, and the
//            compute stream waits for it (event); the host then polls the completion event and
//            ncclCommGetAsyncError. An asynchronous error or the timeout aborts the communicator
//            (ncclCommAbort) and throws an error naming this rank; the caller ends the job.
// The host wait costs nothing in the trainer: it reads the gradient norm right after the
// all-reduce, which synchronises anyway.
#if defined(JEM_HAVE_NCCL)

#include <nccl.h>

#include <chrono>
#include <exception>
#include <thread>

#include "cuda_backend.hpp"
#include "cuda_check.hpp"
#include "jem/communicator.hpp"

namespace jem::cuda {

namespace {

using Clock = std::chrono::steady_clock;

ncclRedOp_t nccl_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::Sum:
      return ncclSum;
    case ReduceOp::Max:
      return ncclMax;
    case ReduceOp::Min:
      return ncclMin;
  }
  return ncclSum;
}

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(Communicator& host, CudaBackend& backend, double timeout_s)
      : host_(host), backend_(backend), timeout_s_(timeout_s) {
    JEM_CUDA_CHECK(cudaSetDevice(backend_.device_index()));
    ncclUniqueId id{};
    if (host_.rank() == 0) check(ncclGetUniqueId(&id), "ncclGetUniqueId");
    host_.broadcast_host(&id, sizeof id, 0);
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;  // returns at once; completion is polled below, against the timeout
    const ncclResult_t rc = ncclCommInitRankConfig(&comm_, host_.world(), id, host_.rank(), &config);
    if (rc != ncclInProgress) check(rc, "ncclCommInitRankConfig");
    wait_for_comm("ncclCommInitRankConfig");
    JEM_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    JEM_CUDA_CHECK(cudaEventCreateWithFlags(&ready_, cudaEventDisableTiming));
    JEM_CUDA_CHECK(cudaEventCreateWithFlags(&done_, cudaEventDisableTiming));
    int v = 0;
    ncclGetVersion(&v);
    version_ = std::to_string(v / 10000) + "." + std::to_string(v / 100 % 100) + "." + std::to_string(v % 100);
  }
  ~NcclCommunicator() override {
    if (comm_) {
      // Unwinding from an error: peers may be blocked in a collective with this rank. Else the
      // graceful end of a non-blocking communicator: finalize (polled, within the timeout), then
      // destroy; a finalize that fails or does not finish is an abort.
      if (failed_ || std::uncaught_exceptions() > 0 || !finalized())
        ncclCommAbort(comm_);
      else
        ncclCommDestroy(comm_);
    }
    if (done_) cudaEventDestroy(done_);
    if (ready_) cudaEventDestroy(ready_);
    if (stream_) cudaStreamDestroy(stream_);
  }

  int rank() const override { return host_.rank(); }
  int world() const override { return host_.world(); }
  int local_rank() const override { return host_.local_rank(); }
  int local_world() const override { return host_.local_world(); }
  std::string name() const override {
    return "NCCL " + version_ + " on cuda:" + std::to_string(backend_.device_index()) + ", " + std::to_string(world()) +
           " ranks";
  }

  void all_reduce(const Tensor& t, ReduceOp op) override {
    device_tensor(t, "all_reduce");
    begin();
    float* p = t.data<float>();
    launched(ncclAllReduce(p, p, std::size_t(t.numel()), ncclFloat32, nccl_op(op), comm_, stream_), "ncclAllReduce");
    end("ncclAllReduce");
  }
  // Gradient buckets: each starts after what the compute stream has queued so far (its part of
  // the gradient is final) and runs on the NCCL stream while the backward pass goes on; finish()
  // makes the compute stream wait for all of them and polls, like all_reduce().
  void all_reduce_start(const Tensor& t, ReduceOp op) override {
    device_tensor(t, "all_reduce_start");
    begin();
    float* p = t.data<float>();
    launched(ncclAllReduce(p, p, std::size_t(t.numel()), ncclFloat32, nccl_op(op), comm_, stream_), "ncclAllReduce");
    started_ = true;
  }
  void all_reduce_finish() override {
    if (!started_) return;
    started_ = false;
    end("ncclAllReduce of gradient buckets");
  }
  void broadcast(const Tensor& t, int root) override {
    device_tensor(t, "broadcast");
    begin();
    float* p = t.data<float>();
    launched(ncclBroadcast(p, p, std::size_t(t.numel()), ncclFloat32, root, comm_, stream_), "ncclBroadcast");
    end("ncclBroadcast");
  }

  void all_reduce_host(double* v, int n, ReduceOp op) override { host_.all_reduce_host(v, n, op); }
  void broadcast_host(void* d, std::size_t bytes, int root) override { host_.broadcast_host(d, bytes, root); }
  void all_gather_host(const float* s, std::size_t count, float* r) override { host_.all_gather_host(s, count, r); }
  void gather_host(const float* s, std::size_t count, float* r, int root) override {
    host_.gather_host(s, count, r, root);
  }
  void barrier() override { host_.barrier(); }
  void abort(const std::string& message, int code) override {
    if (comm_ && !failed_) {
      failed_ = true;
      ncclCommAbort(comm_);  // frees peers blocked in a collective with this rank
      comm_ = nullptr;
    }
    host_.abort(message, code);
  }

 private:
  void check(ncclResult_t rc, const char* what) {
    if (rc == ncclSuccess) return;
    fail(std::string(what) + ": " + ncclGetErrorString(rc));
  }
  [[noreturn]] void fail(const std::string& why) {
    if (comm_ && !failed_) ncclCommAbort(comm_);
    failed_ = true;
    comm_ = nullptr;
    JEM_FAIL("rank ", rank(), ": NCCL ", why, " (communicator aborted)");
  }
  void device_tensor(const Tensor& t, const char* op) {
    JEM_CHECK(!failed_, "rank ", rank(), ": NCCL ", op, " after the communicator was aborted");
    JEM_CHECK(t.defined() && t.dtype() == DType::F32 && t.device() == Device::CUDA, "rank ", rank(), ": NCCL ", op,
              " needs an F32 CUDA tensor");
  }
  // The NCCL stream starts after everything queued on the compute stream.
  void begin() {
    JEM_CUDA_CHECK(cudaEventRecord(ready_, backend_.stream()));
    JEM_CUDA_CHECK(cudaStreamWaitEvent(stream_, ready_, 0));
  }
  // A non-blocking communicator may answer ncclInProgress while it enqueues.
  void launched(ncclResult_t rc, const char* what) {
    if (rc == ncclInProgress)
      wait_for_comm(what);
    else
      check(rc, what);
  }
  // The compute stream continues after the collective; the host waits for it, watching for
  // asynchronous errors (a peer that died) and the timeout.
  void end(const char* what) {
    JEM_CUDA_CHECK(cudaEventRecord(done_, stream_));
    JEM_CUDA_CHECK(cudaStreamWaitEvent(backend_.stream(), done_, 0));
    const auto start = Clock::now();
    for (;;) {
      const cudaError_t q = cudaEventQuery(done_);
      if (q == cudaSuccess) return;
      if (q != cudaErrorNotReady) JEM_CUDA_CHECK(q);
      // "Not ready" is an answer, not an error; should the runtime also have put it in the
      // thread's last-error slot, the next kernel launch's check would report it.
      if (cudaPeekAtLastError() == cudaErrorNotReady) (void)cudaGetLastError();
      poll(what, start);
    }
  }
  // ncclCommFinalize, waited for without throwing (for the destructor).
  bool finalized() {
    ncclResult_t st = ncclCommFinalize(comm_);
    const auto start = Clock::now();
    while (st == ncclInProgress) {
      if (ncclCommGetAsyncError(comm_, &st) != ncclSuccess) return false;
      if (timeout_s_ > 0 && std::chrono::duration<double>(Clock::now() - start).count() > timeout_s_) return false;
      std::this_thread::yield();
    }
    return st == ncclSuccess;
  }
  void wait_for_comm(const char* what) {
    const auto start = Clock::now();
    for (;;) {
      ncclResult_t st = ncclSuccess;
      check(ncclCommGetAsyncError(comm_, &st), "ncclCommGetAsyncError");
      if (st == ncclSuccess) return;
      if (st != ncclInProgress) check(st, what);
      poll(what, start);
    }
  }
  void poll(const char* what, Clock::time_point start) {
    ncclResult_t st = ncclSuccess;
    check(ncclCommGetAsyncError(comm_, &st), "ncclCommGetAsyncError");
    if (st != ncclSuccess && st != ncclInProgress)
      fail(std::string(what) + ": asynchronous error " + ncclGetErrorString(st) + " (a peer died or failed?)");
    const double waited = std::chrono::duration<double>(Clock::now() - start).count();
    if (timeout_s_ > 0 && waited > timeout_s_)
      fail(std::string(what) + " timed out after " + std::to_string(int(waited)) +
           " s (another rank died, hung or failed; --comm_timeout sets the limit)");
    std::this_thread::yield();
  }

  Communicator& host_;
  CudaBackend& backend_;
  double timeout_s_;
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  cudaEvent_t ready_ = nullptr, done_ = nullptr;
  bool started_ = false;  // all_reduce_start() since the last all_reduce_finish()
  bool failed_ = false;
  std::string version_;
};

}  // namespace

std::unique_ptr<Communicator> make_nccl_communicator(Communicator& host, Backend& backend, double timeout_s) {
  auto* cb = dynamic_cast<CudaBackend*>(&backend);
  JEM_CHECK(cb != nullptr, "NCCL communicator: the backend is ", backend.name(), ", not CUDA");
  return std::make_unique<NcclCommunicator>(host, *cb, timeout_s);
}

}  // namespace jem::cuda

#endif  // JEM_HAVE_NCCL
