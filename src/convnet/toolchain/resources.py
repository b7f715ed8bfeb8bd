"""Launch resources per GPU architecture: what a GPU would refuse, refused on every device.

A GPU refuses a launch whose block needs more than the kernel and the SM allow;
the emulator would run it. ``check(launch, arch, resources)`` applies the rules to
one ``Launch`` (the shared launch description) so that both executors refuse with
the same message (``LaunchResourceError``):

* **threads ≤ the kernel's ``__launch_bounds__``** maximum. On ``emu``
  ``__launch_bounds__`` expands to nothing, so the bound is *recorded* from the
  NVRTC build: the ``.maxntid`` (and ``.minnctapersm``) directives of the kernel's
  PTX entry. Without NVRTC it is read from the source (the ``__launch_bounds__(...)``
  in front of the kernel's name, template parameters replaced by the name
  expression's arguments, integer arithmetic only). On ``cuda`` it is the loaded
  function's own ``max_threads_per_block`` (the driver's limit: launch bounds and
  registers).
* **registers × threads** within the SM's register file, allocated per warp in units
  of 256 registers and spread over four sub-partitions (``perf.occupancy``'s rules),
  with the kernel's real register count: from NVRTC's ptxas report for ``arch`` on
  ``emu``, the loaded function's ``num_regs`` on ``cuda``.
* **static + dynamic shared memory** ≤ the architecture's per-block limit (the
  opt-in maximum: 163 KiB on sm_80, 99 KiB on sm_86/89, 227 KiB on sm_90), static
  alone ≤ 48 KiB. Above 48 KiB in total a block needs the opt-in
  (``cudaFuncAttributeMaxDynamicSharedMemorySize``); ``check`` returns
  ``needs_opt_in`` and the ``cuda`` executor performs it (on static + dynamic).

The architecture: a ``cuda`` device checks against its own compute capability. The
``emu`` device checks against ``CONVNET_EMU_ARCH``: one architecture (default
``sm_90``, the H100/H200), a comma-separated list, ``all`` (every architecture of
``perf.gpus.ARCHS``: the strictest — what runs on emu then runs on an A100, an A10
and an RTX 4090 too) or ``none`` (no resource check).

A module built only for an architecture-specific feature set (``KernelModule.feature_arch``,
``sm_90a``) is checked with the figures of that build wherever its base architecture
(``sm_90``) is asked. No GPU of another architecture can run it, so ``emu`` checks
its launches on the base architecture in place of the ``CONVNET_EMU_ARCH`` ones it
is not built for (with ``all``: on sm_90 only; a launch is never left unchecked
unless the setting is ``none``), and ``check_launch`` / ``kernel_resources`` asked
for such an architecture explicitly raise ``ArchitectureError`` (a ``LaunchError``).

The NVRTC report (registers, static shared memory, launch bounds) is compiled once
per kernel instantiation and architecture and kept on disk under
``convnet.cache.cache_dir() / "nvrtc"``, keyed on the portable expanded source (the
``#line`` names relative, so a moved checkout keeps it), the options, the
architecture and the NVRTC version. Without NVRTC (a plain ``pip install -e .``;
the ``test`` extra brings it) the register and static-shared checks are skipped with
one warning per process, and the launch bounds come from the source.
"""
from __future__ import annotations

import ast
import json
import operator
import os
import re
import threading
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

from ..cache import write_atomic
from .kernel_source import digest, expand, source_path
from .launch import LaunchError

EMU_ARCH_ENV = "CONVNET_EMU_ARCH"
DEFAULT_EMU_ARCH = "sm_90"
DEFAULT_SHARED_BYTES = 48 * 1024  # what a block gets without the opt-in, every architecture


class LaunchResourceError(LaunchError):
    """A launch that a GPU of the checked architecture would refuse."""


@dataclass(frozen=True)
class KernelResources:
    """What one compiled kernel needs per block, and where the figures come from."""

    kernel: str                       # the name expression
    registers: int | None = None      # per thread; None: unknown (no NVRTC)
    static_shared: int | None = None  # bytes of static __shared__; None: unknown
    max_threads: int | None = None    # __launch_bounds__ maximum (or the driver's limit)
    min_blocks: int | None = None     # __launch_bounds__ minimum blocks per SM
    origin: str = "nvrtc"             # "nvrtc", "source" (no NVRTC) or "driver" (cuda)


@dataclass(frozen=True)
class Checked:
    """The outcome of a passed check on one architecture."""

    arch: str
    needs_opt_in: bool                # static + dynamic > 48 KiB: the opt-in is required
    occupancy: object = None          # perf.occupancy.Occupancy, when registers are known


# --------------------------------------------------------------------------- the rules

