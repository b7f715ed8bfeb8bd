// profile.h — the runtime side of memory-traffic profiling (check mode "profile").
//
// The hooks of an instrumented library (emu_profile.h) report every access that is
// not to the thread's own stack. A Recorder appends them to one trace per CUDA
// thread of the block it watches; at each barrier release and at the block's end
// (every thread stopped) it turns the traces into warp-level requests:
//
//   request = the lanes of one warp executing the same access site (the return
//             address of the hook call) for the same n-th time since the last
//             barrier. Lanes whose traces repeat the first active lane's site
//             sequence are matched by position (read request by request from
//             the traces); others (divergence) through per-site occurrence lists.
//
// and adds each request to its site's figures:
//   global: 32-byte sectors touched (distinct), bytes requested (sum over lanes);
//   shared: wavefronts. A word is 4 bytes, bank = word mod 32; lanes reading one
//           word do not conflict; accesses of 1-4 bytes are served for the whole
//           warp at once, 8-byte accesses per half-warp (lanes 0-15, 16-31) and
//           16-byte accesses per quarter-warp, each part taking as many wavefronts
//           as the most distinct words any bank holds in it (so a full float4
//           request takes at least 4, its ideal).
// Accesses to the library's own image (the EmuApi pointer, constant tables) and to
// the launch's packed arguments are dropped.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <unordered_map>
#include <utility>
#include <vector>

#include "emu_hooks.h"

namespace emu {

enum Space : uint8_t { kGlobal = 0, kShared = 1 };

struct SiteFigures {
  uint64_t offset = 0;     // return address of the hook call, relative to the library's load base
  uint8_t space = kGlobal;
  uint8_t kind = 0;        // EmuAccessKind bits (read/write/atomic, unaligned flag) of the first access
  uint32_t size = 0;       // bytes per lane (of the first access)
  uint64_t requests = 0;   // warp-level requests
  uint64_t accesses = 0;   // lanes over all requests
  uint64_t bytes = 0;      // bytes requested (sum over lanes)
  uint64_t sectors = 0;    // global: distinct 32-byte sectors per request, summed
  uint64_t wavefronts = 0; // shared: wavefronts, summed
  uint64_t ideal = 0;      // shared: wavefronts without conflicts, summed
  uint64_t misaligned = 0; // lanes whose address is not a multiple of their access size
};

struct LaunchProfile {
  uint64_t blocks_total = 0;
  uint64_t blocks_profiled = 0;
  uint64_t barriers = 0;       // __syncthreads executed, counted per block, every block
  uint64_t warp_ops = 0;       // warp-level shuffles, votes and __syncwarp, every block
  std::vector<SiteFigures> sites;
};

// What one block's classification needs: where shared memory is, what to drop.
struct ProfileRanges {
  // Static __shared__ arrays, each [start, end): the library's emu_shared section and
  // the arrays the linker put elsewhere (g++ drops the section of a template's
  // static locals); a bank is counted from the array's start.
  std::vector<std::pair<uintptr_t, uintptr_t>> static_shared;
  uintptr_t dynamic_shared = 0, dynamic_shared_end = 0;
  std::vector<std::pair<uintptr_t, uintptr_t>> ignore;  // [start, end)
  // Global allocations [start, end) and the shift that puts their start on a
  // 256-byte boundary, as cudaMalloc would (host allocators align to 16 bytes):
  // sectors are counted on addr + shift.
  struct Rebase {
    uintptr_t start, end, shift;
  };
  std::vector<Rebase> rebase;
  uintptr_t base = 0;                                   // the library instance's load base
};

class Recorder {
 public:
  struct Access {
    uintptr_t pc;
    uintptr_t addr;
    uint32_t info;
  };

  // A new launch: forget sites (their pcs belong to this launch's library instance).
  void reset() {
    figures_.clear();
    site_pc_.clear();
    occ_.clear();
    occ_gen_.clear();
    reqs_.clear();
    reqs_gen_.clear();
    std::fill(pc_keys_.begin(), pc_keys_.end(), 0);
    pc_count_ = 0;
  }

  void begin_block(int threads, const ProfileRanges& ranges) {
    if (static_cast<int>(traces_.size()) < threads) traces_.resize(threads);
    for (auto& t : traces_) t.clear();
    threads_ = threads;
    ranges_ = &ranges;
  }

