"""Fault injection (issue 15): faults and bad input on purpose, through the command line.

Each test does one thing a user or a machine does wrong — kill -9 and SIGTERM at a
chosen point (during prepare, mid-epoch, mid-checkpoint-write), two runs on one
folder, a write that fails (a file-size limit: EFBIG from the kernel; ENOSPC
injected), a flipped byte in each kind of file convnet keeps (checkpoint tensors and
metadata, shard payload and tables, manifest, mean image, lock file), a link loop, a
FIFO, a worker killed — and checks two things: nothing the user had is lost or
corrupt (every checkpoint and shard left loads and verifies; a rerun or resume
finishes), and the failure is one line on stderr, ``convnet CMD: ...``, with the
exit code of its kind (1 failure, 2 usage, 130 Ctrl-C, 143 SIGTERM) and no traceback.

Tiny data (3 classes of 8 training and 3 validation 72x72 images, raw shards) and a
tiny network (widths 8/16/16/16/16/32/32, 67x67 crops) on cpu: a few seconds a test.
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from convnet.app import checkpoint as ckpt
from convnet.data import open_prepared, prepare_arrays, shards

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="signals, /proc and /dev/shm as Linux has them")

WIDTHS = ["8", "16", "16", "16", "16", "32", "32"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)

    def split(per_class):
        images = rng.integers(0, 255, (3 * per_class, 72, 72, 3), dtype=np.uint8)
        return images, np.repeat(np.arange(3), per_class)

    root = tmp_path_factory.mktemp("faults") / "prepared"
    prepare_arrays(root, {"train": split(8), "val": split(3)}, ["a", "b", "c"],
                   shard_size=8, log=lambda _: None)
    return root


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> Path:
    """A finished run of 2 epochs on ``data`` (tests copy it: ``_copy_run``)."""
    from convnet.app import cli
    out = tmp_path_factory.mktemp("faults") / "trained"
    assert cli.main(_train_args(data, out, "--epochs", 2)) == 0
    return out


def _copy_run(trained: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(trained, out, ignore=shutil.ignore_patterns("*.png", "events.*"))
    return out


def _train_args(data, out, *extra):
    return ["train", "--data", str(data), "--out", str(out), "--device", "cpu", "--crop", "67",
            "--widths", *WIDTHS, "--batch-size", "8", "--workers", "0", "--no-progress",
            "--no-final-eval", *map(str, extra)]


def _env(**extra):
    return {**os.environ, "PYTHONIOENCODING": "utf-8", **extra}


def _convnet(*args, timeout=180, preexec_fn=None, env=None):
    return subprocess.run([sys.executable, "-m", "convnet", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, preexec_fn=preexec_fn, env=env or _env())


def _inproc(capsys, *args):
    """``convnet ARGS`` in this process (no interpreter start-up, matplotlib imported once):
    for the tests that need no process of their own."""
    from types import SimpleNamespace

    from convnet.app import cli
    capsys.readouterr()
    try:
        code = cli.main([str(a) for a in args])
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    captured = capsys.readouterr()
    return SimpleNamespace(returncode=code, stdout=captured.out, stderr=captured.err)


def _start(*args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "convnet", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env(), **kwargs)


def _wait_for(predicate, timeout=120):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.02)


def one_clear_line(err: str, command: str) -> str:
    """The failure's message: exactly one ``convnet COMMAND:`` line, no traceback."""
    assert "Traceback" not in err and "Exception ignored" not in err and "leaked" not in err, err
    lines = [line for line in err.splitlines() if line.startswith(f"convnet {command}:")]
    assert len(lines) == 1, err
    return lines[0]


def _checkpoints(out) -> list[Path]:
    return sorted(Path(out).glob("epoch-*.safetensors"))


def _all_whole(out) -> None:
    """Every checkpoint in the run folder loads (digests checked), no temporaries stay."""
    for path in _checkpoints(out):
        ckpt.load(path)


def _events(out) -> list[dict]:
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    return found


def _segments(pid: int) -> list[str]:
    return [n for n in os.listdir("/dev/shm") if n.startswith(f"convnet-ld-{pid}-")]


# --------------------------------------------------------------------------- signals

