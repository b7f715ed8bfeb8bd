"""Calibration: the model's predicted time beside a measured one.

The GPU benchmarks (``benchmarks/conv.py``, ``benchmarks/elementwise.py``, run by
``benchmarks/gpu_check.sh``) time kernels on a real GPU; for each timed case they ask
``predicted_seconds(op, gpu, batch, kernels)`` what the model says for the same
launches (the op in ``convnet.perf.layers.OP_SYNTAX``, the rows whose kernel name
contains one of ``kernels``, summed) and record both with ``entry``; ``summary``
gives the ratio per kernel and the median ratio (measured / predicted: above 1 the
GPU is slower than predicted). ``gpu_for_device(name)`` maps the name a driver
reports ("NVIDIA H100 80GB HBM3") to the model's GPU table, None when not there.
"""
from __future__ import annotations

import re
import statistics

from . import gpus

_TABLES: dict = {}


def gpu_for_device(name: str) -> gpus.GPU | None:
    """The GPU table's entry whose short name the device name contains (longest first,
    so "A100" is not taken for "A10"); None if none."""
    normal = re.sub(r"[^a-z0-9]+", " ", str(name).lower())
    for key in sorted(gpus.GPUS, key=len, reverse=True):
        pattern = re.sub(r"(?<=[a-z])(?=[0-9])", r" ?", key)   # "rtx4090" or "rtx 4090"
        if re.search(rf"(?<![a-z0-9]){pattern}(?![0-9])", normal):
            return gpus.GPUS[key]
    return None


def predicted_seconds(op: str, gpu, batch: int, kernels, passes=None, blocks: int = 4) -> float:
    """The predicted time of the launches of ``op`` at ``batch`` on ``gpu`` whose kernel
    names contain one of ``kernels`` (and whose pass is in ``passes``, when given);
    tables are kept in-process per op, GPU and batch."""
    from .layers import parse_op
    from .predict import predict_layers
    g = gpus.gpu(gpu)
    key = (op, g.key, batch, blocks)
    if key not in _TABLES:
        _TABLES[key] = predict_layers([parse_op(op)], g, batch, blocks=blocks)
    rows = [r for r in _TABLES[key].rows if any(k in r.planned.kernel for k in kernels)
            and (passes is None or r.planned.pass_ in passes)]
    if not rows:
        raise ValueError(f"{op}: no launch of {kernels} at batch {batch}")
    return sum(r.prediction.time_s for r in rows)


def entry(label: str, measured_s: float, predicted_s: float, **extra) -> dict:
    """One calibration record: measured, predicted, their ratio (measured / predicted)."""
    return {"label": label, "measured_s": float(measured_s), "predicted_s": float(predicted_s),
            "ratio": float(measured_s) / float(predicted_s), **extra}


def summary(entries) -> dict:
    """The entries, the ratio per label and the median ratio (None without entries)."""
    entries = list(entries)
    ratios = [e["ratio"] for e in entries]
    return {"entries": entries, "ratios": {e["label"]: e["ratio"] for e in entries},
            "median_ratio": statistics.median(ratios) if ratios else None,
            "meaning": "ratio = measured / predicted (> 1: slower than the model predicts)"}
