"""conv_layout: the channels-last transpose, the forward's and backward data's filters,
the kernels (emu, cuda) against the NumPy references bit for bit, on awkward shapes
(rows whose length is a multiple of 4: whole-chunk stores; others: one at a time),
under every emu check mode, and the errors."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

import convnet
from convnet.ops import conv_layout

from conftest import forbid_launches, require_device

CPU = convnet.get_device("cpu")

# (batches, rows, cols): a single element, edges off the 32 x 32 tiles, several tiles
# each way, a column or a row, and AlexNet-like channel counts
TRANSPOSE_SHAPES = [(1, 1, 1), (3, 1, 1), (1, 33, 65), (3, 33, 65), (1, 32, 32), (3, 7, 45),
                    (2, 1, 70), (2, 70, 1), (1, 96, 49), (5, 3, 31)]
# (K, Cg, R, S, groups)
FILTER_SHAPES = [(1, 1, 1, 1, 1), (5, 3, 3, 3, 1), (6, 2, 3, 3, 2), (12, 5, 5, 5, 3),
                 (4, 1, 1, 2, 4), (8, 3, 11, 11, 2), (7, 3, 2, 5, 1)]


def _data(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _transpose(device, a):
    return device.to_numpy(conv_layout.to_channels_last(device, device.asarray(a)))


def _flip(device, w, groups):
    return device.to_numpy(conv_layout.filter_for_data(device, device.asarray(w), groups))


def test_references_follow_the_index_formulas():
    a = _data((2, 3, 5), 1)
    out = conv_layout.to_channels_last_reference(a)
    assert out.shape == (2, 5, 3) and out.flags.c_contiguous
    for b, i, j in np.ndindex(*a.shape):
        assert out[b, j, i] == a[b, i, j]
    big_k, cg, r, s, groups = 6, 2, 2, 3, 3
    w = _data((big_k, cg, r, s), 2)
    out = conv_layout.filter_for_data_reference(w, groups)
    kg, rs = big_k // groups, r * s
    assert out.shape == (groups * cg, rs, kg) and out.flags.c_contiguous
    flat_w, flat_out = w.reshape(-1), out.reshape(-1)
    for g, c, t, k in np.ndindex(groups, cg, rs, kg):
        assert flat_out[((g * cg + c) * rs + t) * kg + k] == flat_w[((g * kg + k) * cg + c) * rs + rs - 1 - t]


@pytest.mark.parametrize("shape", TRANSPOSE_SHAPES, ids=str)
def test_transpose_matches_reference(kernel_device, shape):
    a = _data(shape, sum(shape))
    got = _transpose(kernel_device, a)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, conv_layout.to_channels_last_reference(a))


@pytest.mark.parametrize("out_rows", [None, 8])
@pytest.mark.parametrize("shape", FILTER_SHAPES + [(3, 16, 3, 3, 1), (2, 12, 1, 5, 1)], ids=str)
def test_filter_to_channels_last_matches_reference(kernel_device, shape, out_rows):
    """The forward's filter: (K, Cg, R*S) transposed per filter, the channels past Cg
    (``out_rows``) zeros."""
    *wshape, _ = shape
    w = _data(wshape, sum(shape))
    k, cg, r, s = wshape
    out_rows = None if out_rows is None or out_rows < cg else out_rows
    got = kernel_device.to_numpy(conv_layout.filter_to_channels_last(kernel_device, kernel_device.asarray(w),
                                                                     out_rows=out_rows))
    want = conv_layout.to_channels_last_reference(w.reshape(k, cg, r * s), out_rows=out_rows)
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("shape", FILTER_SHAPES + [(16, 3, 3, 3, 2), (24, 2, 2, 3, 3)], ids=str)
def test_filter_matches_reference(kernel_device, shape):
    *wshape, groups = shape
    w = _data(wshape, sum(shape))
    got = _flip(kernel_device, w, groups)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, conv_layout.filter_for_data_reference(w, groups))


def test_strided_input_is_made_contiguous(kernel_device):
    a = _data((2, 40, 9), 3)
    strided = kernel_device.asarray(a)[:, ::2]
    got = kernel_device.to_numpy(conv_layout.to_channels_last(kernel_device, strided))
    np.testing.assert_array_equal(got, conv_layout.to_channels_last_reference(a[:, ::2]))


@pytest.mark.parametrize("check", ["bounds", "align", "race", "init"])
def test_kernels_are_clean_under_the_checks(check):
    """Every check mode of emu but "address" (that one needs ASan preloaded; the kernel
    tour runs these kernels under it, tests/test_kernel_tour.py)."""
    from convnet.backend import emu
    device = require_device("emu")
    a, w = _data((3, 33, 65), 4), _data((12, 5, 3, 3), 5)
    want = conv_layout.to_channels_last_reference(a), conv_layout.filter_for_data_reference(w, 3)
    w16 = _data((24, 8, 3, 3), 7)    # Kg = 8: whole-chunk stores (BF16: 8 bytes)
    schedule = "random" if check == "race" else "reverse"
    looped = np.empty_like(want[0])  # one block row through all three batches: the tile reused
    few = _data((2, 3, 45), 6)       # a thread per pixel, BF16 padded to 8 channels
    with emu.debug(check=check, schedule=schedule, fill_shared=True):
        got = conv_layout.to_channels_last(device, a), conv_layout.filter_for_data(device, w, 3)
        device.launch(_launch_one_block_row(a, looped))
        pixels = conv_layout.to_channels_last(device, few, "bf16", out_rows=8)
        filters = [conv_layout.filter_for_data(device, w16, 3, "bf16"),
                   conv_layout.filter_to_channels_last(device, w16, "bf16"),
                   conv_layout.filter_to_channels_last(device, w, "tf32", out_rows=6)]
    np.testing.assert_array_equal(filters[0], conv_layout.filter_for_data_reference(w16, 3, "bf16"))
    np.testing.assert_array_equal(filters[1], conv_layout.to_channels_last_reference(w16.reshape(24, 8, 9), "bf16"))
    np.testing.assert_array_equal(filters[2], conv_layout.to_channels_last_reference(w.reshape(12, 5, 9), "tf32", 6))
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(looped, want[0])
    np.testing.assert_array_equal(pixels, conv_layout.to_channels_last_reference(few, "bf16", 8))


def _launch_one_block_row(a, out):
    """The transpose of ``a`` with grid.y = 1: every block loops over all the batches."""
    from convnet.toolchain.launch import Launch
    batches, rows, cols = a.shape
    tiles = -(-rows // 32) * -(-cols // 32)
    return Launch(conv_layout.MODULE, "conv_to_channels_last", template_args=(0,), grid=(tiles, 1), block=(32, 8),
                  args=(a, out, np.int32(batches), np.int32(rows), np.int32(cols), np.int32(rows)))


def test_many_batches_loop_over_the_grid():
    """Fewer blocks in grid.y than batches (as past 65535 batches on a GPU): the blocks
    step through the rest."""
    device = require_device("emu")
    a = _data((7, 33, 40), 6)
    out = np.empty((7, 40, 33), np.float32)
    device.launch(_launch_one_block_row(a, out))
    np.testing.assert_array_equal(out, conv_layout.to_channels_last_reference(a))


def test_launch_shapes():
    gpu, emu_dev = SimpleNamespace(kind="cuda", parallel_units=132), SimpleNamespace(kind="emu")
    a = np.zeros(1, np.float32)
    launch = conv_layout.to_channels_last_launch(gpu, a, a, 128, 96, 27 * 27)
    assert launch.block == (32, 8, 1) and launch.grid == (3 * 23, 128, 1)
    assert all(isinstance(v, np.int32) for v in launch.args[2:])
    assert conv_layout.to_channels_last_launch(gpu, a, a, 100_000, 40, 4).grid == (2, 65535, 1)
    # a few rows (channels): a thread per pixel, grid-stride
    few = conv_layout.to_channels_last_launch(gpu, a, a, 128, 3, 224 * 224, "tf32", 4)
    assert few.kernel == "conv_pixels_to_channels_last" and few.template_args == (1,)
    assert few.block == (256, 1, 1) and few.args[2:] == (128, 3, 224 * 224, 4)
    assert conv_layout.to_channels_last_launch(emu_dev, a, a, 100_000, 64, 64).grid == (4, 256, 1)
    # filters: a thread per 4 output elements of a row (Kg, or Cg and its padding)
    launch = conv_layout.filter_for_data_launch(gpu, np.zeros((384, 256, 3, 3), np.float32), a, 1)
    assert launch.kernel == "conv_filter_layout" and launch.template_args == (0, True)
    assert launch.block == (256, 1, 1) and launch.grid == (256 * 9 * 96 // 256, 1, 1)
    assert launch.args[2:] == (384, 256, 9, 1, 384) and all(isinstance(v, np.int32) for v in launch.args[2:])
    launch = conv_layout.filter_to_channels_last_launch(gpu, np.zeros((96, 3, 11, 11), np.float32), a, "bf16", 8)
    assert launch.template_args == (2, False) and launch.args[2:] == (96, 3, 121, 1, 8)
    assert launch.grid == (-(-96 * 121 * 2 // 256), 1, 1)
    with pytest.raises(ValueError, match="out_rows 2 is fewer than the channels 3"):
        conv_layout.filter_to_channels_last_launch(gpu, np.zeros((96, 3, 11, 11), np.float32), a, "bf16", 2)
    assert set(conv_layout.MODULE.kernels) == {f"{k}<{r}>" for r in (0, 1, 2) for k in (
        "conv_to_channels_last", "conv_pixels_to_channels_last")} | {
        f"conv_filter_layout<{r}, {d}>" for r in (0, 1, 2) for d in ("false", "true")}


@pytest.mark.parametrize("which", ["transpose", "filter"])
def test_empty_launches_nothing(kernel_device, monkeypatch, which):
    forbid_launches(monkeypatch, kernel_device, "an empty array must not launch")
    if which == "transpose":
        for shape in [(0, 3, 4), (2, 0, 5), (2, 5, 0)]:
            out = conv_layout.to_channels_last(kernel_device, kernel_device.asarray(np.zeros(shape, np.float32)))
            assert out.shape == (shape[0], shape[2], shape[1])
    else:
        out = conv_layout.filter_for_data(kernel_device, kernel_device.asarray(np.zeros((0, 3, 3, 3), np.float32)), 1)
        assert out.shape == (3, 9, 0)
        out = conv_layout.filter_for_data(kernel_device, kernel_device.asarray(np.zeros((4, 0, 3, 3), np.float32)), 2)
        assert out.shape == (0, 9, 2)


def test_cpu_runs_the_reference_in_any_dtype():
    a = np.arange(6, dtype=np.float64).reshape(1, 2, 3)
    out = conv_layout.to_channels_last(CPU, a)
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out[0], a[0].T)


def test_errors(device):
    with pytest.raises(ValueError, match="a3 must be 3-D"):
        conv_layout.to_channels_last(device, device.asarray(np.zeros((2, 3), np.float32)))
    with pytest.raises(ValueError, match="w must be 4-D"):
        conv_layout.filter_for_data(device, device.asarray(np.zeros((2, 3, 3), np.float32)), 1)
    w = device.asarray(np.zeros((6, 2, 3, 3), np.float32))
    with pytest.raises(ValueError, match="do not split into 4 groups"):
        conv_layout.filter_for_data(device, w, 4)
    with pytest.raises(ValueError, match="groups must be a positive int"):
        conv_layout.filter_for_data(device, w, 0)
    if device.runs_kernels:
        with pytest.raises(ValueError, match="float32.*float64"):
            conv_layout.to_channels_last(device, device.asarray(np.zeros((1, 2, 3))))
        with pytest.raises(ValueError, match="float32.*int32"):
            conv_layout.filter_for_data(device, device.asarray(np.zeros((2, 1, 1, 1), np.int32)), 1)


def test_int32_limit():
    """An array past 2**31 - 1 elements is refused before any allocation (a broadcast view
    stands in for it: no memory)."""
    device = require_device("emu")
    huge = np.broadcast_to(np.float32(0), (2, 1 << 15, 1 << 15))
    with pytest.raises(ValueError, match=r"a3 has 2147483648 elements.*int32"):
        conv_layout.to_channels_last(device, huge)


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
def test_both_kernels_round_to_the_tensor_core_operands(kernel_device, precision):
    """With a precision the kernels round what they move as the tensor cores' operands
    are rounded (``convnet.precision.round_operand``: TF32 to nearest with ties away,
    as float32; BF16 to nearest even, as uint16 bits), bit for bit, ties, NaN, infinities, the largest float and
    subnormals included; the values are no longer the input's."""
    special = np.array([1 + 2 ** -11, -(1 + 2 ** -11), 1 + 2 ** -8, 1 + 3 * 2 ** -9,
                        np.finfo(np.float32).max, np.inf, -np.inf, np.nan, -0.0, 1e-40,
                        -3e-39, 2 ** -126], np.float32)
    a = np.concatenate([special, _data(3 * 33 * 20 - special.size, 5)]).reshape(3, 33, 20)
    got = _transpose_rounded(kernel_device, a, precision)
    want = conv_layout.to_channels_last_reference(a, precision)
    assert_same_bits(got, want)
    as_float = got if precision == "tf32" else (got.astype(np.uint32) << 16).view(np.float32)
    assert (as_float != conv_layout.to_channels_last_reference(a)).any()
    w = a.reshape(6, 11, 3, 10)
    got = kernel_device.to_numpy(conv_layout.filter_for_data(kernel_device, kernel_device.asarray(w), 2,
                                                             precision))
    want = conv_layout.filter_for_data_reference(w, 2, precision)
    assert_same_bits(got, want)
    got = kernel_device.to_numpy(conv_layout.filter_to_channels_last(kernel_device, kernel_device.asarray(w),
                                                                     precision))
    assert_same_bits(got, conv_layout.to_channels_last_reference(w.reshape(6, 11, 30), precision))
    with pytest.raises(ValueError, match="precision must be one of"):
        conv_layout.to_channels_last_launch(kernel_device, a, a, 3, 33, 20, "fp16")


