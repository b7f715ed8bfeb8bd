"""Layout changes for the channels-last tensor-core convolution (``kernels/conv_layout.cu``).

``to_channels_last(device, a3)``: a (B, R, C) array -> (B, C, R), a batched transpose
(activations (N, C, H*W) -> (N, H*W, C)); ``filter_to_channels_last(device, w)``: a
filter (K, Cg, R, S) -> (K, R*S, Cg), the same transpose by a kernel for short rows.
``filter_for_data(device, w, groups)``: a filter (K, Cg, R, S) -> (groups*Cg, R*S, Kg),
backward data's filter as a forward convolution's: per group, channels-out c, taps
flipped, filters k fastest.

With ``precision`` ("tf32" or "bf16") both round the values to the tensor cores'
operands as they move them (``convnet.precision.round_operand``), so that the GEMM
reading them rounds nothing: TF32 values as float32, BF16 as their 16 bits (uint16:
half the bytes to copy).

On ``cpu`` these run the NumPy references (any dtype); on ``emu``/``cuda`` the kernels
(float32 only, 32-bit indices: at most 2**31 - 1 elements an array; empty arrays launch
nothing). Bad input is a ValueError naming the array.
"""
from __future__ import annotations

import numpy as np

from ..precision import round_operand
from ..toolchain.launch import MAX_GRID_DIM, KernelModule, Launch, name_expression
from ._arrays import INT32_MAX, kernel_array
from .elementwise import BLOCK, EMU_MAX_BLOCKS, grid_for, max_blocks

# ROUND: what the kernels round the values they move to (the tensor cores' operands)
ROUNDING = {None: 0, "tf32": 1, "bf16": 2}
MODULE = KernelModule("conv_layout.cu", tuple(
    name_expression(kernel, (r,)) for kernel in ("conv_to_channels_last", "conv_pixels_to_channels_last")
    for r in ROUNDING.values()) + tuple(
    name_expression("conv_filter_layout", (r, data)) for data in (False, True) for r in ROUNDING.values()))
PIXEL_ROWS = 8    # at most this many output rows: a thread per pixel, not 32 x 32 tiles

TILE = 32         # the transpose's tile: TILE x TILE elements
TILE_ROWS = 8     # its block: (TILE, TILE_ROWS) threads


# --------------------------------------------------------------------------- references

def _rounded(a, precision):
    """``a`` as the kernels write it for ``precision``: as it is (None), TF32 values as
    float32 ("tf32"), or BF16 bits as uint16 ("bf16")."""
    if precision is None:
        return a
    r = round_operand(a, precision)
    return r if precision == "tf32" else (r.view(np.uint32) >> 16).astype(np.uint16)


def dtype_for(precision) -> np.dtype:
    """The element type the kernels write for ``precision`` (uint16: BF16 bits)."""
    return np.dtype(np.uint16 if precision == "bf16" else np.float32)


def to_channels_last_reference(a3: np.ndarray, precision=None, out_rows=None) -> np.ndarray:
    """(B, R, C) -> (B, C, out_rows), C-contiguous: out[b, j, i] = a3[b, i, j] (rounded
    to ``precision``'s tensor-core operands when given, as ``dtype_for`` it), zeros for
    R <= i < ``out_rows`` (default R)."""
    out = np.swapaxes(_rounded(a3, precision), 1, 2)
    pad = (out_rows or a3.shape[1]) - a3.shape[1]
    return np.ascontiguousarray(np.pad(out, ((0, 0), (0, 0), (0, pad))) if pad > 0 else out)


def filter_for_data_reference(w: np.ndarray, groups: int, precision=None) -> np.ndarray:
    """(K, Cg, R, S) -> (groups*Cg, R*S, Kg) with
    out[g*Cg + c, t, k] = w[g*Kg + k, c, flat tap RS - 1 - t]."""
    k_total, cg, r, s = w.shape
    kg = k_total // groups
    w = _rounded(w, precision)
    flipped = w.reshape(groups, kg, cg, r * s)[..., ::-1]          # (g, k, c, t) taps flipped
    return np.ascontiguousarray(flipped.transpose(0, 2, 3, 1)).reshape(groups * cg, r * s, kg)


