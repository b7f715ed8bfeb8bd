"""``conv2d(algorithm="auto")``'s choice between the direct engine and Winograd, and the
direct engine's tile per pass on a GPU, asked of the launch model cheaply (issue 12,
part 5).

The full model (``convnet.perf.predict``) compiles every kernel and profiles the
launches on ``emu``: about a minute a layer, far too slow for a call. What it learns of
a kernel instantiation is, to first order, independent of the shape it runs:

* the static figures of the GPU build (registers, static shared memory, the main loop's
  math share), and
* the executed warp instructions (and their pipes), global bytes loaded and stored and
  shared wavefronts *per unit of work*: for a convolution's GEMM (a pass's launch whose
  grid covers the problem) per FLOP of whole tiles, rows and columns past the matrix
  included (blocks x BM x BN x 2 x the reduction length, which is the launch's FLOPs /
  2 / its output elements; a block does all of its tile's work, masked or not: per
  useful FLOP, conv1's backward data on a 64-row tile for 3 channels was predicted 15x
  too fast), per element covered otherwise (``predict.Row.elements``).

``figures_from_table(table)`` takes those per-kernel **figures** from a predicted table;
``convnet perf`` saves them after every table (``save_figures``) under
``convnet.cache.cache_dir()/perf/choose-<arch>.json``, each kernel keyed by its name
expression and checked against a digest of its expanded source (an edited kernel's
figures are not used); a convolution GEMM's figures are kept per shape too
(``shape_key``: its integer arguments), and a launch of a shape that has its own are
predicted from those (pooled over layers, a kernel's figures mispredicted TF32 conv3's
backward data on 128 x 128 by 8 %, and the chooser took it over 128 x 96). A prediction is then arithmetic: the layer's launches built by
``convnet.perf.layers.conv_layer`` for a stand-in of the GPU at the real batch
(shape-only arrays: the grids, footprints and FLOPs of that shape), each launch's
figures times its units, ``model.predict`` per launch, summed over the three passes
(forward, backward data, backward filter; the ReLU mask and bias gradient, the same
for both algorithms, included).

Where the cache has no fresh figures for a kernel, the **shipped defaults** are used:
``choose_defaults.json`` beside this file, the figures of ``convnet perf``'s model for
an H100 (sm_90) on AlexNet's conv1-5 by both algorithms, written by
``convnet.perf.command.write_choice_defaults()`` (rewrite them after a kernel edit;
until then they describe the kernels of the commit that wrote them). A launch with no
figures at all (a tile AlexNet does not use on that GPU) is predicted from its arrays'
footprint at the FP32 peak (the model's degraded form); the choice names how many.
No nvdisasm and no emulator run is needed to choose; the launch builders read the
tiles' residency from NVRTC's register report (``toolchain.resources``, cached on disk:
the first choice on a fresh machine waits for those compiles, ~50 s on a loaded 2-core
machine; without NVRTC they use their fallback table).

**Tiles** (``direct_tiles``): per pass of the direct engine, each tile of
``ops._conv_tiles.TILE_MODELS["cuda"]`` is predicted the same way and the fastest kept
where two or more have figures for that pass (the others are left to the engine's own
waves model, ``choose_tile``); ``conv2d`` runs them on ``cuda`` (``functional.conv.
direct_ops``), not on ``emu``, whose tiles are chosen for the emulator's speed.

**Calibration first**: a measured calibration (a GPU run's ``benchmarks.json`` of
``benchmarks/gpu_check.sh``, or one benchmark report, with the conv benchmark's
measured / predicted entries) scales each algorithm's predicted passes by the median
measured / predicted ratio of that algorithm and pass on that GPU (the algorithm's
median over its passes where a pass has none). It is read from ``$CONVNET_CALIBRATION``
if set, else ``cache_dir()/perf/calibration.json`` if present, or set by
``set_calibration(path)``.

**The GPU**: on ``cuda`` the device's own (its name through ``calibration.gpu_for_device``;
one the table does not hold is modelled as the stand-in); on ``emu`` the stand-in
``STANDIN`` (an H100 SXM5: the GPU the project targets); on ``cpu`` no model is asked:
both algorithms run the same NumPy references there, so "auto" is "direct".

Deterministic: the choice depends only on the geometry, the GPU, the figures and the
calibration (ties go to "direct"), and is kept per (geometry, GPU, figures version,
calibration) in-process: after the first call of a shape a choice is a dictionary
look-up. ``choose(device, g)`` gives a ``Choice`` (the algorithm, the predicted seconds
of each, the direct engine's tiles, what they came from); ``algorithm_for`` just the
name.

**Precision** (``convnet.precision``): the arithmetic is the user's, never the chooser's
(a TF32 request is not answered with FP32 Winograd, nor FP32 with TF32). In FP32 the
choice is between the algorithms above; in TF32/BF16 the tensor-core engine
(``ops.conv_tc``) is the only algorithm, and what is chosen is its tile per pass among
``ops.conv_tc.TILES`` (``tensor_core_tiles``), predicted the same way from its kernels'
figures (the shipped defaults hold them for AlexNet's layers in both precisions). A
calibration's ratios are kept per *variant*: "direct" and "winograd" (FP32) and "tf32",
"bf16" (the tensor-core engine), so that one engine's measured speed never scales
another's.
"""
from __future__ import annotations

