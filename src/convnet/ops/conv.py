"""2-D convolution: forward with fused bias and ReLU, backward data, backward filter.

PyTorch's conventions (Krizhevsky et al. 2012 use the same cross-correlation):
``x`` (N, C, H, W), ``w`` (K, C/groups, R, S), ``b`` (K,) or None, output
(N, K, P, Q) with ``P = (H + 2*pad_h - R) // stride_h + 1`` (Q likewise), zero
padding, ``groups`` dividing C and K (output channel k sees input channels of group
``k // (K/groups)``).

* ``geometry(x_shape, w_shape, stride, padding, groups)`` checks the arguments and
  returns a ``Geometry`` (every size the kernels and references need), or raises a
  clear ``ValueError``/``TypeError``.
* NumPy references (the ``cpu`` device, any float dtype, float64 for gradient
  checks): ``forward_reference``, ``backward_data_reference``,
  ``backward_filter_reference``, ``backward_bias_reference``. im2col through
  ``sliding_window_view`` and one batched matmul over the groups; col2im (backward
  data) as one strided accumulation per filter tap (R*S of them).
* Kernels (``kernels/conv_forward.cu``, ``conv_backward_data.cu``,
  ``conv_backward_filter.cu``, engine in ``conv_common.cuh``): implicit GEMMs with
  tiles ``<BM, BN, BK, TM, TN>`` (``Tile``); ``choose_tile`` picks one per launch
  from a small table. ``*_launch`` functions build the ``Launch``es (the same for
  ``emu`` and ``cuda``).
* ``forward(device, ...)``, ``backward_data``, ``backward_filter``,
  ``backward_bias``: the reference on ``cpu``, the kernels on ``emu``/``cuda``
  (float32 only; 32-bit indices: every tensor, padded input included, must hold
  fewer than 2**31 elements).

Backward filter splits its reduction over N*P*Q across blocks (``plan_filter``)
and adds the partial results in a second, ordered pass: no atomics, so results are
bit-identical whatever the block schedule.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..toolchain.launch import KernelModule, Launch, LaunchError, name_expression
from ._arrays import kernel_array

INT32_MAX = 2**31 - 1
FLAG_BIAS = 1
FLAG_RELU = 2
BIAS_THREADS = 256     # CONV_BIAS_THREADS in conv_backward_filter.cu
SUM_THREADS = 256
SUM_MAX_BLOCKS = 4096


# --------------------------------------------------------------------------- tiles

class Tile(NamedTuple):
    """An implicit-GEMM instantiation: block tile BM x BN, reduction slice BK,
    thread tile TM x TN; (BM/TM) * (BN/TN) threads per block."""

    bm: int
    bn: int
    bk: int
    tm: int
    tn: int

    @property
    def threads(self) -> int:
        return (self.bm // self.tm) * (self.bn // self.tn)

    def name(self, kernel: str) -> str:
        return name_expression(kernel, tuple(self))


# The GPU's main tile: 256 threads, 8x8 results each (128x128 per block).
LARGE = Tile(128, 128, 8, 8, 8)
# Fewer rows for layers with few output (forward, filter) or input (data) channels.
MEDIUM = Tile(64, 128, 8, 8, 8)
# Small problems: 64 threads, 4x4 results each.
SMALL = Tile(32, 32, 16, 4, 4)
# The emulator's tile: few fibers with fat register tiles and a deep slice, so that
# a barrier (two fiber switches per thread) comes once per 2048 multiply-adds.
EMU = Tile(128, 128, 16, 16, 8)

# Four rows: GEMMs with very few rows (backward data of an RGB input's three channels).
THIN = Tile(4, 256, 16, 4, 8)

TILES: tuple[Tile, ...] = (LARGE, MEDIUM, SMALL, EMU, THIN)

FORWARD = KernelModule("conv_forward.cu", tuple(t.name("conv_forward") for t in TILES))
BACKWARD_DATA = KernelModule("conv_backward_data.cu",
                             tuple(t.name("conv_backward_data") for t in TILES))
BACKWARD_FILTER = KernelModule("conv_backward_filter.cu",
                               tuple(t.name("conv_backward_filter") for t in TILES)
                               + ("conv_split_sum", "conv_bias_grad"))


_SM_COUNTS: dict[int, int] = {}


def _sm_count(device) -> int:
    """Streaming multiprocessors of a cuda device (132 on an H100 SXM); 0 elsewhere."""
    if getattr(device, "kind", None) != "cuda":
        return 0
    index = int(device.index)
    if index not in _SM_COUNTS:
        try:
            count = int(device.xp.cuda.Device(index).attributes["MultiProcessorCount"])
        except Exception:  # attribute names differ across CuPy versions
            count = 108
        _SM_COUNTS[index] = count
    return _SM_COUNTS[index]


# How a device runs each tile, for choose_tile: (blocks resident per SM or emulator
# worker, arithmetic rate relative to the device's main tile). GPU: residency from the
# compile report's registers (LARGE 124-165, MEDIUM up to 167 per thread, of 65536 per
# SM), rates estimated (4x4 and 4x8 thread tiles read more shared memory per
# multiply-add); not yet measured on a GPU. emu: rates measured on AlexNet's layers
# (benchmarks/conv.py): a thin or small tile does ~1/6 of EMU's arithmetic per second.
GPU_TILE_MODEL = {LARGE: (1, 1.0), MEDIUM: (3, 0.8), SMALL: (8, 0.45), THIN: (10, 0.35)}
EMU_TILE_MODEL = {EMU: (1, 1.0), SMALL: (1, 0.18), THIN: (1, 0.17)}


def choose_tile(kind: str, rows: int, cols: int, batches: int = 1, units: int = 0) -> Tile:
    """The tile for ``batches`` GEMMs of ``rows`` x ``cols`` results (one block grid of
    ceil(rows/BM) x ceil(cols/BN) x batches) on a device kind ("cuda" or "emu").

    The tile with the least estimated time: waves of resident blocks over the device's
    ``units`` (SMs; emulator workers) times the work of a wave, each tile's residency
    and rate from ``GPU_TILE_MODEL`` / ``EMU_TILE_MODEL``. Rows and columns past the
    matrix are work too, so GEMMs with few rows pick narrow tiles."""
    if kind == "cuda":
        model, units = GPU_TILE_MODEL, units or 108
    else:
        from ..backend import emu
        model, units = EMU_TILE_MODEL, units or emu.worker_threads()

    def cost(t: Tile) -> float:
        resident, rate = model[t]
        blocks = -(-rows // t.bm) * -(-cols // t.bn) * max(1, batches)
        waves = -(-blocks // (units * resident))
        return waves * resident * t.bm * t.bn / rate

    return min(model, key=cost)


# --------------------------------------------------------------------------- geometry

def _pair(value, what: str, minimum: int) -> tuple[int, int]:
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"conv2d: {what} must be an int or a pair (h, w), got {value!r}")
        items = tuple(value)
    else:
        items = (value, value)
    out = []
    for v in items:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral):
            raise TypeError(f"conv2d: {what} must be an int or a pair of ints, "
                            f"got {value!r}")
        if int(v) < minimum:
            bound = "positive" if minimum == 1 else "non-negative"
            raise ValueError(f"conv2d: {what} must be {bound}, got {value!r}")
        out.append(int(v))
    return out[0], out[1]


@dataclass(frozen=True)
class Geometry:
    """Every size of one convolution (see the module docstring)."""

    n: int
    c: int
    h: int
    w: int
    k: int
    r: int
    s: int
    stride_h: int
    stride_w: int
    pad_h: int
    pad_w: int
    groups: int

    @property
    def p(self) -> int:
        return (self.h + 2 * self.pad_h - self.r) // self.stride_h + 1

    @property
    def q(self) -> int:
        return (self.w + 2 * self.pad_w - self.s) // self.stride_w + 1

    @property
    def cg(self) -> int:
        return self.c // self.groups

    @property
    def kg(self) -> int:
        return self.k // self.groups

    @property
    def x_shape(self) -> tuple:
        return (self.n, self.c, self.h, self.w)

    @property
    def w_shape(self) -> tuple:
        return (self.k, self.cg, self.r, self.s)

    @property
    def y_shape(self) -> tuple:
        return (self.n, self.k, self.p, self.q)

    @property
    def flops(self) -> int:
        """Multiply-adds times two of one pass (forward, backward data or backward filter)."""
        return 2 * self.n * self.k * self.p * self.q * self.cg * self.r * self.s

    def scalars(self) -> tuple:
        """The kernels' common int arguments N, C, H, W, K, R, S, P, Q, sh, sw, ph, pw, groups."""
        return tuple(np.int32(v) for v in (self.n, self.c, self.h, self.w, self.k, self.r,
                                           self.s, self.p, self.q, self.stride_h,
                                           self.stride_w, self.pad_h, self.pad_w, self.groups))


