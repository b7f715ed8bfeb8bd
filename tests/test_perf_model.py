"""convnet.perf.model, .step, .calibration: the launch model on cases worked by hand,
the AlexNet step table at a small batch, and the calibration record (no GPU)."""
from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from convnet.perf import calibration, gpus, model
from convnet.perf.model import KernelInputs, predict, wave_efficiency
from convnet.toolchain.launch import KernelModule, Launch
from conftest import require_perf_tools

ROOT = Path(__file__).resolve().parent.parent
H100 = gpus.gpu("h100")




def test_pure_copy_is_bytes_over_bandwidth_plus_launch():
    n = 64 << 20   # floats
    k = KernelInputs("copy", blocks=4224, threads_per_block=256, flops=0, read_bytes=4 * n,
                     write_bytes=4 * n, registers=16, math_share=0.1, load_bytes=4 * n,
                     store_bytes=4 * n)
    p = predict(k, H100)
    assert p.bound == "DRAM"
    assert p.time_s == pytest.approx(8 * n / 3.35e12 + model.LAUNCH_OVERHEAD_S, rel=1e-12)
    assert p.pct_peak == pytest.approx(1.0)


def test_dram_bytes_capped_by_footprint_l1_counts_every_sector():
    # a gather reading its input 9 times: DRAM sees it once, L1 nine times
    k = KernelInputs("gather", 1056, 256, 0, read_bytes=1e8, write_bytes=1e8, registers=16,
                     load_bytes=9e8, store_bytes=1e8)
    p = predict(k, H100)
    assert p.dram_bytes == 2e8
    assert p.l1_s == pytest.approx(1e9 / (132 * 128 * 1.98e9))


def test_compute_bound_with_known_ffma_share():
    # 256 threads x 32 registers: 8 blocks = 64 warps per SM (16 per scheduler: latency 1);
    # 2 full waves (efficiency 1): time = FLOPs / (peak x share)
    flops = 1e12
    k = KernelInputs("ffma", blocks=132 * 8 * 2, threads_per_block=256, flops=flops,
                     read_bytes=1e6, write_bytes=1e6, registers=32, math_share=0.75)
    p = predict(k, H100)
    assert (p.blocks_per_sm, p.latency_factor, p.wave_efficiency) == (8, 1.0, 1.0)
    assert p.bound == "math"
    assert p.time_s == pytest.approx(flops / (66.9e12 * 0.75) + model.LAUNCH_OVERHEAD_S)
    # sm_80: 16 FP32 lanes per scheduler, a 40 % FFMA share reaches 80 % of the peak
    a100 = predict(dataclasses.replace(k, math_share=0.4), "a100")
    assert a100.issue_factor == pytest.approx(0.8)


ISSUE = KernelModule(str(Path(__file__).resolve().parent / "kernels" / "perf_issue.cu"),
                     ("perf_trip", "perf_fp64", "perf_copy", "perf_rare"))


def _issue_launches(n=7, blocks=8, threads=128):
    """perf_issue.cu's kernels on emu with their traffic and SASS regions (sm_90)."""
    import numpy as np
    from convnet.perf import dynamic, sass
    from convnet.perf.emu_traffic import measure
    from convnet.toolchain.kernel_source import expand
    require_perf_tools()
    built = {k.kernel: k for k in sass.compile_source(expand(ISSUE.source), ISSUE.source,
                                                       ISSUE.kernels, "sm_90", line_info=True)}
    stride = blocks * threads
    x = np.random.default_rng(0).random(n * stride, dtype=np.float32)
    y = np.zeros(stride, np.float32)
    scalars = (np.int32(n), np.int32(stride))
    launches = [Launch(ISSUE, "perf_trip", (blocks, 1, 1), (threads, 1, 1), (y, x, *scalars)),
                Launch(ISSUE, "perf_fp64", (blocks, 1, 1), (threads, 1, 1), (y, x, *scalars)),
                Launch(ISSUE, "perf_copy", (blocks, 1, 1), (threads, 1, 1), (y, x)),
                Launch(ISSUE, "perf_rare", (blocks, 1, 1), (threads, 1, 1), (y, x, *scalars))]
    warps = blocks * threads // 32
    out = {}
    for launch, traffic in zip(launches, measure(launches, None)):
        regions = dynamic.regions(built[launch.kernel])
        out[launch.kernel] = (regions, traffic,
                              dynamic.count(regions, warps, traffic.sites,
                                            traffic.barrier_warps, traffic.warp_ops))
    return out, warps


