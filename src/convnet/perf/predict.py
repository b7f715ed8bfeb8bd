"""Predicted times of layers' launches on a named GPU: builds, measures, models, prints.

``predict_layers(layers, gpu, batch)``:

1. builds every layer's launches at ``batch`` for the GPU (a stand-in device:
   ``kind="cuda"``, ``parallel_units`` = its SMs) with shape-only arrays, recording
   the builders' choices (``convnet.perf.layers``);
2. builds them again at the smallest power-of-two batch (from 1) that gives the same
   kernels, with those choices and random arrays, and runs them on ``emu`` under the
   profiler (``convnet.perf.emu_traffic``; ``blocks`` sampled blocks a launch);
3. scales the traffic to the real launch (per block x its blocks, or by the ratio of
   elements, as each ``Planned`` says), reads the static figures of the GPU build
   (``convnet.perf.kernel_figures``), counts the executed instructions (its SASS
   loops with trip counts from the traffic's requests per source line,
   ``convnet.perf.dynamic``) and predicts each launch (``convnet.perf.model``).

The result is a ``Table`` of ``Row``s with the total, the FP32 floor (all FLOPs at
the FP32 peak) and ``format_table`` / ``as_dict`` for the ``convnet perf`` command.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import SimpleNamespace

from . import gpus
from .dynamic import Dynamic, count
from .emu_traffic import Traffic, measure
from .kernel_figures import kernel_figures
from .layers import Planned, random_arrays, standin_arrays
from .model import KernelInputs, Prediction, legend, predict


def standin_device(gpu) -> SimpleNamespace:
    """What the launch builders read of a ``cuda`` device: kind and SMs."""
    g = gpus.gpu(gpu)
    return SimpleNamespace(kind="cuda", parallel_units=g.sms, name=f"perf:{g.key}")


@dataclass
class Row:
    planned: Planned
    prediction: Prediction
    traffic: Traffic | None = None
    static: dict | None = None
    dynamic: Dynamic | None = None

    @property
    def elements(self) -> int:
        """What instructions are counted per: the elements the launch covers
        (``Planned.work``), else those of its largest operand."""
        p = self.planned
        if p.work is not None:
            return int(p.work)
        return max((int(a.size) for a in (*p.reads, *p.writes)), default=0)

    @property
    def instructions_per_element(self) -> float | None:
        """Executed thread instructions (warp instructions x 32) per element."""
        if self.dynamic is None or not self.elements:
            return None
        return self.dynamic.instructions * 32 / self.elements

    @property
    def math_share(self) -> float | None:
        if self.static is None:
            return None
        loop = self.static["main_loop"]
        return loop["shares"]["math"] if loop else self.static["kernel_math_share"]

    def as_dict(self) -> dict:
        p = self.planned
        launch = p.launch
        return {"layer": p.layer, "pass": p.pass_, "kernel": p.kernel,
                "grid": list(launch.grid) if launch else None,
                "block": list(launch.block) if launch else None,
                "flops": p.flops, "read_bytes": p.read_bytes, "write_bytes": p.write_bytes,
                "math_share": self.math_share,
                "registers": self.static["registers"] if self.static else None,
                "traffic": self.traffic.as_dict() if self.traffic else None,
                "dynamic": self.dynamic.as_dict() if self.dynamic else None,
                "elements": self.elements if launch else None,
                "instructions_per_element": self.instructions_per_element,
                "prediction": self.prediction.as_dict()}


@dataclass
class Table:
    gpu: gpus.GPU
    batch: int
    rows: list[Row]
    title: str = ""
    timings: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)

    @property
    def total_s(self) -> float:
        return sum(r.prediction.time_s for r in self.rows)

    @property
    def flops(self) -> float:
        return sum(r.planned.flops for r in self.rows)

    @property
    def floor_s(self) -> float:
        """Every FLOP at the FP32 peak."""
        return self.flops / self.gpu.fp32_flops

    def slowest(self, count: int = 3) -> list[Row]:
        return sorted(self.rows, key=lambda r: -r.prediction.time_s)[:count]

    def as_dict(self) -> dict:
        return {"gpu": self.gpu.key, "gpu_name": self.gpu.name, "batch": self.batch,
                "title": self.title, "predicted": True, "total_s": self.total_s,
                "fp32_floor_s": self.floor_s, "flops": self.flops,
                "images_per_s": self.batch / self.total_s if self.total_s else None,
                "timings_s": self.timings, "notes": self.notes, "assumptions": legend(self.gpu).splitlines(),
                "rows": [r.as_dict() for r in self.rows]}


def _same_kernels(a: list[Planned], b: list[Planned]) -> bool:
    return [p.kernel.split(" ")[0] if p.gemm else p.kernel for p in a] == \
           [p.kernel.split(" ")[0] if p.gemm else p.kernel for p in b]


def _reduced(layer, device, batch, full, choices) -> list[Planned]:
    """The layer's launches at the smallest power-of-two batch giving the same kernels."""
    small = 1
    while True:
        planned = layer.build(device, small, random_arrays(small), choices, True)
        if _same_kernels(planned, full) or small >= batch:
            return planned
        small = min(batch, small * 2)


