"""The training driver and its commands (``convnet train``, ``convnet evaluate``) on a tiny
generated data set (3 classes, 8 training and 3 validation images each, 76x76 prepared,
67x67 crops) and a tiny network on cpu: metrics and checkpoints, an exact resume, a
broken checkpoint skipped, a foreign run folder refused, a loss that is not finite,
Ctrl-C, two columns, the emu device, and evaluation."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from convnet.app import checkpoint as ckpt
from convnet.app import cli
from convnet.app.evaluate import evaluate_checkpoint
from convnet.app.train import TrainError, TrainingRun, TrainOptions, train

from conftest import require_device

WIDTHS = ["8", "16", "16", "16", "16", "32", "32"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """3 classes told apart by the colour of a 36x36 square at a random place on a random
    dull background; raw shards (no Pillow needed)."""
    from convnet.data import prepare_arrays
    rng = np.random.default_rng(0)

    def split(per_class):
        images, labels = [], []
        for k in range(3):
            for _ in range(per_class):
                image = rng.integers(40, 120, (76, 76, 3))
                y0, x0 = rng.integers(0, 40, 2)
                image[y0:y0 + 36, x0:x0 + 36, k] += 120
                images.append(image.astype(np.uint8))
                labels.append(k)
        return np.stack(images), np.array(labels)

    root = tmp_path_factory.mktemp("train-data") / "prepared"
    prepare_arrays(root, {"train": split(8), "val": split(3)}, ["red", "green", "blue"],
                   log=lambda _: None)
    return root


def _args(data, out, *extra, device="cpu"):
    return ["train", "--data", str(data), "--out", str(out), "--device", device, "--crop", "67",
            "--widths", *WIDTHS, "--weight-std", "0.1", "--batch-size", "8", "--workers", "0",
            "--no-progress", *map(str, extra)]


def _metrics(out) -> list[dict]:
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def _checkpoints(out) -> list[str]:
    return sorted(p.name for p in Path(out).glob("epoch-*.safetensors"))


# --------------------------------------------------------------------------- a run

def test_a_run_logs_checkpoints_and_learns(data, tmp_path, capsys):
    """8 epochs of 6 steps (no dropout, and the rate kept: a network this narrow learns
    slowly otherwise): the training loss of the last two epochs is well below the first."""
    out = tmp_path / "run"
    assert cli.main(_args(data, out, "--epochs", 8, "--batch-size", 4, "--lr", 0.003,
                          "--dropout", 0, "--patience", 100, "--schedule", "plateau")) == 0
    printed = capsys.readouterr().out
    assert "epoch 1/8: train loss" in printed and "epoch 8/8" in printed
    assert "final (epoch 8 weights, ten-crop, 9 val images)" in printed
    lines = _metrics(out)
    assert [l["event"] for l in lines] == ["start"] + ["epoch"] * 8 + ["final"]
    start, epochs, final = lines[0], lines[1:9], lines[9]
    assert start["model"] == "alexnet-small" and start["widths"] == [int(w) for w in WIDTHS]
    assert start["classes"] == ["red", "green", "blue"] and start["devices"] == ["cpu"]
    assert start["batch_size"] == 4 and start["dropout"] == 0 and start["lr"] == 0.003
    assert [e["epoch"] for e in epochs] == list(range(1, 9))
    for e in epochs:
        for key in ("train_top1_error", "train_top5_error", "val_top1_error", "val_top5_error"):
            assert 0 <= e[key] <= 1, (key, e)
        assert e["images_per_second"] > 0 and e["lr"] > 0
    losses = [e["train_loss"] for e in epochs]
    assert (losses[-1] + losses[-2]) / 2 < 0.7 * losses[0], losses  # it learns
    assert final["mode"] == "ten_crop" and final["images"] == 9
    assert 0 <= final["top1_error"] <= 1 and 0 <= final["top5_error"] <= 1
    # the last two and the best are kept
    best = min(epochs, key=lambda e: (e["val_top1_error"], e["epoch"]))["epoch"]
    assert set(_checkpoints(out)) == {f"epoch-{e:04d}.safetensors" for e in {7, 8, best}}
    saved = ckpt.load(out / "epoch-0008.safetensors")
    assert saved.state["epoch"] == 8 and saved.state["schedule"]["best_epoch"] == best
    assert saved.optimizer["lr"] == 0.003


def test_resume_trains_exactly_as_an_uninterrupted_run(data, tmp_path, capsys):
    straight, split = tmp_path / "straight", tmp_path / "split"
    # the paper's schedule: a run of 2 epochs resumed for a 3rd trains as one of 3 (the
    # cosine's rates depend on the run's length: tests/test_schedule.py)
    plateau = ("--schedule", "plateau")
    assert cli.main(_args(data, straight, "--epochs", 3, "--no-final-eval", *plateau)) == 0
    assert cli.main(_args(data, split, "--epochs", 2, "--no-final-eval", *plateau)) == 0
    after_two = ckpt.load(split / "epoch-0002.safetensors")
    assert cli.main(_args(data, split, "--epochs", 3, "--no-final-eval", "--resume")) == 0
    err = capsys.readouterr().err
    assert "resuming" in err and "after epoch 2" in err
    a = ckpt.load(straight / "epoch-0003.safetensors")
    b = ckpt.load(split / "epoch-0003.safetensors")
    assert b.state["epoch"] == 3
    for name in a.model:
        np.testing.assert_array_equal(a.model[name], b.model[name], err_msg=name)
        np.testing.assert_array_equal(a.optimizer["velocity"][name],
                                      b.optimizer["velocity"][name], err_msg=name)
    assert a.optimizer["lr"] == b.optimizer["lr"] and a.optimizer["steps"] == b.optimizer["steps"]
    assert a.state["schedule"] == b.state["schedule"]
    events = [l["event"] for l in _metrics(split)]
    assert events == ["start", "epoch", "epoch", "resume", "epoch"]
    resume = _metrics(split)[3]
    assert resume["epoch"] == 2 and resume["lr"] == after_two.optimizer["lr"]


def test_resume_restores_weights_velocities_and_lr(data, tmp_path):
    out = tmp_path / "run"
    assert cli.main(_args(data, out, "--epochs", 1, "--no-final-eval", "--lr", 0.02,
                          "--schedule", "plateau")) == 0
    saved = ckpt.load(out / "epoch-0001.safetensors")
    run = TrainingRun(TrainOptions(out=str(out), resume=True, device="cpu", workers=0,
                                   log=lambda _: None))
    assert run.epoch == 1 and run.optimizer.lr == saved.optimizer["lr"] == 0.02
    for name, value in saved.model.items():
        np.testing.assert_array_equal(run.model.state_dict()[name], value, err_msg=name)
        np.testing.assert_array_equal(run.optimizer.velocity[name],
                                      saved.optimizer["velocity"][name], err_msg=name)
    assert run.settings["batch_size"] == 8 and run.settings["crop"] == 67
    # --lr replaces the rate on resume; the run's fixed settings may not change
    run = TrainingRun(TrainOptions(out=str(out), resume=True, lr=0.005, workers=0,
                                   log=lambda _: None))
    assert run.optimizer.lr == 0.005
    with pytest.raises(TrainError, match=r"--batch-size 16 \(the run has 8\)"):
        TrainingRun(TrainOptions(out=str(out), resume=True, batch_size=16, log=lambda _: None))


def test_a_broken_checkpoint_falls_back_to_the_previous(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(_args(data, out, "--epochs", 2, "--no-final-eval")) == 0
    newest = out / "epoch-0002.safetensors"
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated, as by a full disk
    capsys.readouterr()
    assert cli.main(_args(data, out, "--epochs", 2, "--no-final-eval", "--resume")) == 0
    err = capsys.readouterr().err
    assert "warning" in err and "epoch-0002.safetensors" in err and "truncated or corrupt" in err
    assert "after epoch 1" in err
    assert ckpt.load(newest).state["epoch"] == 2  # epoch 2 trained again and saved whole

    for path in out.glob("epoch-*.safetensors"):
        path.write_bytes(b"\0" * 100)
    assert cli.main(_args(data, out, "--epochs", 3, "--resume")) == 2
    err = capsys.readouterr().err
    assert "none of the 2 checkpoints" in err and "loads" in err


def test_a_foreign_run_folder_is_refused(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(_args(data, out, "--epochs", 1, "--no-final-eval")) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    assert cli.main(_args(data, out, "--epochs", 1)) == 2
    err = capsys.readouterr().err
    assert "holds another run" in err and "--resume" in err and "--force" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # untouched

    assert cli.main(_args(data, out, "--epochs", 1, "--no-final-eval", "--force")) == 0
    assert "--force: deleted the previous run" in capsys.readouterr().err
    assert [l["event"] for l in _metrics(out)] == ["start", "epoch"]

    empty = tmp_path / "empty"
    assert cli.main(_args(data, empty, "--epochs", 1, "--resume")) == 2
    assert "holds no checkpoint to continue from" in capsys.readouterr().err
    assert cli.main(_args(data, out, "--resume", "--force")) == 2


def test_bad_arguments_are_one_line_errors(data, tmp_path, capsys):
    cases = [
        (["--epochs", 0], "--epochs must be an integer >= 1"),
        (["--lr", -1], "--lr must be a positive number"),
        (["--seed", 2**64], "--seed must be below 2**63"),
        (["--workers", -1], "--workers must be an integer >= 0"),
        (["--dropout", 1], "--dropout must be in [0, 1)"),
        (["--crop", 200], "the crop 200 is larger than the prepared images (76x76)"),
        (["--devices", "cpu", "cpu"], "give --device (one device for every column) or "
                                      "--devices (one per column), not both"),
        (["--device", "tpu"], "unknown device 'tpu'"),
    ]
    for extra, message in cases:
        assert cli.main(_args(data, tmp_path / "x", *extra)) == 2, extra
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (extra, err)
    assert cli.main(["train", "--data", str(data), "--out", str(tmp_path / "x"), "--devices",
                     "cpu", "cpu", "--columns", "1"]) == 2
    assert "--columns 1 needs 1 device(s) in --devices, got 2" in capsys.readouterr().err
    assert cli.main(["train", "--data", str(tmp_path / "nowhere")]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert cli.main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "y")]) == 2
    assert "neither a prepared data set" in capsys.readouterr().err
    assert cli.main(_args(data, tmp_path / "z", "--widths", 8, 16, 16, 16, 16, 32, 31)) == 2
    assert "even" in capsys.readouterr().err


def test_a_loss_that_is_not_finite_stops_the_run(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(_args(data, out, "--epochs", 1, "--no-final-eval")) == 0
    before = (out / "epoch-0001.safetensors").read_bytes()
    capsys.readouterr()
    assert cli.main(_args(data, out, "--epochs", 3, "--resume", "--lr", 1e30)) == 1
    err = capsys.readouterr().err
    assert "the loss is" in err and "checkpoints are untouched" in err and "Traceback" not in err
    assert _checkpoints(out) == ["epoch-0001.safetensors"]
    assert (out / "epoch-0001.safetensors").read_bytes() == before
    assert _metrics(out)[-1]["event"] == "stopped"


# --------------------------------------------------------------------------- Ctrl-C

def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_ctrl_c_stops_cleanly(data, tmp_path):
    out = tmp_path / "run"
    args = _args(data, out, "--epochs", 100000, "--workers", 2)
    process = subprocess.Popen([sys.executable, "-m", "convnet", *args], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / "epoch-0002.safetensors").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert process.poll() is None, process.communicate()
        workers = _children(process.pid)
        assert len(workers) >= 2, workers  # the train and val loaders' workers
        process.send_signal(signal.SIGINT)
        stdout, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, err
    assert "stopping after this step" in err and "interrupted" in err and "--resume" in err, err
    assert "Traceback" not in err, err
    assert "leaked" not in err and "Exception ignored" not in err, err
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(p) for p in workers), "loader workers outlived the run"
    names = _checkpoints(out)
    assert names and not [p for p in os.listdir(out) if ".tmp-" in p]
    for name in names:
        ckpt.load(out / name)  # every checkpoint left is whole
    assert _metrics(out)[-1]["event"] == "interrupted"


# --------------------------------------------------------------------------- placement

def test_two_columns_and_back_to_one(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(_args(data, out, "--epochs", 1, "--no-final-eval", "--columns", 2)) == 0
    saved = ckpt.load(out / "epoch-0001.safetensors")
    assert "column1.fc8.weight" in saved.model and saved.state["settings"]["columns"] == 2
    assert cli.main(_args(data, out, "--epochs", 2, "--no-final-eval", "--resume",
                          "--columns", 1)) == 0
    again = ckpt.load(out / "epoch-0002.safetensors")
    assert "fc8.weight" in again.model and again.state["settings"]["columns"] == 1


def test_one_step_on_emu(data, tmp_path, capsys):
    require_device("emu")
    out = tmp_path / "run"
    args = _args(data, out, "--epochs", 1, device="emu")
    args[args.index("--batch-size") + 1] = "24"  # the whole training split: one step
    assert cli.main(args) == 0
    assert _metrics(out)[2]["event"] == "final" and _metrics(out)[2]["images"] == 9
    line = _metrics(out)[1]
    assert line["event"] == "epoch" and 0 <= line["val_top1_error"] <= 1
    assert np.isfinite(line["train_loss"])
    assert _metrics(out)[0]["devices"] == ["emu"]
    ran = ckpt.load(out / "epoch-0001.safetensors").state["settings"]["conv_algorithms"]
    assert len(ran) == 5, ran   # what each conv layer's "auto" ran, for resume and evaluate
    assert all(r["gpu"] == "h100" and r["algorithm"] in ("direct", "winograd")
               and r["precision"] == "fp32" for r in ran.values()), ran


# --------------------------------------------------------------------------- evaluate

def test_evaluate(data, tmp_path, capsys):
    out = tmp_path / "run"
    summary = train(TrainOptions(data=str(data), out=str(out), device="cpu", crop=67,
                                 widths=tuple(map(int, WIDTHS)), weight_std=0.1, batch_size=8,
                                 epochs=2, workers=0, progress=False, log=lambda _: None,
                                 out_file=open(os.devnull, "w")))
    final = summary["final"]
    ten = evaluate_checkpoint(out / "epoch-0002.safetensors", device="cpu", workers=0)
    assert ten.mode == "ten_crop" and ten.images == 9
    assert ten.top1_error == pytest.approx(final["top1_error"])  # the same weights and patches
    center = evaluate_checkpoint(out, mode="center", data=data, device="cpu", workers=0)
    assert 0 <= center.top1_error <= 1 and 0 <= center.top5_error <= center.top1_error
    assert cli.main(["evaluate", str(out), "--center", "--workers", "0", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "top-1 error" in printed and "center" in printed
    assert "top-5" not in printed  # 3 classes: every label is among the top five
    assert cli.main(["evaluate", str(tmp_path / "nothing")]) == 2
    assert "no such checkpoint file or run folder" in capsys.readouterr().err
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"x" * 10)
    assert cli.main(["evaluate", str(bad)]) == 2
    assert "not a checkpoint (not a safetensors file" in capsys.readouterr().err


def test_evaluate_uses_the_precision_the_run_trained_with(data, tmp_path, capsys):
    out = tmp_path / "run"
    train(TrainOptions(data=str(data), out=str(out), device="cpu", crop=67, precision="bf16",
                       widths=tuple(map(int, WIDTHS)), weight_std=0.1, batch_size=8, epochs=1,
                       workers=0, progress=False, final_eval=False, log=lambda _: None,
                       out_file=open(os.devnull, "w")))
    run = dict(mode="center", device="cpu", workers=0)
    recorded = evaluate_checkpoint(out, **run)
    assert recorded.loss == evaluate_checkpoint(out, precision="bf16", **run).loss
    assert recorded.loss != evaluate_checkpoint(out, precision="fp32", **run).loss  # bf16 rounds
    with pytest.raises(SystemExit) as exit_:
        cli.main(["evaluate", str(out), "--precision", "fp16", "--device", "cpu"])
    assert exit_.value.code == 2 and "invalid choice: 'fp16'" in capsys.readouterr().err


# --------------------------------------------------------------------------- data folders

def test_an_image_folder_is_prepared_beside_it_once(tmp_path, capsys):
    pytest.importorskip("PIL.Image", reason="Pillow is not installed (a dependency of convnet.data)")
    from convnet.data import make_demo_data
    src = tmp_path / "images"
    make_demo_data(src, classes=2, train_per_class=3, val_per_class=1, size=72, seed=3, workers=0)
    args = ["train", "--data", str(src), "--device", "cpu", "--crop", "67", "--widths", *WIDTHS,
            "--batch-size", "6", "--workers", "0", "--no-progress", "--epochs", "1",
            "--no-final-eval"]
    assert cli.main(args + ["--out", str(tmp_path / "a")]) == 0
    assert (tmp_path / "images-prepared" / "manifest.json").is_file()
    assert "preparing" in capsys.readouterr().err
    assert cli.main(args + ["--out", str(tmp_path / "b")]) == 0
    err = capsys.readouterr().err
    assert "using" in err and "images-prepared" in err and "preparing" not in err
    elsewhere = tmp_path / "elsewhere"
    assert cli.main(args + ["--out", str(tmp_path / "c"), "--prepared", str(elsewhere)]) == 0
    assert (elsewhere / "manifest.json").is_file()
    assert _metrics(tmp_path / "c")[0]["data"] == str(elsewhere.resolve())
    # a prepared folder of another source is not overwritten
    other = tmp_path / "other"
    make_demo_data(other, classes=2, train_per_class=2, val_per_class=1, size=72, seed=4,
                   workers=0)
    assert cli.main(args + ["--data", str(other), "--out", str(tmp_path / "d"), "--prepared",
                            str(elsewhere)]) == 2
    assert "prepared from another folder" in capsys.readouterr().err


def test_resuming_a_finished_run_says_so(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(_args(data, out, "--epochs", 1, "--no-final-eval")) == 0
    capsys.readouterr()
    assert cli.main(_args(data, out, "--resume")) == 0
    assert "has finished its 1 epoch;" in capsys.readouterr().out  # not "1 epochs"
    assert [l["event"] for l in _metrics(out)] == ["start", "epoch"]


def test_a_data_set_without_validation_images(tmp_path, capsys):
    from convnet.data import prepare_arrays
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, (6, 70, 70, 3), dtype=np.uint8)
    prepare_arrays(tmp_path / "p", {"train": (images, np.array([0, 1, 0, 1, 0, 1]))}, ["a", "b"],
                   log=lambda _: None)
    out = tmp_path / "run"
    assert cli.main(_args(tmp_path / "p", out, "--epochs", 2, "--schedule", "plateau")) == 0
    assert "no validation images: no per-epoch validation, and the learning rate stays" in \
        capsys.readouterr().err
    lines = _metrics(out)
    assert [l["event"] for l in lines] == ["start", "epoch", "epoch"]
    assert "val_top1_error" not in lines[1] and lines[2]["lr"] == lines[1]["lr"]
    out = tmp_path / "cosine"  # the cosine needs no validation error
    assert cli.main(_args(tmp_path / "p", out, "--epochs", 2, "--schedule", "cosine")) == 0
    assert "no validation images: no per-epoch validation\n" in capsys.readouterr().err
    lines = _metrics(out)
    assert lines[2]["lr"] < lines[1]["lr"]
