"""Figures of a training run: ``convnet show filters|curves|predictions|neighbours``.

::

    convnet show filters --run runs/20261130-140000            # -> RUN/filters.png
    convnet show curves --run runs/x --out curves.png
    convnet show predictions --run runs/x --images 8
    convnet show neighbours --run runs/x --images 5 --pool 5000

* ``filters``: conv1's filters as an image grid, each filter scaled to its own
  minimum..maximum; with two columns (or the one-column network's two halves, which are
  the same thing) column 0's filters above column 1's (the paper's Figure 3).
* ``curves``: training and validation loss and top-1/top-5 error per epoch from
  ``metrics.jsonl`` (the later line where an epoch appears twice), learning-rate drops
  marked, the final ten-crop errors as stars.
* ``predictions``: validation images (center patch) with their true label and the
  network's five most probable classes as bars (Figure 4, left).
* ``neighbours``: for a few validation images, the training images whose fc7 vectors
  (the last hidden layer, ``AlexNet.features``) are nearest in Euclidean distance
  (Figure 4, right); the first ``--pool`` training images, spread evenly over the split,
  are searched (0: all).

The checkpoint is the run's best (``convnet evaluate``'s choice); ``--run`` may also
name one checkpoint file. The network and its data are loaded as ``convnet evaluate``
loads them (``evaluate.load_run``). The figures are drawn with matplotlib's
object-oriented API (no pyplot, no display needed); without matplotlib,
``PlotUnavailable`` says which extra to install.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .runs import METRICS, TrainError, plural

__all__ = ["FIGURES", "PlotUnavailable", "draw", "read_metrics", "require_matplotlib"]

FIGURES = ("filters", "curves", "predictions", "neighbours")
INSTALL = 'pip install "convnet[plot]"'
DPI = 100


class PlotUnavailable(RuntimeError):
    """matplotlib is not installed."""


def require_matplotlib():
    """matplotlib's ``Figure`` class; ``PlotUnavailable`` (naming the extra) without it."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise PlotUnavailable(f"drawing figures needs matplotlib: {INSTALL}") from None
    return Figure


def _figure(width: float, height: float):
    return require_matplotlib()(figsize=(width, height), dpi=DPI)


def _run_folder(run) -> Path:
    """The run folder ``run`` names (a run folder, or one of its checkpoint files)."""
    path = Path(run).expanduser()
    if path.is_file():
        return path.parent
    if not path.is_dir():
        raise TrainError(f"{path}: no such run folder")
    return path


def _save(fig, out: Path) -> Path:
    if not out.parent.is_dir():
        raise TrainError(f"--out {out}: the folder {out.parent} does not exist")
    kinds = fig.canvas.get_supported_filetypes()
    if out.suffix.lstrip(".").lower() not in kinds:
        raise TrainError(f"--out {out}: give a file name ending in one of "
                         f"{', '.join('.' + k for k in sorted(kinds))}")
    fig.savefig(out)
    return out


def _label(name: str, width: int = 22) -> str:
    """A class name short enough for a tick label: its first synonym, cut to ``width``."""
    name = str(name).split(",")[0].strip()
    return name if len(name) <= width else name[:width - 1] + "…"


def _spread(count: int, total: int) -> np.ndarray:
    """``count`` indices spread evenly over 0..total-1 (all of them when count >= total)."""
    if count <= 0 or count >= total:
        return np.arange(total, dtype=np.int64)
    return np.unique(np.linspace(0, total - 1, count).round().astype(np.int64))


# --------------------------------------------------------------------------- filters

def _filter_tiles(weights) -> list[np.ndarray]:
    """conv1 filters (K, 3, h, w) -> K images (h, w, 3) in 0..1, each scaled to its own range."""
    tiles = []
    for f in np.asarray(weights, dtype=np.float64):
        lo, hi = f.min(), f.max()
        tiles.append(np.transpose((f - lo) / (hi - lo) if hi > lo else np.full_like(f, 0.5),
                                  (1, 2, 0)))
    return tiles


