"""Tensor-core convolution (issue 12): kernels/conv_tc_*.cu on emu against NumPy
models of their exact arithmetic (operands rounded to TF32/BF16, exact products, FP32
sums in the kernel's reduction order, then the bias and ReLU; backward filter's split
partials added in split order) bit for bit, and against the float64 result of the
rounded operands within ``ops.conv_tc.error_bound`` (n u sum |a||b| + |b|, n the
additions per output, u = 2^-24); the rounding is real (FP32 operands give results
outside that bound somewhere); awkward shapes (groups, strides, asymmetric padding,
partial tiles, several K-slices, several blocks), on each of ``TILES``; clean under
the race, init and align checks; bad precisions and tiles refused; the tile and split
choices. The NCHW kernels, each pass asked for layout="nchw" (the channels-last ones,
which the engine runs where the channels allow: tests/test_conv_tc_nhwc.py and
tests/test_conv_tc_filter_nhwc.py)."""
from __future__ import annotations

import numpy as np
import pytest

import convnet
from convnet import functional as F
from convnet.backend import emu
from convnet.ops import conv as conv_ops
from convnet.ops import conv_tc
from convnet.precision import round_operand

pytestmark = pytest.mark.skipif(not emu.available(), reason="emu runtime not built")

# (N, C, H, W, K, R, S, stride, pad, groups): tiny and awkward
SHAPES = [
    (1, 1, 5, 5, 1, 3, 3, 1, 1, 1),
    (2, 3, 7, 6, 5, 3, 2, 1, 0, 1),
    (1, 4, 9, 9, 6, 5, 5, 2, 2, 2),     # groups, stride, pad
    (3, 5, 9, 8, 130, 1, 1, 1, 0, 1),   # K and N*P*Q past one 128 x 128 tile, 1x1
    (2, 6, 11, 10, 8, 3, 3, (2, 1), (0, 1), 2),
    (1, 12, 12, 12, 9, 4, 3, 3, (1, 2), 1),  # 144 kk: 9 slices, the ring wraps; C*R*S past 128
]


@pytest.fixture(scope="module")
def device():
    return emu.EmuDevice()