def test_dynamic_count_of_a_known_trip_count():
    """perf_trip's rolled loop runs n = 7 times per warp: the loop's one load line gives
    X = 7 x warps, and the count is warps x straight code + X x the loop's body."""
    found, warps = _issue_launches()
    regions, traffic, dyn = found["perf_trip"]
    (loop,) = regions["loops"]
    assert sum(loop["memory"].values()) == 1 and loop["barriers"] == 0
    assert dyn.iterations == [pytest.approx(7 * warps)] and dyn.unseen == []
    assert dyn.instructions == pytest.approx(
        warps * (regions["straight"]["instructions"] + 7 * loop["instructions"]))
    # perf_copy has no loop: its straight code once per warp
    regions, _, dyn = found["perf_copy"]
    assert regions["loops"] == [] and dyn.instructions == warps * regions["straight"]["instructions"]


def test_cp_async_copies_count_as_one_site_on_both_sides():
    """cp_async_pipeline's staged_sum4 copies a tile a pass through kernels/cp_async.cuh:
    the GPU build's LDGSTS sits at the PTX line of cp_async.cuh, the emulator takes the
    copy's read in emu_cp_async.h. Both must name the same site (else the loop's blocks
    holding the copies look as if they never ran, and their instructions were left out
    of the count: the tensor-core kernels' loaders were), and the "@!PT" padding that
    ptxas puts before each LDGSTS makes no request."""
    import numpy as np
    from convnet.perf import dynamic, sass
    from convnet.perf.emu_traffic import measure
    from convnet.toolchain.kernel_source import expand
    require_perf_tools()
    pipe = KernelModule(str(Path(__file__).resolve().parent / "kernels" / "cp_async_pipeline.cu"),
                        ("staged_sum4",))
    (built,) = sass.compile_source(expand(pipe.source), pipe.source, pipe.kernels, "sm_90",
                                   line_info=True)
    tiles = 9
    x = np.random.default_rng(0).random(tiles * 64, dtype=np.float32)
    launch = Launch(pipe, "staged_sum4", (1, 1, 1), (64, 1, 1),
                    (x, np.zeros(64, np.float32), np.int32(tiles), np.int32(tiles * 64)))
    (traffic,) = measure([launch], None)
    regions = dynamic.regions(built)
    loops = regions["loops"]  # ptxas unrolls the pipeline's loop by 4, with a remainder loop
    assert any(i.opcode == "LDGSTS" for i in built.instructions)
    assert traffic.sites.get(dynamic.CP_ASYNC_SITE) == 2 * tiles  # a copy a pass, 2 warps
    for loop in loops:
        assert loop["memory"].get(dynamic.CP_ASYNC_SITE)
        assert not [k for k in loop["memory"] if "cp_async.cuh" in k]  # no "@!PT" requests
        live, _ = dynamic._live(loop, traffic.sites)
        assert live["instructions"] == loop["instructions"]  # no block of the loop pruned
    dyn = dynamic.count(regions, 2, traffic.sites, traffic.barrier_warps, traffic.warp_ops)
    copies = sum(x * l["memory"][dynamic.CP_ASYNC_SITE] for x, l in zip(dyn.iterations, loops))
    # the least squares meets the copies' equation (the two prologue copies aside: 14)
    # and the loop's tile reads' (18: the last two passes read without copying) between
    assert 2 * (tiles - 2) - 1e-6 <= copies <= 2 * tiles + 1e-6


