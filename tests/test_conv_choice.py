"""conv2d(algorithm="auto"): the choice asked of the performance model cheaply
(convnet.perf.choose): Winograd where the model predicts it faster on the stand-in H100
(AlexNet's conv3-5), direct where Winograd does not apply; deterministic; a measured
calibration first; no compile, profile or launch build after the first call of a shape;
"auto" computes exactly what the chosen explicit algorithm does."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from convnet import functional as F
from convnet import nn
from convnet.ops import conv
from convnet.perf import choose, emu_traffic, kernel_figures, predict
from convnet.tensor import Tensor

from conftest import require_device

# name: (C, H=W, K, R=S, stride, padding, groups), batch 128 (AlexNet, one column)
ALEXNET = {"conv1": (3, 227, 96, 11, 4, 0, 1), "conv2": (96, 27, 256, 5, 1, 2, 2),
           "conv3": (256, 13, 384, 3, 1, 1, 1), "conv4": (384, 13, 384, 3, 1, 1, 2),
           "conv5": (384, 13, 256, 3, 1, 1, 2)}


def geometry(name, batch=128):
    c, hw, k, rs, stride, pad, groups = ALEXNET[name]
    return conv.geometry((batch, c, hw, hw), (k, c // groups, rs, rs), stride, pad, groups)


@pytest.fixture(autouse=True)
def fresh(tmp_path, monkeypatch):
    """An empty folder for the chooser's figures and calibration (none saved yet)."""
    monkeypatch.setattr(choose, "_store", lambda: tmp_path / "perf")
    monkeypatch.delenv("CONVNET_CALIBRATION", raising=False)
    choose.clear()
    yield
    choose.clear()


@pytest.fixture
def no_model(monkeypatch):
    """The full model's expensive steps fail the test if called."""
    def refuse(*args, **kwargs):
        raise AssertionError("the chooser asked the full model (compile / emu profile)")
    monkeypatch.setattr(predict, "predict_layers", refuse)
    monkeypatch.setattr(emu_traffic, "measure", refuse)
    monkeypatch.setattr(kernel_figures, "kernel_figures", refuse)


def test_shipped_defaults_cover_alexnet():
    figures = choose.default_figures()
    assert figures, f"{choose.DEFAULTS} holds no figures"
    for name in ("conv3", "conv4", "conv5"):
        c = choose.choose_for_gpu(geometry(name), "h100")
        assert "without figures" not in c.figures and "shipped defaults" in c.figures, c.figures


@pytest.mark.parametrize("name", ["conv3", "conv4", "conv5"])
def test_winograd_where_the_model_says_faster(name, no_model):
    c = choose.choose_for_gpu(geometry(name), "h100")
    assert set(c.seconds) == {"direct", "winograd"}
    assert c.seconds["winograd"] < c.seconds["direct"]
    assert c.algorithm == "winograd"
    for algorithm, parts in c.parts.items():   # every pass predicted, positive
        assert {"forward", "data", "filter"} <= set(parts) and min(parts.values()) > 0
        assert sum(parts.values()) == pytest.approx(c.seconds[algorithm])


@pytest.mark.parametrize("name, x, w, stride", [
    ("conv1", None, None, None), ("conv2", None, None, None),
    ("3x3 stride 2", (8, 16, 15, 15), (32, 16, 3, 3), 2)])
def test_direct_where_winograd_does_not_apply(name, x, w, stride, no_model):
    g = geometry(name) if x is None else conv.geometry(x, w, stride, 1, 1)
    c = choose.choose_for_gpu(g, "h100")
    assert c.algorithm == "direct" and set(c.seconds) == {"direct"} and c.seconds["direct"] > 0
    assert "3x3 filters at stride 1" in c.reason