def filter_mosaic(columns: list[np.ndarray], per_row: int = 16, gap: int = 1,
                  column_gap: int = 4) -> np.ndarray:
    """One image (H, W, 3) of the filters of each column in rows of ``per_row``, column
    0's block above column 1's, white between filters (``gap`` pixels) and blocks."""
    per_row = max(1, min(per_row, max(len(c) for c in columns)))
    h, w = columns[0].shape[2:]
    rows = [-(-len(c) // per_row) for c in columns]
    width = per_row * (w + gap) + gap
    height = sum(r * (h + gap) + gap for r in rows) + column_gap * (len(columns) - 1)
    mosaic = np.ones((height, width, 3))
    top = 0
    for weights, n_rows in zip(columns, rows):
        for k, tile in enumerate(_filter_tiles(weights)):
            y = top + gap + (k // per_row) * (h + gap)
            x = gap + (k % per_row) * (w + gap)
            mosaic[y:y + h, x:x + w] = tile
        top += n_rows * (h + gap) + gap + column_gap
    return mosaic


def conv1_columns(model_state: dict, columns: int) -> list[np.ndarray]:
    """conv1's weights per column from a checkpoint's model tensors: the two columns' own,
    or the one-column network's two halves (the first ceil(K/2) are column 0's, as in
    ``one_to_two_columns``)."""
    if columns == 2:
        return [np.asarray(model_state[f"column{c}.conv1.weight"]) for c in (0, 1)]
    weights = np.asarray(model_state["conv1.weight"])
    cut = -(-len(weights) // 2)
    return [weights[:cut], weights[cut:]]


def draw_filters(run, out: Path) -> Path:
    from . import checkpoint as ckpt
    from .runs import resolve_checkpoint, settings_of
    path = resolve_checkpoint(run)
    saved = ckpt.load(path)
    settings = settings_of(saved)
    columns = conv1_columns(saved.model, settings["columns"])
    mosaic = filter_mosaic(columns)
    scale = 0.05  # inches per mosaic pixel: an 11x11 filter is about half an inch
    title = 0.45  # inches for the two title lines
    height = mosaic.shape[0] * scale + title
    fig = _figure(max(3.0, mosaic.shape[1] * scale), height)
    ax = fig.add_axes((0.01, 0.01, 0.98, 0.99 - title / height))
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_axis_off()
    k, (h, w) = sum(len(c) for c in columns), columns[0].shape[2:]
    fig.suptitle(f"conv1: {k} filters {h}x{w}x3, epoch {saved.state.get('epoch', '?')}\n"
                 f"column 0 above, column 1 below", fontsize=8, y=0.995, va="top")
    return _save(fig, out)


# --------------------------------------------------------------------------- curves

def read_metrics(run) -> tuple[dict | None, list[dict], dict | None]:
    """A run's ``metrics.jsonl``: its first ``start`` event (None if there is none), the
    epochs it records (by epoch number; where one appears twice, the later line) and its
    last ``final`` event (or None). Lines that are not JSON (a line cut short by a crash)
    are skipped."""
    path = _run_folder(run) / METRICS
    if not path.is_file():
        raise TrainError(f"{path.parent}: no {METRICS} (not a `convnet train` run folder)")
    start, epochs, final = None, {}, None
    for line in path.read_text().splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(event, dict):
            continue
        if event.get("event") == "epoch" and isinstance(event.get("epoch"), int):
            epochs[event["epoch"]] = event
        elif event.get("event") == "final":
            final = event
        elif event.get("event") == "start" and start is None:
            start = event
    if not epochs:
        raise TrainError(f"{path}: no epoch has finished yet")
    return start, [epochs[e] for e in sorted(epochs)], final


def lr_drops(epochs: list[dict]) -> list[tuple[int, float]]:
    """(epoch, new rate) for each epoch trained at a lower rate than the one before."""
    return [(b["epoch"], b["lr"]) for a, b in zip(epochs, epochs[1:])
            if b.get("lr") is not None and a.get("lr") is not None and b["lr"] < a["lr"]]


def marked_drops(start: dict | None, epochs: list[dict]) -> list[tuple[int, float]]:
    """The rate drops the curves mark: ``lr_drops``, none for a cosine run (its rate falls
    at every step; the title says so instead)."""
    return [] if start is not None and start.get("schedule") == "cosine" else lr_drops(epochs)


def draw_curves(run, out: Path) -> Path:
    start, epochs, final = read_metrics(run)
    x = [e["epoch"] for e in epochs]
    # with 5 classes or fewer every label is among the top five: no top-5 curves
    top5 = start is None or len(start.get("classes", ())) > 5

    def series(key, scale=1.0):
        return [e[key] * scale if e.get(key) is not None else np.nan for e in epochs]

    fig = _figure(10, 3.8)
    loss_ax, err_ax = fig.subplots(1, 2)
    loss_ax.plot(x, series("train_loss"), "o-", label="training")
    loss_ax.plot(x, series("val_loss"), "s-", label="validation (center)")
    loss_ax.set_ylabel("cross-entropy loss")
    for split, marker, colour in (("train", "o", "C0"), ("val", "s", "C1")):
        name = "training" if split == "train" else "validation"
        err_ax.plot(x, series(f"{split}_top1_error", 100), f"{marker}-", color=colour,
                    label=f"{name} top-1")
        if top5:
            err_ax.plot(x, series(f"{split}_top5_error", 100), f"{marker}--", color=colour,
                        alpha=0.6, label=f"{name} top-5")
    if final is not None:
        at = final.get("epoch", x[-1])
        err_ax.plot([at] * (1 + top5), [100 * final["top1_error"], 100 * final["top5_error"]][
            :1 + top5], "*", color="C3", markersize=11, label="ten-crop (final)")
    err_ax.set_ylabel("error (%)")
    err_ax.set_ylim(bottom=0)
    for ax in (loss_ax, err_ax):
        for epoch, lr in marked_drops(start, epochs):
            ax.axvline(epoch - 0.5, color="grey", linestyle=":", linewidth=1)
            ax.annotate(f"lr {lr:g}", (epoch - 0.5, 1), xycoords=("data", "axes fraction"),
                        rotation=90, ha="right", va="top", fontsize=7, color="grey")
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    cosine = start is not None and start.get("schedule") == "cosine"
    schedule = f", learning rate {start['lr']:g} falling to 0 along a cosine" if cosine else ""
    fig.suptitle(f"{_run_folder(run).name}: {plural(len(epochs), 'epoch')}{schedule}",
                 fontsize=9)
    fig.tight_layout()
    return _save(fig, out)


# --------------------------------------------------------------------------- the network's view

def _batches(run, split: str, indices: np.ndarray, per_batch: int):
    """(indices, uint8 center patches (n, crop, crop, 3), network input) for ``indices``
    of ``split``, ``per_batch`` at a time: the evaluation's center patch, mean subtracted."""
    from ..data import Augmentation
    crop = run.settings["crop"]
    augment = Augmentation.from_dataset(run.dataset, "center", crop=crop,
                                        seed=run.settings["seed"])
    images = run.dataset.split(split)
    for start in range(0, len(indices), per_batch):
        chunk = indices[start:start + per_batch]
        host = np.stack([images.read(int(i)) for i in chunk])
        params, _ = augment.params(chunk)
        y0, x0 = int(params[0, 1]), int(params[0, 2])  # the same patch for every image
        yield chunk, host[:, y0:y0 + crop, x0:x0 + crop], augment(
            run.device, run.device.asarray(host), chunk)


def _load(run, device):
    """The run's network (in eval mode) and data, as ``convnet evaluate`` loads them."""
    from .evaluate import load_run
    loaded = load_run(run, device=device, split="val")
    loaded.model.eval()
    return loaded


def draw_predictions(run, out: Path, images: int = 8, device=None) -> Path:
    from ..precision import using_precision
    from ..tensor import no_grad
    from .evaluate import _softmax
    loaded = _load(run, device)
    names = loaded.dataset.class_names
    labels = loaded.dataset.split("val").labels
    picked = _spread(images, len(labels))
    shown, probs = [], []
    with no_grad(), using_precision(loaded.precision):
        for chunk, patches, x in _batches(loaded, "val", picked, loaded.settings["batch_size"]):
            shown.extend(patches)
            probs.append(_softmax(np, loaded.model(x).numpy().astype(np.float64)))
    probs = np.concatenate(probs)
    top = min(5, probs.shape[1])
    per_row = min(4, len(picked))
    rows = -(-len(picked) // per_row)
    height = 3.0 * rows + 0.5
    fig = _figure(2.6 * per_row, height)
    grid = fig.add_gridspec(2 * rows, per_row, height_ratios=[2.2, 1.3] * rows, hspace=0.25,
                            wspace=0.9, left=0.17, right=0.97, top=1 - 0.5 / height,
                            bottom=0.07)
    for k, (index, patch, p) in enumerate(zip(picked, shown, probs)):
        r, c = divmod(k, per_row)
        image_ax, bar_ax = fig.add_subplot(grid[2 * r, c]), fig.add_subplot(grid[2 * r + 1, c])
        truth = int(labels[index])
        image_ax.imshow(patch)
        image_ax.set_axis_off()
        image_ax.set_title(_label(names[truth]), fontsize=8)
        best = np.argsort(-p, kind="stable")[:top]
        colours = ["C2" if b == truth else "C7" for b in best]
        bar_ax.barh(range(top), p[best], color=colours)
        bar_ax.set_yticks(range(top), [_label(names[b], 16) for b in best], fontsize=6)
        bar_ax.invert_yaxis()
        bar_ax.set_xlim(0, 1)
        bar_ax.tick_params(axis="x", labelsize=6)
    fig.suptitle(f"validation images (center patch) and their true labels; top-{top} "
                 f"predictions\n(green: the true class), {loaded.path.name}", fontsize=8)
    return _save(fig, out)


def _fc7(loaded, split: str, indices: np.ndarray, bar=None):
    """fc7 vectors (float64, one row per index) and the center patches of those images."""
    from ..precision import using_precision
    from ..tensor import no_grad
    vectors, patches = [], []
    with no_grad(), using_precision(loaded.precision):
        for chunk, shown, x in _batches(loaded, split, indices, loaded.settings["batch_size"]):
            vectors.append(loaded.model.features(x, "fc7").numpy().astype(np.float64))
            patches.extend(shown)
            if bar is not None:
                bar.update(len(chunk))
    return np.concatenate(vectors), patches


def nearest(queries: np.ndarray, pool: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (into ``pool``) and Euclidean distances of the ``k`` rows of ``pool``
    nearest each row of ``queries``, nearest first (ties: the lower index)."""
    d2 = (queries ** 2).sum(1)[:, None] + (pool ** 2).sum(1)[None, :] - 2 * queries @ pool.T
    order = np.argsort(d2, axis=1, kind="stable")[:, :k]
    return order, np.sqrt(np.maximum(np.take_along_axis(d2, order, axis=1), 0))


def draw_neighbours(run, out: Path, images: int = 5, neighbours: int = 6, pool: int = 5000,
                    device=None, show_progress: bool = False) -> Path:
    from ..progress import ProgressBar
    loaded = _load(run, device)
    if "train" not in loaded.dataset.splits or len(loaded.dataset.split("train")) == 0:
        raise TrainError(f"{loaded.dataset.folder} has no training images to search")
    names = loaded.dataset.class_names
    val_labels = loaded.dataset.split("val").labels
    train_labels = loaded.dataset.split("train").labels
    picked = _spread(images, len(val_labels))
    searched = _spread(pool, len(train_labels))
    bar = ProgressBar(len(searched), "fc7 of training images", show_progress, leave=False)
    try:
        queries, query_patches = _fc7(loaded, "val", picked)
        vectors, pool_patches = _fc7(loaded, "train", searched, bar)
    finally:
        bar.close()
    k = min(neighbours, len(searched))
    order, distance = nearest(queries, vectors, k)
    fig = _figure(1.25 * (k + 1) + 0.4, 1.45 * len(picked) + 0.5)
    axes = fig.subplots(len(picked), k + 1, squeeze=False)
    for r, index in enumerate(picked):
        truth = int(val_labels[index])
        axes[r, 0].imshow(query_patches[r])
        axes[r, 0].set_title(_label(names[truth], 14), fontsize=7, fontweight="bold")
        for j in range(k):
            hit = int(order[r, j])
            label = int(train_labels[searched[hit]])
            axes[r, j + 1].imshow(pool_patches[hit])
            axes[r, j + 1].set_title(f"{_label(names[label], 10)} {distance[r, j]:.3g}",
                                     fontsize=6, color="C2" if label == truth else "C3")
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"validation images (left) and the {k} training images with the nearest fc7 "
                 f"vectors (of {len(searched)}; green: same class)", fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / (1.45 * len(picked) + 0.5)))
    return _save(fig, out)


# --------------------------------------------------------------------------- entry point

def draw(figure: str, run, out=None, *, device=None, images: int | None = None,
         pool: int = 5000, show_progress: bool = False) -> Path:
    """Draw ``figure`` (one of ``FIGURES``) of ``run`` (a run folder or checkpoint) into
    ``out`` (default ``RUN/<figure>.png``); returns the path written. ``images``: how
    many validation images predictions (8) and neighbours (5) show; ``pool``: training
    images neighbours searches (0: all). Raises ``TrainError`` for a run folder, data or
    output path it cannot use and ``PlotUnavailable`` without matplotlib."""
    if figure not in FIGURES:
        raise TrainError(f"no figure {figure!r}; one of {', '.join(FIGURES)}")
    require_matplotlib()  # the missing extra is the first thing said
    folder = _run_folder(run)
    out = Path(out).expanduser() if out is not None else folder / f"{figure}.png"
    if images is not None and images < 1:
        raise TrainError(f"--images must be at least 1, got {images}")
    if pool < 0:
        raise TrainError(f"--pool must be 0 (all) or more, got {pool}")
    if figure == "filters":
        return draw_filters(run, out)
    if figure == "curves":
        return draw_curves(run, out)
    if figure == "predictions":
        return draw_predictions(run, out, images or 8, device)
    return draw_neighbours(run, out, images or 5, pool=pool, device=device,
                           show_progress=show_progress)
