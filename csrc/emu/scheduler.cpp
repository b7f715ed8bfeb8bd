// scheduler.cpp — block scheduling, barriers, warp operations, diagnostics.
//
// A Worker owns an OS thread's fibers (one stack region per CUDA thread of the
// largest block it has run). For each block it resumes every runnable fiber in
// order (or reverse order); a fiber runs until it waits at a barrier or a warp
// operation, or exits. When no fiber can run, the barrier is released if every
// thread is there, at the same call site; anything else is a diagnosed fault.
#include "scheduler.h"

#include <dlfcn.h>
#include <link.h>
#include <pthread.h>

#include <atomic>
#include <chrono>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <numeric>
#include <mutex>
#include <unordered_map>
#include <thread>
#include <vector>

#include "fiber.h"

namespace emu {
namespace {

enum class State : uint8_t { Runnable, AtBarrier, AtWarp, Exited, Faulted };

class Worker;

// At the base of each CUDA thread's stack region: what the kernel reads (its ids)
// and how the runtime finds its way back from a call on that stack.
struct ThreadCtx {
  EmuThreadIds ids;  // first: kernels find it by masking their stack pointer
  Worker* worker;
  int linear;
};
static_assert(offsetof(ThreadCtx, ids) == 0, "kernels read EmuThreadIds at the region start");
static_assert(sizeof(ThreadCtx) <= kCtxBytes, "thread context must fit its page");

// The scheduling state of one CUDA thread, kept densely per worker (the regions are
// aligned to 256 KiB, so state kept there would crowd into a few cache sets).
struct Slot {
  State state;
  int op;          // barrier op (EmuBarrierOp) or warp op (EmuWarpOp)
  const char* file;
  int line;
  unsigned mask;   // warp ops
  int arg;
  int width;
  uint64_t value;  // warp operand, or barrier predicate
  uint64_t result;
  Fiber fiber;
};

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
  if (line < 0) return file;  // already "file:line" (a site found by addr2line)
  const char* slash = std::strrchr(file, '/');
  return format("%s:%d", slash ? slash + 1 : file, line);
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
void hook_access(void* context, const void* addr, uint32_t info, const void* pc);
void check_access(void* context, const void* addr, uint32_t info, const void* pc);

// [start, end) of the loaded object holding `symbol` (this runtime's own image:
// kernels read the EmuApi table there; profiling drops those reads).
std::pair<uintptr_t, uintptr_t> image_of(const void* symbol) {
  Dl_info info;
  std::pair<uintptr_t, uintptr_t> range{0, 0};
  if (!dladdr(symbol, &info) || !info.dli_fbase) return range;
  struct Search {
    uintptr_t base;
    std::pair<uintptr_t, uintptr_t>* range;
  } search{reinterpret_cast<uintptr_t>(info.dli_fbase), &range};
  dl_iterate_phdr(
      [](struct dl_phdr_info* p, std::size_t, void* data) -> int {
        auto* s = static_cast<Search*>(data);
        uintptr_t lo = UINTPTR_MAX, hi = 0;
        for (int i = 0; i < p->dlpi_phnum; ++i) {
          if (p->dlpi_phdr[i].p_type != PT_LOAD) continue;
          uintptr_t a = p->dlpi_addr + p->dlpi_phdr[i].p_vaddr;
          lo = std::min(lo, a);
          hi = std::max(hi, static_cast<uintptr_t>(a + p->dlpi_phdr[i].p_memsz));
        }
        if (lo <= s->base && s->base < hi) {
          *s->range = {lo, hi};
          return 1;
        }
        return 0;
      },
      &search);
  return range;
}

class Worker {
 public:
  explicit Worker(int index) : index_(index) {}
  ~Worker() {
    for (Slot& slot : slots_) fiber_release(&slot.fiber);
    for (char* r : regions_) free_region(r);
    fiber_release(&scheduler_);
  }

