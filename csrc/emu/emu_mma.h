// emu_mma.h — warp-level tensor-core instructions on the CPU (issue 12, part 1).
// Included by cuda_emu.h; kernels reach it through kernels/mma.cuh, which issues the
// PTX instruction on a GPU and calls these on emu.
//
//   mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32     emu_mma_m16n8k8_tf32
//   mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32    emu_mma_m16n8k16_bf16
//   mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32      emu_mma_m16n8k16_f16
//   cvt.rna.tf32.f32                                        emu_cvt_rna_tf32
//   cvt.rn.bf16x2.f32 / cvt.rn.f16x2.f32                    emu_cvt_rn_bf16x2 / emu_cvt_rn_f16x2
//
// The exchange: every lane of the warp deposits its fragment registers (A, B and C
// as the .b32/.f32 bit patterns it holds) in a per-warp staging area, the warp meets
// at a full-mask warp barrier (a partial or diverged warp is diagnosed there, as
// mma.sync.aligned requires all 32 lanes), each lane rebuilds the rows of A and the
// columns of B its own four results need from the deposits of the lanes that hold them,
// through the fragment layouts of the PTX ISA, computes those results, and the warp
// meets again before the area is reused.
// Layouts (PTX ISA 9.7.14.5, "Matrix Fragments for mma.m16n8k8" and "...m16n8k16",
// with groupID g = lane >> 2 and threadID_in_group t = lane % 4):
//   m16n8k8 .tf32   A a0:(g, t) a1:(g+8, t) a2:(g, t+4) a3:(g+8, t+4)
//                   B b0:(k=t, n=g) b1:(k=t+4, n=g)
//   m16n8k16 .bf16/.f16 (two elements per .b32, the lower index in the low half)
//                   A ai: row g for i in {0,1,4,5} else g+8; col 2t + (i&1) (+8 for i >= 4)
//                   B bi: row 2t + (i&1) (+8 for i >= 2), col g
//   C/D .f32        ci: row g (i < 2) or g+8; col 2t + (i&1)
// A lane-index mistake in a kernel therefore scrambles the matrices here exactly as
// the hardware would.
//
// Arithmetic: a .tf32 operand is the top 19 bits of its register (sign, exponent,
// 10 mantissa bits: the tensor core ignores the low 13, so an operand not rounded by
// cvt.rna is truncated); bf16/f16 operands are exact in float. Products of two such
// operands are exact in FP32 (at most 11 x 11 significant bits), so each result is
// d = (((c + p0) + p1) + ... + p_{K-1}) in FP32 round-to-nearest, k ascending, with
// the worker's flush-to-zero. This is a model: the hardware's internal accumulation
// order and rounding are not documented (studies of A100 tensor cores report
// alignment and truncation inside the unit), so on a GPU results may differ from emu
// in the last bits of each partial sum; tests hold GPU results to the FP32 bound
// (K + 1) u sum |a b|, u = 2^-24, and emu results to the sequential model bit for bit.
#pragma once

#include <cstdint>
#include <cstring>

