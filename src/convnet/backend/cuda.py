"""The ``cuda:N`` device: CuPy arrays, kernels compiled by NVRTC through CuPy.

Importing this module never needs CuPy, a driver or a GPU; CuPy is imported
when first asked for. ``device_count()`` answers 0 whenever CUDA is unavailable;
``CUDADevice(i)`` raises ``DeviceError`` saying exactly what is missing.

First GPU contact (issue 10, item 8):

* **Lazy, per instantiation.** A ``Launch`` of ``name`` compiles only that kernel:
  ``cupy.RawModule(code=expand(source, portable=True) + a line naming the
  instantiation, options=NVRTC_OPTIONS, name_expressions=[name])``, the first time
  it is launched (once per process; each GPU gets its own function). A conv module
  lists every tile for every device kind; a GPU step compiles the few it picks.
* **A persistent cache that survives a moved checkout.** CuPy keeps compiled
  modules on disk keyed on the source text and options; the text handed to it has
  ``#line`` names relative to the kernel folder's parent (``kernels/conv_forward.cu``),
  so the same kernels compiled from another checkout hit that cache.
* **Feature-set modules** (``KernelModule.feature_arch``, ``sm_90a`` for ``wgmma.*``)
  run only on a GPU of their base architecture (``DeviceError`` on another). CuPy
  appends its own ``-arch`` for the GPU to the options of ``RawModule(code=...)``
  (``cupy/cuda/compiler.py``), so an ``sm_90a`` option cannot be passed reliably:
  ``toolchain.nvrtc`` builds the CUBIN for ``sm_90a`` itself (the same text and
  ``NVRTC_OPTIONS``), it is kept on disk under ``convnet.cache.cache_dir() / "cubin"``
  (keyed on the text, options, instantiation and NVRTC version, with the mangled
  name NVRTC lowered the name expression to) and loaded with
  ``cupy.RawModule(path=...)``, whose ``get_function`` takes that mangled name.
* **Launch resources.** Before the first launch of a kernel with a given block the
  loaded function's own figures (``num_regs``, ``shared_size_bytes``,
  ``max_threads_per_block``) go through ``toolchain.resources.check_launch`` for this GPU's
  architecture, the check ``emu`` runs with NVRTC's figures. A block needing more
  than 48 KiB of shared memory in total (static + dynamic) gets the opt-in: the
  function's ``max_dynamic_shared_size_bytes`` (cudaFuncAttributeMaxDynamicSharedMemorySize,
  which bounds the dynamic part) raised to the launch's dynamic bytes.
* **Cross-device copies** (two columns on two GPUs) go peer-to-peer where
  ``cudaDeviceCanAccessPeer`` allows, else through pinned host memory
  (``crossing.path``), on each GPU's copy stream, ordered by events after the source
  GPU's queued work and before the destination's later work (``crossing.steps``, run
  by ``cuda_copy``); the source stays alive until the copy has read it, so the source
  stream never waits. No host synchronisation.
* **Allocations on the tensor's own GPU.** ``device.xp`` is CuPy bound to this GPU:
  every CuPy function called through it (``empty``, ``zeros``, ``asarray``...) runs with
  this device current, so a direct ``ops.*`` call on ``cuda:1`` allocates there even
  when CuPy's current device is another.
"""
from __future__ import annotations

import json
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from ..cache import cache_dir, write_atomic
from ..toolchain import nvrtc
from ..toolchain.kernel_source import digest, expand
from ..toolchain.nvrtc import NVRTC_OPTIONS
from ..toolchain.resources import DEFAULT_SHARED_BYTES, check_launch
from . import crossing, cuda_copy
from .base import Device, DeviceError

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
_RAW_MODULES: dict[object, object] = {}  # digest(text, options, name) -> cupy.RawModule;
# ("\0cubin", module, name, arch) -> (RawModule of a feature-set CUBIN, mangled name)
_MODULE_TEXT: dict[object, str] = {}     # KernelModule -> its portable expanded text


