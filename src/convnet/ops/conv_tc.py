"""2-D convolution on tensor cores (issue 12): TF32 or BF16 operands, FP32
accumulation; forward with bias and ReLU fused, backward data, backward filter
(``kernels/conv_tc_forward.cu``, ``conv_tc_backward_data.cu``,
``conv_tc_backward_filter.cu``, engine in ``conv_tc_common.cuh``).

* ``forward``, ``backward_data``, ``backward_filter`` (device, geometry, arrays,
  precision "tf32" or "bf16"): on ``cpu`` the FP32 references of ``ops.conv`` with the
  operands rounded as the tensor cores round them (``round_operand``), on
  ``emu``/``cuda`` the kernels. The bias gradient has no products: ``ops.conv``'s.
* ``*_launch(es)`` builders (the same Launches on emu and cuda): 128 threads, a tile of
  the pass's GEMM per block, one of ``TILES`` ((rows, columns): 128 x 128 as four warps
  of 64 x 64, 128 x 96 as four of 64 x 48, or 64 x 128 as four of 32 x 64, for groups
  of few rows such as conv2's 48 channels); ``tile=None`` takes ``choose_tile``'s (a
  waves model), the perf chooser passes its own per pass. Backward filter splits its
  N*P*Q reduction (``plan_filter``) and adds the partials with ``ops.conv``'s ordered
  conv_split_sum.
* ``error_bound(n, magnitude)``: the elementwise bound that holds a pass's result to
  the exact (float64) result of the rounded operands.
* Channels-last (``kernels/conv_tc_forward_nhwc.cu``, ``conv_tc_backward_filter_nhwc.cu``
  after ``ops.conv_layout``'s layout kernels, which round the operands as they move
  them): where ``channels_last`` allows and ``prefers_channels_last`` says, each pass
  runs so (``layout="nchw"|"nhwc"`` forces one); backward data at unit stride is the
  forward convolution of dy with the flipped filter (``data_geometry``); backward
  filter takes the arrays forward and backward data laid out, in either precision
  (``layouts=``, ``shares_layout``).
"""
from __future__ import annotations

import numpy as np

from ..precision import check_precision, round_operand
from ..toolchain.launch import KernelModule, Launch, name_expression
from . import conv as _conv
from . import conv_layout as _layout_ops
from ._arrays import INT32_MAX
from ._conv_geometry import Geometry, check_kernel_sizes
from .conv import _operands
from .elementwise import BLOCK, max_blocks

__all__ = ["BACKWARD_DATA", "BACKWARD_FILTER", "BACKWARD_FILTER_NHWC", "BLOCK_K", "BLOCK_M",
           "BLOCK_N", "FORWARD", "FORWARD_NHWC", "FORWARD_WGMMA", "LAYOUTS", "THREADS", "TILES",
           "WGMMA", "WGMMA_TILES", "backward_data",
           "backward_data_launch", "backward_data_nhwc_launches", "backward_data_reference",
           "backward_filter", "backward_filter_launches", "backward_filter_nhwc",
           "backward_filter_nhwc_launches", "backward_filter_reference", "channels_last",
           "choose_tile", "data_geometry", "error_bound", "filter_layout_channels",
           "filter_tile", "filter_vector", "filter_workspace_shapes", "forward", "forward_launch",
           "forward_nhwc_launches", "forward_reference", "is_wgmma", "launch_tile",
           "nhwc_workspace_shapes", "wgmma_shared_bytes",
           "plan_filter", "prefers_channels_last", "shares_layout", "split_gemm_launches"]

