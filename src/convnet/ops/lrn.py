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

Both backward variants exist: s recomputed from x (a third window sum), or read from
the forward, which then stores it; ``SAVE_SCALE`` says which each device uses and why
(measured with ``benchmarks/lrn_pool.py``).

The kernels compute in FP32 (``kernels/lrn_window.cuh``: direct window sums in channel
order, s^-beta by rsqrt for beta = 0.75, else a split exp2/log2); ``error_bound`` states
how far they may be from the float64 reference, and the tests hold them to it.

LRN followed by max-pooling in one kernel is ``ops.lrn_max_pool``.

``make_params`` checks the user's size, alpha, beta, k and groups once and gives the
``LRNParams`` that the references and the launch builders take as they are.
``forward(device, x, params, with_scale)`` / ``backward(device, x, dy, params, scale)``
are where raw arrays enter: they check the arrays against ``params``
(``check_input``), then run the NumPy references on ``cpu`` (any float dtype; float64
for gradient checks) or launch ``kernels/lrn.cu`` on ``emu``/``cuda`` (float32). The
launch builders (``*_launch(device, ...)``) size their grids by ``device.kind`` and
``device.parallel_units``; their ``chunk`` cuts columns other than the device's way.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from .. import arguments
from ..toolchain.launch import KernelModule, Launch
from ..toolchain.resources import DEFAULT_SHARED_BYTES
from ._arrays import check_same_shape, kernel_array
from .elementwise import resident_threads

# The kernels' W: FIXED_WIDTH keeps a window of exactly [c - 2, c + 2] in registers, 0
# keeps any window in shared-memory rings (the same bits). The forwards use W = 5 where
# it fits; the backwards are instantiated with W = 0 only, and walk the paper's window
# (lo = hi = 2, beta = 0.75) in registers anyway, by their inline loop
# (cn_lrn_backward_column_75 in kernels/lrn_window.cuh), the rings only for other
# windows and rare columns. (A W = 5 instantiation of the whole general walk was slower
# in `convnet perf`: 196 against 159 us for norm1's fused backward; the inline loop:
# 104 us, DRAM-bound.)
FIXED_WIDTH = 5
MODULE = KernelModule("lrn.cu", tuple(f"lrn_forward<{flag}, {w}>" for flag in ("false", "true")
                                      for w in (0, FIXED_WIDTH))
                      + ("lrn_backward<false, 0>", "lrn_backward<true, 0>"))