def test_deterministic_and_named_gpu():
    g = geometry("conv4")
    first = choose.choose_for_gpu(g, "h100")
    choose.clear()
    again = choose.choose_for_gpu(g, "h100")
    assert first == again    # same figures, same GPU: the very same numbers
    emu = require_device("emu")
    assert choose.choose(emu, g) == first   # emu: the H100 stand-in
    gpu, how = choose.gpu_for(emu)
    assert gpu.key == choose.STANDIN and "stand-in" in how
    assert choose.choose(require_device("cpu"), g).algorithm == "direct"
    other = choose.choose_for_gpu(g, "a100")
    assert other.gpu == "a100" and other.seconds != first.seconds


def _calibration(path, gpu_name, ratios, precision="fp32"):
    """A GPU run's benchmarks.json with conv entries: {(algorithm, pass): ratio}."""
    entries = [{"label": f"{a} {p}", "measured_s": 1e-3 * r, "predicted_s": 1e-3, "ratio": r,
                "params": {"layer": "conv3", "pass": p, "algorithm": a, "batch": 128,
                           "precision": precision}}
               for (a, p), r in ratios.items()]
    run = {"benchmark": "conv", "machine": {"gpus": [{"name": gpu_name}]},
           "calibration": {"entries": entries, "median_ratio": 1.0}}
    path.write_text(json.dumps({"mode": "full", "runs": [run]}))
    return path


def test_calibration_takes_precedence(tmp_path, monkeypatch, no_model):
    g = geometry("conv3")
    model = choose.choose_for_gpu(g, "h100")
    assert model.algorithm == "winograd" and model.calibration is None
    # measured on an H100: Winograd 4x slower than predicted in every pass, direct as predicted
    ratios = {("winograd", p): 4.0 for p in ("forward", "backward_data", "backward_filter")}
    ratios[("direct", "forward")] = 1.0
    path = _calibration(tmp_path / "benchmarks.json", "NVIDIA H100 80GB HBM3", ratios)
    monkeypatch.setenv("CONVNET_CALIBRATION", str(path))
    choose.clear()
    c = choose.choose_for_gpu(g, "h100")
    assert c.algorithm == "direct" and c.calibration == str(path)
    assert "calibrat" in c.reason
    for part, seconds in c.parts["winograd"].items():   # passes x 4, the rest as predicted
        factor = 1.0 if part is None else 4.0
        assert seconds == pytest.approx(model.parts["winograd"][part] * factor)
    assert c.parts["direct"] == pytest.approx(model.parts["direct"])
    # another GPU's calibration does not apply
    choose.set_calibration(_calibration(tmp_path / "a100.json", "NVIDIA A100-SXM4-80GB", ratios))
    assert choose.choose_for_gpu(g, "h100").algorithm == "winograd"


