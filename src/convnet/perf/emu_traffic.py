"""The emulator's memory traffic of launches, as the launch model takes it: the one
place that reads ``convnet.perf.traffic`` (a rename there costs a line here).

``measure(launches, blocks)`` runs each ``Launch`` on the ``emu`` device inside
``emu.profile(blocks=...)`` and returns one ``Traffic`` per launch: whole-grid
estimates (sampled blocks scaled by blocks in the grid / blocks sampled) of global
bytes loaded and stored (32-byte sectors moved; atomics counted as stores), shared
wavefronts, and the per-request ratios.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace


@dataclass(frozen=True)
class Traffic:
    blocks: int                  # blocks in the emulated grid
    load_bytes: float            # global, sectors x 32, whole grid
    store_bytes: float
    shared_wavefronts: float
    sectors_per_request: float   # global, loads and stores
    conflict_degree: float       # shared wavefronts / conflict-free wavefronts (0: none)
    barriers_per_block: float

    @property
    def global_bytes(self) -> float:
        return self.load_bytes + self.store_bytes

    def scaled(self, factor: float) -> "Traffic":
        """The totals times ``factor`` (the ratios unchanged)."""
        return replace(self, load_bytes=self.load_bytes * factor,
                       store_bytes=self.store_bytes * factor,
                       shared_wavefronts=self.shared_wavefronts * factor)

    def as_dict(self) -> dict:
        return asdict(self)


def _figures(t) -> Traffic:
    loads, stores, atomics, shared = t.global_loads, t.global_stores, t.global_atomics, t.shared
    return Traffic(blocks=t.blocks_total,
                   load_bytes=loads.total(loads.bytes_moved),
                   store_bytes=stores.total(stores.bytes_moved) + atomics.total(atomics.bytes_moved),
                   shared_wavefronts=shared.total(shared.wavefronts),
                   sectors_per_request=t.global_.sectors_per_request,
                   conflict_degree=shared.conflict_degree,
                   barriers_per_block=t.barriers_per_block)


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
