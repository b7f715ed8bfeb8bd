"""Run folders of ``convnet train``: their checkpoints (``epoch-NNNN.safetensors``, the
last ``KEEP_LAST`` and the best kept), the metrics log, and which run and checkpoint a
command means. See ``convnet.app.train`` for what a run is."""
from __future__ import annotations

import datetime as _dt
import re
import shlex
from pathlib import Path

from . import checkpoint as ckpt
from ..locks import FolderLock, owner_alive
from ..progress import say

CHECKPOINT_NAME = re.compile(r"^epoch-(\d{4,})" + re.escape(ckpt.SUFFIX) + "$")
METRICS = "metrics.jsonl"
KEEP_LAST = 2


class TrainError(ValueError):
    """Settings, data or a run folder the driver cannot work with (a usage error)."""


def plural(n: int, word: str, many: str | None = None) -> str:
    """``1 epoch``, ``2 epochs``; ``many`` for irregular plurals."""
    return f"{n:,} {word if n == 1 else (many or word + 's')}"


def quoted(*words) -> str:
    """A command line to suggest, each word quoted as a shell needs it (paths with spaces)."""
    return " ".join(shlex.quote(str(w)) for w in words)


def short_list(items, n: int = 5) -> str:
    items = [str(i) for i in items]
    return ", ".join(items[:n]) + (f", ... ({len(items)} in all)" if len(items) > n else "")


def run_checkpoints(folder) -> list[tuple[int, Path]]:
    """(epoch, path) of the checkpoints in a run folder, newest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for entry in folder.iterdir():
        match = CHECKPOINT_NAME.match(entry.name)
        if match and entry.is_file():
            found.append((int(match.group(1)), entry))
    return sorted(found, reverse=True)


def checkpoint_path(folder: Path, epoch: int) -> Path:
    return Path(folder) / f"epoch-{epoch:04d}{ckpt.SUFFIX}"


def latest_checkpoint(folder, log=say, command: str = "train"):
    """The newest checkpoint of a run folder that loads; a broken one is skipped with a
    warning (from ``command``). None when there is no checkpoint; TrainError when none
    of them loads."""
    found = run_checkpoints(folder)
    failures = []
    for _, path in found:
        try:
            return ckpt.load(path)
        except ckpt.CheckpointError as exc:
            failures.append(str(exc))
            log(f"{command}: warning: {exc}; trying the previous checkpoint")
    if found:
        raise TrainError(f"none of the {len(found)} checkpoints in {folder} loads:\n  "
                         + "\n  ".join(failures))
    return None


def resolve_checkpoint(path, log=say, command: str = "evaluate") -> Path:
    """A checkpoint file, or a run folder's best checkpoint (else its newest that loads)."""
    path = Path(path).expanduser()
    if not path.is_dir():
        if not path.exists():
            raise TrainError(f"{path}: no such checkpoint file or run folder")
        return path
    newest = latest_checkpoint(path, log, command)
    if newest is None:
        raise TrainError(f"{path} holds no checkpoints (epoch-NNNN{ckpt.SUFFIX})")
    best = newest.state.get("schedule", {}).get("best_epoch")
    if best is not None and checkpoint_path(path, best).is_file():
        return checkpoint_path(path, best)
    return newest.path


def settings_of(checkpoint) -> dict:
    settings = checkpoint.state.get("settings")
    needed = ("model", "widths", "weight_std", "crop", "classes", "columns", "seed",
              "batch_size", "data")
    if not isinstance(settings, dict) or any(k not in settings for k in needed):
        raise TrainError(f"{checkpoint.path} was not written by `convnet train` (its state "
                         f"lacks the run's settings)")
    return settings


def prune(folder: Path, keep_best: int | None) -> None:
    """Delete all but the last KEEP_LAST checkpoints and the best one."""
    found = run_checkpoints(folder)
    keep = {e for e, _ in found[:KEEP_LAST]}
    if keep_best is not None:
        keep.add(keep_best)
    for epoch, path in found:
        if epoch not in keep:
            path.unlink(missing_ok=True)


def _default_out() -> Path:
    """A new folder ``runs/<date>-<time>[-k]``, made here: ``mkdir`` fails for all but one
    of the processes that try a name, so runs started in the same second never share one."""
    base = Path("runs") / _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base.parent.mkdir(parents=True, exist_ok=True)
    out, k = base, 1
    while True:
        try:
            out.mkdir()
            return out
        except FileExistsError:
            k += 1
            out = base.with_name(f"{base.name}-{k}")


def _newest_run() -> Path:
    runs = Path("runs")
    candidates = [d for d in runs.iterdir() if d.is_dir() and run_checkpoints(d)] \
        if runs.is_dir() else []
    if not candidates:
        raise TrainError("--resume without --out continues the newest run under ./runs, and "
                         "there is none with a checkpoint here; give --out RUN_FOLDER")
    return max(candidates, key=lambda d: max(p.stat().st_mtime for _, p in run_checkpoints(d)))


def lock_run(out: Path, log, created: bool = False) -> FolderLock:
    """Lock the run folder ``out`` (made if need be) for this process: a second
    ``convnet train`` on it stops with a ``LockError`` naming this one."""
    if not out.is_dir():
        out.mkdir(parents=True)
        created = True
    lock = FolderLock(out, "the run folder", "convnet train", created=created).acquire()
    if lock.stale_message():
        log(f"train: {lock.stale_message()}")
    return lock


def open_run(options, log) -> tuple[Path, object, FolderLock]:
    """The run folder, with --resume the checkpoint to continue from, and the folder's
    lock (held from here to the end of the run, data preparation included)."""
    if options.resume and options.force:
        raise TrainError("--resume continues a run and --force starts one afresh; give one")
    created = False
    if options.out is None:
        if options.resume:
            out = _newest_run()
        else:
            out, created = _default_out(), True
    else:
        out = Path(options.out).expanduser()
    if out.exists() and not out.is_dir():
        raise TrainError(f"--out {out} exists and is not a folder")
    lock = lock_run(out, log, created)
    try:
        return (out, *_open_locked(options, out, log), lock)
    except BaseException:
        lock.release()
        raise


def _open_locked(options, out: Path, log) -> tuple[object]:
    if options.resume:
        saved = latest_checkpoint(out, log)
        if saved is None:
            raise TrainError(f"--resume: {out} holds no checkpoint to continue from"
                             + (" (the run stopped before its first epoch ended; start it "
                                "again with --force)" if (out / METRICS).exists() else ""))
        return (saved,)
    ours = [p for _, p in run_checkpoints(out)] + ([out / METRICS] if (out / METRICS).exists()
                                                    else [])
    if ours and not options.force:
        raise TrainError(f"{out} holds another run ({plural(len(ours), 'file')}: "
                         f"{short_list([p.name for p in ours], 3)}); continue it with --resume, "
                         f"choose another --out, or give --force to delete it and start afresh")
    for path in ours:
        path.unlink()
    if ours:
        log(f"train: --force: deleted the previous run in {out} ({plural(len(ours), 'file')})")
    return (None,)


def clean_temporaries(out: Path) -> None:
    """Delete checkpoint files left half-written by an interrupted save of a process
    that no longer runs."""
    for entry in out.iterdir():
        if ckpt.is_temporary(entry.name) and not owner_alive(entry.name):
            entry.unlink(missing_ok=True)
