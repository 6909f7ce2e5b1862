// Overlapping the gradient all-reduce of data parallelism with the backward pass.
//
// The backward pass finishes the parameter gradients head first, and the flat gradient buffer is
// laid out stem first, so the finished part is always a suffix [first, n) that grows towards 0
// (WideResNet::set_grad_ready_hook). GradBuckets starts an all-reduce of that suffix's
// unreduced part as soon as it holds at least `bucket_floats` floats, and finish() reduces the
// rest and waits for them all. On a GPU the NCCL stream reduces the head's and the last stage's
// gradients while the compute stream works on the earlier stages; on CPUs MPI advances the
// buckets inside its calls. Every element is reduced exactly once, by the same elementwise sum,
// so the result is the one all-reduce of the whole buffer gives (to the last bit with 2 ranks;
// tested under mpirun). bucket_floats = 0: no buckets, one all-reduce in finish().
#pragma once

#include <cstddef>

#include "jem/communicator.hpp"

namespace jem {

class GradBuckets {
 public:
  // `grad`: the flat gradient buffer [n]. The communicator must outlive this.
  GradBuckets(Communicator& comm, const Tensor& grad, std::size_t bucket_floats);

  // Before each backward pass.
  void begin();
  // The model's hook: every gradient in [first, n) is final.
  void ready(std::size_t first);
  // After the backward pass: reduces what is left and waits for every bucket.
  void finish();
  // Buckets started in the last pass, finish()'s remainder included.
  int buckets() const { return buckets_; }

 private:
  void start(std::size_t begin, std::size_t end);

  Communicator& comm_;
  Tensor grad_;
  std::size_t n_, bucket_floats_;
  std::size_t reduced_from_;  // [reduced_from_, n) is started
  int buckets_ = 0;
};

// Floats per bucket for a bucket size in MiB (0: no buckets).
std::size_t bucket_floats_for_mib(double mib);

}  // namespace jem
