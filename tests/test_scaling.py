"""benchmarks/scaling.py (issue 13, item 6): the bytes each strategy moves (the two-column
formula against a real step's transfer log, the parameter count), the model's sanity
(one GPU is the baseline, overlap and faster links never slow a step, an ideal link gives
data parallelism K times the images per second), the measured step taking over from the
prediction, the report, and one-line errors. Runs on small synthetic per-layer tables:
no prediction, no GPU."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import convnet  # noqa: E402
from benchmarks import scaling  # noqa: E402
from convnet import optim  # noqa: E402
from convnet.models import alexnet  # noqa: E402

LAYERS = ("conv1", "norm1+pool1", "conv2", "norm2+pool2", "conv3", "conv4", "conv5", "pool5",
          "fc6", "fc7", "fc8", "loss")


def _table(scale=1.0):
    """A convnet perf --json table in miniature: each layer's forward 0.4 ms (x scale),
    backward twice that, the SGD update 0.35 ms; two rows per backward."""
    rows = []
    for name in LAYERS:
        rows.append({"layer": name, "pass": "forward", "prediction": {"time_s": 4e-4 * scale}})
        rows += [{"layer": name, "pass": "backward", "prediction": {"time_s": 4e-4 * scale}}] * 2
    rows.append({"layer": "sgd", "pass": "update", "prediction": {"time_s": 3.5e-4}})
    return {"rows": rows}


@pytest.fixture
def tables(tmp_path):
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    one.write_text(json.dumps(_table()))
    two.write_text(json.dumps(_table(0.5)))
    return str(one), str(two)


def test_two_column_bytes_are_the_transfer_log():
    widths, size, classes, n = (4, 8, 8, 8, 8, 16, 16), 67, 10, 3
    model = alexnet(num_classes=classes, columns=2, input_size=size, widths=widths, seed=1)
    rng = np.random.default_rng(0)
    result = convnet.train_step(model, optim.SGD(model), rng.standard_normal(
        (n, 3, size, size)).astype(np.float32), rng.integers(0, classes, n))
    expected = scaling.two_column_bytes(n, widths, classes, size)
    for (phase, _, _, name), entry in result.transfers.summary().items():
        assert entry["bytes"] == expected[name.split()[0]], (phase, name)
    crossings = sum(v for k, v in expected.items() if k != "logits")  # both ways, each pass
    assert result.transfers.nbytes == 2 * (2 * crossings + expected["logits"])


def test_parameters_and_bytes_per_step():
    params = scaling.parameters()
    assert sum(params.values()) == 60_965_224
    assert sum(params[n] for n in scaling.CONV) == 2_334_080
    sent = scaling.bytes_per_step()
    assert sent["data-parallel"]["8"] == pytest.approx(2 * 7 / 8 * 4 * 60_965_224)
    assert sent["data-parallel"]["1"] == sent["hybrid"]["1"] == 0
    assert sent["hybrid"]["8"] < sent["data-parallel"]["8"] / 2  # the point of the hybrid


def test_the_model_behaves():
    one, column = scaling.layer_times(_table()), scaling.layer_times(_table(0.5))
    t1 = sum(sum(p.values()) for p in one.values())
    rows = scaling.estimate(one, column)
    assert len(rows) == 3 * len(scaling.LINKS) * 2
    by = {(r["strategy"], r["link"], r["overlap"]): r["gpus"] for r in rows}
    for cells in by.values():
        assert cells["1"]["speedup"] == pytest.approx(1.0)
        assert cells["1"]["step_s"] == pytest.approx(t1)
    assert set(by[("two-column", "nvlink4", False)]) == {"1", "2"}
    for strategy in scaling.STRATEGIES:
        for link in scaling.LINKS:
            for k, cell in by[(strategy, link, True)].items():
                assert cell["step_s"] <= by[(strategy, link, False)][k]["step_s"] + 1e-12
        for k, cell in by[(strategy, "nvlink4", False)].items():
            assert cell["step_s"] <= by[(strategy, "ib100", False)][k]["step_s"]
    ideal = (1e30, 0.0, "ideal")
    params = scaling.parameters()
    for overlap in (False, True):
        assert scaling.data_parallel(one, params, 8, ideal, overlap) == pytest.approx(t1)
    slow = (1e9, 0.0, "slow")  # 1 GB/s: the all-reduce of 244 MB dominates
    assert scaling.data_parallel(one, params, 2, slow, False) == \
        pytest.approx(t1 + 2 * 1 / 2 * 4 * sum(params.values()) / 1e9)


def test_report_predicted_then_measured(tables, tmp_path, capsys):
    out = tmp_path / "out"
    assert scaling.main(["--perf-json", *tables, "--out", str(out), "--measured", "none"]) == 0
    printed = capsys.readouterr().out
    assert "| hybrid | ib100 | yes |" in printed and "PREDICTED;" in printed
    (path,) = out.glob("scaling-*.json")
    data = json.loads(path.read_text())
    assert data["predicted"] is True and data["machine"]["git_commit"]
    assert data["one_gpu_step_s"] == pytest.approx(12 * 3 * 4e-4 + 3.5e-4)
    path.unlink()
    step = {"benchmark": "alexnet_step", "machine": {"gpus": [{"name": "NVIDIA H100"}]},
            "results": [{"name": "train_step", "device": "cuda:0", "median_s": 0.02,
                         "params": {"network": "alexnet", "columns": 1, "batch": 128}}]}
    (out / "alexnet_step-20990101T000000000000Z.json").write_text(json.dumps(step))
    assert scaling.main(["--perf-json", *tables, "--out", str(out)]) == 0
    assert "PREDICTED from a measured step" in capsys.readouterr().out
    (path,) = out.glob("scaling-*.json")
    data = json.loads(path.read_text())
    assert data["one_gpu_step_s"] == pytest.approx(0.02)
    assert data["measured_step"]["steps"] == {"1": 0.02}


def test_errors_are_one_line(tables, tmp_path, capsys):
    cases = [(["--perf-json", str(tmp_path / "no.json"), tables[1]], "scaling: cannot read"),
             (["--perf-json", *tables, "--gpus", "0", "2"], "--gpus must be positive")]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"rows": [{"layer": "conv1", "pass": "forward",
                                         "prediction": {"time_s": 1.0}}]}))
    cases.append((["--perf-json", str(bad), tables[1]], "has no conv2, conv3"))
    for argv, message in cases:
        assert scaling.main([*argv, "--no-json", "--measured", "none"]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
