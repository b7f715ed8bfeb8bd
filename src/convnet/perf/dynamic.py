"""Dynamic instruction counts of a launch: the machine code's loops (``convnet.perf.sass``)
with trip counts inferred from what the emulator counted (``convnet.perf.emu_traffic``).

``regions(kernel_sass)`` splits a kernel's SASS into *regions*: the straight-line code
(every instruction outside all loops) and each loop's own body (inner loops left out).
Per region it keeps, as plain JSON: the instruction count, the counts on the slower
pipes (``sass.pipe``: fp64, mufu, convert, fp32), the barriers (``BAR``), the warp
operations (``SHFL``, ``VOTE``, ``MATCH``) and the memory instructions per source line
(``"file:line:space:kind"``, from the ``-lineinfo`` build: space global/shared, kind
read/write/atomic), and each loop's enclosing loop.

``count(regions, warps, sites, barrier_warps, warp_ops)`` estimates the launch's
executed warp instructions. Unknowns: X_L, the warp-iterations of loop L over the
whole grid. The straight-line code runs once per warp (``warps`` of the real grid).
Each source line's warp-level requests that the emulator counted at that line (the
g++ build of the same source, its accesses attributed to the innermost inlined
line as nvdisasm's line table does) give one equation

    sum_L X_L x (memory instructions of line in L's body) = requests(line)
                                                          - warps x (those in straight code)

and so do barriers (each warp executes every ``__syncthreads`` of its block) and warp
operations. The equations, each divided by max(its right side, warps) so that every
line weighs alike, are solved for X >= 0 by non-negative least squares.

A memory instruction that is *conditional* — predicated, or in a basic block that a
forward branch of its region jumps over — issues every pass but makes a request only
when some lane takes it, so a line whose instructions in the loops are all conditional
also bounds the passes from below: sum_L X_L x (its instructions in L) >= its requests.
Such lines stay in the least squares and are applied afterwards as well, each raising
its loops' X (in proportion; from zero, the kernel's own loops before called functions)
until it holds. (Without this, a loop whose loads are mostly branched around, like
max-pool's backward gather, was credited with a third of its passes.) Non-inlined
device functions (the code after the final EXIT, reached by CALL) are one more region,
kept out of the least squares (their lines repeat inlined code's): run once per
unconditional CALL, raised by their lines' lower bounds. A loop that no line
constrains (no memory access, barrier or warp operation in its own body) is taken to
run once per iteration of its enclosing loop (once per warp at depth 0): a lower bound,
said in ``Dynamic.unseen``. Then

    executed = warps x straight + sum_L X_L x (instructions of L's own body)

and likewise per pipe. What it cannot see: a body's instructions skipped by a forward
branch or predicated off are counted on every iteration (an over-count: e.g. powf's
rare-input path); accesses the two compilers place differently (nvcc merging two
loads into one vector load, or hoisting a load g++ keeps in the loop) shift the trip
counts of the loops holding those lines. cp.async is matched as one site per kernel
(``site_key``), and "@!PT" instructions (never executed: ptxas's padding before each
LDGSTS) take issue slots but make no request; before both, a tensor-core loader's
blocks looked as if they never ran and about half its main loop was left uncounted.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from .nnls import nnls
from .sass import PIPES, pipe

_READ = frozenset("LDG LD LDGSTS TLD TEX TLD4 SULD".split())
_WRITE = frozenset("STG ST SUST".split())
_ATOMIC = frozenset("ATOM ATOMG RED REDG SUATOM SURED".split())
_SHARED_READ = frozenset("LDS LDSM".split())
_SHARED_WRITE = frozenset("STS STSM".split())
_WARP_OPS = frozenset("SHFL VOTE VOTEU MATCH".split())


def _access(ins) -> tuple[str, str] | None:
    """(space, kind) of a memory instruction as the emulator names them, else None."""
    op = ins.opcode
    for table, where in ((_READ, ("global", "read")), (_WRITE, ("global", "write")),
                         (_ATOMIC, ("global", "atomic")), (_SHARED_READ, ("shared", "read")),
                         (_SHARED_WRITE, ("shared", "write")), ({"ATOMS"}, ("shared", "atomic"))):
        if op in table:
            return where
    return None


def site_key(file: str | None, line: int | None, space: str, kind: str) -> str:
    """A memory site as both sides name it. cp.async is one site for the whole kernel:
    the GPU build places its LDGSTS at the PTX in ``kernels/cp_async.cuh``, the emulator
    its reads in ``emu_cp_async.h`` (where the deferred copy is taken), so neither line
    matches the other's; every copy goes through that one helper, so their counts do.
    ldmatrix likewise: its LDSM sits at the PTX in ``kernels/mma.cuh``, the emulator's
    row reads in ``emu_ldmatrix.h``."""
    if file == "emu_cp_async.h" and space == "global":
        return CP_ASYNC_SITE
    if file == "emu_ldmatrix.h" and space == "shared":
        return LDMATRIX_SITE
    return f"{file}:{line}:{space}:{kind}"


CP_ASYNC_SITE = "cp.async:0:global:read"
LDMATRIX_SITE = "ldmatrix:0:shared:read"


def _region(instructions, skipped: bool = False) -> dict:
    """Counts of a run of instructions; ``always``: the memory instructions per line that
    issue with their block unpredicated (none when the block is ``skipped`` by a forward
    branch: see the module docstring)."""
    pipes = Counter(pipe(i.opcode) for i in instructions)
    memory, always = Counter(), Counter()
    for i in instructions:
        # "@!PT": never executes (ptxas pads each LDGSTS with three "@!PT LDS RZ, [RZ]"):
        # it takes its issue slot but makes no request
        access = None if i.predicate == "@!PT" else _access(i)
        if access is not None:
            file, line = i.source or (None, None)
            key = (CP_ASYNC_SITE if i.opcode == "LDGSTS" else LDMATRIX_SITE if i.opcode == "LDSM"
                   else site_key(file, line, *access))
            memory[key] += 1
            if not skipped and i.predicate in (None, "@PT"):
                always[key] += 1
    calls = 0 if skipped else sum(1 for i in instructions if i.opcode == "CALL"
                                  and i.predicate in (None, "@PT"))
    return {"instructions": len(instructions), "calls": calls,
            "pipes": {p: pipes.get(p, 0) for p in PIPES},
            "barriers": sum(1 for i in instructions if i.opcode == "BAR"),
            "warp_ops": sum(1 for i in instructions if i.opcode in _WARP_OPS),
            "memory": dict(memory), "always": dict(always)}


def _blocks(instructions, labels, scope=None) -> list[dict]:
    """The basic blocks of a region (split at labels and after branches and EXITs); a
    block is skipped when a branch of ``scope`` (the loop's whole body, or the kernel's
    code) before it jumps past its start to a label inside the scope (a jump out of a
    loop ends it: the passes that reach the block still run it)."""
    starts = set(labels.values())
    out, current = [], []
    for i in instructions:
        if current and i.offset in starts:
            out.append(current)
            current = []
        current.append(i)
        if i.is_branch or i.opcode == "EXIT":
            out.append(current)
            current = []
    if current:
        out.append(current)
    scope = scope or instructions
    first, last = scope[0].offset if scope else 0, scope[-1].offset if scope else 0
    jumps = [(i.offset, labels[i.target]) for i in scope
             if i.is_branch and i.target in labels and first <= labels[i.target] <= last]
    return [_region(b, any(at < b[0].offset < to for at, to in jumps)) for b in out]


def _sum(blocks) -> dict:
    total = {"instructions": 0, "calls": 0, "pipes": {p: 0 for p in PIPES}, "barriers": 0,
             "warp_ops": 0, "memory": Counter(), "always": Counter()}
    for b in blocks:
        total["instructions"] += b["instructions"]
        total["calls"] += b.get("calls", 0)
        total["barriers"] += b["barriers"]
        total["warp_ops"] += b["warp_ops"]
        total["memory"].update(b["memory"])
        total["always"].update(b.get("always", b["memory"]))
        for p in PIPES:
            total["pipes"][p] += b["pipes"][p]
    total["memory"] = dict(total["memory"])
    total["always"] = dict(total["always"])
    return total


def _trap(i, labels) -> bool:
    """ptxas's trap after the final EXIT ("L: BRA L") or a padding NOP: never runs."""
    return i.opcode == "NOP" or (i.opcode == "BRA" and labels.get(i.target) == i.offset)


