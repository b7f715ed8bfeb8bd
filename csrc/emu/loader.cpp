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

Library::Library(const std::string& path) : path_(path) {
  instances_.push_back(load(path, -1));
  share_device_globals(*instances_[0]);
}

Library::~Library() {
  for (auto& inst : instances_) {
    if (inst->handle) dlclose(inst->handle);
    if (inst->fd >= 0) close(inst->fd);
  }
  if (device_fd_ >= 0) close(device_fd_);
}

// Instance 0's __device__ pages move into a memfd (their current contents: the
// initialised values) mapped shared over the same addresses; every later instance
// maps that memfd over its own emu_device pages.
void Library::share_device_globals(LibraryInstance& inst) {
  const std::size_t bytes = inst.device_end - inst.device_start;
  const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  if (!bytes || inst.device_start % page || bytes % page) return;
  void* at = reinterpret_cast<void*>(inst.device_start);
  if (device_fd_ < 0) {
    int fd = memfd_create("convnet-device-globals", MFD_CLOEXEC);
    if (fd < 0) throw std::runtime_error(std::string("memfd_create failed: ") + std::strerror(errno));
    if (write(fd, at, bytes) != static_cast<ssize_t>(bytes)) {
      close(fd);
      throw std::runtime_error("cannot copy the __device__ variables of " + path_);
    }
    device_fd_ = fd;
  }
  if (mmap(at, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, device_fd_, 0) == MAP_FAILED)
    throw std::runtime_error(std::string("cannot share the __device__ variables of ") + path_ + ": " +
                             std::strerror(errno));
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
  struct Search {
    uintptr_t base;
    LibraryInstance* inst;
  } search{inst->base, inst.get()};
  dl_iterate_phdr(
      [](struct dl_phdr_info* p, std::size_t, void* data) -> int {
        auto* s = static_cast<Search*>(data);
        if (static_cast<uintptr_t>(p->dlpi_addr) != s->base) return 0;
        uintptr_t lo = UINTPTR_MAX, hi = 0;
        for (int i = 0; i < p->dlpi_phnum; ++i) {
          if (p->dlpi_phdr[i].p_type != PT_LOAD) continue;
          uintptr_t a = p->dlpi_addr + p->dlpi_phdr[i].p_vaddr;
          lo = a < lo ? a : lo;
          hi = a + p->dlpi_phdr[i].p_memsz > hi ? a + p->dlpi_phdr[i].p_memsz : hi;
        }
        s->inst->image_start = lo;
        s->inst->image_end = hi;
        return 1;
      },
      &search);
  using SlotsFn = void*** (*)(int*);
  if (auto slots = reinterpret_cast<SlotsFn>(dlsym(inst->handle, "emu_dynamic_shared_slots")))
    inst->dynamic_slots = slots(&inst->dynamic_count);
  void* begin = dlsym(inst->handle, "__emu_device_begin");
  void* end = dlsym(inst->handle, "__emu_device_end");
  if (begin && end && end > begin) {
    inst->device_start = reinterpret_cast<uintptr_t>(begin);
    inst->device_end = reinterpret_cast<uintptr_t>(end);
  }
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
    share_device_globals(*instances_.back());
  }
}

}  // namespace emu
