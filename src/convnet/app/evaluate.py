"""Evaluation: the top-1 and top-5 error of a network on a prepared split.

::

    convnet evaluate runs/20261127-170000              # a run folder: its best checkpoint, ten-crop
    convnet evaluate runs/x/epoch-0010.safetensors --center --data prepared/

Two ways to look at an image (Krizhevsky et al. 2012, section 4.1):

* ``"center"``: the central ``crop`` x ``crop`` patch (what the training driver
  measures after every epoch);
* ``"ten_crop"``: the four corner patches and the center one, and their mirror
  images; the network's softmax outputs on the ten are averaged (the paper's test).

The error is the fraction of images whose label is not the top-ranked class (top-1)
or not among the five top-ranked (top-5; among all classes when there are fewer than
five). Ties go in the label's favour, as in ``functional.topk_accuracy``. The loss is
the mean cross-entropy of the logits (center) or of the averaged softmax (ten-crop).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from .. import functional as F
from ..data import ten_crop_average
from ..tensor import Tensor, no_grad

__all__ = ["EvalResult", "LoadedRun", "MODES", "evaluate_batches", "evaluate_checkpoint",
           "load_run"]

MODES = ("center", "ten_crop")


@dataclass
class EvalResult:
    """What an evaluation measured, over ``images`` images."""

    mode: str
    images: int
    loss: float
    top1_error: float
    top5_error: float
    seconds: float
    classes: int = 0  # 0: not known; with 5 or fewer, top-5 is 0 by definition and not shown

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        top5 = "" if 0 < self.classes <= 5 else f", top-5 error {100 * self.top5_error:.2f}%"
        return (f"top-1 error {100 * self.top1_error:.2f}%{top5} "
                f"({self.mode.replace('_', '-')}, {self.images} "
                f"image{'' if self.images == 1 else 's'}, loss {self.loss:.4f})")


def _softmax(xp, logits):
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = xp.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


def evaluate_batches(model, batches, mode: str = "center", should_stop=None,
                     on_batch=None) -> EvalResult:
    """Evaluate ``model`` (in eval mode, without gradients) on ``batches``, the batches of
    a ``Loader`` made with ``augment=mode``.

    ``should_stop``: a callable checked before each batch; when it returns True the
    evaluation stops with ``KeyboardInterrupt``. ``on_batch(images)`` is called after
    each batch (for a progress display).
    """
    if mode not in MODES:
        raise ValueError(f"evaluation mode must be one of {MODES}, got {mode!r}")
    model.eval()
    started = time.monotonic()
    count, loss_sum, right1, right5 = 0, 0.0, 0, 0
    with no_grad():
        for batch in batches:
            if should_stop is not None and should_stop():
                raise KeyboardInterrupt
            n = len(batch)
            logits = model(batch.images)
            classes = logits.shape[1]
            labels = batch.labels
            if mode == "ten_crop":
                xp = logits.device.xp
                probs = ten_crop_average(_softmax(xp, logits.data), 10)
                picked = probs[xp.arange(n), xp.asarray(labels)]
                loss_sum += float(-xp.log(xp.maximum(picked, 1e-30)).sum())
                scores = Tensor(probs, device=logits.device)
            else:
                loss_sum += float(F.cross_entropy(logits, labels).item()) * n
                scores = logits
            top1, top5 = F.topk_accuracy(scores, labels, (1, min(5, classes)))
            right1 += round(top1 * n)
            right5 += round(top5 * n)
            count += n
            if on_batch is not None:
                on_batch(n)
    if count == 0:
        raise ValueError("evaluate: the split holds no images")
    return EvalResult(mode=mode, images=count, loss=loss_sum / count,
                      top1_error=1 - right1 / count, top5_error=1 - right5 / count,
                      seconds=time.monotonic() - started, classes=classes)


@dataclass
class LoadedRun:
    """A checkpoint's network with its weights, on ``device``, and the prepared data set
    it was trained on (``settings``: the run's, from the checkpoint)."""

    path: object
    settings: dict
    dataset: object
    model: object
    device: object
    precision: str = "fp32"  # the convolutions' arithmetic the run trained with (or the caller's)


def load_run(checkpoint, data=None, device=None, workers: int | None = None,
             split: str = "val", precision: str | None = None) -> LoadedRun:
    """Load a checkpoint written by the training driver and open its data set, checking
    that the data's classes are the run's and that ``split`` holds images.

    ``checkpoint``: a checkpoint file or a run folder (its best checkpoint). ``data``: a
    prepared data set or an image folder prepared before (default: the one the run
    trained on). ``device``: default ``cuda:0`` when there is one, else ``cpu``.
    ``precision``: the convolutions' arithmetic (default: the run's, from its settings;
    runs older than the setting trained in fp32). Run the model inside
    ``convnet.using_precision(loaded.precision)``.
    """
    from . import checkpoint as ckpt
    from ..precision import check_precision
    from ..backend import get_device
    from ..data import open_prepared, resolve_data
    from ..models import build_model
    from .runs import TrainError, resolve_checkpoint, settings_of, short_list
    from .settings import check_crop, check_recorded_data, default_device

    if precision is not None:
        check_precision(precision, "--precision")
    path = resolve_checkpoint(checkpoint)
    saved = ckpt.load(path)
    settings = settings_of(saved)
    precision = precision or settings.get("precision") or "fp32"
    if data is None:
        check_recorded_data(settings, path)
    data_dir = resolve_data(data if data is not None else settings["data"], None,
                            demo=data is None and settings.get("demo", False), workers=workers,
                            error=TrainError)
    dataset = open_prepared(data_dir)
    if list(dataset.classes) != list(settings["classes"]):
        raise TrainError(f"{data_dir} has classes {short_list(dataset.classes)}, the "
                         f"checkpoint was trained on {short_list(settings['classes'])}")
    if split not in dataset.splits or len(dataset.split(split)) == 0:
        raise TrainError(f"{data_dir} has no images in a {split!r} split to evaluate on")
    check_crop(settings["crop"], dataset)
    device = get_device(device or default_device())
    model = build_model(settings, [device] * settings["columns"])
    ckpt.restore(saved, model)
    from .conv_choices import pin   # the algorithms training ran, where the GPU is the same
    pin(model, settings.get("conv_algorithms"), device)
    return LoadedRun(path=path, settings=settings, dataset=dataset, model=model, device=device,
                     precision=precision)


def evaluate_checkpoint(checkpoint, data=None, mode: str = "ten_crop", device=None,
                        batch_size: int | None = None, workers: int | None = None,
                        split: str = "val", progress: bool | None = None,
                        precision: str | None = None) -> EvalResult:
    """The error of a checkpoint written by the training driver on ``split`` of a
    prepared data set.

    ``checkpoint``: a checkpoint file or a run folder (its best checkpoint).
    ``data``: a prepared data set or an image folder prepared before (default: the
    one the run trained on). ``device``: default ``cuda:0`` when there is one, else
    ``cpu``. ``batch_size``: images per batch (default: the run's; ten-crop runs
    ``batch_size // 10`` images, ten patches each, at a time). ``progress``: show a
    progress bar on stderr (default: when it is a terminal). ``precision``: the
    convolutions' arithmetic (default: the one the run trained with).
    """
    import sys

    from ..arguments import integer
    from ..data import Loader
    from ..precision import using_precision
    from ..progress import ProgressBar
    from .runs import TrainError

    if mode not in MODES:
        raise ValueError(f"evaluation mode must be one of {MODES}, got {mode!r}")
    for name, value in (("--batch-size", batch_size), ("--workers", workers)):
        if value is not None:
            integer(value, name, low=1 if name == "--batch-size" else 0, error=TrainError)
    run = load_run(checkpoint, data, device, workers, split, precision)
    settings = run.settings
    per_batch = batch_size or settings["batch_size"]
    if mode == "ten_crop":
        per_batch = max(1, per_batch // 10)
    with Loader(run.dataset, split, batch_size=per_batch, shuffle=False, workers=workers,
                device=run.device, augment=mode, crop=settings["crop"],
                seed=settings["seed"]) as loader:
        show = sys.stderr.isatty() if progress is None else progress
        bar = ProgressBar(len(loader.split), mode.replace("_", "-"), show, leave=False)
        try:
            with using_precision(run.precision):
                return evaluate_batches(run.model, loader.epoch(0), mode, on_batch=bar.update)
        finally:
            bar.close()
