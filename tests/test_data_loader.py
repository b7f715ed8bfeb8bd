"""The loader: every image exactly once per epoch, the same batches with or without
workers, augmentation on the way, and a clean shutdown (no workers, no shared memory
left) after an exception in the consumer, a dead worker, or Ctrl-C."""
from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import convnet
from convnet.data import (Augmentation, Loader, LoaderError, PrepareError, epoch_order,
                          make_demo_data, open_prepared, prepare, prepare_arrays)
from convnet.data.loader import SHM_PREFIX

from conftest import require_device

SIZE = 40


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> dict[str, Path]:
    pytest.importorskip("PIL.Image", reason="Pillow is not installed (a dependency of convnet.data)")
    root = tmp_path_factory.mktemp("loader")
    make_demo_data(root / "src", classes=3, train_per_class=9, val_per_class=3, size=48, seed=2,
                   workers=0)
    out = {}
    for fmt in ("jpeg", "raw"):
        prepare(root / "src", root / fmt, format=fmt, size=SIZE, shard_size=4, workers=0,
                progress=False, log=lambda _: None)
        out[fmt] = root / fmt
    return out


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    """Raw shards of random 30x38 images from arrays: no Pillow needed, not square."""
    rng = np.random.default_rng(12)
    splits = {"train": (rng.integers(0, 256, (30, 30, 38, 3), dtype=np.uint8), rng.integers(0, 3, 30)),
              "val": (rng.integers(0, 256, (7, 30, 38, 3), dtype=np.uint8), rng.integers(0, 3, 7))}
    dst = tmp_path_factory.mktemp("synthetic")
    prepare_arrays(dst, splits, ["a", "b", "c"], shard_size=8, log=lambda _: None)
    return dst


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][0] != "Z"  # a zombie is dead, only not yet reaped
    except FileNotFoundError:
        return False


def _our_segments(pid: int | None = None) -> list[str]:
    prefix = f"{SHM_PREFIX}{pid if pid is not None else os.getpid()}-"
    return [name for name in os.listdir("/dev/shm") if name.startswith(prefix)] \
        if os.path.isdir("/dev/shm") else []


