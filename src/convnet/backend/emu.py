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
import weakref as _weakref
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..cache import cache_dir as _cache_root
from ..toolchain import kernel_source
from ..toolchain.launch import KernelModule, Launch
from ..toolchain.resources import check_launch
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


CHECKS = (None, "bounds", "address", "align", "race", "init")
SCHEDULES = ("forward", "reverse", "random")
# Check modes that run every block on the hooked build (emu_profile.h) with the
# runtime's shadow memory (csrc/emu/check.h), one OS thread, blocks in sequence.
SHADOW_CHECKS = {"race": "r", "init": "i"}
FILL_EMPTY_BYTE = 0x7F  # fresh allocations: 0x7f7f7f7f = 3.39e38 as float, 2139062143 as int


@dataclass(frozen=True)
class EmuOptions:
    schedule: str = "forward"   # "reverse": threads and blocks in reverse order; "random": see debug()
    fill_shared: bool = False   # NaN bytes in shared memory at every block start
    check: str | None = None    # "bounds", "address", "align", "race", "init": see debug()
    threads: int = 0            # OS threads for blocks; 0: CONVNET_EMU_THREADS or all cores
    seed: int = 0               # schedule="random": the seed of its thread, warp and block order
    fill_empty: int | None = None  # byte that fresh device.xp.empty allocations are filled with
    watchdog: float | None = None  # seconds without progress before a launch fails; None: see watchdog_seconds()


_OPTIONS: contextvars.ContextVar[EmuOptions] = contextvars.ContextVar("convnet_emu_options",
                                                                       default=EmuOptions())
_PROFILE: contextvars.ContextVar = contextvars.ContextVar("convnet_emu_profile", default=None)


@contextlib.contextmanager
def debug(schedule: str | None = None, fill_shared: bool | None = None, check: str | None = "keep",
          threads: int | None = None, seed: int | None = None, fill_empty: bool | int | None = None,
          watchdog: float | None = None):
    """Run emulated launches inside the block with debugging options (see EmuOptions).

    check:
      "bounds"  index checks on fixed-size arrays (-fsanitize=bounds) and alignment;
      "address" AddressSanitizer (see sanitized_command) and alignment;
      "align"   the optimised build with every load and store checked for the
                alignment of its type (float4 16, double/long long 8, float 4);
      "race"    data races: shared memory per barrier interval and global memory
                within the launch (also between blocks), with alignment;
      "init"    reads of shared memory no thread of the block wrote, and of bytes of
                arrays made by ``device.xp.empty`` inside the scope that nothing wrote.
    "race" and "init" run every block on the hooked build, on one OS thread.
    schedule="random" (seeded by ``seed``) switches threads at memory accesses, picks
    the next thread and the block order at random: lost updates show as wrong results.
    fill_empty: fill fresh ``device.xp.empty``/``empty_like`` allocations with a byte
    (True: 0x7f, which reads as 3.39e38 as float32, a value that is neither neutral
    for sums nor for max); check="init" implies it.
    watchdog: seconds a block may go without any of its threads reaching a barrier, a
    warp operation or its end (a thread spinning forever, a wait for another block's
    flag) before the launch fails with a KernelError naming the block, the thread and
    where it runs; 0 turns it off. Default: CONVNET_EMU_WATCHDOG, else 60 s.
    """
    current = _OPTIONS.get()
    changes = {}
    if seed is not None:
        changes["seed"] = int(seed)
    if fill_empty is not None:
        if fill_empty is False:
            changes["fill_empty"] = None
        elif fill_empty is True:
            changes["fill_empty"] = FILL_EMPTY_BYTE
        elif isinstance(fill_empty, int) and 0 <= fill_empty <= 255:
            changes["fill_empty"] = int(fill_empty)
        else:
            raise ValueError(f"fill_empty takes True, False or a byte value 0..255, got {fill_empty!r}")
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
    if watchdog is not None:
        if not watchdog >= 0:
            raise ValueError(f"watchdog takes seconds >= 0 (0: off), got {watchdog!r}")
        changes["watchdog"] = float(watchdog)
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


