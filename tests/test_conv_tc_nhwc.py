"""The channels-last tensor-core convolution (issue 12): kernels/conv_tc_forward_nhwc.cu
with the layout kernels before it (x or dy to channels last, the filter transposed or
flipped, each rounded to the precision) on emu against a NumPy model of its exact
arithmetic bit for bit (operands rounded to TF32/BF16, exact products, FP32 sums over
kk = (r, s, c) ascending, c fastest, then the bias and ReLU), and against the float64
result of the rounded operands within ``ops.conv_tc.error_bound``; forward at any
stride, backward data at unit stride as the forward convolution of dy with the
flipped filter; the small form (one group of at most 4 channels, padded to 4, a copy a
pixel: 16 bytes TF32, 8 BF16; AlexNet's conv1); every tile; groups, padding, partial tiles; the layout
rule and its errors; clean under the race, init and align checks. The warpgroup engine
(kernels/conv_tc_forward_wgmma.cu: the same body by Hopper's wgmma, conv_tc.WGMMA_TILES)
gives the same bits on every shape and tile, and is clean under the checks too."""
from __future__ import annotations

import numpy as np
import pytest

from convnet.backend import emu
from convnet.ops import conv as conv_ops
from convnet.ops import conv_tc
from convnet.precision import round_operand
from test_conv_tc import data as shape_data

pytestmark = pytest.mark.skipif(not emu.available(), reason="emu runtime not built")

# (N, C, H, W, K, R, S, stride, pad, groups): Cg or Kg a multiple of 16
SHAPES = [
    (1, 16, 5, 5, 3, 3, 3, 1, 1, 1),             # one output channel short of nothing
    (2, 32, 6, 5, 32, 2, 3, 1, (1, 2), 2),       # groups; data: Kg = 16, asymmetric pad
    (1, 16, 7, 6, 130, 1, 1, 1, 0, 1),           # K past a 128-row tile, 1x1
    (3, 16, 9, 8, 16, 3, 3, (2, 1), (0, 1), 1),  # strided forward; columns past a tile
    # the small form (one group of at most 4 channels, padded to 4: one copy a pixel)
    (2, 3, 19, 17, 8, 11, 11, 4, 2, 1),          # conv1-like: 121 taps, the last slice short
    (1, 1, 6, 7, 130, 2, 3, 1, (1, 0), 1),       # one channel, K past a 128-row tile
    (3, 4, 5, 5, 5, 1, 1, 1, 0, 1),              # 1x1: more taps a slice than the filter has
    (1, 2, 9, 9, 3, 3, 2, (1, 2), 1, 1),
]


@pytest.fixture(scope="module")
def device():
    return emu.EmuDevice()


def data(shape, seed):
    """test_conv_tc's operands, and a dy of the output's shape."""
    g, x, wt, b = shape_data(shape, seed)
    dy = np.random.default_rng(seed + 1000).standard_normal(g.y_shape).astype(np.float32)
    return g, x, wt, b, dy


def model(g, x, w, b, relu, precision):
    """The kernel's arithmetic: FP32 sums of exact products of rounded operands over
    kk = (r, s, c) ascending, then the bias and ReLU (NaN kept)."""
    xr = np.pad(round_operand(x, precision), ((0, 0), (0, 0), (g.pad_h, g.pad_h), (g.pad_w, g.pad_w)))
    wr = round_operand(w, precision)
    acc = np.zeros(g.y_shape, np.float32)
    ph, pw = (g.p - 1) * g.stride_h + 1, (g.q - 1) * g.stride_w + 1
    for r in range(g.r):
        for s in range(g.s):
            for c in range(g.cg):
                xs = xr[:, c::g.cg][:, :, r:r + ph:g.stride_h, s:s + pw:g.stride_w]   # n, groups, p, q
                xs = np.repeat(xs, g.kg, axis=1)                                      # n, k, p, q
                acc = (acc + wr[None, :, c, r, s, None, None] * xs).astype(np.float32)
    y = acc if b is None else (acc + b.reshape(1, -1, 1, 1)).astype(np.float32)
    return np.where((y > 0) | np.isnan(y), y, np.float32(0)) if relu else y


