"""Theoretical occupancy: how many blocks of a kernel an SM holds at once.

``occupancy(arch, threads_per_block, registers_per_thread, static_shared,
dynamic_shared)`` applies NVIDIA's rules, as the CUDA occupancy calculator
(``cuda_occupancy.h``, ``cudaOccupancyMaxActiveBlocksPerMultiprocessor``) does
for compute capability 8.x and 9.x, with the limits of ``convnet.perf.gpus``:

* warps per block = ceil(threads / 32); a block occupies whole warps.
* threads ("thread-limited"): floor(max warps per SM / warps per block).
* blocks: the hardware's cap on resident blocks per SM.
* registers: each warp is allocated ceil(registers x 32 / 256) x 256 registers;
  the register file (64K) is split over 4 sub-partitions, each holding
  floor(16384 / registers per warp) warps, so an SM holds 4 x that many warps and
  floor(that / warps per block) blocks.
* shared memory: a block takes static + dynamic shared memory plus the 1 KiB the
  driver reserves per block (sm_80+), rounded up to 128 bytes; an SM holds
  floor(shared memory per SM / that) blocks, the SM configured with its largest
  carveout (the driver picks the carveout; the default preference allows it).

Blocks per SM is the least of the four; the ``limiter`` is the resource giving it
(ties: all of them, in the order threads, registers, shared, blocks). Occupancy is
resident warps / max warps per SM.

A launch that cannot run at all gets ``blocks_per_sm == 0`` and a ``reason``:
more than 1024 threads, more than 255 registers per thread, more registers than
a block may have (64K, counted per warp as allocated, and per sub-partition: the
hardware check rounds the warps up to a multiple of 4), more than 48 KiB of static
shared memory, more shared memory than a block may opt into. ``needs_opt_in`` says
when static + dynamic shared memory exceeds the 48 KiB default (the kernel must
raise ``cudaFuncAttributeMaxDynamicSharedMemorySize``).

Assumptions: registers per thread as ptxas reports them (the allocation adds
nothing else); no thread-block clusters (sm_90), no partitioned global caching;
this is *theoretical* occupancy — what the SM can hold, not what a grid with too
few blocks achieves (waves are the launch model's business).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .gpus import Arch, arch as _arch

LIMIT_ORDER = ("threads", "registers", "shared", "blocks")


def _round_up(value: int, unit: int) -> int:
    return -(-value // unit) * unit


@dataclass(frozen=True)
class Occupancy:
    """The occupancy of one launch configuration on one architecture."""

    arch: str
    threads_per_block: int
    registers_per_thread: int
    static_shared: int
    dynamic_shared: int
    warps_per_block: int
    registers_per_warp: int         # as allocated (a multiple of 256)
    shared_per_block: int           # as allocated: static + dynamic + reserve, rounded to 128
    limits: dict = field(default_factory=dict)  # blocks per SM each resource allows
    blocks_per_sm: int = 0
    warps_per_sm: int = 0
    occupancy: float = 0.0          # resident warps / max warps per SM
    limiter: tuple[str, ...] = ()   # the resources giving blocks_per_sm; ("launch",) if it cannot run
    needs_opt_in: bool = False      # static + dynamic shared memory above the 48 KiB default
    reason: str | None = None       # why the launch cannot run, when it cannot

    @property
    def runs(self) -> bool:
        return self.reason is None and self.blocks_per_sm > 0

    @property
    def threads_per_sm(self) -> int:
        return self.warps_per_sm * 32

    def describe(self) -> str:
        if not self.runs:
            return f"cannot launch on {self.arch}: {self.reason}"
        return (f"{self.blocks_per_sm} blocks x {self.warps_per_block} warps = "
                f"{self.warps_per_sm} warps/SM ({self.occupancy:.0%}) on {self.arch}, "
                f"limited by {' and '.join(self.limiter)}")


class LaunchImpossible(ValueError):
    """Raised by ``require`` for a configuration no SM can hold."""


def occupancy(arch, threads_per_block: int, registers_per_thread: int,
              static_shared: int = 0, dynamic_shared: int = 0) -> Occupancy:
    """Theoretical occupancy of blocks of ``threads_per_block`` threads using
    ``registers_per_thread`` registers and ``static_shared`` + ``dynamic_shared``
    bytes of shared memory, on ``arch`` (``"sm_90"``, an ``Arch``, a ``GPU`` or a GPU's
    short name). Never raises for a configuration that cannot run: it returns one with
    ``blocks_per_sm == 0`` and a ``reason`` (see ``require``)."""
    a: Arch = _arch(arch)
    threads = int(threads_per_block)
    regs = int(registers_per_thread)
    static_shared, dynamic_shared = int(static_shared), int(dynamic_shared)
    if threads < 1 or regs < 0 or static_shared < 0 or dynamic_shared < 0:
        raise ValueError(f"threads ({threads}) must be positive; registers ({regs}) and "
                         f"shared bytes ({static_shared}, {dynamic_shared}) not negative")
    warps = -(-threads // a.warp_size)
    regs_per_warp = _round_up(regs * a.warp_size, a.register_unit)
    requested = static_shared + dynamic_shared
    shared_alloc = _round_up(requested + a.shared_reserved_per_block, a.shared_granularity)

    base = dict(arch=a.name, threads_per_block=threads, registers_per_thread=regs,
                static_shared=static_shared, dynamic_shared=dynamic_shared,
                warps_per_block=warps, registers_per_warp=regs_per_warp,
                shared_per_block=shared_alloc,
                needs_opt_in=requested > a.shared_per_block_default)

    reason = _impossible(a, threads, warps, regs, regs_per_warp, static_shared, requested)
    if reason is not None:
        return Occupancy(**base, limiter=("launch",), reason=reason)

    limits = {
        "threads": a.max_warps_per_sm // warps,
        "registers": _register_blocks(a, warps, regs_per_warp),
        "shared": a.shared_per_sm // shared_alloc,
        "blocks": a.max_blocks_per_sm,
    }
    blocks = min(limits.values())
    if blocks == 0:  # cannot happen after _impossible; kept as a guard with a reason
        zero = [k for k in LIMIT_ORDER if limits[k] == 0]
        return Occupancy(**base, limits=limits, limiter=tuple(zero),
                         reason=f"no block fits an SM ({', '.join(zero)})")
    limiter = tuple(k for k in LIMIT_ORDER if limits[k] == blocks)
    return Occupancy(**base, limits=limits, blocks_per_sm=blocks, warps_per_sm=blocks * warps,
                     occupancy=blocks * warps / a.max_warps_per_sm, limiter=limiter)


def _register_blocks(a: Arch, warps: int, regs_per_warp: int) -> int:
    """Blocks per SM the register file allows (cudaOccMaxBlocksPerSMRegsLimit)."""
    if regs_per_warp == 0:
        return a.max_blocks_per_sm
    per_partition = (a.registers_per_sm // a.sub_partitions) // regs_per_warp
    return per_partition * a.sub_partitions // warps


def _impossible(a: Arch, threads, warps, regs, regs_per_warp, static_shared, requested):
    """Why no SM can run one such block, or None."""
    if threads > a.max_threads_per_block:
        return f"{threads} threads per block exceed the limit of {a.max_threads_per_block}"
    if regs > a.max_registers_per_thread:
        return (f"{regs} registers per thread exceed the limit of "
                f"{a.max_registers_per_thread}")
    # the software check: registers of the block's warps against the per-block limit
    if regs_per_warp * warps > a.registers_per_block:
        return (f"too many registers for one block: {warps} warps x {regs_per_warp} registers "
                f"({regs} per thread, allocated per warp in units of {a.register_unit}) = "
                f"{regs_per_warp * warps} > {a.registers_per_block}")
    # the hardware check: warps are spread over the sub-partitions, each with 1/4 of the file
    spread = _round_up(warps, a.sub_partitions)
    if regs_per_warp * spread > a.registers_per_block:
        return (f"too many registers for one block: its {warps} warps take "
                f"{spread // a.sub_partitions} per sub-partition x {regs_per_warp} registers "
                f"> {a.registers_per_sm // a.sub_partitions} per sub-partition")
    if static_shared > a.shared_per_block_default:
        return (f"{static_shared} bytes of static shared memory exceed the "
                f"{a.shared_per_block_default}-byte static limit (use dynamic shared memory)")
    if requested > a.shared_per_block_optin:
        return (f"{requested} bytes of shared memory per block exceed the "
                f"{a.shared_per_block_optin}-byte maximum a block may opt into on {a.name}")
    return None


def require(arch, threads_per_block: int, registers_per_thread: int,
            static_shared: int = 0, dynamic_shared: int = 0) -> Occupancy:
    """``occupancy(...)``, raising LaunchImpossible (with the reason) if it cannot run."""
    result = occupancy(arch, threads_per_block, registers_per_thread, static_shared,
                       dynamic_shared)
    if not result.runs:
        raise LaunchImpossible(result.describe())
    return result
