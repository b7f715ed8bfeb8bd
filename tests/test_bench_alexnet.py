"""benchmarks/alexnet.py: the Markdown table of a report (no PyTorch needed), `convnet
bench` reaching it, and, where PyTorch is installed (the 'bench' extra), the agreement
of convnet and PyTorch on a tiny AlexNet: float64 logits and gradients to 1e-12."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import alexnet as bench  # noqa: E402
from benchmarks import harness  # noqa: E402

TINY = dict(widths=(4, 8, 8, 8, 8, 16, 16), classes=5, weight_std=0.1)


def _report() -> dict:
    report = harness.Report("alexnet")
    params = {"network": "small", "pass": "train", "batch": 32}
    ours = report.add(harness.Result("convnet train", "cpu", [0.5, 0.4, 0.6], params=params))
    theirs = report.add(harness.Result("torch_fp32 train", "cpu", [0.2, 0.2, 0.3],
                                       params=dict(params)))
    report.add_ratio(ours, theirs)
    report.add(harness.Result("convnet infer", "cpu", [0.1], params={**params, "pass": "infer",
                                                                      "batch": 1}))
    report.notes["versions"] = {"convnet": "0.1.0", "torch": "2.13.0"}
    report.notes["agreement"] = [{"network": "small", "dtype": "float64", "batch": 4,
                                  "logits": 1e-15, "loss": 2e-16, "gradients": 3e-15,
                                  "worst_gradient": "conv1.weight"}]
    machine = {"timestamp": "2026-11-30T00:00:00+00:00", "cpu_model": "test CPU",
               "cpus_usable": 2, "gpus": [], "git_commit": "abcdef123456"}
    return report.to_dict(machine)


def test_markdown_table():
    text = bench.render_markdown(_report())
    lines = text.splitlines()
    assert "test CPU (2 usable cores)" in lines[0] and "commit abcdef1" in lines[0]
    assert "torch 2.13.0" in lines[0]
    assert any("agreement, small float64 batch 4" in line and "3.0e-15" in line
               for line in lines)
    rows = [line for line in lines if line.startswith("| cpu")]
    # convnet 32 / 0.5 s = 64 img/s, PyTorch 32 / 0.2 s = 160 img/s: 0.40x
    assert rows[0].split(" | ")[1:] == ["small", "train", "32", "64.0", "160.0", "0.40x |"]
    assert rows[1].split(" | ")[4:] == ["10.0", "-", "- |"]  # no PyTorch beside it


def test_convnet_bench_renders_a_saved_report(tmp_path, capsys):
    from convnet.app import cli
    path = harness.write_json(_report(), "alexnet", tmp_path)
    assert cli.main(["bench", "--", "--render", str(path)]) == 0
    assert "| cpu | small | train | 32 | 64.0 | 160.0 | 0.40x |" in capsys.readouterr().out


def test_agreement_with_pytorch_in_float64():
    torch = pytest.importorskip("torch")
    result = bench.agreement(torch, TINY, np.float64, batch=2, input_size=67)
    assert result["logits"] < 1e-12 and result["loss"] < 1e-12
    assert result["gradients"] < 1e-12, result["worst_gradient"]
    loose = bench.agreement(torch, TINY, np.float32, batch=2, input_size=67)
    assert 0 < loose["gradients"] < 1e-3  # float32: reported, not exact
