// Fibers for the grid runner (cuda_emulation.cpp): each emulated CUDA thread of a block runs on
// its own stack, on the launching OS thread, and hands control back to the runner when it waits
// at a barrier or a shuffle, or returns. A switch costs a few nanoseconds (x86-64: six registers
// and the floating-point control words; elsewhere, and in builds for CET shadow stacks,
// ucontext's swapcontext, which also saves the signal mask: a system call), where a barrier over
// 256 OS threads on 2 cores cost the kernel's scheduler a round of 256 context switches.
//
// In the AddressSanitizer build every switch is announced to it
// (__sanitizer_start_switch_fiber / __sanitizer_finish_switch_fiber), so that it knows which
// stack is running (an exception thrown in a kernel unwinds a fiber's stack). ThreadSanitizer is
// not told: scripts/tsan-check.sh does not run the emulation.
#pragma once

#include <cstddef>
#include <memory>

namespace jem::emu {

// One fiber's stack: mapped on first use (pages are committed as they are touched), with an
// inaccessible guard page below it, so that an overflow faults instead of writing into the
// neighbouring stack.
class FiberStack {
 public:
  explicit FiberStack(std::size_t bytes);
  ~FiberStack();
  FiberStack(const FiberStack&) = delete;
  FiberStack& operator=(const FiberStack&) = delete;

  char* bottom() const { return base_ + guard_; }  // lowest usable address
  std::size_t size() const { return size_; }

 private:
  char* base_ = nullptr;
  std::size_t guard_ = 0, size_ = 0;
};

// An execution context on a FiberStack, started, suspended and resumed by one host context (the
// OS thread's own stack) at a time.
class Fiber {
 public:
  using Entry = void (*)(void*);

  Fiber();
  ~Fiber();
  Fiber(const Fiber&) = delete;
  Fiber& operator=(const Fiber&) = delete;

  // Makes the next resume() run entry(arg) from the top of `stack`. Whatever the fiber ran
  // before is abandoned. `entry` must not return: it ends with finish().
  void start(FiberStack& stack, Entry entry, void* arg);
  // On the host: runs the fiber until it suspends or finishes.
  void resume();
  // On the fiber: back to the host, whose resume() returns; returns at the next resume().
  void suspend();
  // On the fiber, its work done: back to the host for good (until the next start()).
  [[noreturn]] void finish();

  struct State;  // the platform's saved registers (fiber.cpp)

 private:
  std::unique_ptr<State> s_;
};

}  // namespace jem::emu