def _scale(full: Planned, small: Planned) -> float:
    if full.work is None:
        return full.blocks / small.blocks
    return full.work / small.work


def static_figures(planned: list[Planned], arch: str) -> None:
    """Compile (or read from the cache) every module the launches need, in threads."""
    modules = {p.launch.module for p in planned if p.launch is not None}
    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(lambda m: kernel_figures(m, arch), modules))


def predict_layers(layers, gpu, batch: int, blocks: int | None = 4, title: str = "",
                   kernel: str | None = None, allow_missing_traffic: bool = True) -> Table:
    """See the module docstring; ``kernel`` keeps only launches whose kernel name
    contains it. Where the emulator cannot profile, the table is made without its
    traffic (said in ``Table.notes``) unless ``allow_missing_traffic`` is False."""
    g = gpus.gpu(gpu)
    device = standin_device(g)
    timings = {}
    began = time.perf_counter()
    full_all, small_all = [], []
    for layer in layers:
        choices: dict = {}
        full = layer.build(device, batch, standin_arrays, choices, False)
        small = _reduced(layer, device, batch, full, choices)
        if not _same_kernels(full, small):
            raise RuntimeError(f"{layer.name}: the reduced build runs other kernels")
        keep = [i for i, p in enumerate(full) if kernel is None or kernel in p.kernel]
        full_all += [full[i] for i in keep]
        small_all += [small[i] for i in keep]
    timings["build"] = time.perf_counter() - began
    began = time.perf_counter()
    static_figures(full_all, g.arch.name)
    timings["static"] = time.perf_counter() - began
    began = time.perf_counter()
    ours = [i for i, p in enumerate(small_all) if p.launch is not None]
    notes = []
    try:
        measured = dict(zip(ours, measure([small_all[i].launch for i in ours], blocks)))
    except Exception as exc:  # no emulator here, or one that cannot profile: one by one
        if not allow_missing_traffic:
            raise
        measured, failed = {}, []
        for i in ours:
            try:
                measured[i] = measure([small_all[i].launch], blocks)[0]
            except Exception as one:
                failed.append(f"{small_all[i].kernel} ({type(one).__name__}: {one})")
        if failed:
            notes.append(f"emu traffic unavailable for {len(failed)} of {len(ours)} launches "
                         f"({'; '.join(sorted(set(failed))[:3])}): their DRAM time from the "
                         f"arrays' footprints only, no L1/shared/issue terms")
    timings["emu"] = time.perf_counter() - began
    rows = []
    for i, (full, small) in enumerate(zip(full_all, small_all)):
        if full.launch is None:
            inputs = KernelInputs(full.kernel, 0, 0, full.flops, full.read_bytes,
                                  full.write_bytes, gemm=True)
            rows.append(Row(full, predict(inputs, g)))
            continue
        traffic = measured[i].scaled(_scale(full, small)) if i in measured else None
        static = kernel_figures(full.launch.module, g.arch.name)[full.launch.name]
        row = Row(full, None, traffic, static)
        if traffic is not None and static.get("regions"):
            warps = full.blocks * -(-full.launch.threads_per_block // 32)
            row.dynamic = count(static["regions"], warps, traffic.sites, traffic.barrier_warps,
                                traffic.warp_ops)
        inputs = KernelInputs(
            full.launch.name, full.blocks, full.launch.threads_per_block, full.flops,
            full.read_bytes, full.write_bytes, registers=static["registers"],
            static_shared=static["shared_bytes"], dynamic_shared=full.launch.shared_bytes,
            math_share=row.math_share,
            load_bytes=traffic.load_bytes if traffic else None,
            store_bytes=traffic.store_bytes if traffic else None,
            shared_wavefronts=traffic.shared_wavefronts if traffic else None,
            instructions=row.dynamic.instructions if row.dynamic else None,
            pipe_instructions=row.dynamic.pipes if row.dynamic else None,
            tensor=full.tensor)
        row.prediction = predict(inputs, g)
        rows.append(row)
    return Table(g, batch, rows, title, timings, notes)


# --------------------------------------------------------------------------- printing

HEADER = ("layer", "pass", "kernel", "grid", "occ", "math", "sect/req", "confl", "instr/elem",
          "pred us", "% peak", "% HBM", "bound")


def short_kernel(name: str) -> str:
    """``conv_forward<128, 128, 8, 8, 8>`` -> ``conv_forward 128x128x8/8x8``."""
    base, _, args = name.partition("<")
    parts = [a.strip() for a in args.rstrip(">").split(",") if a.strip()]
    if len(parts) == 5 and all(p.isdigit() for p in parts):
        return f"{base} {parts[0]}x{parts[1]}x{parts[2]}/{parts[3]}x{parts[4]}"
    return name


def _cells(row: Row) -> list[str]:
    p, pr, t = row.planned, row.prediction, row.traffic
    grid = "-" if p.launch is None else "x".join(str(d) for d in p.launch.grid if d > 1) or "1"
    occ = "-" if p.launch is None else f"{pr.blocks_per_sm}/{pr.occupancy:.0%}"
    math = "-" if row.math_share is None else f"{row.math_share:.0%}"
    spr = "-" if t is None else f"{t.sectors_per_request:.1f}"
    conflict = "-" if t is None or not t.conflict_degree else f"{t.conflict_degree:.2f}"
    ipe = row.instructions_per_element
    return [p.layer, p.pass_, short_kernel(p.kernel), grid, occ, math, spr, conflict,
            "-" if ipe is None else f"{ipe:.1f}",
            f"{pr.time_s * 1e6:.1f}", "-" if pr.bound == "launch" else f"{pr.pct_peak:.0%}",
            "-" if pr.bound in ("launch", "cuBLAS") else f"{pr.pct_hbm:.0%}", pr.bound]


def format_table(table: Table) -> str:
    body = [list(HEADER)] + [_cells(r) for r in table.rows]
    widths = [max(len(r[i]) for r in body) for i in range(len(HEADER))]
    left = {0, 1, 2, len(HEADER) - 1}
    lines = ["  ".join(c.ljust(w) if i in left else c.rjust(w)
                       for i, (c, w) in enumerate(zip(r, widths))).rstrip() for r in body]
    lines.insert(1, "  ".join("-" * w for w in widths))
    g = table.gpu
    total, floor = table.total_s, table.floor_s
    lines += ["",
              f"PREDICTED total: {total * 1e3:.2f} ms for {len(table.rows)} launches at batch "
              f"{table.batch} ({table.batch / total:,.0f} images/s); FP32 floor (every FLOP at "
              f"{g.fp32_tflops} TFLOP/s): {floor * 1e3:.2f} ms = {floor / total:.0%} of the "
              f"predicted time" if total else "no launches"]
    lines += [f"note: {n}" for n in table.notes]
    return "\n".join(lines)


LEGEND_COLUMNS = """\
columns: grid (blocks, x/y/z > 1); occ: resident blocks per SM / theoretical occupancy;
math: the main loop's math share of issue slots (SASS; whole kernel without a loop);
sect/req: emu global 32-byte sectors per warp request (4 = coalesced float); confl: emu
shared-memory wavefronts / conflict-free (1.00 = none); instr/elem: executed thread
instructions (warp instructions x 32, SASS loops x trip counts inferred from emu) per
element covered (else per element of the largest operand); pred us: predicted
microseconds; % peak: of the bound's resource; % HBM: DRAM bytes / time at the bandwidth."""
