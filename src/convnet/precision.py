"""Arithmetic precision of the convolutions (issue 12, part 4).

``"fp32"`` (the default, the paper's arithmetic): FP32 operands and FP32 FMA
accumulation on CUDA cores. ``"tf32"``: operands rounded to TF32 (``cvt.rna.tf32.f32``:
10 mantissa bits, round to nearest, ties away from zero) and multiplied on tensor
cores (``mma.sync`` m16n8k8) with FP32 accumulation. ``"bf16"``: operands rounded to
BF16 (8 mantissa bits, round to nearest even), tensor cores (m16n8k16), FP32
accumulation. Outputs, gradients and stored tensors stay FP32 in every precision.

``set_precision(p)`` sets the process-wide default that ``F.conv2d(..., precision=None)``
uses; ``get_precision()`` reads it. ``round_operand(a, p)`` is the NumPy model of the
operand rounding, which the ``cpu`` references apply so that every device computes
the same rounded products for the same precision.
"""
from __future__ import annotations

import contextlib

import numpy as np

__all__ = ["PRECISIONS", "check_precision", "get_precision", "resolve", "round_operand",
           "set_precision", "unit_roundoff", "using_precision"]

PRECISIONS = ("fp32", "tf32", "bf16")
_default = "fp32"


def check_precision(precision, what: str = "precision") -> str:
    """``precision`` if it is one of ``PRECISIONS``, else ValueError naming them."""
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise ValueError(f"{what} must be one of {', '.join(map(repr, PRECISIONS))}, "
                         f"got {precision!r}")
    return precision


def set_precision(precision: str) -> None:
    """Set the process-wide default precision of the convolutions (see the module docstring)."""
    global _default
    _default = check_precision(precision)


def get_precision() -> str:
    """The process-wide default precision of the convolutions ("fp32" unless set)."""
    return _default


@contextlib.contextmanager
def using_precision(precision: str):
    """The process-wide default set to ``precision`` inside a ``with`` block, restored
    after it (``convnet train`` runs its steps in one)."""
    global _default
    saved, _default = _default, check_precision(precision)
    try:
        yield
    finally:
        _default = saved


def resolve(precision, what: str = "precision") -> str:
    """``precision``, or the process-wide default when it is None."""
    return _default if precision is None else check_precision(precision, what)


def unit_roundoff(precision: str) -> float:
    """Unit roundoff of the operands' format: 2^-24 (fp32), 2^-11 (tf32), 2^-8 (bf16)."""
    return {"fp32": 2.0 ** -24, "tf32": 2.0 ** -11, "bf16": 2.0 ** -8}[check_precision(precision)]


def _tf32_bits(bits):
    """cvt.rna.tf32.f32 on uint32 bit patterns (NaN -> 0x7fffffff, inf kept)."""
    mag = bits & np.uint32(0x7FFFFFFF)
    out = (bits + np.uint32(0x1000)) & np.uint32(0xFFFFE000)
    out = np.where((mag & np.uint32(0x7F800000)) == np.uint32(0x7F800000), bits, out)
    return np.where(mag > np.uint32(0x7F800000), np.uint32(0x7FFFFFFF), out).astype(np.uint32)


def _bf16_bits(bits):
    """float32 -> bf16 (round to nearest even) as the float32 bit pattern of the result."""
    mag = bits & np.uint32(0x7FFFFFFF)
    lsb = (bits >> np.uint32(16)) & np.uint32(1)
    out = ((bits + np.uint32(0x7FFF) + lsb) >> np.uint32(16)) << np.uint32(16)
    return np.where(mag > np.uint32(0x7F800000), np.uint32(0x7FFF0000), out).astype(np.uint32)


def round_operand(a, precision: str):
    """``a`` (float32, or float64 rounded to float32 first) with each element rounded as
    the tensor cores' operands are for ``precision``; a float32 array (unchanged values
    for "fp32"). NumPy on the host; ``xp`` arrays of CuPy are not accepted."""
    precision = check_precision(precision)
    a = np.asarray(a, dtype=np.float32)
    if precision == "fp32":
        return a
    bits = np.ascontiguousarray(a).view(np.uint32)
    out = _tf32_bits(bits) if precision == "tf32" else _bf16_bits(bits)
    return out.view(np.float32).reshape(a.shape)
