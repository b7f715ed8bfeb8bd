"""Dropout: the Philox4x32-10 generator against the published known answers, masks
bit-identical on every device, exact p = 0 and p = 1, both modes, the backward, both
emulator schedules, element offsets (an array's mask is its slice of a larger array's:
data-parallel ranks) and the errors."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

import convnet
from convnet import functional as F
from convnet.ops import philox
from convnet.ops import dropout as dropout_ops
from convnet.ops.elementwise import BLOCK

from conftest import require_device

CPU = convnet.get_device("cpu")

# Random123's kat_vectors for philox4x32 with 10 rounds: counter, key, output.
KNOWN_ANSWERS = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]
SIZES = [1, 2, 3, 4, 5, 7, 255, 257, 1023, 1025, 4099, 1 << 20]
SEEDS = [0, 1, 2**32 - 1, 2**32, 0xDEADBEEF12345678, 2**64 - 1]


def _data(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _apply(device, x, seed, p, training=True, mode="inverted"):
    t = convnet.tensor(x, device=device)
    return F.dropout(t, p, training=training, seed=seed, mode=mode).numpy()


# --------------------------------------------------------------------------- the generator

@pytest.mark.parametrize("counter, key, expected", KNOWN_ANSWERS)
def test_philox_known_answers(counter, key, expected):
    words = philox.philox4x32(counter, key)
    assert tuple(int(w) for w in words) == expected


def test_stream_convention():
    seed = 0x0123456789ABCDEF
    words = philox.random_uint32(seed, 11)
    for i in range(11):
        j = i // 4
        block = philox.philox4x32((j & 0xFFFFFFFF, j >> 32, 0, 0), (0x89ABCDEF, 0x01234567))
        assert words[i] == block[i % 4]
    # counters past 2**32 groups use the high word
    j = 2**32 + 5
    block = philox.philox4x32((j & 0xFFFFFFFF, j >> 32, 0, 0), (1, 0))
    assert int(block[0]) != int(philox.philox4x32((5, 0, 0, 0), (1, 0))[0])


def test_threshold_is_exact():
    assert philox.keep_threshold(0.0) == 0
    assert philox.keep_threshold(1.0) == 2**32
    assert philox.keep_threshold(0.5) == 2**31
    assert philox.keep_threshold(2.0**-32) == 1
    assert philox.keep_threshold(2.0**-40) == 1  # any p > 0 drops word 0
    assert philox.keep_threshold(1.0 - 2.0**-53) == 2**32  # p < 1 that rounds up to keep none


# --------------------------------------------------------------------------- kernels == reference

@pytest.mark.parametrize("n", SIZES)
def test_matches_reference(kernel_device, n):
    x = _data((n,), seed=n)
    for seed, p in ((n, 0.5), (SEEDS[n % len(SEEDS)], 0.1), (2**64 - 1 - n, 0.9)):
        plan = dropout_ops.plan(p, seed=seed)
        y = kernel_device.to_numpy(dropout_ops.apply(kernel_device, kernel_device.asarray(x), plan))
        np.testing.assert_array_equal(y, dropout_ops.apply_reference(x, plan))


@pytest.mark.parametrize("seed", SEEDS)
def test_masks_bit_identical_across_devices(device, seed):
    """Paper mode on ones gives the mask itself; a word exactly at the threshold is kept."""
    n = 4 * BLOCK * 3 + 3
    words = philox.random_uint32(seed, n)
    ones = np.ones(n, np.float32)
    for k in (0, 1, n - 1):
        p = int(words[k]) / 2.0**32  # exact: threshold == words[k]
        mask = _apply(device, ones, seed, p, mode="paper")
        np.testing.assert_array_equal(mask, (words >= words[k]).astype(np.float32))
        assert mask[k] == 1.0
        nudged = _apply(device, ones, seed, np.nextafter(p, 2.0), mode="paper")
        assert nudged[k] == 0.0
    for p in (0.25, 0.5, 0.75):
        np.testing.assert_array_equal(_apply(device, ones, seed, p, mode="paper"),
                                      dropout_ops.keep_mask(seed, (n,), p).astype(np.float32))


@pytest.mark.parametrize("offset", [1, 2, 3])
def test_misaligned_views(offset):
    device = require_device("emu")
    base = _data((4 * 1024 + 9,), seed=offset)
    x = base[offset:]
    assert x.ctypes.data % 16 != 0
    plan = dropout_ops.plan(0.3, seed=77)
    y = dropout_ops.apply(device, x, plan)
    np.testing.assert_array_equal(y, dropout_ops.apply_reference(x, plan))
    y_base = np.zeros_like(base)  # an aligned input and a misaligned output: launch directly
    out = y_base[offset:]
    aligned = np.ascontiguousarray(x)
    device.launch(dropout_ops.apply_launch(device, aligned, out, plan))
    np.testing.assert_array_equal(out, dropout_ops.apply_reference(x, plan))


def test_strided_input(kernel_device):
    x = _data((32, 12), seed=9)
    strided = kernel_device.asarray(x)[::2, 1::3]
    y = kernel_device.to_numpy(F.dropout(convnet.tensor(strided, device=kernel_device),
                                         0.5, seed=3).data)
    np.testing.assert_array_equal(y, dropout_ops.apply_reference(x[::2, 1::3],
                                                                 dropout_ops.plan(0.5, seed=3)))


def test_emu_schedule_order_does_not_matter():
    from convnet.backend import emu
    device = require_device("emu")
    x = _data((5 * BLOCK * 4 + 3,), seed=10)
    plan = dropout_ops.plan(0.5, seed=5)
    forward = dropout_ops.apply(device, x, plan)
    with emu.debug(schedule="reverse"):
        reverse = dropout_ops.apply(device, x, plan)
    np.testing.assert_array_equal(forward, reverse)


# --------------------------------------------------------------------------- offsets

# Offsets off the counters' word alignment (% 4 != 0), and one past 2**32 counters.
OFFSETS = [1, 2, 3, 5, 6, 7, 4 * 2**32 + 3]


def test_offset_is_a_slice_of_the_stream():
    seed = 0xDEADBEEF12345678
    big = philox.random_uint32(seed, 64)
    for offset in range(0, 40):
        for n in (0, 1, 2, 3, 4, 5, 11, 24 - offset % 4):
            np.testing.assert_array_equal(philox.random_uint32(seed, n, offset),
                                          big[offset:offset + n])
    far = 4 * 2**32 + 2  # counter 2**32: its high word in use
    np.testing.assert_array_equal(philox.random_uint32(seed, 7, far)[2:],
                                  philox.random_uint32(seed, 5, far + 2))
    block = philox.philox4x32((0, 1, 0, 0), (seed & 0xFFFFFFFF, seed >> 32))
    assert [int(w) for w in philox.random_uint32(seed, 2, far)] == [int(block[2]), int(block[3])]


@pytest.mark.parametrize("offset", OFFSETS)
def test_offset_kernels_match_the_reference(kernel_device, offset):
    """The kernel's mask at an offset is the reference's, the reference's the big array's
    slice; sizes that start and end inside a counter, and span a whole block's groups."""
    seed = 0x0123456789ABCDEF ^ offset
    for n in (1, 2, 3, 5, 4 * BLOCK + 6):
        x = _data((n,), seed=n + offset)
        for p, mode in ((0.5, "paper"), (0.3, "inverted"), (1.0, "inverted")):
            plan = dropout_ops.plan(p, True, mode, seed=seed, offset=offset)
            y = kernel_device.to_numpy(dropout_ops.apply(kernel_device, kernel_device.asarray(x), plan))
            np.testing.assert_array_equal(y, dropout_ops.apply_reference(x, plan))
        if offset < 64:
            whole = dropout_ops.keep_mask(seed, (offset + n,), 0.5)
            np.testing.assert_array_equal(dropout_ops.keep_mask(seed, (n,), 0.5, offset),
                                          whole[offset:])


