"""Two columns on two GPUs (issue 13, item 1): the crossing path (same device / host /
peer / staged), the plans' stream ordering (every wait, record and hold is needed: a plan
missing any one is caught), the CuPy executor against a fake CuPy that logs which stream
and device every call ran on, and, where GPUs exist, the copies themselves and a
two-column step on cuda:0 + cuda:1 against both columns on cuda:0."""
from __future__ import annotations

import contextlib
import itertools
from types import SimpleNamespace

import numpy as np
import pytest

import convnet
from convnet import optim
from convnet.backend import crossing, cuda_copy
from convnet.models import alexnet

from conftest import require_device

TINY = (4, 8, 8, 8, 8, 16, 16)
SIZE = 67


def _dev(name):
    return SimpleNamespace(kind=name.partition(":")[0], name=name)


# --------------------------------------------------------------------------- path

def test_path_same_host_peer_staged():
    asked = []

    def peer(src, dst):
        asked.append((src.name, dst.name))
        return dst.name == "cuda:1"

    assert crossing.path(_dev("cuda:0"), _dev("cuda:0"), peer) == "same"
    assert crossing.path(_dev("cpu"), _dev("cpu"), peer) == "same"
    assert crossing.path(_dev("cpu"), _dev("emu"), peer) == "host"
    assert crossing.path(_dev("cuda:0"), _dev("cpu"), peer) == "host"
    assert asked == []  # asked only for two different GPUs
    assert crossing.path(_dev("cuda:0"), _dev("cuda:1"), peer) == "peer"
    assert crossing.path(_dev("cuda:1"), _dev("cuda:2"), peer) == "staged"
    assert crossing.path(_dev("cuda:0"), _dev("cuda:1")) == "staged"  # no answer: not peers
    assert asked == [("cuda:0", "cuda:1"), ("cuda:1", "cuda:2")]


def test_path_and_steps_errors():
    with pytest.raises(ValueError, match="the destination 'gpu0' is not a device"):
        crossing.path(_dev("cpu"), "gpu0")
    with pytest.raises(ValueError, match="unknown path 'nvlink'"):
        crossing.steps("nvlink")
    assert crossing.steps("same") == crossing.steps("host") == ()


def test_model_reports_its_crossing_path():
    kw = dict(num_classes=4, input_size=SIZE, widths=TINY, seed=0)
    assert alexnet(**kw).crossing_path() == "none"
    assert alexnet(columns=2, devices=["cpu", "cpu"], **kw).crossing_path() == "same"
    if "emu" in convnet.devices():
        assert alexnet(columns=2, devices=["cpu", "emu"], **kw).crossing_path() == "host"


# --------------------------------------------------------------------------- plans

@pytest.mark.parametrize("name", ["peer", "staged"])
def test_plans_are_ordered_and_never_stall_the_producer(name):
    plan = crossing.steps(name)
    assert crossing.ordering_problems(plan) == []
    assert not [s for s in plan if s[0] == "wait" and s[1] == "src"]  # producer goes on
    copies = [s for s in plan if s[0] == "copy"]
    assert all(s[2].endswith("_copy") for s in copies)  # no copy on a compute stream
    assert [s[1] for s in copies] == (["peer"] if name == "peer" else ["d2h", "h2d"])


@pytest.mark.parametrize("name", ["peer", "staged"])
def test_every_step_of_a_plan_is_needed(name):
    plan = crossing.steps(name)
    for i, step in enumerate(plan):
        broken = plan[:i] + plan[i + 1:]
        assert crossing.ordering_problems(broken), f"{name} without {step} looks ordered"


def test_ordering_problems_names_what_is_wrong():
    plan = list(crossing.steps("peer"))
    swapped = [plan[3], plan[0]] + plan[1:3] + plan[4:]  # wait before the record
    assert "dst_copy waits on 'produced' before it is recorded" in \
        crossing.ordering_problems(swapped)
    assert crossing.ordering_problems([("jump", "x")])[0] == "unknown step ('jump', 'x')"


def test_run_calls_the_steps_in_order():
    calls = []

    class Ops:
        def __getattr__(self, kind):
            return lambda *args: calls.append((kind, *args))

        def buffer(self, name):
            return f"buffer {name}"

    assert crossing.run(crossing.steps("staged"), Ops()) == "buffer out"
    assert calls == list(crossing.steps("staged"))


# --------------------------------------------------------------------------- the CuPy executor