def geometry(x_shape, w_shape, stride=1, padding=0, groups=1) -> Geometry:
    """Check a convolution's shapes and arguments; ValueError/TypeError naming the problem."""
    x_shape, w_shape = tuple(x_shape), tuple(w_shape)
    if len(x_shape) != 4:
        raise ValueError(f"conv2d: x must be 4-D (N, C, H, W), got shape {x_shape}")
    if len(w_shape) != 4:
        raise ValueError(f"conv2d: w must be 4-D (K, C/groups, R, S), got shape {w_shape}")
    sh, sw = _pair(stride, "stride", 1)
    ph, pw = _pair(padding, "padding", 0)
    if isinstance(groups, (bool, np.bool_)) or not isinstance(groups, numbers.Integral):
        raise TypeError(f"conv2d: groups must be an int, got {groups!r}")
    groups = int(groups)
    if groups < 1:
        raise ValueError(f"conv2d: groups must be positive, got {groups}")
    n, c, h, w = (int(v) for v in x_shape)
    k, cg, r, s = (int(v) for v in w_shape)
    for name, value in (("C", c), ("H", h), ("W", w)):
        if value < 1:
            raise ValueError(f"conv2d: x has shape {x_shape}; its {name} must be at least 1")
    for name, value in (("K", k), ("C/groups", cg), ("R", r), ("S", s)):
        if value < 1:
            raise ValueError(f"conv2d: w has shape {w_shape}; its {name} must be at least 1")
    if c % groups:
        raise ValueError(f"conv2d: groups={groups} does not divide the {c} input channels")
    if k % groups:
        raise ValueError(f"conv2d: groups={groups} does not divide the {k} output channels "
                         f"(w has shape {w_shape})")
    if cg * groups != c:
        raise ValueError(f"conv2d: x has {c} channels but w has shape {w_shape}: with "
                         f"groups={groups} it expects {cg * groups} input channels "
                         f"({cg} per group)")
    if r > h + 2 * ph or s > w + 2 * pw:
        raise ValueError(f"conv2d: the {r}x{s} kernel is larger than the padded input "
                         f"{h + 2 * ph}x{w + 2 * pw} (input {h}x{w}, padding {ph}, {pw})")
    return Geometry(n, c, h, w, k, r, s, sh, sw, ph, pw, groups)


