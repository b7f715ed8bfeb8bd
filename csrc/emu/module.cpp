// module.cpp — the pybind11 module convnet._emu: load kernel libraries, launch
// kernels on the CPU runtime, measure the fiber switch.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "loader.h"
#include "scheduler.h"

namespace py = pybind11;

namespace {

// Kernel arguments as the Python side packs them: one bytes object per parameter
// (a pointer as 8 bytes, a scalar as its own bytes).
struct PackedArgs {
  std::vector<std::aligned_storage<16, 16>::type> slots;
  std::vector<void*> pointers;
};

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::size_t start = 0;
  if (s.empty()) return out;
  for (;;) {
    std::size_t comma = s.find(',', start);
    out.push_back(s.substr(start, comma - start));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return out;
}

// Bytes a parameter of this kind takes: pointers ("P..", "C..") 8, scalars their size.
std::size_t kind_size(const std::string& kind) {
  if (!kind.empty() && (kind[0] == 'P' || kind[0] == 'C')) return sizeof(void*);
  if (kind.size() == 2 && kind[1] >= '1' && kind[1] <= '8') return static_cast<std::size_t>(kind[1] - '0');
  return 0;
}

py::object launch(emu::Library& lib, int kernel, std::vector<unsigned> grid, std::vector<unsigned> block,
                  std::size_t shared_bytes, const std::vector<py::bytes>& args, bool reverse,
                  bool fill_shared, int workers, bool profile, std::shared_ptr<emu::Library> profile_library,
                  std::vector<uint64_t> profile_blocks,
                  std::vector<std::pair<uint64_t, uint64_t>> profile_allocations,
                  std::vector<std::pair<uint64_t, uint64_t>> profile_shared,
                  std::vector<std::pair<uint64_t, uint64_t>> shared_statics, std::string check,
                  std::shared_ptr<emu::Library> check_library,
                  std::vector<std::tuple<uint64_t, uint64_t, int>> check_arrays,
                  std::vector<std::tuple<uint64_t, uint64_t, uint64_t>> check_tracked,
                  std::vector<std::tuple<uint64_t, uint64_t, std::string>> check_shared, bool random,
                  uint64_t seed, double watchdog) {
  if (kernel < 0 || kernel >= lib.size()) throw py::index_error("no kernel with index " + std::to_string(kernel));
  const EmuKernelEntry& entry = lib.kernel(kernel);
  if (grid.size() != 3 || block.size() != 3) throw py::value_error("grid and block take three dimensions");
  std::vector<std::string> params = split(entry.signature);
  if (params.size() != args.size())
    throw py::type_error(std::string("kernel ") + entry.name + " takes " + std::to_string(params.size()) +
                         " arguments (" + entry.signature + "), got " + std::to_string(args.size()));
  PackedArgs packed;
  packed.slots.resize(args.size());
  // The Python side has checked each argument against the signature; this checks
  // only what could corrupt memory here: the byte count of every argument.
  for (std::size_t i = 0; i < args.size(); ++i) {
    std::string bytes = args[i];
    std::size_t want = kind_size(params[i]);
    if (want == 0)
      throw py::type_error(std::string("kernel ") + entry.name + ": parameter " + std::to_string(i) +
                           " is passed by value as a vector or struct type, which the emulator cannot check; "
                           "pass scalars or pointers");
    if (bytes.size() != want)
      throw py::type_error(std::string("kernel ") + entry.name + ": argument " + std::to_string(i) + " has " +
                           std::to_string(bytes.size()) + " bytes, its parameter (" + params[i] + ") takes " +
                           std::to_string(want));
    std::memcpy(&packed.slots[i], bytes.data(), bytes.size());
    packed.pointers.push_back(&packed.slots[i]);
  }
  emu::LaunchSpec spec;
  spec.library = &lib;
  spec.kernel = kernel;
  spec.grid = dim3(grid[0], grid[1], grid[2]);
  spec.block = dim3(block[0], block[1], block[2]);
  spec.shared_bytes = shared_bytes;
  spec.args = packed.pointers.empty() ? nullptr : packed.pointers.data();
  spec.reverse = reverse;
  spec.fill_shared = fill_shared;
  spec.workers = workers;
  spec.shared_statics = std::move(shared_statics);
  if (!check.empty() || random) {
    emu::CheckSpec& c = spec.check;
    for (char ch : check) {
      if (ch == 'r') c.race = true;
      else if (ch == 'i') c.init = true;
      else throw py::value_error("check takes the letters r (race) and i (init)");
    }
    c.random = random;
    c.seed = seed;
    if (!check_library) throw py::value_error("a checked launch needs check_library (the hooked build)");
    if (check_library->find(entry.name) != kernel)
      throw py::value_error(std::string("the hooked build has no kernel ") + entry.name + " at index " +
                            std::to_string(kernel));
    spec.check_library = check_library.get();
    for (const auto& a : check_arrays)
      c.arrays.push_back({static_cast<uintptr_t>(std::get<0>(a)),
                          static_cast<uintptr_t>(std::get<0>(a) + std::get<1>(a)), std::get<2>(a)});
    for (const auto& t : check_tracked)
      c.tracked.push_back({static_cast<uintptr_t>(std::get<0>(t)),
                           static_cast<uintptr_t>(std::get<0>(t) + std::get<1>(t)),
                           reinterpret_cast<uint8_t*>(static_cast<uintptr_t>(std::get<2>(t)))});
    for (const auto& a : check_shared) c.shared.push_back({std::get<0>(a), std::get<1>(a), std::get<2>(a)});
    if (!packed.slots.empty()) {
      auto lo = reinterpret_cast<uintptr_t>(packed.slots.data());
      c.ignore.emplace_back(lo, lo + packed.slots.size() * sizeof(packed.slots[0]));
      auto plo = reinterpret_cast<uintptr_t>(packed.pointers.data());
      c.ignore.emplace_back(plo, plo + packed.pointers.size() * sizeof(void*));
    }
  }
  emu::LaunchProfile result;
  if (profile) {
    spec.profile = &result;
    if (profile_library) {
      if (profile_library->find(entry.name) != kernel)
        throw py::value_error(std::string("the profiling build has no kernel ") + entry.name + " at index " +
                              std::to_string(kernel));
      spec.profile_library = profile_library.get();
      std::sort(profile_blocks.begin(), profile_blocks.end());
      spec.profile_shared = std::move(profile_shared);
      for (const auto& a : profile_allocations) {
        uintptr_t start = static_cast<uintptr_t>(a.first);
        spec.profile_rebase.push_back({start, start + static_cast<uintptr_t>(a.second), (256 - start % 256) % 256});
      }
      spec.profile_blocks = std::move(profile_blocks);
      // The thunk reads the packed arguments: parameters, not traffic.
      if (!packed.slots.empty()) {
        auto lo = reinterpret_cast<uintptr_t>(packed.slots.data());
        spec.profile_ignore.emplace_back(lo, lo + packed.slots.size() * sizeof(packed.slots[0]));
        auto plo = reinterpret_cast<uintptr_t>(packed.pointers.data());
        spec.profile_ignore.emplace_back(plo, plo + packed.pointers.size() * sizeof(void*));
      }
    }
  }
  spec.interrupted = [] {
    py::gil_scoped_acquire gil;
    return PyErr_CheckSignals() != 0;  // leaves KeyboardInterrupt set
  };
  spec.watchdog_seconds = watchdog;
  try {
    py::gil_scoped_release release;
    emu::launch(spec);
  } catch (const emu::Interrupted& e) {
    if (e.sigint) {
      // The runtime's own SIGINT handler caught Ctrl-C during the launch: hand it to
      // Python's handler (KeyboardInterrupt by default).
      PyErr_SetInterrupt();
      if (PyErr_CheckSignals() == 0 && !PyErr_Occurred()) PyErr_SetNone(PyExc_KeyboardInterrupt);
    } else if (!PyErr_Occurred()) {
      PyErr_SetNone(PyExc_KeyboardInterrupt);
    }
    throw py::error_already_set();
  }
  if (!profile) return py::none();
  py::list sites;
  for (const emu::SiteFigures& f : result.sites)
    sites.append(py::make_tuple(f.offset, f.space == emu::kShared ? "shared" : "global", f.kind, f.size,
                                f.requests, f.accesses, f.bytes, f.sectors, f.wavefronts, f.ideal,
                                f.misaligned));
  py::dict out;
  out["blocks_total"] = result.blocks_total;
  out["blocks_profiled"] = result.blocks_profiled;
  out["barriers"] = result.barriers;
  out["warp_ops"] = result.warp_ops;
  out["sites"] = sites;
  return out;
}

}  // namespace

