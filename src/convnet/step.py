"""One training step: ``train_step(model, optimizer, images, labels)``.

The step puts the model in training mode, clears the gradients, runs the forward
pass and the cross-entropy loss, the backward pass, counts the batch's top-1 and
top-5 hits (from the logits of the weights before the update) and updates the
weights. Every device crossing of the step is recorded.

No host synchronisation unless the caller asks for a number (issue 10, item 8): the
loss and the two hit counts stay on the device in one 3-element array, and
``StepResult.loss`` / ``.top1`` / ``.top5`` read it back — all three in one transfer —
the first time one of them is read. A driver that reads every N steps lets N steps
queue on a GPU without a stall.

A loss that is not finite raises ``FloatingPointError``:

* ``check_finite=True`` (the default on ``cpu`` and ``emu``, where the loss is already
  in host memory and reading it costs nothing): before the backward pass, so the
  weights and the optimizer's velocities stay as they were;
* ``check_finite=False`` (the default on ``cuda``): when the result is first read,
  the step's update already applied (the message says so). Pass ``check_finite=True``
  on a GPU to pay one synchronisation per step for the stronger guarantee.
"""
from __future__ import annotations

import math

import numpy as np

from . import functional as F
from .functional.cross_entropy import labels_on
from .tensor import Tensor, TransferLog, no_grad, record_transfers

__all__ = ["StepResult", "train_step"]


class StepResult:
    """What one step measured: the mean loss of the batch, the fraction of the batch
    whose label is the top-1 / among the top-5 logits (top-k with k = the number of
    classes when there are fewer than 5), and the step's device crossings.

    ``loss``, ``top1`` and ``top5`` are read from the device when first asked for (one
    transfer for the three); ``ready`` says whether that has happened."""

    def __init__(self, values, device, batch: int, transfers: TransferLog,
                 checked: bool = False):
        self._values = values        # [loss, top-1 hits, top-5 hits] on ``device``
        self._device = device
        self._batch = batch
        self._checked = checked      # the loss was already found finite
        self._host = None
        self.transfers = transfers

    @property
    def sums(self):
        """``[loss x batch, top-1 hits, top-5 hits]`` (float64) on the device, not read
        back: what data parallelism sums over the ranks."""
        xp = self._device.xp
        with self._device.activate():
            return self._values * xp.asarray([self._batch, 1, 1], dtype=self._values.dtype)

    @property
    def ready(self) -> bool:
        return self._host is not None

    def _read(self) -> tuple[float, float, float]:
        if self._host is None:
            loss, hits1, hits5 = (float(v) for v in
                                  np.asarray(self._device.to_numpy(self._values)).reshape(3))
            if not self._checked and not math.isfinite(loss):
                raise FloatingPointError(
                    f"train_step: the loss is {loss}; this step's update was already applied "
                    f"(the weights may hold NaN/inf: restore a checkpoint, lower the learning "
                    f"rate or check the inputs; check_finite=True stops before the update)")
            self._host = (loss, hits1 / self._batch, hits5 / self._batch)
        return self._host

    @property
    def loss(self) -> float:
        return self._read()[0]

    @property
    def top1(self) -> float:
        return self._read()[1]

    @property
    def top5(self) -> float:
        return self._read()[2]

    def __repr__(self) -> str:
        if self._host is None:
            return f"StepResult(<on {self._device.name}, not read yet>, transfers={self.transfers!r})"
        return (f"StepResult(loss={self.loss}, top1={self.top1}, top5={self.top5}, "
                f"transfers={self.transfers!r})")


def _hits(logits, labels, ks):
    """Per k, the number of rows whose label is among the k largest logits, as device
    scalars (``functional.topk_accuracy``'s rule: ties count for the label, a row
    holding NaN never does), without reading anything back."""
    xp = logits.device.xp
    x = logits.data
    n = x.shape[0]
    own = x[xp.arange(n), labels]
    greater = (x > own[:, None]).sum(axis=1)
    valid = ~xp.isnan(x).any(axis=1)
    return [((greater < k) & valid).sum() for k in ks]


def train_step(model, optimizer, images, labels, check_finite: bool | None = None,
               grad_scale: float = 1.0, before_update=None) -> StepResult:
    """One step of SGD on a batch; see the module docstring.

    ``images``: a Tensor or host array the model takes (for AlexNet (N, 3, S, S));
    ``labels``: N integer classes (host data or a Tensor on the logits' device).
    ``check_finite``: stop before the update on a non-finite loss (a host read); the
    default is True on host devices, False on ``cuda``.
    ``grad_scale``: the backward pass starts from this instead of 1 (data parallelism:
    this rank's share of the global batch); ``before_update()``: called between the
    backward pass and the update (data parallelism: the gradients' all-reduce).
    """
    if getattr(images, "shape", None) is not None and len(images.shape) and images.shape[0] == 0:
        # The model takes an empty batch (empty outputs, zero gradients), but its mean
        # loss is undefined and an SGD step on no data would still move the weights
        # (momentum, weight decay): refused, with nothing changed.
        raise ValueError(f"train_step: the batch is empty (images of shape "
                         f"{tuple(images.shape)}): there is nothing to learn from; the weights "
                         f"and the optimizer are unchanged")
    model.train()
    optimizer.zero_grad()
    with record_transfers() as log:
        logits = model(images)
        device = logits.device
        array, checked = labels_on(device, labels, logits.shape)  # host labels: checked there
        targets = Tensor._wrap(array, device)                       # and copied once
        loss = F.cross_entropy(logits, targets, labels_checked=checked)
        if check_finite is None:
            check_finite = device.kind != "cuda"
        if check_finite:
            value = float(loss.item())
            if not math.isfinite(value):
                raise FloatingPointError(f"train_step: the loss is {value}; the step was stopped "
                                         f"before the backward pass and the weights are unchanged "
                                         f"(lower the learning rate or check the inputs)")
        if grad_scale == 1.0:
            loss.backward()
        else:
            loss.backward(device.xp.full(loss.data.shape, grad_scale, dtype=loss.dtype))
    if before_update is not None:
        before_update()
    classes = logits.shape[1]
    with no_grad(), device.activate():
        hits = _hits(logits.detach(), targets.data.astype(np.int64, copy=False), (1, min(5, classes)))
        xp = device.xp
        values = xp.stack([xp.asarray(loss.data, dtype=np.float64).reshape(()),
                           *(xp.asarray(h, dtype=np.float64) for h in hits)])
    optimizer.step()
    return StepResult(values, device, logits.shape[0], log, checked=check_finite)