  // Takes blocks until none are left; `poll` (the calling thread only) may stop the launch.
  void run(LaunchState& launch, const std::function<bool()>* poll = nullptr) {
    launch_ = &launch;
    instance_ = &launch.spec.library->instance(index_);
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
    barriers_ = warp_ops_ = blocks_profiled_ = 0;
    const LibraryInstance* plain = instance_;
    const LibraryInstance* hooked = nullptr;
    if (launch.spec.profile && launch.spec.profile_library) {
      hooked = &launch.spec.profile_library->instance(index_);
      recorder_.reset();
      ranges_.static_shared.clear();
      if (hooked->shared_bytes)
        ranges_.static_shared.emplace_back(reinterpret_cast<uintptr_t>(hooked->shared),
                                           reinterpret_cast<uintptr_t>(hooked->shared) + hooked->shared_bytes);
      for (const auto& a : launch.spec.profile_shared)
        ranges_.static_shared.emplace_back(hooked->base + a.first, hooked->base + a.first + a.second);
      ranges_.dynamic_shared = reinterpret_cast<uintptr_t>(dynamic);
      ranges_.dynamic_shared_end = ranges_.dynamic_shared + (dynamic ? bytes : 0);
      ranges_.ignore = launch.spec.profile_ignore;
      ranges_.rebase = launch.spec.profile_rebase;
      ranges_.ignore.emplace_back(reinterpret_cast<uintptr_t>(hooked->image.start),
                                  reinterpret_cast<uintptr_t>(hooked->image.end));
      ranges_.ignore.push_back(image_of(reinterpret_cast<const void*>(&thread_main)));
      ranges_.base = hooked->base;
    }
    const CheckSpec& check = launch.spec.check;
    checking_ = check.checking();
    random_ = check.random;
    const LibraryInstance* checked = nullptr;
    if (check.active()) {
      checked = &launch.spec.check_library->instance(index_);
      checker_.begin_launch(check, checked->base, reinterpret_cast<uintptr_t>(checked->image.start),
                            reinterpret_cast<uintptr_t>(checked->image.end), reinterpret_cast<uintptr_t>(dynamic),
                            bytes, launch.total_blocks, n_);
      rng_ = check.seed * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull;
      if (!rng_) rng_ = 1;
      // A random bijection of the block order: i -> (a * i + c) mod total, a coprime to it.
      block_mul_ = 1;
      block_add_ = 0;
      if (random_ && launch.total_blocks > 1) {
        const uint64_t t = launch.total_blocks;
        block_mul_ = next_random() % t;
        while (block_mul_ == 0 || std::gcd(block_mul_, t) != 1) block_mul_ = (block_mul_ + 1) % t;
        block_add_ = next_random() % t;
      }
      instance_ = plain = checked;
      __atomic_store_n(&checked->hooks->access, &check_access, __ATOMIC_RELAXED);
      __atomic_store_n(&checked->hooks->context, static_cast<void*>(this), __ATOMIC_RELEASE);
    }
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
      if (random_)
        b = static_cast<uint64_t>((static_cast<unsigned __int128>(block_mul_) * i + block_add_) % launch.total_blocks);
      if (checked) checker_.begin_block(static_cast<uint32_t>(b));
      uint3 block{static_cast<unsigned>(b % g.x), static_cast<unsigned>((b / g.x) % g.y),
                  static_cast<unsigned>(b / (static_cast<uint64_t>(g.x) * g.y))};
      recording_ = hooked && std::binary_search(launch.spec.profile_blocks.begin(),
                                                launch.spec.profile_blocks.end(), b);
      instance_ = recording_ ? hooked : plain;
      if (recording_) {
        recorder_.begin_block(n_, ranges_);
        __atomic_store_n(&hooked->hooks->access, &hook_access, __ATOMIC_RELAXED);
        __atomic_store_n(&hooked->hooks->context, static_cast<void*>(&recorder_), __ATOMIC_RELEASE);
      }
      bool ok = run_block(block);
      if (recording_) {
        __atomic_store_n(&hooked->hooks->context, static_cast<void*>(nullptr), __ATOMIC_RELEASE);
        if (ok) {
          recorder_.flush();
          ++blocks_profiled_;
        }
        recording_ = false;
      }
      instance_ = plain;
      if (!ok) break;  // the block's fibers stay abandoned; the next launch prepares them afresh
    }
    if (checked) __atomic_store_n(&checked->hooks->context, static_cast<void*>(nullptr), __ATOMIC_RELEASE);
    checking_ = random_ = false;
    std::free(dynamic);
    dynamic_shared_ = nullptr;
    launch_ = nullptr;
  }

  // ---- called on a fiber, through the EmuApi table
  int barrier(int i, int op, int predicate, const char* file, int line) {
    Slot& s = slots_[i];
    s.state = State::AtBarrier;
    s.op = op;
    s.value = predicate ? 1 : 0;
    s.file = file;
    s.line = line;
    --runnable_;
    ++at_barrier_;
    yield(i);
    return static_cast<int>(s.result);
  }