// ---------------------------------------------------------------- conversions
// cvt.rna.tf32.f32: round to nearest, ties away from zero, to 10 mantissa bits (the
// result is a .b32 whose low 13 bits are zero). NaN stays NaN (canonical), a finite
// value past the largest TF32 rounds to infinity, subnormals round on their bits.
static inline uint32_t emu_cvt_rna_tf32(float x) {
  uint32_t b;
  std::memcpy(&b, &x, 4);
  if ((b & 0x7fffffffu) > 0x7f800000u) return 0x7fffffffu;
  if ((b & 0x7f800000u) == 0x7f800000u) return b;  // +-inf
  return (b + 0x1000u) & 0xffffe000u;               // magnitude + half an ulp, truncated
}
// float -> bf16 bits, round to nearest even (NaN -> canonical quiet NaN).
static inline uint16_t emu_f32_to_bf16_rn(float x) {
  uint32_t b;
  std::memcpy(&b, &x, 4);
  if ((b & 0x7fffffffu) > 0x7f800000u) return 0x7fffu;
  const uint32_t lsb = (b >> 16) & 1u;
  return static_cast<uint16_t>((b + 0x7fffu + lsb) >> 16);
}
static inline float emu_bf16_to_f32(uint16_t h) {
  const uint32_t b = static_cast<uint32_t>(h) << 16;
  float x;
  std::memcpy(&x, &b, 4);
  return x;
}
// float -> IEEE half bits, round to nearest even, overflow to infinity, subnormal
// halves kept (they are exact in float), NaN -> canonical quiet NaN.
static inline uint16_t emu_f32_to_f16_rn(float x) {
  uint32_t b;
  std::memcpy(&b, &x, 4);
  const uint32_t sign = (b >> 16) & 0x8000u;
  const uint32_t mag = b & 0x7fffffffu;
  if (mag > 0x7f800000u) return 0x7e00u;
  if (mag >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // >= 65520: rounds to inf
  if (mag < 0x38800000u) {  // below 2^-14: a subnormal half (or zero), step 2^-24
    float a;
    std::memcpy(&a, &mag, 4);
    const float scaled = a * 16777216.0f;  // exact: units of 2^-24
    const uint32_t q = static_cast<uint32_t>(__builtin_nearbyintf(scaled));  // default mode: nearest even
    return static_cast<uint16_t>(sign | q);
  }
  const uint32_t lsb = (mag >> 13) & 1u;
  const uint32_t r = (mag + 0xfffu + lsb) >> 13;  // rebias: (e - 127 + 15) << 10
  return static_cast<uint16_t>(sign | (r - (112u << 10)));
}
static inline float emu_f16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  float x;
  if (e == 0x1fu) {
    const uint32_t b = sign | 0x7f800000u | (m << 13);
    std::memcpy(&x, &b, 4);
    return x;
  }
  if (e == 0) {
    x = static_cast<float>(m) * 5.9604644775390625e-8f;  // m * 2^-24, exact
    return sign ? -x : x;
  }
  const uint32_t b = sign | ((e + 112u) << 23) | (m << 13);
  std::memcpy(&x, &b, 4);
  return x;
}
// cvt.rn.bf16x2.f32 d, hi, lo: hi in the upper half, lo in the lower (PTX operand order).
static inline uint32_t emu_cvt_rn_bf16x2(float hi, float lo) {
  return (static_cast<uint32_t>(emu_f32_to_bf16_rn(hi)) << 16) | emu_f32_to_bf16_rn(lo);
}
static inline uint32_t emu_cvt_rn_f16x2(float hi, float lo) {
  return (static_cast<uint32_t>(emu_f32_to_f16_rn(hi)) << 16) | emu_f32_to_f16_rn(lo);
}
static inline float emu_tf32_value(uint32_t bits) {  // what the tensor core reads of a .tf32 register
  const uint32_t b = bits & 0xffffe000u;
  float x;
  std::memcpy(&x, &b, 4);
  return x;
}

// ---------------------------------------------------------------- the warp exchange
struct EmuMmaLane {
  uint32_t a[4];
  uint32_t b[2];
  float c[4];
};
// One staging area per warp of a block; a library copy runs one block at a time (and
// a block's threads on one OS thread), and this lies in the library's own image, which
// the race/init checks and the profiler leave out (it is the register file, not memory).
static EmuMmaLane emu_mma_stage[32][32];

static inline int emu_mma_lane_id(int* warp) {
  const EmuThreadIds* ids = emu_self();
  const unsigned linear = ids->thread_idx.x + ids->block_dim.x * (ids->thread_idx.y + ids->block_dim.y * ids->thread_idx.z);
  *warp = static_cast<int>(linear >> 5);
  return static_cast<int>(linear & 31u);
}

// Deposits this lane's registers, meets the warp, and returns the staging row of
// the warp (all 32 lanes deposited). The caller computes, then calls emu_mma_leave.
static inline const EmuMmaLane* emu_mma_enter(const uint32_t a[4], const uint32_t b[2], const float c[4], int* lane,
                                              const char* file, int line) {
  int warp;
  *lane = emu_mma_lane_id(&warp);
  EmuMmaLane& me = emu_mma_stage[warp][*lane];
  std::memcpy(me.a, a, sizeof me.a);
  std::memcpy(me.b, b, sizeof me.b);
  std::memcpy(me.c, c, sizeof me.c);
  (void)emu_api->warp(EMU_WARP_SYNC, 0xffffffffu, 0, 0, 32, file, line);
  return emu_mma_stage[warp];
}
static inline void emu_mma_leave(const char* file, int line) {
  (void)emu_api->warp(EMU_WARP_SYNC, 0xffffffffu, 0, 0, 32, file, line);
}

