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
covers with 16x16 tiles (51 % more positions than outputs; F(2x2): 14x14, 16 %), so
it saves 2.6x of direct's multiplies where F(2x2) saves 1.9x, not 4x against 2.25x;
its transforms' coefficients run from 1/24 to 8 (1/6 is inexact in binary), raising
the error well above F(2x2)'s, whose 0, +-1, +-1/2 are exact; and its 36 positions
need 2.25x the workspace per tile element.

Predicted by ``convnet perf`` (H100, batch 128; ``benchmarks/conv.py --predict h100``),
us for forward / backward data / backward filter, Winograd against today's direct
engine: conv3 486 / 486 / 522 against 806 / 1226 / 1324 (2.2x in all), conv4 423 /
423 / 437 against 748 / 764 / 892 (1.9x), conv5 295 / 307 / 305 against 605 / 513 /
683 (2.0x); each pass's GEMM is 70-80 % of its time, the transforms at DRAM bandwidth.

The transformed operands live in workspaces (float32, ``workspace_shapes``): the
products run on the direct engine's GEMM tiles (``conv_common.cuh``), so the speed of
the multiplies is that engine's; the price is the workspaces' traffic (the GEMM's
output M is 16/4 = 4x the output y). Not fused: the GEMM with the output transform.

Numerical error (FP32 against the float64 reference; eps32 = 2^-23). The bound the
tests hold: every element within 8 eps32 x ``error_scale`` (the algorithm run on
|operands| with |transform matrices|, i.e. the sum of the absolute values of every
term the kernels add), the factor tests/test_conv.py holds the direct kernels to
against their own sum of |terms|. Relative to direct FP32, measured on emu (2-core
CPU; Gaussian operands; the shapes of tests/test_conv_winograd.py, AlexNet's at batch
2), worst element's error in units of
eps32 x the direct sum of |terms| (forward / data / filter):
  AlexNet conv3-5, batch 2:   Winograd 1.19 / 1.04 / 2.31   direct 2.56 / 2.91 / 2.90
  36 awkward shapes:          Winograd 5.3 / 73 / 2.0       direct 1.4 / 1.6 / 1.5
and ||error||_2 / ||result||_2 in eps32: AlexNet Winograd 3.6-4.1 / 3.0-5.0 / 2.6
against direct 6.0-7.0 / 4.9-8.5 / 2.6 (the products reduce over C/groups, not
9 C/groups, so fewer roundings: Winograd is the more accurate on AlexNet); awkward
shapes 1.1 / 1.5 / 2.7 against 1.05 / 1.1 / 2.4. The awkward shapes' large
elementwise figures are results at an image's edge whose own few terms are small
while their tile's are not: the transforms cancel those exactly in exact arithmetic,
not their rounding (against ``error_scale`` the worst error is 0.72 / 0.61 / 0.39
eps32 times it, where the bound allows 8; on AlexNet at most 0.25). Relative to direct
FP32 the tests hold AlexNet's conv3-5 to ``RMS_RATIO_BOUND``: Winograd's RMS error at
most 0.75x direct's in the forward and backward data, 1.25x in backward filter.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..arguments import positive_int
from ..toolchain.launch import KernelModule, Launch, name_expression
from . import _conv_tiles, conv
from ._arrays import INT32_MAX
from ._conv_geometry import Geometry, check_kernel_sizes
from ._conv_tiles import TILES, Tile, pick_tile
from .elementwise import BLOCK, max_blocks

__all__ = ["GEMM", "IN", "OUT", "POSITIONS", "RMS_RATIO_BOUND", "FilterPlan", "backward_data",
           "backward_data_launches", "backward_filter", "backward_filter_launches",
           "check_supported", "error_scale", "forward", "forward_launches",
           "plan_filter", "supports", "tiles", "transformed", "workspace_shapes"]

