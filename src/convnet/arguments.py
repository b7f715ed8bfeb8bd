"""Checks of user-given arguments, one set for the whole library.

Each check returns the value in its plain Python type, or raises with a message that
names the argument and what was given. ``what`` is the name as the user knows it,
prefixed by the op where that helps (``"conv2d: stride"``, ``"--epochs"``). By default
a wrong type is a ``TypeError`` and a wrong value a ``ValueError``; ``error=`` raises
one given class for both (the data and driver layers have their own error types).
"""
from __future__ import annotations

import math
import numbers

import numpy as np


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _raise(error, default, message):
    raise (error or default)(message)


def _range_text(low, high, high_open=False) -> str:
    if high is None or high == math.inf:
        return f">= {low}"
    if low is None or low == -math.inf:
        return f"<= {high}" if not high_open else f"< {high}"
    return f"in [{low}, {high}{')' if high_open else ']'}"


def integer(value, what: str, *, low: int | None = None, high: int | None = None,
            error: type[Exception] | None = None) -> int:
    """``value`` as an int within [low, high] (None: unbounded). Booleans are refused."""
    if not _is_int(value):
        _raise(error, TypeError, f"{what} must be an integer, got {value!r}")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        _raise(error, ValueError, f"{what} must be an integer {_range_text(low, high)}, "
                                  f"got {value}")
    return value


def positive_int(value, what: str, *, error: type[Exception] | None = None) -> int:
    """``value`` as an int >= 1."""
    return integer(value, what, low=1, error=error)


def real(value, what: str, *, low: float = -math.inf, high: float = math.inf,
         high_open: bool = False, error: type[Exception] | None = None) -> float:
    """``value`` as a finite float within [low, high] (or [low, high) with ``high_open``)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        _raise(error, TypeError, f"{what} must be a real number, not {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        _raise(error, ValueError, f"{what} must be finite, got {value}")
    if value < low or value > high or (high_open and value == high):
        _raise(error, ValueError, f"{what} must be {_range_text(low, high, high_open)}, "
                                  f"got {value}")
    return value


def pair(value, what: str, *, low: int = 1,
         error: type[Exception] | None = None) -> tuple[int, int]:
    """An int or an (h, w) pair of ints, each >= ``low``, as a tuple of two ints."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            _raise(error, ValueError, f"{what} must be an int or a pair (h, w), got {value!r}")
        items = tuple(value)
    else:
        items = (value, value)
    out = []
    for v in items:
        if not _is_int(v):
            _raise(error, TypeError, f"{what} must be an int or a pair of ints, got {value!r}")
        if int(v) < low:
            bound = "positive" if low == 1 else "non-negative" if low == 0 else f">= {low}"
            _raise(error, ValueError, f"{what} must be {bound}, got {value!r}")
        out.append(int(v))
    return out[0], out[1]
