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
#include <signal.h>
#include <sys/mman.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
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

// GPU arithmetic (issue 10, item 6): the GPU build flushes single-precision subnormals
// (NVRTC -ftz=true, which CuPy forces), so while a worker runs blocks its x86 MXCSR has
// FTZ (bit 15: subnormal results become 0) and DAZ (bit 6: subnormal inputs read as 0)
// set, and the caller's MXCSR comes back afterwards. Fibers take the MXCSR of the thread
// that prepares them (fiber.cpp), so this is set before prepare_fibers.
struct FlushSubnormals {
#if defined(__x86_64__) || defined(__i386__)
  uint32_t saved = 0;
  FlushSubnormals() {
    __asm__ volatile("stmxcsr %0" : "=m"(saved));
    uint32_t flushing = saved | 0x8040u;
    __asm__ volatile("ldmxcsr %0" : : "m"(flushing));
  }
  ~FlushSubnormals() { __asm__ volatile("ldmxcsr %0" : : "m"(saved)); }
#endif
};

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
  uintptr_t seen_pc;  // where a signal last found this thread (preemption, watchdog)
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
  std::atomic<bool> interrupted{false};
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

// ---- signals, preemption and the watchdog (issue 10, item 5): declarations; the
// design is described above Monitor, further down.
enum Request : int { kNoRequest = 0, kPreempt = 1, kWatchdog = 2, kStop = 3, kFaultSignal = 4 };
struct Pending {  // what a signal handler saw, formatted after the block is abandoned
  int kind = kNoRequest;
  int sig = 0, code = 0;
  uintptr_t addr = 0, pc = 0;
  int fiber = -1;
  double stalled = 0;
};
constexpr std::size_t kAltStackBytes = 64 * 1024;  // per worker: handlers run here
constexpr std::size_t kAbandonStackBytes = 64 * 1024;  // per worker: a faulted fiber's way out
extern "C" void emu_abandon_entry();
std::string addr2line_site(const std::string& path, uintptr_t offset);

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
    FlushSubnormals ftz;  // GPU arithmetic: see FlushSubnormals
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
      const uintptr_t image_start = reinterpret_cast<uintptr_t>(hooked->image.start);
      const uintptr_t image_end = reinterpret_cast<uintptr_t>(hooked->image.end);
      if (hooked->device_start < hooked->device_end && image_start <= hooked->device_start &&
          hooked->device_end <= image_end) {  // __device__ variables are global traffic
        ranges_.ignore.emplace_back(image_start, hooked->device_start);
        ranges_.ignore.emplace_back(hooked->device_end, image_end);
      } else {
        ranges_.ignore.emplace_back(image_start, image_end);
      }
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
                            bytes, launch.total_blocks, n_, checked->device_start, checked->device_end);
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
    bind_dynamic_slots(plain, dynamic);
    if (hooked) bind_dynamic_slots(hooked, dynamic);
    guard_begin();
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
      if (!ok) report_pending();
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
    guard_end();
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

  // ---- signals, preemption and the watchdog (see Monitor below)
  std::atomic<uint64_t> progress_{0};  // barriers, warp operations, exits, blocks: not preemptions
  std::atomic<int> request_{kNoRequest};  // what the monitor asks of the next kPreemptSignal
  double stall_seconds_ = 0;              // written by the monitor before a kWatchdog request
  pthread_t thread_{};
  uint64_t watched_progress_ = 0;         // the monitor's own view (its thread only, after add)
  std::chrono::steady_clock::time_point watched_since_{};

  void note_progress() {
    progress_.store(progress_.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  }

  // The thread of this worker's block whose stack holds `sp`, or -1 (not on a fiber).
  int fiber_of(uintptr_t sp) const {
    const uintptr_t region = sp & ~static_cast<uintptr_t>(EMU_STACK_BYTES - 1);
    for (int k = 0; k < n_; ++k)
      if (reinterpret_cast<uintptr_t>(regions_[k]) == region) return k;
    return -1;
  }

  // In a SIGSEGV/SIGBUS/SIGFPE handler on this worker's OS thread: a fault on one of
  // the block's fibers abandons that fiber (it continues in emu_abandon_entry on the
  // worker's own small stack, which returns to the scheduler). False: not ours.
  bool take_fault(int sig, const siginfo_t* info, void* uc) {
    if (!launch_ || !abandon_stack_) return false;
    const int i = fiber_of(context_sp(uc));
    if (i < 0) return false;
    pending_.kind = kFaultSignal;
    pending_.sig = sig;
    pending_.code = info->si_code;
    pending_.addr = reinterpret_cast<uintptr_t>(info->si_addr);
    pending_.pc = context_pc(uc);
    pending_.fiber = i;
    return redirect_to_abandon(uc, &emu_abandon_entry, abandon_stack_ + kAbandonStackBytes);
  }

  // In the kPreemptSignal handler: acts on the monitor's request when the signal
  // interrupted kernel code on one of the block's fibers; otherwise the monitor asks
  // again at its next tick.
  void take_request(void* uc) {
    const int request = request_.load(std::memory_order_acquire);
    if (request == kNoRequest || !launch_ || !abandon_stack_) return;
    const LibraryInstance* in = instance_;
    const uintptr_t pc = context_pc(uc);
    if (!in || pc < in->image_start || pc >= in->image_end) return;
    const int i = fiber_of(context_sp(uc));
    if (i < 0) return;
    slots_[i].seen_pc = pc;
    request_.store(kNoRequest, std::memory_order_relaxed);
    if (request == kPreempt) {
      if (preempt_target(i) >= 0) redirect_to_preempt(uc);
      return;
    }
    pending_.kind = request;
    pending_.pc = pc;
    pending_.fiber = i;
    pending_.stalled = stall_seconds_;
    redirect_to_abandon(uc, &emu_abandon_entry, abandon_stack_ + kAbandonStackBytes);
  }

  // On the preempted fiber (emu_preempt_thunk): hands the OS thread to a runnable
  // thread of another warp; this one stays runnable and goes on where it was when
  // some thread hands back to it.
  void preempted() {
    const int i = self()->linear;
    const int j = preempt_target(i);
    if (j >= 0) fiber_switch(&slots_[i].fiber, &slots_[j].fiber);
  }

  // On the abandon stack: ends the fiber the handler found, like a diagnosed fault.
  [[noreturn]] void abandon() {
    const int i = pending_.fiber;
    slots_[i].state = State::Faulted;
    faulted_ = true;
    fiber_switch(&slots_[i].fiber, &scheduler_);
    std::abort();  // never resumed
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
    return addr2line_site(lib->path(), offset);
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
    note_progress();
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
      s.seen_pc = 0;
    }
    note_progress();
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
        slots_[i].seen_pc = 0;
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

  // The runnable thread a preemption hands over to, -1 when none: preferably one no
  // signal has found spinning since the block's last barrier, from the next warp on
  // (warps run independently; lanes of a warp often spin together), else the next
  // runnable thread round the block (every spinning thread gets its turn). Reverse
  // order walks the other way; the random schedule picks at random.
  int preempt_target(int i) {
    if (random_) return random_runnable(i);
    if (n_ <= 1) return -1;
    const int step = reverse_ ? -1 : 1;
    const int warp_start = reverse_ ? (i & ~31) - 1 : (i | 31) + 1;
    for (int k = 0; k < n_; ++k) {
      const int j = (((warp_start + step * k) % n_) + n_) % n_;
      if (j != i && slots_[j].state == State::Runnable && !slots_[j].seen_pc) return j;
    }
    for (int k = 1; k < n_; ++k) {
      const int j = (((i + step * k) % n_) + n_) % n_;
      if (slots_[j].state == State::Runnable) return j;
    }
    return -1;
  }

  void bind_dynamic_slots(const LibraryInstance* in, void* dynamic) {
    for (int k = 0; in && k < in->dynamic_count; ++k) *in->dynamic_slots[k] = dynamic;
  }

  // Where the kernel was at `pc` (a faulting or interrupted instruction): file:line
  // by addr2line on whichever build of the kernels holds it.
  std::string site_of_pc(uintptr_t pc) const {
    const LaunchSpec& spec = launch_->spec;
    for (const Library* lib : {spec.library, spec.check_library, spec.profile_library}) {
      if (!lib || lib->instances() <= index_) continue;
      const LibraryInstance& in = lib->instance(index_);
      if (pc >= in.image_start && pc < in.image_end) return addr2line_site(lib->path(), pc - in.base);
    }
    Dl_info info;
    if (dladdr(reinterpret_cast<void*>(pc), &info) && info.dli_fname) {
      const char* slash = std::strrchr(info.dli_fname, '/');
      return format("pc 0x%llx in %s%s%s", (unsigned long long)pc, slash ? slash + 1 : info.dli_fname,
                    info.dli_sname ? " " : "", info.dli_sname ? info.dli_sname : "");
    }
    return format("pc 0x%llx", (unsigned long long)pc);
  }

  std::string signal_text(const Pending& p) const {
    const uintptr_t a = p.addr;
    if (p.sig == SIGFPE) {
      const char* what = p.code == FPE_INTDIV ? "integer division by zero (or INT_MIN / -1)"
                         : p.code == FPE_INTOVF ? "integer overflow"
                                                : "arithmetic exception";
      return format("SIGFPE: %s", what);
    }
    if (p.sig == SIGILL)
      return "SIGILL: illegal instruction (g++ puts a trap where it proves undefined behaviour, e.g. a null "
             "pointer dereference or __builtin_trap())";
    if (p.sig == SIGBUS) {
      const char* what = p.code == BUS_ADRERR ? "no memory behind the address (e.g. past the end of a mapped file)"
                         : p.code == BUS_ADRALN ? "misaligned address"
                                                : "bus error";
      return format("SIGBUS: %s at address 0x%llx", what, (unsigned long long)a);
    }
    // SIGSEGV: a stack overflow hits the guard page under the thread's own stack.
    for (int k = 0; k < n_; ++k) {
      const uintptr_t guard = reinterpret_cast<uintptr_t>(regions_[k]) + kCtxBytes;
      if (a >= guard && a < guard + kGuardBytes)
        return format("SIGSEGV: stack overflow (the thread used all of its %u KiB of stack: deep recursion or "
                      "a large local array?)", static_cast<unsigned>((EMU_STACK_BYTES - kCtxBytes - kGuardBytes) / 1024));
    }
    if (p.code == SI_KERNEL)
      return "SIGSEGV: invalid memory access (a non-canonical address: a wild pointer)";
    const char* why = a < 4096 ? "a null pointer dereference"
                      : p.code == SEGV_ACCERR ? "the memory there may not be accessed this way (e.g. a write to "
                                                "read-only memory)"
                                              : "no memory is mapped there (a wild or dangling pointer)";
    return format("SIGSEGV: invalid memory access at address 0x%llx: %s", (unsigned long long)a, why);
  }

  // After run_block returned false: the message of a fault or stop a handler took.
  void report_pending() {
    Pending p = pending_;
    pending_ = Pending{};
    if (p.kind == kNoRequest || p.fiber < 0) return;
    if (p.kind == kStop) return;  // the launch has already failed (or was interrupted)
    const std::string site = site_of_pc(p.pc);
    if (p.kind == kFaultSignal) {
      launch_->fail(describe(p.fiber) + ": " + signal_text(p) + " at " + site);
      return;
    }
    // The watchdog: name this thread, where it runs, and what the others of the block do.
    std::string text = format("no progress for %.1f s (the watchdog: emu.debug(watchdog=seconds) or "
                              "CONVNET_EMU_WATCHDOG): this thread runs at %s and none of the block's "
                              "threads has reached a barrier, a warp operation or its end since",
                              p.stalled, site.c_str());
    int running = 0, waiting = 0, gone = 0;
    std::vector<std::pair<std::string, int>> sites;  // other runnable threads by where they were seen
    for (int k = 0; k < n_; ++k) {
      const Slot& s = slots_[k];
      if (k == p.fiber) continue;
      if (s.state == State::Runnable) {
        ++running;
        if (s.seen_pc) {
          std::string at = thread_name(k) + " at " + site_of_pc(s.seen_pc);
          if (sites.size() < 3) sites.emplace_back(at, k);
        }
      } else if (s.state == State::Exited) {
        ++gone;
      } else {
        ++waiting;
      }
    }
    text += format("; of the other %d threads %d are runnable, %d wait at a barrier or warp operation, %d have "
                   "exited", n_ - 1, running, waiting, gone);
    if (!sites.empty()) {
      text += " (runnable ones seen at:";
      for (std::size_t k = 0; k < sites.size(); ++k) text += (k ? "; " : " ") + sites[k].first;
      text += ")";
    }
    if (launch_->total_blocks > 1)
      text += "; a thread that waits for another block's write may wait forever: CUDA does not promise that the "
              "blocks of a grid run at the same time (unless it is a cooperative launch)";
    launch_->fail(describe(p.fiber) + ": " + text);
  }

  void guard_begin();
  void guard_end();

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
  // signals: the handlers' stack, the abandoned fiber's way out, what they saw
  char* alt_stack_ = nullptr;
  char* abandon_stack_ = nullptr;
  stack_t old_alt_stack_{};
  Pending pending_;
};

