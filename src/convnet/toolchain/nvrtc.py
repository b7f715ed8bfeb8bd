"""NVRTC: the compiler options of the ``cuda`` device and the compile check.

``NVRTC_OPTIONS`` is the one list of options every kernel is compiled with on a
GPU (``convnet.backend.cuda`` hands it to ``cupy.RawModule``); the compile check
uses the same list, so what it reports is what runs.

* ``-std=c++17``: the language level the kernel sources are written against
  (spelled out so that a different NVRTC default cannot change it).
* ``-ftz=true``: single-precision subnormal inputs and results flush to zero.
  CuPy (13, 14 and its main branch: ``cupy/cuda/compiler.py``,
  ``_compile_with_cache_cuda``) appends ``-ftz=true`` after the caller's options
  to every NVRTC compile of ``RawModule(code=...)``, and NVRTC takes the last
  ``-ftz`` it is given, so the GPU build flushes whatever this list says; it is
  listed so that the compile report (``convnet kernels``, the resource check, the
  SASS the performance model reads) describes the build that really runs. The
  ``emu`` device flushes the same way (``csrc/emu/emu_math.h``, MXCSR FTZ/DAZ in
  the scheduler); the NumPy references do not (docs/internals.md: GPU arithmetic).
* ``-fmad=true`` is NVRTC's default and is kept (``a*b + c`` contracts into an
  FMA; ``emu`` contracts with g++ ``-ffp-contract=fast`` in every build).
* no ``--use_fast_math``: it swaps ``expf``/``logf``/division/``sqrtf`` for
  approximate versions, which the ``emu`` device and the NumPy references do not
  do; a kernel that wants a fast intrinsic writes it (``__expf``) where it is
  wanted, and ``emu`` computes it as the GPU's instruction sequence.
* no architecture: CuPy picks the GPU's own. The compile check adds
  ``--gpu-architecture=sm_XX`` (a real architecture, so ptxas runs and a CUBIN
  comes out) and ``--ptxas-options=-v`` for the register/spill report.

``compile_report()`` compiles every ``KernelModule``'s expanded source (see
``convnet.kernel_source.expand``) with NVRTC through ``cuda.bindings.nvrtc`` —
no GPU and no driver needed — and reads, per exported kernel, the registers,
spill stores/loads, static shared memory and stack frame from the ptxas log
(ptxas names kernels by their mangled names; ``nvrtcGetLoweredName`` maps the
module's name expressions to them). A source that does not compile raises
``CompileError`` carrying NVRTC's full log, whose messages name the real file
and line thanks to the ``#line`` markers of the expanded source.

A module with a ``feature_arch`` (``KernelModule``: ``"sm_90a"``, for ``wgmma.*``,
which plain ``sm_90`` rejects) is compiled for that feature arch when its base is
asked (``--gpu-architecture=sm_90a`` for ``sm_90``; its report rows say ``sm_90a``)
and not at all for other architectures: ``compile_all`` and ``compile_report`` leave
those builds out without failing, ``not_built`` lists them and ``format_not_built``
says so (``convnet kernels`` prints it under the table); ``compile_module`` asked for
such an architecture raises ``ArchitectureError``.
"""
from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from .kernel_source import expand
from .launch import KernelModule

NVRTC_OPTIONS: tuple[str, ...] = ("-std=c++17", "-ftz=true")
REPORT_ARCHS: tuple[str, ...] = ("sm_80", "sm_90")
PTXAS_VERBOSE = "--ptxas-options=-v"

INSTALL_HINT = ('install the test extras, which bring NVRTC without a GPU or driver: '
                'pip install -e ".[test]"  (cuda-bindings>=13 and nvidia-cuda-nvrtc>=13)')


class NVRTCUnavailable(RuntimeError):
    """cuda-bindings or the NVRTC library is missing."""


