"""Comparing a name → array mapping (a state dict) with the names, shapes and (where
asked) dtypes it must have."""
from __future__ import annotations

import numpy as np


def _dtype(value) -> np.dtype:
    return np.dtype(value.dtype) if hasattr(value, "dtype") else np.asarray(value).dtype


def differences(given, expected_shapes, *, given_where: str = "given",
                expected_where: str = "expected", expected_dtypes=None, what: str = "",
                missing: str = "missing", unexpected: str = "unexpected") -> list[str]:
    """Every difference, as readable lines: missing names, unexpected names and shape
    mismatches (``"w: shape (5,) given, (2,) expected"``). Empty when they agree.

    ``expected_dtypes`` (name → dtype): also compare the dtype of each array whose
    shape agrees (``"w: dtype float32 given, float64 expected"``). ``what`` starts every
    line (``"parameter"``); ``missing``/``unexpected`` head the lists of names only
    expected and only given (``"missing from the checkpoint"``).
    """
    lead = f"{what} " if what else ""
    problems = []
    absent = [n for n in expected_shapes if n not in given]
    extra = [n for n in given if n not in expected_shapes]
    if absent:
        problems.append(f"{lead}{missing}: {', '.join(map(str, absent))}")
    if extra:
        problems.append(f"{lead}{unexpected}: {', '.join(map(str, extra))}")
    for name, shape in expected_shapes.items():
        if name not in given:
            continue
        got = tuple(np.shape(given[name]))
        if got != tuple(shape):
            problems.append(f"{lead}{name}: shape {got} {given_where}, {tuple(shape)} "
                            f"{expected_where}")
        elif expected_dtypes is not None and name in expected_dtypes:
            have, want = _dtype(given[name]), np.dtype(expected_dtypes[name])
            if have != want:
                problems.append(f"{lead}{name}: dtype {have} {given_where}, {want} "
                                f"{expected_where}")
    return problems