BLOCK_M = 128  # GEMM rows per block of the tallest tile
BLOCK_N = 128  # GEMM columns per block of the widest tile
BLOCK_K = 16   # reduction slice
THREADS = 128  # four warps
_TEMPLATE = {"tf32": 0, "bf16": 1}
# (rows, columns) of a block's tile: the kernels' <.., BN, .., BM> instantiations (BM's
# default 128 is left out of the names)
TILES = ((128, 128), (128, 96), (64, 128))
# The same tiles on Hopper's warpgroup engine (kernels/conv_tc_forward_wgmma.cu, sm_90a):
# the channels-last forward and backward-data GEMM runs by wgmma; every other kernel of
# the pass (layouts, NCHW forms, backward filter) runs as on the plain tile.
WGMMA = "wgmma"
WGMMA_TILES = tuple((bm, bn, WGMMA) for bm, bn in TILES)
WGMMA_STAGES = 4       # CN_WG_STAGES
_WGMMA_LBO = 144       # CnTcWgEngine::LBO: bytes between a row's 16-byte chunks
# per tile: (resident blocks per SM on sm_80/sm_90 by the NVRTC register report: 2 for
# the 128-row tiles (up to 254 registers), 4 for 64 x 128 (at most 128); the rate of a resident block relative to 128 x 128's: 0.7 for 128 x 96,
# from the model's predictions (H100 b128 conv3: the 96 tile's 1.71 waves lost to 128's
# 1.28 in every pass, TF32 backward data 203 against 178 us: issue- and shared-bound,
# 4/3 the loader's instructions and shared-memory wavefronts per mma), 0.6 for 64 x 128
# (the same B copies for half the rows: 1.5x the fragment reads and about 1.6x the
# loader's instructions per mma)); emu: one block at a time, the same rate per column
_TILE_MODEL = {"cuda": {(128, 128): (2, 1.0), (128, 96): (2, 0.7), (64, 128): (4, 0.6)},
               "emu": {(128, 128): (1, 1.0), (128, 96): (1, 1.0), (64, 128): (1, 1.0)}}


def _template_args(precision: str, tile, *extra) -> tuple:
    """A conv_tc kernel's template arguments: <precision, BN, *extra[, BM]> (BM only when
    it is not the default 128)."""
    bm, bn = tile
    return (_TEMPLATE[precision], bn, *extra, *(() if bm == BLOCK_M else (bm,)))


def _module(kernel: str, extra=((),)) -> KernelModule:
    return KernelModule(f"{kernel}.cu", tuple(
        name_expression(kernel, _template_args(p, t, *e)) for p in _TEMPLATE for t in TILES
        for e in extra))


FORWARD = _module("conv_tc_forward")
# channels-last operands (16 channels a slice): forward, and backward data at unit stride
# <precision, BN, small[, BM]> (small: C <= 4 padded to one 16-byte copy a pixel)
FORWARD_NHWC = _module("conv_tc_forward_nhwc", ((False,), (True,)))
# backward data: <precision, BN, unit[, BM]> (unit: sh = sw = 1, no division)
BACKWARD_DATA = _module("conv_tc_backward_data", ((True,), (False,)))
BACKWARD_FILTER = _module("conv_tc_backward_filter")
# the same instantiations by wgmma (sm_90a only)
FORWARD_WGMMA = KernelModule("conv_tc_forward_wgmma.cu", tuple(
    name.replace("conv_tc_forward_nhwc", "conv_tc_forward_wgmma") for name in FORWARD_NHWC.kernels),
    feature_arch="sm_90a")


def wgmma_shared_bytes(precision: str, tile) -> int:
    """The dynamic shared memory of conv_tc_forward_wgmma on ``tile``: WGMMA_STAGES
    slices of A's and B's rows, 16 kk a row in 16-byte chunks _WGMMA_LBO apart
    (CnTcWgEngine::SHARED_BYTES)."""
    chunks = 2 if precision == "bf16" else 4
    return WGMMA_STAGES * (tile[0] + tile[1]) // 8 * chunks * _WGMMA_LBO


def is_wgmma(tile) -> bool:
    """Whether ``tile`` is one of ``WGMMA_TILES``."""
    return tile is not None and tuple(tile)[2:] == (WGMMA,)


