"""Shape ops: ``flatten`` and ``cat``."""
from __future__ import annotations

from ..arguments import integer
from ..backend import DeviceError
from ..tensor import Function, Tensor
from ._checks import _check_tensor

__all__ = ["flatten", "cat"]


class Flatten(Function):
    """``x.reshape(N, C·H·W)`` (a view of a contiguous array); the gradient is reshaped
    back. The merged size is computed, not ``-1``, so an empty batch (N = 0) flattens too."""

    def forward(self, x, start_dim=1):
        self.shape = x.shape
        merged = 1
        for size in x.shape[start_dim:]:
            merged *= size
        return x.reshape(x.shape[:start_dim] + (merged,))

    def backward(self, grad):
        return grad.reshape(self.shape)


def flatten(x: Tensor, start_dim: int = 1) -> Tensor:
    """Merge the dimensions from ``start_dim`` on into one: (N, C, H, W) -> (N, C·H·W)
    with the default ``start_dim=1`` (the order is C, then H, then W)."""
    _check_tensor(x, "flatten")
    start_dim = integer(start_dim, "flatten: start_dim")
    start = start_dim + (x.ndim if start_dim < 0 else 0)
    if not 0 <= start < max(x.ndim, 1):
        raise ValueError(f"flatten: start_dim {start_dim} is out of range for a "
                         f"{x.ndim}-D tensor")
    if x.ndim == 0:
        raise ValueError("flatten: a 0-d tensor has no dimensions to flatten")
    return Flatten.apply(x, start_dim=start)


class Cat(Function):
    """Concatenation along ``dim``; the backward hands each input its slice of the
    gradient (copied to a contiguous array: kernels take dense inputs)."""

    def forward(self, *arrays, dim=1):
        self.dim = dim
        self.sizes = [a.shape[dim] for a in arrays]
        return self.device.xp.concatenate(arrays, axis=dim)

    def backward(self, grad):
        xp = self.device.xp
        out, start = [], 0
        for size, need in zip(self.sizes, self.needs_input_grad):
            if need:
                index = (slice(None),) * self.dim + (slice(start, start + size),)
                out.append(xp.ascontiguousarray(grad[index]))
            else:
                out.append(None)
            start += size
        return tuple(out)


def cat(tensors, dim: int = 1) -> Tensor:
    """Join tensors along ``dim`` (default 1: channels of NCHW, features of (N, F)).

    Every tensor must be on one device (concatenating across devices is an error:
    move them first with ``.to()``, which the transfer log records) and have one
    dtype, and their shapes must agree except along ``dim``.
    """
    tensors = list(tensors) if not isinstance(tensors, Tensor) else None
    if not tensors:
        raise ValueError("cat: expects a non-empty sequence of tensors")
    for i, t in enumerate(tensors):
        _check_tensor(t, f"cat (item {i})")
    first = tensors[0]
    for i, t in enumerate(tensors[1:], 1):
        if t.device != first.device:
            raise DeviceError(f"cat: tensor {i} is on {t.device.name!r}, tensor 0 on "
                              f"{first.device.name!r}; concatenation across devices is an "
                              f"error: move one with .to()")
        if t.dtype != first.dtype:
            raise TypeError(f"cat: tensor {i} has dtype {t.dtype}, tensor 0 {first.dtype}")
        if t.ndim != first.ndim:
            raise ValueError(f"cat: tensor {i} is {t.ndim}-D, tensor 0 {first.ndim}-D")
    dim = integer(dim, "cat: dim")
    if first.ndim == 0:
        raise ValueError("cat: 0-d tensors cannot be concatenated")
    axis = dim + (first.ndim if dim < 0 else 0)
    if not 0 <= axis < first.ndim:
        raise ValueError(f"cat: dim {dim} is out of range for {first.ndim}-D tensors")
    for i, t in enumerate(tensors[1:], 1):
        other = [s for k, s in enumerate(t.shape) if k != axis]
        if other != [s for k, s in enumerate(first.shape) if k != axis]:
            raise ValueError(f"cat: tensor {i} has shape {t.shape}, tensor 0 {first.shape}; "
                             f"they must agree except along dim {axis}")
    if len(tensors) == 1:
        return first
    return Cat.apply(*tensors, dim=axis)