// ================================================================ signals, preemption and the watchdog
// (issue 10, item 5)
//
// * Faults. During a launch SIGSEGV, SIGBUS and SIGFPE have this runtime's handler
//   (run on a per-worker sigaltstack, so a stack overflow is caught too). A signal
//   whose interrupted stack pointer lies in a fiber region of the worker on that OS
//   thread is a kernel fault: the handler records signal, code, address and program
//   counter and rewrites the interrupted context so that, once it returns, the fiber
//   continues in emu_abandon_entry on the worker's own small stack, which marks the
//   thread faulted and switches to the scheduler: the block is abandoned as after any
//   diagnosed fault. The message (kernel, block, thread, signal, file:line from the
//   faulting pc by addr2line on the cached .so) is made there, off the handler. Any
//   other signal goes to the handler that was installed before the launch (Python's
//   faulthandler, or the default action); the previous handlers come back after it.
// * Progress. Each worker counts barriers, warp operations, exits and blocks. A
//   monitor thread (one per process, asleep between launches) looks every kTick: a
//   worker whose count has not moved for kSlice is sent kPreemptSignal; when it
//   interrupted kernel code on a fiber of a block with another runnable thread, the
//   handler redirects that fiber through emu_preempt_thunk (all registers and the
//   XSAVE state kept), which hands the OS thread to a runnable thread of another warp.
//   So a spin across the warps of one block (valid on sm_70+: warp 1 waits for a flag
//   warp 0 sets later, with volatile reads, atomics or plain loads alike) ends as on a
//   GPU, at a cost only where a thread runs kSlice without a barrier.
// * The watchdog. A worker whose count has not moved for watchdog_seconds (a spin on
//   another block's flag, a thread that loops forever) is sent a stop: its running
//   fiber is abandoned and the launch ends with a KernelFault naming the block, this
//   thread and where it runs, and where the block's other runnable threads were seen.
// * Ctrl-C. SIGINT has this runtime's handler during a launch (unless ignored): it
//   only sets a flag; the monitor stops every worker as above and the launch throws
//   Interrupted, which the module hands to Python's own SIGINT handler.
constexpr auto kTick = std::chrono::milliseconds(1);
constexpr double kSlice = 0.004;  // no progress this long: preempt (then at every tick while it lasts)

