"""Op families: each module holds an op's NumPy reference, its KernelModule(s)
and the functions that build its Launches. ``kernel_modules()`` finds every
KernelModule declared here (the compile check and the emulator's warm-up use it).
"""
from __future__ import annotations

import importlib
import pkgutil

from ..launch import KernelModule


def kernel_modules() -> list[KernelModule]:
    """Every KernelModule declared at module level in ``convnet.ops.*``, sorted by source."""
    found: dict[tuple, KernelModule] = {}
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        for value in vars(module).values():
            if isinstance(value, KernelModule):
                found[(value.source, value.kernels)] = value
    return sorted(found.values(), key=lambda m: (m.source, m.kernels))
