// fiber.cpp — stack regions and the context switch (see fiber.h).
#include "fiber.h"

#include <sys/mman.h>

#include <cstdint>

#include "emu_api.h"

#if defined(__x86_64__) && !defined(EMU_FORCE_UCONTEXT)
extern "C" void emu_fiber_switch(void** save_sp, void* load_sp);
extern "C" void emu_fiber_trampoline();
// rdi = where to save the current stack pointer, rsi = the stack pointer to resume.
// A fresh fiber's stack holds: control words, r15..rbp (r12 = arg, r13 = entry), and
// the trampoline as return address; the trampoline calls entry(arg).
__asm__(
    ".text\n"
    ".p2align 4\n"
    ".globl emu_fiber_switch\n"
    ".hidden emu_fiber_switch\n"
    ".type emu_fiber_switch,@function\n"
    "emu_fiber_switch:\n"
    "  pushq %rbp\n"
    "  pushq %rbx\n"
    "  pushq %r12\n"
    "  pushq %r13\n"
    "  pushq %r14\n"
    "  pushq %r15\n"
    "  subq $8, %rsp\n"
    "  stmxcsr (%rsp)\n"
    "  fnstcw 4(%rsp)\n"
    "  movq %rsp, (%rdi)\n"
    "  movq %rsi, %rsp\n"
    "  ldmxcsr (%rsp)\n"
    "  fldcw 4(%rsp)\n"
    "  addq $8, %rsp\n"
    "  popq %r15\n"
    "  popq %r14\n"
    "  popq %r13\n"
    "  popq %r12\n"
    "  popq %rbx\n"
    "  popq %rbp\n"
    "  ret\n"
    ".size emu_fiber_switch, .-emu_fiber_switch\n"
    ".p2align 4\n"
    ".globl emu_fiber_trampoline\n"
    ".hidden emu_fiber_trampoline\n"
    ".type emu_fiber_trampoline,@function\n"
    "emu_fiber_trampoline:\n"
    "  movq %r12, %rdi\n"
    "  callq *%r13\n"
    "  ud2\n"
    ".size emu_fiber_trampoline, .-emu_fiber_trampoline\n");
#else
#include <ucontext.h>
#endif