# --------------------------------------------------------------------------- checks

def _check(op: str, array, ndim: int, what: str, shape_doc: str) -> None:
    if not (hasattr(array, "shape") and hasattr(array, "dtype")):
        raise ValueError(f"{op}: {what} must be an array, not {type(array).__name__}")
    if array.ndim != ndim:
        raise ValueError(f"{op}: {what} must be {ndim}-D {shape_doc}, got shape {tuple(array.shape)}")


def _check_kernel_input(device, op: str, array, what: str):
    if array.dtype != np.float32:
        raise ValueError(f"{op}: the {device.kind} kernels take float32, but {what} has dtype "
                         f"{array.dtype}; convert it first (the cpu device runs any dtype)")
    if array.size > INT32_MAX:
        raise ValueError(f"{op}: {what} has {array.size} elements, more than the kernels' "
                         f"int32 indices reach ({INT32_MAX})")
    return kernel_array(device, array, op, what)


def _check_groups(w, groups: int) -> int:
    if isinstance(groups, bool) or not isinstance(groups, (int, np.integer)) or groups < 1:
        raise ValueError(f"filter_for_data: groups must be a positive int, got {groups!r}")
    if w.shape[0] % groups:
        raise ValueError(f"filter_for_data: the filter w's {w.shape[0]} filters do not split "
                         f"into {groups} groups")
    return int(groups)


# --------------------------------------------------------------------------- launches

def _round(precision) -> tuple:
    if precision not in ROUNDING:
        raise ValueError(f"conv_layout: precision must be one of {tuple(ROUNDING)}, got {precision!r}")
    return (ROUNDING[precision],)


