"""``convnet prepare SRC DST``: an ImageNet-style folder to packed shards, once.

Every image is loaded as RGB (``folders.load_rgb``: any format Pillow reads, EXIF
orientation applied), its shorter side rescaled to ``size`` (Lanczos) and the
central ``size x size`` square kept (``folders.resize_center_crop``), then written
into shards (``shards``): re-encoded as JPEG (default, quality 95) or as raw uint8
pixels (``format="raw"``, memory-mappable; for small sets: 196 KiB an image).

The plan is fixed by the source listing: each split's files, in sorted order, are
cut into shards of ``shard_size`` source files, so shard ``k`` always holds the same
sources (less those skipped). A shard records the digest of its sources (path,
size, modification time) and the settings; a later run with the same plan reuses
every complete shard and redoes the rest, so an interrupted run resumes where it
stopped and produces the same files as an uninterrupted one. A shard counts as
complete only when its CRCs check out: a damaged one is reported and made again.
Shards are written under a temporary name and renamed when complete
(``ShardWriter``); temporaries left by processes that no longer run are deleted.
The destination is locked (``convnet.locks``) while prepare works in it: a second
``prepare`` into it stops with a message naming the first.

A file that cannot be read is skipped, and the run goes on; ``skipped.txt`` and
the manifest list each with its reason, and the files the scan ignored (not images,
not regular files, links to folders already read) with theirs. After the shards, one more pass over the
training shards computes the statistics (``stats``): the mean image (``mean.npy``)
and the RGB covariance's eigenvalues and eigenvectors. ``manifest.json`` is
written last: a folder without it is not (yet) a prepared data set.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

from . import folders, shards, stats
from .. import arguments
from ..locks import FolderLock, owner_alive
from ..progress import ProgressBar, say as _say
from ._pool import run_tasks, usable_cpus

DEFAULT_SIZE = 256
DEFAULT_QUALITY = 95
MAX_SHARD_SIZE = 1024
FORMATS = ("jpeg", "raw")
# Bumped whenever the pixels prepare writes for a file would change (decoding, colour
# conversion, resizing): it is part of each shard's plan, so a resumed run redoes shards
# made by an older pipeline instead of mixing them in.
PIPELINE_VERSION = 1
_SHARD_FILE = re.compile(r"^(?P<split>[A-Za-z0-9_]+)-(?P<index>\d{5})" + re.escape(shards.SHARD_SUFFIX) + "$")


class PrepareError(ValueError):
    """Arguments or folders that ``prepare`` cannot work with."""


def default_shard_size(sources: int) -> int:
    """Source files per shard: 1024 for large sets, fewer for small ones (at least 64
    shards when there are at least 64 * 16 files), never fewer than 16."""
    return int(min(MAX_SHARD_SIZE, max(16, math.ceil(sources / 64))))


# --------------------------------------------------------------------------- worker side

def _prepare_shard(state, task: dict, progress) -> dict:
    """Make one shard from its sources (runs in a worker, or inline)."""
    root = Path(task["root"])
    size = task["size"]
    kind = task["format"]
    quality = task["quality"]
    sources, skipped = [], []
    pending = 0
    with shards.ShardWriter(task["path"], kind, (size, size, 3)) as writer:
        for relative, label in task["entries"]:
            try:
                image = folders.prepare_image(root / relative, size)
            except Exception as exc:  # noqa: BLE001 - every unreadable file is skipped, with why
                skipped.append([relative, folders.describe_error(exc)])
            else:
                writer.add(shards.encode_jpeg(image, quality) if kind == "jpeg" else image, label)
                sources.append(relative)
            pending += 1
            if pending == 8:
                progress(pending)
                pending = 0
        meta = {"split": task["split"], "index": task["index"], "plan": task["plan"],
                "sources": sources, "skipped": skipped}
        writer.close(meta)
    if pending:
        progress(pending)
    return {"index": task["index"], "split": task["split"], "count": len(sources),
            "skipped": skipped, "plan": task["plan"]}


def _shard_stats(state, task: dict, progress) -> dict:
    """Sum the images of one training shard and sample its pixels (runs in a worker)."""
    info = shards.read_shard_info(task["path"])
    h, w, c = info.size
    acc = stats.Accumulator((h, w, c))
    k = task["per_image"]
    with open(info.path, "rb") as f:
        for i in range(info.count):
            offset, length = info.image_range(i)
            f.seek(offset)
            data = f.read(length)
            where = f"{info.path} image {i}"
            if info.kind == "jpeg":
                image = shards.decode_jpeg(data, info.size, where=where)
            else:
                image = np.frombuffer(data, np.uint8).reshape(info.size)
            positions = None if k is None else stats.sample_positions(
                task["seed"], task["first"] + i, k, h * w)
            acc.add(image, positions)
            if i % 16 == 15:
                progress(16)
    if info.count % 16:
        progress(info.count % 16)
    return acc.to_payload()


# --------------------------------------------------------------------------- planning

def _plan_digest(root: Path, entries, settings: dict, split: str, index: int) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"settings": settings, "split": split, "index": index,
                         "container": shards.CONTAINER_VERSION}, sort_keys=True).encode())
    for relative, label in entries:
        try:
            st = os.stat(root / relative)
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        h.update(f"\0{relative}\0{label}\0{stamp}".encode())
    return h.hexdigest()


def _check_folders(src: Path, dst: Path) -> None:
    src_r, dst_r = src.resolve(), dst.resolve()
    if dst_r == src_r:
        raise PrepareError(f"the destination {dst} is the source folder; choose another folder")
    for split in folders.SPLITS:
        inside = src_r / split
        if dst_r == inside or inside in dst_r.parents:
            raise PrepareError(f"the destination {dst} is inside the source's {split}/ folder, "
                               f"where its files would be read as images; choose another folder")
    if dst.exists() and not dst.is_dir():
        raise PrepareError(f"the destination {dst} exists and is not a folder")


def _check_settings(format: str, size, quality, shard_size, pixels, seed) -> tuple:
    """(size, quality, shard_size, pixels, seed) as plain ints, or a PrepareError."""
    if format not in FORMATS:
        raise PrepareError(f"format must be one of {FORMATS}, got {format!r}")
    check = arguments.integer
    return (check(size, "size", low=8, high=4096, error=PrepareError),
            check(quality, "JPEG quality", low=90, high=100, error=PrepareError),
            None if shard_size is None else arguments.positive_int(shard_size, "shard size",
                                                                     error=PrepareError),
            check(pixels, "pixels (the covariance sample)", low=2, error=PrepareError),
            check(seed, "seed", low=0, high=2**64 - 1, error=PrepareError))

# --------------------------------------------------------------------------- prepare

def prepare(src, dst, *, format: str = "jpeg", size: int = DEFAULT_SIZE,
            quality: int = DEFAULT_QUALITY, shard_size: int | None = None,
            workers: int | None = None, pixels: int = stats.DEFAULT_PIXELS, seed: int = 0,
            synsets=None, progress: bool | None = None, start_method: str | None = None,
            log=None) -> dict:
    """Prepare the image folder ``src`` into ``dst``; returns the manifest (a dict).

    ``format``: ``"jpeg"`` (re-encoded at ``quality``) or ``"raw"`` (uint8 pixels).
    ``size``: the side of the stored images (256, as in the paper). ``shard_size``:
    source files per shard (default: ``default_shard_size``). ``workers``: processes
    (default: every usable core; 0 runs in this process). ``pixels``/``seed``: the
    covariance sample. ``synsets``: a file of readable class names. ``progress``:
    show progress bars (default: when stderr is a terminal). ``log``: a callable
    for one-line messages (default: print to stderr).
    """
    src, dst = Path(src), Path(dst)
    size, quality, shard_size, pixels, seed = _check_settings(format, size, quality,
                                                              shard_size, pixels, seed)
    _check_folders(src, dst)
    say = log or _say
    show = sys.stderr.isatty() if progress is None else bool(progress)
    workers = usable_cpus() if workers is None else arguments.integer(workers, "workers", low=0,
                                                                      error=PrepareError)
    started = time.monotonic()

    folder = folders.scan_folder(src, synsets=synsets)
    if not folder.splits.get("train"):
        raise PrepareError(f"{src / 'train'} holds no image files")
    if folder.num_classes < 2:
        say(f"prepare: warning: {src / 'train'} has one class ({folder.classes[0]}): a "
            f"classifier cannot be trained on it (`convnet train` refuses it)")
    dst.mkdir(parents=True, exist_ok=True)
    with FolderLock(dst, "the prepare destination", "convnet prepare") as lock:
        if lock.stale_message():
            say(f"prepare: {lock.stale_message()}")
        return _prepare_locked(src, dst, folder, say, show, started, format=format, size=size,
                               quality=quality, shard_size=shard_size, workers=workers,
                               pixels=pixels, seed=seed, start_method=start_method)


def _prepare_locked(src: Path, dst: Path, folder, say, show, started, *, format, size, quality,
                    shard_size, workers, pixels, seed, start_method) -> dict:
    _remove_dead_temporaries(dst)  # of an interrupted run

    settings = {"size": size, "format": format, "quality": quality if format == "jpeg" else None,
                "resample": "lanczos", "crop": "center", "pipeline": PIPELINE_VERSION}
    tasks, reused = [], {}
    wanted_files = set()
    total_sources = 0
    plan_sizes = {}
    for split, entries in folder.splits.items():
        per_shard = shard_size or default_shard_size(len(entries))
        plan_sizes[split] = per_shard
        total_sources += len(entries)
        for index in range(math.ceil(len(entries) / per_shard)):
            chunk = entries[index * per_shard:(index + 1) * per_shard]
            path = dst / shards.shard_name(split, index)
            wanted_files.add(path.name)
            digest = _plan_digest(src, chunk, settings, split, index)
            if path.exists():
                try:
                    info = shards.read_shard_info(path, verify=True)  # every CRC: no damage kept
                    if info.meta.get("plan") == digest:
                        reused[(split, index)] = {"index": index, "split": split,
                                                  "count": info.count,
                                                  "skipped": info.meta.get("skipped", []),
                                                  "sources": len(chunk), "plan": digest}
                        continue
                except shards.ShardError as exc:  # incomplete or damaged: make it again
                    say(f"prepare: {exc}; making {path.name} again")
            tasks.append({"root": str(src), "split": split, "index": index, "path": str(path),
                          "entries": chunk, "plan": digest, "size": size, "format": format,
                          "quality": quality, "sources": len(chunk)})
    previous_stats = _previous_stats(dst)
    stale = [entry for entry in dst.iterdir()  # shards of an earlier plan that this one lacks
             if _SHARD_FILE.match(entry.name) and entry.name not in wanted_files]
    if tasks or stale:  # the folder is about to change: it is no prepared data set until done
        (dst / shards.MANIFEST).unlink(missing_ok=True)
    for entry in stale:
        entry.unlink()

    done_sources = sum(r["sources"] for r in reused.values())
    if reused:
        say(f"prepare: resuming: {len(reused)} shard(s) already complete, {len(tasks)} to make")
    results = dict(reused)
    bar = ProgressBar(total_sources, "prepare", show, initial=done_sources)
    jobs = run_tasks(_prepare_shard, tasks, workers, bar, start_method)
    try:
        for task, result in jobs:
            result["sources"] = task["sources"]
            results[(task["split"], task["index"])] = result
    except BaseException:  # Ctrl-C, SIGTERM, a failed worker: stop the pool, tidy up
        jobs.close()
        _remove_dead_temporaries(dst)
        raise
    finally:
        bar.close()

    # ---------------------------------------------------------------- manifest parts
    splits, skipped = {}, []
    for split, entries in folder.splits.items():
        shard_list = []
        count = 0
        for index in range(math.ceil(len(entries) / plan_sizes[split])):
            r = results[(split, index)]
            shard_list.append({"file": shards.shard_name(split, index), "count": r["count"],
                               "sources": r["sources"]})
            count += r["count"]
            skipped.extend({"split": split, "path": p, "reason": why} for p, why in r["skipped"])
        splits[split] = {"count": count, "sources": len(entries), "skipped": len(entries) - count,
                         "shard_size": plan_sizes[split], "shards": shard_list}
    if splits["train"]["count"] == 0:
        raise PrepareError(f"none of the {len(folder.splits['train'])} training files could be "
                           f"read; see {dst / shards.SKIPPED_FILE}")
    ignored = [{"split": rel.split("/", 1)[0], "path": rel, "reason": why}
               for rel, why in folder.ignored_reasons]
    _write_skipped(dst, skipped + ignored)

    # ---------------------------------------------------------------- statistics
    stat_key = hashlib.sha256(json.dumps(
        {"pixels": pixels, "seed": seed,
         "shards": [results[("train", i)]["plan"]
                    for i in range(len(splits["train"]["shards"]))]}, sort_keys=True).encode()
    ).hexdigest()
    stats_entry = previous_stats if previous_stats and previous_stats.get("key") == stat_key \
        and (dst / previous_stats.get("mean_file", "")).is_file() else None
    if stats_entry is None:
        stats_entry = _compute_stats(dst, splits["train"], (size, size), pixels, seed, workers,
                                     show, start_method)
        stats_entry["key"] = stat_key

    manifest = _write_manifest(dst, str(src.resolve()), {**settings, "pixels": pixels, "seed": seed},
                               (size, size), folder.classes, folder.class_names, splits, skipped,
                               stats_entry, ignored_files=len(folder.ignored), ignored=ignored)
    elapsed = time.monotonic() - started
    made = sum(t["sources"] for t in tasks)
    say(f"prepare: {dst}: " + ", ".join(f"{k} {v['count']} images" for k, v in splits.items())
        + f", {len(skipped)} skipped, {len(ignored)} ignored"
        + (f" (listed in {dst / shards.SKIPPED_FILE})" if skipped or ignored else "")
        + f"; {made} files processed in {elapsed:.1f} s")
    return manifest


def prepare_arrays(dst, splits: dict, classes, *, class_names=None, format: str = "raw",
                   quality: int = DEFAULT_QUALITY, shard_size: int | None = None,
                   pixels: int = stats.DEFAULT_PIXELS, seed: int = 0, log=None) -> dict:
    """Prepare images already in memory (no resizing; no Pillow needed for ``"raw"``).

    ``splits``: ``{"train": (images, labels), "val": ...}`` with uint8 images (N, H, W, 3),
    the same H x W in every split, and integer labels in ``[0, len(classes))``. The
    shards, statistics and manifest are those of ``prepare`` (image ``i`` of a split
    is recorded as its source ``"split[i]"``); ``dst`` is written afresh.
    """
    dst = Path(dst)
    _, quality, shard_size, pixels, seed = _check_settings(format, 8, quality, shard_size,
                                                           pixels, seed)
    say = log or _say
    classes = [str(c) for c in classes]
    names = list(class_names) if class_names is not None else list(classes)
    if not classes or len(names) != len(classes):
        raise PrepareError("give at least one class, and as many class names as classes")
    if "train" not in splits:
        raise PrepareError("splits must include 'train' (the statistics come from it)")
    shape = None
    checked = {}
    for split, pair in splits.items():
        if not re.fullmatch(r"[A-Za-z0-9_]+", str(split)):
            raise PrepareError(f"split names are letters, digits and '_', got {split!r}")
        images, labels = np.asarray(pair[0]), np.asarray(pair[1])
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
            raise PrepareError(f"{split}: images must be uint8 (N, H, W, 3), got {images.dtype} "
                               f"{images.shape}")
        if shape is not None and images.shape[1:3] != shape:
            raise PrepareError(f"{split}: images of {images.shape[1:3]}, other splits have {shape}")
        shape = images.shape[1:3]
        if labels.shape != (len(images),) or labels.dtype.kind not in "iu" or (
                len(labels) and (labels.min() < 0 or labels.max() >= len(classes))):
            raise PrepareError(f"{split}: labels must be {len(images)} integers in "
                               f"[0, {len(classes)})")
        checked[split] = (images, labels)
    if not len(checked["train"][0]):
        raise PrepareError("the train split holds no images")
    dst.mkdir(parents=True, exist_ok=True)
    with FolderLock(dst, "the prepare destination", "prepare_arrays"):
        return _prepare_arrays_locked(dst, checked, classes, names, format, quality, shard_size,
                                      pixels, seed, shape, say)


def _prepare_arrays_locked(dst: Path, checked: dict, classes, names, format, quality, shard_size,
                           pixels, seed, shape, say) -> dict:
    (dst / shards.MANIFEST).unlink(missing_ok=True)
    for entry in dst.iterdir():
        if (_is_our_temporary(entry.name) and not owner_alive(entry.name)) \
                or _SHARD_FILE.match(entry.name):
            entry.unlink(missing_ok=True)
    entries = {}
    for split, (images, labels) in checked.items():
        per_shard = shard_size or default_shard_size(len(images))
        shard_list = []
        for index in range(math.ceil(len(images) / per_shard)):
            lo, hi = index * per_shard, min(len(images), (index + 1) * per_shard)
            path = dst / shards.shard_name(split, index)
            with shards.ShardWriter(path, format, images.shape[1:]) as writer:
                for i in range(lo, hi):
                    image = np.ascontiguousarray(images[i])
                    writer.add(shards.encode_jpeg(image, quality) if format == "jpeg" else image,
                               int(labels[i]))
                writer.close({"split": split, "index": index, "plan": None,
                              "sources": [f"{split}[{i}]" for i in range(lo, hi)], "skipped": []})
            shard_list.append({"file": path.name, "count": hi - lo, "sources": hi - lo})
        entries[split] = {"count": len(images), "sources": len(images), "skipped": 0,
                          "shard_size": per_shard, "shards": shard_list}
    _write_skipped(dst, [])
    stats_entry = _compute_stats(dst, entries["train"], shape, pixels, seed, 0, False, None)
    settings = {"size": None, "format": format, "quality": quality if format == "jpeg" else None,
                "resample": None, "crop": None, "pixels": pixels, "seed": seed}
    manifest = _write_manifest(dst, "arrays", settings, shape, classes, names, entries, [],
                               stats_entry)
    say(f"prepare: {dst}: " + ", ".join(f"{k} {v['count']} images" for k, v in entries.items()))
    return manifest


def _remove_dead_temporaries(dst: Path) -> None:
    """Delete the temporaries in ``dst`` whose writing process no longer runs."""
    for entry in dst.iterdir():
        if _is_our_temporary(entry.name) and not owner_alive(entry.name):
            entry.unlink(missing_ok=True)


def _is_our_temporary(name: str) -> bool:
    if shards.is_temporary(name):
        return True
    return any(name.startswith(f".{base}.tmp-")
               for base in (shards.MANIFEST, shards.MEAN_FILE, shards.SKIPPED_FILE))


def _write_skipped(dst: Path, skipped: list[dict]) -> None:
    lines = ["# files convnet prepare skipped or ignored: split<TAB>path<TAB>reason"]
    lines += [f"{s['split']}\t{s['path']}\t{s['reason']}" for s in skipped]
    tmp = dst / f".{shards.SKIPPED_FILE}.tmp-{os.getpid()}"
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, dst / shards.SKIPPED_FILE)


def _previous_stats(dst: Path) -> dict | None:
    """The statistics of an earlier complete run in ``dst`` (reused when their key matches)."""
    try:
        return shards.read_manifest(dst).get("stats") or None
    except shards.ManifestError:
        return None


def _write_manifest(dst: Path, source: str, settings: dict, shape, classes, class_names, splits,
                    skipped, stats_entry, **extra) -> dict:
    manifest = {
        "format": shards.FORMAT_NAME,
        "version": shards.FORMAT_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "convnet_version": _version(),
        "source": source,
        "settings": settings,
        "image_shape": [int(shape[0]), int(shape[1]), 3],
        "classes": list(classes),
        "class_names": list(class_names),
        "splits": splits,
        "skipped": skipped,
        **extra,
        "stats": stats_entry,
    }
    manifest["checksum"] = shards.manifest_checksum(manifest)
    shards.write_json_atomic(dst / shards.MANIFEST, manifest)
    return manifest


def _compute_stats(dst: Path, train: dict, shape, pixels: int, seed: int, workers: int,
                   show: bool, start_method) -> dict:
    n = train["count"]
    h, w = shape
    per_image = stats.pixels_per_image(n, pixels, h, w)
    tasks, first = [], 0
    for s in train["shards"]:
        if s["count"]:
            tasks.append({"path": str(dst / s["file"]), "first": first, "per_image": per_image,
                          "seed": seed})
        first += s["count"]
    total = stats.Accumulator((h, w, 3))
    bar = ProgressBar(n, "statistics", show)
    try:
        for _, payload in run_tasks(_shard_stats, tasks, workers, bar, start_method):
            total.merge(stats.Accumulator.from_payload(payload))
    finally:
        bar.close()
    mean = total.mean_image()
    covariance = total.covariance()
    values, vectors = stats.rgb_eigen(covariance)
    tmp = dst / f".{shards.MEAN_FILE}.tmp-{os.getpid()}.npy"
    np.save(tmp, mean.astype(np.float32))
    mean_sha256 = hashlib.sha256(tmp.read_bytes()).hexdigest()
    os.replace(tmp, dst / shards.MEAN_FILE)
    return {
        "mean_sha256": mean_sha256,
        "split": "train",
        "images": total.images,
        "mean_file": shards.MEAN_FILE,
        "mean_rgb": mean.reshape(-1, 3).mean(axis=0).tolist(),
        "pixels_sampled": total.pixel_count,
        "pixels_per_image": per_image,  # None: every pixel of every image
        "covariance": covariance.tolist(),
        "eigenvalues": values.tolist(),
        "eigenvectors": vectors.tolist(),
        "pixel_scale": "0..255",
    }


def _version() -> str:
    try:
        from .. import __version__
        return __version__
    except ImportError:  # pragma: no cover
        return "unknown"
