"""convnet: AlexNet rebuilt from hand-written CUDA kernels.

Devices: ``cpu`` (NumPy references), ``emu`` (the CUDA kernels on a CPU runtime),
``cuda:N`` (the same kernels on a GPU through CuPy/NVRTC).
"""
from .backend import Device, DeviceError, devices, get_device
from .precision import PRECISIONS, get_precision, set_precision
from .tensor import Function, Tensor, no_grad, record_transfers, tensor
from . import functional, models, nn, optim
from .step import train_step

__version__ = "0.1.0"

__all__ = ["Device", "DeviceError", "Function", "PRECISIONS", "Tensor", "devices", "functional",
           "get_device", "get_precision", "models", "nn", "no_grad", "optim", "record_transfers",
           "set_precision", "tensor", "train_step"]
