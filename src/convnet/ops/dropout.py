"""Dropout with a counter-based mask: ``y = keep ? x * scale : 0``.

The mask of element ``i`` (flat index) is ``word(i) >= threshold`` where ``word(i)``
is its Philox4x32-10 word under the 64-bit seed (``convnet.philox``: counter
``i // 4``, word ``i % 4``) and ``threshold = ceil(p * 2**32)`` (so the kept units
are exactly those with ``word / 2**32 >= p``; p = 0 keeps all, p = 1 none). The
NumPy reference and ``kernels/dropout.cu`` compute the same words, so the mask is
bit-identical on cpu, emu and cuda.

One primitive, ``apply(device, x, seed, threshold, scale)``, serves the forward and
the backward (which passes the incoming gradient with the forward's seed, threshold
and scale: the mask is regenerated, never stored). ``plan(p, training, mode)`` turns
the user's arguments into ``(threshold, scale)``:

=========  ===============================  ===============================
mode       training                         eval (training=False)
=========  ===============================  ===============================
inverted   drop, scale kept by 1/(1-p)      identity (``plan`` returns None)
paper      drop, no scaling                 keep all, scale by (1-p)
=========  ===============================  ===============================
"""
from __future__ import annotations

import numbers

import numpy as np

from . import philox
from ..toolchain.launch import KernelModule, Launch
from ._arrays import kernel_array
from ._elementwise import BLOCK, grid_for

MODULE = KernelModule("dropout.cu", ("dropout_apply",))
MODES = ("inverted", "paper")

_SEEDS = np.random.default_rng()  # draws the seed of every dropout called with seed=None


def draw_seed() -> int:
    """A fresh 64-bit seed from the module's generator."""
    return int(_SEEDS.integers(0, 2**64, dtype=np.uint64))


def set_seed(seed) -> None:
    """Reseed the generator behind ``seed=None`` (reproducible runs)."""
    global _SEEDS
    _SEEDS = np.random.default_rng(philox.check_seed(seed))


def plan(p, training: bool = True, mode: str = "inverted"):
    """``(threshold, scale)`` for ``apply``, or None where dropout is the identity."""
    if isinstance(p, bool) or not isinstance(p, numbers.Real):
        raise TypeError(f"dropout probability p must be a real number, not {type(p).__name__}")
    p = float(p)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability p must be in [0, 1], got {p}")
    if mode not in MODES:
        raise ValueError(f"dropout mode must be one of {MODES}, got {mode!r}")
    if training:
        threshold = philox.keep_threshold(p)
        if mode == "paper":
            return threshold, 1.0
        return threshold, (1.0 / (1.0 - p) if p < 1.0 else 0.0)
    if mode == "inverted":
        return None
    return 0, 1.0 - p


def keep_mask(seed: int, shape, p: float) -> np.ndarray:
    """The boolean keep-mask of a tensor of ``shape`` under ``seed`` (NumPy, any device's)."""
    shape = tuple(shape)
    n = int(np.prod(shape, dtype=np.int64))
    return philox.keep_mask(seed, n, philox.keep_threshold(p)).reshape(shape)


# --------------------------------------------------------------------------- reference

def apply_reference(x: np.ndarray, seed: int, threshold: int, scale: float) -> np.ndarray:
    """``keep ? x * scale : 0`` in x's dtype (the scale rounded to that dtype once)."""
    mask = philox.keep_mask(seed, x.size, threshold).reshape(x.shape)
    return np.where(mask, x * x.dtype.type(scale), x.dtype.type(0))


# --------------------------------------------------------------------------- launch

def apply_launch(x, y, seed: int, threshold: int, scale: float) -> Launch:
    return Launch(MODULE, "dropout_apply", grid=(grid_for(x.size),), block=(BLOCK,),
                  args=(x, y, np.int64(x.size), np.uint64(seed), np.uint64(threshold),
                        np.float32(scale)))


# --------------------------------------------------------------------------- on a device

def apply(device, x, seed: int, threshold: int, scale: float):
    seed = philox.check_seed(seed)
    if not 0 <= threshold <= 2**32:
        raise ValueError(f"dropout threshold must be in [0, 2**32], got {threshold}")
    if not device.runs_kernels:
        return apply_reference(x, seed, threshold, scale)
    x = kernel_array(device, x, "dropout", "x")
    y = device.xp.empty_like(x)
    if x.size:
        device.launch(apply_launch(x, y, seed, threshold, scale))
    return y
