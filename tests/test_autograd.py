"""Tensor and autograd: gradients of small graphs against central finite differences
(float64 on cpu), graph bookkeeping (each backward once, saved arrays freed, deep
graphs, accumulation) and the errors users meet."""
from __future__ import annotations

import threading

import numpy as np
import pytest

import convnet
from convnet import DeviceError, Function, Tensor, no_grad
from convnet import functional as F
from convnet.backend import HostDevice
from convnet.tensor import is_grad_enabled
from convnet.functional.relu import ReLU
from gradcheck import numeric_grad


class OtherHost(HostDevice):
    """A second host device, so device mismatches can be tested without emu/cuda."""
    kind = "cpu"
    name = "other"


OTHER = OtherHost()


def _rng(seed=0):
    return np.random.default_rng(seed)


def _leaf(shape, seed=0, away_from_zero=False):
    a = _rng(seed).standard_normal(shape)
    if away_from_zero:  # keep finite differences off relu's kink
        a = np.where(np.abs(a) < 0.1, a + np.sign(a + 1e-12) * 0.2, a)
    return convnet.tensor(a, requires_grad=True)


def numeric_grads(f, leaves, eps=1e-6):
    """Central differences of the scalar f() with respect to each leaf's array."""
    return [numeric_grad(f, leaf, eps).reshape(leaf.shape) for leaf in leaves]


def check_grads(f, leaves, rtol=1e-6, atol=1e-8):
    for leaf in leaves:
        leaf.grad = None
    out = f()
    out.backward()
    expected = numeric_grads(f, leaves)
    for leaf, g in zip(leaves, expected):
        assert leaf.grad is not None
        assert leaf.grad.dtype == np.float64 and leaf.grad.shape == leaf.shape
        np.testing.assert_allclose(leaf.grad.numpy(), g, rtol=rtol, atol=atol)


# --------------------------------------------------------------------------- gradients

def test_shared_inputs():
    x, y = _leaf((3, 4), 1), _leaf((3, 4), 2)
    check_grads(lambda: ((x * y + x) * (y - x)).sum(), [x, y])


def test_tensor_used_twice():
    x = _leaf((5,), 3, away_from_zero=True)

    def f():
        h = F.relu(x)
        return (h * h + h * 3.0 - h).mean()
    check_grads(f, [x])


def test_consumer_runs_before_its_input():
    x = _leaf((3,), 25)

    def f():
        a = x * 1.5
        return (a + a * 2.0).sum()  # a's node must wait for the Mul that consumes it
    check_grads(f, [x])


def test_same_tensor_twice_in_one_op():
    x = _leaf((4,), 4)
    check_grads(lambda: (x * x + x + x).sum(), [x])


def test_diamond_and_chain():
    x = _leaf((2, 3), 5, away_from_zero=True)

    def f():
        a = x * 2.0
        b = F.relu(a) - a * 0.5
        c = F.relu(-a) * b
        return (b * c + a).sum() * 0.25 + 1.0
    check_grads(f, [x])


def test_branch_without_grad():
    x = _leaf((3,), 6)
    w = convnet.tensor(_rng(7).standard_normal(3))  # no grad
    branch = w * 2.0  # an op whose inputs need no grad records nothing
    assert not branch.requires_grad and branch.is_leaf
    check_grads(lambda: (x * branch + w).sum(), [x])
    assert w.grad is None and branch.grad is None


def test_broadcasting_reshape_getitem_and_axis_reductions():
    x, b = _leaf((2, 3), 8), _leaf((3,), 9)
    s = _leaf((1, 3), 10)

    def f():
        y = (x + b) * s  # broadcast over rows
        z = y.reshape(3, 2)[1:, ::-1] * y.reshape(6)[[0, 0, 5]].sum()
        return z.mean(axis=0).sum() + y.sum(axis=1, keepdims=True).mean() + 3.0 - x.mean()
    check_grads(f, [x, b, s])


