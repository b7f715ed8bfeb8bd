// scheduler.cpp — block scheduling, barriers, warp operations, diagnostics.
//
// A Worker owns an OS thread's fibers (one stack region per CUDA thread of the
// largest block it has run). For each block it resumes every runnable fiber in
// order (or reverse order); a fiber runs until it waits at a barrier or a warp
// operation, or exits. When no fiber can run, the barrier is released if every
// thread is there, at the same call site; anything else is a diagnosed fault.
#include "scheduler.h"

#include <pthread.h>

#include <atomic>
#include <chrono>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "fiber.h"

namespace emu {
namespace {

enum class State : uint8_t { Runnable, AtBarrier, AtWarp, Exited, Faulted };

class Worker;

struct ThreadCtx {
  EmuThreadIds ids;  // first: kernels find it by masking their stack pointer
  Worker* worker;
  int linear;
  State state;
  const char* file;
  int line;
  int op;          // barrier op (EmuBarrierOp) or warp op (EmuWarpOp)
  unsigned mask;   // warp ops
  uint64_t value;  // warp operand, or barrier predicate
  int arg;
  int width;
  uint64_t result;
  Fiber fiber;
};
static_assert(offsetof(ThreadCtx, ids) == 0, "kernels read EmuThreadIds at the region start");
static_assert(sizeof(ThreadCtx) <= kCtxBytes, "thread context must fit its page");

inline ThreadCtx* self() {
  uintptr_t sp = reinterpret_cast<uintptr_t>(__builtin_frame_address(0));
  return reinterpret_cast<ThreadCtx*>(sp & ~static_cast<uintptr_t>(EMU_STACK_BYTES - 1));
}

const char* warp_op_name(int op) {
  static const char* names[] = {"__syncwarp", "__shfl_sync", "__shfl_up_sync", "__shfl_down_sync",
                                "__shfl_xor_sync", "__ballot_sync", "__any_sync", "__all_sync"};
  return op >= 0 && op < EMU_WARP_OP_COUNT ? names[op] : "warp operation";
}

const char* barrier_name(int op) {
  static const char* names[] = {"__syncthreads", "__syncthreads_count", "__syncthreads_and",
                                "__syncthreads_or"};
  return op >= 0 && op <= EMU_BARRIER_OR ? names[op] : "__syncthreads";
}

std::string format(const char* fmt, ...) {
  char buffer[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buffer, sizeof buffer, fmt, ap);
  va_end(ap);
  return buffer;
}

std::string where(const char* file, int line) {
  if (!file) return "an unknown line";
  const char* slash = std::strrchr(file, '/');
  return format("%s:%d", slash ? slash + 1 : file, line);
}

std::string thread_name(const ThreadCtx* c) {
  return format("thread (%u,%u,%u)", c->ids.thread_idx.x, c->ids.thread_idx.y, c->ids.thread_idx.z);
}

struct LaunchState {
  explicit LaunchState(const LaunchSpec& s)
      : spec(s),
        kernel(s.library->kernel(s.kernel)),
        total_blocks(static_cast<uint64_t>(s.grid.x) * s.grid.y * s.grid.z),
        threads(static_cast<int>(s.block.x * s.block.y * s.block.z)) {}
  const LaunchSpec& spec;
  const EmuKernelEntry& kernel;
  uint64_t total_blocks;
  int threads;
  std::atomic<uint64_t> next{0};
  std::atomic<bool> failed{false};
  bool interrupted = false;
  std::mutex mu;
  std::string error;

  void fail(const std::string& message) {
    std::lock_guard<std::mutex> lock(mu);
    if (!failed.load()) {
      error = message;
      failed.store(true);
    }
  }
};

void thread_main(void* arg);

class Worker {
 public:
  ~Worker() {
    for (char* r : regions_) {
      fiber_release(&ctx_of(r)->fiber);
      free_region(r);
    }
    fiber_release(&scheduler_);
  }

