"""2-D max-pooling over NCHW tensors, overlapping windows allowed (Krizhevsky et al.
2012, section 3.4: 3×3 windows with stride 2).

Semantics (PyTorch's ``max_pool2d`` with ``ceil_mode=False``, no dilation):

* output size ``(H + 2·pad − kernel) // stride + 1`` per spatial axis;
* padding counts as −inf and is never chosen; ``pad <= kernel // 2`` (PyTorch's
  rule), so every window holds at least one input element;
* ties go to the first element in row-major window order; a NaN beats every number,
  the first NaN of a window is chosen (so NaN propagates and its position gets the
  gradient);
* the backward sends each output's gradient to its window's argmax; an input chosen
  by several overlapping windows receives the sum, added in row-major output order
  (deterministic: the kernel gathers per input, no atomics).

The argmax is kept from the forward as the offset ``i·kw + j`` inside the window:
``uint8`` for windows of up to 256 elements, ``int32`` above (``index_dtype``). Keeping
it rather than recomputing it was measured (``benchmarks/lrn_pool.py``,
``pool_backward_recompute`` against ``pool_backward``; see the note above ``BLOCK``).

``make_params`` checks the user's kernel, stride and padding once and gives the
``PoolParams`` that the references and the launch builders take as they are.
``forward(device, x, params, with_index)`` / ``backward(device, dy, argmax, params,
input_shape)`` are where raw arrays enter: they check the arrays against ``params``
(``output_shape``), then run the NumPy references on ``cpu`` (any float dtype) or
launch ``kernels/max_pool.cu`` on ``emu``/``cuda`` (float32). The launch builders
(``*_launch(device, ...)``) size their grids by ``device.kind``.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .. import arguments
from ..toolchain.launch import MAX_GRID_DIM, KernelModule, Launch
from ._arrays import check_same_shape, kernel_array

INDEX_TYPES = {np.dtype(np.uint8): "unsigned char", np.dtype(np.int32): "int"}
MODULE = KernelModule("max_pool.cu", (
    "max_pool_forward",
    "max_pool_forward_index<unsigned char>", "max_pool_forward_index<int>",
    *(f"max_pool_backward<{index}, {path}>" for index in ("unsigned char", "int")
      for path in range(4)),
    "max_pool_backward_recompute",
))

# Why the argmax is kept rather than recomputed in the backward (benchmarks/lrn_pool.py,
# notes "pool saved-vs-recomputed argmax"): on emu the backward that reads it is 6.5-7.5x
# as fast as max_pool_backward_recompute (AlexNet's three pools, batch 8), and on a GPU
# it reads dy and one byte per output instead of the whole input x as well.

BLOCK = 256                 # threads per block, a quad of elements each
QUAD = 4                    # consecutive elements per thread (float4 / uchar4 stores)
PAIR_COLS = 8               # the backward's PAIR path: columns of a row per thread
EMU_GROUP = 4               # planes per group on emu: few fibers, each loops over groups
EMU_MAX_GROUPS = 16         # blocks of groups on emu (grid.y)
# The largest group, in elements: the kernels' 32-bit quad index (4 x thread) must stay
# below 2^31 for every thread of the grid, which may run up to a block of quads past it.
_GROUP_LIMIT = 2**31 - 1 - QUAD * BLOCK


class PoolParams(NamedTuple):
    """Kernel, stride and padding per spatial axis (rows, columns)."""

    kh: int
    kw: int
    sh: int
    sw: int
    ph: int
    pw: int

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        return (h + 2 * self.ph - self.kh) // self.sh + 1, (w + 2 * self.pw - self.kw) // self.sw + 1


def make_params(kernel_size=3, stride=None, padding=0) -> PoolParams:
    """Validated PoolParams; ``stride=None`` means ``stride = kernel_size`` (PyTorch)."""
    kh, kw = arguments.pair(kernel_size, "max_pool2d: kernel_size")
    sh, sw = arguments.pair(kernel_size if stride is None else stride, "max_pool2d: stride")
    ph, pw = arguments.pair(padding, "max_pool2d: padding", low=0)
    if ph > kh // 2 or pw > kw // 2:
        raise ValueError(f"max_pool2d: padding {(ph, pw)} must be at most half the kernel "
                         f"{(kh, kw)} (pad <= kernel // 2), so that no window is all padding")
    return PoolParams(kh, kw, sh, sw, ph, pw)


def output_shape(shape, params: PoolParams) -> tuple[int, int, int, int]:
    """The output shape for an input of ``shape`` (N, C, H, W), or a clear error."""
    if len(shape) != 4:
        raise ValueError(f"max_pool2d expects an (N, C, H, W) tensor, got shape {tuple(shape)}")
    n, c, h, w = (int(v) for v in shape)
    p = params
    if h + 2 * p.ph < p.kh or w + 2 * p.pw < p.kw:
        raise ValueError(f"max_pool2d: kernel {(p.kh, p.kw)} is larger than the padded input "
                         f"{(h + 2 * p.ph, w + 2 * p.pw)} (input {(h, w)}, padding {(p.ph, p.pw)})")
    oh, ow = p.output_size(h, w)
    return n, c, oh, ow


def index_dtype(params: PoolParams) -> np.dtype:
    """uint8 window offsets for windows of up to 256 elements, int32 above."""
    return np.dtype(np.uint8) if params.kh * params.kw <= 256 else np.dtype(np.int32)


# --------------------------------------------------------------------------- references

def _taps(p: PoolParams, oh: int, ow: int):
    """(offset, rows, cols) per window element in row-major window order: the slices of
    the padded input that element takes for every output."""
    for i in range(p.kh):
        for j in range(p.kw):
            yield (i * p.kw + j, slice(i, i + p.sh * (oh - 1) + 1, p.sh),
                   slice(j, j + p.sw * (ow - 1) + 1, p.sw))


def _planes_last(a: np.ndarray, pad_h: int = 0, pad_w: int = 0, fill=0) -> np.ndarray:
    """(N, C, H, W) as (H + 2·pad_h, W + 2·pad_w, N·C), padded with ``fill``: a copy whose
    every window-offset view has rows of N·C contiguous elements (NumPy's loops then run
    long; on the NCHW views each row would be OW strided elements)."""
    n, c, h, w = a.shape
    out = np.empty((h + 2 * pad_h, w + 2 * pad_w, n * c), dtype=a.dtype)
    out[pad_h:pad_h + h, pad_w:pad_w + w] = a.reshape(n * c, h, w).transpose(1, 2, 0)
    for border in (out[:pad_h], out[pad_h + h:], out[:, :pad_w], out[:, pad_w + w:]):
        border[...] = fill
    return out


# forward_reference pools slabs of whole planes of about this many input elements in
# turn, whose planes-last copies and temporaries stay in cache (one thread, loaded
# machine: 10-35 % faster than the whole tensor at once on both networks' pools).
SLAB_ELEMENTS = 1 << 17


def forward_reference(x: np.ndarray, params: PoolParams) -> tuple[np.ndarray, np.ndarray]:
    """``(y, argmax)``: the pooled values and each window's offset (``index_dtype``), for
    an x that ``output_shape`` accepts; slab by slab of planes (``_forward_planes``)."""
    n, c, h, w = x.shape
    oh, ow = params.output_size(h, w)
    y = np.empty((n * c, oh, ow), x.dtype)
    pick = np.empty((n * c, oh, ow), index_dtype(params))
    if y.size and x.size:
        planes = x.reshape(n * c, h, w)
        step = max(1, SLAB_ELEMENTS // (h * w))
        for i in range(0, n * c, step):
            y[i:i + step], pick[i:i + step] = _forward_planes(planes[i:i + step], params)
    return y.reshape(n, c, oh, ow), pick.reshape(n, c, oh, ow)


def _forward_planes(x: np.ndarray, params: PoolParams) -> tuple[np.ndarray, np.ndarray]:
    """``forward_reference`` of the planes x (B, H, W), as (B, OH, OW) views. One pass per
    window offset keeps the running maximum and its offset (views of x laid out planes
    last, no copy per window)."""
    b, h, w = x.shape
    p = params
    oh, ow = p.output_size(h, w)
    xt = _planes_last(x[None], p.ph, p.pw, -np.inf)
    y = np.empty((oh, ow, b), x.dtype)
    pick = np.zeros((oh, ow, b), index_dtype(p))
    for offset, rows, cols in _taps(p, oh, ow):
        v = xt[rows, cols]
        if offset == 0:
            y[...] = v
            continue
        # v > y, or v NaN where y is not: np.argmax's first maximum, first NaN
        take = ~(v <= y)
        take &= y == y
        y = np.where(take, v, y)
        # offsets only grow: the new offset where taken is the larger (no masked copy)
        np.maximum(pick, take.view(np.uint8) * pick.dtype.type(offset), out=pick)
    if p.ph or p.pw:
        # A window whose real elements are all -inf may have kept a padding element
        # (also -inf); take its first real element instead, as the kernel does.
        real = np.zeros(xt.shape[:2], dtype=bool)
        real[p.ph:p.ph + h, p.pw:p.pw + w] = True
        reals = np.stack([real[rows, cols] for _, rows, cols in _taps(p, oh, ow)], axis=-1)
        on_pad = ~reals[np.arange(oh)[:, None, None], np.arange(ow)[None, :, None], pick]
        np.copyto(pick, np.argmax(reals, axis=-1)[..., None].astype(pick.dtype), where=on_pad)
    return y.transpose(2, 0, 1), pick.transpose(2, 0, 1)


def backward_reference(dy: np.ndarray, argmax: np.ndarray, params: PoolParams,
                       input_shape) -> np.ndarray:
    """dx: each output's gradient added to its argmax's position (row-major output order),
    slab by slab of planes (their int64 positions stay in cache)."""
    n, c, h, w = (int(v) for v in input_shape)
    p = params
    _, _, oh, ow = dy.shape
    dx = np.zeros((n, c, h, w), dtype=dy.dtype)
    if dy.size == 0:
        return dx
    dxf, grads = dx.reshape(n * c, h * w), dy.reshape(n * c, oh * ow)
    offsets = argmax.reshape(n * c, oh, ow)
    rows = np.arange(oh)[:, None] * p.sh - p.ph
    cols = np.arange(ow)[None, :] * p.sw - p.pw
    step = max(1, SLAB_ELEMENTS // max(h * w, 1))
    for i in range(0, n * c, step):
        offset = offsets[i:i + step].astype(np.int64)
        flat = (rows + offset // p.kw) * w + (cols + offset % p.kw)
        flat += (np.arange(offset.shape[0]) * (h * w)).reshape(-1, 1, 1)   # the slab's planes
        np.add.at(dxf[i:i + step].reshape(-1), flat.reshape(-1), grads[i:i + step].reshape(-1))
    return dx


# --------------------------------------------------------------------------- launches

def divisor(d: int) -> np.uint64:
    """``d`` (1 <= d < 2^31) packed for the kernels' ``cn_pool_div``: the multiplier
    m = floor(2^32 (2^l - d) / d) + 1 in the low 32 bits, the shift l = ceil(log2 d) in
    the high; then n // d == (umulhi(n, m) + n) >> l for every 0 <= n < 2^31."""
    d = int(d)
    if not 1 <= d < 2**31:
        raise ValueError(f"max_pool2d: divisor {d} is outside [1, 2^31)")
    shift = (d - 1).bit_length()
    multiplier = ((1 << 32) * ((1 << shift) - d)) // d + 1
    return np.uint64(multiplier | (shift << 32))


