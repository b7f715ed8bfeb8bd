"""What every device offers the rest of the library."""
from __future__ import annotations

import abc
import contextlib

import numpy as np


class DeviceError(RuntimeError):
    """A device that is unknown, unavailable here, or misused."""


class Device(abc.ABC):
    """A place where arrays live and ops run.

    ``kind`` is ``"cpu"``, ``"emu"`` or ``"cuda"``; ``name`` is what users write
    (``"cpu"``, ``"emu"``, ``"cuda:0"``); ``xp`` is the array module (NumPy or CuPy).
    ``runs_kernels`` is False for ``cpu``, whose ops run their NumPy references.
    ``parallel_units`` is how many blocks' worth of work the device runs at once, for
    launch builders sizing their grids: streaming multiprocessors on ``cuda``, worker
    threads on ``emu``, 1 on ``cpu``.
    """

    kind: str = ""
    name: str = ""
    xp = np
    runs_kernels: bool = False

    @abc.abstractmethod
    def asarray(self, array, dtype=None):
        """``array`` (host data or another device's array) as an array of this device."""

    @abc.abstractmethod
    def to_numpy(self, array) -> np.ndarray:
        """``array`` of this device as a NumPy array in host memory."""

    @property
    def parallel_units(self) -> int:
        return 1

    def owns(self, array) -> bool:
        """Whether ``array`` is of the array type this device holds."""
        return isinstance(array, np.ndarray)

    def launch(self, launch) -> None:
        raise DeviceError(f"device {self.name!r} does not run CUDA kernels "
                          f"(its ops run the NumPy references)")

    def synchronize(self) -> None:
        """Wait for queued work (a no-op on host devices)."""

    def activate(self):
        """A context in which new arrays and kernels land on this device (CuPy's current
        GPU on ``cuda``; nothing to do on host devices)."""
        return contextlib.nullcontext()

    def __repr__(self) -> str:
        return f"device(type={self.kind!r}, name={self.name!r})"

    def __str__(self) -> str:
        return self.name

    def __eq__(self, other) -> bool:
        if isinstance(other, str):
            return self.name == other
        return isinstance(other, Device) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)


class HostDevice(Device):
    """A device whose arrays are NumPy arrays in host memory (``cpu``, ``emu``)."""

    def asarray(self, array, dtype=None):
        if hasattr(array, "get") and not isinstance(array, np.ndarray):  # a CuPy array
            array = array.get()
        return np.asarray(array, dtype=dtype, order="C")  # keeps 0-d arrays 0-d

    def to_numpy(self, array) -> np.ndarray:
        return np.asarray(array)
