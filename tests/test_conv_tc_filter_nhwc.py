"""The channels-last tensor-core backward filter (issue 12):
kernels/conv_tc_backward_filter_nhwc.cu after the layout kernels (x and dy to channels
last) on emu against test_conv_tc's exact model of backward filter bit for bit (the
same split, the same kk = (n, p, q) order within a chunk, chunks added in order), so
also against the NCHW kernel, and against the float64 result of the rounded operands
within ``ops.conv_tc.error_bound``; groups, strides, asymmetric padding, Cg and Kg
multiples of a 16-byte copy's channels (``filter_vector``: 4 TF32, 8 BF16; 4, 8, 12,
136 rows: past a tile), partial tiles and slices, several splits, every tile of
``conv_tc.TILES`` in both precisions (BF16's fragments by ldmatrix.trans); groups == 1
with C and K not multiples of the copy (C = 1, 2, 3, 5; K = 3, 6, 130; conv1's C = 3,
K = 96, 11x11, stride 4), laid out with zero channels up to them
(``filter_layout_channels``); the shape
rule and its errors; clean under the race, init and align checks. The padding widens
the GEMM's rows and columns, not its reduction, so the padded results are the model's
bit for bit with no signed-zero caveat."""
from __future__ import annotations

import numpy as np
import pytest

import convnet
from convnet.backend import emu
from convnet.ops import conv as conv_ops
from convnet.ops import conv_tc
from test_conv_tc import data, f64_abs, model_filter

pytestmark = pytest.mark.skipif(not emu.available(), reason="emu runtime not built")

# (N, C, H, W, K, R, S, stride, pad, groups), splits: Cg and Kg multiples of 4 (of 8
# for BF16 but shape 1, TF32 only: BF16_GROUPS_BY_4)
SHAPES = [
    ((1, 4, 5, 5, 4, 3, 3, 1, 1, 1), 1),                 # Cg = Kg = 4; 25 kk: a partial slice
    ((2, 24, 7, 6, 8, 3, 2, (2, 1), (1, 0), 2), 2),      # Cg = 12, Kg = 4, groups, strides, asymmetric pad
    ((2, 12, 5, 6, 136, 3, 4, 1, (0, 2), 1), 3),         # Kg past 128 rows, Cg*R*S = 144 past a tile
    ((2, 16, 9, 8, 16, 5, 5, 2, 2, 2), 2),               # Cg = Kg = 8, 200 columns a group
    ((3, 8, 11, 13, 8, 1, 1, 3, 0, 1), 4),               # 1x1, stride 3, 60 kk: 4 splits, the last of 12
    ((1, 24, 13, 9, 24, 2, 3, (1, 2), (1, 2), 3), 2),    # 3 groups, pad past the right edge
    ((2, 32, 7, 6, 16, 3, 2, (2, 1), (1, 0), 2), 2),     # Cg = 16, Kg = 8: shape 1 for BF16
    # groups == 1, C (and K) padded to multiples of 4 in the layouts
    ((1, 1, 5, 6, 3, 3, 3, 1, 1, 1), 1),                 # C = 1 (Cx 4), K = 3 (Kx 4)
    ((2, 2, 7, 6, 8, 3, 2, (2, 1), (1, 0), 1), 2),       # C = 2, strides, asymmetric pad
    ((2, 3, 27, 27, 96, 11, 11, 4, 2, 1), 2),            # conv1: C = 3, 484 GEMM columns (363 stored)
    ((1, 5, 9, 8, 130, 2, 3, 1, (0, 2), 1), 3),          # C = 5 (Cx 8), K = 130 (Kx 132): past 128 rows
    ((3, 3, 11, 13, 6, 1, 1, 3, 0, 1), 4),               # 1x1, stride 3, K = 6: 4 splits
    ((1, 2, 6, 5, 12, 5, 5, 2, 2, 1), 1),                # C = 2, 5x5, pad 2, stride 2
]
PADDED = range(7, len(SHAPES))
BF16_GROUPS_BY_4 = 1
CASES = [(index, precision) for index in range(len(SHAPES)) for precision in ("tf32", "bf16")
         if (index, precision) != (BF16_GROUPS_BY_4, "bf16")]


@pytest.fixture(scope="module")
def device():
    return emu.EmuDevice()


def operands(index):
    shape, splits = SHAPES[index]
    g, x, _, _ = data(shape, 60 + index)
    dy = np.random.default_rng(index).standard_normal(g.y_shape).astype(np.float32)
    return g, x, dy, splits


