"""Fully-connected layer: ``y = act(x · Wᵀ + b)``, ``W`` of shape (out, in).

The matrix products run in the array library of the device (``device.xp.matmul``:
cuBLAS through CuPy on ``cuda``, NumPy on ``cpu`` and ``emu``); the epilogue (bias
add and optional ReLU) is ``kernels/linear.cu`` on ``emu``/``cuda``, NumPy on ``cpu``.

Backward, from the saved input ``x``, the weight ``W`` and (with ReLU) the output ``y``:
``dz = relu ? dy·[y > 0] : dy``, ``db = Σ_rows dz`` (one kernel with the mask),
``dx = dz · W``, ``dW = dzᵀ · x``.

All functions take and return raw arrays of ``device``; on ``cpu`` any float dtype
(float64 for gradient checks), on ``emu``/``cuda`` float32 only. ``forward`` and
``backward`` are where raw arrays enter: they check them once; ``epilogue`` and
``epilogue_backward`` are their kernel halves.

Dropout in the epilogue (``drop``, an ``ops.dropout.Plan``): ``y = dropout(relu(z + b))``
in one pass (``bias_relu_dropout_forward``: the Philox mask computed in the kernel, never
stored; the same values bit for bit as the epilogue then ``ops.dropout.apply`` with the
plan), and backward ``dz = (keep ∧ y > 0) ? dy·scale : 0`` with ``db`` in one pass
(``bias_relu_dropout_backward``: the mask regenerated from the seed; the plan's element
offset places the rows in a larger batch's mask, as ``ops.dropout``). With the saved
output being the dropped one, ``y > 0`` stands for ``relu(z + b) > 0``; they differ only
where ``relu(z + b)·scale`` underflows to 0 (scale < 1: the paper mode at eval, below
2^-126/scale), where this gradient is 0. Without ReLU or bias, or on ``cpu``, the two
steps run one after the other.
"""
from __future__ import annotations

import numpy as np

from ..toolchain.launch import KernelModule, Launch, name_expression
from . import dropout as _dropout
from . import relu as _relu
from ._arrays import INT32_MAX, kernel_array
from .elementwise import BLOCK, grid_for

# The backward kernels' block: columns × row strides (their template arguments).
REDUCE_BLOCK = (32, 8)
# The fused dropout backward's block: a warp of columns × row strides (the same sums as
# dropout then bias_relu_backward).
DROP_BLOCK = REDUCE_BLOCK
MODULE = KernelModule("linear.cu", ("bias_act_forward<true>", "bias_act_forward<false>",
                                    name_expression("bias_relu_backward", REDUCE_BLOCK),
                                    name_expression("bias_grad", REDUCE_BLOCK),
                                    "bias_relu_dropout_forward",
                                    name_expression("bias_relu_dropout_backward", DROP_BLOCK)))


def _check_shapes(x, w, b) -> None:
    """ValueError naming the mismatch unless x (rows, in), w (out, in), b (out,) or None."""
    if x.ndim != 2:
        raise ValueError(f"linear: the input must be 2-D (batch, features), got shape "
                         f"{tuple(x.shape)}; flatten it first")
    if w.ndim != 2:
        raise ValueError(f"linear: the weight must be 2-D (out_features, in_features), "
                         f"got shape {tuple(w.shape)}")
    rows, k = x.shape
    out, k2 = w.shape
    if k != k2:
        raise ValueError(f"linear: the input has {k} features but the weight {tuple(w.shape)} "
                         f"expects {k2}")
    if b is not None and tuple(b.shape) != (out,):
        raise ValueError(f"linear: the bias must have shape ({out},), got {tuple(b.shape)}")
    if rows > INT32_MAX or out > INT32_MAX:
        raise ValueError(f"linear: {rows}×{out} outputs exceed the kernels' int32 rows/columns")


# --------------------------------------------------------------------------- references

def epilogue_reference(z, b, relu: bool):
    """``act(z + b)`` (b may be None), in z's dtype; ReLU keeps NaN as relu does."""
    y = z if b is None else z + b
    return _relu.forward_reference(y) if relu else y


def epilogue_backward_reference(y, dy, relu: bool, bias: bool):
    """``(dz, db)``: dz = dy masked by y > 0 (with ReLU), db its column sums (or None)."""
    dz = _relu.backward_reference(y, dy) if relu else dy
    return dz, (dz.sum(axis=0) if bias else None)


def epilogue_dropout_reference(z, b, relu: bool, drop):
    """``dropout(act(z + b))`` with ``drop``'s mask and scale, the two steps in order."""
    return _dropout.apply_reference(epilogue_reference(z, b, relu), drop)


def epilogue_dropout_backward_reference(y, dy, relu: bool, bias: bool, drop):
    """``(dz, db)`` of ``epilogue_dropout_reference`` from its output ``y``."""
    return epilogue_backward_reference(y, _dropout.apply_reference(dy, drop), relu, bias)


# --------------------------------------------------------------------------- launches

def forward_launch(device, y, b, relu: bool) -> Launch:
    """In place: ``y = act(y + b)`` over a rows×cols ``y``."""
    return Launch(MODULE, "bias_act_forward", grid=(grid_for(device, y.size),), block=(BLOCK,),
                  args=(y, b, np.int64(y.size), np.int32(y.shape[1])), template_args=(bool(relu),))


