"""Comparing a name → array mapping (a state dict) with the names and shapes it must have."""
from __future__ import annotations

import numpy as np


def differences(given, expected_shapes, *, given_where: str = "given",
                expected_where: str = "expected") -> list[str]:
    """Every difference, as readable lines: missing names, unexpected names and shape
    mismatches (``"w: shape (5,) given, (2,) expected"``). Empty when they agree."""
    problems = []
    missing = [n for n in expected_shapes if n not in given]
    unexpected = [n for n in given if n not in expected_shapes]
    if missing:
        problems.append(f"missing: {', '.join(map(str, missing))}")
    if unexpected:
        problems.append(f"unexpected: {', '.join(map(str, unexpected))}")
    for name, shape in expected_shapes.items():
        if name in given:
            got = tuple(np.shape(given[name]))
            if got != tuple(shape):
                problems.append(f"{name}: shape {got} {given_where}, {tuple(shape)} {expected_where}")
    return problems