@pytest.mark.parametrize("index,precision", CASES)
def test_kernel_equals_the_model_and_the_bound(device, precision, index):
    g, x, dy, splits = operands(index)
    assert conv_tc.channels_last(g, "filter", precision)
    tile = conv_tc.TILES[(index + (precision == "bf16")) % len(conv_tc.TILES)]
    dw = conv_tc.backward_filter_nhwc(device, g, x, dy, precision, splits=splits, tile=tile)
    got_splits, chunk = conv_tc.plan_filter(device, g, splits, tile)
    assert got_splits == splits
    np.testing.assert_array_equal(dw, model_filter(g, x, dy, precision, chunk))
    exact = conv_tc.backward_filter_reference(g, x.astype(np.float64), dy.astype(np.float64), precision)
    xa, dya = f64_abs(precision, x, dy)
    bound = conv_tc.error_bound(g.n * g.p * g.q, conv_ops.backward_filter_reference(g, xa, dya))
    assert (np.abs(dw - exact) <= bound).all()


def test_padded_channels_equal_the_nchw_kernel_and_the_launches(device):
    """groups == 1, C = 3, K = 6: padded (to 4 and 8 channels in TF32, 8 and 8 in BF16),
    the same bits as the NCHW kernel (the default here: ``prefers_channels_last``); the
    layouts get those channels a pixel, the GEMM Cx*R*S columns and the arguments (...,
    chunk, Cx, Kx)."""
    g, x, dy, _ = operands(11)
    assert conv_tc.channels_last(g, "filter") and conv_tc.channels_last(g, "filter", "bf16")
    assert not conv_tc.prefers_channels_last(g, "filter", "bf16")
    assert conv_tc.filter_layout_channels(g) == (4, 8)
    assert conv_tc.filter_layout_channels(g, "bf16") == (8, 8)
    assert conv_tc.filter_workspace_shapes(g) == {"x": (3 * 11 * 13 * 4,), "dy": (3 * 4 * 5 * 8,)}
    assert conv_tc.filter_workspace_shapes(g, "bf16") == {"x": (3 * 11 * 13 * 8,), "dy": (3 * 4 * 5 * 8,)}
    for splits in (1, 2):
        want = conv_tc.backward_filter(device, g, x, dy, "bf16", splits=splits, tile=(128, 96))
        np.testing.assert_array_equal(
            conv_tc.backward_filter(device, g, x, dy, "bf16", splits=splits, tile=(128, 96), layout="nhwc"), want)
    ws = {k: np.empty(s, np.float32) for k, s in conv_tc.filter_workspace_shapes(g).items()}
    dw = np.empty(g.w_shape, np.float32)
    launches = conv_tc.backward_filter_nhwc_launches(device, g, x, dy, dw, ws["x"], ws["dy"], 1, 32,
                                                  precision="tf32", tile=(128, 96))
    assert [int(a) for a in launches[0].args[2:]] == [3, 3, 11 * 13, 4]   # batches, C, H*W, Cx
    assert [int(a) for a in launches[1].args[2:]] == [3, 6, 4 * 5, 8]     # batches, K, P*Q, Kx
    assert launches[2].grid == (1, 1, 1)
    assert [int(a) for a in launches[2].args[-3:]] == [32, 4, 8]
    g5 = operands(10)[0]                                                 # C = 5, K = 130
    ws5 = [np.empty(s, np.float32) for s in (g5.x_shape, g5.y_shape, g5.w_shape,
                                             *conv_tc.filter_workspace_shapes(g5).values())]
    assert conv_tc.backward_filter_nhwc_launches(device, g5, *ws5, 1, 8,
                                              tile=(64, 128))[2].grid == (1, 3, 1)


