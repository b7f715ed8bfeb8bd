// scheduler.h — runs a kernel launch on the CPU: blocks spread over a pool of OS
// threads, each block's CUDA threads as fibers on one OS thread, with real
// __syncthreads barriers, warp operations and diagnostics.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "emu_api.h"
#include "loader.h"
#include "check.h"
#include "profile.h"

namespace emu {

// A fault in a kernel (deadlock, divergent barrier, out-of-bounds index, ...): the
// message names the kernel, the block, the thread and the source line.
struct KernelFault : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// The launch stopped because `interrupted` said so, or because SIGINT (Ctrl-C)
// came during it (`sigint`: the runtime's own handler caught it; the caller
// re-raises it for Python's handler).
struct Interrupted : std::runtime_error {
  Interrupted(const std::string& what, bool by_sigint) : std::runtime_error(what), sigint(by_sigint) {}
  bool sigint;
};

struct LaunchSpec {
  Library* library = nullptr;
  int kernel = 0;
  dim3 grid, block;
  std::size_t shared_bytes = 0;
  void** args = nullptr;
  bool reverse = false;      // run threads and blocks in reverse order
  bool fill_shared = false;  // fill shared memory with 0xff bytes (NaN) at each block start
  int workers = 1;           // OS threads
  // Polled between blocks by the calling thread (about every 50 ms); true stops the launch.
  std::function<bool()> interrupted;
  // Memory-traffic profiling (all optional; `profile` null: none). The blocks whose
  // linear index is in `profile_blocks` (sorted) run on `profile_library` (the same
  // kernels built with access hooks, same kernel index), the others on `library`;
  // barriers and warp operations are counted for every block.
  LaunchProfile* profile = nullptr;
  Library* profile_library = nullptr;
  std::vector<uint64_t> profile_blocks;
  std::vector<std::pair<uintptr_t, uintptr_t>> profile_ignore;  // e.g. the packed arguments
  std::vector<ProfileRanges::Rebase> profile_rebase;             // global allocations, see ProfileRanges
  std::vector<std::pair<uint64_t, uint64_t>> profile_shared;     // static __shared__ arrays: (offset from base, bytes)
  // Static __shared__ arrays outside the emu_shared section ((offset from the load
  // base, bytes): template kernels' statics), filled by fill_shared too.
  std::vector<std::pair<uint64_t, uint64_t>> shared_statics;
  // Race / initialisation checks and the random schedule (see check.h): when
  // check.active(), every block runs on `check_library` (the hooked build), on one
  // OS thread.
  CheckSpec check;
  Library* check_library = nullptr;
  // Faults and hangs (see "signals, preemption and the watchdog" in scheduler.cpp):
  // a block none of whose threads reaches a barrier, a warp operation or its end for
  // `watchdog_seconds` ends the launch with a KernelFault (0: never).
  double watchdog_seconds = 60.0;
};

// Runs the launch to completion; throws KernelFault on a diagnosed fault.
void launch(const LaunchSpec& spec);

// Cost of one fiber context switch in nanoseconds, measured over `iterations` round trips.
double switch_cost_ns(int iterations);

}  // namespace emu
