"""Helpers shared by the elementwise op families (relu, dropout).

Launch shape of an elementwise kernel: 1-D, ``BLOCK`` threads a block, each thread
taking groups of ``GROUP`` consecutive elements in a grid-stride loop; as many
blocks as cover the array once, capped at ``MAX_BLOCKS`` (on an H100, 132 SMs x
2048 resident threads is 1056 blocks of 256, so the cap is about four waves; larger
arrays are covered by the grid-stride loop, which keeps the grid small on ``emu``).
"""
from __future__ import annotations

import numpy as np

BLOCK = 256
GROUP = 4          # elements per thread per loop trip (one float4)
MAX_BLOCKS = 4096


def grid_for(n: int) -> int:
    """The number of blocks for an elementwise kernel over ``n`` elements (n >= 1)."""
    return max(1, min(-(-int(n) // (BLOCK * GROUP)), MAX_BLOCKS))


def kernel_array(device, array, op: str, what: str = "input"):
    """``array`` as the kernels of ``device`` take it, or a clear error.

    Kernels take float32 only: any other dtype is a TypeError naming it (the NumPy
    references on ``cpu`` take any float dtype). A non-contiguous array (a strided
    view) is copied to a C-contiguous one; a contiguous view with a misaligned start
    (``x[1:]``) is passed as it is, which the kernels handle.
    """
    if not device.owns(array):
        raise TypeError(f"{op}: {what} is a {type(array).__module__}.{type(array).__name__}, "
                        f"not an array of device {device.name!r}")
    if array.dtype != np.float32:
        raise TypeError(f"{op}: the {device.kind} kernels take float32, but {what} has dtype "
                        f"{array.dtype}; convert it first (the cpu device runs any float dtype)")
    if not array.flags.c_contiguous:
        array = device.xp.ascontiguousarray(array)
    if isinstance(array, np.ndarray) and not array.flags.aligned:
        array = array.copy()  # a float32 not on a 4-byte boundary (host buffers only)
    return array


def check_same_shape(op: str, **arrays) -> None:
    shapes = {name: tuple(a.shape) for name, a in arrays.items()}
    if len(set(shapes.values())) > 1:
        described = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise ValueError(f"{op}: shapes differ: {described}")
