// emu_profile.h — forced into a kernel library built with memory-access hooks
// (check mode "profile": g++ -fsanitize=thread -include emu_profile.h, linked
// without libtsan). It defines, inside the library, every function g++'s
// ThreadSanitizer pass calls, so no sanitizer runtime is loaded:
//
//   __tsan_read{1,2,4,8,16}, __tsan_write*, __tsan_unaligned_*, the range forms:
//       drop accesses to the calling fiber's own stack region (one xor, one
//       compare), forward the rest to the runtime when it has armed this library;
//   __tsan_atomic{8,16,32,64}_*: perform the atomic operation (sequentially
//       consistent) and report it as an atomic access;
//   __tsan_init, __tsan_func_entry/exit, fences: nothing or the plain fence.
//
// Everything here is compiled without instrumentation (no_sanitize_thread), so the
// hooks do not call themselves. See emu_hooks.h for the ABI with the runtime.
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "emu_api.h"
#include "emu_hooks.h"

#define EMU_HOOK_FN extern "C" __attribute__((visibility("hidden"), no_sanitize_thread, used))
#define EMU_HOOK_INLINE static inline __attribute__((always_inline, no_sanitize_thread))

static EmuHookSlot emu_hook_slot = {nullptr, nullptr};

EMU_HOOK_INLINE uintptr_t emu_hook_sp() {
  uintptr_t sp;
#if defined(__x86_64__)
  __asm__ volatile("movq %%rsp, %0" : "=r"(sp));
#elif defined(__aarch64__)
  __asm__ volatile("mov %0, sp" : "=r"(sp));
#else
  sp = reinterpret_cast<uintptr_t>(__builtin_frame_address(0));
#endif
  return sp;
}

EMU_HOOK_INLINE void emu_hook_access(const void* addr, uint32_t info, const void* pc) {
  // The fiber's region is EMU_STACK_BYTES aligned: same region <=> equal high bits.
  if ((reinterpret_cast<uintptr_t>(addr) ^ emu_hook_sp()) < static_cast<uintptr_t>(EMU_STACK_BYTES)) return;
  void* context = __atomic_load_n(&emu_hook_slot.context, __ATOMIC_RELAXED);
  if (context) emu_hook_slot.access(context, addr, info, pc);
}

#define EMU_RA __builtin_return_address(0)
#define EMU_PLAIN_HOOKS(N)                                                                                    \
  EMU_HOOK_FN void __tsan_read##N(void* a) { emu_hook_access(a, EMU_ACCESS_INFO(N, EMU_ACCESS_READ), EMU_RA); } \
  EMU_HOOK_FN void __tsan_write##N(void* a) { emu_hook_access(a, EMU_ACCESS_INFO(N, EMU_ACCESS_WRITE), EMU_RA); } \
  EMU_HOOK_FN void __tsan_unaligned_read##N(void* a) {                                                        \
    emu_hook_access(a, EMU_ACCESS_INFO(N, EMU_ACCESS_READ | EMU_ACCESS_UNALIGNED), EMU_RA);                  \
  }                                                                                                           \
  EMU_HOOK_FN void __tsan_unaligned_write##N(void* a) {                                                       \
    emu_hook_access(a, EMU_ACCESS_INFO(N, EMU_ACCESS_WRITE | EMU_ACCESS_UNALIGNED), EMU_RA);                 \
  }                                                                                                           \
  EMU_HOOK_FN void __tsan_volatile_read##N(void* a) {                                                         \
    emu_hook_access(a, EMU_ACCESS_INFO(N, EMU_ACCESS_READ), EMU_RA);                                         \
  }                                                                                                           \
  EMU_HOOK_FN void __tsan_volatile_write##N(void* a) {                                                        \
    emu_hook_access(a, EMU_ACCESS_INFO(N, EMU_ACCESS_WRITE), EMU_RA);                                        \
  }
EMU_PLAIN_HOOKS(1)
EMU_PLAIN_HOOKS(2)
EMU_PLAIN_HOOKS(4)
EMU_PLAIN_HOOKS(8)
EMU_PLAIN_HOOKS(16)
#undef EMU_PLAIN_HOOKS

