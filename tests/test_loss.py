"""Cross-entropy (kernels/cross_entropy.cu) against a float64 reference, for logits up to
±1e4, class counts around the block size, NaN propagation, finite-difference gradients,
both emulator schedules with NaN-filled shared memory, label checks; and topk_accuracy."""
from __future__ import annotations

import numpy as np
import pytest

import convnet
from convnet import DeviceError
from convnet import functional as F
from convnet.ops import cross_entropy as ce_ops

from conftest import require_device
from gradcheck import check_grads

# (N, C): one class, the block size and around it, AlexNet's 1000
SHAPES = [(1, 1), (3, 2), (2, 255), (5, 256), (4, 257), (7, 1000)]


def _logits(n, c, scale=1.0, seed=0):
    return (np.random.default_rng(seed).standard_normal((n, c)) * scale).astype(np.float32)


def _labels(n, c, seed=0):
    return np.random.default_rng(seed + 99).integers(0, c, n)


def _exact(x, labels):
    """Loss and gradient in float64 (log-sum-exp with the max taken out)."""
    x = x.astype(np.float64)
    m = x.max(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(x - m).sum(axis=1))
    loss = np.mean(lse - x[np.arange(len(x)), labels])
    grad = np.exp(x - lse[:, None])
    grad[np.arange(len(x)), labels] -= 1
    return loss, grad / len(x)


@pytest.mark.parametrize("scale", [1.0, 1e4], ids=["unit", "1e4"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_float64(device, shape, scale):
    n, c = shape
    x = _logits(n, c, scale, seed=n * c)
    labels = _labels(n, c, seed=c)
    t = convnet.tensor(x, device=device, requires_grad=True)
    loss = F.cross_entropy(t, labels)
    assert loss.shape == () and loss.device == device and loss.dtype == np.float32
    loss.backward()
    want_loss, want_grad = _exact(x, labels)
    assert np.isfinite(loss.item())
    np.testing.assert_allclose(loss.item(), want_loss, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(t.grad.numpy(), want_grad, rtol=1e-4, atol=1e-6)


def test_extreme_logits_are_stable(device):
    x = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4], [3e38, 0.0, -3e38]], np.float32)
    labels = np.array([1, 2, 0])
    t = convnet.tensor(x, device=device, requires_grad=True)
    loss = F.cross_entropy(t, labels)
    loss.backward()
    # row 0: lse = 1e4, loss 2e4; row 1: log 3; row 2: lse = 3e38, loss 0
    np.testing.assert_allclose(loss.item(), (2e4 + np.log(3.0) + 0.0) / 3, rtol=1e-6)
    grad = t.grad.numpy()
    assert np.isfinite(grad).all()
    np.testing.assert_allclose(grad[0], [1 / 3, -1 / 3, 0.0], atol=1e-7)
    np.testing.assert_allclose(grad[1], [1 / 9, 1 / 9, -2 / 9], rtol=1e-5)


def test_nan_propagates(device):
    x = _logits(3, 6, seed=1)
    x[1, 4] = np.nan
    loss = F.cross_entropy(convnet.tensor(x, device=device), [0, 1, 2])
    assert np.isnan(loss.item())


def test_gradient_float64_and_scaled_upstream():
    x = convnet.tensor(_logits(4, 7, 3.0, seed=2).astype(np.float64), requires_grad=True)
    labels = np.array([6, 0, 3, 3])
    check_grads(lambda: F.cross_entropy(x, labels) * 2.5, [x])


def test_upstream_gradient_scales_on_kernel_devices(kernel_device):
    x = _logits(5, 33, seed=3)
    labels = _labels(5, 33)
    t = convnet.tensor(x, device=kernel_device, requires_grad=True)
    (F.cross_entropy(t, labels) * -3.0).backward()
    np.testing.assert_allclose(t.grad.numpy(), -3.0 * _exact(x, labels)[1], rtol=1e-4, atol=1e-6)


def test_emu_debug_modes_give_identical_results():
    from convnet.backend import emu
    device = require_device("emu")
    x = _logits(3, 300, 5.0, seed=4)
    labels = _labels(3, 300)
    loss, saved = ce_ops.forward(device, x, labels)
    dx = ce_ops.backward(device, x, saved, np.float32(1.0))
    with emu.debug(schedule="reverse", fill_shared=True, check="bounds"):
        loss2, saved2 = ce_ops.forward(device, x, labels)
        dx2 = ce_ops.backward(device, x, saved2, np.float32(1.0))
    for a, b in ((loss, loss2), (saved.m, saved2.m), (saved.ls, saved2.ls), (dx, dx2)):
        np.testing.assert_array_equal(a, b)