def data(shape, seed):
    n, c, h, w, k, r, s, stride, pad, groups = shape
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    wt = (rng.standard_normal((k, c // groups, r, s)) * 0.3).astype(np.float32)
    b = rng.standard_normal(k).astype(np.float32)
    g = conv_ops.geometry(x.shape, wt.shape, stride, pad, groups)
    return g, x, wt, b


def model(g, x, w, b, relu, precision):
    """The kernel's arithmetic in NumPy: per output, FP32 sums of the exact products of
    rounded operands, one kk = (c, r, s) at a time in ascending order, then the bias."""
    xr = np.pad(round_operand(x, precision), ((0, 0), (0, 0), (g.pad_h, g.pad_h), (g.pad_w, g.pad_w)))
    wr = round_operand(w, precision)
    acc = np.zeros(g.y_shape, np.float32)
    ph, pw = (g.p - 1) * g.stride_h + 1, (g.q - 1) * g.stride_w + 1
    for c in range(g.cg):
        for r in range(g.r):
            for s in range(g.s):
                # x[n, group * Cg + c] for each output channel's group
                xs = xr[:, c::g.cg][:, :, r:r + ph:g.stride_h, s:s + pw:g.stride_w]   # n, groups, p, q
                xs = np.repeat(xs, g.kg, axis=1)                                      # n, k, p, q
                acc = (acc + wr[None, :, c, r, s, None, None] * xs).astype(np.float32)
    y = (acc + b.reshape(1, -1, 1, 1)).astype(np.float32)
    return np.where((y > 0) | np.isnan(y), y, np.float32(0)) if relu else y


def model_data(g, dy, w, precision):
    """Backward data: per dx element, FP32 sums over kk = (k, r, s) ascending."""
    dyr, wr = round_operand(dy, precision), round_operand(w, precision)
    hp = max(g.h + 2 * g.pad_h, (g.p - 1) * g.stride_h + g.r)
    wp = max(g.w + 2 * g.pad_w, (g.q - 1) * g.stride_w + g.s)
    acc = np.zeros((g.n, g.c, hp, wp), np.float32)
    for grp in range(g.groups):
        cs = slice(grp * g.cg, (grp + 1) * g.cg)
        for k in range(grp * g.kg, (grp + 1) * g.kg):
            for r in range(g.r):
                for s in range(g.s):
                    view = acc[:, cs, r:r + (g.p - 1) * g.stride_h + 1:g.stride_h,
                               s:s + (g.q - 1) * g.stride_w + 1:g.stride_w]
                    view[...] = (view + wr[None, k, :, r, s, None, None] * dyr[:, k, None]).astype(np.float32)
    return acc[:, :, g.pad_h:g.pad_h + g.h, g.pad_w:g.pad_w + g.w]


def model_filter(g, x, dy, precision, chunk):
    """Backward filter: per dw element, FP32 sums over kk = (n, p, q) ascending within
    each chunk of the reduction, then the chunks' sums added in order from 0."""
    xr = np.pad(round_operand(x, precision), ((0, 0), (0, 0), (g.pad_h, g.pad_h + g.stride_h),
                                              (g.pad_w, g.pad_w + g.stride_w)))
    dyr = round_operand(dy, precision)
    total = np.zeros(g.w_shape, np.float32)
    part = np.zeros(g.w_shape, np.float32)
    npq = g.n * g.p * g.q
    for kk in range(npq):
        n, pq = divmod(kk, g.p * g.q)
        p, q = divmod(pq, g.q)
        win = xr[n, :, p * g.stride_h:p * g.stride_h + g.r, q * g.stride_w:q * g.stride_w + g.s]
        win = win.reshape(g.groups, 1, g.cg, g.r, g.s)
        term = (dyr[n, :, p, q].reshape(g.groups, g.kg, 1, 1, 1) * win).reshape(g.w_shape)
        part = (part + term).astype(np.float32)
        if (kk + 1) % chunk == 0 or kk + 1 == npq:
            total = (total + part).astype(np.float32)
            part = np.zeros(g.w_shape, np.float32)
    return total


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
@pytest.mark.parametrize("index", range(len(SHAPES)))
def test_kernel_equals_the_model_and_the_bound(device, precision, index):
    g, x, w, b = data(SHAPES[index], index)
    relu = index % 2 == 0
    y = conv_tc.forward(device, g, x, w, b, relu, precision, layout="nchw")
    np.testing.assert_array_equal(y, model(g, x, w, b, relu, precision))
    exact = conv_tc.forward_reference(g, x.astype(np.float64), w.astype(np.float64),
                                      b.astype(np.float64), relu, precision)
    bound = forward_bound(g, x, w, b, precision)
    assert (np.abs(y - exact) <= bound).all()
    # the operands really are rounded: FP32 operands give results outside the bound
    fp32 = conv_ops.forward_reference(g, x.astype(np.float64), w.astype(np.float64),
                                      b.astype(np.float64), relu)
    assert (np.abs(y - fp32) > bound).any()


def f64_abs(precision, *arrays):
    return tuple(np.abs(round_operand(a, precision).astype(np.float64)) for a in arrays)


def forward_bound(g, x, w, b, precision):
    xa, wa = f64_abs(precision, x, w)
    mag = conv_ops.forward_reference(g, xa, wa, np.abs(b.astype(np.float64)), False)
    return conv_tc.error_bound(g.cg * g.r * g.s + 1, mag)


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
@pytest.mark.parametrize("index", range(len(SHAPES)))
def test_backward_data_equals_the_model_and_the_bound(device, precision, index):
    g, x, w, _ = data(SHAPES[index], index + 20)
    dy = np.random.default_rng(index).standard_normal(g.y_shape).astype(np.float32)
    dx = conv_tc.backward_data(device, g, dy, w, precision, layout="nchw")
    np.testing.assert_array_equal(dx, model_data(g, dy, w, precision))
    exact = conv_tc.backward_data_reference(g, dy.astype(np.float64), w.astype(np.float64), precision)
    dya, wa = f64_abs(precision, dy, w)
    bound = conv_tc.error_bound(g.kg * g.r * g.s, conv_ops.backward_data_reference(g, dya, wa))
    assert (np.abs(dx - exact) <= bound).all()
    fp32 = conv_ops.backward_data_reference(g, dy.astype(np.float64), w.astype(np.float64))
    assert (np.abs(dx - fp32) > bound).any()


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
@pytest.mark.parametrize("index,splits", [(0, 1), (1, 1), (2, 3), (3, 2), (4, 1), (5, 4)])
def test_backward_filter_equals_the_model_and_the_bound(device, precision, index, splits):
    g, x, _, _ = data(SHAPES[index], index + 40)
    dy = np.random.default_rng(index).standard_normal(g.y_shape).astype(np.float32)
    dw = conv_tc.backward_filter(device, g, x, dy, precision, splits=splits, layout="nchw")
    got_splits, chunk = conv_tc.plan_filter(device, g, splits)
    assert got_splits == min(splits, -(-g.n * g.p * g.q // conv_tc.BLOCK_K))
    np.testing.assert_array_equal(dw, model_filter(g, x, dy, precision, chunk))
    exact = conv_tc.backward_filter_reference(g, x.astype(np.float64), dy.astype(np.float64), precision)
    xa, dya = f64_abs(precision, x, dy)
    bound = conv_tc.error_bound(g.n * g.p * g.q, conv_ops.backward_filter_reference(g, xa, dya))
    assert (np.abs(dw - exact) <= bound).all()


def test_cpu_reference_agrees_within_the_bound():
    g, x, w, b = data(SHAPES[2], 9)
    cpu = convnet.get_device("cpu")
    for precision in ("tf32", "bf16"):
        y = conv_tc.forward(cpu, g, x, w, b, True, precision)
        exact = conv_tc.forward_reference(g, x.astype(np.float64), w.astype(np.float64),
                                          b.astype(np.float64), True, precision)
        assert (np.abs(y - exact) <= forward_bound(g, x, w, b, precision)).all()


@pytest.mark.parametrize("check", ["race", "init", "align"])
def test_kernels_are_clean_under_the_checks(device, check):
    g, x, w, b = data(SHAPES[4], 3)
    dy = np.random.default_rng(3).standard_normal(g.y_shape).astype(np.float32)
    want = (model(g, x, w, b, True, "tf32"), model_data(g, dy, w, "bf16"))
    chunk = conv_tc.plan_filter(device, g, 2)[1]
    want_dw = model_filter(g, x, dy, "tf32", chunk)
    with emu.debug(check=check):
        y = conv_tc.forward(device, g, x, w, b, True, "tf32", layout="nchw")
        dx = conv_tc.backward_data(device, g, dy, w, "bf16", tile=(128, 96), layout="nchw")  # both tiles
        dw = conv_tc.backward_filter(device, g, x, dy, "tf32", splits=2, tile=(128, 128), layout="nchw")
    np.testing.assert_array_equal(y, want[0])
    np.testing.assert_array_equal(dx, want[1])
    np.testing.assert_array_equal(dw, want_dw)


def test_no_bias_and_bad_precision(device):
    g, x, w, b = data(SHAPES[1], 4)
    y = conv_tc.forward(device, g, x, w, None, False, "bf16", layout="nchw")
    np.testing.assert_array_equal(y, model(g, x, w, np.zeros_like(b), False, "bf16"))
    with pytest.raises(ValueError, match="'tf32' or 'bf16'"):
        conv_tc.forward(device, g, x, w, b, False, "fp32")
    with pytest.raises(ValueError, match="precision must be one of"):
        conv_tc.forward(device, g, x, w, b, False, "fp16")
    with pytest.raises(ValueError, match=r"tile \(128, 64\) is not instantiated"):
        conv_tc.forward(device, g, x, w, b, False, "tf32", tile=(128, 64))


def test_tile_and_split_choices():
    """The waves model: 128 x 96 needs as many waves as 128 x 128 or more, at 0.7 of its
    rate per block (conv3's backward data: 452 blocks = 1.71 waves of 2 per SM on 132 SMs
    against 338 = 1.28), so a GPU keeps 128 x 128; emu (one block a worker, the same rate)
    takes the 96 tile where it costs no more rounds (480 columns on 3 workers: 4 blocks of
    128 or 5 of 96, two rounds either way, of smaller blocks); a GEMM of few rows takes
    64 x 128 (4 resident blocks per SM, 0.6 of the rate per block). Backward filter's split weighs waves against the partial sums: conv3's 128 x 128
    tile takes 9 splits of 54 blocks (1.84 waves of 2 per SM), not 10 (2.05 waves run in
    3) nor 34 (6.95 waves, but 34 partials of K x Cg*R*S to write and add)."""
    from types import SimpleNamespace
    h100 = SimpleNamespace(kind="cuda", parallel_units=132)
    assert conv_tc.choose_tile(h100, 256, 128 * 169) == (128, 128)
    assert conv_tc.choose_tile(SimpleNamespace(kind="emu", parallel_units=3), 128, 480) == (128, 96)
    # conv2's backward data: 48 rows a group fill 3/4 of a 64-row tile, 3/8 of a 128-row
    # one: 1458 blocks either way, 3 waves of 4 per SM against 6 of 2
    assert conv_tc.choose_tile(h100, 48, 128 * 27 * 27, 2) == (64, 128)
    g = conv_ops.geometry((128, 256, 13, 13), (384, 256, 3, 3), 1, 1, 1)
    assert conv_tc.plan_filter(h100, g, None, (128, 128)) == (9, 2416)
    assert conv_tc.plan_filter(h100, g, 4, (128, 128)) == (4, 5408)


# --------------------------------------------------------------------------- precision as a choice

def test_conv2d_precision_runs_the_tensor_core_passes(device):
    """F.conv2d(precision=...) on emu: the forward and both gradients are those of
    ops.conv_tc bit for bit (the ReLU mask applied to dy first); cpu agrees within the
    passes' bounds; the default comes from convnet.set_precision / using_precision."""
    from convnet.precision import using_precision
    g, x, w, b = data(SHAPES[4], 8)
    dy = np.random.default_rng(8).standard_normal(g.y_shape).astype(np.float32)
    results = {}
    for dev in (device, convnet.get_device("cpu")):
        for how in ("argument", "default"):
            xt = convnet.tensor(x, device=dev, requires_grad=True)
            wt = convnet.tensor(w, device=dev, requires_grad=True)
            bt = convnet.tensor(b, device=dev, requires_grad=True)
            if how == "argument":
                y = F.conv2d(xt, wt, bt, stride=(2, 1), padding=(0, 1), groups=2, relu=True,
                             precision="bf16")
            else:
                with using_precision("bf16"):
                    y = F.conv2d(xt, wt, bt, stride=(2, 1), padding=(0, 1), groups=2, relu=True)
                assert convnet.get_precision() == "fp32"  # restored
            y.backward(convnet.tensor(dy, device=dev))
            results[dev.kind, how] = (y.numpy(), xt.grad.numpy(), wt.grad.numpy(), bt.grad.numpy())
    y, dx, dw, db = results["emu", "argument"]
    for a, b_ in zip(results["emu", "argument"], results["emu", "default"]):
        np.testing.assert_array_equal(a, b_)
    np.testing.assert_array_equal(y, model(g, x, w, b, True, "bf16"))
    masked = np.where(y > 0, dy, np.float32(0))
    np.testing.assert_array_equal(dx, conv_tc.backward_data(device, g, masked, w, "bf16"))
    np.testing.assert_array_equal(dw, conv_tc.backward_filter(device, g, x, masked, "bf16"))
    cy, cdx, cdw, cdb = results["cpu", "argument"]
    assert (np.abs(cy - y) <= 2 * forward_bound(g, x, w, b, "bf16")).all()
    assert np.allclose(cdx, dx, rtol=1e-5, atol=1e-5) and np.allclose(cdw, dw, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(cdb, db, rtol=1e-5, atol=1e-5)


def test_conv2d_precision_errors():
    x = convnet.tensor(np.ones((1, 2, 5, 5), np.float32))
    w = convnet.tensor(np.ones((3, 2, 3, 3), np.float32))
    with pytest.raises(ValueError, match="conv2d: precision must be one of 'fp32', 'tf32', 'bf16'"):
        F.conv2d(x, w, precision="fp16")
    with pytest.raises(ValueError, match="FP32 only"):
        F.conv2d(x, w, algorithm="winograd", precision="tf32")
    with pytest.raises(ValueError, match="precision must be one of"):
        convnet.set_precision("half")
    assert convnet.get_precision() == "fp32"


def test_train_records_the_precision_and_keeps_it_on_resume(monkeypatch):
    from convnet.app import settings as settings_module
    from convnet.app.cli import build_parser
    from convnet.app.runs import TrainError
    from convnet.app.settings import TrainOptions, run_settings
    assert build_parser().parse_args(["train", "--precision", "tf32"]).precision == "tf32"
    assert run_settings(TrainOptions(), None, gpu=True)["precision"] == "fp32"  # the paper's
    settings = run_settings(TrainOptions(precision="bf16"), None, gpu=False)
    assert settings["precision"] == "bf16"
    with pytest.raises(TrainError, match="--precision must be one of"):
        run_settings(TrainOptions(precision="fp16"), None, gpu=False)
    # a checkpoint's settings (what settings_of reads from it) on --resume
    monkeypatch.setattr(settings_module, "settings_of", lambda saved: saved)
    assert run_settings(TrainOptions(resume=True), dict(settings), gpu=False)["precision"] == "bf16"
    with pytest.raises(TrainError, match="--precision tf32 \\(the run has bf16\\)"):
        run_settings(TrainOptions(resume=True, precision="tf32"), dict(settings), gpu=False)
    old = {k: v for k, v in settings.items() if k != "precision"}  # from before the option
    assert run_settings(TrainOptions(resume=True), old, gpu=False)["precision"] == "fp32"


def test_benchmark_reports_record_the_precision():
    from benchmarks import harness
    from convnet.precision import using_precision
    assert harness.Report("x").to_dict(machine={})["precision"] == "fp32"
    with using_precision("tf32"):
        assert harness.Report("x").to_dict(machine={})["precision"] == "tf32"


def random_shape(rng):
    """An awkward little convolution: odd sizes, groups, strides, asymmetric padding."""
    groups = int(rng.choice([1, 1, 2, 3]))
    cg, kg = int(rng.integers(1, 5)), int(rng.integers(1, 12))
    r, s = int(rng.integers(1, 5)), int(rng.integers(1, 5))
    stride = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
    pad = (int(rng.integers(0, r)), int(rng.integers(0, s)))
    h = int(rng.integers(max(1, r - 2 * pad[0]), 12))
    w = int(rng.integers(max(1, s - 2 * pad[1]), 12))
    return (int(rng.integers(1, 4)), cg * groups, h, w, kg * groups, r, s, stride, pad, groups)


@pytest.mark.parametrize("seed", range(30))
def test_thirty_seeded_shapes_all_passes_bit_for_bit(device, seed):
    rng = np.random.default_rng(1000 + seed)
    shape = random_shape(rng)
    precision = ("tf32", "bf16")[seed % 2]
    tile = conv_tc.TILES[(seed // 2) % len(conv_tc.TILES)]
    g, x, w, b = data(shape, seed)
    dy = rng.standard_normal(g.y_shape).astype(np.float32)
    np.testing.assert_array_equal(
        conv_tc.forward(device, g, x, w, b, seed % 3 == 0, precision, tile=tile, layout="nchw"),
        model(g, x, w, b, seed % 3 == 0, precision))
    np.testing.assert_array_equal(conv_tc.backward_data(device, g, dy, w, precision, tile=tile, layout="nchw"),
                                  model_data(g, dy, w, precision))
    splits = 1 + seed % 3
    chunk = conv_tc.plan_filter(device, g, splits, tile)[1]
    np.testing.assert_array_equal(
        conv_tc.backward_filter(device, g, x, dy, precision, splits=splits, tile=tile, layout="nchw"),
        model_filter(g, x, dy, precision, chunk))


def test_the_launch_model_times_tensor_core_flops_at_their_peak():
    from convnet.perf import gpus
    from convnet.perf.model import KernelInputs, predict
    h100 = gpus.gpu("h100")
    common = dict(name="conv_tc_forward<0>", blocks=132 * 8, threads_per_block=128, flops=1e12,
                  read_bytes=1e6, write_bytes=1e6, registers=96, static_shared=29184,
                  math_share=0.1)
    for tensor, peak in (("tf32", h100.tf32_tflops), ("bf16", h100.bf16_tflops)):
        p = predict(KernelInputs(**common, tensor=tensor), h100)
        assert p.compute_s == pytest.approx(1e12 / (peak * 1e12 * p.latency_factor * p.wave_efficiency))
        assert p.issue_factor == 1.0 and p.pct_peak <= 1.0
    fp32 = predict(KernelInputs(**common), h100)  # the same mix on the CUDA cores: FP32 peak x math
    assert fp32.compute_s > 7 * predict(KernelInputs(**common, tensor="tf32"), h100).compute_s