  // Takes blocks until none are left; `poll` (the calling thread only) may stop the launch.
  void run(LaunchState& launch, const std::function<bool()>* poll = nullptr) {
    launch_ = &launch;
    n_ = launch.threads;
    if (!prepare_fibers()) {
      launch.fail("the emulator could not allocate stacks for a block of " + std::to_string(n_) + " threads");
      return;
    }
    void* dynamic = nullptr;
    std::size_t bytes = launch.spec.shared_bytes;
    if (bytes && posix_memalign(&dynamic, 64, bytes) != 0) {
      launch.fail("the emulator could not allocate " + std::to_string(bytes) + " bytes of dynamic shared memory");
      return;
    }
    dynamic_shared_ = dynamic;
    const dim3 g = launch.spec.grid;
    auto last_poll = std::chrono::steady_clock::now();
    for (;;) {
      if (launch.failed.load(std::memory_order_relaxed)) break;
      if (poll && *poll) {
        auto now = std::chrono::steady_clock::now();
        if (now - last_poll > std::chrono::milliseconds(50)) {
          last_poll = now;
          if ((*poll)()) {
            launch.fail("interrupted");
            launch.interrupted = true;
            break;
          }
        }
      }
      uint64_t i = launch.next.fetch_add(1);
      if (i >= launch.total_blocks) break;
      uint64_t b = launch.spec.reverse ? launch.total_blocks - 1 - i : i;
      uint3 block{static_cast<unsigned>(b % g.x), static_cast<unsigned>((b / g.x) % g.y),
                  static_cast<unsigned>(b / (static_cast<uint64_t>(g.x) * g.y))};
      if (!run_block(block)) {
        break;  // the block's fibers stay abandoned; the next launch prepares them afresh
      }
    }
    std::free(dynamic);
    dynamic_shared_ = nullptr;
    launch_ = nullptr;
  }

  // ---- called on a fiber, through the EmuApi table
  int barrier(ThreadCtx* c, int op, int predicate, const char* file, int line) {
    c->state = State::AtBarrier;
    c->op = op;
    c->value = predicate ? 1 : 0;
    c->file = file;
    c->line = line;
    --runnable_;
    ++at_barrier_;
    yield(c);
    return static_cast<int>(c->result);
  }

  uint64_t warp(ThreadCtx* c, int op, unsigned mask, uint64_t value, int arg, int width, const char* file,
                int line) {
    const int lane = c->linear & 31;
    const int base = c->linear - lane;
    c->file = file;
    c->line = line;
    if (!((mask >> lane) & 1u))
      fault(c, format("%s: the calling lane %d is not in its mask 0x%08x", warp_op_name(op), lane, mask));
    if (op >= EMU_SHFL_IDX && op <= EMU_SHFL_XOR && (width < 1 || width > 32 || (width & (width - 1))))
      fault(c, format("%s: width %d is not a power of two from 1 to 32", warp_op_name(op), width));
    for (int l = 0; l < 32; ++l) {
      if (((mask >> l) & 1u) && base + l >= n_)
        fault(c, format("%s: mask 0x%08x names lane %d, but this warp has only %d threads", warp_op_name(op),
                        mask, l, n_ - base));
    }
    c->state = State::AtWarp;
    c->op = op;
    c->mask = mask;
    c->value = value;
    c->arg = arg;
    c->width = width;
    --runnable_;
    ++at_warp_;
    if (!complete_warp(c, base)) yield(c);
    return c->result;
  }

  [[noreturn]] void fault(ThreadCtx* c, const std::string& what) { fault_as(c, c, what); }

  // Ends the running fiber `current` and the launch, blaming thread `blame`.
  [[noreturn]] void fault_as(ThreadCtx* current, const ThreadCtx* blame, const std::string& what) {
    record_fault(blame, what + " at " + where(blame->file, blame->line));
    current->state = State::Faulted;
    fiber_switch(&current->fiber, &scheduler_);
    std::abort();  // a faulted fiber is never resumed
  }

  void* dynamic_shared() const { return dynamic_shared_; }

  std::string describe(const ThreadCtx* c) const {
    const uint3 b = c->ids.block_idx;
    return format("kernel %s, block (%u,%u,%u), %s", launch_->kernel.name, b.x, b.y, b.z,
                  thread_name(c).c_str());
  }

  // ---- the fiber body's end
  void exited(ThreadCtx* c) {
    c->state = State::Exited;
    --runnable_;
    ++exited_;
    fiber_switch(&c->fiber, &scheduler_);
  }

  const LaunchState& launch() const { return *launch_; }