import json
import os
import statistics
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..cache import cache_dir, write_atomic
from . import gpus

FORMAT = 4  # 4: tensor-core GEMMs per FLOP of whole tiles too (3: the direct engine's
            # only; 2: per FLOP; 1: math >= 0.5)
STANDIN = "h100"
DEFAULTS = Path(__file__).with_name("choose_defaults.json")
ALGORITHMS = ("direct", "winograd")
TENSOR_PRECISIONS = ("tf32", "bf16")
# The conv benchmark's pass names (entries' params) -> the model's Planned.part.
PASS_PARTS = {"forward": "forward", "backward_data": "data", "backward_filter": "filter"}
PARTS = ("forward", "data", "filter")

# How a choice names where a launch's figures came from.
SOURCES = {"cache": "from this machine's cache", "defaults": "from the shipped defaults",
           "none": "without figures (footprint at peak)", "cuBLAS": "by cuBLAS"}

_LOCK = threading.RLock()
_FIGURES: dict[str, dict] = {}        # arch -> {kernel name: figures} from the cache file
_DEFAULT_FIGURES: dict | None = None
_SOURCE_KEYS: dict = {}              # KernelModule -> digest of its expanded source
_CHOICES: dict = {}
_state = {"version": 0, "calibration": None, "calibration_loaded": False}


@dataclass(frozen=True)
class Choice:
    """The algorithm "auto" runs for one convolution, and why."""

    algorithm: str
    gpu: str                      # the model's GPU key ("" on cpu)
    seconds: dict                 # algorithm -> predicted (calibrated) seconds, 3 passes
    parts: dict                   # algorithm -> {part: seconds}
    figures: str                  # where the figures came from
    calibration: str | None       # the calibration file applied, if any
    reason: str
    tiles: dict = field(default_factory=dict)   # the engine's {part: tile} (cuda)
    precision: str = "fp32"

    def record(self) -> dict:
        """The choice as plain JSON-able data (a run's settings, ``convnet perf --json``)."""
        return {"algorithm": self.algorithm, "precision": self.precision, "gpu": self.gpu,
                "tiles": {part: list(t) for part, t in self.tiles.items()},
                "predicted_s": dict(self.seconds), "reason": self.reason}

    def describe(self) -> str:
        times = ", ".join(f"{a} {s * 1e6:,.1f} us" for a, s in self.seconds.items())
        tiles = ", ".join(f"{part} {'x'.join(map(str, t[:3]))}"
                          + (f"/{t[3]}x{t[4]}" if len(t) == 5 else "")   # a thread tile
                          for part, t in self.tiles.items())
        engine = "direct" if self.precision == "fp32" else f"tensor-core ({self.precision})"
        return (f"{self.algorithm}: {self.reason}" + (f" ({times})" if times else "")
                + (f"; {engine} tiles: {tiles}" if tiles else ""))