  uint64_t warp(int i, int op, unsigned mask, uint64_t value, int arg, int width, const char* file, int line) {
    Slot& s = slots_[i];
    const int lane = i & 31;
    const int base = i - lane;
    s.file = file;
    s.line = line;
    if (!((mask >> lane) & 1u))
      fault(i, format("%s: the calling lane %d is not in its mask 0x%08x", warp_op_name(op), lane, mask));
    if (op >= EMU_SHFL_IDX && op <= EMU_SHFL_XOR && (width < 1 || width > 32 || (width & (width - 1))))
      fault(i, format("%s: width %d is not a power of two from 1 to 32", warp_op_name(op), width));
    for (int l = 0; l < 32; ++l) {
      if (((mask >> l) & 1u) && base + l >= n_)
        fault(i, format("%s: mask 0x%08x names lane %d, but this warp has only %d threads", warp_op_name(op),
                        mask, l, n_ - base));
    }
    s.state = State::AtWarp;
    s.op = op;
    s.mask = mask;
    s.value = value;
    s.arg = arg;
    s.width = width;
    --runnable_;
    ++at_warp_;
    if (!complete_warp(i, base)) yield(i);
    return s.result;
  }

  [[noreturn]] void fault(int i, const std::string& what) { fault_as(i, i, what); }

  // Ends the running fiber `current` and the launch, blaming thread `blame`.
  [[noreturn]] void fault_as(int current, int blame, const std::string& what) {
    record_fault(blame, what + " at " + where(slots_[blame].file, slots_[blame].line));
    slots_[current].state = State::Faulted;
    fiber_switch(&slots_[current].fiber, &scheduler_);
    std::abort();  // a faulted fiber is never resumed
  }

  void set_site(int i, const char* file, int line) {
    slots_[i].file = file;
    slots_[i].line = line;
  }

  void* dynamic_shared() const { return dynamic_shared_; }

  // ---- the hooked build's accesses in check mode (on the accessing fiber)
  void on_access(int i, const void* addr, uint32_t info, const void* pc) {
    if (EMU_ACCESS_KIND(info) & EMU_ACCESS_FENCE) {
      if (checking_) checker_.fence();
      return;
    }
    if (random_ && (next_random() & 1)) preempt(i);
    if (!checking_) return;
    CheckFinding found;
    if (checker_.access(i, reinterpret_cast<uintptr_t>(addr), info, reinterpret_cast<uintptr_t>(pc), found)) return;
    std::string what = found.what;
    fault_at_pc(i, what, found);
  }

  // ---- profiling: filled during run(), read by launch() after the workers joined
  Recorder& recorder() { return recorder_; }
  uint64_t barriers() const { return barriers_; }
  uint64_t warp_ops() const { return warp_ops_; }
  uint64_t blocks_profiled() const { return blocks_profiled_; }

  std::string describe(int i) const {
    const uint3 b = ctx(i)->ids.block_idx;
    return format("kernel %s, block (%u,%u,%u), %s", launch_->kernel.name, b.x, b.y, b.z, thread_name(i).c_str());
  }

  // ---- the fiber body
  void run_kernel() const { instance_->table[launch_->spec.kernel].run(launch_->spec.args); }

  void exited(int i) {
    slots_[i].state = State::Exited;
    --runnable_;
    ++exited_;
    yield(i);
  }

 private:
  uint64_t next_random() {  // xorshift64*
    rng_ ^= rng_ >> 12;
    rng_ ^= rng_ << 25;
    rng_ ^= rng_ >> 27;
    return rng_ * 0x2545F4914F6CDD1Dull;
  }

  // A random runnable thread other than `i`, or -1.
  int random_runnable(int i) {
    if (runnable_ <= 0) return -1;
    int start = static_cast<int>(next_random() % static_cast<uint64_t>(n_));
    for (int k = 0; k < n_; ++k) {
      int j = start + k;
      if (j >= n_) j -= n_;
      if (j != i && slots_[j].state == State::Runnable) return j;
    }
    return -1;
  }

  // The random schedule: hands the OS thread to another runnable thread; this one
  // stays runnable and goes on when some thread hands back to it.
  void preempt(int i) {
    int j = random_runnable(i);
    if (j >= 0) fiber_switch(&slots_[i].fiber, &slots_[j].fiber);
  }

