"""Philox4x32-10 in vectorised NumPy: the host twin of ``kernels/philox.cuh``.

Philox (Salmon, Moraes, Dror, Shaw: "Parallel random numbers: as easy as 1, 2, 3",
SC 2011) is a counter-based generator: ``philox4x32(counter, key)`` maps a 128-bit
counter (four 32-bit words) and a 64-bit key (two words) to four 32-bit outputs,
with no state carried between calls. The same counter and key give the same
words here and in the CUDA kernels, so a dropout mask is bit-identical on every
device.

The stream convention shared with the kernels (``random_uint32``): the key is the
64-bit seed split as ``(seed & 0xffffffff, seed >> 32)``; element ``i`` of a tensor
(flat, row-major) takes output word ``i % 4`` of the block with counter
``(j & 0xffffffff, j >> 32, 0, 0)`` where ``j = i // 4``. One Philox call serves four
consecutive elements. An element ``offset`` shifts the stream: element ``i`` of a
tensor then takes the word of stream position ``offset + i``, so a tensor that is a
slice ``[offset, offset + n)`` of a larger one (a data-parallel rank's rows of the
batch) gets exactly that slice of the larger tensor's words.

All arithmetic is on uint32 arrays with the 32x32 -> 64 products done in uint64, so
overflow wraps exactly as in C.
"""
from __future__ import annotations

import math

import numpy as np

PHILOX_M0 = 0xD2511F53
PHILOX_M1 = 0xCD9E8D57
PHILOX_W0 = 0x9E3779B9  # key schedule increments (golden ratio, sqrt(3) - 1)
PHILOX_W1 = 0xBB67AE85
ROUNDS = 10

_MASK32 = 0xFFFFFFFF
_U32 = np.uint32
_U64 = np.uint64


def _mulhilo(a: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """High and low 32-bit words of ``a * m`` (``a`` uint32, ``m`` a 32-bit constant)."""
    product = a.astype(_U64) * _U64(m)
    return (product >> _U64(32)).astype(_U32), product.astype(_U32)


def philox4x32(counter, key, rounds: int = ROUNDS) -> tuple[np.ndarray, ...]:
    """Philox4x32-``rounds`` of ``counter`` (four uint32 words, scalars or arrays of one
    shape) under ``key`` (two 32-bit integers); returns four uint32 arrays."""
    if len(counter) != 4 or len(key) != 2:
        raise ValueError("philox4x32 takes a counter of four words and a key of two")
    c0, c1, c2, c3 = np.broadcast_arrays(*(np.asarray(c, dtype=_U32) for c in counter))
    k0, k1 = int(key[0]) & _MASK32, int(key[1]) & _MASK32
    for r in range(rounds):
        if r:  # the key is bumped before every round but the first
            k0 = (k0 + PHILOX_W0) & _MASK32
            k1 = (k1 + PHILOX_W1) & _MASK32
        hi0, lo0 = _mulhilo(c0, PHILOX_M0)
        hi1, lo1 = _mulhilo(c2, PHILOX_M1)
        c0, c1, c2, c3 = hi1 ^ c1 ^ _U32(k0), lo1, hi0 ^ c3 ^ _U32(k1), lo0
    return c0, c1, c2, c3


def check_seed(seed) -> int:
    """``seed`` as a Python int in [0, 2**64); a ValueError/TypeError otherwise."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"a seed is an integer in [0, 2**64), not {type(seed).__name__}")
    seed = int(seed)
    if not 0 <= seed < 2**64:
        raise ValueError(f"a seed is an integer in [0, 2**64), got {seed}")
    return seed


# Stream positions (offset + i) are 64-bit in the kernels: offsets stay below 2**63 so
# that offset + n fits for any array size.
OFFSET_LIMIT = 2**63


def check_offset(offset) -> int:
    """``offset`` (a stream position) as a Python int in [0, 2**63); a clear error otherwise."""
    if isinstance(offset, bool) or not isinstance(offset, (int, np.integer)):
        raise TypeError(f"a dropout offset is an integer in [0, 2**63), not "
                        f"{type(offset).__name__}")
    offset = int(offset)
    if not 0 <= offset < OFFSET_LIMIT:
        raise ValueError(f"a dropout offset is an integer in [0, 2**63), got {offset}")
    return offset


def random_uint32(seed: int, n: int, offset: int = 0) -> np.ndarray:
    """The ``n`` uint32 words at stream positions ``offset .. offset + n - 1`` for ``seed``
    (see the module docstring)."""
    seed, offset, n = check_seed(seed), check_offset(offset), int(n)
    first, skip = divmod(offset, 4)  # the first counter, and its words before `offset`
    groups = -(-(skip + n) // 4)
    j = np.arange(groups, dtype=_U64) + _U64(first)
    words = philox4x32((j.astype(_U32), (j >> _U64(32)).astype(_U32), 0, 0),
                       (seed & _MASK32, seed >> 32))
    return np.stack(words, axis=1).reshape(-1)[skip:skip + n]


def keep_threshold(p: float) -> int:
    """The integer ``t`` with ``keep iff word >= t`` equivalent to ``word / 2**32 >= p``.

    ``p * 2**32`` is exact in double precision, so ``t = ceil(p * 2**32)``: ``p = 0``
    gives 0 (keep all), ``p = 1`` gives ``2**32`` (keep none; passed to kernels as a
    64-bit ``unsigned long long`` for that reason).
    """
    p = float(p)
    if not 0.0 <= p <= 1.0:  # also rejects NaN
        raise ValueError(f"dropout probability must be in [0, 1], got {p}")
    return math.ceil(p * 2.0**32)


def keep_mask(seed: int, n: int, threshold: int, offset: int = 0) -> np.ndarray:
    """Boolean mask of ``n`` elements: element ``i`` is kept iff the word at stream
    position ``offset + i`` is >= ``threshold``."""
    if threshold <= 0:
        return np.ones(n, dtype=bool)
    if threshold >= 2**32:
        return np.zeros(n, dtype=bool)
    return random_uint32(seed, n, offset) >= _U32(threshold)
