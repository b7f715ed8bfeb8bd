"""Layers (convnet.nn): registration, parameters, train/eval, state dicts and their errors,
placement, initialisation; the transfer log of Tensor.to; train_step (a NaN loss stops
the step with the weights untouched); and finite-difference gradients of a small whole
network (conv → ReLU → LRN → pool → linear → cross-entropy) in float64."""
from __future__ import annotations

import numpy as np
import pytest

import convnet
from convnet import functional as F
from convnet import nn, optim
from convnet.tensor import record_transfers

from conftest import require_device
from gradcheck import check_grads


def _mlp(device="cpu", dtype=np.float32, seed=0):
    return nn.Sequential(nn.Flatten(),
                         nn.Linear(12, 16, relu=True, rng=seed, device=device, dtype=dtype,
                                   weight_std=0.3),
                         nn.Dropout(0.5, seed=seed),
                         nn.Linear(16, 5, rng=seed + 1, device=device, dtype=dtype,
                                   weight_std=0.3, bias_init=0.1))


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((8, 3, 2, 2)).astype(np.float32), rng.integers(0, 5, 8)


# --------------------------------------------------------------------------- modules

def test_registration_names_and_counts():
    model = _mlp()
    names = [n for n, _ in model.named_parameters()]
    assert names == ["1.weight", "1.bias", "3.weight", "3.bias"]
    assert model.num_parameters() == 12 * 16 + 16 + 16 * 5 + 5
    assert all(p.requires_grad and p.is_leaf for p in model.parameters())
    assert isinstance(model[1], nn.Linear) and len(model) == 4
    model[1].bias = None  # unregisters
    assert [n for n, _ in model.named_parameters()] == ["1.weight", "3.weight", "3.bias"]
    named = nn.Sequential({"fc": nn.Linear(2, 3), "act": nn.ReLU()})
    assert list(named.state_dict()) == ["fc.weight", "fc.bias"]
    assert "Linear(2, 3, relu=False)" in repr(named)


def test_initialisation_is_the_papers_and_seeded():
    layer = nn.Linear(200, 300, rng=5, bias_init=1.0)
    w = layer.weight.numpy()
    assert w.dtype == np.float32 and w.shape == (300, 200)
    assert abs(w.mean()) < 1e-3 and abs(w.std() - 0.01) < 2e-4
    np.testing.assert_array_equal(layer.bias.numpy(), np.ones(300, np.float32))
    np.testing.assert_array_equal(nn.Linear(200, 300, rng=5).weight.numpy(), w)
    assert not np.array_equal(nn.Linear(200, 300, rng=6).weight.numpy(), w)
    rng = np.random.default_rng(0)  # one stream for consecutive layers
    a, b = nn.Linear(3, 3, rng=rng), nn.Linear(3, 3, rng=rng)
    assert not np.array_equal(a.weight.numpy(), b.weight.numpy())


def test_train_eval_switches_every_layer():
    model = _mlp()
    assert all(m.training for _, m in model.named_modules())
    assert model.eval() is model
    assert not any(m.training for _, m in model.named_modules())
    x, _ = _batch()
    a, b = model(convnet.tensor(x)).numpy(), model(convnet.tensor(x)).numpy()
    np.testing.assert_array_equal(a, b)  # no dropout at eval
    model.train()
    assert model[2].training


def test_state_dict_round_trip_and_copy_semantics():
    a, b = _mlp(seed=0), _mlp(seed=7)
    state = a.state_dict()
    state["1.weight"][...] = 0.0  # a copy: the model is untouched
    assert np.abs(a[1].weight.numpy()).sum() > 0
    b.load_state_dict(a.state_dict())
    for (n, p), (m, q) in zip(a.named_parameters(), b.named_parameters()):
        assert n == m
        np.testing.assert_array_equal(p.numpy(), q.numpy())


def test_load_mismatched_state_dict_names_every_difference():
    model = _mlp()
    before = model.state_dict()
    state = model.state_dict()
    del state["1.bias"]
    state["3.weight"] = np.zeros((5, 15), np.float32)
    state["9.weight"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError) as info:
        model.load_state_dict(state)
    message = str(info.value)
    assert "missing: 1.bias" in message and "unexpected: 9.weight" in message
    assert "3.weight: shape (5, 15) in the state dict, (5, 16) in the model" in message
    for name, value in model.state_dict().items():  # nothing was loaded
        np.testing.assert_array_equal(value, before[name])
    with pytest.raises(TypeError, match="mapping"):
        model.load_state_dict([1, 2])


def test_to_moves_parameters_in_place_and_keeps_optimizer_links():
    emu = require_device("emu")
    model = _mlp()
    opt = optim.SGD(model)
    weight = model[1].weight
    model.to(emu)
    assert model[1].weight is weight and weight.device == emu
    x, y = _batch()
    result = convnet.train_step(model, opt, convnet.tensor(x, device=emu), y)
    assert np.isfinite(result.loss)


def test_layer_argument_errors():
    with pytest.raises(ValueError, match="groups=3 must divide"):
        nn.Conv2d(4, 6, 3, groups=3)
    with pytest.raises(ValueError, match="in_features must be an integer >= 1"):
        nn.Linear(0, 3)
    with pytest.raises(TypeError, match="floating-point"):
        nn.Linear(2, 3, dtype=np.int32)
    with pytest.raises(TypeError, match="rng"):
        nn.Linear(2, 3, rng="seed")
    with pytest.raises(ValueError, match="dropout probability"):
        nn.Dropout(1.5)
    with pytest.raises(TypeError, match="not a Module"):
        nn.Sequential(nn.ReLU(), lambda x: x)


