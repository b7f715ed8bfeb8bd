// emu_cp_async.h — cp.async with deferred completion on the CPU (issue 12, part 2).
// Included by cuda_emu.h; kernels reach it through kernels/cp_async.cuh.
//
//   cp.async.{ca,cg}.shared.global [dst], [src], N, src_bytes   emu_cp_async(dst, src, N, src_bytes, ...)
//   cp.async.commit_group                                       emu_cp_async_commit()
//   cp.async.wait_group n                                       emu_cp_async_wait(n, ...)
//   cp.async.wait_all                                           emu_cp_async_wait(0) after a commit
//
// What a GPU guarantees, and what emu therefore does: the copy's source is read at
// some time after the instruction issues (here: at once, so the race check sees the
// global read on the kernel's line), and its destination is written no later than
// the wait that covers its group — here: exactly at that wait, by the waiting thread
// (its line is the wait's). A read of the destination before the wait sees the old
// contents (and, under check="init", is an uninitialised read when nothing wrote the
// bytes before); another thread sees the data only after the wait and a barrier,
// which the race check enforces because the write is the waiting thread's. Bytes past
// src_bytes (0 <= src_bytes <= N) are zero-filled and not read (the predicated-off
// copy of a padding element reads nothing).
//
// Per thread, the pending copies live in the unused part of the thread's context page
// (fiber.h: the region starts with a 4 KiB page holding the runtime's ThreadCtx; the
// bytes from EMU_CP_ASYNC_OFFSET on are the kernel library's). emu_thunk clears them
// when the thread starts, so nothing carries over between threads or launches. The
// page is part of the thread's own stack region, which the checks and the profiler
// leave out: the queue is the copy engine's state, not memory the kernel touches.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstring>

#define EMU_CP_ASYNC_OFFSET 512u    // ThreadCtx (ids, worker, index) takes < 100 bytes
#define EMU_CP_ASYNC_GROUPS 32      // committed groups pending at once
#define EMU_CP_ASYNC_ENTRIES 140    // copies pending at once (per thread)

struct EmuCpAsyncEntry {
  uint64_t dst_size;   // destination address | (bytes << 56)
  unsigned char data[16];
};
struct EmuCpAsyncQueue {
  uint32_t count;                      // entries pending (committed or not)
  uint32_t groups;                     // committed groups pending
  uint32_t group_end[EMU_CP_ASYNC_GROUPS];  // entries in groups 0..i (oldest first)
  EmuCpAsyncEntry entry[EMU_CP_ASYNC_ENTRIES];
};
static_assert(EMU_CP_ASYNC_OFFSET + sizeof(EmuCpAsyncQueue) <= 4096, "the queue must fit the context page");

static inline EmuCpAsyncQueue* emu_cp_async_queue() {
  return reinterpret_cast<EmuCpAsyncQueue*>(reinterpret_cast<uintptr_t>(emu_self()) + EMU_CP_ASYNC_OFFSET);
}
static inline void emu_cp_async_reset() {
  EmuCpAsyncQueue* q = emu_cp_async_queue();
  q->count = 0;
  q->groups = 0;
}

static inline void emu_cp_async_fail(const char* what, const char* file, int line) {
  emu_api->fault(what, file, line);
}

