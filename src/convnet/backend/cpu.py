"""The ``cpu`` device: NumPy arrays, ops run their NumPy reference implementations."""
from __future__ import annotations

from .base import HostDevice


class CPUDevice(HostDevice):
    kind = "cpu"
    name = "cpu"
    runs_kernels = False