  void record(int linear, const void* addr, uint32_t info, const void* pc) {
    traces_[linear].push_back(Access{reinterpret_cast<uintptr_t>(pc), reinterpret_cast<uintptr_t>(addr), info});
  }

  // Every thread of the block is stopped: group the traces into requests.
  void flush() {
    for (int base = 0; base < threads_; base += 32) flush_warp(base, std::min(32, threads_ - base));
    for (int i = 0; i < threads_; ++i) traces_[i].clear();
  }

  // Adds this launch's figures, keyed by offset * 2 + space.
  void merge_into(std::unordered_map<uint64_t, SiteFigures>& out) const {
    for (std::size_t k = 0; k < figures_.size(); ++k) {
      const SiteFigures& s = figures_[k];
      if (s.requests == 0) continue;
      SiteFigures& d = out[s.offset * 2 + s.space];
      if (d.requests == 0) {
        d = s;
        continue;
      }
      d.requests += s.requests;
      d.accesses += s.accesses;
      d.bytes += s.bytes;
      d.sectors += s.sectors;
      d.wavefronts += s.wavefronts;
      d.ideal += s.ideal;
      d.misaligned += s.misaligned;
    }
  }

 private:
  struct Request {
    uint32_t site;
    uint32_t mask;
    uintptr_t addr[32];
    uint32_t info[32];
  };

  // pc -> dense site index (open addressing; a kernel has tens to hundreds of sites).
  uint32_t site_of(uintptr_t pc) {
    if ((pc_count_ + 1) * 2 > pc_keys_.size()) grow_pcs();
    std::size_t mask = pc_keys_.size() - 1;
    for (std::size_t i = (pc * 0x9E3779B97F4A7C15ull) >> 40 & mask;; i = (i + 1) & mask) {
      if (pc_keys_[i] == pc) return pc_vals_[i];
      if (pc_keys_[i] == 0) {
        pc_keys_[i] = pc;
        pc_vals_[i] = static_cast<uint32_t>(site_pc_.size());
        ++pc_count_;
        site_pc_.push_back(pc);
        occ_.push_back(0);
        occ_gen_.push_back(0);
        reqs_.emplace_back();
        reqs_gen_.push_back(0);
        return pc_vals_[i];
      }
    }
  }
  void grow_pcs() {
    std::size_t size = pc_keys_.empty() ? 1024 : pc_keys_.size() * 2;
    pc_keys_.assign(size, 0);
    pc_vals_.assign(size, 0);
    std::size_t mask = size - 1;
    for (uint32_t v = 0; v < site_pc_.size(); ++v) {
      std::size_t i = (site_pc_[v] * 0x9E3779B97F4A7C15ull) >> 40 & mask;
      while (pc_keys_[i] != 0) i = (i + 1) & mask;
      pc_keys_[i] = site_pc_[v];
      pc_vals_[i] = v;
    }
  }

  // The request of this lane's access: (site, n-th occurrence in this lane) of this warp.
  uint32_t request_of(const Access& a) {
    uint32_t s = site_of(a.pc);
    if (occ_gen_[s] != lane_gen_) {
      occ_gen_[s] = lane_gen_;
      occ_[s] = 0;
    }
    uint32_t o = occ_[s]++;
    std::vector<uint32_t>& list = reqs_[s];
    if (reqs_gen_[s] != warp_gen_) {
      reqs_gen_[s] = warp_gen_;
      list.clear();
    }
    while (list.size() <= o) {
      if (used_ == requests_.size()) requests_.emplace_back();
      Request& r = requests_[used_];
      r.site = s;
      r.mask = 0;
      list.push_back(static_cast<uint32_t>(used_++));
    }
    return list[o];
  }