def test_sigterm_mid_epoch_is_handled_like_ctrl_c(data, tmp_path):
    out = tmp_path / "my run"  # a space: the suggested command must quote it
    process = _start(*_train_args(data, out, "--epochs", 10000, "--workers", 2))
    try:
        _wait_for(lambda: (out / "epoch-0001.safetensors").exists() or process.poll() is not None)
        workers = _children(process.pid)
        assert process.poll() is None and workers and _segments(process.pid)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 143, err
    line = one_clear_line(err, "train")
    assert "terminated (SIGTERM)" in line
    assert f"convnet train --resume --out '{out}'" in err  # the way on, quoted
    assert _events(out)[-1] == {**_events(out)[-1], "event": "interrupted", "signal": "SIGTERM"}
    _wait_for(lambda: not any(_alive(p) for p in workers), timeout=10)
    assert not _segments(process.pid)  # the loader's shared memory was released
    _all_whole(out)


def test_kill_9_mid_epoch(data, tmp_path):
    """kill -9 of the driver (its loader workers see their parent go and exit): the
    shared memory is released by the tracker without its "leaked" warning, every
    checkpoint left is whole, and the next run says what happened."""
    out = tmp_path / "run"
    process = _start(*_train_args(data, out, "--epochs", 10000, "--workers", 2))
    try:
        _wait_for(lambda: (out / "epoch-0001.safetensors").exists() or process.poll() is not None)
        assert _segments(process.pid)
        workers = _children(process.pid)
        process.kill()
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    _wait_for(lambda: not any(_alive(p) for p in workers), timeout=20)
    _wait_for(lambda: not _segments(process.pid), timeout=20)
    assert "leaked" not in err and "Traceback" not in err, err
    _all_whole(out)
    resumed = _convnet(*_train_args(data, out, "--epochs", 1, "--resume"))
    assert "ended without releasing it (killed or crashed)" in resumed.stderr


_KILL_IN_SAVE = textwrap.dedent("""
    # convnet train, killed (SIGKILL) inside the save of epoch 2's checkpoint: after the
    # temporary file is written and fsynced, before it is renamed into place
    import os, signal, sys
    import convnet.app.checkpoint as ck
    from convnet.app.cli import main

    class Os:
        def __getattr__(self, name):
            return getattr(os, name)

        def replace(self, src, dst):
            if str(dst).endswith("epoch-0002.safetensors"):
                os.kill(os.getpid(), signal.SIGKILL)
            return os.replace(src, dst)

    ck.os = Os()
    sys.exit(main(sys.argv[1:]))
""")


