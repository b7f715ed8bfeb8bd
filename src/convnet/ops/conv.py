"""2-D convolution: forward with fused bias and ReLU, backward data, backward filter.

PyTorch's conventions (Krizhevsky et al. 2012 use the same cross-correlation):
``x`` (N, C, H, W), ``w`` (K, C/groups, R, S), ``b`` (K,) or None, output
(N, K, P, Q), zero padding, ``groups`` dividing C and K (output channel k sees input
channels of group ``k // (K/groups)``).

* ``geometry(x_shape, w_shape, stride, padding, groups)`` checks the arguments once
  and returns the ``Geometry`` (``_conv_geometry``) that everything below takes.
* ``forward(device, g, x, w, b, relu)``, ``backward_data(device, g, dy, w)``,
  ``backward_filter(device, g, x, dy)``, ``backward_bias(device, g, dy)``: where raw
  arrays enter; each checks its arrays against ``g`` (shapes, one dtype; float32 on a
  kernel device), then runs the reference on ``cpu`` or the kernels on ``emu``/``cuda``
  (32-bit indices: every tensor, padded input included, must hold fewer than 2**31
  elements).
* NumPy references (any float dtype, float64 for gradient checks; arguments already
  checked): ``forward_reference``, ``backward_data_reference``,
  ``backward_filter_reference``, ``backward_bias_reference``. Per chunk of a few
  images (``CHUNK_BYTES`` of columns): im2col as one copy of ``sliding_window_view``'s
  windows, then one matmul per group; col2im (backward data) as one strided
  accumulation per filter tap (R*S of them).
* Kernels (``kernels/conv_forward.cu``, ``conv_backward_data.cu``,
  ``conv_backward_filter.cu``, engine in ``conv_common.cuh``): implicit GEMMs over the
  tiles of ``_conv_tiles``, one chosen per launch for the device. The ``*_launch``
  builders make the ``Launch``es (the same for ``emu`` and ``cuda``).

Backward filter splits its reduction over N*P*Q across blocks (``plan_filter``)
and adds the partial results in a second, ordered pass: no atomics, so results are
bit-identical whatever the block schedule. The bias gradient does the same over the
images (``bias_splits``): K channels times the splits fill the GPU whatever K.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..arguments import positive_int
from ..toolchain.launch import Launch, LaunchError
from ._arrays import INT32_MAX, check_one_dtype, check_shape, kernel_array
from ._conv_geometry import Geometry, check_kernel_sizes, geometry
from ._conv_tiles import (BACKWARD_DATA, BACKWARD_FILTER, BIAS_THREADS, CONV_TILES, EMU,
                          FORWARD, LARGE, MEDIUM, ROWS48, ROWS96, SMALL, THIN, TILES, Tile,
                          choose_tile, pick_tile, resident_blocks, whole_wave_splits, wide_edges,
                          wide_taps)
from .elementwise import BLOCK, max_blocks
from .relu import relu_in_place

__all__ = ["BACKWARD_DATA", "BACKWARD_FILTER", "CONV_TILES", "EMU", "FORWARD", "FilterPlan",
           "Geometry", "LARGE", "MEDIUM", "ROWS48", "ROWS96", "SMALL", "THIN", "TILES", "Tile",
           "backward_bias", "backward_bias_launches", "backward_bias_reference", "bias_splits",
           "backward_data", "backward_data_launch", "backward_data_reference", "backward_filter",
           "backward_filter_launches", "backward_filter_reference", "check_kernel_sizes",
           "choose_tile", "forward", "forward_launch", "forward_reference", "geometry",
           "plan_filter"]


# Blocks of backward filter's split GEMM per parallel unit of the device, when
# plan_filter chooses the split off a GPU: two per emulator worker (on a GPU: whole waves).
SPLIT_BLOCKS_PER_UNIT = {"emu": 2}
FILTER_KERNEL = "conv_backward_filter"
# Blocks of the bias gradient's first pass per parallel unit: four of 256 threads, half
# an SM's 2048 threads, with four loads in flight each (more splits only shorten each
# thread's run against its fixed tree-reduction cost); on emu one split (channels are
# already more blocks than workers, and a fiber costs more than a load).
BIAS_BLOCKS_PER_UNIT = {"cuda": 4, "emu": 0}


# --------------------------------------------------------------------------- references

# im2col buffers are built for a few images at a time (at least one), about this many
# bytes each: a few large matmuls (BLAS threads synchronise once per call, which costs
# dearly on a loaded machine) over columns that still fit in the last-level cache.
CHUNK_BYTES = 1 << 24


def _chunks(g: Geometry, dtype):
    """(first, last + 1) image ranges of about CHUNK_BYTES of columns each."""
    per_image = g.c * g.r * g.s * g.p * g.q * np.dtype(dtype).itemsize
    step = max(1, CHUNK_BYTES // max(per_image, 1))
    return [(n0, min(g.n, n0 + step)) for n0 in range(0, g.n, step)]


def _padded(x, g: Geometry):
    """x with its zero padding (a copy only where there is padding)."""
    if not (g.pad_h or g.pad_w):
        return x
    out = np.zeros((x.shape[0], g.c, g.h + 2 * g.pad_h, g.w + 2 * g.pad_w), dtype=x.dtype)
    out[:, :, g.pad_h:g.pad_h + g.h, g.pad_w:g.pad_w + g.w] = x
    return out


def _columns(x, g: Geometry):
    """im2col of the images x (n, C, H, W): (groups, Cg*R*S, n*P*Q), one copy of the
    sliding windows (a strided view) in the order the matmuls read them."""
    n = x.shape[0]
    xp = _padded(x, g)[:, :, :(g.p - 1) * g.stride_h + g.r, :(g.q - 1) * g.stride_w + g.s]
    win = sliding_window_view(xp, (g.r, g.s), axis=(2, 3))[:, :, ::g.stride_h, ::g.stride_w]
    cols = np.empty((g.c, g.r, g.s, n, g.p, g.q), dtype=x.dtype)
    cols[...] = win.transpose(1, 4, 5, 0, 2, 3)                        # c, r, s, n, p, q
    return cols.reshape(g.groups, g.cg * g.r * g.s, n * g.p * g.q)


def _grouped(dy, g: Geometry):
    """dy (n, K, P, Q) of a chunk of images as a (groups, Kg, n*P*Q) copy."""
    n = dy.shape[0]
    out = np.empty((g.groups, g.kg, n, g.p * g.q), dtype=dy.dtype)
    out[...] = dy.reshape(n, g.groups, g.kg, g.p * g.q).transpose(1, 2, 0, 3)
    return out.reshape(g.groups, g.kg, n * g.p * g.q)


# A strided convolution (conv1: 11x11, stride 4) is run as its stride_h*stride_w phases
# where that copies less than im2col: the padded input split by row and column phase
# (i, j) = (h mod stride_h, w mod stride_w) is a (C*sh*sw)-channel image on a grid of
# A x B positions, and the convolution a stride-1 one over it with RA x SA taps, each tap
# one matmul over a shifted view of the grid (no columns; positions past P, Q are
# computed and dropped). Per chunk of about PHASE_CHUNK_BYTES of output grid (one image
# of conv1, which stays in cache: the default network's conv1 at batch 32, one thread,
# forward 120 -> 55 ms and backward filter 106 -> 60 ms; chunks of 2 MiB gained half that).
PHASE_CHUNK_BYTES = 1 << 19


def _phase_shape(g: Geometry) -> tuple[int, int, int, int]:
    """(RA, SA, A, B): taps per phase and the phases' grid."""
    ra, sa = -(-g.r // g.stride_h), -(-g.s // g.stride_w)
    return ra, sa, g.p + ra - 1, g.q + sa - 1


def _uses_phases(g: Geometry, forward: bool) -> bool:
    """Whether the phase formulation runs: strided only; the forward also only where its
    RA*SA accumulated products per output (RA*SA*Kg) cost less than im2col's Cg*R*S copies
    per column (the default network's conv1 at 24 filters, not the paper's at 96)."""
    if (g.stride_h, g.stride_w) == (1, 1):
        return False
    ra, sa, _, _ = _phase_shape(g)
    return not forward or ra * sa * g.kg <= g.cg * g.r * g.s


def _phase_chunks(g: Geometry, dtype):
    _, _, a, b = _phase_shape(g)
    step = max(1, PHASE_CHUNK_BYTES // max(g.k * a * b * np.dtype(dtype).itemsize, 1))
    return [(n0, min(g.n, n0 + step)) for n0 in range(0, g.n, step)]


def _phases(x, g: Geometry):
    """The images x (n, C, H, W), zero-padded, as (groups, Cg*sh*sw, n*A*B): channel
    (c, i, j) holds the padded input's rows i, i + sh, ... and columns j, j + sw, ..."""
    n = x.shape[0]
    sh, sw = g.stride_h, g.stride_w
    _, _, a, b = _phase_shape(g)
    padded = np.zeros((n, g.c, a * sh, b * sw), dtype=x.dtype)
    h, w = max(0, min(g.h, a * sh - g.pad_h)), max(0, min(g.w, b * sw - g.pad_w))
    padded[:, :, g.pad_h:g.pad_h + h, g.pad_w:g.pad_w + w] = x[:, :, :h, :w]
    out = np.empty((g.c, sh, sw, n, a, b), dtype=x.dtype)
    out[...] = padded.reshape(n, g.c, a, sh, b, sw).transpose(1, 3, 5, 0, 2, 4)
    return out.reshape(g.groups, g.cg * sh * sw, n * a * b)


def _forward_phases(g: Geometry, x, w, b, relu):
    """``forward_reference`` by phases (``_uses_phases``)."""
    sh, sw = g.stride_h, g.stride_w
    ra, sa, a, bq = _phase_shape(g)
    padded = np.zeros((g.k, g.cg, ra * sh, sa * sw), dtype=w.dtype)
    padded[:, :, :g.r, :g.s] = w
    taps = np.ascontiguousarray(padded.reshape(g.groups, g.kg, g.cg, ra, sh, sa, sw)
                                .transpose(3, 5, 0, 1, 2, 4, 6)).reshape(ra, sa, g.groups, g.kg, -1)
    y = np.empty(g.y_shape, dtype=x.dtype)
    for n0, n1 in _phase_chunks(g, x.dtype):
        xs = _phases(x[n0:n1], g)
        m = xs.shape[2] - (ra - 1) * bq - (sa - 1)      # grid positions every tap reaches
        acc = np.empty((g.groups, g.kg, xs.shape[2]), dtype=x.dtype)  # past m: unused
        np.matmul(taps[0, 0], xs[:, :, :m], out=acc[:, :, :m])
        product = np.empty((g.groups, g.kg, m), dtype=x.dtype)
        for r, s in np.ndindex(ra, sa):
            if r or s:
                shift = r * bq + s
                acc[:, :, :m] += np.matmul(taps[r, s], xs[:, :, shift:shift + m], out=product)
        z = acc.reshape(g.k, n1 - n0, a, bq)[:, :, :g.p, :g.q].transpose(1, 0, 2, 3)
        _epilogue(y[n0:n1], z, b, relu)
    return y


def _filter_phases(g: Geometry, x, dy):
    """``backward_filter_reference`` by phases: per tap, the shifted grid times dy (zero
    past P, Q) transposed, one matmul per group."""
    sh, sw = g.stride_h, g.stride_w
    ra, sa, a, bq = _phase_shape(g)
    dwt = np.zeros((ra, sa, g.groups, g.cg * sh * sw, g.kg), dtype=x.dtype)
    for n0, n1 in _phase_chunks(g, x.dtype):
        n = n1 - n0
        xs = _phases(x[n0:n1], g)
        m = xs.shape[2] - (ra - 1) * bq - (sa - 1)
        grid = np.zeros((g.k, n, a, bq), dtype=dy.dtype)
        grid[:, :, :g.p, :g.q] = dy[n0:n1].transpose(1, 0, 2, 3)
        dyt = grid.reshape(g.groups, g.kg, n * a * bq)[:, :, :m].transpose(0, 2, 1)
        for r in range(ra):
            for s in range(sa):
                shift = r * bq + s
                dwt[r, s] += np.matmul(xs[:, :, shift:shift + m], dyt)
    dw = dwt.reshape(ra, sa, g.groups, g.cg, sh, sw, g.kg).transpose(2, 6, 3, 0, 4, 1, 5)
    return np.ascontiguousarray(dw.reshape(g.k, g.cg, ra * sh, sa * sw)[:, :, :g.r, :g.s])


def _epilogue(out, z, b, relu):
    """out = act(z + b): z (a view of the products in out's shape) copied into out with
    the bias added (one pass), then ReLU in place."""
    if b is None:
        out[...] = z
    else:
        np.add(z, b.reshape(1, -1, 1, 1), out=out)
    if relu:
        relu_in_place(out)


def forward_reference(g: Geometry, x, w, b=None, relu=False):
    """``act(conv(x, w) + b)`` in the arrays' dtype (NumPy, any float dtype): per chunk of
    images, one matmul per group, copied into y with the bias added, then ReLU there."""
    if _uses_phases(g, forward=True):
        return _forward_phases(g, x, w, b, relu)
    wg = w.reshape(g.groups, g.kg, g.cg * g.r * g.s)
    y = np.empty(g.y_shape, dtype=x.dtype)
    for n0, n1 in _chunks(g, x.dtype):
        z = np.matmul(wg, _columns(x[n0:n1], g))                       # g, kg, n*p*q
        _epilogue(y[n0:n1], z.reshape(g.k, n1 - n0, g.p, g.q).transpose(1, 0, 2, 3), b, relu)
    return y


def backward_data_reference(g: Geometry, dy, w):
    """dL/dx from dL/dy: per chunk of images, the columns' gradient w^T dy (one matmul per
    group) added back to the windows (col2im: one strided add per filter tap). The
    chunk's images are the last axis here (columns in (P, Q, n) order, dx padded as
    (C, H, W, n)), so each tap's add runs over rows of Q·n elements, not of Q."""
    wt = w.reshape(g.groups, g.kg, g.cg * g.r * g.s).transpose(0, 2, 1)
    hp, wp = g.h + 2 * g.pad_h, g.w + 2 * g.pad_w
    dx = np.empty(g.x_shape, dtype=dy.dtype)
    for n0, n1 in _chunks(g, dy.dtype):
        n = n1 - n0
        dyt = np.empty((g.groups, g.kg, g.p, g.q, n), dtype=dy.dtype)
        dyt[...] = dy[n0:n1].reshape(n, g.groups, g.kg, g.p, g.q).transpose(1, 2, 3, 4, 0)
        dcols = np.matmul(wt, dyt.reshape(g.groups, g.kg, g.p * g.q * n))
        dcols = dcols.reshape(g.c, g.r, g.s, g.p, g.q, n)
        dxp = np.zeros((g.c, hp, wp, n), dtype=dy.dtype)
        for r in range(g.r):
            for s in range(g.s):
                dxp[:, r:r + (g.p - 1) * g.stride_h + 1:g.stride_h,
                    s:s + (g.q - 1) * g.stride_w + 1:g.stride_w] += dcols[:, r, s]
        dx[n0:n1] = dxp[:, g.pad_h:g.pad_h + g.h, g.pad_w:g.pad_w + g.w].transpose(3, 0, 1, 2)
    return dx


def backward_filter_reference(g: Geometry, x, dy):
    """dL/dw from dL/dy and the input x: per chunk of images, the columns times dy
    transposed (one matmul per group), summed over the chunks. (dw^T = cols·dy^T: OpenBLAS
    threads the other orientation, dy·cols^T with its long inner dimension, up to 8x
    slower on two cores.)"""
    if _uses_phases(g, forward=False):
        return _filter_phases(g, x, dy)
    dwt = np.zeros((g.groups, g.cg * g.r * g.s, g.kg), dtype=x.dtype)
    for n0, n1 in _chunks(g, x.dtype):
        dwt += np.matmul(_columns(x[n0:n1], g), _grouped(dy[n0:n1], g).transpose(0, 2, 1))
    return np.ascontiguousarray(dwt.transpose(0, 2, 1)).reshape(g.w_shape)


def backward_bias_reference(dy):
    """dL/db: dy summed over N, P, Q."""
    return dy.sum(axis=(0, 2, 3))


# --------------------------------------------------------------------------- launches

def forward_launch(device, g: Geometry, x, w, b, y, relu=False, tile=None) -> Launch:
    """The Launch writing ``act(conv(x, w) + b)`` into ``y`` (all float32, C-contiguous)."""
    cols = g.n * g.p * g.q
    wide = wide_taps(g.r, g.s)
    tile = pick_tile(device, tile, g.kg, cols, g.groups, "conv_forward", wide)
    grid = (-(-cols // tile.bn), -(-g.kg // tile.bm), g.groups)
    return Launch(FORWARD, "conv_forward_wide" if wide else "conv_forward", grid=grid,
                  block=(tile.threads,),
                  args=(x, w, w if b is None else b, y, *g.scalars(),
                        np.int32(b is not None), np.int32(bool(relu))),
                  template_args=tuple(tile))


def backward_data_launch(device, g: Geometry, dy, w, dx, tile=None) -> Launch:
    """The Launch writing dL/dx into ``dx`` (every element; no clearing needed)."""
    phases = g.stride_h * g.stride_w
    cols = g.n * -(-g.h // g.stride_h) * -(-g.w // g.stride_w)
    wide = wide_taps(-(-g.r // g.stride_h), -(-g.s // g.stride_w))  # a phase's taps at most
    tile = pick_tile(device, tile, g.cg, cols, g.groups * phases, "conv_backward_data", wide)
    grid = (-(-cols // tile.bn), -(-g.cg // tile.bm), g.groups * phases)
    return Launch(BACKWARD_DATA, "conv_backward_data_wide" if wide else "conv_backward_data",
                  grid=grid, block=(tile.threads,), args=(dy, w, dx, *g.scalars()),
                  template_args=tuple(tile))


class FilterPlan(NamedTuple):
    """How backward filter runs: the tile, and the reduction over N*P*Q in ``splits``
    consecutive chunks of ``chunk`` elements (a multiple of the tile's BK)."""

    tile: Tile
    splits: int
    chunk: int

    def workspace_size(self, g: Geometry) -> int:
        """Floats of partial sums the split GEMM writes (0 without a split)."""
        return self.splits * g.k * g.cg * g.r * g.s if self.splits > 1 else 0


def plan_filter(device, g: Geometry, tile=None, splits=None) -> FilterPlan:
    """The tile and split of backward filter on a kernel ``device``.

    ``splits=None`` chooses, with chunks of at least 32 slices (so that the partial
    sums' extra traffic stays small next to the products) and never a workspace past
    the 32-bit indices: on a GPU the count that ends in whole waves of resident blocks
    (``_conv_tiles.whole_wave_splits``: conv2 at batch 128 on 132 SMs, 20 blocks a
    split, one resident each, was 27 splits = 4.09 waves run in 5); elsewhere enough
    blocks to fill the device (``SPLIT_BLOCKS_PER_UNIT`` per parallel unit). A given
    ``splits`` is taken as an upper bound (chunks are whole slices, so fewer may
    result)."""
    crs = g.cg * g.r * g.s
    npq = g.n * g.p * g.q
    # the split will fill the device: pick the tile for a large grid
    tile = pick_tile(device, tile, g.kg, crs, g.groups * max(1, npq // 256),
                     FILTER_KERNEL, _filter_wide(g))
    if splits is None:
        blocks = -(-g.kg // tile.bm) * -(-crs // tile.bn) * g.groups
        most = max(1, npq // (32 * tile.bk))
        if device.kind == "cuda":
            slots = device.parallel_units * resident_blocks(device, tile, FILTER_KERNEL)
            splits = whole_wave_splits(blocks, slots, npq, tile.bk, most)
        else:
            target = SPLIT_BLOCKS_PER_UNIT.get(device.kind, 2) * device.parallel_units
            splits = max(1, min(-(-target // blocks), most))
        while splits > 1 and splits * g.k * crs > INT32_MAX:
            splits //= 2
    else:
        splits = positive_int(splits, "conv2d backward filter: splits")
    chunk = -(-max(npq, 1) // splits)
    chunk = -(-chunk // tile.bk) * tile.bk
    splits = max(1, -(-npq // chunk))
    if splits > 1 and splits * g.k * crs > INT32_MAX:
        raise ValueError(f"conv2d backward filter: {splits} splits need a workspace past "
                         f"the kernels' 32-bit indices; use fewer")
    return FilterPlan(tile, splits, chunk)


def _filter_wide(g: Geometry) -> bool:
    return wide_edges(g.pad_h, g.pad_w, g.stride_h, g.stride_w)


def backward_filter_launches(device, g: Geometry, x, dy, dw, plan: FilterPlan,
                             workspace=None) -> list[Launch]:
    """The Launches writing dL/dw into ``dw``: the split GEMM, then (when split) the
    ordered sum of the partials, which live in ``workspace`` (at least
    ``plan.workspace_size(g)`` float32s, C-contiguous)."""
    tile, splits, chunk = plan
    crs = g.cg * g.r * g.s
    grid = (-(-crs // tile.bn), -(-g.kg // tile.bm), g.groups * splits)
    name = FILTER_KERNEL + "_wide" if _filter_wide(g) else FILTER_KERNEL
    if splits == 1:
        return [Launch(BACKWARD_FILTER, name, grid=grid, block=(tile.threads,),
                       args=(x, dy, dw, *g.scalars(), np.int32(chunk)),
                       template_args=tuple(tile))]
    need = plan.workspace_size(g)
    if workspace is None or workspace.size < need:
        raise LaunchError(f"conv2d backward filter: {splits} splits need a workspace of "
                          f"{need} floats")
    ws = workspace.reshape(-1)[:need]
    count = dw.size
    blocks = min(-(-count // BLOCK), max_blocks(device))
    return [Launch(BACKWARD_FILTER, name, grid=grid, block=(tile.threads,),
                   args=(x, dy, ws, *g.scalars(), np.int32(chunk)), template_args=tuple(tile)),
            Launch(BACKWARD_FILTER, "conv_split_sum", grid=(blocks,), block=(BLOCK,),
                   args=(ws, dw, np.int32(count), np.int32(splits)))]


def bias_splits(device, g: Geometry) -> int:
    """Slices of the images for the bias gradient's first pass: enough that K * splits
    blocks fill the device (BIAS_BLOCKS_PER_UNIT per SM), at most one per image; 1 (no
    second pass) where K blocks already do, and on emu."""
    target = BIAS_BLOCKS_PER_UNIT.get(device.kind, 0) * device.parallel_units
    splits = min(g.n, max(1, -(-target // g.k)))
    images = -(-g.n // splits)
    return -(-g.n // images)


def backward_bias_launches(device, g: Geometry, dy, db, splits=None,
                           workspace=None) -> list[Launch]:
    """The Launches writing dL/db into ``db``: conv_bias_grad over (K, splits) blocks
    into db (one split) or into ``workspace`` (splits * K floats), then conv_split_sum
    adding the splits in order."""
    splits = bias_splits(device, g) if splits is None else positive_int(splits, "splits")
    images = -(-g.n // min(splits, max(g.n, 1)))
    splits = -(-g.n // images)
    scalars = (np.int32(g.n), np.int32(g.k), np.int32(g.p * g.q), np.int32(images))
    if splits == 1:
        return [Launch(BACKWARD_FILTER, "conv_bias_grad", grid=(g.k, 1), block=(BIAS_THREADS,),
                       args=(dy, db, *scalars), template_args=(BIAS_THREADS,))]
    if workspace is None or workspace.size < splits * g.k:
        raise LaunchError(f"conv2d backward bias: {splits} splits need a workspace of "
                          f"{splits * g.k} floats")
    ws = workspace.reshape(-1)[:splits * g.k]
    blocks = min(-(-g.k // BLOCK), max_blocks(device))
    return [Launch(BACKWARD_FILTER, "conv_bias_grad", grid=(g.k, splits), block=(BIAS_THREADS,),
                   args=(dy, ws, *scalars), template_args=(BIAS_THREADS,)),
            Launch(BACKWARD_FILTER, "conv_split_sum", grid=(blocks,), block=(BLOCK,),
                   args=(ws, db, np.int32(g.k), np.int32(splits)))]


# --------------------------------------------------------------------------- on a device

def _operands(device, g: Geometry, op: str, **arrays) -> tuple:
    """The arrays (x, w, b or dy; None skipped) checked against ``g`` and of one dtype;
    on a kernel device, as its kernels take them."""
    expected = {"x": ("x", g.x_shape), "w": ("w", g.w_shape), "b": ("the bias", (g.k,)),
                "dy": ("the output gradient dy", g.y_shape)}
    for name, array in arrays.items():
        if array is not None:
            check_shape(op, array, expected[name][1], expected[name][0])
    check_one_dtype(op, **arrays)
    if not device.runs_kernels:
        return tuple(arrays.values())
    return tuple(None if a is None else kernel_array(device, a, op, expected[name][0])
                 for name, a in arrays.items())


def forward(device, g: Geometry, x, w, b=None, relu=False, tile=None):
    """``act(conv(x, w) + b)`` on ``device`` (arrays of that device)."""
    x, w, b = _operands(device, g, "conv2d", x=x, w=w, b=b)
    if not device.runs_kernels:
        return forward_reference(g, x, w, b, relu)
    y = device.xp.empty(g.y_shape, dtype=np.float32)
    if y.size:
        check_kernel_sizes(g)
        device.launch(forward_launch(device, g, x, w, b, y, relu, tile))
    return y


def backward_data(device, g: Geometry, dy, w, tile=None):
    """dL/dx from dL/dy on ``device``."""
    dy, w = _operands(device, g, "conv2d backward", dy=dy, w=w)
    if not device.runs_kernels:
        return backward_data_reference(g, dy, w)
    dx = device.xp.empty(g.x_shape, dtype=np.float32)
    if dx.size:
        check_kernel_sizes(g)
        device.launch(backward_data_launch(device, g, dy, w, dx, tile))
    return dx


def backward_filter(device, g: Geometry, x, dy, tile=None, splits=None):
    """dL/dw from dL/dy and the input on ``device``."""
    x, dy = _operands(device, g, "conv2d backward", x=x, dy=dy)
    if not device.runs_kernels:
        return backward_filter_reference(g, x, dy)
    xp = device.xp
    if g.n == 0:
        return xp.zeros(g.w_shape, dtype=np.float32)
    check_kernel_sizes(g)
    plan = plan_filter(device, g, tile, splits)
    dw = xp.empty(g.w_shape, dtype=np.float32)
    size = plan.workspace_size(g)
    workspace = xp.empty(size, dtype=np.float32) if size else None
    for launch in backward_filter_launches(device, g, x, dy, dw, plan, workspace):
        device.launch(launch)
    return dw


def backward_bias(device, g: Geometry, dy, splits=None):
    """dL/db from dL/dy on ``device`` (``splits``: the first pass's image slices,
    default ``bias_splits``; any count gives the same sums on a given device kind only
    up to rounding, since the order of the adds follows the slices)."""
    (dy,) = _operands(device, g, "conv2d backward", dy=dy)
    if not device.runs_kernels:
        return backward_bias_reference(dy)
    if g.n == 0:
        return device.xp.zeros((g.k,), dtype=np.float32)
    check_kernel_sizes(g)
    db = device.xp.empty((g.k,), dtype=np.float32)
    splits = bias_splits(device, g) if splits is None else positive_int(splits, "splits")
    images = -(-g.n // min(splits, g.n))
    splits = -(-g.n // images)
    workspace = device.xp.empty(splits * g.k, dtype=np.float32) if splits > 1 else None
    for launch in backward_bias_launches(device, g, dy, db, splits, workspace):
        device.launch(launch)
    return db
