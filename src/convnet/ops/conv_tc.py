"""2-D convolution on tensor cores (issue 12): TF32 or BF16 operands, FP32
accumulation; forward with bias and ReLU fused, backward data, backward filter
(``kernels/conv_tc_forward.cu``, ``conv_tc_backward_data.cu``,
``conv_tc_backward_filter.cu``, engine in ``conv_tc_common.cuh``).

* ``forward``, ``backward_data``, ``backward_filter`` (device, geometry, arrays,
  precision "tf32" or "bf16"): on ``cpu`` the FP32 references of ``ops.conv`` with the
  operands rounded as the tensor cores round them (``round_operand``), on
  ``emu``/``cuda`` the kernels. The bias gradient has no products: ``ops.conv``'s.
* ``*_launch(es)`` builders (the same Launches on emu and cuda): 128 threads, a 128 x 128
  tile of the pass's GEMM per block (four warps of 64 x 64); backward filter splits its N*P*Q reduction
  (``plan_filter``) and adds the partials with ``ops.conv``'s ordered conv_split_sum.
* ``error_bound(n, magnitude)``: the elementwise bound that holds a pass's result to
  the exact (float64) result of the rounded operands.
"""
from __future__ import annotations

import numpy as np

from ..precision import check_precision, round_operand
from ..toolchain.launch import KernelModule, Launch
from . import conv as _conv
from ._arrays import INT32_MAX
from ._conv_geometry import Geometry, check_kernel_sizes
from .conv import _operands
from .elementwise import BLOCK, max_blocks

__all__ = ["BACKWARD_DATA", "BACKWARD_FILTER", "BLOCK_K", "BLOCK_M", "BLOCK_N", "FORWARD",
           "THREADS", "backward_data", "backward_data_launch", "backward_data_reference",
           "backward_filter", "backward_filter_launches", "backward_filter_reference",
           "error_bound", "forward", "forward_launch", "forward_reference", "plan_filter"]

BLOCK_M = 128  # GEMM rows per block (kernels/conv_tc_common.cuh: CN_TC_BM)
BLOCK_N = 128  # GEMM columns per block (CN_TC_BN)
BLOCK_K = 16   # reduction slice
THREADS = 128  # four warps
_TEMPLATE = {"tf32": 0, "bf16": 1}


def _module(kernel: str) -> KernelModule:
    return KernelModule(f"{kernel}.cu", tuple(f"{kernel}<{v}>" for v in _TEMPLATE.values()))


FORWARD = _module("conv_tc_forward")
# backward data: <precision, unit stride> (sh = sw = 1 needs no division by the stride)
BACKWARD_DATA = KernelModule("conv_tc_backward_data.cu", tuple(
    f"conv_tc_backward_data<{v}, {unit}>" for v in _TEMPLATE.values() for unit in ("true", "false")))
BACKWARD_FILTER = _module("conv_tc_backward_filter")


def _tensor_core(precision) -> str:
    precision = check_precision(precision)
    if precision not in _TEMPLATE:
        raise ValueError(f"conv2d: the tensor-core path takes precision 'tf32' or 'bf16', got "
                         f"{precision!r} (fp32 runs on ops.conv)")
    return precision


def _rounded(precision, *arrays):
    return tuple(round_operand(a, precision).astype(a.dtype, copy=False) for a in arrays)


def forward_reference(g: Geometry, x, w, b=None, relu=False, precision="tf32"):
    """``act(conv(round(x), round(w)) + b)`` (NumPy, in the arrays' dtype)."""
    xr, wr = _rounded(_tensor_core(precision), x, w)
    return _conv.forward_reference(g, xr, wr, b, relu)


def backward_data_reference(g: Geometry, dy, w, precision="tf32"):
    """dL/dx from round(dy) and round(w) (NumPy)."""
    dyr, wr = _rounded(_tensor_core(precision), dy, w)
    return _conv.backward_data_reference(g, dyr, wr)


def backward_filter_reference(g: Geometry, x, dy, precision="tf32"):
    """dL/dw from round(x) and round(dy) (NumPy)."""
    xr, dyr = _rounded(_tensor_core(precision), x, dy)
    return _conv.backward_filter_reference(g, xr, dyr)


def error_bound(n: int, magnitude):
    """The bound on |result - exact| of a pass whose every output adds ``n`` exact FP32
    products (and the bias, counted in ``n``) one by one: gamma_n * magnitude with
    gamma_n = n u / (1 - n u), u = 2^-24 (Higham, Accuracy and Stability of Numerical
    Algorithms, (3.4)), where ``magnitude`` is the same pass on |operands| in float64
    (sum |a| |b| + |bias|). With a split reduction the partial sums and their ordered
    sum together still make n additions per output. ReLU does not increase it."""
    u = 2.0 ** -24
    return np.asarray(magnitude, dtype=np.float64) * (n * u / (1 - n * u))