def test_bad_calibration_is_one_clear_error(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json: cannot be read"):
        choose.set_calibration(bad)
    empty = _calibration(tmp_path / "empty.json", "NVIDIA H100", {})
    with pytest.raises(ValueError, match="no convolution entries"):
        choose.set_calibration(empty)


def test_cheap_after_warm_up(monkeypatch, no_model):
    calls = []
    build = choose._launches

    def counted(*args):
        calls.append(args[1])
        return build(*args)
    monkeypatch.setattr(choose, "_launches", counted)
    g = geometry("conv5")
    first = choose.choose_for_gpu(g, "h100")
    # the direct engine with each candidate tile, then with the chosen ones, and Winograd
    assert first.algorithm == "winograd" and sorted(set(calls)) == ["direct", "winograd"]
    calls.clear()
    for _ in range(3):
        assert choose.choose_for_gpu(g, "h100") is first
    assert calls == []
    # through conv2d on emu: one prediction per new shape, none after
    emu = require_device("emu")
    rng = np.random.default_rng(0)
    x = Tensor(rng.standard_normal((1, 2, 5, 5), dtype=np.float32), device=emu)
    w = Tensor(rng.standard_normal((3, 2, 3, 3), dtype=np.float32), device=emu)
    F.conv2d(x, w, padding=1)
    assert sorted(set(calls)) == ["direct", "winograd"]
    calls.clear()
    F.conv2d(x, w, padding=1)
    assert calls == []


def _run(device, algorithm, x, w, b, dy):
    xt, wt, bt = (Tensor(a, device=device, requires_grad=True) for a in (x, w, b))
    y = F.conv2d(xt, wt, bt, padding=1, relu=True, algorithm=algorithm)
    y.backward(Tensor(dy, device=device))
    return [t.numpy() for t in (y, xt.grad, wt.grad, bt.grad)]


@pytest.mark.parametrize("force", [None, "winograd"])
def test_auto_is_the_chosen_algorithm_exactly(force, tmp_path):
    emu = require_device("emu")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 6, 6), dtype=np.float32)
    w = rng.standard_normal((4, 3, 3, 3), dtype=np.float32)
    b = rng.standard_normal(4, dtype=np.float32)
    dy = rng.standard_normal((2, 4, 6, 6), dtype=np.float32)
    g = conv.geometry(x.shape, w.shape, 1, 1, 1)
    if force == "winograd":   # a calibration that makes direct 100x slower than predicted
        ratios = {("direct", p): 100.0 for p in ("forward", "backward_data", "backward_filter")}
        choose.set_calibration(_calibration(tmp_path / "c.json", "NVIDIA H100 PCIe", ratios))
        choose_gpu = choose.gpu_for(emu)[0]
        assert choose_gpu.key == "h100"
    chosen = F.conv.chosen_algorithm(emu, g)
    if force:
        assert chosen == force
    auto = _run(emu, "auto", x, w, b, dy)
    explicit = _run(emu, chosen, x, w, b, dy)
    for a, e in zip(auto, explicit):
        np.testing.assert_array_equal(a, e)
    if force == "winograd":   # and it is not what direct computes (the test can tell)
        direct = _run(emu, "direct", x, w, b, dy)
        assert any(not np.array_equal(a, d) for a, d in zip(auto, direct))


def test_figures_round_trip():
    """Per-unit figures from a table's row, times the same launch's units, give the row's
    traffic and instruction counts back."""
    from convnet.perf.layers import conv_layer, standin_arrays
    dev = predict.standin_device("h100")
    planned = conv_layer("t", 8, 9, 16, 3, 1, 1).build(dev, 4, standin_arrays, {}, False)
    gemm = next(p for p in planned if p.part == "forward")
    elementwise = next(p for p in planned if p.work is not None)
    rows = []
    for p, math in ((gemm, 0.8), (elementwise, 0.1)):
        traffic = emu_traffic.Traffic(blocks=p.blocks, load_bytes=1e6, store_bytes=2e5,
                                      shared_wavefronts=3e4, sectors_per_request=4.0,
                                      conflict_degree=1.0, barriers_per_block=2.0)
        dynamic = SimpleNamespace(instructions=5e4, pipes={"fp32": 4e4, "mufu": 10.0})
        rows.append(predict.Row(p, None, traffic, {"registers": 96, "shared_bytes": 4096,
                                                   "main_loop": {"shares": {"math": math}},
                                                   "kernel_math_share": math}, dynamic))
    figures = choose.figures_from_table(SimpleNamespace(rows=rows))
    assert figures[gemm.launch.name]["per"] == "tile"
    assert figures[elementwise.launch.name]["per"] == "element"
    for row in rows:
        k = choose._inputs(row.planned, figures[row.planned.launch.name])
        assert (k.load_bytes, k.store_bytes, k.shared_wavefronts, k.instructions) == \
            pytest.approx((1e6, 2e5, 3e4, 5e4))
        assert k.pipe_instructions == pytest.approx({"fp32": 4e4, "mufu": 10.0})
        assert (k.registers, k.static_shared, k.blocks) == (96, 4096, row.planned.blocks)
    # the GEMM's figures are kept for its shape too (integer arguments: batch 4, 8
    # channels, 9 x 9, 16 filters, ...), the elementwise kernel's only pooled
    key = choose.shape_key(gemm.launch)
    assert key.startswith(gemm.launch.name + "@4,8,9,9,16,") and figures[key] == figures[gemm.launch.name]
    assert not any(k.startswith(elementwise.launch.name + "@") for k in figures)