class _FakeCupy:
    """Just enough of CuPy for ``cuda_copy``: arrays hold NumPy data, pointers index a
    memory table, copies happen at once; every stream call is logged with its device."""

    def __init__(self, peers=()):
        self.log, self.memory, self.current = [], {}, 0
        self.peers = set(peers)
        self._ptr = itertools.count(1)
        fake = self

        class Stream:
            def __init__(self, device, label, non_blocking=False):
                self.device, self.label, self.ptr = device, label, next(fake._ptr)

            def wait_event(self, event):
                assert fake.current == self.device, "wait with another GPU current"
                fake.log.append(("wait", self.label, event.label))

        class Event:
            def __init__(self, block=False, disable_timing=False):
                self.device, self.label, self.done = fake.current, None, True

            def record(self, stream):
                assert stream.device == fake.current == self.device
                self.label = f"after {stream.label}#{sum(1 for e in fake.log if e[0] == 'record')}"
                fake.log.append(("record", stream.label))

        class CUDARuntimeError(RuntimeError):
            def __init__(self, status):
                self.status = status

        def copy_bytes(dst, src, n):
            fake.memory[dst][:n] = fake.memory[src][:n]

        def memcpy_peer(dst, dst_dev, src, src_dev, n, stream):
            fake.log.append(("peer", dst_dev, src_dev, n, fake._label(stream)))
            copy_bytes(dst, src, n)

        def memcpy(dst, src, n, kind, stream):
            fake.log.append(({1: "h2d", 2: "d2h"}[kind], fake.current, n, fake._label(stream)))
            copy_bytes(dst, src, n)

        def enable(peer):  # a second time: cudaErrorPeerAccessAlreadyEnabled
            fake.log.append(("enable", fake.current, peer))
            if fake.log.count(("enable", fake.current, peer)) > 1:
                raise CUDARuntimeError(704)

        self._streams = {}
        self.cuda = SimpleNamespace(
            Device=self._device, Event=Event,
            Stream=lambda non_blocking=False: self._stream(Stream, f"copy{self.current}"),
            get_current_stream=lambda: self._stream(Stream, f"compute{self.current}"),
            alloc_pinned_memory=self._pinned,
            runtime=SimpleNamespace(
                CUDARuntimeError=CUDARuntimeError, memcpyPeerAsync=memcpy_peer,
                memcpyAsync=memcpy, memcpyHostToDevice=1, memcpyDeviceToHost=2,
                deviceCanAccessPeer=lambda d, p: int((p, d) in self.peers),
                deviceEnablePeerAccess=enable))

    def _label(self, ptr):
        return next(s.label for s in self._streams.values() if s.ptr == ptr)

    def _stream(self, cls, label):
        if label not in self._streams:
            self._streams[label] = cls(self.current, label)
        return self._streams[label]

    @contextlib.contextmanager
    def _device(self, index):
        previous, self.current = self.current, index
        try:
            yield
        finally:
            self.current = previous

    def _pinned(self, nbytes):
        ptr = next(self._ptr)
        self.memory[ptr] = np.zeros(nbytes, np.uint8)
        return SimpleNamespace(ptr=ptr)

    def array(self, values, device):
        values = np.ascontiguousarray(values)
        ptr = next(self._ptr)
        self.memory[ptr] = values.reshape(-1).view(np.uint8)
        return SimpleNamespace(device=SimpleNamespace(id=device), data=SimpleNamespace(ptr=ptr),
                               nbytes=values.nbytes, shape=values.shape, dtype=values.dtype,
                               size=values.size, values=values)

    def empty(self, shape, dtype):
        return self.array(np.zeros(shape, dtype), self.current)

    def ascontiguousarray(self, a):
        return a

    def values(self, a):
        return self.memory[a.data.ptr].view(a.dtype).reshape(a.shape)


@pytest.fixture
def fresh_copy_state(monkeypatch):
    for name in ("_COPY_STREAMS", "_PEERS"):
        monkeypatch.setattr(cuda_copy, name, {})
    monkeypatch.setattr(cuda_copy, "_HELD", [])


def test_peer_copy_runs_on_the_destinations_copy_stream(fresh_copy_state):
    cp = _FakeCupy(peers={(0, 1)})
    src = cp.array(np.arange(12, dtype=np.float32).reshape(3, 4), device=0)
    assert cuda_copy.can_access_peer(cp, 0, 1) and not cuda_copy.can_access_peer(cp, 1, 0)
    out = cuda_copy.copy(cp, src, 1, "peer")
    assert out.device.id == 1 and np.array_equal(cp.values(out), src.values)
    assert [e for e in cp.log if e[0] != "enable"] == [
        ("record", "compute0"), ("record", "compute1"),
        ("wait", "copy1", "after compute0#0"), ("wait", "copy1", "after compute1#1"),
        ("peer", 1, 0, 48, "copy1"), ("record", "copy1"),
        ("wait", "compute1", "after copy1#2")]
    assert cp.log[0] == ("enable", 1, 0)  # the destination enables access to the source
    assert cuda_copy._HELD[0][1] == [src]
    cuda_copy._PEERS.clear()  # enabled already (as after another library did): still peers
    assert cuda_copy.can_access_peer(cp, 0, 1)


