"""Max-pooling: the kernels (emu, cuda) against the NumPy reference, bit for bit
(values, argmax, gradients), on AlexNet's shapes and 30 seeded random shapes; ties,
NaN, -inf and padding; the reference against a direct loop and finite differences
(float64); both backward variants; both emulator schedules; index checks and
AddressSanitizer; autograd and the errors."""
from __future__ import annotations

import textwrap
from types import SimpleNamespace

import numpy as np
import pytest

import convnet
from convnet import functional as F
from convnet.ops import max_pool as pool_ops

from conftest import forbid_launches, require_device, run_clean_under_asan

CPU = convnet.get_device("cpu")
ALEXNET = pool_ops.make_params(3, 2, 0)
EMU = SimpleNamespace(kind="emu", parallel_units=2)  # what the launch builders read


def _data(shape, seed, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _direct(x, p):
    """The window maximum and its offset by plain loops (first maximum, first NaN)."""
    n, c, oh, ow = pool_ops.output_shape(x.shape, p)
    y = np.empty((n, c, oh, ow), x.dtype)
    a = np.empty((n, c, oh, ow), np.int64)
    for i in range(oh):
        for j in range(ow):
            best = None
            for di in range(p.kh):
                for dj in range(p.kw):
                    h, w = i * p.sh - p.ph + di, j * p.sw - p.pw + dj
                    if not (0 <= h < x.shape[2] and 0 <= w < x.shape[3]):
                        continue
                    v = x[:, :, h, w]
                    if best is None:
                        best, where = v.copy(), np.full(v.shape, di * p.kw + dj)
                        continue
                    take = (v > best) | (np.isnan(v) & ~np.isnan(best))
                    best = np.where(take, v, best)
                    where = np.where(take, di * p.kw + dj, where)
            y[:, :, i, j], a[:, :, i, j] = best, where
    return y, a


def _run(device, x, p, dy):
    """Forward (with and without argmax) and both backward variants, as NumPy arrays."""
    xd = device.asarray(x)
    y, a = pool_ops.forward(device, xd, p)
    y0, none = pool_ops.forward(device, xd, p, with_index=False)
    assert none is None
    dx = pool_ops.backward(device, device.asarray(dy), a, p, x.shape)
    dx2 = pool_ops.backward_recompute(device, xd, device.asarray(dy), p)
    y, y0, a, dx, dx2 = (device.to_numpy(v) for v in (y, y0, a, dx, dx2))
    np.testing.assert_array_equal(y, y0)
    np.testing.assert_array_equal(dx, dx2)
    return y, a, dx


def _check_kernels(device, x, p, seed=0):
    y_ref, a_ref = pool_ops.forward_reference(x, p)
    dy = _data(y_ref.shape, seed + 1)
    y, a, dx = _run(device, x, p, dy)
    assert y.dtype == np.float32 and a.dtype == pool_ops.index_dtype(p)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(a, a_ref)
    np.testing.assert_array_equal(dx, pool_ops.backward_reference(dy, a_ref, p, x.shape))


# --------------------------------------------------------------------------- the reference

@pytest.mark.parametrize("kernel, stride, pad", [(3, 2, 0), (3, 2, 1), (2, 1, 1), (1, 1, 0),
                                                 ((2, 3), (1, 2), (1, 1)), (4, 3, 2)])
def test_reference_is_the_window_maximum(kernel, stride, pad):
    p = pool_ops.make_params(kernel, stride, pad)
    x = _data((2, 3, 9, 8), seed=1)
    x[0, 0] = 1.0  # ties everywhere
    x[1, 1, 2:4, 3:6] = np.nan
    x[1, 2, :5] = -np.inf
    y, a = pool_ops.forward_reference(x, p)
    y_dir, a_dir = _direct(x, p)
    np.testing.assert_array_equal(y, y_dir)
    np.testing.assert_array_equal(a, a_dir)


def test_output_size_is_pytorchs():
    for (h, k, s, pad), expected in {(55, 3, 2, 0): 27, (27, 3, 2, 0): 13, (13, 3, 2, 0): 6,
                                     (5, 2, 2, 0): 2, (5, 3, 2, 1): 3, (4, 3, 1, 1): 4,
                                     (3, 3, 3, 0): 1, (7, 2, 3, 1): 3}.items():
        p = pool_ops.make_params(k, s, pad)
        assert pool_ops.output_shape((1, 1, h, h), p)[2:] == (expected, expected)


@pytest.mark.parametrize("kernel, stride, pad", [(3, 2, 0), (3, 2, 1), (2, 1, 0), (3, 1, 1)])
def test_backward_reference_matches_finite_differences(kernel, stride, pad):
    """Away from ties (distinct random values), the max is smooth in its input."""
    p = pool_ops.make_params(kernel, stride, pad)
    rng = np.random.default_rng(kernel * 10 + stride)
    x = rng.standard_normal((2, 2, 7, 6))
    _, a = pool_ops.forward_reference(x, p)
    dy = rng.standard_normal(pool_ops.output_shape(x.shape, p))
    dx = pool_ops.backward_reference(dy, a, p, x.shape)
    numeric = np.zeros_like(x)
    eps = 1e-6
    for i in range(x.size):
        xp, xm = x.copy().reshape(-1), x.copy().reshape(-1)
        xp[i] += eps
        xm[i] -= eps
        up = (pool_ops.forward_reference(xp.reshape(x.shape), p)[0] * dy).sum()
        down = (pool_ops.forward_reference(xm.reshape(x.shape), p)[0] * dy).sum()
        numeric.reshape(-1)[i] = (up - down) / (2 * eps)
    np.testing.assert_allclose(dx, numeric, rtol=1e-7, atol=1e-9)


def test_overlapping_windows_add_their_gradients():
    x = np.zeros((1, 1, 3, 5), np.float32)
    x[0, 0, 1, 2] = 5.0  # in both 3x3 windows (stride 2: columns 0-2 and 2-4)
    p = pool_ops.make_params(3, 2, 0)
    y, a = pool_ops.forward_reference(x, p)
    np.testing.assert_array_equal(a, [[[[5, 3]]]])  # offsets 1*3+2 and 1*3+0
    dx = pool_ops.backward_reference(np.array([[[[1.5, 2.0]]]], np.float32), a, p, x.shape)
    expected = np.zeros_like(x)
    expected[0, 0, 1, 2] = 3.5
    np.testing.assert_array_equal(dx, expected)


# --------------------------------------------------------------------------- kernels

@pytest.mark.parametrize("chw", [(96, 55, 55), (256, 27, 27), (256, 13, 13)],
                         ids=["55to27", "27to13", "13to6"])
def test_alexnet_shapes(kernel_device, chw):
    x = np.maximum(_data((2, *chw), seed=chw[1]), 0)  # after ReLU: ties at zero
    _check_kernels(kernel_device, x, ALEXNET, seed=chw[1])


def _random_case(seed):
    rng = np.random.default_rng(3000 + seed)
    kh, kw = (int(rng.choice([1, 2, 3])) for _ in range(2))
    if seed % 2:
        kw = kh  # half the cases square
    sh, sw = (int(rng.choice([1, 2, 3])) for _ in range(2))
    ph, pw = int(rng.integers(0, kh // 2 + 1)), int(rng.integers(0, kw // 2 + 1))
    h = int(rng.integers(max(1, kh - 2 * ph), 20))
    w = int(rng.integers(max(1, kw - 2 * pw), 20))
    c = [1, 2, 3, 5, int(rng.integers(30, 70))][seed % 5]
    return (int(rng.integers(1, 3)), c, h, w), pool_ops.make_params((kh, kw), (sh, sw), (ph, pw))


@pytest.mark.parametrize("seed", range(30))
def test_random_shapes(kernel_device, seed):
    shape, p = _random_case(seed)
    x = _data(shape, seed)
    if seed % 3 == 0:
        x = np.round(x)  # many ties
    _check_kernels(kernel_device, x, p, seed)


def test_ties_go_to_the_first_in_window_order(kernel_device):
    x = np.full((2, 3, 7, 7), 0.5, np.float32)
    p = pool_ops.make_params(3, 2, 1)
    y, a, _ = _run(kernel_device, x, p, np.ones((2, 3, 4, 4), np.float32))
    assert (y == 0.5).all()
    # the first real element: row 1 / column 1 of the window where padding comes first
    first = np.array([1 * 3 + 1, 1 * 3 + 0, 1 * 3 + 0, 1 * 3 + 0])
    expected = np.where(np.arange(4)[:, None] == 0, first[None, :], first[None, :] - 3)
    np.testing.assert_array_equal(a[0, 0], expected)
    _check_kernels(kernel_device, x, p)
    x[:, :, 1::2, 1::2] = -0.0  # +0 and -0 tie too
    x[:, :, ::2, ::2] = 0.0
    _check_kernels(kernel_device, x, pool_ops.make_params(2, 1, 0))


def test_nan_propagates_and_takes_the_gradient(kernel_device):
    x = _data((1, 2, 6, 6), seed=4)
    x[0, 0, 2, 3] = np.nan
    x[0, 0, 3, 2] = np.nan  # second NaN, later in window order
    x[0, 1, 0, 0] = np.nan
    p = pool_ops.make_params(3, 1, 1)
    dy = np.ones(pool_ops.output_shape(x.shape, p), np.float32)
    y, a, dx = _run(kernel_device, x, p, dy)
    y_ref, a_ref = pool_ops.forward_reference(x, p)
    np.testing.assert_array_equal(y, y_ref)  # NaN in the same places
    np.testing.assert_array_equal(a, a_ref)
    assert np.isnan(y[0, 0, 1:4, 2:5]).all() and np.isnan(y[0, 1, :2, :2]).all()
    # output (2, 3) sees both NaNs; the first in row-major order is (2, 3): offset 1*3+1
    assert a[0, 0, 2, 3] == 4
    assert dx[0, 0, 2, 3] > 0 and dx[0, 1, 0, 0] == 4  # every window over (0, 0) chose it


def test_minus_infinity_windows_choose_a_real_element(kernel_device):
    x = np.full((1, 1, 4, 4), -np.inf, np.float32)
    p = pool_ops.make_params(3, 2, 1)
    _check_kernels(kernel_device, x, p)
    y, a = pool_ops.forward_reference(x, p)
    assert (y == -np.inf).all() and a[0, 0, 0, 0] == 4  # (1, 1): the first real element


def test_large_windows_use_int32_offsets(kernel_device):
    p = pool_ops.make_params(17, 1, 8)
    assert pool_ops.index_dtype(p) == np.int32
    assert pool_ops.index_dtype(pool_ops.make_params(16, 1, 0)) == np.uint8
    _check_kernels(kernel_device, _data((1, 2, 20, 18), seed=5), p)


def test_many_small_planes(kernel_device):
    """Groups of several planes, and more groups than the grid covers at once (emu: the
    threads loop over them)."""
    x = _data((3, 70, 5, 4), seed=14)
    p = pool_ops.make_params(2, 2, 1)
    grid, block, group = pool_ops.launch_shape(EMU, pool_ops.output_shape(x.shape, p))
    assert block == (pool_ops.BLOCK,) and grid[1] * group < 210
    _check_kernels(kernel_device, x, p)


GPU_SHAPE = SimpleNamespace(kind="cuda", parallel_units=132)


def _launch_views(device, x, p, dy, offset, shape_of=GPU_SHAPE):
    """The four kernels launched with ``shape_of``'s launch shape into outputs that start
    ``offset`` elements into their buffers (offset 1: misaligned for float4/uchar4, so
    only the scalar path may run)."""
    xp = device.xp
    out_shape = pool_ops.output_shape(x.shape, p)
    size = int(np.prod(out_shape))

    def view(n, dtype):
        buf = xp.full(n + offset + 3, 7, dtype=dtype)
        return buf, buf[offset:offset + n]

    xd, dyd = device.asarray(x), device.asarray(dy)
    ybuf, y = view(size, np.float32)
    abuf, a = view(size, pool_ops.index_dtype(p))
    y0buf, y0 = view(size, np.float32)
    dxbuf, dx = view(x.size, np.float32)
    dx2buf, dx2 = view(x.size, np.float32)
    y, a, y0 = (v.reshape(out_shape) for v in (y, a, y0))
    dx, dx2 = dx.reshape(x.shape), dx2.reshape(x.shape)
    device.launch(pool_ops.forward_launch(shape_of, xd, y, p, a))
    device.launch(pool_ops.forward_launch(shape_of, xd, y0, p))
    device.launch(pool_ops.backward_launch(shape_of, dyd, a, dx, p))
    device.launch(pool_ops.backward_recompute_launch(shape_of, xd, dyd, dx2, p))
    for buf, n in ((ybuf, size), (abuf, size), (y0buf, size), (dxbuf, x.size), (dx2buf, x.size)):
        rest = np.concatenate([device.to_numpy(buf[:offset]), device.to_numpy(buf[offset + n:])])
        assert (rest == 7).all(), "a kernel wrote outside its output"
    return tuple(device.to_numpy(v) for v in (y, a, y0, dx, dx2))


@pytest.mark.parametrize("offset", [0, 1, 4])
@pytest.mark.parametrize("shape", [(2, 3, 13, 13), (1, 5, 7, 9), (3, 4, 6, 6)])
def test_vector_and_scalar_stores(kernel_device, offset, shape):
    """Quads stored as float4/uchar4 where aligned, element by element where not (odd
    plane sizes, odd plane counts, views starting one element in), with the GPU's
    one-group launch and emu's groups of 4: the same values, nothing outside written."""
    x = np.round(_data(shape, seed=sum(shape) + offset), 1)
    p = ALEXNET if shape[2] > 6 else pool_ops.make_params(3, 1, 1)
    dy = _data(pool_ops.output_shape(shape, p), seed=offset)
    y_ref, a_ref = pool_ops.forward_reference(x, p)
    dx_ref = pool_ops.backward_reference(dy, a_ref, p, shape)
    for shape_of in (GPU_SHAPE, EMU):
        y, a, y0, dx, dx2 = _launch_views(kernel_device, x, p, dy, offset, shape_of)
        np.testing.assert_array_equal(y, y_ref)
        np.testing.assert_array_equal(y0, y_ref)
        np.testing.assert_array_equal(a, a_ref)
        np.testing.assert_array_equal(dx, dx_ref)
        np.testing.assert_array_equal(dx2, dx_ref)


def test_emu_schedule_and_shared_fill_do_not_matter():
    from convnet.backend import emu
    device = require_device("emu")
    x = np.round(_data((2, 5, 13, 11), seed=6))
    p = pool_ops.make_params(3, 2, 1)
    dy = _data(pool_ops.output_shape(x.shape, p), seed=7)
    forward = _run(device, x, p, dy)
    with emu.debug(schedule="reverse", fill_shared=True):
        reverse = _run(device, x, p, dy)
    for a, b in zip(forward, reverse):
        np.testing.assert_array_equal(a, b)


def test_index_checks():
    from convnet.backend import emu
    device = require_device("emu")
    with emu.debug(check="bounds"):
        for shape, p in [((1, 2, 5, 5), ALEXNET), ((2, 3, 7, 4), pool_ops.make_params(2, 1, 1))]:
            _check_kernels(device, _data(shape, seed=8), p)


_ASAN_SCRIPT = textwrap.dedent("""
    import numpy as np
    import convnet
    from convnet.backend import emu
    from convnet.ops import max_pool
    device = convnet.get_device("emu")
    rng = np.random.default_rng(0)
    cases = [((1, 1, 1, 1), (1, 1, 0)), ((1, 2, 3, 3), (3, 2, 1)), ((2, 3, 7, 6), (3, 2, 0)),
             ((1, 1, 5, 9), ((2, 3), (2, 1), (1, 1))), ((1, 1, 18, 17), (17, 1, 8))]
    with emu.debug(check="address"):
        for shape, args in cases:
            p = max_pool.make_params(*args)
            x = rng.standard_normal(shape).astype(np.float32)
            y, a = max_pool.forward(device, x, p)
            y0, _ = max_pool.forward(device, x, p, with_index=False)
            dx = max_pool.backward(device, y, a, p, shape)
            dx2 = max_pool.backward_recompute(device, x, y, p)
            ref = max_pool.forward_reference(x, p)
            assert np.array_equal(y, ref[0]) and np.array_equal(a, ref[1])
            assert np.array_equal(dx, dx2) and np.array_equal(y, y0)
    print("CLEAN")
""")


def test_pool_kernels_under_address_sanitizer():
    """No out-of-bounds access at the edges, with padding, uint8 and int32 offsets."""
    run_clean_under_asan(_ASAN_SCRIPT)


def test_launch_shape():
    x = np.zeros((128, 96, 55, 55), np.float32)
    y = np.zeros((128, 96, 27, 27), np.float32)
    launch = pool_ops.forward_launch(EMU, x, y, ALEXNET, np.zeros(y.shape, np.uint8))
    assert launch.name == "max_pool_forward_index<unsigned char>"
    # a thread per quad of outputs of a group of planes laid end to end (32-bit index
    # math), groups of EMU_GROUP planes on emu, EMU_MAX_GROUPS blocks of them along y
    assert launch.block == (pool_ops.BLOCK, 1, 1)
    quads = -(-pool_ops.EMU_GROUP * 27 * 27 // 4)
    assert launch.grid == (-(-quads // pool_ops.BLOCK), pool_ops.EMU_MAX_GROUPS, 1)
    back = pool_ops.backward_launch(EMU, y, np.zeros(y.shape, np.uint8), x, ALEXNET)
    # 3/2 windows: the backward's PAIR path, a thread per PAIR_COLS columns of a row
    assert back.name == "max_pool_backward<unsigned char, 2>"  # stride-2 columns, pw even
    assert back.grid == (-(-pool_ops.EMU_GROUP * 55 * 7 // pool_ops.BLOCK),
                         pool_ops.EMU_MAX_GROUPS, 1)
    assert pool_ops.forward_launch(EMU, x, y, ALEXNET).name == "max_pool_forward"
    # a GPU takes every plane in one group: pool5's 6x6 maps fill every lane
    gpu = SimpleNamespace(kind="cuda", parallel_units=132)
    small = pool_ops.forward_launch(gpu, np.zeros((128, 256, 13, 13), np.float32),
                                    np.zeros((128, 256, 6, 6), np.float32), ALEXNET)
    assert small.grid == (128 * 256 * 36 // 4 // pool_ops.BLOCK, 1, 1)
    assert int(small.args[13]) == 128 * 256  # group: every plane (x, y, planes, 10 shape ints)
    # a group of 4 planes past the 32-bit index: one plane per group, no vector stores
    assert pool_ops.plane_group(gpu, 8, 2**30) == 1
    assert pool_ops.plane_group(gpu, 5, 6 * 6) == 8
    with pytest.raises(ValueError, match="int32"):
        pool_ops.plane_group(gpu, 1, 2**31)


def test_divisor_is_exact():
    """The packed multiply-high division equals // for divisors and numerators at the
    edges of [1, 2^31) and at random."""
    rng = np.random.default_rng(0)
    ds = [1, 2, 3, 7, 36, 169, 3025, 2**30, 2**30 + 1, 2**31 - 1]
    ds += [int(v) for v in rng.integers(1, 2**31, 200)]
    for d in ds:
        packed = int(pool_ops.divisor(d))
        m, shift = packed & 0xFFFFFFFF, packed >> 32
        ns = [0, 1, d - 1, d, 2 * d - 1, 2**31 - 1] + [int(v) for v in rng.integers(0, 2**31, 50)]
        for n in (v for v in ns if 0 <= v < 2**31):
            assert (((n * m) >> 32) + n) >> shift == n // d, (n, d)
    with pytest.raises(ValueError):
        pool_ops.divisor(0)


# --------------------------------------------------------------------------- autograd

def test_autograd_on_every_device(device):
    x = np.round(_data((2, 4, 9, 10), seed=9), 1)
    t = convnet.tensor(x, device=device, requires_grad=True)
    y = F.max_pool2d(t, 3, 2, 1)
    assert y.device == device and y.requires_grad and y.shape == (2, 4, 5, 5)
    dy = _data(y.shape, seed=10)
    y.backward(convnet.tensor(dy, device=device))
    p = pool_ops.make_params(3, 2, 1)
    y_ref, a_ref = pool_ops.forward_reference(x, p)
    np.testing.assert_array_equal(y.numpy(), y_ref)
    np.testing.assert_array_equal(t.grad.numpy(), pool_ops.backward_reference(dy, a_ref, p, x.shape))


def test_autograd_float64_on_cpu():
    x = _data((1, 2, 6, 6), seed=11, dtype=np.float64)
    t = convnet.tensor(x, requires_grad=True)
    y = F.max_pool2d(t)  # the paper's 3/2
    assert y.dtype == np.float64 and y.shape == (1, 2, 2, 2)
    y.sum().backward()
    assert t.grad.dtype == np.float64 and t.grad.numpy().sum() == 8.0


def test_the_function_saves_only_the_argmax():
    device = require_device("emu")
    x = convnet.tensor(_data((1, 3, 8, 8), seed=12), device=device, requires_grad=True)
    node = F.max_pool2d(x).grad_fn
    (argmax,) = node.saved
    assert argmax.dtype == np.uint8 and argmax.shape == (1, 3, 3, 3)
    with convnet.no_grad():
        assert F.max_pool2d(x).grad_fn is None


def test_stride_none_is_the_kernel_size():
    t = convnet.tensor(_data((1, 1, 6, 6), seed=13))
    assert F.max_pool2d(t, kernel_size=2, stride=None).shape == (1, 1, 3, 3)
    assert F.max_pool2d(t, kernel_size=(3, 2), stride=(1, 2), padding=(1, 0)).shape == (1, 1, 6, 3)


def test_empty_batch_launches_nothing(kernel_device, monkeypatch):
    forbid_launches(monkeypatch, kernel_device, "an empty tensor must not launch")
    x = kernel_device.asarray(np.zeros((0, 3, 5, 5), np.float32))
    y, a = pool_ops.forward(kernel_device, x, ALEXNET)
    assert y.shape == (0, 3, 2, 2)
    assert pool_ops.backward(kernel_device, y, a, ALEXNET, x.shape).shape == (0, 3, 5, 5)


# --------------------------------------------------------------------------- errors

def test_errors():
    t = convnet.tensor(np.ones((1, 1, 4, 4), np.float32))
    with pytest.raises(ValueError, match=r"kernel \(5, 5\) is larger than the padded input \(4, 4\)"):
        F.max_pool2d(t, kernel_size=5)
    with pytest.raises(ValueError, match="kernel .* larger than the padded input"):
        F.max_pool2d(convnet.tensor(np.ones((1, 1, 1, 9), np.float32)), kernel_size=3, padding=0)
    with pytest.raises(ValueError, match="padding .* at most half the kernel"):
        F.max_pool2d(t, kernel_size=3, padding=2)
    with pytest.raises(ValueError, match="kernel_size must be positive"):
        F.max_pool2d(t, kernel_size=0)
    with pytest.raises(ValueError, match="stride must be positive"):
        F.max_pool2d(t, stride=0)
    with pytest.raises(ValueError, match="padding must be non-negative"):
        F.max_pool2d(t, padding=-1)
    with pytest.raises(TypeError, match="kernel_size must be an int or a pair"):
        F.max_pool2d(t, kernel_size=2.0)
    with pytest.raises(TypeError, match="kernel_size must be an int or a pair"):
        F.max_pool2d(t, kernel_size=True)
    with pytest.raises(ValueError, match="kernel_size must be an int or a pair"):
        F.max_pool2d(t, kernel_size=(2, 2, 2))
    with pytest.raises(ValueError, match=r"expects an \(N, C, H, W\) tensor, got shape \(4, 4\)"):
        F.max_pool2d(convnet.tensor(np.ones((4, 4), np.float32)))
    with pytest.raises(TypeError, match="floating point"):
        F.max_pool2d(convnet.tensor(np.ones((1, 1, 4, 4), np.int64)))
    with pytest.raises(TypeError, match="convnet.Tensor"):
        F.max_pool2d(np.ones((1, 1, 4, 4), np.float32))


def test_kernel_errors(kernel_device):
    with pytest.raises(TypeError, match="float32.*float64"):
        pool_ops.forward(kernel_device, kernel_device.asarray(np.ones((1, 1, 4, 4))), ALEXNET)
    x = kernel_device.asarray(np.ones((1, 1, 5, 5), np.float32))
    y, a = pool_ops.forward(kernel_device, x, ALEXNET)
    with pytest.raises(ValueError, match=r"dy has shape \(1, 1, 3, 3\)"):
        pool_ops.backward(kernel_device, kernel_device.asarray(np.ones((1, 1, 3, 3), np.float32)),
                          a, ALEXNET, (1, 1, 5, 5))
    with pytest.raises(TypeError, match="argmax has dtype int32, expected uint8"):
        pool_ops.backward(kernel_device, y, a.astype(np.int32), ALEXNET, (1, 1, 5, 5))


@pytest.mark.parametrize("k, s, pad, shape", [((3, 3), (2, 2), (0, 0), (2, 3, 13, 13)),
                                              ((3, 2), (2, 1), (1, 1), (1, 5, 9, 8)),
                                              ((1, 2), (3, 2), (0, 1), (2, 2, 10, 7)),
                                              ((4, 2), (2, 1), (2, 0), (1, 3, 11, 5)),
                                              # float4 rows: W % 8 == 4 ends halfway
                                              # through a thread's eight columns
                                              ((3, 3), (2, 2), (1, 1), (2, 2, 6, 12)),
                                              ((2, 2), (2, 2), (0, 0), (1, 3, 4, 4)),
                                              # stride-2 columns: kw = 4 with odd padding,
                                              # another row stride
                                              ((4, 4), (2, 2), (1, 1), (1, 2, 11, 10)),
                                              ((3, 3), (3, 2), (1, 1), (2, 2, 10, 9))])
def test_pair_backward_matches_the_general_gather(kernel_device, k, s, pad, shape):
    """kernel <= 2 x stride takes the PAIR path (four windows, no division per element);
    it gives the general gather's dx bit for bit, ties and -0.0 gradients included."""
    p = pool_ops.make_params(k, s, pad)
    assert pool_ops.covers_pairs(p)
    dev = kernel_device
    x = np.round(_data(shape, 7))  # many ties: several windows pick one input
    y, a = pool_ops.forward(dev, dev.asarray(x), p)
    dy = _data(pool_ops.output_shape(shape, p), 8)
    dy[..., ::3] = -0.0
    pair = pool_ops.backward_launch(dev, dev.asarray(dy), a, dev.xp.empty(shape, np.float32), p)
    path = pool_ops.backward_path(p)
    assert pair.name == f"max_pool_backward<unsigned char, {path}>"
    assert path == (2 + pad[1] % 2 if s[1] == 2 else 1)
    general = dev.xp.empty(shape, np.float32)
    grid, block, group = pool_ops.launch_shape(dev, shape)
    args = pool_ops._shape_args(shape, dy.shape, p, group, True)
    dev.launch(pool_ops.Launch(pool_ops.MODULE, "max_pool_backward", grid=grid, block=block,
                               args=(*pair.args[:2], general, *args),
                               template_args=("unsigned char", 0)))
    dev.launch(pair)
    got, want = dev.to_numpy(pair.args[2]), dev.to_numpy(general)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    _, a_ref = pool_ops.forward_reference(x, p)
    ref = pool_ops.backward_reference(dy, a_ref, p, shape)
    np.testing.assert_array_equal(got.view(np.uint32), ref.view(np.uint32))


def test_pair_path_only_where_two_windows_cover():
    assert pool_ops.covers_pairs(ALEXNET)
    assert not pool_ops.covers_pairs(pool_ops.make_params(3, 1, 1))
    assert not pool_ops.covers_pairs(pool_ops.make_params((2, 5), (1, 2), 0))
    y = np.zeros((1, 1, 2, 2), np.float32)
    name = pool_ops.backward_launch(EMU, y, np.zeros(y.shape, np.uint8),
                                    np.zeros((1, 1, 5, 5), np.float32),
                                    pool_ops.make_params(3, 1, 0)).name
    assert name == "max_pool_backward<unsigned char, 0>"