  void flush_warp(int base, int lanes) {
    ++warp_gen_;
    used_ = 0;
    // The reference lane: the first with any access. A lane whose site sequence is
    // the reference's maps position k to the reference's k-th request.
    int ref = -1;
    for (int l = 0; l < lanes; ++l) {
      if (!traces_[base + l].empty()) {
        ref = l;
        break;
      }
    }
    if (ref < 0) return;
    const std::vector<Access>& rt = traces_[base + ref];
    ++lane_gen_;
    for (std::size_t k = 0; k < rt.size(); ++k) request_of(rt[k]);  // request k is the reference's k-th
    // Lanes repeating the reference's site sequence are read straight from their
    // traces (request-major, below); only the others go through request storage.
    uint32_t same_mask = 1u << ref;
    for (int l = ref + 1; l < lanes; ++l) {
      const std::vector<Access>& t = traces_[base + l];
      if (t.empty()) continue;
      bool same = t.size() == rt.size();
      for (std::size_t k = 0; same && k < t.size(); ++k) same = t[k].pc == rt[k].pc;
      if (same) {
        same_mask |= 1u << l;
      } else {
        ++lane_gen_;
        for (std::size_t k = 0; k < t.size(); ++k) add_lane(request_of(t[k]), l, t[k]);
      }
    }
    Request q;
    for (std::size_t k = 0; k < rt.size(); ++k) {
      const Request& stored = requests_[k];
      q.site = stored.site;
      q.mask = same_mask | stored.mask;
      for (uint32_t m = same_mask; m; m &= m - 1) {
        int l = __builtin_ctz(m);
        const Access& x = traces_[base + l][k];
        q.addr[l] = x.addr;
        q.info[l] = x.info;
      }
      for (uint32_t m = stored.mask; m; m &= m - 1) {
        int l = __builtin_ctz(m);
        q.addr[l] = stored.addr[l];
        q.info[l] = stored.info[l];
      }
      finish(q);
    }
    for (std::size_t r = rt.size(); r < used_; ++r) finish(requests_[r]);
  }

  void add_lane(uint32_t r, int lane, const Access& a) {
    Request& q = requests_[r];
    q.mask |= 1u << lane;
    q.addr[lane] = a.addr;
    q.info[lane] = a.info;
  }

  int space_of(uintptr_t a) const {
    const ProfileRanges& r = *ranges_;
    for (const auto& range : r.static_shared)
      if (a >= range.first && a < range.second) return kShared;
    if (a >= r.dynamic_shared && a < r.dynamic_shared_end) return kShared;
    for (const auto& range : r.ignore)
      if (a >= range.first && a < range.second) return -1;
    return kGlobal;
  }

  SiteFigures& figures(uint32_t site, int space, uint32_t info) {
    std::size_t k = static_cast<std::size_t>(site) * 2 + static_cast<std::size_t>(space);
    if (figures_.size() <= k) figures_.resize(k + 1);
    SiteFigures& s = figures_[k];
    if (s.requests == 0) {
      s.offset = static_cast<uint64_t>(site_pc_[site] - ranges_->base);
      s.space = static_cast<uint8_t>(space);
      s.kind = static_cast<uint8_t>(EMU_ACCESS_KIND(info));
      s.size = EMU_ACCESS_SIZE(info);
    }
    return s;
  }

  void finish(const Request& q) {
    uint32_t global_mask = 0, shared_mask = 0;
    for (uint32_t m = q.mask; m; m &= m - 1) {
      int l = __builtin_ctz(m);
      int sp = space_of(q.addr[l]);
      if (sp == kGlobal) global_mask |= 1u << l;
      else if (sp == kShared) shared_mask |= 1u << l;
    }
    if (global_mask) finish_global(q, global_mask);
    if (shared_mask) finish_shared(q, shared_mask);
  }

  void count_lanes(SiteFigures& s, const Request& q, uint32_t mask) {
    ++s.requests;
    for (uint32_t m = mask; m; m &= m - 1) {
      int l = __builtin_ctz(m);
      uint32_t size = EMU_ACCESS_SIZE(q.info[l]);
      ++s.accesses;
      s.bytes += size;
      if (size && (size & (size - 1)) == 0 && (q.addr[l] & (size - 1)) != 0) ++s.misaligned;
    }
  }

  static std::size_t distinct(uintptr_t* v, std::size_t n) {
    std::sort(v, v + n);
    return static_cast<std::size_t>(std::unique(v, v + n) - v);
  }

