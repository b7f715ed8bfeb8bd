"""How an array crosses from one device to another: which path, and which stream waits on
which event. Pure (no CuPy): the decisions are tested on the CPU; ``cuda_copy`` runs them.

Paths (``path``):

* ``"same"``: both ends are one device (two columns placed on one device): nothing is
  copied, the crossing is logical.
* ``"host"``: one end is a host device (``cpu``/``emu``): through host memory, as
  ``Device.asarray`` always did (a synchronous copy on a GPU's current stream).
* ``"peer"``: two GPUs, the destination may access the source's memory
  (``cudaDeviceCanAccessPeer``): one ``cudaMemcpyPeerAsync``.
* ``"staged"``: two GPUs without peer access: device → pinned host buffer on the source
  GPU's copy stream, then host → device on the destination GPU's copy stream.

Streams named in a plan (``steps``): ``"src"``, the source GPU's current stream (the
producer's: the column that made the array); ``"dst"``, the destination GPU's current
stream (the consumer's); ``"src_copy"``/``"dst_copy"``, each GPU's own copy stream. A plan
is a sequence of steps, run in order:

* ``("record", event, stream)``: record ``event`` on ``stream`` (after what is queued there);
* ``("wait", stream, event)``: ``stream`` waits for ``event`` before its later work;
* ``("alloc", buffer, where)``: a buffer the size of the source, ``where`` ``"dst"`` (the
  destination array, taken from the consumer stream's memory pool) or ``"host"``
  (pinned host memory);
* ``("copy", kind, stream, source, target)``: ``kind`` ``"peer"``, ``"d2h"`` or ``"h2d"``;
* ``("hold", buffers, event)``: keep ``buffers`` alive until ``event`` has completed.

The ordering each plan gives (``ordering_problems`` proves it of a plan): the copy reads
the source only after its producer (``produced``, recorded on ``src``); it writes the
destination only after the consumer stream's earlier work, which may still use memory the
pool hands out again (``dst_free``); the consumer waits for the copy (``copied``); the
source and the host buffer stay alive until the copy has read them (``hold``), so the
producer stream never waits: the producing column goes on computing (in backward, its
next layer) while its tensor crosses.
"""
from __future__ import annotations

PATHS = ("same", "host", "peer", "staged")
STREAMS = ("src", "dst", "src_copy", "dst_copy")

_PEER = (
    ("record", "produced", "src"),
    ("alloc", "out", "dst"),
    ("record", "dst_free", "dst"),
    ("wait", "dst_copy", "produced"),
    ("wait", "dst_copy", "dst_free"),
    ("copy", "peer", "dst_copy", "in", "out"),
    ("record", "copied", "dst_copy"),
    ("wait", "dst", "copied"),
    ("hold", ("in",), "copied"),
)

_STAGED = (
    ("record", "produced", "src"),
    ("alloc", "host", "host"),
    ("wait", "src_copy", "produced"),
    ("copy", "d2h", "src_copy", "in", "host"),
    ("record", "staged", "src_copy"),
    ("alloc", "out", "dst"),
    ("record", "dst_free", "dst"),
    ("wait", "dst_copy", "staged"),
    ("wait", "dst_copy", "dst_free"),
    ("copy", "h2d", "dst_copy", "host", "out"),
    ("record", "copied", "dst_copy"),
    ("wait", "dst", "copied"),
    ("hold", ("in", "host"), "copied"),
)


def path(src, dst, can_access_peer=None) -> str:
    """The path from device ``src`` to device ``dst`` (objects with ``kind`` and ``name``,
    as ``convnet.backend`` devices have). ``can_access_peer(src, dst)`` answers for two
    different GPUs (never called otherwise); without it, GPUs are taken not to be peers."""
    for end, device in (("source", src), ("destination", dst)):
        if getattr(device, "kind", None) not in ("cpu", "emu", "cuda"):
            raise ValueError(f"crossing: the {end} {device!r} is not a device (cpu, emu or "
                             f"cuda:N)")
    if src.name == dst.name:
        return "same"
    if src.kind != "cuda" or dst.kind != "cuda":
        return "host"
    return "peer" if can_access_peer is not None and can_access_peer(src, dst) else "staged"


def steps(path_name: str) -> tuple:
    """The plan of a GPU-to-GPU copy along ``path_name`` ("peer" or "staged"), see the
    module docstring; "same" and "host" copy nothing on streams (an empty plan)."""
    if path_name not in PATHS:
        raise ValueError(f"crossing: unknown path {path_name!r} (one of {', '.join(PATHS)})")
    return {"peer": _PEER, "staged": _STAGED}.get(path_name, ())