@pytest.mark.parametrize("device_name", ["cpu", "emu"])
def test_rows_of_a_batch_get_the_batch_masks_rows(device_name):
    """F.dropout on rows r0..r1 of an (N, units) batch with offset r0·units equals those
    rows of F.dropout on the batch, forward and backward; units odd (offsets % 4 != 0)."""
    device = require_device(device_name)
    x = _data((7, 5, 3), seed=20)  # units = 15
    g = _data((7, 5, 3), seed=21)
    t = convnet.tensor(x, device=device, requires_grad=True)
    F.dropout(t, 0.5, seed=99).backward(convnet.tensor(g, device=device))
    whole = F.dropout(convnet.tensor(x, device=device), 0.5, seed=99).numpy()
    for r0, r1 in ((0, 3), (3, 5), (5, 7), (1, 2)):
        part = convnet.tensor(x[r0:r1], device=device, requires_grad=True)
        y = F.dropout(part, 0.5, seed=99, offset=r0 * 15)
        y.backward(convnet.tensor(g[r0:r1], device=device))
        np.testing.assert_array_equal(y.numpy(), whole[r0:r1])
        np.testing.assert_array_equal(part.grad.numpy(), t.grad.numpy()[r0:r1])


@pytest.mark.parametrize("device_name", ["cpu", "emu"])
def test_layers_with_a_row_offset_draw_the_batch_masks_rows(device_name):
    """nn.Dropout after nn.Linear (the fused fc path on emu: bias + ReLU + dropout in one
    kernel, both backward paths: out % 4 != 0 and == 0) and alone: a layer told its
    row_offset gives its rows of the whole batch's output and input gradient. Small
    integers and halves throughout, so the products are exact whatever the row count."""
    from convnet import nn
    device = require_device(device_name)
    rng = np.random.default_rng(22)
    for out in (13, 36):
        x0 = rng.integers(-3, 4, (9, 6)).astype(np.float32)
        g0 = rng.integers(-3, 4, (9, out)).astype(np.float32)
        fc = nn.Linear(6, out, relu=True, bias_init=0.5, device=device)
        fc.weight.data[...] = device.asarray(rng.integers(-2, 3, (out, 6)).astype(np.float32))

        def run(rows, row_offset):
            drop, alone = nn.Dropout(0.5, mode="paper", seed=3), nn.Dropout(0.5, seed=4)
            drop.row_offset = alone.row_offset = row_offset
            x = convnet.tensor(x0[rows], device=device, requires_grad=True)
            y = alone(fc(x, dropout=drop))
            (y * convnet.tensor(g0[rows], device=device)).sum().backward()
            return y.numpy(), x.grad.numpy()

        y_all, dx_all = run(slice(0, 9), 0)
        for r0, r1 in ((0, 4), (4, 9), (5, 6)):
            y, dx = run(slice(r0, r1), r0)
            np.testing.assert_array_equal(y, y_all[r0:r1])
            np.testing.assert_array_equal(dx, dx_all[r0:r1])


