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
* ``join(xp, comm, x, sizes, axis)``: the same joining without autograd (labels, state
  dicts); ``shares``/``piece``: how n entries split over the ranks (``np.array_split``'s
  rule: consecutive, ceil/floor).

Every collective is entered in the transfer log (``convnet.record_transfers``) as a
logical crossing on the tensor's device named ``"hybrid <name> allgather"`` /
``"... allreduce"``, with its payload: the gathered array (K × the padded piece) or the
reduced array; what a collective puts on the wire is the reader's formula (a ring
all-gather receives (K-1)/K of the gathered payload, a ring all-reduce sends and
receives 2(K-1)/K of its payload).
"""
from __future__ import annotations

from ..tensor import Function, Tensor, _record

__all__ = ["gather", "join", "offsets", "piece", "shares"]


def shares(n: int, size: int) -> list[int]:
    """How ``n`` entries split over ``size`` ranks: ceil(n/size) to the first ``n % size``
    ranks, floor(n/size) to the others (``np.array_split``'s rule)."""
    base, extra = divmod(int(n), int(size))
    return [base + (1 if r < extra else 0) for r in range(size)]


def offsets(sizes) -> list[int]:
    """Where each rank's piece starts in the joined axis (the running sums of ``sizes``)."""
    out, at = [], 0
    for s in sizes:
        out.append(at)
        at += s
    return out


def piece(n: int, rank: int, size: int) -> slice:
    """Rank ``rank``'s entries of ``n`` split by ``shares``: consecutive, in rank order."""
    cut = shares(n, size)
    start = offsets(cut)[rank]
    return slice(start, start + cut[rank])


def _cut(xp, a, axis: int, start: int, length: int):
    index = [slice(None)] * a.ndim
    index[axis] = slice(start, start + length)
    return xp.ascontiguousarray(a[tuple(index)])


def join(xp, comm, x, sizes, axis: int = 0):
    """Every rank's array ``x`` joined along ``axis`` (rank r's has ``sizes[r]`` entries
    there): padded to the largest piece for one all-gather, then cut back. Returns the
    joined array and the all-gather's payload in bytes. No autograd (``gather`` is)."""
    own, width = x.shape[axis], max(sizes)
    padded = xp.ascontiguousarray(x)
    if own < width:  # an all-gather moves one shape
        pad = list(x.shape)
        pad[axis] = width - own
        padded = xp.concatenate([padded, xp.zeros(tuple(pad), dtype=x.dtype)], axis=axis)
    everyone = comm.allgather(padded)            # (K, *padded.shape)
    joined = xp.concatenate([_cut(xp, everyone[k], axis, 0, s) for k, s in enumerate(sizes)],
                            axis=axis)
    return joined, everyone.nbytes


class _Gather(Function):
    def forward(self, x, comm, sizes, axis, partial, name):
        xp = self.device.xp
        self.comm, self.sizes, self.axis, self.partial, self.name = comm, sizes, axis, partial, name
        if x.shape[axis] != sizes[comm.rank]:
            raise ValueError(f"hybrid {name}: rank {comm.rank}'s piece has {x.shape[axis]} "
                             f"entries along axis {axis}, the layout says {sizes[comm.rank]}")
        joined, nbytes = join(xp, comm, x, sizes, axis)
        _record("forward", self.device, self.device, nbytes, f"hybrid {name} allgather")
        return joined

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
