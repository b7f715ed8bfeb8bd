"""Gradient buckets: each parameter's gradient is copied into a flat bucket as soon as the
backward pass has made it final (``Tensor.grad_hooks``), and a bucket's all-reduce
starts (non-blocking) as soon as all of its gradients are in, while the backward pass
goes on through earlier layers.

Buckets hold parameters in the reverse of the model's order (the order the backward
pass finishes them: fc8 first), cut at ``bucket_bytes`` (default 25 MB) and wherever
the device or dtype changes. Buckets start strictly in their order, bucket k only after
bucket k-1, so every rank issues the same collectives in the same order whatever order
its hooks fire in. The sum is the global batch's mean-loss gradient when each rank's
backward pass started from its share of the batch (``DataParallel`` does that).
"""
from __future__ import annotations

from .base import Communicator

__all__ = ["DEFAULT_BUCKET_BYTES", "GradientBuckets"]

DEFAULT_BUCKET_BYTES = 25 * 2**20


class _Bucket:
    def __init__(self, params, device, dtype):
        self.params = params              # [(name, Tensor)]
        self.device = device
        sizes = [p.size for _, p in params]
        self.offsets = [sum(sizes[:i]) for i in range(len(sizes))]
        with device.activate():
            self.flat = device.xp.zeros(sum(sizes), dtype=dtype)
        self.filled = set()
        self.pending = None

    @property
    def complete(self) -> bool:
        return len(self.filled) == len(self.params)


class GradientBuckets:
    """Buckets over ``named_params`` (a model's ``named_parameters()``), reduced over
    ``comm``. Per step: ``begin()``, the backward pass (hooks fill and start the
    buckets), ``finish()`` (starts what is left, waits, writes the averaged gradients
    back into every parameter's ``.grad``)."""

    def __init__(self, named_params, comm: Communicator,
                 bucket_bytes: int = DEFAULT_BUCKET_BYTES):
        self.comm = comm
        params = list(named_params)[::-1]
        self.buckets: list[_Bucket] = []
        group, nbytes, key = [], 0, None
        for name, p in params:
            k = (p.device, p.dtype)
            if group and (k != key or nbytes + p.data.nbytes > bucket_bytes):
                self.buckets.append(_Bucket(group, *key))
                group, nbytes = [], 0
            group.append((name, p))
            nbytes += p.data.nbytes
            key = k
        if group:
            self.buckets.append(_Bucket(group, *key))
        self._where = {id(p): (b, i) for b in self.buckets for i, (_, p) in enumerate(b.params)}
        self._next = 0      # the next bucket to start
        self.started_during_backward = 0  # buckets started by hooks (not by finish) last step

    def attach(self) -> None:
        for b in self.buckets:
            for _, p in b.params:
                p.grad_hooks = [self._on_gradient]

    def detach(self) -> None:
        for b in self.buckets:
            for _, p in b.params:
                p.grad_hooks = []

    def begin(self) -> None:
        """A new step: no gradient in, no bucket started."""
        for b in self.buckets:
            b.filled.clear()
            b.pending = None
        self._next = 0
        self.started_during_backward = 0

    def _on_gradient(self, p) -> None:
        b, i = self._where[id(p)]
        n = p.size
        with b.device.activate():
            target = b.flat[b.offsets[i]:b.offsets[i] + n]
            target[...] = p.grad.data.reshape(-1)
        b.filled.add(i)
        started = self._start_ready()
        self.started_during_backward += started
        self._progress()

    def _start_ready(self) -> int:
        started = 0
        while self._next < len(self.buckets) and self.buckets[self._next].complete:
            b = self.buckets[self._next]
            b.pending = self.comm.allreduce_start([b.flat])
            self._next += 1
            started += 1
        return started

    def _progress(self) -> None:
        for b in self.buckets[:self._next]:
            if b.pending is not None:
                b.pending.test()
        self.comm.progress()

    def finish(self) -> None:
        """Zero the gradients no hook delivered (a rank with no images, an unused
        parameter), start the remaining buckets in order, wait for all, and set every
        parameter's ``.grad`` to its reduced gradient."""
        from ..tensor import Tensor
        for b in self.buckets[self._next:]:
            for i in range(len(b.params)):
                if i not in b.filled:
                    n = b.params[i][1].size
                    with b.device.activate():
                        b.flat[b.offsets[i]:b.offsets[i] + n] = 0
                    b.filled.add(i)
        self._start_ready()
        for b in self.buckets:
            b.pending.wait()
            for (_, p), offset in zip(b.params, b.offsets):
                view = b.flat[offset:offset + p.size].reshape(p.shape)
                p.grad = Tensor._wrap(view, p.device)
