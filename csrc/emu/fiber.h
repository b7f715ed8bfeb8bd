// fiber.h — stack regions and the context switch that run each CUDA thread as a fiber.
//
// A region is EMU_STACK_BYTES, aligned to its size: [ThreadCtx page][guard page][stack].
// The context switch saves callee-saved registers and the FP control words on the
// old stack and returns into the new one: hand-written on x86-64 (about 15 ns),
// ucontext elsewhere (a system call per switch).
#pragma once

#include <cstddef>
#include <cstdint>

namespace emu {

constexpr std::size_t kCtxBytes = 4096;
constexpr std::size_t kGuardBytes = 4096;

// Allocates one aligned region with its guard page; nullptr on failure.
char* allocate_region();
void free_region(char* region);

struct FiberContext;

// A resumable execution context: the scheduler's own, or a fiber's.
struct Fiber {
  void* sp = nullptr;        // saved stack pointer (x86-64 switch)
  void* uctx = nullptr;      // ucontext_t* on other platforms
};

using FiberEntry = void (*)(void* arg);

// Prepares `fiber` to start entry(arg) on the stack of `region` at its next resume,
// `offset` bytes below the region's top (fibers' stacks are staggered so that their
// frames do not all fall into the same cache sets).
void fiber_prepare(Fiber* fiber, char* region, FiberEntry entry, void* arg, std::size_t offset = 0);
// Saves the running context into `from` and resumes `to`.
void fiber_switch(Fiber* from, Fiber* to);
// Frees what fiber_prepare allocated (ucontext platforms).
void fiber_release(Fiber* fiber);

// ---- signals on a fiber (faults, preemption, the watchdog; see scheduler.cpp)
// The interrupted program counter and stack pointer of a signal's ucontext (0 where
// the platform is not supported).
uintptr_t context_pc(const void* ucontext);
uintptr_t context_sp(const void* ucontext);
// Makes the interrupted code, once the handler returns, call emu_preempt_entry() on
// its own stack and then go on exactly where it was (every register, the flags and
// the whole x87/SSE/AVX state saved around the call; the red zone is left alone).
// False where unsupported (not x86-64, or no XSAVE).
bool redirect_to_preempt(void* ucontext);
// Makes the interrupted code, once the handler returns, call entry() on the stack
// whose top is `stack_top` (16-aligned). The interrupted code is never resumed.
bool redirect_to_abandon(void* ucontext, void (*entry)(), char* stack_top);

}  // namespace emu