def forward_dropout_launch(device, y, b, drop) -> Launch:
    """In place: ``y = dropout(relu(y + b))`` with the plan ``drop``'s mask and scale."""
    return Launch(MODULE, "bias_relu_dropout_forward", grid=(grid_for(device, y.size),),
                  block=(BLOCK,), args=(y, b, np.int64(y.size), np.int32(y.shape[1]),
                                        np.uint64(drop.seed), np.uint64(drop.threshold),
                                        np.float32(drop.scale), np.uint64(drop.offset)))


def backward_dropout_launch(y, dy, dz, db, drop) -> Launch:
    """dz = dy·scale where kept and y > 0 (else 0), db = column sums of dz, one pass."""
    rows, cols = dy.shape
    grid = (-(-cols // DROP_BLOCK[0]),)
    return Launch(MODULE, "bias_relu_dropout_backward", grid=grid, block=DROP_BLOCK,
                  args=(y, dy, dz, db, np.int32(rows), np.int32(cols), np.uint64(drop.seed),
                        np.uint64(drop.threshold), np.float32(drop.scale),
                        np.uint64(drop.offset)),
                  template_args=DROP_BLOCK)


def backward_launch(y, dy, dz, db) -> Launch:
    """dz = dy·[y > 0] and db = column sums of dz; with ``y`` None, db = column sums of dy."""
    rows, cols = dy.shape
    grid = (-(-cols // REDUCE_BLOCK[0]),)
    if y is None:
        return Launch(MODULE, "bias_grad", grid=grid, block=REDUCE_BLOCK,
                      args=(dy, db, np.int32(rows), np.int32(cols)), template_args=REDUCE_BLOCK)
    return Launch(MODULE, "bias_relu_backward", grid=grid, block=REDUCE_BLOCK,
                  args=(y, dy, dz, db, np.int32(rows), np.int32(cols)),
                  template_args=REDUCE_BLOCK)


# --------------------------------------------------------------------------- on a device

def epilogue(device, z, b, relu: bool, drop=None):
    """``act(z + b)`` (then ``drop``'s dropout, a Plan or None); on a kernel device ``z``
    (a fresh matmul result) is overwritten. ``z`` and ``b`` as the kernels take them
    (``forward`` checks them)."""
    if drop is not None:
        if not (device.runs_kernels and relu and b is not None):
            return _dropout.apply(device, epilogue(device, z, b, relu), drop)
        if z.size:
            device.launch(forward_dropout_launch(device, z, b, drop))
        return z
    if not device.runs_kernels:
        return epilogue_reference(z, b, relu)
    if b is None:
        return _relu.forward(device, z) if relu else z
    if z.size:
        device.launch(forward_launch(device, z, b, relu))
    return z


def epilogue_backward(device, y, dy, relu: bool, bias: bool, drop=None):
    """``(dz, db)`` as in ``epilogue_backward_reference`` (``epilogue_dropout_backward_reference``
    with ``drop``)."""
    fused = drop is not None and device.runs_kernels and relu and bias
    if drop is not None and not fused:
        dy = _dropout.apply(device, dy, drop)
    if not device.runs_kernels:
        return epilogue_backward_reference(y, dy, relu, bias)
    if not bias:
        return (_relu.backward(device, y, dy) if relu else dy), None
    xp = device.xp
    dy = kernel_array(device, dy, "linear backward", "the gradient dy")
    rows, cols = dy.shape
    db = xp.empty((cols,), dtype=np.float32)
    if relu:
        y = kernel_array(device, y, "linear backward", "the saved output y")
        dz = xp.empty_like(dy)
    else:
        y, dz = None, dy
    if rows == 0:
        db[...] = 0
        return dz, db
    if cols:
        device.launch(backward_dropout_launch(y, dy, dz, db, drop) if fused
                      else backward_launch(y, dy, dz, db))
    return dz, db


def forward(device, x, w, b=None, relu: bool = False, drop=None):
    """``act(x · Wᵀ + b)`` for x (rows, in), w (out, in), b (out,) or None; then dropout
    with the plan ``drop`` (``ops.dropout.plan``) when one is given."""
    _check_shapes(x, w, b)
    if device.runs_kernels:
        x = kernel_array(device, x, "linear", "the input x")
        w = kernel_array(device, w, "linear", "the weight")
        if b is not None:
            b = kernel_array(device, b, "linear", "the bias")
    z = device.xp.matmul(x, w.T)
    return epilogue(device, z, b, relu, drop)


def backward(device, x, w, y, dy, relu: bool, needs=(True, True, True), drop=None):
    """``(dx, dW, db)`` (each None where ``needs`` says it is not wanted).

    ``y`` is the forward output (needed only with ReLU), ``needs`` flags x, W, b;
    ``drop`` the forward's dropout plan (the mask is regenerated from it).
    """
    xp = device.xp
    need_x, need_w, need_b = (tuple(needs) + (False,) * 3)[:3]
    dz, db = epilogue_backward(device, y, dy, relu, need_b, drop)
    dx = xp.matmul(dz, w) if need_x else None
    dw = xp.matmul(dz.T, x) if need_w else None
    return dx, dw, db
