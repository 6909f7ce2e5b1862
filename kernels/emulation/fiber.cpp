// Fibers of fiber.hpp: the stacks, the switches, and their announcements to AddressSanitizer.
#include "fiber.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <new>
#include <stdexcept>
#include <string>

#if defined(__SANITIZE_ADDRESS__)
#define JEM_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define JEM_EMU_ASAN 1
#endif
#endif
#if defined(JEM_EMU_ASAN)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

// The x86-64 switch below, unless JEM_EMU_FIBERS_UCONTEXT asks for the portable one (which a
// test build uses to check it on x86-64 too), or the code is built for CET shadow stacks
// (-fcf-protection, the default of some distributions' compilers): a `ret` into another fiber
// would not match the shadow stack, which glibc's swapcontext keeps in step.
#if defined(__x86_64__) && !defined(JEM_EMU_FIBERS_UCONTEXT) && \
    !(defined(__CET__) && (__CET__ & 2))
#define JEM_EMU_FIBERS_X86_64 1
#else
#include <ucontext.h>
#endif

namespace jem::emu {

// ---- stacks ----------------------------------------------------------------------------------------

FiberStack::FiberStack(std::size_t bytes) {
  const std::size_t page = std::size_t(sysconf(_SC_PAGESIZE));
  guard_ = page;
  size_ = (bytes + page - 1) / page * page;
  void* p = mmap(nullptr, guard_ + size_, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
  if (p == MAP_FAILED)
    throw std::runtime_error("kernel emulation: cannot map a fiber stack of " +
                             std::to_string(guard_ + size_) + " bytes: " + std::strerror(errno));
  base_ = static_cast<char*>(p);
  mprotect(base_, guard_, PROT_NONE);  // the guard page; without it the stack still works
}

FiberStack::~FiberStack() {
  if (base_) munmap(base_, guard_ + size_);
}

// ---- switches --------------------------------------------------------------------------------------

#if defined(JEM_EMU_FIBERS_X86_64)
// jem_emu_swap(save, load): pushes the callee-saved registers (System V ABI: rbp, rbx, r12-r15,
// and the MXCSR and x87 control words), stores the stack pointer in *save, loads `load` as the
// stack pointer and pops the same from there, returning into the context that saved it.
// jem_emu_fiber_start is where a new fiber's first switch returns to: it calls r13(r12).
extern "C" void jem_emu_swap(void** save, void* load);
extern "C" void jem_emu_fiber_start();
asm(R"(
  .pushsection .text
  .globl jem_emu_swap
  .type jem_emu_swap, @function
  .p2align 4
jem_emu_swap:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size jem_emu_swap, .-jem_emu_swap

  .globl jem_emu_fiber_start
  .type jem_emu_fiber_start, @function
  .p2align 4
jem_emu_fiber_start:
  movq %r12, %rdi
  callq *%r13
  ud2
  .size jem_emu_fiber_start, .-jem_emu_fiber_start
  .popsection
)");
#endif

struct Fiber::State {
#if defined(JEM_EMU_FIBERS_X86_64)
  void* sp = nullptr;       // the fiber's saved stack pointer
  void* host_sp = nullptr;  // the host's, while the fiber runs
#else
  ucontext_t context{}, host{};
#endif
  Entry entry = nullptr;
  void* arg = nullptr;
  bool unfinished = false;  // started, and not yet finished: abandoned if started again
  // For AddressSanitizer: the fiber's stack, and the host's as it reported it at the first switch.
  const void* stack_bottom = nullptr;
  std::size_t stack_size = 0;
  const void* host_bottom = nullptr;
  std::size_t host_size = 0;
  void* host_fake_stack = nullptr;   // detect_stack_use_after_return's, saved across a switch
  void* fiber_fake_stack = nullptr;
};

namespace {

// What every fiber runs first: tells AddressSanitizer the switch is done (learning the host's
// stack), then the entry, which ends in finish().
void run_entry(Fiber::State* s) {
#if defined(JEM_EMU_ASAN)
  __sanitizer_finish_switch_fiber(nullptr, &s->host_bottom, &s->host_size);
#endif
  s->entry(s->arg);
  __builtin_trap();  // an entry must not return
}

#if !defined(JEM_EMU_FIBERS_X86_64)
// makecontext passes int arguments: the State pointer in two halves.
void ucontext_entry(unsigned hi, unsigned lo) {
  run_entry(reinterpret_cast<Fiber::State*>((std::uintptr_t(hi) << 32) | std::uintptr_t(lo)));
}
#endif

}  // namespace

Fiber::Fiber() : s_(std::make_unique<State>()) {}
Fiber::~Fiber() = default;

void Fiber::start(FiberStack& stack, Entry entry, void* arg) {
#if defined(JEM_EMU_ASAN)
  // An abandoned fiber's frames never returned, so their redzones are still poisoned.
  if (s_->unfinished) __asan_unpoison_memory_region(stack.bottom(), stack.size());
#endif
  s_->unfinished = true;
  s_->entry = entry;
  s_->arg = arg;
  s_->stack_bottom = stack.bottom();
  s_->stack_size = stack.size();
  s_->fiber_fake_stack = nullptr;
#if defined(JEM_EMU_FIBERS_X86_64)
  // The frame jem_emu_swap pops, from the new stack pointer up: the control words, r15, r14,
  // r13 = the function, r12 = its argument, rbx, rbp = 0 (the end of the frame chain), and the
  // return address. Below the top 16 bytes (a null return address for unwinders), it leaves the
  // stack pointer 16-byte aligned at jem_emu_fiber_start, whose call then enters run_entry as
  // the ABI wants (rsp + 8 aligned).
  auto top = reinterpret_cast<std::uintptr_t>(stack.bottom() + stack.size()) & ~std::uintptr_t(15);
  auto** frame = reinterpret_cast<void**>(top - 16 - 8 * 8);
  std::memset(frame, 0, 16 + 8 * 8);
  std::uint32_t mxcsr = 0;
  std::uint16_t fpcw = 0;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fpcw));
  std::memcpy(reinterpret_cast<char*>(frame), &mxcsr, 4);
  std::memcpy(reinterpret_cast<char*>(frame) + 4, &fpcw, 2);
  frame[3] = reinterpret_cast<void*>(&run_entry);
  frame[4] = s_.get();
  frame[7] = reinterpret_cast<void*>(&jem_emu_fiber_start);
  s_->sp = frame;
#else
  if (getcontext(&s_->context) != 0)
    throw std::runtime_error("kernel emulation: getcontext failed");
  s_->context.uc_stack.ss_sp = stack.bottom();
  s_->context.uc_stack.ss_size = stack.size();
  s_->context.uc_link = nullptr;
  const auto p = reinterpret_cast<std::uintptr_t>(s_.get());
  makecontext(&s_->context, reinterpret_cast<void (*)()>(&ucontext_entry), 2, unsigned(p >> 32),
              unsigned(p & 0xFFFFFFFFu));
#endif
}

