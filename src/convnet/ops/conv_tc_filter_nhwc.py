"""Channels-last tensor-core backward filter (issue 12): ``kernels/conv_tc_backward_filter_nhwc.cu``
after the layout kernels (x and dy to channels last, rounded to the precision).

It computes exactly what ``conv_tc.backward_filter`` computes (the same split of the
N*P*Q reduction, the same summation order: bit for bit), from 16-byte copies of
channels-last operands instead of 4-byte gathers.

* ``supported(g)``: Cg and Kg multiples of 4 (a 16-byte chunk: 4 channels of a pixel).
* ``backward_filter_nhwc_launches(...)``: x -> xt and dy -> dyt channels last (float32,
  rounded to TF32 for "tf32"; "bf16" rounds in the GEMM, ``layout_rounding``);
  the GEMM (into ``dw``, or the split workspace); conv_split_sum in split order.
* ``backward_filter_nhwc(device, g, x, dy, precision, splits=None, tile=None)``: runs them
  on emu/cuda (the rounded reference on cpu).
"""
from __future__ import annotations

import numpy as np

from ..toolchain.launch import KernelModule, Launch, name_expression
from . import conv as _conv
from . import conv_layout as _layout_ops
from . import conv_tc
from ._conv_geometry import Geometry, check_kernel_sizes
from .conv import _operands
from .elementwise import BLOCK, max_blocks

__all__ = ["MODULE", "VECTOR", "backward_filter_nhwc", "backward_filter_nhwc_launches",
           "layout_rounding", "supported", "workspace_shapes"]

VECTOR = 4  # channels a 16-byte copy moves
KERNEL = "conv_tc_backward_filter_nhwc"
MODULE = KernelModule(f"{KERNEL}.cu", tuple(
    name_expression(KERNEL, conv_tc._template_args(p, t)) for p in conv_tc._TEMPLATE
    for t in conv_tc.TILES))


def supported(g: Geometry) -> bool:
    """Whether the channels-last backward filter runs ``g``: Cg and Kg multiples of 4."""
    return g.cg % VECTOR == 0 and g.kg % VECTOR == 0


def layout_rounding(precision: str):
    """What the layout kernels round to for ``precision``'s GEMM: TF32 values (float32),
    or nothing for BF16, whose GEMM rounds as it packs its pairs (cvt.rn.bf16x2: the same
    values; its kk-major rows hold a pair's two values in two rows, so the layout's
    16-bit BF16 would not save the packing)."""
    return "tf32" if precision == "tf32" else None


def workspace_shapes(g: Geometry) -> dict:
    """The channels-last copies: "x" (N, H, W, C) and "dy" (N, P, Q, K), flat."""
    return {"x": (g.n * g.h * g.w * g.c,), "dy": (g.n * g.p * g.q * g.k,)}


def _check(g: Geometry) -> None:
    if not supported(g):
        raise ValueError(f"conv2d: the channels-last tensor-core backward filter needs Cg and "
                         f"Kg multiples of {VECTOR}; got Cg={g.cg}, Kg={g.kg}")


def backward_filter_nhwc_launches(device, g: Geometry, x, dy, dw, xt, dyt, splits: int,
                                  chunk: int, workspace=None, precision="tf32",
                                  tile=None) -> list[Launch]:
    """The Launches writing dL/dw into ``dw``: x (N, C, H*W) and dy (N, K, P*Q) to
    channels last (float32, ``layout_rounding``), into ``xt`` and ``dyt`` (``workspace_shapes``);
    the split GEMM into ``dw`` (one split) or ``workspace`` (``splits * dw.size`` floats);
    then conv_split_sum in split order. ``splits``, ``chunk``: ``conv_tc.plan_filter``'s
    for ``tile`` (as ``conv_tc.filter_tile``)."""
    precision = conv_tc._tensor_core(precision)
    _check(g)
    crs = g.cg * g.r * g.s
    bm, bn = conv_tc.filter_tile(device, g, tile)
    grid = (-(-crs // bn), -(-g.kg // bm), g.groups * splits)
    targs = conv_tc._template_args(precision, (bm, bn))
    rounding = layout_rounding(precision)
    layout = [_layout_ops.to_channels_last_launch(device, x, xt, g.n, g.c, g.h * g.w, rounding),
              _layout_ops.to_channels_last_launch(device, dy, dyt, g.n, g.k, g.p * g.q, rounding)]
    if splits == 1:
        return layout + [Launch(MODULE, KERNEL, template_args=targs, grid=grid, block=(conv_tc.THREADS,),
                                args=(xt, dyt, dw, *g.scalars(), np.int32(chunk)))]
    count = dw.size
    if workspace is None or workspace.size < splits * count:
        raise ValueError(f"conv2d backward filter: {splits} splits need a workspace of "
                         f"{splits * count} floats")
    ws = workspace.reshape(-1)[:splits * count]
    blocks = min(-(-count // BLOCK), max_blocks(device))
    return layout + [Launch(MODULE, KERNEL, template_args=targs, grid=grid, block=(conv_tc.THREADS,),
                            args=(xt, dyt, ws, *g.scalars(), np.int32(chunk))),
                     Launch(_conv.BACKWARD_FILTER, "conv_split_sum", grid=(blocks,), block=(BLOCK,),
                            args=(ws, dw, np.int32(count), np.int32(splits)))]


def backward_filter_nhwc(device, g: Geometry, x, dy, precision="tf32", splits=None, tile=None):
    """dL/dw from dL/dy and the input through the channels-last kernel on ``device``
    (``splits``, ``tile``: as ``conv_tc.backward_filter``'s)."""
    precision = conv_tc._tensor_core(precision)
    _check(g)
    x, dy = _operands(device, g, "conv2d backward", x=x, dy=dy)
    if not device.runs_kernels:
        return conv_tc.backward_filter_reference(g, x, dy, precision)
    xp = device.xp
    if g.n == 0:
        return xp.zeros(g.w_shape, dtype=np.float32)
    check_kernel_sizes(g)
    tile = conv_tc.filter_tile(device, g, tile)
    splits, chunk = conv_tc.plan_filter(device, g, splits, tile, precision)
    dw = xp.empty(g.w_shape, dtype=np.float32)
    workspace = xp.empty(splits * dw.size, dtype=np.float32) if splits > 1 else None
    ws = {k: xp.empty(shape, dtype=np.float32) for k, shape in workspace_shapes(g).items()}
    for launch in backward_filter_nhwc_launches(device, g, x, dy, dw, ws["x"], ws["dy"], splits,
                                                chunk, workspace, precision, tile):
        device.launch(launch)
    return dw
