"""The static figures the launch model needs of each kernel, cached.

``kernel_figures(module, arch)`` gives, per kernel name expression of a
``KernelModule``, ``convnet.perf.sass.StaticRow.as_dict()`` without occupancy
(registers, spills, static shared memory, stack, launch bounds, the main loop's
instruction mix), ``kernel_math_share``, the math share of the whole kernel's
code (what the model uses for kernels without a loop), and ``regions``, the
straight-line code and loops with their memory instructions per source line
(``convnet.perf.dynamic.regions``; the build adds ``-lineinfo``, which leaves the
machine code as it is). Compiling every module for one architecture takes about 40 s of
CPU, so results are kept in-process and on disk under
``convnet.cache.cache_dir()/perf``, one JSON file per module and architecture, keyed
on the expanded source text, the NVRTC options, the architecture and this file's
format version (NVRTC output is deterministic for those, so the cache is never
stale after a kernel or header edit).

A module with a ``feature_arch`` (``sm_90a``: ``wgmma.*``) is compiled for it when
``arch`` is its base (``sm_90``), so the figures are those of the build that runs;
asked for another architecture, whose GPUs cannot run it, ``kernel_figures`` raises
``ArchitectureError`` naming the module and the architecture it needs (callers ask
only for modules the GPU runs).
"""
from __future__ import annotations

import hashlib
import json
import threading

from ..cache import cache_dir, write_atomic
from ..toolchain import nvrtc
from ..toolchain.kernel_source import expand
from ..toolchain.launch import KernelModule

FORMAT = 5  # 3: each line's unconditional memory instructions; 4: called functions; 5: one cp.async site, "@!PT" no request
_MEMORY: dict[str, dict[str, dict]] = {}
_LOCK = threading.Lock()


def _key(text: str, arch: str) -> str:
    options = "\0".join(nvrtc.compile_options(arch))
    digest = hashlib.sha256(f"{FORMAT}\0{arch}\0{options}\0{text}".encode()).hexdigest()
    return digest[:32]


def kernel_figures(module: KernelModule, arch: str = "sm_90") -> dict[str, dict]:
    """``{kernel name expression: static figures}`` for every kernel of ``module`` on
    ``arch`` (see the module docstring; a feature-set module: its ``build_arch``, whose
    name the figures' ``arch`` carries); compiles only on a cache miss."""
    from . import dynamic, sass  # needs NVRTC and nvdisasm only when compiling

    arch = module.require_arch(nvrtc.normalize_arch(arch))
    text = expand(module.source)
    key = _key(text + "\0" + "\0".join(module.kernels), arch)
    with _LOCK:
        if key in _MEMORY:
            return _MEMORY[key]
    path = cache_dir() / "perf" / f"{key}.json"
    figures = None
    try:
        figures = json.loads(path.read_text())
    except (OSError, ValueError):
        pass
    if not isinstance(figures, dict) or set(figures) != set(module.kernels):
        built = sass.compile_source(text, str(module.source), module.kernels, arch,
                                    line_info=True)
        figures = {k.kernel: {**sass.StaticRow(sass=k, block_threads=None, dynamic_shared=0,
                                               occupancy=None).as_dict(),
                              "kernel_math_share": k.mix.share("math"),
                              "regions": dynamic.regions(k)} for k in built}
        write_atomic(path, json.dumps(figures))
    with _LOCK:
        _MEMORY[key] = figures
    return figures


def launch_figures(launch, arch: str = "sm_90") -> dict:
    """The static figures of the kernel a ``Launch`` runs."""
    return kernel_figures(launch.module, arch)[launch.name]
