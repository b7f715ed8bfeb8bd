"""The generated demo data set: layout, determinism, classes that share their cues."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest

from convnet.app import cli
from convnet.data import make_demo_data, scan_folder
from convnet.data import demo as demo_module
from convnet.data.demo import DemoError, class_spec

Image = pytest.importorskip("PIL.Image", reason="Pillow is not installed (a dependency of convnet.data)")


def _digests(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_and_images(tmp_path):
    summary = make_demo_data(tmp_path, classes=4, train_per_class=3, val_per_class=2, size=64,
                             seed=1, workers=0)
    assert (summary["train"], summary["val"]) == (12, 8)
    folder = scan_folder(tmp_path)
    assert folder.classes == ["c000", "c001", "c002", "c003"]
    assert folder.class_names[1] == "triangle, " + class_spec(1)["texture"] + ", warm palette"
    assert [label for _, label in folder.splits["train"]] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert len(folder.splits["val"]) == 8 and not folder.ignored
    for relative, _ in folder.splits["train"][:4]:
        with Image.open(tmp_path / relative) as im:
            assert im.format == "JPEG" and im.mode == "RGB"
            assert min(im.size) == 64 and 64 <= max(im.size) <= 80
    assert relative.endswith(".JPEG")


def test_deterministic_and_independent_of_workers(tmp_path):
    args = dict(classes=3, train_per_class=4, val_per_class=1, size=48, seed=7)
    make_demo_data(tmp_path / "a", workers=0, **args)
    make_demo_data(tmp_path / "b", workers=2, **args)
    make_demo_data(tmp_path / "c", workers=0, **{**args, "seed": 8})
    a, b, c = (_digests(tmp_path / x) for x in "abc")
    assert a == b
    assert a.keys() == c.keys() and all(a[k] != c[k] for k in a if k.endswith(".JPEG"))


def test_classes_share_their_cues():
    """No single cue names a class: palettes come in pairs, shapes repeat every ten classes."""
    specs = [class_spec(k) for k in range(20)]
    assert specs[0]["palette"] == specs[1]["palette"] and specs[0]["shape"] != specs[1]["shape"]
    assert specs[0]["shape"] == specs[10]["shape"] and specs[0]["palette"] != specs[10]["palette"]
    assert len({(s["shape"], s["texture"], s["palette"]) for s in specs}) == 20
    for k in range(1000):  # any class count gives well-defined, distinct classes
        spec = class_spec(k)
        assert all(0 <= v <= 255 for color in spec["colors"] for v in color)
    combos = {(s["shape"], s["texture"], s["palette"]) for s in map(class_spec, range(1000))}
    assert len(combos) == 1000


def test_render_draws_the_class_object():
    rng = np.random.default_rng(0)
    image = demo_module.render(4, rng, size=96, classes=10)
    assert image.dtype == np.uint8 and min(image.shape[:2]) == 96 and image.shape[2] == 3
    assert image.std() > 20  # clutter and texture, not a flat picture


def test_bad_arguments_and_cli(tmp_path, capsys):
    with pytest.raises(DemoError, match="classes"):
        make_demo_data(tmp_path, classes=0)
    with pytest.raises(DemoError, match="size"):
        make_demo_data(tmp_path, size=8)
    assert cli.main(["make-demo-data", str(tmp_path / "d"), "--classes", "2", "--train-per-class",
                     "2", "--val-per-class", "1", "--size", "40", "--workers", "0",
                     "--no-progress"]) == 0
    assert "2 classes, 4 train and 2 val images" in capsys.readouterr().err
    assert len(scan_folder(tmp_path / "d").splits["train"]) == 4
    assert cli.main(["make-demo-data", str(tmp_path / "e"), "--classes", "-1"]) == 2
    assert "classes must be" in capsys.readouterr().err


def test_refuses_a_folder_with_other_files(tmp_path):
    args = dict(classes=2, train_per_class=1, val_per_class=0, size=40, workers=0)
    make_demo_data(tmp_path / "d", **args)
    make_demo_data(tmp_path / "d", **args)  # the same set again: fine
    with pytest.raises(DemoError, match="other settings"):
        make_demo_data(tmp_path / "d", **{**args, "classes": 1})
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "holiday.jpg").write_bytes(b"")
    with pytest.raises(DemoError, match="not empty"):
        make_demo_data(tmp_path / "photos", **args)
