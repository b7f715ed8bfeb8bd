"""Losses: ``cross_entropy(logits, labels)``, softmax and negative log-likelihood fused."""
from __future__ import annotations

import numpy as np

from ..backend import DeviceError
from ..ops import cross_entropy as _ce_ops
from ..tensor import Function, Tensor
from ._checks import _check_tensor

__all__ = ["cross_entropy"]


class CrossEntropy(Function):
    """The mean over the batch of ``-log softmax(logits)[label]``; saves the logits and
    two numbers per row (max, log of the shifted sum) for the backward, one kernel."""

    def forward(self, x, labels):
        loss_rows, stats = _ce_ops.forward(self.device, x, labels)
        if self.needs_input_grad[0]:
            self.save_for_backward(x, labels, stats)
        return loss_rows.mean()

    def backward(self, grad):
        x, labels, stats = self.saved
        return _ce_ops.backward(self.device, x, labels, stats, grad), None


def _labels_array(labels, device, n: int, c: int):
    """The labels as an int32 array of ``device``: a Tensor must be there already; host
    data (a NumPy array, a list) is copied there."""
    if isinstance(labels, Tensor):
        if labels.device != device:
            raise DeviceError(f"cross_entropy: the labels are on {labels.device.name!r}, the "
                              f"logits on {device.name!r}; move them with .to()")
        array = labels.data
    elif hasattr(labels, "__cuda_array_interface__") or isinstance(labels, np.ndarray):
        array = labels if device.owns(labels) else device.asarray(labels)
    else:
        array = np.asarray(labels)
        if array.dtype.kind not in "iu" and array.size:
            raise TypeError(f"cross_entropy: labels must be integers, got {array.dtype}")
        array = device.asarray(array.astype(np.int64) if array.size == 0 else array)
    return _ce_ops.check_labels(device, array, n, c)


def cross_entropy(logits: Tensor, labels) -> Tensor:
    """The mean over the batch of the cross-entropy of ``softmax(logits)`` against
    ``labels``: a 0-d tensor.

    ``logits`` is (batch, classes), floating point; ``labels`` holds one integer class
    per row (int32 or int64; a Tensor on the logits' device, or host data, which is
    copied there), each in 0..classes-1. Stable for logits of any magnitude (the
    row max is subtracted before exponentiating). No gradient flows to the labels.
    """
    _check_tensor(logits, "cross_entropy")
    if logits.dtype.kind != "f":
        raise TypeError(f"cross_entropy: logits must be floating point, not {logits.dtype}")
    n, c = _ce_ops.check_logits(logits.data)
    array = _labels_array(labels, logits.device, n, c)
    label_tensor = Tensor._wrap(array, logits.device)
    return CrossEntropy.apply(logits, label_tensor)
