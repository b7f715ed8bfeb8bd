"""AlexNet (convnet.models): the paper's parameter count and activation shapes, the
two-column transfer plan (exactly the crossings into conv3, fc6, fc7, fc8 and the
logits gather, mirrored in backward), one column == two columns on the same weights,
a small AlexNet-shaped network that memorises a batch, emu == cpu over a few steps,
and the builder's errors. Full-size networks are only built and run forward at batch
1 on cpu; everything else uses narrow networks on 67×67 inputs (the smallest input
that leaves every pooling layer a 3×3 window)."""
from __future__ import annotations

import numpy as np
import pytest

import convnet
from convnet import functional as F
from convnet import optim
from convnet.models import alexnet, one_to_two_columns, two_to_one_columns
from convnet.models.alexnet import feature_sizes

from conftest import require_device

SMALL = (8, 16, 16, 16, 16, 32, 32)   # conv1..conv5 filters, fc6, fc7 units
TINY = (4, 8, 8, 8, 8, 16, 16)
SIZE = 67                              # conv1 15×15, pool1 7×7, pool2 3×3, pool5 1×1
PAPER_PARAMETERS = 60_965_224


def _images(n, seed=0, size=SIZE, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 3, size, size)).astype(dtype)


def _labels(n, classes=10, seed=0):
    return np.random.default_rng(seed + 1).integers(0, classes, n)


# --------------------------------------------------------------------------- the paper's network

def test_parameter_count_and_shapes_of_the_papers_network():
    one = alexnet(seed=0)
    assert one.num_parameters() == PAPER_PARAMETERS
    shapes = {n: v.shape for n, v in one.state_dict().items()}
    assert shapes == {
        "conv1.weight": (96, 3, 11, 11), "conv1.bias": (96,),
        "conv2.weight": (256, 48, 5, 5), "conv2.bias": (256,),      # own column only
        "conv3.weight": (384, 256, 3, 3), "conv3.bias": (384,),     # both columns
        "conv4.weight": (384, 192, 3, 3), "conv4.bias": (384,),
        "conv5.weight": (256, 192, 3, 3), "conv5.bias": (256,),
        "fc6.weight": (4096, 9216), "fc6.bias": (4096,),
        "fc7.weight": (4096, 4096), "fc7.bias": (4096,),
        "fc8.weight": (1000, 4096), "fc8.bias": (1000,),
    }
    state = one.state_dict()
    for layer in ("conv2", "conv4", "conv5", "fc6", "fc7"):
        np.testing.assert_array_equal(state[f"{layer}.bias"], 1.0)
    for layer in ("conv1", "conv3", "fc8"):
        np.testing.assert_array_equal(state[f"{layer}.bias"], 0.0)
    w = state["fc6.weight"]
    assert abs(float(w.std()) - 0.01) < 1e-4 and abs(float(w.mean())) < 1e-5
    del one, state, w
    two = alexnet(columns=2, devices=["cpu", "cpu"], seed=0)
    assert two.num_parameters() == PAPER_PARAMETERS
    halves = {n: v.shape for n, v in two.state_dict().items() if n.startswith("column1.")}
    assert halves["column1.conv1.weight"] == (48, 3, 11, 11)
    assert halves["column1.conv3.weight"] == (192, 256, 3, 3)
    assert halves["column1.fc6.weight"] == (2048, 9216)
    assert halves["column1.fc8.weight"] == (500, 4096)


