"""Models built from ``convnet.nn`` layers."""
from .alexnet import AlexNet, alexnet, one_to_two_columns, two_to_one_columns

__all__ = ["AlexNet", "alexnet", "one_to_two_columns", "two_to_one_columns"]