def regions(kernel) -> dict:
    """The regions of a ``sass.KernelSass`` (see the module docstring), JSON-ready:
    each with its basic blocks (``blocks``) and their sum. Code after the final EXIT is
    the non-inlined device functions' (``__noinline__``: reached by CALL, ending in
    RET): it is not straight code run once per warp but one more region, ``called``,
    last in ``loops`` (``"called": True``; the loops inside it are its children), run
    once per unconditional CALL (``calls``) unless its own lines say more."""
    loops = kernel.loops
    labels = kernel.labels
    code = list(kernel.instructions)
    exits = [n for n, i in enumerate(code) if i.opcode == "EXIT"]
    tail = []
    if exits:
        tail = [i for i in code[exits[-1] + 1:] if not _trap(i, labels)]
        code = code[:exits[-1] + 1]
    end = code[-1].offset if code else -1

    def looped(i):
        return any(l.start <= i.offset <= l.end for l in loops)

    inside = [i for i in code if not looped(i)]
    called = [i for i in tail if not looped(i)]
    out = []
    for loop in loops:
        around = [j for j, o in enumerate(loops) if o is not loop and loop in o.inner]
        parent = max(around, key=lambda j: loops[j].depth) if around else None
        if parent is None and loop.start > end and called:
            parent = len(loops)   # a loop of a called function
        blocks = _blocks(loop.own, labels, loop.body)
        out.append({"start": loop.start, "end": loop.end, "depth": loop.depth,
                    "parent": parent, **_sum(blocks), "blocks": blocks})
    if called:
        blocks = _blocks(called, labels, tail)
        out.append({"start": called[0].offset, "end": called[-1].offset, "depth": 0,
                    "parent": None, "called": True, **_sum(blocks), "blocks": blocks})
    blocks = _blocks(inside, labels, code)
    return {"straight": {**_sum(blocks), "blocks": blocks}, "loops": out}


