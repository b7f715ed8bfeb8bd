"""Reading an image data set in the ImageNet folder layout.

::

    ROOT/train/<wnid>/*.JPEG     one folder per class (any depth below it)
    ROOT/val/<wnid>/*.JPEG       the same class folders (a subset is fine)
    ROOT/synset_words.txt        optional: "<wnid> readable name" per line

As torchvision's ImageFolder and the PyTorch ImageNet example expect: the class
index is the position of the folder name in the sorted list of the training
split's class folders; files are taken in sorted order. A file counts as an image
when Pillow can open its extension (``.jpg``, ``.JPEG``, ``.png``, ``.webp``, ...,
any case); other files and hidden entries (names starting with ".") are ignored and
counted. Whether an image file can really be read is found out when it is loaded
(``load_rgb``), and a file that cannot is skipped with the reason by ``prepare``.

``load_rgb`` opens any image Pillow reads and returns it as 8-bit RGB, with its
EXIF orientation applied; ``resize_center_crop`` rescales the shorter side to the
target size (Lanczos) and takes the central square, as the paper does with
256 (Krizhevsky et al. 2012, section 2).
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SPLITS = ("train", "val")
SYNSET_FILES = ("synset_words.txt", "LOC_synset_mapping.txt")
WHITE = (255, 255, 255)


class DatasetError(ValueError):
    """An image folder that does not have the expected layout."""


def _pil():
    try:
        from PIL import Image
    except ImportError as exc:  # a dependency of convnet; only a broken install lacks it
        raise ImportError("convnet.data needs Pillow: pip install pillow") from exc
    return Image


def image_extensions() -> frozenset[str]:
    """Lower-case extensions (with the dot) of every format Pillow can open."""
    Image = _pil()
    Image.init()
    return frozenset(ext.lower() for ext, fmt in Image.registered_extensions().items()
                     if fmt in Image.OPEN)


# --------------------------------------------------------------------------- the folder

@dataclass
class ImageFolder:
    """A scanned data set: classes and, per split, ``(relative path, label)`` pairs."""

    root: Path
    classes: list[str]
    class_names: list[str]
    splits: dict[str, list[tuple[str, int]]]
    ignored: list[str] = field(default_factory=list)   # non-image files, relative paths

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def path(self, relative: str) -> Path:
        return self.root / relative


def read_synsets(path) -> dict[str, str]:
    """``{wnid: readable name}`` from a ``synset_words.txt``-style file
    (each line: an id, whitespace, the name; blank lines and ``#`` comments ignored)."""
    names = {}
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, _, name = line.partition(" ")
        if "\t" in key:
            key, _, rest = key.partition("\t")
            name = (rest + " " + name).strip()
        names[key] = name.strip() or key
    return names


def _walk_images(folder: Path, root: Path, extensions, ignored: list[str]) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            full = Path(dirpath) / name
            relative = full.relative_to(root).as_posix()
            if full.suffix.lower() in extensions:
                found.append(relative)
            else:
                ignored.append(relative)
    return sorted(found)


def scan_folder(root, splits=SPLITS, synsets=None) -> ImageFolder:
    """Scan ``root`` (``train/<class>/...``, ``val/<class>/...``).

    ``splits``: the split folders to read (those missing are skipped, but ``train``
    must exist: it defines the classes). ``synsets``: a file of readable class
    names; by default ``root/synset_words.txt`` or ``root/LOC_synset_mapping.txt``
    when present, else the folder names are the names.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such folder")
    train = root / "train"
    if not train.is_dir():
        raise DatasetError(f"{root}: no train/ folder; expected the ImageNet layout "
                           f"train/<class>/*.JPEG (and optionally val/<class>/*.JPEG)")
    extensions = image_extensions()
    classes = sorted(d.name for d in train.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DatasetError(f"{train}: no class folders; expected train/<class>/*.JPEG")
    index = {name: i for i, name in enumerate(classes)}
    ignored: list[str] = []
    result: dict[str, list[tuple[str, int]]] = {}
    for split in splits:
        folder = root / split
        if not folder.is_dir():
            continue
        loose = sorted(p.name for p in folder.iterdir()
                       if p.is_file() and not p.name.startswith(".")
                       and p.suffix.lower() in extensions)
        if loose:
            raise DatasetError(
                f"{folder} holds {len(loose)} image file(s) directly (e.g. {loose[0]}); every "
                f"image must be in a class folder {split}/<class>/ (for ImageNet's flat val/, "
                f"sort the files into class folders with the devkit's ground truth first)")
        entries: list[tuple[str, int]] = []
        for d in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if d.name not in index:
                raise DatasetError(f"{d}: class folder {d.name!r} is not a class of train/ "
                                   f"({len(classes)} classes); the splits must share their classes")
            entries.extend((rel, index[d.name]) for rel in _walk_images(d, root, extensions, ignored))
        result[split] = entries
    names = {}
    synset_file = Path(synsets) if synsets is not None else next(
        (root / f for f in SYNSET_FILES if (root / f).is_file()), None)
    if synset_file is not None:
        if not synset_file.is_file():
            raise DatasetError(f"{synset_file}: no such class-names file")
        names = read_synsets(synset_file)
    return ImageFolder(root=root, classes=classes,
                       class_names=[names.get(c, c) for c in classes],
                       splits=result, ignored=sorted(ignored))


# --------------------------------------------------------------------------- one image

def _to_rgb(im):
    """Any Pillow image as mode RGB: palette, grayscale, 16-bit, CMYK, alpha, ..."""
    Image = _pil()
    mode = im.mode
    if mode == "RGB" and "transparency" not in im.info:
        return im
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit grayscale (PNG, TIFF): scale 0..65535 to 0..255 with rounding ("I" is how
        # older Pillow opened 16-bit PNGs; values outside 0..65535 are clipped).
        values = np.asarray(im, dtype=np.int64).clip(0, 65535)
        gray = ((values * 255 + 32767) // 65535).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    if mode == "CMYK":
        profile = im.info.get("icc_profile")
        if profile:
            try:
                import io

                from PIL import ImageCms
                source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
                return ImageCms.profileToProfile(im, source, ImageCms.createProfile("sRGB"),
                                                 outputMode="RGB")
            except Exception:  # a broken or unusable profile: the plain conversion below
                pass
        return im.convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
    if has_alpha:
        # Transparent pixels are shown over white, as a browser shows them on a page;
        # the colour values under alpha 0 are often arbitrary (black), so they are not kept.
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


def load_rgb(source, min_size: int | None = None):
    """Open an image file (path or file object) as an 8-bit RGB Pillow image.

    EXIF orientation is applied. Multi-frame files give their first frame.
    ``min_size``: a JPEG whose shorter side is at least twice ``min_size`` is decoded
    at a reduced scale (libjpeg's DCT scaling) that keeps its shorter side at least
    ``2 * min_size``, which the Lanczos resize then takes the rest of the way.
    Errors (unreadable, truncated, not an image) propagate as Pillow raises them.
    """
    Image = _pil()
    from PIL import ImageOps
    with warnings.catch_warnings():
        # Pillow's notes on odd files (possibly corrupt EXIF, large images, palette
        # transparency) would interleave with the progress bar from every worker; the
        # file is either converted as described above or skipped with the error.
        warnings.simplefilter("ignore")
        with Image.open(source) as im:
            if min_size and im.format == "JPEG":
                im.draft(None, (2 * min_size, 2 * min_size))
            im.load()
            try:
                oriented = ImageOps.exif_transpose(im)
            except Exception:  # broken EXIF data: keep the stored orientation
                oriented = im
            rgb = _to_rgb(oriented)
            if rgb is im:
                rgb = im.copy()  # outlive the with block
            return rgb


def resize_center_crop(im, size: int = 256) -> np.ndarray:
    """Rescale so the shorter side is ``size`` (Lanczos, antialiased) and take the
    central ``size x size`` square; returns uint8 (size, size, 3).

    Done in one resampling of the central square of the source (Pillow's ``box``), so
    no rounding of the intermediate long side shifts the crop.
    """
    Image = _pil()
    w, h = im.size
    if w < 1 or h < 1:
        raise ValueError(f"empty image ({w}x{h})")
    s = min(w, h)
    box = ((w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2)
    if (w, h) == (size, size):
        out = im
    else:
        out = im.resize((size, size), Image.Resampling.LANCZOS, box=box, reducing_gap=3.0)
    array = np.asarray(out, dtype=np.uint8)
    if array.shape != (size, size, 3):
        raise ValueError(f"resized image has shape {array.shape}, expected ({size}, {size}, 3)")
    return array


def prepare_image(source, size: int = 256) -> np.ndarray:
    """``load_rgb`` + ``resize_center_crop``: a source file as uint8 (size, size, 3)."""
    return resize_center_crop(load_rgb(source, min_size=size), size)


def describe_error(exc: BaseException) -> str:
    """A one-line reason for the skip report."""
    from PIL import Image, UnidentifiedImageError
    if isinstance(exc, UnidentifiedImageError):
        return "not an image Pillow can read (unidentified format: not an image, or corrupt header)"
    if isinstance(exc, Image.DecompressionBombError):
        return f"too many pixels (Pillow's decompression-bomb limit): {exc}"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, FileNotFoundError):
        return "file not found (removed after the folder was read?)"
    if isinstance(exc, PermissionError):
        return f"permission denied: {text}"
    if isinstance(exc, OSError) and "truncated" in text:
        return f"truncated file: {text}"
    if isinstance(exc, OSError) and text:
        return f"corrupt or unreadable image data: {text}"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