def test_relu_gradient_float64():
    x = _leaf((4, 5), 11, away_from_zero=True)
    check_grads(lambda: (F.relu(x) * F.relu(x * -1.0 + 0.3)).sum(), [x])


def test_dropout_gradient_float64():
    x = _leaf((6, 7), 12)
    for mode in ("inverted", "paper"):
        for training in (True, False):
            def f():
                return (F.dropout(x, 0.4, training=training, seed=99, mode=mode) * x).sum()
            check_grads(f, [x])


# --------------------------------------------------------------------------- bookkeeping

def test_backward_twice_accumulates():
    x = _leaf((3,), 13)

    def f():
        return (x * x).sum()
    f().backward()
    first = x.grad.numpy().copy()
    f().backward()
    np.testing.assert_allclose(x.grad.numpy(), 2 * first)
    np.testing.assert_allclose(first, 2 * x.numpy())


def test_second_backward_through_freed_graph_is_an_error():
    x = _leaf((3,), 14)
    y = (x * x).sum()
    y.backward()
    with pytest.raises(RuntimeError, match="retain_graph"):
        y.backward()


def test_retain_graph():
    x = _leaf((3,), 15)
    y = (x * x).sum()
    y.backward(retain_graph=True)
    y.backward()
    np.testing.assert_allclose(x.grad.numpy(), 4 * x.numpy())


def test_saved_arrays_released_and_each_backward_runs_once():
    calls = []

    class Square(Function):
        def forward(self, x):
            self.save_for_backward(x)
            return x * x

        def backward(self, grad):
            calls.append(self)
            (x,) = self.saved
            return 2 * x * grad

    x = _leaf((3,), 16)
    a = Square.apply(x)
    node = a.grad_fn
    out = (Square.apply(a) + a * 3.0 + a).sum()  # a feeds three consumers
    assert len(node.saved) == 1
    out.backward()
    assert calls.count(node) == 1 and len(calls) == 2
    assert node.saved == ()
    xv = x.numpy()
    np.testing.assert_allclose(x.grad.numpy(), (2 * xv**2 + 4) * 2 * xv)  # a^2 + 4a, a = x^2


def test_no_grad():
    x = _leaf((3,), 17)
    with no_grad():
        assert not is_grad_enabled()
        y = F.relu(x * 2.0)
    assert is_grad_enabled()
    assert not y.requires_grad and y.is_leaf
    with pytest.raises(RuntimeError, match="does not require grad"):
        y.sum().backward()
    with pytest.raises(KeyError):
        with no_grad():
            raise KeyError("inside")
    assert is_grad_enabled()


def test_no_grad_is_per_thread():
    seen = []
    with no_grad():
        t = threading.Thread(target=lambda: seen.append(is_grad_enabled()))
        t.start()
        t.join()
    assert seen == [True]


def test_deep_graph_is_not_recursive():
    x = _leaf((2,), 18)
    y = x
    for _ in range(20000):
        y = y * 1.0 + 0.0
    y.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), np.ones(2))


def test_scalar_glue():
    x = _leaf((3,), 26)
    check_grads(lambda: (2.0 - x / 4.0 + np.float64(3.0) * x).sum(), [x])
    x.grad = None
    y = x.sum()
    y.backward(2.0)  # a 0-d gradient given as a number
    np.testing.assert_allclose(x.grad.numpy(), np.full(3, 2.0))


def test_leaf_backward_and_grad_argument():
    x = _leaf((2, 2), 19)
    y = x * 3.0
    y.backward(np.full((2, 2), 2.0))
    np.testing.assert_allclose(x.grad.numpy(), np.full((2, 2), 6.0))
    x.backward(convnet.tensor(np.ones((2, 2))))
    np.testing.assert_allclose(x.grad.numpy(), np.full((2, 2), 7.0))


def test_grads_of_aliased_leaves_are_independent():
    x, y = _leaf((3,), 20), _leaf((3,), 21)
    (x + y).sum().backward()
    x.grad.data[...] = 0  # an optimiser zeroing in place must not touch y.grad
    np.testing.assert_allclose(y.grad.numpy(), np.ones(3))


