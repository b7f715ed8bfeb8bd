"""The ``emu`` device: the CUDA kernels compiled by g++ and run on the CPU.

Each ``kernels/*.cu`` file is compiled once into a shared object (cached on disk,
keyed on its expanded text, the flags and the compiler) with ``cuda_emu.h``
forced in, and loaded into the runtime of ``convnet._emu``, where every CUDA
thread is a fiber and every block runs on one OS thread of a pool.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import os
import platform
import re
import shutil
import struct
import subprocess
import tempfile
import threading
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..cache import cache_dir as _cache_root
from ..toolchain import kernel_source
from ..toolchain.launch import KernelModule, Launch
from ..toolchain.paths import emu_include_dir
from .base import DeviceError, HostDevice  # noqa: F401  (DeviceError is part of this module's API)

try:
    from .. import _emu
    _IMPORT_ERROR = None
except ImportError as exc:  # the extension was not built
    _emu = None
    _IMPORT_ERROR = exc


if _emu is not None:
    KernelError = _emu.KernelError
else:
    class KernelError(RuntimeError):
        """A fault diagnosed in an emulated kernel."""


class EmuCompileError(RuntimeError):
    """g++ rejected a kernel source; the message holds its diagnostics."""


CHECKS = (None, "bounds", "address")
SCHEDULES = ("forward", "reverse")


@dataclass(frozen=True)
class EmuOptions:
    schedule: str = "forward"   # "reverse": threads and blocks in reverse order
    fill_shared: bool = False   # NaN bytes in shared memory at every block start
    check: str | None = None    # "bounds": index checks; "address": AddressSanitizer
    threads: int = 0            # OS threads for blocks; 0: CONVNET_EMU_THREADS or all cores


_OPTIONS: contextvars.ContextVar[EmuOptions] = contextvars.ContextVar("convnet_emu_options",
                                                                       default=EmuOptions())
_PROFILE: contextvars.ContextVar = contextvars.ContextVar("convnet_emu_profile", default=None)


@contextlib.contextmanager
def debug(schedule: str | None = None, fill_shared: bool | None = None, check: str | None = "keep",
          threads: int | None = None):
    """Run emulated launches inside the block with debugging options (see EmuOptions)."""
    current = _OPTIONS.get()
    changes = {}
    if schedule is not None:
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
        changes["schedule"] = schedule
    if fill_shared is not None:
        changes["fill_shared"] = bool(fill_shared)
    if check != "keep":
        if check not in CHECKS:
            raise ValueError(f"check must be one of {CHECKS}, got {check!r}")
        changes["check"] = check
    if threads is not None:
        if threads < 0:
            raise ValueError(f"threads must be >= 0, got {threads}")
        changes["threads"] = int(threads)
    token = _OPTIONS.set(replace(current, **changes))
    try:
        yield _OPTIONS.get()
    finally:
        _OPTIONS.reset(token)


def options() -> EmuOptions:
    return _OPTIONS.get()


@contextlib.contextmanager
def profile(blocks: int | None = 4):
    """Profile the memory traffic of emulated launches inside the block.

    Yields a ``convnet.perf.traffic.Profile`` that gets one record per launch:
    global sectors per warp-level request, shared-memory wavefronts (bank
    conflicts), bytes, barriers. ``blocks`` blocks of each grid (the first half of
    them, the rest spread to the last block; None: every block) run a build of the
    kernels whose loads and stores call the runtime (check mode "profile"); the
    others run the ordinary build, so results are those of a plain run. Barriers
    and warp operations are counted in every block. Nested profiles: the innermost
    collects.
    """
    if _emu is not None and not hasattr(_emu, "HOOKS_VERSION"):
        raise DeviceError("this build of convnet._emu cannot profile: reinstall convnet (pip install -e .)")
    from ..perf.traffic import Profile
    collected = Profile(blocks=blocks)
    token = _PROFILE.set(collected)
    try:
        yield collected
    finally:
        _PROFILE.reset(token)


# ---------------------------------------------------------------- the compiler

def compiler() -> str:
    """The C++ compiler used for kernels: $CXX, else g++."""
    return os.environ.get("CXX") or "g++"


@functools.lru_cache(maxsize=None)
def _compiler_version(cxx: str) -> str:
    path = shutil.which(cxx)
    if path is None:
        raise DeviceError(f"the emu device needs a C++ compiler, and {cxx!r} was not found "
                          f"(install g++ or set CXX)")
    out = subprocess.run([path, "--version"], capture_output=True, text=True, check=False)
    return out.stdout.splitlines()[0] if out.stdout else path


def compiler_info() -> dict:
    """The compiler the emu device uses: its command, path and version line."""
    cxx = compiler()
    return {"command": cxx, "path": shutil.which(cxx), "version": _compiler_version(cxx)}


def available() -> bool:
    """Whether the emu device works here: the runtime is built and a compiler exists."""
    if _emu is None:
        return False
    try:
        _compiler_version(compiler())
    except DeviceError:
        return False
    return True


def cache_dir() -> Path:
    """Where compiled kernels are kept: ``emu/`` in convnet's cache folder."""
    return _cache_root() / "emu"


