"""Convolution: the kernels (emu, cuda) against the float64 NumPy reference, the
reference against finite differences, the autograd path, and the errors.

Kernel results are compared element by element with the float64 reference: each
may differ by at most 8 float32 epsilons times the sum of the absolute values of
the terms it adds (the same convolution of |x| and |w|), which any missing,
doubled or misplaced term exceeds. The GPU tiles (LARGE, MEDIUM) are run on emu
too, so every instantiation is checked on this machine.
"""
from __future__ import annotations

import textwrap
from types import SimpleNamespace

import numpy as np
import pytest

import convnet
from convnet import functional as F
from convnet.toolchain.launch import LaunchError
from convnet.ops import conv

from conftest import require_device, run_clean_under_asan
from gradcheck import check_grads

EPS32 = float(np.finfo(np.float32).eps)
CPU = convnet.get_device("cpu")

# AlexNet's five convolutions: x shape (batch filled in), w shape, stride, padding, groups.
ALEXNET = {
    "conv1": ((3, 227, 227), (96, 3, 11, 11), 4, 0, 1),
    "conv2": ((96, 27, 27), (256, 48, 5, 5), 1, 2, 2),
    "conv3": ((256, 13, 13), (384, 256, 3, 3), 1, 1, 1),
    "conv4": ((384, 13, 13), (384, 192, 3, 3), 1, 1, 2),
    "conv5": ((384, 13, 13), (256, 192, 3, 3), 1, 1, 2),
}


# --------------------------------------------------------------------------- helpers

class Case:
    """One convolution's operands (float32) and arguments."""

    def __init__(self, x_shape, w_shape, stride=1, padding=0, groups=1, seed=0, bias=True,
                 relu=False):
        rng = np.random.default_rng(seed)
        self.x = rng.standard_normal(x_shape).astype(np.float32)
        self.w = rng.standard_normal(w_shape).astype(np.float32)
        self.b = rng.standard_normal(w_shape[0]).astype(np.float32) if bias else None
        self.args = (stride, padding, groups)
        self.relu = relu
        self.g = conv.geometry(x_shape, w_shape, stride, padding, groups)
        self.dy = rng.standard_normal(self.g.y_shape).astype(np.float32)

    def __repr__(self):
        g = self.g
        return (f"x{g.x_shape} w{g.w_shape} stride {g.stride_h},{g.stride_w} pad "
                f"{g.pad_h},{g.pad_w} groups {g.groups}")


def _f64(a):
    return None if a is None else a.astype(np.float64)


def _abs64(a):
    return None if a is None else np.abs(a.astype(np.float64))


def assert_close(got, want, scale, what):
    """|got - want| <= 8 eps32 * scale elementwise (scale: the sum of |terms|)."""
    got = np.asarray(got)
    assert got.shape == want.shape, f"{what}: shape {got.shape}, expected {want.shape}"
    assert got.dtype == np.float32, f"{what}: dtype {got.dtype}"
    err = np.abs(got.astype(np.float64) - want)
    tol = 8 * EPS32 * scale + 1e-30
    bad = ~(err <= tol)
    if bad.any():
        i = np.unravel_index(np.argmax(np.where(bad, err / tol, 0)), err.shape)
        raise AssertionError(f"{what}: {int(bad.sum())} of {bad.size} elements off; worst at "
                             f"{i}: got {got[i]!r}, want {want[i]!r}, tolerance {tol[i]:.3g}")


def check_forward(device, case, tile=None):
    d = device
    y = d.to_numpy(conv.forward(d, case.g, d.asarray(case.x), d.asarray(case.w),
                                None if case.b is None else d.asarray(case.b),
                                relu=case.relu, tile=tile))
    want = conv.forward_reference(case.g, _f64(case.x), _f64(case.w), _f64(case.b),
                                  relu=case.relu)
    scale = conv.forward_reference(case.g, _abs64(case.x), _abs64(case.w), _abs64(case.b))
    assert_close(y, want, scale, f"forward of {case}")
    return y


def check_backward_data(device, case, tile=None):
    d = device
    dx = d.to_numpy(conv.backward_data(d, case.g, d.asarray(case.dy), d.asarray(case.w),
                                       tile=tile))
    want = conv.backward_data_reference(case.g, _f64(case.dy), _f64(case.w))
    scale = conv.backward_data_reference(case.g, _abs64(case.dy), _abs64(case.w))
    assert_close(dx, want, scale, f"backward data of {case}")
    return dx


def check_backward_filter(device, case, tile=None, splits=None):
    d = device
    dw = d.to_numpy(conv.backward_filter(d, case.g, d.asarray(case.x), d.asarray(case.dy),
                                         tile=tile, splits=splits))
    want = conv.backward_filter_reference(case.g, _f64(case.x), _f64(case.dy))
    scale = conv.backward_filter_reference(case.g, _abs64(case.x), _abs64(case.dy))
    assert_close(dw, want, scale, f"backward filter of {case}")
    return dw


def check_backward_bias(device, case):
    db = device.to_numpy(conv.backward_bias(device, case.g, device.asarray(case.dy)))
    want = conv.backward_bias_reference(_f64(case.dy))
    scale = conv.backward_bias_reference(_abs64(case.dy))
    assert_close(db, want, scale, f"bias gradient of {case}")
    return db


