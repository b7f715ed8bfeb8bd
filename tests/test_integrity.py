"""Issue 15's unit checks of what is kept on disk and read back: folder locks, the
folder scan (link loops, FIFOs, ignored files, empty classes), shard CRCs (tables and
payload), the manifest's and mean image's digests, and a damaged shard made again.
Tiny folders of 32x32 JPEGs; every test takes well under a second or two."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from convnet.data import (DatasetError, ManifestError, ShardError, open_prepared, prepare,
                          prepare_arrays, scan_folder, shards)
from convnet.locks import LOCK_FILE, FolderLock, LockError, owner_alive

Image = pytest.importorskip("PIL.Image")
QUIET = {"size": 16, "workers": 0, "progress": False, "log": lambda _: None}


def _images(root: Path, layout: dict) -> Path:
    """``{"train/a": 3, ...}``: that many small JPEGs in each folder."""
    rng = np.random.default_rng(0)
    for folder, count in layout.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            pixels = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / folder / f"{i}.JPEG")
    return root


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


# --------------------------------------------------------------------------- locks

_HOLDER = textwrap.dedent("""
    import sys, time
    from convnet.locks import FolderLock
    with FolderLock(sys.argv[1], "the run folder", "test holder"):
        print("HELD", flush=True)
        time.sleep(60)
