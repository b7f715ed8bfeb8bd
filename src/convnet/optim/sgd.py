"""Optimizers: ``SGD``, the rule of Krizhevsky, Sutskever & Hinton (2012), section 5.

For every parameter w with gradient g = ∂L/∂w, velocity v (zero at the start) and
learning rate ε (the global rate times the parameter's multiplier):

    v ← momentum·v − weight_decay·ε·w − ε·g
    w ← w + v

with the paper's momentum 0.9, weight decay 0.0005 and ε = 0.01, divided by 10 by
hand when the validation error stops improving (``set_lr``). The parameters of each
device are updated together by one launch of a fused kernel on ``emu``/``cuda``
(``kernels/sgd.cu``'s ``sgd_momentum_multi``: every tensor in one launch, bit-identical
to one launch each), so a model split over two devices is updated where it lies, one
launch per device.
"""
from __future__ import annotations

import fnmatch
from collections import OrderedDict

import numpy as np

from .. import arguments
from ..ops import sgd as _sgd_ops
from ..state_dict import differences
from ..tensor import Tensor

__all__ = ["SGD"]


def _non_negative(value, what: str) -> float:
    """A finite number >= 0 (a rate, a decay, a multiplier)."""
    return arguments.real(value, f"SGD: {what}", low=0)


def _momentum(value) -> float:
    return arguments.real(value, "SGD: momentum", low=0, high=1, high_open=True)


def _named(params) -> list[tuple[str, Tensor]]:
    """Parameters as (name, tensor) pairs from a Module (``named_parameters``), a mapping,
    a sequence of pairs, or a sequence of tensors (named "0", "1", ...)."""
    if hasattr(params, "named_parameters"):
        pairs = list(params.named_parameters())
    elif isinstance(params, dict):
        pairs = list(params.items())
    elif isinstance(params, Tensor):
        raise TypeError("SGD: params must be an iterable of tensors (or a Module), not one Tensor")
    else:
        items = list(params)
        if items and all(isinstance(p, tuple) and len(p) == 2 for p in items):
            pairs = [(str(n), p) for n, p in items]
        else:
            pairs = [(str(i), p) for i, p in enumerate(items)]
    if not pairs:
        raise ValueError("SGD: got no parameters to optimize")
    seen_names, seen_ids = set(), {}
    for name, p in pairs:
        if not isinstance(p, Tensor):
            raise TypeError(f"SGD: parameter {name!r} is a {type(p).__name__}, not a Tensor")
        if not p.is_leaf or not p.requires_grad:
            raise ValueError(f"SGD: parameter {name!r} must be a leaf tensor that requires grad")
        if name in seen_names:
            raise ValueError(f"SGD: two parameters are named {name!r}")
        if id(p) in seen_ids:
            raise ValueError(f"SGD: the same tensor is given twice ({seen_ids[id(p)]!r} and "
                             f"{name!r})")
        seen_names.add(name)
        seen_ids[id(p)] = name
    return pairs


def _multipliers(spec, names: list[str], what: str) -> dict[str, float]:
    """Per-parameter multipliers from a mapping of names or fnmatch patterns
    ("*.bias") to numbers; every key must match a parameter and no parameter two keys."""
    out = {name: 1.0 for name in names}
    if spec is None:
        return out
    if not isinstance(spec, dict):
        raise TypeError(f"SGD: {what} must be a dict of parameter names (or patterns such as "
                        f"'*.bias') to numbers, not {type(spec).__name__}")
    matched_by: dict[str, str] = {}
    for key, value in spec.items():
        factor = _non_negative(value, f"{what}[{key!r}]")
        hits = [n for n in names if n == key or fnmatch.fnmatchcase(n, str(key))]
        if not hits:
            raise ValueError(f"SGD: {what} key {key!r} matches no parameter "
                             f"(parameters: {', '.join(names)})")
        for n in hits:
            if n in matched_by:
                raise ValueError(f"SGD: parameter {n!r} is matched by two {what} keys, "
                                 f"{matched_by[n]!r} and {key!r}")
            matched_by[n] = key
            out[n] = factor
    return out