def instantiation_source(module, name: str) -> str:
    """The text compiled for one instantiation: the module's portable expanded source
    and a closing comment naming the instantiation, so the texts of two instantiations
    differ (CuPy's disk cache is keyed on the text) while the code is the same."""
    text = _MODULE_TEXT.get(module)
    if text is None:
        text = _MODULE_TEXT[module] = expand(module.source, portable=True)
    return f"{text}\n// convnet: instantiation {name}\n"


def _raw_module(cupy, module, name: str):
    """The (process-wide) RawModule holding the one instantiation ``name`` of a
    KernelModule, compiled the first time it is asked for."""
    with _LOCK:
        text = instantiation_source(module, name)
        key = digest(text, *NVRTC_OPTIONS, "\0kernel", name)
        raw = _RAW_MODULES.get(key)
        if raw is None:
            raw = _RAW_MODULES[key] = cupy.RawModule(code=text, options=NVRTC_OPTIONS,
                                                     name_expressions=[name])
        return raw


def _feature_cubin(module, name: str, arch: str) -> tuple[str, str]:
    """The CUBIN file of the one instantiation ``name`` of a feature-set module built by
    our NVRTC for ``arch`` (its ``feature_arch``) and the mangled name of the kernel in
    it; built the first time, then read from the disk cache."""
    text = instantiation_source(module, name)
    options = [*NVRTC_OPTIONS, f"--gpu-architecture={arch}"]
    key = digest(text, *options, "\0kernel", name, ".".join(map(str, nvrtc.version())))
    stem = f"{Path(str(module.source)).stem}-{arch}-{key[:24]}"
    cubin = cache_dir() / "cubin" / f"{stem}.cubin"
    names = cubin.with_suffix(".json")  # {name expression: mangled name}
    try:
        mangled = json.loads(names.read_text())[name]
        if cubin.is_file():
            return str(cubin), mangled
    except (OSError, ValueError, KeyError):
        pass
    build = nvrtc._compile(text, str(module.source), (name,), options)
    write_atomic(cubin, build.cubin)
    write_atomic(names, json.dumps(build.lowered))
    return str(cubin), build.lowered[name]


def _feature_module(cupy, module, name: str, arch: str):
    """``(RawModule, mangled name)`` of the one instantiation ``name`` of a feature-set
    module, loaded from the CUBIN ``_feature_cubin`` builds for ``arch`` (once per process)."""
    with _LOCK:
        key = ("\0cubin", module, name, arch)
        found = _RAW_MODULES.get(key)
        if found is None:
            path, mangled = _feature_cubin(module, name, arch)
            found = _RAW_MODULES[key] = (cupy.RawModule(path=path), mangled)
        return found


class _BoundCupy:
    """CuPy with one GPU current: its functions run inside ``cupy.cuda.Device(index)``;
    classes (``ndarray``), submodules and constants pass through unchanged."""

    def __init__(self, cupy, index: int):
        self._cupy = cupy
        self._index = index

    def __getattr__(self, attr):
        value = getattr(self._cupy, attr)
        if not callable(value) or isinstance(value, type):
            return value
        device, index = self._cupy.cuda.Device, self._index

        def on_device(*args, **kwargs):
            with device(index):
                return value(*args, **kwargs)

        on_device.__name__ = getattr(value, "__name__", attr)
        return on_device