def test_staged_copy_goes_through_pinned_memory(fresh_copy_state):
    cp = _FakeCupy()
    src = cp.array(np.arange(6, dtype=np.float64), device=1)
    out = cuda_copy.copy(cp, src, 0, "staged")
    assert out.device.id == 0 and np.array_equal(cp.values(out), src.values)
    copies = [e for e in cp.log if e[0] in ("d2h", "h2d")]
    assert copies == [("d2h", 1, 48, "copy1"), ("h2d", 0, 48, "copy0")]
    assert ("wait", "compute0", "after copy0#3") in cp.log
    assert not [e for e in cp.log if e[:2] == ("wait", "compute1")]  # the producer never waits
    (event, held), = cuda_copy._HELD
    assert held[0] is src and len(held) == 2  # the source and the pinned buffer
    event.done = False
    cuda_copy.drain()
    assert len(cuda_copy._HELD) == 1
    event.done = True
    cuda_copy.drain()
    assert cuda_copy._HELD == []


def test_copy_refuses_an_unknown_path(fresh_copy_state):
    cp = _FakeCupy()
    with pytest.raises(ValueError, match="goes 'peer' or 'staged', not 'same'"):
        cuda_copy.copy(cp, cp.array(np.ones(2), 0), 1, "same")


# --------------------------------------------------------------------------- on GPUs

def _pending(cp, n=1 << 22):
    """An array whose last values a still queued kernel writes."""
    a = cp.arange(n, dtype=cp.float32)
    for _ in range(20):
        a = a * 1.0001 + 1.0
    return a


@pytest.mark.parametrize("path", ["peer", "staged"])
def test_forced_paths_copy_exactly_on_one_gpu(path):
    device = require_device("cuda:0")
    cp = device.cupy
    with cp.cuda.Device(0):
        a = _pending(cp)
        strided = a.reshape(-1, 4)[:, 1]  # not contiguous
        out = cuda_copy.copy(cp, strided, 0, path)  # while the kernels are queued
        expected = cp.asnumpy(strided)
        assert out.flags.c_contiguous
        np.testing.assert_array_equal(cp.asnumpy(out), expected)
        empty = cuda_copy.copy(cp, cp.zeros((0, 3), cp.float32), 0, path)
        assert empty.shape == (0, 3)


def _step(devices, steps=2):
    model = alexnet(num_classes=10, columns=2, devices=devices, input_size=SIZE, widths=TINY,
                    seed=7)
    opt = optim.SGD(model, lr=0.01)
    rng = np.random.default_rng(3)
    images = rng.standard_normal((4, 3, SIZE, SIZE)).astype(np.float32)
    labels = rng.integers(0, 10, 4)
    losses = [convnet.train_step(model, opt, images, labels) for _ in range(steps)]
    return [r.loss for r in losses], {n: p.numpy() for n, p in model.named_parameters()}, losses


def test_two_columns_on_two_gpus_equal_both_on_one():
    require_device("cuda:1")
    losses2, weights2, results = _step(["cuda:0", "cuda:1"])
    losses1, weights1, _ = _step(["cuda:0", "cuda:0"])
    assert results[-1].transfers.count == 18
    np.testing.assert_allclose(losses2, losses1, rtol=1e-5)
    for name, w in weights1.items():
        np.testing.assert_allclose(weights2[name], w, rtol=1e-4, atol=1e-6, err_msg=name)


# --------------------------------------------------------------------------- the GPU check's runs

def test_columns_benchmark_layouts_and_agreement():
    from benchmarks import columns
    assert columns.layouts(4) == (["cuda:0", "cuda:1"], ["cuda:0", "cuda:0"])
    assert columns.layouts(1) == (["cuda:0", "cuda:0"], ["cuda:0", "cuda:0"])
    assert columns.layouts(0) == (["cpu", "cpu"], ["cpu", "cpu"])
    w = {"fc8.weight": np.ones((2, 2), np.float32)}
    same = columns.agreement({"losses": [2.0, 1.0], "weights": w}, {"losses": [2.0, 1.0], "weights": w})
    assert same["agree"] and same["bit_identical"]
    off = {"fc8.weight": w["fc8.weight"] + np.float32(1e-3)}
    apart = columns.agreement({"losses": [2.0, 1.0], "weights": off},
                              {"losses": [2.0, 1.0], "weights": w})
    assert not apart["agree"] and apart["max_weight_abs_diff"] == pytest.approx(1e-3, rel=1e-3)
    assert not columns.agreement({"losses": [2.0, 1.001], "weights": w},
                                 {"losses": [2.0, 1.0], "weights": w})["agree"]