def test_label_forms(device):
    x = _logits(4, 5, seed=5)
    labels = np.array([4, 0, 2, 1])
    want = _exact(x, labels)[0]
    t = convnet.tensor(x, device=device)
    for form in (labels.astype(np.int32), labels.astype(np.int64), labels.tolist(),
                 convnet.tensor(labels, device=device), labels.astype(np.uint8)):
        np.testing.assert_allclose(F.cross_entropy(t, form).item(), want, rtol=1e-5)


def test_label_errors(device):
    t = convnet.tensor(_logits(3, 4, seed=6), device=device)
    with pytest.raises(ValueError, match=r"label 4 is out of range for 4 classes.*0\.\.3"):
        F.cross_entropy(t, [0, 4, 1])
    with pytest.raises(ValueError, match="label -1 is out of range"):
        F.cross_entropy(t, np.array([0, -1, 1]))
    with pytest.raises(TypeError, match="integers"):
        F.cross_entropy(t, np.array([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        F.cross_entropy(t, [0, 1])
    with pytest.raises(ValueError, match="2-D"):
        F.cross_entropy(convnet.tensor(np.zeros(4, np.float32), device=device), [0])
    with pytest.raises(ValueError, match="empty"):
        F.cross_entropy(convnet.tensor(np.zeros((0, 4), np.float32), device=device),
                        np.zeros(0, np.int64))
    with pytest.raises(TypeError, match="floating point"):
        F.cross_entropy(convnet.tensor(np.zeros((3, 4), np.int32), device=device), [0, 1, 2])
    if device.kind != "cpu":
        with pytest.raises(DeviceError, match="labels are on 'cpu'"):
            F.cross_entropy(t, convnet.tensor(np.array([0, 1, 2])))


def test_labels_get_no_gradient_and_logits_of_other_dtypes_on_cpu():
    x = convnet.tensor(_logits(2, 3, seed=7).astype(np.float64), requires_grad=True)
    loss = F.cross_entropy(x, [2, 1])
    assert loss.dtype == np.float64
    loss.backward()
    assert x.grad.dtype == np.float64


# --------------------------------------------------------------------------- top-k

def test_topk_accuracy(device):
    logits = np.array([[0.1, 0.9, 0.3, 0.2],    # label 1 is top-1
                       [0.5, 0.5, 0.1, 0.0],    # label 0 tied for top: counts
                       [0.4, 0.3, 0.2, 0.1],    # label 3 is 4th
                       [0.0, 0.3, 0.2, 0.1]],   # label 2 is 2nd
                      np.float32)
    labels = np.array([1, 0, 3, 2])
    t = convnet.tensor(logits, device=device)
    assert F.topk_accuracy(t, labels, 1) == 0.5
    assert F.topk_accuracy(t, labels, (1, 2, 3, 4)) == (0.5, 0.75, 0.75, 1.0)
    logits[0, 2] = np.nan  # a row holding NaN is wrong at every k
    t = convnet.tensor(logits, device=device)
    assert F.topk_accuracy(t, labels, (1, 4)) == (0.25, 0.75)


def test_topk_errors():
    t = convnet.tensor(_logits(2, 3))
    with pytest.raises(ValueError,
                       match=r"k \(of 3 classes\) must be an integer in \[1, 3\], got 5"):
        F.topk_accuracy(t, [0, 1], (1, 5))
    with pytest.raises(TypeError, match="int"):
        F.topk_accuracy(t, [0, 1], 1.5)
    with pytest.raises(ValueError, match="out of range"):
        F.topk_accuracy(t, [0, 3], 1)
    with pytest.raises(ValueError, match="2-D"):
        F.topk_accuracy(convnet.tensor(np.zeros(3, np.float32)), [0], 1)


class _DeviceHoldingNoHostArrays:
    """Stands in for a GPU: host arrays are not its own, so labels are copied to it."""

    name = "stand-in"
    copies = 0

    def owns(self, array):
        return False

    def asarray(self, array, dtype=None):
        type(self).copies += 1
        return np.asarray(array, dtype=dtype)


def test_host_labels_for_a_gpu_are_checked_on_the_host_before_the_copy():
    from convnet.functional.cross_entropy import labels_on
    device = _DeviceHoldingNoHostArrays()
    array, checked = labels_on(device, [0, 2, 1], (3, 4))
    assert checked and array.dtype == np.int32 and list(array) == [0, 2, 1]
    before = device.copies
    with pytest.raises(ValueError, match="label 4 is out of range for 4 classes"):
        labels_on(device, np.array([0, 4, 1]), (3, 4))
    with pytest.raises(ValueError, match=r"labels must have shape \(3,\)"):
        labels_on(device, [0, 1], (3, 4))
    assert device.copies == before                    # nothing was copied to the device
    _, checked = labels_on(device, [0.5, 1.0, 2.0], (3, 4))
    assert not checked                                # not integers: the op refuses them there
