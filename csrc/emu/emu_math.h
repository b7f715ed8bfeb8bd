// emu_math.h — GPU arithmetic on the CPU (issue 10, item 6). Included by cuda_emu.h.
//
// The integer, conversion and fast-math intrinsics of CUDA with sm_90's semantics as
// NVRTC compiles them with the project's options (convnet.toolchain.nvrtc.NVRTC_OPTIONS,
// which include -ftz=true: CuPy appends it to every NVRTC compile anyway):
//
//  * single-precision results and inputs are flushed to sign-preserving zero where
//    the GPU instruction carries .ftz (every f32 instruction under -ftz=true); the
//    runtime also sets x86 MXCSR FTZ+DAZ on its worker threads while blocks run
//    (scheduler.cpp), so plain float arithmetic in kernels flushes as well. Here the
//    flush is done on the bits, so it does not depend on MXCSR;
//  * float -> integer conversions saturate to the destination's range and map NaN to
//    0 (PTX cvt.rni/rzi/rmi/rpi); C casts in kernel code are g++'s (x86 cvttss2si:
//    NaN and out-of-range give INT_MIN), see docs/internals.md;
//  * the _rn/_rz/_rd/_ru operations are exactly rounded in the named mode, never
//    contracted into an FMA with a neighbouring operation (an empty asm hides the
//    value from g++'s contraction);
//  * the fast-math intrinsics are computed as the hardware sequence NVRTC emits
//    (__expf(x) = ex2.approx(x * 0x1.715476p+0f) rounded in float, __logf(x) =
//    lg2.approx(x) * 0x1.62e43p-1f, __powf(x, y) = ex2.approx(y * lg2.approx(x)),
//    __tanf = div.approx(sin.approx, cos.approx), __fdividef = div.approx), with the
//    approximate MUFU steps (ex2/lg2/sin/cos/rsqrt.approx) replaced by glibc's
//    accurate float functions: the special cases (NaN, ±inf, ±0, negatives, the
//    range where __fdividef returns 0) are the GPU's, the low bits are not (the
//    hardware tables are not public). Bounds: see docs/internals.md.
//
// Named __expf etc. are macros: glibc's <math.h> declares functions with these very
// names that libm does not export, so a definition would clash with the declaration
// and a call would fail to load.
#pragma once

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#define EMU_FTZ 1  // the GPU build flushes single-precision subnormals (-ftz=true)

// ---------------------------------------------------------------- helpers
static inline uint32_t emu_f32_bits(float x) { uint32_t b; std::memcpy(&b, &x, 4); return b; }
static inline float emu_bits_f32(uint32_t b) { float x; std::memcpy(&x, &b, 4); return x; }
static inline bool emu_f32_isnan(float x) { return (emu_f32_bits(x) & 0x7fffffffu) > 0x7f800000u; }
static inline bool emu_f32_isinf(float x) { return (emu_f32_bits(x) & 0x7fffffffu) == 0x7f800000u; }
// Sign-preserving flush of a subnormal to zero (on the bits: DAZ would hide it from a compare).
static inline float emu_ftz(float x) {
  const uint32_t b = emu_f32_bits(x);
  return (EMU_FTZ && (b & 0x7f800000u) == 0u) ? emu_bits_f32(b & 0x80000000u) : x;
}
// A value g++ cannot look through: no contraction of the operation that made it with
// the one that uses it (the _rn intrinsics are never merged into an FMA on the GPU).
static inline float emu_opaque(float x) {
#if defined(__x86_64__)
  __asm__("" : "+x"(x));
#elif defined(__aarch64__)
  __asm__("" : "+w"(x));
#else
  volatile float v = x;
  x = v;
#endif
  return x;
}
static inline float emu_next_up(float x) { return std::nextafter(x, static_cast<float>(INFINITY)); }
static inline float emu_next_down(float x) { return std::nextafter(x, -static_cast<float>(INFINITY)); }

enum EmuRound { EMU_RN = 0, EMU_RZ = 1, EMU_RD = 2, EMU_RU = 3 };

