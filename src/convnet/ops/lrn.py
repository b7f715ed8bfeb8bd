"""Local response normalization across channels (Krizhevsky et al. 2012, section 3.3).

    s[c] = k + alpha · Σ_{j ∈ W(c)} a[j]²,   b[c] = a[c] · s[c]^(−beta)
    W(c) = [c − size//2, c + (size−1)//2], clipped to c's channel group

The paper's form: alpha is NOT divided by size (Caffe, cuda-convnet and PyTorch's
``nn.LocalResponseNorm`` divide it: their alpha = ours × size). An even size reaches
one channel further down than up. ``groups`` splits the channels into equal
consecutive parts; no window crosses a part's boundary (``groups=2`` is the
single-device form of the paper's two-column network).

Backward, with r[j] = dy[j] · b[j] / s[j]:

    dx[c] = dy[c] · s[c]^(−beta) − 2 · alpha · beta · a[c] · Σ_{j : c ∈ W(j)} r[j]

(b[j] depends on a[c] through s[j] whenever c ∈ W(j), i.e. j ∈ [c − (size−1)//2,
c + size//2]: the mirrored window).

Both backward variants exist: s recomputed from x (a third running sum), or read from
the forward, which then stores it; ``SAVE_SCALE`` says which each device uses and why
(measured with ``benchmarks/lrn_pool.py``).

``fused_forward`` is LRN followed by max-pooling in one kernel (``kernels/lrn_max_pool.cu``):
x read once, only the pooled output and its argmax written; ``FUSE`` says where it runs.

``forward(device, x, ...)`` / ``backward(device, x, dy, ...)`` take and return raw
arrays of ``device``: NumPy references on ``cpu`` (any float dtype; float64 for
gradient checks), ``kernels/lrn.cu`` on ``emu``/``cuda`` (float32).
"""
from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import numpy as np

from ..toolchain.launch import MAX_DYNAMIC_SHARED_BYTES, KernelModule, Launch
from ._arrays import check_same_shape, kernel_array

MODULE = KernelModule("lrn.cu", ("lrn_forward<false>", "lrn_forward<true>",
                                 "lrn_backward<false>", "lrn_backward<true>"))

# Per device kind: does the forward keep s for the backward (True), or does the
# backward recompute it from x with a third running sum (False)? Measured with
# benchmarks/lrn_pool.py (notes "lrn save-vs-recompute": forward + backward pairs):
# * emu: keeping s is as fast on 96×55×55 (within 1 %) and 10 % faster on 256×27×27
#   (batch 8, one worker, interleaved runs): the emulator is compute-bound, and reading
#   s costs less than the window of squares. So emu keeps it.
# * cuda: both kernels are memory-bound there; recomputing moves 20 bytes per element
#   over forward and backward instead of 28, and keeps no extra tensor of the input's
#   size. Not yet measured on a GPU: the benchmark times both pairs there too.
# * cpu: the NumPy reference; recompute (no extra tensor).
SAVE_SCALE = {"cpu": False, "emu": True, "cuda": False}


def saves_scale(device) -> bool:
    """Whether the LRN Function keeps s from the forward on ``device``."""
    return SAVE_SCALE.get(device.kind, False)


MAX_WIDTH = 512               # channels in one window (after clipping to the group)
PREFERRED_SHARED_BYTES = 48 * 1024   # what a block gets without opting in on a GPU
CUDA_TARGET_COLUMNS = 1 << 18        # threads that fill an H100 (132 SMs x 2048) about once
MIN_CHUNK = 16                       # channels per thread when columns are split on a GPU
EMU_MAX_BLOCKS = 256                 # fibers are costly on emu: threads loop over columns
_INT32_MAX = 2**31 - 1
_FLOAT32_MAX = float(np.finfo(np.float32).max)


class LRNParams(NamedTuple):
    size: int
    alpha: float
    beta: float
    k: float
    groups: int

    @property
    def window(self) -> tuple[int, int]:
        """(lo, hi): W(c) = [c − lo, c + hi]."""
        return self.size // 2, (self.size - 1) // 2


