// emu_wgmma.h — Hopper's warpgroup-level MMA on the CPU (issue 12): the asynchronous
// tensor-core instructions of sm_90a, as kernels/wgmma.cuh issues them.
//
//   wgmma.fence.sync.aligned                                   emu_wgmma_fence()
//   wgmma.mma_async.sync.aligned.m64nNk8.f32.tf32.tf32 d, da, db, p, 1, 1
//   wgmma.mma_async.sync.aligned.m64nNk16.f32.bf16.bf16 d, da, db, p, 1, 1, 0, 0
//                                                              emu_wgmma(d, N, prec, da, db, p)
//   wgmma.commit_group.sync.aligned                            emu_wgmma_commit()
//   wgmma.wait_group.sync.aligned n                            emu_wgmma_wait(n)
//   a matrix descriptor (K-major, no swizzle)                  emu_wgmma_desc(p, lbo, sbo)
//
// PTX ISA 9.7.15 ("Asynchronous Warpgroup Level Matrix Multiply-Accumulate"):
// * A warpgroup is 4 consecutive warps (warp index / 4); all 128 threads execute each
//   instruction (.aligned), with the same descriptors. D (64 x N, FP32) is spread as
//   mma's C: warp w of the group holds rows 16w .. 16w + 15, lane (g = lane / 4,
//   t = lane % 4) element d[4i + 2e0 + e1] = D[16w + g + 8e0][8i + 2t + e1], i < N / 8.
// * A (64 x K) and B (N x K) are read from shared memory through 64-bit descriptors:
//   bits 0-13 the start address >> 4, 16-29 the leading dimension byte offset (LBO)
//   >> 4, 32-45 the stride dimension byte offset (SBO) >> 4, 62-63 the swizzle mode.
//   K-major without swizzle ("interleaved"), element (row, k) of a matrix of T = 16 /
//   sizeof(element) elements a 16-byte chunk is at
//       start + (row % 8) * 16 + (row / 8) * SBO + (k % T) * sizeof + (k / T) * LBO
//   (the canonical layout ((8,m),(T,2k)):((1T,SBO),(1,LBO))): 8 x 16-byte "core
//   matrices" of 128 contiguous bytes, LBO apart along k, SBO apart along the rows.
//   K is 8 (TF32) or 16 (BF16): two chunks a row. Only this layout is modelled; a
//   descriptor with a swizzle mode is a fault here.
// * mma_async only starts the product: D is written no later than the wgmma.wait_group
//   that covers its group (commit_group closes the thread's open group), and until then
//   neither the accumulators nor the shared operands may be touched. wgmma.fence must
//   order earlier register accesses before the first mma_async (PTX: before the first,
//   and between a register access and an mma_async using it; the emulator asks for one
//   after every wait, which is what the library's kernels and CUTLASS do each slice).
// * Shared operands are read through the async proxy: data written by cp.async needs
//   the writer's fence.proxy.async (emu_async_proxy.h) before the barrier.
//
// What the emulator does, per warp of the group (each warp computes its own 16 rows:
// no cross-warp meeting, so the race check's ordering is the kernel's own):
// * checks the rules above (fault: missing wgmma.fence, a block that is not whole
//   warpgroups, lanes that disagree on the operands, a descriptor outside the block's
//   dynamic shared memory, a swizzle mode, the async-proxy rule);
// * reads its share of the warpgroup's operand traffic as typed 16-byte reads (A: its
//   own 16 rows, B: a quarter of the chunks; 8 lanes one core matrix), so that the race,
//   init, bounds and profile builds see the group read A and B once, as the hardware does;
// * computes its lanes' results exactly as emu_mma.h: operands decoded as the tensor
//   core reads them (TF32: the top 19 bits; BF16 exact), products exact in FP32, each
//   result d = (((c + p0) + p1) + ...) over k ascending, one rounding an addition; c is
//   the accumulator as issued, or the pending result of an earlier in-flight mma_async
//   on the same registers (the hardware chains those), or 0 when p is false;
// * keeps the results pending, and writes them at the wait that covers the group, after
//   checking that the operands' bytes and the accumulators are as they were at issue
//   (a fault names the mma_async otherwise: a stage overwritten too early, an
//   accumulator read-modify-written in flight).
// Pending results and the staging area live in the library image (the register file,
// not memory: the checks and the profiler leave it out).
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstring>

