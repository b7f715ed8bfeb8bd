"""What the weighted layers (``conv2d``, ``linear``) share: ``y = act(x ∘ w + b)`` as one
Function whose backward needs x only for dw, w only for dx, and y only for the ReLU mask."""
from __future__ import annotations

from ..tensor import Function


class WeightedFunction(Function):
    """A Function of ``(x, w[, b])`` with ``self.relu`` and ``self.has_bias`` set by its
    forward; ``save_operands`` keeps each operand only when a gradient needs it."""

    relu = False
    has_bias = False

    def save_operands(self, x, w, y) -> None:
        need_x, need_w = self.needs_input_grad[0], self.needs_input_grad[1]
        need_b = self.has_bias and self.needs_input_grad[2]
        if need_x or need_w or need_b:
            self.save_for_backward(x if need_w else None, w if need_x else None,
                                   y if self.relu else None)
