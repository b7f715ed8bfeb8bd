// emu_api.h — the C ABI between the CUDA-on-CPU runtime (convnet._emu) and a
// kernel library (a kernels/*.cu file compiled by g++ with cuda_emu.h forced in).
//
// Each CUDA thread runs as a fiber on a stack region of EMU_STACK_BYTES, aligned
// to its size. The region starts with the thread's EmuThreadIds, so a kernel finds
// its threadIdx/blockIdx by masking its own stack pointer: no thread-local lookups,
// no calls. The runtime hands the library an EmuApi table once, at load.
#pragma once

#include <stdint.h>

#define EMU_API_VERSION 4
#define EMU_STACK_BYTES (1u << 18)   // 256 KiB per CUDA thread (virtual; touched lazily)

struct uint3 { unsigned int x, y, z; };
struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
  constexpr operator uint3() const { return uint3{x, y, z}; }
};

// First bytes of every thread's stack region; read by kernels, written by the runtime.
struct EmuThreadIds {
  uint3 thread_idx;
  uint3 block_idx;
  dim3 block_dim;
  dim3 grid_dim;
};

enum EmuWarpOp {
  EMU_WARP_SYNC = 0,
  EMU_SHFL_IDX,
  EMU_SHFL_UP,
  EMU_SHFL_DOWN,
  EMU_SHFL_XOR,
  EMU_VOTE_BALLOT,
  EMU_VOTE_ANY,
  EMU_VOTE_ALL,
  EMU_WARP_OP_COUNT
};

enum EmuBarrierOp { EMU_BARRIER_PLAIN = 0, EMU_BARRIER_COUNT, EMU_BARRIER_AND, EMU_BARRIER_OR };

struct EmuApi {
  int version;
  // __syncthreads and its reducing forms; returns the reduction (0 for the plain one).
  int (*barrier)(int op, int predicate, const char* file, int line);
  // A warp operation over the lanes in mask; value is the lane's operand (bits of
  // any 4- or 8-byte type), arg the source lane / delta / xor mask, width the segment.
  uint64_t (*warp)(int op, unsigned mask, uint64_t value, int arg, int width,
                   const char* file, int line);
  // The block's dynamic shared memory (extern __shared__).
  void* (*dynamic_shared)(void);
  // Aborts the calling CUDA thread and the launch with a diagnostic; does not return.
  void (*fault)(const char* what, const char* file, int line);
  // Writes "kernel K, block (x,y,z), thread (x,y,z)" for the calling thread.
  void (*describe_current)(char* buffer, int size);
};

typedef void (*EmuKernelFn)(void** args);

struct EmuKernelEntry {
  const char* name;       // the name expression, e.g. "sgemm_tiled<64, 8>"
  EmuKernelFn run;        // runs the kernel body for the calling thread
  const char* signature;  // parameter kinds: "P" pointer, "f4" float, "i4" int, ... comma separated
};

// What a kernel library exports (C linkage):
//   int emu_library_init(const EmuApi* api);          returns EMU_API_VERSION
//   const EmuKernelEntry* emu_kernel_table(int* n);
//   void emu_shared_range(char** start, size_t* n);    where its static __shared__ arrays live