// The float that rounds the exact value s + e in `mode` (e: the exact residual, |e| <=
// half an ulp of s in double): the float nearest to s, moved at most one step.
static inline float emu_round_to(double s, double e, int mode) {
  float f = static_cast<float>(s);
  if (std::isnan(s)) return f;
  if (mode == EMU_RN) {
    // double rounding: s may sit exactly on a midpoint of two floats while s + e does not
    if (e != 0.0 && static_cast<double>(f) != s && !std::isinf(f)) {
      const float g = s > f ? emu_next_up(f) : emu_next_down(f);
      if ((static_cast<double>(f) + static_cast<double>(g)) * 0.5 == s && ((e > 0.0) == (g > f))) f = g;
    }
    return f;
  }
  const double d = (static_cast<double>(f) - s) - e;  // sign of candidate - exact (f - s is exact)
  const bool negative = s < 0.0 || (s == 0.0 && e < 0.0);
  if (mode == EMU_RZ) mode = negative ? EMU_RU : EMU_RD;
  if (mode == EMU_RD && d > 0.0) f = emu_next_down(f);
  if (mode == EMU_RU && d < 0.0) f = emu_next_up(f);
  return f;
}
// The sign of a zero sum a + b in a mode: +0 unless both are -0, or the mode rounds down.
static inline float emu_zero_sum(double a, double b, int mode) {
  if (std::signbit(a) && std::signbit(b)) return -0.0f;
  if (a == 0.0 && b == 0.0 && !std::signbit(a) && !std::signbit(b)) return 0.0f;
  return mode == EMU_RD ? -0.0f : 0.0f;
}
static inline float emu_add(float a, float b, int mode) {
  a = emu_ftz(a);
  b = emu_ftz(b);
  const double x = a, y = b;
  const double s = x + y;
  if (s == 0.0) return emu_zero_sum(x, y, mode);  // a zero double sum of two floats is exact
  if (!std::isfinite(s)) return emu_ftz(static_cast<float>(s));
  const double yy = s - x;
  const double e = (x - (s - yy)) + (y - yy);  // TwoSum: s + e == x + y exactly
  return emu_ftz(emu_round_to(s, e, mode));
}
static inline float emu_mul(float a, float b, int mode) {
  a = emu_ftz(a);
  b = emu_ftz(b);
  const double p = static_cast<double>(a) * static_cast<double>(b);  // exact: 24 + 24 bits
  if (!std::isfinite(p) || p == 0.0) return emu_ftz(static_cast<float>(p));
  return emu_ftz(emu_round_to(p, 0.0, mode));
}
static inline float emu_fma(float a, float b, float c, int mode) {
  a = emu_ftz(a);
  b = emu_ftz(b);
  c = emu_ftz(c);
  if (mode == EMU_RN) return emu_ftz(std::fma(a, b, c));
  const double p = static_cast<double>(a) * static_cast<double>(b);  // exact: contracting p + z changes nothing
  const double z = c;
  const double s = p + z;
  if (!std::isfinite(s)) return emu_ftz(std::fma(a, b, c));
  const double yy = s - p;
  const double e = (p - (s - yy)) + (z - yy);  // TwoSum: s + e == a*b + c exactly
  if (s == 0.0 && e == 0.0) return emu_zero_sum(p, z, mode);
  return emu_ftz(emu_round_to(s, e, mode));
}
static inline float emu_div(float a, float b, int mode) {
  a = emu_ftz(a);
  b = emu_ftz(b);
  const float f = a / b;  // IEEE: correctly rounded to nearest
  if (mode == EMU_RN || emu_f32_isnan(f) || f == 0.0f || emu_f32_isinf(a) || emu_f32_isinf(b) || b == 0.0f)
    return emu_ftz(f);  // exact, special, or (a zero) flushed whatever the mode
  double above;  // sign of f - a/b
  if (emu_f32_isinf(f)) {
    above = f > 0.0f ? 1.0 : -1.0;
  } else {
    const double r = std::fma(static_cast<double>(f), static_cast<double>(b), -static_cast<double>(a));
    above = b > 0.0f ? r : -r;
  }
  float g = f;
  int m = mode;
  if (m == EMU_RZ) m = f < 0.0f ? EMU_RU : EMU_RD;
  if (m == EMU_RD && above > 0.0) g = emu_next_down(f);
  if (m == EMU_RU && above < 0.0) g = emu_next_up(f);
  return emu_ftz(g);
}
static inline float emu_sqrt(float a, int mode) {
  a = emu_ftz(a);
  const float f = std::sqrt(a);  // IEEE: correctly rounded to nearest
  if (mode == EMU_RN || !(f > 0.0f) || emu_f32_isinf(f)) return f;
  const double r = std::fma(static_cast<double>(f), static_cast<double>(f), -static_cast<double>(a));  // f*f - a
  if ((mode == EMU_RD || mode == EMU_RZ) && r > 0.0) return emu_next_down(f);
  if (mode == EMU_RU && r < 0.0) return emu_next_up(f);
  return f;
}