def flipped(g, w):
    """The filter of backward data as a forward convolution: (C, Kg, R, S), per group
    wd[g*Cg + c][k] = w[g*Kg + k][c] rotated by 180 degrees."""
    per = w.reshape(g.groups, g.kg, g.cg, g.r, g.s)[..., ::-1, ::-1]
    return np.ascontiguousarray(per.transpose(0, 2, 1, 3, 4)).reshape(g.c, g.kg, g.r, g.s)


def model_data(g, dy, w, precision):
    return model(conv_tc.data_geometry(g), dy, flipped(g, w), None, False, precision)


def magnitude(g, x, w, b, precision):
    xa, wa = (np.abs(round_operand(a, precision)).astype(np.float64) for a in (x, w))
    return conv_ops.forward_reference(g, xa, wa, None if b is None else np.abs(b).astype(np.float64))


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
@pytest.mark.parametrize("index", range(len(SHAPES)))
def test_forward_equals_the_model_and_the_bound(device, precision, index):
    g, x, w, b, _ = data(SHAPES[index], index)
    assert conv_tc.channels_last(g, "forward")
    tile = conv_tc.TILES[index % len(conv_tc.TILES)]
    relu = index % 2 == 0
    y = conv_tc.forward(device, g, x, w, b, relu, precision, tile=tile)  # the default layout
    np.testing.assert_array_equal(y, model(g, x, w, b, relu, precision))
    exact = conv_tc.forward_reference(g, x.astype(np.float64), w.astype(np.float64),
                                      b.astype(np.float64), relu, precision)
    bound = conv_tc.error_bound(g.cg * g.r * g.s + 1, magnitude(g, x, w, b, precision))
    assert (np.abs(y - exact) <= bound).all()


# backward data: Kg a multiple of 16, unit stride, padding below the filter
DATA_SHAPES = [
    (1, 5, 5, 5, 16, 3, 3, 1, 1, 1),
    (2, 32, 6, 5, 32, 2, 3, 1, (1, 2), 2),       # groups (Cg = Kg = 16), asymmetric pad
    (1, 3, 7, 6, 128, 1, 1, 1, 0, 1),            # 1x1, 128 channels reduced
]


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
@pytest.mark.parametrize("index", range(len(DATA_SHAPES)))
def test_backward_data_equals_the_model_and_the_bound(device, precision, index):
    shape = DATA_SHAPES[index]
    g, x, w, b, dy = data(shape, 10 + index)
    assert conv_tc.channels_last(g, "data")
    tile = conv_tc.TILES[(index + 1) % len(conv_tc.TILES)]
    dx = conv_tc.backward_data(device, g, dy, w, precision, tile=tile)
    np.testing.assert_array_equal(dx, model_data(g, dy, w, precision))
    exact = conv_tc.backward_data_reference(g, dy.astype(np.float64), w.astype(np.float64), precision)
    dya, wa = (np.abs(round_operand(a, precision)).astype(np.float64) for a in (dy, w))
    bound = conv_tc.error_bound(g.kg * g.r * g.s, conv_ops.backward_data_reference(g, dya, wa))
    assert (np.abs(dx - exact) <= bound).all()


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
@pytest.mark.parametrize("index", range(len(SHAPES) + len(DATA_SHAPES)))
def test_the_warpgroup_engine_gives_the_same_bits(device, precision, index):
    tile = conv_tc.WGMMA_TILES[index % len(conv_tc.WGMMA_TILES)]
    if index < len(SHAPES):
        g, x, w, b, _ = data(SHAPES[index], index)
        y = conv_tc.forward(device, g, x, w, b, index % 2 == 0, precision, tile=tile)
        np.testing.assert_array_equal(y, model(g, x, w, b, index % 2 == 0, precision))
    else:
        g, x, w, b, dy = data(DATA_SHAPES[index - len(SHAPES)], 10 + index)
        dx = conv_tc.backward_data(device, g, dy, w, precision, tile=tile)
        np.testing.assert_array_equal(dx, model_data(g, dy, w, precision))


