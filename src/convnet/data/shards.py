"""Prepared shards and the manifest: the on-disk format of ``convnet prepare``.

A prepared data set is a folder::

    manifest.json            counts, classes, settings, skipped files, statistics, version
    mean.npy                 the mean image, float32 (H, W, 3), over the training split
    skipped.txt              one line per skipped source file: split, path, reason
    train-00000.cnshard ...  the training images, in shards
    val-00000.cnshard ...    the validation images

Shard container (one file per shard; all integers little-endian)
----------------------------------------------------------------
=========  =====================================================================
offset     content
=========  =====================================================================
0          header, 128 bytes (below); written last, so a file whose header is
           all zeros or whose recorded length disagrees is never taken as whole
4096       payload: ``kind`` jpeg: the JPEG files back to back; ``kind`` raw:
           uint8 pixels (count, height, width, channels), C order
after it   labels: int32[count]
then       jpeg only: offsets uint64[count + 1], image i is payload bytes
           ``offsets[i]:offsets[i + 1]``
then       metadata: UTF-8 JSON (``sources``: the relative source path of each
           image; ``skipped``: ``[path, reason]`` pairs; ``plan``: the digest of
           the sources and settings this shard was made from)
=========  =====================================================================

Header: magic ``b"CNSHARD\\0"`` (8 bytes), then ``u32 container_version``, ``u32 kind``
(0 jpeg, 1 raw), ``u64 count``, ``u32 height``, ``u32 width``, ``u32 channels``,
``u32 tables_crc``, and the offsets and lengths (``u64`` pairs) of the payload, the
labels, the offsets table and the metadata, the CRC-32 of the payload (``u32``) and
the total file length (``u64``); zero padding to 128 bytes. ``tables_crc`` (container
version 2; version 1 shards, which have 0 there, are still read) is the CRC-32 of the
128 header bytes with this field zeroed, then the labels, the offsets table and the
metadata: every byte a reader uses is covered by one of the two CRCs.

Checking: ``read_shard_info`` checks the header and ``tables_crc`` always (the tables
are read anyway), the payload's CRC with ``verify=True``. Readers of images
(``PreparedSplit.read``, the loader's workers) check a shard's payload once per
process, the first time they touch it (``verify_once``): a flipped byte anywhere
stops the run with the file named, instead of training on it. ``prepare`` checks
both before it counts a shard as complete, and makes a damaged one again.

A shard is written under a temporary name (``.NAME.tmp-PID``), flushed to disk and
renamed into place when complete (``write_shard``): an interrupted ``prepare`` leaves
temporaries, never a shard that looks whole, and the next run deletes them.

The manifest (``manifest.json``) carries ``"format": "convnet-prepared"`` and
``"version": FORMAT_VERSION``; ``read_manifest`` refuses any other version with a
message saying what to do. It also carries ``"checksum"``, the SHA-256 of its other
entries (``manifest_checksum``), and its statistics the SHA-256 of ``mean.npy``
(``"mean_sha256"``): a flipped byte in either is an error naming the file, not a
changed class list or mean image. (To keep a deliberate edit of the manifest, delete
its ``"checksum"`` entry; manifests written before it existed have none.)
"""
from __future__ import annotations

import hashlib
import json
import os
import shlex
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FORMAT_NAME = "convnet-prepared"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MEAN_FILE = "mean.npy"
SKIPPED_FILE = "skipped.txt"
SHARD_SUFFIX = ".cnshard"

MAGIC = b"CNSHARD\0"
CONTAINER_VERSION = 2
_READABLE_CONTAINERS = (1, 2)
_TABLES_CRC_AT = 36  # byte offset of tables_crc in the header
KINDS = {"jpeg": 0, "raw": 1}
KIND_NAMES = {v: k for k, v in KINDS.items()}
HEADER_BYTES = 128
PAYLOAD_OFFSET = 4096  # page-aligned, so raw pixels can be memory-mapped
_HEADER = struct.Struct("<8sIIQIIII" + "QQ" * 4 + "IQ")
assert _HEADER.size <= HEADER_BYTES


class ShardError(ValueError):
    """A shard file that is missing, truncated, corrupt or of another format."""


class ManifestError(ValueError):
    """A prepared folder whose manifest is missing, unreadable or of another version."""


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:05d}{SHARD_SUFFIX}"


def temporary_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def is_temporary(name: str) -> bool:
    return name.startswith(".") and f"{SHARD_SUFFIX}.tmp-" in name


# --------------------------------------------------------------------------- writing

