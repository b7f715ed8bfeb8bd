"""SGEMM, C = A · B (float32, row-major): the launch description of the test kernel.

``tests/kernels/sgemm_tiled.cu`` is a tiled shared-memory kernel with register
blocking, templated on its tile shape ``<BM, BN, BK, TM, TN>`` (see the file's
header). It is not part of the library (the fully-connected layers use the array
library's matmul: NumPy on cpu/emu, cuBLAS through CuPy on cuda); it stays as a
runtime test of the emulator (``tests/test_sgemm.py``) and as the measure of its
throughput (``benchmarks/sgemm.py``), which both use this module.

The instantiations it exports are listed in ``MODULE``; ``EMU_TILE`` and ``CUDA_TILE``
are the tuned defaults (``benchmarks/sgemm.py`` measures them): the emulator wants
few, fat steps between barriers, a GPU wants more threads per block.

``reference(a, b)`` is the NumPy/CuPy result; ``sgemm_launch(a, b, c)`` builds the
``Launch`` (the same for ``emu`` and ``cuda``); ``matmul(device, a, b)`` runs the
reference on ``cpu`` and the kernel on ``emu``/``cuda``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from convnet.backend import get_device
from convnet.ops.conv import Tile  # the library's one tile type: <BM, BN, BK, TM, TN>
from convnet.toolchain.launch import KernelModule, Launch, LaunchError


KERNEL = "sgemm_tiled"


def kernel_name(tile: Tile) -> str:
    """The instantiation's name expression, ``"sgemm_tiled<BM, BN, BK, TM, TN>"``."""
    return tile.name(KERNEL)


