"""Argument checks shared by the functional ops."""
from __future__ import annotations

from ..tensor import Tensor


def _check_tensor(x, op: str) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{op}: expected a convnet.Tensor, got {type(x).__name__} "
                        f"(make one with convnet.tensor(...))")
