"""Memory traffic of kernel launches, measured on the ``emu`` device (issue 11, item 2).

``convnet.backend.emu.profile()`` runs emulated launches with their loads and
stores reported to the runtime (the kernels built with g++'s ThreadSanitizer pass
at the compile step and hooks of our own instead of its runtime, see
``csrc/emu/emu_profile.h``) and hands back a :class:`Profile`::

    from convnet.backend import emu
    with emu.profile(blocks=4) as prof:
        y = relu(x)
    prof.launches[0].global_.sectors_per_request     # 4.0 for a coalesced float load
    prof.as_dict()                                   # JSON for a performance model

What is measured, per launch (kernel, grid, block, dynamic shared bytes):

* **Requests.** The lanes of one warp executing the same access site (one load or
  store instruction of the g++ build) for the same n-th time since the block's
  last barrier form one warp-level request, as on a GPU. Warps are 32
  consecutive linear thread indices; a partial last warp has fewer lanes.
* **Global memory** (everything that is not shared memory and not the thread's
  own stack): per request the distinct 32-byte sectors its lanes touch, summed;
  bytes requested (the lanes' access sizes summed) against bytes moved (sectors x
  32). No caches: every request counts its sectors, as L1-bypassing traffic
  would; re-reads that a GPU's L1/L2 would serve are counted again.
* **Shared memory** (the block's static ``__shared__`` arrays and its dynamic
  shared memory): per request the wavefronts, on 32 banks of 4 bytes: lanes on
  one 4-byte word do not conflict (broadcast); 1-4 byte accesses are served for
  the whole warp at once, 8-byte accesses per half-warp and 16-byte accesses per
  quarter-warp, each part taking as many wavefronts as the most distinct words
  one bank holds in it. ``ideal_wavefronts`` is 1 per part (so 4 for a full warp
  of float4), and the conflict degree is wavefronts / ideal.
* **Barriers** (``__syncthreads`` executed by a block, counted once per block)
  and warp-level operations (shuffles, votes, ``__syncwarp``), counted over
  *every* block, exactly.
* **Sampling.** Access figures come from a sample of the grid's blocks: the first
  ``blocks // 2`` and the rest spread evenly up to the last block (all blocks
  when ``blocks`` is None or the grid is no larger). The other blocks run the
  ordinary build. Totals (``*_total``) scale the sampled figures by blocks in the
  grid / blocks sampled; per-request figures are not scaled.
* **Sites** are resolved to file:line lazily (``addr2line`` on the cached
  library, only when asked), skipping frames in the emulator's own headers.

What it cannot see: the accesses are those of the g++ build at -O3 (without
vectorisation, scalar replacement of aggregates or store merging, so per-thread
access sizes follow the source: a ``float4`` stays one 16-byte access), which reloads or keeps in registers what nvcc might not; ``memset``/``memcpy``
calls the compiler leaves as library calls are not seen; ``__constant__`` and
``__device__`` variables live in the library image and are not counted; atomics
are reported as accesses of kind ``atomic`` (a float ``atomicAdd`` is a load and
a CAS loop in the emulator, so two sites).
"""
from __future__ import annotations

import shutil
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

SECTOR_BYTES = 32
BANKS = 32

_KINDS = {0: "read", 1: "write", 2: "atomic"}
_UNALIGNED_FLAG = 4
# Frames in these files are the emulator's, not the kernel's: the reported line is
# the first frame outside them (an access in cuda_emu.h's __ldg is the caller's).
_RUNTIME_FILES = ("cuda_emu.h", "emu_profile.h", "emu_api.h", "emu_hooks.h")


def sample_blocks(total: int, blocks: int | None) -> list[int]:
    """The linear block indices profiled in a grid of ``total`` blocks: the first
    ``blocks // 2`` and the rest spread evenly up to the last block; all of them
    when ``blocks`` is None or at least ``total``."""
    if total <= 0:
        return []
    if blocks is None or blocks >= total:
        return list(range(total))
    if blocks < 1:
        raise ValueError(f"blocks must be at least 1 (or None for all), got {blocks}")
    first = blocks // 2
    chosen = set(range(first))
    rest = blocks - first
    lo, hi = first, total - 1
    for i in range(rest):
        chosen.add(hi if rest == 1 else lo + round(i * (hi - lo) / (rest - 1)))
    return sorted(chosen)