class CompileError(RuntimeError):
    """A kernel source NVRTC rejected; ``log`` is NVRTC's full log."""

    def __init__(self, source: str, arch: str, log: str, errors=()):
        self.source = source
        self.arch = arch
        self.log = log
        self.errors = list(errors)  # the log's error lines, kernels named by name expression
        summary = "".join(f"\n  {line}" for line in self.errors)
        super().__init__(f"{source} ({arch}) failed to compile:{summary}\n"
                         f"NVRTC log:\n{log.rstrip()}")


def _error_lines(log: str, lowered: dict[str, str]) -> list[str]:
    """The log's error lines, with mangled kernel names followed by their name expressions."""
    lines = [line.strip() for line in log.splitlines() if re.search(r"\berror\b", line)]
    lines = [line for line in lines if not re.match(r"\d+ errors? detected", line)]
    for name, mangled in lowered.items():
        if mangled != name:
            lines = [line.replace(mangled, f"{mangled} [{name}]") for line in lines]
    return lines


class ReportError(RuntimeError):
    """ptxas compiled a module but its log lacks a kernel's resource usage."""


@dataclass(frozen=True)
class KernelReport:
    """The resource usage ptxas reports for one kernel on one architecture."""

    module: str
    kernel: str
    arch: str
    registers: int
    spill_stores: int
    spill_loads: int
    shared_bytes: int  # static __shared__ memory (dynamic shared memory is a launch argument)
    stack_bytes: int   # the per-thread stack frame (local arrays, spills)

    @property
    def spills(self) -> bool:
        return self.spill_stores > 0 or self.spill_loads > 0


# --------------------------------------------------------------------------- NVRTC access

def _bindings():
    """``cuda.bindings.nvrtc`` with its library loaded, or NVRTCUnavailable."""
    try:
        from cuda.bindings import nvrtc
    except ImportError as exc:
        raise NVRTCUnavailable(f"cuda-bindings is not installed ({exc}); {INSTALL_HINT}") from exc
    try:
        _check(nvrtc, nvrtc.nvrtcVersion(), "nvrtcVersion")
    except NVRTCUnavailable:
        raise
    except Exception as exc:  # the NVRTC shared library could not be found or loaded
        raise NVRTCUnavailable(f"the NVRTC library could not be loaded ({exc}); {INSTALL_HINT}") from exc
    _preload_builtins()
    return nvrtc


_BUILTINS_LOADED = False


def _preload_builtins() -> None:
    """Load ``libnvrtc-builtins`` from the folder of the loaded ``libnvrtc`` (Linux).

    NVRTC opens its builtins library itself on the first compile, by a search relative
    to its own file; under AddressSanitizer (``LD_PRELOAD``, the emu ``address`` check's
    subprocess) that search fails ("failed to open libnvrtc-builtins.so"). Once the
    library is loaded, NVRTC's open finds it by name in any process."""
    global _BUILTINS_LOADED
    if _BUILTINS_LOADED:
        return
    _BUILTINS_LOADED = True
    import ctypes
    from pathlib import Path
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return
    folders = {Path(line.split()[-1]).parent for line in maps.splitlines()
               if "/libnvrtc.so" in line}
    for folder in folders:
        for library in sorted(folder.glob("libnvrtc-builtins.so*")):
            try:
                ctypes.CDLL(str(library), mode=ctypes.RTLD_GLOBAL)
            except OSError:
                pass  # NVRTC reports its own error if it still cannot open it


