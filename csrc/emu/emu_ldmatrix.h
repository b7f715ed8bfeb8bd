// emu_ldmatrix.h — ldmatrix on the CPU (issue 12): the warp-collective load of 8 x 8
// matrices of 16-bit elements from shared memory into the fragment registers of mma
// (kernels/mma.cuh: cn_ldmatrix<N, TRANS>).
//
//   ldmatrix.sync.aligned.m8n8.x{1,2,4}[.trans].shared.b16 {d0..}, [addr]
//                                                        emu_ldmatrix(d, N, trans, addr)
//
// PTX ISA, "Warp-level matrix load instruction: ldmatrix": matrix i (i < N) has its 8 rows at the addresses
// of lanes 8i .. 8i + 7, each row 8 consecutive 16-bit elements (16 bytes, 16-byte
// aligned); the addresses of lanes 8N .. 31 are not used. Lane l (g = l >> 2,
// t = l % 4) receives in d[i], the lower index in the low half:
//   without .trans  elements (row g, columns 2t, 2t + 1) of matrix i
//   with .trans     elements (rows 2t, 2t + 1, column g): the matrix transposed
// which are exactly the A/B fragment layouts of mma.m16n8k16 for suitably chosen
// matrices (kernels/mma.cuh).
//
// The exchange, as for mma (emu_mma.h): every addressing lane reads its own row — one
// typed 16-byte read on the kernel's line, so the race, init, bounds and profile builds
// see a warp's ldmatrix as its 8N row reads — and deposits it in a per-warp staging
// area; the warp meets at a full-mask warp barrier (a partial or diverged warp is
// diagnosed there: .aligned needs all 32 lanes), each lane picks its elements out of
// the deposits through the layouts above, and the warp meets again before the area is
// reused. A misaligned row, or an address that cannot be shared memory (outside the
// library's image, which holds the static __shared__ arrays, and outside the block's
// dynamic area: a global array, a local one), is a fault naming the lane's address, as
// on a GPU (misaligned or out-of-range shared address).
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstring>

// The library's own image, where every static __shared__ array lies (in the emu_shared
// section, or in .bss where g++ puts a template's statics); global arrays and the
// threads' stacks lie outside it.
extern "C" const char __ehdr_start[] __attribute__((visibility("hidden")));
extern "C" const char _end[] __attribute__((visibility("hidden")));

#define EMU_LDMATRIX_DYNAMIC_BYTES (227u * 1024u)  // sm_90's most shared memory a block

// One staging area per warp of a block (the register file, like emu_mma_stage).
static uint32_t emu_ldmatrix_stage[32][32][4];

static inline bool emu_ldmatrix_in_shared(uintptr_t a) {
  const uintptr_t s0 = reinterpret_cast<uintptr_t>(__ehdr_start);
  const uintptr_t s1 = reinterpret_cast<uintptr_t>(_end);
  if (a >= s0 && a + 16 <= s1) return true;
  const uintptr_t d = reinterpret_cast<uintptr_t>(emu_api->dynamic_shared());
  return d && a >= d && a + 16 <= d + EMU_LDMATRIX_DYNAMIC_BYTES;
}

static inline void emu_ldmatrix_at(uint32_t* d, int count, bool trans, const void* addr, const char* file,
                                   int line) {
  int warp;
  const int lane = emu_mma_lane_id(&warp);
  uint32_t(*w)[4] = emu_ldmatrix_stage[warp];
  if (lane < 8 * count) {
    const uintptr_t a = reinterpret_cast<uintptr_t>(addr);
    char what[200];
    if (a % 16 != 0) {
      std::snprintf(what, sizeof what, "misaligned address: ldmatrix row of lane %d at %#llx is not 16-byte aligned "
                    "(%% 16 = %d)", lane, static_cast<unsigned long long>(a), static_cast<int>(a % 16));
      emu_api->fault(what, file, line);
    }
    if (!emu_ldmatrix_in_shared(a)) {
      std::snprintf(what, sizeof what, "ldmatrix: the row address of lane %d (%#llx) is not in the block's shared "
                    "memory", lane, static_cast<unsigned long long>(a));
      emu_api->fault(what, file, line);
    }
    const uint4 v = *static_cast<const uint4*>(addr);  // one 16-byte read: this lane's row
    std::memcpy(w[lane], &v, 16);
  }
  (void)emu_api->warp(EMU_WARP_SYNC, 0xffffffffu, 0, 0, 32, file, line);
  const int g = lane >> 2, t = lane & 3;
  for (int i = 0; i < count; ++i) {
    const uint32_t* rows = &w[8 * i][0];
    if (!trans) {
      d[i] = rows[4 * g + t];  // row g, columns 2t and 2t + 1: word t of the row
    } else {
      uint16_t lo, hi;  // column g of rows 2t and 2t + 1
      std::memcpy(&lo, reinterpret_cast<const char*>(&w[8 * i + 2 * t][0]) + 2 * g, 2);
      std::memcpy(&hi, reinterpret_cast<const char*>(&w[8 * i + 2 * t + 1][0]) + 2 * g, 2);
      d[i] = static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 16);
    }
  }
  (void)emu_api->warp(EMU_WARP_SYNC, 0xffffffffu, 0, 0, 32, file, line);
}

#define emu_ldmatrix(d, count, trans, addr) emu_ldmatrix_at(d, count, trans, addr, __FILE__, __LINE__)