  // "file:line" of a site of the hooked build (first frame outside the emulator's
  // headers), by addr2line on the library; called only to report a fault.
  std::string site(uintptr_t pc) {
    const Library* lib = launch_->spec.check_library;
    uintptr_t offset = pc - instance_->base - 1;  // inside the call instruction
    std::string command = "addr2line -i -e '" + lib->path() + "' " + format("0x%llx", (unsigned long long)offset) +
                          " 2>/dev/null";
    std::string best;
    if (FILE* f = popen(command.c_str(), "r")) {
      char line[1024];
      while (std::fgets(line, sizeof line, f)) {
        std::string text(line);
        while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) text.pop_back();
        std::size_t paren = text.find(" (discriminator");
        if (paren != std::string::npos) text.resize(paren);
        if (best.empty() && text.find("cuda_emu.h") == std::string::npos &&
            text.find("emu_profile.h") == std::string::npos && text.find("??") == std::string::npos)
          best = text;
      }
      pclose(f);
    }
    if (best.empty()) return format("an unknown line (pc offset 0x%llx)", (unsigned long long)offset);
    const char* slash = std::strrchr(best.c_str(), '/');
    return slash ? std::string(slash + 1) : best;
  }

  std::string linear_thread_name(int linear) const {
    const dim3 bd = launch_->spec.block;
    return format("thread (%u,%u,%u)", static_cast<unsigned>(linear % bd.x),
                  static_cast<unsigned>((linear / bd.x) % bd.y), static_cast<unsigned>(linear / (bd.x * bd.y)));
  }

  std::string block_name(uint64_t b) const {
    const dim3 g = launch_->spec.grid;
    return format("block (%u,%u,%u)", static_cast<unsigned>(b % g.x), static_cast<unsigned>((b / g.x) % g.y),
                  static_cast<unsigned>(b / (static_cast<uint64_t>(g.x) * g.y)));
  }

  [[noreturn]] void fault_at_pc(int i, std::string what, const CheckFinding& found) {
    site_text_ = site(found.pc);
    std::size_t at = what.find("@OTHER@");
    if (at != std::string::npos) {
      const uint3 b = ctx(i)->ids.block_idx;
      const dim3 g = launch_->spec.grid;
      uint64_t mine = b.x + static_cast<uint64_t>(g.x) * (b.y + static_cast<uint64_t>(g.y) * b.z);
      std::string other = linear_thread_name(found.other_thread);
      if (found.other_block != mine) other += " of " + block_name(found.other_block);
      other += " at " + site(found.other_pc);
      what.replace(at, 7, other);
    }
    slots_[i].file = site_text_.c_str();
    slots_[i].line = -1;
    fault(i, what);
  }

  static ThreadCtx* ctx_of(char* region) { return reinterpret_cast<ThreadCtx*>(region); }
  ThreadCtx* ctx(int i) const { return ctx_of(regions_[i]); }

  std::string thread_name(int i) const {
    const uint3 t = ctx(i)->ids.thread_idx;
    return format("thread (%u,%u,%u)", t.x, t.y, t.z);
  }

  bool prepare_fibers() {
    while (static_cast<int>(regions_.size()) < n_) {
      char* r = allocate_region();
      if (!r) return false;
      new (ctx_of(r)) ThreadCtx{};
      regions_.push_back(r);
    }
    if (static_cast<int>(slots_.size()) < n_) slots_.resize(n_);  // Fiber handles stay with their slot
    // Fresh fibers at every launch: a fiber must start on this OS thread.
    for (int i = 0; i < n_; ++i) {
      ThreadCtx* c = ctx(i);
      c->worker = this;
      c->linear = i;
      // Staggered by 576 bytes (nine cache lines) a thread: 64 distinct L1 sets.
      std::size_t stagger = (static_cast<std::size_t>(i) * 576) % 65536;
      fiber_prepare(&slots_[i].fiber, regions_[i], thread_main, c, stagger);
    }
    return true;
  }

  // The next runnable thread after `i` in schedule order, or -1.
  int next_runnable(int i) {
    if (random_) return random_runnable(i);
    if (reverse_) {
      for (int j = i - 1; j >= 0; --j)
        if (slots_[j].state == State::Runnable) return j;
    } else {
      for (int j = i + 1; j < n_; ++j)
        if (slots_[j].state == State::Runnable) return j;
    }
    return -1;
  }