# GPU arithmetic, the same in every build (issue 10, item 6): a*b + c contracted into an
# FMA as NVRTC's default -fmad=true does (-ffp-contract=fast; FMA instructions from
# -march=native; -fexpensive-optimizations turns on g++'s contraction pass at -O1 too;
# avoid-fma-max-bits=0 stops g++ leaving reduction chains unfused on some CPUs), and no
# loop vectorisation: it splits a float reduction into a vector multiply and in-order
# scalar adds, which no GPU build does and which would differ from the scalar builds.
_ARITH = ["-march=native", "-ffp-contract=fast", "-fexpensive-optimizations", "--param=avoid-fma-max-bits=0",
          "-fno-tree-loop-vectorize"]
_OPTIMISE = ["-O3", *_ARITH]
# Every load and store checked for the alignment of its type; the handler in
# cuda_emu.h turns a misaligned one into a KernelError. Not in the plain build: it
# costs 1.1-1.5x on elementwise kernels and 3-5x on the convolutions (measured).
_ALIGN = ["-fsanitize=alignment", "-fno-sanitize-recover=alignment"]
_CHECK_FLAGS = {
    None: (_OPTIMISE, []),
    "bounds": (["-O1", *_ARITH, "-g", "-fsanitize=bounds", "-fno-sanitize-recover=bounds", *_ALIGN], []),
    "address": (["-O1", *_ARITH, "-g", "-fsanitize=address", "-fno-omit-frame-pointer", *_ALIGN], ["-fsanitize=address"]),
    "align": ([*_OPTIMISE, "-g", *_ALIGN], []),
    # emu.profile(): every load and store calls a hook (g++'s ThreadSanitizer pass at
    # the compile step only; emu_profile.h defines the __tsan_* functions, so the link
    # has no libtsan). Same -O3 -march=native as the plain build (same arithmetic), but
    # no vectorisation or store merging, so each thread's accesses keep the source's sizes.
    "profile": (["-O3", *_ARITH, "-g", "-fsanitize=thread", "--param=tsan-instrument-func-entry-exit=0",
                 "-fno-tree-vectorize", "-fno-tree-slp-vectorize", "-fno-tree-sra", "-fno-store-merging", "-Wno-tsan",
                 "-fno-optimize-sibling-calls", *_ALIGN,
                 "-include", "emu_profile.h"], []),
}
# Headers cuda_emu.h includes (part of every build's cache key).
_INCLUDED_HEADERS = ("emu_math.h", "emu_mma.h", "emu_async_proxy.h", "emu_cp_async.h", "emu_ldmatrix.h",
                     "emu_wgmma.h")
# Headers a check mode forces in besides cuda_emu.h (part of its cache key).
_CHECK_HEADERS = {"profile": ("emu_profile.h", "emu_hooks.h")}
_COMMON = ["-std=c++17", "-fPIC", "-fvisibility=hidden", "-Wno-unknown-pragmas", "-Wno-unused-function"]

# Faults and hangs (issue 10, item 5). Every build carries line tables, so that the
# program counter of a SIGSEGV/SIGBUS/SIGFPE or of a thread the watchdog stops maps
# to file:line (addr2line on the cached .so); -g1 does not change the code g++ makes.
_LINE_TABLES = ["-g1"]
# The link puts the section of __device__ variables (see translate) on pages of its
# own, which the runtime maps onto one shared copy in every loaded instance.
_DEVICE_LINK_SCRIPT = """SECTIONS
{
  emu_device ALIGN(CONSTANT(MAXPAGESIZE)) :
  {
    __emu_device_begin = .;
    KEEP(*(emu_device))
    . = ALIGN(CONSTANT(MAXPAGESIZE));
    __emu_device_end = .;
  }
}
INSERT AFTER .data;
"""
WATCHDOG_SECONDS = 60.0  # default of debug(watchdog=...) / CONVNET_EMU_WATCHDOG