def _arch_of(props) -> str:
    return f"sm_{int(props['major'])}{int(props['minor'])}"


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
        self.cupy = cupy
        self.xp = _BoundCupy(cupy, index)  # allocations land on this GPU, see the docstring
        self._functions: dict[tuple, object] = {}
        self._checked: dict[tuple, bool] = {}  # (module, name, threads, shared) -> needs opt-in
        self._sm_count = None
        self._arch = None

    @property
    def parallel_units(self) -> int:
        """Streaming multiprocessors of this GPU (132 on an H100 SXM), read once."""
        if self._sm_count is None:
            props = self.cupy.cuda.runtime.getDeviceProperties(self.index)
            self._sm_count = int(props["multiProcessorCount"])
        return self._sm_count

    @property
    def arch(self) -> str:
        """This GPU's architecture, ``"sm_90"`` for compute capability 9.0, read once."""
        if self._arch is None:
            self._arch = _arch_of(self.cupy.cuda.runtime.getDeviceProperties(self.index))
        return self._arch

    # ---------------------------------------------------------------- arrays
    def _device(self):
        return self.cupy.cuda.Device(self.index)

    def asarray(self, array, dtype=None):
        cp = self.cupy
        with self._device():
            if isinstance(array, cp.ndarray) and array.device.id != self.index:
                array = self._copy_from_peer(array)
            return cp.ascontiguousarray(cp.asarray(array, dtype=dtype))

    def can_access_peer(self, source) -> bool:
        """Whether this GPU may read ``source``'s memory (another ``CUDADevice``); when
        it may, peer access is enabled (once per pair)."""
        return cuda_copy.can_access_peer(self.cupy, source.index, self.index)

    def _copy_from_peer(self, array):
        """A copy on this GPU of ``array`` from another GPU: peer-to-peer or staged through
        pinned host memory (``crossing.path``), on copy streams ordered by events after
        the source GPU's queued work and before this GPU's later work (``cuda_copy``)."""
        source = array.device.id
        path = crossing.path(SimpleNamespace(kind="cuda", name=f"cuda:{source}"), self,
                             lambda src, dst: cuda_copy.can_access_peer(self.cupy, source,
                                                                        self.index))
        return cuda_copy.copy(self.cupy, array, self.index, path)

    def to_numpy(self, array) -> np.ndarray:
        if isinstance(array, self.cupy.ndarray):
            return self.cupy.asnumpy(array)
        return np.asarray(array)

    def owns(self, array) -> bool:
        return isinstance(array, self.cupy.ndarray) and array.device.id == self.index

    def synchronize(self) -> None:
        self._device().synchronize()

    def activate(self):
        return self._device()

    # ---------------------------------------------------------------- kernels
    def _check_args(self, launch) -> None:
        cp = self.cupy
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
            module = launch.module
            if module.feature_arch is None:
                raw, name = _raw_module(self.cupy, module, launch.name), launch.name
            else:
                arch = module.build_arch(self.arch)
                if arch is None:
                    raise DeviceError(
                        f"{launch.name} ({module.source}) uses the {module.feature_arch} "
                        f"feature set and runs only on {module.base_arch} GPUs; {self.name} "
                        f"is {self.arch}")
                raw, name = _feature_module(self.cupy, module, launch.name, arch)
            with self._device():
                function = raw.get_function(name)  # compiles (or loads) for this GPU once
            self._functions[key] = function
        return function

    def _resources(self, launch, function) -> bool:
        """``toolchain.resources.check_launch`` with the loaded function's own figures, for this
        GPU's architecture; whether the launch needs the shared-memory opt-in. Checked
        once per kernel, block size and dynamic shared bytes."""
        key = (launch.module, launch.name, launch.threads_per_block, launch.shared_bytes)
        needs = self._checked.get(key)
        if needs is None:
            from ..perf.gpus import ARCHS
            from ..toolchain.resources import KernelResources, LaunchResourceError
            found = KernelResources(
                kernel=launch.name, registers=int(function.num_regs),
                static_shared=int(function.shared_size_bytes),
                max_threads=int(function.max_threads_per_block), origin="driver")
            if self.arch in ARCHS:
                needs = check_launch(launch, self.arch, found).needs_opt_in
            else:  # not in the table (sm_75, sm_100...): the driver's own limits only
                if launch.threads_per_block > found.max_threads:
                    raise LaunchResourceError(
                        f"{launch.name} on {self.name} ({self.arch}): a block of "
                        f"{launch.threads_per_block} threads exceeds the most the driver "
                        f"allows for it, {found.max_threads}")
                needs = found.static_shared + launch.shared_bytes > DEFAULT_SHARED_BYTES
            self._checked[key] = needs
        return needs

    def launch(self, launch) -> None:
        self._check_args(launch)
        function = self._function(launch)
        with self._device():
            if self._resources(launch, function) \
                    and function.max_dynamic_shared_size_bytes < launch.shared_bytes:
                # static + dynamic > 48 KiB: opt in (the attribute bounds the dynamic part)
                function.max_dynamic_shared_size_bytes = launch.shared_bytes
            function(launch.grid, launch.block, launch.args, shared_mem=launch.shared_bytes)
