"""The ``cuda:N`` device: CuPy arrays, kernels compiled by NVRTC through CuPy.

Importing this module never needs CuPy, a driver or a GPU; CuPy is imported
when first asked for. ``device_count()`` answers 0 whenever CUDA is unusable;
``CUDADevice(i)`` raises ``DeviceError`` saying exactly what is missing.

A ``Launch`` runs as ``cupy.RawModule(code=expand(source), options=NVRTC_OPTIONS,
name_expressions=kernels).get_function(name)(grid, block, args, shared_mem=...)``.
Each KernelModule is expanded and compiled once per process. The text handed to
CuPy is the expanded source, so CuPy's own disk cache (keyed on the text and the
options) can never serve a stale build after a ``.cuh`` edit.
"""
from __future__ import annotations

import threading

import numpy as np

from ..toolchain.kernel_source import digest, expand
from ..toolchain.nvrtc import NVRTC_OPTIONS
from .base import Device, DeviceError

# Dynamic shared memory a block gets without opting in (cudaFuncSetAttribute).
DEFAULT_DYNAMIC_SHARED_BYTES = 48 * 1024

INSTALL_HINT = ('install CuPy for your CUDA driver: pip install -e ".[cuda13]" '
                '(CUDA 13 driver) or pip install -e ".[cuda12]" (CUDA 12 driver)')


def import_cupy():
    """The ``cupy`` module, or DeviceError saying why it cannot be imported."""
    try:
        import cupy
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] == "cupy":
            raise DeviceError(f"CUDA is unavailable: CuPy is not installed; {INSTALL_HINT}") from exc
        raise DeviceError(f"CUDA is unavailable: CuPy failed to import ({exc}); "
                          f"reinstall it: {INSTALL_HINT}") from exc
    except Exception as exc:  # a broken install, missing CUDA libraries, ...
        raise DeviceError(f"CUDA is unavailable: CuPy failed to import "
                          f"({type(exc).__name__}: {exc}); {INSTALL_HINT}") from exc
    return cupy


def _runtime_error_text(exc) -> str:
    return f"{type(exc).__name__}: {exc}"


def probe_device_count(cupy) -> int:
    """The number of GPUs CuPy sees, or DeviceError naming the missing driver/GPU."""
    runtime = cupy.cuda.runtime
    try:
        driver = int(runtime.driverGetVersion())
    except Exception as exc:
        raise DeviceError(f"CUDA is unavailable: CuPy is installed but no NVIDIA driver was found "
                          f"({_runtime_error_text(exc)}); install the NVIDIA driver "
                          f"(nvidia-smi should list your GPU)") from exc
    if driver == 0:
        raise DeviceError("CUDA is unavailable: CuPy is installed but no NVIDIA driver was found; "
                          "install the NVIDIA driver (nvidia-smi should list your GPU)")
    try:
        count = int(runtime.getDeviceCount())
    except Exception as exc:
        raise DeviceError(f"CUDA is unavailable: the NVIDIA driver (CUDA {format_cuda_version(driver)}) "
                          f"reports no usable GPU ({_runtime_error_text(exc)}); check nvidia-smi, "
                          f"CUDA_VISIBLE_DEVICES, and that the driver supports CuPy's CUDA "
                          f"version") from exc
    if count == 0:
        raise DeviceError(f"CUDA is unavailable: the NVIDIA driver (CUDA {format_cuda_version(driver)}) "
                          f"sees no GPU; check nvidia-smi and CUDA_VISIBLE_DEVICES")
    return count


def format_cuda_version(version: int) -> str:
    """12040 -> '12.4' (the encoding of cudaDriverGetVersion/cudaRuntimeGetVersion)."""
    version = int(version)
    return f"{version // 1000}.{version % 1000 // 10}"


def device_count() -> int:
    """The number of usable GPUs: 0 when CuPy, the driver or a GPU is missing. Never raises."""
    try:
        return probe_device_count(import_cupy())
    except Exception:
        return 0


def unavailable_reason() -> str | None:
    """Why ``cuda:0`` cannot be used here, or None when it can."""
    try:
        probe_device_count(import_cupy())
    except DeviceError as exc:
        return str(exc)
    except Exception as exc:  # never expected; report rather than raise
        return f"CUDA is unavailable: {type(exc).__name__}: {exc}"
    return None


# --------------------------------------------------------------------------- compiled modules