_DYNAMIC_SHARED = re.compile(
    r"extern\s+__shared__\s+(?:__align__\s*\(\s*\d+\s*\)\s+)?"
    r"(?P<type>[A-Za-z_][\w:]*(?:\s+[A-Za-z_][\w:]*)*?)\s+"
    r"(?:__align__\s*\(\s*\d+\s*\)\s+)?(?P<name>[A-Za-z_]\w*)\s*\[\s*\]\s*;")


# ---- file scope in the expanded text (issue 10, items 5 and 7)
_SCOPE_TOKENS = re.compile(r'//[^\n]*|/\*.*?\*/|"(?:\\.|[^"\\\n])*"|\'(?:\\.|[^\'\\\n])*\'|[{}]', re.S)
_NAMESPACE_OPEN = re.compile(r'(?:\bnamespace(?:\s+(?P<name>[A-Za-z_]\w*))?|\bextern\s*"C(?:\+\+)?")\s*$')
_DEVICE_WORD = re.compile(r"\b__device__\b")
# What may stand between __device__ and a declaration's name without being a
# parameter list: alignment and attribute specifiers.
_DECL_SKIP = re.compile(r"\s*(?:__align__|alignas|__attribute__)\s*\(")


def _file_scope(text: str) -> list[tuple[int, int, tuple[str, ...]]]:
    """(start, end, enclosing named namespaces) of the stretches of `text` at file
    scope (outside every function, class and initializer brace; namespaces and
    extern "C" blocks are file scope), skipping comments and literals."""
    spans, stack, start = [], [], 0  # stack: a namespace's name, "" (unnamed, extern "C"), None (other)

    def outside():
        return all(entry is not None for entry in stack)

    def names():
        return tuple(entry for entry in stack if entry)

    for m in _SCOPE_TOKENS.finditer(text):
        token = m.group()
        if token not in ("{", "}"):
            continue
        if outside():
            spans.append((start, m.start(), names()))
        if token == "{":
            ns = _NAMESPACE_OPEN.search(text, max(0, m.start() - 120), m.start()) if outside() else None
            stack.append((ns["name"] or "") if ns else None)
        elif stack:
            stack.pop()
        if outside():
            start = m.end()
    if outside():
        spans.append((start, len(text), names()))
    return spans


def _scope_at(spans, position: int):
    """The namespaces around `position` when it is at file scope, else None."""
    for start, end, names in spans:
        if start <= position < end:
            return names
    return None


def _is_variable(text: str, position: int) -> bool:
    """Whether the declaration from `position` (just after __device__) declares a
    variable: it reaches `;`, `=` or `[` before a parameter list or a body."""
    i = position
    while True:
        skip = _DECL_SKIP.match(text, i)
        if skip is None:
            break
        depth, i = 1, skip.end()
        while i < len(text) and depth:
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            i += 1
    m = re.compile(r"[;=\[({]").search(text, i)
    if m is None or m.group() in "({":
        return False
    head = text[position:m.start()]
    return not re.search(r"\b(?:const|constexpr|__constant__|typedef|using|struct|class|union|enum)\b", head)


_DEVICE_SECTION = ' __attribute__((section("emu_device")))'