def to_channels_last_launch(device, src, dst, batches: int, rows: int, cols: int,
                            precision=None, out_rows=None) -> Launch:
    """Block (32, 8); grid.x a block per 32 x 32 tile of one matrix, grid.y up to
    ``batches`` (at most 65535 on a GPU; on emu few enough that the blocks stay near
    EMU_MAX_BLOCKS), the blocks stepping through the rest. ``out_rows`` (>= ``rows``,
    default ``rows``): the output's rows (channels), the ones past ``rows`` zeros. At
    most ``PIXEL_ROWS`` of them: conv_pixels_to_channels_last, a thread per pixel
    (grid-stride)."""
    out_rows = rows if out_rows is None else out_rows
    if out_rows < rows:
        raise ValueError(f"to_channels_last: out_rows {out_rows} is fewer than the rows {rows}")
    if out_rows <= PIXEL_ROWS:   # a few channels: a thread per pixel
        return Launch(MODULE, "conv_pixels_to_channels_last", template_args=_round(precision),
                      grid=(grid_for(device, max(1, batches * cols)),), block=(BLOCK,),
                      args=(src, dst, np.int32(batches), np.int32(rows), np.int32(cols),
                            np.int32(out_rows)))
    tiles = -(-out_rows // TILE) * -(-cols // TILE)
    if device.kind == "cuda":
        cap = MAX_GRID_DIM[1]
    else:
        cap = max(1, EMU_MAX_BLOCKS // tiles)
    return Launch(MODULE, "conv_to_channels_last", template_args=_round(precision), grid=(max(1, tiles), max(1, min(batches, cap))),
                  block=(TILE, TILE_ROWS),
                  args=(src, dst, np.int32(batches), np.int32(rows), np.int32(cols),
                        np.int32(out_rows)))


def _filter_layout_launch(device, w, out, groups: int, precision, data: bool, out_rows) -> Launch:
    """conv_filter_layout: 1-D grid-stride, a thread per 4 output elements of a row, up to
    the device's cap."""
    k, cg, r, s = w.shape
    fo = k // groups if data else out_rows
    chunks = (groups * cg if data else k) * r * s * -(-fo // 4)
    if chunks * 4 > INT32_MAX:
        raise ValueError(f"conv_filter_layout: {chunks * 4} output elements pass the kernel's int32 indices")
    grid = max(1, min(-(-chunks // BLOCK), max_blocks(device)))
    return Launch(MODULE, "conv_filter_layout", template_args=(*_round(precision), data), grid=(grid,),
                  block=(BLOCK,), args=(w, out, np.int32(k), np.int32(cg), np.int32(r * s),
                                        np.int32(groups), np.int32(fo)))


def filter_to_channels_last_launch(device, w, out, precision=None, out_rows=None) -> Launch:
    """``w`` (K, Cg, R, S) -> ``out`` (K, R*S, out_rows), the channels past Cg zeros
    (``out_rows`` >= Cg, default Cg)."""
    cg = w.shape[1]
    out_rows = cg if out_rows is None else out_rows
    if out_rows < cg:
        raise ValueError(f"filter_to_channels_last: out_rows {out_rows} is fewer than the channels {cg}")
    return _filter_layout_launch(device, w, out, 1, precision, False, out_rows)


def filter_for_data_launch(device, w, out, groups: int, precision=None) -> Launch:
    """``w`` (K, Cg, R, S) -> ``out`` (groups*Cg, R*S, Kg) (``filter_for_data``)."""
    return _filter_layout_launch(device, w, out, groups, precision, True, None)


# --------------------------------------------------------------------------- on a device

def to_channels_last(device, a3, precision=None, out_rows=None):
    """(B, R, C) -> (B, C, out_rows) on ``device`` (rounded to ``precision``'s tensor-core
    operands, "tf32" or "bf16", when given; ``out_rows``: as the reference's)."""
    op = "to_channels_last"
    _check(op, a3, 3, "a3", "(batches, rows, cols)")
    if not device.runs_kernels:
        return to_channels_last_reference(a3, precision, out_rows)
    a3 = _check_kernel_input(device, op, a3, "a3")
    batches, rows, cols = a3.shape
    out_rows = rows if out_rows is None else out_rows
    out = device.xp.empty((batches, cols, out_rows), dtype_for(precision))
    if out.size:
        device.launch(to_channels_last_launch(device, a3, out, batches, rows, cols, precision,
                                              out_rows))
    return out


def filter_to_channels_last(device, w, precision=None, out_rows=None):
    """(K, Cg, R, S) -> (K, R*S, out_rows) on ``device``: ``to_channels_last`` of the
    filter's (K, Cg, R*S) view (``out_rows``: as its)."""
    op = "filter_to_channels_last"
    _check(op, w, 4, "the filter w", "(K, Cg, R, S)")
    k, cg, r, s = w.shape
    if not device.runs_kernels:
        return to_channels_last_reference(w.reshape(k, cg, r * s), precision, out_rows)
    w = _check_kernel_input(device, op, w, "the filter w")
    out = device.xp.empty((k, r * s, cg if out_rows is None else out_rows), dtype_for(precision))
    if w.size:
        device.launch(filter_to_channels_last_launch(device, w, out, precision, out_rows))
    return out


def filter_for_data(device, w, groups: int, precision=None):
    """(K, Cg, R, S) -> (groups*Cg, R*S, K/groups) on ``device`` (see the module's doc)."""
    op = "filter_for_data"
    _check(op, w, 4, "the filter w", "(K, Cg, R, S)")
    groups = _check_groups(w, groups)
    if not device.runs_kernels:
        return filter_for_data_reference(w, groups, precision)
    w = _check_kernel_input(device, op, w, "the filter w")
    k, cg, r, s = w.shape
    out = device.xp.empty((groups * cg, r * s, k // groups), dtype_for(precision))
    if w.size:
        device.launch(filter_for_data_launch(device, w, out, groups, precision))
    return out
