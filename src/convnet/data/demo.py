"""A generated image data set in the ImageNet folder layout, for tests, demos and the
default run: ``convnet make-demo-data DIR --classes 10 --train-per-class 300
--val-per-class 50 --size 256 --seed 0``.

Every image is a real JPEG (quality 90) of a textured object on a cluttered
background::

    DIR/train/c000/c000_00000.JPEG ...   DIR/val/c000/c000_val_0000.JPEG ...
    DIR/synset_words.txt                 "c000 star, stripes, warm palette" per class

A class is a combination of a shape (disk, triangle, square, hexagon, star, cross,
arrow, crescent, ring, heart), a texture (stripes, checks, dots, rings, gradient,
speckle) and a two-colour palette. Shapes, textures and palettes are each shared by
several classes (classes 2j and 2j+1 share a palette; classes k and k+10 share a
shape), so no single cue names the class. Each image draws the object's position,
size, aspect, rotation, texture frequency and phase and a colour jitter; the
background is a random two-colour pattern with 8-16 distractor shapes (some in the
palettes' colours), one or two small occluders over the object, and pixel noise.
Shorter side ``size``, longer side up to 1.25x (landscape or portrait), so ``prepare``
has real resizing and cropping to do.

Learnable but not trivial: the class is in the shape and texture, at a random
position, scale and rotation; a linear model on raw pixels cannot pool over
positions and mostly reads colour, which the palettes share, so it stays far from
perfect, while a small convnet separates the classes almost completely.

Deterministic: image ``i`` of class ``k`` in split ``s`` draws everything from
``numpy.random.default_rng([seed, s, k, i])`` (so the files do not depend on the
number of workers; they may differ across NumPy or libjpeg versions).
"""
from __future__ import annotations

import io
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from ..arguments import integer
from ..progress import ProgressBar

SPLIT_CODES = {"train": 0, "val": 1}
SHAPES = ("disk", "triangle", "square", "hexagon", "star", "cross", "arrow", "crescent",
          "ring", "heart")
TEXTURES = ("stripes", "checks", "dots", "rings", "gradient", "speckle")
PALETTES = (
    ("warm", (215, 55, 40), (250, 195, 60)),
    ("cool", (35, 85, 215), (70, 205, 215)),
    ("leaf", (35, 150, 55), (205, 230, 95)),
    ("plum", (125, 45, 165), (240, 135, 200)),
    ("ink", (30, 30, 35), (225, 225, 220)),
    ("earth", (115, 75, 35), (205, 170, 120)),
)
JPEG_QUALITY = 90
MARKER = ".convnet-demo.json"  # the settings of the set in a folder (hidden: not an image)
# make_demo_data's defaults: the set `convnet train` makes and trains on with no --data
DEMO = {"classes": 10, "train_per_class": 300, "val_per_class": 50, "size": 256, "seed": 0}


class DemoError(ValueError):
    """Bad arguments for the demo data set."""


# --------------------------------------------------------------------------- classes

def _rotate_hue(rgb, turns: float):
    import colorsys
    h, s, v = colorsys.rgb_to_hsv(*(c / 255.0 for c in rgb))
    r, g, b = colorsys.hsv_to_rgb((h + turns) % 1.0, s, v)
    return (round(r * 255), round(g * 255), round(b * 255))