def check_all(device, case, tile=None):
    check_forward(device, case, tile)
    check_backward_data(device, case, tile)
    check_backward_filter(device, case, tile)
    check_backward_bias(device, case)


# --------------------------------------------------------------------------- AlexNet's layers

@pytest.mark.parametrize("layer", list(ALEXNET))
def test_alexnet_layers(kernel_device, layer):
    """Each AlexNet convolution at its real size: forward (bias + ReLU), both gradients
    and the bias gradient. conv1 (227x227, stride 4) at batch 1, the others at 2."""
    x_shape, w_shape, stride, padding, groups = ALEXNET[layer]
    n = 1 if layer == "conv1" else 2
    case = Case((n, *x_shape), w_shape, stride, padding, groups, seed=11, relu=True)
    check_all(kernel_device, case)


# --------------------------------------------------------------------------- random shapes

# Shapes that must be there (each names what it covers), then seeded random ones.
REQUIRED_SHAPES = [
    # (x shape, w shape, stride, padding, groups)
    ((2, 1, 9, 11), (5, 1, 3, 3), 1, 1, 1),            # C = 1, K = 5
    ((1, 3, 17, 15), (7, 3, 5, 5), 2, 2, 1),           # C = 3, N = 1
    ((2, 4, 11, 10), (6, 4, 2, 2), 3, 0, 1),           # stride larger than the kernel
    ((1, 2, 12, 13), (3, 2, 1, 1), (5, 4), 0, 1),      # 1x1 kernel, stride 5x4
    ((2, 6, 8, 8), (130, 6, 3, 3), 1, 1, 1),           # K = 130: past a 128 tile
    ((1, 8, 7, 9), (12, 2, 3, 1), 1, (1, 0), 4),       # groups 4, rectangular kernel
    ((2, 4, 5, 5), (4, 2, 3, 3), 1, 3, 2),             # padding as large as the kernel
    ((1, 5, 5, 5), (3, 5, 5, 5), 1, 0, 1),             # output 1x1
    ((3, 2, 4, 9), (2, 2, 4, 9), 2, 0, 1),             # output 1x1 from a rectangular image
    ((1, 3, 6, 19), (9, 3, 2, 5), (1, 3), (0, 2), 1),  # rectangular image, kernel and stride
    ((2, 16, 6, 6), (34, 8, 3, 3), 1, 1, 2),           # groups 2, K per group odd
    ((1, 1, 1, 1), (1, 1, 1, 1), 1, 0, 1),             # the smallest convolution
    ((1, 2, 18, 19), (3, 2, 16, 17), 1, 1, 1),         # past 15x16 taps: the *_wide kernels
    ((2, 3, 20, 9), (4, 3, 17, 2), (2, 1), 0, 1),      # forward wide, data's phases not
    ((1, 2, 4, 5), (3, 2, 2, 3), 1, (7, 1), 1),        # filter's edge words: 7 rows, the most
    ((1, 2, 5, 6), (3, 2, 3, 4), (1, 2), (8, 15), 1),  # past 7 rows a side: filter's wide kernel
]


def _random_shapes(count: int, seed: int = 2012):
    rng = np.random.default_rng(seed)
    shapes = []
    while len(shapes) < count:
        groups = int(rng.choice([1, 1, 2, 4]))
        cg = int(rng.choice([1, 2, 3, 5, 8, 17]))
        kg = int(rng.integers(1, 45))
        r, s = (int(v) for v in rng.integers(1, 7, 2))
        sh, sw = (int(v) for v in rng.integers(1, 5, 2))
        ph, pw = (int(v) for v in rng.integers(0, 3, 2))
        h = int(rng.integers(max(1, r - 2 * ph), 24))
        w = int(rng.integers(max(1, s - 2 * pw), 24))
        n = int(rng.integers(1, 4))
        shapes.append(((n, cg * groups, h, w), (kg * groups, cg, r, s), (sh, sw), (ph, pw),
                       groups))
    return shapes


RANDOM_SHAPES = REQUIRED_SHAPES + _random_shapes(22)


def test_random_shapes_cover_the_cases():
    gs = [conv.geometry(*shape) for shape in RANDOM_SHAPES]
    assert len(gs) >= 30
    assert {1, 3} <= {g.c for g in gs}
    assert any(g.k % 32 and g.k > 128 for g in gs)  # K past a tile, not a multiple of any
    assert any(g.stride_h > g.r or g.stride_w > g.s for g in gs)
    assert any(g.pad_h > 0 or g.pad_w > 0 for g in gs)
    assert any(g.r != g.s for g in gs) and any(g.h != g.w for g in gs)
    assert {1, 2, 4} <= {g.groups for g in gs}
    assert any(g.n == 1 for g in gs) and any(g.p == 1 and g.q == 1 for g in gs)
    assert len({(g.x_shape, g.w_shape) for g in gs}) == len(gs)


@pytest.mark.parametrize("index", range(len(RANDOM_SHAPES)))
def test_random_shapes(kernel_device, index):
    x_shape, w_shape, stride, padding, groups = RANDOM_SHAPES[index]
    case = Case(x_shape, w_shape, stride, padding, groups, seed=100 + index,
                relu=bool(index % 2), bias=index % 3 != 2)
    check_all(kernel_device, case)


TILE_SHAPES = [RANDOM_SHAPES[i] for i in (1, 3, 4, 6, 10)] + [
    ((2, 12, 13, 13), (20, 6, 3, 3), 1, 1, 2),
    ((1, 3, 35, 35), (16, 3, 11, 11), 4, 0, 1),
]