 private:
  static ThreadCtx* ctx_of(char* region) { return reinterpret_cast<ThreadCtx*>(region); }
  ThreadCtx* ctx(int i) const { return ctx_of(regions_[i]); }

  bool prepare_fibers() {
    while (static_cast<int>(regions_.size()) < n_) {
      char* r = allocate_region();
      if (!r) return false;
      new (ctx_of(r)) ThreadCtx{};
      regions_.push_back(r);
    }
    // Fresh fibers at every launch: a fiber must start on this OS thread.
    for (int i = 0; i < n_; ++i) {
      ThreadCtx* c = ctx(i);
      c->worker = this;
      c->linear = i;
      fiber_prepare(&c->fiber, regions_[i], thread_main, c);
    }
    return true;
  }

  void yield(ThreadCtx* c) { fiber_switch(&c->fiber, &scheduler_); }

  void record_fault(const ThreadCtx* c, const std::string& what) {
    faulted_ = true;
    launch_->fail(describe(c) + ": " + what);
  }

  bool run_block(uint3 block) {
    const LaunchSpec& spec = launch_->spec;
    const dim3 bd = spec.block;
    for (int i = 0; i < n_; ++i) {
      ThreadCtx* c = ctx(i);
      c->ids.thread_idx = uint3{static_cast<unsigned>(i % bd.x), static_cast<unsigned>((i / bd.x) % bd.y),
                                static_cast<unsigned>(i / (bd.x * bd.y))};
      c->ids.block_idx = block;
      c->ids.block_dim = bd;
      c->ids.grid_dim = spec.grid;
      c->state = State::Runnable;
      c->file = nullptr;
      c->line = 0;
    }
    if (spec.fill_shared) {
      if (dynamic_shared_) std::memset(dynamic_shared_, 0xff, spec.shared_bytes);
      auto tls = spec.library->thread_shared_block();
      if (tls.first) std::memset(tls.first, 0xff, tls.second);
    }
    runnable_ = n_;
    at_barrier_ = at_warp_ = exited_ = 0;
    faulted_ = false;
    const bool reverse = spec.reverse;
    for (;;) {
      while (runnable_ > 0) {
        for (int k = 0; k < n_; ++k) {
          ThreadCtx* c = ctx(reverse ? n_ - 1 - k : k);
          if (c->state != State::Runnable) continue;
          fiber_switch(&scheduler_, &c->fiber);
          if (faulted_) return false;
        }
      }
      if (exited_ == n_) return true;
      if (!release_barrier()) return false;
    }
  }

  // Every fiber is stopped: release the barrier or diagnose why it cannot be.
  bool release_barrier() {
    if (at_warp_ == 0 && at_barrier_ > 0 && at_barrier_ + exited_ == n_) {
      const ThreadCtx* first = nullptr;
      const ThreadCtx* gone = nullptr;
      for (int i = 0; i < n_; ++i) {
        const ThreadCtx* c = ctx(i);
        if (c->state == State::Exited) {
          if (!gone) gone = c;
          continue;
        }
        if (!first) {
          first = c;
        } else if (c->file != first->file || c->line != first->line || c->op != first->op) {
          record_fault(c, format("threads of one block wait at different barriers: %s at %s() %s, %s at %s() %s",
                                 thread_name(first).c_str(), barrier_name(first->op),
                                 where(first->file, first->line).c_str(), thread_name(c).c_str(),
                                 barrier_name(c->op), where(c->file, c->line).c_str()));
          return false;
        }
      }
      if (gone) {
        record_fault(gone, format("exited while %d other threads of its block wait at %s() %s", at_barrier_,
                                  barrier_name(first->op), where(first->file, first->line).c_str()));
        return false;
      }
      uint64_t count = 0;
      for (int i = 0; i < n_; ++i) count += ctx(i)->value;
      uint64_t result = 0;
      switch (first->op) {
        case EMU_BARRIER_COUNT: result = count; break;
        case EMU_BARRIER_AND: result = count == static_cast<uint64_t>(n_); break;
        case EMU_BARRIER_OR: result = count > 0; break;
        default: result = 0;
      }
      for (int i = 0; i < n_; ++i) {
        ThreadCtx* c = ctx(i);
        c->result = result;
        c->state = State::Runnable;
      }
      runnable_ = n_;
      at_barrier_ = 0;
      return true;
    }
    diagnose_deadlock();
    return false;
  }