@pytest.mark.parametrize("input_size,fuse", [(227, True), (224, False)])
def test_activation_shapes(input_size, fuse):
    model = alexnet(input_size=input_size, seed=1, fuse_lrn_pool=fuse).eval()
    record = {}
    with convnet.no_grad():
        logits = model(_images(1, size=input_size), record=record)
    spatial = {name: t.shape[2] for name, t in record.items() if t.ndim == 4}
    expected = {"conv1": 55, "pool1": 27, "conv2": 27, "pool2": 13, "conv3": 13, "conv4": 13,
                "conv5": 13, "pool5": 6}
    if not fuse:
        expected.update(norm1=55, norm2=27)
    assert spatial == expected
    channels = {name: t.shape[1] for name, t in record.items()}
    assert [channels[n] for n in ("conv1", "conv2", "conv3", "conv4", "conv5")] == \
        [96, 256, 384, 384, 256]
    assert record["flatten"].shape == (1, 9216)
    assert record["fc6"].shape == record["fc7"].shape == (1, 4096)
    assert logits.shape == (1, 1000) and np.isfinite(logits.numpy()).all()
    assert model.conv1.padding == (2 if input_size == 224 else 0)


def test_feature_sizes():
    assert list(feature_sizes(227).values()) == [55, 55, 27, 27, 27, 13, 13, 13, 13, 6]
    assert feature_sizes(224)["conv1"] == 55
    assert feature_sizes(SIZE)["pool5"] == 1


# --------------------------------------------------------------------------- two columns

