// loader.cpp — dlopen a kernel library (and private copies of it), bind it to the runtime.
#include "loader.h"

#include <dlfcn.h>
#include <link.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <stdexcept>

namespace emu {

Library::Library(const std::string& path) : path_(path) { instances_.push_back(load(path, -1)); }

Library::~Library() {
  for (auto& inst : instances_) {
    if (inst->handle) dlclose(inst->handle);
    if (inst->fd >= 0) close(inst->fd);
  }
}

int Library::find(const std::string& name) const {
  for (int i = 0; i < size(); ++i)
    if (name == kernel(i).name) return i;
  return -1;
}

std::unique_ptr<LibraryInstance> Library::load(const std::string& file, int fd) const {
  auto inst = std::make_unique<LibraryInstance>();
  inst->fd = fd;
  inst->handle = dlopen(file.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!inst->handle) {
    if (fd >= 0) close(fd);
    throw std::runtime_error(std::string("cannot load kernel library: ") + dlerror());
  }
  using InitFn = int (*)(const EmuApi*);
  using TableFn = const EmuKernelEntry* (*)(int*);
  using SharedFn = void (*)(char**, std::size_t*);
  auto init = reinterpret_cast<InitFn>(dlsym(inst->handle, "emu_library_init"));
  auto table = reinterpret_cast<TableFn>(dlsym(inst->handle, "emu_kernel_table"));
  auto shared = reinterpret_cast<SharedFn>(dlsym(inst->handle, "emu_shared_range"));
  std::string problem;
  if (!init || !table || !shared) {
    problem = "not a convnet kernel library (entry points missing): " + path_;
  } else {
    int version = init(runtime_api());
    if (version != EMU_API_VERSION)
      problem = "kernel library " + path_ + " was built for emulator API version " + std::to_string(version) +
                ", this runtime is version " + std::to_string(EMU_API_VERSION) + ": rebuild it";
  }
  if (!problem.empty()) {
    dlclose(inst->handle);
    if (fd >= 0) close(fd);
    throw std::runtime_error(problem);
  }
  inst->table = table(&inst->count);
  shared(&inst->shared, &inst->shared_bytes);
  using HooksFn = int (*)(EmuHookSlot**, EmuHookImage*);
  if (auto hooks = reinterpret_cast<HooksFn>(dlsym(inst->handle, "emu_hooks_init"))) {
    EmuHookSlot* slot = nullptr;
    int version = hooks(&slot, &inst->image);
    if (version != EMU_HOOKS_VERSION) {
      dlclose(inst->handle);
      if (fd >= 0) close(fd);
      throw std::runtime_error("kernel library " + path_ + " was built for access hooks version " +
                               std::to_string(version) + ", this runtime has version " +
                               std::to_string(EMU_HOOKS_VERSION) + ": rebuild it");
    }
    inst->hooks = slot;
  }
  struct link_map* map = nullptr;
  if (dlinfo(inst->handle, RTLD_DI_LINKMAP, &map) == 0 && map) inst->base = static_cast<uintptr_t>(map->l_addr);
  return inst;
}

void Library::prepare(int n) {
  while (static_cast<int>(instances_.size()) < n) {
    // A private copy: dlopen would hand back the already-loaded object for the same
    // file (or a hard link to it), sharing its statics.
    int src = open(path_.c_str(), O_RDONLY | O_CLOEXEC);
    if (src < 0) throw std::runtime_error("cannot read kernel library " + path_ + ": " + std::strerror(errno));
    int fd = memfd_create("convnet-kernels", MFD_CLOEXEC);
    if (fd < 0) {
      close(src);
      throw std::runtime_error(std::string("memfd_create failed: ") + std::strerror(errno));
    }
    char buffer[1 << 16];
    ssize_t got;
    bool ok = true;
    while ((got = read(src, buffer, sizeof buffer)) > 0) {
      if (write(fd, buffer, static_cast<std::size_t>(got)) != got) {
        ok = false;
        break;
      }
    }
    close(src);
    if (!ok || got < 0) {
      close(fd);
      throw std::runtime_error("cannot copy kernel library " + path_);
    }
    instances_.push_back(load("/proc/self/fd/" + std::to_string(fd), fd));
  }
}

}  // namespace emu