@functools.lru_cache(maxsize=64)  # library() translates at every launch to find its cache key
def translate(text: str, kernels: tuple[str, ...]) -> str:
    """Expanded CUDA text -> the C++ g++ compiles, and a table of the exported kernels
    at its end.

    * ``extern __shared__ T a[];`` (dynamic shared memory) inside a function becomes
      a pointer to the block's buffer; at file scope it becomes a pointer of the
      library that the runtime sets to the buffer of the worker running it (listed in
      ``emu_dynamic_shared_slots``): an initializer there would run when the library
      loads, before the runtime exists.
    * File-scope ``__device__`` variables (not const) go to the section emu_device,
      page-aligned by the link (``_DEVICE_LINK_SCRIPT``), which the runtime maps onto
      the same memory in every loaded copy of the library: one instance per process,
      as on a GPU, however many workers run the blocks.
    """
    spans = _file_scope(text)
    out, last, slots = [], 0, []
    events = sorted([(m.start(), "shared", m) for m in _DYNAMIC_SHARED.finditer(text)] +
                    [(m.start(), "device", m) for m in _DEVICE_WORD.finditer(text)], key=lambda e: e[0])
    for position, kind, m in events:
        if position < last:
            continue
        names = _scope_at(spans, position)
        if kind == "shared":
            out.append(text[last:m.start()])
            if names is None:
                out.append(f"{m['type']}* {m['name']} = emu_dynamic_shared<{m['type']}>();")
            else:
                out.append(f"static {m['type']}* {m['name']} = nullptr;")
                slots.append("::".join((*names, m["name"])))
            last = m.end()
        elif names is not None and _is_variable(text, m.end()):
            out.append(text[last:m.end()])
            out.append(_DEVICE_SECTION)
            last = m.end()
    out.append(text[last:])
    text = "".join(out)
    rows = ",\n".join(f'  {{"{name}", &emu_thunk<&{name}>, emu_signature(&{name})}}' for name in kernels)
    tail = ""
    if slots:
        refs = ", ".join(f"reinterpret_cast<void**>(&{name})" for name in slots)
        tail = (f"EMU_EXPORT void*** emu_dynamic_shared_slots(int* count) {{\n"
                f"  static void** slots[] = {{{refs}}};\n  *count = {len(slots)};\n  return slots;\n}}\n")
    return (f"{text}\n#line 1 \"<convnet kernel table>\"\n"
            f"EMU_EXPORT const EmuKernelEntry* emu_kernel_table(int* count) {{\n"
            f"  static const EmuKernelEntry table[] = {{\n{rows}\n  }};\n"
            f"  *count = {len(kernels)};\n  return table;\n}}\n{tail}")


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


_RECENT: dict[tuple, tuple] = {}  # (module, check) -> (stats of the files read, library)


def _file_stats(paths) -> tuple:
    stats = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            return ()
        stats.append((path, st.st_mtime_ns, st.st_size))
    return tuple(stats)


def library(module: KernelModule, check: str | None = None):
    """The loaded kernel library of ``module`` built for ``check`` (compiled if needed).

    Each launch asks for its library: when none of the files that made it (the kernel
    source, its includes, the emulator headers) changed since the last call, the one
    found then is returned at once (a few stat calls instead of expanding and hashing
    the source again)."""
    memo = _RECENT.get((module, check))
    if memo is not None and memo[0] and _file_stats(f for f, _, _ in memo[0]) == memo[0]:
        return memo[1]
    if _emu is None:
        raise DeviceError(f"the emu device is unavailable: convnet._emu did not import ({_IMPORT_ERROR}); "
                          f"reinstall convnet (pip install -e .)")
    if check == "address" and not asan_loaded():
        raise DeviceError("check='address' needs AddressSanitizer loaded before Python starts: "
                          "run the program through convnet.backend.emu.sanitized_command(...)")
    include = emu_include_dir()
    original_check = check
    if check in SHADOW_CHECKS:
        check = "profile"  # the hooked build
    cflags, lflags = _CHECK_FLAGS[check]
    if not any(flag.startswith("-g") for flag in cflags):
        cflags = [*cflags, *_LINE_TABLES]
    text = translate(kernel_source.expand(module.source), module.kernels)
    cxx = compiler()
    runtime_header = (include / "cuda_emu.h").read_text() + (include / "emu_api.h").read_text()
    for name in _INCLUDED_HEADERS:  # included by cuda_emu.h
        runtime_header += (include / name).read_text()
    for header in _CHECK_HEADERS.get(check, ()):
        runtime_header += (include / header).read_text()
    runtime_header += _DEVICE_LINK_SCRIPT
    key = kernel_source.digest(text, " ".join(_COMMON + cflags + lflags), _compiler_version(cxx),
                               runtime_header, _cpu_signature())
    read = sorted(f for f in set(re.findall(r'^#line \d+ "([^"]+)"', text, re.M))
                  if os.path.isabs(f))  # the files expand() read (not the generated table)
    read += [str(include / name) for name in ("cuda_emu.h", "emu_api.h", *_INCLUDED_HEADERS,
                                               *_CHECK_HEADERS.get(check, ()))]
    stats = _file_stats(read)
    with _LOCK:
        lib = _LIBRARIES.get(key)
        if lib is None:
            path = cache_dir() / f"{Path(module.source).stem}-{key[:20]}.so"
            if not path.exists():
                _compile(text, path, cxx, include, cflags, lflags, module.source)
            lib = _emu.Library(str(path))
            _LIBRARIES[key] = lib
        _RECENT[(module, original_check)] = (stats, lib)
        return lib