class ShardWriter:
    """Write one shard: ``add(pixels_or_jpeg, label, source)`` per image, then ``close()``.

    Writes go to a temporary file; ``close()`` adds labels, offsets, metadata and the
    header, flushes to disk and renames it to ``path``. ``abort()`` (or leaving a
    ``with`` block by an exception) deletes the temporary file.
    """

    def __init__(self, path, kind: str, size: tuple[int, int, int]):
        if kind not in KINDS:
            raise ValueError(f"shard kind must be one of {sorted(KINDS)}, got {kind!r}")
        self.path = Path(path)
        self.kind = kind
        self.size = tuple(int(s) for s in size)
        self.tmp = temporary_name(self.path)
        self._file = open(self.tmp, "wb")
        self._file.write(bytes(PAYLOAD_OFFSET))  # the header stays zeros until the shard is complete
        self._labels: list[int] = []
        self._offsets: list[int] = [0]
        self._crc = 0
        self._closed = False

    def add(self, data, label: int) -> None:
        if self.kind == "raw":
            array = np.ascontiguousarray(data, dtype=np.uint8)
            if array.shape != self.size:
                raise ValueError(f"raw shard image has shape {array.shape}, expected {self.size}")
            blob = memoryview(array).cast("B")
        else:
            blob = memoryview(data).cast("B")
        self._file.write(blob)
        self._crc = zlib.crc32(blob, self._crc)
        self._offsets.append(self._offsets[-1] + blob.nbytes)
        self._labels.append(int(label))

    def __len__(self) -> int:
        return len(self._labels)

    def close(self, meta: dict) -> Path:
        """Finish the shard and move it into place; returns its path."""
        f = self._file
        payload_length = self._offsets[-1]
        labels = np.asarray(self._labels, dtype="<i4")
        labels_offset = PAYLOAD_OFFSET + payload_length
        f.write(labels.tobytes())
        offsets_offset = offsets_length = 0
        if self.kind == "jpeg":
            offsets_offset = labels_offset + labels.nbytes
            table = np.asarray(self._offsets, dtype="<u8").tobytes()
            f.write(table)
            offsets_length = len(table)
        meta_offset = labels_offset + labels.nbytes + offsets_length
        meta_bytes = json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()
        f.write(meta_bytes)
        total = meta_offset + len(meta_bytes)
        header = _HEADER.pack(MAGIC, CONTAINER_VERSION, KINDS[self.kind], len(self._labels),
                              *self.size, 0,
                              PAYLOAD_OFFSET, payload_length, labels_offset, labels.nbytes,
                              offsets_offset, offsets_length, meta_offset, len(meta_bytes),
                              self._crc & 0xFFFFFFFF, total).ljust(HEADER_BYTES, b"\0")
        tables = labels.tobytes() + (table if self.kind == "jpeg" else b"") + meta_bytes
        crc = zlib.crc32(tables, zlib.crc32(header)) & 0xFFFFFFFF
        header = header[:_TABLES_CRC_AT] + struct.pack("<I", crc) + header[_TABLES_CRC_AT + 4:]
        f.seek(0)
        f.write(header)
        f.flush()
        os.fsync(f.fileno())
        f.close()
        self._closed = True
        os.replace(self.tmp, self.path)  # atomic: the shard appears whole or not at all
        return self.path

    def abort(self) -> None:
        if not self._closed:
            self._file.close()
            self._closed = True
        try:
            os.unlink(self.tmp)
        except FileNotFoundError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.abort()


# --------------------------------------------------------------------------- reading

@dataclass(frozen=True)
class ShardInfo:
    """A shard's header and tables (no pixels): what readers and prepare need."""

    path: Path
    kind: str
    count: int
    size: tuple[int, int, int]
    payload_offset: int
    payload_length: int
    crc32: int
    labels: np.ndarray          # int32 (count,)
    offsets: np.ndarray         # int64 (count + 1,), relative to payload_offset
    meta: dict

    def image_range(self, i: int) -> tuple[int, int]:
        """(absolute file offset, length) of image ``i``."""
        return self.payload_offset + int(self.offsets[i]), int(self.offsets[i + 1] - self.offsets[i])