def check(launch, arch, resources: KernelResources) -> Checked:
    """Raise LaunchResourceError if a GPU of ``arch`` would refuse ``launch`` of a kernel
    with ``resources``; otherwise say whether it needs the shared-memory opt-in."""
    from ..perf.gpus import arch as _arch
    from ..perf.occupancy import occupancy

    a = _arch(arch)
    threads = launch.threads_per_block
    dynamic = launch.shared_bytes
    static = resources.static_shared or 0
    where = f"{launch.name} ({Path(str(launch.module.source)).name}) on {a.name}"
    if resources.max_threads is not None and threads > resources.max_threads:
        raise LaunchResourceError(
            f"{where}: a block of {threads} threads exceeds the kernel's maximum of "
            f"{resources.max_threads} threads per block (__launch_bounds__); a GPU refuses "
            f"this launch (too many resources requested)")
    if static > a.shared_per_block_default:
        raise LaunchResourceError(
            f"{where}: {static} bytes of static shared memory exceed the "
            f"{a.shared_per_block_default}-byte static limit")
    if static + dynamic > a.shared_per_block_optin:
        raise LaunchResourceError(
            f"{where}: static + dynamic shared memory = {static} + {dynamic} = "
            f"{static + dynamic} bytes per block exceed the {a.shared_per_block_optin}-byte "
            f"maximum a block may opt into on {a.name}")
    needs_opt_in = static + dynamic > a.shared_per_block_default
    if resources.registers is None:
        return Checked(a.name, needs_opt_in)
    occ = occupancy(a, threads, resources.registers, static, dynamic)
    if not occ.runs:
        raise LaunchResourceError(
            f"{where}: a block of {threads} threads x {resources.registers} registers "
            f"cannot run: {occ.reason}")
    return Checked(a.name, needs_opt_in, occ)


def emu_archs() -> tuple[str, ...]:
    """The architectures ``emu`` checks launches against (``CONVNET_EMU_ARCH``)."""
    from ..perf.gpus import ARCHS, UnknownGPU, arch as _arch

    value = os.environ.get(EMU_ARCH_ENV, "").strip().lower() or DEFAULT_EMU_ARCH
    if value == "none":
        return ()
    if value in ("all", "every"):
        return tuple(ARCHS)
    names = []
    for part in value.split(","):
        try:
            names.append(_arch(part.strip()).name)
        except UnknownGPU as exc:
            raise LaunchError(f"{EMU_ARCH_ENV}={value!r}: {exc} (or 'all', 'none')") from None
    return tuple(dict.fromkeys(names))


_CHECKED: dict[tuple, tuple[Checked, ...]] = {}


def module_archs(module, archs) -> tuple[str, ...]:
    """The architectures a launch of ``module`` is checked on when ``archs`` are asked:
    ``archs`` for a portable module; for a feature-set module (sm_90a) the ones it is
    built for, its base architecture (sm_90) standing in for the others."""
    if module.feature_arch is None:
        return tuple(archs)
    return tuple(dict.fromkeys(a if module.build_arch(a) else module.base_arch for a in archs))


def check_emu(launch) -> tuple[Checked, ...]:
    """``check`` against every architecture of ``emu_archs()`` (``module_archs`` of the
    launch's module), with the NVRTC report's resources (cached per kernel, block size,
    shared bytes and architectures)."""
    archs = module_archs(launch.module, emu_archs())
    key = (launch.module, launch.name, launch.threads_per_block, launch.shared_bytes, archs)
    done = _CHECKED.get(key)
    if done is None:
        done = tuple(check(launch, a, kernel_resources(launch.module, launch.name, a))
                     for a in archs)
        _CHECKED[key] = done
    return done


# --------------------------------------------------------------------------- the figures

_LOCK = threading.Lock()
_MEMORY: dict[tuple, KernelResources] = {}
_WARNED = False


def kernel_resources(module, name: str, arch: str) -> KernelResources:
    """The resources of kernel ``name`` of ``module`` on ``arch``: NVRTC's report
    (cached on disk), or — without NVRTC — the launch bounds from the source alone,
    after one warning per process. A feature-set module gets its ``build_arch``'s
    figures; ArchitectureError for an architecture it is not built for."""
    from .nvrtc import NVRTCUnavailable, normalize_arch

    module.require_arch(normalize_arch(arch))
    key = (module, name, arch)
    found = _MEMORY.get(key)
    if found is not None:
        return found
    try:
        found = nvrtc_resources(module, name, arch)
    except NVRTCUnavailable as exc:
        _warn_once(exc)
        found = source_resources(module, name)
    _MEMORY[key] = found
    return found


def _warn_once(exc) -> None:
    global _WARNED
    if not _WARNED:
        _WARNED = True
        warnings.warn(f"convnet: launches are checked without the kernels' register counts "
                      f"and static shared memory, because NVRTC is unavailable ({exc})",
                      RuntimeWarning, stacklevel=3)


def resource_cache_dir() -> Path:
    from ..cache import cache_dir
    return cache_dir() / "nvrtc"


