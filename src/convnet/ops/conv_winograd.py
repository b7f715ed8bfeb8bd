"""Winograd F(2x2, 3x3) for 3x3 stride-1 convolutions in FP32: forward with the fused
bias + ReLU epilogue, backward data, backward filter (issue 12, part 3).

The same convolution as ``ops.conv`` (PyTorch's conventions, any padding, groups);
``supports(g)`` says whether a ``Geometry`` qualifies (3x3 filters, stride 1). On
``cpu`` the entry points return the direct NumPy references of ``ops.conv`` (the
ground truth); on ``emu``/``cuda`` they run four launches per pass:

* forward: ``winograd_filter`` (U = G w G^T, 16 x K x Cg), ``winograd_input``
  (V = B^T d B of every 4x4 input patch, 16 x C x T, T = N * ceil(P/2) * ceil(Q/2)),
  ``winograd_gemm`` (M = U V per position and group, 16 x K x T),
  ``winograd_output`` (y = act(A^T M A + b), the epilogue fused);
* backward data: the same four on dy with the filter rotated by 180 degrees and its
  channels exchanged (``winograd_filter`` with flip=1, no extra pass) and the input
  offset by pad - 2 (so the correlation covers the full H x W);
* backward filter: ``winograd_input`` of x, ``winograd_grad`` (A dY A^T of every 2x2
  tile of dy), ``winograd_gemm`` reducing over the tiles (split in chunks over blocks
  that fill the GPU, ``plan_filter``) and ``winograd_filter_out`` (the splits summed
  in order, then G^T S G). Deterministic: no atomics.

Why F(2x2, 3x3) and not F(4x4, 3x3): AlexNet's 3x3 layers are 13x13, which F(4x4)
covers with 16x16 (51 % of the tiles' work wasted, 2.6x fewer multiplies than direct
where F(2x2) gives 1.9x), its transforms have +-2, +-1/2 and 1/4 (error growing ~10x
faster than F(2x2)'s, whose coefficients are 0, +-1, +-1/2, all exact), and its 36
positions need 2.25x the workspace per tile element.

The transformed operands live in workspaces (float32, ``workspace_shapes``): the
products run on the direct engine's GEMM tiles (``conv_common.cuh``), so the speed of
the multiplies is that engine's; the price is the workspaces' traffic (the GEMM's
output M is 16/4 = 4x the output y). Not fused: the GEMM with the output transform.

Numerical error (FP32 against the float64 reference; ``EPS32`` = 2^-23): every
element of a kernel result stays within ``ERROR_FACTOR`` x 8 eps32 x the sum of the
absolute values of its terms (the same convolution of |x| and |w|, as tests/test_conv.py
holds the direct kernels to 8 eps32 x that sum) on Gaussian operands: the transforms
add up to 9 terms with coefficients +-1, +-1/2 before and after the products, which
enlarges both the rounded sums and the cancellations. Measured (emu, 2-core CPU):
see ``tests/test_conv_winograd.py`` and the issue note; the worst error over AlexNet's
conv3-5 shapes and 36 seeded awkward shapes, in units of eps32 x that sum, was
forward 0.84 / data 0.81 / filter 2.3 for Winograd against 0.37 / 0.35 / 0.75 for
the direct kernels. The bound is not elementwise-rigorous for adversarial operands (a
term's transform can cancel where the direct sum has no large term); it holds for
data without such structure, as the tests check.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..arguments import positive_int
from ..toolchain.launch import KernelModule, Launch, name_expression
from . import conv
from ._arrays import INT32_MAX
from ._conv_geometry import Geometry, check_kernel_sizes
from ._conv_tiles import TILES, Tile, pick_tile
from .elementwise import BLOCK, max_blocks

__all__ = ["ERROR_FACTOR", "FilterPlan", "GEMM", "IN", "OUT", "POSITIONS", "backward_data",
           "backward_data_launches", "backward_filter", "backward_filter_launches",
           "check_supported", "forward", "forward_launches", "plan_filter", "supports",
           "tiles", "workspace_shapes"]

POSITIONS = 16  # the transform positions of F(2x2, 3x3): 4 x 4
# The tests' tolerance in units of the direct kernels' (8 eps32 x the sum of |terms|).
ERROR_FACTOR = 4

IN = KernelModule("conv_winograd_in.cu", ("winograd_input", "winograd_filter", "winograd_grad"))
OUT = KernelModule("conv_winograd_out.cu", ("winograd_output", "winograd_filter_out"))
GEMM = KernelModule("conv_winograd_gemm.cu",
                    tuple(name_expression("winograd_gemm", (*t, kmajor))
                          for t in TILES for kmajor in (False, True)))


# --------------------------------------------------------------------------- geometry

def supports(g: Geometry) -> bool:
    """Whether Winograd F(2x2, 3x3) computes ``g``: 3x3 filters at stride 1."""
    return g.r == 3 and g.s == 3 and g.stride_h == 1 and g.stride_w == 1


def check_supported(g: Geometry) -> None:
    """ValueError unless ``supports(g)``."""
    if not supports(g):
        raise ValueError(f"conv2d: algorithm='winograd' takes 3x3 filters at stride 1, got "
                         f"{g.r}x{g.s} filters at stride ({g.stride_h}, {g.stride_w}); use "
                         f"algorithm='direct'")


def tiles(n: int, p: int, q: int) -> tuple[int, int, int]:
    """(TH, TW, T): the 2x2 output tiles of an n x p x q output."""
    th, tw = -(-p // 2), -(-q // 2)
    return th, tw, n * th * tw


def workspace_shapes(g: Geometry, pass_: str, splits: int = 1) -> dict[str, tuple]:
    """The float32 workspaces of one pass ("forward", "data" or "filter"), by name."""
    _, _, t = tiles(g.n, g.p, g.q)
    if pass_ == "forward":
        return {"u": (POSITIONS, g.k, g.cg), "v": (POSITIONS, g.c, t), "m": (POSITIONS, g.k, t)}
    if pass_ == "data":
        _, _, td = tiles(g.n, g.h, g.w)
        return {"u": (POSITIONS, g.c, g.kg), "v": (POSITIONS, g.k, td),
                "m": (POSITIONS, g.c, td)}
    if pass_ == "filter":
        return {"v": (POSITIONS, g.c, t), "d": (POSITIONS, g.k, t),
                "s": (splits, POSITIONS, g.k, g.cg)}
    raise ValueError(f"pass must be 'forward', 'data' or 'filter', got {pass_!r}")


def _check_sizes(g: Geometry, shapes: dict) -> None:
    check_kernel_sizes(g)
    for name, shape in shapes.items():
        if int(np.prod(shape)) > INT32_MAX:
            raise ValueError(f"conv2d (winograd): the workspace {name} {shape} holds more than "
                             f"2**31 - 1 floats (32-bit indices); split the batch "
                             f"(x {g.x_shape}, w {g.w_shape})")


def _pointwise(device, module, kernel, count, *args) -> Launch:
    """A grid-stride launch of ``kernel`` over ``count`` items."""
    blocks = max(1, min(-(-count // BLOCK), max_blocks(device)))
    return Launch(module, kernel, grid=(blocks,), block=(BLOCK,), args=args)


def _gemm(device, tile, kmajor, a, b, c, rows, cols, kd, lda, bj, bk, ldc, groups, splits,
          chunk, a_xi, a_g, b_xi, b_g, c_split, c_xi, c_g) -> Launch:
    i32 = np.int32
    tile = pick_tile(device, tile, rows, cols, POSITIONS * groups * splits)
    grid = (-(-cols // tile.bn), -(-rows // tile.bm), POSITIONS * groups * splits)
    return Launch(GEMM, "winograd_gemm", grid=grid, block=(tile.threads,),
                  args=(a, b, c, *(i32(v) for v in (rows, cols, kd, lda, bj, bk, ldc, groups,
                                                    chunk, a_xi, a_g, b_xi, b_g, c_split,
                                                    c_xi, c_g))),
                  template_args=(*tile, bool(kmajor)))


# --------------------------------------------------------------------------- launches

def forward_launches(device, g: Geometry, x, w, b, y, u, v, m, relu=False,
                     tile=None) -> list[Launch]:
    """The four Launches writing ``act(conv(x, w) + b)`` into ``y`` through the
    workspaces u, v, m (``workspace_shapes(g, "forward")``)."""
    i32 = np.int32
    th, tw, t = tiles(g.n, g.p, g.q)
    return [
        _pointwise(device, IN, "winograd_filter", g.k * g.cg, w, u, i32(g.k), i32(g.cg),
                   i32(g.groups), i32(0)),
        _pointwise(device, IN, "winograd_input", g.c * t, x, v, i32(g.n), i32(g.c), i32(g.h),
                   i32(g.w), i32(th), i32(tw), i32(-g.pad_h), i32(-g.pad_w)),
        _gemm(device, tile, False, u, v, m, g.kg, t, g.cg, g.cg, 1, t, t, g.groups, 1, g.cg,
              g.k * g.cg, g.kg * g.cg, g.c * t, g.cg * t, 0, g.k * t, g.kg * t),
        _pointwise(device, OUT, "winograd_output", g.k * t, m, y if b is None else b, y,
                   i32(g.n), i32(g.k), i32(g.p), i32(g.q), i32(th), i32(tw),
                   i32(b is not None), i32(bool(relu))),
    ]


def backward_data_launches(device, g: Geometry, dy, w, dx, u, v, m, tile=None) -> list[Launch]:
    """The four Launches writing dL/dx into ``dx`` (every element) through the
    workspaces u, v, m (``workspace_shapes(g, "data")``): a Winograd correlation of dy
    with the rotated, channel-exchanged filter, offset by pad - 2."""
    i32 = np.int32
    th, tw, t = tiles(g.n, g.h, g.w)
    return [
        _pointwise(device, IN, "winograd_filter", g.k * g.cg, w, u, i32(g.k), i32(g.cg),
                   i32(g.groups), i32(1)),
        _pointwise(device, IN, "winograd_input", g.k * t, dy, v, i32(g.n), i32(g.k), i32(g.p),
                   i32(g.q), i32(th), i32(tw), i32(g.pad_h - 2), i32(g.pad_w - 2)),
        _gemm(device, tile, False, u, v, m, g.cg, t, g.kg, g.kg, 1, t, t, g.groups, 1, g.kg,
              g.c * g.kg, g.cg * g.kg, g.k * t, g.kg * t, 0, g.c * t, g.cg * t),
        _pointwise(device, OUT, "winograd_output", g.c * t, m, dx, dx, i32(g.n), i32(g.c),
                   i32(g.h), i32(g.w), i32(th), i32(tw), i32(0), i32(0)),
    ]


class FilterPlan(NamedTuple):
    """Backward filter's GEMM tile and its reduction over the T tiles in ``splits``
    chunks of ``chunk`` (a multiple of the tile's BK)."""

    tile: Tile
    splits: int
    chunk: int


def plan_filter(device, g: Geometry, tile=None, splits=None) -> FilterPlan:
    """The tile and split of backward filter's products on a kernel ``device``:
    ``splits=None`` fills the device (``conv.SPLIT_BLOCKS_PER_UNIT`` blocks per
    parallel unit) with chunks of at least 32 slices; a given count is an upper bound.
    Never past the grid's 65535 z-blocks nor the workspace's 32-bit indices."""
    _, _, t = tiles(g.n, g.p, g.q)
    batches = POSITIONS * g.groups
    tile = pick_tile(device, tile, g.kg, g.cg, batches * max(1, t // 256))
    most = 65535 // batches
    if splits is None:
        blocks = -(-g.kg // tile.bm) * -(-g.cg // tile.bn) * batches
        target = conv.SPLIT_BLOCKS_PER_UNIT[device.kind] * device.parallel_units
        splits = max(1, min(-(-target // blocks), t // (32 * tile.bk), most))
        while splits > 1 and splits * POSITIONS * g.k * g.cg > INT32_MAX:
            splits //= 2
    else:
        splits = positive_int(splits, "conv2d backward filter (winograd): splits")
    chunk = -(-t // splits)
    chunk = -(-chunk // tile.bk) * tile.bk
    splits = -(-t // chunk)
    if splits > most or splits * POSITIONS * g.k * g.cg > INT32_MAX:
        raise ValueError(f"conv2d backward filter (winograd): {splits} splits exceed the grid "
                         f"or the workspace's 32-bit indices; use fewer")
    return FilterPlan(tile, splits, chunk)


def backward_filter_launches(device, g: Geometry, x, dy, dw, v, d, s,
                             plan: FilterPlan) -> list[Launch]:
    """The four Launches writing dL/dw into ``dw`` through the workspaces v, d, s
    (``workspace_shapes(g, "filter", plan.splits)``)."""
    i32 = np.int32
    th, tw, t = tiles(g.n, g.p, g.q)
    kc = g.k * g.cg
    return [
        _pointwise(device, IN, "winograd_input", g.c * t, x, v, i32(g.n), i32(g.c), i32(g.h),
                   i32(g.w), i32(th), i32(tw), i32(-g.pad_h), i32(-g.pad_w)),
        _pointwise(device, IN, "winograd_grad", g.k * t, dy, d, i32(g.n), i32(g.k), i32(g.p),
                   i32(g.q), i32(th), i32(tw)),
        _gemm(device, plan.tile, True, d, v, s, g.kg, g.cg, t, t, t, 1, g.cg, g.groups,
              plan.splits, plan.chunk, g.k * t, g.kg * t, g.c * t, g.cg * t,
              POSITIONS * kc, kc, g.kg * g.cg),
        _pointwise(device, OUT, "winograd_filter_out", kc, s, dw, i32(kc), i32(plan.splits)),
    ]


# --------------------------------------------------------------------------- on a device

def _workspaces(device, g, pass_, splits=1) -> dict:
    shapes = workspace_shapes(g, pass_, splits)
    _check_sizes(g, shapes)
    return {name: device.xp.empty(shape, dtype=np.float32) for name, shape in shapes.items()}


def forward(device, g: Geometry, x, w, b=None, relu=False, tile=None):
    """``act(conv(x, w) + b)`` on ``device`` by Winograd (the direct reference on cpu)."""
    check_supported(g)
    x, w, b = conv._operands(device, g, "conv2d", x=x, w=w, b=b)
    if not device.runs_kernels:
        return conv.forward_reference(g, x, w, b, relu)
    y = device.xp.empty(g.y_shape, dtype=np.float32)
    if y.size:
        ws = _workspaces(device, g, "forward")
        for launch in forward_launches(device, g, x, w, b, y, ws["u"], ws["v"], ws["m"],
                                       relu, tile):
            device.launch(launch)
    return y


def backward_data(device, g: Geometry, dy, w, tile=None):
    """dL/dx from dL/dy on ``device`` by Winograd (the direct reference on cpu)."""
    check_supported(g)
    dy, w = conv._operands(device, g, "conv2d backward", dy=dy, w=w)
    if not device.runs_kernels:
        return conv.backward_data_reference(g, dy, w)
    dx = device.xp.empty(g.x_shape, dtype=np.float32)
    if dx.size:
        ws = _workspaces(device, g, "data")
        for launch in backward_data_launches(device, g, dy, w, dx, ws["u"], ws["v"], ws["m"],
                                             tile):
            device.launch(launch)
    return dx


def backward_filter(device, g: Geometry, x, dy, tile=None, splits=None):
    """dL/dw from dL/dy and the input on ``device`` by Winograd (the direct reference on
    cpu)."""
    check_supported(g)
    x, dy = conv._operands(device, g, "conv2d backward", x=x, dy=dy)
    if not device.runs_kernels:
        return conv.backward_filter_reference(g, x, dy)
    if g.n == 0:
        return device.xp.zeros(g.w_shape, dtype=np.float32)
    plan = plan_filter(device, g, tile, splits)
    ws = _workspaces(device, g, "filter", plan.splits)
    dw = device.xp.empty(g.w_shape, dtype=np.float32)
    for launch in backward_filter_launches(device, g, x, dy, dw, ws["v"], ws["d"], ws["s"], plan):
        device.launch(launch)
    return dw