def class_spec(k: int) -> dict:
    """Shape, texture and palette of class ``k`` (any k >= 0)."""
    shape = SHAPES[k % len(SHAPES)]
    texture = TEXTURES[(k + k // len(SHAPES) + (k // 2) * 3) % len(TEXTURES)]
    p = (k // 2) % len(PALETTES)
    name, c1, c2 = PALETTES[p]
    cycle = k // (2 * len(PALETTES))
    if cycle:  # beyond the base palettes: the same pairs with rotated hues
        turns = (cycle * 0.381966) % 1.0
        c1, c2 = _rotate_hue(c1, turns), _rotate_hue(c2, turns)
        name = f"{name}-{cycle}"
    return {"shape": shape, "texture": texture, "palette": name, "colors": (c1, c2)}


def class_folder(k: int) -> str:
    return f"c{k:03d}"


# --------------------------------------------------------------------------- drawing

def _shape_polygons(shape: str) -> list[tuple[np.ndarray, int]]:
    """Polygons (vertices in the unit frame, radius about 1) and their fill (255 or 0)."""
    def ngon(n, r=1.0, phase=0.0, cx=0.0, cy=0.0):
        a = phase + 2 * np.pi * np.arange(n) / n
        return np.stack([cx + r * np.cos(a), cy + r * np.sin(a)], axis=1)

    if shape == "disk":
        return [(ngon(48), 255)]
    if shape == "triangle":
        return [(ngon(3, 1.1, -np.pi / 2), 255)]
    if shape == "square":
        return [(ngon(4, 1.0, np.pi / 4), 255)]
    if shape == "hexagon":
        return [(ngon(6), 255)]
    if shape == "star":
        a = -np.pi / 2 + np.pi * np.arange(10) / 5
        r = np.where(np.arange(10) % 2 == 0, 1.1, 0.45)
        return [(np.stack([r * np.cos(a), r * np.sin(a)], axis=1), 255)]
    if shape == "cross":
        w = 0.33
        pts = [(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w),
               (-1, w), (-1, -w), (-w, -w)]
        return [(np.array(pts, float), 255)]
    if shape == "arrow":
        pts = [(-1, -0.3), (0.2, -0.3), (0.2, -0.75), (1, 0), (0.2, 0.75), (0.2, 0.3), (-1, 0.3)]
        return [(np.array(pts, float), 255)]
    if shape == "crescent":
        return [(ngon(48), 255), (ngon(48, 0.85, 0.0, 0.45, -0.15), 0)]
    if shape == "ring":
        return [(ngon(48), 255), (ngon(48, 0.55), 0)]
    if shape == "heart":
        t = np.linspace(0, 2 * np.pi, 60, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        return [(np.stack([x, y + 2.5], axis=1) / 15.0, 255)]
    raise DemoError(f"unknown shape {shape!r}")


def _texture(kind: str, u: np.ndarray, v: np.ndarray, freq: float, phase: float,
             rng) -> np.ndarray:
    """Texture value in [0, 1] at object-frame coordinates (u, v) (radius about 1)."""
    if kind == "stripes":
        return (np.sin(freq * u + phase) > 0).astype(np.float32)
    if kind == "checks":
        return ((np.floor(freq * u / np.pi + phase) + np.floor(freq * v / np.pi + phase)) % 2
                ).astype(np.float32)
    if kind == "dots":
        return (np.sin(freq * u + phase) * np.sin(freq * v + phase) > 0.35).astype(np.float32)
    if kind == "rings":
        return 0.5 + 0.5 * np.sin(freq * np.sqrt(u * u + v * v) + phase)
    if kind == "gradient":
        return np.clip(0.5 + 0.5 * (u * np.cos(phase) + v * np.sin(phase)), 0, 1)
    if kind == "speckle":
        return (rng.random(u.shape) < 0.3).astype(np.float32)
    raise DemoError(f"unknown texture {kind!r}")


def _jitter(rgb, rng, amount=0.18) -> np.ndarray:
    c = np.asarray(rgb, np.float32) * rng.uniform(1 - amount, 1 + amount) + rng.normal(0, 12, 3)
    return np.clip(c, 0, 255)


def _random_polygon(rng, cx, cy, r):
    n = int(rng.integers(3, 8))
    a = np.sort(rng.uniform(0, 2 * np.pi, n))
    radii = r * rng.uniform(0.5, 1.0, n)
    return [(float(cx + q * math.cos(t)), float(cy + q * math.sin(t))) for q, t in zip(radii, a)]


def _clutter(draw, rng, w, h, size, count, all_colors):
    for _ in range(count):
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        r = rng.uniform(0.03, 0.14) * size
        if rng.random() < 0.4:
            color = tuple(int(c) for c in _jitter(all_colors[rng.integers(len(all_colors))], rng))
        else:
            color = tuple(int(c) for c in rng.integers(0, 256, 3))
        kind = rng.integers(3)
        if kind == 0:
            draw.polygon(_random_polygon(rng, cx, cy, r), fill=color)
        elif kind == 1:
            draw.ellipse([cx - r, cy - r * rng.uniform(0.4, 1), cx + r, cy + r], fill=color)
        else:
            x2, y2 = cx + rng.uniform(-3, 3) * r, cy + rng.uniform(-3, 3) * r
            draw.line([(cx, cy), (x2, y2)], fill=color, width=int(rng.integers(2, 8)))


def _all_palette_colors(classes: int):
    colors = []
    for k in range(0, max(classes, 2), 2):
        colors.extend(class_spec(k)["colors"])
    return colors


def render(k: int, rng, size: int = 256, classes: int = 10) -> np.ndarray:
    """One image of class ``k`` drawn with ``rng``: uint8 (H, W, 3)."""
    from PIL import Image, ImageDraw
    spec = class_spec(k)
    long_side = int(round(size * rng.uniform(1.0, 1.25)))
    w, h = (long_side, size) if rng.random() < 0.5 else (size, long_side)

    # background: two random colours mixed by a smooth random pattern (made small, upscaled)
    g = 32
    yy, xx = np.mgrid[0:g, 0:g].astype(np.float32) / g
    field = np.zeros((g, g), np.float32)
    for _ in range(3):
        angle, freq, ph = rng.uniform(0, np.pi), rng.uniform(2, 12), rng.uniform(0, 2 * np.pi)
        field += np.sin(freq * (xx * np.cos(angle) + yy * np.sin(angle)) + ph)
    t = 0.5 + 0.5 * np.tanh(field)
    c1, c2 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    small = (c1 + (c2 - c1) * t[..., None]).astype(np.uint8)
    image = Image.fromarray(small, "RGB").resize((w, h), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(image)
    colors = _all_palette_colors(classes)
    _clutter(draw, rng, w, h, size, int(rng.integers(8, 17)), colors)

    # the object: a rotated, scaled, stretched shape, filled with the class texture
    radius = rng.uniform(0.2, 0.36) * size
    cx = w / 2 + rng.uniform(-0.18, 0.18) * size
    cy = h / 2 + rng.uniform(-0.18, 0.18) * size
    angle = rng.uniform(0, 2 * np.pi)
    stretch = rng.uniform(0.8, 1.25)
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    reach = int(math.ceil(radius * 1.25 * max(stretch, 1 / stretch))) + 2
    x0, y0 = int(cx) - reach, int(cy) - reach
    box = 2 * reach
    mask = Image.new("L", (box, box), 0)
    mdraw = ImageDraw.Draw(mask)
    scale = np.array([radius * stretch, radius / stretch])
    for vertices, fill in _shape_polygons(spec["shape"]):
        pts = (vertices * scale) @ rot.T + np.array([cx - x0, cy - y0])
        mdraw.polygon([tuple(p) for p in pts], fill=fill)
    yy, xx = np.mgrid[0:box, 0:box].astype(np.float32)
    du, dv = xx + x0 - cx, yy + y0 - cy
    u = (du * rot[0, 0] + dv * rot[1, 0]) / (radius * stretch)   # back into the unit frame
    v = (du * rot[0, 1] + dv * rot[1, 1]) / (radius / stretch)
    tex = _texture(spec["texture"], u, v, rng.uniform(4, 8), rng.uniform(0, 2 * np.pi), rng)
    a, b = _jitter(spec["colors"][0], rng), _jitter(spec["colors"][1], rng)
    if rng.random() < 0.5:
        a, b = b, a
    fill = (a + (b - a) * tex[..., None]).astype(np.uint8)
    image.paste(Image.fromarray(fill, "RGB"), (x0, y0), mask)

    # occluders over the object, then pixel noise
    for _ in range(int(rng.integers(1, 3))):
        ox, oy = cx + rng.uniform(-1, 1) * radius, cy + rng.uniform(-1, 1) * radius
        r = rng.uniform(0.04, 0.09) * size
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        draw.polygon(_random_polygon(rng, ox, oy, r), fill=color)
    pixels = np.asarray(image, dtype=np.int16)
    pixels = pixels + rng.integers(-10, 11, pixels.shape, dtype=np.int16)
    return np.clip(pixels, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- writing

def image_path(root: Path, split: str, k: int, i: int) -> Path:
    folder = class_folder(k)
    name = f"{folder}_{i:05d}.JPEG" if split == "train" else f"{folder}_val_{i:04d}.JPEG"
    return root / split / folder / name


def _write_images(state, task: dict, progress) -> int:
    """Render and save a list of (split, class, index) images (runs in a worker)."""
    from PIL import Image
    root = Path(task["root"])
    done = 0
    for split, k, i in task["items"]:
        rng = np.random.default_rng([task["seed"], SPLIT_CODES[split], k, i])
        pixels = render(k, rng, task["size"], task["classes"])
        buffer = io.BytesIO()
        Image.fromarray(pixels, "RGB").save(buffer, format="JPEG", quality=JPEG_QUALITY)
        path = image_path(root, split, k, i)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(buffer.getvalue())
        tmp.replace(path)
        done += 1
        if done % 16 == 0:
            progress(16)
    if done % 16:
        progress(done % 16)
    return done


def make_demo_data(root, *, classes: int = DEMO["classes"],
                   train_per_class: int = DEMO["train_per_class"],
                   val_per_class: int = DEMO["val_per_class"], size: int = DEMO["size"],
                   seed: int = DEMO["seed"],
                   workers: int | None = None, progress: bool | None = None,
                   start_method: str | None = None) -> dict:
    """Write the demo data set under ``root``; returns a summary dict.

    ``root`` must be empty or hold a demo set made with the same arguments (which is
    then written again, identically). ``workers``: processes (default: every usable
    core; 0 runs here).
    """
    from ._pool import run_tasks, usable_cpus
    classes = integer(classes, "classes", low=1, high=1000, error=DemoError)
    train_per_class = integer(train_per_class, "train-per-class", low=1, high=100_000,
                              error=DemoError)
    val_per_class = integer(val_per_class, "val-per-class", low=0, high=100_000, error=DemoError)
    size = integer(size, "size", low=32, high=4096, error=DemoError)
    seed = integer(seed, "seed", low=0, high=2**63 - 1, error=DemoError)
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise DemoError(f"{root} exists and is not a folder")
    settings = {"classes": classes, "train_per_class": train_per_class,
                "val_per_class": val_per_class, "size": size, "seed": seed}
    marker = root / MARKER
    if root.is_dir() and any(root.iterdir()):
        try:
            previous = json.loads(marker.read_text())
        except (OSError, ValueError):
            previous = None
        if previous != settings:
            raise DemoError(f"{root} is not empty" + (
                " and holds a demo set made with other settings" if previous else "")
                + "; choose an empty or new folder (files of another set would mix into this one)")
    workers = usable_cpus() if workers is None else int(workers)
    show = sys.stderr.isatty() if progress is None else bool(progress)
    started = time.monotonic()

    items = []
    for split, per_class in (("train", train_per_class), ("val", val_per_class)):
        for k in range(classes):
            if per_class or split == "train":
                (root / split / class_folder(k)).mkdir(parents=True, exist_ok=True)
            items.extend((split, k, i) for i in range(per_class))
    lines = []
    for k in range(classes):
        spec = class_spec(k)
        lines.append(f"{class_folder(k)} {spec['shape']}, {spec['texture']}, {spec['palette']} palette")
    (root / "synset_words.txt").write_text("\n".join(lines) + "\n")

    root.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(settings) + "\n")
    chunk = 32
    tasks = [{"root": str(root), "items": items[s:s + chunk], "seed": seed, "size": size,
              "classes": classes} for s in range(0, len(items), chunk)]
    bar = ProgressBar(len(items), "make-demo-data", show)
    try:
        for _ in run_tasks(_write_images, tasks, workers, bar, start_method):
            pass
    finally:
        bar.close()
    return {"root": str(root), "classes": classes, "train": classes * train_per_class,
            "val": classes * val_per_class, "seconds": time.monotonic() - started}