@pytest.mark.parametrize("check", ["race", "init", "align"])
def test_the_warpgroup_engine_is_clean_under_the_checks(device, check):
    g, x, w, b, dy = data(SHAPES[1], 7)
    small = data(SHAPES[7], 8)   # the small form
    want = (model(g, x, w, b, True, "tf32"), model_data(g, dy, w, "bf16"), model(*small[:4], True, "bf16"))
    with emu.debug(check=check):
        y = conv_tc.forward(device, g, x, w, b, True, "tf32", tile=(128, 96, "wgmma"))
        dx = conv_tc.backward_data(device, g, dy, w, "bf16", tile=(64, 128, "wgmma"))
        ysb = conv_tc.forward(device, *small[:4], True, "bf16", tile=(128, 128, "wgmma"))  # 8-byte copies
    np.testing.assert_array_equal(y, want[0])
    np.testing.assert_array_equal(dx, want[1])
    np.testing.assert_array_equal(ysb, want[2])


def test_warpgroup_tiles_and_their_shared_memory():
    assert conv_tc.wgmma_shared_bytes("tf32", (128, 128)) == 72 * 1024   # the kernel's comment
    assert conv_tc.wgmma_shared_bytes("bf16", (128, 128)) == 36 * 1024
    with pytest.raises(ValueError, match="is not instantiated"):
        conv_tc.forward(emu.EmuDevice(), *data(SHAPES[0], 0)[:4], False, "tf32", tile=(128, 64, "wgmma"))


def test_the_layout_rule_and_its_errors(device):
    g, x, w, b, dy = data(SHAPES[3], 5)   # strided: forward channels-last, data not
    assert conv_tc.channels_last(g, "forward") and not conv_tc.channels_last(g, "data")
    # both layouts agree within the bound; each equals its own summation order's model
    nchw = conv_tc.forward(device, g, x, w, b, False, "tf32", layout="nchw")
    nhwc = conv_tc.forward(device, g, x, w, b, False, "tf32")
    np.testing.assert_array_equal(nhwc, model(g, x, w, b, False, "tf32"))
    bound = conv_tc.error_bound(g.cg * g.r * g.s + 1, magnitude(g, x, w, b, "tf32"))
    assert (np.abs(nchw - nhwc) <= 2 * bound).all()
    with pytest.raises(ValueError, match="channels-last tensor-core data pass needs Kg a multiple of 16, unit stride"):
        conv_tc.backward_data(device, g, dy, w, "tf32", layout="nhwc")
    with pytest.raises(ValueError, match="layout must be one of"):
        conv_tc.forward(device, g, x, w, b, False, "tf32", layout="NHWC")
    small = conv_ops.geometry((1, 8, 5, 5), (16, 8, 3, 3), 1, 1, 1)
    assert not conv_tc.channels_last(small, "forward") and conv_tc.channels_last(small, "data")
    padded = conv_ops.geometry((1, 8, 5, 5), (16, 8, 3, 3), 1, 3, 1)   # pad past the filter
    assert not conv_tc.channels_last(padded, "data")
    # AlexNet's conv1: forward's small form by default; backward filter can run
    # channels-last with padded channels, but runs NCHW unless asked (its layouts cost
    # more than they save)
    conv1 = conv_ops.geometry((128, 3, 224, 224), (96, 3, 11, 11), 4, 2, 1)
    assert conv_tc.prefers_channels_last(conv1, "forward")
    assert conv_tc.channels_last(conv1, "filter") and not conv_tc.prefers_channels_last(conv1, "filter")
    conv2 = conv_ops.geometry((128, 96, 27, 27), (256, 48, 5, 5), 1, 2, 2)
    assert all(conv_tc.prefers_channels_last(conv2, part) for part in ("forward", "data", "filter"))


