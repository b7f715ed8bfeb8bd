"""TensorBoard scalars of a training run, written only when a TensorBoard writer is
installed (optional; nothing is written and nothing is said without one).

The writer is tensorboardX's ``SummaryWriter`` (``pip install "convnet[tensorboard]"``:
tensorboardX needs only NumPy, protobuf and packaging, no TensorFlow or PyTorch), else,
where the ``tensorboard`` package is installed, its own event-file writer (the one
``torch.utils.tensorboard`` writes through). The event files (``events.out.tfevents.*``)
go into the run folder itself, so ``tensorboard --logdir runs`` shows every run under its
folder's name. Per epoch (the step is the epoch number): ``loss/train``, ``loss/val``,
``error/train_top1``, ``error/train_top5``, ``error/val_top1``, ``error/val_top5``,
``lr``, ``images_per_second``; after the last epoch ``error/ten_crop_top1`` and
``error/ten_crop_top5``. A resumed run adds a new event file; its epochs continue the
same curves. A run started afresh in a folder (``--force``) deletes the event files of
the run before it.
"""
from __future__ import annotations

import time
from pathlib import Path

__all__ = ["EVENT_FILES", "Scalars", "TensorBoardWriter", "writer_class"]

EVENT_FILES = "events.out.tfevents.*"

# metrics.jsonl key -> scalar tag
EPOCH_TAGS = {
    "train_loss": "loss/train", "val_loss": "loss/val",
    "train_top1_error": "error/train_top1", "train_top5_error": "error/train_top5",
    "val_top1_error": "error/val_top1", "val_top5_error": "error/val_top5",
    "lr": "lr", "images_per_second": "images_per_second",
}
FINAL_TAGS = {"top1_error": "error/ten_crop_top1", "top5_error": "error/ten_crop_top5"}


def writer_class():
    """The first writer whose package is installed (tensorboardX's ``SummaryWriter``, then
    ``TensorBoardWriter``), or None."""
    try:
        from tensorboardX import SummaryWriter
        return SummaryWriter
    except ImportError:
        pass
    try:
        import tensorboard.summary.writer.event_file_writer  # noqa: F401
        return TensorBoardWriter
    except ImportError:
        return None


class TensorBoardWriter:
    """The scalar part of a ``SummaryWriter`` on the ``tensorboard`` package's event-file
    writer (which writes the file-version record first)."""

    def __init__(self, logdir: str):
        from tensorboard.summary.writer.event_file_writer import EventFileWriter
        self._file = EventFileWriter(logdir)

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary
        self._file.add_event(Event(wall_time=time.time(), step=int(step), summary=Summary(
            value=[Summary.Value(tag=tag, simple_value=float(value))])))

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class Scalars:
    """A run's scalars; every method does nothing when no writer is installed. ``fresh``:
    the run starts afresh, so event files already in the folder are an earlier run's and
    are deleted first."""

    def __init__(self, run_folder, fresh: bool = False):
        writer = writer_class()
        self.writer = None
        if writer is None:
            return
        if fresh:
            for old in Path(run_folder).glob(EVENT_FILES):
                old.unlink(missing_ok=True)
        self.writer = writer(str(run_folder))

    def _add(self, tags: dict, values: dict, step: int) -> None:
        if self.writer is None:
            return
        for key, tag in tags.items():
            if values.get(key) is not None:
                self.writer.add_scalar(tag, float(values[key]), step)
        self.writer.flush()

    def epoch(self, epoch: int, metrics: dict) -> None:
        self._add(EPOCH_TAGS, metrics, epoch)

    def final(self, epoch: int, result: dict) -> None:
        self._add(FINAL_TAGS, result, epoch)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