@pytest.mark.parametrize("tile", conv.CONV_TILES, ids=lambda t: "x".join(map(str, t)))
def test_every_tile(tile):
    """Every instantiation, the GPU tiles included, on shapes that cross its edges."""
    device = require_device("emu")
    for i, (x_shape, w_shape, stride, padding, groups) in enumerate(TILE_SHAPES):
        case = Case(x_shape, w_shape, stride, padding, groups, seed=200 + i, relu=True)
        check_forward(device, case, tile)
        check_backward_data(device, case, tile)
        check_backward_filter(device, case, tile)
        check_backward_filter(device, case, tile, splits=3)


@pytest.mark.parametrize("splits", [1, 2, 5, 1000])
def test_backward_filter_splits(kernel_device, splits):
    """Any split of the N*P*Q reduction gives the same sums (within rounding)."""
    case = Case((3, 4, 15, 14), (10, 4, 3, 3), 1, 1, 1, seed=7)
    check_backward_filter(kernel_device, case, splits=splits)


BIAS_THREADS = 256


def _bias_bound(dy, splits):
    """A worst-case bound on the bias gradient's rounding error for its summation order
    (ops/conv.py, kernels/conv_backward_filter.cu): each thread adds at most
    ceil(count / THREADS) terms serially, a tree of log2(THREADS) levels adds the threads,
    conv_split_sum adds the splits: |err| <= (terms + 8 + splits) * u * sum |dy|, with
    u = 2^-24, per channel (Higham's bound for a sum evaluated in that order, first
    order in u)."""
    n, k, p, q = dy.shape
    images = -(-n // splits)
    terms = -(-images * p * q // BIAS_THREADS)
    return (terms + 8 + splits) * 2.0**-24 * np.abs(dy.astype(np.float64)).sum(axis=(0, 2, 3))


@pytest.mark.parametrize("splits", [1, 2, 3, 7, 100])
@pytest.mark.parametrize("shape", [(7, 5, 13, 13), (3, 2, 1, 1), (4, 3, 40, 31), (9, 300, 2, 3)])
def test_bias_gradient_splits(kernel_device, splits, shape):
    """Any split of the images (more splits than images included; PQ of 1, 169, odd
    sizes) is within the worst-case rounding bound of the float64 sum, on data of a wide
    dynamic range with cancellation."""
    rng = np.random.default_rng(sum(shape) + splits)
    dy = (rng.standard_normal(shape) * 10.0 ** rng.integers(-3, 4, shape)).astype(np.float32)
    g = conv.geometry((shape[0], 1, shape[2], shape[3]), (shape[1], 1, 1, 1))
    d = kernel_device
    db = d.to_numpy(conv.backward_bias(d, g, d.asarray(dy), splits=splits))
    want = dy.astype(np.float64).sum(axis=(0, 2, 3))
    err = np.abs(db.astype(np.float64) - want)
    assert db.dtype == np.float32 and (err <= _bias_bound(dy, min(splits, shape[0]))).all()


def test_bias_gradient_is_deterministic_under_every_schedule():
    """Two-level sums in a fixed order: the same bits in every emu check mode and order,
    with uncleared workspace filled with 0x7f bytes."""
    from convnet.backend import emu
    device = require_device("emu")
    dy = np.random.default_rng(3).standard_normal((6, 7, 9, 11)).astype(np.float32)
    g = conv.geometry((6, 1, 9, 11), (7, 1, 1, 1))
    plain = [conv.backward_bias(device, g, dy, splits=s) for s in (1, 4)]
    modes = [dict(schedule="reverse", fill_shared=True), dict(check="race", schedule="random",
             seed=5), dict(check="init", fill_empty=True), dict(check="bounds"),
             dict(check="align")]
    for mode in modes:
        with emu.debug(**mode):
            for s, want in zip((1, 4), plain):
                got = conv.backward_bias(device, g, dy, splits=s)
                assert np.array_equal(got, want), f"splits {s} under {mode}"


def test_bias_launches():
    gpu, emu_ = _device("cuda", 132), _device("emu", 2)
    g1 = conv.geometry((128, 3, 227, 227), (96, 3, 11, 11), 4, 0, 1)
    splits = conv.bias_splits(gpu, g1)
    assert 96 * splits >= 4 * 132 and splits <= 128
    dy, db = np.zeros(g1.y_shape, np.float32), np.zeros(96, np.float32)
    first, second = conv.backward_bias_launches(gpu, g1, dy, db, splits,
                                                np.zeros(96 * splits, np.float32))
    assert first.grid == (96, splits, 1) and first.name == "conv_bias_grad<256>"
    assert second.name == "conv_split_sum" and second.args[1] is db
    assert conv.bias_splits(emu_, g1) == 1
    (only,) = conv.backward_bias_launches(emu_, g1, dy, db)
    assert only.grid == (96, 1, 1) and only.args[1] is db
    with pytest.raises(LaunchError, match="workspace"):
        conv.backward_bias_launches(gpu, g1, dy, db, splits)
    g5 = conv.geometry((128, 384, 13, 13), (256, 192, 3, 3), 1, 1, 2)
    assert 256 * conv.bias_splits(gpu, g5) >= 4 * 132


def test_misaligned_operands():
    """Views that start off a 16-byte boundary: the dense loader leaves float4 loads."""
    device = require_device("emu")
    case = Case((2, 8, 9, 9), (16, 8, 2, 2), 1, 1, 1, seed=8)  # C*R*S = 32: float4 rows
    views = {}
    for name in ("x", "w", "b", "dy"):
        a = getattr(case, name)
        base = np.empty(a.size + 1, np.float32)
        base[1:] = a.reshape(-1)
        views[name] = base[1:].reshape(a.shape)
        assert views[name].ctypes.data % 16 != 0
    g = case.g
    y = conv.forward(device, g, views["x"], views["w"], views["b"])
    np.testing.assert_array_equal(y, conv.forward(device, g, case.x, case.w, case.b))
    dx = conv.backward_data(device, g, views["dy"], views["w"])
    np.testing.assert_array_equal(dx, conv.backward_data(device, g, case.dy, case.w))
    dw = conv.backward_filter(device, g, views["x"], views["dy"])
    np.testing.assert_array_equal(dw, conv.backward_filter(device, g, case.x, case.dy))
    check_forward(device, case)


def test_strided_inputs_are_made_contiguous(kernel_device):
    case = Case((2, 3, 10, 10), (4, 3, 3, 3), 1, 1, 1, seed=9)
    d = kernel_device
    wide = np.zeros((2, 6, 10, 10), np.float32)
    wide[:, ::2] = case.x
    x = d.asarray(wide)[:, ::2]
    assert not x.flags.c_contiguous
    y = d.to_numpy(conv.forward(d, case.g, x, d.asarray(case.w), d.asarray(case.b)))
    np.testing.assert_array_equal(
        y, d.to_numpy(conv.forward(d, case.g, d.asarray(case.x), d.asarray(case.w),
                                   d.asarray(case.b))))


def test_relu_epilogue_special_values(kernel_device):
    """NaN propagates through the fused ReLU; negative results and -0.0 become +0.0."""
    d = kernel_device
    x = np.zeros((1, 1, 3, 3), np.float32)
    x[0, 0, 1, 1] = np.nan
    x[0, 0, 0, 0] = -2.0
    w = np.ones((2, 1, 1, 1), np.float32)
    w[1] = -0.0
    b = np.array([0.0, -0.0], np.float32)
    g = conv.geometry(x.shape, w.shape)
    y = d.to_numpy(conv.forward(d, g, d.asarray(x), d.asarray(w), d.asarray(b), relu=True))
    ref = conv.forward_reference(g, x, w, b, relu=True)
    assert np.isnan(y[0, :, 1, 1]).all() and np.isnan(ref[0, :, 1, 1]).all()
    finite = ~np.isnan(ref)
    assert np.array_equal(y[finite].view(np.uint32), ref[finite].view(np.uint32))
    assert not np.signbit(y[finite]).any()


# --------------------------------------------------------------------------- the emulator's checks

SCHEDULE_SHAPES = [
    ((2, 6, 11, 9), (10, 3, 3, 2), (2, 1), (1, 0), 2),
    ((1, 3, 19, 19), (8, 3, 5, 5), 3, 2, 1),
]


@pytest.mark.parametrize("tile", conv.TILES, ids=lambda t: "x".join(map(str, t)))
def test_schedule_order_does_not_matter(tile):
    """Reversed threads and blocks give bit-identical results: no races, and backward
    filter's split sums are added in a fixed order (no atomics)."""
    from convnet.backend import emu
    device = require_device("emu")
    for i, shape in enumerate(SCHEDULE_SHAPES):
        case = Case(*shape, seed=300 + i, relu=True)

        def run():
            g = case.g
            return (conv.forward(device, g, case.x, case.w, case.b, relu=True, tile=tile),
                    conv.backward_data(device, g, case.dy, case.w, tile=tile),
                    conv.backward_filter(device, g, case.x, case.dy, tile=tile, splits=4),
                    conv.backward_bias(device, g, case.dy))

        forward = run()
        with emu.debug(schedule="reverse"):
            reverse = run()
        for a, b, what in zip(forward, reverse, ("forward", "data", "filter", "bias")):
            assert np.array_equal(a, b), f"{what} of {case} depends on the schedule"


BOUNDS_SHAPES = [
    ((1, 3, 9, 8), (5, 3, 3, 2), 2, 1, 1),
    ((2, 4, 6, 6), (6, 2, 1, 3), (1, 3), (0, 1), 2),
]


@pytest.mark.parametrize("tile", conv.TILES, ids=lambda t: "x".join(map(str, t)))
def test_bounds_checked_build(tile):
    """Index checks on every fixed-size array, NaN-filled shared memory and the reversed
    schedule: all three kernels (and the bias and split-sum kernels) stay in bounds and
    never read shared memory they did not write."""
    from convnet.backend import emu
    device = require_device("emu")
    with emu.debug(check="bounds", fill_shared=True, schedule="reverse"):
        for i, shape in enumerate(BOUNDS_SHAPES):
            case = Case(*shape, seed=400 + i, relu=True)
            check_forward(device, case, tile)
            check_backward_data(device, case, tile)
            check_backward_filter(device, case, tile, splits=2)
            check_backward_bias(device, case)


_ASAN_SCRIPT = textwrap.dedent("""
    import numpy as np
    import convnet
    from convnet.backend import emu
    from convnet.ops import conv
    device = convnet.get_device("emu")
    shapes = [((1, 3, 7, 6), (4, 3, 3, 3), 1, 1, 1), ((2, 4, 5, 9), (6, 2, 2, 4), (2, 3), (1, 2), 2),
              ((1, 2, 3, 3), (3, 2, 3, 3), 1, 0, 1), ((1, 1, 8, 8), (2, 1, 1, 1), 5, 0, 1)]

    def tight(a):  # a view ending exactly at the end of its allocation, off 16 bytes
        base = np.empty(a.size + 1, np.float32)
        base[1:] = a.reshape(-1)
        return base[1:].reshape(a.shape)

    rng = np.random.default_rng(0)
    for tile in conv.TILES:
        for xs, ws, st, pad, gr in shapes:
            x = tight(rng.standard_normal(xs).astype(np.float32))
            w = tight(rng.standard_normal(ws).astype(np.float32))
            b = tight(rng.standard_normal(ws[0]).astype(np.float32))
            g = conv.geometry(xs, ws, st, pad, gr)
            dy = tight(rng.standard_normal(g.y_shape).astype(np.float32))
            with emu.debug(check="address"):
                y = conv.forward(device, g, x, w, b, relu=True, tile=tile)
                dx = conv.backward_data(device, g, dy, w, tile=tile)
                dw = conv.backward_filter(device, g, x, dy, tile=tile, splits=2)
                db = conv.backward_bias(device, g, dy)
            ref = conv.forward_reference(g, x.astype(np.float64), w.astype(np.float64),
                                         b.astype(np.float64), relu=True)
            assert np.allclose(y, ref, rtol=1e-4, atol=1e-4)
            assert np.allclose(dx, conv.backward_data_reference(g, dy, w), rtol=1e-4, atol=1e-4)
            assert np.allclose(dw, conv.backward_filter_reference(g, x, dy), rtol=1e-4, atol=1e-4)
            assert np.allclose(db, dy.sum(axis=(0, 2, 3)), rtol=1e-4, atol=1e-4)
    print("CLEAN")
""")


def test_kernels_under_address_sanitizer():
    """No global-memory access outside x, w, b, dy or the outputs, for every tile, with
    operands that end exactly at their allocation's end."""
    run_clean_under_asan(_ASAN_SCRIPT, timeout=600)


# --------------------------------------------------------------------------- the reference

@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("shape", [
    ((2, 4, 5, 6), (4, 2, 3, 2), (2, 1), (1, 0), 2),
    ((1, 3, 4, 4), (2, 3, 2, 3), 3, 2, 1),
], ids=["groups2", "stride3-pad2"])
def test_reference_against_finite_differences(shape, relu):
    x_shape, w_shape, stride, padding, groups = shape
    rng = np.random.default_rng(12)
    x = convnet.tensor(rng.standard_normal(x_shape), requires_grad=True)
    w = convnet.tensor(rng.standard_normal(w_shape), requires_grad=True)
    b = convnet.tensor(rng.standard_normal(w_shape[0]), requires_grad=True)
    r = convnet.tensor(rng.standard_normal(conv.geometry(*shape).y_shape))

    def loss():
        return (F.conv2d(x, w, b, stride, padding, groups, relu=relu) * r).sum()

    check_grads(loss, [x, w, b])


def test_reference_matches_a_direct_loop():
    """The im2col reference against the definition, summed term by term."""
    rng = np.random.default_rng(13)
    x = rng.standard_normal((2, 4, 6, 7))
    w = rng.standard_normal((6, 2, 3, 2))
    b = rng.standard_normal(6)
    sh, sw, ph, pw, groups = 2, 3, 1, 2, 2
    g = conv.geometry(x.shape, w.shape, (sh, sw), (ph, pw), groups)
    y = conv.forward_reference(g, x, w, b)
    want = np.zeros(g.y_shape)
    for n in range(g.n):
        for k in range(g.k):
            grp = k // g.kg
            for p in range(g.p):
                for q in range(g.q):
                    total = b[k]
                    for c in range(g.cg):
                        for r in range(g.r):
                            for s in range(g.s):
                                h, v = p * sh - ph + r, q * sw - pw + s
                                if 0 <= h < g.h and 0 <= v < g.w:
                                    total += w[k, c, r, s] * x[n, grp * g.cg + c, h, v]
                    want[n, k, p, q] = total
    np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)


def test_cpu_keeps_the_dtype():
    case = Case((1, 2, 5, 5), (3, 2, 3, 3), 1, 1, 1, seed=14)
    for dtype in (np.float32, np.float64):
        x, w, b = case.x.astype(dtype), case.w.astype(dtype), case.b.astype(dtype)
        g = conv.geometry(x.shape, w.shape, 1, 1)
        y = conv.forward(CPU, g, x, w, b)
        assert y.dtype == dtype
        assert conv.backward_data(CPU, g, y, w).dtype == dtype
        assert conv.backward_filter(CPU, g, x, y).dtype == dtype
        assert conv.backward_bias(CPU, g, y).dtype == dtype


# --------------------------------------------------------------------------- autograd

@pytest.mark.parametrize("bias", [True, False])
def test_autograd_on_every_device(device, bias):
    case = Case((2, 4, 9, 8), (6, 2, 3, 3), 2, 1, 2, seed=15, bias=bias, relu=True)
    x = convnet.tensor(case.x, device=device, requires_grad=True)
    w = convnet.tensor(case.w, device=device, requires_grad=True)
    b = convnet.tensor(case.b, device=device, requires_grad=True) if bias else None
    y = F.conv2d(x, w, b, stride=2, padding=1, groups=2, relu=True)
    assert y.device == device and y.shape == case.g.y_shape and y.requires_grad
    y.backward(convnet.tensor(case.dy, device=device))

    y64 = conv.forward_reference(case.g, _f64(case.x), _f64(case.w), _f64(case.b), relu=True)
    g = np.where(y64 > 0, case.dy.astype(np.float64), 0.0)
    dx = conv.backward_data_reference(case.g, g, _f64(case.w))
    dw = conv.backward_filter_reference(case.g, _f64(case.x), g)
    np.testing.assert_allclose(y.numpy(), y64, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(x.grad.numpy(), dx, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(w.grad.numpy(), dw, rtol=1e-5, atol=1e-5)
    if bias:
        np.testing.assert_allclose(b.grad.numpy(), g.sum(axis=(0, 2, 3)), rtol=1e-5, atol=1e-5)
    assert x.grad.device == device and w.grad.device == device


def test_backward_runs_only_what_is_needed(kernel_device, monkeypatch):
    """No input gradient for a frozen input (conv1's image), no filter gradient for
    frozen weights."""
    case = Case((1, 3, 8, 8), (4, 3, 3, 3), 1, 1, 1, seed=16)
    calls = []
    for name in ("backward_data", "backward_filter", "backward_bias"):
        original = getattr(conv, name)
        monkeypatch.setattr(conv, name,
                            lambda *a, _o=original, _n=name, **k: calls.append(_n) or _o(*a, **k))
    x = convnet.tensor(case.x, device=kernel_device)
    w = convnet.tensor(case.w, device=kernel_device, requires_grad=True)
    b = convnet.tensor(case.b, device=kernel_device, requires_grad=True)
    F.conv2d(x, w, b, padding=1).sum().backward()
    assert sorted(calls) == ["backward_bias", "backward_filter"] and x.grad is None
    calls.clear()
    x.requires_grad = True
    w2 = convnet.tensor(case.w, device=kernel_device)
    F.conv2d(x, w2, padding=1).sum().backward()
    assert calls == ["backward_data"] and w2.grad is None


def test_empty_batch(device):
    x = convnet.tensor(np.zeros((0, 3, 8, 8), np.float32), device=device, requires_grad=True)
    w = convnet.tensor(np.ones((4, 3, 3, 3), np.float32), device=device, requires_grad=True)
    b = convnet.tensor(np.ones(4, np.float32), device=device, requires_grad=True)
    y = F.conv2d(x, w, b, padding=1, relu=True)
    assert y.shape == (0, 4, 8, 8)
    y.backward(np.zeros((0, 4, 8, 8), np.float32))
    assert x.grad.shape == (0, 3, 8, 8)
    np.testing.assert_array_equal(w.grad.numpy(), np.zeros((4, 3, 3, 3)))
    np.testing.assert_array_equal(b.grad.numpy(), np.zeros(4))


# --------------------------------------------------------------------------- launches

def _device(kind, units):
    """What the launch builders read of a device: its kind and parallel units (a GPU
    with 132 SMs needs no GPU here)."""
    return SimpleNamespace(kind=kind, parallel_units=units)


def test_launch_shapes():
    x = np.zeros((8, 96, 27, 27), np.float32)
    w = np.zeros((256, 48, 5, 5), np.float32)
    g = conv.geometry(x.shape, w.shape, 1, 2, 2)
    y = np.zeros(g.y_shape, np.float32)
    gpu = _device("cuda", 132)
    launch = conv.forward_launch(gpu, g, x, w, None, y, relu=True, tile=conv.LARGE)
    assert launch.block == (256, 1, 1)
    assert launch.grid == (-(-8 * 27 * 27 // 128), 1, 2)
    assert launch.args[-2:] == (np.int32(0), np.int32(1)) and launch.args[2] is w  # no bias
    assert launch.name == "conv_forward<128, 128, 16, 8, 8>"
    g4 = conv.geometry((2, 3, 227, 227), (96, 3, 11, 11), 4, 0, 1)
    data = conv.backward_data_launch(gpu, g4, np.zeros(g4.y_shape, np.float32),
                                     np.zeros(g4.w_shape, np.float32),
                                     np.zeros(g4.x_shape, np.float32), tile=conv.SMALL)
    assert data.grid == (-(-2 * 57 * 57 // 32), 1, 16)  # 4x4 stride phases
    for tile in conv.TILES:
        assert all(name in conv.FORWARD.kernels for name in [tile.name("conv_forward")])
    with pytest.raises(LaunchError, match="not instantiated"):
        conv.forward_launch(gpu, g, x, w, None, y, tile=(64, 64, 8, 4, 4))
    # filters past the tap masks' 15x16 run the wide kernels, on their tiles only
    gw = conv.geometry((2, 3, 40, 40), (8, 3, 16, 5), 1, 0, 1)
    xw, ww, yw = (np.zeros(shape, np.float32) for shape in (gw.x_shape, gw.w_shape, gw.y_shape))
    assert conv.forward_launch(gpu, gw, xw, ww, None, yw).name.startswith("conv_forward_wide<")
    data = conv.backward_data_launch(gpu, gw, yw, ww, xw)
    assert data.name.startswith("conv_backward_data_wide<")
    with pytest.raises(LaunchError, match="at most 15x16 taps"):
        conv.forward_launch(gpu, gw, xw, ww, None, yw, tile=conv.MEDIUM)
    g2 = conv.geometry((2, 3, 40, 40), (8, 3, 16, 5), 2, 0, 1)  # phases of 8 rows: tap masks
    assert conv.backward_data_launch(gpu, g2, np.zeros(g2.y_shape, np.float32), ww,
                                     xw).name.startswith("conv_backward_data<")
    # backward filter: paddings past its edge words' 7 output rows a side run its wide kernel
    for pad, name in [((8, 15), "conv_backward_filter_wide<"), ((15, 14), "conv_backward_filter<")]:
        gp = conv.geometry((1, 2, 5, 6), (3, 2, 3, 4), (1, 2) if pad[0] == 8 else (3, 2), pad)
        plan = conv.plan_filter(gpu, gp, splits=1)
        xp, dyp, dwp = (np.zeros(shape, np.float32) for shape in (gp.x_shape, gp.y_shape, gp.w_shape))
        launch = conv.backward_filter_launches(gpu, gp, xp, dyp, dwp, plan)[0]
        assert launch.name.startswith(name), (pad, launch.name)
    assert plan.tile in conv.CONV_TILES
    with pytest.raises(LaunchError, match="at most 7 output rows"):
        conv.plan_filter(gpu, conv.geometry((1, 2, 5, 6), (3, 2, 3, 4), 1, 8), tile=conv.MEDIUM)


def test_filter_plan():
    g = conv.geometry((128, 3, 227, 227), (96, 3, 11, 11), 4, 0, 1)
    plan = conv.plan_filter(_device("cuda", 132), g)
    npq = 128 * 55 * 55
    assert plan.tile in conv.TILES and plan.chunk % plan.tile.bk == 0
    assert plan.splits > 1 and (plan.splits - 1) * plan.chunk < npq <= plan.splits * plan.chunk
    assert plan.workspace_size(g) == plan.splits * 96 * 363
    emu = _device("emu", 2)
    one = conv.plan_filter(emu, conv.geometry((1, 2, 4, 4), (2, 2, 3, 3)))
    assert one.splits == 1 and one.workspace_size(conv.geometry((1, 2, 4, 4), (2, 2, 3, 3))) == 0
    assert conv.plan_filter(emu, g, splits=7).splits == 7
    with pytest.raises(ValueError, match="splits"):
        conv.plan_filter(emu, g, splits=0)


def test_filter_plan_ends_in_whole_waves():
    """On a GPU the split fills the last wave of resident blocks: conv1 (ROWS96, two
    blocks an SM, 3 blocks a split) and conv2 (groups 2) at batch 128 on 132 SMs."""
    gpu = _device("cuda", 132)
    for x, w, stride, pad, groups in [((128, 3, 227, 227), (96, 3, 11, 11), 4, 0, 1),
                                      ((128, 96, 27, 27), (256, 48, 5, 5), 1, 2, 2)]:
        g = conv.geometry(x, w, stride, pad, groups)
        plan = conv.plan_filter(gpu, g)
        per_split = -(-g.kg // plan.tile.bm) * -(-g.cg * g.r * g.s // plan.tile.bn) * groups
        slots = 132 * conv.resident_blocks(gpu, plan.tile, "conv_backward_filter")
        waves = per_split * plan.splits / slots
        assert waves >= 1 and waves / -(-waves // 1) >= 0.9, (plan, waves)
    # fewer blocks than slots count as that share of a wave; ties: fewer splits
    assert conv.whole_wave_splits(3, 264, 387200, 24, 504) == 88
    assert conv.whole_wave_splits(20, 132, 93312, 16, 182) % 33 == 0


def test_choose_tile():
    emu, gpu = _device("emu", 2), _device("cuda", 132)
    assert conv.choose_tile(emu, 256, 10000) == conv.EMU
    assert conv.choose_tile(emu, 3, 10000) == conv.THIN
    assert conv.choose_tile(emu, 3, 20) == conv.SMALL
    # AlexNet at batch 128 on 132 SMs: conv3 forward, conv1 forward, conv2 backward data
    # (48 input channels per group), conv1 backward data (3 channels, 16 stride phases)
    assert conv.choose_tile(gpu, 384, 128 * 169, 1, "conv_forward") == conv.LARGE
    assert conv.choose_tile(gpu, 96, 128 * 55 * 55, 1, "conv_forward") == conv.ROWS96  # no waste
    assert conv.choose_tile(gpu, 48, 128 * 27 * 27, 2, "conv_backward_data") == conv.ROWS48
    assert conv.choose_tile(gpu, 256, 128 * 169, 1, "conv_backward_data") == conv.MEDIUM
    assert conv.choose_tile(gpu, 48, 128 * 27 * 27, 2) in conv.TILES  # not a direct kernel
    assert conv.choose_tile(gpu, 3, 128 * 57 * 57, 16, "conv_backward_data") == conv.THIN
    # conv2 backward filter: the 128x128 tile's one block of 8 warps an SM hides latency
    # worse (0.75) than the 64x128 tile's three of 4
    assert conv.choose_tile(gpu, 128, 1200, 2 * 364, "conv_backward_filter") == conv.MEDIUM
    assert conv.choose_tile(gpu, 128, 1200, 2 * 364) == conv.LARGE  # no kernel: rates only


def test_32_bit_limits():
    big = conv.geometry((1, 1, 50000, 50000), (1, 1, 1, 1))
    with pytest.raises(ValueError, match="32-bit"):
        conv.check_kernel_sizes(big)
    conv.check_kernel_sizes(conv.geometry((128, 3, 227, 227), (96, 3, 11, 11), 4))
    wide = conv.geometry((64, 4096, 8, 8), (4096, 4096, 3, 3), 1, 1)
    conv.check_kernel_sizes(wide)
    with pytest.raises(ValueError, match="32-bit"):  # 16 splits of 4096 x 36864 partial sums
        conv.plan_filter(_device("emu", 2), wide, splits=16)


# --------------------------------------------------------------------------- errors

def _tensors(device, x_shape=(2, 4, 8, 8), w_shape=(6, 2, 3, 3), b_shape=(6,),
             dtype=np.float32):
    x = convnet.tensor(np.ones(x_shape, dtype), device=device)
    w = convnet.tensor(np.ones(w_shape, dtype), device=device)
    b = convnet.tensor(np.ones(b_shape, dtype), device=device) if b_shape else None
    return x, w, b


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(w_shape=(6, 3, 3, 3)), ValueError, "x has 4 channels.*expects 6"),
    (dict(w_shape=(6, 4, 3, 3)), ValueError, "expects 8 input channels"),
    (dict(groups=3, w_shape=(6, 1, 3, 3)), ValueError, "groups=3 does not divide the 4 input"),
    (dict(groups=4, w_shape=(6, 1, 3, 3)), ValueError, "groups=4 does not divide the 6 output"),
    (dict(w_shape=(6, 4, 9, 3), groups=1), ValueError, "kernel is larger than the padded input"),
    (dict(w_shape=(6, 4, 11, 11), groups=1, padding=1), ValueError, "larger than the padded"),
    (dict(x_shape=(4, 8, 8), groups=1, w_shape=(6, 4, 3, 3)), ValueError, "x must be 4-D"),
    (dict(w_shape=(6, 2, 3)), ValueError, "w must be 4-D"),
    (dict(b_shape=(5,)), ValueError, r"bias must have shape \(6,\)"),
    (dict(b_shape=(6, 1)), ValueError, r"bias must have shape \(6,\)"),
    (dict(stride=0), ValueError, "stride must be positive"),
    (dict(stride=(1, -2)), ValueError, "stride must be positive"),
    (dict(stride=(1, 2, 3)), ValueError, "stride must be an int or a pair"),
    (dict(stride=1.5), TypeError, "stride must be an int"),
    (dict(padding=-1), ValueError, "padding must be non-negative"),
    (dict(padding=(0, -1)), ValueError, "padding must be non-negative"),
    (dict(padding=True), TypeError, "padding must be an int"),
    (dict(groups=0), ValueError, "groups must be an integer >= 1"),
    (dict(groups=2.0), TypeError, "groups must be an int"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_bad_arguments(device, kwargs, error, match):
    kwargs = dict(kwargs)
    shapes = {k: kwargs.pop(k) for k in ("x_shape", "w_shape", "b_shape") if k in kwargs}
    x, w, b = _tensors(device, **shapes)
    args = dict(stride=1, padding=0, groups=2)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        F.conv2d(x, w, b, **args)


def test_bad_dtypes(device):
    x, w, b = _tensors(device)
    xi = convnet.tensor(np.ones((2, 4, 8, 8), np.int32), device=device)
    with pytest.raises(TypeError, match="input must be floating point, not int32"):
        F.conv2d(xi, w, b, groups=2)
    x64, w64, b64 = _tensors(device, dtype=np.float64)
    with pytest.raises(TypeError, match="share one dtype, got x float32, w float64"):
        F.conv2d(x, w64, b, groups=2)
    if device.runs_kernels:
        with pytest.raises(TypeError, match="kernels take float32.*float64"):
            F.conv2d(x64, w64, b64, groups=2)
    else:
        assert F.conv2d(x64, w64, b64, groups=2).dtype == np.float64
    with pytest.raises(TypeError, match="expected a convnet.Tensor"):
        F.conv2d(x.numpy(), w, b, groups=2)


def test_bad_gradients_and_devices(kernel_device):
    case = Case((1, 2, 5, 5), (3, 2, 3, 3), seed=17)
    d = kernel_device
    with pytest.raises(ValueError, match=r"output gradient dy must have shape \(1, 3, 3, 3\)"):
        conv.backward_data(d, case.g, d.asarray(np.ones((1, 3, 4, 4), np.float32)),
                           d.asarray(case.w))
    with pytest.raises(ValueError, match="output gradient dy must have shape"):
        conv.backward_filter(d, case.g, d.asarray(case.x),
                             d.asarray(np.ones((1, 3, 2, 2), np.float32)))
    with pytest.raises(ValueError, match=r"output gradient dy must have shape .*got \(3, 3\)"):
        conv.backward_bias(d, case.g, d.asarray(np.ones((3, 3), np.float32)))
    x = convnet.tensor(case.x, device=d)
    w = convnet.tensor(case.w)
    with pytest.raises(convnet.DeviceError, match="different devices"):
        F.conv2d(x, w)
