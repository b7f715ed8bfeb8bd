"""The settings of a ``convnet train`` run: the options (``TrainOptions``), their
defaults and checks, and the devices the columns run on.

A new run takes its settings from the options and the defaults below (which depend
on whether it runs on a GPU); a resumed run takes them from its checkpoint, and only
``--epochs``, ``--lr``, ``--patience``, ``--lr-drops``, the devices and ``--workers``
may change (not ``--schedule``). Every unusable option is a ``TrainError`` naming the option as the
command line spells it.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field

from ..arguments import integer, real
from ..models import PRESETS
from ..optim.schedule import SCHEDULES
from ..precision import PRECISIONS
from .runs import TrainError, settings_of

__all__ = ["TrainOptions", "check_crop", "check_recorded_data", "default_device", "placement",
           "run_settings"]

DEFAULT_EPOCHS = {"gpu": 30, "host": 8}
DEFAULT_BATCH = {"gpu": 128, "host": 32}
# The paper's rate and schedule on a GPU. On the host (8 epochs of the CPU network on the
# demo set, about 53 s each on an idle 2-core machine) 0.004 falling along half a cosine to
# 0 over the run. Measured there (one seed each; center-patch validation error after 6
# epochs): 0.01 with the paper's plateau drops 37.2 % (its first drop comes too late in a
# short run), 0.01 cosine 34.6 %, 0.005 cosine 20.2 %, 0.003 cosine 24.4 %, 0.02 cosine
# 65 % after 4; ten-crop after 8 epochs: 0.005 cosine 22.6 %, 0.004 cosine 19.2 %.
DEFAULT_LR = {"gpu": 0.01, "host": 0.004}
DEFAULT_SCHEDULE = {"gpu": "plateau", "host": "cosine"}
MOMENTUM = 0.9
WEIGHT_DECAY = 0.0005
DEFAULT_PATIENCE = 2
DEFAULT_LR_DROPS = 3
DEFAULT_CROP = 227
DROPOUT = 0.5
# The convolutions' arithmetic (convnet.precision): FP32, the paper's, on every device,
# GPU included: the reproduction's numbers are FP32 ones, and the tensor-core path
# (--precision tf32/bf16) has not been timed on a GPU yet.
DEFAULT_PRECISION = "fp32"


@dataclass
class TrainOptions:
    """The ``convnet train`` options; None means the default (or, with ``resume``, the
    run's own setting). See ``convnet.app.train``."""

    data: str | None = None
    prepared: str | None = None
    out: str | None = None
    device: str | None = None
    devices: list | None = None
    model: str | None = None
    columns: int | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    seed: int | None = None
    workers: int | None = None
    patience: int | None = None
    lr_drops: int | None = None
    schedule: str | None = None
    crop: int | None = None
    widths: tuple | None = None
    weight_std: float | None = None
    dropout: float | None = None
    precision: str | None = None
    parallel: str | None = None  # "data" (convnet.distributed) or "hybrid"; None: one process
    collective_timeout: float | None = None  # seconds (default distributed.DEFAULT_TIMEOUT)
    resume: bool = False
    force: bool = False
    progress: bool | None = None
    final_eval: bool | None = None  # None: True for a new run, the run's own on --resume
    log: object = field(default=None, repr=False)  # one-line messages (default: stderr)
    out_file: object = field(default=None, repr=False)  # epoch summaries (default: stdout)
    comm: object = field(default=None, repr=False)  # a distributed.Communicator (default: the
    #                                                 launcher's, distributed.from_environment)


def default_device() -> str:
    """``cuda:0`` when there is one, else ``cpu``."""
    from .. import devices
    return "cuda:0" if "cuda:0" in devices() else "cpu"


def check_crop(crop: int, dataset) -> None:
    h, w = dataset.image_size[:2]
    if crop > min(h, w):
        raise TrainError(f"the crop {crop} is larger than the prepared images ({h}x{w})")


def check_recorded_data(settings: dict, checkpoint) -> None:
    """A resumed or evaluated run without ``--data`` uses the data set its checkpoint
    names; a TrainError saying so when that folder is gone (moved or deleted)."""
    from pathlib import Path
    recorded = settings.get("data")
    if recorded and not settings.get("demo", False) and not Path(recorded).is_dir():
        raise TrainError(f"the data set this run was trained on, {recorded} (recorded in "
                         f"{checkpoint}), is no longer there; give --data DIR where it is now")


def _option(name: str) -> str:
    return f"--{name.replace('_', '-')}"


def _positive_number(value, name: str) -> None:
    if value is not None and not (isinstance(value, numbers.Real) and not isinstance(value, bool)
                                  and math.isfinite(value) and value > 0):
        raise TrainError(f"{_option(name)} must be a positive number, got {value}")


def _check(options: TrainOptions) -> None:
    """A TrainError for the first option that is not a usable value."""
    for name, low in (("epochs", 1), ("batch_size", 1), ("columns", 1), ("crop", 1),
                      ("patience", 0), ("lr_drops", 0), ("seed", 0), ("workers", 0)):
        if getattr(options, name) is not None:
            integer(getattr(options, name), _option(name), low=low, error=TrainError)
    if options.seed is not None and options.seed >= 2**63:
        raise TrainError(f"--seed must be below 2**63, got {options.seed}")
    _positive_number(options.lr, "lr")
    _positive_number(options.collective_timeout, "collective_timeout")
    if options.schedule not in (None, *SCHEDULES):
        raise TrainError(f"--schedule must be one of {', '.join(SCHEDULES)}, "
                         f"got {options.schedule!r}")
    if options.parallel not in (None, "data", "hybrid"):
        raise TrainError(f"--parallel must be data or hybrid, got {options.parallel!r}")
    _positive_number(options.weight_std, "weight_std")
    if options.dropout is not None:
        real(options.dropout, "--dropout", low=0, high=1, high_open=True, error=TrainError)
    if options.model is not None and options.model not in PRESETS:
        raise TrainError(f"--model must be one of {', '.join(PRESETS)}, got {options.model!r}")
    if options.columns not in (None, 1, 2):
        raise TrainError(f"--columns must be 1 or 2, got {options.columns}")
    if options.precision is not None and options.precision not in PRECISIONS:
        raise TrainError(f"--precision must be one of {', '.join(PRECISIONS)}, "
                         f"got {options.precision!r}")


def _show(value):
    return list(value) if isinstance(value, (tuple, list)) else value


def _resumed(options: TrainOptions, saved) -> dict:
    """The checkpoint's settings, with the options a resumed run may change."""
    settings = dict(settings_of(saved))
    settings.setdefault("precision", "fp32")  # runs from before the option were FP32
    settings.setdefault("schedule", "plateau")  # and used the paper's schedule
    fixed = {"model": options.model, "widths": options.widths, "weight_std": options.weight_std,
             "dropout": options.dropout, "crop": options.crop, "seed": options.seed,
             "batch_size": options.batch_size, "precision": options.precision,
             "schedule": options.schedule}
    clashes = [f"{_option(k)} {_show(v)} (the run has {_show(settings.get(k))})"
               for k, v in fixed.items() if v is not None and _show(v) != _show(settings.get(k))]
    if clashes:
        raise TrainError("a resumed run keeps its settings; these differ: " + "; ".join(clashes)
                         + " (start a new run with another --out instead)")
    for k in ("epochs", "patience", "lr_drops", "final_eval"):
        if getattr(options, k) is not None:
            settings[k] = getattr(options, k)
    return settings


def run_settings(options: TrainOptions, saved, gpu: bool) -> dict:
    """The run's settings: from the checkpoint ``saved`` when resuming (the fixed ones
    must not be given differently), else from the options and the defaults (those of
    a GPU run when ``gpu``)."""
    _check(options)
    if saved is not None:
        return _resumed(options, saved)
    kind = "gpu" if gpu else "host"
    model = options.model or ("alexnet" if gpu else "alexnet-small")
    widths = tuple(options.widths) if options.widths is not None else PRESETS[model]["widths"]
    return {
        "model": model,
        "widths": list(widths),
        "weight_std": options.weight_std or PRESETS[model]["weight_std"],
        "dropout": DROPOUT if options.dropout is None else options.dropout,
        "precision": options.precision or DEFAULT_PRECISION,
        "crop": options.crop or DEFAULT_CROP,
        "seed": 0 if options.seed is None else options.seed,
        "batch_size": options.batch_size or DEFAULT_BATCH[kind],
        "epochs": options.epochs or DEFAULT_EPOCHS[kind],
        "lr": options.lr or DEFAULT_LR[kind],
        "schedule": options.schedule or DEFAULT_SCHEDULE[kind],
        "momentum": MOMENTUM,
        "weight_decay": WEIGHT_DECAY,
        "patience": DEFAULT_PATIENCE if options.patience is None else options.patience,
        "lr_drops": DEFAULT_LR_DROPS if options.lr_drops is None else options.lr_drops,
        "final_eval": True if options.final_eval is None else bool(options.final_eval),
    }


def placement(options: TrainOptions, saved_columns: int | None):
    """(columns, devices) from --device, --devices and --columns."""
    from ..backend import DeviceError, get_device
    names = list(options.devices) if options.devices else None
    columns = options.columns or (len(names) if names else None) or saved_columns or 1
    if names is None:
        names = [options.device or default_device()] * columns
    elif options.device is not None:
        raise TrainError("give --device (one device for every column) or --devices (one per "
                         "column), not both")
    if len(names) != columns:
        raise TrainError(f"--columns {columns} needs {columns} device(s) in --devices, got "
                         f"{len(names)}: {' '.join(names)}")
    try:
        return columns, [get_device(n) for n in names]
    except DeviceError as exc:
        raise TrainError(str(exc)) from None
