"""Checkpoints (convnet.app.checkpoint): the round trip of weights, velocities and state; the
errors for a checkpoint that does not fit the model, and for files that are truncated,
corrupt, of another format or version; a save that fails leaves the old file as it was."""
from __future__ import annotations

import os
import stat

import numpy as np
import pytest

import convnet
from convnet.app import checkpoint as ckpt
from convnet.models import alexnet
from convnet.optim import SGD

TINY = (4, 8, 8, 8, 8, 16, 16)
SIZE = 67


def _trained(seed=0, widths=TINY, dtype=np.float32):
    """A tiny AlexNet and its SGD after two steps (non-zero velocities)."""
    model = alexnet(num_classes=5, input_size=SIZE, widths=widths, weight_std=0.1, seed=seed,
                    dtype=dtype)
    opt = SGD(model, lr=0.02, lr_multipliers={"*.bias": 2.0})
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 3, SIZE, SIZE)).astype(dtype)
    for _ in range(2):
        convnet.train_step(model, opt, x, [1, 3])
    return model, opt


def test_round_trip(tmp_path):
    model, opt = _trained()
    state = {"epoch": 3, "schedule": {"best": 0.25, "best_epoch": 2}, "note": "ü"}
    path = ckpt.save(tmp_path / "a.safetensors", model.state_dict(), opt.state_dict(), state)
    assert path.is_file() and os.listdir(tmp_path) == ["a.safetensors"]  # no temporaries left
    assert stat.S_IMODE(path.stat().st_mode) & 0o044  # a normal file, not 0600 (umask 022)
    loaded = ckpt.load(path)
    assert loaded.state == state
    saved = model.state_dict()
    assert list(loaded.model) == sorted(saved)
    for name, value in saved.items():
        got = loaded.model[name]
        assert got.dtype == value.dtype and got.shape == value.shape, name
        np.testing.assert_array_equal(got, value, err_msg=name)
    expected = opt.state_dict()
    for key in ("lr", "momentum", "weight_decay", "lr_multipliers", "weight_decay_multipliers",
                "steps"):
        assert loaded.optimizer[key] == expected[key], key
    assert set(loaded.optimizer["velocity"]) == set(expected["velocity"])
    for name, v in expected["velocity"].items():
        assert np.abs(v).max() > 0, name  # two steps: real velocities, not zeros
        np.testing.assert_array_equal(loaded.optimizer["velocity"][name], v, err_msg=name)

    fresh, fresh_opt = _trained(seed=9)  # other weights, other velocities
    ckpt.restore(loaded, fresh, fresh_opt)
    for name, value in saved.items():
        np.testing.assert_array_equal(fresh.state_dict()[name], value, err_msg=name)
    for name, v in expected["velocity"].items():
        np.testing.assert_array_equal(fresh_opt.velocity[name], v, err_msg=name)
    assert fresh_opt.lr == opt.lr and fresh_opt.steps == opt.steps
    assert fresh_opt.lr_multipliers == opt.lr_multipliers


def test_model_only_and_float64(tmp_path):
    model, _ = _trained(dtype=np.float64)
    path = ckpt.save(tmp_path / "m.safetensors", model.state_dict())
    loaded = ckpt.load(path)
    assert loaded.optimizer is None and loaded.state == {}
    assert all(a.dtype == np.float64 for a in loaded.model.values())
    with pytest.raises(ckpt.CheckpointError, match="no optimizer state"):
        ckpt.restore(loaded, model, SGD(model))


def test_mismatch_names_every_difference(tmp_path):
    model, opt = _trained()
    path = ckpt.save(tmp_path / "a.safetensors", model.state_dict(), opt.state_dict())
    loaded = ckpt.load(path)
    other, other_opt = _trained(widths=(4, 8, 8, 8, 8, 16, 32))  # fc7 and fc8 differ
    before = other.state_dict()
    with pytest.raises(ckpt.CheckpointError) as info:
        ckpt.restore(loaded, other, other_opt)
    message = str(info.value)
    assert "a.safetensors" in message
    assert "parameter fc7.weight: shape (16, 16) in the checkpoint, (32, 16) in the model" in message
    assert "parameter fc8.weight: shape (5, 16) in the checkpoint, (5, 32) in the model" in message
    assert "velocity fc7.weight" in message
    for name, value in before.items():  # nothing changed
        np.testing.assert_array_equal(other.state_dict()[name], value)

    two = alexnet(num_classes=5, columns=2, input_size=SIZE, widths=TINY, devices=["cpu", "cpu"])
    with pytest.raises(ckpt.CheckpointError, match="missing from the checkpoint: column0.conv1"):
        ckpt.restore(loaded, two)

    wide, _ = _trained(dtype=np.float64)
    with pytest.raises(ckpt.CheckpointError,
                       match="conv1.weight: dtype float32 in the checkpoint, float64 in the model"):
        ckpt.restore(loaded, wide)