def _real(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"local_response_norm: {what} must be a real number, not "
                        f"{type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or abs(value) > _FLOAT32_MAX:
        raise ValueError(f"local_response_norm: {what} must be finite (in float32, as the "
                         f"kernels take it), got {value}")
    return value


def _int(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"local_response_norm: {what} must be an int, not {type(value).__name__}")
    return int(value)


def make_params(size=5, alpha=1e-4, beta=0.75, k=2.0, groups=1) -> LRNParams:
    """Validated LRNParams (the paper's defaults)."""
    size, groups = _int(size, "size"), _int(groups, "groups")
    alpha, beta, k = _real(alpha, "alpha"), _real(beta, "beta"), _real(k, "k")
    if size < 1:
        raise ValueError(f"local_response_norm: size must be >= 1, got {size}")
    if groups < 1:
        raise ValueError(f"local_response_norm: groups must be >= 1, got {groups}")
    if alpha < 0:
        raise ValueError(f"local_response_norm: alpha must be >= 0, got {alpha}")
    if k < 0:
        raise ValueError(f"local_response_norm: k must be >= 0, got {k}")
    return LRNParams(size, alpha, beta, k, groups)


def check_input(x, params: LRNParams, op: str = "local_response_norm") -> None:
    shape = tuple(getattr(x, "shape", ()))
    if getattr(x, "ndim", None) != 4:
        raise ValueError(f"{op} expects an (N, C, H, W) tensor, got shape {shape}")
    if x.dtype.kind != "f":
        raise TypeError(f"{op} takes a floating-point tensor, not {x.dtype}")
    if shape[1] % params.groups:
        raise ValueError(f"{op}: {shape[1]} channels cannot be split into {params.groups} "
                         f"equal groups (groups must divide C)")


def clipped_window(params: LRNParams, channels: int) -> tuple[int, int]:
    """(lo, hi) clipped to group_channels − 1: the same windows, the fewest slots."""
    lo, hi = params.window
    limit = max(channels // params.groups - 1, 0)
    return min(lo, limit), min(hi, limit)


# --------------------------------------------------------------------------- references

def _window_sum(values: np.ndarray, before: int, after: int, groups: int) -> np.ndarray:
    """Σ values[j] over j ∈ [c − before, c + after] within c's group (float64, direct)."""
    n, c, h, w = values.shape
    cg = c // groups
    before, after = min(before, cg), min(after, cg)
    v = values.reshape(n, groups, cg, h, w)
    padded = np.zeros((n, groups, cg + before + after, h, w), dtype=values.dtype)
    padded[:, :, before:before + cg] = v
    out = np.zeros_like(v)
    for d in range(before + after + 1):
        out += padded[:, :, d:d + cg]
    return out.reshape(n, c, h, w)


def _as_dtype(params: LRNParams, dtype) -> tuple[float, float, float]:
    """alpha, beta, k rounded to ``dtype`` (as the float32 kernels receive them)."""
    t = np.dtype(dtype).type
    return float(t(params.alpha)), float(t(params.beta)), float(t(params.k))


def scale_reference(x: np.ndarray, params: LRNParams) -> np.ndarray:
    """s = k + alpha·Σ a² in float64, rounded once to x's dtype (as the kernels do)."""
    alpha, _, k = _as_dtype(params, x.dtype)
    lo, hi = params.window
    x64 = x.astype(np.float64)
    with np.errstate(all="ignore"):
        return (k + alpha * _window_sum(x64 * x64, lo, hi, params.groups)).astype(x.dtype)


def forward_reference(x: np.ndarray, params: LRNParams, with_scale: bool = False):
    """b = a · s^(−beta) (float64 inside, rounded once to x's dtype); with ``with_scale``,
    ``(b, s)``."""
    check_input(x, params)
    _, beta, _ = _as_dtype(params, x.dtype)
    s = scale_reference(x, params)
    with np.errstate(all="ignore"):
        y = (x.astype(np.float64) * np.power(s.astype(np.float64), -beta)).astype(x.dtype)
    return (y, s) if with_scale else y


def backward_reference(x: np.ndarray, dy: np.ndarray, params: LRNParams,
                       scale: np.ndarray | None = None) -> np.ndarray:
    """dx (float64 inside, rounded to dy's dtype); s from ``scale`` or recomputed."""
    check_input(x, params, "local_response_norm backward")
    alpha, beta, _ = _as_dtype(params, x.dtype)
    lo, hi = params.window
    s = (scale_reference(x, params) if scale is None else scale).astype(np.float64)
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    with np.errstate(all="ignore"):
        direct = dy64 * np.power(s, -beta)
        r = direct * x64 / s
        dx = direct - 2.0 * alpha * beta * x64 * _window_sum(r, hi, lo, params.groups)
    return dx.astype(dy.dtype)


# --------------------------------------------------------------------------- launches

class Geometry(NamedTuple):
    """How a launch covers the tensor: the clipped window, channels per thread,
    threads per block, blocks, dynamic shared bytes."""

    lo: int
    hi: int
    chunk: int
    columns: int
    threads: int
    blocks: int
    shared_bytes: int


def _on_gpu(array) -> bool:
    return hasattr(array, "__cuda_array_interface__")


def default_chunk(shape, params: LRNParams, on_gpu: bool) -> int:
    """Channels per thread: the whole group, except on a GPU with too few columns to
    fill it (then split into chunks of at least MIN_CHUNK channels)."""
    n, c, h, w = shape
    cg = c // params.groups
    columns = n * params.groups * h * w
    if not on_gpu or columns >= CUDA_TARGET_COLUMNS or cg <= MIN_CHUNK:
        return max(cg, 1)
    pieces = min(-(-CUDA_TARGET_COLUMNS // max(columns, 1)), cg // MIN_CHUNK)
    return -(-cg // max(pieces, 1))


def geometry(shape, params: LRNParams, rings: int, on_gpu: bool, chunk: int | None = None) -> Geometry:
    n, c, h, w = shape
    lo, hi = clipped_window(params, c)
    width = lo + hi + 1
    if width > MAX_WIDTH:
        raise ValueError(f"local_response_norm: a window of {width} channels (size {params.size}, "
                         f"clipped to the group of {c // params.groups}) exceeds the kernels' "
                         f"limit of {MAX_WIDTH}; the cpu device has no limit")
    cg = c // params.groups
    if chunk is None:
        chunk = default_chunk(shape, params, on_gpu)
    if chunk < 1:
        raise ValueError(f"local_response_norm: chunk must be >= 1, got {chunk}")
    chunk = min(int(chunk), max(cg, 1))
    columns = n * params.groups * (-(-cg // chunk)) * h * w
    per_thread = 4 * rings * width
    threads = 256
    while threads > 32 and threads * per_thread > PREFERRED_SHARED_BYTES:
        threads //= 2
    shared = threads * per_thread
    if shared > MAX_DYNAMIC_SHARED_BYTES:  # unreachable with MAX_WIDTH = 512; kept as a guard
        raise ValueError(f"local_response_norm: a window of {width} channels needs {shared} "
                         f"bytes of shared memory per block")
    blocks = max(1, -(-columns // threads))
    if not on_gpu:
        blocks = min(blocks, EMU_MAX_BLOCKS)
    return Geometry(lo, hi, chunk, columns, threads, blocks, shared)


def _check_sizes(shape) -> None:
    n, c, h, w = shape
    for what, v in (("N", n), ("C", c), ("H·W", h * w)):
        if v > _INT32_MAX:
            raise ValueError(f"local_response_norm: {what} = {v} exceeds the kernels' int32 range")


def _scalar_args(shape, params: LRNParams, g: Geometry) -> tuple:
    n, c, h, w = shape
    return (np.int32(n), np.int32(c), np.int32(h * w), np.int32(params.groups), np.int32(g.chunk),
            np.int32(g.lo), np.int32(g.hi), np.float32(params.alpha), np.float32(params.beta),
            np.float32(params.k))


def forward_launch(x, y, params: LRNParams, scale=None, chunk: int | None = None) -> Launch:
    """y (and s, when ``scale`` is given) from x."""
    g = geometry(x.shape, params, 1, _on_gpu(x), chunk)
    write_scale = scale is not None
    return Launch(MODULE, "lrn_forward", grid=(g.blocks,), block=(g.threads,),
                  args=(x, y, scale if write_scale else y, *_scalar_args(x.shape, params, g)),
                  template_args=(write_scale,), shared_bytes=g.shared_bytes)


def backward_launch(x, dy, dx, params: LRNParams, scale=None, chunk: int | None = None) -> Launch:
    """dx from x and dy; s read from ``scale`` when given, else recomputed."""
    g = geometry(x.shape, params, 3, _on_gpu(x), chunk)
    saved = scale is not None
    return Launch(MODULE, "lrn_backward", grid=(g.blocks,), block=(g.threads,),
                  args=(x, scale if saved else x, dy, dx, *_scalar_args(x.shape, params, g)),
                  template_args=(saved,), shared_bytes=g.shared_bytes)


# --------------------------------------------------------------------------- on a device

def forward(device, x, params: LRNParams, with_scale: bool = False, chunk: int | None = None):
    """y, or ``(y, s)`` with ``with_scale``, as arrays of ``device``."""
    check_input(x, params)
    if not device.runs_kernels:
        return forward_reference(x, params, with_scale)
    x = kernel_array(device, x, "local_response_norm", "x")
    _check_sizes(x.shape)
    y = device.xp.empty_like(x)
    scale = device.xp.empty_like(x) if with_scale else None
    if x.size:
        device.launch(forward_launch(x, y, params, scale, chunk))
    return (y, scale) if with_scale else y


def backward(device, x, dy, params: LRNParams, scale=None, chunk: int | None = None):
    """dx from the forward's input x and dy (and its s, when kept)."""
    check_input(x, params, "local_response_norm backward")
    check_same_shape("local_response_norm backward", x=x, dy=dy)
    if scale is not None:
        check_same_shape("local_response_norm backward", x=x, scale=scale)
    if not device.runs_kernels:
        return backward_reference(x, dy, params, scale)
    x = kernel_array(device, x, "local_response_norm backward", "the saved input x")
    dy = kernel_array(device, dy, "local_response_norm backward", "the gradient dy")
    if scale is not None:
        scale = kernel_array(device, scale, "local_response_norm backward", "the saved scale")
    _check_sizes(x.shape)
    dx = device.xp.empty_like(dy)
    if dx.size:
        device.launch(backward_launch(x, dy, dx, params, scale, chunk))
    return dx


# --------------------------------------------------------------------------- LRN + max-pool

FUSED_MODULE = KernelModule("lrn_max_pool.cu", ("lrn_max_pool_forward<unsigned char>",
                                                "lrn_max_pool_forward<int>"))
FUSED_MAX_REGION = 512   # threads per block: input pixels under one tile of windows
FUSED_MAX_TILE = 16
FUSED_MAX_DEPTH = 32


class FusedGeometry(NamedTuple):
    lo: int
    hi: int
    tile_h: int
    tile_w: int
    depth: int
    threads: int
    blocks: int
    shared_bytes: int


def fused_geometry(shape, params: LRNParams, pool, on_gpu: bool) -> FusedGeometry:
    """Tile, channel depth and launch shape of ``lrn_max_pool_forward`` (pool: PoolParams)."""
    from .max_pool import output_shape
    n, c, h, w = shape
    _, _, oh, ow = output_shape(shape, pool)
    lo, hi = clipped_window(params, c)
    width = lo + hi + 1
    if width > MAX_WIDTH:
        geometry(shape, params, 1, on_gpu)  # raises the window-size error
    tile = FUSED_MAX_TILE
    while tile > 1 and ((tile - 1) * pool.sh + pool.kh) * ((tile - 1) * pool.sw + pool.kw) \
            > FUSED_MAX_REGION:
        tile -= 1
    # Balanced tiles (13 outputs as 7 + 6, not 10 + 3): fewer idle threads in edge blocks.
    tile_h, tile_w = -(-oh // -(-oh // tile)), -(-ow // -(-ow // tile))
    threads = ((tile_h - 1) * pool.sh + pool.kh) * ((tile_w - 1) * pool.sw + pool.kw)
    if threads > 1024:
        raise ValueError(f"lrn + max_pool2d: a {pool.kh}×{pool.kw} window needs {threads} threads "
                         f"per block, more than 1024; run the two ops separately")
    cg = c // params.groups
    depth = max(1, min(FUSED_MAX_DEPTH, cg, PREFERRED_SHARED_BYTES // (4 * threads) - width))
    shared = 4 * threads * (width + depth)
    if shared > MAX_DYNAMIC_SHARED_BYTES:
        raise ValueError(f"lrn + max_pool2d: {shared} bytes of shared memory per block exceed "
                         f"{MAX_DYNAMIC_SHARED_BYTES}; run the two ops separately")
    blocks = n * params.groups * -(-oh // tile_h) * -(-ow // tile_w)
    if not on_gpu:
        blocks = min(blocks, EMU_MAX_BLOCKS)
    return FusedGeometry(lo, hi, tile_h, tile_w, depth, threads, max(blocks, 1), shared)


def fused_forward_launch(x, y, argmax, params: LRNParams, pool) -> Launch:
    """y = max_pool(lrn(x)) and its argmax (uint8 or int32, as max_pool.index_dtype)."""
    from .max_pool import INDEX_TYPES
    g = fused_geometry(x.shape, params, pool, _on_gpu(x))
    n, c, h, w = x.shape
    return Launch(FUSED_MODULE, "lrn_max_pool_forward", grid=(g.blocks,), block=(g.threads,),
                  args=(x, y, argmax, np.int32(n), np.int32(c), np.int32(h), np.int32(w),
                        np.int32(params.groups), np.int32(g.lo), np.int32(g.hi),
                        np.float32(params.alpha), np.float32(params.beta), np.float32(params.k),
                        np.int32(y.shape[2]), np.int32(y.shape[3]), np.int32(pool.kh),
                        np.int32(pool.kw), np.int32(pool.sh), np.int32(pool.sw),
                        np.int32(pool.ph), np.int32(pool.pw), np.int32(g.tile_h),
                        np.int32(g.tile_w), np.int32(g.depth)),
                  template_args=(INDEX_TYPES[np.dtype(argmax.dtype)],), shared_bytes=g.shared_bytes)


# Per device kind: does local_response_norm_max_pool2d run the fused kernel? Measured
# with benchmarks/lrn_pool.py (notes "fused-vs-separate"; the outputs are bit-identical):
# * emu: no. The fused kernel is 10-14 % slower than lrn_forward + max_pool_forward_index
#   on both AlexNet shapes (batch 8): the emulator is compute-bound, and the fusion
#   saves memory traffic while adding the windows' overlap (11 % more LRN) and two
#   barriers per `depth` channels.
# * cuda: yes. Memory-bound there, it moves 4 bytes per input element + 5 per output
#   instead of 12 + 5 (2.5x less). Not yet measured on a GPU: the benchmark times both.
FUSE = {"emu": False, "cuda": True}


def fused_forward(device, x, params: LRNParams, pool, fuse: bool | None = None):
    """``(y, argmax)`` of max-pooling the LRN of x: the fused kernel, or LRN then
    max-pool, on emu/cuda as ``FUSE`` says (``fuse`` overrides); the references on cpu."""
    from . import max_pool
    check_input(x, params)
    out_shape = max_pool.output_shape(x.shape, pool)
    if not device.runs_kernels:
        return max_pool.forward_reference(forward_reference(x, params), pool)
    if not (FUSE.get(device.kind, False) if fuse is None else fuse):
        return max_pool.forward(device, forward(device, x, params), pool, with_index=True)
    x = kernel_array(device, x, "local_response_norm + max_pool2d", "x")
    _check_sizes(x.shape)
    y = device.xp.empty(out_shape, dtype=np.float32)
    argmax = device.xp.empty(out_shape, dtype=max_pool.index_dtype(pool))
    if y.size:
        device.launch(fused_forward_launch(x, y, argmax, params, pool))
    return y, argmax
