"""The machine code (SASS) of the exact GPU build, and what its loops spend their issue slots on.

``module_sass(module, arch)`` compiles a ``KernelModule``'s expanded source with
NVRTC exactly as the compile check does (``convnet.toolchain.nvrtc``:
``NVRTC_OPTIONS`` + ``--gpu-architecture=sm_XX`` + ``--ptxas-options=-v``; the
``cuda`` device hands CuPy the same ``NVRTC_OPTIONS``), disassembles the CUBIN with
NVIDIA's ``nvdisasm`` (PyPI ``nvidia-cuda-nvdisasm``: ``pip install -e ".[perf]"``)
and returns one ``KernelSass`` per exported kernel:

* ``instructions``: ``Instruction``s (offset, opcode, modifiers, predicate,
  operands, branch target label, category).
* ``loops``: every backward branch to a label makes a ``Loop`` from the label to
  the branch (branches back to the same label make one loop, ending at the last
  of them); loops inside another are its ``inner`` loops, ``depth`` counts the
  loops around one. The one-instruction ``BRA`` to itself that ptxas puts after
  the final ``EXIT`` is not a loop.
* ``Loop.mix``: the instruction mix of one iteration — the loop's own
  instructions, those of inner loops left out (``Loop.total_mix`` keeps them) —
  by category: ``math`` (FFMA, FMUL, FADD, FMNMX, MUFU, HFMA2, DFMA, HMMA/HGMMA
  and the other MMAs...), ``shared`` (LDS, STS, LDSM, STSM, ATOMS), ``global``
  (LDG, STG, generic LD/ST, atomics, LDGSTS, TMA), ``local`` (LDL/STL: spills and
  local arrays), ``barrier`` (BAR, MEMBAR, DEPBAR, SYNCS...), ``integer``
  (IMAD, IADD3, LEA, SHF, LOP3, ISETP, SEL, moves, their uniform-datapath ``U``
  twins...), ``conversion`` (F2F, F2I, I2F, ...), ``control`` (BRA, BSSY, BSYNC,
  EXIT, NOP...), ``other`` (S2R, LDC/ULDC constant loads, SHFL, VOTE...).
  ``Mix.share("math")`` is the share of issue slots; ``Mix.ffma_share`` FFMA's.
* ``main_loop``: the innermost loop with the most math instructions (the GEMM
  kernels' k-slice loop), ``None`` for a kernel without loops.
* ``resources``: registers, spills, static shared memory and stack from the
  ptxas log (``convnet.toolchain.nvrtc.KernelReport``), and from the CUBIN's
  ``.nv.info`` the ``__launch_bounds__`` maximum threads per block and register cap.

``static_report(modules, arch, block_threads)`` does this for every kernel
instantiation (default: ``convnet.ops.kernel_modules()``) and adds the occupancy
at a launch block size (``convnet.perf.occupancy``): ``StaticRow``s, printed by
``format_static_report`` and by ``python -m convnet.perf.sass``.

Assumptions, stated wherever the figures are shown:

* Issue slots = instructions: each SASS instruction of a warp takes one issue
  slot of its SM sub-partition (one per clock), so a share of instructions is a
  share of issue slots. On sm_86/89/90 a sub-partition has 32 FP32 lanes, so the
  FFMA share of an issue-bound loop is the share of the FP32 peak it can reach; on
  sm_80 (16 lanes per sub-partition) a warp's FFMA holds its pipe two clocks and
  the FP32 peak is reached at a 50 % FFMA share — this count does not model pipes.
* One iteration executes every instruction of the loop's own body once: a
  predicated instruction issues whether or not its predicate holds; code that a
  forward branch inside the body skips is still counted (``Loop.forward_branches``
  says how many such branches the body has).
* The figures are those of the build NVRTC makes for ``arch`` with the project's
  options; ``cuda`` devices load that same build (CuPy passes the GPU's own arch).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..toolchain import nvrtc
from ..toolchain.kernel_source import expand
from ..toolchain.launch import KernelModule
from .occupancy import Occupancy, occupancy

INSTALL_HINT = ('install the perf extra, which brings NVIDIA\'s disassembler without a GPU: '
                'pip install -e ".[perf]"  (nvidia-cuda-nvdisasm>=13)')


class DisassemblerUnavailable(RuntimeError):
    """nvdisasm (the ``nvidia-cuda-nvdisasm`` wheel) is missing or does not run."""


class DisassemblyError(RuntimeError):
    """nvdisasm ran but its output lacks a kernel, or it failed on a CUBIN."""


# --------------------------------------------------------------------------- nvdisasm

def nvdisasm_path() -> str:
    """The ``nvdisasm`` executable: ``$CONVNET_NVDISASM``, the one in the
    ``nvidia-cuda-nvdisasm`` wheel (``nvidia/cu13/bin``, ``nvidia/cuda_nvdisasm/bin``),
    or one on ``PATH``; DisassemblerUnavailable naming the extra otherwise."""
    override = os.environ.get("CONVNET_NVDISASM")
    if override:
        if Path(override).is_file():
            return override
        raise DisassemblerUnavailable(f"CONVNET_NVDISASM={override} is not a file")
    candidates = []
    try:
        import nvidia  # namespace package of NVIDIA's PyPI wheels
        for root in getattr(nvidia, "__path__", []):
            root = Path(root)
            candidates += sorted(root.glob("*/bin/nvdisasm"), reverse=True)  # cu13 before cu12
    except ImportError:
        pass
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    found = shutil.which("nvdisasm")
    if found:
        return found
    raise DisassemblerUnavailable(f"nvdisasm was not found; {INSTALL_HINT}")


def disassemble(cubin: bytes, line_info: bool = False) -> str:
    """nvdisasm's text for a CUBIN (code and ``.nv.info`` sections); ``line_info``
    adds the ``//## File "...", line N`` comments of a ``-lineinfo`` build."""
    if not cubin:
        raise DisassemblyError("empty CUBIN (was the architecture a virtual compute_XX?)")
    tool = nvdisasm_path()
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as handle:
        handle.write(cubin)
        name = handle.name
    try:
        done = subprocess.run([tool, *(["--print-line-info"] if line_info else []), name],
                              capture_output=True, text=True, timeout=600)
    except OSError as exc:
        raise DisassemblerUnavailable(f"{tool} could not run ({exc}); {INSTALL_HINT}") from exc
    finally:
        os.unlink(name)
    if done.returncode != 0:
        raise DisassemblyError(f"nvdisasm failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


# --------------------------------------------------------------------------- instructions

MATH = frozenset("""FFMA FMUL FADD FMNMX FSEL FSET FSETP FCHK FSWZADD MUFU FFMA2 FMUL2 FADD2
    HFMA2 HADD2 HMUL2 HMNMX2 HSET2 HSETP2 DFMA DMUL DADD DSETP DMNMX DSET
    HMMA IMMA DMMA BMMA HGMMA IGMMA QGMMA BGMMA UTCHMMA UTCQMMA UTCIMMA""".split())
TENSOR = frozenset("HMMA IMMA DMMA BMMA HGMMA IGMMA QGMMA BGMMA UTCHMMA UTCQMMA UTCIMMA".split())
SHARED = frozenset("LDS STS LDSM STSM ATOMS".split())
GLOBAL = frozenset("""LDG STG LD ST ATOM ATOMG RED REDG LDGSTS UBLKCP UTMALDG UTMASTG UTMAREDG
    UTMAPF TLD TEX TLD4 TXQ SULD SUST SUATOM SURED CCTL""".split())
LOCAL = frozenset("LDL STL".split())
BARRIER = frozenset("BAR MEMBAR DEPBAR LDGDEPBAR SYNCS ARRIVES ERRBAR FENCE WARPGROUP".split())
INTEGER = frozenset("""IMAD IMUL IADD IADD3 IADD32I LEA LEA.HI SHF SHL SHR LOP LOP3 LOP32I ISETP
    ICMP IABS IMNMX VIMNMX VIADD VIADDMNMX VIMNMX3 SEL PRMT POPC FLO BREV BMSK IDP IDP4A
    PLOP3 PSETP P2R R2P MOV MOV32I CS2R R2UR REDUX VABSDIFF VABSDIFF4 SGXT""".split())
CONVERSION = frozenset("F2F F2I I2F I2I F2FP FRND I2FP F2IP I2IP".split())
CONTROL = frozenset("""BRA BRX JMP JMX CALL RET EXIT BSSY BSYNC WARPSYNC BREAK BMOV KILL NOP
    YIELD BPT RTT ACQBULK ELECT""".split())
CATEGORIES = ("math", "shared", "global", "local", "barrier", "integer", "conversion",
              "control", "other")

# Pipes slower than one warp instruction per scheduler per clock (the issue model of
# ``convnet.perf.dynamic``), by opcode; their rates per architecture are in
# ``convnet.perf.model.PIPE_RESULTS_PER_CLOCK``.
FP64 = frozenset("DFMA DMUL DADD DSETP DMNMX DSET".split())
MUFU = frozenset(["MUFU"])
CONVERT = frozenset("F2F F2I I2F FRND".split())    # not I2FP/F2IP/F2FP: ALU-pipe forms
FP32 = frozenset("FFMA FMUL FADD FFMA2 FMUL2 FADD2".split())
PIPES = ("fp32", "fp64", "mufu", "convert")


def pipe(opcode: str) -> str | None:
    """The throughput class of an opcode: ``fp64``, ``mufu`` (transcendentals),
    ``convert`` (F2F, F2I, I2F, FRND), ``fp32`` (FFMA, FMUL, FADD), else None (one warp
    instruction per scheduler per clock). Independent of ``classify``'s categories."""
    for table, name in ((FP64, "fp64"), (MUFU, "mufu"), (CONVERT, "convert"), (FP32, "fp32")):
        if opcode in table:
            return name
    return None


def classify(opcode: str, modifiers: tuple[str, ...] = ()) -> str:
    """The category of an opcode (``"FFMA"``, ``"IMAD"``, ``"ULDC"``...); ``other`` if
    unknown. ``HFMA2.MMA`` with zero operands is ptxas's way of moving a constant
    through the FMA pipe: counted as ``integer`` (a move) — see the caller."""
    for table, name in ((MATH, "math"), (SHARED, "shared"), (GLOBAL, "global"),
                        (LOCAL, "local"), (BARRIER, "barrier"), (INTEGER, "integer"),
                        (CONVERSION, "conversion"), (CONTROL, "control")):
        if opcode in table:
            return name
    if opcode.startswith("U") and len(opcode) > 1 and opcode[1:] in INTEGER:
        return "integer"  # the uniform datapath's twins: UIADD3, UIMAD, ULEA, UMOV, USEL...
    return "other"


@dataclass(frozen=True)
class Instruction:
    offset: int                     # byte offset in the kernel's code
    opcode: str                     # the base opcode: "FFMA", "LDG", "ISETP"
    modifiers: tuple[str, ...]      # ("E", "128", "CONSTANT") for LDG.E.128.CONSTANT
    predicate: str | None           # "@P0", "@!P1", "@!UP0" or None
    operands: str                   # the operand text as nvdisasm prints it
    target: str | None              # the label a branch goes to
    category: str
    source: tuple[str, int] | None = None   # (file name, line) from a line-info build

    @property
    def mnemonic(self) -> str:
        return ".".join((self.opcode, *self.modifiers))

    @property
    def is_branch(self) -> bool:
        return self.opcode in ("BRA", "BRX", "JMP", "JMX")

    def __str__(self) -> str:
        pred = f"{self.predicate} " if self.predicate else ""
        return f"/*{self.offset:04x}*/ {pred}{self.mnemonic} {self.operands}".rstrip()


_SECTION = re.compile(r"^//-+ \.(text|nv\.info)\.(\S+)\s+-+")
_INSTRUCTION = re.compile(r"^\s*/\*([0-9a-f]+)\*/\s+(.*?)\s*;\s*(?:/\*.*\*/)?\s*$")
_LABEL = re.compile(r"^(\.L\w+):\s*$")
_PREDICATE = re.compile(r"^(@!?U?P(?:T|\d+))\s+(.*)$")
_TARGET = re.compile(r"`\(([^)]+)\)")
_NVINFO = re.compile(r"//-+ nvinfo : (\w+)")
_VALUE = re.compile(r"\.(byte|short|word)\s+(.+)$")
_LINE_INFO = re.compile(r'^\s*//## File "([^"]+)", line (\d+)')


def _instruction(offset: int, text: str, source=None) -> Instruction:
    predicate = None
    match = _PREDICATE.match(text)
    if match:
        predicate, text = match.groups()
    mnemonic, _, operands = text.partition(" ")
    opcode, *modifiers = mnemonic.split(".")
    target = _TARGET.search(operands)
    category = classify(opcode, tuple(modifiers))
    if opcode == "HFMA2" and "MMA" in modifiers and re.match(r"\S+, -?RZ, RZ", operands.strip()):
        category = "integer"  # HFMA2.MMA Rx, -RZ, RZ, a, b: ptxas's constant move
    return Instruction(offset=offset, opcode=opcode, modifiers=tuple(modifiers),
                       predicate=predicate, operands=operands.strip(),
                       target=target.group(1) if target else None, category=category,
                       source=source)


@dataclass
class _Code:
    instructions: list[Instruction] = field(default_factory=list)
    labels: dict[str, int] = field(default_factory=dict)    # label -> offset it marks
    info: dict[str, list[int]] = field(default_factory=dict)  # EIATTR name -> values


def parse_disassembly(text: str) -> dict[str, _Code]:
    """Per function (mangled name): its instructions, labels and ``.nv.info`` attributes."""
    functions: dict[str, _Code] = {}
    code = None
    kind = None
    pending: list[str] = []   # labels waiting for the next instruction
    attribute = None
    source = None             # the last "//## File" line-info comment
    for line in text.splitlines():
        section = _SECTION.match(line)
        if section:
            kind, name = section.groups()
            code = functions.setdefault(name, _Code())
            pending, attribute, source = [], None, None
            continue
        if line.startswith("//---"):
            code, kind = None, None
            continue
        if code is None:
            continue
        if kind == "text":
            where = _LINE_INFO.match(line)
            if where:
                source = (Path(where.group(1)).name, int(where.group(2)))
                continue
            label = _LABEL.match(line)
            if label:
                pending.append(label.group(1))
                continue
            match = _INSTRUCTION.match(line)
            if match:
                offset = int(match.group(1), 16)
                for name in pending:
                    code.labels[name] = offset
                pending = []
                code.instructions.append(_instruction(offset, match.group(2), source))
            continue
        # .nv.info.<function>: "//----- nvinfo : EIATTR_X" then .byte/.short/.word lines
        match = _NVINFO.search(line)
        if match:
            attribute = match.group(1)
            code.info.setdefault(attribute, [])
            continue
        match = _VALUE.search(line)
        if match and attribute is not None:
            directive, values = match.groups()
            numbers = [int(v, 16) for v in re.findall(r"0x[0-9a-fA-F]+", values)
                       if "(" not in values]
            if directive == "byte":   # the attribute's format and code bytes: skip
                continue
            code.info[attribute].extend((directive, n) for n in numbers)
    return functions


# --------------------------------------------------------------------------- loops

@dataclass
class Mix:
    """Instruction counts of a stretch of code, by category and by opcode."""

    categories: Counter
    opcodes: Counter

    @classmethod
    def of(cls, instructions) -> "Mix":
        instructions = list(instructions)
        return cls(Counter(i.category for i in instructions),
                   Counter(i.opcode for i in instructions))

    @property
    def total(self) -> int:
        return sum(self.categories.values())

    def count(self, category: str) -> int:
        return self.categories.get(category, 0)

    def share(self, category: str) -> float:
        """The category's share of issue slots (instructions); 0 for empty code."""
        return self.count(category) / self.total if self.total else 0.0

    @property
    def ffma_share(self) -> float:
        return self.opcodes.get("FFMA", 0) / self.total if self.total else 0.0

    @property
    def tensor(self) -> int:
        return sum(n for op, n in self.opcodes.items() if op in TENSOR)

    def shares(self) -> dict[str, float]:
        return {c: self.share(c) for c in CATEGORIES}

    def describe(self) -> str:
        parts = [f"{c} {self.share(c):.0%}" for c in CATEGORIES if self.count(c)]
        return f"{self.total} instructions: " + ", ".join(parts)


@dataclass
class Loop:
    """A loop of the machine code: the label ``header`` at ``start`` up to the backward
    branch at ``end`` (inclusive)."""

    header: str
    start: int
    end: int
    body: list[Instruction]          # every instruction from start to end
    inner: list["Loop"] = field(default_factory=list)
    depth: int = 0                   # loops around this one

    @property
    def innermost(self) -> bool:
        return not self.inner

    @property
    def own(self) -> list[Instruction]:
        """The body without the instructions of inner loops (nested at any depth)."""
        return [i for i in self.body
                if not any(l.start <= i.offset <= l.end for l in self.inner)]

    @property
    def mix(self) -> Mix:
        """One iteration's instruction mix (inner loops left out)."""
        return Mix.of(self.own)

    @property
    def total_mix(self) -> Mix:
        """The mix of the whole body, inner loops counted once."""
        return Mix.of(self.body)

    @property
    def forward_branches(self) -> int:
        """Branches of the own body that jump forward within or out of the loop (code
        they skip is still counted in ``mix``)."""
        return sum(1 for i in self.own if i.is_branch and i.offset != self.end)

    def describe(self) -> str:
        kind = "innermost" if self.innermost else f"outer ({len(self.inner)} inner)"
        return (f"loop {self.header} {self.start:#06x}-{self.end:#06x} depth {self.depth} "
                f"{kind}: {self.mix.describe()}, FFMA {self.mix.ffma_share:.1%}")


def find_loops(instructions: list[Instruction], labels: dict[str, int]) -> list[Loop]:
    """The loops of a function, in order of their headers (outer before inner)."""
    ends: dict[str, int] = {}
    for ins in instructions:
        if not ins.is_branch or ins.target not in labels:
            continue
        start = labels[ins.target]
        if start > ins.offset:
            continue
        if start == ins.offset and ins.opcode == "BRA" and ins.predicate is None:
            continue  # ptxas's trap after the final EXIT: "L: BRA L"
        ends[ins.target] = max(ends.get(ins.target, -1), ins.offset)
    loops = [Loop(header=h, start=labels[h], end=e,
                  body=[i for i in instructions if labels[h] <= i.offset <= e])
             for h, e in ends.items()]
    loops.sort(key=lambda l: (l.start, -l.end))
    for loop in loops:
        around = [o for o in loops if o is not loop and o.start <= loop.start
                  and loop.end <= o.end and (o.start, o.end) != (loop.start, loop.end)]
        loop.depth = len(around)
        loop.inner = [o for o in loops if o is not loop and loop.start <= o.start
                      and o.end <= loop.end and (o.start, o.end) != (loop.start, loop.end)]
    return loops


# --------------------------------------------------------------------------- kernels

@dataclass
class KernelSass:
    """One kernel's machine code on one architecture, with its loops and resources."""

    module: str
    kernel: str                      # the name expression: "conv_forward<128, 128, 8, 8, 8>"
    mangled: str
    arch: str
    instructions: list[Instruction]
    labels: dict[str, int]
    loops: list[Loop]
    resources: nvrtc.KernelReport
    max_threads: int | None          # __launch_bounds__ maximum threads per block, if any
    max_registers: int | None        # the register cap ptxas was given (launch bounds), if any

    @property
    def main_loop(self) -> Loop | None:
        """The innermost loop with the most math instructions (ties: the longer, then the
        first); None without loops."""
        inner = [l for l in self.loops if l.innermost]
        if not inner:
            return None
        return max(inner, key=lambda l: (l.mix.count("math"), len(l.own), -l.start))

    @property
    def mix(self) -> Mix:
        """The whole kernel's static mix (every instruction once; trailing NOPs included)."""
        return Mix.of(self.instructions)

    def describe(self) -> str:
        r = self.resources
        lines = [f"{self.kernel} ({self.module}, {self.arch}): {len(self.instructions)} "
                 f"instructions, {r.registers} registers, spills {r.spill_stores}/"
                 f"{r.spill_loads} B, shared {r.shared_bytes} B, stack {r.stack_bytes} B"
                 + (f", launch bounds {self.max_threads} threads" if self.max_threads else "")]
        lines += ["  " * (1 + l.depth) + l.describe() for l in self.loops]
        return "\n".join(lines)


def _info_value(info: dict, name: str, directive: str):
    values = [v for d, v in info.get(name, []) if d == directive]
    return values or None


def compile_source(source_text: str, program_name: str, kernels, arch: str,
                   line_info: bool = False) -> list[KernelSass]:
    """Compile source text (already expanded) for ``arch`` with the project's options
    and return each kernel's ``KernelSass``. ``line_info`` adds ``-lineinfo`` (line
    tables only: the machine code is the same, a test checks it) and gives every
    ``Instruction`` its ``source`` (file name, line)."""
    arch = nvrtc.normalize_arch(arch)
    kernels = tuple(kernels)
    options = nvrtc.compile_options(arch) + (["-lineinfo"] if line_info else [])
    build = nvrtc._compile(source_text, program_name, kernels, options)
    usage = nvrtc.parse_ptxas_log(build.log)
    functions = parse_disassembly(disassemble(build.cubin, line_info))
    out = []
    for name in kernels:
        mangled = build.lowered[name]
        found = usage.get(mangled)
        if found is None or "registers" not in found or "stack_bytes" not in found:
            raise nvrtc.ReportError(f"{program_name} ({arch}): the ptxas log has no resource "
                                    f"usage for {name} ({mangled}); log:\n{build.log}")
        code = functions.get(mangled)
        if code is None or not code.instructions:
            raise DisassemblyError(f"{program_name} ({arch}): nvdisasm printed no code for "
                                   f"{name} ({mangled})")
        report = nvrtc.KernelReport(module=program_name, kernel=name, arch=arch,
                                    registers=found["registers"],
                                    spill_stores=found["spill_stores"],
                                    spill_loads=found["spill_loads"],
                                    shared_bytes=found.get("shared_bytes", 0),
                                    stack_bytes=found["stack_bytes"])
        bounds = _info_value(code.info, "EIATTR_MAX_THREADS", "word")
        max_threads = None
        if bounds:
            max_threads = 1
            for v in bounds[:3]:
                max_threads *= max(1, v)
        maxreg = _info_value(code.info, "EIATTR_MAXREG_COUNT", "short")
        out.append(KernelSass(module=program_name, kernel=name, mangled=mangled, arch=arch,
                              instructions=code.instructions, labels=code.labels,
                              loops=find_loops(code.instructions, code.labels),
                              resources=report, max_threads=max_threads,
                              max_registers=maxreg[0] if maxreg else None))
    return out


def module_sass(module: KernelModule, arch: str = "sm_90") -> list[KernelSass]:
    """The machine code of every kernel a KernelModule exports, built for ``arch`` (a
    feature-set module: its ``build_arch``, sm_90 -> sm_90a; ArchitectureError for an
    architecture it is not built for)."""
    return compile_source(expand(module.source), str(module.source), module.kernels,
                          module.require_arch(nvrtc.normalize_arch(arch)))


# --------------------------------------------------------------------------- the report

@dataclass
class StaticRow:
    """The static figures of one kernel instantiation on one architecture."""

    sass: KernelSass
    block_threads: int | None        # the launch block size the occupancy is for
    dynamic_shared: int
    occupancy: Occupancy | None      # None when no block size is known

    @property
    def module(self) -> str:
        return self.sass.module

    @property
    def kernel(self) -> str:
        return self.sass.kernel

    @property
    def arch(self) -> str:
        return self.sass.arch

    @property
    def resources(self) -> nvrtc.KernelReport:
        return self.sass.resources

    @property
    def main_loop(self) -> Loop | None:
        return self.sass.main_loop

    @property
    def math_share(self) -> float | None:
        """The main loop's math share of issue slots; None without a loop."""
        loop = self.main_loop
        return loop.mix.share("math") if loop else None

    @property
    def ffma_share(self) -> float | None:
        loop = self.main_loop
        return loop.mix.ffma_share if loop else None

    def as_dict(self) -> dict:
        """Plain figures (for JSON and the launch model): resources, occupancy, main loop."""
        r, occ, loop = self.resources, self.occupancy, self.main_loop
        return {
            "module": self.module, "kernel": self.kernel, "arch": self.arch,
            "registers": r.registers, "spill_stores": r.spill_stores,
            "spill_loads": r.spill_loads, "shared_bytes": r.shared_bytes,
            "stack_bytes": r.stack_bytes, "max_threads": self.sass.max_threads,
            "block_threads": self.block_threads, "dynamic_shared": self.dynamic_shared,
            "occupancy": None if occ is None else {
                "blocks_per_sm": occ.blocks_per_sm, "warps_per_sm": occ.warps_per_sm,
                "occupancy": occ.occupancy, "limiter": list(occ.limiter),
                "needs_opt_in": occ.needs_opt_in, "reason": occ.reason},
            "loops": len(self.sass.loops),
            "main_loop": None if loop is None else {
                "start": loop.start, "end": loop.end, "depth": loop.depth,
                "instructions": loop.mix.total, "ffma_share": loop.mix.ffma_share,
                "shares": loop.mix.shares(), "opcodes": dict(loop.mix.opcodes),
                "forward_branches": loop.forward_branches},
        }


def _per_kernel(value, module: KernelModule, kernel: str):
    if value is None or isinstance(value, int):
        return value
    if callable(value):
        return value(module, kernel)
    return value.get(kernel)


def static_report(modules=None, arch: str = "sm_90", block_threads=None, dynamic_shared=0,
                  jobs: int | None = None) -> list[StaticRow]:
    """Every kernel instantiation's static figures on ``arch`` (modules default to
    ``convnet.ops.kernel_modules()``), in module and kernel-list order.

    ``block_threads`` and ``dynamic_shared`` say how a kernel is launched: an int for
    all, a mapping from name expression to value, or a callable ``(module, kernel)``
    returning it (None: unknown). A kernel with no block size given gets its
    ``__launch_bounds__`` maximum; with neither, no occupancy. Modules compile in
    threads (NVRTC and nvdisasm release the GIL); the first failure is raised. Modules
    built only for another architecture's feature set (``feature_arch``) are left out.
    """
    if modules is None:
        from ..ops import kernel_modules
        modules = kernel_modules()
    arch = nvrtc.normalize_arch(arch)
    modules = [m for m in modules if m.build_arch(arch) is not None]
    nvrtc._bindings()
    nvdisasm_path()  # fail early, with the install hints, before any work
    if not modules:
        return []
    with ThreadPoolExecutor(max_workers=jobs or min(8, len(modules))) as pool:
        built = list(pool.map(lambda m: module_sass(m, arch), modules))
    rows = []
    for module, kernels in zip(modules, built):
        for sass in kernels:
            threads = _per_kernel(block_threads, module, sass.kernel) or sass.max_threads
            dynamic = _per_kernel(dynamic_shared, module, sass.kernel) or 0
            occ = None
            if threads:
                occ = occupancy(arch, threads, sass.resources.registers,
                                sass.resources.shared_bytes, dynamic)
            rows.append(StaticRow(sass=sass, block_threads=threads, dynamic_shared=dynamic,
                                  occupancy=occ))
    return rows


_HEADER = ("module", "kernel", "regs", "spill", "smem", "stack", "thr", "blk/SM", "occ",
           "limit", "loops", "loop len", "math", "FFMA", "shared", "global", "int", "bar")


def _pct(x) -> str:
    return "-" if x is None else f"{x * 100:.0f}%"


def format_static_report(rows) -> str:
    """The rows as an aligned text table (main loop figures per iteration)."""
    body = []
    for row in rows:
        r, occ, loop = row.resources, row.occupancy, row.main_loop
        mix = loop.mix if loop else None
        body.append([
            Path(row.module).name, row.kernel, str(r.registers),
            f"{r.spill_stores}/{r.spill_loads}" if r.spills else "0",
            str(r.shared_bytes), str(r.stack_bytes),
            str(row.block_threads or "-"),
            "-" if occ is None else (str(occ.blocks_per_sm) if occ.runs else "NO"),
            "-" if occ is None or not occ.runs else _pct(occ.occupancy),
            "-" if occ is None else "+".join(occ.limiter),
            str(len(row.sass.loops)), "-" if loop is None else str(mix.total),
            _pct(mix and mix.share("math")), _pct(mix and mix.ffma_share),
            _pct(mix and mix.share("shared")), _pct(mix and mix.share("global")),
            _pct(mix and mix.share("integer")), _pct(mix and mix.share("barrier")),
        ])
    table = [list(_HEADER), *body]
    widths = [max(len(r[i]) for r in table) for i in range(len(_HEADER))]
    left = {0, 1, 9}
    lines = ["  ".join(c.ljust(w) if i in left else c.rjust(w)
                       for i, (c, w) in enumerate(zip(r, widths))).rstrip() for r in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


LEGEND = """\
regs: registers per thread; spill: spill store/load bytes; smem: static shared bytes;
stack: stack frame bytes; thr: launch block size (given, else __launch_bounds__);
blk/SM, occ, limit: theoretical occupancy and its limiting resource (NO: cannot launch);
loops: loops in the machine code; loop len and the shares: the main loop (innermost
loop with the most math), one iteration, as a share of issue slots (one instruction =
one slot; predicated-off instructions and code skipped by branches inside the body
still counted)."""


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m convnet.perf.sass",
        description="Static machine-code figures of every kernel instantiation "
                    "(NVRTC build disassembled by nvdisasm; no GPU needed).")
    parser.add_argument("--arch", default=None, help="architecture, e.g. sm_90 (default)")
    parser.add_argument("--gpu", default=None, help="a GPU short name (h100, a100...): its arch")
    parser.add_argument("--filter", default="", help="only kernels whose name contains this")
    parser.add_argument("--threads", type=int, default=None,
                        help="block size for kernels without __launch_bounds__")
    parser.add_argument("--loops", action="store_true", help="also print every kernel's loops")
    parser.add_argument("--sass", metavar="KERNEL", default=None,
                        help="print the main loop's instructions of kernels matching KERNEL")
    args = parser.parse_args(argv)
    from . import gpus
    arch = args.arch or (gpus.gpu(args.gpu).arch.name if args.gpu else "sm_90")
    from ..ops import kernel_modules
    modules = kernel_modules()
    if args.filter:
        modules = [replace(m, kernels=tuple(k for k in m.kernels if args.filter in k))
                   for m in modules if any(args.filter in k for k in m.kernels)]
    began = time.perf_counter()
    rows = static_report(modules, arch, block_threads=lambda m, k: None)
    if args.threads:
        for row in rows:
            if row.block_threads is None:
                row.block_threads = args.threads
                r = row.resources
                row.occupancy = occupancy(arch, args.threads, r.registers, r.shared_bytes, 0)
    elapsed = time.perf_counter() - began
    print(f"Static figures on {arch} ({len(rows)} kernels of {len(modules)} modules, "
          f"{elapsed:.1f} s)")
    print(format_static_report(rows))
    print()
    print(LEGEND)
    if args.loops:
        for row in rows:
            print()
            print(row.sass.describe())
    if args.sass:
        for row in rows:
            if args.sass in row.kernel and row.main_loop is not None:
                print(f"\n{row.kernel}: {row.main_loop.describe()}")
                for ins in row.main_loop.body:
                    print(f"  {ins}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
