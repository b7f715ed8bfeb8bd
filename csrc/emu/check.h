// check.h — the runtime side of the race and initialisation checks (check modes
// "race" and "init") and of the preemptive random schedule (schedule "random").
//
// These run every block of a launch on the hooked build (emu_profile.h: every load,
// store and atomic that is not to the thread's own stack calls the runtime, with its
// size, kind and site), on one OS thread, blocks one after another. A shadow keeps,
// for every byte the launch touches outside the threads' stacks, the last write and
// up to two reads that no later access has ordered away:
//
//   record = (epoch, block, thread, warp clock, site, atomic?)
//
// Ordering (what makes two accesses of different threads not a race):
//   * a __syncthreads between them: the epoch counter advances at every block start,
//     barrier release and __threadfence; a record older than the current interval's
//     start is ordered before everything in this interval;
//   * a warp collective (__syncwarp, shuffle, vote) that both lanes took part in
//     after the first access: per-warp vector clocks (32 lanes), joined at every
//     completed collective over the lanes of its mask;
//   * both accesses atomic;
//   * across blocks (global memory only): the writing block executed __threadfence
//     after the write, and the reading block has done a global atomic since its start
//     (the threadfence-reduction pattern: release by fence, acquire by the counter).
// Anything else with at least one non-atomic write is a data race.
//
// Initialisation: shared memory is unwritten at every block start (a byte counts as
// written once this block's record of it is a write); global bytes are checked only
// inside the allocations the host marked as tracked (arrays made by `empty` in a
// debug(check="init") scope), through a byte mask (0 = unwritten) that writes set.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "emu_hooks.h"

namespace emu {

// What a launch asks the checker for (built by the Python side through module.cpp).
struct CheckSpec {
  bool race = false;
  bool init = false;
  bool random = false;  // preemptive random schedule
  uint64_t seed = 0;
  struct Array {
    uintptr_t start, end;
    int index;  // the kernel argument it came from
  };
  std::vector<Array> arrays;
  struct Tracked {
    uintptr_t start, end;
    uint8_t* mask;  // one byte per byte of [start, end): 0 unwritten
  };
  std::vector<Tracked> tracked;
  struct SharedArray {
    uint64_t offset, bytes;  // from the library's load base
    std::string name;
  };
  std::vector<SharedArray> shared;
  std::vector<std::pair<uintptr_t, uintptr_t>> ignore;  // packed arguments, runtime image
  bool active() const { return race || init || random; }
  bool checking() const { return race || init; }
};

// What the checker found wrong with an access; `other_*` names the earlier access of
// a race (other_thread < 0: none).
struct CheckFinding {
  std::string what;
  uintptr_t pc = 0;
  int other_thread = -1;
  uint32_t other_block = 0;
  uintptr_t other_pc = 0;
};

class Checker {
 public:
  static constexpr uint8_t kAtomic = 1, kWrite = 2;
  struct Rec {
    uint32_t epoch;  // 0: empty
    uint32_t block;
    uint16_t thread;
    uint8_t flags;
    uint8_t pad;
    uint32_t clock;
    uintptr_t pc;
  };
  struct Cell {
    Rec w, r1, r2;
  };

  ~Checker() { clear_shadow(); }

  // [device_start, device_end): the library's __device__ variables, inside its image
  // but global memory like any other (checked, not ignored).
  void begin_launch(const CheckSpec& spec, uintptr_t base, uintptr_t image_start, uintptr_t image_end,
                    uintptr_t dynamic, std::size_t dynamic_bytes, uint64_t total_blocks, int threads,
                    uintptr_t device_start = 0, uintptr_t device_end = 0) {
    spec_ = &spec;
    clear_shadow();
    shared_.clear();
    for (std::size_t i = 0; i < spec.shared.size(); ++i)
      shared_.push_back({base + spec.shared[i].offset, base + spec.shared[i].offset + spec.shared[i].bytes,
                         static_cast<int>(i)});
    dynamic_ = dynamic;
    dynamic_end_ = dynamic + (dynamic ? dynamic_bytes : 0);
    ignore_ = spec.ignore;
    if (device_start < device_end && image_start <= device_start && device_end <= image_end) {
      ignore_.emplace_back(image_start, device_start);
      ignore_.emplace_back(device_end, image_end);
    } else {
      ignore_.emplace_back(image_start, image_end);
    }
    threads_ = threads;
    vc_.assign(static_cast<std::size_t>(threads) * 32, 0);
    last_fence_.assign(total_blocks, 0);
    epoch_ = 1;
  }

  void begin_block(uint32_t block) {
    block_ = block;
    ++epoch_;
    interval_ = block_start_ = epoch_;
    acquired_ = false;
    std::fill(vc_.begin(), vc_.end(), 0);
    for (int t = 0; t < threads_; ++t) vc_[static_cast<std::size_t>(t) * 32 + (t & 31)] = 1;
  }

