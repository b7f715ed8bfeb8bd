"""ReLU: the kernels (emu, cuda) against the NumPy reference (cpu), bit for bit,
over sizes around the float4 groups and the block, misaligned and strided views,
special values, both emulator schedules, the autograd path and the errors."""
from __future__ import annotations

import textwrap

from types import SimpleNamespace

import numpy as np
import pytest

import convnet
from convnet import functional as F
from convnet.ops import relu as relu_ops
from convnet.ops.elementwise import BLOCK, EMU_MAX_BLOCKS, grid_for

from conftest import forbid_launches, require_device, run_clean_under_asan

SIZES = [1, 2, 3, 4, 5, 7, 255, 256, 257, 1023, 1025, 4099, 1 << 20]
SHAPES = [(3, 5, 7), (2, 96, 13, 13), (0,), (4, 0, 3)]
CPU = convnet.get_device("cpu")


def _data(shape, seed):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(shape).astype(np.float32)


def _forward(device, x):
    return device.to_numpy(relu_ops.forward(device, device.asarray(x)))


def _backward(device, y, dy):
    return device.to_numpy(relu_ops.backward(device, device.asarray(y), device.asarray(dy)))


@pytest.mark.parametrize("shape", [(n,) for n in SIZES] + SHAPES, ids=str)
def test_matches_reference(kernel_device, shape):
    x = _data(shape, seed=int(np.prod(shape)) + 1)
    dy = _data(shape, seed=int(np.prod(shape)) + 2)
    y = _forward(kernel_device, x)
    assert y.shape == x.shape and y.dtype == np.float32
    np.testing.assert_array_equal(y, relu_ops.forward_reference(x))
    np.testing.assert_array_equal(_backward(kernel_device, y, dy),
                                  relu_ops.backward_reference(y, dy))


@pytest.mark.parametrize("offset", [1, 2, 3])
def test_misaligned_views(offset):
    """x[offset:] starts off a 16-byte boundary: the kernels fall back to scalars."""
    device = require_device("emu")  # host arrays: a view passes its own pointer
    base = _data((4 * 1024 + 9,), seed=offset)
    x = base[offset:]
    assert x.ctypes.data % 16 != 0
    y = relu_ops.forward(device, x)
    np.testing.assert_array_equal(y, relu_ops.forward_reference(x))
    # every pointer misaligned, and y misaligned but the others aligned
    dy_base = _data(base.shape, seed=10 + offset)
    dx = relu_ops.backward(device, y, dy_base[offset:])
    np.testing.assert_array_equal(dx, relu_ops.backward_reference(y, dy_base[offset:]))
    y_base = np.empty_like(base)
    y_base[offset:] = y
    dy = _data(y.shape, seed=20 + offset)
    np.testing.assert_array_equal(relu_ops.backward(device, y_base[offset:], dy),
                                  relu_ops.backward_reference(y, dy))


def test_misaligned_view_through_autograd(kernel_device):
    x = convnet.tensor(_data((1029,), seed=3), device=kernel_device, requires_grad=True)
    out = F.relu(x[1:])
    out.backward(np.ones(1028, np.float32))
    ref = convnet.tensor(x.numpy(), requires_grad=True)
    F.relu(ref[1:]).backward(np.ones(1028, np.float32))
    np.testing.assert_array_equal(out.numpy(), F.relu(ref[1:]).numpy())
    np.testing.assert_array_equal(x.grad.numpy(), ref.grad.numpy())


def test_strided_input_is_made_contiguous(kernel_device):
    x = _data((64, 10), seed=4)
    strided = kernel_device.asarray(x)[:, ::3]
    assert not strided.flags.c_contiguous
    y = kernel_device.to_numpy(relu_ops.forward(kernel_device, strided))
    np.testing.assert_array_equal(y, relu_ops.forward_reference(x[:, ::3]))


def test_special_values(kernel_device):
    x = np.array([np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-45, -1e-45,
                  np.finfo(np.float32).max, -np.finfo(np.float32).max, 2.0], np.float32)
    y = _forward(kernel_device, x)
    ref = relu_ops.forward_reference(x)
    # The GPU build flushes subnormals (-ftz=true, as CuPy compiles it; emu does the
    # same): the kernels see 1e-45 as 0, the NumPy reference keeps it.
    ref[np.abs(x) < np.finfo(np.float32).tiny] = 0.0
    assert np.array_equal(y.view(np.uint32), ref.view(np.uint32))  # bits: +0.0, never -0.0
    assert np.isnan(y[:2]).all()  # NaN propagates
    assert not np.signbit(y[2:]).any()


