// cuda_emu.h — CUDA C++ for g++: forced into every kernel library the emulator
// compiles (g++ -include cuda_emu.h). It gives kernels the CUDA built-ins
// (threadIdx and friends, __shared__, __syncthreads, warp operations, vector types,
// intrinsics, atomics) on top of the runtime in convnet._emu, reached through the
// EmuApi table the runtime installs when it loads the library.
//
//   __shared__ T a[N];       a static in the section "emu_shared": every OS thread of
//                            the pool runs blocks on its own loaded copy of the
//                            library, and a block runs all its threads on one OS thread
//   extern __shared__ T a[]; rewritten by the compiler driver into a pointer to the
//                            block's dynamic shared memory
//   threadIdx etc.           read from the start of the calling fiber's stack region
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <type_traits>
#include <utility>

#include "emu_api.h"

#define EMU_EXPORT extern "C" __attribute__((visibility("default")))

static const EmuApi* emu_api = nullptr;

// ---------------------------------------------------------------- qualifiers
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __shared__ static __attribute__((section("emu_shared")))
#define __constant__
#define __align__(n) alignas(n)
#define __managed__

// ---------------------------------------------------------------- thread indices
static inline __attribute__((always_inline)) const EmuThreadIds* emu_self() {
  uintptr_t sp;
#if defined(__x86_64__)
  __asm__("movq %%rsp, %0" : "=r"(sp));
#elif defined(__aarch64__)
  __asm__("mov %0, sp" : "=r"(sp));
#else
  sp = reinterpret_cast<uintptr_t>(__builtin_frame_address(0));
#endif
  return reinterpret_cast<const EmuThreadIds*>(sp & ~static_cast<uintptr_t>(EMU_STACK_BYTES - 1));
}

#define threadIdx (emu_self()->thread_idx)
#define blockIdx (emu_self()->block_idx)
#define blockDim (emu_self()->block_dim)
#define gridDim (emu_self()->grid_dim)
static constexpr int warpSize = 32;

// ---------------------------------------------------------------- vector types
#define EMU_VEC2(T, N, A) struct alignas(A) N##2 { T x, y; }; \
  static inline N##2 make_##N##2(T x, T y) { return N##2{x, y}; }
#define EMU_VEC3(T, N) struct N##3 { T x, y, z; }; \
  static inline N##3 make_##N##3(T x, T y, T z) { return N##3{x, y, z}; }
#define EMU_VEC4(T, N, A) struct alignas(A) N##4 { T x, y, z, w; }; \
  static inline N##4 make_##N##4(T x, T y, T z, T w) { return N##4{x, y, z, w}; }
EMU_VEC2(float, float, 8) EMU_VEC3(float, float) EMU_VEC4(float, float, 16)
EMU_VEC2(int, int, 8) EMU_VEC3(int, int) EMU_VEC4(int, int, 16)
EMU_VEC2(unsigned int, uint, 8) EMU_VEC4(unsigned int, uint, 16)
EMU_VEC2(double, double, 16)
EMU_VEC2(long long, longlong, 16)
EMU_VEC2(unsigned long long, ulonglong, 16)
EMU_VEC4(unsigned char, uchar, 4)
EMU_VEC4(signed char, char, 4)
#undef EMU_VEC2
#undef EMU_VEC3
#undef EMU_VEC4
static inline uint3 make_uint3(unsigned x, unsigned y, unsigned z) { return uint3{x, y, z}; }

// ---------------------------------------------------------------- barriers
#define __syncthreads() ((void)emu_api->barrier(EMU_BARRIER_PLAIN, 0, __FILE__, __LINE__))
#define __syncthreads_count(p) emu_api->barrier(EMU_BARRIER_COUNT, (p) ? 1 : 0, __FILE__, __LINE__)
#define __syncthreads_and(p) emu_api->barrier(EMU_BARRIER_AND, (p) ? 1 : 0, __FILE__, __LINE__)
#define __syncthreads_or(p) emu_api->barrier(EMU_BARRIER_OR, (p) ? 1 : 0, __FILE__, __LINE__)
#define __threadfence() __atomic_thread_fence(__ATOMIC_SEQ_CST)
#define __threadfence_block() __atomic_thread_fence(__ATOMIC_SEQ_CST)

