// loader.cpp — dlopen a kernel library, bind it to the runtime, find its TLS block.
#include "loader.h"

#include <dlfcn.h>
#include <link.h>

#include <cstring>
#include <stdexcept>

namespace emu {

Library::Library(const std::string& path) : path_(path) {
  handle_ = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!handle_) throw std::runtime_error(std::string("cannot load kernel library: ") + dlerror());
  using InitFn = int (*)(const EmuApi*);
  using TableFn = const EmuKernelEntry* (*)(int*);
  auto init = reinterpret_cast<InitFn>(dlsym(handle_, "emu_library_init"));
  auto table = reinterpret_cast<TableFn>(dlsym(handle_, "emu_kernel_table"));
  tls_probe_ = reinterpret_cast<void* (*)()>(dlsym(handle_, "emu_tls_probe"));
  if (!init || !table || !tls_probe_) {
    dlclose(handle_);
    throw std::runtime_error("not a convnet kernel library (entry points missing): " + path);
  }
  int version = init(runtime_api());
  if (version != EMU_API_VERSION) {
    dlclose(handle_);
    throw std::runtime_error("kernel library " + path + " was built for emulator API version " +
                             std::to_string(version) + ", this runtime is version " +
                             std::to_string(EMU_API_VERSION) + ": rebuild it");
  }
  table_ = table(&count_);
}

Library::~Library() {
  if (handle_) dlclose(handle_);
}

int Library::find(const std::string& name) const {
  for (int i = 0; i < count_; ++i)
    if (name == table_[i].name) return i;
  return -1;
}

namespace {
struct TlsQuery {
  const char* path;
  char* start = nullptr;
  std::size_t bytes = 0;
};
int find_tls(struct dl_phdr_info* info, std::size_t, void* data) {
  auto* q = static_cast<TlsQuery*>(data);
  if (!info->dlpi_name || std::strcmp(info->dlpi_name, q->path) != 0) return 0;
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    if (info->dlpi_phdr[i].p_type == PT_TLS && info->dlpi_tls_data) {
      q->start = static_cast<char*>(info->dlpi_tls_data);
      q->bytes = info->dlpi_phdr[i].p_memsz;
      return 1;
    }
  }
  return 1;
}
}  // namespace

std::pair<char*, std::size_t> Library::thread_shared_block() const {
  tls_probe_();  // makes sure this thread's block is allocated
  TlsQuery q;
  q.path = path_.c_str();
  dl_iterate_phdr(find_tls, &q);
  return {q.start, q.bytes};
}

}  // namespace emu