EMU_HOOK_FN void __tsan_read_range(void* a, unsigned long size) {
  if (size) emu_hook_access(a, EMU_ACCESS_INFO(size, EMU_ACCESS_READ), EMU_RA);
}
EMU_HOOK_FN void __tsan_write_range(void* a, unsigned long size) {
  if (size) emu_hook_access(a, EMU_ACCESS_INFO(size, EMU_ACCESS_WRITE), EMU_RA);
}
EMU_HOOK_FN void __tsan_init(void) {}
EMU_HOOK_FN void __tsan_func_entry(void*) {}
EMU_HOOK_FN void __tsan_func_exit(void) {}
EMU_HOOK_FN void __tsan_vptr_read(void**) {}
EMU_HOOK_FN void __tsan_vptr_update(void**, void*) {}
EMU_HOOK_FN void __tsan_atomic_thread_fence(int) {
  __atomic_thread_fence(__ATOMIC_SEQ_CST);
  void* context = __atomic_load_n(&emu_hook_slot.context, __ATOMIC_RELAXED);
  if (context) emu_hook_slot.access(context, nullptr, EMU_ACCESS_INFO(0, EMU_ACCESS_FENCE), EMU_RA);
}
EMU_HOOK_FN void __tsan_atomic_signal_fence(int) { __atomic_signal_fence(__ATOMIC_SEQ_CST); }

// memset, memcpy and memmove calls the compiler leaves in the kernel code (it turns
// zeroing and copying loops into them): defined here, hidden, so that they report
// their ranges like any access. Byte loops the compiler must not turn back into calls.
#define EMU_NO_PATTERNS __attribute__((optimize("no-tree-loop-distribute-patterns")))
EMU_HOOK_FN EMU_NO_PATTERNS void* memset(void* d, int v, size_t n) noexcept {
  if (n) emu_hook_access(d, EMU_ACCESS_INFO(n, EMU_ACCESS_WRITE), EMU_RA);
  volatile unsigned char* p = static_cast<unsigned char*>(d);
  for (size_t i = 0; i < n; ++i) p[i] = static_cast<unsigned char>(v);
  return d;
}
EMU_HOOK_FN EMU_NO_PATTERNS void* memmove(void* d, const void* s, size_t n) noexcept {
  if (n) {
    emu_hook_access(s, EMU_ACCESS_INFO(n, EMU_ACCESS_READ), EMU_RA);
    emu_hook_access(d, EMU_ACCESS_INFO(n, EMU_ACCESS_WRITE), EMU_RA);
  }
  volatile unsigned char* p = static_cast<unsigned char*>(d);
  const volatile unsigned char* q = static_cast<const unsigned char*>(s);
  if (p < q) {
    for (size_t i = 0; i < n; ++i) p[i] = q[i];
  } else {
    for (size_t i = n; i > 0; --i) p[i - 1] = q[i - 1];
  }
  return d;
}
EMU_HOOK_FN EMU_NO_PATTERNS void* memcpy(void* d, const void* s, size_t n) noexcept {
  if (n) {
    emu_hook_access(s, EMU_ACCESS_INFO(n, EMU_ACCESS_READ), EMU_RA);
    emu_hook_access(d, EMU_ACCESS_INFO(n, EMU_ACCESS_WRITE), EMU_RA);
  }
  volatile unsigned char* p = static_cast<unsigned char*>(d);
  const volatile unsigned char* q = static_cast<const unsigned char*>(s);
  for (size_t i = 0; i < n; ++i) p[i] = q[i];
  return d;
}
#undef EMU_NO_PATTERNS

// Atomics: the memory order argument is ignored (always sequentially consistent).
#define EMU_ATOMIC_INFO(T) EMU_ACCESS_INFO(sizeof(T), EMU_ACCESS_ATOMIC)
#define EMU_ATOMIC_RMW(B, T, OP)                                                        \
  EMU_HOOK_FN T __tsan_atomic##B##_##OP(volatile T* a, T v, int) {                      \
    emu_hook_access(const_cast<T*>(a), EMU_ATOMIC_INFO(T), EMU_RA);                      \
    return __atomic_##OP(a, v, __ATOMIC_SEQ_CST);                                       \
  }