#define EMU_WGMMA_MAX_N 256
#define EMU_WGMMA_PENDING 16  // mma_async in flight a thread (the emulator's limit)

struct EmuWgmmaOp {
  float* d;
  int count;  // accumulators: N / 2
  int prec;   // 0: TF32 (k8), 1: BF16 (k16)
  uint64_t da, db;
  uint64_t d_hash;   // what d must hold when this op completes
  uint64_t op_hash;  // this lane's operand bytes at issue
  const char* file;
  int line;
  float v[EMU_WGMMA_MAX_N / 2];
};
struct EmuWgmmaThread {
  int fenced;  // a wgmma.fence since the last wait (or the start)
  int count;   // ops in flight, oldest first
  int groups;  // committed groups among them
  int group_end[EMU_WGMMA_PENDING];
  EmuWgmmaOp op[EMU_WGMMA_PENDING];
};
static EmuWgmmaThread emu_wgmma_threads[EMU_PROXY_THREADS];
static uint64_t emu_wgmma_stage[32][32][3];  // per warp and lane: da, db, (N, prec, p)

static inline EmuWgmmaThread& emu_wgmma_self() { return emu_wgmma_threads[emu_proxy_thread() % EMU_PROXY_THREADS]; }

static inline void emu_wgmma_reset() {
  EmuWgmmaThread& st = emu_wgmma_self();
  st.fenced = 0;
  st.count = 0;
  st.groups = 0;
}

static inline void emu_wgmma_finish() {
  EmuWgmmaThread& st = emu_wgmma_self();
  if (st.count == 0) return;
  char what[200];
  std::snprintf(what, sizeof what, "the thread ended with %d wgmma.mma_async in flight (no wgmma.wait_group covers "
                "them)", st.count);
  emu_api->fault(what, st.op[0].file, st.op[0].line);
}