def test_kill_9_mid_checkpoint_write_then_resume(data, tmp_path):
    out = tmp_path / "run"
    killed = subprocess.run([sys.executable, "-c", _KILL_IN_SAVE,
                             *_train_args(data, out, "--epochs", 2)],
                            capture_output=True, text=True, timeout=180, env=_env())
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert [p.name for p in _checkpoints(out)] == ["epoch-0001.safetensors"]
    assert [p.name for p in out.iterdir() if ".tmp-" in p.name]  # the half-done save
    before = (out / "epoch-0001.safetensors").read_bytes()
    ckpt.load(out / "epoch-0001.safetensors")  # the previous checkpoint is whole

    resumed = _convnet(*_train_args(data, out, "--epochs", 2, "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    assert "ended without releasing it (killed or crashed)" in resumed.stderr  # the stale lock
    assert "after epoch 1 from epoch-0001" in resumed.stderr
    events = [e["event"] for e in _events(out)]
    assert events == ["start", "epoch", "unfinished", "resume", "epoch"]
    epoch_line = next(line for line in resumed.stdout.splitlines() if line.startswith("epoch 2/2"))
    assert "train loss" in epoch_line and "top-1 err" in epoch_line
    assert "top-5" not in epoch_line  # 3 classes: every label is among the top five
    assert not [p for p in out.iterdir() if ".tmp-" in p.name or p.name.startswith(".convnet")]
    assert (out / "epoch-0001.safetensors").read_bytes() == before
    _all_whole(out)


def test_kill_9_during_prepare_then_rerun(tmp_path):
    """prepare killed (the whole process group, workers too) mid-way: the shards that
    look whole verify, the rerun notes the stale lock, resumes, and the result is the
    set an uninterrupted run makes."""
    from convnet.data import make_demo_data
    src = tmp_path / "src"
    make_demo_data(src, classes=2, train_per_class=24, val_per_class=0, size=96, seed=1,
                   workers=0)
    dst = tmp_path / "dst"
    args = ["prepare", src, dst, "--size", 32, "--shard-size", 2, "--no-progress"]
    process = _start(*args, "--workers", 1, start_new_session=True)
    try:
        _wait_for(lambda: len(list(dst.glob("train-*.cnshard"))) >= 3 or process.poll() is not None)
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=60)
    whole = sorted(dst.glob("train-*.cnshard"))
    assert 3 <= len(whole) < 24 and not (dst / shards.MANIFEST).exists()
    for path in whole:
        shards.read_shard_info(path, verify=True)
    again = _convnet(*args, "--workers", 2)
    assert again.returncode == 0, again.stderr
    assert "taken over" in again.stderr and "already complete" in again.stderr
    assert len(open_prepared(dst).split("train")) == 48


def test_sigterm_during_prepare(tmp_path):
    from convnet.data import make_demo_data
    src = tmp_path / "src"
    make_demo_data(src, classes=2, train_per_class=40, val_per_class=0, size=256, seed=1,
                   workers=0)
    dst = tmp_path / "dst"
    args = ["prepare", src, dst, "--size", 64, "--shard-size", 2, "--no-progress"]
    process = _start(*args, "--workers", 2)
    try:
        _wait_for(lambda: len(list(dst.glob("train-*.cnshard"))) >= 2 or process.poll() is not None)
        workers = _children(process.pid)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 143, err
    assert "terminated (SIGTERM); interrupted; run the same command again to resume" in \
        one_clear_line(err, "prepare")
    _wait_for(lambda: not any(_alive(p) for p in workers), timeout=10)
    assert not [p for p in dst.iterdir() if ".tmp-" in p.name or p.name == ".convnet.lock"]
    again = _convnet(*args, "--workers", 0)
    assert again.returncode == 0 and "taken over" not in again.stderr, again.stderr


# --------------------------------------------------------------------------- concurrency

def test_two_runs_on_one_folder(data, tmp_path, capsys):
    out = tmp_path / "run"
    first = _start(*_train_args(data, out, "--epochs", 10000))
    try:
        _wait_for(lambda: (out / "metrics.jsonl").exists() or first.poll() is not None)
        second = _inproc(capsys, *_train_args(data, out, "--epochs", 2, "--force"))
        assert second.returncode == 1, second.stderr
        line = one_clear_line(second.stderr, "train")
        assert f"the run folder {out} is in use by pid {first.pid} on host" in line
        resume = _inproc(capsys, *_train_args(data, out, "--epochs", 2, "--resume"))
        assert resume.returncode == 1 and f"pid {first.pid}" in resume.stderr
        assert first.poll() is None  # the first run is untouched and goes on
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=60)
    assert [e["event"] for e in _events(out)].count("start") == 1
    _all_whole(out)


def test_two_prepares_into_one_folder(tmp_path, data):
    """The second is refused while the first holds the destination; the second process
    never deletes the first one's temporaries."""
    from convnet.locks import FolderLock
    dst = tmp_path / "dst"
    dst.mkdir()
    with FolderLock(dst, "the prepare destination", "convnet prepare"):
        src = tmp_path / "src"
        (src / "train" / "a").mkdir(parents=True)
        (src / "train" / "b").mkdir(parents=True)
        from PIL import Image
        for k in "ab":
            Image.new("RGB", (20, 20), (9, 9, 9)).save(src / "train" / k / "x.JPEG")
        # a temporary of a running process (ours): another prepare must leave it alone
        keep = dst / f".train-00000.cnshard.tmp-{os.getpid()}"
        keep.write_bytes(b"being written")
        result = _convnet("prepare", src, dst, "--size", 16, "--workers", 0)
        assert result.returncode == 1, result.stderr
        assert f"is in use by pid {os.getpid()}" in one_clear_line(result.stderr, "prepare")
        assert keep.exists()