def test_conditional_loads_bound_the_trip_count_from_below():
    """perf_rare's loop runs n = 7 times per warp, but its loads are conditional: the
    first taken in every pass (7 requests per warp), the second in one (1 request). Both
    are lower bounds, not equations: X = 7 x warps (a least-squares fit of the two as
    equations would give less than half of it)."""
    found, warps = _issue_launches()
    regions, traffic, dyn = found["perf_rare"]
    (loop,) = regions["loops"]
    assert sum(loop["memory"].values()) == 2 and loop["always"] == {}
    assert dyn.iterations == [pytest.approx(7 * warps)]


def test_nominal_flops_leave_counted_kernels_to_the_issue_term():
    """A byte-bound kernel (main loop 20 % math) with nominal FLOPs that FLOPs / math share
    would make compute-bound: its counted instructions decide (issue or DRAM), no 'math'."""
    n = 1 << 24
    k = KernelInputs("lrn-like", blocks=n // 256, threads_per_block=256, flops=60 * n,
                     read_bytes=8 * n, write_bytes=4 * n, registers=32, math_share=0.2,
                     load_bytes=8 * n, store_bytes=4 * n, instructions=40 * n / 32,
                     pipe_instructions={"fp32": 10 * n / 32})
    p = predict(k, H100)
    assert p.compute_s == 0.0 and p.bound == "DRAM"
    assert predict(dataclasses.replace(k, instructions=None, pipe_instructions=None),
                   H100).bound == "math"


def test_fp64_loop_is_issue_bound_at_the_fp64_rate():
    """perf_fp64 does 16 dependent DFMA per load, scaled to a 4224-block grid. On an H100
    (FP64 64 results per clock per SM: 2 clocks a warp instruction per scheduler) it is
    bound by issue at max(instructions, 2 x FP64 instructions) clocks; on an A10 (FP64 2
    per clock per SM: 64 clocks a warp instruction) the FP64 pipe sets 64 x FP64."""
    found, warps = _issue_launches()
    regions, traffic, dyn = found["perf_fp64"]
    (loop,) = regions["loops"]
    assert loop["pipes"]["fp64"] >= 16
    factor = 4224 * 4 / warps     # 4224 blocks of 128 threads
    fp64 = dyn.pipes["fp64"] * factor
    assert fp64 == pytest.approx(7 * 4224 * 4 * loop["pipes"]["fp64"]
                                 + 4224 * 4 * regions["straight"]["pipes"]["fp64"])
    n = 4224 * 128
    k = KernelInputs("perf_fp64", blocks=4224, threads_per_block=128, flops=2 * 16 * 7 * n,
                     read_bytes=4 * 7 * n, write_bytes=4 * n, registers=32,
                     load_bytes=traffic.load_bytes * factor, store_bytes=traffic.store_bytes * factor,
                     instructions=dyn.instructions * factor,
                     pipe_instructions={p: v * factor for p, v in dyn.pipes.items()})
    p = predict(k, H100)
    assert p.bound == "issue" and p.latency_factor == 1.0
    cycles = max(dyn.instructions * factor, 2 * fp64)
    assert p.issue_cycles == pytest.approx(cycles)
    assert p.issue_s == pytest.approx(cycles / (132 * 4 * 1.98e9 * p.wave_efficiency))
    assert p.pct_hbm == pytest.approx(p.dram_s / p.issue_s)
    a10 = predict(k, "a10")
    assert a10.bound == "issue" and a10.issue_cycles == pytest.approx(64 * fp64)


def test_pure_copy_stays_dram_bound_with_its_instructions():
    found, warps = _issue_launches()
    regions, traffic, dyn = found["perf_copy"]
    factor = (64 << 20) / (warps * 32)      # 64M floats
    n = 64 << 20
    k = KernelInputs("copy", blocks=n // 256, threads_per_block=256, flops=0, read_bytes=4 * n,
                     write_bytes=4 * n, registers=16, load_bytes=4 * n, store_bytes=4 * n,
                     instructions=dyn.instructions * factor,
                     pipe_instructions={p: v * factor for p, v in dyn.pipes.items()})
    p = predict(k, H100)
    assert p.bound == "DRAM" and p.pct_hbm == pytest.approx(1.0)
    assert 0 < p.issue_s < p.dram_s