def _plan(n, widths, classes, d0, d1, itemsize):
    """The crossings of one two-column step: each column sends the other its half of
    the inputs of conv3, fc6, fc7 and fc8, column 1 sends its logits to column 0; the
    backward pass sends the gradients of the same tensors the other way."""
    sizes = feature_sizes(SIZE)
    elems = {"conv3": n * widths[1] // 2 * sizes["pool2"] ** 2,
             "fc6": n * widths[4] // 2 * sizes["pool5"] ** 2,
             "fc7": n * widths[5] // 2, "fc8": n * widths[6] // 2}
    plan = {}
    for phase in ("forward", "backward"):
        for point, count in elems.items():
            for src, dst, name in ((d1, d0, "col1->col0"), (d0, d1, "col0->col1")):
                a, b = (src, dst) if phase == "forward" else (dst, src)
                plan[(phase, a, b, f"{point} {name}")] = {"count": 1, "bytes": count * itemsize}
        a, b = (d1, d0) if phase == "forward" else (d0, d1)
        plan[(phase, a, b, "logits col1->col0")] = {"count": 1,
                                                    "bytes": n * (classes // 2) * itemsize}
    return plan


@pytest.mark.parametrize("names", [("cpu", "cpu"), ("emu", "emu"), ("cpu", "emu"),
                                   ("cuda:0", "cuda:0")], ids="+".join)
def test_transfer_plan_of_a_two_column_step(names):
    devices = [require_device(n) for n in names]
    widths = TINY if "emu" in names else SMALL
    model = alexnet(num_classes=10, columns=2, devices=devices, input_size=SIZE, widths=widths,
                    seed=2)
    opt = optim.SGD(model)
    result = convnet.train_step(model, opt, _images(3), _labels(3))
    log = result.transfers
    assert log.summary() == _plan(3, widths, 10, devices[0].name, devices[1].name, 4)
    assert log.count == 18
    for c, device in enumerate(devices):  # every parameter stayed on its column's device
        column = getattr(model, f"column{c}")
        assert all(p.device == device for p in column.parameters())


def test_one_and_two_columns_compute_the_same():
    one = alexnet(num_classes=9, input_size=SIZE, widths=SMALL, seed=3, dtype=np.float64)
    two = alexnet(num_classes=9, columns=2, input_size=SIZE, widths=SMALL, seed=4,
                  dtype=np.float64)
    two.load_state_dict(one_to_two_columns(one.state_dict()))
    assert two.column0.fc8.weight.shape == (5, 32) and two.column1.fc8.weight.shape == (4, 32)
    x, y = _images(4, seed=5, dtype=np.float64), _labels(4, 9)
    one.eval(), two.eval()  # dropout off: the two layouts draw different masks
    loss_one = F.cross_entropy(logits_one := one(x), y)
    loss_two = F.cross_entropy(logits_two := two(x), y)
    np.testing.assert_allclose(logits_two.numpy(), logits_one.numpy(), rtol=1e-12, atol=1e-14)
    assert loss_two.item() == pytest.approx(loss_one.item(), rel=1e-12)
    loss_one.backward()
    loss_two.backward()
    grads_one = {n: p.grad.numpy() for n, p in one.named_parameters()}
    grads_two = two_to_one_columns({n: p.grad.numpy() for n, p in two.named_parameters()})
    assert grads_one.keys() == grads_two.keys()
    for name in grads_one:
        np.testing.assert_allclose(grads_two[name], grads_one[name], rtol=1e-9, atol=1e-15,
                                   err_msg=name)


def test_state_dict_mapping_round_trip_and_errors():
    one = alexnet(num_classes=7, input_size=SIZE, widths=TINY, seed=6)
    state = one.state_dict()
    back = two_to_one_columns(one_to_two_columns(state))
    assert list(back) == list(state)
    for name in state:
        np.testing.assert_array_equal(back[name], state[name])
    with pytest.raises(ValueError, match="not a one-column AlexNet state dict: missing: fc8.bias"):
        one_to_two_columns({k: v for k, v in state.items() if k != "fc8.bias"})
    with pytest.raises(ValueError, match="not a two-column AlexNet state dict: unexpected: conv1.weight"):
        two_to_one_columns(dict(one_to_two_columns(state), **{"conv1.weight": state["conv1.weight"]}))
    two = alexnet(num_classes=7, columns=2, input_size=SIZE, widths=TINY, seed=6)
    with pytest.raises(ValueError, match="missing: column0.conv1.weight"):
        two.load_state_dict(state)  # a one-column state dict into a two-column model


def test_lrn_groups_option_changes_the_network():
    grouped = alexnet(num_classes=5, input_size=SIZE, widths=TINY, seed=7, weight_std=0.3).eval()
    single = alexnet(num_classes=5, input_size=SIZE, widths=TINY, seed=7, weight_std=0.3,
                     lrn_groups=1).eval()
    assert grouped.norm1.groups == 2 and single.norm1.groups == 1
    x = _images(2, seed=8)
    with convnet.no_grad():
        assert not np.allclose(grouped(x).numpy(), single(x).numpy(), rtol=1e-7, atol=0)


@pytest.mark.parametrize("name", ["cpu", "emu"])
def test_fused_lrn_pool_computes_the_same(name):
    device = require_device(name)
    x, y = _images(2, seed=11), _labels(2, seed=11)
    grads = []
    for fuse in (True, False):
        model = alexnet(num_classes=10, input_size=SIZE, widths=TINY, weight_std=0.2, seed=12,
                        devices=[device], fuse_lrn_pool=fuse).eval()
        F.cross_entropy(model(x), y).backward()
        grads.append({n: p.grad.numpy() for n, p in model.named_parameters()})
    for n in grads[0]:
        np.testing.assert_allclose(grads[0][n], grads[1][n], rtol=1e-6, atol=1e-9, err_msg=n)


# --------------------------------------------------------------------------- training

def test_small_network_memorises_a_batch():
    """Eight random images, ten classes, no dropout: the loss falls below 5% of its start.
    (weight_std 0.1: at these widths the paper's 0.01 leaves too little signal.)"""
    model = alexnet(num_classes=10, input_size=SIZE, widths=SMALL, dropout=0.0, weight_std=0.1,
                    seed=1)
    opt = optim.SGD(model, lr=0.005)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 3, SIZE, SIZE)).astype(np.float32)
    y = rng.integers(0, 10, 8)
    first = convnet.train_step(model, opt, x, y)
    for _ in range(600):
        last = convnet.train_step(model, opt, x, y)
        if last.loss < 0.05 * first.loss:
            break
    assert last.loss < 0.05 * first.loss, (first.loss, last.loss)
    assert last.top1 == 1.0


def test_emu_matches_cpu_over_a_few_steps():
    """The same seeded network (dropout masks included) trained for three steps on emu
    and on cpu: losses, accuracies and weights agree to float32 tolerance."""
    emu = require_device("emu")
    x, y = _images(2, seed=9), _labels(2, seed=9)
    runs = {}
    for device in ("cpu", emu):
        model = alexnet(num_classes=10, input_size=SIZE, widths=TINY, weight_std=0.1, seed=10,
                        devices=[device], dropout_mode="inverted")
        opt = optim.SGD(model, lr=0.01)
        steps = [convnet.train_step(model, opt, x, y) for _ in range(3)]
        runs[str(device)] = (steps, model.state_dict())
    (cpu_steps, cpu_state), (emu_steps, emu_state) = runs["cpu"], runs["emu"]
    for a, b in zip(cpu_steps, emu_steps):
        assert b.loss == pytest.approx(a.loss, rel=1e-5)
        assert (b.top1, b.top5) == (a.top1, a.top5)
    assert cpu_steps[-1].loss != cpu_steps[0].loss
    for name in cpu_state:
        np.testing.assert_allclose(emu_state[name], cpu_state[name], rtol=1e-4, atol=1e-6,
                                   err_msg=name)


# --------------------------------------------------------------------------- errors

def test_builder_errors():
    with pytest.raises(ValueError, match=r"input_size 30 is too small: conv2 gives 2×2 maps "
                                         r"and pool2 \(3×3, stride 2\) needs at least 3×3"):
        alexnet(input_size=30, widths=TINY)
    with pytest.raises(ValueError, match="smaller than conv1"):
        alexnet(input_size=10, widths=TINY)
    with pytest.raises(TypeError, match="input_size must be an int"):
        alexnet(input_size=227.0)
    with pytest.raises(ValueError, match="columns must be 1 or 2"):
        alexnet(columns=3, widths=TINY, input_size=SIZE)
    with pytest.raises(ValueError, match="columns=2 needs 2 device"):
        alexnet(columns=2, devices=["cpu"], widths=TINY, input_size=SIZE)
    with pytest.raises(ValueError, match="lrn_groups=1"):
        alexnet(columns=2, lrn_groups=1, widths=TINY, input_size=SIZE)
    with pytest.raises(ValueError, match="even"):
        alexnet(widths=(3, 8, 8, 8, 8, 16, 16), input_size=SIZE)
    with pytest.raises(ValueError, match="7 ints"):
        alexnet(widths=(4, 8), input_size=SIZE)
    with pytest.raises(ValueError, match="num_classes must be at least 2"):
        alexnet(num_classes=1, columns=2, widths=TINY, input_size=SIZE)
    with pytest.raises(convnet.DeviceError, match="unknown device"):
        alexnet(devices=["tpu"], widths=TINY, input_size=SIZE)
    model = alexnet(num_classes=4, widths=TINY, input_size=SIZE)
    with pytest.raises(ValueError, match=r"expected images of shape \(N, 3, 67, 67\)"):
        model(_images(1, size=SIZE + 1))


@pytest.mark.parametrize("device_name", ["cpu", "emu"])
def test_fc_dropout_fusion_computes_the_same(device_name):
    """fc6/fc7 run with their dropout in the epilogue (no record) give the same bits as
    the layers one by one (a record asks for every output): logits, every gradient, and
    the paper mode's eval scaling."""
    device = require_device(device_name)
    x = np.random.default_rng(0).standard_normal((3, 3, 67, 67)).astype(np.float32)
    for mode in ("paper", "inverted"):
        out = []
        for record in (None, {}):
            model = alexnet(num_classes=10, widths=(8, 16, 16, 16, 16, 32, 32), input_size=67,
                            seed=3, devices=[device], dropout_mode=mode)
            y = model(convnet.tensor(x, device=device), record=record)
            y.sum().backward()
            model.eval()
            out.append([y.numpy(), model(convnet.tensor(x, device=device)).numpy()]
                       + [p.grad.numpy() for _, p in model.named_parameters()])
        for a, e in zip(*out):
            np.testing.assert_array_equal(a, e)
