"""``convnet show`` and the figures ``convnet train`` draws, from a tiny real run (test_train's
3-class data set and network, on cpu): every figure is a PNG of plausible size with
something drawn in it; matplotlib missing; bad run folders and output paths; the pieces
(filter mosaic, metrics, nearest neighbours, ``AlexNet.features``) against known answers."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from PIL import Image

from convnet.app import cli, show
from convnet.models import alexnet, one_to_two_columns
from convnet.tensor import no_grad

from test_train import _args, data  # noqa: F401 - data: the module-scoped fixture

pytest.importorskip("matplotlib", reason="the plot extra (in the test extra) is not installed")

MISSING = 'drawing figures needs matplotlib: pip install "convnet[plot]"'


@pytest.fixture(scope="module")
def run(data, tmp_path_factory):  # noqa: F811 - the fixture imported above
    out = tmp_path_factory.mktemp("show") / "run"
    assert cli.main(_args(data, out, "--epochs", 2)) == 0
    return out


def _check_png(path, min_size=(200, 150)):
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size[0] >= min_size[0] and image.size[1] >= min_size[1], image.size
        assert image.size[0] <= 3000 and image.size[1] <= 3000, image.size
        pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    assert pixels.std() > 10  # not a blank page


def test_train_draws_curves_and_filters_and_writes_scalars(run, capsys):
    _check_png(run / "curves.png")
    _check_png(run / "filters.png")
    pytest.importorskip("tensorboardX", reason="the tensorboard extra is not installed")
    from test_progress import _events
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [(e["epoch"], e["train_loss"]) for e in metrics if e["event"] == "epoch"]
    assert [(step, v) for tag, step, v in _events(run) if tag == "loss/train"] == \
        [(e, pytest.approx(v, rel=1e-6)) for e, v in losses]
    assert {tag for tag, *_ in _events(run)} >= {"error/val_top1", "lr", "images_per_second",
                                                 "error/ten_crop_top1"}


@pytest.mark.parametrize("figure", show.FIGURES)
def test_show_draws_each_figure(run, figure, tmp_path, capsys):
    out = tmp_path / f"{figure}.png"
    assert cli.main(["show", figure, "--run", str(run), "--out", str(out), "--images", "3",
                     "--no-progress"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    _check_png(out)


def test_show_writes_into_the_run_folder_by_default(run, capsys):
    (run / "curves.png").unlink()
    assert cli.main(["show", "curves", "--run", str(run / "epoch-0002.safetensors")]) == 0
    _check_png(run / "curves.png")


def test_without_matplotlib_one_line_names_the_extra(run, data, tmp_path, monkeypatch,  # noqa: F811
                                                     capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    assert cli.main(["show", "filters", "--run", str(run), "--out", str(tmp_path / "f.png")]) == 1
    assert capsys.readouterr().err == f"convnet show: {MISSING}\n"
    assert not (tmp_path / "f.png").exists()
    # training still ends well, with one note line instead of the figures
    out = tmp_path / "run"
    assert cli.main(_args(data, out, "--epochs", 1, "--no-final-eval")) == 0
    err = capsys.readouterr().err
    assert 'train: no figures: matplotlib is not installed (pip install "convnet[plot]")' in err
    assert not list(out.glob("*.png"))


def test_bad_run_folders_and_outputs_are_one_line(run, tmp_path, capsys):
    def fails(*argv):
        assert cli.main(["show", *map(str, argv)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("convnet show: ") and err.count("\n") == 1, err
        return err

    assert "no such run folder" in fails("filters", "--run", tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no metrics.jsonl" in fails("curves", "--run", empty)
    assert "holds no checkpoints" in fails("filters", "--run", empty)
    assert "holds no checkpoints" in fails("predictions", "--run", empty)
    assert "does not exist" in fails("curves", "--run", run, "--out", tmp_path / "no" / "c.png")
    assert "give a file name ending in one of" in fails("curves", "--run", run, "--out",
                                                        tmp_path / "c.txt")
    assert "--images must be at least 1" in fails("predictions", "--run", run, "--images", 0)
    (empty / "metrics.jsonl").write_text('{"event": "start", "classes": ["a", "b"]}\n')
    assert "no epoch has finished yet" in fails("curves", "--run", empty)


# --------------------------------------------------------------------------- the pieces

def test_filter_mosaic_puts_column_0_above_column_1_each_filter_scaled():
    rng = np.random.default_rng(1)
    col0, col1 = rng.normal(size=(3, 3, 2, 2)), 5 + 2 * rng.normal(size=(2, 3, 2, 2))
    mosaic = show.filter_mosaic([col0, col1], per_row=2, gap=1, column_gap=4)
    # column 0: 2 rows of 2 tiles (3 pixels a tile with its gap) + gap; then 4; column 1: 1 row
    assert mosaic.shape == (2 * 3 + 1 + 4 + 3 + 1, 2 * 3 + 1, 3)
    for k, f in enumerate(col0):
        tile = mosaic[1 + 3 * (k // 2):3 + 3 * (k // 2), 1 + 3 * (k % 2):3 + 3 * (k % 2)]
        expected = np.transpose((f - f.min()) / (f.max() - f.min()), (1, 2, 0))
        np.testing.assert_allclose(tile, expected)
    top = 2 * 3 + 1 + 4
    for k, f in enumerate(col1):
        tile = mosaic[top + 1:top + 3, 1 + 3 * k:3 + 3 * k]
        np.testing.assert_allclose(tile, np.transpose((f - f.min()) / (f.max() - f.min()),
                                                      (1, 2, 0)))
    assert (mosaic[2 * 3 + 1:top] == 1).all()  # white between the columns' blocks
    assert (show.filter_mosaic([np.zeros((1, 3, 2, 2))] * 2)[1:3, 1:3] == 0.5).all()


def test_conv1_columns_of_one_and_two_column_checkpoints_agree():
    model = alexnet(num_classes=3, input_size=67, widths=(8, 16, 16, 16, 16, 32, 32), seed=0)
    state = model.state_dict()
    one = show.conv1_columns(state, 1)
    two = show.conv1_columns(one_to_two_columns(state), 2)
    assert [c.shape for c in one] == [(4, 3, 11, 11)] * 2
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a, b)


def test_read_metrics_keeps_the_later_epoch_and_finds_lr_drops(tmp_path):
    lines = [{"event": "start", "classes": list("abcdefg")}]
    lines += [{"event": "epoch", "epoch": e, "lr": lr, "train_loss": 3.0 - e}
              for e, lr in ((1, 0.01), (2, 0.01), (3, 0.01))]
    lines += [{"event": "resume", "epoch": 2}, {"event": "epoch", "epoch": 3, "lr": 0.001,
                                                "train_loss": 9.0}]
    lines += [{"event": "epoch", "epoch": 4, "lr": 0.001}, {"event": "epoch", "epoch": 5,
                                                            "lr": 0.0001}]
    text = "\n".join(json.dumps(l) for l in lines) + '\n{"event": "epoch", "epo'
    (tmp_path / "metrics.jsonl").write_text(text)
    start, epochs, final = show.read_metrics(tmp_path)
    assert start["classes"] == list("abcdefg") and final is None
    assert [e["epoch"] for e in epochs] == [1, 2, 3, 4, 5]
    assert epochs[2]["train_loss"] == 9.0
    assert show.lr_drops(epochs) == [(3, 0.001), (5, 0.0001)]
    assert show.marked_drops(start, epochs) == show.lr_drops(epochs)
    assert show.marked_drops({"schedule": "cosine", "lr": 0.01}, epochs) == []  # every step


def test_nearest_is_the_brute_force_euclidean_order():
    rng = np.random.default_rng(2)
    queries, pool = rng.normal(size=(4, 7)), rng.normal(size=(30, 7))
    order, distance = show.nearest(queries, pool, 5)
    for q, o, d in zip(queries, order, distance):
        brute = np.linalg.norm(pool - q, axis=1)
        np.testing.assert_array_equal(o, np.argsort(brute, kind="stable")[:5])
        np.testing.assert_allclose(d, brute[o], rtol=1e-10)
    order, distance = show.nearest(queries[:1], np.zeros((3, 7)), 3)  # ties: lower index first
    assert order.tolist() == [[0, 1, 2]]


@pytest.mark.parametrize("columns", [1, 2])
def test_features_is_the_fc7_output_of_the_network(columns):
    model = alexnet(num_classes=5, columns=columns, devices=["cpu"] * columns, input_size=67,
                    widths=(8, 16, 16, 16, 16, 32, 32), seed=0)
    model.eval()
    x = np.random.default_rng(3).normal(size=(3, 3, 67, 67)).astype(np.float32)
    with no_grad():
        record = {}
        logits = model(x, record=record)
        fc7 = model.features(x)
        pool1 = model.features(x, "pool1")
        np.testing.assert_array_equal(model.features(x, "fc8").numpy(), logits.numpy())
    names = ["fc7"] if columns == 1 else ["column0.fc7", "column1.fc7"]
    np.testing.assert_array_equal(fc7.numpy(), np.concatenate([record[n].numpy() for n in names],
                                                              axis=1))
    assert fc7.shape == (3, 32) and pool1.shape == (3, 8, 7, 7)
    with pytest.raises(ValueError, match="no layer 'drop7'"):
        model.features(x, "drop7")