thread_local Worker* tls_worker __attribute__((tls_model("initial-exec"))) = nullptr;
std::atomic<bool> g_sigint{false};
struct sigaction g_previous[65];
const int kGuardedSignals[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL};

int preempt_signal() { return SIGRTMIN + 4; }

// Passes a signal that is not a kernel's to the handler installed before the launch.
void chain_signal(int sig, siginfo_t* info, void* uc) {
  const struct sigaction& old = g_previous[sig];
  if (old.sa_flags & SA_SIGINFO) {
    if (old.sa_sigaction) {
      old.sa_sigaction(sig, info, uc);
      return;
    }
  } else if (old.sa_handler != SIG_DFL && old.sa_handler != SIG_IGN) {
    old.sa_handler(sig);
    return;
  }
  // The default action: reinstate it; a fault recurs when the handler returns, a
  // signal sent with kill() is sent again.
  struct sigaction dfl{};
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  sigaction(sig, &dfl, nullptr);
  if (info->si_code <= 0) raise(sig);
}

void on_fault_signal(int sig, siginfo_t* info, void* uc) {
  Worker* w = tls_worker;
  if (w && w->take_fault(sig, info, uc)) return;
  chain_signal(sig, info, uc);
}

void on_preempt_signal(int, siginfo_t*, void* uc) {
  if (Worker* w = tls_worker) w->take_request(uc);
}

