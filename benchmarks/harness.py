"""The benchmark harness every kernel benchmark uses.

``measure(fn, device=...)`` times a callable:

* on ``cpu`` and ``emu`` (host devices) with ``time.perf_counter`` around each call
  (followed by ``device.synchronize()`` when the device object has one);
* on ``cuda:N`` with CUDA events recorded around each call on the current stream,
  and, when ``flush_l2`` is set, a write of a buffer twice the size of the GPU's L2
  cache (capped at 256 MiB) between repeats; the flush is outside the events, so
  it is not part of any sample.

It returns a ``Result`` (all samples in seconds, median/min/max, and GFLOP/s or
GB/s when the caller gives the work done per call). A ``Report`` gathers results
and ratios against baselines measured in the same run, prints a table and
writes JSON with the machine it ran on into the results folder (``--out``, else
``$CONVNET_BENCH_OUT``, else ``benchmarks/results/``).

Ratios are recorded, never asserted: a benchmark does not fail because a
baseline is faster. This module imports neither CuPy nor torch unless a CUDA
device is measured or machine information asks whether a GPU is present.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
ENV_OUT = "CONVNET_BENCH_OUT"

L2_FLUSH_CAP_BYTES = 256 * 1024 * 1024
L2_FLUSH_MIN_BYTES = 8 * 1024 * 1024
DEFAULT_MAX_REPEATS = 10_000


class BenchmarkError(RuntimeError):
    """A benchmark that cannot be measured as asked (bad arguments, missing device)."""


# --------------------------------------------------------------------------- results

@dataclass
class Result:
    """The timing of one benchmarked callable: samples in seconds plus derived rates.

    ``flops``/``bytes`` are the work of ONE call (floating-point operations, bytes
    moved); the rates use the median time (``gflops``, ``gbps``) or the fastest
    sample (``gflops_best``, ``gbps_best``).
    """

    name: str
    device: str
    samples: list[float]
    flops: float | None = None
    bytes: float | None = None
    params: dict = field(default_factory=dict)

    def __post_init__(self):
        if not self.samples:
            raise BenchmarkError(f"{self.name}: a result needs at least one sample")
        self.samples = [float(s) for s in self.samples]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def min(self) -> float:
        return min(self.samples)

    @property
    def max(self) -> float:
        return max(self.samples)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.samples)

    @property
    def stdev(self) -> float:
        return statistics.stdev(self.samples) if len(self.samples) > 1 else 0.0

    @staticmethod
    def _rate(amount, seconds) -> float | None:
        if amount is None or seconds <= 0:
            return None
        return amount / seconds / 1e9

    @property
    def gflops(self) -> float | None:
        return self._rate(self.flops, self.median)

    @property
    def gflops_best(self) -> float | None:
        return self._rate(self.flops, self.min)

    @property
    def gbps(self) -> float | None:
        return self._rate(self.bytes, self.median)

    @property
    def gbps_best(self) -> float | None:
        return self._rate(self.bytes, self.min)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "device": self.device,
            "params": dict(self.params),
            "repeats": len(self.samples),
            "median_s": self.median,
            "min_s": self.min,
            "max_s": self.max,
            "mean_s": self.mean,
            "stdev_s": self.stdev,
            "flops": self.flops,
            "bytes": self.bytes,
            "gflops": self.gflops,
            "gflops_best": self.gflops_best,
            "gbps": self.gbps,
            "gbps_best": self.gbps_best,
            "samples_s": list(self.samples),
        }

    @classmethod
    def from_dict(cls, data: dict) -> "Result":
        return cls(name=data["name"], device=data["device"], samples=list(data["samples_s"]),
                   flops=data.get("flops"), bytes=data.get("bytes"),
                   params=dict(data.get("params") or {}))


def speed_ratio(ours: Result, baseline: Result) -> float:
    """How many times as fast ``ours`` is as ``baseline`` (median times): > 1 means faster."""
    return baseline.median / ours.median


# --------------------------------------------------------------------------- timing

def device_kind(device) -> tuple[str, str, int]:
    """``(kind, name, index)`` of a Device object or a device name ("cpu", "emu", "cuda:1")."""
    if hasattr(device, "kind") and hasattr(device, "name"):
        name = str(device.name)
        kind = str(device.kind)
    elif isinstance(device, str):
        name = device.strip().lower()
        kind = name.split(":", 1)[0]
    else:
        raise BenchmarkError(f"device must be a convnet Device or a name, not {type(device).__name__}")
    if kind not in ("cpu", "emu", "cuda"):
        raise BenchmarkError(f"unknown device {device!r}: expected cpu, emu or cuda:N")
    index = 0
    if kind == "cuda":
        if isinstance(device, str):
            index = int(name.split(":", 1)[1]) if ":" in name else 0
        else:
            index = int(getattr(device, "index", 0) or 0)
        name = f"cuda:{index}"
    return kind, name, index


def measure(fn: Callable[[], object], *, device, warmup: int = 3, repeats: int = 20,
            flush_l2: bool = True, min_time_s: float = 0.0, max_time_s: float | None = None,
            max_repeats: int = DEFAULT_MAX_REPEATS, flops: float | None = None,
            bytes: float | None = None, name: str | None = None, params: dict | None = None,
            timer: Callable[[], float] = time.perf_counter) -> Result:
    """Time ``fn()`` on ``device`` and return a ``Result``.

    ``warmup`` untimed calls come first. Then samples are taken until there are
    at least ``repeats`` of them AND they add up to at least ``min_time_s``
    (never more than ``max_repeats``); ``max_time_s``, when given, stops sampling
    once the samples add up to that much, even before ``repeats`` (at least one
    sample is always taken). ``flops``/``bytes`` are the work of one call.
    ``timer`` replaces ``time.perf_counter`` on host devices (tests use a fake one).
    """
    if repeats < 1 or warmup < 0 or max_repeats < 1:
        raise BenchmarkError(f"need repeats >= 1, warmup >= 0, max_repeats >= 1 "
                             f"(got {repeats}, {warmup}, {max_repeats})")
    kind, dev_name, index = device_kind(device)
    name = name or getattr(fn, "__name__", "fn")
    if kind == "cuda":
        samples = _measure_cuda(fn, index, warmup, repeats, flush_l2, min_time_s, max_time_s,
                                max_repeats)
    else:
        sync = getattr(device, "synchronize", None) if not isinstance(device, str) else None
        samples = _measure_host(fn, sync, warmup, repeats, min_time_s, max_time_s, max_repeats,
                                timer)
    return Result(name=name, device=dev_name, samples=samples, flops=flops, bytes=bytes,
                  params=dict(params or {}))


def _enough(samples: list[float], repeats: int, min_time_s: float, max_time_s: float | None,
            max_repeats: int) -> bool:
    total = sum(samples)
    if len(samples) >= max_repeats:
        return True
    if max_time_s is not None and total >= max_time_s:
        return True
    return len(samples) >= repeats and total >= min_time_s


def _measure_host(fn, sync, warmup, repeats, min_time_s, max_time_s, max_repeats, timer):
    for _ in range(warmup):
        fn()
        if sync is not None:
            sync()
    samples: list[float] = []
    while True:
        t0 = timer()
        fn()
        if sync is not None:
            sync()
        samples.append(timer() - t0)
        if _enough(samples, repeats, min_time_s, max_time_s, max_repeats):
            return samples


def l2_flush_bytes(l2_bytes: int | None) -> int:
    """Size of the buffer written between CUDA repeats: 2x L2, at least 8 MiB, at most 256 MiB."""
    if not l2_bytes or l2_bytes <= 0:
        return L2_FLUSH_CAP_BYTES // 4
    return int(min(max(2 * l2_bytes, L2_FLUSH_MIN_BYTES), L2_FLUSH_CAP_BYTES))


def cuda_l2_bytes(index: int = 0) -> int | None:
    """The L2 cache size of CUDA device ``index`` in bytes (None when it cannot be read)."""
    import cupy as cp  # only on the cuda path
    try:
        return int(cp.cuda.Device(index).attributes["L2CacheSize"])
    except Exception:  # attribute names differ across CuPy versions
        try:
            return int(cp.cuda.runtime.getDeviceProperties(index)["l2CacheSize"])
        except Exception:
            return None


def _measure_cuda(fn, index, warmup, repeats, flush_l2, min_time_s, max_time_s, max_repeats):
    try:
        import cupy as cp
    except ImportError as exc:  # pragma: no cover - only without CuPy
        raise BenchmarkError("measuring on a CUDA device needs CuPy") from exc
    with cp.cuda.Device(index):
        stream = cp.cuda.get_current_stream()
        flush = None
        if flush_l2:
            flush = cp.empty(l2_flush_bytes(cuda_l2_bytes(index)), dtype=cp.uint8)
        start, end = cp.cuda.Event(), cp.cuda.Event()
        for _ in range(warmup):
            fn()
        stream.synchronize()
        samples: list[float] = []
        while True:
            if flush is not None:
                flush.fill(len(samples) % 251 + 1)  # a kernel writing every byte, before `start`
            start.record(stream)
            fn()
            end.record(stream)
            end.synchronize()
            samples.append(cp.cuda.get_elapsed_time(start, end) * 1e-3)  # ms -> s
            if _enough(samples, repeats, min_time_s, max_time_s, max_repeats):
                break
        del flush
        return samples


# --------------------------------------------------------------------------- machine

def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def gpu_info() -> list[dict]:
    """Name, memory and L2 of each CUDA device CuPy sees; [] without CuPy or a GPU."""
    import importlib.util
    if importlib.util.find_spec("cupy") is None:
        return []
    try:
        import cupy as cp
        count = cp.cuda.runtime.getDeviceCount()
    except Exception:
        return []
    found = []
    for i in range(count):
        try:
            props = cp.cuda.runtime.getDeviceProperties(i)
            name = props["name"]
            found.append({
                "index": i,
                "name": name.decode() if isinstance(name, bytes) else str(name),
                "compute_capability": f"{props['major']}.{props['minor']}",
                "memory_bytes": int(props["totalGlobalMem"]),
                "l2_bytes": int(props.get("l2CacheSize", 0)),
                "multiprocessors": int(props["multiProcessorCount"]),
            })
        except Exception as exc:  # keep going: machine info must never fail a benchmark
            found.append({"index": i, "error": str(exc)})
    try:
        found_versions = {"cuda_runtime": cp.cuda.runtime.runtimeGetVersion(),
                          "cuda_driver": cp.cuda.runtime.driverGetVersion(),
                          "cupy": cp.__version__}
        for entry in found:
            entry.update(found_versions)
    except Exception:
        pass
    return found


def machine_info(*, probe_gpu: bool = True) -> dict:
    """Where a benchmark ran: platform, CPU, cores, NumPy, GPU (if any), git commit, time."""
    import numpy as np
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "numpy": np.__version__,
        "emu_threads": os.environ.get("CONVNET_EMU_THREADS"),
        "gpus": gpu_info() if probe_gpu else [],
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "hostname": platform.node(),
    }


# --------------------------------------------------------------------------- reports

class Report:
    """The results of one benchmark run, its ratios against baselines, and notes."""

    def __init__(self, benchmark: str, *, args: dict | None = None):
        self.benchmark = benchmark
        self.args = dict(args or {})
        self.results: list[Result] = []
        self.ratios: list[dict] = []
        self.notes: dict = {}
        self.calibration: list[dict] = []

    def add(self, result: Result) -> Result:
        self.results.append(result)
        return result

    def add_ratio(self, ours: Result, baseline: Result, label: str | None = None) -> dict:
        """Record how many times as fast ``ours`` is as ``baseline`` (recorded, never asserted)."""
        entry = {
            "label": label or f"{ours.name}@{ours.device} vs {baseline.name}@{baseline.device}",
            "ours": {"name": ours.name, "device": ours.device, "params": ours.params},
            "baseline": {"name": baseline.name, "device": baseline.device,
                         "params": baseline.params},
            "speed_ratio": speed_ratio(ours, baseline),
        }
        self.ratios.append(entry)
        return entry

    def add_prediction(self, ours: Result, predicted_s: float, label: str | None = None) -> dict:
        """Record the performance model's predicted time beside ``ours`` (its median)
        for the calibration (``convnet.perf.calibration``); recorded, never asserted."""
        from convnet.perf import calibration
        item = calibration.entry(label or f"{ours.name}@{ours.device}", ours.median,
                                 predicted_s, params=dict(ours.params))
        self.calibration.append(item)
        return item

    def predict(self, ours: Result, op: str, batch: int, kernels, passes=None,
                label: str | None = None):
        """``add_prediction`` with the model's time for ``op``'s launches named by
        ``kernels`` on the GPU ``ours`` ran on; a note (no entry) where the GPU is not in
        the model's table or the model fails."""
        try:
            from convnet.perf import calibration
            info = gpu_info()
            gpu = calibration.gpu_for_device(info[0]["name"] if info else "")
            if gpu is None:
                self.notes["calibration"] = "this GPU is not in convnet.perf.gpus: no prediction"
                return None
            predicted = calibration.predicted_seconds(op, gpu, batch, kernels, passes)
            return self.add_prediction(ours, predicted, label)
        except Exception as exc:  # the model must never stop a benchmark
            self.notes[f"calibration error {label or ours.name}"] = f"{type(exc).__name__}: {exc}"
            return None

    def to_dict(self, machine: dict | None = None) -> dict:
        from convnet.precision import get_precision
        return {
            "benchmark": self.benchmark,
            "args": self.args,
            "precision": get_precision(),  # the convolutions' default (results may name their own)
            "machine": machine if machine is not None else machine_info(),
            "results": [r.to_dict() for r in self.results],
            "ratios": list(self.ratios),
            "notes": dict(self.notes),
            **({"calibration": _calibration_summary(self.calibration)} if self.calibration else {}),
        }

    @classmethod
    def from_dict(cls, data: dict) -> "Report":
        report = cls(data["benchmark"], args=data.get("args"))
        report.results = [Result.from_dict(r) for r in data.get("results", [])]
        report.ratios = list(data.get("ratios", []))
        report.notes = dict(data.get("notes", {}))
        report.calibration = list(data.get("calibration", {}).get("entries", []))
        return report

    def write(self, out_dir: str | Path | None = None, *, machine: dict | None = None) -> Path:
        return write_json(self.to_dict(machine), self.benchmark, out_dir)

    def table(self) -> str:
        text = format_table(self.results)
        if self.ratios:
            text += "\n\n" + format_ratios(self.ratios)
        if self.notes:
            text += "\n\n" + "\n".join(f"{k}: {v}" for k, v in self.notes.items())
        return text

    def print(self, file=None) -> None:
        print(self.table(), file=file or sys.stdout, flush=True)


