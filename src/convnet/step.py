"""One training step: ``train_step(model, optimizer, images, labels)``.

The step puts the model in training mode, clears the gradients, runs the forward
pass and the cross-entropy loss, and stops with ``FloatingPointError`` if the loss
is not finite (before any backward or update, so the weights and the optimizer's
velocities stay as they were). Otherwise it runs the backward pass, measures top-1
and top-5 accuracy on the batch (from the logits of the weights before the update)
and updates the weights. Every device crossing of the step is recorded.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from . import functional as F
from .tensor import TransferLog, record_transfers

__all__ = ["StepResult", "train_step"]


@dataclass
class StepResult:
    """What one step measured: the mean loss of the batch, the fraction of the batch
    whose label is the top-1 / among the top-5 logits (top-k with k = the number of
    classes when there are fewer than 5), and the step's device crossings."""

    loss: float
    top1: float
    top5: float
    transfers: TransferLog


def train_step(model, optimizer, images, labels) -> StepResult:
    """One step of SGD on a batch; see the module docstring.

    ``images``: a Tensor or host array the model takes (for AlexNet (N, 3, S, S));
    ``labels``: N integer classes (host data or a Tensor on the logits' device).
    """
    model.train()
    optimizer.zero_grad()
    with record_transfers() as log:
        logits = model(images)
        loss = F.cross_entropy(logits, labels)
        value = float(loss.item())
        if not math.isfinite(value):
            raise FloatingPointError(f"train_step: the loss is {value}; the step was stopped "
                                     f"before the backward pass and the weights are unchanged "
                                     f"(lower the learning rate or check the inputs)")
        loss.backward()
    classes = logits.shape[1]
    top1, top5 = F.topk_accuracy(logits.detach(), labels, (1, min(5, classes)))
    optimizer.step()
    return StepResult(loss=value, top1=top1, top5=top5, transfers=log)
