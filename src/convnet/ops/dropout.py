"""Dropout with a counter-based mask: ``y = keep ? x * scale : 0``.

The mask of element ``i`` (flat index) is ``word(i) >= threshold`` where ``word(i)``
is its Philox4x32-10 word under the 64-bit seed (``ops.philox``: counter
``i // 4``, word ``i % 4``) and ``threshold = ceil(p * 2**32)`` (so the kept units
are exactly those with ``word / 2**32 >= p``; p = 0 keeps all, p = 1 none). The
NumPy reference and ``kernels/dropout.cu`` compute the same words, so the mask is
bit-identical on cpu, emu and cuda.

The plan's element ``offset`` (default 0) shifts the stream: element ``i`` takes the
word of position ``offset + i`` (counter ``(offset + i) // 4``, word ``(offset + i) % 4``).
An array that holds rows ``r0 ..`` of an (N, units) activation, with offset
``r0 * units``, gets exactly those rows of the whole activation's mask: how a
data-parallel rank draws the single-process masks on its share of the batch.

``plan(p, training, mode, seed, offset)`` checks the user's arguments once and returns
the ``Plan`` (seed, threshold, scale, offset), or None where dropout is the identity; one
primitive, ``apply(device, x, plan)``, serves the forward and the backward (which
passes the incoming gradient with the forward's plan: the mask is regenerated,
never stored):

=========  ===============================  ===============================
mode       training                         eval (training=False)
=========  ===============================  ===============================
inverted   drop, scale kept by 1/(1-p)      identity (``plan`` returns None)
paper      drop, no scaling                 keep all, scale by (1-p)
=========  ===============================  ===============================
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .. import arguments
from . import philox
from ..toolchain.launch import KernelModule, Launch
from ._arrays import kernel_array
from .elementwise import BLOCK, grid_for

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


class Plan(NamedTuple):
    """What ``apply`` does: keep element i iff the Philox word at stream position
    ``offset + i`` under ``seed`` is >= ``threshold`` (an int in [0, 2**32]), then
    multiply by ``scale``."""

    seed: int
    threshold: int
    scale: float
    offset: int = 0


def check_arguments(p, mode: str) -> float:
    """``p`` as a float in [0, 1], after checking ``mode``; or a clear error."""
    p = arguments.real(p, "dropout probability p", low=0, high=1)
    if mode not in MODES:
        raise ValueError(f"dropout mode must be one of {MODES}, got {mode!r}")
    return p


def plan(p, training: bool = True, mode: str = "inverted", seed=None,
         offset: int = 0) -> Plan | None:
    """The ``Plan`` of one dropout call, or None where it is the identity. ``seed=None``
    draws a fresh seed where a mask is needed (``draw_seed``); ``offset`` is the stream
    position of the array's first element (see the module docstring)."""
    p = check_arguments(p, mode)
    offset = philox.check_offset(offset)
    if seed is not None:
        seed = philox.check_seed(seed)
    if training:
        threshold = philox.keep_threshold(p)
        scale = 1.0 if mode == "paper" else (1.0 / (1.0 - p) if p < 1.0 else 0.0)
    elif mode == "inverted":
        return None
    else:
        threshold, scale = 0, 1.0 - p
    if seed is None:
        seed = draw_seed() if threshold else 0  # no mask: no seed needed
    return Plan(seed, threshold, scale, offset)


def keep_mask(seed: int, shape, p: float, offset: int = 0) -> np.ndarray:
    """The boolean keep-mask of a tensor of ``shape`` under ``seed`` whose first element is
    at stream position ``offset`` (NumPy, any device's)."""
    shape = tuple(shape)
    n = int(np.prod(shape, dtype=np.int64))
    return philox.keep_mask(seed, n, philox.keep_threshold(p), offset).reshape(shape)


# --------------------------------------------------------------------------- reference

def apply_reference(x: np.ndarray, plan: Plan) -> np.ndarray:
    """``keep ? x * scale : 0`` in x's dtype (the scale rounded to that dtype once)."""
    mask = philox.keep_mask(plan.seed, x.size, plan.threshold, plan.offset).reshape(x.shape)
    return np.where(mask, x * x.dtype.type(plan.scale), x.dtype.type(0))


# --------------------------------------------------------------------------- launch

def apply_launch(device, x, y, plan: Plan) -> Launch:
    return Launch(MODULE, "dropout_apply", grid=(grid_for(device, x.size),), block=(BLOCK,),
                  args=(x, y, np.int64(x.size), np.uint64(plan.seed), np.uint64(plan.threshold),
                        np.float32(plan.scale), np.uint64(plan.offset)))


# --------------------------------------------------------------------------- on a device

def apply(device, x, plan: Plan):
    """``x`` with ``plan``'s mask and scale applied, as an array of ``device``."""
    if not device.runs_kernels:
        return apply_reference(x, plan)
    x = kernel_array(device, x, "dropout", "x")
    y = device.xp.empty_like(x)
    if x.size:
        device.launch(apply_launch(device, x, y, plan))
    return y