def test_a_shape_with_its_own_figures_is_predicted_from_them(monkeypatch):
    """Figures of a launch's very shape (``shape_key``) come before its kernel's pooled
    ones, from the cache or the defaults alike, and only for the kernel's current source."""
    from convnet.perf.layers import conv_layer, standin_arrays
    dev = predict.standin_device("h100")
    planned = conv_layer("t", 256, 13, 384, 3, 1, 1, precision="tf32").build(dev, 128, standin_arrays, {}, False)
    gemm = next(p for p in planned if p.part == "forward" and p.launch.kernel.startswith("conv_tc"))
    pooled, where = choose._figures_for(gemm.launch, "sm_90")
    assert where == "defaults" and pooled is not None
    own = {**pooled, "instructions": 3.0, "source": choose.source_key(gemm.launch.module)}
    key = choose.shape_key(gemm.launch)
    monkeypatch.setattr(choose, "default_figures", lambda: {gemm.launch.name: pooled, key: own})
    monkeypatch.setattr(choose, "cached_figures", lambda arch: {})
    assert choose._figures_for(gemm.launch, "sm_90") == (own, "defaults")
    monkeypatch.setattr(choose, "cached_figures", lambda arch: {key: {**own, "instructions": 4.0}})
    assert choose._figures_for(gemm.launch, "sm_90")[0]["instructions"] == 4.0
    monkeypatch.setattr(choose, "cached_figures", lambda arch: {key: {**own, "source": "edited"}})
    monkeypatch.setattr(choose, "default_figures", lambda: {gemm.launch.name: pooled,
                                                             key: {**own, "source": "edited"}})
    assert choose._figures_for(gemm.launch, "sm_90") == (pooled, "defaults")


def test_saved_figures_are_used_and_checked_against_the_source(monkeypatch):
    g = geometry("conv4")
    shipped = choose.choose_for_gpu(g, "h100")
    # a table whose figures double every shipped kernel's per-unit instructions
    doubled = {name: {**f, "instructions": 2 * f["instructions"] if f["instructions"] else None}
               for name, f in choose.default_figures().items()}
    monkeypatch.setattr(choose, "figures_from_table", lambda table: doubled)
    choose.save_figures(SimpleNamespace(gpu=SimpleNamespace(arch=SimpleNamespace(name="sm_90"))))
    saved = choose.choose_for_gpu(g, "h100")
    assert "this machine's cache" in saved.figures and "shipped defaults" not in saved.figures
    assert saved.seconds != shipped.seconds
    # figures of less work (a smaller table) do not replace them
    smaller = {name: {**f, "units": f["units"] / 2, "instructions": None}
               for name, f in choose.default_figures().items()}
    monkeypatch.setattr(choose, "figures_from_table", lambda table: smaller)
    choose.save_figures(SimpleNamespace(gpu=SimpleNamespace(arch=SimpleNamespace(name="sm_90"))))
    assert choose.choose_for_gpu(g, "h100") == saved
    choose.clear()   # a figure whose source digest is not the kernel's: not used
    stale = {name: {**f, "source": "edited"} for name, f in doubled.items()}
    monkeypatch.setattr(choose, "figures_from_table", lambda table: stale)
    choose.save_figures(SimpleNamespace(gpu=SimpleNamespace(arch=SimpleNamespace(name="sm_90"))))
    assert choose.choose_for_gpu(g, "h100") == shipped