def choose_tile(device, rows: int, cols: int, batches: int = 1) -> tuple[int, int]:
    """The tile of ``TILES`` for ``batches`` GEMMs of ``rows`` x ``cols`` with the least
    estimated time: whole waves of resident blocks over the device's parallel units, each
    wave costing its blocks' tile area over the tile's rate (``_TILE_MODEL``); ties go to
    the first (128 x 128)."""
    model, units = _TILE_MODEL.get(device.kind, _TILE_MODEL["cuda"]), device.parallel_units

    def cost(t):
        resident, rate = model[t]
        blocks = -(-rows // t[0]) * -(-cols // t[1]) * max(1, batches)
        return -(-blocks // (units * resident)) * resident * t[0] * t[1] / rate

    return min(TILES, key=cost)


def launch_tile(launch: Launch) -> tuple:
    """The tile (of ``TILES``, or ``WGMMA_TILES`` for the warpgroup GEMM) a conv_tc
    Launch runs."""
    args = launch.template_args
    flagged = launch.kernel in ("conv_tc_backward_data", "conv_tc_forward_nhwc",
                                "conv_tc_forward_wgmma")  # <P, BN, flag[, BM]>
    bm = args[-1] if len(args) == (4 if flagged else 3) else BLOCK_M
    return (int(bm), int(args[1])) + ((WGMMA,) if launch.kernel == "conv_tc_forward_wgmma" else ())


def _check_tile(tile) -> tuple:
    if tuple(tile) not in TILES + WGMMA_TILES:
        raise ValueError(f"conv2d: tensor-core tile {tuple(tile)!r} is not instantiated; "
                         f"exported: {', '.join(str(t) for t in TILES + WGMMA_TILES)}")
    return tuple(tile)


def _pick_tile(device, tile, rows: int, cols: int, batches: int) -> tuple[int, int]:
    """``tile`` (which must be one of ``TILES`` or ``WGMMA_TILES``; a kernel without a
    warpgroup form runs a warpgroup tile as its plain one), or ``choose_tile``'s when
    None: (rows, columns)."""
    if tile is None:
        return choose_tile(device, rows, cols, batches)
    return _check_tile(tile)[:2]


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


def forward_launch(device, g: Geometry, x, w, b, y, relu=False, precision="tf32",
                   tile=None) -> Launch:
    """The Launch writing ``act(conv(x, w) + b)`` with rounded operands into ``y``."""
    precision = _tensor_core(precision)
    cols = g.n * g.p * g.q
    bm, bn = _pick_tile(device, tile, g.kg, cols, g.groups)
    grid = (-(-cols // bn), -(-g.kg // bm), g.groups)
    return Launch(FORWARD, "conv_tc_forward", template_args=_template_args(precision, (bm, bn)),
                  grid=grid, block=(THREADS,), args=(x, w, w if b is None else b, y, *g.scalars(),
                        np.int32(b is not None), np.int32(bool(relu))))


# --------------------------------------------------------------------------- channels last
LAYOUTS = ("nchw", "nhwc")


def channels_last(g: Geometry, part: str, precision: str = "tf32") -> bool:
    """Whether ``part`` ("forward", "data" or "filter") of ``g`` can run channels-last:
    forward and backward data on ``conv_tc_forward_nhwc`` where the reduction's channels
    a group (Cg forward, Kg for backward data) are a multiple of ``BLOCK_K``, so that a
    slice is one tap and 16 contiguous channels, or (forward's small form, ``_small``)
    there is one group of at most 4 channels, padded to a 16-byte copy a pixel
    (conv1's 3); backward data also needs unit stride and padding below the filter (it
    runs as the forward convolution of dy with the flipped filter); backward filter on ``conv_tc_backward_filter_nhwc``
    (``backward_filter_nhwc``) for groups == 1 with any C and K (the layouts pad both
    to multiples of ``filter_vector(precision)`` with zero channels: conv1's C = 3), and
    for groups > 1 where Cg and Kg are multiples of it (a 16-byte copy: 4 TF32 or 8 BF16
    channels of a pixel)."""
    if part == "forward":
        return g.cg % BLOCK_K == 0 or _small(g)
    if part == "filter":
        v = filter_vector(precision)
        return g.groups == 1 or (g.cg % v == 0 and g.kg % v == 0)
    return (g.kg % BLOCK_K == 0 and g.stride_h == g.stride_w == 1 and g.pad_h < g.r
            and g.pad_w < g.s)


def prefers_channels_last(g: Geometry, part: str, precision: str = "tf32") -> bool:
    """Whether ``part`` of ``g`` runs channels-last by default: wherever it can
    (``channels_last``) but backward filter's padded form (one group whose C or K is not
    a multiple of ``filter_vector``): its layouts cost more than the GEMM saves
    (AlexNet's conv1, predicted on an H100 in TF32: 178 us of GEMM + 141 us of layouts
    against the NCHW kernel's 248 us)."""
    if part == "filter":
        v = filter_vector(precision)
        return g.cg % v == 0 and g.kg % v == 0
    return channels_last(g, part, precision)


def _layout(g: Geometry, part: str, layout, precision: str = "tf32") -> str:
    """``layout`` ("nchw", "nhwc", or None: ``prefers_channels_last``'s), checked."""
    if layout is None:
        return "nhwc" if prefers_channels_last(g, part, precision) else "nchw"
    if layout not in LAYOUTS:
        raise ValueError(f"conv2d: tensor-core layout must be one of {LAYOUTS}, got {layout!r}")
    if layout == "nhwc" and not channels_last(g, part, precision):
        v = filter_vector(precision)
        raise ValueError(f"conv2d: the channels-last tensor-core {part} pass needs "
                         + {"forward": "Cg a multiple of 16",
                            "filter": f"one group, or Cg and Kg multiples of {v} in {precision}"}.get(
                             part, "Kg a multiple of 16, unit stride and padding below the filter")
                         + f"; got Cg={g.cg}, Kg={g.kg}, stride=({g.stride_h}, {g.stride_w}), "
                         f"pad=({g.pad_h}, {g.pad_w}), filter {g.r}x{g.s}")
    return layout


def data_geometry(g: Geometry) -> Geometry:
    """Backward data of ``g`` (unit stride) as a forward convolution: dy (N, K, P, Q)
    with the flipped filter (C, Kg, R, S) and padding (R - 1 - ph, S - 1 - pw) gives
    dx (N, C, H, W)."""
    return _conv.geometry((g.n, g.k, g.p, g.q), (g.c, g.kg, g.r, g.s), 1,
                          (g.r - 1 - g.pad_h, g.s - 1 - g.pad_w), g.groups)


SMALL_CHANNELS = 4  # the small form's channels a pixel: one copy (16 bytes TF32, 8 BF16)


def _small(g: Geometry) -> bool:
    """Forward's small-channel form: one group of at most 4 channels (AlexNet's conv1),
    each pixel's channels padded with zeros to ``SMALL_CHANNELS``, one copy (``_pixel``)."""
    return g.groups == 1 and g.c <= SMALL_CHANNELS


def _pixel(g: Geometry, precision: str) -> int:
    """The channels a pixel has in the forward's channels-last layout: C, or (small)
    ``SMALL_CHANNELS`` (a copy: 16 bytes of TF32, 8 of BF16)."""
    return SMALL_CHANNELS if _small(g) else g.c


def nhwc_workspace_shapes(g: Geometry, part: str, precision: str) -> dict:
    """The channels-last pass's workspaces: the gathered operand ("x": x or dy channels
    last) and the filter ("w": transposed, or flipped for backward data), of
    ``ops.conv_layout.dtype_for(precision)`` (float32 TF32 values, uint16 BF16 bits)."""
    if part == "forward":
        c = _pixel(g, precision)
        return {"x": (g.n * g.h * g.w * c,), "w": (g.k * (c // g.groups) * g.r * g.s,)}
    return {"x": (g.n * g.p * g.q * g.k,), "w": (g.k * g.cg * g.r * g.s,)}


def _gemm_nhwc(device, g: Geometry, xt, wt, b, y, relu, precision, tile) -> Launch:
    """The channels-last GEMM of ``g`` (a forward geometry) from rounded operands whose
    pixels have ``_pixel`` channels."""
    cols = g.n * g.p * g.q
    bm, bn = _pick_tile(device, tile, g.kg, cols, g.groups)
    scalars = list(g.scalars())
    scalars[1] = np.int32(_pixel(g, precision))   # C: the layout's channels
    wg = is_wgmma(tile)
    return Launch(FORWARD_WGMMA if wg else FORWARD_NHWC,
                  "conv_tc_forward_wgmma" if wg else "conv_tc_forward_nhwc",
                  template_args=_template_args(precision, (bm, bn), _small(g)),
                  grid=(-(-cols // bn), -(-g.kg // bm), g.groups), block=(THREADS,),
                  shared_bytes=wgmma_shared_bytes(precision, (bm, bn)) if wg else 0,
                  args=(xt, wt, y if b is None else b, y, *scalars,  # bias unread: y
                        np.int32(b is not None), np.int32(bool(relu))))


def forward_nhwc_launches(device, g: Geometry, x, w, b, y, xt, wt, relu=False,
                          precision="tf32", tile=None) -> list[Launch]:
    """The Launches writing ``act(conv(x, w) + b)`` into ``y`` channels-last: x and w
    to channels last, rounded to ``precision`` (into the workspaces ``xt``, ``wt`` of
    ``nhwc_workspace_shapes``), then the GEMM."""
    precision = _tensor_core(precision)
    _layout(g, "forward", "nhwc", precision)
    c = _pixel(g, precision)
    return [_layout_ops.to_channels_last_launch(device, x, xt, g.n, g.c, g.h * g.w, precision,
                                                c),
            _layout_ops.filter_to_channels_last_launch(device, w, wt, precision, c // g.groups),
            _gemm_nhwc(device, g, xt, wt, b, y, relu, precision, tile)]


def backward_data_nhwc_launches(device, g: Geometry, dy, w, dx, dyt, wt, precision="tf32",
                                tile=None) -> list[Launch]:
    """The Launches writing dL/dx into ``dx`` channels-last (``data_geometry``): dy to
    channels last and the filter flipped, both rounded, then the GEMM."""
    precision = _tensor_core(precision)
    _layout(g, "data", "nhwc", precision)
    return [_layout_ops.to_channels_last_launch(device, dy, dyt, g.n, g.k, g.p * g.q, precision),
            _layout_ops.filter_for_data_launch(device, w, wt, g.groups, precision),
            _gemm_nhwc(device, data_geometry(g), dyt, wt, None, dx, False, precision, tile)]


def shares_layout(g: Geometry, part: str, precision: str) -> bool:
    """Whether the channels-last operand ``part`` ("forward" or "data") lays out (x or
    dy) is the very array backward filter would lay out, so that it can take it
    (``layouts=``) instead of making it again: both passes channels-last, the same
    rounding (each precision's layouts round alike: TF32 floats, BF16 16-bit values)
    and the same channels a pixel."""
    precision = _tensor_core(precision)
    if not (prefers_channels_last(g, part, precision) and prefers_channels_last(g, "filter", precision)):
        return False
    cx, kx = filter_layout_channels(g, precision)
    return _pixel(g, precision) == cx if part == "forward" else kx == g.k


def _run_nhwc(device, g: Geometry, part: str, precision: str, launches_for, out,
              layouts=None):
    """Run a channels-last pass on fresh workspaces; its gathered operand's layout kept
    in ``layouts`` (as "x" forward, "dy" data) where ``shares_layout``."""
    xp = device.xp
    ws = {k: xp.empty(shape, dtype=_layout_ops.dtype_for(precision))
          for k, shape in nhwc_workspace_shapes(g, part, precision).items()}
    for launch in launches_for(ws["x"], ws["w"]):
        device.launch(launch)
    if layouts is not None and shares_layout(g, part, precision):
        layouts["x" if part == "forward" else "dy"] = ws["x"]
    return out


def forward(device, g: Geometry, x, w, b=None, relu=False, precision="tf32", tile=None,
            layout=None, layouts=None):
    """``act(conv(x, w) + b)`` with ``precision``'s operands on ``device`` (``tile``: one
    of ``TILES``, else ``choose_tile``'s; ``layout``: "nchw", "nhwc" or None,
    ``prefers_channels_last``'s; ``layouts``: a dict that keeps x's channels-last array
    for backward filter where ``shares_layout``)."""
    precision = _tensor_core(precision)
    x, w, b = _operands(device, g, "conv2d", x=x, w=w, b=b)
    layout = _layout(g, "forward", layout, precision)
    if not device.runs_kernels:
        return forward_reference(g, x, w, b, relu, precision)
    y = device.xp.empty(g.y_shape, dtype=np.float32)
    if y.size:
        check_kernel_sizes(g)
        if layout == "nhwc":
            return _run_nhwc(device, g, "forward", precision, lambda xt, wt: forward_nhwc_launches(
                device, g, x, w, b, y, xt, wt, relu, precision, tile), y, layouts)
        device.launch(forward_launch(device, g, x, w, b, y, relu, precision, tile))
    return y


def backward_data_launch(device, g: Geometry, dy, w, dx, precision="tf32",
                         tile=None) -> Launch:
    """The Launch writing dL/dx (from rounded dy and w) into ``dx`` (every element)."""
    precision = _tensor_core(precision)
    cols = g.n * g.h * g.w
    bm, bn = _pick_tile(device, tile, g.cg, cols, g.groups)
    grid = (-(-cols // bn), -(-g.cg // bm), g.groups)
    unit = g.stride_h == g.stride_w == 1  # no stride phases: no division
    return Launch(BACKWARD_DATA, "conv_tc_backward_data",
                  template_args=_template_args(precision, (bm, bn), unit),
                  grid=grid, block=(THREADS,), args=(dy, w, dx, *g.scalars()))


def plan_filter(device, g: Geometry, splits=None, tile=(BLOCK_M, BLOCK_N),
                precision="tf32") -> tuple[int, int]:
    """(splits, chunk) of backward filter's N*P*Q reduction on ``tile``: ``splits=None``
    chooses, with chunks of at least 32 slices: on a GPU the count of the least GEMM
    time plus partial-sum traffic (``_splits_for_gpu``); elsewhere two blocks per
    parallel unit. A given count is an upper bound. The chunk is a whole number of
    slices."""
    crs, npq = g.cg * g.r * g.s, g.n * g.p * g.q
    if splits is None:
        blocks = -(-g.kg // tile[0]) * -(-crs // tile[1]) * g.groups
        most = max(1, npq // (32 * BLOCK_K))
        if device.kind == "cuda":
            slots = device.parallel_units * _TILE_MODEL["cuda"][tuple(tile)[:2]][0]
            splits = _splits_for_gpu(blocks, slots, npq, most, tile, g.k * crs,
                                     _FLOP_PER_BYTE[_tensor_core(precision)])
        else:
            splits = max(1, min(-(-2 * device.parallel_units // blocks), most))
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


# A GPU's dense tensor-core FLOP/s over its DRAM bytes/s (H100: TF32 495 / 3.35 TB/s,
# BF16 twice that): what a split's partial sums cost against the GEMM's slices
_FLOP_PER_BYTE = {"tf32": 150.0, "bf16": 300.0}


def _splits_for_gpu(blocks: int, slots: int, length: int, most: int, tile, count: int,
                    flop_per_byte: float) -> int:
    """The splits (1..``most``) of a reduction of ``length`` for a grid of ``blocks`` a
    split on ``slots`` resident blocks: the least (waves of resident blocks) x (BK-slices
    a block) x (a wave-slice's FLOPs at 3/4 of the peak: the launch model's latency at
    2 blocks per SM), a grid of less than one wave counted over the share of the slots
    it fills, plus each split's ``count`` partial sums written and read back (8 bytes),
    in bytes at ``flop_per_byte`` (conv3 at batch 128, 128 x 128: 34 whole-wave splits
    cost 39 us of partial sums on an H100, 9 splits 10 us for 8 % more GEMM)."""
    wave_slice = slots * tile[0] * tile[1] * BLOCK_K * 2 / (0.75 * flop_per_byte)

    def cost(s: int) -> tuple:
        slices = -(-(-(-length // s)) // BLOCK_K)
        chunks = -(-length // (slices * BLOCK_K))
        total = blocks * chunks
        gemm = -(-total // slots) * slices / min(1.0, total / slots) * wave_slice
        return gemm + (8.0 * count * chunks if chunks > 1 else 0.0), chunks

    return min(range(1, most + 1), key=cost)


def filter_tile(device, g: Geometry, tile=None) -> tuple[int, int]:
    """Backward filter's tile: ``tile`` (one of ``TILES``) or ``choose_tile``'s for the
    Kg x Cg*R*S GEMM per group (before the split, which fills the device either way)."""
    return _pick_tile(device, tile, g.kg, g.cg * g.r * g.s, g.groups)


def backward_filter_launches(device, g: Geometry, x, dy, dw, splits: int, chunk: int,
                             workspace=None, precision="tf32", tile=None) -> list[Launch]:
    """The Launches writing dL/dw into ``dw``: the split GEMM into ``dw`` (one split) or
    ``workspace`` (``splits * dw.size`` floats), then conv_split_sum in split order.
    ``tile``: as ``filter_tile``; the same as ``plan_filter`` was given."""
    precision = _tensor_core(precision)
    crs = g.cg * g.r * g.s
    bm, bn = filter_tile(device, g, tile)
    grid = (-(-crs // bn), -(-g.kg // bm), g.groups * splits)
    return split_gemm_launches(device, Launch(
        BACKWARD_FILTER, "conv_tc_backward_filter", template_args=_template_args(precision, (bm, bn)),
        grid=grid, block=(THREADS,), args=(x, dy, dw, *g.scalars(), np.int32(chunk))),
        dw, splits, workspace)


def split_gemm_launches(device, gemm: Launch, dw, splits: int, workspace=None) -> list[Launch]:
    """A backward filter's split GEMM (``gemm``, whose third argument is ``dw``) as it
    runs: writing ``dw`` itself with one split; else writing ``workspace`` (``splits *
    dw.size`` floats), then conv_split_sum adding the partials in split order."""
    if splits == 1:
        return [gemm]
    count = dw.size
    if workspace is None or workspace.size < splits * count:
        raise ValueError(f"conv2d backward filter: {splits} splits need a workspace of "
                         f"{splits * count} floats")
    ws = workspace.reshape(-1)[:splits * count]
    blocks = min(-(-count // BLOCK), max_blocks(device))
    args = list(gemm.args)
    args[2] = ws
    return [Launch(gemm.module, gemm.kernel, template_args=gemm.template_args, grid=gemm.grid,
                   block=gemm.block, args=tuple(args)),
            Launch(_conv.BACKWARD_FILTER, "conv_split_sum", grid=(blocks,), block=(BLOCK,),
                   args=(ws, dw, np.int32(count), np.int32(splits)))]


def backward_data(device, g: Geometry, dy, w, precision="tf32", tile=None, layout=None,
                  layouts=None):
    """dL/dx from dL/dy with ``precision``'s operands on ``device`` (``tile``,
    ``layout``, ``layouts``: as ``forward``'s; dy's array is the one kept)."""
    precision = _tensor_core(precision)
    dy, w = _operands(device, g, "conv2d backward", dy=dy, w=w)
    layout = _layout(g, "data", layout, precision)
    if not device.runs_kernels:
        return backward_data_reference(g, dy, w, precision)
    dx = device.xp.empty(g.x_shape, dtype=np.float32)
    if dx.size:
        check_kernel_sizes(g)
        if layout == "nhwc":
            return _run_nhwc(device, g, "data", precision, lambda dyt, wt: backward_data_nhwc_launches(
                device, g, dy, w, dx, dyt, wt, precision, tile), dx, layouts)
        device.launch(backward_data_launch(device, g, dy, w, dx, precision, tile))
    return dx


def backward_filter(device, g: Geometry, x, dy, precision="tf32", splits=None, tile=None,
                    layout=None, layouts=None):
    """dL/dw from dL/dy and the input with ``precision``'s operands on ``device``
    (``tile``, ``layout``: as ``forward``'s; channels-last: the same result bit for bit,
    taking the arrays ``layouts`` holds from forward and backward data, which it
    empties)."""
    precision = _tensor_core(precision)
    made = dict(layouts or {})
    if layouts:
        layouts.clear()   # taken: they live no longer than this pass
    nhwc = _layout(g, "filter", layout, precision) == "nhwc"
    x, dy = _operands(device, g, "conv2d backward", x=x, dy=dy)
    if not device.runs_kernels:
        return backward_filter_reference(g, x, dy, precision)
    xp = device.xp
    if g.n == 0:
        return xp.zeros(g.w_shape, dtype=np.float32)
    if nhwc:
        _check_filter_sizes(g, precision)
    else:
        check_kernel_sizes(g)
    tile = filter_tile(device, g, tile)
    splits, chunk = plan_filter(device, g, splits, tile, precision)
    dw = xp.empty(g.w_shape, dtype=np.float32)
    workspace = xp.empty(splits * dw.size, dtype=np.float32) if splits > 1 else None
    if nhwc:
        ws = {k: made[k] if k in made else xp.empty(shape, dtype=_layout_ops.dtype_for(precision))
              for k, shape in filter_workspace_shapes(g, precision).items()}
        launches = backward_filter_nhwc_launches(device, g, x, dy, dw, ws["x"], ws["dy"], splits,
                                                 chunk, workspace, precision, tile, tuple(made))
    else:
        launches = backward_filter_launches(device, g, x, dy, dw, splits, chunk, workspace,
                                            precision, tile)
    for launch in launches:
        device.launch(launch)
    return dw


# --------------------------------------------------------------------------- channels-last backward filter
# kernels/conv_tc_backward_filter_nhwc.cu after the layout kernels (x and dy to channels
# last, rounded to the precision: TF32 floats or BF16 16-bit values): exactly what
# conv_tc_backward_filter computes (the same split of the N*P*Q reduction, the same
# summation order: bit for bit), from 16-byte copies of channels-last operands instead of
# 4-byte gathers. One group with any C and K (laid out with channels padded to multiples
# of ``filter_vector`` by zeros: the GEMM computes their rows and columns but stores only
# the real ones), or Cg and Kg multiples of it.
FILTER_NHWC_KERNEL = "conv_tc_backward_filter_nhwc"
BACKWARD_FILTER_NHWC = KernelModule(f"{FILTER_NHWC_KERNEL}.cu", tuple(
    name_expression(FILTER_NHWC_KERNEL, _template_args(p, t)) for p in _TEMPLATE
    for t in TILES))


def filter_vector(precision: str = "tf32") -> int:
    """Channels a 16-byte copy of the channels-last filter kernel moves: 4 TF32 floats
    or 8 BF16 values."""
    return 8 if _tensor_core(precision) == "bf16" else 4


def filter_layout_channels(g: Geometry, precision: str = "tf32") -> tuple[int, int]:
    """(Cx, Kx): the channels a pixel of the channels-last x and dy. groups == 1: C and K
    rounded up to multiples of ``filter_vector`` (the extra channels zeros); else C and K."""
    if g.groups == 1:
        v = filter_vector(precision)
        return -(-g.c // v) * v, -(-g.k // v) * v
    return g.c, g.k


def filter_workspace_shapes(g: Geometry, precision: str = "tf32") -> dict:
    """The channels-last copies: "x" (N, H, W, Cx) and "dy" (N, P, Q, Kx), flat
    (``filter_layout_channels``), of ``ops.conv_layout.dtype_for(precision)``."""
    cx, kx = filter_layout_channels(g, precision)
    return {"x": (g.n * g.h * g.w * cx,), "dy": (g.n * g.p * g.q * kx,)}


def _check_filter_sizes(g: Geometry, precision: str = "tf32") -> None:
    """``check_kernel_sizes`` of ``g``, and of ``g`` with the padded channels."""
    check_kernel_sizes(g)
    cx, kx = filter_layout_channels(g, precision)
    if (cx, kx) != (g.c, g.k):
        check_kernel_sizes(_conv.geometry((g.n, cx, g.h, g.w), (kx, cx, g.r, g.s),
                                          (g.stride_h, g.stride_w), (g.pad_h, g.pad_w), 1))


def backward_filter_nhwc_launches(device, g: Geometry, x, dy, dw, xt, dyt, splits: int,
                                  chunk: int, workspace=None, precision="tf32",
                                  tile=None, ready=()) -> list[Launch]:
    """The Launches writing dL/dw into ``dw``: x (N, C, H*W) and dy (N, K, P*Q) to
    channels last (rounded to ``precision``, padded to ``filter_layout_channels``), into ``xt``
    and ``dyt`` (``filter_workspace_shapes``), but those named in ``ready`` ("x", "dy": already
    there, made by another pass: ``shares_layout``); the split GEMM into ``dw``
    (one split) or ``workspace`` (``splits * dw.size`` floats); then conv_split_sum in
    split order. ``splits``, ``chunk``: ``plan_filter``'s for ``tile`` (as
    ``filter_tile``)."""
    precision = _tensor_core(precision)
    _layout(g, "filter", "nhwc", precision)
    cx, kx = filter_layout_channels(g, precision)
    cols = cx // g.groups * g.r * g.s  # the GEMM's columns (r, s, c < Cx / groups)
    bm, bn = filter_tile(device, g, tile)
    grid = (-(-cols // bn), -(-g.kg // bm), g.groups * splits)
    targs = _template_args(precision, (bm, bn))
    layout = [_layout_ops.to_channels_last_launch(device, src, dst, g.n, rows, plane, precision, out)
              for name, src, dst, rows, plane, out in (("x", x, xt, g.c, g.h * g.w, cx),
                                                       ("dy", dy, dyt, g.k, g.p * g.q, kx))
              if name not in ready]
    tail = (np.int32(chunk), np.int32(cx), np.int32(kx))
    gemm = Launch(BACKWARD_FILTER_NHWC, FILTER_NHWC_KERNEL, template_args=targs, grid=grid, block=(THREADS,),
                  args=(xt, dyt, dw, *g.scalars(), *tail))
    return layout + split_gemm_launches(device, gemm, dw, splits, workspace)


def backward_filter_nhwc(device, g: Geometry, x, dy, precision="tf32", splits=None, tile=None,
                         layouts=None):
    """``backward_filter`` on the channels-last kernel (ValueError where
    ``channels_last(g, "filter", precision)`` does not hold)."""
    return backward_filter(device, g, x, dy, precision, splits, tile, "nhwc", layouts)
