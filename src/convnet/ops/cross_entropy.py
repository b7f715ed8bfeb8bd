"""Cross-entropy of softmax(logits) against integer labels, mean over the batch.

Per row n of the logits x (N×C), with ``m[n]`` the row max and
``ls[n] = log Σ_c exp(x[n,c] - m[n])`` (stable for logits of any size),
``loss[n] = (m[n] - x[n, label[n]]) + ls[n]``; the loss is ``mean_n loss[n]``. The
gradient of the mean with respect to x is ``(softmax(x) - onehot(label)) / N`` with
``softmax(x) = exp((x - m) - ls)``, scaled by the incoming gradient. ``m`` and ``ls``
are saved apart (not as one log-sum-exp) so that logits of size 1e4 keep float32's
relative precision in the softmax. ``kernels/cross_entropy.cu`` does each direction in one kernel
(one block per row) on ``emu``/``cuda``; the NumPy references run on ``cpu`` in any
float dtype.

``forward(device, x, labels)`` is where raw arrays enter: it checks the logits (2-D,
not empty) and the labels (``check_labels``: an integer array of shape (N,) with every
value in 0..C-1, else a clear error; an out-of-range label would otherwise read
outside the row) once, and returns with the rows' losses a ``Saved`` that
``backward`` takes as it is.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from ..toolchain.launch import KernelModule, Launch, name_expression
from ._arrays import INT32_MAX, kernel_array

THREADS = 256  # both kernels' block (their template argument: a multiple of 32)
MODULE = KernelModule("cross_entropy.cu", (name_expression("cross_entropy_forward", (THREADS,)),
                                           name_expression("cross_entropy_backward", (THREADS,))))


class Saved(NamedTuple):
    """What the backward needs besides the logits: the checked int32 labels, and per
    row the max ``m`` and the log of the shifted sum ``ls``."""

    labels: Any
    m: Any
    ls: Any


def _check_logits(x) -> tuple[int, int]:
    if x.ndim != 2:
        raise ValueError(f"cross_entropy: logits must be 2-D (batch, classes), got shape "
                         f"{tuple(x.shape)}")
    n, c = x.shape
    if n == 0:
        raise ValueError("cross_entropy: the batch is empty (logits of shape "
                         f"{tuple(x.shape)}); a mean over no samples is undefined")
    if c == 0:
        raise ValueError("cross_entropy: logits have no classes (shape "
                         f"{tuple(x.shape)})")
    if n > INT32_MAX or c > INT32_MAX:
        raise ValueError(f"cross_entropy: {n}×{c} logits exceed the kernels' int32 sizes")
    return n, c


def check_labels(xp, labels, n: int, c: int, *, range_checked: bool = False):
    """``labels`` as a C-contiguous int32 array of the array module ``xp`` (NumPy or
    CuPy), after checking dtype, shape and (unless ``range_checked``: the caller did it
    on the host) range. The range check of a CuPy array reads two numbers back."""
    dtype = np.dtype(labels.dtype)
    if dtype.kind not in "iu":
        raise TypeError(f"cross_entropy: labels must be integers (int32 or int64), got {dtype}")
    if tuple(labels.shape) != (n,):
        raise ValueError(f"cross_entropy: labels must have shape ({n},) for logits of shape "
                         f"({n}, {c}), got {tuple(labels.shape)}")
    if not range_checked and n:
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= c:
            bad = labels[(labels < 0) | (labels >= c)]
            first = int(bad.reshape(-1)[0])
            raise ValueError(f"cross_entropy: label {first} is out of range for {c} classes "
                             f"(labels must lie in 0..{c - 1}; got min {low}, max {high})")
    return xp.ascontiguousarray(labels, dtype=np.int32)


# --------------------------------------------------------------------------- references

def forward_reference(x, labels):
    """``(loss_rows, Saved)``, the rows' losses and statistics of shape (N,) in x's dtype."""
    m = x.max(axis=1)
    with np.errstate(invalid="ignore", over="ignore"):  # inf/NaN logits give NaN, as the kernel
        ls = np.log(np.exp(x - m[:, None]).sum(axis=1))
        loss = (m - x[np.arange(x.shape[0]), labels]) + ls
    return loss, Saved(labels, m, ls)


def backward_reference(x, saved: Saved, dloss):
    """``(exp((x - m) - ls) - onehot) * dloss / N`` in x's dtype."""
    n = x.shape[0]
    labels, m, ls = saved
    with np.errstate(invalid="ignore", over="ignore"):
        p = np.exp((x - m[:, None]) - ls[:, None])
    p[np.arange(n), labels] -= 1
    return p * (x.dtype.type(np.asarray(dloss).reshape(())) / x.dtype.type(n))


# --------------------------------------------------------------------------- launches

def forward_launch(x, labels, loss, m, ls) -> Launch:
    n, c = x.shape
    return Launch(MODULE, "cross_entropy_forward", grid=(n,), block=(THREADS,),
                  args=(x, labels, loss, m, ls, np.int32(c)), template_args=(THREADS,))


def backward_launch(x, saved: Saved, dloss, dx) -> Launch:
    n, c = x.shape
    return Launch(MODULE, "cross_entropy_backward", grid=(n,), block=(THREADS,),
                  args=(x, *saved, dloss, dx, np.int32(n), np.int32(c)),
                  template_args=(THREADS,))


# --------------------------------------------------------------------------- on a device

def forward(device, x, labels, *, range_checked: bool = False):
    """``(loss_rows, saved)`` for logits ``x`` (N, C) and ``labels`` (N integers of
    ``device``; ``range_checked``: their range was checked on the host, so no read back
    here); ``saved`` is what ``backward`` takes."""
    n, c = _check_logits(x)
    labels = check_labels(device.xp, labels, n, c, range_checked=range_checked)
    if not device.runs_kernels:
        return forward_reference(x, labels)
    x = kernel_array(device, x, "cross_entropy", "the logits")
    loss, m, ls = (device.xp.empty((n,), dtype=np.float32) for _ in range(3))
    device.launch(forward_launch(x, labels, loss, m, ls))
    return loss, Saved(labels, m, ls)


def backward(device, x, saved: Saved, dloss):
    """The gradient of ``dloss · mean(loss_rows)`` with respect to the logits ``x``
    (those given to ``forward``, which returned ``saved``)."""
    if not device.runs_kernels:
        return backward_reference(x, saved, dloss)
    x = kernel_array(device, x, "cross_entropy backward", "the logits")
    dloss = kernel_array(device, device.xp.asarray(dloss).reshape((1,)),
                         "cross_entropy backward", "the gradient of the loss")
    dx = device.xp.empty_like(x)
    device.launch(backward_launch(x, saved, dloss, dx))
    return dx
