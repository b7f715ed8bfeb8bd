"""Data parallelism: one process per device, each on its share of every global batch.

``DataParallel(model, optimizer, comm)``:

* ``broadcast_state()``: every parameter, momentum buffer and the step count from rank
  0 (a new run's initial weights, or the checkpoint rank 0 resumed from).
* ``step(images, labels, total, stop=False)``: this rank's ``len(labels)`` images of a
  global batch of ``total``; the backward pass starts from ``n / total`` (so the sum
  over ranks is the global batch's mean-loss gradient), its gradients are all-reduced
  in buckets that start while the backward pass is still running (``buckets``), and
  every rank then takes the same SGD step. A rank with no images in a (short, last)
  batch still joins every collective with zero gradients. Returns a ``StepResult`` of
  the whole global batch (the loss and hits summed over ranks); its
  ``stop_requested`` says whether any rank passed ``stop`` (Ctrl-C), so all stop after
  the same step. Dropout: every rank's dropout layers hold the seeds one process would
  (the same run seed on every rank), and ``step`` sets their ``row_offset`` to the first
  row of this rank's share (``first_row``: the ``np.array_split`` cut the loader makes),
  so each rank draws exactly its rows of the single-process masks; a rank with no images
  still draws the step's seeds (``nn.Dropout.skip_forward``). With dropout on, the run
  is the single-process run up to the rounding of the gradient sums, as without.
* ``sum(values)``: numbers summed over the ranks (an evaluation's counts and loss sums
  over each rank's share of a split).

The loader gives each rank its share (``Loader(..., shard=(rank, size))``); the
augmentation of an image depends on (seed, epoch, index) only, so the union of the
ranks' batches is the single-process batch, image for image.
"""
from __future__ import annotations

from .buckets import DEFAULT_BUCKET_BYTES, GradientBuckets
from .base import Communicator

__all__ = ["DataParallel", "first_row", "share_of"]


def _cut(n: int, rank: int, size: int) -> int:
    """Rank ``rank``'s share of ``n`` images (``np.array_split``: the first ``n % size``
    ranks take one more)."""
    return n // size + (1 if rank < n % size else 0)


def share_of(images: int, batch_size: int, rank: int, size: int) -> int:
    """How many of a split's ``images``, in batches of ``batch_size``, rank ``rank`` of
    ``size`` gets (``np.array_split`` of every batch, as the loader cuts them)."""
    full, rest = divmod(int(images), int(batch_size))
    return full * _cut(batch_size, rank, size) + _cut(rest, rank, size)


def first_row(total: int, rank: int, size: int) -> int:
    """The row of a batch of ``total`` at which rank ``rank`` of ``size``'s share starts
    (``np.array_split``'s cut, as the loader makes it)."""
    total, rank = int(total), int(rank)
    return rank * (total // size) + min(rank, total % size)


class DataParallel:
    """Data-parallel SGD of ``model`` with ``optimizer`` over ``comm`` (see the module)."""

    def __init__(self, model, optimizer, comm: Communicator,
                 bucket_bytes: int = DEFAULT_BUCKET_BYTES):
        self.model, self.optimizer, self.comm = model, optimizer, comm
        self.buckets = GradientBuckets(model.named_parameters(), comm, bucket_bytes)
        self.buckets.attach()

    def close(self) -> None:
        self.buckets.detach()

    def broadcast_state(self) -> None:
        comm = self.comm
        for _, p in self.model.named_parameters():
            comm.broadcast(p.data, 0)
        for v in self.optimizer.velocity.values():
            comm.broadcast(v, 0)
        self.optimizer.steps = comm.broadcast_object(self.optimizer.steps, 0)

    def _dropout_layers(self) -> list:
        from ..nn import Dropout
        return [m for _, m in self.model.named_modules() if isinstance(m, Dropout)]

    def step(self, images, labels, total: int, stop: bool = False, first: int | None = None):
        """One step on this rank's ``len(labels)`` images, rows ``first ..`` of the global
        batch of ``total`` (default: ``first_row``, the loader's cut)."""
        from ..step import StepResult, train_step
        from ..tensor import TransferLog
        n = int(len(labels))
        if first is None:
            first = first_row(total, self.comm.rank, self.comm.size)
        if not 0 <= first <= int(total) - n:
            raise ValueError(f"DataParallel.step: rows {first}..{first + n - 1} are not within "
                             f"the global batch of {total}")
        for layer in self._dropout_layers():  # this rank's rows of the one-process masks
            layer.row_offset = first
            if not n:
                layer.skip_forward()
        self.buckets.begin()
        if n:
            local = train_step(self.model, self.optimizer, images, labels, check_finite=False,
                               grad_scale=n / total, before_update=self.buckets.finish)
            sums, device, transfers = local.sums, local._device, local.transfers
            xp = device.xp
            with device.activate():
                sums = xp.concatenate([sums, xp.asarray([float(stop)], dtype=sums.dtype)])
        else:  # nothing to learn from here, but the others' gradients still arrive
            self.optimizer.zero_grad()
            self.buckets.finish()
            self.optimizer.step()
            device = next(iter(self.model.parameters())).device
            with device.activate():
                sums = device.xp.zeros(4, dtype="float64")
                sums[3] = float(stop)
            transfers = TransferLog()
        self.comm.allreduce([sums])
        with device.activate():
            values = sums[:3] / device.xp.asarray([total, 1, 1], dtype=sums.dtype)
            stop_requested = bool(sums[3] > 0)
        result = StepResult(values, device, total, transfers, checked=False)
        result.stop_requested = stop_requested  # a rank saw Ctrl-C: every rank stops here
        return result

    def sum(self, values) -> list:
        """``values`` (numbers) summed over the ranks, as floats (float64)."""
        import numpy as np
        mine = np.array(values, dtype=np.float64)
        self.comm.allreduce([mine])
        return [float(v) for v in mine]
