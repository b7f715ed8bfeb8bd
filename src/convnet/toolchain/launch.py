"""The launch description: everything one kernel call needs, for any executor.

An op builds a ``Launch`` from its shapes; the ``emu`` executor (the CPU runtime)
and the ``cuda`` executor (CuPy/NVRTC) both consume it, so the two cannot drift.

A ``KernelModule`` is one ``kernels/*.cu`` file together with the kernels it
exports: plain ``extern "C"`` names, or template instantiations written as C++
name expressions (``"lrn_forward<true>"``). That list is the one place where
template instantiations are made, for NVRTC and g++ alike.

A module that uses instructions of an architecture-specific feature set (Hopper's
warpgroup MMA, ``wgmma.*``, exists only in ``sm_90a``) names it as its
``feature_arch``: it is built only for that architecture's GPUs (``sm_90``),
compiled there as ``sm_90a``, and every consumer asks ``build_arch`` which build
an architecture gets (the compile report, the launch-resource check, the
performance model, the ``cuda`` executor). The ``emu`` executor's g++ build
ignores it (the kernel's ``#if defined(__CUDA_ARCH__)`` fallback runs there).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

MAX_THREADS_PER_BLOCK = 1024
MAX_BLOCK_DIM = (1024, 1024, 64)
MAX_GRID_DIM = (2**31 - 1, 65535, 65535)
# The most shared memory any architecture lets a block opt into (sm_90: 227 KiB); the
# per-architecture limits (163 KiB on sm_80, 99 KiB on sm_86/89) and the 48 KiB
# default are checked by ``toolchain.resources.check_launch`` (both executors call it).
MAX_DYNAMIC_SHARED_BYTES = 227 * 1024

# Scalar argument types a kernel may take by value, as NumPy scalar types.
SCALAR_TYPES = (np.int32, np.uint32, np.int64, np.uint64, np.float32, np.float64)


_FEATURE_ARCH = re.compile(r"sm_(\d{2,3})a")


class LaunchError(ValueError):
    """A launch description that no executor could run."""


class ArchitectureError(LaunchError):
    """A kernel module asked for an architecture it is not built for."""


@dataclass(frozen=True)
class KernelModule:
    """One kernel source file and the kernels (name expressions) it exports.

    ``feature_arch`` (``"sm_90a"``, or None for a portable module): the module uses
    instructions of that architecture-specific feature set, so it is built only for
    its base architecture (``base_arch``, ``"sm_90"``), as ``feature_arch``.
    """

    source: str
    kernels: tuple[str, ...]
    feature_arch: str | None = None

    def __post_init__(self):
        if not self.kernels:
            raise LaunchError(f"{self.source}: a kernel module must export at least one kernel")
        if len(set(self.kernels)) != len(self.kernels):
            raise LaunchError(f"{self.source}: kernel names listed twice: {self.kernels}")
        if self.feature_arch is not None and not (
                isinstance(self.feature_arch, str) and _FEATURE_ARCH.fullmatch(self.feature_arch)):
            raise LaunchError(f"{self.source}: feature_arch must name an architecture-specific "
                              f"feature set such as 'sm_90a' (sm_NNa), got {self.feature_arch!r}")

    @property
    def base_arch(self) -> str | None:
        """The architecture whose GPUs run a feature-set module (``"sm_90"`` for
        ``"sm_90a"``); None for a portable module."""
        return None if self.feature_arch is None else self.feature_arch[:-1]

    def build_arch(self, arch: str) -> str | None:
        """The architecture this module is compiled for when ``arch`` (a normalized name,
        ``"sm_90"``) is asked: ``arch`` itself for a portable module; for a feature-set
        module its ``feature_arch`` when ``arch`` is its base or the feature arch itself,
        and None (not built: no GPU of ``arch`` can run it) otherwise."""
        if self.feature_arch is None:
            return arch
        return self.feature_arch if arch in (self.base_arch, self.feature_arch) else None

    def require_arch(self, arch: str) -> str:
        """``build_arch(arch)``, or ArchitectureError naming the module and the
        architecture it needs when it is not built for ``arch``."""
        built = self.build_arch(arch)
        if built is None:
            raise ArchitectureError(
                f"{self.source} uses the {self.feature_arch} feature set and is built only for "
                f"{self.feature_arch}: it runs on {self.base_arch} GPUs, not on {arch}")
        return built


def name_expression(name: str, template_args: tuple = ()) -> str:
    """``"max_pool_backward"`` + ``("int",)`` -> ``"max_pool_backward<int>"``; no template
    arguments -> the name."""
    if not template_args:
        return name
    return f"{name}<{', '.join(_template_arg(a) for a in template_args)}>"


def _template_arg(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, str):
        return value  # a type name such as "float"
    raise LaunchError(f"unsupported template argument {value!r} (use int, bool or a type name)")


def _dim3(value, what: str) -> tuple[int, int, int]:
    if isinstance(value, (int, np.integer)):
        value = (int(value),)
    dims = tuple(int(v) for v in value)
    if not 1 <= len(dims) <= 3:
        raise LaunchError(f"{what} must have 1 to 3 dimensions, got {value!r}")
    dims = dims + (1,) * (3 - len(dims))
    if any(d < 1 for d in dims):
        raise LaunchError(f"{what} dimensions must be positive, got {dims}")
    return dims


@dataclass(frozen=True)
class Launch:
    """One kernel call: which kernel, its launch shape, and its arguments.

    ``args`` holds arrays (NumPy on ``emu``, CuPy on ``cuda``; passed as pointers)
    and NumPy scalars (passed by value with exactly their type: ``np.int32`` for
    ``int``, ``np.float32`` for ``float``, ``np.uint64`` for ``unsigned long long``).
    """

    module: KernelModule
    kernel: str
    grid: tuple
    block: tuple
    args: tuple
    template_args: tuple = ()
    shared_bytes: int = 0
    name: str = field(init=False)

    def __post_init__(self):
        object.__setattr__(self, "name", name_expression(self.kernel, tuple(self.template_args)))
        if self.name not in self.module.kernels:
            raise LaunchError(
                f"kernel {self.name!r} is not exported by {self.module.source} "
                f"(exported: {', '.join(self.module.kernels)})")
        grid = _dim3(self.grid, "grid")
        block = _dim3(self.block, "block")
        for d, (g, limit) in enumerate(zip(grid, MAX_GRID_DIM)):
            if g > limit:
                raise LaunchError(f"grid dimension {'xyz'[d]} = {g} exceeds the CUDA limit {limit}")
        for d, (b, limit) in enumerate(zip(block, MAX_BLOCK_DIM)):
            if b > limit:
                raise LaunchError(f"block dimension {'xyz'[d]} = {b} exceeds the CUDA limit {limit}")
        threads = block[0] * block[1] * block[2]
        if threads > MAX_THREADS_PER_BLOCK:
            raise LaunchError(f"block of {threads} threads exceeds {MAX_THREADS_PER_BLOCK}")
        if not 0 <= int(self.shared_bytes) <= MAX_DYNAMIC_SHARED_BYTES:
            raise LaunchError(f"dynamic shared memory of {self.shared_bytes} bytes is outside "
                              f"0..{MAX_DYNAMIC_SHARED_BYTES}")
        for i, arg in enumerate(self.args):
            if isinstance(arg, SCALAR_TYPES) or hasattr(arg, "__array_interface__") \
                    or hasattr(arg, "__cuda_array_interface__"):
                continue
            raise LaunchError(
                f"{self.name}: argument {i} is {type(arg).__name__}; pass arrays or NumPy scalars "
                f"of an exact type ({', '.join(t.__name__ for t in SCALAR_TYPES)})")
        object.__setattr__(self, "grid", grid)
        object.__setattr__(self, "block", block)
        object.__setattr__(self, "args", tuple(self.args))
        object.__setattr__(self, "shared_bytes", int(self.shared_bytes))

    @property
    def threads_per_block(self) -> int:
        return self.block[0] * self.block[1] * self.block[2]