# ---------------------------------------------------------------- source lines

_LINE_CACHE: dict[tuple[str, int], tuple[str | None, int | None, str | None]] = {}
_LINE_LOCK = threading.Lock()


def _addr2line() -> str | None:
    return shutil.which("addr2line")


def resolve(library: str, offsets: list[int]) -> dict[int, tuple[str | None, int | None, str | None]]:
    """(file, line, function) of each return-address offset in ``library``: the
    access the hook call follows, first frame outside the emulator's headers."""
    out = {}
    todo = []
    with _LINE_LOCK:
        for off in offsets:
            key = (library, off)
            if key in _LINE_CACHE:
                out[off] = _LINE_CACHE[key]
            else:
                todo.append(off)
    if not todo:
        return out
    tool = _addr2line()
    found: dict[int, tuple[str | None, int | None, str | None]] = {off: (None, None, None) for off in todo}
    if tool and Path(library).exists():
        # pc - 1: inside the call instruction, which carries the access's line.
        args = [tool, "-a", "-f", "-C", "-i", "-p", "-e", library] + [hex(off - 1) for off in todo]
        result = subprocess.run(args, capture_output=True, text=True, check=False)
        groups: list[list[str]] = []
        for line in result.stdout.splitlines():
            if line.startswith("0x"):
                groups.append([line.split(": ", 1)[1] if ": " in line else ""])
            elif groups:
                groups[-1].append(line.strip().removeprefix("(inlined by) "))
        for off, frames in zip(todo, groups):
            found[off] = _pick_frame(frames)
    with _LINE_LOCK:
        for off, value in found.items():
            _LINE_CACHE[(library, off)] = value
            out[off] = value
    return out


def _pick_frame(frames: list[str]) -> tuple[str | None, int | None, str | None]:
    parsed = []
    for frame in frames:
        function, _, where = frame.rpartition(" at ")
        where = where.split(" (discriminator")[0].strip()
        path, _, line = where.rpartition(":")
        try:
            number = int(line)
        except ValueError:
            continue
        if path in ("", "??") or number == 0:
            continue
        parsed.append((path, number, function or None))
    for path, number, function in parsed:
        if Path(path).name not in _RUNTIME_FILES and not path.startswith("/usr/"):
            return Path(path).name, number, function
    if parsed:
        path, number, function = parsed[0]
        return Path(path).name, number, function
    return None, None, None


# ---------------------------------------------------------------- figures

@dataclass
class SpaceFigures:
    """One memory space's figures over a set of sites (sampled blocks; ``scale``
    turns counts into whole-grid estimates)."""

    space: str
    requests: int = 0
    accesses: int = 0         # lanes over all requests
    bytes_requested: int = 0
    sectors: int = 0          # global
    wavefronts: int = 0       # shared
    ideal_wavefronts: int = 0  # shared
    misaligned: int = 0
    scale: float = 1.0

    def add(self, row: "SiteRow") -> None:
        self.requests += row.requests
        self.accesses += row.accesses
        self.bytes_requested += row.bytes
        self.sectors += row.sectors
        self.wavefronts += row.wavefronts
        self.ideal_wavefronts += row.ideal
        self.misaligned += row.misaligned

    @property
    def bytes_moved(self) -> int:
        """Global: sectors x 32 bytes (shared: the bytes requested)."""
        return self.sectors * SECTOR_BYTES if self.space == "global" else self.bytes_requested

    @property
    def sectors_per_request(self) -> float:
        return self.sectors / self.requests if self.requests else 0.0

    @property
    def efficiency(self) -> float:
        """Bytes requested / bytes moved (1.0: every sector byte used)."""
        return self.bytes_requested / self.bytes_moved if self.bytes_moved else 0.0

    @property
    def wavefronts_per_request(self) -> float:
        return self.wavefronts / self.requests if self.requests else 0.0

    @property
    def conflict_degree(self) -> float:
        """Shared: wavefronts / conflict-free wavefronts (1.0: no bank conflicts)."""
        return self.wavefronts / self.ideal_wavefronts if self.ideal_wavefronts else 0.0

    @property
    def lanes_per_request(self) -> float:
        return self.accesses / self.requests if self.requests else 0.0

    def total(self, count: int) -> float:
        return count * self.scale

    def as_dict(self) -> dict:
        d = {"space": self.space, "requests": self.requests, "accesses": self.accesses,
             "bytes_requested": self.bytes_requested, "lanes_per_request": self.lanes_per_request,
             "misaligned": self.misaligned,
             "requests_total": self.total(self.requests),
             "bytes_requested_total": self.total(self.bytes_requested)}
        if self.space == "global":
            d.update(sectors=self.sectors, sectors_per_request=self.sectors_per_request,
                     bytes_moved=self.bytes_moved, efficiency=self.efficiency,
                     bytes_moved_total=self.total(self.bytes_moved))
        else:
            d.update(wavefronts=self.wavefronts, ideal_wavefronts=self.ideal_wavefronts,
                     wavefronts_per_request=self.wavefronts_per_request,
                     conflict_degree=self.conflict_degree,
                     wavefronts_total=self.total(self.wavefronts))
        return d