def check_kernel_sizes(g: Geometry, splits: int = 1) -> None:
    """ValueError unless every index the kernels form fits in 32 bits (see the .cu files)."""
    spans = {
        "the padded input x": g.n * g.c * (g.h + 2 * g.pad_h + g.stride_h + g.r)
        * (g.w + 2 * g.pad_w + g.stride_w + g.s),
        "the output y": g.n * g.k * (g.p + g.r + 1) * (g.q + g.s + 1),
        "the filters w": g.k * g.cg * g.r * g.s * max(1, splits),
    }
    for what, count in spans.items():
        if count > INT32_MAX:
            raise ValueError(f"conv2d: the kernels index with 32-bit integers and {what} of "
                             f"this convolution spans {count} elements (with padding, halo "
                             f"and split workspace), more than 2**31 - 1; split the batch "
                             f"(x {g.x_shape}, w {g.w_shape})")


def _check_float(op: str, **arrays) -> np.dtype:
    dtypes = {name: a.dtype for name, a in arrays.items() if a is not None}
    for name, dtype in dtypes.items():
        if dtype.kind != "f":
            raise TypeError(f"{op}: {name} must be a floating-point array, not {dtype}")
    if len(set(dtypes.values())) > 1:
        described = ", ".join(f"{n} {d}" for n, d in dtypes.items())
        raise TypeError(f"{op}: the arrays must share one dtype, got {described}")
    return next(iter(dtypes.values()))


