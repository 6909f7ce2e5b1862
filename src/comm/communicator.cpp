// The single-process communicator, the launcher's environment, and helpers shared by every
// implementation. The MPI one is in mpi_communicator.cpp, NCCL in cuda/nccl_communicator.cpp.
#include "jem/communicator.hpp"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace jem {

namespace {

class SingleCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int world() const override { return 1; }
  int local_rank() const override { return 0; }
  int local_world() const override { return 1; }
  std::string name() const override { return "single process"; }
  void all_reduce(const Tensor&, ReduceOp) override {}
  void broadcast(const Tensor&, int root) override { check_root(root); }
  void all_reduce_host(double*, int, ReduceOp) override {}
  void broadcast_host(void*, std::size_t, int root) override { check_root(root); }
  void all_gather_host(const float* send, std::size_t count, float* recv) override {
    if (count > 0 && recv != send) std::memmove(recv, send, count * sizeof(float));
  }
  void gather_host(const float* send, std::size_t count, float* recv, int root) override {
    check_root(root);
    all_gather_host(send, count, recv);
  }
  void barrier() override {}
  void abort(const std::string& message, int) override { std::fprintf(stderr, "%s\n", message.c_str()); }

 private:
  static void check_root(int root) { JEM_CHECK(root == 0, "collective with root ", root, " in a 1-process run"); }
};

// A positive integer from the environment, or -1 when unset; a malformed value is an error
// naming the variable (a launcher that sets garbage must not start 8 independent runs).
int env_int(const char* name) {
  const char* v = std::getenv(name);
  if (!v || !*v) return -1;
  char* end = nullptr;
  const long x = std::strtol(v, &end, 10);
  JEM_CHECK(end && *end == '\0' && x >= 0 && x < (1L << 30), "environment variable ", name, "='", v,
            "' is not a non-negative integer");
  return int(x);
}

}  // namespace

std::unique_ptr<Communicator> make_single_communicator() { return std::make_unique<SingleCommunicator>(); }

LaunchInfo launch_from_environment() {
  LaunchInfo l;
  auto take = [&](const char* launcher, const char* size, const char* rank, const char* local) {
    const int w = env_int(size);
    if (w < 1 || !l.launcher.empty()) return;
    l.launcher = launcher;
    l.world = w;
    l.rank = std::max(0, env_int(rank));
    l.local_rank = std::max(0, local ? env_int(local) : 0);
    JEM_CHECK(l.rank < l.world, "environment: ", rank, " = ", l.rank, " is not below ", size, " = ", l.world);
  };
  take("Open MPI", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_LOCAL_RANK");
  take("PMI", "PMI_SIZE", "PMI_RANK", "MPI_LOCALRANKID");
  // Inside an sbatch script SLURM_NTASKS is the job's task count but jem runs once; only a job
  // step started by srun (SLURM_STEP_ID set) has one process per task.
  if (std::getenv("SLURM_STEP_ID")) take("Slurm", "SLURM_STEP_NUM_TASKS", "SLURM_PROCID", "SLURM_LOCALID");
  return l;
}

std::string broadcast_string(Communicator& comm, const std::string& s, int root) {
  std::uint64_t n = s.size();
  comm.broadcast_host(&n, sizeof n, root);
  std::string out = comm.rank() == root ? s : std::string(std::size_t(n), '\0');
  if (n > 0) comm.broadcast_host(out.data(), std::size_t(n), root);
  return out;
}

RowRange split_rows(int total, int world, int rank) {
  JEM_CHECK(world >= 1 && rank >= 0 && rank < world && total >= 0, "split_rows(", total, ", ", world, ", ", rank, ")");
  const int q = total / world, rem = total % world;
  RowRange r;
  r.begin = rank * q + std::min(rank, rem);
  r.end = r.begin + q + (rank < rem ? 1 : 0);
  return r;
}

#ifndef JEM_HAVE_MPI
bool built_with_mpi() { return false; }
std::unique_ptr<Communicator> make_mpi_communicator(double) {
  JEM_FAIL("this jem was built without MPI (JEM_MPI=OFF or no MPI found): rebuild with libopenmpi-dev installed");
}
#endif

std::unique_ptr<Communicator> make_host_communicator(const std::string& kind, double timeout_s) {
  JEM_CHECK(kind == "auto" || kind == "none" || kind == "mpi" || kind == "nccl", "--comm '", kind,
            "': expected auto, none, mpi or nccl");
  const LaunchInfo l = launch_from_environment();
  if (kind == "none") {
    JEM_CHECK(l.world == 1, "--comm none, but ", l.launcher, " started ", l.world, " processes: they would train ",
              l.world, " independent copies into one run directory");
    return make_single_communicator();
  }
  if (kind == "auto" && l.world == 1) return make_single_communicator();
  // One process through the NCCL path needs no MPI: its ncclUniqueId has nobody to go to. Not
  // started by a launcher, it must not start MPI either (a singleton MPI_Init needs Open MPI's
  // whole installation, which a GPU machine running a carried build may not have).
  if (kind == "nccl" && l.world == 1 && (l.launcher.empty() || !built_with_mpi())) return make_single_communicator();
  if (!built_with_mpi()) {
    JEM_CHECK(l.world == 1, l.launcher, " started ", l.world, " processes, but this jem was built without MPI ",
              "(JEM_MPI=OFF or no MPI found): rebuild with libopenmpi-dev installed, or start one process");
    JEM_FAIL("--comm ", kind, ": this jem was built without MPI (JEM_MPI=OFF or no MPI found)");
  }
  return make_mpi_communicator(timeout_s);
}

}  // namespace jem
