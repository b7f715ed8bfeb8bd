// loader.h — a kernel library: a kernels/*.cu file compiled by g++ into a shared
// object with cuda_emu.h forced in, loaded with dlopen and bound to the runtime.
#pragma once

#include <string>
#include <utility>

#include "emu_api.h"

namespace emu {

class Library {
 public:
  explicit Library(const std::string& path);  // throws std::runtime_error naming the problem
  ~Library();
  Library(const Library&) = delete;
  Library& operator=(const Library&) = delete;

  int size() const { return count_; }
  const EmuKernelEntry& kernel(int i) const { return table_[i]; }
  int find(const std::string& name) const;  // -1 when absent
  const std::string& path() const { return path_; }

  // The calling OS thread's copy of the library's thread-local data, where the
  // kernels' static __shared__ arrays live: {start, bytes}.
  std::pair<char*, std::size_t> thread_shared_block() const;

 private:
  std::string path_;
  void* handle_ = nullptr;
  const EmuKernelEntry* table_ = nullptr;
  int count_ = 0;
  void* (*tls_probe_)() = nullptr;
};

const EmuApi* runtime_api();

}  // namespace emu
