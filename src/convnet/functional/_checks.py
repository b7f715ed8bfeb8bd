"""Argument checks shared by the functional ops: the user's objects are Tensors (and,
for ops on real numbers, floating point). Shapes and the rest are the op families'
checks, made once where the arrays enter ``convnet.ops``."""
from __future__ import annotations

from ..tensor import Tensor


def _check_tensor(x, op: str) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{op}: expected a convnet.Tensor, got {type(x).__name__} "
                        f"(make one with convnet.tensor(...))")


def check_float_tensors(op: str, **tensors) -> None:
    """TypeError unless each given tensor (None skipped) is a floating-point Tensor;
    the keywords name them in the message (``input=x, weight=w``)."""
    for what, t in tensors.items():
        if t is None:
            continue
        _check_tensor(t, op)
        if t.dtype.kind != "f":
            raise TypeError(f"{op}: the {what} must be floating point, not {t.dtype}")
