"""Central finite differences for the gradient checks of layers, losses and networks
(float64 on cpu). ``check_grads(f, leaves)`` compares the gradients backward() puts
into each leaf's ``.grad`` with ``(f(w + eps) - f(w - eps)) / 2eps`` per element."""
from __future__ import annotations

import numpy as np


def numeric_grad(f, leaf, eps=1e-6, indices=None):
    """d f() / d leaf at each flat index in ``indices`` (default: all), as a flat array."""
    flat = leaf.data.reshape(-1)
    indices = range(flat.size) if indices is None else indices
    out = np.zeros(len(indices))
    for j, i in enumerate(indices):
        old = flat[i]
        flat[i] = old + eps
        hi = f().item()
        flat[i] = old - eps
        lo = f().item()
        flat[i] = old
        out[j] = (hi - lo) / (2 * eps)
    return out


def check_grads(f, leaves, rtol=1e-5, atol=1e-7, eps=1e-6, max_checks=None, seed=0):
    """Assert analytic == numeric gradients of the scalar ``f()`` for every leaf.

    ``max_checks`` limits each leaf to that many randomly chosen elements (for big leaves).
    """
    for leaf in leaves:
        assert leaf.dtype == np.float64, "finite differences need float64"
        leaf.grad = None
    f().backward()
    rng = np.random.default_rng(seed)
    for k, leaf in enumerate(leaves):
        assert leaf.grad is not None, f"leaf {k} got no gradient"
        analytic = leaf.grad.numpy().reshape(-1)
        indices = np.arange(leaf.size)
        if max_checks is not None and leaf.size > max_checks:
            indices = np.sort(rng.choice(leaf.size, max_checks, replace=False))
        numeric = numeric_grad(f, leaf, eps, indices)
        np.testing.assert_allclose(analytic[indices], numeric, rtol=rtol, atol=atol,
                                   err_msg=f"leaf {k} of shape {leaf.shape}")


def weighted_sum(t, seed=1):
    """A scalar that depends on every element of ``t`` differently: sum(t * r), r fixed."""
    import convnet
    r = np.random.default_rng(seed).standard_normal(t.shape)
    return (t * convnet.tensor(r, device=t.device, dtype=t.dtype)).sum()