  void barrier() { interval_ = ++epoch_; }

  void fence() { last_fence_[block_] = ++epoch_; }

  // A warp collective over `mask` completed (lanes base + l): joins their clocks.
  void warp_sync(int base, unsigned mask) {
    uint32_t m[32] = {0};
    for (unsigned b = mask; b; b &= b - 1) {
      const uint32_t* v = &vc_[static_cast<std::size_t>(base + __builtin_ctz(b)) * 32];
      for (int k = 0; k < 32; ++k) m[k] = std::max(m[k], v[k]);
    }
    for (unsigned b = mask; b; b &= b - 1) {
      int l = __builtin_ctz(b);
      uint32_t* v = &vc_[static_cast<std::size_t>(base + l) * 32];
      std::memcpy(v, m, sizeof m);
      ++v[l];
    }
  }

  // Checks one access by thread `t` and records it; false (and `finding` filled) on a fault.
  bool access(int t, uintptr_t addr, uint32_t info, uintptr_t pc, CheckFinding& finding) {
    const uint32_t size = EMU_ACCESS_SIZE(info);
    const uint32_t kind = EMU_ACCESS_KIND(info) & 3u;
    if (size == 0) return true;
    int shared_index = -2;  // -1: dynamic shared memory, >= 0: a static array, -2: global
    uintptr_t origin = 0;
    for (const Range& r : shared_) {
      if (addr >= r.start && addr < r.end) {
        shared_index = r.index;
        origin = r.start;
        break;
      }
    }
    if (shared_index == -2 && addr >= dynamic_ && addr < dynamic_end_) {
      shared_index = -1;
      origin = dynamic_;
    }
    if (shared_index == -2) {
      for (const auto& r : ignore_)
        if (addr >= r.first && addr < r.second) return true;
    }
    const bool shared = shared_index != -2;
    if (kind == EMU_ACCESS_ATOMIC && (size & (size - 1)) == 0 && (addr & (size - 1)) != 0) {
      finding.what = describe_place(addr, shared_index, origin) +
                     format_size(": misaligned address: a %u-byte atomic operation needs %u-byte alignment", size,
                                 size);
      finding.pc = pc;
      return false;
    }
    if (kind == EMU_ACCESS_ATOMIC && !shared) acquired_ = true;
    const Tracked* tracked = nullptr;
    if (!shared && spec_->init) {
      for (const auto& tr : spec_->tracked)
        if (addr >= tr.start && addr < tr.end) {
          tracked = &tr;
          break;
        }
    }
    const uint32_t clock = vc_[static_cast<std::size_t>(t) * 32 + (t & 31)];
    Rec me{epoch_, block_, static_cast<uint16_t>(t),
           static_cast<uint8_t>((kind == EMU_ACCESS_ATOMIC ? kAtomic : 0) | (kind != EMU_ACCESS_READ ? kWrite : 0)),
           0, clock, pc};
    for (uint32_t k = 0; k < size; ++k) {
      const uintptr_t a = addr + k;
      Cell& c = cell(a);
      if (spec_->init && kind != EMU_ACCESS_WRITE) {
        bool unwritten = false;
        if (shared) {
          unwritten = !(c.w.epoch >= block_start_ && c.w.block == block_ && (c.w.flags & kWrite));
        } else if (tracked && a < tracked->end) {
          unwritten = tracked->mask[a - tracked->start] == 0;
        }
        if (unwritten) {
          finding.what = describe_place(a, shared_index, origin) +
                         (shared ? ", which no thread of this block has written: read of uninitialised shared memory"
                                 : ", which nothing has written since it was allocated: read of uninitialised "
                                   "global memory");
          finding.pc = pc;
          return false;
        }
      }
      if (spec_->race) {
        const Rec* bad = nullptr;
        if (c.w.epoch && !ordered(c.w, t, shared) && !((me.flags & kAtomic) && (c.w.flags & kAtomic))) bad = &c.w;
        if (!bad && kind != EMU_ACCESS_READ) {
          if (c.r1.epoch && !ordered(c.r1, t, shared)) bad = &c.r1;
          else if (c.r2.epoch && !ordered(c.r2, t, shared)) bad = &c.r2;
        }
        if (bad) {
          report_race(a, shared_index, origin, me, *bad, finding);
          return false;
        }
      }
      if (kind == EMU_ACCESS_READ) {
        if (!c.r1.epoch || same(c.r1, me) || ordered(c.r1, t, shared)) c.r1 = me;
        else if (!c.r2.epoch || same(c.r2, me) || ordered(c.r2, t, shared)) c.r2 = me;
      } else {
        c.w = me;
        c.r1.epoch = c.r2.epoch = 0;
        if (tracked && a < tracked->end) tracked->mask[a - tracked->start] = 1;
      }
    }
    return true;
  }