def plane_group(device, planes: int, size: int) -> int:
    """Planes per group for planes of ``size`` elements: a multiple of 4 (so that every
    quad of a group starts at a multiple of 4 elements and may be stored as a vector)
    unless 4 planes overflow the 32-bit group index, then 1; on a GPU as many as fit
    (one group for AlexNet's layers: no tail but the last quad), on emu EMU_GROUP."""
    if size > _GROUP_LIMIT:
        raise ValueError(f"max_pool2d: a plane of {size} elements exceeds the kernels' int32 "
                         f"indices (at most {_GROUP_LIMIT})")
    fit = _GROUP_LIMIT // size
    if fit < QUAD:
        return 1
    want = EMU_GROUP if device.kind != "cuda" else -(-planes // QUAD) * QUAD
    return min(want, fit // QUAD * QUAD)


def launch_shape(device, shape) -> tuple[tuple[int, int], tuple[int], int]:
    """(grid, block, group) for a thread per quad of the elements of ``shape``
    (N, C, H, W) laid end to end, in groups of ``plane_group`` planes: grid.x covers a
    group's quads, grid.y the groups up to the CUDA limit on a GPU, EMU_MAX_GROUPS on
    emu (the threads loop over the rest). Every lane has work whatever the plane size,
    but the last quads of each group."""
    n, c, h, w = shape
    planes, size = n * c, h * w
    group = plane_group(device, planes, size)
    groups = -(-planes // group)
    cap = MAX_GRID_DIM[1] if device.kind == "cuda" else EMU_MAX_GROUPS
    quads = -(-min(group, planes) * size // QUAD)
    return (max(1, -(-quads // BLOCK)), max(1, min(groups, cap))), (BLOCK,), group


def _shape_args(x_shape, out_shape, p: PoolParams, group: int, per_input: bool) -> tuple:
    """The kernels' scalars: shape, window, then the group and the packed divisors
    (plane size and row length of the elements the threads walk; the strides too for
    the backward)."""
    n, c, h, w = x_shape
    oh, ow = out_shape[2], out_shape[3]
    args = (np.int64(n * c), np.int32(h), np.int32(w), np.int32(oh), np.int32(ow),
            np.int32(p.kh), np.int32(p.kw), np.int32(p.sh), np.int32(p.sw), np.int32(p.ph),
            np.int32(p.pw), np.int32(group))
    if per_input:
        return args + (divisor(h * w), divisor(w), divisor(p.sh), divisor(p.sw))
    return args + (divisor(oh * ow), divisor(ow))


def _index_type(argmax) -> str:
    return INDEX_TYPES[np.dtype(argmax.dtype)]


def forward_launch(device, x, y, params: PoolParams, argmax=None) -> Launch:
    """y (and the argmax, when given: uint8 or int32 as ``index_dtype``) from x."""
    grid, block, group = launch_shape(device, y.shape)
    args = _shape_args(x.shape, y.shape, params, group, per_input=False)
    if argmax is None:
        return Launch(MODULE, "max_pool_forward", grid=grid, block=block, args=(x, y, *args))
    return Launch(MODULE, "max_pool_forward_index", grid=grid, block=block,
                  args=(x, y, argmax, *args), template_args=(_index_type(argmax),))


def covers_pairs(params: PoolParams) -> bool:
    """At most two windows cover an input along each axis (kernel <= 2 x stride, as
    AlexNet's 3/2): the backward's PAIR path, which tests those four windows without
    dividing or looping."""
    return params.kh <= 2 * params.sh and params.kw <= 2 * params.sw


def backward_path(params: PoolParams) -> int:
    """max_pool_backward's PATH (kernels/max_pool.cu): 0 the general gather; the PAIR
    paths where ``covers_pairs``: 2 or 3 for stride-2 columns (even or odd column
    padding), 1 for other strides. One instantiation each, so a launch's code holds only
    the path it runs."""
    if not covers_pairs(params):
        return 0
    return 2 + params.pw % 2 if params.sw == 2 else 1


def backward_launch(device, dy, argmax, dx, params: PoolParams) -> Launch:
    grid, block, group = launch_shape(device, dx.shape)
    args = _shape_args(dx.shape, dy.shape, params, group, True)
    path = backward_path(params)
    if not path:
        return Launch(MODULE, "max_pool_backward", grid=grid, block=block,
                      args=(dy, argmax, dx, *args), template_args=(_index_type(argmax), 0))
    # the PAIR path: a thread per four columns of a row (Q = ceil(W / 4) a row), the
    # divisors of H and Q in place of the plane size and row length
    n, c, h, w = dx.shape
    q = -(-w // PAIR_COLS)
    rows = min(group, n * c) * h
    grid = (max(1, -(-rows * q // BLOCK)), grid[1])
    args = args[:-4] + (divisor(h), divisor(q)) + args[-2:]
    return Launch(MODULE, "max_pool_backward", grid=grid, block=block,
                  args=(dy, argmax, dx, *args), template_args=(_index_type(argmax), path))


def backward_recompute_launch(device, x, dy, dx, params: PoolParams) -> Launch:
    grid, block, group = launch_shape(device, dx.shape)
    return Launch(MODULE, "max_pool_backward_recompute", grid=grid, block=block,
                  args=(x, dy, dx, *_shape_args(dx.shape, dy.shape, params, group, True)))


# --------------------------------------------------------------------------- on a device

def _check_dy(dy, params: PoolParams, input_shape) -> None:
    expected = output_shape(input_shape, params)
    if tuple(dy.shape) != expected:
        raise ValueError(f"max_pool2d backward: dy has shape {tuple(dy.shape)}, the output of "
                         f"an input of shape {tuple(input_shape)} is {expected}")


def forward(device, x, params: PoolParams, with_index: bool = True):
    """``(y, argmax)`` (argmax None unless ``with_index``) as arrays of ``device``."""
    out_shape = output_shape(x.shape, params)
    if not device.runs_kernels:
        y, argmax = forward_reference(x, params)
        return y, (argmax if with_index else None)
    x = kernel_array(device, x, "max_pool2d", "x")
    xp = device.xp
    y = xp.empty(out_shape, dtype=np.float32)
    argmax = xp.empty(out_shape, dtype=index_dtype(params)) if with_index else None
    if y.size:
        device.launch(forward_launch(device, x, y, params, argmax))
    return y, argmax


def backward(device, dy, argmax, params: PoolParams, input_shape):
    """dx (of ``input_shape``) from dy and the forward's argmax."""
    input_shape = tuple(int(v) for v in input_shape)
    _check_dy(dy, params, input_shape)
    check_same_shape("max_pool2d backward", dy=dy, argmax=argmax)
    if np.dtype(argmax.dtype) != index_dtype(params):
        raise TypeError(f"max_pool2d backward: argmax has dtype {argmax.dtype}, expected "
                        f"{index_dtype(params)} for a {params.kh}×{params.kw} window")
    if not device.runs_kernels:
        return backward_reference(dy, argmax, params, input_shape)
    dy = kernel_array(device, dy, "max_pool2d backward", "the gradient dy")
    if not device.owns(argmax):
        raise TypeError(f"max_pool2d backward: argmax is not an array of device {device.name!r}")
    argmax = device.xp.ascontiguousarray(argmax)
    dx = device.xp.empty(input_shape, dtype=np.float32)
    if dx.size:
        device.launch(backward_launch(device, dy, argmax, dx, params))
    return dx


def backward_recompute(device, x, dy, params: PoolParams):
    """dx from x and dy, finding each window's argmax again: the measured alternative to
    a saved argmax (see the note above ``BLOCK``), run by the kernel tour and the tests."""
    _check_dy(dy, params, x.shape)
    if not device.runs_kernels:
        _, argmax = forward_reference(x, params)
        return backward_reference(dy, argmax, params, x.shape)
    x = kernel_array(device, x, "max_pool2d backward", "x")
    dy = kernel_array(device, dy, "max_pool2d backward", "the gradient dy")
    dx = device.xp.empty(x.shape, dtype=np.float32)
    if dx.size:
        device.launch(backward_recompute_launch(device, x, dy, dx, params))
    return dx
