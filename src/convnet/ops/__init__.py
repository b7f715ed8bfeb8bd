"""Op families: each module holds an op's NumPy reference, its KernelModule(s)
and the functions that build its Launches. ``kernel_modules()`` finds every
KernelModule declared here and in ``convnet.data`` (the augmentation kernel), for
the compile check and the compile report.
"""
from __future__ import annotations

import importlib
import pkgutil

from ..toolchain.launch import KernelModule


_PACKAGES = (__name__, "convnet.data")


def kernel_modules() -> list[KernelModule]:
    """Every KernelModule declared at module level in ``convnet.ops.*`` and
    ``convnet.data.*``, sorted by source."""
    found: dict[tuple, KernelModule] = {}
    for package_name in _PACKAGES:
        package = importlib.import_module(package_name)
        for info in pkgutil.iter_modules(package.__path__):
            module = importlib.import_module(f"{package_name}.{info.name}")
            for value in vars(module).values():
                if isinstance(value, KernelModule):
                    found[(value.source, value.kernels)] = value
    return sorted(found.values(), key=lambda m: (m.source, m.kernels))
