"""Reading an ImageNet-style folder and ``prepare``: odd files, resume after an
interruption, shard and manifest formats, statistics against a direct NumPy computation."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from convnet.app import cli
from convnet.data import (DatasetError, ManifestError, PrepareError, ShardError, make_demo_data,
                          open_prepared, prepare, prepare_image, scan_folder, shards, stats)
from convnet.data.folders import resize_center_crop

Image = pytest.importorskip("PIL.Image", reason="Pillow is not installed (a dependency of convnet.data)")

SIZE = 48  # small stored images keep these tests fast; the odd-files test uses 256


def _save(path: Path, image: Image.Image, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)
    return path


def _rgb(h, w, color):
    return Image.fromarray(np.full((h, w, 3), color, np.uint8))


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    make_demo_data(root, classes=3, train_per_class=6, val_per_class=2, size=64, seed=5, workers=0)
    return root


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.iterdir()) if p.name != shards.MANIFEST}


def _stable_manifest(folder: Path) -> dict:
    m = json.loads((folder / shards.MANIFEST).read_text())
    for key in ("created", "source", "checksum"):  # the checksum covers those two
        m.pop(key)
    return m


# --------------------------------------------------------------------------- the folder

def test_scan_folder_layout(tmp_path):
    for rel in ("train/b_cls/x2.JPEG", "train/b_cls/sub/x1.png", "train/a_cls/z.jpg",
                "val/b_cls/v.JPEG"):
        _save(tmp_path / rel, _rgb(8, 8, (1, 2, 3)))
    (tmp_path / "train/a_cls/notes.txt").write_text("not an image")
    (tmp_path / "train/a_cls/.hidden.jpg").write_bytes(b"")
    (tmp_path / "train/.cache").mkdir()
    (tmp_path / "synset_words.txt").write_text("a_cls first class, alpha\n\n# comment\n")
    folder = scan_folder(tmp_path)
    assert folder.classes == ["a_cls", "b_cls"]
    assert folder.class_names == ["first class, alpha", "b_cls"]
    assert folder.splits["train"] == [("train/a_cls/z.jpg", 0), ("train/b_cls/sub/x1.png", 1),
                                      ("train/b_cls/x2.JPEG", 1)]
    assert folder.splits["val"] == [("val/b_cls/v.JPEG", 1)]
    assert folder.ignored == ["train/a_cls/notes.txt"]


def test_scan_folder_errors(tmp_path):
    with pytest.raises(DatasetError, match="no such folder"):
        scan_folder(tmp_path / "missing")
    with pytest.raises(DatasetError, match="no train/ folder"):
        scan_folder(tmp_path)
    (tmp_path / "train").mkdir()
    with pytest.raises(DatasetError, match="no class folders"):
        scan_folder(tmp_path)
    _save(tmp_path / "train/cat/a.jpg", _rgb(8, 8, 0))
    _save(tmp_path / "val/ILSVRC2012_val_00000001.JPEG", _rgb(8, 8, 0))
    with pytest.raises(DatasetError, match="directly.*class folder"):
        scan_folder(tmp_path)
    (tmp_path / "val/ILSVRC2012_val_00000001.JPEG").unlink()
    _save(tmp_path / "val/dog/b.jpg", _rgb(8, 8, 0))
    with pytest.raises(DatasetError, match="'dog' is not a class of train/"):
        scan_folder(tmp_path)


# --------------------------------------------------------------------------- odd files

def _odd_folder(root: Path) -> dict[str, str]:
    """The issue's list of awkward files (and a few more); returns {name: relative path}."""
    files = {}
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8))
    good = _save(root / "train/a/good.JPEG", photo, quality=92)
    files["good"] = "train/a/good.JPEG"
    data = good.read_bytes()
    (root / "train/a/truncated.JPEG").write_bytes(data[: len(data) // 2])
    files["truncated"] = "train/a/truncated.JPEG"
    corrupt = bytearray(data)
    corrupt[20:400] = rng.integers(0, 256, 380, dtype=np.uint8).tobytes()  # markers destroyed
    (root / "train/a/corrupt.JPEG").write_bytes(bytes(corrupt))
    files["corrupt"] = "train/a/corrupt.JPEG"
    (root / "train/a/text.JPEG").write_text("this is not a JPEG at all\n" * 20)
    files["text"] = "train/a/text.JPEG"
    _save(root / "train/b/gray.JPEG", Image.fromarray(np.full((260, 300), 90, np.uint8), "L"))
    files["gray"] = "train/b/gray.JPEG"
    _save(root / "train/b/cmyk.JPEG", Image.new("CMYK", (300, 280), (255, 0, 0, 0)), quality=95)
    files["cmyk"] = "train/b/cmyk.JPEG"
    index = np.zeros((300, 300), np.uint8)
    index[:, 150:] = 1
    palette = Image.fromarray(index, "P")
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    _save(root / "train/b/palette.png", palette, transparency=0)   # the red half is transparent
    files["palette"] = "train/b/palette.png"
    _save(root / "train/b/small.JPEG", _rgb(60, 100, (10, 200, 30)), quality=95)
    files["small"] = "train/b/small.JPEG"
    wide = np.zeros((100, 2000, 3), np.uint8)
    wide[:, 950:1050] = (0, 255, 0)  # only the central 100x100 square is green
    _save(root / "train/b/wide.png", Image.fromarray(wide))
    files["wide"] = "train/b/wide.png"
    _save(root / "train/b/deep.png", Image.fromarray(np.full((80, 90), 32896, np.uint16)))
    files["deep"] = "train/b/deep.png"
    halves = np.zeros((100, 200, 3), np.uint8)
    halves[:, :100] = (255, 0, 0)
    halves[:, 100:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display": the left half ends on top
    _save(root / "train/b/rotated.JPEG", Image.fromarray(halves), exif=exif.tobytes(), quality=95)
    files["rotated"] = "train/b/rotated.JPEG"
    _save(root / "val/a/val.JPEG", photo, quality=90)
    return files


def test_prepare_odd_files(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    files = _odd_folder(src)
    manifest = prepare(src, dst, workers=2, progress=False, log=lambda _: None)
    skipped = {s["path"]: s["reason"] for s in manifest["skipped"]}
    assert set(skipped) == {files["truncated"], files["corrupt"], files["text"]}
    assert "truncated" in skipped[files["truncated"]]
    assert "not an image" in skipped[files["text"]]
    assert "not an image" in skipped[files["corrupt"]]  # its header no longer parses
    report = (dst / shards.SKIPPED_FILE).read_text()
    assert all(path in report for path in skipped)
    train = manifest["splits"]["train"]
    assert (train["count"], train["sources"], train["skipped"]) == (8, 11, 3)
    assert manifest["splits"]["val"]["count"] == 1

    ds = open_prepared(dst)
    split = ds.split("train")
    images = {Path(split.source(i)).stem: split.read(i).astype(int) for i in range(len(split))}
    assert all(im.shape == (256, 256, 3) for im in images.values())
    gray = images["gray"]
    assert np.abs(gray - 90).max() <= 3 and np.ptp(gray, axis=2).max() <= 3
    assert np.abs(images["cmyk"] - (0, 255, 255)).max() <= 4          # pure cyan
    pal = images["palette"]
    assert np.abs(pal[:, :100] - 255).max() <= 4                      # transparent: white
    assert np.abs(pal[:, 160:] - (0, 0, 255)).max() <= 4              # opaque: the palette's blue
    assert np.abs(images["small"][40:-40, 40:-40] - (10, 200, 30)).max() <= 4
    wide = images["wide"]
    assert np.abs(wide[:, 20:-20] - (0, 255, 0)).max() <= 4           # the central square only
    assert np.abs(images["deep"] - 128).max() <= 2                    # 16-bit 32896 -> 128
    rotated = images["rotated"]
    assert np.abs(rotated[:100] - (255, 0, 0)).max() <= 6             # EXIF applied: red on top
    assert np.abs(rotated[-100:] - (0, 0, 255)).max() <= 6
    labels = dict(zip((Path(split.source(i)).stem for i in range(len(split))), split.labels))
    assert labels["good"] == 0 and labels["gray"] == 1


def test_resize_center_crop_geometry():
    """Shorter side to the size, then the central square, in one resampling."""
    tall = np.zeros((400, 100, 3), np.uint8)
    tall[150:250] = 255  # the central 100x100 square is white
    out = resize_center_crop(Image.fromarray(tall), 32)
    assert out.shape == (32, 32, 3) and out[4:-4].min() >= 250
    same = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    assert np.array_equal(resize_center_crop(Image.fromarray(same), 32), same)


# --------------------------------------------------------------------------- formats

def test_raw_and_jpeg_shards(tmp_path, demo):
    raw = prepare(demo, tmp_path / "raw", format="raw", size=SIZE, workers=0, progress=False,
                  log=lambda _: None)
    jpeg = prepare(demo, tmp_path / "jpeg", size=SIZE, workers=0, progress=False,
                   log=lambda _: None)
    assert raw["settings"]["format"] == "raw" and jpeg["settings"]["quality"] == 95
    r, j = open_prepared(tmp_path / "raw").split("train"), open_prepared(tmp_path / "jpeg").split("train")
    assert len(r) == len(j) == 18 and np.array_equal(r.labels, j.labels)
    for i in (0, 7, 17):
        expected = prepare_image(demo / r.source(i), SIZE)
        assert np.array_equal(r.read(i), expected)                   # raw: exact
        # JPEG at quality 95, 4:2:0: small noisy images lose a little colour detail
        assert np.abs(j.read(i).astype(int) - expected).mean() < 8
    info = shards.read_shard_info(r.paths[0], verify=True)
    assert info.kind == "raw" and info.payload_offset % 4096 == 0
    with pytest.raises(IndexError):
        r.read(18)


def test_corrupt_and_truncated_shards_are_refused(tmp_path, demo):
    dst = tmp_path / "p"
    prepare(demo, dst, size=SIZE, shard_size=4, workers=0, progress=False, log=lambda _: None)
    path = dst / shards.shard_name("train", 1)
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    with pytest.raises(ShardError, match="truncated"):
        open_prepared(dst).split("train")
    path.write_bytes(bytes(128) + data[128:])   # the state of a shard whose header is unwritten
    with pytest.raises(ShardError, match="not a convnet shard"):
        shards.read_shard_info(path)
    flipped = bytearray(data)
    flipped[5000] ^= 0xFF
    path.write_bytes(bytes(flipped))
    with pytest.raises(ShardError, match="checksum"):
        shards.read_shard_info(path, verify=True)
    path.write_bytes(data[:-10])
    prepare(demo, dst, size=SIZE, shard_size=4, workers=0, progress=False, log=lambda _: None)
    assert path.read_bytes() == data  # a damaged shard is made again


def test_manifest_version_is_checked(tmp_path, demo):
    dst = tmp_path / "p"
    prepare(demo, dst, size=SIZE, workers=0, progress=False, log=lambda _: None)
    manifest = json.loads((dst / shards.MANIFEST).read_text())
    (dst / shards.MANIFEST).write_text(json.dumps({**manifest, "version": 99}))
    with pytest.raises(ManifestError, match=r"format version 99.*reads version 1.*prepare"):
        open_prepared(dst)
    (dst / shards.MANIFEST).write_text(json.dumps({**manifest, "format": "other"}))
    with pytest.raises(ManifestError, match="not a convnet manifest"):
        open_prepared(dst)
    (dst / shards.MANIFEST).write_text("{ not json")
    with pytest.raises(ManifestError, match="unreadable"):
        open_prepared(dst)
    (dst / shards.MANIFEST).unlink()
    with pytest.raises(ManifestError, match="manifest.json is missing"):
        open_prepared(dst)
    with pytest.raises(ManifestError, match="prepare it first"):
        open_prepared(demo)


def test_bad_arguments(tmp_path, demo):
    quiet = dict(progress=False, log=lambda _: None)
    with pytest.raises(PrepareError, match="format"):
        prepare(demo, tmp_path / "x", format="png", **quiet)
    with pytest.raises(PrepareError, match="quality"):
        prepare(demo, tmp_path / "x", quality=75, **quiet)
    with pytest.raises(PrepareError, match="size"):
        prepare(demo, tmp_path / "x", size=2, **quiet)
    with pytest.raises(PrepareError, match="inside the source's train/"):
        prepare(demo, demo / "train" / "out", **quiet)
    with pytest.raises(PrepareError, match="is the source folder"):
        prepare(demo, demo, **quiet)
    with pytest.raises(PrepareError, match="workers"):
        prepare(demo, tmp_path / "x", workers=-1, **quiet)
    assert not (demo / "train" / "out").exists()


# --------------------------------------------------------------------------- resuming

def test_interrupted_prepare_resumes_to_the_same_result(tmp_path, demo, monkeypatch):
    """A failure after k shards, then a second run: the same files as one clean run."""
    quiet = dict(size=SIZE, shard_size=2, progress=False, log=lambda _: None)
    prepare(demo, tmp_path / "clean", workers=2, **quiet)
    dst = tmp_path / "resumed"
    closes = []
    real_close = shards.ShardWriter.close

    def failing_close(self, meta):
        if len(closes) == 4:
            raise OSError("disk on fire (injected)")
        closes.append(self.path)
        return real_close(self, meta)

    monkeypatch.setattr(shards.ShardWriter, "close", failing_close)
    with pytest.raises(OSError, match="injected"):
        prepare(demo, dst, workers=0, **quiet)
    monkeypatch.undo()
    names = sorted(p.name for p in dst.iterdir())
    assert names == sorted(p.name for p in closes)   # four whole shards, no temporary, no manifest
    (dst / ".train-00007.cnshard.tmp-12345").write_bytes(b"left by a killed run")
    messages = []
    prepare(demo, dst, workers=0, **{**quiet, "log": messages.append})
    assert "4 shard(s) already complete" in messages[0]
    assert _digests(dst) == _digests(tmp_path / "clean")
    assert _stable_manifest(dst) == _stable_manifest(tmp_path / "clean")


def test_killed_prepare_resumes_to_the_same_result(tmp_path):
    """SIGKILL to a running ``convnet prepare`` (workers and all), then a second run."""
    src = tmp_path / "src"
    make_demo_data(src, classes=2, train_per_class=40, val_per_class=0, size=512, seed=1, workers=0)
    args = ["--size", str(SIZE), "--shard-size", "2", "--no-progress"]
    dst = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-m", "convnet", "prepare", str(src), str(dst),
                                "--workers", "1", *args], start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            if dst.is_dir() and len(list(dst.glob("train-*.cnshard"))) >= 3:
                break
            time.sleep(0.005)
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, process.stderr.read().decode()
    whole = list(dst.glob("train-*.cnshard"))
    assert 3 <= len(whole) < 40 and not (dst / shards.MANIFEST).exists()
    for path in whole:  # every shard that looks whole is whole
        shards.read_shard_info(path, verify=True)
    assert cli.main(["prepare", str(src), str(dst), "--workers", "2", *args]) == 0
    assert not [p for p in dst.iterdir() if p.name.startswith(".")]
    assert cli.main(["prepare", str(src), str(tmp_path / "clean"), "--workers", "0", *args]) == 0
    assert _digests(dst) == _digests(tmp_path / "clean")
    assert _stable_manifest(dst) == _stable_manifest(tmp_path / "clean")


def test_changed_sources_are_prepared_again(tmp_path, demo):
    import shutil
    src = tmp_path / "src"
    shutil.copytree(demo, src)
    quiet = dict(size=SIZE, shard_size=4, workers=0, progress=False)
    prepare(src, tmp_path / "p", log=lambda _: None, **quiet)
    before = _digests(tmp_path / "p")
    victim = sorted((src / "train" / "c001").iterdir())[0]
    _save(victim, _rgb(70, 70, (0, 0, 0)), format="JPEG")
    messages = []
    prepare(src, tmp_path / "p", log=messages.append, **quiet)
    after = _digests(tmp_path / "p")
    changed = {name for name in before if before[name] != after.get(name)}
    assert shards.shard_name("train", 1) in changed and "mean.npy" in changed
    assert len(changed) == 2 and "1 to make" in messages[0]


# --------------------------------------------------------------------------- statistics

def _all_images(split) -> np.ndarray:
    return np.stack([split.read(i) for i in range(len(split))])


def test_statistics_match_numpy(tmp_path, demo):
    dst = tmp_path / "p"
    manifest = prepare(demo, dst, size=SIZE, workers=2, progress=False, log=lambda _: None)
    ds = open_prepared(dst)
    images = _all_images(ds.split("train"))
    np.testing.assert_allclose(ds.mean, images.astype(np.float64).mean(axis=0), rtol=0, atol=1e-4)
    assert ds.mean.dtype == np.float32 and ds.mean.shape == (SIZE, SIZE, 3)
    st = manifest["stats"]
    assert st["pixels_per_image"] is None and st["pixels_sampled"] == images.size // 3  # all of them
    pixels = images.reshape(-1, 3).astype(np.float64)
    covariance = np.cov(pixels, rowvar=False)
    np.testing.assert_allclose(st["covariance"], covariance, rtol=1e-10)
    values, vectors = np.linalg.eigh(covariance)
    np.testing.assert_allclose(ds.eigenvalues, values[::-1], rtol=1e-9)
    for i in range(3):  # eigenvectors up to sign, and of unit length
        v, ref = ds.eigenvectors[:, i], vectors[:, 2 - i]
        np.testing.assert_allclose(v * np.sign(v @ ref), ref, atol=1e-8)
        assert v[np.argmax(np.abs(v))] > 0  # the sign convention
    np.testing.assert_allclose(covariance @ ds.eigenvectors, ds.eigenvectors * ds.eigenvalues,
                               atol=1e-6 * values.max())


def test_sampled_covariance(tmp_path, demo):
    """With fewer pixels asked than there are, a seeded sample of at least that many."""
    dst = tmp_path / "p"
    manifest = prepare(demo, dst, size=SIZE, pixels=5000, seed=9, workers=0, progress=False,
                       log=lambda _: None)
    split = open_prepared(dst).split("train")
    st = manifest["stats"]
    k = st["pixels_per_image"]
    assert k == -(-5000 // 18) and st["pixels_sampled"] == 18 * k >= 5000
    picked = np.concatenate([split.read(i).reshape(-1, 3)[stats.sample_positions(9, i, k, SIZE * SIZE)]
                             for i in range(len(split))]).astype(np.float64)
    np.testing.assert_allclose(st["covariance"], np.cov(picked, rowvar=False), rtol=1e-10)
    positions = stats.sample_positions(9, 3, 5000, SIZE * SIZE)
    assert positions.min() >= 0 and positions.max() < SIZE * SIZE
    assert len(np.unique(positions)) > 0.6 * SIZE * SIZE  # spread over the image
    assert not np.array_equal(positions, stats.sample_positions(10, 3, 5000, SIZE * SIZE))
    assert stats.pixels_per_image(1_281_167, 10**6, 256, 256) == 1   # ImageNet: one per image
    assert stats.pixels_per_image(100, 10**6, 256, 256) == 10_000
    assert stats.pixels_per_image(10, 10**6, 256, 256) is None       # 655,360 pixels: all


# --------------------------------------------------------------------------- the command

def test_cli_prepare(tmp_path, demo, capsys):
    assert cli.main(["prepare", str(demo), str(tmp_path / "p"), "--format", "raw", "--size",
                     str(SIZE), "--workers", "0", "--no-progress"]) == 0
    assert "train 18 images, val 6 images, 0 skipped" in capsys.readouterr().err
    assert open_prepared(tmp_path / "p").format == "raw"
    assert cli.main(["prepare", str(tmp_path / "nothing"), str(tmp_path / "q")]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert cli.main(["prepare", str(demo), str(tmp_path / "q"), "--quality", "50"]) == 2
    assert "quality" in capsys.readouterr().err
    (tmp_path / "a-file").write_text("")
    assert cli.main(["prepare", str(demo), str(tmp_path / "a-file" / "out"), "--workers", "0",
                     "--no-progress"]) == 1
    assert "a-file" in capsys.readouterr().err  # the OSError's message, no traceback