def read_shard_info(path, verify: bool = False, meta: bool = True) -> ShardInfo:
    """Parse a shard's header, labels, offsets and (unless ``meta=False``) metadata;
    ``verify`` also checks the payload's CRC-32. Raises ShardError naming the file and
    what is wrong."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size_on_disk = os.fstat(f.fileno()).st_size
            raw = f.read(HEADER_BYTES)
            if len(raw) < HEADER_BYTES:
                raise ShardError(f"{path}: truncated shard ({size_on_disk} bytes, no complete header)")
            (magic, version, kind, count, h, w, c, tables_crc, p_off, p_len, l_off, l_len, o_off,
             o_len, m_off, m_len, crc, total) = _HEADER.unpack_from(raw)
            if magic != MAGIC:
                raise ShardError(f"{path}: not a convnet shard (bad magic {magic!r}; an "
                                 f"incomplete write leaves zeros here)")
            if version not in _READABLE_CONTAINERS:
                raise ShardError(f"{path}: shard container version {version}, this convnet reads "
                                 f"versions {', '.join(map(str, _READABLE_CONTAINERS))}; prepare "
                                 f"the data set again")
            if kind not in KIND_NAMES:
                raise ShardError(f"{path}: unknown shard kind {kind}")
            if total != size_on_disk:
                raise ShardError(f"{path}: truncated or overwritten shard: the header records "
                                 f"{total} bytes, the file has {size_on_disk}")
            ends = (p_off + p_len, l_off + l_len, o_off + o_len, m_off + m_len)
            if max(ends) > total or l_len != 4 * count:
                raise ShardError(f"{path}: inconsistent shard header")
            f.seek(l_off)
            label_bytes = f.read(l_len)
            table_bytes = b""
            if KIND_NAMES[kind] == "jpeg":
                f.seek(o_off)
                table_bytes = f.read(o_len)
            f.seek(m_off)
            meta_bytes = f.read(m_len)
            if version >= 2:
                zeroed = raw[:_TABLES_CRC_AT] + bytes(4) + raw[_TABLES_CRC_AT + 4:]
                got = zlib.crc32(label_bytes + table_bytes + meta_bytes, zlib.crc32(zeroed))
                if got != tables_crc:
                    raise ShardError(f"{path}: checksum mismatch in the header, labels, offset "
                                     f"table or metadata (stored {tables_crc:08x}, computed "
                                     f"{got:08x}): the file is corrupt; prepare the data set again")
            labels = np.frombuffer(label_bytes, dtype="<i4").astype(np.int32)
            if KIND_NAMES[kind] == "jpeg":
                if o_len != 8 * (count + 1):
                    raise ShardError(f"{path}: inconsistent shard header (offset table)")
                offsets = np.frombuffer(table_bytes, dtype="<u8").astype(np.int64)
                if offsets[0] != 0 or offsets[-1] != p_len or np.any(np.diff(offsets) <= 0):
                    raise ShardError(f"{path}: corrupt offset table")
            else:
                item = h * w * c
                if p_len != item * count:
                    raise ShardError(f"{path}: raw payload of {p_len} bytes does not hold "
                                     f"{count} images of {h}x{w}x{c}")
                offsets = np.arange(count + 1, dtype=np.int64) * item
            metadata = {}
            if meta:
                try:
                    metadata = json.loads(meta_bytes.decode())
                except ValueError as exc:
                    raise ShardError(f"{path}: corrupt shard metadata ({exc})") from None
            if verify:
                _check_payload(f, path, p_off, p_len, crc)
    except FileNotFoundError:
        raise ShardError(f"{path}: shard file is missing") from None
    except OSError as exc:
        raise ShardError(f"{path}: cannot read shard ({exc})") from None
    return ShardInfo(path=path, kind=KIND_NAMES[kind], count=int(count), size=(h, w, c),
                     payload_offset=int(p_off), payload_length=int(p_len), crc32=int(crc),
                     labels=labels, offsets=offsets, meta=metadata)


def _check_payload(f, path, offset: int, length: int, crc: int) -> None:
    f.seek(offset)
    running, left = 0, length
    while left:
        chunk = f.read(min(left, 1 << 24))
        if not chunk:
            break
        running = zlib.crc32(chunk, running)
        left -= len(chunk)
    if running != crc:
        raise ShardError(f"{path}: checksum mismatch in the image data (bytes {offset}.."
                         f"{offset + length}: stored CRC-32 {crc:08x}, computed {running:08x}): "
                         f"the file is corrupt; prepare the data set again")


_verified: dict[str, tuple] = {}  # path -> (inode, size, mtime) whose payload this process checked


def verify_once(path) -> None:
    """Check a shard's header, tables and payload CRCs unless this process already
    checked this very file (same inode, size and modification time); ShardError names
    the file and what differs."""
    path = str(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ShardError(f"{path}: shard file is missing") from None
    except OSError as exc:
        raise ShardError(f"{path}: cannot read shard ({exc.strerror or exc})") from None
    stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
    if _verified.get(path) == stamp:
        return
    read_shard_info(path, verify=True, meta=False)
    _verified[path] = stamp


# --------------------------------------------------------------------------- manifest

def manifest_checksum(manifest: dict) -> str:
    """SHA-256 of a manifest's entries but ``checksum`` (sorted keys, compact JSON)."""
    rest = {k: v for k, v in manifest.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(rest, sort_keys=True, separators=(",", ":"))
                          .encode()).hexdigest()