def clear() -> None:
    """Forget the figures, calibration and choices read or made so far (they are read
    again on the next choice: after the files changed, and in tests)."""
    global _DEFAULT_FIGURES
    with _LOCK:
        _FIGURES.clear()
        _CHOICES.clear()
        _DEFAULT_FIGURES = None
        _state.update(calibration=None, calibration_loaded=False)
        _state["version"] += 1


# --------------------------------------------------------------------------- figures

def source_key(module) -> str:
    """A digest of a ``KernelModule``'s expanded source and kernel names (kept)."""
    with _LOCK:
        if module not in _SOURCE_KEYS:
            from ..toolchain.kernel_source import digest, expand
            _SOURCE_KEYS[module] = digest(expand(module.source, portable=True), *module.kernels)
        return _SOURCE_KEYS[module]


def _units(p, per: str) -> float:
    """A Planned launch's units of work (see the module docstring): whole tiles' FLOPs
    (per "tile"; FLOPs where the launch's tile is not known), or the elements it covers
    (per "element")."""
    from .predict import Row
    if per == "element":
        return float(Row(p, None).elements)
    tile = _gemm_tile(p.launch)
    out = sum(int(a.size) for a in p.writes)
    if tile and out:
        return float(p.blocks * tile[0] * tile[1]) * p.flops / out
    return float(p.flops)


def _gemm_tile(launch):
    """(rows, columns) of a convolution GEMM's block tile: the tensor-core engine's
    (``ops.conv_tc.launch_tile``), the direct engine's and Winograd's (their first two
    template arguments of five or more), else None."""
    args = launch.template_args
    if launch.kernel.startswith("conv_tc_"):
        from ..ops import conv_tc
        return conv_tc.launch_tile(launch)
    if len(args) >= 5 and all(isinstance(a, int) for a in args[:5]):
        return args[0], args[1]
    return None


def _per_flop(row) -> bool:
    """Whether a row's launch is counted per FLOP rather than per element: a
    convolution's GEMM (a pass's launch whose grid covers the problem; its work per
    element grows with the reduction, whatever its math share)."""
    p = row.planned
    return p.work is None and p.part is not None and bool(p.flops)


def shape_key(launch) -> str:
    """A GEMM launch's figures key for its very shape: the kernel's name expression and
    its integer arguments (the problem's sizes, batch included), ``name@128,96,...``."""
    ints = [str(int(a)) for a in launch.args
            if isinstance(a, (int, np.integer)) and not isinstance(a, (bool, np.bool_))]
    return f"{launch.name}@{','.join(ints)}"


def figures_from_table(table) -> dict:
    """``{key: figures}`` of every launch of a predicted ``Table`` whose emulated traffic
    was measured (see the module docstring): per kernel (its name expression; rows of one
    kernel are pooled) and, for a convolution's GEMM (counted per tile), per shape too
    (``shape_key``): the same kernel's figures differ from one layer to another (the
    prologue and epilogue against the reduction, partial tiles), so a choice for a shape
    the table ran is predicted from that shape's own figures."""
    sums: dict = {}
    for row in table.rows:
        p = row.planned
        if p.launch is None or row.traffic is None or row.static is None:
            continue
        per = "tile" if _per_flop(row) else "element"
        units = _units(p, per)
        if units <= 0:
            continue
        for key in (p.launch.name, shape_key(p.launch)) if per == "tile" else (p.launch.name,):
            s = sums.setdefault(key, {
                "source": source_key(p.launch.module), "per": per, "units": 0.0,
                "registers": row.static["registers"], "static_shared": row.static["shared_bytes"],
                "math_share": row.math_share, "load_bytes": 0.0, "store_bytes": 0.0,
                "shared_wavefronts": 0.0, "instructions": 0.0, "pipes": {}, "counted": True})
            if s["per"] != per:
                continue   # one way of counting per kernel: the first row's
            s["units"] += units
            s["load_bytes"] += row.traffic.load_bytes
            s["store_bytes"] += row.traffic.store_bytes
            s["shared_wavefronts"] += row.traffic.shared_wavefronts
            if row.dynamic is None:
                s["counted"] = False
            else:
                s["instructions"] += row.dynamic.instructions
                for pipe, n in row.dynamic.pipes.items():
                    s["pipes"][pipe] = s["pipes"].get(pipe, 0.0) + n
    out = {}
    for name, s in sums.items():
        u = s["units"]
        counted = s.pop("counted")
        out[name] = {**s, **{k: s[k] / u for k in ("load_bytes", "store_bytes",
                                                    "shared_wavefronts")},
                     "instructions": s["instructions"] / u if counted else None,
                     "pipes": {p: n / u for p, n in s["pipes"].items()} if counted else None}
    return out


