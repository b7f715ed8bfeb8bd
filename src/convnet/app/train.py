"""The training driver: ``convnet train`` and ``train(TrainOptions(...))``.

Usage
-----
::

    convnet train                      # the built-in demo: see "With no arguments" below
    convnet train --data ~/imagenet --device cuda:0 --epochs 90
                                       # an ImageNet-style folder (train/<class>/*.JPEG,
                                       # val/<class>/*), prepared once into ~/imagenet-prepared
    convnet train --data prepared/ --out runs/alexnet
    convnet train --out runs/alexnet --resume   # go on after Ctrl-C or a crash
    convnet train --resume             # go on with the newest run under ./runs
    convnet evaluate runs/alexnet      # ten-crop top-1/top-5 error of the run's best checkpoint

With no arguments, ``convnet train`` trains on a generated demo set of 10 classes
(3,000 training and 500 validation images, textured shapes on cluttered backgrounds;
made and prepared under ``~/.cache/convnet/demo`` on first use, in about 15 s) on
``cuda:0`` when there is one, else on ``cpu``. On a GPU it trains the paper's AlexNet
(batch 128, 30 epochs); on a CPU an AlexNet-shaped network narrow enough for the host
(``--model alexnet-small``: 24/48/64/64/48/256/256 filters and units, batch 32, 8
epochs, the cosine schedule from 0.004): 46-53 s an epoch on an idle 2-core machine,
about 8.5 minutes in all on a fresh clone (demo set included), ending near 18% ten-crop
top-1 error on the validation images (chance: 90%; one measured run: 17.6%). The run goes into
``./runs/<date>-<time>``.

What a run does (Krizhevsky, Sutskever & Hinton 2012):

* Data: random ``crop`` x ``crop`` patches (227) of the 256 x 256 prepared images,
  mirrored at random, with PCA lighting from the training set's RGB statistics and
  the mean image subtracted (sections 4.1, 4.2); the validation images' center
  patch after every epoch; the ten-patch test (corners, center, mirrored; softmax
  averaged) on the final weights.
* SGD with momentum 0.9 and weight decay 0.0005 (section 5); on a GPU learning rate
  0.01, divided by 10 when the validation top-1 error has not improved for
  ``--patience`` epochs, at most ``--lr-drops`` (3) times (``--schedule plateau``).
  On a CPU run of a few epochs, 0.004 falling to 0 along half a cosine over the run
  (``--schedule cosine``, ``optim.schedule``): the plateau's first drop comes too late
  in a short run to help. Weights N(0, 0.01) for the paper's
  network; the narrow one starts from N(0, 0.05), as 0.01 leaves too little signal
  through its small fan-ins to learn in a few epochs.

The run folder (``--out``):

* ``epoch-NNNN.safetensors``: a checkpoint after every epoch (``convnet.checkpoint``:
  weights, SGD velocities, learning rate, schedule, settings), written to a temporary
  file, fsynced and renamed; the last two and the best (lowest validation top-1
  error) are kept.
* ``metrics.jsonl``: one JSON object per line: ``{"event": "start", ...settings}``,
  one ``{"event": "epoch", ...}`` per epoch (train loss and top-1/top-5 error, val
  loss and errors, lr, seconds, images/s), ``{"event": "final", ...}`` (the ten-crop
  evaluation) and ``resume``/``interrupted`` (with the signal)/``stopped``/``failed``
  events, and ``unfinished`` when a resumed run's previous process was killed (its lock
  was left behind). A resumed run appends; where an epoch appears twice, the later
  line is the one that counts.
* ``curves.png`` and ``filters.png`` at the end of a run (``convnet show``; only with
  matplotlib, the ``plot`` extra); ``events.out.tfevents.*``: TensorBoard scalars of
  every epoch, only where a writer is installed (``convnet.app.board``).

``--resume`` continues from the newest checkpoint that loads (a truncated or corrupt
one is skipped with a warning; if none loads, it stops with an error): weights,
velocities, learning rate, schedule; the data order, augmentation and dropout masks
of each epoch depend on (seed, epoch) only, so a resumed run trains exactly as an
uninterrupted one. The run's settings (model, widths, crop, seed, batch size) come
from the checkpoint; ``--epochs``, ``--lr``, ``--patience``, ``--device``/``--devices``/
``--columns`` (a one-column checkpoint resumes as two columns and back) and
``--workers`` may change. Without ``--resume``, an ``--out`` that holds another run
is refused (``--force`` deletes that run's checkpoints and metrics and starts afresh).

Data parallelism (``--parallel data``, one process per device, ``convnet.distributed``):
launched by ``mpirun -n N convnet train --parallel data ...`` (or ``mpiexec``), or with
torchrun-style variables (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``,
``LOCAL_RANK``; ``cuda`` becomes ``cuda:LOCAL_RANK``). ``--batch-size`` is the global
batch, which must divide evenly over the ranks; each rank trains on its share of every
batch (the union is the single-process batch, same augmentation), the gradients are
averaged over the ranks in buckets while the backward pass runs, and every rank takes the
same step. At start-up the ranks compare their options and data (a rank that differs
is refused, saying what differs); rank 0 opens (or resumes) the run and sends the
settings, weights and momentum to the others; rank 0 alone writes the run folder
(checkpoints, metrics, figures) and prints progress. Validation and the ten-crop test
are sharded the same way and their counts summed. Dropout draws the single-process
masks (every rank the same seeds; each its rows of the batch's masks, by the row offset
of its share), so a data-parallel run is the single-process run up to the rounding of
the gradient sums, with dropout or without. Every
collective has a timeout (``--collective-timeout``, default 300 s): a rank that dies
or hangs ends the others with one line naming the rank and the step.

Hybrid parallelism (``--parallel hybrid``, ``convnet.models.hybrid``, Krizhevsky 2014):
launched the same way; conv1-conv5 data-parallel, fc6-fc8 split over the ranks (each
holds 1/K of their units). Rank 0's one-column network (new, or resumed) is scattered
to the ranks; checkpoints gather the slices back into the one-column layout (so a
hybrid run resumes as one process and back); dropout draws the single-process masks;
validation runs over each rank's share of every batch, the logits gathered.

Ctrl-C stops at the next step boundary: the loader shuts down, the checkpoint of
the last complete epoch stays as it was, and the command exits with 130 (a second
Ctrl-C stops at once). A loss that is not finite stops the run (exit 1) before the
weights change; the checkpoints are untouched.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np

from . import checkpoint as ckpt
from .. import nn
from ..data import Loader, open_prepared, resolve_data
from ..data._pool import one_line
from ..models import build_model, one_to_two_columns, two_to_one_columns
from ..optim import SGD, make_schedule
from ..progress import ProgressBar, clock, say
from ..step import train_step
from ..distributed import CollectiveTimeout, ConfigMismatch, DEFAULT_TIMEOUT, SingleProcess
from . import board, conv_choices, show
from .errors import Terminated
from .evaluate import EvalResult, evaluate_batches
from .runs import (METRICS, TrainError, checkpoint_path, clean_temporaries, open_run, plural,
                   prune, quoted, run_checkpoints, settings_of, short_list)
from .settings import TrainOptions, check_crop, check_recorded_data, placement, run_settings

__all__ = ["TrainError", "TrainOptions", "TrainingRun", "TrainingStopped", "train"]

# Steps whose loss and accuracy the driver reads back at once: on a GPU the steps in
# between queue without a host synchronisation (convnet.train_step reads nothing).
READ_EVERY = 8


class TrainingStopped(RuntimeError):
    """Training could not go on (a loss that is not finite); the checkpoints are untouched."""


def _reseed_dropout(model, seed: int, epoch: int) -> None:
    """Each dropout layer's masks in epoch ``epoch`` from (seed, epoch, layer) alone, so a
    resumed run draws what an uninterrupted one would. Every rank of a parallel run draws
    the same seeds as one process (data-parallel ranks take their rows of the masks by
    ``row_offset``, set by ``DataParallel.step``; hybrid ranks apply the whole batch's)."""
    for i, (_, module) in enumerate(model.named_modules()):
        if isinstance(module, nn.Dropout):
            module.reseed([seed, epoch, i])


def _convert_columns(state: dict, columns_from: int, columns_to: int) -> dict:
    if columns_from == columns_to:
        return state
    return (one_to_two_columns if columns_to == 2 else two_to_one_columns)(state)


# --------------------------------------------------------------------------- Ctrl-C

class _StopOnInterrupt:
    """While active, the first Ctrl-C (SIGINT) only sets ``requested`` (the loop stops at
    the next step boundary); a second one interrupts at once."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\ntrain: stopping after this step (Ctrl-C again to stop at once)",
              file=sys.stderr, flush=True)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False

    def __call__(self) -> bool:
        return self.requested


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


# --------------------------------------------------------------------------- the run

class TrainingRun:
    """One training run: the model, optimizer, loaders and run folder, epoch by epoch.

    Made from the options, it has opened (or resumed) its run folder and built the model
    and optimizer (``settings``, ``model``, ``optimizer``, ``epoch``); ``run()`` trains.
    """

    def __init__(self, options: TrainOptions):
        self.options = options
        self.dp = None
        self.parallel = options.parallel  # None, "data" or "hybrid"
        self._lock = None
        self.comm, self._own_comm = _communicator(options)
        self.leader = self.comm.rank == 0
        self.log = (options.log or say) if self.leader else _quiet
        self.out_file = (options.out_file or sys.stdout) if self.leader else _Discard()
        try:
            if options.parallel is not None:
                self._open_parallel(options)
            else:
                self.out, saved, self._lock = open_run(options, self.log)
                self._open(options, saved)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Let go of the run folder (its lock); ``run()`` does this when it ends."""
        if self.dp is not None:
            self.dp.close()
            self.dp = None
        if self._lock is not None:
            self._lock.release()
        if self._own_comm and not failed_job():
            self.comm.close()
            self._own_comm = False

    # ------------------------------------------------------------------ data parallelism
    def _open_parallel(self, options: TrainOptions) -> None:
        """Every rank's options compared; rank 0 opens the run and tells the others its
        settings; every rank opens the data (digests compared) and builds the model; the
        weights and momentum come from rank 0."""
        from ..distributed import DataParallel
        from ..distributed.config import check_same_configuration, data_digest
        comm = self.comm
        try:
            check_same_configuration(comm, _requested(options))
        except ConfigMismatch as exc:
            raise TrainError(str(exc)) from None

        def lead():
            self.out, saved, self._lock = open_run(options, self.log)
            self._open(options, saved)
            return {"settings": self.settings, "out": str(self.out), "epoch": self.epoch,
                    "schedule": self.schedule.state(), "lr": self.optimizer.lr,
                    "resumed_from": self.resumed_from and str(self.resumed_from)}

        shared = _from_leader(comm, lead)
        _on_every_rank(comm, lambda: None if self.leader else self._follow(options, shared))
        batch = self.settings["batch_size"]
        if batch % comm.size:
            raise TrainError(f"--batch-size {batch} does not divide evenly over {comm.size} "
                             f"ranks (each takes an equal share of every batch): use a "
                             f"multiple of {comm.size}")
        try:
            check_same_configuration(comm, {"data digest": data_digest(self.dataset)})
        except ConfigMismatch as exc:
            raise TrainError(str(exc)) from None
        if self.parallel == "hybrid":
            self._become_hybrid()
        else:
            self.dp = DataParallel(self.model, self.optimizer, comm)
            self.dp.broadcast_state()

    def _become_hybrid(self) -> None:
        """The one-column model rank 0 built (or resumed) becomes ``HybridAlexNet``'s
        pieces on every rank: its weights and momentum scattered from rank 0."""
        from ..models.hybrid import hybrid_alexnet
        s, comm = self.settings, self.comm
        if s["columns"] != 1:
            raise TrainError("--parallel hybrid splits one column over the ranks: give "
                             "--columns 1 (or resume a run with --columns 1)")
        self.whole_parameters = self.model.num_parameters()
        whole = self.model.state_dict() if self.leader else None
        velocity = self.optimizer.state_dict()["velocity"] if self.leader else None
        extra = {"dropout": s["dropout"]} if "dropout" in s else {}
        try:
            model = hybrid_alexnet(comm, num_classes=len(s["classes"]), input_size=s["crop"],
                                   widths=tuple(s["widths"]), weight_std=s["weight_std"],
                                   seed=s["seed"], device=self.devices[0], **extra)
        except ValueError as exc:
            raise TrainError(f"--parallel hybrid: {exc}") from None
        model.load_state_dict(model.scatter_state_dict(whole))
        optimizer = SGD(model, lr=self.optimizer.lr, momentum=s["momentum"],
                        weight_decay=s["weight_decay"])
        mine = model.scatter_state_dict(velocity)
        device = self.devices[0]
        for name, v in optimizer.velocity.items():
            v[...] = device.asarray(mine[name], dtype=v.dtype)
        optimizer.steps = comm.broadcast_object(self.optimizer.steps)
        self.model, self.optimizer = model, optimizer

    def _hybrid_step(self, batch, stop: bool):
        """One step of the hybrid model; whether any rank wants to stop (Ctrl-C)."""
        from ..models.hybrid import hybrid_step
        step = hybrid_step(self.model, self.optimizer, batch.images, batch.labels,
                           check_finite=False)
        flag = np.array([float(stop)])
        self.comm.allreduce([flag])
        step.stop_requested = bool(flag[0] > 0)
        return step

    def _follow(self, options: TrainOptions, shared: dict) -> None:
        """A rank > 0: rank 0's settings, the same data and model, rank 0's schedule."""
        self.settings = s = shared["settings"]
        self.out = Path(shared["out"])
        self._lock = None
        _, self.devices = placement(options, s["columns"])
        self._open_data(_data_folder(options, s, options.resume, self.log))
        try:
            self.model = build_model(s, self.devices)
        except (TypeError, ValueError) as exc:
            raise TrainError(str(exc)) from None
        self.optimizer = SGD(self.model, lr=shared["lr"], momentum=s["momentum"],
                             weight_decay=s["weight_decay"])
        self.schedule = self._make_schedule(shared["schedule"])
        self.epoch = shared["epoch"]
        self.resumed_from = shared["resumed_from"] and Path(shared["resumed_from"])

    def _open(self, options: TrainOptions, saved) -> None:
        columns, devices = placement(options, saved and settings_of(saved)["columns"])
        gpu = devices[0].kind == "cuda"
        self.settings = run_settings(options, saved, gpu)
        if saved is not None and options.data is None:
            check_recorded_data(self.settings, saved.path)
        data_dir = _data_folder(options, self.settings, saved is not None, self.log)
        self._open_data(data_dir)
        classes = list(self.dataset.classes)
        if saved is not None and classes != list(self.settings["classes"]):
            raise TrainError(f"{data_dir} has classes {short_list(classes)}, the run was trained "
                             f"on {short_list(self.settings['classes'])}")
        saved_columns = self.settings.get("columns", columns)
        self.settings.update(classes=classes, columns=columns, data=str(Path(data_dir).resolve()),
                             demo=options.data is None and (saved is None
                                                            or self.settings.get("demo", False)))
        self.devices = devices
        try:
            self.model = build_model(self.settings, devices)
        except (TypeError, ValueError) as exc:  # widths, crop: alexnet() says what is wrong
            raise TrainError(str(exc)) from None
        self.optimizer = SGD(self.model, lr=self.settings["lr"], momentum=self.settings["momentum"],
                             weight_decay=self.settings["weight_decay"])
        self.schedule = self._make_schedule()
        self.epoch = 0
        self.resumed_from = None
        if saved is not None:
            self._restore(saved, saved_columns)

    def _open_data(self, data_dir) -> None:
        """The prepared data set: at least 2 classes, crops that fit, a val split or not."""
        self.dataset = open_prepared(data_dir)
        classes = list(self.dataset.classes)
        if len(classes) < 2:
            raise TrainError(f"{data_dir} has {plural(len(classes), 'class', 'classes')} "
                             f"({short_list(classes)}): a classifier needs at least 2 to tell "
                             f"apart (its loss would be 0 from the start)")
        check_crop(self.settings["crop"], self.dataset)
        if "val" in self.dataset.splits and len(self.dataset.split("val")):
            self.has_val = True
        else:
            self.has_val = False
            kept = ("" if self.settings.get("schedule") == "cosine"
                    else ", and the learning rate stays at its value (the plateau schedule "
                         "needs them)")
            self.log(f"train: warning: {data_dir} has no validation images: no per-epoch "
                     f"validation{kept}")

    def _restore(self, saved, saved_columns: int) -> None:
        columns = self.settings["columns"]
        if saved_columns != columns:
            saved.model = _convert_columns(saved.model, saved_columns, columns)
            saved.optimizer["velocity"] = _convert_columns(saved.optimizer["velocity"],
                                                           saved_columns, columns)
            saved.optimizer.pop("lr_multipliers", None)
            saved.optimizer.pop("weight_decay_multipliers", None)
        ckpt.restore(saved, self.model, self.optimizer)
        set_aside = conv_choices.pin(self.model, self.settings.get("conv_algorithms"),
                                     self.devices[0])
        if set_aside:
            self.log(f"train: {set_aside}")
        self.schedule = self._make_schedule(saved.state.get("schedule"))
        self.epoch = int(saved.state["epoch"])
        self.resumed_from = saved.path
        if self.options.lr is not None:
            if self.schedule.per_step:  # the cosine starts from the new rate
                self.schedule.base_lr = float(self.options.lr)
            self.optimizer.set_lr(self.options.lr)
        self.settings["lr"] = self.optimizer.lr

    def _make_schedule(self, state: dict | None = None):
        """The run's learning-rate schedule (``settings["schedule"]``; runs from before
        the setting: the paper's plateau), resumed from ``state`` when given."""
        s = self.settings
        self._steps_per_epoch = max(1, -(-len(self.dataset.split("train")) // s["batch_size"]))
        return make_schedule(s.get("schedule", "plateau"), s, self._steps_per_epoch, state)

    # ------------------------------------------------------------------ helpers
    def _print(self, text: str) -> None:
        print(text, file=self.out_file, flush=True)

    def _record(self, event: str, **fields) -> None:
        if not self.leader:
            return
        line = {"event": event, "time": _dt.datetime.now(_dt.timezone.utc).isoformat(
            timespec="seconds"), **fields}
        with open(self.out / METRICS, "a") as f:
            f.write(json.dumps(line) + "\n")
        if event in ("epoch", "final"):
            self._scalars(event, fields)

    def _scalars(self, event: str, fields: dict) -> None:
        """TensorBoard scalars of an epoch or of the final evaluation, when a writer is
        installed (``board``)."""
        if getattr(self, "_board", None) is None:
            self._board = board.Scalars(self.out, fresh=self.resumed_from is None)
        (self._board.epoch if event == "epoch" else self._board.final)(fields["epoch"], fields)

    def _end_of_run(self) -> None:
        """Close the TensorBoard writer; draw the learning curves and conv1's filters into
        the run folder (``show``), or say in one line why not (no matplotlib, an error)."""
        if not self.leader:
            return
        if getattr(self, "_board", None) is not None:
            self._board.close()
        try:
            drawn = [show.draw(figure, self.out).name for figure in ("curves", "filters")]
        except show.PlotUnavailable:
            self.log(f"train: no figures: matplotlib is not installed ({show.INSTALL})")
        except (TrainError, OSError, ValueError, RuntimeError) as exc:
            self.log(f"train: no figures: {exc}")
        else:
            self.log(f"train: figures {', '.join(drawn)} in {self.out}")

    def _record_end(self, event: str, **fields) -> None:
        """Record how the run ended, or warn when even that cannot be written (a full disk)."""
        if not self.leader:
            return
        try:
            self._record(event, **fields)
        except OSError as exc:
            self.log(f"train: warning: cannot record {event!r} in {METRICS}: {one_line(exc)}")

    def _loader(self, split: str, augment: str, batch_size: int):
        return Loader(self.dataset, split, batch_size=batch_size, seed=self.settings["seed"],
                      workers=self.options.workers, device=self.devices[0], augment=augment,
                      crop=self.settings["crop"],
                      shard=(self.comm.rank, self.comm.size) if self.parallel else None)

    def _save(self, metrics: dict) -> Path:
        if self.parallel == "hybrid":  # every rank: the slices gathered into one column
            model_state = self.model.gather_state_dict()
            optimizer_state = self.optimizer.state_dict()
            optimizer_state["velocity"] = self.model.gather_state_dict(optimizer_state["velocity"])
        if not self.leader:
            return None
        if self.parallel != "hybrid":
            model_state, optimizer_state = self.model.state_dict(), self.optimizer.state_dict()
        ran = conv_choices.recorded(self.model)  # the convolutions' algorithms, kept on resume
        if ran:
            self.settings["conv_algorithms"] = ran
        state = {"epoch": self.epoch, "settings": self.settings,
                 "schedule": self.schedule.state(), "metrics": metrics,
                 "saved": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        try:
            path = ckpt.save(checkpoint_path(self.out, self.epoch), model_state,
                             optimizer_state, state)
        except OSError as exc:  # disk full, permissions: the earlier checkpoints stay whole
            raise TrainingStopped(
                f"epoch {self.epoch}: {one_line(exc)}; the checkpoints written before are "
                f"untouched (make room, then continue with --resume)") from exc
        prune(self.out, self.schedule.best_epoch)
        return path

    # ------------------------------------------------------------------ epochs
    def _train_epoch(self, loader, stop) -> dict:
        s = self.settings
        _reseed_dropout(self.model, s["seed"], self.epoch)
        bar = ProgressBar(len(loader.split), f"epoch {self.epoch + 1}/{s['epochs']}", self.show,
                          leave=False)
        count, loss_sum, right1, right5 = 0, 0.0, 0.0, 0.0
        started = time.monotonic()
        pending = []  # (step number, batch size, StepResult) not read back yet

        def read_pending():  # the steps' numbers, read every READ_EVERY steps: no per-step sync
            nonlocal count, loss_sum, right1, right5
            for number, n, step in pending:
                try:
                    loss, top1, top5 = step.loss, step.top1, step.top5
                except FloatingPointError as exc:
                    raise TrainingStopped(
                        f"epoch {self.epoch + 1}, step {number + 1}: {exc}. The run stopped; "
                        f"its checkpoints are untouched (resume with a lower --lr)") from None
                count += n
                loss_sum, right1, right5 = loss_sum + loss * n, right1 + top1 * n, right5 + top5 * n
            pending.clear()

        try:
            for batch in loader.epoch(self.epoch):
                n = batch.total if self.parallel else len(batch)
                if self.schedule.per_step:
                    self.optimizer.set_lr(self.schedule.lr_at(
                        self.epoch * self._steps_per_epoch + batch.number))
                try:
                    with np.errstate(over="ignore", invalid="ignore"):  # caught below instead
                        if self.parallel:
                            self.comm.step = f"{batch.number + 1} of epoch {self.epoch + 1}"
                        if self.parallel == "hybrid":
                            step = self._hybrid_step(batch, stop())
                        elif self.parallel:
                            step = self.dp.step(batch.images, batch.labels, batch.total, stop())
                        else:
                            step = train_step(self.model, self.optimizer, batch.images,
                                              batch.labels)
                except FloatingPointError as exc:
                    raise TrainingStopped(
                        f"epoch {self.epoch + 1}, step {batch.number + 1}: {exc}. The run stopped; "
                        f"its checkpoints are untouched (resume with a lower --lr)") from None
                pending.append((batch.number, n, step))
                if len(pending) >= READ_EVERY or step.ready:
                    read_pending()
                    bar.update(n, f"loss {loss_sum / count:.3f} top-1 err {_pct(1 - right1 / count)}")
                else:
                    bar.update(n)
                if (step.stop_requested if self.parallel else stop()):
                    raise KeyboardInterrupt
            read_pending()
        finally:
            bar.close()
        seconds = time.monotonic() - started
        return {"train_loss": loss_sum / count, "train_top1_error": 1 - right1 / count,
                "train_top5_error": 1 - right5 / count, "train_seconds": seconds,
                "images_per_second": count / seconds if seconds > 0 else None}

    def _evaluate(self, loader, epoch: int, mode: str, stop, desc: str):
        bar = ProgressBar(len(loader.split), desc, self.show, leave=False)
        try:
            if self.parallel is None:
                return evaluate_batches(self.model, loader.epoch(epoch), mode, should_stop=stop,
                                        on_batch=bar.update)
            if self.parallel == "hybrid":  # every rank evaluates the whole split
                return evaluate_batches(self.model, self.model.global_batches(loader.epoch(epoch)),
                                        mode, should_stop=stop, on_batch=bar.update)
            from ..distributed.data_parallel import share_of
            mine = share_of(len(loader.split), loader.batch_size, self.comm.rank, self.comm.size)
            result = evaluate_batches(
                self.model, (b for b in loader.epoch(epoch) if len(b)), mode, should_stop=stop,
                on_batch=lambda n: bar.update(n * self.comm.size)) if mine else None
            return self._sum_evaluations(result, mine, mode)
        finally:
            bar.close()

    def _sum_evaluations(self, result, images: int, mode: str) -> EvalResult:
        """Every rank's evaluation of its share of a split (``result`` of ``images``
        images, None for none) as the whole split's: counts and loss sums added."""
        right1 = right5 = loss = seconds = 0.0
        if result is not None:
            loss, seconds = result.loss * images, result.seconds
            right1, right5 = (1 - result.top1_error) * images, (1 - result.top5_error) * images
        count, loss, right1, right5, seconds = self.dp.sum([images, loss, right1, right5, seconds])
        if count == 0:
            raise ValueError("evaluate: the split holds no images")
        return EvalResult(mode=mode, images=int(round(count)), loss=loss / count,
                          top1_error=1 - round(right1) / count,
                          top5_error=1 - round(right5) / count,
                          seconds=seconds / self.comm.size, classes=len(self.settings["classes"]))

    def run(self) -> dict:
        """Train to the last epoch; the run folder's lock is released when this returns or
        raises."""
        from ..precision import using_precision
        try:
            with using_precision(self.settings["precision"]):  # the run's convolutions
                return self._run()
        finally:
            self.close()

    def _errors(self, top1: float, top5: float) -> str:
        """``top-1 err 41.2%, top-5 18.0%``; top-5 only with more than 5 classes (with 5
        or fewer every label is among the top five)."""
        text = f"top-1 err {_pct(top1)}"
        return text + (f", top-5 {_pct(top5)}" if len(self.settings["classes"]) > 5 else "")

    def _note_unfinished(self) -> None:
        """Record that the run's previous process ended without releasing the run folder
        (killed, or the machine stopped): ``lock_run`` found its lock and said so."""
        if self._lock is not None and self._lock.stale is not None:
            self._record_end("unfinished", epoch=self.epoch, previous=self._lock.stale)

    def _run(self) -> dict:
        s = self.settings
        self.show = sys.stderr.isatty() if self.options.progress is None else self.options.progress
        self.show = self.show and self.leader
        if self.leader:
            self.out.mkdir(parents=True, exist_ok=True)
            clean_temporaries(self.out)
        params = getattr(self, "whole_parameters", None) or self.model.num_parameters()
        where = " ".join(d.name for d in self.devices) + (
            f" x {plural(self.comm.size, 'rank')} ({self.parallel}, {self.comm.backend})"
            if self.parallel else "")
        if self.epoch >= s["epochs"]:
            self._print(f"train: {self.out} has finished its {plural(s['epochs'], 'epoch')}; give "
                        f"--epochs N > {self.epoch} with --resume to train on")
            return {"out": str(self.out), "epochs": self.epoch, "final": None}
        self._note_unfinished()
        if self.resumed_from is not None:
            self.log(f"train: resuming {self.out} after epoch {self.epoch} from "
                     f"{self.resumed_from.name} (lr {self.optimizer.lr:g})")
            self._record("resume", epoch=self.epoch, checkpoint=self.resumed_from.name,
                         lr=self.optimizer.lr, devices=[d.name for d in self.devices])
        else:
            self._record("start", **s, parameters=params, devices=[d.name for d in self.devices],
                         **({"parallel": self.parallel, "ranks": self.comm.size,
                             "backend": self.comm.backend} if self.parallel else {}))
        self._print(f"train: {s['model']} ({params:,} parameters, widths "
                    f"{'/'.join(map(str, s['widths']))}, {plural(s['columns'], 'column')}) on "
                    f"{where}; {plural(len(self.dataset.split('train')), 'training image')} of "
                    f"{plural(len(s['classes']), 'class', 'classes')} from {s['data']}; batch "
                    f"{s['batch_size']}, {plural(s['epochs'], 'epoch')}; run folder {self.out}")
        started = time.monotonic()
        metrics = {}
        with _StopOnInterrupt() as stop:
            try:
                with self._loader("train", "train", s["batch_size"]) as train_loader, \
                        (self._loader("val", "center", s["batch_size"]) if self.has_val
                         else contextlib.nullcontext()) as val_loader:
                    while self.epoch < s["epochs"]:
                        metrics = self._one_epoch(train_loader, val_loader, stop)
                    final = None
                    if s.get("final_eval", True) and self.has_val:
                        final = self._final(stop)
            except KeyboardInterrupt as exc:
                self._record_end("interrupted", epoch=self.epoch,
                             signal="SIGTERM" if isinstance(exc, Terminated) else "SIGINT")
                if not self.leader:
                    pass
                elif run_checkpoints(self.out):
                    self.log(f"train: interrupted; {self.out} keeps the checkpoint of epoch "
                             f"{self.epoch}: continue with `"
                             f"{quoted('convnet', 'train', '--resume', '--out', self.out)}`")
                else:
                    self.log("train: interrupted before the first epoch ended; no checkpoint")
                raise
            except TrainingStopped as exc:
                self._record_end("stopped", epoch=self.epoch, reason=str(exc))
                raise
            except Exception as exc:  # a worker, a corrupt shard, ...: said by the command line
                self._record_end("failed", epoch=self.epoch, reason=one_line(exc))
                raise
        self._end_of_run()
        if self.parallel:
            self.comm.barrier()  # rank 0's last checkpoint is on disk before any rank ends
        total = time.monotonic() - started
        self._print(f"train: done in {clock(total)}; checkpoints in {self.out}")
        return {"out": str(self.out), "epochs": self.epoch, "last": metrics, "final": final,
                "seconds": total}

    def _one_epoch(self, train_loader, val_loader, stop) -> dict:
        s = self.settings
        lr = (self.schedule.lr_at(self.epoch * self._steps_per_epoch) if self.schedule.per_step
              else self.optimizer.lr)  # the rate the epoch starts with
        dropped = False
        started = time.monotonic()
        metrics = self._train_epoch(train_loader, stop)
        self.epoch += 1
        line = (f"epoch {self.epoch}/{s['epochs']}: train loss {metrics['train_loss']:.3f} "
                f"{self._errors(metrics['train_top1_error'], metrics['train_top5_error'])}")
        if self.has_val:
            val = self._evaluate(val_loader, 0, "center", stop, f"val {self.epoch}")
            metrics.update(val_loss=val.loss, val_top1_error=val.top1_error,
                           val_top5_error=val.top5_error)
            line += f" | val loss {val.loss:.3f} {self._errors(val.top1_error, val.top5_error)}"
            dropped = self.schedule.step(val.top1_error, self.epoch)
            if dropped:
                self.optimizer.set_lr(lr / 10)
        metrics.update(epoch=self.epoch, lr=lr, seconds=time.monotonic() - started)
        line += (f" | lr {lr:g} | {metrics['train_seconds']:.0f} s, "
                 f"{metrics['images_per_second'] or 0:.0f} img/s")
        self._save(metrics)
        self._record("epoch", **metrics)
        if dropped:
            line += f" | no improvement for {plural(self.settings['patience'], 'epoch')}: lr -> " \
                    f"{self.optimizer.lr:g}"
        self._print(line)
        return metrics

    def _final(self, stop):
        s = self.settings
        with self._loader("val", "ten_crop", max(1, s["batch_size"] // 10)) as loader:
            result = self._evaluate(loader, 0, "ten_crop", stop, "ten-crop")
        self._record("final", epoch=self.epoch, **result.as_dict())
        self._print(f"final (epoch {self.epoch} weights, ten-crop, {result.images} val images): "
                    f"top-1 error {_pct(result.top1_error)}"
                    + (f", top-5 error {_pct(result.top5_error)}" if len(s["classes"]) > 5
                       else ""))
        return result.as_dict()


def train(options: TrainOptions | None = None, **kwargs) -> dict:
    """Run ``convnet train`` with ``options`` (or keyword arguments of ``TrainOptions``);
    returns a summary dict (run folder, epochs, last epoch's metrics, final evaluation).

    Raises ``TrainError`` for unusable settings, data or run folders,
    ``TrainingStopped`` when the loss stops being finite, and ``KeyboardInterrupt``
    after Ctrl-C (at a step boundary, the loader shut down).
    """
    if options is None:
        options = TrainOptions(**kwargs)
    elif kwargs:
        raise TypeError("train: give options or keyword arguments, not both")
    return TrainingRun(options).run()


# --------------------------------------------------------------------------- ranks

def _quiet(*_args, **_kwargs) -> None:
    """A rank > 0 says nothing: rank 0 speaks for the job."""


class _Discard:
    def write(self, text):
        return len(text)

    def flush(self):
        pass


def failed_job() -> bool:
    from ..distributed.errors import collective_failed
    return collective_failed()


def _communicator(options: TrainOptions):
    """(communicator, made here) for ``options``: the launcher's for ``--parallel data``
    (``options.comm`` when given), else ``SingleProcess``; a process launched as one of
    several ranks without ``--parallel`` is refused."""
    from ..distributed.launch import LaunchError, communicator_for, launched_size
    timeout = options.collective_timeout or DEFAULT_TIMEOUT
    if options.parallel is None:
        size = launched_size()
        if size and size > 1:
            raise TrainError(f"started as one of {size} ranks (mpirun/mpiexec or WORLD_SIZE), "
                             f"but without --parallel: give --parallel data, or start one "
                             f"process")
        return SingleProcess(timeout), False
    if options.comm is not None:
        return options.comm, False
    if options.devices and len(set(options.devices)) > 1:
        raise TrainError(f"--parallel {options.parallel} runs one process per device: give "
                         f"--device (each rank takes cuda:LOCAL_RANK), not --devices "
                         f"{' '.join(options.devices)}")
    from .settings import default_device
    try:
        comm = communicator_for(timeout=timeout,
                                device=options.device or (options.devices or [None])[0]
                                or default_device())
    except LaunchError as exc:
        raise TrainError(str(exc)) from None
    _rank_devices(options, comm)
    return comm, True


def _rank_devices(options: TrainOptions, comm) -> None:
    """``cuda`` as ``cuda:LOCAL_RANK`` on every rank of a job of several."""
    from ..distributed.launch import device_for_rank
    if options.device is not None:
        options.device = device_for_rank(options.device, comm.local_rank, comm.size)
    if options.devices:
        options.devices = [device_for_rank(d, comm.local_rank, comm.size)
                           for d in options.devices]
    if options.device is None and not options.devices:
        from .settings import default_device
        options.device = device_for_rank(default_device(), comm.local_rank, comm.size)


def _requested(options: TrainOptions) -> dict:
    """What every rank must have been started with alike."""
    keys = ("data", "prepared", "out", "model", "columns", "epochs", "batch_size", "lr", "seed",
            "patience", "lr_drops", "crop", "widths", "weight_std", "dropout", "precision",
            "parallel", "resume", "force", "final_eval")
    config = {k: getattr(options, k) for k in keys}
    config["widths"] = list(config["widths"]) if config["widths"] is not None else None
    device = options.device or (options.devices or ["?"])[0]
    config["device kind"] = str(device).split(":")[0]
    return config


def _from_leader(comm, work):
    """``work()`` on rank 0, its result sent to every rank; an error there is raised on
    every rank (rank 0 its own, the others a TrainError quoting it)."""
    if comm.rank == 0:
        try:
            value = work()
        except Exception as exc:  # noqa: BLE001 - told to the others, then raised here
            comm.broadcast_object(("error", one_line(exc)))
            raise
        comm.broadcast_object(("ok", value))
        return value
    status, value = comm.broadcast_object(None)
    if status == "error":
        raise TrainError(f"rank 0 could not start the run: {value}")
    return value


def _on_every_rank(comm, work) -> None:
    """``work()`` on every rank, then every rank learns whether it failed anywhere: a
    rank that cannot start (its data, its device) stops the job at once, naming itself,
    instead of leaving the others to time out in the next collective."""
    try:
        work()
        mine = None
    except Exception as exc:  # noqa: BLE001 - told to the others, then raised here
        mine, error = one_line(exc), exc
    failures = [(r, m) for r, m in enumerate(comm.allgather_object(mine)) if m is not None]
    if mine is not None:
        raise error
    if failures:
        raise TrainError("; ".join(f"rank {r} could not start: {m}" for r, m in failures))


def _data_folder(options: TrainOptions, settings: dict, resuming: bool, log):
    """The prepared data folder of a run: --data, else (resuming) the one it trained on."""
    return resolve_data(options.data if options.data is not None
                        else (settings["data"] if resuming else None), options.prepared,
                        demo=resuming and options.data is None and settings.get("demo", False),
                        workers=options.workers, log=log, error=TrainError)