def test_fused_fc_kernels_at_an_offset_under_the_emulator_checks():
    """bias_relu_dropout_forward/backward with offsets % 4 != 0 (and == 0 past the first
    counters) equal the reference under the bounds/race/init/align checks, on tiny shapes:
    cols % 4 == 0 (the shuffle path when the offset allows it) and != 0."""
    from convnet.backend import emu
    from convnet.ops import linear as linear_ops
    device = require_device("emu")
    rng = np.random.default_rng(23)
    modes = [dict(check="bounds", schedule="reverse", fill_shared=True),
             dict(check="race", schedule="random", seed=2), dict(check="init", fill_empty=True),
             dict(check="align")]
    for (rows, cols), offset in (((3, 5), 3), ((18, 8), 6), ((18, 8), 8), ((2, 33), 1)):
        z = rng.standard_normal((rows, cols)).astype(np.float32)
        b = rng.standard_normal(cols).astype(np.float32)
        dy = rng.standard_normal((rows, cols)).astype(np.float32)
        drop = dropout_ops.plan(0.5, True, "inverted", seed=31, offset=offset)
        want_y = linear_ops.epilogue_dropout_reference(z, b, True, drop)
        want_dz, _ = linear_ops.epilogue_dropout_backward_reference(want_y, dy, True, True, drop)
        for mode in modes:
            with emu.debug(**mode):
                y = linear_ops.epilogue(device, z.copy(), b, True, drop)
                dz, db = linear_ops.epilogue_backward(device, y, dy, True, True, drop)
            np.testing.assert_array_equal(y, want_y)
            np.testing.assert_array_equal(dz, want_dz)
            np.testing.assert_allclose(db, want_dz.sum(axis=0), rtol=1e-5, atol=1e-6)