def _store() -> Path:
    """Where this machine's figures and calibration are looked for."""
    return cache_dir() / "perf"


def _cache_path(arch: str) -> Path:
    return _store() / f"choose-{arch}.json"


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return {}
    return data.get("figures", {})


def cached_figures(arch: str) -> dict:
    """The figures saved on this machine for ``arch`` (read once a process)."""
    with _LOCK:
        if arch not in _FIGURES:
            _FIGURES[arch] = _read(_cache_path(arch))
        return _FIGURES[arch]


def default_figures() -> dict:
    """The shipped figures (``DEFAULTS``; see the module docstring)."""
    global _DEFAULT_FIGURES
    with _LOCK:
        if _DEFAULT_FIGURES is None:
            _DEFAULT_FIGURES = _read(DEFAULTS)
        return _DEFAULT_FIGURES


def _better(new: dict, old: dict | None) -> bool:
    """Whether ``new`` figures of a kernel replace ``old``: another source (the kernel
    changed), or as many units of work or more (larger launches: fewer partial tiles)."""
    return (old is None or old.get("source") != new.get("source")
            or new.get("units", 0.0) >= old.get("units", 0.0))


def save_figures(table) -> int:
    """Merge ``figures_from_table(table)`` into this machine's cache for the table's
    architecture (a kernel's figures replaced by those of as much work or more, or of
    another source); returns how many kernels it had figures of. Later choices use them."""
    found = figures_from_table(table)
    if not found:
        return 0
    arch = table.gpu.arch.name
    path = _cache_path(arch)
    with _LOCK:
        merged = _read(path)
        merged.update({k: v for k, v in found.items() if _better(v, merged.get(k))})
        write_atomic(path, json.dumps({"format": FORMAT, "arch": arch, "figures": merged}))
        _FIGURES[arch] = merged
        _state["version"] += 1
    return len(found)


def _figures_for(launch, arch: str):
    """(figures, "cache" | "defaults") of a launch, or (None, "none"): its shape's own
    (``shape_key``: this machine's cache, then the shipped defaults, each only for the
    kernel's current source), else its kernel's pooled figures (the cache's for the
    current source, then the defaults' as shipped)."""
    key, source = shape_key(launch), source_key(launch.module)
    for figures, where in ((cached_figures(arch), "cache"), (default_figures(), "defaults")):
        entry = figures.get(key)
        if entry is not None and entry.get("source") == source:
            return entry, where
    entry = cached_figures(arch).get(launch.name)
    if entry is not None and entry.get("source") == source:
        return entry, "cache"
    entry = default_figures().get(launch.name)
    if entry is not None:
        return entry, "defaults"
    return None, "none"


# --------------------------------------------------------------------------- calibration

def variant(algorithm: str, precision: str = "fp32") -> str:
    """The engine a calibration ratio belongs to: the FP32 algorithm's name, or the
    precision of the tensor-core engine ("tf32", "bf16")."""
    return algorithm if precision == "fp32" else precision