POSITIONS = 16  # the transform positions of F(2x2, 3x3): 4 x 4
# Relative RMS error against direct FP32's on AlexNet's conv3-5 (tested; measured at
# batch 1: 0.58-0.60, 0.58-0.61, 1.03-1.04).
RMS_RATIO_BOUND = {"forward": 0.75, "data": 0.75, "filter": 1.25}

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


def _resident(device, tile: Tile) -> int:
    """Blocks of backward filter's winograd_gemm ``tile`` an SM holds (its registers
    and shared memory from the NVRTC report, by NVIDIA's occupancy rules, for
    ``device.arch``, else sm_90); on emu, and without NVRTC, the tile table's figure."""
    fallback = _conv_tiles.TILE_MODELS.get(device.kind, {}).get(tile, (1, 1.0))[0]
    if device.kind != "cuda":
        return fallback
    from ..perf.gpus import UnknownGPU
    from ..perf.occupancy import occupancy
    from ..toolchain.resources import kernel_resources
    try:
        found = kernel_resources(GEMM, name_expression("winograd_gemm", (*tile, True)),
                                 getattr(device, "arch", "sm_90"))
        if found.registers is None:
            return fallback
        return max(1, occupancy(getattr(device, "arch", "sm_90"), tile.threads, found.registers,
                                found.static_shared or 0).blocks_per_sm)
    except UnknownGPU:
        return fallback


