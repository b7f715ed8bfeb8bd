// scheduler.h — runs a kernel launch on the CPU: blocks spread over a pool of OS
// threads, each block's CUDA threads as fibers on one OS thread, with real
// __syncthreads barriers, warp operations and diagnostics.
#pragma once

#include <cstddef>
#include <functional>
#include <stdexcept>
#include <string>

#include "emu_api.h"
#include "loader.h"

namespace emu {

// A fault in a kernel (deadlock, divergent barrier, out-of-bounds index, ...): the
// message names the kernel, the block, the thread and the source line.
struct KernelFault : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// The launch stopped because `interrupted` said so (Ctrl-C in Python).
struct Interrupted : std::runtime_error {
  using std::runtime_error::runtime_error;
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
};

// Runs the launch to completion; throws KernelFault on a diagnosed fault.
void launch(const LaunchSpec& spec);

// Cost of one fiber context switch in nanoseconds, measured over `iterations` round trips.
double switch_cost_ns(int iterations);

}  // namespace emu