_OPTIMISE = ["-O3", "-march=native"]
_CHECK_FLAGS = {
    None: (_OPTIMISE, []),
    "bounds": (["-O1", "-g", "-fsanitize=bounds", "-fno-sanitize-recover=bounds"], []),
    "address": (["-O1", "-g", "-fsanitize=address", "-fno-omit-frame-pointer"], ["-fsanitize=address"]),
    # emu.profile(): every load and store calls a hook (g++'s ThreadSanitizer pass at
    # the compile step only; emu_profile.h defines the __tsan_* functions, so the link
    # has no libtsan). Same -O3 -march=native as the plain build (same arithmetic), but
    # no vectorisation or store merging, so each thread's accesses keep the source's sizes.
    "profile": (["-O3", "-march=native", "-g", "-fsanitize=thread", "--param=tsan-instrument-func-entry-exit=0",
                 "-fno-tree-vectorize", "-fno-tree-slp-vectorize", "-fno-tree-sra", "-fno-store-merging", "-Wno-tsan",
                 "-fno-optimize-sibling-calls",
                 "-include", "emu_profile.h"], []),
}
# Headers a check mode forces in besides cuda_emu.h (part of its cache key).
_CHECK_HEADERS = {"profile": ("emu_profile.h", "emu_hooks.h")}
_COMMON = ["-std=c++17", "-fPIC", "-fvisibility=hidden", "-Wno-unknown-pragmas", "-Wno-unused-function"]

_DYNAMIC_SHARED = re.compile(
    r"extern\s+__shared__\s+(?:__align__\s*\(\s*\d+\s*\)\s+)?"
    r"(?P<type>[A-Za-z_][\w:]*(?:\s+[A-Za-z_][\w:]*)*?)\s+"
    r"(?:__align__\s*\(\s*\d+\s*\)\s+)?(?P<name>[A-Za-z_]\w*)\s*\[\s*\]\s*;")


def translate(text: str, kernels: tuple[str, ...]) -> str:
    """Expanded CUDA text -> the C++ g++ compiles: dynamic shared memory declarations
    become pointers into the block's buffer, and a table of the exported kernels ends it."""
    text = _DYNAMIC_SHARED.sub(
        lambda m: f"{m['type']}* {m['name']} = emu_dynamic_shared<{m['type']}>();", text)
    rows = ",\n".join(f'  {{"{name}", &emu_thunk<&{name}>, emu_signature(&{name})}}' for name in kernels)
    return (f"{text}\n#line 1 \"<convnet kernel table>\"\n"
            f"EMU_EXPORT const EmuKernelEntry* emu_kernel_table(int* count) {{\n"
            f"  static const EmuKernelEntry table[] = {{\n{rows}\n  }};\n"
            f"  *count = {len(kernels)};\n  return table;\n}}\n")


@functools.lru_cache(maxsize=1)
def _cpu_signature() -> str:
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags = line
                break
    except OSError:
        pass
    return f"{platform.machine()} {flags}"


_LIBRARIES: dict[str, object] = {}
_LOCK = threading.Lock()


def library(module: KernelModule, check: str | None = None):
    """The loaded kernel library of ``module`` built for ``check`` (compiled if needed)."""
    if _emu is None:
        raise DeviceError(f"the emu device is unavailable: convnet._emu did not import ({_IMPORT_ERROR}); "
                          f"reinstall convnet (pip install -e .)")
    if check == "address" and not asan_loaded():
        raise DeviceError("check='address' needs AddressSanitizer loaded before Python starts: "
                          "run the program through convnet.backend.emu.sanitized_command(...)")
    include = emu_include_dir()
    cflags, lflags = _CHECK_FLAGS[check]
    text = translate(kernel_source.expand(module.source), module.kernels)
    cxx = compiler()
    runtime_header = (include / "cuda_emu.h").read_text() + (include / "emu_api.h").read_text()
    for header in _CHECK_HEADERS.get(check, ()):
        runtime_header += (include / header).read_text()
    key = kernel_source.digest(text, " ".join(_COMMON + cflags + lflags), _compiler_version(cxx),
                               runtime_header, _cpu_signature())
    with _LOCK:
        if key in _LIBRARIES:
            return _LIBRARIES[key]
        path = cache_dir() / f"{Path(module.source).stem}-{key[:20]}.so"
        if not path.exists():
            _compile(text, path, cxx, include, cflags, lflags, module.source)
        lib = _emu.Library(str(path))
        _LIBRARIES[key] = lib
        return lib


