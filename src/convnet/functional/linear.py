"""Fully-connected layers: ``linear(x, w, b=None, relu=False, dropout=None, ...)``."""
from __future__ import annotations

from ..ops import dropout as _dropout_ops
from ..ops import linear as _linear_ops
from ..tensor import Tensor
from ._checks import check_float_tensors
from ._weighted import WeightedFunction

__all__ = ["linear"]


class Linear(WeightedFunction):
    """``y = act(x · Wᵀ + b)``; saves x (for dW), W (for dx) and, with ReLU, y (for the mask),
    each only when a gradient needs it."""

    def forward(self, x, w, b=None, relu=False, drop=None):
        self.relu, self.has_bias, self.drop = relu, b is not None, drop
        y = _linear_ops.forward(self.device, x, w, b, relu, drop)
        self.save_operands(x, w, y)
        return y

    def backward(self, grad):
        x, w, y = self.saved
        needs = self.needs_input_grad + (False,) * (3 - len(self.needs_input_grad))
        dx, dw, db = _linear_ops.backward(self.device, x, w, y, grad, self.relu, needs,
                                          self.drop)
        return (dx, dw, db) if self.has_bias else (dx, dw)


def linear(x: Tensor, w: Tensor, b: Tensor | None = None, relu: bool = False, *,
           dropout: float | None = None, training: bool = True, seed=None,
           mode: str = "inverted", offset: int = 0) -> Tensor:
    """``act(x · wᵀ + b)`` for ``x`` (batch, in), ``w`` (out, in), ``b`` (out,) or None;
    ``relu=True`` applies ReLU in the same elementwise pass as the bias.

    ``dropout=p`` then drops each output as ``F.dropout(y, p, training, seed, mode,
    offset)`` would (the same Philox mask for the same seed, bit for bit), inside the same pass
    when there is a bias and ReLU (the mask is never stored; the backward regenerates
    it and masks the ReLU gradient in one pass).

    The product runs in the device's array library (cuBLAS through CuPy on ``cuda``,
    NumPy on ``cpu``/``emu``); the bias and ReLU in ``kernels/linear.cu`` on
    ``emu``/``cuda``.
    """
    check_float_tensors("linear", input=x, weight=w, bias=b)
    inputs = (x, w) if b is None else (x, w, b)
    drop = None if dropout is None else _dropout_ops.plan(dropout, training, mode, seed, offset)
    return Linear.apply(*inputs, relu=bool(relu), drop=drop)
