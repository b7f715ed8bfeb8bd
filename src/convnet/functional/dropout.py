"""Dropout: ``dropout(x, p, training, seed, mode)`` (the kernel in ``kernels/dropout.cu``)."""
from __future__ import annotations

from ..ops import dropout as _dropout_ops
from ..tensor import Function, Tensor
from ._checks import _check_tensor

__all__ = ["dropout"]


class Dropout(Function):
    """``y = keep ? x * scale : 0`` with the Philox mask of ``seed``; the backward
    regenerates the mask from the seed (nothing but three numbers is saved)."""

    def forward(self, x, seed, threshold, scale):
        self.seed, self.threshold, self.scale = seed, threshold, scale
        return _dropout_ops.apply(self.device, x, seed, threshold, scale)

    def backward(self, grad):
        return _dropout_ops.apply(self.device, grad, self.seed, self.threshold, self.scale)


def dropout(x: Tensor, p: float = 0.5, training: bool = True, seed=None,
            mode: str = "inverted") -> Tensor:
    """Zero each element with probability ``p``.

    ``mode="inverted"`` (default) scales the kept elements by ``1/(1-p)`` in
    training and is the identity at eval (``training=False``; ``x`` itself is
    returned). ``mode="paper"`` (Krizhevsky et al. 2012) does not scale in
    training and multiplies by ``(1-p)`` at eval. ``seed`` (an integer in
    [0, 2**64)) fixes the mask, which is the same on every device; ``None`` draws
    a fresh seed (``convnet.ops.dropout.set_seed`` makes the draws reproducible).
    """
    _check_tensor(x, "dropout")
    if x.dtype.kind != "f":
        raise TypeError(f"dropout takes a floating-point tensor, not {x.dtype}")
    plan = _dropout_ops.plan(p, training, mode)
    if seed is not None:
        seed = _dropout_ops.philox.check_seed(seed)
    if plan is None:
        return x
    threshold, scale = plan
    if seed is None:
        seed = _dropout_ops.draw_seed() if threshold else 0  # no mask: no seed needed
    return Dropout.apply(x, seed=seed, threshold=threshold, scale=scale)