@pytest.mark.parametrize("check", ["race", "init", "align"])
def test_clean_under_the_checks(device, check):
    g, x, w, b, dy = data(SHAPES[1], 7)
    small = data(SHAPES[7], 8)   # the small form
    want = (model(g, x, w, b, True, "bf16"), model_data(g, dy, w, "tf32"),
            model(*small[:4], False, "tf32"), model(*small[:4], True, "bf16"))
    with emu.debug(check=check):
        y = conv_tc.forward(device, g, x, w, b, True, "bf16", tile=(64, 128))
        dx = conv_tc.backward_data(device, g, dy, w, "tf32", tile=(128, 96))
        ys = conv_tc.forward(device, *small[:4], False, "tf32", tile=(128, 96))
        ysb = conv_tc.forward(device, *small[:4], True, "bf16", tile=(128, 128))  # 8-byte copies
    np.testing.assert_array_equal(y, want[0])
    np.testing.assert_array_equal(dx, want[1])
    np.testing.assert_array_equal(ys, want[2])
    np.testing.assert_array_equal(ysb, want[3])


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
def test_backward_filter_takes_the_layouts_of_forward_and_backward_data(device, monkeypatch, precision):
    """Forward's channels-last x and backward data's dy are the arrays backward filter
    would make (``conv_tc.shares_layout``: TF32 floats, BF16 16-bit values): kept in
    ``layouts``, taken by the filter (which lays out neither again and empties the
    dict), the same dw bit for bit; F.conv2d's backward does it too. conv1 (the filter
    runs NCHW) shares nothing, nor does BF16 where its filter cannot run channels-last
    (Cg a multiple of 4, not 8)."""
    import convnet
    from convnet import functional as F
    g, x, w, b, dy = data(SHAPES[1], 21)
    assert conv_tc.shares_layout(g, "forward", precision) and conv_tc.shares_layout(g, "data", precision)
    conv1 = conv_ops.geometry((128, 3, 224, 224), (96, 3, 11, 11), 4, 2, 1)
    assert not conv_tc.shares_layout(conv1, "forward", precision)
    by4 = conv_ops.geometry((1, 64, 5, 5), (24, 32, 3, 3), 1, 1, 2)   # Cg = 32, Kg = 12
    assert conv_tc.shares_layout(by4, "forward", "tf32") and not conv_tc.shares_layout(by4, "forward", "bf16")
    launched = []
    real_launch = device.launch
    monkeypatch.setattr(device, "launch", lambda launch: (launched.append(launch.kernel), real_launch(launch))[1])
    want = conv_tc.backward_filter(device, g, x, dy, precision)
    assert launched.count("conv_to_channels_last") == 2
    layouts: dict = {}
    conv_tc.forward(device, g, x, w, b, True, precision, layouts=layouts)
    conv_tc.backward_data(device, g, dy, w, precision, layouts=layouts)
    assert set(layouts) == {"x", "dy"}
    launched.clear()
    got = conv_tc.backward_filter(device, g, x, dy, precision, layouts=layouts)
    assert "conv_to_channels_last" not in launched and layouts == {}
    np.testing.assert_array_equal(got, want)
    # through autograd: the same gradients, the filter's layouts not made again
    xt, wt = (convnet.tensor(a, device=device, requires_grad=True) for a in (x, w))
    y = F.conv2d(xt, wt, stride=1, padding=(1, 2), groups=2, precision=precision)
    launched.clear()
    y.backward(convnet.tensor(dy, device=device))
    assert launched.count("conv_to_channels_last") == 1   # dy, once, for data and filter
    np.testing.assert_array_equal(wt.grad.numpy(), want)
