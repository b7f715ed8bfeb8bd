// emu_hooks.h — the C ABI of memory-access hooks between the runtime (convnet._emu)
// and a kernel library built with them (check mode "profile": g++ -fsanitize=thread
// at the compile step, emu_profile.h forced in, linked WITHOUT libtsan).
//
// g++'s ThreadSanitizer pass puts a call before every load and store the optimised
// code makes (__tsan_read4(addr), __tsan_write16(addr), __tsan_atomic32_fetch_add,
// ...). emu_profile.h defines those functions inside the library: each drops the
// calling CUDA thread's own stack region (locals, spills: one xor and compare) and
// forwards everything else to the runtime, with the access's size, kind and the
// return address of the hook call (the instruction after the access site, which
// -g maps to file:line).
//
// This is separate from emu_api.h on purpose: libraries built without hooks, and
// the EmuApi table and its version, are untouched by it. The runtime finds a
// library's hooks with dlsym("emu_hooks_init"); a library without it has none.
#pragma once

#include <stdint.h>

#define EMU_HOOKS_VERSION 2

// `info` of an access: kind in the low byte, size in bytes above it.
enum EmuAccessKind {
  EMU_ACCESS_READ = 0,
  EMU_ACCESS_WRITE = 1,
  EMU_ACCESS_ATOMIC = 2,    // a read-modify-write, exchange or CAS (also atomic loads/stores)
  EMU_ACCESS_UNALIGNED = 4,  // flag: the compiler called an __tsan_unaligned_* hook
  EMU_ACCESS_FENCE = 8       // not an access: the thread executed a fence (__threadfence); addr null, size 0
};
#define EMU_ACCESS_INFO(size, kind) ((static_cast<uint32_t>(size) << 8) | static_cast<uint32_t>(kind))
#define EMU_ACCESS_SIZE(info) ((info) >> 8)
#define EMU_ACCESS_KIND(info) ((info) & 0xffu)

// Called for every access that is not to the calling thread's own stack, while the
// runtime has armed the library (EmuHookSlot::context non-null). `pc` is the hook's
// return address inside the kernel code.
typedef void (*EmuAccessFn)(void* context, const void* addr, uint32_t info, const void* pc);

// One per loaded library instance, inside the library. The runtime arms it around
// the blocks it wants to see (context non-null) and disarms it after; an unarmed
// hook costs the stack test and one load.
struct EmuHookSlot {
  void* context;
  EmuAccessFn access;
};

struct EmuHookImage {
  const char* start;  // the library's own image (code, data, bss): accesses there are
  const char* end;    // the runtime's table reads and the like, not kernel traffic
};

// What an instrumented library exports (C linkage):
//   int emu_hooks_init(EmuHookSlot** slot, EmuHookImage* image);   returns EMU_HOOKS_VERSION
