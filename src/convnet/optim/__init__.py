"""Optimizers and learning-rate schedules: ``SGD`` (the paper's update rule, one fused
kernel per parameter), ``Plateau`` (divide by 10 when the validation error stops
improving) and ``Cosine`` (half a cosine from the starting rate to 0 over a run)."""
from .schedule import Cosine, Plateau, make_schedule
from .sgd import SGD

__all__ = ["Cosine", "Plateau", "SGD", "make_schedule"]