#define EMU_WGMMA_HASH0 14695981039346656037ull  // FNV-1a's offset basis
static inline uint64_t emu_wgmma_hash(uint64_t h, const void* p, std::size_t n) {
  const unsigned char* b = static_cast<const unsigned char*>(p);
  for (std::size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 1099511628211ull;
  return h;
}

// Reads that are not traffic: the tensor core's own view of bytes already read through
// the profiled reads below (not instrumented, so the checks and the profiler see each
// operand byte once).
__attribute__((noinline, no_sanitize_thread)) static void emu_wgmma_peek(void* dst, const void* src, std::size_t n) {
  std::memcpy(dst, src, n);
}

static inline uint64_t emu_wgmma_desc_at(const void* p, unsigned lbo, unsigned sbo, const char* file, int line) {
  char what[240];
  const long chunk = emu_proxy_chunk(p);
  if (chunk < 0 || reinterpret_cast<uintptr_t>(p) % 16 != 0) {
    std::snprintf(what, sizeof what, chunk < 0 ? "wgmma descriptor: the matrix at %p is not in the block's dynamic "
                  "shared memory (the emulator places descriptors there only)" : "misaligned address: a wgmma "
                  "matrix starts at %p, not 16-byte aligned", p);
    emu_api->fault(what, file, line);
  }
  if (lbo % 16 || sbo % 16 || lbo >= (1u << 18) || sbo >= (1u << 18)) {
    std::snprintf(what, sizeof what, "wgmma descriptor: LBO %u and SBO %u must be multiples of 16 below 2^18", lbo, sbo);
    emu_api->fault(what, file, line);
  }
  return static_cast<uint64_t>(chunk & 0x3fff) | (static_cast<uint64_t>((lbo >> 4) & 0x3fff) << 16) |
         (static_cast<uint64_t>((sbo >> 4) & 0x3fff) << 32);
}

// Byte address of element (row, k) of the K-major matrix of descriptor `desc`.
static inline const char* emu_wgmma_at(uint64_t desc, int prec, int row, int k) {
  const uintptr_t start = (desc & 0x3fff) << 4, lbo = ((desc >> 16) & 0x3fff) << 4, sbo = ((desc >> 32) & 0x3fff) << 4;
  const int size = prec ? 2 : 4, t = 16 / size;
  const char* base = static_cast<const char*>(emu_api->dynamic_shared());
  return base + start + (row % 8) * 16 + (row / 8) * sbo + (k % t) * size + (k / t) * lbo;
}

// The operand rows lane (g, t) of warp w needs for its results, as the tensor core reads
// them (not instrumented: the profiled reads below are the traffic): rows 16w + g + 8e0
// of A and rows 8i + 2t + e1 of B (D's columns), each row's K elements (two 16-byte
// chunks). They also make the hash that tells whether they changed in flight.
struct EmuWgmmaRows {
  unsigned char a[2][32];
  unsigned char b[EMU_WGMMA_MAX_N / 4][32];
};
static inline uint64_t emu_wgmma_gather(uint64_t da, uint64_t db, int prec, int n, int w, int g, int t,
                                        EmuWgmmaRows& rows) {
  const int chunk = prec ? 8 : 4;  // elements a chunk
  for (int e0 = 0; e0 < 2; ++e0)
    for (int c = 0; c < 2; ++c) emu_wgmma_peek(rows.a[e0] + 16 * c, emu_wgmma_at(da, prec, 16 * w + g + 8 * e0, c * chunk), 16);
  for (int j = 0; j < n / 4; ++j)
    for (int c = 0; c < 2; ++c)
      emu_wgmma_peek(rows.b[j] + 16 * c, emu_wgmma_at(db, prec, 8 * (j >> 1) + 2 * t + (j & 1), c * chunk), 16);
  return emu_wgmma_hash(emu_wgmma_hash(EMU_WGMMA_HASH0, rows.a, sizeof rows.a), rows.b, 32u * (n / 4));
}

// Element k of a gathered row, as the tensor core reads it (TF32: the top 19 bits).
static inline float emu_wgmma_value(const unsigned char* row, int prec, int k) {
  if (prec) {
    uint16_t h;
    std::memcpy(&h, row + 2 * k, 2);
    return emu_bf16_to_f32(h);
  }
  uint32_t b;
  std::memcpy(&b, row + 4 * k, 4);
  return emu_tf32_value(b);
}

// One profiled 16-byte read of chunk c (0 or 1) of row `row`, after the proxy check.
static inline void emu_wgmma_read_chunk(uint64_t desc, int prec, int row, int c, const char* file, int line) {
  const char* p = emu_wgmma_at(desc, prec, row, c * (prec ? 8 : 4));
  emu_proxy_check_read(p, 16, "wgmma.mma_async", file, line);
  const uint4 v = *reinterpret_cast<const uint4*>(p);
  __asm__ volatile("" ::"r"(v.x ^ v.y ^ v.z ^ v.w));
}

static inline void emu_wgmma_fence_at(const char* file, int line) {
  (void)emu_api->warp(EMU_WARP_SYNC, 0xffffffffu, 0, 0, 32, file, line);
  emu_wgmma_self().fenced = 1;
}

static inline void emu_wgmma_commit_at(const char* file, int line) {
  (void)emu_api->warp(EMU_WARP_SYNC, 0xffffffffu, 0, 0, 32, file, line);
  EmuWgmmaThread& st = emu_wgmma_self();
  if (st.groups == EMU_WGMMA_PENDING) emu_api->fault("wgmma: too many committed groups in flight", file, line);
  st.group_end[st.groups++] = st.count;
}

static inline void emu_wgmma_mma_at(float* d, int n, int prec, uint64_t da, uint64_t db, int scale_d,
                                    const char* file, int line) {
  char what[300];
  int warp;
  const int lane = emu_mma_lane_id(&warp);
  const EmuThreadIds* ids = emu_self();
  const unsigned threads = ids->block_dim.x * ids->block_dim.y * ids->block_dim.z;
  if (threads % 128 != 0) {
    std::snprintf(what, sizeof what, "wgmma: a warpgroup is 4 whole warps, and the block has %u threads", threads);
    emu_api->fault(what, file, line);
  }
  if (n < 8 || n > EMU_WGMMA_MAX_N || n % 8 != 0) {
    std::snprintf(what, sizeof what, "wgmma: N = %d is not a multiple of 8 in 8..%d", n, EMU_WGMMA_MAX_N);
    emu_api->fault(what, file, line);
  }
  EmuWgmmaThread& st = emu_wgmma_self();
  if (!st.fenced)
    emu_api->fault("wgmma.mma_async without a wgmma.fence since this thread's last wgmma.wait_group (or its "
                   "start): earlier accesses of its registers are not ordered before it", file, line);
  if (st.count == EMU_WGMMA_PENDING) {
    std::snprintf(what, sizeof what, "wgmma: more than %d mma_async in flight in one thread (the emulator's limit)",
                  EMU_WGMMA_PENDING);
    emu_api->fault(what, file, line);
  }
  // The warp's lanes must agree (.aligned; the descriptors are the warpgroup's).
  uint64_t* mine = emu_wgmma_stage[warp][lane];
  mine[0] = da;
  mine[1] = db;
  mine[2] = static_cast<uint64_t>(n) | (static_cast<uint64_t>(prec) << 16) | (static_cast<uint64_t>(scale_d != 0) << 24);
  (void)emu_api->warp(EMU_WARP_SYNC, 0xffffffffu, 0, 0, 32, file, line);
  for (int l = 0; l < 32; ++l)
    if (std::memcmp(emu_wgmma_stage[warp][l], emu_wgmma_stage[warp][0], sizeof mine[0] * 3) != 0) {
      std::snprintf(what, sizeof what, "wgmma.mma_async: lanes 0 and %d of warp %d disagree on the descriptors, N or "
                    "the scale of D", l, warp);
      emu_api->fault(what, file, line);
    }
  for (const uint64_t desc : {da, db}) {
    if ((desc >> 62) != 0) {
      std::snprintf(what, sizeof what, "wgmma descriptor %#llx: swizzle mode %d (the emulator models the "
                    "no-swizzle layout only)", static_cast<unsigned long long>(desc), static_cast<int>(desc >> 62));
      emu_api->fault(what, file, line);
    }
  }
  const int rows[2] = {64, n};
  const uint64_t descs[2] = {da, db};
  for (int m = 0; m < 2; ++m) {  // the last byte of each matrix must lie in dynamic shared memory
    const char* last = emu_wgmma_at(descs[m], prec, rows[m] - 1, prec ? 15 : 7) + (prec ? 1 : 3);
    const char* base = static_cast<const char*>(emu_api->dynamic_shared());
    if (last >= base + EMU_PROXY_DYNAMIC_BYTES) {
      std::snprintf(what, sizeof what, "wgmma.mma_async: matrix %c (descriptor %#llx) ends past the block's shared "
                    "memory", m ? 'B' : 'A', static_cast<unsigned long long>(descs[m]));
      emu_api->fault(what, file, line);
    }
  }
  // The warp's share of the warpgroup's operand reads: A its 16 rows, B a quarter of the
  // chunks (eight lanes, eight rows of one chunk: one core matrix).
  const int w = warp & 3;
  emu_wgmma_read_chunk(da, prec, 16 * w + (lane & 7) + 8 * (lane >> 4), (lane >> 3) & 1, file, line);
  for (int q = w * n / 2 + lane; q < (w + 1) * n / 2; q += 32)
    emu_wgmma_read_chunk(db, prec, (q >> 4) * 8 + (q & 7), (q >> 3) & 1, file, line);

  EmuWgmmaOp& op = st.op[st.count];
  op.d = d;
  op.count = n / 2;
  op.prec = prec;
  op.da = da;
  op.db = db;
  op.file = file;
  op.line = line;
  const float* c = d;  // C: the latest in-flight result on these registers, else the registers
  op.d_hash = emu_wgmma_hash(EMU_WGMMA_HASH0, d, sizeof(float) * op.count);
  for (int i = st.count - 1; i >= 0; --i)
    if (st.op[i].d == d) {
      if (st.op[i].count != op.count) {
        emu_api->fault("wgmma.mma_async on the accumulators of an in-flight mma_async of another shape", file, line);
      }
      c = st.op[i].v;
      break;
    }
  const int K = prec ? 16 : 8, g = lane >> 2, t = lane & 3;
  EmuWgmmaRows mine_rows;
  op.op_hash = emu_wgmma_gather(da, db, prec, n, w, g, t, mine_rows);
  float A[2][16], B[EMU_WGMMA_MAX_N / 4][16];
  for (int k = 0; k < K; ++k) {
    for (int e0 = 0; e0 < 2; ++e0) A[e0][k] = emu_wgmma_value(mine_rows.a[e0], prec, k);
    for (int j = 0; j < n / 4; ++j) B[j][k] = emu_wgmma_value(mine_rows.b[j], prec, k);
  }
  for (int j = 0; j < op.count; ++j) {  // row g + 8 e0 (of the warp's 16), column 8 i + 2 t + e1
    const float* a = A[(j >> 1) & 1];
    const float* b = B[2 * (j >> 2) + (j & 1)];
    float s = scale_d ? c[j] : 0.0f;
    for (int k = 0; k < K; ++k) s = emu_opaque(s + emu_opaque(a[k] * b[k]));
    op.v[j] = emu_ftz(s);
  }
  ++st.count;
  (void)emu_api->warp(EMU_WARP_SYNC, 0xffffffffu, 0, 0, 32, file, line);
}

// Completes every committed group but the newest n: their results land now.
static inline void emu_wgmma_wait_at(int n, const char* file, int line) {
  (void)emu_api->warp(EMU_WARP_SYNC, 0xffffffffu, 0, 0, 32, file, line);
  EmuWgmmaThread& st = emu_wgmma_self();
  int warp;
  const int lane = emu_mma_lane_id(&warp);
  char what[360];
  while (st.groups > (n < 0 ? 0 : n)) {
    const int done = st.group_end[0];
    for (int i = 0; i < done; ++i) {
      EmuWgmmaOp& op = st.op[i];
      EmuWgmmaRows rows;
      if (emu_wgmma_gather(op.da, op.db, op.prec, 2 * op.count, warp & 3, lane >> 2, lane & 3, rows) != op.op_hash) {
        std::snprintf(what, sizeof what, "shared memory read by the wgmma.mma_async at %s:%d changed before the "
                      "wgmma.wait_group that covers it (an operand stage overwritten in flight)", op.file, op.line);
        emu_api->fault(what, file, line);
      }
      if (emu_wgmma_hash(EMU_WGMMA_HASH0, op.d, sizeof(float) * op.count) != op.d_hash) {
        std::snprintf(what, sizeof what, "the accumulators of the wgmma.mma_async at %s:%d were written before the "
                      "wgmma.wait_group that covers it", op.file, op.line);
        emu_api->fault(what, file, line);
      }
      std::memcpy(op.d, op.v, sizeof(float) * op.count);
      const uint64_t now = emu_wgmma_hash(EMU_WGMMA_HASH0, op.d, sizeof(float) * op.count);
      for (int j = i + 1; j < st.count; ++j)  // later ops on these registers expect what landed
        if (st.op[j].d == op.d) st.op[j].d_hash = now;
    }
    std::memmove(st.op, st.op + done, sizeof(EmuWgmmaOp) * (st.count - done));
    st.count -= done;
    for (int g = 1; g < st.groups; ++g) st.group_end[g - 1] = st.group_end[g] - done;
    --st.groups;
  }
  st.fenced = 0;
  (void)emu_api->warp(EMU_WARP_SYNC, 0xffffffffu, 0, 0, 32, file, line);
}

#define emu_wgmma_desc(p, lbo, sbo) emu_wgmma_desc_at(p, lbo, sbo, __FILE__, __LINE__)
#define emu_wgmma_fence() emu_wgmma_fence_at(__FILE__, __LINE__)
#define emu_wgmma_commit() emu_wgmma_commit_at(__FILE__, __LINE__)
#define emu_wgmma_wait(n) emu_wgmma_wait_at((n), __FILE__, __LINE__)
#define emu_wgmma(d, n, prec, da, db, p) emu_wgmma_mma_at(d, n, prec, da, db, p, __FILE__, __LINE__)