def test_conv2d_layer_passes_the_algorithm():
    emu = require_device("emu")
    with pytest.raises(ValueError, match="algorithm must be one of"):
        nn.Conv2d(2, 3, 3, algorithm="fft")
    rng = np.random.default_rng(2)
    layer = nn.Conv2d(2, 3, 3, padding=1, algorithm="winograd", rng=rng, device=emu)
    assert layer.algorithm == "winograd" and "winograd" in repr(layer)
    assert nn.Conv2d(2, 3, 3).algorithm == "auto"
    x = Tensor(rng.standard_normal((1, 2, 5, 5), dtype=np.float32), device=emu)
    want = F.conv2d(x, layer.weight, layer.bias, padding=1, algorithm="winograd")
    np.testing.assert_array_equal(layer(x).numpy(), want.numpy())
    nn.Conv2d(2, 3, 5, stride=2, algorithm="winograd", device=emu)   # checked at the call
    with pytest.raises(ValueError, match="3x3 filters at stride 1"):
        nn.Conv2d(2, 3, 5, algorithm="winograd", device=emu)(x)


def test_perf_prints_the_choice_per_alexnet_layer(no_model):
    from convnet.perf.command import format_choices
    from convnet.perf.step import alexnet_layers
    choices = choose.layer_choices(alexnet_layers(1), "h100", 128)
    assert list(choices) == ["conv1", "conv2", "conv3", "conv4", "conv5"]
    text = format_choices(choices)
    for name in ("conv3", "conv4", "conv5"):
        line = next(l for l in text.splitlines() if l.strip().startswith(name + ":"))
        assert "winograd:" in line and " us" in line and "direct" in line
    layers = alexnet_layers(1, algorithms={n: c.algorithm for n, c in choices.items()})
    assert [l.info["algorithm"] for l in layers if l.info.get("op") == "conv"] == \
        ["direct", "direct", "winograd", "winograd", "winograd"]
    layers = alexnet_layers(1, tiles={n: c.tiles for n, c in choices.items()})
    assert {l.name: l.info["tiles"] for l in layers if l.info.get("op") == "conv"} == \
        {n: c.tiles for n, c in choices.items()}
    assert "direct tiles: forward" in text


@pytest.mark.parametrize("reported, key, note", [
    (b"NVIDIA A100-SXM4-80GB", "a100", "is an"), ("NVIDIA H200", "h200", "is an"),
    ("Tesla K80", choose.STANDIN, "not in convnet.perf.gpus")])
def test_a_cuda_device_is_modelled_as_its_own_gpu(reported, key, note):
    """On cuda the GPU is named from the device's properties (a GPU the table lacks:
    the stand-in, said so)."""
    runtime = SimpleNamespace(getDeviceProperties=lambda index: {"name": reported})
    device = SimpleNamespace(kind="cuda", index=0, name="cuda:0",
                             cupy=SimpleNamespace(cuda=SimpleNamespace(runtime=runtime)))
    gpu, how = choose.gpu_for(device)
    assert gpu.key == key and note in how
    assert choose.choose(device, geometry("conv3")).gpu == key


@pytest.mark.parametrize("name", ["conv2", "conv4"])
def test_direct_tiles_are_the_predicted_fastest(name, no_model):
    """Per pass, the chosen tile's predicted time is the least of the tiles whose launches
    all have figures (at least two of them); the choice's direct time uses those tiles."""
    from convnet.ops._conv_tiles import TILE_MODELS
    g = geometry(name)
    tiles = choose.direct_tiles(g, "h100")
    assert tiles, "no pass had figures of two tiles"
    for part, chosen in tiles.items():
        times = {}
        for tile in TILE_MODELS["cuda"]:
            forced = {p: tile for p in choose.PARTS}
            parts, sources = choose.predict_parts(g, "direct", "h100", tiles=forced)
            launches = choose._launches(g, "direct", choose.gpus.gpu("h100"), forced)
            if all(choose._figures_for(p.launch, "sm_90")[0] is not None
                   for p in launches if p.part == part):
                times[tuple(tile)] = parts[part]
        assert len(times) >= 2 and times[chosen] == min(times.values())
    c = choose.choose_for_gpu(g, "h100")
    assert c.tiles == tiles
    want, _ = choose.predict_parts(g, "direct", "h100", tiles=tiles)
    assert c.parts["direct"] == pytest.approx(want)