def _check(nvrtc, result, what: str):
    """Unpack a cuda-bindings ``(status, *values)`` tuple, raising on a bad status."""
    status, *values = result
    if status != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        _, message = nvrtc.nvrtcGetErrorString(status)
        message = message.decode() if isinstance(message, bytes) else str(status)
        raise NVRTCUnavailable(f"{what} failed: {message}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def version() -> tuple[int, int]:
    """The NVRTC version ``(major, minor)`` that cuda-bindings loads."""
    nvrtc = _bindings()
    return tuple(_check(nvrtc, nvrtc.nvrtcVersion(), "nvrtcVersion"))


def supported_archs() -> list[str]:
    nvrtc = _bindings()
    return [f"sm_{a}" for a in _check(nvrtc, nvrtc.nvrtcGetSupportedArchs(), "nvrtcGetSupportedArchs")]


def normalize_arch(arch: str | int) -> str:
    """``"sm_80"``, ``"sm80"``, ``"80"`` or ``80`` -> ``"sm_80"``."""
    match = re.fullmatch(r"(?:sm_?)?(\d{2,3}[a-z]?)", str(arch).strip().lower())
    if not match:
        raise ValueError(f"not a GPU architecture: {arch!r} (expected e.g. sm_80)")
    return f"sm_{match.group(1)}"


# --------------------------------------------------------------------------- compiling

@dataclass
class _Build:
    log: str
    lowered: dict[str, str]  # name expression -> mangled name
    cubin: bytes = b""       # the machine code (ELF) when the architecture is a real sm_XX
    ptx: str = ""            # the PTX (its entries carry __launch_bounds__ as .maxntid)


def _compile(source_text: str, program_name: str, kernels, options) -> _Build:
    """Compile text with NVRTC; CompileError (with the full log) if it fails."""
    nvrtc = _bindings()
    prog = _check(nvrtc, nvrtc.nvrtcCreateProgram(source_text.encode(), program_name.encode(),
                                                  0, [], []), "nvrtcCreateProgram")
    try:
        for name in kernels:
            _check(nvrtc, nvrtc.nvrtcAddNameExpression(prog, name.encode()), "nvrtcAddNameExpression")
        encoded = [o.encode() for o in options]
        (status,) = nvrtc.nvrtcCompileProgram(prog, len(encoded), encoded)
        size = _check(nvrtc, nvrtc.nvrtcGetProgramLogSize(prog), "nvrtcGetProgramLogSize")
        buffer = b" " * size
        _check(nvrtc, nvrtc.nvrtcGetProgramLog(prog, buffer), "nvrtcGetProgramLog")
        log = buffer.replace(b"\0", b"").decode(errors="replace")
        if status != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            arch = next((o.split("=", 1)[1] for o in options
                         if o.startswith("--gpu-architecture=")), "?")
            lowered = {}
            if "ptxas" in log and arch.startswith("sm_"):
                # The front end passed and ptxas failed, naming kernels by their mangled
                # names; NVRTC keeps no lowered names after a failure, so a PTX-only
                # build (a virtual architecture: no ptxas) recovers them.
                ptx_options = [o for o in options if o != PTXAS_VERBOSE
                               and not o.startswith("--gpu-architecture=")]
                ptx_options.append(f"--gpu-architecture=compute_{arch[3:]}")
                try:
                    lowered = _compile(source_text, program_name, kernels, ptx_options).lowered
                except Exception:
                    lowered = {}
            raise CompileError(program_name, arch, log or str(status),
                               errors=_error_lines(log, lowered))
        lowered = {}
        for name in kernels:
            mangled = _check(nvrtc, nvrtc.nvrtcGetLoweredName(prog, name.encode()),
                             "nvrtcGetLoweredName")
            lowered[name] = mangled.decode()
        cubin = b""
        if any(o.startswith("--gpu-architecture=sm_") for o in options):
            size = _check(nvrtc, nvrtc.nvrtcGetCUBINSize(prog), "nvrtcGetCUBINSize")
            cubin = b" " * size
            _check(nvrtc, nvrtc.nvrtcGetCUBIN(prog, cubin), "nvrtcGetCUBIN")
        size = _check(nvrtc, nvrtc.nvrtcGetPTXSize(prog), "nvrtcGetPTXSize")
        ptx = b" " * size
        _check(nvrtc, nvrtc.nvrtcGetPTX(prog, ptx), "nvrtcGetPTX")
        return _Build(log=log, lowered=lowered, cubin=cubin,
                      ptx=ptx.replace(b"\0", b"").decode(errors="replace"))
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


def compile_options(arch: str) -> list[str]:
    """The options the compile check uses for ``arch``: NVRTC_OPTIONS + arch + ptxas -v."""
    return [*NVRTC_OPTIONS, f"--gpu-architecture={normalize_arch(arch)}", PTXAS_VERBOSE]


def compile_module(module: KernelModule, arch: str = "sm_80") -> list[KernelReport]:
    """Compile one KernelModule for ``arch`` and report each of its kernels. A
    feature-set module is compiled for its ``build_arch`` (``sm_90`` -> ``sm_90a``,
    which its rows name); ArchitectureError for an architecture it is not built for."""
    arch = module.require_arch(normalize_arch(arch))
    build = _compile(expand(module.source), str(module.source), module.kernels,
                     compile_options(arch))
    usage = parse_ptxas_log(build.log)
    rows = []
    for name in module.kernels:
        mangled = build.lowered[name]
        found = usage.get(mangled)
        if found is None or "registers" not in found or "stack_bytes" not in found:
            raise ReportError(f"{module.source} ({arch}): the ptxas log has no resource usage "
                              f"for {name} ({mangled}); log:\n{build.log}")
        rows.append(KernelReport(module=str(module.source), kernel=name, arch=arch,
                                 registers=found["registers"],
                                 spill_stores=found["spill_stores"],
                                 spill_loads=found["spill_loads"],
                                 shared_bytes=found.get("shared_bytes", 0),
                                 stack_bytes=found["stack_bytes"]))
    return rows


def compile_report(modules, archs=REPORT_ARCHS, jobs: int | None = None) -> list[KernelReport]:
    """Compile every module (the project's: ``convnet.ops.kernel_modules()``) for each arch.

    Rows come back in module, arch, kernel-list order. A module that fails raises
    its CompileError (the first one, in that order).
    """
    rows, failures = compile_all(modules, archs, jobs)
    if failures:
        raise failures[0]
    return rows


def compile_all(modules, archs=REPORT_ARCHS, jobs: int | None = None):
    """Like ``compile_report`` but keeps going: ``(rows, failures)``, failures being the
    exceptions (CompileError, ReportError, KernelSourceError) of the builds that failed.
    NVRTC releases the GIL, so the builds run in threads. A feature-set module is built
    once for its feature arch (when ``archs`` hold its base) and left out for the other
    architectures (``not_built`` lists what was left out)."""
    archs = [normalize_arch(a) for a in archs]
    _bindings()  # fail early, with the install hint, before any work
    work = list(dict.fromkeys((m, m.build_arch(a)) for m in modules for a in archs
                              if m.build_arch(a) is not None))
    if not work:
        return [], []

    def build(job):
        try:
            return compile_module(*job), None
        except (CompileError, ReportError, ValueError) as exc:  # KernelSourceError is a ValueError
            return [], exc

    with ThreadPoolExecutor(max_workers=jobs or min(8, len(work))) as pool:
        results = list(pool.map(build, work))
    rows = [row for built, _ in results for row in built]
    failures = [exc for _, exc in results if exc is not None]
    return rows, failures


def not_built(modules, archs=REPORT_ARCHS) -> list[tuple[KernelModule, str]]:
    """``(module, arch)`` for every feature-set module and asked architecture it is not
    built for (``KernelModule.build_arch`` None): what ``compile_all`` leaves out."""
    archs = [normalize_arch(a) for a in archs]
    return [(m, a) for m in modules for a in archs if m.build_arch(a) is None]


# --------------------------------------------------------------------------- the ptxas log

_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '([^']+)'")
_PROPERTIES = re.compile(r"Function properties for (\S+)")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")