def _compile(text: str, target: Path, cxx: str, include: Path, cflags, lflags, source: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".build-") as tmp:
        cpp = Path(tmp) / "kernel.cpp"
        obj = Path(tmp) / "kernel.o"
        out = Path(tmp) / "kernel.so"
        cpp.write_text(text)
        steps = [
            [cxx, *_COMMON, *cflags, "-I", str(include), "-include", str(include / "cuda_emu.h"),
             "-c", str(cpp), "-o", str(obj)],
            [cxx, "-shared", *lflags, str(obj), "-o", str(out)],
        ]
        for cmd in steps:
            result = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if result.returncode != 0:
                raise EmuCompileError(f"g++ could not compile {source} for the emu device:\n"
                                      f"{result.stderr.strip()}")
        os.replace(out, target)  # atomic: a half-written library is never seen


# ---------------------------------------------------------------- AddressSanitizer runs

def asan_loaded() -> bool:
    try:
        return "libasan" in Path("/proc/self/maps").read_text()
    except OSError:
        return False


def sanitized_command(argv: list[str]) -> tuple[list[str], dict]:
    """(argv, env) that run ``argv`` with AddressSanitizer preloaded, for check='address'."""
    out = subprocess.run([compiler(), "-print-file-name=libasan.so"], capture_output=True, text=True)
    libasan = out.stdout.strip()
    if out.returncode != 0 or not os.path.isabs(libasan):
        raise DeviceError(f"{compiler()} has no AddressSanitizer runtime (libasan.so)")
    env = dict(os.environ)
    env["LD_PRELOAD"] = libasan
    env["ASAN_OPTIONS"] = "detect_leaks=0:halt_on_error=1:detect_stack_use_after_return=0:abort_on_error=0"
    return list(argv), env


# ---------------------------------------------------------------- launching

def worker_threads(opts: EmuOptions | None = None) -> int:
    """How many OS threads run blocks: debug(threads=...), else CONVNET_EMU_THREADS, else all cores."""
    opts = opts or _OPTIONS.get()
    if opts.threads:
        return opts.threads
    env = os.environ.get("CONVNET_EMU_THREADS")
    if env:
        try:
            value = int(env)
        except ValueError:
            raise DeviceError(f"CONVNET_EMU_THREADS must be a whole number, got {env!r}") from None
        if value < 1:
            raise DeviceError(f"CONVNET_EMU_THREADS must be at least 1, got {value}")
        return value
    return os.cpu_count() or 1


_DTYPE_NAMES = {"f4": "float32", "f8": "float64", "i4": "int32", "u4": "uint32", "i8": "int64",
                "u8": "uint64", "i1": "int8", "u1": "uint8", "i2": "int16", "u2": "uint16", "b1": "bool"}


def _code(dtype: np.dtype) -> str:
    return f"{dtype.kind}{dtype.itemsize}"


def pack_arguments(launch: Launch, signature: str) -> list[bytes]:
    """Each argument as the bytes its parameter takes, after checking it against the
    kernel's signature (kind of scalar, dtype of array, writability, contiguity)."""
    params = signature.split(",") if signature else []
    name = launch.name
    if len(params) != len(launch.args):
        raise TypeError(f"kernel {name} takes {len(params)} arguments ({signature}), "
                        f"got {len(launch.args)}")
    packed = []
    for i, (param, arg) in enumerate(zip(params, launch.args)):
        if param[0] in "PC":
            if not isinstance(arg, np.ndarray):
                where = "a CUDA array" if hasattr(arg, "__cuda_array_interface__") else type(arg).__name__
                raise DeviceError(f"kernel {name}: argument {i} is {where}; the emu device takes NumPy arrays "
                                  f"(move the tensor with .to('emu'))")
            want = param[1:]
            if want != "?" and _code(arg.dtype) != want:
                raise TypeError(f"kernel {name}: argument {i} has dtype {arg.dtype}, the kernel takes "
                                f"{_DTYPE_NAMES.get(want, want)}")
            if not arg.flags.c_contiguous:
                raise ValueError(f"kernel {name}: argument {i} is not C-contiguous; kernels index arrays "
                                 f"densely (use np.ascontiguousarray)")
            if param[0] == "P" and not arg.flags.writeable:
                raise ValueError(f"kernel {name}: argument {i} is read-only, and the kernel writes through it")
            packed.append(struct.pack("<Q", arg.__array_interface__["data"][0]))
        else:
            if isinstance(arg, np.ndarray) or not isinstance(arg, np.generic):
                raise TypeError(f"kernel {name}: argument {i} must be a NumPy scalar of type "
                                f"{_DTYPE_NAMES.get(param, param)}, got {type(arg).__name__}")
            if _code(arg.dtype) != param:
                raise TypeError(f"kernel {name}: argument {i} is {arg.dtype}, the kernel's parameter is "
                                f"{_DTYPE_NAMES.get(param, param)}")
            packed.append(arg.tobytes())
    return packed