// ---------------------------------------------------------------- float arithmetic, named rounding
#define EMU_ROUNDED_OPS(suffix, mode)                                                                     \
  static inline float __fadd_##suffix(float a, float b) { return emu_opaque(emu_add(a, b, mode)); }       \
  static inline float __fsub_##suffix(float a, float b) { return emu_opaque(emu_add(a, -b, mode)); }      \
  static inline float __fmul_##suffix(float a, float b) { return emu_opaque(emu_mul(a, b, mode)); }       \
  static inline float __fmaf_##suffix(float a, float b, float c) { return emu_opaque(emu_fma(a, b, c, mode)); } \
  static inline float __fdiv_##suffix(float a, float b) { return emu_opaque(emu_div(a, b, mode)); }       \
  static inline float __frcp_##suffix(float a) { return emu_opaque(emu_div(1.0f, a, mode)); }             \
  static inline float __fsqrt_##suffix(float a) { return emu_opaque(emu_sqrt(a, mode)); }
EMU_ROUNDED_OPS(rn, EMU_RN)
EMU_ROUNDED_OPS(rz, EMU_RZ)
EMU_ROUNDED_OPS(rd, EMU_RD)
EMU_ROUNDED_OPS(ru, EMU_RU)
#undef EMU_ROUNDED_OPS

// 1/sqrt(x) correctly rounded (NVRTC emits a refined rsqrt.approx sequence). The
// candidate from double is checked against the midpoints to its neighbours exactly:
// 1/sqrt(x) < m  <=>  m*m*x > 1, with m*m exact in double and the fma rounding once.
static inline float __frsqrt_rn(float x) {
  x = emu_ftz(x);
  if (emu_f32_isnan(x) || x < 0.0f) return std::nanf("");
  if (x == 0.0f) return std::signbit(x) ? -static_cast<float>(INFINITY) : static_cast<float>(INFINITY);
  if (emu_f32_isinf(x)) return 0.0f;
  float f = static_cast<float>(1.0 / std::sqrt(static_cast<double>(x)));
  const double up = (static_cast<double>(f) + static_cast<double>(emu_next_up(f))) * 0.5;
  const double down = (static_cast<double>(f) + static_cast<double>(emu_next_down(f))) * 0.5;
  if (std::fma(up * up, static_cast<double>(x), -1.0) < 0.0) f = emu_next_up(f);           // exact > up
  else if (std::fma(down * down, static_cast<double>(x), -1.0) > 0.0) f = emu_next_down(f);  // exact < down
  return emu_ftz(f);
}
static inline float rsqrtf(float x) { return __frsqrt_rn(x); }  // rsqrt.approx: within 2 ulp of this
static inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }

