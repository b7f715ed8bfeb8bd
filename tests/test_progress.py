"""``convnet.progress.ProgressBar`` (tqdm underneath): a live bar on a terminal, one plain
line per bar elsewhere, nothing when off; and ``convnet.app.board``: TensorBoard scalars
written where a writer is installed, nothing (and no error) where none is."""
from __future__ import annotations

import io
import struct
import sys
import time

import pytest

from convnet.app import board
from convnet.progress import ProgressBar, clock


class Terminal(io.StringIO):
    def isatty(self):
        return True


def _feed(bar):
    for _ in range(4):
        bar.update(25, "loss 1.234 top-1 err 56.7%")
    bar.close()


def test_a_log_gets_one_plain_line_per_bar_with_rate_and_extra():
    log = io.StringIO()
    bar = ProgressBar(140, "epoch 1/6", True, file=log)
    bar.update(40, "loss 2.000 top-1 err 80.0%")
    assert log.getvalue() == ""  # nothing while it runs
    _feed(bar)
    text = log.getvalue()
    assert text.count("\n") == 1 and "\r" not in text, repr(text)
    assert text.startswith("epoch 1/6: 100%|##########| 140/140 [")
    assert "img/s" in text and text.endswith(", loss 1.234 top-1 err 56.7%]\n")


def test_a_log_line_shows_the_count_rate_and_the_last_extra():
    log = io.StringIO()
    bar = ProgressBar(100, "prepare", True, file=log, initial=20)
    bar.update(30, "a")
    bar.update(50)
    bar.close()
    line = log.getvalue()
    assert line.startswith("prepare: 100%|##########| 100/100 [") and line.endswith(", a]\n")


def test_nothing_when_off_empty_or_not_left():
    for kwargs in (dict(total=100, enabled=False), dict(total=0, enabled=True),
                   dict(total=100, enabled=True, leave=False)):
        log = io.StringIO()
        _feed(ProgressBar(desc="x", file=log, **kwargs))
        assert log.getvalue() == "", kwargs


def test_a_terminal_gets_a_tqdm_bar_redrawn_in_place():
    tty = Terminal()
    _feed(ProgressBar(100, "epoch 2/6", True, file=tty))
    text = tty.getvalue()
    assert text.startswith("\repoch 2/6:") and text.endswith("\n")
    last = text.rstrip("\n").split("\r")[-1]
    assert "100/100" in last and "img/s" in last and "loss 1.234 top-1 err 56.7%" in last
    tty = Terminal()
    _feed(ProgressBar(100, "val 1", True, file=tty, leave=False))
    text = tty.getvalue()
    assert text.endswith("\r") and not text.split("\r")[-2].strip(), repr(text)  # erased


def test_clock():
    assert clock(0) == "00:00" and clock(61.4) == "01:01" and clock(3725) == "1:02:05"


# --------------------------------------------------------------------------- TensorBoard

def _events(folder):
    """The (tag, step, value) scalars of a folder's event files (TFRecord: length, its CRC,
    the Event proto, its CRC)."""
    try:
        from tensorboardX.proto.event_pb2 import Event
    except ImportError:
        from tensorboard.compat.proto.event_pb2 import Event
    found = []
    for path in sorted(folder.glob(board.EVENT_FILES)):
        data = path.read_bytes()
        at = 0
        while at < len(data):
            (length,) = struct.unpack_from("<Q", data, at)
            event = Event.FromString(data[at + 12:at + 12 + length])
            at += 12 + length + 4
            found += [(v.tag, event.step, v.simple_value) for v in event.summary.value]
    return found


@pytest.mark.parametrize("package", ["tensorboardX", "tensorboard"])
def test_scalars_of_epochs_and_the_final_evaluation(package, tmp_path, monkeypatch):
    pytest.importorskip(package, reason=f"{package} is not installed (tensorboardX: the "
                                        f"tensorboard extra)")
    if package == "tensorboard":  # its own writer, as where tensorboardX is missing
        monkeypatch.setitem(sys.modules, "tensorboardX", None)
        assert board.writer_class() is board.TensorBoardWriter
    scalars = board.Scalars(tmp_path)
    scalars.epoch(1, {"epoch": 1, "train_loss": 2.5, "val_top1_error": 0.75, "lr": 0.01,
                      "images_per_second": 30.0, "val_loss": None})
    scalars.epoch(2, {"epoch": 2, "train_loss": 2.0, "val_top1_error": 0.5, "lr": 0.001})
    scalars.final(2, {"top1_error": 0.375, "top5_error": 0.125, "mode": "ten_crop"})
    scalars.close()
    got = sorted(_events(tmp_path))
    expected = sorted([("loss/train", 1, 2.5), ("error/val_top1", 1, 0.75), ("lr", 1, 0.01),
                       ("images_per_second", 1, 30.0), ("loss/train", 2, 2.0),
                       ("error/val_top1", 2, 0.5), ("lr", 2, 0.001),
                       ("error/ten_crop_top1", 2, 0.375), ("error/ten_crop_top5", 2, 0.125)])
    assert [(tag, step) for tag, step, _ in got] == [(tag, step) for tag, step, _ in expected]
    assert [v for *_, v in got] == pytest.approx([v for *_, v in expected], rel=1e-6)  # float32


def test_a_fresh_run_deletes_the_event_files_of_the_run_before_it(tmp_path):
    pytest.importorskip("tensorboardX", reason="the tensorboard extra is not installed")
    def write(fresh, loss):
        scalars = board.Scalars(tmp_path, fresh=fresh)
        scalars.epoch(1, {"train_loss": loss})
        scalars.close()
        time.sleep(1.1)  # event files are named by the second

    write(True, 5.0)
    write(False, 4.0)  # a resumed run adds its file
    assert sorted(v for *_, v in _events(tmp_path)) == [4.0, 5.0]
    write(True, 3.0)
    assert _events(tmp_path) == [("loss/train", 1, 3.0)]
    (tmp_path / "metrics.jsonl").write_text("")
    board.Scalars(tmp_path, fresh=True).close()
    assert (tmp_path / "metrics.jsonl").exists()  # only event files go


def test_no_writer_installed_writes_nothing(tmp_path, monkeypatch):
    for name in ("tensorboardX", "tensorboard"):
        monkeypatch.setitem(sys.modules, name, None)
    assert board.writer_class() is None
    scalars = board.Scalars(tmp_path)
    scalars.epoch(1, {"train_loss": 1.0})
    scalars.final(1, {"top1_error": 0.5})
    scalars.close()
    assert list(tmp_path.iterdir()) == []