  // Hands the OS thread straight to the next runnable fiber of this pass, else back
  // to the scheduler.
  void yield(int i) {
    int next = next_runnable(i);
    fiber_switch(&slots_[i].fiber, next >= 0 ? &slots_[next].fiber : &scheduler_);
  }

  void record_fault(int i, const std::string& what) {
    faulted_ = true;
    launch_->fail(describe(i) + ": " + what);
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
      Slot& s = slots_[i];
      s.state = State::Runnable;
      s.file = nullptr;
      s.line = 0;
    }
    if (spec.fill_shared) {
      if (dynamic_shared_) std::memset(dynamic_shared_, 0xff, spec.shared_bytes);
      if (instance_->shared) std::memset(instance_->shared, 0xff, instance_->shared_bytes);
      for (const auto& a : spec.shared_statics)
        std::memset(reinterpret_cast<void*>(instance_->base + a.first), 0xff, a.second);
    }
    runnable_ = n_;
    at_barrier_ = at_warp_ = exited_ = 0;
    faulted_ = false;
    reverse_ = spec.reverse;
    for (;;) {
      while (runnable_ > 0) {
        int first = next_runnable(reverse_ ? n_ : -1);
        fiber_switch(&scheduler_, &slots_[first].fiber);  // runs a pass of hand-offs
        if (faulted_) return false;
      }
      if (exited_ == n_) return true;
      if (!release_barrier()) return false;
    }
  }

  // Every fiber is stopped: release the barrier or diagnose why it cannot be.
  bool release_barrier() {
    if (at_warp_ == 0 && at_barrier_ > 0 && at_barrier_ + exited_ == n_) {
      int first = -1;
      int gone = -1;
      for (int i = 0; i < n_; ++i) {
        const Slot& s = slots_[i];
        if (s.state == State::Exited) {
          if (gone < 0) gone = i;
          continue;
        }
        if (first < 0) {
          first = i;
          continue;
        }
        const Slot& f = slots_[first];
        if (s.file != f.file || s.line != f.line || s.op != f.op) {
          record_fault(i, format("threads of one block wait at different barriers: %s at %s() %s, %s at %s() %s",
                                 thread_name(first).c_str(), barrier_name(f.op), where(f.file, f.line).c_str(),
                                 thread_name(i).c_str(), barrier_name(s.op), where(s.file, s.line).c_str()));
          return false;
        }
      }
      const Slot& f = slots_[first];
      if (gone >= 0) {
        record_fault(gone, format("exited while %d other threads of its block wait at %s() %s", at_barrier_,
                                  barrier_name(f.op), where(f.file, f.line).c_str()));
        return false;
      }
      uint64_t result = 0;
      if (f.op != EMU_BARRIER_PLAIN) {
        uint64_t count = 0;
        for (int i = 0; i < n_; ++i) count += slots_[i].value;
        result = f.op == EMU_BARRIER_COUNT ? count
                 : f.op == EMU_BARRIER_AND ? (count == static_cast<uint64_t>(n_))
                                           : (count > 0);
      }
      for (int i = 0; i < n_; ++i) {
        slots_[i].result = result;
        slots_[i].state = State::Runnable;
      }
      runnable_ = n_;
      at_barrier_ = 0;
      ++barriers_;
      if (checking_) checker_.barrier();
      if (recording_) recorder_.flush();  // every thread is stopped here
      return true;
    }
    diagnose_deadlock();
    return false;
  }

  void diagnose_deadlock() {
    // Group the stopped threads by where they wait; name the first of each group.
    std::string text = "deadlock: no thread of the block can go on;";
    std::vector<bool> listed(n_, false);
    int first_waiting = -1;
    for (int i = 0; i < n_; ++i) {
      const Slot& c = slots_[i];
      if (listed[i] || c.state == State::Exited) continue;
      if (first_waiting < 0) first_waiting = i;
      int count = 0;
      for (int j = i; j < n_; ++j) {
        const Slot& d = slots_[j];
        bool same = d.state == c.state && d.file == c.file && d.line == c.line && d.op == c.op &&
                    (c.state != State::AtWarp || d.mask == c.mask);
        if (same) {
          listed[j] = true;
          ++count;
        }
      }
      std::string site = c.state == State::AtWarp
                             ? format("%s(mask 0x%08x) %s", warp_op_name(c.op), c.mask, where(c.file, c.line).c_str())
                             : format("%s() %s", barrier_name(c.op), where(c.file, c.line).c_str());
      if (count > 1)
        text += format(" %s and %d more wait at %s;", thread_name(i).c_str(), count - 1, site.c_str());
      else
        text += format(" %s waits at %s;", thread_name(i).c_str(), site.c_str());
      if (c.state == State::AtWarp) {
        const int base = i & ~31;
        for (int l = 0; l < 32; ++l) {
          if (((c.mask >> l) & 1u) && slots_[base + l].state == State::Exited) {
            text += format(" lane %d named in that mask has exited;", l);
            break;
          }
        }
      }
    }
    if (exited_) text += format(" %d threads have exited", exited_);
    if (first_waiting >= 0) record_fault(first_waiting, text);
  }

  // When every lane named in thread i's mask waits at a warp operation, performs it.
  bool complete_warp(int i, int base) {
    const Slot& c = slots_[i];
    const unsigned mask = c.mask;
    for (int l = 0; l < 32; ++l) {
      if (!((mask >> l) & 1u)) continue;
      const Slot& d = slots_[base + l];
      if (d.state == State::Exited)
        fault(i, format("%s(mask 0x%08x) waits for lane %d, which has exited", warp_op_name(c.op), mask, l));
      if (d.state != State::AtWarp) return false;
    }
    for (int l = 0; l < 32; ++l) {
      if (!((mask >> l) & 1u)) continue;
      const Slot& d = slots_[base + l];
      if (d.mask != mask || d.op != c.op)
        fault(i, format("lanes of one warp disagree: lane %d calls %s(mask 0x%08x) at %s, lane %d calls "
                        "%s(mask 0x%08x)",
                        l, warp_op_name(d.op), d.mask, where(d.file, d.line).c_str(), i & 31, warp_op_name(c.op),
                        mask));
    }
    uint64_t votes = 0;
    for (int l = 0; l < 32; ++l)
      if (((mask >> l) & 1u) && slots_[base + l].value) votes |= 1ull << l;
    for (int l = 0; l < 32; ++l)
      if ((mask >> l) & 1u) slots_[base + l].result = warp_result(i, l, base, votes, mask);
    for (int l = 0; l < 32; ++l) {
      if (!((mask >> l) & 1u)) continue;
      slots_[base + l].state = State::Runnable;
      ++runnable_;
      --at_warp_;
    }
    ++warp_ops_;
    if (checking_) checker_.warp_sync(base, mask);
    return true;
  }

  // The result of lane `lane`'s warp operation; `current` is the running thread.
  uint64_t warp_result(int current, int lane, int base, uint64_t votes, unsigned mask) {
    const Slot& d = slots_[base + lane];
    const int w = d.width;
    const int segment = lane & ~(w - 1);
    int src = lane;
    switch (d.op) {
      case EMU_WARP_SYNC: return 0;
      case EMU_VOTE_BALLOT: return votes;
      case EMU_VOTE_ANY: return votes != 0;
      case EMU_VOTE_ALL: return votes == mask;
      case EMU_SHFL_IDX: src = segment + (d.arg & (w - 1)); break;
      case EMU_SHFL_UP: src = lane - d.arg; if (src < segment) return d.value; break;
      case EMU_SHFL_DOWN: src = lane + d.arg; if (src >= segment + w) return d.value; break;
      case EMU_SHFL_XOR: src = lane ^ d.arg; if (src < segment || src >= segment + w) return d.value; break;
      default: return 0;
    }
    if (!((mask >> src) & 1u))
      fault_as(current, base + lane,
               format("%s(mask 0x%08x): lane %d reads lane %d, which is not in the mask", warp_op_name(d.op), mask,
                      lane, src));
    return slots_[base + src].value;
  }

  const int index_;  // which library instance this worker's OS thread uses
  std::vector<char*> regions_;
  std::vector<Slot> slots_;
  Fiber scheduler_;
  LaunchState* launch_ = nullptr;
  const LibraryInstance* instance_ = nullptr;
  void* dynamic_shared_ = nullptr;
  int n_ = 0;
  int runnable_ = 0;
  int at_barrier_ = 0;
  int at_warp_ = 0;
  int exited_ = 0;
  bool faulted_ = false;
  bool reverse_ = false;
  // profiling
  bool recording_ = false;
  uint64_t barriers_ = 0, warp_ops_ = 0, blocks_profiled_ = 0;
  Recorder recorder_;
  ProfileRanges ranges_;
  // checks and the random schedule
  bool checking_ = false;
  bool random_ = false;
  uint64_t rng_ = 1;
  uint64_t block_mul_ = 1, block_add_ = 0;
  Checker checker_;
  std::string site_text_;
};