def test_default_run_folders_never_collide(tmp_path, monkeypatch):
    """Two runs in the same second: the folder is made with mkdir when chosen, so the
    second gets the next name (the old code picked a name that did not exist yet, and
    both processes could pick the same)."""
    import datetime as real

    from convnet.app import runs

    class Frozen(real.datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(2026, 11, 30, 12, 0, 0)

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(runs._dt, "datetime", Frozen)
    first, second = runs._default_out(), runs._default_out()
    assert first.is_dir() and second.is_dir() and first != second
    assert second.name == "20261130-120000-2"


# --------------------------------------------------------------------------- full disk

def _file_size_limit(nbytes):
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # then write() fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))
    return limit


def test_a_checkpoint_that_cannot_be_written(data, trained, tmp_path):
    """A write that fails in the middle of a checkpoint (the kernel's EFBIG under a
    file-size limit, as a full disk fails it with ENOSPC): one line naming the file,
    exit 1, the earlier checkpoints whole and unchanged, no temporary left."""
    out = _copy_run(trained, tmp_path)
    size = (out / "epoch-0002.safetensors").stat().st_size
    before = {p.name: p.read_bytes() for p in _checkpoints(out)}
    limited = _convnet(*_train_args(data, out, "--epochs", 3, "--resume"),
                       preexec_fn=_file_size_limit(size // 2))
    assert limited.returncode == 1, limited.stderr
    line = one_clear_line(limited.stderr, "train")
    assert "epoch-0003.safetensors: cannot write the checkpoint: File too large" in line
    assert "the checkpoints written before are untouched" in line
    assert {p.name: p.read_bytes() for p in _checkpoints(out)} == before
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]
    assert _events(out)[-1]["event"] == "stopped"
    _all_whole(out)


def test_prepare_on_a_full_disk(tmp_path):
    from convnet.data import make_demo_data
    src = tmp_path / "src"
    make_demo_data(src, classes=2, train_per_class=4, val_per_class=0, size=64, seed=1, workers=0)
    result = _convnet("prepare", src, tmp_path / "dst", "--size", 64, "--workers", 2,
                      "--format", "raw", preexec_fn=_file_size_limit(8000))
    assert result.returncode == 1, result.stderr
    line = one_clear_line(result.stderr, "prepare")
    assert "a worker failed making" in line and ".cnshard" in line and "File too large" in line


def test_enospc_is_named(data, tmp_path, monkeypatch, capsys):
    """ENOSPC itself (injected: no small file system to fill here) reads as a full disk."""
    import safetensors
    import safetensors.numpy

    from convnet.app import cli

    def full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"part")
        raise safetensors.SafetensorError(
            "Error while serializing: I/O error: No space left on device (os error 28)")

    out = tmp_path / "run"
    monkeypatch.setattr(safetensors.numpy, "save_file", full)
    assert cli.main(_train_args(data, out, "--epochs", 1)) == 1
    line = one_clear_line(capsys.readouterr().err, "train")
    assert "epoch-0001.safetensors: cannot write the checkpoint: No space left on device (the " \
           "disk is full)" in line
    assert not [p for p in out.iterdir() if p.name != "metrics.jsonl"]


# --------------------------------------------------------------------------- flipped bytes

def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


def test_a_flipped_byte_in_a_shard_stops_training(data, tmp_path):
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    path = copy / shards.shard_name("train", 1)
    _flip(path, shards.read_shard_info(path).payload_offset + 1000)
    result = _convnet(*_train_args(copy, tmp_path / "run", "--epochs", 1, "--workers", 2))
    assert result.returncode == 1, result.stderr
    line = one_clear_line(result.stderr, "train")
    assert f"{path}: checksum mismatch in the image data" in line
    assert "prepare the data set again" in line


@pytest.mark.parametrize("where", ["labels", "manifest", "mean"])
def test_flipped_bytes_in_the_data_set_files(data, tmp_path, where):
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    if where == "labels":
        path = copy / shards.shard_name("train", 0)
        info = shards.read_shard_info(path)
        _flip(path, info.payload_offset + info.payload_length + 4)
        expected, code = f"{path}: checksum mismatch in the header, labels", 1
    elif where == "manifest":
        path = copy / shards.MANIFEST
        text = path.read_text()
        path.write_text(text.replace('"a"', '"q"', 1))
        expected, code = f"{path}: checksum mismatch: the manifest was changed", 2
    else:
        path = copy / shards.MEAN_FILE
        _flip(path, 300)
        expected, code = f"{path}: checksum mismatch: the mean image is corrupt", 2
    result = _convnet(*_train_args(copy, tmp_path / "run", "--epochs", 1))
    assert result.returncode == code, result.stderr
    assert expected in one_clear_line(result.stderr, "train")


@pytest.mark.parametrize("where", ["tensors", "metadata"])
def test_flipped_bytes_in_the_newest_checkpoint(data, trained, tmp_path, where, capsys):
    """Resume skips the damaged newest checkpoint with a warning naming what differs and
    goes on from the one before; evaluate of the damaged file is refused (usage, 2)."""
    out = _copy_run(trained, tmp_path)
    newest = out / "epoch-0002.safetensors"
    if where == "tensors":
        _flip(newest, newest.stat().st_size - 5)
    else:  # "epoch": 2 -> 7, a valid file with an edited value
        raw = newest.read_bytes()
        assert raw.count(b'{\\"epoch\\": 2') == 1  # the state's first entry
        newest.write_bytes(raw.replace(b'{\\"epoch\\": 2', b'{\\"epoch\\": 7'))
    evaluated = _inproc(capsys, "evaluate", newest, "--device", "cpu", "--workers", 0, "--no-progress")
    assert evaluated.returncode == 2
    assert f"checksum mismatch in the {where}" in one_clear_line(evaluated.stderr, "evaluate")
    folder = _inproc(capsys, "evaluate", out, "--center", "--device", "cpu", "--workers", 0,
                      "--no-progress")  # the run folder: the damaged newest is passed over
    assert folder.returncode == 0, folder.stderr
    assert "evaluate: warning:" in folder.stderr and "train:" not in folder.stderr
    assert "top-1 error" in folder.stdout and "top-5" not in folder.stdout  # 3 classes
    # resumed without --no-final-eval: the run's own setting (no final evaluation) stays
    resume_args = [a for a in _train_args(data, out, "--epochs", 2, "--resume")
                   if a != "--no-final-eval"]
    resumed = _inproc(capsys, *resume_args)
    assert resumed.returncode == 0, resumed.stderr
    assert "train: warning:" in resumed.stderr and f"checksum mismatch in the {where}" in \
        resumed.stderr and "after epoch 1 from epoch-0001" in resumed.stderr
    assert "final" not in [e["event"] for e in _events(out)] and "final" not in resumed.stdout
    _all_whole(out) if where == "metadata" else ckpt.load(out / "epoch-0001.safetensors")


def test_a_mangled_lock_file_is_taken_over(data, trained, tmp_path, capsys):
    out = _copy_run(trained, tmp_path)
    (out / ".convnet.lock").write_bytes(b"\x00\xffnot json")
    result = _inproc(capsys, *_train_args(data, out, "--epochs", 2, "--resume"))
    assert result.returncode == 0, result.stderr
    assert "unreadable lock file" in result.stderr and "taken over" in result.stderr


# --------------------------------------------------------------------------- odd folders

def test_link_loops_and_fifos_in_the_images(tmp_path):
    from convnet.data import make_demo_data
    src = tmp_path / "src"
    make_demo_data(src, classes=2, train_per_class=5, val_per_class=0, size=48, seed=1,
                   workers=0)
    first = sorted((src / "train").iterdir())[0]
    os.symlink("..", first / "up")                  # train/<class>/up -> train/
    os.mkfifo(first / "pipe.JPEG")                  # would block a reader for ever
    result = _convnet("prepare", src, tmp_path / "dst", "--size", 32, "--workers", 0,
                      timeout=60)
    assert result.returncode == 0, result.stderr
    assert "train 10 images, 0 skipped, 2 ignored" in result.stderr
    listed = (tmp_path / "dst" / shards.SKIPPED_FILE).read_text()
    assert "pipe.JPEG\ta FIFO" in listed and "/up\ta link to train/" in listed


def test_a_loader_worker_killed(data, tmp_path):
    out = tmp_path / "run"
    process = _start(*_train_args(data, out, "--epochs", 10000, "--workers", 2))
    try:
        _wait_for(lambda: (out / "epoch-0001.safetensors").exists() or process.poll() is not None)
        worker = next(p for p in _children(process.pid)  # not multiprocessing's tracker
                      if b"resource_tracker" not in Path(f"/proc/{p}/cmdline").read_bytes())
        os.kill(worker, signal.SIGKILL)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 1, err
    assert f"(pid {worker}) was killed by signal 9" in one_clear_line(err, "train")
    assert _events(out)[-1]["event"] == "failed"
    _all_whole(out)


# --------------------------------------------------------------------------- the command line

def test_exit_codes_and_debug(data, trained, tmp_path, capsys, monkeypatch):
    run = trained
    for bad in ("0", "-5"):
        result = _inproc(capsys, "evaluate", run, "--batch-size", bad, "--device", "cpu")
        assert result.returncode == 2, result.stderr
        assert "--batch-size must be an integer >= 1" in one_clear_line(result.stderr, "evaluate")
    assert _inproc(capsys, "evaluate", run, "--batch-size", "x").returncode == 2  # argparse's
    broken = tmp_path / "broken"
    shutil.copytree(data, broken)
    _flip(broken / shards.shard_name("train", 0), 4096 + 10)
    plain = _inproc(capsys, *_train_args(broken, tmp_path / "r2", "--epochs", 1))
    assert plain.returncode == 1 and "Traceback" not in plain.stderr
    for debug in (["--debug"], []):
        if not debug:
            monkeypatch.setenv("CONVNET_DEBUG", "1")
        result = _inproc(capsys, *debug, *_train_args(broken, tmp_path / f"r{len(debug)}",
                                                      "--epochs", 1))
        assert result.returncode == 1
        assert "Traceback" in result.stderr and result.stderr.rstrip().splitlines()[-1] \
            .startswith("convnet train: ")


def test_resume_after_the_data_moved(data, tmp_path, capsys):
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    out = tmp_path / "run"
    assert _inproc(capsys, *_train_args(copy, out, "--epochs", 1)).returncode == 0
    copy.rename(tmp_path / "moved")
    args = [a for a in _train_args(copy, out, "--epochs", 1, "--resume")]
    del args[1:3]  # no --data
    result = _inproc(capsys, *args)
    assert result.returncode == 2
    line = one_clear_line(result.stderr, "train")
    assert f"the data set this run was trained on, {copy.resolve()}" in line
    assert "give --data DIR where it is now" in line and "--data " + str(copy) not in line
    moved = _inproc(capsys, *args, "--data", tmp_path / "moved")  # 1 epoch of 1: nothing to train
    assert moved.returncode == 0 and "has finished its 1 epoch;" in moved.stdout, moved.stderr


def test_one_class_is_refused(tmp_path, capsys):
    one = tmp_path / "one"
    images = np.random.default_rng(0).integers(0, 255, (4, 72, 72, 3), dtype=np.uint8)
    prepare_arrays(one, {"train": (images, np.zeros(4, np.int64))}, ["only"], log=lambda _: None)
    result = _inproc(capsys, *_train_args(one, tmp_path / "run", "--epochs", 1))
    assert result.returncode == 2
    assert "has 1 class (only): a classifier needs at least 2" in one_clear_line(result.stderr,
                                                                                 "train")
    assert not (tmp_path / "run").exists()  # made for the run's lock, removed again


_DEMO = textwrap.dedent("""
    import sys
    from convnet.data import datasets
    datasets.DEMO.update(classes=2, train_per_class=6, val_per_class=2, size=48)
    print(datasets.demo_dataset(workers=0, log=lambda text: print(text, flush=True)))
""")


def test_two_first_runs_share_the_demo_cache(tmp_path):
    """Both need the demo set, which neither has: one makes it, the other waits for it
    (before, the second died on the first one's deleted temporaries)."""
    env = _env(CONVNET_CACHE_DIR=str(tmp_path / "cache"))
    first, second = (subprocess.Popen([sys.executable, "-c", _DEMO], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, env=env)
                     for _ in range(2))
    outputs = [p.communicate(timeout=180) for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, outputs
    said = outputs[0][0] + outputs[1][0]
    assert said.count("train: making the demo data set in") == 1, said  # made once
    assert "Traceback" not in outputs[0][1] + outputs[1][1]
    prepared = outputs[0][0].splitlines()[-1]
    assert prepared == outputs[1][0].splitlines()[-1]
    assert len(open_prepared(prepared).split("train")) == 12


def test_evaluate_shows_progress(trained, capsys, monkeypatch):
    from convnet import progress
    from convnet.app.evaluate import evaluate_checkpoint
    monkeypatch.setattr(progress, "_is_terminal", lambda file: True)  # as on a terminal
    result = evaluate_checkpoint(trained, mode="center", device="cpu", workers=0, progress=True)
    err = capsys.readouterr().err
    assert "center:" in err and "/9 [" in err and result.images == 9  # a bar over 9 images
    assert "top-5" not in str(result) and result.classes == 3