def check_bias(b, k: int) -> None:
    if b is not None and tuple(b.shape) != (k,):
        raise ValueError(f"conv2d: the bias must have shape ({k},) (one per output channel), "
                         f"got {tuple(b.shape)}")


def check_output_grad(g: Geometry, dy) -> None:
    if tuple(dy.shape) != g.y_shape:
        raise ValueError(f"conv2d backward: the output gradient has shape {tuple(dy.shape)}, "
                         f"the output {g.y_shape}")


# --------------------------------------------------------------------------- references

def _columns(x, g: Geometry):
    """im2col: (groups, Cg*R*S, N*P*Q), a contiguous copy of the sliding windows."""
    xp = np.pad(x, ((0, 0), (0, 0), (g.pad_h, g.pad_h), (g.pad_w, g.pad_w)))
    xp = xp[:, :, :(g.p - 1) * g.stride_h + g.r, :(g.q - 1) * g.stride_w + g.s]
    win = sliding_window_view(xp, (g.r, g.s), axis=(2, 3))[:, :, ::g.stride_h, ::g.stride_w]
    win = win.reshape(g.n, g.groups, g.cg, g.p, g.q, g.r, g.s)       # a view
    cols = win.transpose(1, 2, 5, 6, 0, 3, 4)                          # g, c, r, s, n, p, q
    return np.ascontiguousarray(cols).reshape(g.groups, g.cg * g.r * g.s, g.n * g.p * g.q)


def _relu(y):
    return np.where((y > 0) | np.isnan(y), y, y.dtype.type(0))


def _grouped_dy(dy, g: Geometry):
    """dy (N, K, P, Q) as (groups, Kg, N*P*Q)."""
    d = dy.reshape(g.n, g.groups, g.kg, g.p * g.q).transpose(1, 2, 0, 3)
    return d.reshape(g.groups, g.kg, g.n * g.p * g.q)


def forward_reference(x, w, b=None, stride=1, padding=0, groups=1, relu=False):
    """``act(conv(x, w) + b)`` in the arrays' dtype (NumPy, any float dtype)."""
    g = geometry(x.shape, w.shape, stride, padding, groups)
    check_bias(b, g.k)
    dtype = _check_float("conv2d", x=x, w=w, b=b)
    cols = _columns(x, g)
    wg = w.reshape(g.groups, g.kg, g.cg * g.r * g.s)
    y = np.matmul(wg, cols)                                            # g, kg, npq
    y = y.reshape(g.groups, g.kg, g.n, g.p, g.q).transpose(2, 0, 1, 3, 4).reshape(g.y_shape)
    y = np.ascontiguousarray(y, dtype=dtype)
    if b is not None:
        y += b.reshape(1, g.k, 1, 1)
    return _relu(y) if relu else y


def backward_data_reference(dy, w, x_shape, stride=1, padding=0, groups=1):
    """dL/dx from dL/dy (col2im of w^T dy)."""
    g = geometry(x_shape, w.shape, stride, padding, groups)
    check_output_grad(g, dy)
    dtype = _check_float("conv2d backward", dy=dy, w=w)
    wg = w.reshape(g.groups, g.kg, g.cg * g.r * g.s)
    dcols = np.matmul(wg.transpose(0, 2, 1), _grouped_dy(dy, g))      # g, crs, npq
    dcols = dcols.reshape(g.groups, g.cg, g.r, g.s, g.n, g.p, g.q)
    dcols = dcols.transpose(4, 0, 1, 2, 3, 5, 6).reshape(g.n, g.c, g.r, g.s, g.p, g.q)
    hp, wp = g.h + 2 * g.pad_h, g.w + 2 * g.pad_w
    dxp = np.zeros((g.n, g.c, hp, wp), dtype=dtype)
    for r in range(g.r):
        for s in range(g.s):
            dxp[:, :, r:r + (g.p - 1) * g.stride_h + 1:g.stride_h,
                s:s + (g.q - 1) * g.stride_w + 1:g.stride_w] += dcols[:, :, r, s]
    return np.ascontiguousarray(dxp[:, :, g.pad_h:g.pad_h + g.h, g.pad_w:g.pad_w + g.w])