// ---------------------------------------------------------------- conversions
// float/double -> integer: round in the named mode, NaN -> 0, saturate to the range.
template <class I, class F>
static inline I emu_to_int(F x, int mode) {
  if (std::isnan(x)) return 0;
  F r = mode == EMU_RN ? std::nearbyint(x) : mode == EMU_RZ ? std::trunc(x) : mode == EMU_RD ? std::floor(x) : std::ceil(x);
  // the range's ends as exact powers of two: [-2^(n-1), 2^(n-1)) or [0, 2^n)
  const long double top = std::is_signed<I>::value ? std::ldexp(1.0L, int(sizeof(I) * 8 - 1)) : std::ldexp(1.0L, int(sizeof(I) * 8));
  const long double bottom = std::is_signed<I>::value ? -top : 0.0L;
  const long double v = static_cast<long double>(r);
  if (v >= top) return std::numeric_limits<I>::max();
  if (v <= bottom) return std::numeric_limits<I>::min();
  return static_cast<I>(r);
}
#define EMU_F2I(suffix, mode)                                                                                      \
  static inline int __float2int_##suffix(float x) { return emu_to_int<int>(emu_ftz(x), mode); }                     \
  static inline unsigned __float2uint_##suffix(float x) { return emu_to_int<unsigned>(emu_ftz(x), mode); }          \
  static inline long long __float2ll_##suffix(float x) { return emu_to_int<long long>(emu_ftz(x), mode); }          \
  static inline unsigned long long __float2ull_##suffix(float x) {                                                   \
    return emu_to_int<unsigned long long>(emu_ftz(x), mode);                                                        \
  }                                                                                                                  \
  static inline int __double2int_##suffix(double x) { return emu_to_int<int>(x, mode); }                            \
  static inline unsigned __double2uint_##suffix(double x) { return emu_to_int<unsigned>(x, mode); }                 \
  static inline long long __double2ll_##suffix(double x) { return emu_to_int<long long>(x, mode); }                 \
  static inline unsigned long long __double2ull_##suffix(double x) { return emu_to_int<unsigned long long>(x, mode); }
EMU_F2I(rn, EMU_RN)
EMU_F2I(rz, EMU_RZ)
EMU_F2I(rd, EMU_RD)
EMU_F2I(ru, EMU_RU)
#undef EMU_F2I

// integer -> float in a mode: keep the top 24 bits of the magnitude, round on the rest.
static inline float emu_int_to_float(uint64_t m, bool negative, int mode) {
  if (m == 0) return 0.0f;
  const int msb = 63 - __builtin_clzll(m);
  if (msb <= 23) {
    const float r = static_cast<float>(m);
    return negative ? -r : r;
  }
  const int shift = msb - 23;
  uint64_t q = m >> shift;
  const uint64_t rest = m & ((uint64_t(1) << shift) - 1);
  const uint64_t half = uint64_t(1) << (shift - 1);
  bool up = false;
  if (mode == EMU_RN) up = rest > half || (rest == half && (q & 1));
  else if (mode == EMU_RD) up = negative && rest;
  else if (mode == EMU_RU) up = !negative && rest;
  q += up ? 1 : 0;
  const float r = std::ldexp(static_cast<float>(q), shift);
  return negative ? -r : r;
}
static inline uint64_t emu_magnitude(long long v) {
  return v < 0 ? uint64_t(0) - static_cast<uint64_t>(v) : static_cast<uint64_t>(v);
}
#define EMU_I2F(suffix, mode)                                                                                        \
  static inline float __int2float_##suffix(int x) { return emu_int_to_float(emu_magnitude(x), x < 0, mode); }        \
  static inline float __uint2float_##suffix(unsigned x) { return emu_int_to_float(x, false, mode); }                 \
  static inline float __ll2float_##suffix(long long x) { return emu_int_to_float(emu_magnitude(x), x < 0, mode); }   \
  static inline float __ull2float_##suffix(unsigned long long x) { return emu_int_to_float(x, false, mode); }