 private:
  using Tracked = CheckSpec::Tracked;
  struct Range {
    uintptr_t start, end;
    int index;
  };
  static constexpr int kPageShift = 10;
  static constexpr uintptr_t kPageBytes = uintptr_t(1) << kPageShift;

  static bool same(const Rec& a, const Rec& b) { return a.block == b.block && a.thread == b.thread; }

  // Whether `p` happens before the current access of thread t (of the current block).
  bool ordered(const Rec& p, int t, bool shared) const {
    if (p.block == block_) {
      if (p.epoch < interval_ || p.thread == t) return true;
      if ((p.thread >> 5) == (t >> 5) && vc_[static_cast<std::size_t>(t) * 32 + (p.thread & 31)] >= p.clock)
        return true;
      return false;
    }
    if (shared) return true;  // another block's use of this worker's shared memory: stale
    if (!acquired_) return false;
    if (p.flags & kAtomic) return true;  // read-modify-writes chain: the acquiring atomic follows it
    const uint32_t f = last_fence_[p.block];
    return (p.flags & kWrite) && f > p.epoch;
  }

  Cell& cell(uintptr_t a) {
    const uintptr_t page = a >> kPageShift;
    if (page != last_page_ || !last_cells_) {
      auto it = pages_.find(page);
      if (it == pages_.end()) {
        Cell* cells = static_cast<Cell*>(std::calloc(kPageBytes, sizeof(Cell)));
        if (!cells) std::abort();
        it = pages_.emplace(page, cells).first;
      }
      last_page_ = page;
      last_cells_ = it->second;
    }
    return last_cells_[a & (kPageBytes - 1)];
  }

  void clear_shadow() {
    for (auto& kv : pages_) std::free(kv.second);
    pages_.clear();
    last_cells_ = nullptr;
    last_page_ = 0;
  }

  static std::string format_size(const char* fmt, uint32_t a, uint32_t b) {
    char buffer[160];
    std::snprintf(buffer, sizeof buffer, fmt, a, b);
    return buffer;
  }

  std::string describe_place(uintptr_t a, int shared_index, uintptr_t origin) const {
    char buffer[400];
    if (shared_index >= 0) {
      std::snprintf(buffer, sizeof buffer, "shared array %s, byte %llu", spec_->shared[shared_index].name.c_str(),
                    static_cast<unsigned long long>(a - origin));
    } else if (shared_index == -1) {
      std::snprintf(buffer, sizeof buffer, "dynamic shared memory (extern __shared__), byte %llu",
                    static_cast<unsigned long long>(a - origin));
    } else {
      const CheckSpec::Array* best = nullptr;
      for (const auto& r : spec_->arrays)
        if (a >= r.start && a < r.end) {
          best = &r;
          break;
        }
      if (best)
        std::snprintf(buffer, sizeof buffer, "global memory, argument %d, byte %llu", best->index,
                      static_cast<unsigned long long>(a - best->start));
      else
        std::snprintf(buffer, sizeof buffer, "global memory at 0x%llx", static_cast<unsigned long long>(a));
    }
    return buffer;
  }

  void report_race(uintptr_t a, int shared_index, uintptr_t origin, const Rec& me, const Rec& other,
                   CheckFinding& finding) const {
    auto verb = [](const Rec& r, bool past) -> std::string {
      if (r.flags & kAtomic) return past ? "atomically updated" : "atomically updates";
      if (r.flags & kWrite) return past ? "wrote" : "writes";
      return past ? "read" : "reads";
    };
    finding.what = "data race on " + describe_place(a, shared_index, origin) + ": @OTHER@ " + verb(other, true) +
                   " it, and this thread " + verb(me, false) + " it, " +
                   (other.block == block_ ? "with no __syncthreads (nor, within a warp, __syncwarp) between them"
                                          : "and blocks of one launch are not ordered");
    finding.pc = me.pc;
    finding.other_thread = other.thread;
    finding.other_block = other.block;
    finding.other_pc = other.pc;
  }

  const CheckSpec* spec_ = nullptr;
  std::vector<Range> shared_;
  uintptr_t dynamic_ = 0, dynamic_end_ = 0;
  std::vector<std::pair<uintptr_t, uintptr_t>> ignore_;
  int threads_ = 0;
  std::vector<uint32_t> vc_;          // threads x 32 lane clocks (lanes of the thread's warp)
  std::vector<uint32_t> last_fence_;  // per block: epoch of its last __threadfence
  uint32_t epoch_ = 1, interval_ = 1, block_start_ = 1, block_ = 0;
  bool acquired_ = false;
  std::unordered_map<uintptr_t, Cell*> pages_;
  uintptr_t last_page_ = 0;
  Cell* last_cells_ = nullptr;
};

}  // namespace emu