def write_json_atomic(path: Path, data) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def read_manifest(folder) -> dict:
    """The manifest of a prepared folder, after checking its format and version."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        hint = ""
        if (folder / "train").is_dir():
            hint = (f"; it looks like an image folder: prepare it first with "
                    f"`convnet prepare {shlex.quote(str(folder))} DST`")
        raise ManifestError(f"{folder} is not a prepared data set: {MANIFEST} is missing "
                            f"(an interrupted `convnet prepare` leaves none until it "
                            f"finishes){hint}")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ManifestError(f"{path}: unreadable manifest ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise ManifestError(f"{path} is not a convnet manifest (no \"format\": \"{FORMAT_NAME}\")")
    version = manifest.get("version")
    if version != FORMAT_VERSION:
        raise ManifestError(
            f"{path} has format version {version!r}, but this convnet reads version "
            f"{FORMAT_VERSION}; prepare the data set again with this convnet "
            f"(`convnet prepare SRC {shlex.quote(str(folder))}`)")
    if "checksum" in manifest and manifest["checksum"] != manifest_checksum(manifest):
        raise ManifestError(f"{path}: checksum mismatch: the manifest was changed after "
                            f"`convnet prepare` wrote it (a corrupt file, or an edit: to keep "
                            f"an edit, delete its \"checksum\" entry); prepare the data set again")
    return manifest


# --------------------------------------------------------------------------- images

def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    """uint8 (H, W, 3) as baseline JPEG bytes (4:2:0 chroma subsampling, like most
    camera and ImageNet JPEGs); deterministic for a given libjpeg."""
    import io

    from PIL import Image
    buffer = io.BytesIO()
    Image.fromarray(image, "RGB").save(buffer, format="JPEG", quality=int(quality),
                                       subsampling=2, optimize=False)
    return buffer.getvalue()


def decode_jpeg(data, size: tuple[int, int, int], out: np.ndarray | None = None,
                where: str = "") -> np.ndarray:
    """JPEG bytes of a prepared image as uint8 (H, W, 3) (into ``out`` when given)."""
    import io

    from PIL import Image
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            if im.mode != "RGB":
                im = im.convert("RGB")
            array = np.asarray(im)
    except Exception as exc:
        raise ShardError(f"{where}: cannot decode the stored JPEG ({exc})") from None
    if array.shape != tuple(size):
        raise ShardError(f"{where}: stored image has shape {array.shape}, the shard says {tuple(size)}")
    if out is None:
        return array
    out[...] = array
    return out


# --------------------------------------------------------------------------- data sets

class PreparedSplit:
    """One split of a prepared data set: an index over its shards (no pixels loaded).

    ``labels`` (int64), and for image ``i`` its shard (``shard_ids[i]`` into
    ``paths``), absolute byte ``offsets[i]`` and ``lengths[i]`` in that file.
    """

    def __init__(self, folder: Path, name: str, entry: dict, kind: str, size):
        self.name = name
        self.kind = kind
        self.size = tuple(size)
        self.paths = [str(folder / s["file"]) for s in entry["shards"]]
        infos = []
        for path, s in zip(self.paths, entry["shards"]):
            info = read_shard_info(path, meta=False)  # the source lists are read when asked for
            if info.count != s["count"] or info.kind != kind or info.size != self.size:
                raise ShardError(f"{path}: holds {info.count} {info.kind} images of {info.size}, "
                                 f"the manifest says {s['count']} {kind} images of {self.size}; "
                                 f"prepare the data set again")
            infos.append(info)
        self.count = sum(i.count for i in infos)
        if self.count != entry["count"]:
            raise ShardError(f"{folder}: split {name} has {self.count} images in its shards, the "
                             f"manifest says {entry['count']}")
        self.labels = np.concatenate([i.labels for i in infos] or [np.zeros(0, np.int32)]).astype(np.int64)
        self.shard_ids = np.concatenate([np.full(i.count, k, np.int32) for k, i in enumerate(infos)]
                                        or [np.zeros(0, np.int32)])
        self.offsets = np.concatenate([i.payload_offset + i.offsets[:-1] for i in infos]
                                      or [np.zeros(0, np.int64)]).astype(np.int64)
        self.lengths = np.concatenate([np.diff(i.offsets) for i in infos]
                                      or [np.zeros(0, np.int64)]).astype(np.int64)
        self._infos = infos

    def __len__(self) -> int:
        return self.count

    def _check(self, i: int) -> int:
        i = int(i)
        if not 0 <= i < self.count:
            raise IndexError(f"image {i} is outside split {self.name!r} of {self.count} images")
        return i

    def read(self, i: int, out: np.ndarray | None = None) -> np.ndarray:
        """Image ``i`` as uint8 (H, W, 3) (its shard's CRCs checked once per process)."""
        i = self._check(i)
        path = self.paths[self.shard_ids[i]]
        verify_once(path)
        with open(path, "rb") as f:
            f.seek(int(self.offsets[i]))
            data = f.read(int(self.lengths[i]))
        if len(data) != self.lengths[i]:
            raise ShardError(f"{path}: truncated shard")
        where = f"{path} image {i}"
        if self.kind == "jpeg":
            return decode_jpeg(data, self.size, out, where)
        array = np.frombuffer(data, np.uint8).reshape(self.size)
        if out is None:
            return array.copy()
        out[...] = array
        return out

    def source(self, i: int) -> str:
        """The relative source path image ``i`` was prepared from."""
        i = self._check(i)
        k = int(self.shard_ids[i])
        first = int(np.searchsorted(self.shard_ids, k))
        if not self._infos[k].meta:
            self._infos[k] = read_shard_info(self.paths[k])
        return self._infos[k].meta["sources"][i - first]


class PreparedDataset:
    """A folder written by ``convnet prepare``: manifest, splits, statistics.

    ``split(name)`` indexes the shards of a split (``"train"``, ``"val"``);
    ``mean`` (float32 H x W x 3), ``eigenvalues`` (3,) and ``eigenvectors`` (3 x 3,
    columns) are the training statistics.
    """

    def __init__(self, folder):
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        m = self.manifest
        try:
            self.format = m["settings"]["format"]
            self.image_size = tuple(m["image_shape"])
            self.classes = list(m["classes"])
            self.class_names = list(m["class_names"])
            self._splits = dict(m["splits"])
        except (KeyError, TypeError) as exc:
            raise ManifestError(f"{self.folder / MANIFEST}: incomplete manifest (missing {exc})") from None
        self._cache: dict[str, PreparedSplit] = {}
        self._mean = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def splits(self) -> list[str]:
        return list(self._splits)

    def split(self, name: str) -> PreparedSplit:
        if name not in self._splits:
            raise KeyError(f"{self.folder} has no split {name!r} (it has: {', '.join(self._splits) or 'none'})")
        if name not in self._cache:
            self._cache[name] = PreparedSplit(self.folder, name, self._splits[name], self.format,
                                              self.image_size)
        return self._cache[name]

    @property
    def stats(self) -> dict:
        stats = self.manifest.get("stats")
        if not stats:
            raise ManifestError(f"{self.folder}: no training statistics in the manifest")
        return stats

    @property
    def mean(self) -> np.ndarray:
        if self._mean is None:
            path = self.folder / self.stats["mean_file"]
            expected = self.stats.get("mean_sha256")
            try:
                if expected is not None:
                    got = hashlib.sha256(path.read_bytes()).hexdigest()
                    if got != expected:
                        raise ManifestError(f"{path}: checksum mismatch: the mean image is "
                                            f"corrupt (SHA-256 {got[:12]}..., the manifest "
                                            f"records {expected[:12]}...); prepare the data set "
                                            f"again")
                mean = np.load(path)
            except (OSError, ValueError) as exc:
                if isinstance(exc, ManifestError):
                    raise
                raise ManifestError(f"{path}: cannot read the mean image ({exc})") from None
            if mean.shape != self.image_size or mean.dtype != np.float32:
                raise ManifestError(f"{path}: mean image of {mean.dtype} {mean.shape}, expected "
                                    f"float32 {self.image_size}")
            self._mean = mean
        return self._mean

    @property
    def eigenvalues(self) -> np.ndarray:
        return np.asarray(self.stats["eigenvalues"], dtype=np.float64)

    @property
    def eigenvectors(self) -> np.ndarray:
        return np.asarray(self.stats["eigenvectors"], dtype=np.float64)

    def __repr__(self) -> str:
        counts = ", ".join(f"{k} {v['count']}" for k, v in self._splits.items())
        return (f"PreparedDataset({str(self.folder)!r}: {self.num_classes} classes, {counts}, "
                f"{self.format} {self.image_size[0]}x{self.image_size[1]})")


def open_prepared(folder) -> PreparedDataset:
    """Open a prepared data set (checks the manifest's format version)."""
    if isinstance(folder, PreparedDataset):
        return folder
    return PreparedDataset(folder)