void on_sigint(int, siginfo_t*, void*) { g_sigint.store(true); }

// Installs the handlers for one launch and restores the previous ones.
class SignalScope {
 public:
  SignalScope() {
    g_sigint.store(false);
    struct sigaction sa{};
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sa.sa_sigaction = on_fault_signal;
    for (int sig : kGuardedSignals) install(sig, sa);
    sa.sa_sigaction = on_preempt_signal;
    install(preempt_signal(), sa);
    struct sigaction current{};
    if (sigaction(SIGINT, nullptr, &current) == 0 && current.sa_handler != SIG_IGN) {
      sa.sa_sigaction = on_sigint;
      install(SIGINT, sa);
    }
  }
  ~SignalScope() {
    for (int k = count_ - 1; k >= 0; --k) sigaction(installed_[k], &g_previous[installed_[k]], nullptr);
  }
  SignalScope(const SignalScope&) = delete;
  SignalScope& operator=(const SignalScope&) = delete;

 private:
  void install(int sig, const struct sigaction& sa) {
    if (sigaction(sig, &sa, &g_previous[sig]) == 0) installed_[count_++] = sig;
  }
  int installed_[8];
  int count_ = 0;
};

// Watches the workers of the running launch (see above). The launching thread and
// the workers never wait for the monitor thread (a loaded machine may leave it
// unscheduled for milliseconds): the launch and the watched workers are atomics, and
// the monitor marks each tick with `busy_`, which end() and remove() wait out, so that
// neither the launch nor a worker's OS thread is gone while a tick uses them. The
// monitor sleeps after kIdle without a launch; begin() wakes it.
class Monitor {
 public:
  void begin(LaunchState* launch, double watchdog) {
    watchdog_.store(watchdog, std::memory_order_relaxed);
    launch_.store(launch);
    if (!started_.exchange(true)) {
      sigset_t all, old;  // the monitor takes no signals
      sigfillset(&all);
      pthread_sigmask(SIG_SETMASK, &all, &old);
      std::thread([this] { loop(); }).detach();
      pthread_sigmask(SIG_SETMASK, &old, nullptr);
    } else if (sleeping_.load()) {
      std::lock_guard<std::mutex> lock(mu_);
      cv_.notify_one();
    }
  }
  // Stops watching; true when SIGINT came during the launch.
  bool end() {
    launch_.store(nullptr);
    settle();
    return g_sigint.exchange(false);
  }
  void add(Worker* w) {
    w->watched_progress_ = w->progress_.load(std::memory_order_relaxed);
    w->watched_since_ = Clock::now();
    for (auto& slot : watched_) {
      Worker* none = nullptr;
      if (slot.compare_exchange_strong(none, w)) return;
    }
  }
  void remove(Worker* w) {  // after this no signal is sent to the worker's thread
    for (auto& slot : watched_) {
      Worker* mine = w;
      if (slot.compare_exchange_strong(mine, nullptr)) break;
    }
    settle();
  }