_OBJDUMP_OBJECT = re.compile(r"^(?P<addr>[0-9a-f]+)\s.{6}O\s+(?P<section>\S+)\s+(?P<size>[0-9a-f]+)\s+"
                             r"(?:\.hidden\s+)?(?P<name>\S+)$")


@functools.lru_cache(maxsize=None)
def _static_shared(path: str) -> list[tuple[int, int]]:
    """(offset, bytes) of the static ``__shared__`` arrays of a kernel library: the
    objects in its emu_shared section and the function-local statics of kernels that
    the linker placed elsewhere (g++ ignores the section of a template's statics, so
    they land in .bss). Read from the symbol table with objdump."""
    tool = shutil.which("objdump")
    if tool is None:
        raise DeviceError("emu.profile() needs objdump (binutils) to find static __shared__ arrays")
    out = subprocess.run([tool, "-t", path], capture_output=True, text=True, check=False).stdout
    arrays = []
    for line in out.splitlines():
        m = _OBJDUMP_OBJECT.match(line)
        if m is None:
            continue
        section, size, name = m["section"], int(m["size"], 16), m["name"]
        kernel_static = name.startswith("_ZZ") and "emu_" not in name and section.startswith((".bss", ".data"))
        if size and (section == "emu_shared" or kernel_static):
            arrays.append((int(m["addr"], 16), size))
    return sorted(set(arrays))


def _allocations(args) -> list[tuple[int, int]]:
    """(start, bytes) of the whole allocation behind each array argument (a view's
    owner): the profiler counts sectors as if each started 256-byte aligned, as
    cudaMalloc's do, keeping a view's offset into its allocation."""
    out = {}
    for a in args:
        if not isinstance(a, np.ndarray):
            continue
        owner = a
        while isinstance(owner.base, np.ndarray):
            owner = owner.base
        start = owner.__array_interface__["data"][0]
        out[start] = max(out.get(start, 0), owner.nbytes)
    return sorted(out.items())


class EmuDevice(HostDevice):
    kind = "emu"
    name = "emu"
    runs_kernels = True

    def __init__(self):
        if not available():
            reason = (f"convnet._emu did not import ({_IMPORT_ERROR})" if _emu is None
                      else f"no C++ compiler ({compiler()!r}) was found")
            raise DeviceError(f"the emu device is unavailable here: {reason}")

    @property
    def parallel_units(self) -> int:
        """The OS threads that run blocks now (``debug(threads=...)``, CONVNET_EMU_THREADS,
        else every core)."""
        return worker_threads()

    def launch(self, launch: Launch) -> None:
        launch.check_resources()  # issue 10 item 4 (resources helper): what a GPU would refuse, toolchain/resources.py
        opts = _OPTIONS.get()
        lib = library(launch.module, opts.check)
        index = lib.find(launch.name)
        if index < 0:
            raise DeviceError(f"kernel {launch.name} is missing from the compiled {launch.module.source}")
        args = pack_arguments(launch, lib.signature(index))
        collecting = _PROFILE.get()
        if collecting is None:
            _emu.launch(lib, index, list(launch.grid), list(launch.block), launch.shared_bytes, args,
                        reverse=opts.schedule == "reverse", fill_shared=opts.fill_shared,
                        workers=worker_threads(opts))
            return
        from ..perf.traffic import launch_traffic
        hooked = library(launch.module, "profile")
        if hooked.find(launch.name) != index:
            raise DeviceError(f"kernel {launch.name}: the profiling build of {launch.module.source} "
                              f"does not match the plain one")
        total = int(np.prod(launch.grid, dtype=np.int64))
        raw = _emu.launch(lib, index, list(launch.grid), list(launch.block), launch.shared_bytes, args,
                          reverse=opts.schedule == "reverse", fill_shared=opts.fill_shared,
                          workers=worker_threads(opts), profile=True, profile_library=hooked,
                          profile_blocks=collecting.sample(total),
                          profile_allocations=_allocations(launch.args),
                          profile_shared=_static_shared(hooked.path))
        collecting.add(launch_traffic(launch.name, str(launch.module.source), hooked.path, launch.grid,
                                      launch.block, launch.shared_bytes, raw))


def switch_cost_ns(iterations: int = 1_000_000) -> float:
    """Nanoseconds per fiber context switch, measured now."""
    if _emu is None:
        raise DeviceError(f"convnet._emu did not import ({_IMPORT_ERROR})")
    return _emu.switch_cost_ns(iterations)


__all__ = ["EmuDevice", "EmuCompileError", "EmuOptions", "KernelError", "available", "compiler_info",
           "debug", "library", "options", "profile", "sanitized_command", "switch_cost_ns", "worker_threads"]