def assert_same_bits(got, want):
    """The same bits, but NaN for NaN (a NaN's low payload bits are the tensor core's to
    ignore); BF16 (uint16 bits) exactly."""
    assert got.dtype == want.dtype
    if want.dtype == np.uint16:
        np.testing.assert_array_equal(got, want)
        return
    nan = np.isnan(want)
    np.testing.assert_array_equal(np.isnan(got), nan)
    np.testing.assert_array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))


def _transpose_rounded(device, a, precision):
    return device.to_numpy(conv_layout.to_channels_last(device, device.asarray(a), precision))


@pytest.mark.parametrize("precision", [None, "tf32", "bf16"])
def test_transpose_pads_channels_with_zeros(kernel_device, precision):
    """``out_rows`` past the rows: the extra channels of every pixel are zeros (a small
    channel count padded to a whole 16-byte copy), the rest as without padding."""
    a = _data((2, 3, 45), 9)
    got = kernel_device.to_numpy(conv_layout.to_channels_last(kernel_device, kernel_device.asarray(a),
                                                              precision, out_rows=8))
    want = conv_layout.to_channels_last_reference(a, precision, out_rows=8)
    assert got.shape == want.shape == (2, 45, 8)
    np.testing.assert_array_equal(got, want)
    assert not want[..., 3:].any()
    np.testing.assert_array_equal(want[..., :3], conv_layout.to_channels_last_reference(a, precision))
    with pytest.raises(ValueError, match="out_rows 2 is fewer than the rows 3"):
        conv_layout.to_channels_last_launch(kernel_device, a, got, 2, 3, 45, precision, 2)