def block_of(tile: Tile) -> tuple[int, int]:
    """The kernel's 2-D block: (BN / TN, BM / TM) threads."""
    return (tile.bn // tile.tn, tile.bm // tile.tm)


# The emulator's default (measured with benchmarks/sgemm.py --sweep, see README): 128
# fibers per block, each a 16×8 register tile that g++ keeps in AVX-512 registers
# along the 16 rows, and BK = 32 so that a barrier (two fiber switches) comes once
# per 8192 flops of a thread. It also compiles for a GPU without spills (168
# registers, 33 KB of static shared memory): every instantiation must, because
# NVRTC compiles the whole module (tests/test_sgemm.py fails on a spill).
EMU_TILE = Tile(128, 128, 32, 16, 8)
# The GPU's default: 256 threads per block, 8×8 per thread, a 128×128 block tile
# (122 registers, 8 KB of shared memory: two blocks per SM). Not yet timed on a GPU.
CUDA_TILE = Tile(128, 128, 8, 8, 8)
# Other instantiations: a small tile (more blocks for small matrices, and a second
# shape for the tests) and the candidates that `benchmarks/sgemm.py --sweep` compares.
EXTRA_TILES = (
    Tile(32, 32, 8, 4, 4),
    Tile(64, 64, 16, 8, 8),
    Tile(64, 64, 32, 8, 8),
    Tile(64, 64, 32, 16, 8),
    Tile(128, 128, 32, 8, 16),
)
TILES: tuple[Tile, ...] = (EMU_TILE, CUDA_TILE, *EXTRA_TILES)

# The kernel lives with the other test kernels; a KernelModule takes an absolute path.
SOURCE = Path(__file__).resolve().parent.parent / "tests" / "kernels" / "sgemm_tiled.cu"
MODULE = KernelModule(source=str(SOURCE), kernels=tuple(kernel_name(t) for t in TILES))

_INT32_MAX = 2**31 - 1


def reference(a, b):
    """C = A · B with the array library's own matmul (NumPy or CuPy), float32."""
    return a @ b


def flops(m: int, n: int, k: int) -> int:
    """Floating-point operations of one M×K by K×N product (a multiply and an add each)."""
    return 2 * m * n * k


def _is_cuda_array(array) -> bool:
    return hasattr(array, "__cuda_array_interface__")


def default_tile(array) -> Tile:
    """The tuned tile for where ``array`` lives: ``CUDA_TILE`` on a GPU, else ``EMU_TILE``."""
    return CUDA_TILE if _is_cuda_array(array) else EMU_TILE


def _describe(array) -> str:
    return f"{type(array).__module__.split('.')[0]}.{type(array).__name__}"


def check_operands(a, b, c=None) -> tuple[int, int, int]:
    """``(M, N, K)`` of ``a`` (M×K) · ``b`` (K×N) into ``c`` (M×N), or a clear error.

    TypeError for non-arrays, a dtype other than float32, or operands on different
    devices; ValueError for shapes (not 2-D, inner dimensions differing, ``c`` of the
    wrong shape or not C-contiguous) and for sizes past the kernel's int32 indices.
    """
    operands = {"a": a, "b": b} if c is None else {"a": a, "b": b, "c": c}
    for label, x in operands.items():
        if not (hasattr(x, "shape") and hasattr(x, "dtype") and hasattr(x, "ndim")):
            raise TypeError(f"sgemm: {label} must be an array, not {type(x).__name__}")
        if x.dtype != np.float32:
            raise TypeError(f"sgemm: {label} must be float32, got {x.dtype} "
                            f"(convert with .astype(np.float32))")
        if x.ndim != 2:
            raise ValueError(f"sgemm: {label} must be a 2-D matrix, got shape {tuple(x.shape)}")
        if not x.flags.c_contiguous:
            raise ValueError(f"sgemm: {label} must be C-contiguous (row-major); "
                             f"use ascontiguousarray")
    if len({_is_cuda_array(x) for x in operands.values()}) != 1:
        raise TypeError("sgemm: operands live on different devices: "
                        + ", ".join(f"{k} is {_describe(x)}" for k, x in operands.items()))
    (m, k), (k2, n) = a.shape, b.shape
    if k != k2:
        raise ValueError(f"sgemm: inner dimensions differ: a is {m}×{k}, b is {k2}×{n}")
    if c is not None and tuple(c.shape) != (m, n):
        raise ValueError(f"sgemm: c must be {m}×{n} for a {m}×{k} by {k}×{n} product, "
                         f"got {tuple(c.shape)}")
    for label, count in (("a", m * k), ("b", k * n), ("c", m * n)):
        if count > _INT32_MAX:
            raise ValueError(f"sgemm: {label} has {count} elements; the kernel's int indices "
                             f"allow at most {_INT32_MAX}")
    return m, n, k


def sgemm_launch(a, b, c, *, tile: Tile | tuple | None = None) -> Launch:
    """The Launch that writes ``a @ b`` into ``c`` (all float32, C-contiguous, same device).

    ``tile`` picks an exported instantiation (default: ``default_tile(a)``).
    """
    m, n, k = check_operands(a, b, c)
    if m == 0 or n == 0:
        raise ValueError(f"sgemm: an empty result ({m}×{n}) needs no launch")
    tile = default_tile(a) if tile is None else Tile(*tile)
    if tile not in TILES:
        raise LaunchError(f"sgemm: tile {tuple(tile)} is not instantiated; exported: "
                          + ", ".join(kernel_name(t) for t in TILES))
    grid = (-(-n // tile.bn), -(-m // tile.bm))
    return Launch(MODULE, KERNEL, grid=grid, block=block_of(tile),
                  args=(a, b, c, np.int32(m), np.int32(n), np.int32(k)),
                  template_args=tuple(tile))


def matmul(device, a, b, *, tile: Tile | tuple | None = None):
    """``a @ b`` on ``device``: the NumPy reference on ``cpu``, the kernel on ``emu``/``cuda``.

    ``a`` and ``b`` are float32 matrices (host arrays are moved to ``device``);
    the result is an array of ``device``.
    """
    device = get_device(device)
    for label, x in (("a", a), ("b", b)):
        dtype = getattr(x, "dtype", None)
        if dtype is not None and dtype != np.float32:
            raise TypeError(f"sgemm: {label} must be float32, got {dtype} "
                            f"(convert with .astype(np.float32))")
    a = device.asarray(a)
    b = device.asarray(b)
    m, n, _ = check_operands(a, b)
    xp = device.xp
    if not device.runs_kernels:
        return xp.ascontiguousarray(reference(a, b), dtype=np.float32)
    c = xp.empty((m, n), dtype=np.float32)
    if m and n:
        device.launch(sgemm_launch(a, b, c, tile=tile))
    return c