  void finish_global(const Request& q, uint32_t mask) {
    SiteFigures& s = figures(q.site, kGlobal, q.info[__builtin_ctz(mask)]);
    count_lanes(s, q, mask);
    std::size_t n = 0;
    bool sorted = true;
    for (uint32_t m = mask; m; m &= m - 1) {
      int l = __builtin_ctz(m);
      uint32_t size = EMU_ACCESS_SIZE(q.info[l]);
      uintptr_t a = q.addr[l];
      for (const auto& r : ranges_->rebase) {
        if (a >= r.start && a < r.end) {
          a += r.shift;
          break;
        }
      }
      uintptr_t lo = a >> 5, hi = (a + (size ? size : 1) - 1) >> 5;
      for (uintptr_t x = lo; x <= hi; ++x) {
        if (n == scratch_.size()) scratch_.resize(n * 2 + 64);
        if (n && x < scratch_[n - 1]) sorted = false;
        scratch_[n++] = x;
      }
    }
    if (sorted) {  // lanes in address order (the usual case): count the changes
      std::size_t d = n ? 1 : 0;
      for (std::size_t i = 1; i < n; ++i) d += scratch_[i] != scratch_[i - 1];
      s.sectors += d;
    } else {
      s.sectors += distinct(scratch_.data(), n);
    }
  }

  void finish_shared(const Request& q, uint32_t mask) {
    int first = __builtin_ctz(mask);
    SiteFigures& s = figures(q.site, kShared, q.info[first]);
    count_lanes(s, q, mask);
    uint32_t size = EMU_ACCESS_SIZE(q.info[first]);
    int group = size <= 4 ? 32 : size <= 8 ? 16 : 8;  // lanes served together
    const ProfileRanges& r = *ranges_;
    if (size <= 4 && fast_shared(q, mask, s)) return;
    for (int g = 0; g < 32; g += group) {
      uint32_t part = mask & (group == 32 ? 0xffffffffu : (((1u << group) - 1u) << g));
      if (!part) continue;
      std::size_t n = 0;
      for (uint32_t m = part; m; m &= m - 1) {
        int l = __builtin_ctz(m);
        uintptr_t a = q.addr[l];
        uintptr_t origin = r.dynamic_shared;
        for (const auto& range : r.static_shared) {
          if (a >= range.first && a < range.second) {
            origin = range.first;
            break;
          }
        }
        uintptr_t off = a - origin;
        uint32_t sz = EMU_ACCESS_SIZE(q.info[l]);
        for (uintptr_t w = off >> 2; w <= (off + (sz ? sz : 1) - 1) >> 2; ++w) {
          if (n == scratch_.size()) scratch_.resize(n * 2 + 64);
          scratch_[n++] = w;
        }
      }
      std::size_t words = distinct(scratch_.data(), n);
      uint32_t per_bank[32] = {0};
      uint32_t worst = 0;
      for (std::size_t i = 0; i < words; ++i) worst = std::max(worst, ++per_bank[scratch_[i] & 31]);
      s.wavefronts += worst;
      s.ideal += 1;
    }
  }

  // Accesses of at most 4 bytes, none straddling a word: one word per lane. When no
  // bank holds two distinct words the request is one wavefront, found without sorting.
  bool fast_shared(const Request& q, uint32_t mask, SiteFigures& s) {
    uintptr_t word[32];
    uint32_t seen = 0;
    for (uint32_t m = mask; m; m &= m - 1) {
      int l = __builtin_ctz(m);
      uintptr_t a = q.addr[l];
      uint32_t sz = EMU_ACCESS_SIZE(q.info[l]);
      if (((a & 3) + (sz ? sz : 1)) > 4) return false;
      uintptr_t w = a >> 2;  // arrays are 4-byte aligned: banks relative to their start agree
      uint32_t bank = static_cast<uint32_t>(w & 31);
      if ((seen >> bank) & 1u) {
        if (word[bank] != w) return false;  // a conflict: the general count
      } else {
        seen |= 1u << bank;
        word[bank] = w;
      }
    }
    s.wavefronts += 1;
    s.ideal += 1;
    return true;
  }

  std::vector<std::vector<Access>> traces_;
  int threads_ = 0;
  const ProfileRanges* ranges_ = nullptr;
  // sites of this launch
  std::vector<uintptr_t> pc_keys_;
  std::vector<uint32_t> pc_vals_;
  std::size_t pc_count_ = 0;
  std::vector<uintptr_t> site_pc_;
  std::vector<uint32_t> occ_, occ_gen_, reqs_gen_;
  std::vector<std::vector<uint32_t>> reqs_;
  std::vector<SiteFigures> figures_;  // site * 2 + space
  uint32_t lane_gen_ = 0, warp_gen_ = 0;
  // requests of the warp being flushed
  std::vector<Request> requests_;
  std::size_t used_ = 0;
  std::vector<uintptr_t> scratch_;
};

}  // namespace emu