def nvrtc_resources(module, name: str, arch: str) -> KernelResources:
    """Registers, static shared memory and launch bounds of one instantiation from an
    NVRTC build of it alone for ``arch`` (the project's options; a feature-set module's
    ``build_arch``: sm_90 -> sm_90a), cached on disk; every other entry the same build
    reports (the file's ``extern "C"`` kernels) is cached too."""
    from . import nvrtc

    arch = module.require_arch(nvrtc.normalize_arch(arch))
    text = expand(module.source, portable=True)
    options = nvrtc.compile_options(arch)
    version = ".".join(map(str, nvrtc.version()))
    key = digest(text, *options, version)
    path = resource_cache_dir() / f"{Path(str(module.source)).stem}-{arch}-{key[:24]}.json"
    table = _read(path)
    if name in table:
        return KernelResources(**table[name])
    build = nvrtc._compile(text, str(module.source), (name,), options)
    usage = nvrtc.parse_ptxas_log(build.log)
    bounds = nvrtc.parse_ptx_bounds(build.ptx)
    fresh = {}
    for mangled, found in usage.items():
        if "registers" not in found:
            continue  # a device function's frame, not an entry
        label = next((n for n, m in build.lowered.items() if m == mangled), mangled)
        b = bounds.get(mangled, {})
        fresh[label] = asdict(KernelResources(
            kernel=label, registers=found["registers"],
            static_shared=found.get("shared_bytes", 0), max_threads=b.get("max_threads"),
            min_blocks=b.get("min_blocks"), origin="nvrtc"))
    if name not in fresh:
        raise nvrtc.ReportError(f"{module.source} ({arch}): the ptxas log has no resource usage "
                                f"for {name}; log:\n{build.log}")
    with _LOCK:
        table = {**_read(path), **fresh}
        write_atomic(path, json.dumps(table, indent=1, sort_keys=True))
    return KernelResources(**fresh[name])


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


# --------------------------------------------------------------------------- without NVRTC

_TEMPLATE = re.compile(r"template\s*<([^<>]*)>\s*$")
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
        ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod}
_COMPARE = {ast.Gt: operator.gt, ast.GtE: operator.ge, ast.Lt: operator.lt, ast.LtE: operator.le,
            ast.Eq: operator.eq, ast.NotEq: operator.ne}


def source_resources(module, name: str) -> KernelResources:
    """The launch bounds of kernel ``name`` read from its source (registers and static
    shared memory unknown). A bound that is not integer arithmetic on literals and the
    kernel's template parameters is left unknown."""
    base, _, rest = name.partition("<")
    args = [a.strip() for a in rest.rstrip(">").split(",")] if rest else []
    text = Path(source_path(module.source)).read_text()
    pattern = re.compile(r"__global__\s+void\s+__launch_bounds__\s*\(((?:[^()]|\([^()]*\))*)\)\s*"
                         + re.escape(base) + r"\s*\(")
    match = pattern.search(text)
    if not match:
        return KernelResources(kernel=name, origin="source")
    names: dict[str, int] = {}
    head = text[:match.start()].rstrip()
    template = _TEMPLATE.search(head)
    if template and args:
        params = [p.strip().split()[-1] for p in template.group(1).split(",") if p.strip()]
        for param, value in zip(params, args):
            if re.fullmatch(r"-?\d+", value):
                names[param] = int(value)
            elif value in ("true", "false"):
                names[param] = int(value == "true")
    values = [_evaluate(part, names) for part in _split_top(match.group(1))]
    return KernelResources(kernel=name, max_threads=values[0] if values else None,
                           min_blocks=values[1] if len(values) > 1 else None, origin="source")


def _split_top(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for ch in text:
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
            continue
        depth += ch == "("
        depth -= ch == ")"
        current += ch
    return [*parts, current] if current.strip() else parts


def _evaluate(expression: str, names: dict[str, int]) -> int | None:
    condition, mark, branches = expression.partition("?")
    if mark:  # C's `c ? a : b` (one level, as launch bounds use it)
        yes, colon, no = branches.partition(":")
        if not colon:
            return None
        test = _evaluate(condition, names)
        return None if test is None else _evaluate(yes if test else no, names)
    expression = expression.replace("/", "//").replace("////", "//")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
        return int(_eval(tree.body, names))
    except (SyntaxError, KeyError, TypeError, ValueError, ZeroDivisionError):
        return None


def _eval(node, names):
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return node.value
    if isinstance(node, ast.Name):
        return names[node.id]
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_eval(node.left, names), _eval(node.right, names))
    if isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in _COMPARE:
        return int(_COMPARE[type(node.ops[0])](_eval(node.left, names),
                                               _eval(node.comparators[0], names)))
    if isinstance(node, ast.IfExp):
        return _eval(node.body, names) if _eval(node.test, names) else _eval(node.orelse, names)
    raise ValueError(f"not integer arithmetic: {ast.dump(node)}")


def check_launch(launch, arch=None, resources: KernelResources | None = None):
    """Refuse (``LaunchResourceError``) what a GPU would refuse: more threads than the
    kernel's ``__launch_bounds__``, registers x threads over the SM's register file,
    static + dynamic shared memory over the per-block limit.

    ``arch=None`` (the ``emu`` executor): every architecture of ``CONVNET_EMU_ARCH``
    (default sm_90) with the NVRTC report's figures; returns one ``Checked`` per
    architecture. With ``arch`` (and, on the ``cuda`` executor, the loaded function's
    own ``resources``): that one check, returning its ``Checked``."""
    if arch is None:
        return check_emu(launch)
    if resources is None:
        resources = kernel_resources(launch.module, launch.name, arch)
    return check(launch, arch, resources)
