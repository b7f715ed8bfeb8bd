"""Learning-rate schedules: ``Plateau``, the paper's "divide the learning rate by 10
when the validation error rate stopped improving" (Krizhevsky et al. 2012, section 5).

A schedule only decides; the caller applies the new rate (``SGD.set_lr``). Its state
(``state()``) is a small dict of numbers, saved in checkpoints and given back to
resume exactly.
"""
from __future__ import annotations

__all__ = ["Plateau"]


class Plateau:
    """The paper's schedule: divide the learning rate by 10 when the validation error
    has not improved for ``patience`` epochs, at most ``drops`` times."""

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