def _live(region: dict, measured: dict) -> tuple[dict, bool]:
    """The region without its basic blocks that never ran in this launch (a memory
    instruction at a line the emulator saw no request at: e.g. the scalar tail of a
    vectorised loop), and whether any block is left that holds a memory instruction."""
    blocks = region.get("blocks")
    if blocks is None:
        return region, bool(region["memory"])
    def ran(b):
        return all(measured.get(k, 0) > 0 for k in b["memory"] if not k.startswith("None:"))
    live = [b for b in blocks if ran(b)]
    return _sum(live), any(b["memory"] for b in live)


@dataclass
class Dynamic:
    """Executed warp instructions of one launch (whole grid) and their parts."""

    instructions: float
    pipes: dict                       # pipe -> executed warp instructions
    iterations: list[float]           # X_L per loop (warp-iterations, whole grid)
    unseen: list[int] = field(default_factory=list)   # loops no equation constrains
    equations: int = 0

    def as_dict(self) -> dict:
        return {"instructions": self.instructions, "pipes": self.pipes,
                "iterations": self.iterations, "unseen": self.unseen,
                "equations": self.equations}


def count(figures: dict, warps: float, sites: dict, barrier_warps: float = 0.0,
          warp_ops: float = 0.0) -> Dynamic:
    """Executed warp instructions (see the module docstring). ``figures``: ``regions()``;
    ``warps``: warps of the grid; ``sites``: ``{site_key: warp requests}`` over the grid;
    ``barrier_warps``: barriers x warps per block, summed over blocks."""
    measured = dict(sites)
    straight = _live(figures["straight"], measured)[0]
    pruned = [_live(l, measured) for l in figures["loops"]]
    # a loop whose every memory block is dead never ran: X = 0
    dead = {j for j, (l, has) in enumerate(pruned)
            if figures["loops"][j]["memory"] and not has}
    loops = [{**figures["loops"][j], **{k: v for k, v in l.items() if k != "blocks"}}
             for j, (l, _) in enumerate(pruned)]
    measured["#barriers"] = barrier_warps
    measured["#warp_ops"] = warp_ops

    def coefficients(region):
        c = dict(region["memory"])
        c["#barriers"] = region["barriers"]
        c["#warp_ops"] = region["warp_ops"]
        return c

    per_loop = [coefficients(l) for l in loops]
    fixed = coefficients(straight)
    keys = sorted({k for c in per_loop for k, v in c.items() if v
                   and not k.startswith("None:") and (k in measured or not k.startswith("#"))})
    # lines whose instructions in the loops are all conditional: also lower bounds
    lower = [k for k in keys if not k.startswith("#")
             and not any(l.get("always", l["memory"]).get(k) for l in loops)]
    functions = [j for j, l in enumerate(loops) if l.get("called")]

    def root(j):
        while loops[j]["parent"] is not None:
            j = loops[j]["parent"]
        return j

    # called functions (rare paths, mostly: their lines repeat inlined code's) stay out
    # of the least squares; their lines' lower bounds may raise them below
    constrained = [j for j, c in enumerate(per_loop)
                   if root(j) not in functions and any(c.get(k) for k in keys)]

    def need(k):
        return max(0.0, measured.get(k, 0.0) - warps * fixed.get(k, 0))

    x = np.zeros(len(loops))
    if keys and constrained:
        a = np.array([[per_loop[j].get(k, 0) for j in constrained] for k in keys], float)
        b = np.array([need(k) for k in keys])
        scale = np.maximum(b, max(warps, 1.0))
        x[constrained] = nnls(a / scale[:, None], b / scale)

    # unconstrained loops once per pass of the enclosing loop (per warp at depth 0), a
    # called function at least once per unconditional call: the kernel's loops, its
    # calls, then the called functions' loops
    order = sorted((j for j in range(len(loops)) if j not in constrained and j not in dead
                    and j not in functions
                    and not (root(j) in functions and any(per_loop[j].get(k) for k in keys))),
                   key=lambda j: loops[j]["depth"])
    for inside_functions in (False, True):
        for j in order:
            if (root(j) in functions) == inside_functions:
                parent = loops[j]["parent"]   # parents first
                x[j] = warps if parent is None else x[parent]
        if not inside_functions:
            calls = warps * straight.get("calls", 0) + sum(
                x[i] * l.get("calls", 0) for i, l in enumerate(loops) if not l.get("called"))
            for j in functions:
                x[j] = max(x[j], calls)
    for j in dead:
        x[j] = 0.0
    for k in lower:   # raising X never lowers another line's count: one pass holds them all
        holders = [j for j in range(len(loops)) if per_loop[j].get(k) and j not in dead]
        have = sum(x[j] * per_loop[j][k] for j in holders)
        if not holders or have >= need(k):
            continue
        if have > 0:
            x[holders] *= need(k) / have
        else:   # the kernel's own loops first, called functions only where none holds it
            holders = [j for j in holders if root(j) not in functions] or holders
            x[holders] = need(k) / sum(per_loop[j][k] for j in holders)
    unseen = [j for j in range(len(loops)) if j not in constrained and j not in dead
              and not any(per_loop[j].get(k) for k in keys)]
    total = warps * straight["instructions"] + float(
        sum(x[j] * l["instructions"] for j, l in enumerate(loops)))
    pipes = {p: warps * straight["pipes"][p] + float(
        sum(x[j] * l["pipes"][p] for j, l in enumerate(loops))) for p in PIPES}
    return Dynamic(total, pipes, [float(v) for v in x], unseen, len(keys))
