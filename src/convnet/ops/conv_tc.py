"""2-D convolution forward on tensor cores (issue 12): TF32 or BF16 operands, FP32
accumulation, bias and ReLU fused (``kernels/conv_tc_forward.cu``).

* ``forward(device, g, x, w, b, relu, precision)``: ``precision`` "tf32" or "bf16"
  (``convnet.precision``); on ``cpu`` the reference with the operands rounded as the
  tensor cores round them (``forward_reference``), on ``emu``/``cuda`` the kernel.
* ``forward_launch(device, g, x, w, b, y, relu, precision)``: the Launch (same on emu
  and cuda): 128 threads, a 64 x 64 output tile per block, grid
  (ceil(N*P*Q / 64), ceil(Kg / 64), groups).
* ``error_bound(g, x, w, b, precision)``: the elementwise bound that holds the kernel's
  result to the exact (float64) convolution of the rounded operands.

The backward passes of a "tf32"/"bf16" convolution run on the FP32 engine
(``ops.conv``) for now: tensor-core backward data and filter kernels are not written.
"""
from __future__ import annotations

import numpy as np

from ..precision import check_precision, round_operand
from ..toolchain.launch import KernelModule, Launch
from ._conv_geometry import Geometry, check_kernel_sizes
from .conv import _operands, forward_reference as _fp32_reference

__all__ = ["BLOCK_M", "BLOCK_N", "MODULE", "THREADS", "error_bound", "forward", "forward_launch",
           "forward_reference"]

BLOCK_M = 64   # output channels per block
BLOCK_N = 64   # output columns (n, p, q) per block
THREADS = 128  # four warps
_TEMPLATE = {"tf32": 0, "bf16": 1}
MODULE = KernelModule("conv_tc_forward.cu", tuple(f"conv_tc_forward<{v}>" for v in _TEMPLATE.values()))


def _tensor_core(precision) -> str:
    precision = check_precision(precision)
    if precision not in _TEMPLATE:
        raise ValueError(f"conv2d: the tensor-core path takes precision 'tf32' or 'bf16', got "
                         f"{precision!r} (fp32 runs on ops.conv)")
    return precision


def forward_reference(g: Geometry, x, w, b=None, relu=False, precision="tf32"):
    """``act(conv(round(x), round(w)) + b)`` (NumPy): the operands rounded as the tensor
    cores round them, then the FP32 engine's reference in the arrays' dtype."""
    precision = _tensor_core(precision)
    xr = round_operand(x, precision).astype(x.dtype, copy=False)
    wr = round_operand(w, precision).astype(w.dtype, copy=False)
    return _fp32_reference(g, xr, wr, b, relu)


def error_bound(g: Geometry, x, w, b=None, precision="tf32"):
    """|kernel - exact(rounded operands)| elementwise is at most this (float64 array of
    the output's shape): products of rounded operands are exact in FP32 and the kernel
    adds Cg*R*S of them and the bias one by one, so with u = 2^-24 and n = Cg*R*S + 1
    additions the error is at most gamma_n = n u / (1 - n u) times sum |w| |x| + |b|
    (Higham, Accuracy and Stability, (3.4)); ReLU does not increase it."""
    precision = _tensor_core(precision)
    xr = np.abs(round_operand(x, precision).astype(np.float64))
    wr = np.abs(round_operand(w, precision).astype(np.float64))
    mag = _fp32_reference(g, xr, wr, None if b is None else np.abs(b.astype(np.float64)), False)
    n = g.cg * g.r * g.s + 1
    u = 2.0 ** -24
    return mag * (n * u / (1 - n * u))


def forward_launch(device, g: Geometry, x, w, b, y, relu=False, precision="tf32") -> Launch:
    """The Launch writing ``act(conv(x, w) + b)`` with rounded operands into ``y``."""
    precision = _tensor_core(precision)
    cols = g.n * g.p * g.q
    grid = (-(-cols // BLOCK_N), -(-g.kg // BLOCK_M), g.groups)
    return Launch(MODULE, f"conv_tc_forward<{_TEMPLATE[precision]}>", grid=grid, block=(THREADS,),
                  args=(x, w, w if b is None else b, y, *g.scalars(),
                        np.int32(b is not None), np.int32(bool(relu))))


def forward(device, g: Geometry, x, w, b=None, relu=False, precision="tf32"):
    """``act(conv(x, w) + b)`` with ``precision``'s operands on ``device``."""
    precision = _tensor_core(precision)
    x, w, b = _operands(device, g, "conv2d", x=x, w=w, b=b)
    if not device.runs_kernels:
        return forward_reference(g, x, w, b, relu, precision)
    y = device.xp.empty(g.y_shape, dtype=np.float32)
    if y.size:
        check_kernel_sizes(g)
        device.launch(forward_launch(device, g, x, w, b, y, relu, precision))
    return y

