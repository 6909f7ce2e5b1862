// The parts of communicator set-up that must know whether the CUDA backend and NCCL were built:
// which GPU a rank takes, and whether device collectives go through NCCL.
#include <cstdio>

#include "jem/communicator.hpp"
#include "jem/runtime.hpp"

namespace jem {

#if defined(JEM_HAVE_CUDA) && defined(JEM_HAVE_NCCL)
namespace cuda {
// cuda/nccl_communicator.cpp
std::unique_ptr<Communicator> make_nccl_communicator(Communicator& host, Backend& backend, double timeout_s);
}  // namespace cuda
bool built_with_nccl() { return true; }
#else
bool built_with_nccl() { return false; }
#endif

std::string device_for_rank(const std::string& device, const Communicator& host) {
  if (host.world() == 1 || (device != "auto" && device != "cuda")) return device;
  const auto gpus = cuda_devices();
  if (gpus.empty()) return device;  // make_backend reports it ("auto" falls back to the CPU)
  const int n = int(gpus.size());
  if (host.local_world() > n && host.local_rank() == 0)
    std::fprintf(stderr, "jem: %d ranks on this node share %d GPUs\n", host.local_world(), n);
  return "cuda:" + std::to_string(host.local_rank() % n);
}

std::unique_ptr<Communicator> make_device_communicator(Communicator& host, Backend& backend, const std::string& kind,
                                                       double timeout_s) {
  const bool cuda = backend.device() == Device::CUDA;
  JEM_CHECK(kind != "nccl" || cuda, "--comm nccl needs the CUDA backend (the run is on ", backend.name(), ")");
  const bool want_nccl = cuda && (kind == "nccl" || (kind == "auto" && host.world() > 1));
  if (!want_nccl) {
    // MPI moves host memory: a CUDA run over several ranks needs NCCL.
    JEM_CHECK(!cuda || host.world() == 1, "--comm ", kind, ": a CUDA run over ", host.world(),
              " ranks needs NCCL (--comm auto or nccl)");
    return nullptr;
  }
#if defined(JEM_HAVE_CUDA) && defined(JEM_HAVE_NCCL)
  return cuda::make_nccl_communicator(host, backend, timeout_s);
#else
  (void)timeout_s;
  JEM_FAIL("a CUDA run over ", host.world(), " ranks needs NCCL, and this jem was built without it (install ",
           "NCCL next to the CUDA toolkit and rebuild)");
#endif
}

}  // namespace jem
