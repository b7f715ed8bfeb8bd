"""Learning-rate schedules (``convnet.optim.schedule``) and a run that uses the cosine."""
from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from convnet.app import checkpoint as ckpt
from convnet.app.train import TrainError, TrainingRun, TrainOptions, train
from convnet.optim import Cosine, Plateau, make_schedule

from test_train import WIDTHS, data  # noqa: F401 - the module's 3-class data set fixture


def test_plateau_drops_after_patience_epochs_at_most_drops_times():
    p = Plateau(patience=2, drops=1)
    assert [p.step(e, i) for i, e in enumerate([0.5, 0.4, 0.45, 0.41, 0.5, 0.6, 0.7])] == \
        [False, False, False, True, False, False, False]
    assert p.best == 0.4 and p.best_epoch == 1 and p.drops == 1
    again = Plateau(2, 1, p.state())
    assert again.state() == p.state()


def test_cosine_falls_from_the_base_rate_to_zero_and_only_keeps_the_best():
    c = Cosine(0.01, 100)
    assert c.lr_at(0) == 0.01 and c.lr_at(100) == 0.0 and c.lr_at(500) == 0.0
    assert c.lr_at(50) == pytest.approx(0.005, rel=1e-15)
    assert c.lr_at(25) == pytest.approx(0.01 * (1 + math.cos(math.pi / 4)) / 2, rel=1e-15)
    rates = [c.lr_at(t) for t in range(101)]
    assert all(a > b for a, b in zip(rates, rates[1:]))
    assert not any(c.step(e, i) for i, e in enumerate([0.5, 0.6, 0.7, 0.8, 0.9]))
    assert c.best_epoch == 0
    resumed = Cosine(1.0, 7, c.state())  # the saved state wins: base rate and length
    assert resumed.best == 0.5
    with pytest.raises(ValueError, match="at least one step"):
        Cosine(0.01, 0)


def test_make_schedule():
    settings = {"lr": 0.02, "epochs": 3, "patience": 2, "lr_drops": 3}
    cosine = make_schedule("cosine", settings, 10)
    assert cosine.per_step and cosine.total_steps == 30 and cosine.base_lr == 0.02
    assert make_schedule("cosine", {**settings, "lr": 1e-9}, 10, cosine.state()).base_lr == 0.02
    plateau = make_schedule("plateau", settings, 10)
    assert not plateau.per_step and plateau.max_drops == 3
    with pytest.raises(ValueError, match="schedule must be one of plateau, cosine"):
        make_schedule("step", settings, 10)


def _run(data, out, **options):  # noqa: F811
    defaults = dict(data=str(data), out=str(out), device="cpu", crop=67, batch_size=8,
                    widths=tuple(map(int, WIDTHS)), weight_std=0.1, workers=0, progress=False,
                    final_eval=False, log=lambda _: None, out_file=open(os.devnull, "w"))
    return train(TrainOptions(**{**defaults, **options}))


def test_a_cosine_run_sets_the_rate_before_every_step_and_resumes_exactly(data, tmp_path):  # noqa: F811
    straight, split = tmp_path / "straight", tmp_path / "split"
    _run(data, straight, epochs=3, schedule="cosine", lr=0.01)
    lines = [json.loads(l) for l in (straight / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["schedule"] == "cosine"
    steps = 3  # 24 training images, batch 8
    expected = Cosine(0.01, 3 * steps)
    assert [l["lr"] for l in lines if l["event"] == "epoch"] == \
        [expected.lr_at(e * steps) for e in range(3)]
    last = ckpt.load(straight / "epoch-0003.safetensors")
    assert last.optimizer["lr"] == expected.lr_at(3 * steps - 1)  # the last step's rate
    assert last.state["schedule"]["base_lr"] == 0.01
    # a run killed after its second epoch (its third checkpoint never written) resumes
    # on the same cosine: the same planned length, the same rate at every step
    shutil.copytree(straight, split)
    (split / "epoch-0003.safetensors").unlink()
    _run(data, split, resume=True)
    a, b = ckpt.load(straight / "epoch-0003.safetensors"), ckpt.load(split / "epoch-0003.safetensors")
    for name in a.model:
        np.testing.assert_array_equal(a.model[name], b.model[name], err_msg=name)
    assert a.state["schedule"] == b.state["schedule"]
    # the schedule is fixed for a run; --lr on resume is the cosine's new starting rate
    with pytest.raises(TrainError, match=r"--schedule plateau \(the run has cosine\)"):
        TrainingRun(TrainOptions(out=str(split), resume=True, schedule="plateau",
                                 log=lambda _: None))
    # more epochs stretch the cosine over the new length
    run = TrainingRun(TrainOptions(out=str(split), resume=True, lr=0.002, epochs=4, workers=0,
                                   log=lambda _: None))
    assert run.schedule.base_lr == 0.002 and run.schedule.total_steps == 4 * steps
    run.close()


def test_the_default_schedule_is_the_papers_on_a_gpu_and_the_cosine_elsewhere():
    from convnet.app.settings import run_settings
    gpu = run_settings(TrainOptions(), None, gpu=True)
    host = run_settings(TrainOptions(), None, gpu=False)
    assert (gpu["schedule"], gpu["lr"]) == ("plateau", 0.01)
    assert (host["schedule"], host["lr"], host["epochs"]) == ("cosine", 0.004, 8)
    with pytest.raises(TrainError, match="--schedule must be one of plateau, cosine"):
        run_settings(TrainOptions(schedule="steps"), None, gpu=False)
