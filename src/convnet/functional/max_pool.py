"""Pooling: 2-D max-pooling, overlapping windows allowed (Krizhevsky et al. 2012, 3.4)."""
from __future__ import annotations

from ..ops import max_pool as _pool_ops
from ..tensor import Function, Tensor, is_grad_enabled
from ._checks import check_float_tensors

__all__ = ["max_pool2d"]


class MaxPool2d(Function):
    """Saves the argmax of every window (one uint8 per output for windows of up to 256
    elements) and the input's shape, not the input: the backward needs nothing else."""

    def forward(self, x, params):
        self.params, self.input_shape = params, tuple(x.shape)
        keep = self.needs_input_grad[0] and is_grad_enabled()
        y, argmax = _pool_ops.forward(self.device, x, params, with_index=keep)
        if keep:
            self.save_for_backward(argmax)
        return y

    def backward(self, grad):
        (argmax,) = self.saved
        return _pool_ops.backward(self.device, grad, argmax, self.params, self.input_shape)


def max_pool2d(x: Tensor, kernel_size=3, stride=2, padding=0) -> Tensor:
    """Max over ``kernel_size`` windows of an (N, C, H, W) tensor, every ``stride``.

    Defaults are the paper's overlapping pooling (3×3 windows, stride 2); ``stride=None``
    means ``stride = kernel_size`` (PyTorch's default). Each of ``kernel_size``,
    ``stride``, ``padding`` is an int or a (rows, columns) pair. As PyTorch's
    ``max_pool2d``: output size ``(H + 2·padding − kernel) // stride + 1``; padding
    counts as −inf and may be at most half the kernel; ties go to the first element in
    row-major window order; a NaN in a window makes its output NaN (the first NaN is
    chosen, and receives the gradient). The backward adds each output's gradient to its
    window's maximum; inputs chosen by several overlapping windows get the sum.
    """
    check_float_tensors("max_pool2d", input=x)
    return MaxPool2d.apply(x, params=_pool_ops.make_params(kernel_size, stride, padding))
