"""Local response normalization: the NumPy reference against the paper's formula and
finite differences (float64), the kernels (emu, cuda) against the reference on
AlexNet's shapes and 30 seeded random shapes (both backward variants, chunked
columns, groups), the running sums against spikes, NaN and inf, both emulator
schedules, index checks, the fused LRN + max-pool forward, autograd and the errors."""
from __future__ import annotations

import textwrap
from types import SimpleNamespace

import numpy as np
import pytest

import convnet
from convnet import functional as F
from convnet.ops import lrn as lrn_ops
from convnet.ops import lrn_max_pool as fused_ops
from convnet.ops import max_pool as pool_ops

from conftest import forbid_launches, require_device, run_clean_under_asan

CPU = convnet.get_device("cpu")
PAPER = lrn_ops.make_params()  # size 5, alpha 1e-4, beta 0.75, k 2
# What the launch builders read of a device, for launch shapes without the device.
H100 = SimpleNamespace(kind="cuda", parallel_units=132)
EMU = SimpleNamespace(kind="emu", parallel_units=2)


def _data(shape, seed, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def _direct(x, size, alpha, beta, k, groups=1):
    """The paper's formula written out channel by channel (float64)."""
    x = x.astype(np.float64)
    n, c, h, w = x.shape
    cg = c // groups
    y = np.empty_like(x)
    for ch in range(c):
        g0 = ch // cg * cg
        lo, hi = max(g0, ch - size // 2), min(g0 + cg - 1, ch + (size - 1) // 2)
        s = k + alpha * (x[:, lo:hi + 1] ** 2).sum(axis=1)
        y[:, ch] = x[:, ch] / s ** beta
    return y


def _close(got, expected, rtol):
    """|got - expected| <= rtol * (|expected| + 1e-3 * max|expected|), NaN where NaN."""
    got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    assert got.shape == expected.shape
    assert np.array_equal(np.isnan(got), np.isnan(expected)), "NaN in different places"
    finite = ~np.isnan(expected)
    if not finite.any():
        return
    g, e = got[finite], expected[finite]
    scale = 1e-3 * float(np.max(np.abs(e[np.isfinite(e)]), initial=0.0))
    bad = ~((g == e) | (np.abs(g - e) <= rtol * (np.abs(e) + scale)))
    assert not bad.any(), (f"{bad.sum()} of {bad.size} differ; worst: got {g[bad][:4]}, "
                           f"expected {e[bad][:4]}")


U = lrn_ops.U
TINY = 2.0 ** -120  # absolute slack for flushed subnormals (FTZ), far below any test value


def _exact(x, dy, params):
    """The float64 formula, unrounded, with alpha, beta, k as the float32 kernels get them:
    s, y, the direct term d = dy·s^-β, Σ|r| over the mirrored window, and dx."""
    alpha, beta, k = (float(np.float32(v)) for v in (params.alpha, params.beta, params.k))
    lo, hi = params.window
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    with np.errstate(all="ignore"):
        s = k + alpha * lrn_ops._window_sum(x64 * x64, lo, hi, params.groups)
        p = np.power(s, -beta)
        d = dy64 * p
        r = d * x64 / s
        rsum = lrn_ops._window_sum(r, hi, lo, params.groups)
        rabs = lrn_ops._window_sum(np.abs(r), hi, lo, params.groups)
        dx = d - 2.0 * alpha * beta * x64 * rsum
        window_term = 2.0 * alpha * abs(beta) * np.abs(x64) * rabs
    return s, x64 * p, d, window_term, dx


def _within(name, got, exact, allowed):
    """|got - exact| <= allowed where exact is finite; the same NaN and inf elsewhere.
    Returns the worst error as a fraction of the allowed (<= 1 passes)."""
    got = np.asarray(got, np.float64)
    finite = np.isfinite(exact)
    assert np.array_equal(np.isnan(got[~finite]), np.isnan(exact[~finite])), f"{name}: NaN differs"
    assert np.array_equal(got[~finite & ~np.isnan(exact)], exact[~finite & ~np.isnan(exact)]), \
        f"{name}: inf differs"
    err = np.abs(got[finite] - exact[finite])
    ratio = err / allowed[finite]
    bad = ratio > 1.0
    assert not bad.any(), (f"{name}: {bad.sum()} of {bad.size} outside the bound; worst "
                           f"{ratio.max():.3g}x the bound: got {got[finite][bad][:3]}, "
                           f"exact {exact[finite][bad][:3]}")
    return float(ratio.max(initial=0.0))


def _check_bounds(x, dy, params, y, s, dxs):
    """The kernels' y, s and every dx in ``dxs`` against the float64 formula, within
    ``ops.lrn.error_bound`` (relative, in U) plus TINY."""
    lo, hi = lrn_ops.clipped_window(params, x.shape[1])
    b = lrn_ops.error_bound(params, lo + hi + 1)
    s64, y64, d64, window_term, dx64 = _exact(x, dy, params)
    worst = {"scale": _within("s", s, s64, b.scale * U * np.abs(s64) + TINY),
             "forward": _within("y", y, y64, b.forward * U * np.abs(y64) + TINY)}
    allowed = (b.direct * U * np.abs(d64) + b.window * U * window_term + 2 * U * np.abs(dx64)
               + TINY)
    for dx in dxs:
        worst["backward"] = max(worst.get("backward", 0.0), _within("dx", dx, dx64, allowed))
    return worst


def _forward(device, x, params, with_scale=False, chunk=None):
    """``ops.lrn.forward``, or its launch with ``chunk`` channels per thread."""
    if chunk is None:
        return lrn_ops.forward(device, x, params, with_scale)
    y, s = device.xp.empty_like(x), (device.xp.empty_like(x) if with_scale else None)
    device.launch(lrn_ops.forward_launch(device, x, y, params, s, chunk))
    return (y, s) if with_scale else y


def _backward(device, x, dy, params, scale=None, chunk=None):
    """``ops.lrn.backward``, or its launch with ``chunk`` channels per thread."""
    if chunk is None:
        return lrn_ops.backward(device, x, dy, params, scale)
    dx = device.xp.empty_like(x)
    device.launch(lrn_ops.backward_launch(device, x, dy, dx, params, scale, chunk))
    return dx


def _check_kernels(device, x, dy, params, chunk=None):
    """Forward (with and without s) and both backward variants against the references."""
    y_ref, s_ref = lrn_ops.forward_reference(x, params, with_scale=True)
    dx_ref = lrn_ops.backward_reference(x, dy, params)
    dx_saved_ref = lrn_ops.backward_reference(x, dy, params, s_ref)
    xd, dyd = device.asarray(x), device.asarray(dy)
    y = device.to_numpy(_forward(device, xd, params, chunk=chunk))
    y2, s = (device.to_numpy(a) for a in _forward(device, xd, params, True, chunk))
    _close(y, y_ref, 2e-6)
    np.testing.assert_array_equal(y, y2)
    # s: FP32 window sum, within error_bound(...).scale ulps-ish of the float64 formula
    # (it was k + alpha * sum in double, rounded once: bit-equal to s_ref)
    dx = device.to_numpy(_backward(device, xd, dyd, params, chunk=chunk))
    dx2 = device.to_numpy(_backward(device, xd, dyd, params, device.asarray(s), chunk))
    np.testing.assert_array_equal(dx, dx2)  # saved and recomputed s are the same bits
    _close(dx, dx_ref, 2e-5)
    _close(dx2, dx_saved_ref, 2e-5)
    _check_bounds(x, dy, params, y, s, (dx, dx2))
    return y, dx


# --------------------------------------------------------------------------- the reference

@pytest.mark.parametrize("size, groups", [(1, 1), (2, 1), (3, 1), (4, 2), (5, 1), (6, 3), (9, 1)])
def test_reference_is_the_papers_formula(size, groups):
    x = _data((2, 6, 3, 4), seed=size, scale=3.0)
    params = lrn_ops.make_params(size, alpha=0.05, beta=0.6, k=1.5, groups=groups)
    np.testing.assert_allclose(lrn_ops.forward_reference(x.astype(np.float64), params),
                               _direct(x, size, 0.05, 0.6, 1.5, groups), rtol=1e-13)


def test_even_window_reaches_further_down():
    """size 2: W(c) = [c - 1, c]; size 4: [c - 2, c + 1]."""
    x = np.zeros((1, 5, 1, 1))
    x[0, 2] = 10.0  # only channel 2 is non-zero
    params = lrn_ops.make_params(size=2, alpha=1.0, beta=1.0, k=1.0)
    y = lrn_ops.forward_reference(x + 1.0, params)[0, :, 0, 0]
    s = 1.0 + np.array([1, 2, 11**2 + 1, 1 + 11**2, 2])  # windows [c-1, c] of (x+1)^2
    np.testing.assert_allclose(y, (x[0, :, 0, 0] + 1.0) / s, rtol=1e-14)
    assert lrn_ops.make_params(size=4).window == (2, 1)
    assert lrn_ops.make_params(size=5).window == (2, 2)


def test_alpha_is_not_divided_by_size():
    x = np.full((1, 1, 1, 1), 2.0)
    params = lrn_ops.make_params(size=5, alpha=0.25, beta=1.0, k=1.0)
    assert lrn_ops.forward_reference(x, params)[0, 0, 0, 0] == pytest.approx(2.0 / (1.0 + 0.25 * 4))


def test_groups_never_cross():
    x = _data((2, 8, 3, 3), seed=1)
    params = lrn_ops.make_params(size=5, alpha=0.5, groups=2)
    y = lrn_ops.forward_reference(x, params)
    alone = lrn_ops.make_params(size=5, alpha=0.5)
    np.testing.assert_array_equal(y[:, :4], lrn_ops.forward_reference(x[:, :4], alone))
    np.testing.assert_array_equal(y[:, 4:], lrn_ops.forward_reference(x[:, 4:], alone))


def _numeric_grad(f, x, dy, eps=1e-6):
    g = np.zeros_like(x)
    flat, gflat = x.reshape(-1), g.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        up = (f(x) * dy).sum()
        flat[i] = old - eps
        down = (f(x) * dy).sum()
        flat[i] = old
        gflat[i] = (up - down) / (2 * eps)
    return g


@pytest.mark.parametrize("size, groups, channels, beta",
                         [(5, 1, 7, 0.75), (1, 1, 3, 0.75), (4, 2, 6, 0.5), (6, 3, 6, 1.3),
                          (3, 1, 1, 0.75), (9, 1, 4, 2.0)])
def test_backward_reference_matches_finite_differences(size, groups, channels, beta):
    rng = np.random.default_rng(size * 10 + channels)
    x = rng.standard_normal((2, channels, 2, 3)) * 2.0
    dy = rng.standard_normal(x.shape)
    params = lrn_ops.make_params(size, alpha=0.3, beta=beta, k=1.2, groups=groups)
    numeric = _numeric_grad(lambda v: lrn_ops.forward_reference(v, params), x, dy)
    np.testing.assert_allclose(lrn_ops.backward_reference(x, dy, params), numeric,
                               rtol=1e-6, atol=1e-8)


def test_reference_keeps_the_dtype():
    x = _data((1, 3, 2, 2), seed=2)
    for dtype in (np.float32, np.float64):
        y, s = lrn_ops.forward_reference(x.astype(dtype), PAPER, with_scale=True)
        assert y.dtype == dtype and s.dtype == dtype
        assert lrn_ops.backward_reference(x.astype(dtype), x.astype(dtype), PAPER).dtype == dtype


# --------------------------------------------------------------------------- kernels

@pytest.mark.parametrize("chw", [(96, 55, 55), (256, 27, 27)], ids=["lrn1", "lrn2"])
def test_alexnet_shapes(kernel_device, chw):
    x = np.maximum(_data((2, *chw), seed=chw[0], scale=30.0), 0)  # after ReLU: many zeros
    dy = _data((2, *chw), seed=chw[0] + 1)
    _check_kernels(kernel_device, x, dy, PAPER)


def _random_case(seed):
    rng = np.random.default_rng(1000 + seed)
    channels = [1, 2, 3, int(rng.integers(4, 12)), int(rng.integers(40, 140))][seed % 5]
    size = [1, 3, 5, 6, int(rng.integers(2, 12))][seed // 5 % 5]
    groups = int(rng.choice([g for g in (1, 2, 3, 4) if channels % g == 0]))
    h, w = int(rng.integers(1, 10)), int(rng.integers(1, 12))
    n = int(rng.integers(1, 3))
    cg = channels // groups
    chunk = None if seed % 3 == 0 else int(rng.integers(1, cg + 1))
    params = lrn_ops.make_params(size, alpha=float(rng.choice([1e-4, 0.01, 0.3])),
                                 beta=float(rng.choice([0.5, 0.75, 1.7])),
                                 k=float(rng.choice([0.5, 1.0, 2.0])), groups=groups)
    return (n, channels, h, w), params, chunk


@pytest.mark.parametrize("seed", range(30))
def test_random_shapes(kernel_device, seed):
    shape, params, chunk = _random_case(seed)
    x = _data(shape, seed, scale=float(np.random.default_rng(seed).choice([1.0, 10.0, 100.0])))
    dy = _data(shape, seed + 100)
    _check_kernels(kernel_device, x, dy, params, chunk)


def test_chunked_columns_on_a_gpu_shaped_launch():
    """The GPU's default splits short columns' channels into chunks; emu runs that launch."""
    device = require_device("emu")
    shape = (1, 64, 3, 5)
    chunk = lrn_ops.default_chunk(H100, shape, PAPER)
    assert 16 <= chunk < 64
    x, dy = _data(shape, 5, 20.0), _data(shape, 6)
    _check_kernels(device, x, dy, PAPER, chunk)


def test_running_sum_survives_spikes():
    """A value of 1e15 among values of 1e-3: a plain running sum (even in double) would
    keep ~1e14 of rounding error after the spike leaves; the recount removes it."""
    device = require_device("emu")
    rng = np.random.default_rng(7)
    x = (rng.random((1, 400, 1, 3)) * 1e-3).astype(np.float32)
    x[0, [10, 150, 151, 300], 0, :] = np.array([1e15, 1e18, -3e12, 7e9])[:, None]
    x[0, 200:260, :, 1] *= 1e6
    dy = _data(x.shape, 8)
    params = lrn_ops.make_params(size=7, alpha=1e-4, beta=0.75, k=2.0)
    y, dx = _check_kernels(device, x, dy, params)
    quiet = slice(20, 140)  # far from every spike: y = x / 2^0.75 to float precision
    np.testing.assert_allclose(y[0, quiet], x[0, quiet] / 2.0**0.75, rtol=1e-6)


def test_nan_and_inf_stay_in_their_windows(kernel_device):
    x = _data((1, 24, 2, 2), seed=9, scale=3.0)
    x[0, 5, 0, 0] = np.nan
    x[0, 15, 1, 1] = np.inf
    x[0, 16, 1, 1] = -np.inf
    x[0, 20, 0, 1] = np.inf
    dy = _data(x.shape, 10)
    params = lrn_ops.make_params(size=5, alpha=0.01)
    y_ref = lrn_ops.forward_reference(x, params)
    y, _ = _check_kernels(kernel_device, x, dy, params)
    assert np.isnan(y[0, 3:8, 0, 0]).all() and np.isfinite(y[0, 8:, 0, 0]).all()
    assert np.isfinite(y[0, :3, 0, 0]).all()
    np.testing.assert_array_equal(np.isnan(y), np.isnan(y_ref))


def test_inline_backward_redoes_columns_it_cannot_take():
    """The paper's parameters take the backward's inline beta = 0.75 walk; columns with a
    sum of squares past 2^126 (1e20), inf or NaN are redone by the general walk. Every
    column gives the bits of the general walk (the saved-scale backward) and stays within
    the bound, ordinary columns beside them included."""
    device = require_device("emu")
    x = np.maximum(_data((2, 16, 3, 4), 21, 20.0), 0)
    x[0, 7, 0, 0], x[0, 2, 1, 3], x[1, 15, 2, 1], x[1, 0, 0, 2] = 1e20, 3e19, np.inf, np.nan
    dy = _data(x.shape, 22)
    _check_kernels(device, x, dy, PAPER, chunk=5)
    _check_kernels(device, x, dy, PAPER)


def _awkward(kind, shape, seed):
    """Inputs that stress FP32 window sums: huge dynamic range, cancellation, zeros."""
    rng = np.random.default_rng(seed)
    n, c, h, w = shape
    if kind == "range":      # magnitudes 1e-20..1e20 (log-uniform) within every window
        x = 10.0 ** rng.uniform(-20, 20, shape) * rng.choice([-1.0, 1.0], shape)
    elif kind == "cancel":   # huge then tiny along the channel walk, and back
        x = rng.random(shape) * 1e-3
        x[:, c // 4:c // 2] = rng.uniform(1e18, 1e19, (n, c // 2 - c // 4, h, w))
        x[:, 3 * c // 4] = 1e20
        x[:, c - 3] = 1.2e21  # alpha a^2 = 1.44e38: s above 2^126 (fdividef's edge)
    else:                    # zeros: whole columns and runs of channels (after ReLU)
        x = np.maximum(rng.standard_normal(shape) * 10.0, 0.0)
        x[:, c // 3:2 * c // 3] = 0.0
        x[..., 0] = 0.0
    return x.astype(np.float32)


@pytest.mark.parametrize("kind", ["range", "cancel", "zeros"])
@pytest.mark.parametrize("size, groups, beta", [(1, 1, 0.75), (2, 2, 0.75), (3, 1, 1.7),
                                                (4, 2, 0.75), (5, 1, 0.75), (6, 3, 0.5),
                                                (9, 1, 2.0), (12, 1, 0.75)])
def test_error_bound_on_awkward_inputs(kind, size, groups, beta):
    """y, s, dx (both variants, chunked too) within ops.lrn.error_bound of the float64
    formula on 1e-20..1e20 windows, cancellation and zeros, every window size the tests
    use, both power paths, groups."""
    device = require_device("emu")
    shape = (1, 24, 3, 5)
    x = _awkward(kind, shape, seed=size * 7 + groups)
    dy = _data(shape, size)
    params = lrn_ops.make_params(size, alpha=1e-4, beta=beta, k=2.0, groups=groups)
    y, s = (device.to_numpy(a) for a in lrn_ops.forward(device, x, params, with_scale=True))
    dxs = [device.to_numpy(_backward(device, x, dy, params, chunk=chunk)) for chunk in (None, 5)]
    dxs.append(device.to_numpy(lrn_ops.backward(device, x, dy, params, device.asarray(s))))
    worst = _check_bounds(x, dy, params, y, s, dxs)
    assert all(v <= 1.0 for v in worst.values())


def test_power_paths_against_float64():
    """s^-beta over s from 1e-30 to 1e38: beta = 0.75 (rsqrt) and the split exp2/log2
    path, each within error_bound(...).power (plus the product's rounding) in ulps."""
    device = require_device("emu")
    s_values = (10.0 ** np.linspace(-30, 38, 64 * 5)).astype(np.float32)
    for beta in (0.75, 0.5, 1.7, -0.6, 3.0):
        params = lrn_ops.make_params(size=1, alpha=0.0, beta=beta, k=1.0)
        # alpha = 0, size 1: s = k for every element; vary s through k per call instead
        x = np.ones((1, 1, 1, 1), np.float32)
        got, want = [], []
        for k in s_values[::16]:
            p = lrn_ops.make_params(size=1, alpha=0.0, beta=beta, k=float(k))
            got.append(float(device.to_numpy(lrn_ops.forward(device, x, p))[0, 0, 0, 0]))
            want.append(float(np.float64(np.float32(k)) ** -float(np.float32(beta))))
        got, want = np.array(got), np.array(want)
        ok = np.isfinite(want) & (np.abs(want) > 2.0 ** -120) & (np.abs(want) < 2.0 ** 127)
        bound = (lrn_ops.error_bound(params, 1).power + 1) * U
        assert np.all(np.abs(got[ok] - want[ok]) <= bound * np.abs(want[ok])), beta


def test_emu_schedule_and_shared_fill_do_not_matter():
    """Reverse thread/block order and NaN-filled shared memory give the same bits."""
    from convnet.backend import emu
    device = require_device("emu")
    x = np.maximum(_data((2, 12, 5, 7), 11, 10.0), 0)
    dy = _data(x.shape, 12)
    params = lrn_ops.make_params(size=4, alpha=0.01, groups=2)
    pool = pool_ops.make_params(3, 2, 1)

    def run():
        y, s = lrn_ops.forward(device, x, params, with_scale=True)
        return (y, s, lrn_ops.backward(device, x, dy, params),
                lrn_ops.backward(device, x, dy, params, s),
                _backward(device, x, dy, params, chunk=2),
                *fused_ops.forward(device, x, params, pool, fuse=True),
                fused_ops.backward(device, x, fused_ops.forward(device, x, params, pool)[0],
                                   fused_ops.forward(device, x, params, pool)[1], params, pool,
                                   fuse=True))

    forward = run()
    with emu.debug(schedule="reverse", fill_shared=True):
        reverse = run()
    for a, b in zip(forward, reverse):
        np.testing.assert_array_equal(a, b)


def test_index_checks():
    """check="bounds": every index into fixed-size arrays checked (the kernels' own
    arrays are dynamic shared memory, checked under AddressSanitizer below)."""
    from convnet.backend import emu
    device = require_device("emu")
    params = lrn_ops.make_params(size=6, alpha=0.1, groups=3)
    with emu.debug(check="bounds"):
        for shape in [(1, 3, 2, 2), (2, 9, 3, 5)]:
            x, dy = _data(shape, 13), _data(shape, 14)
            _check_kernels(device, x, dy, params, chunk=2)
            pool = pool_ops.make_params(2, 1, 1)
            y, argmax = fused_ops.forward(device, x, params, pool, fuse=True)
            fused_ops.backward(device, x, y, argmax, params, pool, fuse=True)


_ASAN_SCRIPT = textwrap.dedent("""
    import numpy as np
    import convnet
    from convnet.backend import emu
    from convnet.ops import lrn, lrn_max_pool, max_pool
    device = convnet.get_device("emu")
    rng = np.random.default_rng(0)
    cases = [((1, 1, 1, 1), 5, 1, None), ((2, 7, 3, 5), 6, 1, 2), ((1, 12, 4, 3), 3, 4, 1),
             ((1, 6, 5, 4), 12, 2, None)]
    with emu.debug(check="address"):
        for shape, size, groups, chunk in cases:
            params = lrn.make_params(size, alpha=0.1, groups=groups)
            x = rng.standard_normal(shape).astype(np.float32)
            y, s, dx, dx2 = (np.empty_like(x) for _ in range(4))
            device.launch(lrn.forward_launch(device, x, y, params, s, chunk))
            device.launch(lrn.backward_launch(device, x, x, dx, params, None, chunk))
            device.launch(lrn.backward_launch(device, x, x, dx2, params, s, chunk))
            assert np.allclose(y, lrn.forward_reference(x, params), rtol=1e-5)
            assert np.allclose(dx, dx2, rtol=1e-4, atol=1e-6)
            for pool in (max_pool.make_params(3, 2, 1), max_pool.make_params(1, 1, 0)):
                if shape[2] + 2 * pool.ph >= pool.kh and shape[3] + 2 * pool.pw >= pool.kw:
                    f = lrn_max_pool.forward(device, x, params, pool, fuse=True)
                    ref = max_pool.forward_reference(lrn.forward_reference(x, params), pool)
                    assert np.array_equal(f[1], ref[1])
                    dx = np.empty_like(x)
                    device.launch(lrn_max_pool.backward_launch(device, x, f[0], f[1], dx, params,
                                                               pool, chunk))
                    dz = max_pool.backward(device, f[0], f[1], pool, x.shape)
                    assert np.array_equal(dx, lrn.backward(device, x, dz, params))
    print("CLEAN")
""")


def test_lrn_kernels_under_address_sanitizer():
    """No out-of-bounds access to global or dynamic shared memory (rings, chunks, edges)."""
    run_clean_under_asan(_ASAN_SCRIPT)


# --------------------------------------------------------------------------- fused with max-pool

@pytest.mark.parametrize("case", range(8))
def test_fused_forward_equals_lrn_then_pool(kernel_device, case):
    rng = np.random.default_rng(2000 + case)
    channels = int(rng.choice([1, 3, 8, 40]))
    groups = int(rng.choice([g for g in (1, 2, 4) if channels % g == 0]))
    kernel = int(rng.choice([1, 2, 3]))
    stride, pad = int(rng.choice([1, 2, 3])), int(rng.integers(0, kernel // 2 + 1))
    h, w = int(rng.integers(kernel, 30)), int(rng.integers(kernel, 30))
    params = lrn_ops.make_params(int(rng.choice([1, 4, 5])), alpha=0.05, groups=groups)
    pool = pool_ops.make_params(kernel, stride, pad)
    x = kernel_device.asarray(np.maximum(_data((2, channels, h, w), case, 5.0), 0))
    z = lrn_ops.forward(kernel_device, x, params)
    y_seq, a_seq = pool_ops.forward(kernel_device, z, pool)
    y, a = fused_ops.forward(kernel_device, x, params, pool, fuse=True)
    np.testing.assert_array_equal(kernel_device.to_numpy(y), kernel_device.to_numpy(y_seq))
    np.testing.assert_array_equal(kernel_device.to_numpy(a), kernel_device.to_numpy(a_seq))


@pytest.mark.parametrize("stride,h,w,channels", [(2, 55, 55, 6), (2, 27, 13, 7), (1, 9, 12, 3),
                                                   (3, 10, 17, 5), (2, 3, 4, 2)])
def test_fused_forward_3x3_unclipped_path(kernel_device, stride, h, w, channels):
    """3x3 windows without padding (the unrolled pool path, outputs walked without
    divisions; tiles with more or fewer outputs than threads): the same bits as LRN then
    max-pool, with ties (plateaus of zeros) choosing the first maximum and NaN windows
    the first NaN."""
    # k = 0 (s = 0 on the zero plateaus: powf's path) and a huge alpha (s = inf) where
    # the stride is 1 or 3: the inline loop is not taken there
    params = lrn_ops.make_params(5, alpha=0.05 if stride == 2 else (3e38 if stride == 3 else 0.05),
                                 k=2.0 if stride == 2 else 0.0)
    pool = pool_ops.make_params(3, stride, 0)
    x = np.maximum(_data((2, channels, h, w), stride + h, 5.0), 0)
    x[:, :, ::3, :] = 0.0  # plateaus
    if stride == 2:
        # NaN, inf and 1e20 (s past 2^126): the fast channel loop's `rare` steps, redone
        x[0, channels // 2, 1, 1:4] = [np.nan, np.inf, 1e20]
        x[1, 0, h - 1, w - 1] = np.nan
    x = kernel_device.asarray(x)
    y_seq, a_seq = pool_ops.forward(kernel_device, lrn_ops.forward(kernel_device, x, params), pool)
    y, a = fused_ops.forward(kernel_device, x, params, pool, fuse=True)
    np.testing.assert_array_equal(kernel_device.to_numpy(y), kernel_device.to_numpy(y_seq))
    np.testing.assert_array_equal(kernel_device.to_numpy(a), kernel_device.to_numpy(a_seq))


def test_fused_geometry():
    pool = pool_ops.make_params(3, 2, 0)
    g = fused_ops.geometry(H100, (128, 96, 55, 55), PAPER, pool)
    assert (g.tile_h, g.tile_w) == (9, 9) and g.threads == 19 * 19  # 27 outputs as 3 x 9
    # the paper's window sits in registers: no ring, z only
    assert g.shared_bytes == 4 * g.threads * g.depth <= lrn_ops.PREFERRED_SHARED_BYTES
    assert g.depth == fused_ops.MAX_DEPTH
    assert g.blocks == 128 * 9
    g = fused_ops.geometry(EMU, (1, 4, 27, 27), PAPER, pool)
    assert (g.tile_h, g.tile_w) == (7, 7) and g.depth == 4  # 13 outputs as 7 + 6


@pytest.mark.parametrize("case", range(6))
def test_fused_backward_equals_pool_then_lrn(kernel_device, case):
    """lrn_max_pool_backward: the same bits as max_pool_backward then lrn_backward<false>
    (padding, strides, overlapping and non-overlapping windows, groups, chunks)."""
    rng = np.random.default_rng(3000 + case)
    channels = int(rng.choice([1, 3, 8, 20]))
    groups = int(rng.choice([g for g in (1, 2, 4) if channels % g == 0]))
    kernel = int(rng.choice([1, 2, 3]))
    stride, pad = int(rng.choice([1, 2, 3])), int(rng.integers(0, kernel // 2 + 1))
    h, w = int(rng.integers(kernel, 14)), int(rng.integers(kernel, 14))
    params = lrn_ops.make_params(int(rng.choice([1, 4, 5])), alpha=0.05,
                                 beta=float(rng.choice([0.75, 1.3])), groups=groups)
    pool = pool_ops.make_params(kernel, stride, pad)
    x_h = np.maximum(_data((2, channels, h, w), case, 5.0), 0)
    x_h[0, 0, :2, :2] = 1.0  # ties
    x = kernel_device.asarray(x_h)
    y, argmax = fused_ops.forward(kernel_device, x, params, pool, fuse=True)
    dy = kernel_device.asarray(_data(y.shape, case + 50))
    fused = fused_ops.backward(kernel_device, x, dy, argmax, params, pool, fuse=True)
    dz = pool_ops.backward(kernel_device, dy, argmax, pool, x.shape)
    separate = lrn_ops.backward(kernel_device, x, dz, params)
    np.testing.assert_array_equal(kernel_device.to_numpy(fused), kernel_device.to_numpy(separate))
    if case % 2:  # a GPU-shaped launch: channels split into chunks
        dx = kernel_device.xp.empty_like(x)
        kernel_device.launch(fused_ops.backward_launch(kernel_device, x, dy, argmax, dx, params,
                                                       pool, chunk=2))
        np.testing.assert_array_equal(kernel_device.to_numpy(dx), kernel_device.to_numpy(separate))


def test_fused_backward_errors():
    device = require_device("emu")
    x = np.ones((1, 4, 5, 5), np.float32)
    pool = pool_ops.make_params(3, 2, 0)
    y, argmax = fused_ops.forward(device, x, PAPER, pool, fuse=True)
    with pytest.raises(ValueError, match="dy has shape .* expected the pooled shape"):
        fused_ops.backward(device, x, np.ones((1, 4, 3, 3), np.float32), argmax, PAPER, pool)
    with pytest.raises(TypeError, match="argmax must be uint8"):
        fused_ops.backward(device, x, y, argmax.astype(np.int32), PAPER, pool, fuse=True)


# --------------------------------------------------------------------------- autograd

def test_autograd_on_every_device(device):
    x = np.maximum(_data((2, 10, 4, 5), 15, 20.0), 0)
    dy = _data(x.shape, 16)
    params = lrn_ops.make_params(size=3, alpha=0.01, groups=2)
    t = convnet.tensor(x, device=device, requires_grad=True)
    y = F.local_response_norm(t, size=3, alpha=0.01, groups=2)
    assert y.device == device and y.requires_grad
    y.backward(convnet.tensor(dy, device=device))
    _close(y.numpy(), lrn_ops.forward_reference(x, params), 2e-6)
    _close(t.grad.numpy(), lrn_ops.backward_reference(x, dy, params), 2e-5)


def test_autograd_float64_on_cpu_is_the_gradient():
    rng = np.random.default_rng(17)
    x = rng.standard_normal((1, 5, 2, 2)) * 3
    dy = rng.standard_normal(x.shape)
    t = convnet.tensor(x, requires_grad=True)
    F.local_response_norm(t, size=4, alpha=0.2, beta=0.8, k=1.0).backward(dy)
    params = lrn_ops.make_params(4, 0.2, 0.8, 1.0)
    numeric = _numeric_grad(lambda v: lrn_ops.forward_reference(v, params), x, dy)
    np.testing.assert_allclose(t.grad.numpy(), numeric, rtol=1e-6, atol=1e-9)


def test_lrn_max_pool_autograd_equals_the_sequence(device):
    x = np.maximum(_data((2, 8, 11, 9), 18, 10.0), 0)
    x[0, 0, :3, :3] = 1.0  # ties in a window
    t1 = convnet.tensor(x, device=device, requires_grad=True)
    t2 = convnet.tensor(x, device=device, requires_grad=True)
    y1 = F.max_pool2d(F.local_response_norm(t1, groups=2), 3, 2, 1)
    y2 = F.local_response_norm_max_pool2d(t2, groups=2, kernel_size=3, stride=2, padding=1)
    np.testing.assert_array_equal(y1.numpy(), y2.numpy())
    dy = _data(y1.shape, 19)
    y1.backward(dy)
    y2.backward(dy)
    np.testing.assert_array_equal(t1.grad.numpy(), t2.grad.numpy())


def test_what_the_function_saves():
    device = require_device("emu")
    x = convnet.tensor(_data((1, 4, 3, 3), 20), device=device, requires_grad=True)
    node = F.local_response_norm(x).grad_fn
    assert node.saved[0] is x.data
    assert (node.saved[1] is not None) == lrn_ops.saves_scale(device)
    cpu_node = F.local_response_norm(convnet.tensor(x.numpy(), requires_grad=True)).grad_fn
    assert cpu_node.saved[1] is None  # the reference recomputes s
    with convnet.no_grad():
        assert F.local_response_norm(x).grad_fn is None


def test_empty_tensors_launch_nothing(kernel_device, monkeypatch):
    forbid_launches(monkeypatch, kernel_device, "an empty tensor must not launch")
    for shape in [(0, 4, 3, 3), (2, 4, 0, 3), (1, 0, 2, 2)]:
        x = kernel_device.asarray(np.zeros(shape, np.float32))
        assert lrn_ops.forward(kernel_device, x, PAPER).shape == shape
        assert lrn_ops.backward(kernel_device, x, x, PAPER).shape == shape


# --------------------------------------------------------------------------- errors

def test_argument_errors():
    x = convnet.tensor(np.ones((1, 6, 2, 2), np.float32))
    with pytest.raises(ValueError, match="size must be an integer >= 1"):
        F.local_response_norm(x, size=0)
    with pytest.raises(TypeError, match="size must be an int"):
        F.local_response_norm(x, size=2.5)
    with pytest.raises(TypeError, match="size must be an int"):
        F.local_response_norm(x, size=True)
    with pytest.raises(ValueError, match="k must be >= 0"):
        F.local_response_norm(x, k=-1.0)
    with pytest.raises(ValueError, match="alpha must be >= 0"):
        F.local_response_norm(x, alpha=-1e-4)
    with pytest.raises(ValueError, match="beta must be finite"):
        F.local_response_norm(x, beta=float("nan"))
    with pytest.raises(ValueError, match="k must be finite .*float32"):
        F.local_response_norm(x, k=1e39)
    with pytest.raises(ValueError, match="6 channels cannot be split into 4"):
        F.local_response_norm(x, groups=4)
    with pytest.raises(ValueError, match="groups must be an integer >= 1"):
        F.local_response_norm(x, groups=0)
    with pytest.raises(ValueError, match=r"expects an \(N, C, H, W\) tensor, got shape \(6, 2, 2\)"):
        F.local_response_norm(convnet.tensor(np.ones((6, 2, 2), np.float32)))
    with pytest.raises(TypeError, match="floating point"):
        F.local_response_norm(convnet.tensor(np.ones((1, 2, 2, 2), np.int32)))
    with pytest.raises(TypeError, match="convnet.Tensor"):
        F.local_response_norm(np.ones((1, 2, 2, 2), np.float32))
    with pytest.raises(ValueError, match="kernel .* larger than the padded input"):
        F.local_response_norm_max_pool2d(x, kernel_size=3, padding=0)


def test_kernel_errors(kernel_device):
    with pytest.raises(TypeError, match="float32.*float64"):
        lrn_ops.forward(kernel_device, kernel_device.asarray(np.ones((1, 2, 2, 2))), PAPER)
    x = kernel_device.asarray(np.ones((1, 600, 1, 1), np.float32))
    with pytest.raises(ValueError, match="window of 1199 channels .* limit of 512"):
        lrn_ops.forward(kernel_device, x, lrn_ops.make_params(size=1200))
    with pytest.raises(ValueError, match="shapes differ"):
        lrn_ops.backward(kernel_device, x, kernel_device.asarray(np.ones((1, 600, 1, 2), np.float32)),
                         PAPER)


def test_launch_geometry():
    g = lrn_ops.geometry(H100, (128, 96, 55, 55), PAPER, rings=3)
    assert (g.lo, g.hi, g.chunk, g.threads) == (2, 2, 96, 256)  # enough columns: no split
    assert g.shared_bytes == 256 * 3 * 5 * 4 and g.blocks == -(-128 * 55 * 55 // 256)
    g = lrn_ops.geometry(H100, (2, 256, 13, 13), PAPER, rings=1)
    assert g.chunk == 16 and g.columns == 2 * 16 * 169  # few columns: split into chunks
    g = lrn_ops.geometry(EMU, (2, 256, 13, 13), PAPER, rings=1)
    assert g.chunk == 256 and g.blocks <= lrn_ops.EMU_MAX_BLOCKS  # emu: whole columns
    g = lrn_ops.geometry(H100, (1, 300, 1, 1), lrn_ops.make_params(size=401), rings=3)
    assert (g.lo, g.hi) == (200, 200) and g.threads == 32 and g.shared_bytes > 48 * 1024
    g = lrn_ops.geometry(H100, (1, 4, 1, 1), lrn_ops.make_params(size=101), rings=3)
    assert (g.lo, g.hi, g.threads) == (3, 3, 256)  # clipped to the group: the same windows
    launch = lrn_ops.forward_launch(EMU, np.zeros((1, 4, 2, 2), np.float32),
                                    np.zeros((1, 4, 2, 2), np.float32), PAPER)
    assert launch.name == "lrn_forward<false, 5>" and isinstance(launch.args[-1], np.float32)
