"""The convolution kernels' tiles and how one is chosen per launch.

Every kernel of ``kernels/conv_*.cu`` is an implicit GEMM instantiated for the tiles
``<BM, BN, BK, TM, TN>`` of ``TILES``; ``choose_tile(device, ...)`` picks the one with
the least estimated time on that device (its kind and ``parallel_units``).
"""
from __future__ import annotations

from typing import NamedTuple

from ..toolchain.launch import KernelModule, LaunchError, name_expression


class Tile(NamedTuple):
    """An implicit-GEMM instantiation: block tile BM x BN, reduction slice BK,
    thread tile TM x TN; (BM/TM) * (BN/TN) threads per block."""

    bm: int
    bn: int
    bk: int
    tm: int
    tn: int

    @property
    def threads(self) -> int:
        return (self.bm // self.tm) * (self.bn // self.tn)

    def name(self, kernel: str) -> str:
        return name_expression(kernel, tuple(self))


# The GPU's main tile: 256 threads, 8x8 results each (128x128 per block), 16-deep
# slices (1024 multiply-adds per thread between barriers).
LARGE = Tile(128, 128, 16, 8, 8)
# Fewer rows for layers with few output (forward, filter) or input (data) channels.
MEDIUM = Tile(64, 128, 16, 8, 8)
# 96 rows: AlexNet's channel counts (96, 192, 384) are multiples of it, so forward and
# backward filter of conv1 (96 filters) waste no rows; 192 threads, 24-deep slices,
# registers enough (167) for two blocks per SM in all three passes without spilling.
ROWS96 = Tile(96, 128, 24, 8, 8)
# Small problems: 64 threads, 4x4 results each.
SMALL = Tile(32, 32, 16, 4, 4)
# The emulator's tile: few fibers with fat register tiles and a deep slice, so that
# a barrier (two fiber switches per thread) comes once per 2048 multiply-adds.
EMU = Tile(128, 128, 16, 16, 8)
# Four rows: GEMMs with very few rows (backward data of an RGB input's three channels).
THIN = Tile(4, 256, 16, 4, 8)

# 48 rows: backward data of layers with 48 input channels per group (AlexNet's conv2),
# which waste a quarter of a 64-row tile; 192 threads, two blocks per SM, 12-deep
# slices (a 24-deep slice of 256 columns would pass the 48 KiB of static shared memory).
# The direct kernels only (Winograd's products instantiate TILES).
ROWS48 = Tile(48, 256, 12, 8, 8)

# The tiles every implicit-GEMM module instantiates (Winograd's products too), and the
# direct convolution kernels' (these and ROWS48).
TILES: tuple[Tile, ...] = (LARGE, MEDIUM, ROWS96, SMALL, EMU, THIN)
CONV_TILES: tuple[Tile, ...] = TILES + (ROWS48,)

# Forward and backward data bounds-check their image gathers with per-position tap masks
# (conv_common.cuh, CnTapGather), which hold at most TAP_ROWS x TAP_COLS taps (forward:
# R x S; backward data: a stride phase's ceil(R/sh) x ceil(S/sw)); wider filters run the
# *_wide kernels (the plain checked gather), instantiated for these tiles only.
TAP_ROWS, TAP_COLS = 15, 16  # CN_TAP_N1, CN_TAP_N2
# Backward filter bounds-checks its image gather with edge words (conv_common.cuh,
# CnTapGather's EDGE coding), which hold at most EDGE_ROWS output rows (columns) per
# edge outside the image: ceil(pad / stride) of them; larger paddings run the wide kernel.
EDGE_ROWS = 7  # CN_EDGE_ROWS
WIDE_TILES: tuple[Tile, ...] = (LARGE, EMU)

# The instantiations each conv kernel file exports (the one place they are made).
BIAS_THREADS = 256  # conv_bias_grad's block (a template argument: a power of two)

FORWARD = KernelModule("conv_forward.cu", tuple(t.name("conv_forward") for t in CONV_TILES)
                       + tuple(t.name("conv_forward_wide") for t in WIDE_TILES))
BACKWARD_DATA = KernelModule("conv_backward_data.cu",
                             tuple(t.name("conv_backward_data") for t in CONV_TILES)
                             + tuple(t.name("conv_backward_data_wide") for t in WIDE_TILES))
BACKWARD_FILTER = KernelModule("conv_backward_filter.cu",
                               tuple(t.name("conv_backward_filter") for t in CONV_TILES)
                               + tuple(t.name("conv_backward_filter_wide") for t in WIDE_TILES)
                               + ("conv_split_sum", name_expression("conv_bias_grad", (BIAS_THREADS,))))

# How a device kind runs each tile it may choose: (blocks resident per SM or emulator
# worker, arithmetic rate relative to the device's main tile). GPU: residency from the
# compile report's registers (sm_90, BK = 16: LARGE 128 per thread in forward, two
# blocks; backward 1 block; MEDIUM up to 167, three blocks; of 65536 per SM), rates
# estimated (4x4 and 4x8 thread tiles read more shared memory per
# multiply-add); not yet measured on a GPU. emu: rates measured on AlexNet's layers
# (benchmarks/conv.py): a thin or small tile does ~1/6 of EMU's arithmetic per second.
TILE_MODELS = {
    "cuda": {LARGE: (1, 1.0), MEDIUM: (3, 0.8), ROWS96: (2, 0.95), SMALL: (8, 0.45),
             THIN: (10, 0.35), ROWS48: (2, 0.78)},
    "emu": {EMU: (1, 1.0), SMALL: (1, 0.18), THIN: (1, 0.17)},
}

# On cuda the residency is computed, not taken from the table above (which stays as the
# fallback without NVRTC): blocks per SM by NVIDIA's occupancy rules (perf.occupancy)
# for the device's architecture (``device.arch``; sm_90 for a device without one), with
# each tile's real registers and static shared memory from the NVRTC report
# (toolchain.resources, cached on disk) — the fewest over the three conv kernels,
# since one tile choice serves forward, backward-data and backward-filter GEMMs alike.
CONV_KERNELS = ("conv_forward", "conv_backward_data", "conv_backward_filter")
_RESIDENCY: dict[tuple, int] = {}


def gpu_residency(tile: Tile, arch: str = "sm_90", kernel: str | None = None) -> int | None:
    """Blocks of ``tile`` an SM of ``arch`` holds, from the compiled kernels: of
    ``kernel`` (one of ``CONV_KERNELS``), else the fewest over the three; None when
    NVRTC (or the architecture's limits) is unavailable."""
    key = (tile, arch) if kernel is None else (tile, arch, kernel)
    if key not in _RESIDENCY:
        from ..perf.gpus import UnknownGPU
        from ..perf.occupancy import occupancy
        from ..toolchain.resources import kernel_resources
        modules = (FORWARD, BACKWARD_DATA, BACKWARD_FILTER)
        blocks = []
        try:
            for module, name in zip(modules, CONV_KERNELS):
                if kernel is not None and name != kernel:
                    continue
                found = kernel_resources(module, tile.name(name), arch)
                if found.registers is None:
                    return None  # no NVRTC: kernel_resources has warned once
                blocks.append(occupancy(arch, tile.threads, found.registers,
                                        found.static_shared or 0).blocks_per_sm)
        except UnknownGPU:
            return None
        _RESIDENCY[key] = max(1, min(blocks))
    return _RESIDENCY[key]


def _model(device) -> dict:
    model = TILE_MODELS[device.kind]
    if device.kind != "cuda":
        return model
    arch = getattr(device, "arch", "sm_90")
    out = {}
    for tile, (resident, rate) in model.items():
        computed = gpu_residency(tile, arch)
        out[tile] = (computed if computed is not None else resident, rate)
    return out


def resident_blocks(device, tile: Tile, kernel: str | None = None) -> int:
    """Blocks of ``tile`` one parallel unit of ``device`` runs at once: on a GPU of
    ``kernel`` (``gpu_residency``), else the tile table's (1 for a tile not in it)."""
    if device.kind == "cuda":
        found = gpu_residency(tile, getattr(device, "arch", "sm_90"), kernel)
        if found is not None:
            return found
    return TILE_MODELS.get(device.kind, {}).get(tile, (1, 1.0))[0]


def whole_wave_splits(blocks: int, slots: int, length: int, bk: int, most: int) -> int:
    """How many chunks to split a reduction of ``length`` into, for a GEMM of ``blocks``
    blocks a chunk on a device running ``slots`` at once: the fewest splits of the least
    (waves) x (BK-slices a block), at most ``most`` (a grid of 4.09 waves runs 5); a grid
    of less than one wave counts as one over the share of the slots it fills (resident
    blocks hide each other's latency: 132 blocks on 264 slots are not 264's speed)."""
    slots = max(1, slots)

    def cost(s: int) -> tuple:
        slices = -(-(-(-length // s)) // bk)
        chunks = -(-length // (slices * bk))
        total = blocks * chunks
        return -(-total // slots) * slices / min(1.0, total / slots), chunks

    return min(range(1, max(1, most) + 1), key=cost)


def choose_tile(device, rows: int, cols: int, batches: int = 1,
                kernel: str | None = None, menu=None) -> Tile:
    """The tile for ``batches`` GEMMs of ``rows`` x ``cols`` results (one block grid of
    ceil(rows/BM) x ceil(cols/BN) x batches) on a kernel ``device``.

    The tile with the least estimated time: waves of resident blocks over the device's
    ``parallel_units`` (SMs; emulator workers) times the work of a wave, each tile's
    residency and rate from ``TILE_MODELS``. Rows and columns past the matrix are work
    too, so GEMMs with few rows pick narrow tiles. On a GPU, given the ``kernel`` (one of
    ``CONV_KERNELS``), that kernel's own residency, and the rate times the launch
    model's latency factor (``perf.model``: min(1, 0.25 + 0.25 x resident warps per
    scheduler, 4 schedulers an SM)): backward filter's 128x128 tile holds one block of
    8 warps (0.75), the 64x128 tile three of 4 (1.0). ``menu``: only these tiles (the
    wide kernels' ``WIDE_TILES``; by default ``CONV_TILES`` for the direct kernels,
    ``TILES`` for other GEMMs)."""
    model, units = _model(device), device.parallel_units
    named = device.kind == "cuda" and kernel is not None
    menu = menu or (CONV_TILES if kernel in CONV_KERNELS else TILES)

    def cost(t: Tile) -> float:
        resident, rate = model[t]
        if named:
            resident = resident_blocks(device, t, kernel)
            rate *= min(1.0, 0.25 + 0.25 * resident * -(-t.threads // 32) / 4)
        blocks = -(-rows // t.bm) * -(-cols // t.bn) * max(1, batches)
        waves = -(-blocks // (units * resident))
        return waves * resident * t.bm * t.bn / rate

    return min((t for t in model if t in menu), key=cost)


def pick_tile(device, tile, rows: int, cols: int, batches: int,
              kernel: str | None = None, wide: bool = False) -> Tile:
    """``tile`` (a 5-tuple, which must be in ``CONV_TILES`` for a direct-convolution
    ``kernel``, else in ``TILES``; in ``WIDE_TILES`` when ``wide``), or ``choose_tile``'s
    (for ``kernel``; among ``WIDE_TILES`` when ``wide``) when None."""
    if tile is None:
        return choose_tile(device, rows, cols, batches, kernel, WIDE_TILES if wide else None)
    tile = Tile(*tile)
    exported = CONV_TILES if kernel in CONV_KERNELS else TILES
    if tile not in exported:
        raise LaunchError(f"conv2d: tile {tuple(tile)} is not instantiated; exported: "
                          + ", ".join(str(tuple(t)) for t in exported))
    if wide and tile not in WIDE_TILES:
        limit = (f"paddings of at most {EDGE_ROWS} output rows (columns) a side"
                 if kernel == "conv_backward_filter"
                 else f"filters (or stride phases) of at most {TAP_ROWS}x{TAP_COLS} taps")
        raise LaunchError(f"conv2d: tile {tuple(tile)} takes {limit}; wider ones run on "
                          + ", ".join(str(tuple(t)) for t in WIDE_TILES))
    return tile


def wide_taps(rows: int, cols: int) -> bool:
    """Whether a gather of ``rows`` x ``cols`` taps needs the *_wide kernels."""
    return rows > TAP_ROWS or cols > TAP_COLS


def wide_edges(pad_h: int, pad_w: int, stride_h: int, stride_w: int) -> bool:
    """Whether backward filter's image gather needs its *_wide kernel: more than
    EDGE_ROWS output rows (or columns) reach into either side's padding."""
    return -(-pad_h // stride_h) > EDGE_ROWS or -(-pad_w // stride_w) > EDGE_ROWS