def plan_filter(device, g: Geometry, tile=None, splits=None) -> FilterPlan:
    """The tile and split of backward filter's products on a kernel ``device``.

    ``splits=None`` chooses by the waves model of ``_conv_tiles.choose_tile``: the
    fewest splits of the least (waves of resident blocks) x (slices per block), with
    chunks of at least 32 slices (so the partial sums' traffic stays small next to the
    products). Where the blocks of one split already fill the device that is one split;
    on a GPU it picks counts that end in whole waves (conv3 at batch 128 on 132 SMs, two
    blocks each: 11 splits, four full waves, where 6 would run 2.2 waves in 3). A given
    count is an upper bound (chunks are whole slices). Never past the grid's 65535
    z-blocks nor the workspace's 32-bit indices."""
    _, _, t = tiles(g.n, g.p, g.q)
    batches = POSITIONS * g.groups
    tile = pick_tile(device, tile, g.kg, g.cg, batches * max(1, t // 256))
    most = 65535 // batches
    if splits is None:
        blocks = -(-g.kg // tile.bm) * -(-g.cg // tile.bn) * batches
        slots = max(1, _resident(device, tile) * device.parallel_units)
        limit = max(1, min(t // (32 * tile.bk), most))
        while limit > 1 and limit * POSITIONS * g.k * g.cg > INT32_MAX:
            limit //= 2

        def cost(s):
            slices = -(-(-(-t // s)) // tile.bk)
            return -(-blocks * s // slots) * slices, s

        splits = min(range(1, limit + 1), key=cost)
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


# --------------------------------------------------------------------------- error bound

# The transform matrices of F(2x2, 3x3) (kernels/conv_winograd.cuh), as NumPy arrays.
BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=np.float64)
G = np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]], dtype=np.float64)
AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=np.float64)


def _patches(a, th, tw, oh, ow):
    """(N, C, TH, TW, 4, 4): the 4x4 patches of a (N, C, H, W) at rows 2*th + oh ..,
    zero outside."""
    h, w = a.shape[2:]
    top, left = max(0, -oh), max(0, -ow)
    bottom = max(0, 2 * th + 2 + oh - h)
    right = max(0, 2 * tw + 2 + ow - w)
    padded = np.pad(a, ((0, 0), (0, 0), (top, bottom), (left, right)))
    r0, c0 = oh + top, ow + left
    padded = padded[:, :, r0:r0 + 2 * th + 2, c0:c0 + 2 * tw + 2]
    win = np.lib.stride_tricks.sliding_window_view(padded, (4, 4), axis=(2, 3))
    return win[:, :, ::2, ::2]


def _untile(t, p, q):
    """(N, K, TH, TW, 2, 2) tiles -> (N, K, P, Q)."""
    n, k, th, tw = t.shape[:4]
    return t.transpose(0, 1, 2, 4, 3, 5).reshape(n, k, 2 * th, 2 * tw)[:, :, :p, :q]


def error_scale(g: Geometry, pass_: str, a, b):
    """The sum of the absolute values of every term the Winograd kernels add for each
    result, in float64: ``transformed`` on |operands| with |transform matrices|
    (pass_ "forward": a = x, b = w; "data": a = dy, b = w; "filter": a = x, b = dy;
    the forward's bias not included). The kernels' rounding error is a small multiple
    of eps32 times it (a result's own direct sum of |terms| can be far smaller, at the
    image's edges, where the exact cancellation of its tile's neighbouring terms leaves
    their rounding behind)."""
    return transformed(g, pass_, a, b, absolute=True)


def transformed(g: Geometry, pass_: str, a, b, absolute: bool = False):
    """The Winograd algorithm of the kernels, in float64 NumPy, on the operands of
    ``error_scale``: with ``absolute=False`` the convolution pass itself (equal to the
    direct references up to float64 rounding: the transforms are exact), else its
    absolute-value twin."""
    check_supported(g)
    fold = np.abs if absolute else (lambda m: m)
    a = fold(np.asarray(a, dtype=np.float64))
    b = fold(np.asarray(b, dtype=np.float64))
    bt, gm, at = fold(BT), fold(G), fold(AT)
    if pass_ == "filter":
        th, tw, _ = tiles(g.n, g.p, g.q)
        v = np.einsum("ia,nctuab,jb->nctuij", bt, _patches(a, th, tw, -g.pad_h, -g.pad_w),
                      bt, optimize=True)
        d = np.einsum("ai,nktuab,bj->nktuij", at, _patches(b, th, tw, 0, 0)[..., :2, :2],
                      at, optimize=True)
        v = v.reshape(g.n, g.groups, g.cg, th, tw, 4, 4)
        d = d.reshape(g.n, g.groups, g.kg, th, tw, 4, 4)
        s = np.einsum("ngktuij,ngctuij->gkcij", d, v, optimize=True).reshape(g.k, g.cg, 4, 4)
        return np.einsum("ir,kcij,js->kcrs", gm, s, gm, optimize=True)
    if pass_ == "forward":
        filt, (out, kg, cg) = b, (g.k, g.kg, g.cg)
        (ph, pw), (oh, ow) = (g.p, g.q), (-g.pad_h, -g.pad_w)
    elif pass_ == "data":  # dy with the rotated filter, channels exchanged per group
        filt = b[:, :, ::-1, ::-1].reshape(g.groups, g.kg, g.cg, 3, 3).transpose(0, 2, 1, 3, 4)
        filt, (out, kg, cg) = filt.reshape(g.c, g.kg, 3, 3), (g.c, g.cg, g.kg)
        (ph, pw), (oh, ow) = (g.h, g.w), (g.pad_h - 2, g.pad_w - 2)
    else:
        raise ValueError(f"pass must be 'forward', 'data' or 'filter', got {pass_!r}")
    th, tw, _ = tiles(g.n, ph, pw)
    v = np.einsum("ia,nctuab,jb->nctuij", bt, _patches(a, th, tw, oh, ow), bt, optimize=True)
    u = np.einsum("ir,kcrs,js->kcij", gm, filt, gm, optimize=True)
    u = u.reshape(g.groups, kg, cg, 4, 4)
    v = v.reshape(g.n, g.groups, cg, th, tw, 4, 4)
    m = np.einsum("gkcij,ngctuij->ngktuij", u, v, optimize=True).reshape(g.n, out, th, tw, 4, 4)
    y = np.einsum("ai,nktuij,bj->nktuab", at, m, at, optimize=True)
    return _untile(y, ph, pw)