def test_warpgroup_tiles_are_weighed_on_sm_90_only():
    from convnet.ops import conv_tc
    for gpu in ("h100", "h200"):
        assert choose.tensor_core_menu(gpu) == tuple(conv_tc.TILES) + tuple(conv_tc.WGMMA_TILES)
    for gpu in ("a100", "rtx4090"):
        assert choose.tensor_core_menu(gpu) == tuple(conv_tc.TILES)


def test_the_direct_engine_takes_the_tiles_on_cuda_only(monkeypatch):
    g = geometry("conv4", batch=8)
    emu = require_device("emu")
    assert F.conv.direct_ops(emu, g) is conv   # the emulator's own tiles
    runtime = SimpleNamespace(getDeviceProperties=lambda index: {"name": "NVIDIA H100 80GB HBM3"})
    cuda = SimpleNamespace(kind="cuda", index=0, name="cuda:0",
                           cupy=SimpleNamespace(cuda=SimpleNamespace(runtime=runtime)))
    ops = F.conv.direct_ops(cuda, g)
    tiles = choose.choose_for_gpu(g, "h100").tiles
    assert tiles and ops.tiles == tiles
    seen = {}
    for name in ("forward", "backward_data", "backward_filter"):
        monkeypatch.setattr(conv, name, lambda *a, _n=name: seen.setdefault(_n, a[-1]))
    ops.forward(cuda, g, None, None, None, False)
    ops.backward_data(cuda, g, None, None)
    ops.backward_filter(cuda, g, None, None)
    assert seen == {"forward": tiles.get("forward"), "backward_data": tiles.get("data"),
                    "backward_filter": tiles.get("filter")}


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
def test_the_tensor_cores_take_the_chosen_tiles_on_cuda_only(monkeypatch, precision):
    """Per pass the fastest of the H100's menu (ops.conv_tc.TILES and WGMMA_TILES)
    predicted (each predicted from its own figures), handed to the tensor-core passes on
    cuda; the engine's own elsewhere."""
    from convnet.ops import conv_tc
    g = geometry("conv3", batch=128)
    emu = require_device("emu")
    assert F.conv.tensor_core_ops(emu, g, precision).tiles == {}
    tiles = choose.tensor_core_tiles(g, "h100", precision)
    menu = choose.tensor_core_menu("h100")
    assert set(tiles) == {"forward", "data", "filter"} and set(tiles.values()) <= set(menu)
    assert tiles["filter"] in conv_tc.TILES   # no warpgroup kernel: the plain tile wins the tie
    for part, tile in tiles.items():
        times = {t: choose.predict_parts(g, "direct", "h100", tiles={part: t},
                                         precision=precision)[0][part] for t in menu}
        assert times[tile] == min(times.values()), (part, times)
    runtime = SimpleNamespace(getDeviceProperties=lambda index: {"name": "NVIDIA H100 80GB HBM3"})
    cuda = SimpleNamespace(kind="cuda", index=0, name="cuda:0",
                           cupy=SimpleNamespace(cuda=SimpleNamespace(runtime=runtime)))
    ops = F.conv.tensor_core_ops(cuda, g, precision)
    assert ops.tiles == tiles
    seen = {}
    for name in ("forward", "backward_data", "backward_filter"):
        monkeypatch.setattr(conv_tc, name, lambda *a, _n=name, **k: seen.setdefault(_n, k["tile"]))
    ops.forward(cuda, g, None, None, None, False)
    ops.backward_data(cuda, g, None, None)
    ops.backward_filter(cuda, g, None, None)
    assert seen == {"forward": tiles["forward"], "backward_data": tiles["data"],
                    "backward_filter": tiles["filter"]}