  void diagnose_deadlock() {
    // Group the stopped threads by where they wait; name the first of each group.
    std::string text = "deadlock: no thread of the block can go on;";
    std::vector<bool> listed(n_, false);
    const ThreadCtx* first_waiting = nullptr;
    for (int i = 0; i < n_; ++i) {
      if (listed[i]) continue;
      const ThreadCtx* c = ctx(i);
      if (c->state == State::Exited) continue;
      if (!first_waiting) first_waiting = c;
      int count = 0;
      for (int j = i; j < n_; ++j) {
        const ThreadCtx* d = ctx(j);
        bool same = d->state == c->state && d->file == c->file && d->line == c->line && d->op == c->op &&
                    (c->state != State::AtWarp || d->mask == c->mask);
        if (same) {
          listed[j] = true;
          ++count;
        }
      }
      std::string site = c->state == State::AtWarp
                             ? format("%s(mask 0x%08x) %s", warp_op_name(c->op), c->mask, where(c->file, c->line).c_str())
                             : format("%s() %s", barrier_name(c->op), where(c->file, c->line).c_str());
      if (count > 1)
        text += format(" %s and %d more wait at %s;", thread_name(c).c_str(), count - 1, site.c_str());
      else
        text += format(" %s waits at %s;", thread_name(c).c_str(), site.c_str());
      if (c->state == State::AtWarp) {
        const int base = c->linear & ~31;
        for (int l = 0; l < 32; ++l) {
          if (!((c->mask >> l) & 1u)) continue;
          const ThreadCtx* d = ctx(base + l);
          if (d->state == State::Exited) {
            text += format(" lane %d named in that mask has exited;", l);
            break;
          }
        }
      }
    }
    if (exited_) text += format(" %d threads have exited", exited_);
    if (first_waiting) record_fault(first_waiting, text);
  }

  // When every lane named in c's mask waits at a warp operation, performs it.
  bool complete_warp(ThreadCtx* c, int base) {
    const unsigned mask = c->mask;
    for (int l = 0; l < 32; ++l) {
      if (!((mask >> l) & 1u)) continue;
      ThreadCtx* d = ctx(base + l);
      if (d->state == State::Exited)
        fault(c, format("%s(mask 0x%08x) waits for lane %d, which has exited", warp_op_name(c->op), mask, l));
      if (d->state != State::AtWarp) return false;
    }
    for (int l = 0; l < 32; ++l) {
      if (!((mask >> l) & 1u)) continue;
      ThreadCtx* d = ctx(base + l);
      if (d->mask != mask || d->op != c->op)
        fault(c, format("lanes of one warp disagree: lane %d calls %s(mask 0x%08x) at %s, lane %d calls "
                        "%s(mask 0x%08x)",
                        l, warp_op_name(d->op), d->mask, where(d->file, d->line).c_str(), c->linear & 31,
                        warp_op_name(c->op), mask));
    }
    uint64_t votes = 0;
    for (int l = 0; l < 32; ++l)
      if (((mask >> l) & 1u) && ctx(base + l)->value) votes |= 1ull << l;
    for (int l = 0; l < 32; ++l) {
      if (!((mask >> l) & 1u)) continue;
      ThreadCtx* d = ctx(base + l);
      d->result = warp_result(c, d, l, base, votes, mask);
    }
    for (int l = 0; l < 32; ++l) {
      if (!((mask >> l) & 1u)) continue;
      ThreadCtx* d = ctx(base + l);
      d->state = State::Runnable;
      ++runnable_;
      --at_warp_;
    }
    return true;
  }