// ---------------------------------------------------------------- warp operations
template <class T>
static inline uint64_t emu_to_bits(T v) {
  static_assert(sizeof(T) == 4 || sizeof(T) == 8, "warp operations take 4- or 8-byte values");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  return bits;
}
template <class T>
static inline T emu_from_bits(uint64_t bits) {
  T v;
  std::memcpy(&v, &bits, sizeof(T));
  return v;
}
template <class T>
static inline T emu_shfl(int op, unsigned mask, T v, int arg, int width, const char* f, int l) {
  return emu_from_bits<T>(emu_api->warp(op, mask, emu_to_bits(v), arg, width, f, l));
}
#define __shfl_sync(mask, v, ...) emu_shfl_at(EMU_SHFL_IDX, __FILE__, __LINE__, mask, v, __VA_ARGS__)
#define __shfl_up_sync(mask, v, ...) emu_shfl_at(EMU_SHFL_UP, __FILE__, __LINE__, mask, v, __VA_ARGS__)
#define __shfl_down_sync(mask, v, ...) emu_shfl_at(EMU_SHFL_DOWN, __FILE__, __LINE__, mask, v, __VA_ARGS__)
#define __shfl_xor_sync(mask, v, ...) emu_shfl_at(EMU_SHFL_XOR, __FILE__, __LINE__, mask, v, __VA_ARGS__)
template <class T>
static inline T emu_shfl_at(int op, const char* f, int l, unsigned mask, T v, int arg, int width = 32) {
  return emu_shfl(op, mask, v, arg, width, f, l);
}
#define __ballot_sync(mask, p) \
  ((unsigned)emu_api->warp(EMU_VOTE_BALLOT, (mask), (p) ? 1u : 0u, 0, 32, __FILE__, __LINE__))
#define __any_sync(mask, p) \
  ((int)emu_api->warp(EMU_VOTE_ANY, (mask), (p) ? 1u : 0u, 0, 32, __FILE__, __LINE__))
#define __all_sync(mask, p) \
  ((int)emu_api->warp(EMU_VOTE_ALL, (mask), (p) ? 1u : 0u, 0, 32, __FILE__, __LINE__))
#define __syncwarp(...) emu_syncwarp_at(__FILE__, __LINE__, ##__VA_ARGS__)
static inline void emu_syncwarp_at(const char* f, int l, unsigned mask = 0xffffffffu) {
  (void)emu_api->warp(EMU_WARP_SYNC, mask, 0, 0, 32, f, l);
}
static inline unsigned __lanemask_lt() { return (1u << (threadIdx.x & 31)) - 1u; }

// ---------------------------------------------------------------- math and intrinsics
static inline int min(int a, int b) { return a < b ? a : b; }
static inline int max(int a, int b) { return a > b ? a : b; }
static inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
static inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
static inline long long min(long long a, long long b) { return a < b ? a : b; }
static inline long long max(long long a, long long b) { return a > b ? a : b; }
static inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
static inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
static inline float min(float a, float b) { return fminf(a, b); }
static inline float max(float a, float b) { return fmaxf(a, b); }
static inline double min(double a, double b) { return fmin(a, b); }
static inline double max(double a, double b) { return fmax(a, b); }