def run(plan, ops):
    """Run ``plan`` step by step on ``ops`` (an object with the methods record, wait,
    alloc, copy and hold taking a step's fields); the ``"out"`` buffer ``ops.buffer``
    gives at the end is the copy."""
    for step in plan:
        getattr(ops, step[0])(*step[1:])
    return ops.buffer("out")


# --------------------------------------------------------------------------- checking a plan

def ordering_problems(plan) -> list[str]:
    """What ``plan`` leaves unordered, as sentences (empty when nothing): a happens-before
    graph over the streams' queued operations, with two operations queued before the
    plan (the producer writing ``in`` on ``src``; earlier work on ``dst`` that may use the
    memory ``alloc`` recycles) and one after it (the consumer reading ``out`` on ``dst``).
    Requires: every read after every write of its buffer (and some write), every write to ``out`` after the
    earlier ``dst`` work, the consumer after every write to ``out``, each held buffer's
    event after every read of it, a used buffer allocated first, an event recorded
    before it is waited on."""
    problems: list[str] = []
    queues: dict[str, list[int]] = {s: [] for s in STREAMS}
    edges: dict[int, set] = {}
    ops: list[tuple] = []   # node -> (what, stream, buffer)

    def node(stream, what, buffer=None) -> int:
        n = len(ops)
        ops.append((what, stream, buffer))
        edges[n] = set(queues[stream][-1:])  # after the stream's previous operation
        queues[stream].append(n)
        return n

    node("src", "write", "in")  # the producer
    earlier = node("dst", "earlier")
    events: dict[str, int] = {}
    allocated = {"in"}
    holds = []
    for step in plan:
        kind = step[0]
        if kind == "record":
            _, event, stream = step
            events[event] = node(stream, "record")
        elif kind == "wait":
            _, stream, event = step
            if event not in events:
                problems.append(f"{stream} waits on {event!r} before it is recorded")
                continue
            edges[node(stream, "wait")].add(events[event])
        elif kind == "alloc":
            allocated.add(step[1])
        elif kind == "copy":
            _, _, stream, source, target = step
            for buffer in (source, target):
                if buffer not in allocated:
                    problems.append(f"the copy on {stream} uses {buffer!r} before it is allocated")
            node(stream, "read", source)
            node(stream, "write", target)
        elif kind == "hold":
            _, buffers, event = step
            holds.append((buffers, event))
        else:
            problems.append(f"unknown step {step!r}")
    consumer = node("dst", "read", "out")

    def before(a: int, b: int) -> bool:  # a happens before b
        seen, stack = set(), [b]
        while stack:
            n = stack.pop()
            if n == a:
                return True
            if n not in seen:
                seen.add(n)
                stack.extend(edges[n])
        return False

    writes = [i for i, (what, _, b) in enumerate(ops) if what == "write"]
    reads = [i for i, (what, _, b) in enumerate(ops) if what == "read"]
    if not any(ops[w][2] == "out" for w in writes):
        problems.append("nothing writes 'out'")
    for r in reads:
        buffer = ops[r][2]
        if not any(ops[w][2] == buffer for w in writes):
            problems.append(f"{buffer!r} is read on {ops[r][1]} but nothing writes it")
        for w in writes:
            if ops[w][2] == buffer and not before(w, r):
                problems.append(f"a read of {buffer!r} on {ops[r][1]} is not ordered after "
                                f"its write on {ops[w][1]}")
    for w in writes:
        if ops[w][2] == "out" and not before(earlier, w):
            problems.append(f"the write of 'out' on {ops[w][1]} is not ordered after the "
                            f"earlier work on dst (its memory may still be in use there)")
    held = {}
    for buffers, event in holds:
        if event not in events:
            problems.append(f"buffers held until {event!r}, which is never recorded")
            continue
        for buffer in buffers:
            held[buffer] = events[event]
    for r in reads:
        buffer = ops[r][2]
        if r != consumer and buffer in held and not before(r, held[buffer]):
            problems.append(f"{buffer!r} is released before its read on {ops[r][1]}")
    for buffer in sorted(allocated - {"out"}):
        if buffer not in held and any(ops[r][2] == buffer for r in reads if r != consumer):
            problems.append(f"{buffer!r} is never held until the copy has read it")
    return problems