  uint64_t warp_result(ThreadCtx* current, ThreadCtx* d, int lane, int base, uint64_t votes, unsigned mask) {
    const int w = d->width;
    const int segment = lane & ~(w - 1);
    int src = lane;
    switch (d->op) {
      case EMU_WARP_SYNC: return 0;
      case EMU_VOTE_BALLOT: return votes;
      case EMU_VOTE_ANY: return votes != 0;
      case EMU_VOTE_ALL: return votes == mask;
      case EMU_SHFL_IDX: src = segment + (d->arg & (w - 1)); break;
      case EMU_SHFL_UP: src = lane - d->arg; if (src < segment) return d->value; break;
      case EMU_SHFL_DOWN: src = lane + d->arg; if (src >= segment + w) return d->value; break;
      case EMU_SHFL_XOR: src = lane ^ d->arg; if (src < segment || src >= segment + w) return d->value; break;
      default: return 0;
    }
    if (!((mask >> src) & 1u))
      fault_as(current, d, format("%s(mask 0x%08x): lane %d reads lane %d, which is not in the mask", warp_op_name(d->op),
                      mask, lane, src));
    return ctx(base + src)->value;
  }

  std::vector<char*> regions_;
  Fiber scheduler_;
  LaunchState* launch_ = nullptr;
  void* dynamic_shared_ = nullptr;
  int n_ = 0;
  int runnable_ = 0;
  int at_barrier_ = 0;
  int at_warp_ = 0;
  int exited_ = 0;
  bool faulted_ = false;
};

void thread_main(void* arg) {
  ThreadCtx* c = static_cast<ThreadCtx*>(arg);
  for (;;) {
    const LaunchState& l = c->worker->launch();
    l.kernel.run(l.spec.args);
    c->worker->exited(c);
  }
}

// ---- the table kernels call through
int api_barrier(int op, int predicate, const char* file, int line) {
  ThreadCtx* c = self();
  return c->worker->barrier(c, op, predicate, file, line);
}
uint64_t api_warp(int op, unsigned mask, uint64_t value, int arg, int width, const char* file, int line) {
  ThreadCtx* c = self();
  return c->worker->warp(c, op, mask, value, arg, width, file, line);
}
void* api_dynamic_shared() { return self()->worker->dynamic_shared(); }
void api_fault(const char* what, const char* file, int line) {
  ThreadCtx* c = self();
  c->file = file;
  c->line = line;
  c->worker->fault(c, what);
}
void api_describe(char* buffer, int size) {
  ThreadCtx* c = self();
  std::snprintf(buffer, static_cast<std::size_t>(size), "%s", c->worker->describe(c).c_str());
}

const EmuApi kApi = {EMU_API_VERSION, api_barrier, api_warp, api_dynamic_shared, api_fault, api_describe};

std::mutex g_launch_mutex;
std::vector<std::unique_ptr<Worker>> g_workers;

}  // namespace

const EmuApi* runtime_api() { return &kApi; }

void launch(const LaunchSpec& spec) {
  std::lock_guard<std::mutex> lock(g_launch_mutex);
  LaunchState state(spec);
  if (state.total_blocks == 0 || state.threads == 0) return;
  uint64_t want = static_cast<uint64_t>(spec.workers < 1 ? 1 : spec.workers);
  int workers = static_cast<int>(want < state.total_blocks ? want : state.total_blocks);
  while (static_cast<int>(g_workers.size()) < workers) g_workers.emplace_back(new Worker());
  std::vector<std::thread> threads;
  for (int i = 1; i < workers; ++i) {
    Worker* w = g_workers[i].get();
    threads.emplace_back([w, &state] { w->run(state); });
  }
  g_workers[0]->run(state, &spec.interrupted);
  for (auto& t : threads) t.join();
  if (state.interrupted) throw Interrupted("kernel launch interrupted");
  if (state.failed.load()) throw KernelFault(state.error);
}

namespace {
struct PingPong {
  Fiber main, fiber;
};
void pong(void* arg) {
  auto* p = static_cast<PingPong*>(arg);
  for (;;) fiber_switch(&p->fiber, &p->main);
}
}  // namespace

double switch_cost_ns(int iterations) {
  PingPong p;
  char* region = allocate_region();
  if (!region) throw std::runtime_error("cannot allocate a fiber stack");
  fiber_prepare(&p.fiber, region, pong, &p);
  fiber_switch(&p.main, &p.fiber);  // warm up
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < iterations; ++i) fiber_switch(&p.main, &p.fiber);
  auto t1 = std::chrono::steady_clock::now();
  fiber_release(&p.fiber);
  fiber_release(&p.main);
  free_region(region);
  double ns = std::chrono::duration<double, std::nano>(t1 - t0).count();
  return ns / (2.0 * iterations);
}

}  // namespace emu