void thread_main(void* arg) {
  ThreadCtx* c = static_cast<ThreadCtx*>(arg);
  for (;;) {
    c->worker->run_kernel();
    c->worker->exited(c->linear);
  }
}

// ---- the hooks of an instrumented library call this (armed blocks only, on their fibers)
void hook_access(void* context, const void* addr, uint32_t info, const void* pc) {
  if (EMU_ACCESS_KIND(info) & EMU_ACCESS_FENCE) return;
  static_cast<Recorder*>(context)->record(self()->linear, addr, info, pc);
}

// ---- the same hooks in check mode / random schedule
void check_access(void* context, const void* addr, uint32_t info, const void* pc) {
  static_cast<Worker*>(context)->on_access(self()->linear, addr, info, pc);
}

// ---- the table kernels call through
int api_barrier(int op, int predicate, const char* file, int line) {
  ThreadCtx* c = self();
  return c->worker->barrier(c->linear, op, predicate, file, line);
}
uint64_t api_warp(int op, unsigned mask, uint64_t value, int arg, int width, const char* file, int line) {
  ThreadCtx* c = self();
  return c->worker->warp(c->linear, op, mask, value, arg, width, file, line);
}
void* api_dynamic_shared() { return self()->worker->dynamic_shared(); }
void api_fault(const char* what, const char* file, int line) {
  ThreadCtx* c = self();
  c->worker->set_site(c->linear, file, line);
  c->worker->fault(c->linear, what);
}
void api_describe(char* buffer, int size) {
  ThreadCtx* c = self();
  std::snprintf(buffer, static_cast<std::size_t>(size), "%s", c->worker->describe(c->linear).c_str());
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
  uint64_t want = static_cast<uint64_t>(spec.workers < 1 || spec.check.active() ? 1 : spec.workers);
  int workers = static_cast<int>(want < state.total_blocks ? want : state.total_blocks);
  spec.library->prepare(workers);  // one library instance (own static __shared__ arrays) per worker
  if (spec.check.active()) {
    if (!spec.check_library) throw std::runtime_error("a checked launch needs the hooked build of its kernels");
    if (spec.profile) throw std::runtime_error("a launch cannot be profiled and checked at once");
    spec.check_library->prepare(workers);
    if (!spec.check_library->instance(0).hooks)
      throw std::runtime_error("kernel library " + spec.check_library->path() + " has no access hooks");
  }
  if (spec.profile && spec.profile_library) {
    spec.profile_library->prepare(workers);
    for (int i = 0; i < workers; ++i)
      if (!spec.profile_library->instance(i).hooks)
        throw std::runtime_error("kernel library " + spec.profile_library->path() + " has no access hooks");
  }
  while (static_cast<int>(g_workers.size()) < workers)
    g_workers.emplace_back(new Worker(static_cast<int>(g_workers.size())));
  std::vector<std::thread> threads;
  for (int i = 1; i < workers; ++i) {
    Worker* w = g_workers[i].get();
    threads.emplace_back([w, &state] { w->run(state); });
  }
  g_workers[0]->run(state, &spec.interrupted);
  for (auto& t : threads) t.join();
  if (spec.profile) {
    LaunchProfile& p = *spec.profile;
    p.blocks_total = state.total_blocks;
    std::unordered_map<uint64_t, SiteFigures> sites;
    for (int i = 0; i < workers; ++i) {
      Worker& w = *g_workers[i];
      p.barriers += w.barriers();
      p.warp_ops += w.warp_ops();
      p.blocks_profiled += w.blocks_profiled();
      if (spec.profile_library) w.recorder().merge_into(sites);
    }
    for (auto& kv : sites) p.sites.push_back(kv.second);
    std::sort(p.sites.begin(), p.sites.end(), [](const SiteFigures& a, const SiteFigures& b) {
      return a.offset != b.offset ? a.offset < b.offset : a.space < b.space;
    });
  }
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
