"""Array checks shared by every op family: what a kernel may be handed."""
from __future__ import annotations

import numpy as np

INT32_MAX = 2**31 - 1  # the kernels index with 32-bit ints


def kernel_array(device, array, op: str, what: str = "input"):
    """``array`` as the kernels of ``device`` take it, or a clear error.

    Kernels take float32 only: any other dtype is a TypeError naming it (the NumPy
    references on ``cpu`` take any float dtype). A non-contiguous array (a strided
    view) is copied to a C-contiguous one; a contiguous view with a misaligned start
    (``x[1:]``) is passed as it is, which the kernels handle.
    """
    if not device.owns(array):
        raise TypeError(f"{op}: {what} is a {type(array).__module__}.{type(array).__name__}, "
                        f"not an array of device {device.name!r}")
    if array.dtype != np.float32:
        raise TypeError(f"{op}: the {device.kind} kernels take float32, but {what} has dtype "
                        f"{array.dtype}; convert it first (the cpu device runs any float dtype)")
    if not array.flags.c_contiguous:
        array = device.xp.ascontiguousarray(array)
    if isinstance(array, np.ndarray) and not array.flags.aligned:
        array = array.copy()  # a float32 not on a 4-byte boundary (host buffers only)
    return array


def check_shape(op: str, array, shape: tuple, what: str) -> None:
    """TypeError unless ``array`` is an array, ValueError unless it has ``shape``."""
    if not (hasattr(array, "shape") and hasattr(array, "dtype")):
        raise TypeError(f"{op}: {what} must be an array, not {type(array).__name__}")
    if tuple(array.shape) != tuple(shape):
        raise ValueError(f"{op}: {what} must have shape {tuple(shape)}, got {tuple(array.shape)}")


def check_one_dtype(op: str, **arrays) -> None:
    """TypeError unless the arrays (None skipped) share one dtype."""
    dtypes = {name: a.dtype for name, a in arrays.items() if a is not None}
    if len(set(dtypes.values())) > 1:
        described = ", ".join(f"{n} {d}" for n, d in dtypes.items())
        raise TypeError(f"{op}: the arrays must share one dtype, got {described}")


def check_same_shape(op: str, **arrays) -> None:
    shapes = {name: tuple(a.shape) for name, a in arrays.items()}
    if len(set(shapes.values())) > 1:
        described = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise ValueError(f"{op}: shapes differ: {described}")
