"""Models built from ``convnet.nn`` layers."""
from .alexnet import AlexNet, alexnet, one_to_two_columns, two_to_one_columns
from .presets import PRESETS, build_model

__all__ = ["AlexNet", "PRESETS", "alexnet", "build_model", "one_to_two_columns",
           "two_to_one_columns"]
