"""Optimizers and learning-rate schedules: ``SGD`` (the paper's update rule, one fused
kernel per parameter) and ``Plateau`` (divide by 10 when the validation error stops
improving)."""
from .schedule import Plateau
from .sgd import SGD

__all__ = ["Plateau", "SGD"]
