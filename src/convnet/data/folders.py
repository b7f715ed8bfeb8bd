"""Reading an image data set in the ImageNet folder layout.

::

    ROOT/train/<wnid>/*.JPEG     one folder per class (any depth below it)
    ROOT/val/<wnid>/*.JPEG       the same class folders (a subset is fine)
    ROOT/synset_words.txt        optional: "<wnid> readable name" per line

As torchvision's ImageFolder and the PyTorch ImageNet example expect: the class
index is the position of the folder name in the sorted list of the training
split's class folders; files are taken in sorted order. A file counts as an image
when Pillow can open its extension (``.jpg``, ``.JPEG``, ``.png``, ``.webp``, ...,
any case); hidden entries (names starting with ".") are passed over, and these are
ignored and listed with the reason (``ImageFolder.ignored_reasons``; ``prepare``
counts them in its summary and lists them in ``skipped.txt``):

* files whose extension is not an image's;
* anything that is not a regular file (a FIFO, a socket, a device, a broken link):
  reading a FIFO would wait forever;
* a link to a folder that the scan has read already (``train/a/up -> ..``, or two
  links to one folder): links are followed, each real folder once, so a link loop
  cannot multiply the images.

A class folder of ``train/`` without a single image is an error naming it and what
it holds: a class the network never sees cannot be learned. Whether an image file
can really be read is found out when it is loaded (``load_rgb``), and a file that
cannot is skipped with the reason by ``prepare``.

``load_rgb`` opens any image Pillow reads and returns it as 8-bit RGB, with its
EXIF orientation applied; ``resize_center_crop`` rescales the shorter side to the
target size (Lanczos) and takes the central square, as the paper does with
256 (Krizhevsky et al. 2012, section 2).
"""
from __future__ import annotations

import os
import stat
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
    ignored: list[str] = field(default_factory=list)   # files not read, relative paths
    ignored_reasons: list[tuple[str, str]] = field(default_factory=list)  # (path, why)

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


def _folder_key(path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _walk_images(folder: Path, root: Path, extensions, ignored: list[tuple[str, str]],
                 seen: dict) -> list[str]:
    """The image files under the class folder ``folder`` (relative to ``root``, sorted);
    what is passed over goes into ``ignored`` as (relative path, reason). ``seen``:
    (device, inode) -> name of every folder read so far or read on its own (the data
    set's root, split and class folders), so that no folder is read twice (link loops,
    links into another class)."""
    found = []
    stack = [folder]
    while stack:
        path = stack.pop()
        try:
            key = _folder_key(path)
        except OSError as exc:
            ignored.append((path.relative_to(root).as_posix(),
                            f"cannot read the folder ({exc.strerror or exc})"))
            continue
        if path != folder and key in seen:
            ignored.append((path.relative_to(root).as_posix(),
                            f"a link to {seen[key]}, which is read already or on its own (a "
                            f"link loop, or a second way into a folder): not read again"))
            continue
        seen[key] = path.relative_to(root).as_posix() + "/"
        try:
            entries = sorted(os.scandir(path), key=lambda e: e.name)
        except OSError as exc:
            ignored.append((path.relative_to(root).as_posix(),
                            f"cannot list the folder ({exc.strerror or exc})"))
            continue
        for entry in reversed(entries):
            if entry.name.startswith("."):
                continue
            full = Path(entry.path)
            relative = full.relative_to(root).as_posix()
            try:
                mode = entry.stat().st_mode  # follows links
            except OSError:
                ignored.append((relative, "a broken link (its target does not exist)"))
                continue
            if stat.S_ISDIR(mode):
                stack.append(full)
            elif not stat.S_ISREG(mode):
                kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(mode) else
                        "a socket" if stat.S_ISSOCK(mode) else "a device" if
                        stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file")
                ignored.append((relative, f"{kind}, not a regular file: not read"))
            elif full.suffix.lower() in extensions:
                found.append(relative)
            else:
                ignored.append((relative, f"not an image file (extension "
                                          f"{full.suffix or 'none'!r})"))
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
    ignored: list[tuple[str, str]] = []
    seen: dict = {_folder_key(root): "the data set's folder", _folder_key(train): "train/"}
    for split in splits:  # the split and class folders are each read on their own
        if (root / split).is_dir():
            seen[_folder_key(root / split)] = f"{split}/"
            for d in (root / split).iterdir():
                if d.is_dir() and not d.name.startswith("."):
                    seen.setdefault(_folder_key(d), f"{split}/{d.name}/")
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
            before = len(ignored)
            images = _walk_images(d, root, extensions, ignored, seen)
            if not images and split == "train":
                passed = [f"{Path(r).name} ({why.split(':')[0].split(' (')[0]})"
                          for r, why in ignored[before:]]
                raise DatasetError(
                    f"{d}: class folder {d.name!r} holds no images"
                    + (f" ({len(passed)} other file(s): {', '.join(passed[:3])}"
                       f"{', ...' if len(passed) > 3 else ''})" if passed else " (it is empty)")
                    + "; a class without training images cannot be learned: add images "
                      "or remove the folder")
            entries.extend((rel, index[d.name]) for rel in images)
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
                       splits=result, ignored=sorted(r for r, _ in ignored),
                       ignored_reasons=sorted(ignored))


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