 private:
  using Clock = std::chrono::steady_clock;
  static constexpr int kMaxWatched = 1024;
  static constexpr auto kIdle = std::chrono::milliseconds(200);

  void settle() {
    while (busy_.load()) std::this_thread::yield();
  }

  void send(Worker* w, int request) {
    w->request_.store(request, std::memory_order_release);
    pthread_kill(w->thread_, preempt_signal());
  }

  void loop() {
    auto last_launch = Clock::now();
    for (;;) {
      if (!launch_.load() && Clock::now() - last_launch > kIdle) {
        std::unique_lock<std::mutex> lock(mu_);
        sleeping_.store(true);
        cv_.wait(lock, [this] { return launch_.load() != nullptr; });
        sleeping_.store(false);
      }
      std::this_thread::sleep_for(kTick);
      busy_.store(true);
      if (LaunchState* launch = launch_.load()) {
        last_launch = Clock::now();
        tick(*launch);
      }
      busy_.store(false);
    }
  }

  void tick(LaunchState& launch) {
    if (g_sigint.load() && !launch.interrupted.load()) {
      launch.fail("interrupted");
      launch.interrupted.store(true);
    }
    const bool failed = launch.failed.load();
    const double watchdog = watchdog_.load(std::memory_order_relaxed);
    const auto now = Clock::now();
    for (auto& slot : watched_) {
      Worker* w = slot.load();
      if (!w) continue;
      const uint64_t p = w->progress_.load(std::memory_order_relaxed);
      if (p != w->watched_progress_) {
        w->watched_progress_ = p;
        w->watched_since_ = now;
        if (!failed) continue;
      }
      if (failed) {  // another worker faulted, or Ctrl-C: stop a block that may never end
        send(w, kStop);
        continue;
      }
      const double stalled = std::chrono::duration<double>(now - w->watched_since_).count();
      if (watchdog > 0 && stalled >= watchdog) {
        w->stall_seconds_ = stalled;
        send(w, kWatchdog);
      } else if (stalled >= kSlice) {
        send(w, kPreempt);
      }
    }
  }

