"""The emulator's memory traffic of launches, as the launch model takes it: the one
place that reads ``convnet.perf.traffic`` (a rename there costs a line here).

``measure(launches, blocks)`` runs each ``Launch`` on the ``emu`` device inside
``emu.profile(blocks=...)`` and returns one ``Traffic`` per launch: whole-grid
estimates (sampled blocks scaled by blocks in the grid / blocks sampled) of global
bytes loaded and stored (32-byte sectors moved; atomics counted as stores), shared
wavefronts, and the per-request ratios; for the dynamic instruction count
(``convnet.perf.dynamic``) the warp-level requests per source line and access kind
(``sites``, sampled and scaled like the bytes), the barriers times the warps that
execute them and the warp operations (both exact, every block).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace


@dataclass(frozen=True)
class Traffic:
    blocks: int                  # blocks in the emulated grid
    load_bytes: float            # global, sectors x 32, whole grid
    store_bytes: float
    shared_wavefronts: float
    sectors_per_request: float   # global, loads and stores
    conflict_degree: float       # shared wavefronts / conflict-free wavefronts (0: none)
    barriers_per_block: float
    barrier_warps: float = 0.0   # barriers executed x warps per block, whole grid
    warp_ops: float = 0.0        # warp-level shuffles, votes, __syncwarp, whole grid
    sites: dict = field(default_factory=dict)   # "file:line:space:kind" -> warp requests

    @property
    def global_bytes(self) -> float:
        return self.load_bytes + self.store_bytes

    def scaled(self, factor: float) -> "Traffic":
        """The totals times ``factor`` (the ratios unchanged)."""
        return replace(self, load_bytes=self.load_bytes * factor,
                       store_bytes=self.store_bytes * factor,
                       shared_wavefronts=self.shared_wavefronts * factor,
                       barrier_warps=self.barrier_warps * factor,
                       warp_ops=self.warp_ops * factor,
                       sites={k: v * factor for k, v in self.sites.items()})

    def as_dict(self) -> dict:
        return asdict(self)


def _figures(t) -> Traffic:
    from .dynamic import site_key
    loads, stores, atomics, shared = t.global_loads, t.global_stores, t.global_atomics, t.shared
    sites: dict[str, float] = {}
    for s in t.sites:
        key = site_key(s.file, s.line, s.space, s.kind)
        sites[key] = sites.get(key, 0.0) + s.figures.total(s.figures.requests)
    return Traffic(blocks=t.blocks_total,
                   load_bytes=loads.total(loads.bytes_moved),
                   store_bytes=stores.total(stores.bytes_moved) + atomics.total(atomics.bytes_moved),
                   shared_wavefronts=shared.total(shared.wavefronts),
                   sectors_per_request=t.global_.sectors_per_request,
                   conflict_degree=shared.conflict_degree,
                   barriers_per_block=t.barriers_per_block,
                   barrier_warps=float(t.barriers * t.warps_per_block),
                   warp_ops=float(t.warp_ops), sites=sites)


def measure(launches, blocks: int | None = 4) -> list[Traffic]:
    """One ``Traffic`` per launch, run in order on the ``emu`` device."""
    from ..backend import emu, get_device
    device = get_device("emu")
    launches = list(launches)
    with emu.profile(blocks=blocks) as prof:
        for launch in launches:
            device.launch(launch)
    if len(prof.launches) != len(launches):
        raise RuntimeError(f"emu.profile recorded {len(prof.launches)} launches of {len(launches)}")
    return [_figures(t) for t in prof.launches]