void Fiber::resume() {
#if defined(JEM_EMU_ASAN)
  __sanitizer_start_switch_fiber(&s_->host_fake_stack, s_->stack_bottom, s_->stack_size);
#endif
#if defined(JEM_EMU_FIBERS_X86_64)
  jem_emu_swap(&s_->host_sp, s_->sp);
#else
  swapcontext(&s_->host, &s_->context);
#endif
#if defined(JEM_EMU_ASAN)
  __sanitizer_finish_switch_fiber(s_->host_fake_stack, nullptr, nullptr);
#endif
}

void Fiber::suspend() {
#if defined(JEM_EMU_ASAN)
  __sanitizer_start_switch_fiber(&s_->fiber_fake_stack, s_->host_bottom, s_->host_size);
#endif
#if defined(JEM_EMU_FIBERS_X86_64)
  jem_emu_swap(&s_->sp, s_->host_sp);
#else
  swapcontext(&s_->context, &s_->host);
#endif
#if defined(JEM_EMU_ASAN)
  __sanitizer_finish_switch_fiber(s_->fiber_fake_stack, &s_->host_bottom, &s_->host_size);
#endif
}

void Fiber::finish() {
  s_->unfinished = false;
#if defined(JEM_EMU_ASAN)
  // Leaving for good: a null save lets AddressSanitizer free the fiber's fake stack.
  __sanitizer_start_switch_fiber(nullptr, s_->host_bottom, s_->host_size);
#endif
#if defined(JEM_EMU_FIBERS_X86_64)
  jem_emu_swap(&s_->sp, s_->host_sp);
#else
  setcontext(&s_->host);
#endif
  __builtin_trap();  // never resumed without a new start()
}

}  // namespace jem::emu
