// Collectives between the processes of a data-parallel run: one process per GPU (or per CPU
// node), started by `mpirun` or `srun`, across nodes.
//
// Three implementations:
//   single  one process alone: every collective is the identity (no MPI, no NCCL needed);
//   MPI     the CPU backend's collectives, and the host-side "control plane" of every run;
//   NCCL    the CUDA backend's device collectives (cuda/nccl_communicator.cpp), bootstrapped by
//           MPI: rank 0 creates the ncclUniqueId and broadcasts it, the local rank picks the GPU.
//
// Device collectives (all_reduce, broadcast) work in place on backend tensors: the flat
// gradient, the flat parameters. Host collectives move small control data (statistics, flags,
// checksums, a checkpoint path) and the replay-buffer shards of a checkpoint.
//
// Failure behaviour: a collective that waits longer than the configured timeout (a peer died,
// hung or threw) ends the whole job with a message naming this rank; a rank that catches an
// error calls abort(), which ends every rank. A run never hangs on a dead peer.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "jem/backend.hpp"

namespace jem {

enum class ReduceOp { Sum, Max, Min };

// What the launcher's environment says, read before MPI starts: OMPI_COMM_WORLD_SIZE/RANK/
// LOCAL_RANK (Open MPI), PMI_SIZE/PMI_RANK (MPICH, Intel MPI), SLURM_NTASKS/PROCID/LOCALID
// (srun; only inside a job step, i.e. with SLURM_STEP_ID set). world = 1 when none is set.
struct LaunchInfo {
  int world = 1, rank = 0, local_rank = 0;
  std::string launcher;  // "" when started alone, else "Open MPI", "PMI" or "Slurm"
};
LaunchInfo launch_from_environment();

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int world() const = 0;
  virtual int local_rank() const = 0;    // rank among the processes of this node
  virtual int local_world() const = 0;   // processes on this node
  virtual std::string name() const = 0;  // "MPI, 4 ranks", "NCCL 2.27.3, 8 ranks"

  // ---- device collectives, in place on backend tensors -----------------------------------------
  // Elementwise reduction over all ranks; every rank gets the same result.
  virtual void all_reduce(const Tensor& t, ReduceOp op) = 0;
  // Every rank gets root's values.
  virtual void broadcast(const Tensor& t, int root) = 0;
  // The same all-reduce in two halves, to overlap it with other work (the gradient buckets of
  // the backward pass, see grad_buckets.hpp): all_reduce_start() queues the reduction of `t` and
  // returns (MPI: MPI_Iallreduce; NCCL: on the communicator's stream, after the work queued on
  // the compute stream so far); `t` must not be touched until all_reduce_finish(), which waits
  // for every reduction started since the last finish (within the timeout) and orders what the
  // compute stream does next after them. The default reduces at once in start.
  virtual void all_reduce_start(const Tensor& t, ReduceOp op) { all_reduce(t, op); }
  virtual void all_reduce_finish() {}

  // ---- host collectives ------------------------------------------------------------------------
  virtual void all_reduce_host(double* values, int n, ReduceOp op) = 0;
  virtual void broadcast_host(void* data, std::size_t bytes, int root) = 0;
  // recv [world * count]: rank r's `count` values at r * count, on every rank.
  virtual void all_gather_host(const float* send, std::size_t count, float* recv) = 0;
  // The same, but only `root` receives (recv may be null elsewhere).
  virtual void gather_host(const float* send, std::size_t count, float* recv, int root) = 0;
  virtual void barrier() = 0;

  // Ends every process of the job with exit status `code` after printing `message` (one line,
  // which should name this rank) on stderr. Single process: returns (the caller exits normally).
  virtual void abort(const std::string& message, int code) = 0;
};

// One process alone: rank 0 of 1.
std::unique_ptr<Communicator> make_single_communicator();

// Whether this binary was built with MPI (JEM_MPI) and with NCCL.
bool built_with_mpi();
bool built_with_nccl();

// MPI over MPI_COMM_WORLD: initialises MPI (MPI_Init_thread, finalised by the destructor).
// timeout_s > 0: a collective that waits longer ends the job (watchdog). Throws when the binary
// has no MPI.
std::unique_ptr<Communicator> make_mpi_communicator(double timeout_s);

// The communicator of a run, chosen by `kind`:
//   "auto"  MPI when the launcher started several processes, else single;
//   "none"  single (an error when the launcher started several processes);
//   "mpi"   MPI even for one process;
//   "nccl"  as "mpi" here: the NCCL layer is added by make_device_communicator.
// A launch with several processes in a binary without MPI is an error that says so.
std::unique_ptr<Communicator> make_host_communicator(const std::string& kind, double timeout_s);

// The device string for this rank: "auto" or "cuda" become cuda:<local rank mod GPU count> when
// the job has several processes and the machine has GPUs; anything else is returned unchanged.
std::string device_for_rank(const std::string& device, const Communicator& host);

// The communicator for the device collectives: for a CUDA backend with kind "nccl", or "auto"
// and more than one rank, NCCL over the backend's device, which uses `host` for the host
// collectives (`host` must outlive it); otherwise nullptr: use `host` itself. Throws when NCCL is
// needed but unavailable.
std::unique_ptr<Communicator> make_device_communicator(Communicator& host, Backend& backend, const std::string& kind,
                                                       double timeout_s);

// Helpers over the host collectives.
// Root's string on every rank.
std::string broadcast_string(Communicator& comm, const std::string& s, int root);
// Rows [begin, end) of `total` that rank `rank` of `world` owns: an even split, the first
// total % world ranks one row more.
struct RowRange {
  int begin = 0, end = 0;
  int size() const { return end - begin; }
};
RowRange split_rows(int total, int world, int rank);

}  // namespace jem