def _flip_byte(path, offset_from_end):
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0xFF
    path.write_bytes(bytes(data))


def test_bad_files_are_clear_errors(tmp_path):
    model, opt = _trained()
    good = ckpt.save(tmp_path / "good.safetensors", model.state_dict(), opt.state_dict(),
                     {"epoch": 1})
    data = good.read_bytes()

    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[:len(data) // 2])
    with pytest.raises(ckpt.CheckpointError, match="truncated.safetensors: unreadable checkpoint, "
                                                   "truncated or corrupt"):
        ckpt.load(truncated)

    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(ckpt.CheckpointError, match="truncated checkpoint .0 bytes"):
        ckpt.load(empty)

    text = tmp_path / "notes.safetensors"  # a file that is no checkpoint is not "corrupt"
    text.write_text("these are my notes, not a checkpoint\n")
    with pytest.raises(ckpt.CheckpointError, match="not a checkpoint .not a safetensors file"):
        ckpt.load(text)

    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(data)
    _flip_byte(corrupt, 10)  # inside the last tensor's bytes
    with pytest.raises(ckpt.CheckpointError, match="checksum mismatch in the tensors"):
        ckpt.load(corrupt)

    from safetensors.numpy import save_file
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": np.ones(3, np.float32)}, str(foreign))
    with pytest.raises(ckpt.CheckpointError, match="not a convnet checkpoint"):
        ckpt.load(foreign)

    newer = tmp_path / "newer.safetensors"
    save_file({"w": np.ones(3, np.float32)}, str(newer),
              metadata={"format": ckpt.FORMAT_NAME, "version": "99"})
    with pytest.raises(ckpt.CheckpointError, match="format version 99, this convnet reads "
                                                   "versions 1, 2"):
        ckpt.load(newer)

    with pytest.raises(ckpt.CheckpointError, match="no such checkpoint file"):
        ckpt.load(tmp_path / "missing.safetensors")
    with pytest.raises(ckpt.CheckpointError, match="is a folder"):
        ckpt.load(tmp_path)
    with pytest.raises(ckpt.CheckpointError, match="not JSON-serialisable"):
        ckpt.save(tmp_path / "x.safetensors", model.state_dict(), state={"f": object()})
    assert not (tmp_path / "x.safetensors").exists()


def test_a_failed_save_leaves_the_old_file(tmp_path, monkeypatch):
    model, opt = _trained()
    path = ckpt.save(tmp_path / "c.safetensors", model.state_dict(), opt.state_dict(), {"epoch": 1})
    before = path.read_bytes()

    import safetensors.numpy

    def broken(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.numpy, "save_file", broken)
    with pytest.raises(OSError, match="No space left"):
        ckpt.save(path, model.state_dict(), opt.state_dict(), {"epoch": 2})
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["c.safetensors"]
    assert ckpt.load(path).state == {"epoch": 1}


def _edit_metadata(path, old: bytes, new: bytes):
    """Replace bytes in the file's JSON header (same length: the file stays well formed)."""
    data = path.read_bytes()
    assert len(old) == len(new) and data.count(old) == 1, old
    path.write_bytes(data.replace(old, new))


def test_edited_metadata_is_refused(tmp_path):
    """The checksum covers the metadata: an edited learning rate or epoch (a valid
    file, only the values changed) is refused, naming what was changed."""
    model, opt = _trained()
    state = {"epoch": 3, "settings": {"lr": 0.01}}
    for old, new in ((b'\\"epoch\\": 3', b'\\"epoch\\": 7'), (b"0.01", b"0.09")):
        path = ckpt.save(tmp_path / "c.safetensors", model.state_dict(), opt.state_dict(), state)
        _edit_metadata(path, old, new)
        with pytest.raises(ckpt.CheckpointError, match="checksum mismatch in the metadata"):
            ckpt.load(path)


def test_version_1_files_still_load(tmp_path):
    """Checkpoints written before the metadata digest (version 1) are read as before."""
    from safetensors.numpy import save_file
    model, _ = _trained()
    tensors = {"model." + n: np.asarray(a) for n, a in model.state_dict().items()}
    path = tmp_path / "v1.safetensors"
    save_file(tensors, str(path), metadata={
        "format": ckpt.FORMAT_NAME, "version": "1", "state": '{"epoch": 2}',
        "optimizer": "null", "sha256": ckpt._digest(tensors)})
    assert ckpt.load(path).state == {"epoch": 2}


def test_temporary_names():
    assert ckpt.is_temporary(".epoch-0003.safetensors.tmp-1234")
    assert not ckpt.is_temporary("epoch-0003.safetensors")
    assert not ckpt.is_temporary(".hidden")
