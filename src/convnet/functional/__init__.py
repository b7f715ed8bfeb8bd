"""User-facing ops as autograd Functions.

Each op is a ``Function`` whose ``forward``/``backward`` call its op family in
``convnet.ops`` (``ops.<family>.forward(device, ...)`` and friends), which runs the
NumPy reference on ``cpu`` and the CUDA kernel on ``emu``/``cuda``; a plain
function with the user's signature validates the arguments and applies it.
One module per op family; this package re-exports them.
"""
from .dropout import dropout
from .relu import relu
from .conv import conv2d
from .linear import linear
from .cross_entropy import cross_entropy
from .shape import cat, flatten
from .metrics import topk_accuracy
from .lrn import local_response_norm, local_response_norm_max_pool2d
from .max_pool import max_pool2d

__all__ = ["cat", "conv2d", "cross_entropy", "dropout", "flatten", "linear",
           "local_response_norm", "local_response_norm_max_pool2d", "max_pool2d", "relu",
           "topk_accuracy"]
