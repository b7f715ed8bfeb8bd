"""Dropout: ``dropout(x, p, training, seed, mode)`` (the kernel in ``kernels/dropout.cu``)."""
from __future__ import annotations

from ..ops import dropout as _dropout_ops
from ..tensor import Function, Tensor
from ._checks import check_float_tensors

__all__ = ["dropout"]


class Dropout(Function):
    """``y = keep ? x * scale : 0`` with the Philox mask of the plan's seed; the backward
    regenerates the mask from the plan (nothing but three numbers is saved)."""

    def forward(self, x, plan):
        self.plan = plan
        return _dropout_ops.apply(self.device, x, plan)

    def backward(self, grad):
        return _dropout_ops.apply(self.device, grad, self.plan)


def dropout(x: Tensor, p: float = 0.5, training: bool = True, seed=None,
            mode: str = "inverted", offset: int = 0) -> Tensor:
    """Zero each element with probability ``p``.

    ``mode="inverted"`` (default) scales the kept elements by ``1/(1-p)`` in
    training and is the identity at eval (``training=False``; ``x`` itself is
    returned). ``mode="paper"`` (Krizhevsky et al. 2012) does not scale in
    training and multiplies by ``(1-p)`` at eval. ``seed`` (an integer in
    [0, 2**64)) fixes the mask, which is the same on every device; ``None`` draws
    a fresh seed (``convnet.ops.dropout.set_seed`` makes the draws reproducible).
    ``offset`` (an integer in [0, 2**63)) is the position of ``x``'s first element in
    the seed's stream: ``x`` gets elements ``[offset, offset + x.size)`` of the mask of a
    larger array (rows ``r0..`` of an (N, units) batch: offset ``r0 * units``).
    """
    check_float_tensors("dropout", input=x)
    plan = _dropout_ops.plan(p, training, mode, seed, offset)
    if plan is None:
        return x
    return Dropout.apply(x, plan=plan)
