"""The update rule of Krizhevsky et al. (2012), section 5, for one parameter tensor:

    v ← momentum·v − weight_decay·lr·w − lr·g,   w ← w + v

``update(device, w, v, g, lr, momentum, weight_decay)`` changes ``w`` and ``v`` in
place: one fused pass of ``kernels/sgd.cu`` on ``emu``/``cuda`` (float32), the NumPy
reference on ``cpu`` (any float dtype; the same order of operations, with the
decay coefficient ``weight_decay·lr`` formed once on the host as the kernel gets it).
"""
from __future__ import annotations

import numpy as np

from ..toolchain.launch import KernelModule, Launch
from .elementwise import BLOCK, grid_for

MODULE = KernelModule("sgd.cu", ("sgd_momentum",))


def update_reference(w, v, g, lr: float, momentum: float, decay: float) -> None:
    """In place, in w's dtype: v = momentum·v − decay·w − lr·g; w += v."""
    t = w.dtype.type
    v *= t(momentum)
    v -= t(decay) * w
    v -= t(lr) * g
    w += v


def update_launch(device, w, v, g, lr: float, momentum: float, decay: float) -> Launch:
    return Launch(MODULE, "sgd_momentum", grid=(grid_for(device, w.size),), block=(BLOCK,),
                  args=(w, v, g, np.int64(w.size), np.float32(lr), np.float32(momentum),
                        np.float32(decay)))


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
