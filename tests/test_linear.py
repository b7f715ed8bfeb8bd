"""Fully-connected layers and the shape ops around them: the bias/ReLU epilogue kernels
(kernels/linear.cu) against the NumPy reference, misaligned rows, both emulator
schedules with NaN-filled shared memory and bounds checks, finite-difference gradients
of linear, flatten and cat in float64, every device through autograd, and the errors;
and the epilogue, cross-entropy and SGD kernels under AddressSanitizer."""
from __future__ import annotations

import textwrap

import numpy as np
import pytest

import convnet
from convnet import DeviceError
from convnet import functional as F
from convnet.ops import linear as linear_ops

from conftest import require_device, run_clean_under_asan
from gradcheck import check_grads, weighted_sum

CPU = convnet.get_device("cpu")
# (rows, in, out): ones, primes, sizes around the float4 groups and the 32-column blocks
SHAPES = [(1, 1, 1), (3, 5, 7), (4, 9, 32), (17, 33, 33), (9, 16, 65), (130, 7, 5)]


def _data(shape, seed, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _operands(rows, k, out, seed=0):
    return _data((rows, k), seed), _data((out, k), seed + 1), _data((out,), seed + 2)


@pytest.mark.parametrize("relu", [False, True], ids=["identity", "relu"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_epilogue_matches_reference(kernel_device, shape, relu):
    rows, _, out = shape
    z = _data((rows, out), seed=rows * out)
    b = _data((out,), seed=out)
    dy = _data((rows, out), seed=7)
    y = kernel_device.to_numpy(linear_ops.epilogue(kernel_device, kernel_device.asarray(z.copy()),
                                                   kernel_device.asarray(b), relu))
    np.testing.assert_array_equal(y, linear_ops.epilogue_reference(z, b, relu))
    dz, db = linear_ops.epilogue_backward(kernel_device, kernel_device.asarray(y),
                                          kernel_device.asarray(dy), relu, True)
    dz_ref, db_ref = linear_ops.epilogue_backward_reference(y, dy, relu, True)
    np.testing.assert_array_equal(kernel_device.to_numpy(dz), dz_ref)
    np.testing.assert_allclose(kernel_device.to_numpy(db), db_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("offset", [1, 3])
def test_epilogue_on_misaligned_rows(offset):
    """A product that starts off a 16-byte boundary takes the scalar path of the kernel."""
    device = require_device("emu")
    rows, cols = 5, 7
    base = _data((rows * cols + offset,), seed=offset)
    z = base[offset:].reshape(rows, cols)
    assert z.ctypes.data % 16 != 0
    b = _data((cols,), seed=9)
    expected = linear_ops.epilogue_reference(z.copy(), b, True)
    device.launch(linear_ops.forward_launch(device, z, b, True))
    np.testing.assert_array_equal(z, expected)


def test_emu_debug_modes_give_identical_results():
    """Reverse schedule, NaN-filled shared memory and index checks: no race, no read of
    unwritten shared memory, no out-of-range index."""
    from convnet.backend import emu
    device = require_device("emu")
    rows, cols = 19, 45
    y = np.abs(_data((rows, cols), seed=1)) * np.sign(_data((rows, cols), seed=2))
    dy = _data((rows, cols), seed=3)
    plain = linear_ops.epilogue_backward(device, y, dy, True, True)
    with emu.debug(schedule="reverse", fill_shared=True, check="bounds"):
        checked = linear_ops.epilogue_backward(device, y, dy, True, True)
        db_only = linear_ops.epilogue_backward(device, y, dy, False, True)[1]
    for a, b in zip(plain, checked):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(db_only, linear_ops.epilogue_backward(device, y, dy, False,
                                                                        True)[1])


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("relu", [False, True], ids=["identity", "relu"])
def test_autograd_on_every_device(device, relu, bias):
    x, w, b = _operands(6, 10, 9, seed=4)
    dy = _data((6, 9), seed=5)
    leaves = [convnet.tensor(a, device=device, requires_grad=True)
              for a in ((x, w, b) if bias else (x, w))]
    y = F.linear(*leaves[:2], leaves[2] if bias else None, relu=relu)
    assert y.device == device and y.shape == (6, 9) and y.dtype == np.float32
    y.backward(convnet.tensor(dy, device=device))
    ref = [convnet.tensor(a.astype(np.float64), requires_grad=True) for a in ((x, w, b) if bias
                                                                              else (x, w))]
    y_ref = F.linear(*ref[:2], ref[2] if bias else None, relu=relu)
    y_ref.backward(dy.astype(np.float64))
    np.testing.assert_allclose(y.numpy(), y_ref.numpy(), rtol=1e-5, atol=1e-5)
    for leaf, r in zip(leaves, ref):
        np.testing.assert_allclose(leaf.grad.numpy(), r.grad.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("relu", [False, True], ids=["identity", "relu"])
def test_linear_gradients_float64(relu, bias):
    x, w, b = _operands(4, 6, 5, seed=10)
    pre = x.astype(np.float64) @ w.T.astype(np.float64) + b
    assert np.abs(pre).min() > 1e-3  # finite differences stay on one side of ReLU's kink
    leaves = [convnet.tensor(a.astype(np.float64), requires_grad=True) for a in (x, w, b)]
    used = leaves if bias else leaves[:2]

    def f():
        return weighted_sum(F.linear(used[0], used[1], used[2] if bias else None, relu=relu))
    check_grads(f, used)


def test_no_gradient_is_computed_for_what_needs_none(monkeypatch):
    x, w, b = _operands(3, 4, 5, seed=11)
    xt = convnet.tensor(x)  # no grad
    wt = convnet.tensor(w, requires_grad=True)
    bt = convnet.tensor(b)
    F.linear(xt, wt, bt, relu=True).sum().backward()
    assert wt.grad is not None and xt.grad is None and bt.grad is None
    frozen = F.linear(xt, convnet.tensor(w), bt)
    assert not frozen.requires_grad


def test_empty_batch(kernel_device):
    w, b = _data((4, 3), 1), _data((4,), 2)
    x = convnet.tensor(np.zeros((0, 3), np.float32), device=kernel_device, requires_grad=True)
    wt = convnet.tensor(w, device=kernel_device, requires_grad=True)
    bt = convnet.tensor(b, device=kernel_device, requires_grad=True)
    y = F.linear(x, wt, bt, relu=True)
    assert y.shape == (0, 4)
    y.backward(np.zeros((0, 4), np.float32))
    np.testing.assert_array_equal(bt.grad.numpy(), np.zeros(4, np.float32))
    np.testing.assert_array_equal(wt.grad.numpy(), np.zeros((4, 3), np.float32))


def test_linear_errors(kernel_device):
    x = convnet.tensor(_data((2, 3), 1), device=kernel_device)
    w = convnet.tensor(_data((4, 3), 2), device=kernel_device)
    with pytest.raises(ValueError, match="2-D.*flatten"):
        F.linear(convnet.tensor(_data((2, 3, 1), 1), device=kernel_device), w)
    with pytest.raises(ValueError, match="3 features.*expects 5"):
        F.linear(x, convnet.tensor(_data((4, 5), 2), device=kernel_device))
    with pytest.raises(ValueError, match=r"bias must have shape \(4,\)"):
        F.linear(x, w, convnet.tensor(_data((3,), 3), device=kernel_device))
    with pytest.raises(TypeError, match="float32.*float64"):
        F.linear(convnet.tensor(_data((2, 3), 1, np.float64), device=kernel_device),
                 convnet.tensor(_data((4, 3), 2, np.float64), device=kernel_device))
    with pytest.raises(TypeError, match="floating point"):
        F.linear(convnet.tensor(np.ones((2, 3), np.int32), device=kernel_device), w)
    with pytest.raises(TypeError, match="convnet.Tensor"):
        F.linear(np.ones((2, 3), np.float32), w)
    with pytest.raises(DeviceError, match="different devices"):
        F.linear(x, convnet.tensor(_data((4, 3), 2)))


# --------------------------------------------------------------------------- flatten and cat

def test_flatten_and_cat_gradients_float64():
    a = convnet.tensor(_data((2, 3, 2, 2), 20, np.float64), requires_grad=True)
    b = convnet.tensor(_data((2, 1, 2, 2), 21, np.float64), requires_grad=True)
    c = convnet.tensor(_data((2, 5), 22, np.float64), requires_grad=True)

    def f():
        joined = F.cat([a, b], dim=1)  # channels
        flat = F.flatten(joined)
        return weighted_sum(F.cat([flat, c], dim=-1))
    check_grads(f, [a, b, c])


def test_flatten_and_cat_shapes_and_order(device):
    a = _data((2, 3, 2, 2), 1)
    b = _data((2, 5, 2, 2), 2)
    ta, tb = convnet.tensor(a, device=device), convnet.tensor(b, device=device)
    joined = F.cat([ta, tb])
    assert joined.shape == (2, 8, 2, 2) and joined.device == device
    np.testing.assert_array_equal(joined.numpy(), np.concatenate([a, b], axis=1))
    flat = F.flatten(joined)
    assert flat.shape == (2, 32)
    np.testing.assert_array_equal(flat.numpy(), np.concatenate([a, b], axis=1).reshape(2, -1))
    assert F.flatten(ta, start_dim=2).shape == (2, 3, 4)
    assert F.cat([ta]) is ta


def test_cat_gradient_goes_only_where_needed():
    a = convnet.tensor(_data((2, 3), 1), requires_grad=True)
    b = convnet.tensor(_data((2, 2), 2))
    out = F.cat([a, b])
    out.backward(np.arange(10, dtype=np.float32).reshape(2, 5))
    np.testing.assert_array_equal(a.grad.numpy(), [[0, 1, 2], [5, 6, 7]])
    assert b.grad is None


def test_shape_op_errors():
    a = convnet.tensor(_data((2, 3), 1))
    other = convnet.get_device("emu") if "emu" in convnet.devices() else None
    if other is not None:
        with pytest.raises(DeviceError, match="across devices"):
            F.cat([a, a.to(other)])
    with pytest.raises(ValueError, match="non-empty"):
        F.cat([])
    with pytest.raises(ValueError, match="agree except along dim 1"):
        F.cat([a, convnet.tensor(_data((3, 3), 2))])
    with pytest.raises(ValueError, match="out of range"):
        F.cat([a, a], dim=2)
    with pytest.raises(TypeError, match="dtype"):
        F.cat([a, convnet.tensor(_data((2, 3), 1, np.float64))])
    with pytest.raises(ValueError, match="out of range"):
        F.flatten(a, start_dim=2)
    with pytest.raises(TypeError, match="int"):
        F.flatten(a, start_dim=1.0)


_ASAN_SCRIPT = textwrap.dedent("""
    import numpy as np
    import convnet
    from convnet.backend import emu
    from convnet.ops import cross_entropy, dropout, linear, sgd
    device = convnet.get_device("emu")
    rng = np.random.default_rng(0)
    for rows, cols in ((1, 1), (3, 5), (2, 33), (5, 4)):
        for offset in range(4):  # views ending exactly at the end of their allocation
            n = rows * cols
            z = rng.standard_normal(n + offset).astype(np.float32)[offset:].reshape(rows, cols)
            b = rng.standard_normal(cols + offset).astype(np.float32)[offset:]
            dy = rng.standard_normal(n + offset).astype(np.float32)[offset:].reshape(rows, cols)
            labels = rng.integers(0, cols, rows)
            w, v = z.copy().reshape(-1)[:n], dy.copy().reshape(-1)[:n]
            with emu.debug(check="address"):
                y = linear.epilogue(device, z.copy(), b, True)
                dz, db = linear.epilogue_backward(device, y, dy, True, True)
                _, db2 = linear.epilogue_backward(device, y, dy, False, True)
                loss, saved = cross_entropy.forward(device, z, labels)
                dx = cross_entropy.backward(device, z, saved, np.float32(1.0))
                sgd.update(device, w, v, dy.reshape(-1), 0.1, 0.9, 0.01)
                sgd.update_many(device, [w, v], [v.copy(), w.copy()], [dy.reshape(-1), w],
                                [0.1, 0.2], 0.9, [0.01, 0.0])
                drop = dropout.plan(0.5, seed=7)
                yd = linear.epilogue(device, z.copy(), b, True, drop)
                linear.epilogue_backward(device, yd, dy, True, True, drop)
            ref_dz, ref_db = linear.epilogue_backward_reference(y, dy, True, True)
            assert np.array_equal(dz, ref_dz) and np.allclose(db, ref_db, atol=1e-5)
            assert np.allclose(db2, dy.sum(axis=0), atol=1e-5)
            assert np.isfinite(loss).all() and np.isfinite(dx).all()
    print("CLEAN")
""")


def test_kernels_under_address_sanitizer():
    """No out-of-bounds access in the epilogue, cross-entropy and SGD kernels, on arrays
    that end exactly where their allocation ends (float4 and scalar paths)."""
    run_clean_under_asan(_ASAN_SCRIPT)


# --------------------------------------------------------------------------- dropout in the epilogue

DROP_MODES = [dict(), dict(check="bounds", schedule="reverse", fill_shared=True),
              dict(check="race", schedule="random", seed=4), dict(check="init", fill_empty=True),
              dict(check="align")]


@pytest.mark.parametrize("mode", DROP_MODES, ids=lambda m: ",".join(f"{k}={v}" for k, v in m.items()) or "plain")
def test_dropout_epilogue_bit_for_bit_with_separate_kernels(mode):
    """bias_relu_dropout_forward = bias_act_forward<true> then dropout_apply, bit for bit;
    bias_relu_dropout_backward's dz = the reference's bits and db the bits of dropout then
    bias_relu_backward (the same sum order) and its column sums (float64 bound: rows ·
    2^-24 · Σ|dz|), on awkward shapes (cols % 4 != 0: each lane its own Philox counter;
    cols % 32 != 0: a partial warp; rows > 128: a warp's second pass of 16 rows),
    misaligned views, every plan kind (p = 0, 1, paper eval)."""
    from convnet.backend import emu
    from convnet.ops import dropout as dropout_ops
    device = require_device("emu")
    rng = np.random.default_rng(5)
    plans = [dropout_ops.plan(0.5, True, "paper", seed=11), dropout_ops.plan(0.3, True, "inverted", seed=2**63 + 5),
             dropout_ops.plan(0.5, False, "paper"), dropout_ops.plan(0.0, True, "paper", seed=1),
             dropout_ops.plan(1.0, True, "inverted", seed=3)]
    for rows, cols in ((1, 1), (3, 5), (2, 33), (5, 4), (37, 12), (9, 64), (70, 3), (133, 44)):
        for offset in (0, 1):
            n = rows * cols
            z = rng.standard_normal(n + offset).astype(np.float32)[offset:].reshape(rows, cols)
            b = rng.standard_normal(cols).astype(np.float32)
            dy = rng.standard_normal(n + offset).astype(np.float32)[offset:].reshape(rows, cols)
            for drop in plans:
                with emu.debug(**mode):
                    y = linear_ops.epilogue(device, z.copy(), b, True, drop)
                    dz, db = linear_ops.epilogue_backward(device, y, dy, True, True, drop)
                separate = dropout_ops.apply(device, linear_ops.epilogue(device, z.copy(), b, True), drop)
                np.testing.assert_array_equal(y, separate)
                np.testing.assert_array_equal(y, linear_ops.epilogue_dropout_reference(z, b, True, drop))
                ref_dz, _ = linear_ops.epilogue_dropout_backward_reference(y, dy, True, True, drop)
                np.testing.assert_array_equal(dz, ref_dz)
                _, separate_db = linear_ops.epilogue_backward(device, y, dropout_ops.apply(device, dy, drop),
                                                              True, True)
                np.testing.assert_array_equal(db, separate_db)
                exact = ref_dz.astype(np.float64).sum(axis=0)
                bound = rows * 2.0**-24 * np.abs(ref_dz).astype(np.float64).sum(axis=0)
                assert np.all(np.abs(db - exact) <= bound), (rows, cols, drop)


@pytest.mark.parametrize("device_name", ["cpu", "emu", "cuda:0"])
def test_functional_linear_dropout_equals_linear_then_dropout(device_name):
    """F.linear(..., dropout=p) gives F.dropout(F.linear(...)) exactly: outputs and all
    three gradients, training (both modes) and the paper mode's eval scaling; the fused
    backward's paths (out % 4 != 0; out % 4 == 0 with a partial warp and rows > 128)."""
    device = require_device(device_name)
    rng = np.random.default_rng(3)
    for rows, k, out in ((5, 7, 13), (4, 6, 32), (133, 3, 44)):
        x0, w0, b0, g0 = (rng.standard_normal(s).astype(np.float32)
                          for s in ((rows, k), (out, k), (out,), (rows, out)))
        for mode, training in (("paper", True), ("inverted", True), ("paper", False)):
            results = []
            for fused in (True, False):
                x, w, b = (convnet.tensor(a, device=device, requires_grad=True) for a in (x0, w0, b0))
                if fused:
                    y = F.linear(x, w, b, relu=True, dropout=0.5, training=training, seed=9, mode=mode)
                else:
                    y = F.dropout(F.linear(x, w, b, relu=True), 0.5, training=training, seed=9, mode=mode)
                (y * convnet.tensor(g0, device=device)).sum().backward()
                results.append([t.numpy() for t in (y, x.grad, w.grad, b.grad)])
            for a, e in zip(*results):
                np.testing.assert_array_equal(a, e)
    with pytest.raises(ValueError, match="dropout"):
        F.linear(convnet.tensor(x0), convnet.tensor(w0), dropout=1.5)


def test_dropout_epilogue_launches():
    """One launch each way; the fused backward's grid covers the columns a warp at a time."""
    from convnet.ops import dropout as dropout_ops
    device = require_device("emu")
    drop = dropout_ops.plan(0.5, seed=1)
    y, dy, dz = (np.zeros((128, 4096), np.float32) for _ in range(3))
    b, db = np.zeros(4096, np.float32), np.zeros(4096, np.float32)
    forward = linear_ops.forward_dropout_launch(device, y, b, drop)
    backward = linear_ops.backward_dropout_launch(y, dy, dz, db, drop)
    assert forward.name == "bias_relu_dropout_forward"
    assert backward.grid == (4096 // linear_ops.DROP_BLOCK[0], 1, 1)
    assert backward.block == linear_ops.DROP_BLOCK + (1,)