  std::atomic<LaunchState*> launch_{nullptr};
  std::atomic<double> watchdog_{0};
  std::atomic<Worker*> watched_[kMaxWatched] = {};
  std::atomic<bool> busy_{false};
  std::atomic<bool> started_{false};
  std::atomic<bool> sleeping_{false};
  std::mutex mu_;
  std::condition_variable cv_;
};

Monitor& monitor() {
  static Monitor* m = new Monitor();  // never destroyed: its thread outlives static destructors
  return *m;
}

void Worker::guard_begin() {
  if (!alt_stack_) {
    void* m = mmap(nullptr, kAltStackBytes + kAbandonStackBytes, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m != MAP_FAILED) {
      alt_stack_ = static_cast<char*>(m);
      abandon_stack_ = alt_stack_ + kAltStackBytes;
    }
  }
  thread_ = pthread_self();
  tls_worker = this;
  pending_ = Pending{};
  request_.store(kNoRequest, std::memory_order_relaxed);
  if (alt_stack_) {
    stack_t ss{};
    ss.ss_sp = alt_stack_;
    ss.ss_size = kAltStackBytes;
    ss.ss_flags = 0;
    sigaltstack(&ss, &old_alt_stack_);
  }
  monitor().add(this);
}

void Worker::guard_end() {
  monitor().remove(this);
  if (alt_stack_) sigaltstack(&old_alt_stack_, nullptr);
  tls_worker = nullptr;
}

// "file:line" of `offset` in the kernel library `path` (first frame outside the
// emulator's headers), by addr2line; called only to report a fault.
std::string addr2line_site(const std::string& path, uintptr_t offset) {
  std::string command = "addr2line -i -e '" + path + "' " + format("0x%llx", (unsigned long long)offset) +
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

// Reached from a signal handler's redirection (see "signals, preemption and the watchdog").
void preempt_entry() { tls_worker->preempted(); }
[[noreturn]] void abandon_entry() { tls_worker->abandon(); }

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
  bool by_sigint = false;
  {
    SignalScope signals;  // kernel faults, preemption, Ctrl-C; the previous handlers come back after
    monitor().begin(&state, spec.watchdog_seconds);
    std::vector<std::thread> threads;
    for (int i = 1; i < workers; ++i) {
      Worker* w = g_workers[i].get();
      threads.emplace_back([w, &state] { w->run(state); });
    }
    g_workers[0]->run(state, &spec.interrupted);
    for (auto& t : threads) t.join();
    by_sigint = monitor().end();
  }
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
  if (state.interrupted || by_sigint) throw Interrupted("kernel launch interrupted", by_sigint);
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

// The targets of fiber.cpp's redirections (C names, hidden: the assembly calls them).
extern "C" __attribute__((visibility("hidden"))) void emu_preempt_entry() { emu::preempt_entry(); }
extern "C" __attribute__((visibility("hidden"))) void emu_abandon_entry() { emu::abandon_entry(); }