def backward_filter_reference(x, dy, w_shape, stride=1, padding=0, groups=1):
    """dL/dw from dL/dy and the input x."""
    g = geometry(x.shape, w_shape, stride, padding, groups)
    check_output_grad(g, dy)
    dtype = _check_float("conv2d backward", x=x, dy=dy)
    dw = np.matmul(_grouped_dy(dy, g), _columns(x, g).transpose(0, 2, 1))  # g, kg, crs
    return np.ascontiguousarray(dw.reshape(g.w_shape), dtype=dtype)


def backward_bias_reference(dy):
    """dL/db: dy summed over N, P, Q."""
    if dy.ndim != 4:
        raise ValueError(f"conv2d backward: dy must be 4-D (N, K, P, Q), got {tuple(dy.shape)}")
    return dy.sum(axis=(0, 2, 3))


# --------------------------------------------------------------------------- launches

def _tile(tile, kind, rows, cols, batches, sms=0) -> Tile:
    if tile is None:
        return choose_tile(kind, rows, cols, batches, sms)
    tile = Tile(*tile)
    if tile not in TILES:
        raise LaunchError(f"conv2d: tile {tuple(tile)} is not instantiated; exported: "
                          + ", ".join(str(tuple(t)) for t in TILES))
    return tile


def _kind(array) -> str:
    return "cuda" if hasattr(array, "__cuda_array_interface__") else "emu"