def _calibration_summary(entries) -> dict:
    from convnet.perf import calibration
    return calibration.summary(entries)


def _fmt(value, spec: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else format(value, spec)


def _fmt_params(params: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in params.items())


def format_table(results: Iterable[Result]) -> str:
    rows = [("name", "device", "params", "median ms", "min ms", "max ms", "n",
             "GFLOP/s", "GB/s")]
    for r in results:
        rows.append((r.name, r.device, _fmt_params(r.params), _fmt(r.median * 1e3, ".3f"),
                     _fmt(r.min * 1e3, ".3f"), _fmt(r.max * 1e3, ".3f"), str(len(r.samples)),
                     _fmt(r.gflops, ".2f"), _fmt(r.gbps, ".2f")))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for j, row in enumerate(rows):
        lines.append("  ".join(c.ljust(w) if i < 3 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(row, widths))).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_ratios(ratios: Iterable[dict]) -> str:
    lines = ["speed ratios (baseline median / ours median; > 1: ours is faster):"]
    for entry in ratios:
        lines.append(f"  {entry['label']}: {entry['speed_ratio']:.3f}x")
    return "\n".join(lines)


def print_table(results: Iterable[Result], file=None) -> None:
    print(format_table(results), file=file or sys.stdout, flush=True)


def results_dir(out: str | Path | None = None) -> Path:
    """Where JSON goes: ``out``, else ``$CONVNET_BENCH_OUT``, else ``benchmarks/results/``."""
    chosen = out or os.environ.get(ENV_OUT) or DEFAULT_RESULTS_DIR
    path = Path(chosen).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_json(data: dict, benchmark: str, out_dir: str | Path | None = None) -> Path:
    """Write ``data`` as ``<benchmark>-<UTC time>.json`` in the results folder; return the path."""
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    path = results_dir(out_dir) / f"{benchmark}-{stamp}.json"
    path.write_text(json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")
    return path


def read_json(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


def _json_default(value):
    try:
        import numpy as np
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.ndarray):
            return value.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(value, (set, tuple)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    return repr(value)


# --------------------------------------------------------------------------- scripts

def add_common_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options every benchmark script takes."""
    parser.add_argument("--out", default=None,
                        help=f"results folder (default: ${ENV_OUT} or benchmarks/results/)")
    parser.add_argument("--devices", nargs="+", default=None,
                        help="devices to measure (default: every device this machine has)")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes and few repeats (a smoke run, e.g. in CI)")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per case")
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls per case")
    parser.add_argument("--no-json", action="store_true", help="print the table only")
    return parser


def available_devices() -> list[str]:
    """``convnet.devices()``, or just ``['cpu']`` when convnet or a backend cannot load."""
    try:
        import convnet
        return list(convnet.devices())
    except Exception as exc:  # a broken backend must not stop the other measurements
        print(f"note: convnet.devices() failed ({type(exc).__name__}: {exc}); using cpu only",
              file=sys.stderr)
        return ["cpu"]


def open_devices(names: list[str] | None, report: Report) -> list:
    """The named devices (default: all this machine has) as convnet Devices; one that
    cannot open here is noted in the report and skipped."""
    import convnet
    devices = []
    for name in names or available_devices():
        try:
            devices.append(convnet.get_device(name))
        except Exception as exc:
            report.notes[f"skipped {name}"] = f"{type(exc).__name__}: {exc}"
            print(f"skipping {name}: {exc}", file=sys.stderr)
    return devices


def repetitions(args: argparse.Namespace, *, emu_repeats: int = 10,
                emu_max_time_s: float = 15.0) -> dict[str, dict]:
    """measure() settings per device kind ("cpu", "emu", "cuda") from the common options."""
    def warmup(default: int) -> int:
        return args.warmup if args.warmup is not None else default
    return {
        "cpu": dict(warmup=warmup(2), repeats=args.repeats or (5 if args.quick else 20), min_time_s=0.05),
        "emu": dict(warmup=warmup(1), repeats=args.repeats or (3 if args.quick else emu_repeats),
                    max_time_s=3.0 if args.quick else emu_max_time_s),
        "cuda": dict(warmup=warmup(5), repeats=args.repeats or (10 if args.quick else 50), flush_l2=True),
    }


def finish(report: Report, args: argparse.Namespace, failed: bool = False) -> int:
    """Print the report's table and write its JSON (unless ``--no-json``); the exit
    code: 1 when the caller says a case failed or a result was marked WRONG, else 0."""
    report.print()
    if not getattr(args, "no_json", False):
        path = report.write(getattr(args, "out", None))
        print(f"wrote {path}", flush=True)
    wrong = any(key.startswith("WRONG") for key in report.notes)
    return 1 if failed or wrong else 0


__all__ = [
    "BenchmarkError", "Report", "Result", "add_common_args", "available_devices", "open_devices",
    "repetitions",
    "cuda_l2_bytes", "device_kind", "finish", "format_ratios", "format_table", "gpu_info",
    "l2_flush_bytes", "machine_info", "measure", "print_table", "read_json", "results_dir",
    "speed_ratio", "write_json",
]