def _gone(pids, timeout=10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(_alive(p) for p in pids):
            return True
        time.sleep(0.05)
    return False


# --------------------------------------------------------------------------- epochs

def test_every_image_once_per_epoch(prepared):
    split = open_prepared(prepared["jpeg"]).split("train")
    with Loader(prepared["jpeg"], "train", batch_size=5, workers=2, seed=3) as loader:
        assert len(loader) == 6  # 27 images: five batches of 5 and one of 2
        orders = []
        for epoch in range(2):
            batches = list(loader)
            assert [len(b) for b in batches] == [5, 5, 5, 5, 5, 2]
            assert [b.number for b in batches] == list(range(6)) and batches[0].epoch == epoch
            seen = np.concatenate([b.indices for b in batches])
            assert sorted(seen) == list(range(27))
            orders.append(seen)
            for b in batches:
                assert b.images.dtype == np.uint8 and b.images.shape == (len(b), SIZE, SIZE, 3)
                np.testing.assert_array_equal(b.labels, split.labels[b.indices])
                for row, i in enumerate(b.indices):
                    np.testing.assert_array_equal(b.images[row], split.read(i))
        assert not np.array_equal(orders[0], orders[1])   # reshuffled each epoch
        np.testing.assert_array_equal(orders[1], loader.order(1))
        pids = loader.worker_pids()
        assert len(pids) == 2 and all(_alive(p) for p in pids)
    assert _gone(pids) and not _our_segments()


def test_drop_last_and_no_shuffle(prepared):
    with Loader(prepared["raw"], "train", batch_size=4, drop_last=True, workers=0) as loader:
        batches = list(loader.epoch(0))
        assert len(loader) == len(batches) == 6 and all(len(b) == 4 for b in batches)
        assert len(np.unique(np.concatenate([b.indices for b in batches]))) == 24
    with Loader(prepared["raw"], "val", batch_size=4, workers=0) as loader:
        assert not loader.shuffle
        indices = np.concatenate([b.indices for b in loader])
        np.testing.assert_array_equal(indices, np.arange(9))


def test_workers_do_not_change_the_batches(prepared):
    """In-process decoding and worker processes, raw and JPEG shards, give the same batches."""
    def epoch(fmt, workers):
        with Loader(prepared[fmt], "train", batch_size=8, workers=workers, seed=9) as loader:
            return [(b.indices, b.images) for b in loader.epoch(4)]
    reference = epoch("jpeg", 0)
    for fmt, workers in (("jpeg", 2), ("raw", 2), ("raw", 0)):
        got = epoch(fmt, workers)
        assert len(got) == len(reference)
        for (i, a), (j, b) in zip(got, reference):
            np.testing.assert_array_equal(i, j)
            if fmt == "jpeg":
                np.testing.assert_array_equal(a, b)
            else:
                assert np.abs(a.astype(int) - b).mean() < 8  # raw vs JPEG quality 95


def test_epoch_order():
    order = epoch_order(1000, seed=5, epoch=0)
    assert sorted(order) == list(range(1000))
    np.testing.assert_array_equal(order, epoch_order(1000, seed=5, epoch=0))
    assert not np.array_equal(order, epoch_order(1000, seed=5, epoch=1))
    assert not np.array_equal(order, epoch_order(1000, seed=6, epoch=0))
    np.testing.assert_array_equal(epoch_order(10, 5, 0, shuffle=False), np.arange(10))
    assert len(epoch_order(0, 5, 0)) == 0


def test_abandoned_epoch_then_a_full_one(prepared):
    with Loader(prepared["jpeg"], "train", batch_size=3, workers=2, prefetch=3) as loader:
        for batch in loader:
            break  # leaves chunks in flight
        seen = np.concatenate([b.indices for b in loader])
        assert sorted(seen) == list(range(27))
        first = next(iter(loader.epoch(7)))
        again = next(iter(loader.epoch(7)))  # starting an epoch abandons the running one
        np.testing.assert_array_equal(first.images, again.images)


# --------------------------------------------------------------------------- augmentation

@pytest.mark.parametrize("name", ["cpu", "emu"])
def test_augmented_batches(prepared, name):
    device = require_device(name)
    ds = open_prepared(prepared["jpeg"])
    with Loader(ds, "train", batch_size=6, workers=0, device=device, augment="train", crop=33,
                seed=4) as loader:
        batch = next(iter(loader.epoch(2)))
    assert batch.images.shape == (6, 3, 33, 33) and batch.images.dtype == np.float32
    raw = np.stack([ds.split("train").read(i) for i in batch.indices])
    augmentation = Augmentation.from_dataset(ds, "train", crop=33, seed=4)
    np.testing.assert_array_equal(batch.images, augmentation(convnet.get_device("cpu"), raw,
                                                             batch.indices, 2))
    with Loader(ds, "val", batch_size=4, workers=0, device=device, augment="ten_crop",
                crop=33) as loader:
        batches = list(loader)
    assert [b.images.shape[0] for b in batches] == [40, 40, 10]
    assert [b.labels.shape for b in batches] == [(4,), (4,), (1,)]


@pytest.mark.parametrize("augment", [None, "train", "ten_crop"])
def test_batches_on_every_device(synthetic, device, augment):
    """Worker processes, the device copy (pinned memory and a copy stream on cuda) and
    the augmentation kernel give what the NumPy reference gives from the shards."""
    ds = open_prepared(synthetic)
    split = ds.split("val" if augment == "ten_crop" else "train")
    with Loader(ds, split.name, batch_size=4, workers=2, device=device, augment=augment,
                crop=25, seed=8) as loader:
        batches = list(loader.epoch(3))
    assert sorted(np.concatenate([b.indices for b in batches])) == list(range(len(split)))
    reference = Augmentation.from_dataset(ds, augment, crop=25, seed=8) if augment else None
    cpu = convnet.get_device("cpu")
    for b in batches:
        images, labels = device.to_numpy(b.images), device.to_numpy(b.labels)
        np.testing.assert_array_equal(labels, split.labels[b.indices])
        raw = np.stack([split.read(i) for i in b.indices])
        if reference is None:
            np.testing.assert_array_equal(images, raw)
        else:
            expected = reference(cpu, raw, b.indices, 3)
            assert images.shape == expected.shape and images.dtype == np.float32
            np.testing.assert_allclose(images, expected, rtol=1e-6, atol=1e-4)


def test_prepare_arrays(tmp_path, synthetic):
    ds = open_prepared(synthetic)
    assert ds.image_size == (30, 38, 3) and ds.format == "raw" and ds.class_names == ["a", "b", "c"]
    train = ds.split("train")
    images = np.stack([train.read(i) for i in range(len(train))])
    np.testing.assert_allclose(ds.mean, images.mean(axis=0), atol=1e-4)
    covariance = np.cov(images.reshape(-1, 3).astype(np.float64), rowvar=False)
    np.testing.assert_allclose(ds.stats["covariance"], covariance, rtol=1e-10)
    assert train.source(9) == "train[9]"
    good = np.zeros((2, 8, 8, 3), np.uint8)
    with pytest.raises(PrepareError, match="uint8"):
        prepare_arrays(tmp_path, {"train": (good.astype(np.float32), [0, 0])}, ["a"])
    with pytest.raises(PrepareError, match="labels"):
        prepare_arrays(tmp_path, {"train": (good, [0, 1])}, ["a"])
    with pytest.raises(PrepareError, match="'train'"):
        prepare_arrays(tmp_path, {"val": (good, [0, 0])}, ["a"])
    with pytest.raises(PrepareError, match="other splits"):
        prepare_arrays(tmp_path, {"train": (good, [0, 0]), "val": (good[:, :4], [0, 0])}, ["a"])


# --------------------------------------------------------------------------- shutdown

def test_exception_in_the_consumer(prepared):
    with pytest.raises(RuntimeError, match="consumer"):
        with Loader(prepared["jpeg"], "train", batch_size=4, workers=2) as loader:
            for batch in loader:
                pids, name = loader.worker_pids(), loader.shared_memory_name
                assert os.path.exists(f"/dev/shm/{name}")
                raise RuntimeError("the consumer failed")
    assert _gone(pids) and not _our_segments()
    with pytest.raises(LoaderError, match="closed"):
        list(loader)

    loader = Loader(prepared["jpeg"], "train", batch_size=4, workers=2)  # no with block
    try:
        for batch in loader:
            pids = loader.worker_pids()
            raise RuntimeError("the consumer failed")
    except RuntimeError:
        pass
    assert all(_alive(p) for p in pids)  # the loader lives on: it can run more epochs
    del loader, batch
    gc.collect()  # dropping the loader shuts it down
    assert _gone(pids) and not _our_segments()


def test_dead_worker_is_reported(prepared):
    loader = Loader(prepared["jpeg"], "train", batch_size=2, workers=2, prefetch=2)
    batches = iter(loader)
    next(batches)
    pids = loader.worker_pids()
    os.kill(pids[1], signal.SIGKILL)
    with pytest.raises(LoaderError, match=f"pid {pids[1]}.*killed by signal {int(signal.SIGKILL)}"):
        for _ in batches:
            pass
    assert _gone(pids) and not _our_segments()
    with pytest.raises(LoaderError, match="closed"):
        next(iter(loader))


def test_corrupt_shard_is_reported(prepared, tmp_path):
    import shutil
    dst = tmp_path / "copy"
    shutil.copytree(prepared["jpeg"], dst)
    split = open_prepared(dst).split("train")
    with Loader(dst, "train", batch_size=4, workers=2) as loader:
        path = split.paths[split.shard_ids[5]]
        with open(path, "r+b") as f:  # destroy image 5's JPEG header after the index was read
            f.seek(int(split.offsets[5]))
            f.write(bytes(64))
        # the shard's CRC, checked once per worker when it first opens the shard, catches it;
        # the message is one line naming the file and the bytes (no worker traceback)
        with pytest.raises(LoaderError, match=r"^a loader worker failed: \S+train-\d+\.cnshard: "
                           r"checksum mismatch in the image data \(bytes \d+\.\.\d+") as info:
            list(loader)
        assert "\n" not in str(info.value) and "Traceback" in info.value.traceback
        pids = loader.worker_pids()
    assert _gone(pids) and not _our_segments()


_SIGINT_SCRIPT = textwrap.dedent("""
    import sys, time
    from convnet.data import Loader
    if __name__ == "__main__":
        loader = Loader(sys.argv[1], "train", batch_size=2, workers=2, prefetch=2)
        for epoch in range(10**6):
            for number, batch in enumerate(loader):
                if epoch == 0 and number == 0:
                    print("READY", loader.shared_memory_name, *loader.worker_pids(), flush=True)
                time.sleep(float(sys.argv[2]))
""")


@pytest.mark.parametrize("pause", [0.001, 0.05], ids=["in-loader", "in-consumer"])
def test_ctrl_c_leaves_nothing_behind(prepared, tmp_path, pause):
    """SIGINT while the loader waits for a batch, or while the consumer holds one."""
    script = tmp_path / "run_loader.py"
    script.write_text(_SIGINT_SCRIPT)
    process = subprocess.Popen([sys.executable, str(script), str(prepared["jpeg"]), str(pause)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline().split()
        assert line and line[0] == "READY", process.stderr.read()
        name, pids = line[1], [int(p) for p in line[2:]]
        assert len(pids) == 2 and os.path.exists(f"/dev/shm/{name}")
        time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert "KeyboardInterrupt" in err
    assert "leaked" not in err and "Exception ignored" not in err, err
    assert _gone(pids), "worker processes outlived their loader"
    assert not os.path.exists(f"/dev/shm/{name}") and not _our_segments(process.pid)


def test_workers_exit_when_the_parent_is_killed(prepared, tmp_path):
    """SIGKILL leaves no finalizer to run: the workers notice by themselves, and the
    resource tracker unlinks the shared memory."""
    script = tmp_path / "run_loader.py"
    script.write_text(_SIGINT_SCRIPT)
    process = subprocess.Popen([sys.executable, str(script), str(prepared["jpeg"]), "0.001"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline().split()
        assert line and line[0] == "READY", process.stderr.read()
        name, pids = line[1], [int(p) for p in line[2:]]
        process.kill()
        process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert _gone(pids, timeout=15), "worker processes outlived their killed parent"
    deadline = time.monotonic() + 15
    while os.path.exists(f"/dev/shm/{name}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(f"/dev/shm/{name}")


# --------------------------------------------------------------------------- errors

def test_bad_arguments(prepared):
    with pytest.raises(LoaderError, match="batch_size"):
        Loader(prepared["jpeg"], batch_size=0)
    with pytest.raises(KeyError, match="no split 'test'"):
        Loader(prepared["jpeg"], "test")
    with pytest.raises(LoaderError, match="augment"):
        Loader(prepared["jpeg"], augment=3)
    with pytest.raises(LoaderError, match="augmentation is for"):
        Loader(prepared["jpeg"], augment=Augmentation("center", crop=20))
    with pytest.raises(LoaderError, match="workers"):
        Loader(prepared["jpeg"], workers=-2)
    loader = Loader(prepared["jpeg"], workers=0)
    with pytest.raises(LoaderError, match="epoch"):
        loader.epoch(-1)
    loader.close()
