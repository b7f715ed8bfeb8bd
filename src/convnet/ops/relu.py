"""ReLU: ``y = max(x, 0)``; backward ``dx = dy * (y > 0)`` from the saved output.

``forward(device, x)`` / ``backward(device, y, dy)`` take and return raw arrays of
``device``: on ``cpu`` they run the NumPy references (any float dtype, float64 for
gradient checks); on ``emu``/``cuda`` they launch ``kernels/relu.cu`` (float32 only;
strided inputs are made contiguous first; empty arrays launch nothing).
"""
from __future__ import annotations

import numpy as np

from ..toolchain.launch import KernelModule, Launch
from ._arrays import check_same_shape, kernel_array
from .elementwise import BLOCK, grid_for

MODULE = KernelModule("relu.cu", ("relu_forward", "relu_backward"))


# --------------------------------------------------------------------------- references

def forward_reference(x: np.ndarray) -> np.ndarray:
    """``x > 0 ? x : 0`` elementwise, in x's dtype; NaN stays NaN, -0.0 gives +0.0 (as the kernel)."""
    return relu_in_place(x.copy())


def relu_in_place(y: np.ndarray) -> np.ndarray:
    """``forward_reference`` written over ``y`` (two passes, no temporaries): maximum(0, y)
    keeps NaN (its first operand wins only where ``0 >= y``), and + 0 turns the -0.0 it
    keeps into +0.0."""
    zero = y.dtype.type(0)
    np.maximum(zero, y, out=y)
    y += zero
    return y


# The backward masks blocks of this many elements in turn (its masks stay in cache).
BLOCK_ELEMENTS = 1 << 15


def backward_reference(y: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """``y > 0 ? dy : 0`` elementwise, in dy's dtype: dy's bits and-ed with an all-ones
    or all-zeros mask (+0.0 where masked, NaN in dy included; 2-2.5x as fast as
    ``np.where``), block by block."""
    bits = np.dtype(f"u{dy.dtype.itemsize}") if dy.dtype.itemsize in (2, 4, 8) else None
    if bits is None:                                    # float128 and the like
        return np.where(y > 0, dy, dy.dtype.type(0))
    dx = np.empty(dy.shape, dy.dtype)
    yf, dyf, dxf = y.reshape(-1), dy.reshape(-1).view(bits), dx.reshape(-1).view(bits)
    size = min(dxf.size, BLOCK_ELEMENTS)
    positive, mask = np.empty(size, bool), np.empty(size, bits)
    for i in range(0, dxf.size, BLOCK_ELEMENTS):
        block = slice(i, i + BLOCK_ELEMENTS)
        n = dxf[block].size
        np.greater(yf[block], 0, out=positive[:n])
        np.negative(positive[:n], out=mask[:n], dtype=bits, casting="unsafe")  # 0 or ~0
        np.bitwise_and(dyf[block], mask[:n], out=dxf[block])
    return dx


# --------------------------------------------------------------------------- launches

def forward_launch(device, x, y) -> Launch:
    return Launch(MODULE, "relu_forward", grid=(grid_for(device, x.size),), block=(BLOCK,),
                  args=(x, y, np.int64(x.size)))


def backward_launch(device, y, dy, dx) -> Launch:
    return Launch(MODULE, "relu_backward", grid=(grid_for(device, y.size),), block=(BLOCK,),
                  args=(y, dy, dx, np.int64(y.size)))


# --------------------------------------------------------------------------- on a device

def forward(device, x):
    if not device.runs_kernels:
        return forward_reference(x)
    x = kernel_array(device, x, "relu", "x")
    y = device.xp.empty_like(x)
    if x.size:
        device.launch(forward_launch(device, x, y))
    return y


def backward(device, y, dy):
    check_same_shape("relu backward", y=y, dy=dy)
    if not device.runs_kernels:
        return backward_reference(y, dy)
    y = kernel_array(device, y, "relu backward", "the saved output y")
    dy = kernel_array(device, dy, "relu backward", "the gradient dy")
    dx = device.xp.empty_like(dy)
    if dy.size:
        device.launch(backward_launch(device, y, dy, dx))
    return dx
