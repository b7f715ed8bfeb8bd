"""First GPU contact (issue 10, item 8), without a GPU: stand-ins for CuPy where the
``cuda`` path is exercised. Cross-device ordering and lazy per-instantiation compiles
are in tests/test_devices.py (its stand-in CuPy records streams and modules)."""
from __future__ import annotations

import shutil
import sys
import types

import numpy as np
import pytest

import convnet
from convnet import nn, optim
from convnet.backend import cuda, get_device
from convnet.ops import _conv_tiles
from convnet.toolchain import kernel_source


# --------------------------------------------------------------------------- allocations

class _Array:
    def __init__(self, data, device_id):
        self.data, self.device = np.asarray(data), types.SimpleNamespace(id=device_id)


def _fake_cupy():
    current = [0]

    class Device:
        def __init__(self, index):
            self.id = index

        def __enter__(self):
            current.append(self.id)

        def __exit__(self, *exc):
            current.pop()

    cupy = types.ModuleType("cupy")
    cupy.ndarray = _Array
    cupy.float32 = np.float32
    cupy.empty = lambda shape, dtype=None: _Array(np.empty(shape, dtype), current[-1])
    cupy.cuda = types.SimpleNamespace(Device=Device, runtime=types.SimpleNamespace(
        driverGetVersion=lambda: 12040, getDeviceCount=lambda: 2,
        getDeviceProperties=lambda i: {"major": 8, "minor": 0, "multiProcessorCount": 108}))
    return cupy, current


def test_device_xp_allocates_on_its_own_gpu(monkeypatch):
    cupy, current = _fake_cupy()
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    second = cuda.CUDADevice(1)
    assert current == [0]                       # CuPy's current GPU is cuda:0 ...
    y = second.xp.empty((4,), dtype=second.xp.float32)
    assert y.device.id == 1                     # ... a direct op's allocation lands on cuda:1
    assert isinstance(y, second.xp.ndarray)     # classes pass through unchanged
    assert second.xp.cuda is cupy.cuda and current == [0]
    assert second.arch == "sm_80" and second.parallel_units == 108


# --------------------------------------------------------------------------- the cache key

def test_portable_text_is_the_same_in_a_moved_checkout(tmp_path, monkeypatch):
    here = kernel_source.expand("relu.cu", portable=True)
    assert '#line 1 "kernels/relu.cu"' in here
    assert str(kernel_source.kernels_dir().resolve()) not in here
    moved = tmp_path / "elsewhere" / "kernels"
    shutil.copytree(kernel_source.kernels_dir(), moved)
    monkeypatch.setattr(kernel_source, "kernels_dir", lambda: moved)
    assert kernel_source.expand("relu.cu", portable=True) == here
    assert kernel_source.expand("relu.cu") != here          # the absolute form differs
    assert cuda.instantiation_source  # the text CuPy gets: portable + the instantiation's name


# --------------------------------------------------------------------------- the step

def _model():
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 5, rng=0, weight_std=0.3))


def test_train_step_reads_nothing_until_asked(monkeypatch):
    device = get_device("cpu")
    reads = []
    original = type(device).to_numpy
    monkeypatch.setattr(type(device), "to_numpy",
                        lambda self, a: (reads.append(1), original(self, a))[1])
    model = _model()
    opt = optim.SGD(model.parameters(), lr=0.1)
    x = np.random.default_rng(0).standard_normal((4, 3, 2, 2)).astype(np.float32)
    result = convnet.train_step(model, opt, convnet.tensor(x), np.array([0, 1, 2, 3]),
                                check_finite=False)
    assert reads == [] and not result.ready
    loss = result.loss
    assert reads == [1] and result.ready and np.isfinite(loss)
    assert 0.0 <= result.top1 <= result.top5 <= 1.0 and reads == [1]   # one read for all three


def test_a_late_non_finite_loss_says_the_update_was_applied():
    model = _model()
    opt = optim.SGD(model.parameters(), lr=0.1)
    x = np.full((2, 3, 2, 2), np.nan, np.float32)
    result = convnet.train_step(model, opt, convnet.tensor(x), np.array([0, 1]), check_finite=False)
    with pytest.raises(FloatingPointError, match="loss is nan; this step's update was already"):
        result.loss
    with pytest.raises(FloatingPointError, match="weights are unchanged"):
        convnet.train_step(model, opt, convnet.tensor(x), np.array([0, 1]))  # the default on cpu: checked first


# --------------------------------------------------------------------------- tile residency

def test_gpu_tile_residency_comes_from_the_compiled_kernels(monkeypatch):
    fake = types.SimpleNamespace(kind="cuda", parallel_units=132, arch="sm_90")
    tiles = list(_conv_tiles.TILE_MODELS["cuda"])
    blocks = [1 + i % 6 for i in range(len(tiles))]  # a different count per tile
    monkeypatch.setattr(_conv_tiles, "_RESIDENCY", {(t, "sm_90"): n for t, n in zip(tiles, blocks)})
    model = _conv_tiles._model(fake)
    assert [r for r, _ in model.values()] == blocks
    assert [rate for _, rate in model.values()] == [r for _, r in
                                                    _conv_tiles.TILE_MODELS["cuda"].values()]
    monkeypatch.setattr(_conv_tiles, "gpu_residency", lambda tile, arch="sm_90": None)  # no NVRTC
    assert _conv_tiles._model(fake) == _conv_tiles.TILE_MODELS["cuda"]


def test_gpu_residency_follows_occupancy_rules():
    pytest.importorskip("cuda.bindings.nvrtc")
    from convnet.perf.occupancy import occupancy
    from convnet.ops import conv
    from convnet.toolchain.resources import kernel_resources
    tile = _conv_tiles.LARGE
    found = kernel_resources(conv.FORWARD, tile.name("conv_forward"), "sm_90")
    forward = occupancy("sm_90", tile.threads, found.registers, found.static_shared).blocks_per_sm
    assert 1 <= _conv_tiles.gpu_residency(tile, "sm_90") <= forward
