"""The paper's SGD: the fused update kernel (kernels/sgd.cu) against the NumPy reference
over sizes around the float4 groups and misaligned views, the rule worked by hand,
convnet.optim.SGD (momentum over steps, multipliers, parameters without gradients,
set_lr, state dicts, parameters on two devices) and its errors."""
from __future__ import annotations

import numpy as np
import pytest

import convnet
from convnet import optim
from convnet.ops import sgd as sgd_ops

from conftest import require_device

CPU = convnet.get_device("cpu")
SIZES = [1, 3, 4, 5, 255, 1023, 1025, 4099]
PAPER = dict(lr=0.01, momentum=0.9, weight_decay=0.0005)


def _data(shape, seed, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _hand_rule(w, v, g, lr, momentum, weight_decay):
    """The paper's rule in float64: v ← μv − λεw − εg, w ← w + v."""
    w, v, g = (a.astype(np.float64) for a in (w, v, g))
    v = momentum * v - weight_decay * lr * w - lr * g
    return w + v, v


@pytest.mark.parametrize("n", SIZES)
def test_kernel_matches_reference(kernel_device, n):
    w, v, g = _data(n, n), _data(n, n + 1), _data(n, n + 2)
    dw, dv = kernel_device.asarray(w.copy()), kernel_device.asarray(v.copy())
    sgd_ops.update(kernel_device, dw, dv, kernel_device.asarray(g), 0.05, 0.9, 0.01)
    rw, rv = w.copy(), v.copy()
    sgd_ops.update(CPU, rw, rv, g, 0.05, 0.9, 0.01)
    # float32 results of values near 1: a few units in the last place (FMA contraction)
    np.testing.assert_allclose(kernel_device.to_numpy(dw), rw, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(kernel_device.to_numpy(dv), rv, rtol=1e-6, atol=1e-6)
    hw, hv = _hand_rule(w, v, g, 0.05, 0.9, 0.01)
    np.testing.assert_allclose(rw, hw, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(rv, hv, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("offset", [1, 2])
def test_misaligned_views(offset):
    device = require_device("emu")
    n = 1031
    base = [_data(n + offset, seed) for seed in (1, 2, 3)]
    w, v, g = (b[offset:] for b in base)
    assert w.ctypes.data % 16 != 0
    rw, rv = w.copy(), v.copy()
    sgd_ops.update(CPU, rw, rv, g, 0.01, 0.9, 0.0005)
    sgd_ops.update(device, w, v, g, 0.01, 0.9, 0.0005)
    np.testing.assert_allclose(w, rw, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(v, rv, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(base[0][:offset], _data(n + offset, 1)[:offset])  # untouched


def test_rule_by_hand_with_the_papers_numbers():
    w = np.array([1.0, -2.0, 0.5])
    v = np.array([0.1, 0.0, -0.2])
    g = np.array([0.3, -1.0, 0.0])
    sgd_ops.update(CPU, w, v, g, 0.01, 0.9, 0.0005)
    # v = 0.9·v − 0.0005·0.01·w − 0.01·g
    expected_v = np.array([0.09 - 5e-6 - 0.003, 0.0 + 1e-5 + 0.01, -0.18 - 2.5e-6 - 0.0])
    np.testing.assert_allclose(v, expected_v, rtol=1e-12)
    np.testing.assert_allclose(w, np.array([1.0, -2.0, 0.5]) + expected_v, rtol=1e-12)


def _param(array, device="cpu"):
    return convnet.tensor(array, device=device, requires_grad=True)


def test_momentum_accumulates_over_steps(device):
    w0 = _data((4, 3), 1)
    grads = [_data((4, 3), 10 + i) for i in range(3)]
    p = _param(w0, device)
    opt = optim.SGD([p], **PAPER)
    w, v = w0.astype(np.float64), np.zeros((4, 3))
    for g in grads:
        p.grad = convnet.tensor(g, device=device)
        opt.step()
        w, v = _hand_rule(w, v, g, **PAPER)
    np.testing.assert_allclose(p.numpy(), w, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(convnet.get_device(device).to_numpy(opt.velocity["0"]), v,
                               rtol=1e-4, atol=1e-8)
    assert opt.steps == 3


def test_multipliers_by_name_and_pattern():
    params = {"fc.weight": _param(np.ones(3)), "fc.bias": _param(np.ones(2)),
              "conv.bias": _param(np.ones(1))}
    opt = optim.SGD(params, lr=0.1, momentum=0.0, weight_decay=0.5,
                    lr_multipliers={"*.bias": 2.0}, weight_decay_multipliers={"fc.bias": 0.0})
    for p in params.values():
        p.grad = convnet.tensor(np.ones(p.shape))
    opt.step()
    # w − decay·lr·w − lr·g with lr = 0.1·mult, decay = 0.5·mult
    np.testing.assert_allclose(params["fc.weight"].numpy(), 1 - 0.5 * 0.1 - 0.1)
    np.testing.assert_allclose(params["fc.bias"].numpy(), 1 - 0.0 - 0.2)
    np.testing.assert_allclose(params["conv.bias"].numpy(), 1 - 0.5 * 0.2 - 0.2)


def test_parameters_without_gradient_are_left_alone_and_set_lr():
    a, b = _param(np.ones(2)), _param(np.ones(2))
    opt = optim.SGD([a, b], lr=1.0, momentum=0.0, weight_decay=0.0)
    a.grad = convnet.tensor(np.ones(2))
    opt.step()
    np.testing.assert_array_equal(a.numpy(), [0.0, 0.0])
    np.testing.assert_array_equal(b.numpy(), [1.0, 1.0])
    opt.set_lr(0.1)
    a.grad = convnet.tensor(np.ones(2))
    opt.step()
    np.testing.assert_allclose(a.numpy(), [-0.1, -0.1])
    opt.zero_grad()
    assert a.grad is None and b.grad is None


def test_state_dict_round_trip_continues_identically():
    w0 = _data(6, 1)
    grads = [_data(6, 20 + i) for i in range(4)]

    def run(split):
        p = _param(w0.copy())
        opt = optim.SGD([("w", p)], **PAPER)
        for i, g in enumerate(grads):
            if i == split:
                state, weights = opt.state_dict(), p.numpy().copy()
                p = _param(weights)
                opt = optim.SGD([("w", p)], lr=0.5)  # other settings, replaced by the load
                opt.load_state_dict(state)
            p.grad = convnet.tensor(g)
            opt.step()
        return p.numpy(), opt
    straight, _ = run(split=None)
    resumed, opt = run(split=2)
    np.testing.assert_array_equal(straight, resumed)
    assert opt.lr == PAPER["lr"] and opt.steps == 4


def test_load_state_dict_errors_name_what_differs():
    opt = optim.SGD({"a": _param(np.ones(2)), "b": _param(np.ones(3))})
    state = opt.state_dict()
    bad = dict(state, velocity={"a": np.zeros(5), "c": np.zeros(3)})
    with pytest.raises(ValueError, match=r"missing: b.*unexpected: c.*a: shape \(5,\) given, "
                                         r"\(2,\) expected"):
        opt.load_state_dict(bad)
    with pytest.raises(KeyError, match="velocity"):
        opt.load_state_dict({"lr": 0.1, "momentum": 0.9, "weight_decay": 0.0})
    before = opt.velocity["a"].copy()
    with pytest.raises(ValueError, match="momentum"):
        opt.load_state_dict(dict(state, momentum=1.5))
    np.testing.assert_array_equal(opt.velocity["a"], before)


def test_parameters_on_two_devices_are_updated_where_they_live():
    emu = require_device("emu")
    a, b = _param(_data(5, 1)), _param(_data(5, 2), emu)
    opt = optim.SGD([a, b], **PAPER)
    assert opt.velocity["1"].__class__ is np.ndarray
    ga, gb = _data(5, 3), _data(5, 4)
    a.grad, b.grad = convnet.tensor(ga), convnet.tensor(gb, device=emu)
    opt.step()
    np.testing.assert_allclose(a.numpy(), _hand_rule(_data(5, 1), np.zeros(5), ga, **PAPER)[0],
                               rtol=1e-6)
    np.testing.assert_allclose(b.numpy(), _hand_rule(_data(5, 2), np.zeros(5), gb, **PAPER)[0],
                               rtol=1e-6)
    assert a.device.name == "cpu" and b.device.name == "emu"


def test_errors():
    p = _param(np.ones(3))
    with pytest.raises(ValueError, match="lr must be >= 0"):
        optim.SGD([p], lr=-1.0)
    with pytest.raises(ValueError, match="momentum"):
        optim.SGD([p], momentum=1.0)
    with pytest.raises(TypeError, match="real number"):
        optim.SGD([p], lr="0.1")
    with pytest.raises(ValueError, match="no parameters"):
        optim.SGD([])
    with pytest.raises(ValueError, match="given twice"):
        optim.SGD([p, p])
    with pytest.raises(ValueError, match="leaf tensor that requires grad"):
        optim.SGD([convnet.tensor(np.ones(3))])
    with pytest.raises(TypeError, match="iterable of tensors"):
        optim.SGD(p)
    with pytest.raises(ValueError, match="matches no parameter"):
        optim.SGD({"w": p}, lr_multipliers={"*.bias": 2.0})
    with pytest.raises(ValueError, match="matched by two"):
        optim.SGD({"w": p}, lr_multipliers={"w": 2.0, "*": 3.0})
    opt = optim.SGD({"w": p})
    p.grad = convnet.tensor(np.ones(4))
    with pytest.raises(ValueError, match=r"gradient of 'w' has shape \(4,\)"):
        opt.step()
    np.testing.assert_array_equal(p.numpy(), np.ones(3))  # nothing changed
    emu = require_device("emu")
    with pytest.raises(TypeError, match="float32"):
        sgd_ops.update(emu, np.ones(3), np.zeros(3), np.ones(3), 0.1, 0.9, 0.0)
    with pytest.raises(ValueError, match="shape"):
        sgd_ops.update(emu, np.ones(3, np.float32), np.zeros(2, np.float32),
                       np.ones(3, np.float32), 0.1, 0.9, 0.0)


# --------------------------------------------------------------------------- every parameter in one launch

SGD_MODES = [dict(), dict(check="bounds", schedule="reverse", fill_shared=True),
             dict(check="race", schedule="random", seed=6), dict(check="init"), dict(check="align")]


@pytest.mark.parametrize("mode", SGD_MODES, ids=lambda m: ",".join(f"{k}={v}" for k, v in m.items()) or "plain")
def test_update_many_bit_for_bit_with_one_launch_each(mode):
    """sgd_momentum_multi over tensors of awkward sizes (0, 1, 5, 21, 120, 1000), one of
    them misaligned (element path), each with its own lr and decay: the same bits as one
    sgd_momentum launch each, in the same emu build."""
    from convnet.backend import emu
    device = require_device("emu")
    rng = np.random.default_rng(8)
    sizes = [5, 0, 21, 1, 120, 1000, 7]

    def tensors():
        r = np.random.default_rng(9)
        out = [r.standard_normal(s).astype(np.float32) for s in sizes]
        out[2] = np.concatenate([[0], out[2]]).astype(np.float32)[1:]  # not 16-byte aligned
        return out
    gs = [rng.standard_normal(s).astype(np.float32) for s in sizes]
    lrs = [0.01 * (k + 1) for k in range(len(sizes))]
    decays = [5e-4 * (k % 3) for k in range(len(sizes))]
    ws, vs, ws2, vs2 = tensors(), tensors(), tensors(), tensors()
    with emu.debug(**mode):
        for w, v, g, lr, wd in zip(ws2, vs2, gs, lrs, decays):
            sgd_ops.update(device, w, v, g, lr, 0.9, wd)
        sgd_ops.update_many(device, ws, vs, gs, lrs, 0.9, decays)
    for a, e in zip(ws + vs, ws2 + vs2):
        np.testing.assert_array_equal(a, e)


def test_optimizer_step_is_one_launch_per_device(monkeypatch):
    """optim.SGD updates all parameters of a device in one launch, the same values as the
    cpu reference within float32 rounding; a bad gradient still changes nothing."""
    device = require_device("emu")
    launches = []
    real = device.launch
    monkeypatch.setattr(device, "launch", lambda launch: (launches.append(launch.name), real(launch))[1])
    rng = np.random.default_rng(2)
    shapes = [(3, 4), (4,), (5, 2, 3), (1,)]
    data = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    results = []
    for dev in (CPU, device):
        params = [convnet.tensor(d, device=dev, requires_grad=True) for d in data]
        opt = optim.SGD(params, lr=0.1, lr_multipliers={"1": 2.0}, weight_decay_multipliers={"3": 0.0})
        for _ in range(2):
            for p, g in zip(params, grads):
                p.grad = convnet.tensor(g, device=dev)
            opt.step()
        results.append([p.numpy() for p in params])
    assert launches == ["sgd_momentum_multi"] * 2
    for a, e in zip(*results):
        np.testing.assert_allclose(a, e, rtol=1e-6, atol=1e-7)
    before = [p.numpy().copy() for p in params]
    params[0].grad = convnet.tensor(np.ones((4, 3), np.float32), device=device)
    with pytest.raises(ValueError, match="gradient of '0' has shape"):
        opt.step()
    for p, b in zip(params, before):
        np.testing.assert_array_equal(p.numpy(), b)
    with pytest.raises(ValueError, match="as many"):
        sgd_ops.update_many(device, [data[0]], [], [grads[0]], [0.1], 0.9, [0.0])
    with pytest.raises(TypeError, match="float32"):
        sgd_ops.update_many(device, [data[1], np.ones(3)], [np.zeros(4, np.float32), np.zeros(3)],
                            [grads[1], np.ones(3)], [0.1, 0.1], 0.9, [0.0, 0.0])