def test_offset_zero_is_the_unshifted_stream():
    """Offset 0 (the default) draws exactly the masks of before offsets existed: element i
    takes word i % 4 of counter i // 4, so single-process runs and checkpoints are unchanged."""
    seed = 12345
    n = 4 * BLOCK + 5
    plan = dropout_ops.plan(0.5, seed=seed)
    assert plan.offset == 0 and plan == dropout_ops.plan(0.5, seed=seed, offset=0)
    j = np.arange(-(-n // 4), dtype=np.uint64)
    words = philox.philox4x32((j.astype(np.uint32), (j >> np.uint64(32)).astype(np.uint32), 0, 0),
                              (seed, 0))
    expected = np.stack(words, axis=1).reshape(-1)[:n] >= np.uint32(2**31)
    np.testing.assert_array_equal(dropout_ops.keep_mask(seed, (n,), 0.5), expected)


# --------------------------------------------------------------------------- semantics

def test_p_zero_and_one_are_exact(device):
    x = _data((1001,), seed=11)
    np.testing.assert_array_equal(_apply(device, x, 1, 0.0), x)
    np.testing.assert_array_equal(_apply(device, x, 1, 0.0, mode="paper"), x)
    for mode in ("inverted", "paper"):
        y = _apply(device, x, 1, 1.0, mode=mode)
        assert (y == 0).all() and not np.signbit(y).any()
        np.testing.assert_array_equal(_apply(device, x, 1, 1.0, training=False, mode=mode),
                                      x if mode == "inverted" else np.zeros_like(x))


def test_inverted_mode(device):
    x = _data((4, 257), seed=12)
    p = 0.3
    y = _apply(device, x, 42, p)
    keep = dropout_ops.keep_mask(42, x.shape, p)
    np.testing.assert_array_equal(y, np.where(keep, x * np.float32(1 / (1 - p)), 0))
    t = convnet.tensor(x, device=device)
    assert F.dropout(t, p, training=False) is t  # identity at eval


def test_paper_mode(device):
    x = _data((3, 333), seed=13)
    p = 0.5
    keep = dropout_ops.keep_mask(8, x.shape, p)
    np.testing.assert_array_equal(_apply(device, x, 8, p, mode="paper"), np.where(keep, x, 0))
    np.testing.assert_array_equal(_apply(device, x, 8, p, training=False, mode="paper"),
                                  x * np.float32(0.5))
    np.testing.assert_array_equal(_apply(device, x, None, 0.2, training=False, mode="paper"),
                                  x * np.float32(0.8))


def test_backward_reuses_the_mask(device):
    x = _data((2, 515), seed=14)
    g = _data((2, 515), seed=15)
    p = 0.4
    for mode, scale in (("inverted", np.float32(1 / (1 - p))), ("paper", np.float32(1))):
        t = convnet.tensor(x, device=device, requires_grad=True)
        y = F.dropout(t, p, seed=None, mode=mode)
        y.backward(convnet.tensor(g, device=device))
        kept = y.numpy() != 0
        assert y.grad is None and t.grad.device == device
        np.testing.assert_array_equal(t.grad.numpy(), np.where(kept, g * scale, 0))
    t = convnet.tensor(x, device=device, requires_grad=True)
    F.dropout(t, p, training=False, mode="paper").backward(convnet.tensor(g, device=device))
    np.testing.assert_array_equal(t.grad.numpy(), g * np.float32(1 - p))


def test_fraction_kept(kernel_device):
    n = 1 << 20
    for p in (0.1, 0.5, 0.9):
        y = _apply(kernel_device, np.ones(n, np.float32), 1234, p, mode="paper")
        sigma = np.sqrt(n * p * (1 - p))
        assert abs(y.sum() - n * (1 - p)) < 5 * sigma


def test_unseeded_calls_differ_and_set_seed_repeats():
    x = np.ones(256, np.float32)
    a, b = _apply(CPU, x, None, 0.5), _apply(CPU, x, None, 0.5)
    assert not np.array_equal(a, b)
    dropout_ops.set_seed(5)
    a = _apply(CPU, x, None, 0.5)
    dropout_ops.set_seed(5)
    np.testing.assert_array_equal(a, _apply(CPU, x, None, 0.5))
    dropout_ops.set_seed(np.random.SeedSequence().entropy % 2**64)


def test_float64_on_cpu():
    x = np.random.default_rng(16).standard_normal(50)
    y = _apply(CPU, x, 3, 0.25)
    assert y.dtype == np.float64
    keep = dropout_ops.keep_mask(3, x.shape, 0.25)
    np.testing.assert_array_equal(y, np.where(keep, x * (1 / 0.75), 0))


def test_empty(device):
    y = _apply(device, np.zeros((0, 5), np.float32), 1, 0.5)
    assert y.shape == (0, 5)


# --------------------------------------------------------------------------- errors

def test_errors(kernel_device):
    t = convnet.tensor(np.ones(4, np.float32), device=kernel_device)
    for p in (-0.1, 1.5):
        with pytest.raises(ValueError, match="p must be in \\[0, 1\\]"):
            F.dropout(t, p)
    with pytest.raises(ValueError, match="p must be finite"):
        F.dropout(t, float("nan"))
    with pytest.raises(TypeError, match="real number"):
        F.dropout(t, "0.5")
    with pytest.raises(ValueError, match="mode"):
        F.dropout(t, 0.5, mode="scaled")
    with pytest.raises(ValueError, match="seed"):
        F.dropout(t, 0.5, seed=-1)
    with pytest.raises(ValueError, match="seed"):
        F.dropout(t, 0.5, seed=2**64)
    with pytest.raises(TypeError, match="seed"):
        F.dropout(t, 0.5, seed=1.5)
    with pytest.raises(ValueError, match=r"dropout offset is an integer in \[0, 2\*\*63\), got -1"):
        F.dropout(t, 0.5, seed=1, offset=-1)
    with pytest.raises(ValueError, match="dropout offset"):
        F.dropout(t, 0.5, seed=1, offset=2**63)
    with pytest.raises(TypeError, match="dropout offset .* not float"):
        F.dropout(t, 0.5, seed=1, offset=4.0)
    with pytest.raises(TypeError, match="float32.*float64"):
        F.dropout(convnet.tensor(np.ones(4), device=kernel_device), 0.5)
    with pytest.raises(TypeError, match="convnet.Tensor"):
        F.dropout(np.ones(4, np.float32))
    with pytest.raises(TypeError, match="floating point"):
        F.dropout(convnet.tensor(np.ones(4, np.int32), device=kernel_device))
    y = F.dropout(convnet.tensor(np.ones((2, 2), np.float32), device=kernel_device,
                                 requires_grad=True), 0.5, seed=1)
    with pytest.raises(ValueError, match="shape"):
        y.backward(np.ones((4,), np.float32))
    with pytest.raises(convnet.DeviceError, match=f"'{kernel_device.name}' and 'cpu'"):
        y * convnet.tensor(np.ones((2, 2), np.float32))


def test_row_offset_errors():
    from convnet import nn
    layer = nn.Dropout(0.5, seed=1)
    layer.row_offset = -2
    with pytest.raises(ValueError, match="Dropout: row_offset must be an integer >= 0, got -2"):
        layer(convnet.tensor(np.ones((2, 3), np.float32)))
    layer.row_offset = 1.5
    with pytest.raises(TypeError, match="Dropout: row_offset must be an integer"):
        layer(convnet.tensor(np.ones((2, 3), np.float32)))


def test_launch_arguments():
    x = np.zeros(10, np.float32)
    emu = SimpleNamespace(kind="emu", parallel_units=2)  # what the launch builders read
    launch = dropout_ops.apply_launch(emu, x, x, dropout_ops.Plan(2**64 - 1, 2**32, 0.0, 2**63 - 1))
    assert [type(a) for a in launch.args[2:]] == [np.int64, np.uint64, np.uint64, np.float32,
                                                  np.uint64]
    assert launch.args[3] == np.uint64(2**64 - 1) and launch.args[4] == np.uint64(2**32)
    assert launch.args[6] == np.uint64(2**63 - 1)