def test_to_is_differentiable():
    x = _leaf((3,), 22)
    z = x.to(OTHER)
    assert z.device == OTHER and z.requires_grad
    assert not np.shares_memory(z.data, x.data)
    (z * z).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), 2 * x.numpy())
    assert x.grad.device == x.device
    assert x.to("cpu") is x


# --------------------------------------------------------------------------- Tensor basics

def test_tensor_construction():
    a = np.arange(6, dtype=np.float64).reshape(2, 3)
    t = convnet.tensor(a)
    a[0, 0] = 100  # the tensor holds a copy
    assert t.numpy()[0, 0] == 0
    assert t.shape == (2, 3) and t.ndim == 2 and t.size == 6 and len(t) == 2
    assert t.dtype == np.float64 and t.device == "cpu" and t.grad is None
    assert convnet.tensor([1.0, 2.0]).dtype == np.float32
    assert convnet.tensor([1, 2]).dtype == np.int64
    assert convnet.tensor([1, 2], dtype=np.float32).dtype == np.float32
    assert convnet.tensor(t).dtype == np.float64
    assert convnet.tensor(2.5).item() == 2.5 and convnet.tensor(2.5).shape == ()
    assert convnet.tensor(np.float64(2.5)).to(OTHER).shape == ()
    view = a[:, ::2]
    assert convnet.tensor(view).data.flags.c_contiguous
    assert isinstance(t, Tensor)


def test_repr_and_detach():
    t = convnet.tensor([1.0, -2.0], requires_grad=True)
    text = repr(t)
    assert text.startswith("tensor([") and "device='cpu'" in text
    assert "dtype=float32" in text and "requires_grad=True" in text
    d = (t * 2.0).detach()
    assert not d.requires_grad and d.is_leaf
    assert "requires_grad" not in repr(d)


def test_requires_grad_rules():
    with pytest.raises(TypeError, match="floating-point"):
        convnet.tensor([1, 2], requires_grad=True)
    t = convnet.tensor([1.0], requires_grad=True)
    y = t * 2.0
    with pytest.raises(RuntimeError, match="leaf"):
        y.requires_grad = False
    u = convnet.tensor([1.0])
    u.requires_grad = True
    (u * 4.0).sum().backward()
    assert u.grad.item() == 4.0


def test_backward_errors():
    x = _leaf((2, 3), 23)
    y = x * 2.0
    with pytest.raises(RuntimeError, match="one element"):
        y.backward()
    with pytest.raises(ValueError, match=r"shape \(3, 2\).*\(2, 3\)"):
        y.backward(np.ones((3, 2)))
    with pytest.raises(DeviceError, match="other"):
        y.backward(convnet.tensor(np.ones((2, 3)), device=OTHER))
    with pytest.raises(RuntimeError, match="does not require grad"):
        convnet.tensor([1.0]).backward()


def test_backward_returning_a_wrong_shape_is_reported():
    class Bad(Function):
        def forward(self, x):
            return x.copy()

        def backward(self, grad):
            return grad[:1]

    x = _leaf((3,), 24)
    with pytest.raises(RuntimeError, match="Bad.backward returned a gradient of shape"):
        Bad.apply(x).sum().backward()


def test_inputs_on_different_devices():
    a = convnet.tensor([1.0, 2.0])
    b = convnet.tensor([1.0, 2.0], device=OTHER)
    with pytest.raises(DeviceError, match="'cpu' and 'other'"):
        a + b
    with pytest.raises(DeviceError, match="'other' and 'cpu'"):
        b * a


def test_apply_rejects_non_tensors():
    with pytest.raises(TypeError, match="not a Tensor"):
        ReLU.apply(np.ones(3))
    with pytest.raises(TypeError, match="convnet.Tensor"):
        F.relu(np.ones(3))
    with pytest.raises(TypeError, match="cannot add"):
        convnet.tensor([1.0]) + "x"
    with pytest.raises(TypeError, match="cannot multiply"):
        convnet.tensor([1.0]) * np.ones(1)
