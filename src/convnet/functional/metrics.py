"""Metrics: ``topk_accuracy`` (no gradient)."""
from __future__ import annotations

from ..arguments import integer
from ..ops.cross_entropy import check_labels
from ..tensor import Tensor
from ._checks import _check_tensor
from .cross_entropy import labels_on

__all__ = ["topk_accuracy"]


def topk_accuracy(logits: Tensor, labels, k=(1, 5)):
    """The fraction of rows whose label is among the ``k`` largest logits.

    ``k`` is an int (returns a float) or a sequence of ints (returns a tuple of
    floats, one per k). A label counts as in the top k when fewer than k logits of its
    row are strictly greater than the label's own (ties go in the label's favour, so
    the answer does not depend on how a sort orders equal values). A row holding NaN
    is always wrong. ``labels`` as for ``cross_entropy``.
    """
    _check_tensor(logits, "topk_accuracy")
    if logits.ndim != 2:
        raise ValueError(f"topk_accuracy: logits must be 2-D (batch, classes), got shape "
                         f"{logits.shape}")
    n, c = logits.shape
    if n == 0:
        raise ValueError("topk_accuracy: the batch is empty")
    single = not isinstance(k, (tuple, list))
    ks = tuple(integer(kk, f"topk_accuracy: k (of {c} classes)", low=1, high=c)
               for kk in ((k,) if single else k))
    device = logits.device
    xp = device.xp
    array, checked = labels_on(device, labels, (n, c))
    labels = check_labels(xp, array, n, c, range_checked=checked)
    x = logits.data
    own = x[xp.arange(n), labels]
    greater = (x > own[:, None]).sum(axis=1)
    valid = ~xp.isnan(x).any(axis=1)
    found = tuple(float(((greater < kk) & valid).sum()) / n for kk in ks)
    return found[0] if single else found