def parse_ptxas_log(log: str) -> dict[str, dict[str, int]]:
    """Resource usage per entry function (mangled name) from a ``ptxas -v`` log.

    ptxas writes, for each entry::

        ptxas info    : Compiling entry function '_Z4reluPfi' for 'sm_80'
        ptxas info    : Function properties for _Z4reluPfi
        ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
        ptxas info    : Used 10 registers, used 1 barriers, 256 bytes smem, 364 bytes cmem[0]

    ``Function properties`` blocks of non-inlined device functions (not entries)
    are read too, under their own mangled names.
    """
    found: dict[str, dict[str, int]] = {}
    entry = None        # the entry function whose "Used ... registers" line comes next
    properties = None   # the function whose stack-frame line comes next
    for line in log.splitlines():
        match = _ENTRY.search(line)
        if match:
            entry = match.group(1)
            found.setdefault(entry, {})
            continue
        match = _PROPERTIES.search(line)
        if match:
            properties = match.group(1)
            continue
        match = _FRAME.search(line)
        if match and properties is not None:
            stack, stores, loads = (int(g) for g in match.groups())
            found.setdefault(properties, {}).update(
                stack_bytes=stack, spill_stores=stores, spill_loads=loads)
            properties = None
            continue
        match = _USED.search(line)
        if match and entry is not None:
            smem = _SMEM.search(line)
            found[entry].update(registers=int(match.group(1)),
                                shared_bytes=int(smem.group(1)) if smem else 0)
            entry = None
    return found