class SGD:
    """Stochastic gradient descent with momentum and weight decay, the paper's rule.

    ``params``: a Module, a dict name → tensor, (name, tensor) pairs, or tensors.
    ``lr_multipliers`` / ``weight_decay_multipliers``: dicts from parameter names or
    fnmatch patterns (``{"*.bias": 2.0}``) to factors of ``lr`` / ``weight_decay``
    (default 1 for every parameter: the paper decays every weight, biases included).
    Parameters without a gradient (``grad is None``) are left alone by ``step()``.
    """

    def __init__(self, params, lr: float = 0.01, momentum: float = 0.9,
                 weight_decay: float = 0.0005, lr_multipliers=None, weight_decay_multipliers=None):
        self.params: "OrderedDict[str, Tensor]" = OrderedDict(_named(params))
        names = list(self.params)
        self.lr = _non_negative(lr, "lr")
        self.momentum = _momentum(momentum)
        self.weight_decay = _non_negative(weight_decay, "weight_decay")
        self.lr_multipliers = _multipliers(lr_multipliers, names, "lr_multipliers")
        self.weight_decay_multipliers = _multipliers(weight_decay_multipliers, names,
                                                     "weight_decay_multipliers")
        self.velocity = OrderedDict((n, p.device.xp.zeros(p.shape, dtype=p.dtype))
                                    for n, p in self.params.items())
        self.steps = 0

    def set_lr(self, lr: float) -> None:
        """A new global learning rate (the paper divides it by 10 on a plateau)."""
        self.lr = _non_negative(lr, "lr")

    def zero_grad(self) -> None:
        for p in self.params.values():
            p.grad = None

    def step(self) -> None:
        """One update of every parameter that has a gradient. All gradients are checked
        (device, shape) before any parameter changes."""
        work = []
        for name, p in self.params.items():
            g = p.grad
            if g is None:
                continue
            if g.device != p.device:
                raise ValueError(f"SGD: the gradient of {name!r} is on {g.device.name!r}, the "
                                 f"parameter on {p.device.name!r}")
            if g.shape != p.shape:
                raise ValueError(f"SGD: the gradient of {name!r} has shape {g.shape}, the "
                                 f"parameter {p.shape}")
            work.append((name, p, g))
        by_device: "OrderedDict[object, list]" = OrderedDict()
        for name, p, g in work:
            by_device.setdefault(p.device, []).append((name, p, g))
        for device, items in by_device.items():
            _sgd_ops.update_many(device, [p.data for _, p, _ in items],
                                 [self.velocity[name] for name, _, _ in items],
                                 [g.data for _, _, g in items],
                                 [self.lr * self.lr_multipliers[name] for name, _, _ in items],
                                 self.momentum,
                                 [self.weight_decay * self.weight_decay_multipliers[name]
                                  for name, _, _ in items])
        self.steps += 1

    # ---------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        """Hyperparameters, multipliers, the step count and every velocity (NumPy copies)."""
        return {
            "lr": self.lr,
            "momentum": self.momentum,
            "weight_decay": self.weight_decay,
            "lr_multipliers": dict(self.lr_multipliers),
            "weight_decay_multipliers": dict(self.weight_decay_multipliers),
            "steps": self.steps,
            "velocity": OrderedDict((n, np.array(self.params[n].device.to_numpy(v), copy=True))
                                    for n, v in self.velocity.items()),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict()``'s output; every velocity name and shape must match
        this optimizer's parameters (the error lists all that differ), else nothing changes."""
        if not isinstance(state, dict):
            raise TypeError(f"SGD.load_state_dict: expected a dict, not {type(state).__name__}")
        keys = ("lr", "momentum", "weight_decay", "velocity")
        missing = [k for k in keys if k not in state]
        if missing:
            raise KeyError(f"SGD.load_state_dict: the state lacks {', '.join(missing)}")
        velocity = state["velocity"]
        if not isinstance(velocity, dict):
            raise TypeError(f"SGD.load_state_dict: velocity must be a dict of arrays, "
                            f"not {type(velocity).__name__}")
        problems = differences(velocity, {n: p.shape for n, p in self.params.items()})
        if problems:
            raise ValueError("SGD.load_state_dict: the velocities do not match the parameters: "
                             + "; ".join(problems))
        names = list(self.params)
        lr = _non_negative(state["lr"], "lr")
        momentum = _momentum(state["momentum"])
        weight_decay = _non_negative(state["weight_decay"], "weight_decay")
        lr_mult = _full_multipliers(state.get("lr_multipliers"), names, "lr_multipliers")
        wd_mult = _full_multipliers(state.get("weight_decay_multipliers"), names,
                                    "weight_decay_multipliers")
        for n, v in self.velocity.items():
            v[...] = self.params[n].device.asarray(np.asarray(velocity[n]), dtype=v.dtype)
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.lr_multipliers, self.weight_decay_multipliers = lr_mult, wd_mult
        self.steps = int(state.get("steps", 0))


def _full_multipliers(spec, names, what):
    if spec is None:
        return {n: 1.0 for n in names}
    unknown = sorted(set(spec) - set(names))
    if unknown:
        raise ValueError(f"SGD.load_state_dict: {what} names unknown parameters: "
                         f"{', '.join(unknown)}")
    out = {n: 1.0 for n in names}
    out.update({n: _non_negative(v, f"{what}[{n!r}]") for n, v in spec.items()})
    return out