@dataclass(frozen=True)
class SiteRow:
    """One machine-code access site (a hook call's return address) in one space."""

    offset: int
    space: str
    kind_bits: int
    size: int
    requests: int
    accesses: int
    bytes: int
    sectors: int
    wavefronts: int
    ideal: int
    misaligned: int

    @property
    def kind(self) -> str:
        return _KINDS.get(self.kind_bits & 3, "?")


@dataclass
class Site:
    """The figures of one source line's accesses of one kind, size and space
    (every machine-code site g++ made of it, summed)."""

    file: str | None
    line: int | None
    function: str | None
    space: str
    kind: str
    size: int
    figures: SpaceFigures
    offsets: list[int] = field(default_factory=list)

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}" if self.file else "?"

    def as_dict(self) -> dict:
        return {"where": self.where, "file": self.file, "line": self.line, "function": self.function,
                "space": self.space, "kind": self.kind, "size": self.size, **{
                    k: v for k, v in self.figures.as_dict().items() if k != "space"}}


@dataclass
class LaunchTraffic:
    """One profiled launch."""

    kernel: str
    source: str                 # the .cu file
    library: str                # the instrumented shared object (for file:line)
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    shared_bytes: int           # dynamic shared memory
    blocks_total: int
    blocks_profiled: int
    barriers: int               # __syncthreads executed, all blocks (each block counts once)
    warp_ops: int               # warp-level shuffles/votes/__syncwarp, all blocks
    rows: list[SiteRow]
    _sites: list[Site] | None = field(default=None, repr=False)

    @property
    def threads_per_block(self) -> int:
        return self.block[0] * self.block[1] * self.block[2]

    @property
    def warps_per_block(self) -> int:
        return -(-self.threads_per_block // 32)

    @property
    def scale(self) -> float:
        """Blocks in the grid / blocks profiled: what sampled counts are multiplied by."""
        return self.blocks_total / self.blocks_profiled if self.blocks_profiled else 0.0

    @property
    def barriers_per_block(self) -> float:
        return self.barriers / self.blocks_total if self.blocks_total else 0.0

    def _space(self, space: str, kinds: tuple[str, ...] | None = None) -> SpaceFigures:
        f = SpaceFigures(space, scale=self.scale)
        for row in self.rows:
            if row.space == space and (kinds is None or row.kind in kinds):
                f.add(row)
        return f

    @property
    def global_(self) -> SpaceFigures:
        return self._space("global")

    @property
    def global_loads(self) -> SpaceFigures:
        return self._space("global", ("read",))

    @property
    def global_stores(self) -> SpaceFigures:
        return self._space("global", ("write",))

    @property
    def global_atomics(self) -> SpaceFigures:
        return self._space("global", ("atomic",))

    @property
    def shared(self) -> SpaceFigures:
        return self._space("shared")

    @property
    def shared_loads(self) -> SpaceFigures:
        return self._space("shared", ("read",))

    @property
    def shared_stores(self) -> SpaceFigures:
        return self._space("shared", ("write",))

    @property
    def sites(self) -> list[Site]:
        """Per source line (and space, kind, size): the summed figures, resolved now."""
        if self._sites is None:
            where = resolve(self.library, sorted({r.offset for r in self.rows}))
            merged: dict[tuple, Site] = {}
            for row in self.rows:
                file, line, function = where.get(row.offset, (None, None, None))
                key = (file, line, row.space, row.kind, row.size) if file else (row.offset, row.space)
                site = merged.get(key)
                if site is None:
                    site = merged[key] = Site(file, line, function, row.space, row.kind, row.size,
                                              SpaceFigures(row.space, scale=self.scale))
                site.figures.add(row)
                site.offsets.append(row.offset)
            self._sites = sorted(merged.values(), key=lambda s: (s.file or "~", s.line or 0, s.space, s.kind))
        return self._sites

    def site(self, file: str, line: int, space: str | None = None, kind: str | None = None) -> Site:
        """The site at file:line (file by name), optionally of one space/kind."""
        found = [s for s in self.sites if s.file == Path(file).name and s.line == line
                 and (space is None or s.space == space) and (kind is None or s.kind == kind)]
        if len(found) != 1:
            raise KeyError(f"{len(found)} sites at {file}:{line} (space={space}, kind={kind}) in {self.kernel}: "
                           f"{[s.where + ' ' + s.space + ' ' + s.kind for s in self.sites]}")
        return found[0]

    def waves(self, gpu, blocks_per_sm: int) -> float:
        """Blocks in the grid / (SMs x resident blocks per SM) on ``gpu`` (a name or
        ``convnet.perf.gpus.GPU``); a fractional last wave counts as its fraction."""
        from . import gpus
        g = gpus.gpu(gpu)
        if blocks_per_sm < 1:
            raise ValueError(f"blocks_per_sm must be at least 1, got {blocks_per_sm}")
        return self.blocks_total / (g.sms * blocks_per_sm)

    def summary(self) -> dict:
        g, s = self.global_, self.shared
        return {
            "kernel": self.kernel, "grid": list(self.grid), "block": list(self.block),
            "shared_bytes": self.shared_bytes, "blocks_total": self.blocks_total,
            "blocks_profiled": self.blocks_profiled, "scale": self.scale,
            "barriers": self.barriers, "barriers_per_block": self.barriers_per_block, "warp_ops": self.warp_ops,
            "global_requests_total": g.total(g.requests),
            "global_sectors_per_request": g.sectors_per_request,
            "global_bytes_requested_total": g.total(g.bytes_requested),
            "global_bytes_moved_total": g.total(g.bytes_moved),
            "global_efficiency": g.efficiency,
            "global_load_sectors_per_request": self.global_loads.sectors_per_request,
            "global_store_sectors_per_request": self.global_stores.sectors_per_request,
            "shared_requests_total": s.total(s.requests),
            "shared_wavefronts_per_request": s.wavefronts_per_request,
            "shared_conflict_degree": s.conflict_degree,
            "shared_wavefronts_total": s.total(s.wavefronts),
        }

    def as_dict(self, sites: bool = True) -> dict:
        d = {**self.summary(), "source": self.source,
             "global": self.global_.as_dict(), "shared": self.shared.as_dict(),
             "global_loads": self.global_loads.as_dict(), "global_stores": self.global_stores.as_dict(),
             "shared_loads": self.shared_loads.as_dict(), "shared_stores": self.shared_stores.as_dict()}
        if sites:
            d["sites"] = [s.as_dict() for s in self.sites]
        return d

    def report(self) -> str:
        """A short text table: the launch, then one row per site."""
        g, s = self.global_, self.shared
        head = (f"{self.kernel} grid {self.grid} block {self.block} shared {self.shared_bytes} B: "
                f"{self.blocks_profiled}/{self.blocks_total} blocks profiled, {self.barriers} barriers; "
                f"global {g.sectors_per_request:.2f} sectors/request ({g.efficiency:.0%} of moved bytes used), "
                f"shared {s.conflict_degree:.2f}x wavefronts")
        rows = [head]
        for site in self.sites:
            f = site.figures
            figure = (f"{f.sectors_per_request:6.2f} sectors/req" if site.space == "global"
                      else f"{f.wavefronts_per_request:6.2f} wavefronts/req ({f.conflict_degree:.2f}x)")
            rows.append(f"  {site.where:28s} {site.space:6s} {site.kind:6s} {site.size:2d} B "
                        f"{f.requests:9d} req {f.lanes_per_request:5.1f} lanes {figure}")
        return "\n".join(rows)


class Profile:
    """What ``emu.profile()`` collects: one :class:`LaunchTraffic` per launch."""

    def __init__(self, blocks: int | None = 4):
        if blocks is not None and blocks < 1:
            raise ValueError(f"blocks must be at least 1 (or None for all), got {blocks}")
        self.blocks = blocks
        self.launches: list[LaunchTraffic] = []
        self._lock = threading.Lock()

    def sample(self, total: int) -> list[int]:
        return sample_blocks(total, self.blocks)

    def add(self, launch: LaunchTraffic) -> None:
        with self._lock:
            self.launches.append(launch)

    def __len__(self) -> int:
        return len(self.launches)

    def __iter__(self):
        return iter(self.launches)

    def __getitem__(self, i):
        return self.launches[i]

    def by_kernel(self, name: str) -> list[LaunchTraffic]:
        return [t for t in self.launches if t.kernel == name]

    def summary(self) -> dict:
        """Over all launches: whole-grid estimates of requests, sectors, bytes and
        wavefronts, the per-request ratios they give, barriers."""
        greq = gsec = gbytes = sreq = swave = sideal = barriers = 0.0
        for t in self.launches:
            g, s = t.global_, t.shared
            greq += g.total(g.requests)
            gsec += g.total(g.sectors)
            gbytes += g.total(g.bytes_requested)
            sreq += s.total(s.requests)
            swave += s.total(s.wavefronts)
            sideal += s.total(s.ideal_wavefronts)
            barriers += t.barriers
        return {
            "launches": len(self.launches),
            "global_requests": greq, "global_sectors": gsec,
            "global_sectors_per_request": gsec / greq if greq else 0.0,
            "global_bytes_requested": gbytes, "global_bytes_moved": gsec * SECTOR_BYTES,
            "global_efficiency": gbytes / (gsec * SECTOR_BYTES) if gsec else 0.0,
            "shared_requests": sreq, "shared_wavefronts": swave,
            "shared_wavefronts_per_request": swave / sreq if sreq else 0.0,
            "shared_conflict_degree": swave / sideal if sideal else 0.0,
            "barriers": barriers,
        }

    def as_dict(self, sites: bool = True) -> dict:
        return {"blocks_sampled": self.blocks, "summary": self.summary(),
                "launches": [t.as_dict(sites=sites) for t in self.launches]}

    def report(self) -> str:
        return "\n".join(t.report() for t in self.launches)


def launch_traffic(kernel: str, source: str, library: str, grid, block, shared_bytes: int,
                   raw: dict) -> LaunchTraffic:
    """A LaunchTraffic from what ``convnet._emu.launch(..., profile=True)`` returns."""
    rows = [SiteRow(*row) for row in raw["sites"]]
    return LaunchTraffic(kernel=kernel, source=source, library=library, grid=tuple(grid), block=tuple(block),
                         shared_bytes=int(shared_bytes), blocks_total=int(raw["blocks_total"]),
                         blocks_profiled=int(raw["blocks_profiled"]), barriers=int(raw["barriers"]),
                         warp_ops=int(raw["warp_ops"]), rows=rows)


__all__ = ["LaunchTraffic", "Profile", "Site", "SiteRow", "SpaceFigures", "launch_traffic", "resolve",
           "sample_blocks", "SECTOR_BYTES", "BANKS"]