def test_seeded_dropout_layers_repeat_their_masks():
    x = convnet.tensor(np.ones((4, 64), np.float32))
    a, b = nn.Dropout(0.5, seed=3), nn.Dropout(0.5, seed=3)
    first = [a(x).numpy() for _ in range(2)]
    np.testing.assert_array_equal(first[0], b(x).numpy())
    assert not np.array_equal(first[0], first[1])  # a new mask each forward


# --------------------------------------------------------------------------- transfer log

def test_transfer_log_records_crossings_both_ways():
    emu = require_device("emu")
    x = convnet.tensor(np.ones((2, 3), np.float32), requires_grad=True)
    with record_transfers() as log:
        y = x.to(emu, name="here")
        z = y.to("emu")  # already there, unnamed: no crossing
        w = z.to("emu", name="same device")  # a logical crossing: logged, not copied
        assert w.data is z.data
        (w * 2.0).sum().backward()
    assert log.records == [("forward", "cpu", "emu", "here", 24),
                           ("forward", "emu", "emu", "same device", 24),
                           ("backward", "emu", "emu", "same device", 24),
                           ("backward", "emu", "cpu", "here", 24)]
    assert log.count == 4 and log.nbytes == 96
    assert log.summary()[("forward", "cpu", "emu", "here")] == {"count": 1, "bytes": 24}
    assert log.by_pair()[("emu", "emu")] == {"count": 2, "bytes": 48}
    np.testing.assert_array_equal(x.grad.numpy(), np.full((2, 3), 2.0))
    with record_transfers() as outer:
        with record_transfers() as inner:
            x.to(emu)
        x.to(emu)
    assert inner.count == 1 and outer.count == 2
    x.to(emu)  # outside any block: recorded nowhere
    assert outer.count == 2 and "cpu -> emu" in outer.format()


# --------------------------------------------------------------------------- train_step

def test_train_step_reports_loss_and_accuracy(device):
    model = _mlp(device=device)
    opt = optim.SGD(model, lr=0.1)
    x, y = _batch()
    first = convnet.train_step(model, opt, convnet.tensor(x, device=device), y)
    for _ in range(20):
        last = convnet.train_step(model, opt, convnet.tensor(x, device=device), y)
    assert last.loss < first.loss
    assert 0.0 <= last.top1 <= last.top5 <= 1.0
    assert last.transfers.count == 0


def test_nan_loss_raises_and_leaves_the_weights():
    model = _mlp()
    opt = optim.SGD(model, lr=0.1)
    x, y = _batch()
    convnet.train_step(model, opt, convnet.tensor(x), y)  # velocities are now non-zero
    weights, velocity = model.state_dict(), opt.state_dict()["velocity"]
    x[0, 0, 0, 0] = np.nan
    with pytest.raises(FloatingPointError, match="loss is nan.*weights are unchanged"):
        convnet.train_step(model, opt, convnet.tensor(x), y)
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(value, weights[name])
    for name, value in opt.state_dict()["velocity"].items():
        np.testing.assert_array_equal(value, velocity[name])


# --------------------------------------------------------------------------- a whole network

def test_small_network_gradients_float64():
    """conv (fused ReLU) → LRN → max-pool → flatten → linear → cross-entropy, every
    parameter and the input against central differences."""
    net = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1, relu=True, weight_std=0.5, bias_init=0.1, rng=1,
                  dtype=np.float64),
        nn.LocalResponseNorm(size=3, alpha=0.5, beta=0.75, k=2.0, groups=2),
        nn.MaxPool2d(3, 2),
        nn.Flatten(),
        nn.Linear(16, 3, weight_std=0.5, bias_init=0.2, rng=2, dtype=np.float64))
    x = convnet.tensor(np.random.default_rng(3).standard_normal((2, 2, 5, 5)),
                       requires_grad=True)
    labels = np.array([2, 0])
    leaves = [x] + net.parameters()
    assert len(leaves) == 5
    check_grads(lambda: F.cross_entropy(net(x), labels), leaves, max_checks=40)


def test_layers_match_their_functions(device):
    x = convnet.tensor(np.random.default_rng(4).standard_normal((2, 4, 9, 9)).astype(np.float32),
                       device=device)
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2, relu=True, rng=5, device=device,
                     weight_std=0.2)
    want = F.conv2d(x, conv.weight, conv.bias, stride=2, padding=1, groups=2, relu=True)
    np.testing.assert_array_equal(conv(x).numpy(), want.numpy())
    lrn = nn.LocalResponseNorm(groups=2)
    np.testing.assert_array_equal(lrn(x).numpy(), F.local_response_norm(x, groups=2).numpy())
    pool = nn.MaxPool2d(3, 2)
    np.testing.assert_array_equal(pool(x).numpy(), F.max_pool2d(x, 3, 2).numpy())
    assert pool(x).shape == (2, 4, 4, 4)
    np.testing.assert_array_equal(nn.ReLU()(x).numpy(), F.relu(x).numpy())
