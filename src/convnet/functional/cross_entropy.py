"""Losses: ``cross_entropy(logits, labels)``, softmax and negative log-likelihood fused."""
from __future__ import annotations

from ..backend import DeviceError
from ..ops import cross_entropy as _ce_ops
from ..tensor import Function, Tensor
from ._checks import check_float_tensors

__all__ = ["cross_entropy"]


class CrossEntropy(Function):
    """The mean over the batch of ``-log softmax(logits)[label]``; saves the logits and
    what ``ops.cross_entropy.forward`` returns for the backward (the checked labels and
    two numbers per row: max, log of the shifted sum), one kernel each way."""

    def forward(self, x, labels):
        loss_rows, saved = _ce_ops.forward(self.device, x, labels)
        if self.needs_input_grad[0]:
            self.save_for_backward(x, saved)
        return loss_rows.mean()

    def backward(self, grad):
        x, saved = self.saved
        return _ce_ops.backward(self.device, x, saved, grad), None


def labels_on(device, labels):
    """The labels as an array of ``device`` (not yet checked): a Tensor must be there
    already; an array of the device is taken as it is; anything else (host data, a
    list, another device's array) is copied there."""
    if isinstance(labels, Tensor):
        if labels.device != device:
            raise DeviceError(f"cross_entropy: the labels are on {labels.device.name!r}, the "
                              f"logits on {device.name!r}; move them with .to()")
        return labels.data
    return labels if device.owns(labels) else device.asarray(labels)


def cross_entropy(logits: Tensor, labels) -> Tensor:
    """The mean over the batch of the cross-entropy of ``softmax(logits)`` against
    ``labels``: a 0-d tensor.

    ``logits`` is (batch, classes), floating point; ``labels`` holds one integer class
    per row (int32 or int64; a Tensor on the logits' device, or host data, which is
    copied there), each in 0..classes-1. Stable for logits of any magnitude (the
    row max is subtracted before exponentiating). No gradient flows to the labels.
    """
    check_float_tensors("cross_entropy", logits=logits)
    device = logits.device
    return CrossEntropy.apply(logits, Tensor._wrap(labels_on(device, labels), device))