def fixed_width(lo: int, hi: int) -> int:
    """The kernels' W for the clipped window (lo, hi): FIXED_WIDTH (registers) for the
    paper's [c − 2, c + 2], else 0 (rings in shared memory, any window)."""
    return FIXED_WIDTH if (lo, hi) == (FIXED_WIDTH // 2, (FIXED_WIDTH - 1) // 2) else 0

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


MAX_WIDTH = 512                      # channels in one window (after clipping to the group)
THREADS = 256                        # threads per block, fewer where the rings need it
PREFERRED_SHARED_BYTES = DEFAULT_SHARED_BYTES  # what a block gets without opting in on a GPU
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


def _float32(value: float, what: str) -> float:
    if abs(value) > _FLOAT32_MAX:
        raise ValueError(f"local_response_norm: {what} must be finite in float32 (as the "
                         f"kernels take it), got {value}")
    return value


def make_params(size=5, alpha=1e-4, beta=0.75, k=2.0, groups=1) -> LRNParams:
    """Validated LRNParams (the paper's defaults)."""
    op = "local_response_norm"
    size = arguments.positive_int(size, f"{op}: size")
    alpha = _float32(arguments.real(alpha, f"{op}: alpha", low=0), "alpha")
    beta = _float32(arguments.real(beta, f"{op}: beta"), "beta")
    k = _float32(arguments.real(k, f"{op}: k", low=0), "k")
    groups = arguments.positive_int(groups, f"{op}: groups")
    return LRNParams(size, alpha, beta, k, groups)


def check_input(shape, params: LRNParams, op: str = "local_response_norm") -> None:
    """A clear error unless an input of ``shape`` fits ``params`` (NCHW, groups dividing C)."""
    shape = tuple(shape)
    if len(shape) != 4:
        raise ValueError(f"{op} expects an (N, C, H, W) tensor, got shape {shape}")
    if shape[1] % params.groups:
        raise ValueError(f"{op}: {shape[1]} channels cannot be split into {params.groups} "
                         f"equal groups (groups must divide C)")


def clipped_window(params: LRNParams, channels: int) -> tuple[int, int]:
    """(lo, hi) clipped to group_channels − 1: the same windows, the fewest slots."""
    lo, hi = params.window
    limit = max(channels // params.groups - 1, 0)
    return min(lo, limit), min(hi, limit)


# --------------------------------------------------------------------------- references

# The references run over slabs of about this many elements (one image's channels over a
# band of its rows, or a few whole images): their float64 temporaries (up to five of a
# slab's size, 2.5 MiB) stay in cache instead of streaming the tensor through memory once
# per operation (one thread, loaded machine: backward 2-2.5x, forward 1.3-1.8x as fast as
# whole-tensor passes on the default and the paper's norm1/norm2; 2^14 and 2^15 elements
# were no faster). Each element's arithmetic is the same whatever the slabs.
SLAB_ELEMENTS = 1 << 16


def _slabs(shape) -> list:
    """Indices covering an (N, C, H, W) tensor in slabs of about SLAB_ELEMENTS, each with
    every channel (the windows run across channels)."""
    n, c, h, w = shape
    if c * h * w >= SLAB_ELEMENTS:
        rows = max(1, SLAB_ELEMENTS // max(c * w, 1))
        return [(i, slice(None), slice(r0, r0 + rows)) for i in range(n) for r0 in range(0, h, rows)]
    images = SLAB_ELEMENTS // max(c * h * w, 1)
    return [slice(i, i + images) for i in range(0, n, images)]


class _Scratch:
    """``count`` reusable temporaries of ``dtype`` for slabs of up to ``size`` elements."""

    def __init__(self, count: int, size: int, dtype):
        self.flat = [np.empty(size, dtype) for _ in range(count)]

    def views(self, shape) -> list:
        size = math.prod(shape)
        return [f[:size].reshape(shape) for f in self.flat]


def _window_sum(values: np.ndarray, before: int, after: int, groups: int,
                out: np.ndarray | None = None) -> np.ndarray:
    """Σ values[j] over j ∈ [c − before, c + after] within c's group (channels: the
    third axis from the end), in values' dtype, into ``out`` (C-contiguous) when given:
    values plus one shifted add per other offset of the window (c − 1 fused with the copy).

    Direct sums, not a running (cumulative) sum over the channels: the difference of two
    running sums loses a small window next to a large earlier channel (cancellation:
    an error of u·Σ over the whole group, against u·(window) here), and the float64
    error bound tests need the exact window of 1e-20..1e21 inputs. With non-negative
    terms (s) the result is within (before + after)·u of the exact sum, relatively."""
    *lead, c, h, w = values.shape
    cg = c // groups
    out = np.empty(values.shape, values.dtype) if out is None else out  # C-contiguous
    v = values.reshape(*lead, groups, cg, h, w)
    o = out.reshape(*lead, groups, cg, h, w)
    if before and cg > 1:                            # the copy and the first add: one pass
        o[..., :1, :, :] = v[..., :1, :, :]
        np.add(v[..., 1:, :, :], v[..., :cg - 1, :, :], out=o[..., 1:, :, :])
    else:
        np.copyto(o, v)
    for d in range(2, min(before, cg - 1) + 1):      # j = c − d
        o[..., d:, :, :] += v[..., :cg - d, :, :]
    for d in range(1, min(after, cg - 1) + 1):       # j = c + d
        o[..., :cg - d, :, :] += v[..., d:, :, :]
    return out


def _as_dtype(params: LRNParams, dtype) -> tuple[float, float, float]:
    """alpha, beta, k rounded to ``dtype`` (as the float32 kernels receive them)."""
    t = np.dtype(dtype).type
    return float(t(params.alpha)), float(t(params.beta)), float(t(params.k))


def _power(s: np.ndarray, beta: float, out: np.ndarray | None = None,
           scratch: np.ndarray | None = None) -> np.ndarray:
    """s^(−beta) in s's dtype, into ``out`` (and ``scratch``) when given; for the paper's
    beta = 0.75 as 1 / (√s · √√s) (correctly rounded square roots, within 2.5 ulp;
    NumPy's float32 power is ~3x slower)."""
    if beta != 0.75:
        return np.power(s, s.dtype.type(-beta), out=out)
    root = np.sqrt(s, out=scratch)
    p = np.sqrt(root, out=out)
    p *= root
    return np.divide(s.dtype.type(1), p, out=p)


def _scale_slab(x, params: LRNParams, s64, squares):
    """k + alpha·Σ a² of a slab of x in float64, into ``s64`` (``squares``: scratch)."""
    alpha, _, k = _as_dtype(params, x.dtype)
    lo, hi = params.window
    np.multiply(x, x, out=squares, dtype=np.float64)   # exact for float32 x
    _window_sum(squares, lo, hi, params.groups, out=s64)
    s64 *= alpha
    s64 += k
    return s64


def scale_reference(x: np.ndarray, params: LRNParams) -> np.ndarray:
    """s = k + alpha·Σ a², summed in float64 and rounded once to x's dtype (the correctly
    rounded s for float32 x: its squares are exact in float64, and a window of them adds
    with a relative error of (size − 1)·2^-53)."""
    s = np.empty(x.shape, x.dtype)
    scratch = _Scratch(2, SLAB_ELEMENTS, np.float64)
    with np.errstate(all="ignore"):
        for i in _slabs(x.shape):
            s64, squares = scratch.views(s[i].shape)
            s[i] = _scale_slab(x[i], params, s64, squares)
    return s


def forward_reference(x: np.ndarray, params: LRNParams, with_scale: bool = False):
    """b = a · s^(−beta) in x's dtype from the rounded s (within 3 ulp of the exact b with
    beta = 0.75); with ``with_scale``, ``(b, s)``. Slab by slab (``_slabs``)."""
    _, beta, _ = _as_dtype(params, x.dtype)
    y = np.empty(x.shape, x.dtype)
    s = np.empty(x.shape, x.dtype) if with_scale else None
    wide = _Scratch(2, SLAB_ELEMENTS, np.float64)
    narrow = _Scratch(2, SLAB_ELEMENTS, x.dtype)
    with np.errstate(all="ignore"):
        for i in _slabs(x.shape):
            shape = y[i].shape
            s64, squares = wide.views(shape)
            si, root = narrow.views(shape)
            if s is not None:
                si = s[i]
            np.copyto(si, _scale_slab(x[i], params, s64, squares), casting="unsafe")
            yi = _power(si, beta, out=y[i], scratch=root)
            yi *= x[i]
    return (y, s) if with_scale else y


def backward_reference(x: np.ndarray, dy: np.ndarray, params: LRNParams,
                       scale: np.ndarray | None = None) -> np.ndarray:
    """dx in dy's dtype, float64 inside from the rounded s (``scale``, or recomputed as the
    kernels do), rounded once; slab by slab (``_slabs``).

    float64 because dx = d − 2αβ·a·Σr cancels where the two terms are close (αa² near
    s/(2β)): float32 intermediates leave an error of a few u·|d| there, far above |dx|
    (the kernels are held to this reference within 2e-5)."""
    alpha, beta, _ = _as_dtype(params, x.dtype)
    lo, hi = params.window
    dx = np.empty(x.shape, dy.dtype)
    wide = _Scratch(5, SLAB_ELEMENTS, np.float64)
    narrow = _Scratch(1, SLAB_ELEMENTS, x.dtype)
    with np.errstate(all="ignore"):
        for i in _slabs(x.shape):
            s, x64, direct, r, t = wide.views(dx[i].shape)
            if scale is None:
                _scale_slab(x[i], params, s, r)
                if x.dtype != np.float64:                  # s rounded to x's dtype
                    (rounded,) = narrow.views(s.shape)
                    np.copyto(rounded, s, casting="unsafe")
                    np.copyto(s, rounded)
            else:
                np.copyto(s, scale[i], casting="unsafe")
            np.copyto(x64, x[i], casting="unsafe")
            _power(s, beta, out=direct, scratch=t)
            direct *= dy[i]                                # d = dy · s^(−beta)
            np.multiply(direct, x64, out=r)
            r /= s                                         # r = d · a / s
            total = _window_sum(r, hi, lo, params.groups, out=t)  # Σ r, mirrored window
            total *= x64
            total *= -2.0 * alpha * beta
            total += direct
            dx[i] = total
    return dx


# --------------------------------------------------------------------------- error bounds

U = 2.0 ** -24   # unit roundoff of float32


class ErrorBound(NamedTuple):
    """How far the kernels' float32 results may be from the float64 formula, as relative
    errors (multiples of ``U``; derivation in ``kernels/lrn_window.cuh``):

    * ``scale``: |s − s₆₄| ≤ scale·U·s₆₄ — w − 1 roundings of a sum of non-negative
      terms, one of the fma with alpha and k, one of the reference's own rounding;
    * ``power``: s^(−β) from the kernel's s: 12 U for β = 0.75 (two MUFU.RSQ of ≤ 2 ulp,
      two products), (4|β| + 8) U otherwise (log2 ≤ 2^−22 absolute on [1, 2): 2.8|β| U
      through exp2, exp2 ≤ 2 ulp, three roundings of the exponent);
    * ``forward``: |y − y₆₄| ≤ forward·U·|y₆₄|: |β|·scale (s's error through the power)
      + power + 2 (a·p and the reference's rounding);
    * ``direct``, ``window``: the backward, dx = d − 2αβ·a·Σr with d = dz·s^(−β):
      |dx − dx₆₄| ≤ direct·U·|d| + window·U·2αβ·|a|·Σ|r| + 2·U·|dx₆₄|
      (direct = |β|·scale + power + 1; window = direct + 2w + 9: s again, the
      approximate division a/s (2 ulp), r's product, the window sum (w − 1), 2αβ·a,
      its product with Σr and the fma; r is kept scaled by 2^40, exactly).

    Absolute, for flushed subnormals: squares below 2^−126 count as 0 (s off by at most
    w·alpha·2^−126) and results below 2^−126 are 0. Holds on a GPU (whose MUFU is the
    approximate part); emu's rsqrtf, log2 and exp2 are closer (correctly rounded rsqrt)."""

    scale: float
    power: float
    forward: float
    direct: float
    window: float


def error_bound(params: LRNParams, width: int) -> ErrorBound:
    """The bound for a window of ``width`` channels (``sum(check_window(...)) + 1``)."""
    beta = abs(float(np.float32(params.beta)))
    scale = width + 2.0
    power = 12.0 if np.float32(params.beta) == np.float32(0.75) else 4.0 * beta + 8.0
    direct = beta * scale + power + 1.0
    return ErrorBound(scale, power, beta * scale + power + 2.0, direct, direct + 2.0 * width + 9.0)


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


def default_chunk(device, shape, params: LRNParams) -> int:
    """Channels per thread: the whole group, except on a GPU with too few columns to
    fill it once (then split into chunks of at least MIN_CHUNK channels)."""
    n, c, h, w = shape
    cg = c // params.groups
    columns = n * params.groups * h * w
    target = resident_threads(device) if device.kind == "cuda" else 0
    if columns >= target or cg <= MIN_CHUNK:
        return max(cg, 1)
    pieces = min(-(-target // max(columns, 1)), cg // MIN_CHUNK)
    return -(-cg // max(pieces, 1))


def check_window(shape, params: LRNParams) -> tuple[int, int]:
    """The clipped window (lo, hi), or a clear error where the kernels cannot run it
    (wider than MAX_WIDTH, or sizes beyond their int32 indices)."""
    n, c, h, w = shape
    lo, hi = clipped_window(params, c)
    width = lo + hi + 1
    if width > MAX_WIDTH:
        raise ValueError(f"local_response_norm: a window of {width} channels (size {params.size}, "
                         f"clipped to the group of {c // params.groups}) exceeds the kernels' "
                         f"limit of {MAX_WIDTH}; the cpu device has no limit")
    for what, v in (("N", n), ("C", c), ("H·W", h * w)):
        if v > _INT32_MAX:
            raise ValueError(f"local_response_norm: {what} = {v} exceeds the kernels' int32 range")
    return lo, hi


def geometry(device, shape, params: LRNParams, rings: int, chunk: int | None = None) -> Geometry:
    """The launch over an input of ``shape`` with ``rings`` rings per thread (1 forward,
    3 backward); ``chunk`` channels per thread (default: ``default_chunk``)."""
    n, c, h, w = shape
    lo, hi = check_window(shape, params)
    width = lo + hi + 1
    cg = c // params.groups
    if chunk is None:
        chunk = default_chunk(device, shape, params)
    chunk = min(arguments.positive_int(chunk, "local_response_norm: chunk"), max(cg, 1))
    columns = n * params.groups * (-(-cg // chunk)) * h * w
    per_thread = 4 * rings * width  # at most 4 * 3 * MAX_WIDTH: within any GPU's opt-in
    threads = THREADS
    while threads > 32 and threads * per_thread > PREFERRED_SHARED_BYTES:
        threads //= 2
    blocks = max(1, -(-columns // threads))
    if device.kind != "cuda":
        blocks = min(blocks, EMU_MAX_BLOCKS)
    return Geometry(lo, hi, chunk, columns, threads, blocks, threads * per_thread)


def _scalar_args(shape, params: LRNParams, g: Geometry) -> tuple:
    n, c, h, w = shape
    return (np.int32(n), np.int32(c), np.int32(h * w), np.int32(params.groups), np.int32(g.chunk),
            np.int32(g.lo), np.int32(g.hi), np.float32(params.alpha), np.float32(params.beta),
            np.float32(params.k))


def forward_launch(device, x, y, params: LRNParams, scale=None,
                   chunk: int | None = None) -> Launch:
    """y (and s, when ``scale`` is given) from x."""
    g = geometry(device, x.shape, params, 1, chunk)
    write_scale = scale is not None
    return Launch(MODULE, "lrn_forward", grid=(g.blocks,), block=(g.threads,),
                  args=(x, y, scale if write_scale else y, *_scalar_args(x.shape, params, g)),
                  template_args=(write_scale, fixed_width(g.lo, g.hi)),
                  shared_bytes=g.shared_bytes)


def backward_launch(device, x, dy, dx, params: LRNParams, scale=None,
                    chunk: int | None = None) -> Launch:
    """dx from x and dy; s read from ``scale`` when given, else recomputed."""
    g = geometry(device, x.shape, params, 3, chunk)
    saved = scale is not None
    return Launch(MODULE, "lrn_backward", grid=(g.blocks,), block=(g.threads,),
                  args=(x, scale if saved else x, dy, dx, *_scalar_args(x.shape, params, g)),
                  template_args=(saved, 0), shared_bytes=g.shared_bytes)


# --------------------------------------------------------------------------- on a device

def forward(device, x, params: LRNParams, with_scale: bool = False):
    """y, or ``(y, s)`` with ``with_scale``, as arrays of ``device``."""
    check_input(x.shape, params)
    if not device.runs_kernels:
        return forward_reference(x, params, with_scale)
    x = kernel_array(device, x, "local_response_norm", "x")
    y = device.xp.empty_like(x)
    scale = device.xp.empty_like(x) if with_scale else None
    if x.size:
        device.launch(forward_launch(device, x, y, params, scale))
    return (y, scale) if with_scale else y


def backward(device, x, dy, params: LRNParams, scale=None):
    """dx from the forward's input x and dy (and its s, when kept)."""
    op = "local_response_norm backward"
    check_input(x.shape, params, op)
    check_same_shape(op, x=x, dy=dy)
    if scale is not None:
        check_same_shape(op, x=x, scale=scale)
    if not device.runs_kernels:
        return backward_reference(x, dy, params, scale)
    x = kernel_array(device, x, op, "the saved input x")
    dy = kernel_array(device, dy, op, "the gradient dy")
    if scale is not None:
        scale = kernel_array(device, scale, op, "the saved scale")
    dx = device.xp.empty_like(dy)
    if dx.size:
        device.launch(backward_launch(device, x, dy, dx, params, scale))
    return dx
