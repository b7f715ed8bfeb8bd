"""The update rule of Krizhevsky et al. (2012), section 5, for one parameter tensor:

    v ← momentum·v − weight_decay·lr·w − lr·g,   w ← w + v

``update(device, w, v, g, lr, momentum, weight_decay)`` changes ``w`` and ``v`` in
place: one fused pass of ``kernels/sgd.cu`` on ``emu``/``cuda`` (float32), the NumPy
reference on ``cpu`` (any float dtype; the same order of operations, with the
decay coefficient ``weight_decay·lr`` formed once on the host as the kernel gets it).

``update_many(device, ws, vs, gs, lrs, momentum, weight_decays)`` updates a list of
parameters of one device: on ``emu``/``cuda`` in one launch of ``sgd_momentum_multi``
(a table of addresses, sizes and rates in a small int64 device array; bit-identical
to one ``update`` each), on ``cpu`` one reference update each. Every tensor is
checked before any changes.
"""
from __future__ import annotations

import numpy as np

from ..toolchain.launch import KernelModule, Launch
from .elementwise import BLOCK, grid_for

MODULE = KernelModule("sgd.cu", ("sgd_momentum", "sgd_momentum_multi"))
TABLE_ROW = 5  # int64 entries per tensor before the (lr, decay) pairs: w, v, g, n, first group


# The reference updates blocks of this many elements in turn: its temporary stays in
# cache and w, v, g each cross memory once (whole-tensor passes move AlexNet's fc6,
# 150 MB a tensor, about three times as much, and its 150 MB temporary is fresh pages
# every step). The arithmetic of each element is the same.
BLOCK_ELEMENTS = 1 << 16


def update_reference(w, v, g, lr: float, momentum: float, decay: float) -> None:
    """In place, in w's dtype: v = momentum·v − decay·w − lr·g; w += v (block by block,
    ``BLOCK_ELEMENTS``; w and v C-contiguous, as ``update`` checks)."""
    t = w.dtype.type
    wf, vf, gf = w.reshape(-1), v.reshape(-1), g.reshape(-1)
    term = np.empty(min(w.size, BLOCK_ELEMENTS), w.dtype)
    for i in range(0, w.size, BLOCK_ELEMENTS):
        wb, vb, gb = wf[i:i + BLOCK_ELEMENTS], vf[i:i + BLOCK_ELEMENTS], gf[i:i + BLOCK_ELEMENTS]
        tb = term[:wb.size]
        vb *= t(momentum)
        vb -= np.multiply(wb, t(decay), out=tb)
        vb -= np.multiply(gb, t(lr), out=tb)
        wb += vb


def update_launch(device, w, v, g, lr: float, momentum: float, decay: float) -> Launch:
    return Launch(MODULE, "sgd_momentum", grid=(grid_for(device, w.size),), block=(BLOCK,),
                  args=(w, v, g, np.int64(w.size), np.float32(lr), np.float32(momentum),
                        np.float32(decay)))


def _address(a) -> int:
    """The device address of an array's first element (NumPy or CuPy)."""
    if isinstance(a, np.ndarray):
        return int(a.__array_interface__["data"][0])
    return int(a.data.ptr)


def multi_table(ws, vs, gs, lrs, decays) -> tuple[np.ndarray, int]:
    """The host table of ``sgd_momentum_multi`` (int64, 6 entries a tensor) and the total
    number of groups of four; tensors of no elements must be left out by the caller."""
    t = len(ws)
    table = np.zeros(6 * t, np.int64)
    rows = table[:TABLE_ROW * t].reshape(t, TABLE_ROW)
    first = 0
    for k, (w, v, g) in enumerate(zip(ws, vs, gs)):
        rows[k] = (_address(w), _address(v), _address(g), w.size, first)
        first += -(-int(w.size) // 4)
    rates = table[TABLE_ROW * t:].view(np.float32).reshape(t, 2)
    rates[:, 0] = np.asarray(lrs, np.float64).astype(np.float32)
    rates[:, 1] = np.asarray(decays, np.float64).astype(np.float32)
    return table, first


def multi_update_launch(device, table, tensors: int, groups: int, momentum: float,
                        elements: int | None = None) -> Launch:
    """The launch of ``sgd_momentum_multi`` over ``groups`` groups of ``tensors`` tensors
    (``table`` on the device; ``elements`` sizes the grid, default 4·groups)."""
    n = 4 * int(groups) if elements is None else int(elements)
    return Launch(MODULE, "sgd_momentum_multi", grid=(grid_for(device, n),), block=(BLOCK,),
                  args=(table, np.int32(tensors), np.int64(groups), np.float32(momentum)))


def _check(device, w, v, g) -> None:
    for what, a in (("the parameter", w), ("the momentum buffer", v), ("the gradient", g)):
        if not device.owns(a):
            raise TypeError(f"sgd: {what} is a {type(a).__module__}.{type(a).__name__}, "
                            f"not an array of device {device.name!r}")
        if tuple(a.shape) != tuple(w.shape):
            raise ValueError(f"sgd: {what} has shape {tuple(a.shape)}, the parameter "
                             f"{tuple(w.shape)}")
    for what, a in (("the parameter", w), ("the momentum buffer", v)):
        if not a.flags.c_contiguous or not getattr(a.flags, "writeable", True):  # CuPy: no flag
            raise ValueError(f"sgd: {what} must be a writable C-contiguous array "
                             f"(it is updated in place)")
    if device.runs_kernels:
        for what, a in (("the parameter", w), ("the momentum buffer", v), ("the gradient", g)):
            if a.dtype != np.float32:
                raise TypeError(f"sgd: the {device.kind} kernel takes float32, but {what} "
                                f"has dtype {a.dtype}")


def update(device, w, v, g, lr: float, momentum: float, weight_decay: float) -> None:
    """One step of the paper's rule for one parameter, in place on ``w`` and ``v``."""
    _check(device, w, v, g)
    decay = weight_decay * lr
    if not device.runs_kernels:
        update_reference(w, v, g, lr, momentum, decay)
        return
    if not g.flags.c_contiguous:
        g = device.xp.ascontiguousarray(g)
    if w.size:
        device.launch(update_launch(device, w, v, g, lr, momentum, decay))


def update_many(device, ws, vs, gs, lrs, momentum: float, weight_decays) -> None:
    """``update`` of every (w, v, g) with its own lr and weight decay, all of ``device``;
    one launch on a kernel device. All are checked before any changes."""
    ws, vs, gs, lrs, weight_decays = (list(a) for a in (ws, vs, gs, lrs, weight_decays))
    if not len(ws) == len(vs) == len(gs) == len(lrs) == len(weight_decays):
        raise ValueError("sgd: update_many needs as many momentum buffers, gradients, rates "
                         "and decays as parameters")
    for w, v, g in zip(ws, vs, gs):
        _check(device, w, v, g)
    decays = [wd * lr for wd, lr in zip(weight_decays, lrs)]
    if not device.runs_kernels:
        for w, v, g, lr, decay in zip(ws, vs, gs, lrs, decays):
            update_reference(w, v, g, lr, momentum, decay)
        return
    keep = [k for k, w in enumerate(ws) if w.size]
    if not keep:
        return
    gs = [g if g.flags.c_contiguous else device.xp.ascontiguousarray(g) for g in gs]
    pick = lambda seq: [seq[k] for k in keep]  # noqa: E731
    host, groups = multi_table(pick(ws), pick(vs), pick(gs), pick(lrs), pick(decays))
    table = device.asarray(host)
    elements = sum(int(ws[k].size) for k in keep)
    device.launch(multi_update_launch(device, table, len(keep), groups, momentum, elements))
