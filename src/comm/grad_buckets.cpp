#include "jem/grad_buckets.hpp"

#include <cmath>

#include "jem/error.hpp"

namespace jem {

GradBuckets::GradBuckets(Communicator& comm, const Tensor& grad, std::size_t bucket_floats)
    : comm_(comm), grad_(grad), n_(std::size_t(grad.numel())), bucket_floats_(bucket_floats), reduced_from_(n_) {
  JEM_CHECK(grad.shape().rank() == 1, "gradient buckets need the flat gradient buffer, got ", grad.shape().str());
}

void GradBuckets::begin() {
  reduced_from_ = n_;
  buckets_ = 0;
}

void GradBuckets::ready(std::size_t first) {
  JEM_CHECK(first <= reduced_from_, "gradient buckets: gradients from ", first, " reported final after those from ",
            reduced_from_, " were (the layout must be stem first, the backward head first)");
  if (bucket_floats_ == 0 || reduced_from_ - first < bucket_floats_) return;
  start(first, reduced_from_);
}

void GradBuckets::finish() {
  if (reduced_from_ > 0) start(0, reduced_from_);
  comm_.all_reduce_finish();
}

void GradBuckets::start(std::size_t begin, std::size_t end) {
  comm_.all_reduce_start(grad_.slice(std::int64_t(begin), std::int64_t(end)), ReduceOp::Sum);
  reduced_from_ = begin;
  ++buckets_;
}

std::size_t bucket_floats_for_mib(double mib) {
  return mib > 0 ? std::size_t(std::ceil(mib * 1024.0 * 1024.0 / sizeof(float))) : 0;
}

}  // namespace jem