def load_calibration(path) -> dict:
    """``{gpu key: {variant: {part: ratio}}}`` (median measured / predicted) of a GPU
    run's JSON (``benchmarks.json``: ``{"runs": [...]}``, or one report); ValueError
    naming the file if it cannot be read or holds no convolution entries."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        runs = data["runs"] if isinstance(data, dict) and "runs" in data else [data]
        found: dict = {}
        for run in runs:
            machine_gpus = (run.get("machine") or {}).get("gpus") or [{}]
            from .calibration import gpu_for_device
            gpu = gpu_for_device(machine_gpus[0].get("name", ""))
            for e in (run.get("calibration") or {}).get("entries", []):
                params = e.get("params") or {}
                part = PASS_PARTS.get(params.get("pass"))
                algorithm = params.get("algorithm")
                precision = params.get("precision", "fp32")
                if (gpu is None or part is None or algorithm not in ALGORITHMS
                        or precision not in ("fp32",) + TENSOR_PRECISIONS):
                    continue
                ratio = float(e["measured_s"]) / float(e["predicted_s"])
                found.setdefault(gpu.key, {}).setdefault(variant(algorithm, precision), {}) \
                    .setdefault(part, []).append(ratio)
    except (OSError, ValueError, TypeError, KeyError, AttributeError, ZeroDivisionError) as exc:
        raise ValueError(f"calibration {path}: cannot be read ({type(exc).__name__}: {exc})") \
            from None
    if not found:
        raise ValueError(f"calibration {path}: no convolution entries (measured / predicted "
                         f"per algorithm and pass on a known GPU)")
    return {g: {a: {p: statistics.median(r) for p, r in parts.items()}
                for a, parts in algs.items()} for g, algs in found.items()}


def set_calibration(path) -> None:
    """Use the calibration in ``path`` from now on (None: none)."""
    with _LOCK:
        _state["calibration"] = (str(path), load_calibration(path)) if path else None
        _state["calibration_loaded"] = True
        _state["version"] += 1


def calibration() -> tuple[str, dict] | None:
    """(path, ratios) of the calibration in use (see the module docstring), or None."""
    with _LOCK:
        if not _state["calibration_loaded"]:
            env = os.environ.get("CONVNET_CALIBRATION")
            default = _store() / "calibration.json"
            path = env or (default if default.is_file() else None)
            _state["calibration"] = (str(path), load_calibration(path)) if path else None
            _state["calibration_loaded"] = True
        return _state["calibration"]


def _ratio(ratios: dict | None, algorithm: str, part: str | None) -> float:
    if not ratios or part is None or algorithm not in ratios:
        return 1.0
    by_part = ratios[algorithm]
    return by_part.get(part, statistics.median(by_part.values()))


# --------------------------------------------------------------------------- prediction

def _inputs(planned, figures):
    """``model.KernelInputs`` of a launch from its kernel's per-unit figures (None: the
    arrays' footprint only); a tensor-core GEMM's compute bound is its precision's peak,
    as in the full model (without ``tensor`` a GEMM whose instruction mix is mostly not
    FP32 had no compute term: the chooser saw the warpgroup GEMM's 1.28-wave grid on
    conv3 as shared-bound at 91 us where the full model says 121)."""
    from .model import KernelInputs
    p = planned
    if p.launch is None:
        return KernelInputs(p.kernel, 0, 0, p.flops, p.read_bytes, p.write_bytes, gemm=True)
    base = dict(name=p.launch.name, blocks=p.blocks, threads_per_block=p.launch.threads_per_block,
                flops=p.flops, read_bytes=p.read_bytes, write_bytes=p.write_bytes,
                dynamic_shared=p.launch.shared_bytes, tensor=p.tensor)
    if figures is None:
        return KernelInputs(**base)
    units = _units(p, figures["per"])
    counted = figures.get("instructions") is not None
    return KernelInputs(
        **base, registers=figures["registers"], static_shared=figures["static_shared"],
        math_share=figures["math_share"], load_bytes=figures["load_bytes"] * units,
        store_bytes=figures["store_bytes"] * units,
        shared_wavefronts=figures["shared_wavefronts"] * units,
        instructions=figures["instructions"] * units if counted else None,
        pipe_instructions={k: v * units for k, v in figures["pipes"].items()} if counted else None)


def _launches(g, algorithm: str, gpu: gpus.GPU, tiles: dict | None = None,
              precision: str = "fp32") -> list:
    """The Planned launches of ``g``'s three passes by ``algorithm`` in ``precision`` on
    ``gpu`` (the engine's ``tiles`` per part where given)."""
    from .layers import conv_layer, standin_arrays
    from .predict import standin_device
    layer = conv_layer("choose", g.c, (g.h, g.w), g.k, (g.r, g.s), (g.stride_h, g.stride_w),
                       (g.pad_h, g.pad_w), g.groups, algorithm=algorithm, tiles=tiles,
                       precision=precision)
    return layer.build(standin_device(gpu), g.n, standin_arrays, {}, False)


def _predict(planned, key: str, g_: gpus.GPU, ratios: dict | None):
    """({part: seconds}, {figure source: launches}, {parts with a launch lacking figures})."""
    from .model import predict
    parts: dict = {}
    sources: dict = {}
    blind = set()
    for p in planned:
        figures, source = (_figures_for(p.launch, g_.arch.name)
                           if p.launch is not None else (None, "cuBLAS"))
        sources[source] = sources.get(source, 0) + 1
        if figures is None and p.launch is not None:
            blind.add(p.part)
        seconds = predict(_inputs(p, figures), g_).time_s
        parts[p.part] = parts.get(p.part, 0.0) + seconds * _ratio(ratios, key, p.part)
    return parts, sources, blind


def predict_parts(g, algorithm: str, gpu, ratios: dict | None = None,
                  tiles: dict | None = None, precision: str = "fp32") -> tuple[dict, dict]:
    """({part: predicted seconds}, {figure source: launches}) of ``g`` by ``algorithm`` in
    ``precision`` on ``gpu`` from the figures (see the module docstring), each part scaled
    by the calibration ``ratios`` of that GPU (``{variant: {part: ratio}}``) when given;
    part None holds the launches outside the three GEMM passes (ReLU mask, bias gradient);
    ``tiles``: the engine's per part (else its builders' own)."""
    g_ = gpus.gpu(gpu)
    parts, sources, _ = _predict(_launches(g, algorithm, g_, tiles, precision),
                                 variant(algorithm, precision), g_, ratios)
    return parts, sources


def direct_tiles(g, gpu) -> dict:
    """``{part: tile}``: for each pass of the direct engine ("forward", "data",
    "filter"), the tile of ``ops._conv_tiles.TILE_MODELS["cuda"]`` with the least
    predicted time on ``gpu`` (ties: the table's order) among those whose launches of that
    pass all have figures; a pass where fewer than two have them is left out (the
    engine's own waves model, ``choose_tile``, decides it)."""
    from ..ops._conv_tiles import TILE_MODELS
    return _fastest_tiles(g, gpus.gpu(gpu), tuple(TILE_MODELS["cuda"]), "fp32")


def tensor_core_tiles(g, gpu, precision: str) -> dict:
    """``direct_tiles`` for the tensor-core engine in ``precision``: per pass, the fastest
    of ``ops.conv_tc.TILES`` predicted, and of ``WGMMA_TILES`` on a GPU whose
    architecture runs the warpgroup GEMM (its module's base architecture, sm_90); a pass
    where fewer than two have figures is left to the engine's own choice. A warpgroup
    tile runs its pass's other kernels as the plain tile, so where a pass has no
    warpgroup GEMM (backward filter, NCHW forms) both predict alike and the plain tile,
    listed first, wins the tie."""
    return _fastest_tiles(g, gpus.gpu(gpu), tensor_core_menu(gpu), precision)


def tensor_core_menu(gpu) -> tuple:
    """The tensor-core tiles the chooser weighs on ``gpu``: ``TILES``, with
    ``WGMMA_TILES`` where the GPU's architecture is the warpgroup module's base."""
    from ..ops import conv_tc
    wgmma = gpus.gpu(gpu).arch.name == conv_tc.FORWARD_WGMMA.base_arch
    return tuple(conv_tc.TILES) + (tuple(conv_tc.WGMMA_TILES) if wgmma else ())


def _fastest_tiles(g, g_: gpus.GPU, menu: tuple, precision: str) -> dict:
    """``{part: tile}``: the fastest tile of ``menu`` per pass (see ``direct_tiles``)."""
    from ..toolchain.launch import LaunchError
    found: dict = {}
    for index, tile in enumerate(menu):
        try:
            planned = _launches(g, "direct", g_, {part: tile for part in PARTS}, precision)
        except (LaunchError, ValueError):
            continue   # a tile this shape cannot take
        parts, _, blind = _predict(planned, variant("direct", precision), g_, None)
        for part in PARTS:
            if part in parts and part not in blind:
                found.setdefault(part, []).append((parts[part], index, tuple(tile)))
    return {part: min(times)[2] for part, times in found.items() if len(times) >= 2}


def gpu_for(device) -> tuple[gpus.GPU, str]:
    """(the GPU the model is asked about for ``device``, how it was named)."""
    if device.kind == "cuda":
        from .calibration import gpu_for_device
        try:
            props = device.cupy.cuda.runtime.getDeviceProperties(device.index)
            name = props["name"]
            name = name.decode() if isinstance(name, bytes) else str(name)
        except Exception as exc:  # a device without properties: the stand-in, said so
            return gpus.gpu(STANDIN), f"{device.name}'s name unreadable ({exc}): stand-in"
        found = gpu_for_device(name)
        if found is not None:
            return found, f"{device.name} is an {found.name}"
        return gpus.gpu(STANDIN), f"{name} is not in convnet.perf.gpus: stand-in"
    return gpus.gpu(STANDIN), f"{device.kind}: stand-in"


def _winograd_fits(g) -> bool:
    """Whether Winograd's workspaces (backward filter's with one split) have 32-bit indices."""
    from ..ops._arrays import INT32_MAX
    from ..ops import conv_winograd
    return all(int(np.prod(shape)) <= INT32_MAX for part in ("forward", "data", "filter")
               for shape in conv_winograd.workspace_shapes(g, part).values())


def choose_for_gpu(g, gpu, precision: str = "fp32") -> Choice:
    """The choice for geometry ``g`` in ``precision`` on ``gpu`` (a name or
    ``gpus.GPU``), kept."""
    from ..ops import conv_winograd
    from ..precision import check_precision
    check_precision(precision)
    g_ = gpus.gpu(gpu)
    cal = calibration()
    key = (g, g_.key, precision, _state["version"], cal[0] if cal else None)
    with _LOCK:
        if key in _CHOICES:
            return _CHOICES[key]
    if precision != "fp32":
        choice = _predicted_choice(g, g_, cal, ("direct",),
                                   f"{precision}: the tensor-core engine is the only algorithm",
                                   precision)
    elif not conv_winograd.supports(g):
        why = (f"Winograd takes 3x3 filters at stride 1 only ({g.r}x{g.s}, "
               f"stride {g.stride_h}x{g.stride_w})")
        choice = _predicted_choice(g, g_, cal, ("direct",), why)
    elif not _winograd_fits(g):
        choice = _predicted_choice(g, g_, cal, ("direct",),
                                   "Winograd's workspaces would hold 2**31 floats or more")
    else:
        choice = _predicted_choice(g, g_, cal, ALGORITHMS)
    with _LOCK:
        _CHOICES[key] = choice
    return choice


def _predicted_choice(g, g_: gpus.GPU, cal, algorithms, only: str = "",
                      precision: str = "fp32") -> Choice:
    """The fastest of ``algorithms`` predicted (the direct or tensor-core engine with its
    tiles chosen, ``direct_tiles`` / ``tensor_core_tiles``); ``only``: why there is no
    other. "direct" (said why) where the model cannot predict: a model failure never
    stops a convolution."""
    ratios = cal[1].get(g_.key) if cal else None
    seconds, parts, sources = {}, {}, {}
    try:
        tiles = (direct_tiles(g, g_) if precision == "fp32"
                 else tensor_core_tiles(g, g_, precision))
        for algorithm in algorithms:
            parts[algorithm], found = predict_parts(g, algorithm, g_, ratios,
                                                    tiles if algorithm == "direct" else None,
                                                    precision)
            seconds[algorithm] = sum(parts[algorithm].values())
            for s, n in found.items():
                sources[s] = sources.get(s, 0) + n
    except Exception as exc:  # noqa: BLE001 - the model's, reported in the reason
        return Choice("direct", g_.key, {}, {}, "-", None,
                      f"the model could not predict this shape ({type(exc).__name__}: {exc})",
                      precision=precision)
    best = min(algorithms, key=lambda a: (seconds[a], ALGORITHMS.index(a)))
    figures = ", ".join(f"{n} launch{'es' if n > 1 else ''} {SOURCES.get(s, s)}"
                        for s, n in sorted(sources.items()))
    used = cal[0] if cal and ratios else None
    what = only or f"predicted fastest on {g_.name}"
    reason = (f"{'calibrated ' if used else ''}{what} "
              f"({'calibration ' + used + '; ' if used else ''}figures: {figures})")
    return Choice(best, g_.key, seconds, parts, figures, used, reason, tiles, precision)


def choose(device, g, precision: str = "fp32") -> Choice:
    """The choice of ``conv2d(algorithm="auto")`` for geometry ``g`` in ``precision`` on
    ``device``."""
    if device.kind == "cpu":
        return Choice("direct", "", {}, {}, "-", None,
                      "cpu: both algorithms run the same NumPy references", precision=precision)
    gpu, _ = gpu_for(device)
    return choose_for_gpu(g, gpu, precision)


def algorithm_for(device, g, precision: str = "fp32") -> str:
    """``choose(device, g, precision).algorithm``."""
    return choose(device, g, precision).algorithm


# --------------------------------------------------------------------------- defaults

def write_defaults(conv_layers, path=DEFAULTS, gpu: str = STANDIN, batch: int = 128) -> int:
    """Predict ``conv_layers`` (``perf.layers`` conv layers: AlexNet's, from
    ``perf.command.write_choice_defaults``) by every algorithm each takes in FP32, and by
    the tensor-core engine with each of its tiles in TF32 and BF16, on ``gpu`` with the
    full model (compiles and profiles: minutes) and write their figures to ``path``."""
    from ..ops import conv_tc, conv_winograd
    from .layers import conv_layer
    from .predict import predict_layers
    layers = []
    for layer in conv_layers:
        i = layer.info
        shape = (i["c"], i["hw"], i["k"], i["rs"], i["stride"], i["pad"], i["groups"])
        for algorithm in ALGORITHMS:
            if algorithm == "winograd" and not conv_winograd.supports(_info_geometry(i, 1)):
                continue
            layers.append(conv_layer(f"{layer.name}/{algorithm}", *shape, algorithm=algorithm))
        for precision in TENSOR_PRECISIONS:
            for tile in conv_tc.TILES:
                # the data pass only where the network runs it (conv1's would take the
                # emulator half an hour to profile, for a pass AlexNet never launches)
                layers.append(conv_layer(f"{layer.name}/{precision}/{'x'.join(map(str, tile))}",
                                         *shape, input_grad=i.get("input_grad", True),
                                         precision=precision,
                                         tiles={part: tile for part in PARTS}))
    table = predict_layers(layers, gpus.gpu(gpu), batch, allow_missing_traffic=False)
    found = figures_from_table(table)
    Path(path).write_text(json.dumps({"format": FORMAT, "arch": table.gpu.arch.name,
                                      "gpu": table.gpu.key, "batch": batch,
                                      "figures": found}, indent=1, sort_keys=True) + "\n")
    return len(found)


def _info_geometry(info: dict, batch: int):
    from ..ops import conv
    c, hw, rs, groups = info["c"], info["hw"], info["rs"], info["groups"]
    hw = hw if isinstance(hw, tuple) else (hw, hw)
    rs = rs if isinstance(rs, tuple) else (rs, rs)
    return conv.geometry((batch, c, *hw), (info["k"], c // groups, *rs), info["stride"],
                         info["pad"], groups)


def layer_choices(layers, gpu, batch: int) -> dict:
    """``{layer name: Choice}`` of the conv layers (``layer.info["op"] == "conv"``), each
    in its layer's precision."""
    return {layer.name: choose_for_gpu(_info_geometry(layer.info, batch), gpu,
                                       layer.info.get("precision", "fp32"))
            for layer in layers if layer.info.get("op") == "conv"}

