"""``convnet perf``: rows, the legend, JSON, and a one-line error for an unknown GPU."""
from __future__ import annotations

import json

import pytest

from convnet.app import cli
from conftest import require_perf_tools




def test_perf_alexnet_two_columns_prints_rows_and_writes_json(tmp_path, capsys):
    require_perf_tools()
    path = tmp_path / "perf.json"
    assert cli.main(["perf", "--gpu", "h200", "--batch", "1", "--columns", "2",
                     "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "PREDICTED" in out and "conv_backward_filter" in out and "cuBLAS sgemm" in out
    assert "L2" in out   # the legend states the reuse assumption
    data = json.loads(path.read_text())
    assert data["gpu"] == "h200" and data["predicted"] is True and data["batch"] == 1
    assert len(data["rows"]) > 40 and data["total_s"] > data["fp32_floor_s"] > 0


def test_perf_one_op_with_kernel_filter(capsys):
    require_perf_tools()
    assert cli.main(["perf", "--op", "conv:64,13,64,3,1,1", "--batch", "2",
                     "--kernel", "conv_forward"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("conv:") and "PREDICTED" not in line]
    assert len(rows) == 1 and "conv_forward" in rows[0]


def test_perf_alexnet_in_a_tensor_core_precision(tmp_path, capsys):
    """--precision bf16: every conv layer on the tensor-core engine, said in the title and
    the JSON (one kernel's rows, to keep it short)."""
    require_perf_tools()
    path = tmp_path / "perf.json"
    assert cli.main(["perf", "--precision", "bf16", "--batch", "1", "--columns", "2",
                     "--kernel", "conv_tc_backward_filter", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "convolutions in bf16" in out and "tensor-core engine is the only algorithm" in out
    data = json.loads(path.read_text())
    assert data["precision"] == "bf16" and len(data["rows"]) == 5
    assert all("conv_tc_backward_filter" in row["kernel"] for row in data["rows"]), data["rows"][0]
    assert {c["precision"] for c in data["conv_algorithms"].values()} == {"bf16"}


@pytest.mark.parametrize("argv", [["--gpu", "v100"], ["--op", "conv:1,2"]])
def test_perf_bad_arguments_exit_2_with_one_line(argv, capsys):
    assert cli.main(["perf", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("convnet perf:") and "\n" not in err
