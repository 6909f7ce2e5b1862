// Background preparation of upcoming batches into a ring of host buffers.
//
// Protocol (all counters under mutex_, counted in batches since construction):
//   the worker fills batch p = produced_ into slot p % depth once p < released_ + depth, i.e.
//   when that slot is neither waiting to be taken nor held by the consumer;
//   next() first releases the batch it returned last time, then waits for batch taken_.
// The slot being filled and the slot the consumer holds are always different, so the copying
// itself runs without the lock.
#include <utility>

#include "jem/data_pipeline.hpp"
#include "jem/error.hpp"

namespace jem {
namespace {

Prefetcher::Batch prototype_for(const std::vector<const BatchStream*>& streams) {
  JEM_CHECK(!streams.empty(), "Prefetcher: no batch streams");
  Prefetcher::Batch b;
  for (const BatchStream* s : streams) {
    JEM_CHECK(s != nullptr, "Prefetcher: null batch stream");
    b.x.emplace_back(std::size_t(s->batch()) * s->image_size());
    b.y.emplace_back(std::size_t(s->batch()));
  }
  return b;
}

}  // namespace

Prefetcher::Prefetcher(std::vector<const BatchStream*> streams, std::uint64_t first_iteration, int depth)
    : first_iteration_(first_iteration) {
  const Batch prototype = prototype_for(streams);
  fill_ = [streams = std::move(streams)](std::uint64_t iteration, Batch& out) {
    for (std::size_t s = 0; s < streams.size(); ++s) streams[s]->make_batch(iteration, out.x[s].data(), out.y[s].data());
  };
  start(prototype, depth);
}

Prefetcher::Prefetcher(FillFn fill, const Batch& prototype, std::uint64_t first_iteration, int depth)
    : fill_(std::move(fill)), first_iteration_(first_iteration) {
  JEM_CHECK(fill_, "Prefetcher: empty fill function");
  start(prototype, depth);
}

void Prefetcher::start(const Batch& prototype, int depth) {
  JEM_CHECK(depth >= 1, "Prefetcher: depth ", depth, " must be >= 1");
  slots_.assign(std::size_t(depth), prototype);  // every buffer allocated here, none later
  thread_ = std::thread(&Prefetcher::worker, this);
}

Prefetcher::~Prefetcher() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  cv_.notify_all();
  // A worker waiting for a free slot wakes up and leaves; one inside fill_ finishes that batch.
  if (thread_.joinable()) thread_.join();
}

void Prefetcher::worker() {
  const std::uint64_t depth = slots_.size();
  for (;;) {
    std::uint64_t p;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      cv_.wait(lock, [&] { return stop_ || produced_ < released_ + depth; });
      if (stop_) return;
      p = produced_;
    }
    Batch& slot = slots_[p % depth];
    try {
      slot.iteration = first_iteration_ + p;
      fill_(slot.iteration, slot);
    } catch (...) {
      // Handed to the consumer; the worker stops, since later batches are not wanted after a
      // failure.
      {
        std::lock_guard<std::mutex> lock(mutex_);
        error_ = std::current_exception();
      }
      cv_.notify_all();
      return;
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      ++produced_;
    }
    cv_.notify_all();
  }
}

const Prefetcher::Batch& Prefetcher::next() {
  std::unique_lock<std::mutex> lock(mutex_);
  if (taken_ > released_) {  // the batch returned last time is no longer used: its slot is free
    released_ = taken_;
    cv_.notify_all();
  }
  cv_.wait(lock, [&] { return produced_ > taken_ || error_; });
  // Batches finished before a failure are still delivered; the failure comes in their place.
  if (produced_ <= taken_) std::rethrow_exception(error_);
  return slots_[taken_++ % slots_.size()];
}

}  // namespace jem
