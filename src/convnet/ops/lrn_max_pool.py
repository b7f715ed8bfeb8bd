"""LRN followed by max-pooling, the paper's layers 1 and 2, in one forward kernel
(``kernels/lrn_max_pool.cu``): x is read once and only the pooled output and its
argmax are written. The results are bit-identical to ``ops.lrn`` then
``ops.max_pool``; ``FUSE`` says on which devices the fused kernel runs, the two ops
in turn elsewhere. The backward (``backward``) is fused too: max-pool's backward and
LRN's (s recomputed from x) in one kernel that never stores the LRN output's
gradient, bit-identical to ``ops.max_pool.backward`` then ``ops.lrn.backward``;
``FUSE_BACKWARD`` says where it runs.

``forward(device, x, params, pool)`` is where raw arrays enter: it checks x against
the ``LRNParams`` and the ``PoolParams`` (both checked by their ``make_params``),
then runs the references on ``cpu``, or the kernels on ``emu``/``cuda``.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..toolchain.launch import MAX_THREADS_PER_BLOCK, KernelModule, Launch
from . import lrn, max_pool
from ._arrays import kernel_array

MODULE = KernelModule("lrn_max_pool.cu", tuple(
    f"lrn_max_pool_forward<{index}, {w}>" for index in ("unsigned char", "int")
    for w in (0, lrn.FIXED_WIDTH)) + ("lrn_max_pool_backward<unsigned char, 0>",
                                      "lrn_max_pool_backward<int, 0>"))
MAX_REGION = 512   # threads per block: input pixels under one tile of windows
MAX_TILE = 16      # pooled outputs per tile side
MAX_DEPTH = 32     # channels whose LRN output a block keeps in shared memory at once

# Per device kind: does local_response_norm_max_pool2d run the fused kernel? Measured
# with benchmarks/lrn_pool.py (notes "fused-vs-separate"; the outputs are bit-identical):
# * emu: yes since the FP32 channel walk (issue 16): fused 24.0 ms against 35.4 ms for
#   lrn_forward + max_pool_forward_index on 96x55x55, 17.0 against 21.2 ms on 256x27x27
#   (batch 2, median of 3, shared 2-core machine). With the former FP64 walk the fused
#   kernel was 10-14 % slower there (compute-bound; the windows' overlap recomputes 11 %
#   of the LRN).
# * cuda: yes. Memory-bound there, it moves 4 bytes per input element + 5 per output
#   instead of 12 + 5 (2.5x less). Not yet measured on a GPU: the benchmark times both.
FUSE = {"emu": True, "cuda": True}

# Per device kind: does the backward run lrn_max_pool_backward (one kernel) instead of
# max_pool_backward then lrn_backward<false>? Bytes per input element on a GPU (3x3/2
# pooling, 4 inputs per output): fused 4 (x) + 4 (dx) + 1.25 (dy, argmax) = 9.25;
# separate 1.25 + 4 (dz written) + 12 (x, dz read, dx written) = 17.25: 1.9x less, and
# one launch instead of two. On emu the gather is the work max_pool_backward does
# anyway and the dz tensor's pass disappears: benchmarks/lrn_pool.py ("fused-vs-separate
# backward") 26.9 ms against 35.0 ms on 96x55x55, 19.3 against 23.4 ms on 256x27x27
# (batch 2, median of 3): fused there too.
FUSE_BACKWARD = {"emu": True, "cuda": True}


class Geometry(NamedTuple):
    """The clipped LRN window, the tile of pooled outputs a block computes, the channels
    it keeps at once, and the launch shape."""

    lo: int
    hi: int
    tile_h: int
    tile_w: int
    depth: int
    threads: int
    blocks: int
    shared_bytes: int


def geometry(device, shape, params: lrn.LRNParams, pool: max_pool.PoolParams) -> Geometry:
    """Tile, channel depth and launch shape of ``lrn_max_pool_forward``, or a clear error
    where the block would be too large (then the two ops run separately)."""
    n, c, h, w = shape
    _, _, oh, ow = max_pool.output_shape(shape, pool)
    lo, hi = lrn.check_window(shape, params)
    width = lo + hi + 1
    ring = 0 if lrn.fixed_width(lo, hi) else width  # slots per thread (none: in registers)
    # Shared memory stays within the 48 KiB every architecture gives a block without the
    # opt-in (lrn.PREFERRED_SHARED_BYTES; the kernel has no static __shared__): the tile
    # shrinks until the region's ring plus one channel of z fits.
    def region(t: int) -> int:
        return ((t - 1) * pool.sh + pool.kh) * ((t - 1) * pool.sw + pool.kw)

    tile = MAX_TILE
    while tile > 1 and (region(tile) > MAX_REGION
                        or 4 * region(tile) * (ring + 1) > lrn.PREFERRED_SHARED_BYTES):
        tile -= 1
    # Balanced tiles (13 outputs as 7 + 6, not 10 + 3): fewer idle threads in edge blocks.
    tile_h, tile_w = -(-oh // -(-oh // tile)), -(-ow // -(-ow // tile))
    threads = ((tile_h - 1) * pool.sh + pool.kh) * ((tile_w - 1) * pool.sw + pool.kw)
    if threads > MAX_THREADS_PER_BLOCK:
        raise ValueError(f"lrn + max_pool2d: a {pool.kh}×{pool.kw} window needs {threads} threads "
                         f"per block, more than {MAX_THREADS_PER_BLOCK}; run the two ops "
                         f"separately")
    cg = c // params.groups
    depth = max(1, min(MAX_DEPTH, cg, lrn.PREFERRED_SHARED_BYTES // (4 * threads) - ring))
    shared = 4 * threads * (ring + depth)
    if shared > lrn.PREFERRED_SHARED_BYTES:
        raise ValueError(f"lrn + max_pool2d: {shared} bytes of shared memory per block exceed "
                         f"the {lrn.PREFERRED_SHARED_BYTES} bytes a block gets without opting in "
                         f"(a {width}-channel LRN window); run the two ops separately")
    blocks = n * -(-oh // tile_h) * -(-ow // tile_w)  # the groups walked in each block
    if blocks > 2**31 - 1:
        raise ValueError(f"lrn + max_pool2d: {blocks} tiles exceed the kernel's int32 block "
                         f"index; run the two ops separately")
    if device.kind != "cuda":
        blocks = min(blocks, lrn.EMU_MAX_BLOCKS)
    return Geometry(lo, hi, tile_h, tile_w, depth, threads, max(blocks, 1), shared)


def forward_launch(device, x, y, argmax, params: lrn.LRNParams,
                   pool: max_pool.PoolParams) -> Launch:
    """y = max_pool(lrn(x)) and its argmax (uint8 or int32, as max_pool.index_dtype)."""
    g = geometry(device, x.shape, params, pool)
    n, c, h, w = x.shape
    return Launch(MODULE, "lrn_max_pool_forward", grid=(g.blocks,), block=(g.threads,),
                  args=(x, y, argmax, np.int32(n), np.int32(c), np.int32(h), np.int32(w),
                        np.int32(params.groups), np.int32(g.lo), np.int32(g.hi),
                        np.float32(params.alpha), np.float32(params.beta), np.float32(params.k),
                        np.int32(y.shape[2]), np.int32(y.shape[3]), np.int32(pool.kh),
                        np.int32(pool.kw), np.int32(pool.sh), np.int32(pool.sw),
                        np.int32(pool.ph), np.int32(pool.pw), np.int32(g.tile_h),
                        np.int32(g.tile_w), np.int32(g.depth)),
                  template_args=(max_pool.INDEX_TYPES[np.dtype(argmax.dtype)],
                                 lrn.fixed_width(g.lo, g.hi)),
                  shared_bytes=g.shared_bytes)


def backward_launch(device, x, dy, argmax, dx, params: lrn.LRNParams,
                    pool: max_pool.PoolParams, chunk: int | None = None) -> Launch:
    """dx from x, the pooled gradient dy and the forward's argmax (one kernel; the launch
    shape is ``ops.lrn``'s backward's: 3 rings, ``chunk`` channels per thread)."""
    g = lrn.geometry(device, x.shape, params, 3, chunk)
    n, c, h, w = x.shape
    return Launch(MODULE, "lrn_max_pool_backward", grid=(g.blocks,), block=(g.threads,),
                  args=(x, dy, argmax, dx, np.int32(n), np.int32(c), np.int32(h), np.int32(w),
                        np.int32(params.groups), np.int32(g.chunk), np.int32(g.lo),
                        np.int32(g.hi), np.float32(params.alpha), np.float32(params.beta),
                        np.float32(params.k), np.int32(dy.shape[2]), np.int32(dy.shape[3]),
                        np.int32(pool.kh), np.int32(pool.kw), np.int32(pool.sh),
                        np.int32(pool.sw), np.int32(pool.ph), np.int32(pool.pw)),
                  template_args=(max_pool.INDEX_TYPES[np.dtype(argmax.dtype)], 0),
                  shared_bytes=g.shared_bytes)


def backward(device, x, dy, argmax, params: lrn.LRNParams, pool: max_pool.PoolParams,
             fuse: bool | None = None):
    """dx of ``max_pool(lrn(x))`` from x, dy and the forward's argmax: the fused kernel
    or the two backwards in turn on emu/cuda (``FUSE_BACKWARD``, or ``fuse``); the
    references on cpu."""
    op = "local_response_norm_max_pool2d backward"
    lrn.check_input(x.shape, params, op)
    out_shape = max_pool.output_shape(x.shape, pool)
    for what, a in (("dy", dy), ("argmax", argmax)):
        if tuple(a.shape) != tuple(out_shape):
            raise ValueError(f"{op}: {what} has shape {tuple(a.shape)}, expected the pooled "
                             f"shape {tuple(out_shape)}")
    if not (device.runs_kernels and (FUSE_BACKWARD.get(device.kind, False) if fuse is None
                                     else fuse)):
        dz = max_pool.backward(device, dy, argmax, pool, x.shape)
        return lrn.backward(device, x, dz, params)
    x = kernel_array(device, x, op, "the saved input x")
    dy = kernel_array(device, dy, op, "the gradient dy")
    if np.dtype(argmax.dtype) != max_pool.index_dtype(pool):
        raise TypeError(f"{op}: argmax must be {max_pool.index_dtype(pool)}, got {argmax.dtype}")
    dx = device.xp.empty_like(x)
    if dx.size:
        device.launch(backward_launch(device, x, dy, argmax, dx, params, pool))
    return dx


def forward(device, x, params: lrn.LRNParams, pool: max_pool.PoolParams,
            fuse: bool | None = None):
    """``(y, argmax)`` of max-pooling the LRN of x: the fused kernel, or LRN then
    max-pool, on emu/cuda as ``FUSE`` says (``fuse`` picks one: the kernel tour and
    the tests run both); the references on cpu."""
    lrn.check_input(x.shape, params, "local_response_norm_max_pool2d")
    out_shape = max_pool.output_shape(x.shape, pool)
    if not device.runs_kernels:
        return max_pool.forward_reference(lrn.forward_reference(x, params), pool)
    if not (FUSE.get(device.kind, False) if fuse is None else fuse):
        return max_pool.forward(device, lrn.forward(device, x, params), pool, with_index=True)
    x = kernel_array(device, x, "local_response_norm_max_pool2d", "x")
    y = device.xp.empty(out_shape, dtype=np.float32)
    argmax = device.xp.empty(out_shape, dtype=max_pool.index_dtype(pool))
    if y.size:
        device.launch(forward_launch(device, x, y, argmax, params, pool))
    return y, argmax
