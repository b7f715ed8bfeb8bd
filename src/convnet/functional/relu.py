"""ReLU: ``relu(x)`` (the kernel in ``kernels/relu.cu``)."""
from __future__ import annotations

from ..ops import relu as _relu_ops
from ..tensor import Function, Tensor
from ._checks import _check_tensor

__all__ = ["relu"]


class ReLU(Function):
    """``y = max(x, 0)``; saves only ``y`` (the backward masks by ``y > 0``)."""

    def forward(self, x):
        y = _relu_ops.forward(self.device, x)
        if self.needs_input_grad[0]:
            self.save_for_backward(y)
        return y

    def backward(self, grad):
        (y,) = self.saved
        return _relu_ops.backward(self.device, y, grad)


def relu(x: Tensor) -> Tensor:
    _check_tensor(x, "relu")
    return ReLU.apply(x)