_PTX_ENTRY = re.compile(r"\.entry\s+([\w$]+)\s*\((.*?)\)\s*(.*?)\{", re.S)
_MAXNTID = re.compile(r"\.maxntid\s+(\d+)(?:\s*,\s*(\d+))?(?:\s*,\s*(\d+))?")
_MINNCTA = re.compile(r"\.minnctapersm\s+(\d+)")


def parse_ptx_bounds(ptx: str) -> dict[str, dict[str, int]]:
    """``__launch_bounds__`` per entry (mangled name) from PTX: the directives between an
    entry's parameter list and its body, ``.maxntid 256, 1, 1`` (threads: their
    product) and ``.minnctapersm 2``. Entries without bounds are left out."""
    found: dict[str, dict[str, int]] = {}
    for match in _PTX_ENTRY.finditer(ptx):
        name, directives = match.group(1), match.group(3)
        bounds = {}
        ntid = _MAXNTID.search(directives)
        if ntid:
            threads = 1
            for g in ntid.groups():
                threads *= int(g) if g else 1
            bounds["max_threads"] = threads
        blocks = _MINNCTA.search(directives)
        if blocks:
            bounds["min_blocks"] = int(blocks.group(1))
        if bounds:
            found[name] = bounds
    return found


# --------------------------------------------------------------------------- printing

_COLUMNS = (("module", "module"), ("kernel", "kernel"), ("arch", "arch"), ("registers", "regs"),
            ("spill_stores", "spill st"), ("spill_loads", "spill ld"),
            ("shared_bytes", "smem B"), ("stack_bytes", "stack B"))


def format_report(rows) -> str:
    """The rows as an aligned text table; spilling kernels are marked ``SPILLS``."""
    header = [title for _, title in _COLUMNS] + [""]
    body = [[str(getattr(row, attr)) for attr, _ in _COLUMNS] + ["SPILLS" if row.spills else ""]
            for row in rows]
    numeric = {i for i, (attr, _) in enumerate(_COLUMNS) if attr not in ("module", "kernel", "arch")}
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = []
    for r in [header, *body]:
        cells = [c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))]
        lines.append("  ".join(cells).rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths if w).rstrip())
    return "\n".join(lines)


def format_not_built(pairs) -> str:
    """One line per module of ``not_built``'s pairs: the architecture it is built for
    only, and the asked ones it was not built for."""
    skipped: dict[KernelModule, list[str]] = {}
    for module, arch in pairs:
        skipped.setdefault(module, []).append(arch)
    return "\n".join(f"{m.source}: built only for {m.feature_arch} (it uses the "
                     f"{m.feature_arch} feature set); not built for {', '.join(archs)}"
                     for m, archs in skipped.items())


def print_report(rows, file=None) -> None:
    print(format_report(rows), file=file)
