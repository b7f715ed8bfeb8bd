"""Tensor-core convolution forward (issue 12): kernels/conv_tc_forward.cu on emu
against a NumPy model of its exact arithmetic (operands rounded to TF32/BF16, exact
products, FP32 sums in (c, r, s) order, then the bias and ReLU) bit for bit, and
against the float64 convolution of the rounded operands within
``ops.conv_tc.error_bound`` ((Cg*R*S + 1) u sum |w||x| + |b|, u = 2^-24); the
rounding is real (the FP32 result is outside that bound somewhere); awkward shapes
(groups, strides, padding, partial tiles, several K-slices and blocks); clean under
the race, init and align checks; the precision argument and default; NVRTC."""
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
    (3, 5, 6, 5, 70, 1, 1, 1, 0, 1),    # K past one 64-row tile, 1x1
    (2, 6, 11, 10, 8, 3, 3, (2, 1), (0, 1), 2),
    (1, 7, 12, 12, 9, 4, 3, 3, (1, 2), 1),  # 84 kk: 6 slices, 3-stage ring wraps
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


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
@pytest.mark.parametrize("index", range(len(SHAPES)))
def test_kernel_equals_the_model_and_the_bound(device, precision, index):
    g, x, w, b = data(SHAPES[index], index)
    relu = index % 2 == 0
    y = conv_tc.forward(device, g, x, w, b, relu, precision)
    np.testing.assert_array_equal(y, model(g, x, w, b, relu, precision))
    exact = conv_tc.forward_reference(g, x.astype(np.float64), w.astype(np.float64),
                                      b.astype(np.float64), relu, precision)
    bound = conv_tc.error_bound(g, x, w, b, precision)
    assert (np.abs(y - exact) <= bound).all()
    # the operands really are rounded: FP32 operands give results outside the bound
    fp32 = conv_ops.forward_reference(g, x.astype(np.float64), w.astype(np.float64),
                                      b.astype(np.float64), relu)
    assert (np.abs(y - fp32) > bound).any()


def test_cpu_reference_agrees_within_the_bound():
    g, x, w, b = data(SHAPES[2], 9)
    cpu = convnet.get_device("cpu")
    for precision in ("tf32", "bf16"):
        y = conv_tc.forward(cpu, g, x, w, b, True, precision)
        exact = conv_tc.forward_reference(g, x.astype(np.float64), w.astype(np.float64),
                                          b.astype(np.float64), True, precision)
        assert (np.abs(y - exact) <= conv_tc.error_bound(g, x, w, b, precision)).all()


@pytest.mark.parametrize("check", ["race", "init", "align"])
def test_kernel_is_clean_under_the_checks(device, check):
    g, x, w, b = data(SHAPES[5], 3)
    want = model(g, x, w, b, True, "tf32")
    with emu.debug(check=check):
        y = conv_tc.forward(device, g, x, w, b, True, "tf32")
    np.testing.assert_array_equal(y, want)


def test_no_bias_and_bad_precision(device):
    g, x, w, b = data(SHAPES[1], 4)
    y = conv_tc.forward(device, g, x, w, None, False, "bf16")
    np.testing.assert_array_equal(y, model(g, x, w, np.zeros_like(b), False, "bf16"))
    with pytest.raises(ValueError, match="'tf32' or 'bf16'"):
        conv_tc.forward(device, g, x, w, b, False, "fp32")
    with pytest.raises(ValueError, match="precision must be one of"):
        conv_tc.forward(device, g, x, w, b, False, "fp16")