_LOCK = threading.Lock()
_RAW_MODULES: dict[str, object] = {}     # digest(text, options, kernels) -> cupy.RawModule
_MODULE_KEYS: dict[object, str] = {}     # KernelModule -> that digest (expanded once per process)


def _raw_module(cupy, module):
    """The (process-wide) RawModule of a KernelModule; expanded and built once."""
    key = _MODULE_KEYS.get(module)
    if key is not None:
        return _RAW_MODULES[key]
    with _LOCK:
        key = _MODULE_KEYS.get(module)
        if key is None:
            text = expand(module.source)
            key = digest(text, *NVRTC_OPTIONS, "\0kernels", *module.kernels)
            if key not in _RAW_MODULES:
                _RAW_MODULES[key] = cupy.RawModule(code=text, options=NVRTC_OPTIONS,
                                                   name_expressions=list(module.kernels))
            _MODULE_KEYS[module] = key
        return _RAW_MODULES[key]


class CUDADevice(Device):
    """GPU ``index``: CuPy arrays; ``launch`` runs kernels compiled by NVRTC."""

    kind = "cuda"
    runs_kernels = True

    def __init__(self, index: int = 0):
        cupy = import_cupy()
        count = probe_device_count(cupy)
        index = int(index)
        if not 0 <= index < count:
            raise DeviceError(f"cuda:{index} does not exist: this machine has {count} GPU"
                              f"{'s' if count != 1 else ''} (cuda:0 to cuda:{count - 1})")
        self.index = index
        self.name = f"cuda:{index}"
        self.xp = cupy
        self._functions: dict[tuple, object] = {}
        self._sm_count = None

    @property
    def parallel_units(self) -> int:
        """Streaming multiprocessors of this GPU (132 on an H100 SXM), read once."""
        if self._sm_count is None:
            props = self.xp.cuda.runtime.getDeviceProperties(self.index)
            self._sm_count = int(props["multiProcessorCount"])
        return self._sm_count

    # ---------------------------------------------------------------- arrays
    def _device(self):
        return self.xp.cuda.Device(self.index)

    def asarray(self, array, dtype=None):
        cp = self.xp
        with self._device():
            if isinstance(array, cp.ndarray) and array.device.id != self.index:
                array = array.copy()  # CuPy copies onto the current device
            return cp.ascontiguousarray(cp.asarray(array, dtype=dtype))

    def to_numpy(self, array) -> np.ndarray:
        if isinstance(array, self.xp.ndarray):
            return self.xp.asnumpy(array)
        return np.asarray(array)

    def owns(self, array) -> bool:
        return isinstance(array, self.xp.ndarray) and array.device.id == self.index

    def synchronize(self) -> None:
        self._device().synchronize()

    def activate(self):
        return self._device()

    # ---------------------------------------------------------------- kernels
    def _check_args(self, launch) -> None:
        cp = self.xp
        for i, arg in enumerate(launch.args):
            if isinstance(arg, np.generic):
                continue  # a scalar passed by value
            where = f"{launch.name} (from {launch.module.source}): argument {i}"
            if not isinstance(arg, cp.ndarray):
                raise DeviceError(f"{where} is a {type(arg).__module__}.{type(arg).__name__}, "
                                  f"not a CuPy array on {self.name}; move it with "
                                  f"device.asarray(...)")
            if arg.device.id != self.index:
                raise DeviceError(f"{where} lives on cuda:{arg.device.id}, but the kernel runs "
                                  f"on {self.name}")
            if not arg.flags.c_contiguous:
                raise DeviceError(f"{where} is not C-contiguous (strides {arg.strides}); "
                                  f"kernels index raw memory, pass a contiguous copy")

    def _function(self, launch):
        key = (launch.module, launch.name)
        function = self._functions.get(key)
        if function is None:
            raw = _raw_module(self.xp, launch.module)
            with self._device():
                function = raw.get_function(launch.name)  # compiles for this GPU once
            self._functions[key] = function
        return function

    def launch(self, launch) -> None:
        self._check_args(launch)
        function = self._function(launch)
        with self._device():
            if launch.shared_bytes > DEFAULT_DYNAMIC_SHARED_BYTES \
                    and function.max_dynamic_shared_size_bytes < launch.shared_bytes:
                function.max_dynamic_shared_size_bytes = launch.shared_bytes
            function(launch.grid, launch.block, launch.args, shared_mem=launch.shared_bytes)