def test_issue_cycles_per_pipe():
    # 1000 instructions, 400 of them MUFU (16/clk/SM = 4 per scheduler: 8 clocks a warp)
    assert model.issue_cycles(H100, 1000, {"mufu": 400}) == 3200
    assert model.issue_cycles(H100, 1000, {"fp64": 400}) == 1000     # 2 clocks: 800 < 1000
    assert model.issue_cycles(gpus.gpu("a10"), 1000, {"fp64": 20}) == 20 * 32 / 0.5
    assert model.issue_cycles(gpus.gpu("a100"), 1000, {"fp32": 600}) == 1200


def test_wave_efficiency_by_hand():
    waves, eff = wave_efficiency(169, 132, 1)          # conv5 forward on an H100
    assert waves == pytest.approx(169 / 132) and eff == pytest.approx(169 / 264)
    assert wave_efficiency(264, 132, 1) == (2.0, 1.0)
    assert wave_efficiency(66, 132, 2) == (0.25, 0.5)  # half the SMs busy
    # a 169-block grid of 1-block-per-SM kernels is bound by its waves
    k = KernelInputs("big", 169, 256, 1e11, 1e6, 1e6, registers=255, math_share=0.9)
    p = predict(k, H100)
    assert p.bound == "waves" and p.wave_efficiency == pytest.approx(0.640, abs=1e-3)
    assert p.latency_factor == 0.75                     # 8 warps: 2 per scheduler
    assert p.time_s == pytest.approx(1e11 / (66.9e12 * 0.9 * 0.75 * 169 / 264) + 2e-6)


def test_launch_overhead_and_gemm():
    tiny = predict(KernelInputs("tiny", 1, 32, 10, 128, 128, registers=8), H100)
    assert tiny.bound == "launch" and tiny.time_s == pytest.approx(model.LAUNCH_OVERHEAD_S,
                                                                  rel=1e-3)
    m, n, k = 128, 4096, 9216
    g = predict(KernelInputs("cuBLAS", 0, 0, 2.0 * m * n * k, 4 * (m * k + n * k), 4 * m * n,
                             gemm=True), H100)
    assert g.bound == "cuBLAS"
    assert g.time_s == pytest.approx(2.0 * m * n * k / (66.9e12 * model.GEMM_EFFICIENCY) + 2e-6)


def test_relu_through_the_whole_pipeline_is_a_copy():
    """A real kernel, its emu traffic (or the footprints where emu cannot profile): the
    predicted ReLU forward of 4M floats is 8 bytes an element at the bandwidth."""
    require_perf_tools()
    n = 4 << 20
    t = calibration.predicted_seconds(f"relu:{n}", "h100", 1, ("relu_forward",))
    assert t == pytest.approx(8 * n / 3.35e12 + model.LAUNCH_OVERHEAD_S, rel=1e-6)


def test_alexnet_step_table_small_batch():
    require_perf_tools()
    from convnet.perf.predict import format_table, predict_layers
    from convnet.perf.step import alexnet_layers, parameter_count
    assert parameter_count(1) == 60_965_224
    table = predict_layers(alexnet_layers(1), "h100", 2)
    layers = {r.planned.layer for r in table.rows}
    assert {"conv1", "conv5", "norm1+pool1", "pool5", "fc6", "fc7", "loss", "sgd"} <= layers
    kernels = [r.planned.kernel for r in table.rows]
    assert sum(k.startswith("conv_forward") for k in kernels) == 5
    assert sum(k.startswith("conv_backward_data") for k in kernels) == 4   # not conv1
    # fc6/fc7 carry their dropout in the epilogue (no dropout_apply launch); one SGD
    # launch updates all 16 parameters; LRN+pool forward and backward are fused
    assert sum(k.startswith("bias_relu_dropout_forward") for k in kernels) == 2
    assert not any(k.startswith("dropout_apply") for k in kernels)
    assert sum(k.startswith("sgd_momentum") for k in kernels) == 1
    assert sum(k.startswith("lrn_max_pool_backward") for k in kernels) == 2
    assert sum(k.startswith("cuBLAS") for k in kernels) == 9
    assert all(r.prediction.time_s >= model.LAUNCH_OVERHEAD_S for r in table.rows)
    assert table.floor_s < table.total_s
    text = format_table(table)
    assert "PREDICTED total" in text and "conv_forward" in text