// The arithmetic intrinsics (conversions, rounding modes, fast math, integer
// intrinsics) with sm_90's semantics: emu_math.h (issue 10, item 6).
#include "emu_math.h"
// Tensor-core mma.sync, the async proxy and cp.async (issue 12): emu_mma.h, emu_async_proxy.h,
// emu_cp_async.h.
#include "emu_mma.h"
#include "emu_async_proxy.h"
#include "emu_cp_async.h"
static inline int __float_as_int(float x) { int i; std::memcpy(&i, &x, 4); return i; }
static inline unsigned __float_as_uint(float x) { unsigned i; std::memcpy(&i, &x, 4); return i; }
static inline float __int_as_float(int i) { float x; std::memcpy(&x, &i, 4); return x; }
static inline float __uint_as_float(unsigned i) { float x; std::memcpy(&x, &i, 4); return x; }
static inline long long __double_as_longlong(double x) { long long i; std::memcpy(&i, &x, 8); return i; }
static inline double __longlong_as_double(long long i) { double x; std::memcpy(&x, &i, 8); return x; }
// A macro, so that the load (and the alignment check of check builds) carries the
// kernel's own line rather than this header's.
#define __ldg(p) (*(p))

// ---------------------------------------------------------------- atomics (blocks run on several OS threads)
template <class T, class F>
static inline T emu_atomic_update(T* p, F f) {  // compare-and-swap loop on the value's bits
  using Bits = typename std::conditional<sizeof(T) == 4, uint32_t, uint64_t>::type;
  static_assert(sizeof(T) == sizeof(Bits), "atomics take 4- or 8-byte values");
  Bits* q = reinterpret_cast<Bits*>(p);
  Bits old_bits = __atomic_load_n(q, __ATOMIC_RELAXED);
  for (;;) {
    T old_value, new_value;
    std::memcpy(&old_value, &old_bits, sizeof(T));
    new_value = f(old_value);
    Bits new_bits;
    std::memcpy(&new_bits, &new_value, sizeof(T));
    if (__atomic_compare_exchange_n(q, &old_bits, new_bits, false, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED))
      return old_value;
  }
}
template <class T>
static inline T atomicAdd(T* p, T v) {
  if constexpr (std::is_integral<T>::value) return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST);
  else return emu_atomic_update(p, [v](T a) { return a + v; });
}
template <class T>
static inline T atomicSub(T* p, T v) { return __atomic_fetch_sub(p, v, __ATOMIC_SEQ_CST); }
template <class T>
static inline T atomicMax(T* p, T v) {
  return emu_atomic_update(p, [v](T a) { return a < v ? v : a; });
}
template <class T>
static inline T atomicMin(T* p, T v) {
  return emu_atomic_update(p, [v](T a) { return v < a ? v : a; });
}
template <class T>
static inline T atomicExch(T* p, T v) {
  return emu_atomic_update(p, [v](T) { return v; });
}
template <class T>
static inline T atomicCAS(T* p, T compare, T v) {
  __atomic_compare_exchange_n(p, &compare, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
  return compare;  // on failure the current value was written here
}
template <class T>
static inline T atomicAnd(T* p, T v) { return __atomic_fetch_and(p, v, __ATOMIC_SEQ_CST); }
template <class T>
static inline T atomicOr(T* p, T v) { return __atomic_fetch_or(p, v, __ATOMIC_SEQ_CST); }
template <class T>
static inline T atomicXor(T* p, T v) { return __atomic_fetch_xor(p, v, __ATOMIC_SEQ_CST); }
static inline unsigned atomicInc(unsigned* p, unsigned limit) {
  return emu_atomic_update(p, [limit](unsigned a) { return a >= limit ? 0u : a + 1u; });
}

// ---------------------------------------------------------------- dynamic shared memory
template <class T>
static inline T* emu_dynamic_shared() { return static_cast<T*>(emu_api->dynamic_shared()); }

// ---------------------------------------------------------------- kernel table support
// Parameter kinds, checked by the Python side before every launch: "f4" float,
// "i4" int, "u8" unsigned long long, ...; pointers "P<kind>" (or "C<kind>" when the
// pointee is const), "?" for anything else (vector types, structs).
template <class U>
static std::string emu_value_code() {
  if (std::is_same<U, bool>::value) return "b1";
  if (std::is_floating_point<U>::value) return sizeof(U) == 4 ? "f4" : "f8";
  if (std::is_integral<U>::value)
    return std::string(std::is_unsigned<U>::value ? "u" : "i") + std::to_string(sizeof(U));
  return "?";
}
template <class T>
static std::string emu_param_code() {
  using U = typename std::remove_cv<T>::type;
  if constexpr (std::is_pointer<U>::value) {
    using P = typename std::remove_pointer<U>::type;
    return std::string(std::is_const<P>::value ? "C" : "P") + emu_value_code<typename std::remove_cv<P>::type>();
  } else {
    return emu_value_code<U>();
  }
}
template <class... A>
static const char* emu_signature(void (*)(A...)) {
  static const std::string text = [] {
    std::string codes[] = {emu_param_code<A>()..., std::string()};
    std::string joined;
    for (std::size_t i = 0; i + 1 < sizeof(codes) / sizeof(codes[0]); ++i) joined += (i ? "," : "") + codes[i];
    return joined;
  }();
  return text.c_str();
}
template <class... A, std::size_t... I>
static inline void emu_invoke(void (*f)(A...), void** args, std::index_sequence<I...>) {
  f(*static_cast<typename std::remove_cv<typename std::remove_reference<A>::type>::type*>(args[I])...);
}
template <class... A>
static inline void emu_call(void (*f)(A...), void** args) {
  emu_invoke(f, args, std::index_sequence_for<A...>{});
}
static inline void emu_wgmma_reset();   // emu_wgmma.h
static inline void emu_wgmma_finish();
template <auto F>
static void emu_thunk(void** args) {
  emu_cp_async_reset();  // a thread starts with no cp.async pending
  emu_wgmma_reset();     // ... and no wgmma
  emu_call(F, args);
  emu_wgmma_finish();    // a wgmma still in flight at exit is a fault
}

// ---------------------------------------------------------------- library entry points
// The linker marks where the section of static __shared__ arrays starts and stops.
extern "C" char __start_emu_shared[] __attribute__((weak, visibility("hidden")));
extern "C" char __stop_emu_shared[] __attribute__((weak, visibility("hidden")));
EMU_EXPORT void emu_shared_range(char** start, std::size_t* bytes) {
  *start = __start_emu_shared;
  *bytes = __start_emu_shared ? static_cast<std::size_t>(__stop_emu_shared - __start_emu_shared) : 0;
}
// ldmatrix and wgmma (issue 12): emu_ldmatrix.h, emu_wgmma.h.
#include "emu_ldmatrix.h"
#include "emu_wgmma.h"
extern "C" void __asan_set_error_report_callback(void (*)(const char*)) __attribute__((weak));
static void emu_asan_report(const char*) {
  char where[256];
  emu_api->describe_current(where, sizeof where);
  std::fprintf(stderr, "convnet emu: the AddressSanitizer report above is from %s\n", where);
}
EMU_EXPORT int emu_library_init(const EmuApi* api) {
  emu_api = api;
  if (&__asan_set_error_report_callback) __asan_set_error_report_callback(emu_asan_report);
  return EMU_API_VERSION;
}

// ---------------------------------------------------------------- index checks (check="bounds")
// Kernels built with -fsanitize=bounds call these on an out-of-range index into a
// fixed-size array (static __shared__ arrays, local arrays). The layout is the
// UBSan handler ABI shared by GCC and Clang.
struct EmuUbsanLocation { const char* file; uint32_t line; uint32_t column; };
struct EmuUbsanType { uint16_t kind; uint16_t info; char name[1]; };
struct EmuUbsanOutOfBounds { EmuUbsanLocation loc; const EmuUbsanType* array; const EmuUbsanType* index; };
static long long emu_ubsan_integer(const EmuUbsanType* t, uintptr_t v) {
  int bits = 1 << (t->info >> 1);
  bool is_signed = t->info & 1;
  if (bits >= 64 || !is_signed) return static_cast<long long>(v);
  uint64_t m = 1ull << (bits - 1);
  uint64_t x = v & ((1ull << bits) - 1);
  return static_cast<long long>((x ^ m) - m);
}
extern "C" __attribute__((visibility("hidden"))) void __ubsan_handle_out_of_bounds(EmuUbsanOutOfBounds* d,
                                                                                   uintptr_t index) {
  char what[256];
  std::snprintf(what, sizeof what, "index %lld out of bounds for type %s",
                emu_ubsan_integer(d->index, index), d->array->name);
  emu_api->fault(what, d->loc.file, static_cast<int>(d->loc.line));
}
extern "C" __attribute__((visibility("hidden"))) void __ubsan_handle_out_of_bounds_abort(EmuUbsanOutOfBounds* d,
                                                                                         uintptr_t index) {
  __ubsan_handle_out_of_bounds(d, index);
}

// ================================================================ one language (issue 10, item 7)
// Valid CUDA that NVRTC accepts and the definitions above did not: a bare
// __syncwarp(), __activemask(), atomicDec, the rest of CUDA's vector types,
// __align__ anywhere in a declaration (after __shared__ too). Kept in this separate
// block; tests/kernels/language.cu exercises each on emu and through NVRTC.

// __syncwarp() and __syncwarp(mask): the definition above needs GNU comma elision,
// which -std=c++17 does not do for a macro whose only parameter is `...`.
#undef __syncwarp
struct EmuSyncwarpAt {
  const char* file;
  int line;
  void operator()(unsigned mask = 0xffffffffu) const { emu_syncwarp_at(file, line, mask); }
};
#define __syncwarp(...) (EmuSyncwarpAt{__FILE__, __LINE__}(__VA_ARGS__))

// __align__(n) as a GNU attribute, which may stand anywhere among the
// decl-specifiers (`__shared__ __align__(16) float a[64];` expands to
// `static __attribute__((section(...))) __align__(16) float ...`, where a standard
// alignas is an error), and on structs (`struct __align__(16) S {...};`) as before.
#undef __align__
#define __align__(n) __attribute__((aligned(n)))

// __activemask(): the lanes of the calling thread's warp that exist in its block
// (a partial last warp has fewer). The emulator does not track which lanes of a
// diverged warp execute together, so inside a divergent branch this is all of the
// warp's lanes, not the converged subset a GPU returns (code may not rely on that
// subset either: the CUDA guide calls it a snapshot, not a synchronisation).
static inline unsigned __activemask() {
  const EmuThreadIds* ids = emu_self();
  const unsigned x = ids->block_dim.x, y = ids->block_dim.y;
  const unsigned linear = ids->thread_idx.x + x * (ids->thread_idx.y + y * ids->thread_idx.z);
  const unsigned total = x * y * ids->block_dim.z;
  const unsigned first = linear & ~31u;
  const unsigned lanes = total - first >= 32u ? 32u : total - first;
  return lanes == 32u ? 0xffffffffu : (1u << lanes) - 1u;
}

// atomicDec: ((old == 0) || (old > limit)) ? limit : old - 1, returning old.
static inline unsigned atomicDec(unsigned* p, unsigned limit) {
  return emu_atomic_update(p, [limit](unsigned a) { return (a == 0u || a > limit) ? limit : a - 1u; });
}

// The vector types CUDA's vector_types.h declares that the block above does not,
// with its alignments (long is 8 bytes on LP64, so longN aligns as long longN).
#define EMU_LANG_VEC1(T, N, A) struct __attribute__((aligned(A))) N##1 { T x; }; \
  static inline N##1 make_##N##1(T x) { return N##1{x}; }
#define EMU_LANG_VEC2(T, N, A) struct __attribute__((aligned(A))) N##2 { T x, y; }; \
  static inline N##2 make_##N##2(T x, T y) { return N##2{x, y}; }
#define EMU_LANG_VEC3(T, N) struct N##3 { T x, y, z; }; \
  static inline N##3 make_##N##3(T x, T y, T z) { return N##3{x, y, z}; }
#define EMU_LANG_VEC4(T, N, A) struct __attribute__((aligned(A))) N##4 { T x, y, z, w; }; \
  static inline N##4 make_##N##4(T x, T y, T z, T w) { return N##4{x, y, z, w}; }
EMU_LANG_VEC1(signed char, char, 1) EMU_LANG_VEC2(signed char, char, 2) EMU_LANG_VEC3(signed char, char)
EMU_LANG_VEC1(unsigned char, uchar, 1) EMU_LANG_VEC2(unsigned char, uchar, 2) EMU_LANG_VEC3(unsigned char, uchar)
EMU_LANG_VEC1(short, short, 2) EMU_LANG_VEC2(short, short, 4) EMU_LANG_VEC3(short, short)
EMU_LANG_VEC4(short, short, 8)
EMU_LANG_VEC1(unsigned short, ushort, 2) EMU_LANG_VEC2(unsigned short, ushort, 4)
EMU_LANG_VEC3(unsigned short, ushort) EMU_LANG_VEC4(unsigned short, ushort, 8)
EMU_LANG_VEC1(int, int, 4) EMU_LANG_VEC1(unsigned int, uint, 4)
EMU_LANG_VEC1(long, long, 8) EMU_LANG_VEC2(long, long, 16) EMU_LANG_VEC3(long, long)
EMU_LANG_VEC4(long, long, 16)
EMU_LANG_VEC1(unsigned long, ulong, 8) EMU_LANG_VEC2(unsigned long, ulong, 16)
EMU_LANG_VEC3(unsigned long, ulong) EMU_LANG_VEC4(unsigned long, ulong, 16)
EMU_LANG_VEC1(long long, longlong, 8) EMU_LANG_VEC3(long long, longlong) EMU_LANG_VEC4(long long, longlong, 16)
EMU_LANG_VEC1(unsigned long long, ulonglong, 8) EMU_LANG_VEC3(unsigned long long, ulonglong)
EMU_LANG_VEC4(unsigned long long, ulonglong, 16)
EMU_LANG_VEC1(float, float, 4)
EMU_LANG_VEC1(double, double, 8) EMU_LANG_VEC3(double, double) EMU_LANG_VEC4(double, double, 16)
#undef EMU_LANG_VEC1
#undef EMU_LANG_VEC2
#undef EMU_LANG_VEC3
#undef EMU_LANG_VEC4
// ================================================================ end of item 7's block

// ---------------------------------------------------------------- alignment (every build)
// Kernels are built with -fsanitize=alignment: a load or store through a pointer not
// aligned for its type (a float4 at an address that is not a multiple of 16, a double
// or long long off 8, a float off 4) calls this handler, which ends the launch with a
// KernelError naming the thread and the line, as a GPU faults with "misaligned address".
struct EmuUbsanTypeMismatch {
  EmuUbsanLocation loc;
  const EmuUbsanType* type;
  unsigned char log_alignment;
  unsigned char check_kind;
};
extern "C" __attribute__((visibility("hidden"))) void __ubsan_handle_type_mismatch_v1(EmuUbsanTypeMismatch* d,
                                                                                       uintptr_t pointer) {
  const char* kind = d->check_kind == 0 ? "load of" : d->check_kind == 1 ? "store to"
                     : d->check_kind == 3 ? "member access within" : "access to";
  const unsigned long long align = 1ull << d->log_alignment;
  char what[320];
  std::snprintf(what, sizeof what,
                "misaligned address 0x%llx: %s type %s, which needs %llu-byte alignment (address %% %llu = %llu)",
                static_cast<unsigned long long>(pointer), kind,
                d->type->name, align, align, static_cast<unsigned long long>(pointer & (align - 1)));
  emu_api->fault(what, d->loc.file, static_cast<int>(d->loc.line));
}
extern "C" __attribute__((visibility("hidden"))) void __ubsan_handle_type_mismatch_v1_abort(EmuUbsanTypeMismatch* d,
                                                                                             uintptr_t pointer) {
  __ubsan_handle_type_mismatch_v1(d, pointer);
}