def forward_launch(device, g: Geometry, x, w, b, y, relu=False, precision="tf32") -> Launch:
    """The Launch writing ``act(conv(x, w) + b)`` with rounded operands into ``y``."""
    precision = _tensor_core(precision)
    cols = g.n * g.p * g.q
    grid = (-(-cols // BLOCK_N), -(-g.kg // BLOCK_M), g.groups)
    return Launch(FORWARD, f"conv_tc_forward<{_TEMPLATE[precision]}>", grid=grid, block=(THREADS,),
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


def backward_data_launch(device, g: Geometry, dy, w, dx, precision="tf32") -> Launch:
    """The Launch writing dL/dx (from rounded dy and w) into ``dx`` (every element)."""
    precision = _tensor_core(precision)
    cols = g.n * g.h * g.w
    grid = (-(-cols // BLOCK_N), -(-g.cg // BLOCK_M), g.groups)
    unit = "true" if g.stride_h == g.stride_w == 1 else "false"
    return Launch(BACKWARD_DATA, f"conv_tc_backward_data<{_TEMPLATE[precision]}, {unit}>",
                  grid=grid, block=(THREADS,), args=(dy, w, dx, *g.scalars()))


def plan_filter(device, g: Geometry, splits=None) -> tuple[int, int]:
    """(splits, chunk) of backward filter's N*P*Q reduction: ``splits=None`` chooses
    enough blocks to fill the device (``ops.conv.SPLIT_BLOCKS_PER_UNIT`` per parallel
    unit) with chunks of at least 32 slices; a given count is an upper bound. The chunk
    is a whole number of slices."""
    crs, npq = g.cg * g.r * g.s, g.n * g.p * g.q
    if splits is None:
        blocks = -(-g.kg // BLOCK_M) * -(-crs // BLOCK_N) * g.groups
        target = _conv.SPLIT_BLOCKS_PER_UNIT[device.kind] * device.parallel_units
        splits = max(1, min(-(-target // blocks), npq // (32 * BLOCK_K)))
        while splits > 1 and splits * g.k * crs > INT32_MAX:
            splits //= 2
    elif isinstance(splits, bool) or not isinstance(splits, (int, np.integer)) or splits < 1:
        raise ValueError(f"conv2d backward filter: splits must be a positive integer, got {splits!r}")
    chunk = -(-max(npq, 1) // splits)
    chunk = -(-chunk // BLOCK_K) * BLOCK_K
    splits = max(1, -(-npq // chunk))
    if splits > 1 and splits * g.k * crs > INT32_MAX:
        raise ValueError(f"conv2d backward filter: {splits} splits need a workspace past the "
                         f"kernels' 32-bit indices; use fewer")
    return splits, chunk


def backward_filter_launches(device, g: Geometry, x, dy, dw, splits: int, chunk: int,
                             workspace=None, precision="tf32") -> list[Launch]:
    """The Launches writing dL/dw into ``dw``: the split GEMM into ``dw`` (one split) or
    ``workspace`` (``splits * dw.size`` floats), then conv_split_sum in split order."""
    precision = _tensor_core(precision)
    crs = g.cg * g.r * g.s
    grid = (-(-crs // BLOCK_N), -(-g.kg // BLOCK_M), g.groups * splits)
    name = f"conv_tc_backward_filter<{_TEMPLATE[precision]}>"
    if splits == 1:
        return [Launch(BACKWARD_FILTER, name, grid=grid, block=(THREADS,),
                       args=(x, dy, dw, *g.scalars(), np.int32(chunk)))]
    count = dw.size
    if workspace is None or workspace.size < splits * count:
        raise ValueError(f"conv2d backward filter: {splits} splits need a workspace of "
                         f"{splits * count} floats")
    ws = workspace.reshape(-1)[:splits * count]
    blocks = min(-(-count // BLOCK), max_blocks(device))
    return [Launch(BACKWARD_FILTER, name, grid=grid, block=(THREADS,),
                   args=(x, dy, ws, *g.scalars(), np.int32(chunk))),
            Launch(_conv.BACKWARD_FILTER, "conv_split_sum", grid=(blocks,), block=(BLOCK,),
                   args=(ws, dw, np.int32(count), np.int32(splits)))]


def backward_data(device, g: Geometry, dy, w, precision="tf32"):
    """dL/dx from dL/dy with ``precision``'s operands on ``device``."""
    precision = _tensor_core(precision)
    dy, w = _operands(device, g, "conv2d backward", dy=dy, w=w)
    if not device.runs_kernels:
        return backward_data_reference(g, dy, w, precision)
    dx = device.xp.empty(g.x_shape, dtype=np.float32)
    if dx.size:
        check_kernel_sizes(g)
        device.launch(backward_data_launch(device, g, dy, w, dx, precision))
    return dx


def backward_filter(device, g: Geometry, x, dy, precision="tf32", splits=None):
    """dL/dw from dL/dy and the input with ``precision``'s operands on ``device``."""
    precision = _tensor_core(precision)
    x, dy = _operands(device, g, "conv2d backward", x=x, dy=dy)
    if not device.runs_kernels:
        return backward_filter_reference(g, x, dy, precision)
    xp = device.xp
    if g.n == 0:
        return xp.zeros(g.w_shape, dtype=np.float32)
    check_kernel_sizes(g)
    splits, chunk = plan_filter(device, g, splits)
    dw = xp.empty(g.w_shape, dtype=np.float32)
    workspace = xp.empty(splits * dw.size, dtype=np.float32) if splits > 1 else None
    for launch in backward_filter_launches(device, g, x, dy, dw, splits, chunk, workspace,
                                           precision):
        device.launch(launch)
    return dw