def test_a_model_failure_falls_back_to_direct(monkeypatch):
    def broken(*args):
        raise RuntimeError("no launch for this shape")
    monkeypatch.setattr(choose, "_launches", broken)
    c = choose.choose_for_gpu(geometry("conv3"), "h100")
    assert c.algorithm == "direct" and "could not predict" in c.reason and "no launch" in c.reason


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
def test_tensor_core_precisions_keep_their_arithmetic(precision, tmp_path, monkeypatch, no_model):
    """TF32/BF16 run the tensor-core engine whatever the FP32 algorithms would take (the
    arithmetic is the user's): the choice names the precision and predicts from the
    tensor-core kernels' figures; its calibration is its own variant's."""
    from convnet.perf.command import format_choices
    from convnet.perf.step import alexnet_layers
    choices = choose.layer_choices(alexnet_layers(1, precision=precision), "h100", 128)
    assert [c.algorithm for c in choices.values()] == ["direct"] * 5
    assert {c.precision for c in choices.values()} == {precision}
    assert all("tensor-core engine is the only algorithm" in c.reason for c in choices.values())
    assert "without figures" not in choices["conv3"].figures, choices["conv3"].figures
    fp32 = choose.choose_for_gpu(geometry("conv3"), "h100")
    assert fp32.algorithm == "winograd"                    # FP32's own choice is unchanged
    assert choices["conv3"].seconds["direct"] < fp32.seconds["direct"]   # tensor cores
    assert "conv3: direct" in format_choices(choices)
    assert {l.info["precision"] for l in alexnet_layers(1, precision=precision)
            if l.info.get("op") == "conv"} == {precision}
    # a calibration of the FP32 direct engine does not scale the tensor cores, and back
    ratios = {("direct", p): 3.0 for p in ("forward", "backward_data", "backward_filter")}
    choose.set_calibration(_calibration(tmp_path / "fp32.json", "NVIDIA H100 80GB HBM3", ratios))
    assert choose.choose_for_gpu(geometry("conv3"), "h100", precision).seconds == \
        pytest.approx(choices["conv3"].seconds)
    path = _calibration(tmp_path / "tc.json", "NVIDIA H100 80GB HBM3", ratios, precision)
    assert choose.load_calibration(path) == {"h100": {precision: {
        "forward": 3.0, "data": 3.0, "filter": 3.0}}}
    with pytest.raises(ValueError, match="precision must be one of"):
        choose.choose_for_gpu(geometry("conv3"), "h100", "fp16")


def test_a_run_records_and_keeps_the_algorithms_its_convolutions_ran():
    """nn.Conv2d keeps the choice "auto" followed; a run records it (settings →
    checkpoints) and a resumed run or an evaluation on the same GPU runs it again even if
    the chooser would now say otherwise; another GPU chooses anew, said in one line."""
    from convnet.app import conv_choices
    emu, cpu = require_device("emu"), require_device("cpu")
    rng = np.random.default_rng(5)

    def net(device):
        return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, rng=rng, device=device),
                             nn.Conv2d(3, 2, 3, padding=1, algorithm="direct", rng=rng,
                                       device=device))
    x = rng.standard_normal((1, 2, 5, 5), dtype=np.float32)
    ran = net(emu)
    ran(Tensor(x, device=emu))
    want = choose.choose(emu, conv.geometry((1, 2, 5, 5), (3, 2, 3, 3), 1, 1, 1))
    record = conv_choices.recorded(ran)
    assert record == {"0": {"algorithm": want.algorithm, "precision": "fp32", "gpu": "h100"}}
    assert conv_choices.recorded(net(cpu)) == {}            # nothing chosen on cpu
    other = "direct" if want.algorithm == "winograd" else "winograd"
    resumed = net(emu)
    assert conv_choices.pin(resumed, {"0": {**record["0"], "algorithm": other}}, emu) is None
    assert resumed[0].algorithm == other and resumed[1].algorithm == "direct"
    resumed(Tensor(x, device=emu))
    assert conv_choices.recorded(resumed)["0"]["algorithm"] == other   # kept in the record
    elsewhere = net(emu)
    line = conv_choices.pin(elsewhere, {"0": {**record["0"], "gpu": "a100"}}, emu)
    assert "chosen for a100" in line and "chosen anew" in line
    assert elsewhere[0].algorithm == "auto"
    assert conv_choices.pin(net(cpu), record, cpu) is None