namespace emu {

char* allocate_region() {
  const std::size_t size = EMU_STACK_BYTES;
  void* raw = mmap(nullptr, 2 * size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (raw == MAP_FAILED) return nullptr;
  uintptr_t start = reinterpret_cast<uintptr_t>(raw);
  uintptr_t aligned = (start + size - 1) & ~static_cast<uintptr_t>(size - 1);
  if (aligned > start) munmap(raw, aligned - start);
  uintptr_t end = start + 2 * size;
  if (end > aligned + size) munmap(reinterpret_cast<void*>(aligned + size), end - (aligned + size));
  char* region = reinterpret_cast<char*>(aligned);
  mprotect(region + kCtxBytes, kGuardBytes, PROT_NONE);
  return region;
}

void free_region(char* region) { munmap(region, EMU_STACK_BYTES); }

#if defined(__x86_64__) && !defined(EMU_FORCE_UCONTEXT)

void fiber_prepare(Fiber* fiber, char* region, FiberEntry entry, void* arg, std::size_t offset) {
  uintptr_t top = (reinterpret_cast<uintptr_t>(region) + EMU_STACK_BYTES - offset) & ~static_cast<uintptr_t>(15);
  uint64_t* frame = reinterpret_cast<uint64_t*>(top - 80);  // 16-aligned; see the switch's pop order
  uint32_t mxcsr;
  uint16_t fcw;
  __asm__ volatile("stmxcsr %0" : "=m"(mxcsr));
  __asm__ volatile("fnstcw %0" : "=m"(fcw));
  frame[0] = static_cast<uint64_t>(mxcsr) | (static_cast<uint64_t>(fcw) << 32);
  frame[1] = 0;                                           // r15
  frame[2] = 0;                                           // r14
  frame[3] = reinterpret_cast<uint64_t>(entry);           // r13
  frame[4] = reinterpret_cast<uint64_t>(arg);             // r12
  frame[5] = 0;                                           // rbx
  frame[6] = 0;                                           // rbp
  frame[7] = reinterpret_cast<uint64_t>(&emu_fiber_trampoline);
  frame[8] = 0;
  frame[9] = 0;
  fiber->sp = frame;
}

void fiber_switch(Fiber* from, Fiber* to) { emu_fiber_switch(&from->sp, to->sp); }

void fiber_release(Fiber*) {}

#else

namespace {
struct Start {
  FiberEntry entry;
  void* arg;
};
void start_thunk(unsigned hi, unsigned lo) {
  Start* s = reinterpret_cast<Start*>((static_cast<uintptr_t>(hi) << 32) | lo);
  s->entry(s->arg);
}
}  // namespace

void fiber_prepare(Fiber* fiber, char* region, FiberEntry entry, void* arg, std::size_t offset) {
  if (!fiber->uctx) fiber->uctx = new ucontext_t();
  ucontext_t* uc = static_cast<ucontext_t*>(fiber->uctx);
  getcontext(uc);
  char* stack = region + kCtxBytes + kGuardBytes;
  uc->uc_stack.ss_sp = stack;
  uc->uc_stack.ss_size = EMU_STACK_BYTES - kCtxBytes - kGuardBytes - offset;
  uc->uc_link = nullptr;
  // The start record lives at the top of the fiber's own stack.
  Start* s = reinterpret_cast<Start*>(region + EMU_STACK_BYTES - offset - 64);
  s->entry = entry;
  s->arg = arg;
  uc->uc_stack.ss_size -= 64;
  uintptr_t p = reinterpret_cast<uintptr_t>(s);
  makecontext(uc, reinterpret_cast<void (*)()>(start_thunk), 2, static_cast<unsigned>(p >> 32),
              static_cast<unsigned>(p & 0xffffffffu));
}

void fiber_switch(Fiber* from, Fiber* to) {
  if (!from->uctx) from->uctx = new ucontext_t();
  swapcontext(static_cast<ucontext_t*>(from->uctx), static_cast<ucontext_t*>(to->uctx));
}

void fiber_release(Fiber* fiber) {
  delete static_cast<ucontext_t*>(fiber->uctx);
  fiber->uctx = nullptr;
}

#endif

}  // namespace emu

// ---- signals on a fiber: redirecting the interrupted code (see fiber.h)
#if defined(__x86_64__)
#include <cpuid.h>
#include <ucontext.h>

extern "C" void emu_preempt_entry();  // scheduler.cpp: hands the OS thread to another fiber
extern "C" void emu_preempt_thunk();
// Bytes of the XSAVE area for the state components the OS enabled (CPUID 0xD.0 EBX).
extern "C" __attribute__((visibility("hidden"))) uint32_t emu_xsave_bytes = 0;

// Entered with [rsp] = the interrupted rip and rsp = the interrupted rsp - 144 (below
// the 128-byte red zone): saves the flags, the caller-saved registers and the whole
// extended state (XSAVE, all enabled components), calls emu_preempt_entry on a
// 64-aligned stack, restores everything and returns with `ret $136`, which leaves
// rsp as it was when the signal came.
__asm__(
    ".text\n"
    ".p2align 4\n"
    ".globl emu_preempt_thunk\n"
    ".hidden emu_preempt_thunk\n"
    ".type emu_preempt_thunk,@function\n"
    "emu_preempt_thunk:\n"
    "  pushfq\n"
    "  cld\n"
    "  pushq %rax\n"
    "  pushq %rcx\n"
    "  pushq %rdx\n"
    "  pushq %rsi\n"
    "  pushq %rdi\n"
    "  pushq %r8\n"
    "  pushq %r9\n"
    "  pushq %r10\n"
    "  pushq %r11\n"
    "  pushq %rbx\n"
    "  movq %rsp, %rbx\n"
    "  movl emu_xsave_bytes(%rip), %eax\n"
    "  subq %rax, %rsp\n"
    "  andq $-64, %rsp\n"
    "  xorl %eax, %eax\n"
    "  movq %rax, 512(%rsp)\n"
    "  movq %rax, 520(%rsp)\n"
    "  movq %rax, 528(%rsp)\n"
    "  movq %rax, 536(%rsp)\n"
    "  movq %rax, 544(%rsp)\n"
    "  movq %rax, 552(%rsp)\n"
    "  movq %rax, 560(%rsp)\n"
    "  movq %rax, 568(%rsp)\n"
    "  movl $-1, %eax\n"
    "  movl $-1, %edx\n"
    "  xsave64 (%rsp)\n"
    "  callq emu_preempt_entry\n"
    "  movl $-1, %eax\n"
    "  movl $-1, %edx\n"
    "  xrstor64 (%rsp)\n"
    "  movq %rbx, %rsp\n"
    "  popq %rbx\n"
    "  popq %r11\n"
    "  popq %r10\n"
    "  popq %r9\n"
    "  popq %r8\n"
    "  popq %rdi\n"
    "  popq %rsi\n"
    "  popq %rdx\n"
    "  popq %rcx\n"
    "  popq %rax\n"
    "  popfq\n"
    "  retq $136\n"
    ".size emu_preempt_thunk, .-emu_preempt_thunk\n");

namespace emu {

namespace {
bool xsave_usable() {
  static const bool usable = [] {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27))) return false;  // OSXSAVE
    if (!__get_cpuid_count(0xd, 0, &a, &b, &c, &d) || b < 576) return false;
    emu_xsave_bytes = b;
    return true;
  }();
  return usable;
}
const bool g_xsave_probed = xsave_usable();  // probed at load, never inside a handler
}  // namespace