""")


def test_a_held_lock_names_its_holder_and_a_dead_ones_is_taken_over(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(tmp_path)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "HELD"
        with pytest.raises(LockError, match=rf"the run folder {tmp_path} is in use by pid "
                                            rf"{holder.pid} on host .*test holder"):
            FolderLock(tmp_path, "the run folder").acquire()
        holder.kill()  # kill -9: the kernel drops the flock, the lock file stays behind
        holder.wait()
        assert (tmp_path / LOCK_FILE).exists()
        lock = FolderLock(tmp_path, "the run folder").acquire()
        assert f"pid {holder.pid}" in lock.stale_message() and "taken over" in lock.stale_message()
        lock.release()
        assert not (tmp_path / LOCK_FILE).exists()
    finally:
        holder.kill()
        holder.wait()


def test_waiting_for_a_lock_says_for_whom(tmp_path):
    """How two first runs share the demo cache: the second waits for the first."""
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER.replace("time.sleep(60)",
                                                                     "time.sleep(1.5)"),
                               str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "HELD"
        said = []
        with FolderLock(tmp_path, "the demo cache", wait=True, log=said.append) as lock:
            assert holder.wait(timeout=30) == 0  # the holder finished its with block first
            assert lock.stale is None
        assert len(said) == 1 and f"waiting for pid {holder.pid}" in said[0]
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_is_counted_within_a_process_and_removes_a_folder_it_made(tmp_path):
    folder = tmp_path / "new"
    folder.mkdir()
    outer = FolderLock(folder, "x", created=True).acquire()
    inner = FolderLock(folder, "x").acquire()
    inner.release()
    assert (folder / LOCK_FILE).exists()  # still held by outer
    outer.release()
    assert not folder.exists()  # made for the lock and left empty: gone


def test_a_forgotten_lock_is_released_when_collected(tmp_path):
    import gc
    FolderLock(tmp_path, "x").acquire()  # nobody keeps it
    gc.collect()
    assert not (tmp_path / LOCK_FILE).exists()
    lock = FolderLock(tmp_path, "x").acquire()
    assert lock.held and lock.stale is None
    lock.release()
    lock.release()  # a second release does nothing
    assert not lock.held


def test_owner_alive():
    assert owner_alive(f".x.tmp-{os.getpid()}")
    assert not owner_alive(".x.tmp-999999999") and not owner_alive(".x.tmp")


# --------------------------------------------------------------------------- folder scan

def test_a_link_loop_is_read_once_and_listed(tmp_path):
    root = _images(tmp_path / "src", {"train/a": 3, "train/b": 3})
    os.symlink("..", root / "train/a/up")          # train/a/up -> train/: a loop
    os.symlink("../b", root / "train/a/also_b")     # a second way into train/b
    folder = scan_folder(root)
    assert len(folder.splits["train"]) == 6  # not 410, as the followed loop gave
    assert [label for _, label in folder.splits["train"]] == [0, 0, 0, 1, 1, 1]
    reasons = dict(folder.ignored_reasons)
    assert "read already" in reasons["train/a/up"] and "read already" in reasons["train/a/also_b"]


def test_fifos_and_broken_links_are_skipped_and_listed(tmp_path):
    root = _images(tmp_path / "src", {"train/a": 2, "train/b": 2})
    os.mkfifo(root / "train/a/pipe.JPEG")  # opening it would block for ever
    os.symlink("nowhere.JPEG", root / "train/b/dangling.JPEG")
    (root / "train/b/notes.txt").write_text("not an image")
    folder = scan_folder(root)
    assert len(folder.splits["train"]) == 4
    reasons = dict(folder.ignored_reasons)
    assert "FIFO" in reasons["train/a/pipe.JPEG"]
    assert "broken link" in reasons["train/b/dangling.JPEG"]
    assert "not an image" in reasons["train/b/notes.txt"]
    dst = tmp_path / "dst"
    messages = []
    prepare(root, dst, **{**QUIET, "log": messages.append})  # finishes: no hang on the FIFO
    assert "3 ignored" in messages[-1]
    listed = (dst / shards.SKIPPED_FILE).read_text()
    assert "train/a/pipe.JPEG" in listed and "train/b/notes.txt" in listed
    assert json.loads((dst / shards.MANIFEST).read_text())["ignored_files"] == 3


def test_a_class_without_images_is_refused(tmp_path):
    root = _images(tmp_path / "src", {"train/a": 2, "train/b": 0})
    (root / "train/b/readme.txt").write_text("x")
    with pytest.raises(DatasetError, match=r"train/b: class folder 'b' holds no images \(1 other "
                                           r"file\(s\): readme.txt \(not an image file\)\)"):
        scan_folder(root)


def test_prepare_warns_about_one_class(tmp_path):
    root = _images(tmp_path / "src", {"train/a": 2})
    messages = []
    prepare(root, tmp_path / "dst", **{**QUIET, "log": messages.append})
    assert any("one class" in m and "refuses" in m for m in messages)


# --------------------------------------------------------------------------- shards

@pytest.fixture
def prepared(tmp_path) -> Path:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 255, (6, 8, 8, 3), dtype=np.uint8)
    dst = tmp_path / "p"
    prepare_arrays(dst, {"train": (images, np.array([0, 1, 0, 1, 0, 1]))}, ["a", "b"],
                   format="jpeg", shard_size=3, log=lambda _: None)
    return dst


def test_every_byte_of_a_shard_is_covered(prepared):
    """A flipped bit in the header, the payload, the labels, the offsets or the
    metadata: an error naming the file and the part, never a silent change."""
    path = prepared / shards.shard_name("train", 0)
    info = shards.read_shard_info(path)
    clean = path.read_bytes()
    places = {"header (count)": 16, "payload": info.payload_offset + 5,
              "labels": info.payload_offset + info.payload_length + 1,
              "offsets": info.payload_offset + info.payload_length + 4 * info.count + 3,
              "metadata": len(clean) - 3}
    for what, offset in places.items():
        path.write_bytes(clean)
        _flip(path, offset)
        with pytest.raises(ShardError, match=rf"{path.name}: .*(checksum mismatch|inconsistent|"
                                             rf"truncated)") as exc_info:
            shards.read_shard_info(path, verify=True)
        assert "\n" not in str(exc_info.value), what


def test_images_are_read_only_from_verified_shards(prepared):
    split = open_prepared(prepared).split("train")
    path = Path(split.paths[1])
    info = shards.read_shard_info(path)
    _flip(path, info.payload_offset + 7)
    with pytest.raises(ShardError, match="checksum mismatch in the image data"):
        split.read(4)  # shard 1
    split.read(0)  # shard 0 is whole


def test_prepare_makes_a_damaged_shard_again(tmp_path):
    root = _images(tmp_path / "src", {"train/a": 3, "train/b": 3})
    dst = tmp_path / "dst"
    prepare(root, dst, shard_size=2, **QUIET)
    path = dst / shards.shard_name("train", 1)
    before = path.read_bytes()
    _flip(path, shards.read_shard_info(path).payload_offset + 9)
    messages = []
    prepare(root, dst, shard_size=2, **{**QUIET, "log": messages.append})
    assert any(path.name in m and "checksum mismatch" in m and "making" in m for m in messages)
    assert "2 shard(s) already complete, 1 to make" in "".join(messages)
    assert path.read_bytes() == before


def test_manifest_and_mean_are_covered(prepared):
    manifest_path = prepared / shards.MANIFEST
    text = manifest_path.read_text()
    manifest_path.write_text(text.replace('"b"', '"c"', 1))  # a class renamed by a flipped byte
    with pytest.raises(ManifestError, match="manifest.json: checksum mismatch"):
        open_prepared(prepared)
    manifest_path.write_text(text)
    _flip(prepared / shards.MEAN_FILE, 200)
    with pytest.raises(ManifestError, match=r"mean.npy: checksum mismatch: the mean image is "
                                            r"corrupt"):
        open_prepared(prepared).mean