def test_equals_the_nchw_kernel_and_the_launches(device):
    """The same bits as conv_tc.backward_filter (split or not); the launch list: two
    layout changes, the GEMM, the split sum."""
    g, x, dy, _ = operands(3)
    for splits in (1, 3):
        np.testing.assert_array_equal(
            conv_tc.backward_filter_nhwc(device, g, x, dy, "tf32", splits=splits, tile=(128, 96)),
            conv_tc.backward_filter(device, g, x, dy, "tf32", splits=splits, tile=(128, 96)))
    ws = {k: np.empty(s, np.float32) for k, s in conv_tc.filter_workspace_shapes(g).items()}
    dw = np.empty(g.w_shape, np.float32)
    launches = conv_tc.backward_filter_nhwc_launches(device, g, x, dy, dw, ws["x"], ws["dy"], 2, 32,
                                                  np.empty(2 * dw.size, np.float32), "bf16", (64, 128))
    assert [launch.kernel for launch in launches] == [
        "conv_to_channels_last", "conv_to_channels_last", "conv_tc_backward_filter_nhwc", "conv_split_sum"]
    assert launches[2].grid == (-(-g.cg * g.r * g.s // 128), 1, 2 * g.groups)
    assert launches[2].template_args == (1, 128, 64)
    with pytest.raises(ValueError, match="2 splits need a workspace"):
        conv_tc.backward_filter_nhwc_launches(device, g, x, dy, dw, ws["x"], ws["dy"], 2, 32)


def test_the_shape_rule_and_its_errors(device):
    g = conv_ops.geometry((1, 6, 5, 5), (8, 3, 3, 3), 1, 1, 2)   # groups 2, Cg = 3
    assert not conv_tc.channels_last(g, "filter") and not conv_tc.channels_last(g, "filter")
    x = np.ones(g.x_shape, np.float32)
    dy = np.ones(g.y_shape, np.float32)
    with pytest.raises(ValueError, match="filter pass needs one group, or Cg and Kg multiples of 4 in "
                                         "tf32; got Cg=3, Kg=4"):
        conv_tc.backward_filter_nhwc(device, g, x, dy, "tf32")
    with pytest.raises(ValueError, match="channels-last tensor-core filter pass needs"):
        conv_tc.backward_filter(device, g, x, dy, "tf32", layout="nhwc")
    # layout=None: the NCHW kernel runs it
    np.testing.assert_array_equal(conv_tc.backward_filter(device, g, x, dy, "tf32"),
                                  conv_tc.backward_filter(device, g, x, dy, "tf32", layout="nchw"))
    assert not conv_tc.channels_last(conv_ops.geometry((1, 8, 5, 5), (12, 4, 3, 3), 1, 1, 2), "filter")  # Kg = 6
    for c, k in ((1, 3), (2, 6), (3, 96), (5, 130), (4, 4)):      # groups == 1: any C and K
        g1 = conv_ops.geometry((1, c, 5, 5), (k, c, 3, 3), 1, 1, 1)
        assert conv_tc.channels_last(g1, "filter")
        assert conv_tc.filter_layout_channels(g1) == (-(-c // 4) * 4, -(-k // 4) * 4)
        assert conv_tc.filter_layout_channels(g1, "bf16") == (-(-c // 8) * 8, -(-k // 8) * 8)
    by4 = operands(BF16_GROUPS_BY_4)[0]                          # Cg = 12, Kg = 4: TF32 only
    assert conv_tc.prefers_channels_last(by4, "filter") and not conv_tc.channels_last(by4, "filter", "bf16")
    with pytest.raises(ValueError, match="multiples of 8 in bf16; got Cg=12, Kg=4"):
        conv_tc.backward_filter(device, by4, *operands(BF16_GROUPS_BY_4)[1:3], "bf16", layout="nhwc")
    with pytest.raises(ValueError, match="'tf32' or 'bf16'"):
        conv_tc.backward_filter_nhwc(device, conv_ops.geometry((1, 4, 5, 5), (4, 4, 3, 3), 1, 1, 1),
                                  np.ones((1, 4, 5, 5), np.float32), np.ones((1, 4, 5, 5), np.float32),
                                  "fp32")
    # cpu: the rounded reference
    g, x, dy, _ = operands(0)
    cpu = convnet.get_device("cpu")
    np.testing.assert_array_equal(conv_tc.backward_filter_nhwc(cpu, g, x, dy, "bf16"),
                                  conv_tc.backward_filter_reference(g, x, dy, "bf16"))


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
@pytest.mark.parametrize("index", [6, 8])
@pytest.mark.parametrize("check", ["race", "init", "align"])
def test_clean_under_the_checks(device, check, index, precision):
    """Groups, and C = 2 padded (the init check: the layouts' zero channels are
    written), both precisions (BF16: ldmatrix's row reads checked too)."""
    g, x, dy, _ = operands(index)
    tile = {"race": (128, 96), "init": (64, 128), "align": (128, 128)}[check]
    chunk = conv_tc.plan_filter(device, g, 2, tile)[1]
    want = model_filter(g, x, dy, precision, chunk)
    with emu.debug(check=check):
        dw = conv_tc.backward_filter_nhwc(device, g, x, dy, precision, splits=2, tile=tile)
    np.testing.assert_array_equal(dw, want)
