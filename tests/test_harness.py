"""benchmarks/harness.py: statistics, rates, ratios, JSON, tables (no real timing)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import harness  # noqa: E402


class FakeClock:
    """A timer that advances by the next duration each time the callable runs."""

    def __init__(self, durations):
        self.now = 0.0
        self.durations = list(durations)
        self.calls = 0

    def __call__(self):
        return self.now

    def work(self):
        self.now += self.durations[self.calls % len(self.durations)]
        self.calls += 1


def test_median_min_max_from_a_fake_timer():
    clock = FakeClock([0.5, 9.0, 3.0, 0.25, 1.0])
    r = harness.measure(clock.work, device="cpu", warmup=0, repeats=5, timer=clock)
    assert r.samples == [0.5, 9.0, 3.0, 0.25, 1.0]
    assert r.median == 1.0
    assert r.min == 0.25
    assert r.max == 9.0
    assert r.device == "cpu"
    assert r.name == "work"


def test_warmup_is_not_timed():
    clock = FakeClock([100.0, 100.0, 2.0, 2.0, 2.0, 2.0])
    r = harness.measure(clock.work, device="emu", warmup=2, repeats=4, timer=clock)
    assert clock.calls == 6
    assert r.samples == [2.0] * 4


def test_even_count_median_and_rates():
    clock = FakeClock([1.0, 2.0, 3.0, 4.0])
    r = harness.measure(clock.work, device="cpu", warmup=0, repeats=4, timer=clock,
                        flops=5e9, bytes=1e9, name="mm", params={"n": 4})
    assert r.median == 2.5
    assert r.gflops == pytest.approx(2.0)        # 5 GFLOP in 2.5 s
    assert r.gflops_best == pytest.approx(5.0)   # in the fastest sample, 1 s
    assert r.gbps == pytest.approx(0.4)
    assert r.params == {"n": 4}


def test_min_time_extends_and_max_time_caps_the_repeats():
    clock = FakeClock([1.0])
    r = harness.measure(clock.work, device="cpu", warmup=0, repeats=2, min_time_s=5.0,
                        timer=clock)
    assert len(r.samples) == 5
    clock = FakeClock([1.0])
    r = harness.measure(clock.work, device="cpu", warmup=0, repeats=100, max_time_s=3.0,
                        timer=clock)
    assert len(r.samples) == 3
    clock = FakeClock([1e-9])
    r = harness.measure(clock.work, device="cpu", warmup=0, repeats=1, min_time_s=1.0,
                        max_repeats=7, timer=clock)
    assert len(r.samples) == 7


def test_a_trivial_callable_with_the_real_clock():
    calls = []
    r = harness.measure(lambda: calls.append(1), device="cpu", warmup=1, repeats=3)
    assert len(calls) == 4 and len(r.samples) == 3
    assert 0 <= r.min <= r.median <= r.max < 1.0


def test_device_objects_are_synchronised():
    class Dev:
        kind, name = "emu", "emu"
        syncs = 0

        def synchronize(self):
            Dev.syncs += 1
    harness.measure(lambda: None, device=Dev(), warmup=1, repeats=2)
    assert Dev.syncs == 3


def test_device_names():
    assert harness.device_kind("cpu") == ("cpu", "cpu", 0)
    assert harness.device_kind("cuda") == ("cuda", "cuda:0", 0)
    assert harness.device_kind("cuda:1") == ("cuda", "cuda:1", 1)
    with pytest.raises(harness.BenchmarkError, match="unknown device"):
        harness.device_kind("tpu")
    with pytest.raises(harness.BenchmarkError):
        harness.measure(lambda: None, device="cpu", repeats=0)


def test_l2_flush_size():
    assert harness.l2_flush_bytes(50 * 2**20) == 100 * 2**20       # H100: 2x L2
    assert harness.l2_flush_bytes(1 * 2**20) == 8 * 2**20          # at least 8 MiB
    assert harness.l2_flush_bytes(512 * 2**20) == 256 * 2**20      # at most 256 MiB
    assert harness.l2_flush_bytes(None) == 64 * 2**20               # unknown: 64 MiB


def test_speed_ratio():
    ours = harness.Result("ours", "emu", [2.0, 2.0, 4.0])
    base = harness.Result("numpy", "cpu", [1.0, 1.0, 1.0])
    assert harness.speed_ratio(ours, base) == 0.5
    assert harness.speed_ratio(base, ours) == 2.0
    report = harness.Report("t")
    entry = report.add_ratio(ours, base, label="ours vs numpy")
    assert entry["speed_ratio"] == 0.5
    assert entry["baseline"]["name"] == "numpy"
    assert "ours vs numpy: 0.500x" in report.table()


def test_json_round_trip(tmp_path, monkeypatch):
    monkeypatch.delenv(harness.ENV_OUT, raising=False)
    report = harness.Report("roundtrip", args={"sizes": [1, 2]})
    a = report.add(harness.Result("k", "emu", [0.3, 0.1, 0.2], flops=1e9,
                                  params={"m": 1, "tile": "64x64"}))
    b = report.add(harness.Result("numpy", "cpu", [0.05], bytes=4e6))
    report.add_ratio(a, b)
    report.notes["switch_cost_ns"] = 15.0
    path = report.write(tmp_path)
    assert path.parent == tmp_path and path.name.startswith("roundtrip-")
    data = json.loads(path.read_text())
    assert data["machine"]["cpu_count"] >= 1
    assert {"platform", "cpu_model", "numpy", "gpus", "git_commit", "timestamp"} <= set(data["machine"])
    assert data["results"][0]["median_s"] == pytest.approx(0.2)
    assert data["results"][0]["gflops"] == pytest.approx(5.0)
    back = harness.Report.from_dict(harness.read_json(path))
    assert back.benchmark == "roundtrip" and back.args == {"sizes": [1, 2]}
    assert [r.to_dict() for r in back.results] == [a.to_dict(), b.to_dict()]
    assert back.ratios == report.ratios
    assert back.notes == {"switch_cost_ns": 15.0}


def test_results_dir_choice(tmp_path, monkeypatch):
    monkeypatch.setenv(harness.ENV_OUT, str(tmp_path / "env"))
    assert harness.results_dir() == tmp_path / "env"
    assert harness.results_dir(tmp_path / "arg") == tmp_path / "arg"
    assert (tmp_path / "arg").is_dir()
    monkeypatch.delenv(harness.ENV_OUT)
    assert harness.results_dir() == harness.DEFAULT_RESULTS_DIR


def test_table_lists_every_result():
    results = [harness.Result("sgemm", "emu", [0.5], flops=2e9, params={"n": 256}),
               harness.Result("relu", "cpu", [0.001], bytes=8e6)]
    text = harness.format_table(results)
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["name", "device", "params"]
    assert "sgemm" in lines[2] and "4.00" in lines[2] and "n=256" in lines[2]
    assert "relu" in lines[3] and "8.00" in lines[3]


def test_harness_imports_without_cupy_or_torch():
    import subprocess
    code = ("import sys; sys.modules['cupy'] = None; sys.modules['torch'] = None; "
            f"sys.path.insert(0, {str(ROOT)!r}); from benchmarks import harness; "
            "r = harness.measure(lambda: None, device='cpu', repeats=2); print(len(r.samples))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "2"
