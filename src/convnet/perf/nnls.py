"""Non-negative least squares: min ||A x - b|| subject to x >= 0.

The Lawson–Hanson active-set method (Lawson & Hanson, *Solving Least Squares
Problems*, 1974, ch. 23): move the variable with the largest gradient into the passive
(free) set, solve the unconstrained least squares on that set, and step back along the
segment whenever a free variable would turn negative. ``convnet.perf.dynamic`` solves
loop trip counts with it (a few loops, a few source lines: tiny systems).
"""
from __future__ import annotations

import numpy as np


def nnls(a: np.ndarray, b: np.ndarray, max_iterations: int | None = None) -> np.ndarray:
    """The x >= 0 that minimises ||a @ x - b|| (a: m x n, b: m)."""
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    m, n = a.shape
    x = np.zeros(n)
    free = np.zeros(n, dtype=bool)
    tolerance = 10 * max(m, n) * np.finfo(float).eps * max(1.0, np.abs(a).sum(axis=0).max())
    limit = max_iterations if max_iterations is not None else 3 * n + 10
    gradient = a.T @ (b - a @ x)
    iterations = 0
    while (~free).any() and np.max(np.where(free, -np.inf, gradient)) > tolerance:
        free[int(np.argmax(np.where(free, -np.inf, gradient)))] = True
        while True:
            iterations += 1
            trial = np.zeros(n)
            trial[free] = np.linalg.lstsq(a[:, free], b, rcond=None)[0]
            if trial[free].min() > 0 or iterations > limit:
                break
            # step from x towards trial until the first free variable reaches zero
            leaving = free & (trial <= 0)
            step = np.min(x[leaving] / (x[leaving] - trial[leaving]))
            x = x + step * (trial - x)
            free &= x > tolerance
            x[~free] = 0.0
        x = np.where(free, trial, 0.0)
        gradient = a.T @ (b - a @ x)
        if iterations > limit:
            break
    return x
