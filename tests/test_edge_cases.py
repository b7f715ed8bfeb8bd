"""Issue 15, part 5: the API's edge cases. An empty batch through every op, nn layer
and the whole model, forward and backward (empty outputs, zero gradients; train_step
refuses it in one line); the 32-bit size check before anything is allocated, with
advice that fits; load_state_dict(strict=False); data that is not numbers refused."""
from __future__ import annotations

import numpy as np
import pytest

import convnet
from convnet import functional as F
from convnet import nn
from convnet.backend import get_device
from convnet.models import build_model
from convnet.optim import SGD
from convnet.step import train_step

from conftest import require_device

SETTINGS = {"model": "alexnet-small", "widths": [4, 8, 8, 8, 8, 16, 16], "weight_std": 0.05,
            "crop": 67, "classes": ["a", "b", "c"], "columns": 1, "seed": 0, "dropout": 0.5}


@pytest.fixture(params=["cpu", "emu"])
def dev(request):
    require_device(request.param)
    return request.param


def _empty(shape, dev):
    return convnet.tensor(np.zeros(shape, np.float32), device=dev, requires_grad=True)


def test_an_empty_batch_through_every_layer(dev):
    x = _empty((0, 3, 9, 9), dev)
    layers = [nn.Conv2d(3, 4, 3, padding=1, relu=True), nn.LocalResponseNorm(),
              nn.MaxPool2d(3, 2), nn.Dropout(0.5), nn.ReLU(), nn.Flatten(), nn.Linear(64, 5)]
    net = nn.Sequential(*layers).to(dev)
    y = net(x)
    assert y.shape == (0, 5)
    y.sum().backward()
    assert x.grad.shape == x.shape
    for name, p in net.named_parameters():
        assert p.grad is not None and not np.any(p.grad.numpy()), name  # zero gradients


def test_an_empty_batch_through_the_model_and_train_step(dev):
    model = build_model(SETTINGS, [get_device(dev)])
    x = _empty((0, 3, 67, 67), dev)
    logits = model(x)
    assert logits.shape == (0, 3)
    assert F.flatten(_empty((0, 2, 3), dev)).shape == (0, 6)
    before = model.state_dict()
    with pytest.raises(ValueError, match=r"train_step: the batch is empty \(images of shape "
                                         r"\(0, 3, 67, 67\)\).*unchanged"):
        train_step(model, SGD(model, lr=0.1, momentum=0.9), x, np.zeros(0, np.int64))
    after = model.state_dict()
    assert all(np.array_equal(before[n], after[n]) for n in before)


def test_the_32_bit_check_comes_first_and_advises_what_fits(monkeypatch):
    require_device("emu")
    from convnet.ops import conv as conv_ops

    def no_launch(*args, **kwargs):
        raise AssertionError("conv2d allocated or launched before checking the sizes")

    monkeypatch.setattr(conv_ops, "forward", no_launch)
    # one image whose output alone spans more than 2**31 elements (2100 maps of ~1026^2):
    # no batch size helps, and the 8.8 GB output is never allocated
    x = convnet.tensor(np.zeros((1, 1, 1024, 1024), np.float32), device="emu")
    w = convnet.tensor(np.zeros((2100, 1, 1, 1), np.float32), device="emu")
    with pytest.raises(ValueError, match="one image alone spans .* no batch size helps"):
        F.conv2d(x, w)
    # four images that fit three at a time
    x = convnet.tensor(np.zeros((4, 1, 512, 1024), np.float32), device="emu")
    w = convnet.tensor(np.zeros((1100, 1, 1, 1), np.float32), device="emu")
    with pytest.raises(ValueError, match="split the batch of 4 into batches of at most 3 images"):
        F.conv2d(x, w)


def test_load_state_dict_strict_and_not():
    a = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    b = nn.Sequential(nn.Linear(4, 3))
    state = b.state_dict()
    with pytest.raises(ValueError, match="missing: 1.weight, 1.bias.*strict=False"):
        a.load_state_dict(state)
    kept = a.state_dict()["1.weight"].copy()
    result = a.load_state_dict(state, strict=False)
    assert result.missing == ["1.weight", "1.bias"] and result.unexpected == []
    assert np.array_equal(a.state_dict()["0.weight"], state["0.weight"])
    assert np.array_equal(a.state_dict()["1.weight"], kept)
    assert b.load_state_dict(a.state_dict(), strict=False).unexpected == ["1.weight", "1.bias"]
    bad = {**state, "0.weight": np.zeros((5, 4), np.float32)}
    with pytest.raises(ValueError, match=r"0.weight: shape \(5, 4\)"):  # shapes stay checked
        b.load_state_dict(bad, strict=False)
    broken = {**state, "0.bias": np.array(["x", "y", "z"])}
    before = b.state_dict()
    with pytest.raises(TypeError, match="0.bias has dtype"):
        b.load_state_dict(broken)
    assert np.array_equal(b.state_dict()["0.weight"], before["0.weight"])  # nothing changed


@pytest.mark.parametrize("data, what", [(["a", "b"], "text"), ([object()], "Python objects"),
                                        ([1j], "complex numbers"), ([b"x"], "bytes")])
def test_data_that_is_not_numbers_is_refused(data, what):
    with pytest.raises(TypeError, match=f"a tensor holds numbers .*this data is {what}"):
        convnet.tensor(data)
    assert convnet.tensor([True, False]).dtype == np.bool_  # masks stay
