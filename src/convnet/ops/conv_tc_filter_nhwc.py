"""Channels-last tensor-core backward filter (issue 12): ``kernels/conv_tc_backward_filter_nhwc.cu``
after the layout kernels (x and dy to channels last, rounded to the precision).

It computes exactly what ``conv_tc.backward_filter`` computes (the same split of the
N*P*Q reduction, the same summation order: bit for bit), from 16-byte copies of
channels-last operands instead of 4-byte gathers.

* ``supported(g)``: groups == 1 (any C and K), or Cg and Kg multiples of 4 (a 16-byte
  chunk: 4 channels of a pixel).
* ``layout_channels(g)``: the layouts' channels a pixel (Cx, Kx): with groups == 1, C and
  K rounded up to multiples of 4 (zero channels; the GEMM computes their rows and columns
  but stores only the real ones, so the sums are the unpadded ones bit for bit), else C, K.
* ``backward_filter_nhwc_launches(...)``: x -> xt and dy -> dyt channels last (float32,
  padded to ``layout_channels``, rounded to TF32 for "tf32"; "bf16" rounds in the GEMM,
  ``layout_rounding``);
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

__all__ = ["MODULE", "VECTOR", "backward_filter_nhwc", "backward_filter_nhwc_launches",
           "layout_channels", "layout_rounding", "supported", "workspace_shapes"]

VECTOR = 4  # channels a 16-byte copy moves
KERNEL = "conv_tc_backward_filter_nhwc"
MODULE = KernelModule(f"{KERNEL}.cu", tuple(
    name_expression(KERNEL, conv_tc._template_args(p, t)) for p in conv_tc._TEMPLATE
    for t in conv_tc.TILES))


def supported(g: Geometry) -> bool:
    """Whether the channels-last backward filter runs ``g``: groups == 1 (C and K padded
    to multiples of 4, ``layout_channels``), or Cg and Kg multiples of 4
    (``conv_tc.channels_last(g, "filter")``)."""
    return conv_tc.channels_last(g, "filter")


def layout_channels(g: Geometry) -> tuple[int, int]:
    """(Cx, Kx): the channels a pixel of the channels-last x and dy. groups == 1: C and K
    rounded up to multiples of ``VECTOR`` (the extra channels zeros); else C and K."""
    if g.groups == 1:
        return -(-g.c // VECTOR) * VECTOR, -(-g.k // VECTOR) * VECTOR
    return g.c, g.k


def layout_rounding(precision: str):
    """What the layout kernels round to for ``precision``'s GEMM: TF32 values (float32),
    or nothing for BF16, whose GEMM rounds as it packs its pairs (cvt.rn.bf16x2: the same
    values; its kk-major rows hold a pair's two values in two rows, so the layout's
    16-bit BF16 would not save the packing)."""
    return "tf32" if precision == "tf32" else None


def workspace_shapes(g: Geometry) -> dict:
    """The channels-last copies: "x" (N, H, W, Cx) and "dy" (N, P, Q, Kx), flat
    (``layout_channels``)."""
    cx, kx = layout_channels(g)
    return {"x": (g.n * g.h * g.w * cx,), "dy": (g.n * g.p * g.q * kx,)}


def _check(g: Geometry) -> None:
    if not supported(g):
        raise ValueError(f"conv2d: the channels-last tensor-core backward filter needs "
                         f"groups == 1 or Cg and Kg multiples of {VECTOR}; got groups={g.groups}, "
                         f"Cg={g.cg}, Kg={g.kg}")


def _check_sizes(g: Geometry) -> None:
    """``check_kernel_sizes`` of ``g``, and of ``g`` with the padded channels."""
    check_kernel_sizes(g)
    cx, kx = layout_channels(g)
    if (cx, kx) != (g.c, g.k):
        check_kernel_sizes(_conv.geometry((g.n, cx, g.h, g.w), (kx, cx, g.r, g.s),
                                          (g.stride_h, g.stride_w), (g.pad_h, g.pad_w), 1))


def backward_filter_nhwc_launches(device, g: Geometry, x, dy, dw, xt, dyt, splits: int,
                                  chunk: int, workspace=None, precision="tf32",
                                  tile=None, ready=()) -> list[Launch]:
    """The Launches writing dL/dw into ``dw``: x (N, C, H*W) and dy (N, K, P*Q) to
    channels last (float32, padded to ``layout_channels``, ``layout_rounding``), into ``xt``
    and ``dyt`` (``workspace_shapes``), but those named in ``ready`` ("x", "dy": already
    there, made by another pass: ``conv_tc.shares_layout``); the split GEMM into ``dw``
    (one split) or ``workspace`` (``splits * dw.size`` floats); then conv_split_sum in
    split order. ``splits``, ``chunk``: ``conv_tc.plan_filter``'s for ``tile`` (as
    ``conv_tc.filter_tile``)."""
    precision = conv_tc._tensor_core(precision)
    _check(g)
    cx, kx = layout_channels(g)
    cols = cx // g.groups * g.r * g.s  # the GEMM's columns (r, s, c < Cx / groups)
    bm, bn = conv_tc.filter_tile(device, g, tile)
    grid = (-(-cols // bn), -(-g.kg // bm), g.groups * splits)
    targs = conv_tc._template_args(precision, (bm, bn))
    rounding = layout_rounding(precision)
    layout = [_layout_ops.to_channels_last_launch(device, src, dst, g.n, rows, plane, rounding, out)
              for name, src, dst, rows, plane, out in (("x", x, xt, g.c, g.h * g.w, cx),
                                                       ("dy", dy, dyt, g.k, g.p * g.q, kx))
              if name not in ready]
    tail = (np.int32(chunk), np.int32(cx), np.int32(kx))
    gemm = Launch(MODULE, KERNEL, template_args=targs, grid=grid, block=(conv_tc.THREADS,),
                  args=(xt, dyt, dw, *g.scalars(), *tail))
    return layout + conv_tc.split_gemm_launches(device, gemm, dw, splits, workspace)


def backward_filter_nhwc(device, g: Geometry, x, dy, precision="tf32", splits=None, tile=None,
                         layouts=None):
    """dL/dw from dL/dy and the input through the channels-last kernel on ``device``
    (``splits``, ``tile``: as ``conv_tc.backward_filter``'s; ``layouts``: x's and dy's
    channels-last arrays other passes made, {"x": ..., "dy": ...}, used in place of
    laying them out again)."""
    precision = conv_tc._tensor_core(precision)
    _check(g)
    x, dy = _operands(device, g, "conv2d backward", x=x, dy=dy)
    if not device.runs_kernels:
        return conv_tc.backward_filter_reference(g, x, dy, precision)
    xp = device.xp
    if g.n == 0:
        return xp.zeros(g.w_shape, dtype=np.float32)
    _check_sizes(g)
    tile = conv_tc.filter_tile(device, g, tile)
    splits, chunk = conv_tc.plan_filter(device, g, splits, tile, precision)
    dw = xp.empty(g.w_shape, dtype=np.float32)
    workspace = xp.empty(splits * dw.size, dtype=np.float32) if splits > 1 else None
    made = layouts or {}
    ws = {k: made[k] if k in made else xp.empty(shape, dtype=np.float32)
          for k, shape in workspace_shapes(g).items()}
    for launch in backward_filter_nhwc_launches(device, g, x, dy, dw, ws["x"], ws["dy"], splits,
                                                chunk, workspace, precision, tile, tuple(made)):
        device.launch(launch)
    return dw