def _compile(text: str, target: Path, cxx: str, include: Path, cflags, lflags, source: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".build-") as tmp:
        cpp = Path(tmp) / "kernel.cpp"
        obj = Path(tmp) / "kernel.o"
        out = Path(tmp) / "kernel.so"
        cpp.write_text(text)
        script = Path(tmp) / "emu_device.ld"
        script.write_text(_DEVICE_LINK_SCRIPT)
        steps = [
            [cxx, *_COMMON, *cflags, "-I", str(include), "-include", str(include / "cuda_emu.h"),
             "-c", str(cpp), "-o", str(obj)],
            [cxx, "-shared", *lflags, str(obj), f"-Wl,-T,{script}", "-o", str(out)],
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
    value = _environment_number("CONVNET_EMU_THREADS", int, 1, "must be a whole number >= 1")
    return value if value is not None else (os.cpu_count() or 1)


def _environment_number(name: str, kind, low, wanted: str):
    """The number in environment variable ``name`` (None when unset or empty), or a
    DeviceError saying what it ``wanted``."""
    env = os.environ.get(name)
    if not env:
        return None
    try:
        value = kind(env)
    except ValueError:
        value = None
    if value is None or not value >= low:
        raise DeviceError(f"{name} {wanted}, got {env!r}")
    return value


def watchdog_seconds(opts: EmuOptions | None = None) -> float:
    """Seconds without progress before a launch fails: debug(watchdog=...), else
    CONVNET_EMU_WATCHDOG, else WATCHDOG_SECONDS; 0 means never."""
    opts = opts or _OPTIONS.get()
    if opts.watchdog is not None:
        return opts.watchdog
    value = _environment_number("CONVNET_EMU_WATCHDOG", float, 0, "takes seconds >= 0 (0: off)")
    return value if value is not None else WATCHDOG_SECONDS


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


def _local_name(symbol: str) -> str:
    """'tile (in conv_forward)' for a function-local static's mangled name
    (_ZZ<function>E<length><name>[_<discriminator>]); the symbol itself otherwise."""
    m = re.match(r"_ZZN?(\d+)", symbol)
    tail = re.search(r"E(\d+)([A-Za-z_]\w*)$", symbol)
    if not tail:
        return symbol
    name = tail[2][:int(tail[1])]
    if m:
        start = m.end()
        function = symbol[start:start + int(m[1])]
        if function:
            return f"{name} (in {function})"
    return name


@functools.lru_cache(maxsize=None)
def _static_shared_named(path: str) -> tuple[tuple[int, int, str], ...]:
    """(offset, bytes, name) of every static ``__shared__`` array of a kernel library."""
    tool = shutil.which("objdump")
    if tool is None:
        raise DeviceError("emu needs objdump (binutils) to find static __shared__ arrays "
                          "(for fill_shared, the checks and emu.profile())")
    out = subprocess.run([tool, "-t", path], capture_output=True, text=True, check=False).stdout
    arrays = {}
    for line in out.splitlines():
        m = _OBJDUMP_OBJECT.match(line)
        if m is None:
            continue
        section, size, name = m["section"], int(m["size"], 16), m["name"]
        kernel_static = (name.startswith("_ZZ") and "emu_" not in name and "__ubsan" not in name
                         and section in (".bss", ".data"))
        if size and (section == "emu_shared" or kernel_static):
            arrays[int(m["addr"], 16), size] = _local_name(name)
    return tuple((off, size, name) for (off, size), name in sorted(arrays.items()))


def _static_shared(path: str) -> list[tuple[int, int]]:
    """(offset, bytes) of the static ``__shared__`` arrays of a kernel library: the
    objects in its emu_shared section and the function-local statics of kernels that
    the linker placed elsewhere (g++ ignores the section of a template's statics, so
    they land in .bss). Read from the symbol table with objdump."""
    return [(offset, size) for offset, size, _ in _static_shared_named(path)]


def _allocations(args) -> list[tuple[int, int]]:
    """(start, bytes) of the whole allocation behind each array argument (a view's
    owner): the profiler counts sectors as if each started 256-byte aligned, as
    cudaMalloc's do, keeping a view's offset into its allocation."""
    out = {}
    for owner in _array_owners(args):
        start = owner.__array_interface__["data"][0]
        out[start] = max(out.get(start, 0), owner.nbytes)
    return sorted(out.items())


def _array_owners(args):
    """The array that owns the memory of each array argument (a view's base)."""
    for a in args:
        if isinstance(a, np.ndarray):
            owner = a
            while isinstance(owner.base, np.ndarray):
                owner = owner.base
            yield owner


# ---------------------------------------------------------------- fresh allocations

class _FreshArrays:
    """NumPy for ``device.xp`` while debug(fill_empty=...) or check="init" is on:
    ``empty``/``empty_like`` fill the array with the fill byte, and under the init
    check remember it, so launches can tell which of its bytes nothing has written
    (a byte mask the runtime reads and sets; bytes the host changed count as written)."""

    def __init__(self, fill: int, track: bool):
        self._fill = fill
        self._track = track

    def __getattr__(self, name):
        return getattr(np, name)

    def _fresh(self, a: np.ndarray) -> np.ndarray:
        a.view(np.uint8).reshape(-1)[...] = self._fill
        if self._track and a.nbytes:
            _TRACKED[a.__array_interface__["data"][0]] = (_weakref.ref(a), np.zeros(a.nbytes, np.uint8), self._fill)
        return a

    def empty(self, *args, **kwargs):
        return self._fresh(np.empty(*args, **kwargs))

    def empty_like(self, *args, **kwargs):
        return self._fresh(np.empty_like(*args, **kwargs))


# data address -> (weak reference to the array, written mask, fill byte)
_TRACKED: dict[int, tuple] = {}


def _tracked_ranges(args) -> list[tuple[int, int, int]]:
    """(start, bytes, mask address) of the tracked allocations behind the arguments,
    with bytes the host has changed since (no longer the fill byte) marked written."""
    out = []
    for owner in _array_owners(args):
        start = owner.__array_interface__["data"][0]
        entry = _TRACKED.get(start)
        if entry is None:
            continue
        ref, mask, fill = entry
        if ref() is not owner:
            del _TRACKED[start]  # a new array at a freed one's address
            continue
        mask |= owner.reshape(-1).view(np.uint8) != fill
        if not any(r[0] == start for r in out):
            out.append((start, owner.nbytes, mask.__array_interface__["data"][0]))
    for key in [k for k, (ref, _, _) in _TRACKED.items() if ref() is None]:
        del _TRACKED[key]
    return out


class EmuDevice(HostDevice):
    kind = "emu"
    name = "emu"
    runs_kernels = True

    @property
    def xp(self):
        """NumPy; inside debug(fill_empty=...) or debug(check="init"), NumPy whose
        ``empty``/``empty_like`` fill (and, for the init check, track) fresh arrays."""
        opts = _OPTIONS.get()
        if opts.fill_empty is None and opts.check != "init":
            return np
        fill = opts.fill_empty if opts.fill_empty is not None else FILL_EMPTY_BYTE
        return _FreshArrays(fill, opts.check == "init")

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
        opts = _OPTIONS.get()
        lib = library(launch.module, opts.check)  # g++ first: its errors name the line
        check_launch(launch)  # what a GPU would refuse (toolchain/resources.py, per CONVNET_EMU_ARCH)
        index = lib.find(launch.name)
        if index < 0:
            raise DeviceError(f"kernel {launch.name} is missing from the compiled {launch.module.source}")
        args = pack_arguments(launch, lib.signature(index))
        collecting = _PROFILE.get()
        statics = _static_shared(lib.path) if opts.fill_shared else []
        shadow = SHADOW_CHECKS.get(opts.check, "")
        if shadow or opts.schedule == "random":
            if collecting is not None:
                raise DeviceError(f"emu.profile() cannot run under check={opts.check!r} or schedule='random'")
            hooked = library(launch.module, "profile")
            if hooked.find(launch.name) != index:
                raise DeviceError(f"kernel {launch.name}: the hooked build of {launch.module.source} "
                                  f"does not match the plain one")
            arrays = [(a.__array_interface__["data"][0], a.nbytes, i)
                      for i, a in enumerate(launch.args) if isinstance(a, np.ndarray)]
            tracked = _tracked_ranges(launch.args) if opts.check == "init" else []
            _emu.launch(hooked, index, list(launch.grid), list(launch.block), launch.shared_bytes, args,
                        fill_shared=opts.fill_shared, workers=1,
                        shared_statics=_static_shared(hooked.path) if opts.fill_shared else [],
                        check=shadow, check_library=hooked, check_arrays=arrays, check_tracked=tracked,
                        check_shared=list(_static_shared_named(hooked.path)),
                        random=opts.schedule == "random", seed=opts.seed,
                        watchdog=watchdog_seconds(opts))
            return
        if collecting is None:
            _emu.launch(lib, index, list(launch.grid), list(launch.block), launch.shared_bytes, args,
                        reverse=opts.schedule == "reverse", fill_shared=opts.fill_shared,
                        workers=worker_threads(opts), shared_statics=statics,
                        watchdog=watchdog_seconds(opts))
            return
        from ..perf.traffic import launch_traffic
        hooked = library(launch.module, "profile")
        if hooked.find(launch.name) != index:
            raise DeviceError(f"kernel {launch.name}: the profiling build of {launch.module.source} "
                              f"does not match the plain one")
        total = int(np.prod(launch.grid, dtype=np.int64))
        raw = _emu.launch(lib, index, list(launch.grid), list(launch.block), launch.shared_bytes, args,
                          reverse=opts.schedule == "reverse", fill_shared=opts.fill_shared,
                          workers=worker_threads(opts), shared_statics=statics, profile=True,
                          profile_library=hooked,
                          profile_blocks=collecting.sample(total),
                          profile_allocations=_allocations(launch.args),
                          profile_shared=_static_shared(hooked.path), watchdog=watchdog_seconds(opts))
        collecting.add(launch_traffic(launch.name, str(launch.module.source), hooked.path, launch.grid,
                                      launch.block, launch.shared_bytes, raw))


def switch_cost_ns(iterations: int = 1_000_000) -> float:
    """Nanoseconds per fiber context switch, measured now."""
    if _emu is None:
        raise DeviceError(f"convnet._emu did not import ({_IMPORT_ERROR})")
    return _emu.switch_cost_ns(iterations)


__all__ = ["EmuDevice", "EmuCompileError", "EmuOptions", "KernelError", "available", "compiler_info",
           "debug", "library", "options", "profile", "sanitized_command", "switch_cost_ns", "watchdog_seconds",
           "worker_threads"]