PYBIND11_MODULE(_emu, m) {
  m.doc() = "convnet's CUDA-on-CPU runtime: kernels compiled by g++, each CUDA thread a fiber";
  static py::exception<emu::KernelFault> kernel_error(m, "KernelError", PyExc_RuntimeError);
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const emu::KernelFault& e) {
      py::set_error(kernel_error, e.what());
    }
  });

  py::class_<emu::Library, std::shared_ptr<emu::Library>>(m, "Library")
      .def(py::init<const std::string&>(), py::arg("path"))
      .def_property_readonly("path", &emu::Library::path)
      .def("names", [](const emu::Library& lib) {
        std::vector<std::string> names;
        for (int i = 0; i < lib.size(); ++i) names.push_back(lib.kernel(i).name);
        return names;
      })
      .def("signature", [](const emu::Library& lib, int i) {
        if (i < 0 || i >= lib.size()) throw py::index_error("no kernel with index " + std::to_string(i));
        return std::string(lib.kernel(i).signature);
      })
      .def("find", &emu::Library::find);

  m.def("launch", &launch, py::arg("library"), py::arg("kernel"), py::arg("grid"), py::arg("block"),
        py::arg("shared_bytes"), py::arg("args"), py::arg("reverse") = false, py::arg("fill_shared") = false,
        py::arg("workers") = 1, py::arg("profile") = false, py::arg("profile_library") = nullptr,
        py::arg("profile_blocks") = std::vector<uint64_t>{},
        py::arg("profile_allocations") = std::vector<std::pair<uint64_t, uint64_t>>{},
        py::arg("profile_shared") = std::vector<std::pair<uint64_t, uint64_t>>{},
        py::arg("shared_statics") = std::vector<std::pair<uint64_t, uint64_t>>{}, py::arg("check") = "",
        py::arg("check_library") = nullptr,
        py::arg("check_arrays") = std::vector<std::tuple<uint64_t, uint64_t, int>>{},
        py::arg("check_tracked") = std::vector<std::tuple<uint64_t, uint64_t, uint64_t>>{},
        py::arg("check_shared") = std::vector<std::tuple<uint64_t, uint64_t, std::string>>{},
        py::arg("random") = false, py::arg("seed") = 0, py::arg("watchdog") = 60.0,
        "Run one kernel launch to completion. args: one bytes object per parameter. With profile=True "
        "it returns the launch's memory-traffic figures: the blocks listed in profile_blocks (linear "
        "indices) run on profile_library, the same kernels built with access hooks; profile_allocations "
        "((start, bytes) of each array the arguments point into) are counted as if 256-byte aligned; "
        "profile_shared: (offset, bytes) of static __shared__ arrays outside the emu_shared section. "
        "shared_statics: the same arrays of `library`, which fill_shared fills too. check: 'r' (race), 'i' "
        "(init) or both; with them or random=True every block runs on check_library (the hooked build) on one "
        "OS thread; check_arrays: (start, bytes, argument index) to name global memory; check_tracked: "
        "(start, bytes, address of a uint8 mask) of allocations whose unwritten bytes (mask 0) must not be "
        "read; check_shared: (offset, bytes, name) of every static __shared__ array of check_library. "
        "watchdog: seconds a block may go without any of its threads reaching a barrier, a warp operation "
        "or its end before the launch fails with a KernelError naming it (0: never). A SIGSEGV, SIGBUS or "
        "SIGFPE in a kernel is a KernelError too; Ctrl-C stops the launch.");
  m.def("switch_cost_ns", &emu::switch_cost_ns, py::arg("iterations") = 1000000,
        "Nanoseconds per fiber context switch.");
  m.attr("API_VERSION") = EMU_API_VERSION;
  m.attr("STACK_BYTES") = EMU_STACK_BYTES;
  m.attr("HOOKS_VERSION") = EMU_HOOKS_VERSION;
#if defined(__x86_64__) && !defined(EMU_FORCE_UCONTEXT)
  m.attr("CONTEXT_SWITCH") = "x86-64 assembly";
#else
  m.attr("CONTEXT_SWITCH") = "ucontext";
#endif
}