// d = A (16x8, tf32) * B (8x8, tf32) + C, this lane's four results. A lane's results
// are rows g and g+8 and columns 2t and 2t+1 of D: it decodes those rows of A and
// columns of B from the lanes that hold them through the layouts above (the lanes of
// group g for A's rows, of groups 2t and 2t+1 for B's columns; its own C), which is
// the whole exchange as far as its results see it, at an eighth of the reads (each read
// of the staging area is a profiled access in the emulator's profile build).
static inline void emu_mma_m16n8k8_tf32_at(float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4],
                                           const char* file, int line) {
  int lane;
  const EmuMmaLane* w = emu_mma_enter(a, b, c, &lane, file, line);
  const int g = lane >> 2, t = lane & 3;
  float A[16][8], B[8][8];
  for (int l = 4 * g; l < 4 * g + 4; ++l) {  // the lanes holding rows g and g+8 of A
    const int lt = l & 3;
    A[g][lt] = emu_tf32_value(w[l].a[0]);
    A[g + 8][lt] = emu_tf32_value(w[l].a[1]);
    A[g][lt + 4] = emu_tf32_value(w[l].a[2]);
    A[g + 8][lt + 4] = emu_tf32_value(w[l].a[3]);
  }
  for (int l = 8 * t; l < 8 * t + 8; ++l) {  // the lanes holding columns 2t and 2t+1 of B
    const int lg = l >> 2, lt = l & 3;
    B[lt][lg] = emu_tf32_value(w[l].b[0]);
    B[lt + 4][lg] = emu_tf32_value(w[l].b[1]);
  }
  float out[4];
  for (int i = 0; i < 4; ++i) {
    const int row = g + (i >> 1) * 8, col = 2 * t + (i & 1);
    float s = c[i];  // this lane's own C element (row, col)
    for (int k = 0; k < 8; ++k) s = emu_opaque(s + emu_opaque(A[row][k] * B[k][col]));
    out[i] = emu_ftz(s);
  }
  emu_mma_leave(file, line);
  std::memcpy(d, out, sizeof out);
}

// d = A (16x16) * B (16x8) + C with 16-bit operands, decoded by `to_f32`; the same
// lanes as above hold this lane's rows of A and columns of B.
template <float (*ToF32)(uint16_t)>
static inline void emu_mma_m16n8k16_16bit(float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4],
                                          const char* file, int line) {
  int lane;
  const EmuMmaLane* w = emu_mma_enter(a, b, c, &lane, file, line);
  const int g = lane >> 2, t = lane & 3;
  float A[16][16], B[16][8];
  for (int l = 4 * g; l < 4 * g + 4; ++l) {
    const int lt = l & 3;
    for (int i = 0; i < 8; ++i) {  // element ai is half (i & 1) of register i >> 1
      const uint16_t h = static_cast<uint16_t>(w[l].a[i >> 1] >> (16 * (i & 1)));
      const int row = (i < 2 || (i >= 4 && i < 6)) ? g : g + 8;
      const int col = 2 * lt + (i & 1) + (i >= 4 ? 8 : 0);
      A[row][col] = ToF32(h);
    }
  }
  for (int l = 8 * t; l < 8 * t + 8; ++l) {
    const int lg = l >> 2, lt = l & 3;
    for (int i = 0; i < 4; ++i) {
      const uint16_t h = static_cast<uint16_t>(w[l].b[i >> 1] >> (16 * (i & 1)));
      B[2 * lt + (i & 1) + (i >= 2 ? 8 : 0)][lg] = ToF32(h);
    }
  }
  float out[4];
  for (int i = 0; i < 4; ++i) {
    const int row = g + (i >> 1) * 8, col = 2 * t + (i & 1);
    float s = c[i];
    for (int k = 0; k < 16; ++k) s = emu_opaque(s + emu_opaque(A[row][k] * B[k][col]));
    out[i] = emu_ftz(s);
  }
  emu_mma_leave(file, line);
  std::memcpy(d, out, sizeof out);
}

#define emu_mma_m16n8k8_tf32(d, a, b, c) emu_mma_m16n8k8_tf32_at(d, a, b, c, __FILE__, __LINE__)
#define emu_mma_m16n8k16_bf16(d, a, b, c) emu_mma_m16n8k16_16bit<emu_bf16_to_f32>(d, a, b, c, __FILE__, __LINE__)
#define emu_mma_m16n8k16_f16(d, a, b, c) emu_mma_m16n8k16_16bit<emu_f16_to_f32>(d, a, b, c, __FILE__, __LINE__)
