"""The autograd ops of the hybrid split (Krizhevsky 2014, "One weird trick"), over a
communicator (``convnet.distributed.comm``); every rank runs them in the same order.

* ``gather(x, comm, sizes, axis, partial)``: every rank's piece of a tensor joined along
  ``axis``, rank 0's first. Rank r's piece has ``sizes[r]`` entries along ``axis``;
  pieces of unequal size travel padded to the largest (an all-gather needs one shape)
  and are cut back. Backward: the gradient of the joined tensor, cut to the rank's own
  piece — after summing it over the ranks (an all-reduce) when each rank's gradient is
  only its part of the whole (``partial=True``: the joined tensor feeds a layer of
  which each rank holds a slice, so the true gradient is the sum of the slices'). With
  ``partial=False`` every rank already holds the whole gradient (the same loss of the
  same logits): it is only cut.
* ``sum_gradients(w, comm)``: the identity forward; backward sums ``w``'s gradient over
  the ranks (the data-parallel weights: each rank's gradient covers its own images,
  the loss being a mean over the global batch, so the sum is the global gradient).

Every collective is entered in the transfer log (``convnet.record_transfers``) as a
logical crossing on the tensor's device named ``"hybrid <name> allgather"`` /
``"... allreduce"``, with its payload: the gathered array (K × the padded piece) or the
reduced array; what a collective puts on the wire is the reader's formula (a ring
all-gather receives (K-1)/K of the gathered payload, a ring all-reduce sends and
receives 2(K-1)/K of its payload).
"""
from __future__ import annotations

from ..tensor import Function, Tensor, _record

__all__ = ["gather", "sum_gradients", "offsets"]


def offsets(sizes) -> list[int]:
    """Where each rank's piece starts in the joined axis (the running sums of ``sizes``)."""
    out, at = [], 0
    for s in sizes:
        out.append(at)
        at += s
    return out


def _cut(xp, a, axis: int, start: int, length: int):
    index = [slice(None)] * a.ndim
    index[axis] = slice(start, start + length)
    return xp.ascontiguousarray(a[tuple(index)])


class _Gather(Function):
    def forward(self, x, comm, sizes, axis, partial, name):
        xp = self.device.xp
        self.comm, self.sizes, self.axis, self.partial, self.name = comm, sizes, axis, partial, name
        own, width = sizes[comm.rank], max(sizes)
        if x.shape[axis] != own:
            raise ValueError(f"hybrid {name}: rank {comm.rank}'s piece has {x.shape[axis]} "
                             f"entries along axis {axis}, the layout says {own}")
        piece = xp.ascontiguousarray(x)
        if own < width:  # pad to the largest piece: an all-gather moves one shape
            pad = list(x.shape)
            pad[axis] = width - own
            piece = xp.concatenate([piece, xp.zeros(tuple(pad), dtype=x.dtype)], axis=axis)
        everyone = comm.allgather(piece)            # (K, *piece.shape)
        _record("forward", self.device, self.device, everyone.nbytes,
                f"hybrid {name} allgather")
        return xp.concatenate([_cut(xp, everyone[k], axis, 0, s) for k, s in enumerate(sizes)],
                              axis=axis)

    def backward(self, grad):
        xp, comm = self.device.xp, self.comm
        if self.partial:
            grad = xp.array(grad, copy=True, order="C")  # reduced in place: our own copy
            comm.allreduce([grad])
            _record("backward", self.device, self.device, grad.nbytes,
                    f"hybrid {self.name} allreduce")
        start = offsets(self.sizes)[comm.rank]
        return _cut(xp, grad, self.axis, start, self.sizes[comm.rank])


def gather(x: Tensor, comm, sizes, axis: int, partial: bool = True, name: str = "") -> Tensor:
    """Every rank's ``x`` joined along ``axis`` (see the module docstring); ``sizes``:
    the length of each rank's piece along ``axis``, the same list on every rank."""
    sizes = [int(s) for s in sizes]
    if len(sizes) != comm.size:
        raise ValueError(f"hybrid {name}: {len(sizes)} piece sizes for {comm.size} ranks")
    return _Gather.apply(x, comm=comm, sizes=sizes, axis=int(axis), partial=bool(partial),
                         name=name)


class _SumGradients(Function):
    def forward(self, w, comm, name):
        self.comm, self.name = comm, name
        return w

    def backward(self, grad):
        grad = self.device.xp.array(grad, copy=True, order="C")
        self.comm.allreduce([grad])
        _record("backward", self.device, self.device, grad.nbytes,
                f"hybrid {self.name} allreduce")
        return grad


def sum_gradients(w: Tensor, comm, name: str = "") -> Tensor:
    """``w`` itself, whose gradient is summed over the ranks on the way back."""
    return _SumGradients.apply(w, comm=comm, name=name)