#define EMU_ATOMIC_HOOKS(B, T)                                                                              \
  EMU_HOOK_FN T __tsan_atomic##B##_load(const volatile T* a, int) {                                         \
    emu_hook_access(const_cast<T*>(a), EMU_ATOMIC_INFO(T), EMU_RA);                                          \
    return __atomic_load_n(a, __ATOMIC_SEQ_CST);                                                            \
  }                                                                                                         \
  EMU_HOOK_FN void __tsan_atomic##B##_store(volatile T* a, T v, int) {                                      \
    emu_hook_access(const_cast<T*>(a), EMU_ATOMIC_INFO(T), EMU_RA);                                          \
    __atomic_store_n(a, v, __ATOMIC_SEQ_CST);                                                               \
  }                                                                                                         \
  EMU_HOOK_FN T __tsan_atomic##B##_exchange(volatile T* a, T v, int) {                                      \
    emu_hook_access(const_cast<T*>(a), EMU_ATOMIC_INFO(T), EMU_RA);                                          \
    return __atomic_exchange_n(a, v, __ATOMIC_SEQ_CST);                                                     \
  }                                                                                                         \
  EMU_ATOMIC_RMW(B, T, fetch_add)                                                                           \
  EMU_ATOMIC_RMW(B, T, fetch_sub)                                                                           \
  EMU_ATOMIC_RMW(B, T, fetch_and)                                                                           \
  EMU_ATOMIC_RMW(B, T, fetch_or)                                                                            \
  EMU_ATOMIC_RMW(B, T, fetch_xor)                                                                           \
  EMU_ATOMIC_RMW(B, T, fetch_nand)                                                                          \
  EMU_HOOK_FN int __tsan_atomic##B##_compare_exchange_strong(volatile T* a, T* c, T v, int, int) {          \
    emu_hook_access(const_cast<T*>(a), EMU_ATOMIC_INFO(T), EMU_RA);                                          \
    return __atomic_compare_exchange_n(a, c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                  \
  }                                                                                                         \
  EMU_HOOK_FN int __tsan_atomic##B##_compare_exchange_weak(volatile T* a, T* c, T v, int, int) {            \
    emu_hook_access(const_cast<T*>(a), EMU_ATOMIC_INFO(T), EMU_RA);                                          \
    return __atomic_compare_exchange_n(a, c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                  \
  }                                                                                                         \
  EMU_HOOK_FN T __tsan_atomic##B##_compare_exchange_val(volatile T* a, T c, T v, int, int) {                \
    emu_hook_access(const_cast<T*>(a), EMU_ATOMIC_INFO(T), EMU_RA);                                          \
    __atomic_compare_exchange_n(a, &c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                        \
    return c;                                                                                               \
  }
EMU_ATOMIC_HOOKS(8, uint8_t)
EMU_ATOMIC_HOOKS(16, uint16_t)
EMU_ATOMIC_HOOKS(32, uint32_t)
EMU_ATOMIC_HOOKS(64, uint64_t)
#undef EMU_ATOMIC_HOOKS
#undef EMU_ATOMIC_RMW
#undef EMU_ATOMIC_INFO

// The library's own image: reads of the EmuApi pointer, of constant tables and the
// like land here (static __shared__ arrays too, which the runtime tests first).
extern "C" const char __ehdr_start[] __attribute__((visibility("hidden")));
extern "C" const char _end[] __attribute__((visibility("hidden")));

extern "C" __attribute__((visibility("default"), no_sanitize_thread)) int emu_hooks_init(EmuHookSlot** slot,
                                                                                       EmuHookImage* image) {
  *slot = &emu_hook_slot;
  image->start = __ehdr_start;
  image->end = _end;
  return EMU_HOOKS_VERSION;
}

#undef EMU_RA
#undef EMU_HOOK_INLINE
#undef EMU_HOOK_FN