EMU_I2F(rn, EMU_RN)
EMU_I2F(rz, EMU_RZ)
EMU_I2F(rd, EMU_RD)
EMU_I2F(ru, EMU_RU)
#undef EMU_I2F
static inline float __double2float_rn(double x) { return emu_ftz(static_cast<float>(x)); }
static inline float __saturatef(float x) {  // cvt.sat: NaN -> +0, -0 -> +0
  x = emu_ftz(x);
  if (!(x > 0.0f)) return 0.0f;
  return x > 1.0f ? 1.0f : x;
}

// ---------------------------------------------------------------- fast-math intrinsics
// The MUFU steps (PTX ex2/lg2/sin/cos.approx.ftz.f32), with glibc's accurate float
// functions standing in for the hardware's tables.
static inline float emu_ex2_approx(float t) { return emu_ftz(std::exp2(emu_ftz(t))); }
static inline float emu_lg2_approx(float t) {  // lg2(±0) = -inf, lg2(<0) = NaN
  t = emu_ftz(t);
  return t == 0.0f ? -static_cast<float>(INFINITY) : std::log2(t);
}
static inline float emu_sin_approx(float t) { return emu_ftz(std::sin(emu_ftz(t))); }
static inline float emu_cos_approx(float t) { return emu_ftz(std::cos(emu_ftz(t))); }
// div.approx.ftz.f32: a * rcp.approx(b); for 2^126 < |b| < 2^128 the reciprocal is
// subnormal and flushes, so the quotient is 0 (NaN when a is infinite).
static inline float emu_div_approx(float a, float b) {
  a = emu_ftz(a);
  b = emu_ftz(b);
  const uint32_t mag = emu_f32_bits(b) & 0x7fffffffu;
  if (mag > 0x7e800000u && mag < 0x7f800000u) return a * std::copysign(0.0f, b);
  return emu_ftz(a * emu_opaque(1.0f / b));
}
static inline float emu_fast_expf(float x) { return emu_ex2_approx(__fmul_rn(x, 0x1.715476p+0f)); }
static inline float emu_fast_exp10f(float x) { return emu_ex2_approx(__fmul_rn(x, 0x1.a934f0p+1f)); }
static inline float emu_fast_logf(float x) { return __fmul_rn(emu_lg2_approx(x), 0x1.62e430p-1f); }
static inline float emu_fast_log2f(float x) { return emu_lg2_approx(x); }
static inline float emu_fast_log10f(float x) { return __fmul_rn(emu_lg2_approx(x), 0x1.344136p-2f); }
static inline float emu_fast_powf(float x, float y) { return emu_ex2_approx(__fmul_rn(y, emu_lg2_approx(x))); }
static inline float emu_fast_sinf(float x) { return emu_sin_approx(x); }
static inline float emu_fast_cosf(float x) { return emu_cos_approx(x); }
static inline float emu_fast_tanf(float x) { return emu_div_approx(emu_sin_approx(x), emu_cos_approx(x)); }
static inline void emu_fast_sincosf(float x, float* s, float* c) {
  *s = emu_sin_approx(x);
  *c = emu_cos_approx(x);
}
static inline float __fdividef(float x, float y) { return emu_div_approx(x, y); }
#define __expf emu_fast_expf
#define __exp10f emu_fast_exp10f
#define __logf emu_fast_logf
#define __log2f emu_fast_log2f
#define __log10f emu_fast_log10f
#define __powf emu_fast_powf
#define __sinf emu_fast_sinf
#define __cosf emu_fast_cosf
#define __tanf emu_fast_tanf
#define __sincosf emu_fast_sincosf

