"""Run folders of ``convnet train``: their checkpoints (``epoch-NNNN.safetensors``, the
last ``KEEP_LAST`` and the best kept), the metrics log, and which run and checkpoint a
command means. See ``convnet.app.train`` for what a run is."""
from __future__ import annotations

import datetime as _dt
import re
from pathlib import Path

from . import checkpoint as ckpt
from ..progress import say

CHECKPOINT_NAME = re.compile(r"^epoch-(\d{4,})" + re.escape(ckpt.SUFFIX) + "$")
METRICS = "metrics.jsonl"
KEEP_LAST = 2


class TrainError(ValueError):
    """Settings, data or a run folder the driver cannot work with (a usage error)."""


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


def latest_checkpoint(folder, log=say):
    """The newest checkpoint of a run folder that loads; a broken one is skipped with a
    warning. None when there is no checkpoint; TrainError when none of them loads."""
    found = run_checkpoints(folder)
    failures = []
    for _, path in found:
        try:
            return ckpt.load(path)
        except ckpt.CheckpointError as exc:
            failures.append(str(exc))
            log(f"train: warning: {exc}; trying the previous checkpoint")
    if found:
        raise TrainError(f"none of the {len(found)} checkpoints in {folder} loads:\n  "
                         + "\n  ".join(failures))
    return None


def resolve_checkpoint(path) -> Path:
    """A checkpoint file, or a run folder's best checkpoint (else its newest that loads)."""
    path = Path(path).expanduser()
    if not path.is_dir():
        if not path.exists():
            raise TrainError(f"{path}: no such checkpoint file or run folder")
        return path
    newest = latest_checkpoint(path)
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
    base = Path("runs") / _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out, k = base, 1
    while out.exists():
        k += 1
        out = base.with_name(f"{base.name}-{k}")
    return out


def _newest_run() -> Path:
    runs = Path("runs")
    candidates = [d for d in runs.iterdir() if d.is_dir() and run_checkpoints(d)] \
        if runs.is_dir() else []
    if not candidates:
        raise TrainError("--resume without --out continues the newest run under ./runs, and "
                         "there is none with a checkpoint here; give --out RUN_FOLDER")
    return max(candidates, key=lambda d: max(p.stat().st_mtime for _, p in run_checkpoints(d)))


def open_run(options, log) -> tuple[Path, object]:
    """The run folder and, with --resume, the checkpoint to continue from."""
    if options.resume and options.force:
        raise TrainError("--resume continues a run and --force starts one afresh; give one")
    if options.out is None:
        out = _newest_run() if options.resume else _default_out()
    else:
        out = Path(options.out).expanduser()
    if out.exists() and not out.is_dir():
        raise TrainError(f"--out {out} exists and is not a folder")
    if options.resume:
        saved = latest_checkpoint(out, log)
        if saved is None:
            raise TrainError(f"--resume: {out} holds no checkpoint to continue from"
                             + (" (the run stopped before its first epoch ended; start it "
                                "again with --force)" if (out / METRICS).exists() else ""))
        return out, saved
    ours = [p for _, p in run_checkpoints(out)] + ([out / METRICS] if (out / METRICS).exists()
                                                    else [])
    if ours and not options.force:
        raise TrainError(f"{out} holds another run ({len(ours)} file(s): "
                         f"{short_list([p.name for p in ours], 3)}); continue it with --resume, "
                         f"choose another --out, or give --force to delete it and start afresh")
    for path in ours:
        path.unlink()
    if ours:
        log(f"train: --force: deleted the previous run in {out} ({len(ours)} file(s))")
    return out, None


def clean_temporaries(out: Path) -> None:
    """Delete checkpoint files left half-written by an interrupted save."""
    for entry in out.iterdir():
        if ckpt.is_temporary(entry.name):
            entry.unlink(missing_ok=True)