def forward_launch(g: Geometry, x, w, b, y, relu=False, tile=None, sms=0) -> Launch:
    """The Launch writing ``act(conv(x, w) + b)`` into ``y`` (all float32, C-contiguous)."""
    cols = g.n * g.p * g.q
    tile = _tile(tile, _kind(x), g.kg, cols, g.groups, sms)
    flags = (FLAG_BIAS if b is not None else 0) | (FLAG_RELU if relu else 0)
    grid = (-(-cols // tile.bn), -(-g.kg // tile.bm), g.groups)
    return Launch(FORWARD, "conv_forward", grid=grid, block=(tile.threads,),
                  args=(x, w, w if b is None else b, y, *g.scalars(), np.int32(flags)),
                  template_args=tuple(tile))


def backward_data_launch(g: Geometry, dy, w, dx, tile=None, sms=0) -> Launch:
    """The Launch writing dL/dx into ``dx`` (every element; no clearing needed)."""
    phases = g.stride_h * g.stride_w
    cols = g.n * -(-g.h // g.stride_h) * -(-g.w // g.stride_w)
    tile = _tile(tile, _kind(dy), g.cg, cols, g.groups * phases, sms)
    grid = (-(-cols // tile.bn), -(-g.cg // tile.bm), g.groups * phases)
    return Launch(BACKWARD_DATA, "conv_backward_data", grid=grid, block=(tile.threads,),
                  args=(dy, w, dx, *g.scalars()), template_args=tuple(tile))


class FilterPlan(NamedTuple):
    """How backward filter runs: the tile, and the reduction over N*P*Q in ``splits``
    consecutive chunks of ``chunk`` elements (a multiple of the tile's BK)."""

    tile: Tile
    splits: int
    chunk: int

    def workspace_size(self, g: Geometry) -> int:
        """Floats of partial sums the split GEMM writes (0 without a split)."""
        return self.splits * g.k * g.cg * g.r * g.s if self.splits > 1 else 0


def plan_filter(g: Geometry, kind: str, tile=None, splits=None, sms: int = 0) -> FilterPlan:
    """The tile and split of backward filter on a device kind ("emu" or "cuda").

    ``splits=None`` chooses: enough blocks to fill the device (about four per SM on a
    GPU, two per worker on emu) but chunks of at least 32 slices, so that the partial
    sums' extra traffic stays small next to the products, and never a workspace past
    the 32-bit indices. A given ``splits`` is taken as an upper bound (chunks are whole
    slices, so fewer may result)."""
    crs = g.cg * g.r * g.s
    npq = g.n * g.p * g.q
    # the split will fill the device: pick the tile for a large grid
    tile = _tile(tile, kind, g.kg, crs, g.groups * max(1, npq // 256), sms)
    if splits is None:
        blocks = -(-g.kg // tile.bm) * -(-crs // tile.bn) * g.groups
        if kind == "cuda":
            target = 4 * (sms or 108)
        else:
            from ..backend import emu
            target = 2 * emu.worker_threads()
        splits = max(1, min(-(-target // blocks), npq // (32 * tile.bk)))
        while splits > 1 and splits * g.k * crs > INT32_MAX:
            splits //= 2
    else:
        if isinstance(splits, bool) or not isinstance(splits, numbers.Integral) or splits < 1:
            raise ValueError(f"conv2d backward filter: splits must be a positive int, "
                             f"got {splits!r}")
        splits = int(splits)
    chunk = -(-max(npq, 1) // splits)
    chunk = -(-chunk // tile.bk) * tile.bk
    splits = max(1, -(-npq // chunk))
    if splits > 1 and splits * g.k * crs > INT32_MAX:
        raise ValueError(f"conv2d backward filter: {splits} splits need a workspace past "
                         f"the kernels' 32-bit indices; use fewer")
    return FilterPlan(tile, splits, chunk)


def backward_filter_launches(g: Geometry, x, dy, dw, plan: FilterPlan,
                             workspace=None) -> list[Launch]:
    """The Launches writing dL/dw into ``dw``: the split GEMM, then (when split) the
    ordered sum of the partials, which live in ``workspace`` (at least
    ``plan.workspace_size(g)`` float32s, C-contiguous)."""
    tile, splits, chunk = plan
    crs = g.cg * g.r * g.s
    grid = (-(-crs // tile.bn), -(-g.kg // tile.bm), g.groups * splits)
    if splits == 1:
        return [Launch(BACKWARD_FILTER, "conv_backward_filter", grid=grid, block=(tile.threads,),
                       args=(x, dy, dw, *g.scalars(), np.int32(chunk)),
                       template_args=tuple(tile))]
    need = plan.workspace_size(g)
    if workspace is None or workspace.size < need:
        raise LaunchError(f"conv2d backward filter: {splits} splits need a workspace of "
                          f"{need} floats")
    ws = workspace.reshape(-1)[:need]
    count = dw.size
    blocks = min(-(-count // SUM_THREADS), SUM_MAX_BLOCKS)
    return [Launch(BACKWARD_FILTER, "conv_backward_filter", grid=grid, block=(tile.threads,),
                   args=(x, dy, ws, *g.scalars(), np.int32(chunk)), template_args=tuple(tile)),
            Launch(BACKWARD_FILTER, "conv_split_sum", grid=(blocks,), block=(SUM_THREADS,),
                   args=(ws, dw, np.int32(count), np.int32(splits)))]


def backward_bias_launch(g: Geometry, dy, db) -> Launch:
    return Launch(BACKWARD_FILTER, "conv_bias_grad", grid=(g.k,), block=(BIAS_THREADS,),
                  args=(dy, db, np.int32(g.n), np.int32(g.k), np.int32(g.p * g.q)))


# --------------------------------------------------------------------------- on a device

def _shape_check(op: str, array, what: str) -> None:
    if not (hasattr(array, "shape") and hasattr(array, "dtype")):
        raise TypeError(f"{op}: {what} must be an array, not {type(array).__name__}")


def forward(device, x, w, b=None, stride=1, padding=0, groups=1, relu=False, tile=None):
    """``act(conv(x, w) + b)`` on ``device`` (arrays of that device)."""
    for what, a in (("x", x), ("w", w)) + ((("b", b),) if b is not None else ()):
        _shape_check("conv2d", a, what)
    g = geometry(x.shape, w.shape, stride, padding, groups)
    check_bias(b, g.k)
    _check_float("conv2d", x=x, w=w, b=b)
    if not device.runs_kernels:
        return forward_reference(x, w, b, stride, padding, groups, relu)
    x = kernel_array(device, x, "conv2d", "x")
    w = kernel_array(device, w, "conv2d", "w")
    if b is not None:
        b = kernel_array(device, b, "conv2d", "b")
    y = device.xp.empty(g.y_shape, dtype=np.float32)
    if y.size:
        check_kernel_sizes(g)
        device.launch(forward_launch(g, x, w, b, y, relu, tile, _sm_count(device)))
    return y


def backward_data(device, dy, w, x_shape, stride=1, padding=0, groups=1, tile=None):
    """dL/dx (shape ``x_shape``) from dL/dy on ``device``."""
    g = geometry(x_shape, w.shape, stride, padding, groups)
    check_output_grad(g, dy)
    _check_float("conv2d backward", dy=dy, w=w)
    if not device.runs_kernels:
        return backward_data_reference(dy, w, x_shape, stride, padding, groups)
    dy = kernel_array(device, dy, "conv2d backward", "the output gradient dy")
    w = kernel_array(device, w, "conv2d backward", "w")
    dx = device.xp.empty(g.x_shape, dtype=np.float32)
    if dx.size:
        check_kernel_sizes(g)
        device.launch(backward_data_launch(g, dy, w, dx, tile, _sm_count(device)))
    return dx


def backward_filter(device, x, dy, w_shape, stride=1, padding=0, groups=1, tile=None,
                    splits=None):
    """dL/dw (shape ``w_shape``) from dL/dy and the input on ``device``."""
    g = geometry(x.shape, w_shape, stride, padding, groups)
    check_output_grad(g, dy)
    _check_float("conv2d backward", x=x, dy=dy)
    if not device.runs_kernels:
        return backward_filter_reference(x, dy, w_shape, stride, padding, groups)
    x = kernel_array(device, x, "conv2d backward", "x")
    dy = kernel_array(device, dy, "conv2d backward", "the output gradient dy")
    xp = device.xp
    if g.n == 0:
        return xp.zeros(g.w_shape, dtype=np.float32)
    check_kernel_sizes(g)
    plan = plan_filter(g, device.kind, tile, splits, _sm_count(device))
    dw = xp.empty(g.w_shape, dtype=np.float32)
    size = plan.workspace_size(g)
    workspace = xp.empty(size, dtype=np.float32) if size else None
    for launch in backward_filter_launches(g, x, dy, dw, plan, workspace):
        device.launch(launch)
    return dw


def backward_bias(device, dy):
    """dL/db from dL/dy on ``device``."""
    _shape_check("conv2d backward", dy, "dy")
    if dy.ndim != 4:
        raise ValueError(f"conv2d backward: dy must be 4-D (N, K, P, Q), got {tuple(dy.shape)}")
    _check_float("conv2d backward", dy=dy)
    if not device.runs_kernels:
        return backward_bias_reference(dy)
    dy = kernel_array(device, dy, "conv2d backward", "the output gradient dy")
    n, k, p, q = dy.shape
    if n == 0 or p * q == 0:
        return device.xp.zeros((k,), dtype=np.float32)
    if dy.size > INT32_MAX:
        raise ValueError(f"conv2d backward: the bias kernel indexes with 32-bit integers and dy "
                         f"{tuple(dy.shape)} has {dy.size} elements, more than 2**31 - 1; "
                         f"split the batch")
    db = device.xp.empty((k,), dtype=np.float32)
    g = Geometry(n, 1, p, q, k, 1, 1, 1, 1, 0, 0, 1)
    device.launch(backward_bias_launch(g, dy, db))
    return db
