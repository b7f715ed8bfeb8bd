"""Which prepared data set a command works on: ``resolve_data``.

``convnet train --data`` and ``convnet evaluate --data`` take a prepared folder
(``manifest.json``), or an image folder (``train/<class>/...``) that is prepared
once into a folder beside it; with no ``--data``, the demo set (``demo_dataset``),
generated and prepared under ``cache_dir()/demo`` on first use. The messages name
the arguments as those commands spell them (``--data``, ``--prepared``); ``error``
is the class raised for an unusable argument (the driver passes its ``TrainError``).
"""
from __future__ import annotations

import shlex
from pathlib import Path

from ..cache import cache_dir
from ..locks import FolderLock
from ..progress import say
from .demo import DEMO, DemoError, make_demo_data
from .folders import DatasetError
from .prepare import prepare
from .shards import ManifestError, read_manifest

__all__ = ["demo_dataset", "resolve_data"]


def _prepared_from(prepared: Path, source: Path) -> bool:
    """Whether ``prepared`` holds a complete data set prepared from ``source``."""
    try:
        manifest = read_manifest(prepared)
    except ManifestError:
        return False
    return manifest.get("source") == str(source.resolve())


def demo_dataset(workers: int | None = None, log=say, *, error=DatasetError) -> Path:
    """The prepared demo set under ``cache_dir()/demo``, made on first use: generated
    images in ``images/`` (``make_demo_data`` with its defaults, ``DEMO``), prepared
    into ``prepared/``. Two processes that need it at once do not both make it: the
    second waits (saying for whom) while the first holds the cache's lock."""
    root = cache_dir() / "demo"
    images, prepared = root / "images", root / "prepared"
    if _prepared_from(prepared, images):
        return prepared
    root.mkdir(parents=True, exist_ok=True)
    with FolderLock(root, "the demo cache", "making the demo data set", wait=True,
                    log=lambda text: log(f"train: {text}")):
        if _prepared_from(prepared, images):  # made by the process we waited for
            return prepared
        return _make_demo(root, images, prepared, workers, log, error)


def _make_demo(root: Path, images: Path, prepared: Path, workers, log, error) -> Path:
    counts = DEMO["classes"] * DEMO["train_per_class"], DEMO["classes"] * DEMO["val_per_class"]
    log(f"train: making the demo data set in {root} ({DEMO['classes']} classes, {counts[0]} "
        f"training and {counts[1]} validation images; once)")
    try:
        make_demo_data(images, workers=workers, **DEMO)
    except DemoError as exc:
        raise error(f"cannot make the demo set: {exc} (delete {images} to start it "
                    f"afresh)") from None
    prepare(images, prepared, workers=workers, log=log)
    return prepared


def resolve_data(data, prepared=None, *, demo: bool = False, workers: int | None = None,
                 log=say, error=DatasetError) -> Path:
    """The prepared data set to use: ``data`` prepared (a folder with ``manifest.json``),
    or an image folder (``train/<class>/...``) prepared into ``prepared`` (default: a
    folder ``<data>-prepared`` beside it) unless that already holds it; None (or
    ``demo`` when ``data`` is no folder): the demo set. ``log`` gets one-line messages."""
    if data is None or (demo and not Path(data).is_dir()):
        if prepared is not None:
            raise error("--prepared names where an image folder given by --data is "
                        "prepared; give --data too")
        return demo_dataset(workers, log, error=error)
    data = Path(data).expanduser()
    if not data.exists():
        raise error(f"--data {data}: no such folder")
    if (data / "manifest.json").is_file():
        if prepared is not None:
            raise error(f"{data} is already prepared; --prepared is for an image folder")
        return data
    if not (data / "train").is_dir():
        raise error(f"--data {data} is neither a prepared data set (no manifest.json) nor "
                    f"an image folder (no train/ folder of class folders)")
    target = Path(prepared).expanduser() if prepared is not None \
        else data.parent / f"{data.name}-prepared"
    if _prepared_from(target, data):
        log(f"train: using {target}, prepared from {data} (run "
            f"`{shlex.join(['convnet', 'prepare', str(data), str(target)])}` after changing "
            f"the images)")
        return target
    if (target / "manifest.json").is_file():
        raise error(f"{target} holds a data set prepared from another folder; give "
                    f"--prepared DIR for {data}")
    log(f"train: preparing {data} into {target} (once)")
    prepare(data, target, workers=workers, log=log)
    return target
