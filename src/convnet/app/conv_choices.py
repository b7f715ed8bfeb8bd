"""The convolution algorithm each conv layer of a run ran, recorded in the run and kept
on resume (issue 12).

``conv2d(algorithm="auto")`` follows the performance model's choice
(``convnet.perf.choose``), which depends on the GPU the model is asked about and on a
measured calibration when there is one. Direct and Winograd convolutions round
differently, so a run resumed on another machine, or after a calibration arrived, could
otherwise continue with other arithmetic than it started with, and ``convnet evaluate``
could score a checkpoint with other arithmetic than its validation used.

``recorded(model)``: ``{conv layer name: {"algorithm", "precision", "gpu"}}`` of the
choices its ``nn.Conv2d`` layers followed (only layers with ``algorithm="auto"`` that
ran on a device that runs kernels: on ``cpu`` nothing is chosen); the trainer keeps it in
``settings["conv_algorithms"]``, so every checkpoint carries it.

``pin(model, record, device)``: for the same GPU (the model's key of the device, e.g.
"h100"; ``emu`` asks about the H100 stand-in), each recorded layer runs its recorded
algorithm from then on; for another GPU nothing is pinned (the choice is made anew for
it) and a line says which GPU the record was made for. A layer created with a named
algorithm keeps it; names the model does not have are ignored.
"""
from __future__ import annotations

from .. import nn

__all__ = ["pin", "recorded"]


def _auto_convs(model):
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and getattr(module, "pinned", module.algorithm) == "auto":
            yield name, module


def recorded(model) -> dict:
    """What the model's "auto" conv layers ran (see the module docstring)."""
    out = {}
    for name, module in _auto_convs(model):
        if getattr(module, "record", None) is not None:
            out[name] = dict(module.record)
        elif module.chosen is not None:
            c = module.chosen
            out[name] = {"algorithm": c.algorithm, "precision": c.precision, "gpu": c.gpu}
    return out


def pin(model, record: dict | None, device) -> str | None:
    """Pin the recorded algorithms when ``device`` is modelled as the GPU they were chosen
    for; returns a line to show the user when the record is set aside (else None)."""
    if not record or not device.runs_kernels:
        return None
    from ..perf.choose import gpu_for
    gpu = gpu_for(device)[0].key
    made_for = sorted({entry.get("gpu") for entry in record.values()})
    if made_for != [gpu]:
        return (f"the run's convolution algorithms were chosen for {', '.join(map(str, made_for))};"
                f" {device.name} is modelled as {gpu}: they are chosen anew")
    for name, module in _auto_convs(model):
        entry = record.get(name)
        if entry is not None and entry.get("algorithm") in ("direct", "winograd"):
            module.pinned = "auto"          # still an "auto" layer for the next record
            module.record = dict(entry)
            module.algorithm = entry["algorithm"]
    return None