uintptr_t context_pc(const void* ucontext) {
  return static_cast<uintptr_t>(static_cast<const ucontext_t*>(ucontext)->uc_mcontext.gregs[REG_RIP]);
}
uintptr_t context_sp(const void* ucontext) {
  return static_cast<uintptr_t>(static_cast<const ucontext_t*>(ucontext)->uc_mcontext.gregs[REG_RSP]);
}

bool redirect_to_preempt(void* ucontext) {
  if (!g_xsave_probed) return false;
  greg_t* r = static_cast<ucontext_t*>(ucontext)->uc_mcontext.gregs;
  uintptr_t sp = static_cast<uintptr_t>(r[REG_RSP]) - 144;
  *reinterpret_cast<uintptr_t*>(sp) = static_cast<uintptr_t>(r[REG_RIP]);
  r[REG_RSP] = static_cast<greg_t>(sp);
  r[REG_RIP] = reinterpret_cast<greg_t>(&emu_preempt_thunk);
  return true;
}

bool redirect_to_abandon(void* ucontext, void (*entry)(), char* stack_top) {
  greg_t* r = static_cast<ucontext_t*>(ucontext)->uc_mcontext.gregs;
  uintptr_t top = reinterpret_cast<uintptr_t>(stack_top) & ~static_cast<uintptr_t>(15);
  r[REG_RSP] = static_cast<greg_t>(top - 8);  // as after a call
  r[REG_RBP] = 0;
  r[REG_RIP] = reinterpret_cast<greg_t>(entry);
  return true;
}

}  // namespace emu

#else

namespace emu {
uintptr_t context_pc(const void*) { return 0; }
uintptr_t context_sp(const void*) { return 0; }
bool redirect_to_preempt(void*) { return false; }
bool redirect_to_abandon(void*, void (*)(), char*) { return false; }
}  // namespace emu

#endif
