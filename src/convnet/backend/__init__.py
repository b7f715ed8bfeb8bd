"""Devices: ``cpu`` (NumPy references), ``emu`` (kernels on the CPU runtime),
``cuda:N`` (kernels through CuPy/NVRTC). ``get_device`` parses a name once and
returns the same object every time; ``devices()`` lists what this machine can run.
"""
from __future__ import annotations

import re

from .base import Device, DeviceError, HostDevice
from .cpu import CPUDevice

_CACHE: dict[str, Device] = {}
_CUDA_NAME = re.compile(r"^cuda(?::(\d+))?$")


def get_device(spec) -> Device:
    """The device named by ``spec`` (a name such as ``"emu"``/``"cuda:1"`` or a Device)."""
    if isinstance(spec, Device):
        return spec
    if not isinstance(spec, str):
        raise DeviceError(f"a device is named by a string such as 'cpu', 'emu' or 'cuda:0', "
                          f"not {type(spec).__name__}")
    name = spec.strip().lower()
    match = _CUDA_NAME.match(name)
    if match:
        name = f"cuda:{match.group(1) or 0}"
    if name in _CACHE:
        return _CACHE[name]
    if name == "cpu":
        device = CPUDevice()
    elif name == "emu":
        from .emu import EmuDevice
        device = EmuDevice()
    elif match:
        from .cuda import CUDADevice
        device = CUDADevice(int(match.group(1) or 0))  # raises DeviceError naming what is missing
    else:
        raise DeviceError(f"unknown device {spec!r}: expected 'cpu', 'emu' or 'cuda:N'")
    _CACHE[name] = device
    return device


def devices() -> list[str]:
    """The devices this machine can run, e.g. ``['cpu', 'emu', 'cuda:0']``."""
    found = ["cpu"]
    from . import emu
    if emu.available():
        found.append("emu")
    from . import cuda
    found.extend(f"cuda:{i}" for i in range(cuda.device_count()))
    return found


__all__ = ["Device", "DeviceError", "HostDevice", "get_device", "devices"]
