// loader.h — a kernel library: a kernels/*.cu file compiled by g++ into a shared
// object with cuda_emu.h forced in, loaded with dlopen and bound to the runtime.
//
// Static __shared__ arrays are plain statics of the library, so each OS thread of
// the pool runs its blocks on its own loaded instance: instance 0 is the file
// itself, the others are private in-memory copies of it (memfd), loaded on demand.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "emu_api.h"
#include "emu_hooks.h"

namespace emu {

struct LibraryInstance {
  void* handle = nullptr;
  int fd = -1;                       // the memfd of a copy (-1 for instance 0)
  const EmuKernelEntry* table = nullptr;
  int count = 0;
  char* shared = nullptr;            // its static __shared__ arrays
  std::size_t shared_bytes = 0;
  // Libraries built with memory-access hooks (check mode "profile"); null otherwise.
  EmuHookSlot* hooks = nullptr;
  EmuHookImage image{nullptr, nullptr};  // the instance's own image
  uintptr_t base = 0;                    // its load base (pc - base: address in the file's code)
  // [image_start, image_end): its loaded image (code and data), to tell whether an
  // interrupted program counter is in kernel code.
  uintptr_t image_start = 0, image_end = 0;
  // File-scope `extern __shared__ T a[];` of the source (emu.translate makes each a
  // pointer of the library and registers it): set to the block's dynamic shared
  // memory by the worker that runs blocks on this instance.
  void*** dynamic_slots = nullptr;
  int dynamic_count = 0;
  // [device_start, device_end): the library's `__device__` variables (the emu_device
  // section, page-aligned by the link). Every instance maps the same pages there, so
  // all workers see one instance of each variable, as a GPU does.
  uintptr_t device_start = 0, device_end = 0;
};

class Library {
 public:
  explicit Library(const std::string& path);  // throws std::runtime_error naming the problem
  ~Library();
  Library(const Library&) = delete;
  Library& operator=(const Library&) = delete;

  int size() const { return instances_[0]->count; }
  const EmuKernelEntry& kernel(int i) const { return instances_[0]->table[i]; }
  int find(const std::string& name) const;  // -1 when absent
  const std::string& path() const { return path_; }

  // Makes sure `n` instances are loaded (call before a launch, from one thread).
  void prepare(int n);
  const LibraryInstance& instance(int i) const { return *instances_[i]; }
  int instances() const { return static_cast<int>(instances_.size()); }

 private:
  std::unique_ptr<LibraryInstance> load(const std::string& file, int fd) const;

  void share_device_globals(LibraryInstance& inst);

  std::string path_;
  std::vector<std::unique_ptr<LibraryInstance>> instances_;
  int device_fd_ = -1;  // memfd holding the one copy of the __device__ variables
};

const EmuApi* runtime_api();

}  // namespace emu
