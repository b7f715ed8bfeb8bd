// emu_async_proxy.h — the generic-to-async proxy rule on the CPU (issue 12): what
// fence.proxy.async.shared::cta is for.
//
//   fence.proxy.async.shared::cta      emu_fence_proxy_async()
//
// PTX ISA, "Memory Consistency Model: proxies": wgmma.mma_async reads its shared-memory
// operands through the async proxy; a write made through the generic proxy (st.shared,
// and cp.async, whose copies land as generic writes) is visible to it only after the
// writing thread executes fence.proxy.async and the reading warpgroup is ordered after
// that fence (a barrier). Without the fence a GPU may hand the tensor core stale data.
//
// The model: every cp.async copy that lands in the block's dynamic shared memory
// (emu_cp_async.h) marks its 16-byte chunk with the landing thread and a serial number;
// a thread's fence records the serial of the moment. An async-proxy read of a chunk whose
// writer has not fenced since the chunk landed is a fault naming both (emu_wgmma.h).
// Serial numbers only grow, so marks left by earlier blocks or launches never mislead:
// their writers either fenced later, or the chunk is read stale (itself a bug). Plain
// st.shared writes are not tracked (the kernels feed wgmma through cp.async only); the
// race check still orders every read after its write. State lives in the library image
// (one copy per worker: a block runs all its threads on one OS thread), which the checks
// and the profiler leave out; the functions that touch it are not instrumented
// (EMU_PROXY_FN), so the random schedule, which switches threads at instrumented
// accesses, never splits an update of the serial number.
#pragma once

#include <cstdint>
#include <cstdio>

#define EMU_PROXY_DYNAMIC_BYTES (227u * 1024u)  // sm_90's most shared memory a block
#define EMU_PROXY_THREADS 1024

struct EmuProxyMark {
  uint32_t writer;  // linear thread index + 1 (0: never written by cp.async)
  uint64_t serial;
};
static EmuProxyMark emu_proxy_marks[EMU_PROXY_DYNAMIC_BYTES / 16];
static uint64_t emu_proxy_fenced[EMU_PROXY_THREADS];  // serial of each thread's last fence
static uint64_t emu_proxy_serial = 0;

#define EMU_PROXY_FN __attribute__((noinline, no_sanitize_thread)) static

static inline unsigned emu_proxy_thread() {
  const EmuThreadIds* ids = emu_self();
  return ids->thread_idx.x + ids->block_dim.x * (ids->thread_idx.y + ids->block_dim.y * ids->thread_idx.z);
}

// The chunk index of a dynamic shared address, or -1 outside the dynamic area.
static inline long emu_proxy_chunk(const void* p) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  const uintptr_t d = reinterpret_cast<uintptr_t>(emu_api->dynamic_shared());
  if (!d || a < d || a >= d + EMU_PROXY_DYNAMIC_BYTES) return -1;
  return static_cast<long>((a - d) / 16);
}

// A generic-proxy write of `bytes` at p by the calling thread (a landed cp.async).
EMU_PROXY_FN void emu_proxy_written(const void* p, int bytes) {
  const long first = emu_proxy_chunk(p);
  if (first < 0) return;
  const long last = emu_proxy_chunk(static_cast<const char*>(p) + bytes - 1);
  for (long c = first; c <= last && c >= 0; ++c) emu_proxy_marks[c] = {emu_proxy_thread() + 1, ++emu_proxy_serial};
}

EMU_PROXY_FN void emu_fence_proxy_async() {
  const unsigned t = emu_proxy_thread();
  if (t < EMU_PROXY_THREADS) emu_proxy_fenced[t] = ++emu_proxy_serial;
}

// Faults unless every chunk of [p, p + bytes) is visible to the async proxy.
EMU_PROXY_FN void emu_proxy_check_read(const void* p, int bytes, const char* what_reads, const char* file,
                                        int line) {
  const long first = emu_proxy_chunk(p);
  if (first < 0) return;
  const long last = emu_proxy_chunk(static_cast<const char*>(p) + bytes - 1);
  for (long c = first; c <= last && c >= 0; ++c) {
    const EmuProxyMark& m = emu_proxy_marks[c];
    if (m.writer == 0 || m.writer > EMU_PROXY_THREADS || emu_proxy_fenced[m.writer - 1] > m.serial) continue;
    char what[300];
    std::snprintf(what, sizeof what,
                  "%s reads shared memory (dynamic offset %ld) that thread %u wrote by cp.async without a "
                  "fence.proxy.async after it landed: the async proxy may not see the data",
                  what_reads, c * 16, m.writer - 1);
    emu_api->fault(what, file, line);
  }
}