// Issues one copy of `bytes` (4, 8 or 16) bytes; the first src_bytes are read now.
static inline void emu_cp_async(void* dst, const void* src, int bytes, int src_bytes, const char* file, int line) {
  char what[200];
  if (bytes != 4 && bytes != 8 && bytes != 16) {
    std::snprintf(what, sizeof what, "cp.async: a copy is 4, 8 or 16 bytes, not %d", bytes);
    emu_cp_async_fail(what, file, line);
  }
  if (src_bytes < 0 || src_bytes > bytes) {
    std::snprintf(what, sizeof what, "cp.async: src-size %d is outside 0..%d", src_bytes, bytes);
    emu_cp_async_fail(what, file, line);
  }
  const uintptr_t d = reinterpret_cast<uintptr_t>(dst), s = reinterpret_cast<uintptr_t>(src);
  if ((d % bytes) != 0 || (src_bytes > 0 && (s % bytes) != 0)) {
    std::snprintf(what, sizeof what,
                  "misaligned address: cp.async of %d bytes needs %d-byte aligned addresses (shared %% %d = %d, "
                  "global %% %d = %d)", bytes, bytes, bytes, static_cast<int>(d % bytes), bytes,
                  static_cast<int>(s % bytes));
    emu_cp_async_fail(what, file, line);
  }
  EmuCpAsyncQueue* q = emu_cp_async_queue();
  if (q->count == EMU_CP_ASYNC_ENTRIES) {
    std::snprintf(what, sizeof what, "cp.async: more than %d copies pending in one thread (the emulator's limit; "
                  "wait for older groups first)", EMU_CP_ASYNC_ENTRIES);
    emu_cp_async_fail(what, file, line);
  }
  EmuCpAsyncEntry& e = q->entry[q->count++];
  e.dst_size = static_cast<uint64_t>(d) | (static_cast<uint64_t>(bytes) << 56);
  std::memset(e.data, 0, sizeof e.data);
  // Typed reads, so that the checks and the profiler see one access of the copy's size.
  if (src_bytes == bytes) {
    if (bytes == 16) {
      const uint4 v = *static_cast<const uint4*>(src);
      std::memcpy(e.data, &v, 16);
    } else if (bytes == 8) {
      const uint2 v = *static_cast<const uint2*>(src);
      std::memcpy(e.data, &v, 8);
    } else {
      const uint32_t v = *static_cast<const uint32_t*>(src);
      std::memcpy(e.data, &v, 4);
    }
  } else {
    for (int i = 0; i < src_bytes; ++i) e.data[i] = static_cast<const unsigned char*>(src)[i];
  }
}

static inline void emu_cp_async_commit_at(const char* file, int line) {
  EmuCpAsyncQueue* q = emu_cp_async_queue();
  // An empty group counts too: wait_group n leaves the n most recent groups in commit
  // order pending, empty or not (pipelines commit empty groups at their tail for that).
  if (q->groups == EMU_CP_ASYNC_GROUPS) {
    char what[160];
    std::snprintf(what, sizeof what, "cp.async: more than %d committed groups pending in one thread (the emulator's "
                  "limit)", EMU_CP_ASYNC_GROUPS);
    emu_cp_async_fail(what, file, line);
  }
  q->group_end[q->groups++] = q->count;
}

// Completes every committed group but the newest `n`: their copies land now.
static inline void emu_cp_async_wait_at(int n, const char* file, int line) {
  (void)file;
  (void)line;
  EmuCpAsyncQueue* q = emu_cp_async_queue();
  if (n < 0) n = 0;
  if (q->groups <= static_cast<uint32_t>(n)) return;
  const uint32_t done_groups = q->groups - static_cast<uint32_t>(n);
  const uint32_t done = q->group_end[done_groups - 1];
  for (uint32_t i = 0; i < done; ++i) {
    const EmuCpAsyncEntry& e = q->entry[i];
    void* dst = reinterpret_cast<void*>(static_cast<uintptr_t>(e.dst_size & ((uint64_t(1) << 56) - 1)));
    const int bytes = static_cast<int>(e.dst_size >> 56);
    emu_proxy_written(dst, bytes);  // a generic-proxy write (emu_async_proxy.h)
    if (bytes == 16) {
      uint4 v;
      std::memcpy(&v, e.data, 16);
      *static_cast<uint4*>(dst) = v;
    } else if (bytes == 8) {
      uint2 v;
      std::memcpy(&v, e.data, 8);
      *static_cast<uint2*>(dst) = v;
    } else {
      uint32_t v;
      std::memcpy(&v, e.data, 4);
      *static_cast<uint32_t*>(dst) = v;
    }
  }
  std::memmove(q->entry, q->entry + done, (q->count - done) * sizeof(EmuCpAsyncEntry));
  q->count -= done;
  for (uint32_t g = done_groups; g < q->groups; ++g) q->group_end[g - done_groups] = q->group_end[g] - done;
  q->groups -= done_groups;
}

#define emu_cp_async_commit() emu_cp_async_commit_at(__FILE__, __LINE__)
#define emu_cp_async_wait(n) emu_cp_async_wait_at((n), __FILE__, __LINE__)