// ---------------------------------------------------------------- integer intrinsics
static inline int __mul24(int a, int b) {  // the low 24 bits, sign-extended, low 32 bits of the product
  const int64_t x = static_cast<int32_t>(static_cast<uint32_t>(a) << 8) >> 8;
  const int64_t y = static_cast<int32_t>(static_cast<uint32_t>(b) << 8) >> 8;
  return static_cast<int>(static_cast<uint32_t>(static_cast<uint64_t>(x * y)));
}
static inline unsigned __umul24(unsigned a, unsigned b) { return (a & 0xffffffu) * (b & 0xffffffu); }
static inline int __mulhi(int a, int b) { return static_cast<int>((static_cast<long long>(a) * b) >> 32); }
static inline unsigned __umulhi(unsigned a, unsigned b) {
  return static_cast<unsigned>((static_cast<unsigned long long>(a) * b) >> 32);
}
static inline long long __mul64hi(long long a, long long b) {
  return static_cast<long long>((static_cast<__int128>(a) * b) >> 64);
}
static inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
  return static_cast<unsigned long long>((static_cast<unsigned __int128>(a) * b) >> 64);
}
static inline int __hadd(int a, int b) { return static_cast<int>((static_cast<long long>(a) + b) >> 1); }
static inline int __rhadd(int a, int b) { return static_cast<int>((static_cast<long long>(a) + b + 1) >> 1); }
static inline unsigned __uhadd(unsigned a, unsigned b) {
  return static_cast<unsigned>((static_cast<unsigned long long>(a) + b) >> 1);
}
static inline unsigned __urhadd(unsigned a, unsigned b) {
  return static_cast<unsigned>((static_cast<unsigned long long>(a) + b + 1) >> 1);
}
static inline unsigned __sad(int a, int b, unsigned c) {  // |a - b| + c, modulo 2^32
  return c + (a > b ? static_cast<unsigned>(a) - static_cast<unsigned>(b) : static_cast<unsigned>(b) - static_cast<unsigned>(a));
}
static inline unsigned __usad(unsigned a, unsigned b, unsigned c) { return c + (a > b ? a - b : b - a); }
static inline int __popc(unsigned x) { return __builtin_popcount(x); }
static inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
static inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }
static inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll(static_cast<unsigned long long>(x)); }
static inline int __ffs(int x) { return __builtin_ffs(x); }
static inline int __ffsll(long long x) { return __builtin_ffsll(x); }
static inline unsigned __brev(unsigned x) {
  unsigned r = 0;
  for (int i = 0; i < 32; ++i) r |= ((x >> i) & 1u) << (31 - i);
  return r;
}
static inline unsigned long long __brevll(unsigned long long x) {
  return (static_cast<unsigned long long>(__brev(static_cast<unsigned>(x))) << 32) | __brev(static_cast<unsigned>(x >> 32));
}
// prmt.b32 with the selector masked to 0x7777 (what NVRTC emits): result byte n is byte
// s[4n+2:4n] of the eight bytes y:x (x's bytes 0-3, y's 4-7); no sign replication.
static inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
  const uint64_t bytes = (static_cast<uint64_t>(y) << 32) | x;
  unsigned r = 0;
  for (int n = 0; n < 4; ++n) r |= static_cast<unsigned>((bytes >> (8 * ((s >> (4 * n)) & 7u))) & 0xffu) << (8 * n);
  return r;
}
// shf.l/shf.r: hi:lo shifted by the count modulo 32 (wrap) or by min(count, 32) (clamp).
static inline unsigned __funnelshift_l(unsigned lo, unsigned hi, unsigned shift) {
  return static_cast<unsigned>(((static_cast<uint64_t>(hi) << 32 | lo) << (shift & 31u)) >> 32);
}
static inline unsigned __funnelshift_lc(unsigned lo, unsigned hi, unsigned shift) {
  return static_cast<unsigned>(((static_cast<uint64_t>(hi) << 32 | lo) << (shift < 32u ? shift : 32u)) >> 32);
}
static inline unsigned __funnelshift_r(unsigned lo, unsigned hi, unsigned shift) {
  return static_cast<unsigned>((static_cast<uint64_t>(hi) << 32 | lo) >> (shift & 31u));
}
static inline unsigned __funnelshift_rc(unsigned lo, unsigned hi, unsigned shift) {
  return static_cast<unsigned>((static_cast<uint64_t>(hi) << 32 | lo) >> (shift < 32u ? shift : 32u));
}
