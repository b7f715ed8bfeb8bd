"""Losses: ``cross_entropy(logits, labels)``, softmax and negative log-likelihood fused."""
from __future__ import annotations

import numpy as np

from ..backend import DeviceError
from ..ops import cross_entropy as _ce_ops
from ..tensor import Function, Tensor
from ._checks import check_float_tensors

__all__ = ["cross_entropy"]


class CrossEntropy(Function):
    """The mean over the batch of ``-log softmax(logits)[label]``; saves the logits and
    what ``ops.cross_entropy.forward`` returns for the backward (the checked labels and
    two numbers per row: max, log of the shifted sum), one kernel each way."""

    def forward(self, x, labels, range_checked=False):
        loss_rows, saved = _ce_ops.forward(self.device, x, labels, range_checked=range_checked)
        if self.needs_input_grad[0]:
            self.save_for_backward(x, saved)
        return loss_rows.mean()

    def backward(self, grad):
        x, saved = self.saved
        return _ce_ops.backward(self.device, x, saved, grad), None


def labels_on(device, labels, logits_shape=None):
    """``(array, range_checked)``: the labels as an array of ``device``. A Tensor must be
    there already and an array of the device is taken as it is (``range_checked``
    False: the op checks them there, which on ``cuda`` reads two numbers back). Host
    data (a list, a NumPy array) for a device that does not hold host arrays, with the
    2-D ``logits_shape`` given, is checked on the host — dtype, shape and range — then
    copied once (``range_checked`` True: no read back on the device). Anything else
    is copied there unchecked."""
    if isinstance(labels, Tensor):
        if labels.device != device:
            raise DeviceError(f"cross_entropy: the labels are on {labels.device.name!r}, the "
                              f"logits on {device.name!r}; move them with .to()")
        return labels.data, False
    if device.owns(labels):
        return labels, False
    host = labels.get() if hasattr(labels, "get") and not isinstance(labels, np.ndarray) \
        else np.asarray(labels)
    if logits_shape is not None and len(logits_shape) == 2 and host.dtype.kind in "iu":
        n, c = logits_shape
        return device.asarray(_ce_ops.check_labels(np, host, n, c)), True
    return device.asarray(host), False


def cross_entropy(logits: Tensor, labels, *, labels_checked: bool = False) -> Tensor:
    """The mean over the batch of the cross-entropy of ``softmax(logits)`` against
    ``labels``: a 0-d tensor.

    ``logits`` is (batch, classes), floating point; ``labels`` holds one integer class
    per row (int32 or int64; a Tensor on the logits' device, or host data, which is
    copied there), each in 0..classes-1. Stable for logits of any magnitude (the
    row max is subtracted before exponentiating). No gradient flows to the labels.
    Host labels are checked on the host before the copy; labels already on a GPU are
    checked there (one small read back) unless ``labels_checked`` says the caller
    checked their range (``convnet.train_step`` does, on the host batch).
    """
    check_float_tensors("cross_entropy", logits=logits)
    device = logits.device
    array, checked = labels_on(device, labels, logits.shape)
    return CrossEntropy.apply(logits, Tensor._wrap(array, device),
                              range_checked=bool(checked or labels_checked))