def test_emu_schedule_order_does_not_matter():
    from convnet.backend import emu
    device = require_device("emu")
    x = _data((3 * BLOCK * 4 + 5,), seed=5)
    forward = relu_ops.forward(device, x)
    with emu.debug(schedule="reverse"):
        reverse = relu_ops.forward(device, x)
        dx_reverse = relu_ops.backward(device, reverse, x)
    np.testing.assert_array_equal(forward, reverse)
    np.testing.assert_array_equal(dx_reverse, relu_ops.backward(device, forward, x))


def test_autograd_on_every_device(device):
    x = _data((5, 33), seed=6)
    dy = _data((5, 33), seed=7)
    t = convnet.tensor(x, device=device, requires_grad=True)
    y = F.relu(t)
    assert y.device == device and y.requires_grad
    y.backward(convnet.tensor(dy, device=device))
    np.testing.assert_array_equal(y.numpy(), np.maximum(x, 0))
    np.testing.assert_array_equal(t.grad.numpy(), np.where(x > 0, dy, 0))
    assert t.grad.device == device


def test_cpu_runs_the_reference_in_any_float_dtype():
    x = np.array([-1.5, 0.0, 2.5], np.float64)
    y = relu_ops.forward(CPU, x)
    assert y.dtype == np.float64
    np.testing.assert_array_equal(y, [0.0, 0.0, 2.5])


def test_launch_shape():
    # what the launch builders read of a device
    emu, h100 = SimpleNamespace(kind="emu", parallel_units=2), SimpleNamespace(kind="cuda",
                                                                                parallel_units=132)
    x = np.zeros(1 << 20, np.float32)
    launch = relu_ops.forward_launch(emu, x, x)
    assert launch.block == (BLOCK, 1, 1) and launch.grid == ((1 << 20) // (BLOCK * 4), 1, 1)
    assert launch.args[2] == np.int64(1 << 20) and isinstance(launch.args[2], np.int64)
    assert grid_for(emu, 1) == 1 and grid_for(emu, BLOCK * 4 + 1) == 2
    # larger arrays are covered by the grid-stride loop: on emu a few fibers, on a GPU
    # four waves of the blocks its SMs hold (2048 threads each)
    assert grid_for(emu, 1 << 40) == EMU_MAX_BLOCKS
    assert grid_for(h100, 1 << 40) == 4 * 132 * 2048 // BLOCK
    assert set(relu_ops.MODULE.kernels) == {"relu_forward", "relu_backward"}


def test_empty_launches_nothing(kernel_device, monkeypatch):
    forbid_launches(monkeypatch, kernel_device, "an empty array must not launch")
    x = kernel_device.asarray(np.zeros((0, 3), np.float32))
    assert relu_ops.forward(kernel_device, x).shape == (0, 3)
    assert relu_ops.backward(kernel_device, x, x).shape == (0, 3)


def test_errors(kernel_device):
    with pytest.raises(TypeError, match="float32.*float64"):
        relu_ops.forward(kernel_device, kernel_device.asarray(np.ones(3)))
    with pytest.raises(TypeError, match="float32.*int32"):
        relu_ops.forward(kernel_device, kernel_device.asarray(np.ones(3, np.int32)))
    t64 = convnet.tensor(np.ones(3), device=kernel_device)
    with pytest.raises(TypeError, match="float64"):
        F.relu(t64)
    y = kernel_device.asarray(np.ones(3, np.float32))
    with pytest.raises(ValueError, match="shapes differ"):
        relu_ops.backward(kernel_device, y, kernel_device.asarray(np.ones(4, np.float32)))
    a = convnet.tensor(np.ones(3, np.float32), device=kernel_device)
    with pytest.raises(convnet.DeviceError, match=f"'{kernel_device.name}' and 'cpu'"):
        F.relu(a) + convnet.tensor(np.ones(3, np.float32))


_ASAN_SCRIPT = textwrap.dedent("""
    import numpy as np
    import convnet
    from convnet.backend import emu
    from convnet.ops import dropout, relu
    device = convnet.get_device("emu")
    for n in (1, 3, 4, 5, 1027):
        for offset in range(4):  # views ending exactly at the end of their allocation
            base = np.random.default_rng(n).standard_normal(n + offset).astype(np.float32)
            x = base[offset:]
            with emu.debug(check="address"):
                y = relu.forward(device, x)
                dx = relu.backward(device, y, x)
                z = dropout.apply(device, x, dropout.Plan(5, 2**31, 2.0))
            assert np.array_equal(y, relu.forward_reference(x))
            assert np.array_equal(dx, relu.backward_reference(y, x))
            assert np.array_equal(z, dropout.apply_reference(x, dropout.Plan(5, 2**31, 2.0)))
    print("CLEAN")
""")


def test_relu_and_dropout_under_address_sanitizer():
    """No out-of-bounds access in the float4 or the scalar paths (relu and dropout)."""
    run_clean_under_asan(_ASAN_SCRIPT)