def test_gpu_for_device_names():
    assert calibration.gpu_for_device("NVIDIA H100 80GB HBM3").key == "h100"
    assert calibration.gpu_for_device("NVIDIA A100-SXM4-80GB").key == "a100"
    assert calibration.gpu_for_device("NVIDIA A10").key == "a10"
    assert calibration.gpu_for_device("NVIDIA GeForce RTX 4090").key == "rtx4090"
    assert calibration.gpu_for_device("Tesla V100") is None


def test_calibration_record_through_the_harness():
    """A fake measured result through the benchmarks' Report: ratio per kernel, median,
    JSON round trip."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from benchmarks import harness
    report = harness.Report("conv")
    for name, measured, predicted in (("a", [2e-3], 1e-3), ("b", [3e-3], 3e-3),
                                      ("c", [1e-3], 2e-3)):
        ours = report.add(harness.Result(name, "cuda:0", measured))
        report.add_prediction(ours, predicted, label=name)
    data = report.to_dict(machine={})
    cal = data["calibration"]
    assert cal["ratios"] == {"a": 2.0, "b": 1.0, "c": 0.5}
    assert cal["median_ratio"] == 1.0
    again = harness.Report.from_dict(data)
    assert [e["label"] for e in again.calibration] == ["a", "b", "c"]
    assert math.isclose(cal["entries"][0]["predicted_s"], 1e-3)


def test_gemm_like_counts_are_normalised_to_the_exact_flops():
    """A GEMM-like kernel (main loop >= 50 % math) whose counted FP32 instructions
    overshoot FLOPs / 64 by 30 % has every count scaled back by 1/1.3; a byte-bound
    kernel's (nominal FLOPs) counts stand."""
    from convnet.perf.model import KernelInputs, normalised_counts
    flops = 64.0 * 1000                      # exactly 1000 FFMA warp instructions
    gemm = KernelInputs("g", blocks=1, threads_per_block=256, flops=flops, read_bytes=0,
                        write_bytes=0, math_share=0.7, instructions=1950.0,
                        pipe_instructions={"fp32": 1300.0, "fp64": 13.0})  # 67 % FP32
    instructions, pipes = normalised_counts(gemm)
    assert instructions == pytest.approx(1500.0) and pipes["fp32"] == pytest.approx(1000.0)
    assert pipes["fp64"] == pytest.approx(10.0)
    byte_bound = KernelInputs("b", blocks=1, threads_per_block=256, flops=flops, read_bytes=0,
                              write_bytes=0, math_share=0.1, instructions=1950.0,
                              pipe_instructions={"fp32": 1300.0})
    assert normalised_counts(byte_bound) == (1950.0, {"fp32": 1300.0})


def test_nnls_known_answers_and_optimality():
    """The trip-count solver: exact on consistent systems with a positive solution, a
    negative unconstrained optimum clipped to 0, and the Karush-Kuhn-Tucker conditions
    (x >= 0; the gradient A^T(b - Ax) is ~0 where x > 0 and <= 0 where x = 0) on random
    problems."""
    from convnet.perf.nnls import nnls
    a = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    assert nnls(a, a @ np.array([2.0, 3.0])) == pytest.approx([2.0, 3.0])
    assert nnls(np.eye(2), np.array([1.0, -1.0])) == pytest.approx([1.0, 0.0])
    assert nnls(np.zeros((2, 2)), np.ones(2)) == pytest.approx([0.0, 0.0])
    rng = np.random.default_rng(0)
    for _ in range(100):
        m, n = rng.integers(1, 10), rng.integers(1, 7)
        a, b = rng.standard_normal((m, n)), rng.standard_normal(m)
        x = nnls(a, b)
        gradient = a.T @ (b - a @ x)
        assert (x >= 0).all()
        assert np.all(np.abs(gradient[x > 0]) < 1e-8)
        assert np.all(gradient[x == 0] < 1e-8)
