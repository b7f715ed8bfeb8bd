"""The device registry, the ``cuda`` device (real where a GPU is, a stand-in CuPy
elsewhere, so the launch path is exercised on every machine) and ``convnet doctor``."""
from __future__ import annotations

import sys
import types

import numpy as np
import pytest

import convnet
from convnet.app import doctor
from convnet.backend import DeviceError, cuda, cuda_copy, get_device
from convnet.toolchain.launch import KernelModule, Launch


def _cupy_importable() -> bool:
    try:
        import cupy  # noqa: F401
    except Exception:
        return False
    return True


HAVE_CUPY = _cupy_importable()
HAVE_GPU = cuda.device_count() > 0


# --------------------------------------------------------------------------- the registry

def test_devices_lists_cpu_and_emu():
    found = convnet.devices()
    assert found[0] == "cpu"
    assert "emu" in found
    assert all(name in ("cpu", "emu") or name.startswith("cuda:") for name in found)
    assert len([n for n in found if n.startswith("cuda:")]) == cuda.device_count()


def test_cpu_device():
    device = get_device("cpu")
    assert device is get_device(" CPU ") and device.kind == "cpu" and not device.runs_kernels
    assert get_device(device) is device


@pytest.mark.parametrize("name", ["tpu", "cuda:x", "cuda:-1", "gpu", "", "cuda0"])
def test_unknown_names_raise(name):
    with pytest.raises(DeviceError, match="unknown device"):
        get_device(name)


def test_non_string_names_raise():
    with pytest.raises(DeviceError, match="named by a string"):
        get_device(0)


def test_device_count_never_raises():
    count = cuda.device_count()
    assert isinstance(count, int) and count >= 0


@pytest.mark.skipif(HAVE_GPU, reason="this machine has a GPU")
def test_cuda_unavailable_says_what_is_missing():
    with pytest.raises(DeviceError) as info:
        get_device("cuda:0")
    message = str(info.value)
    if not HAVE_CUPY:
        assert "CuPy is not installed" in message
        assert 'pip install -e ".[cuda13]"' in message and "[cuda12]" in message
    else:
        assert "driver" in message or "GPU" in message
    assert cuda.unavailable_reason() == message
    with pytest.raises(DeviceError):
        get_device("cuda")  # "cuda" is cuda:0


@pytest.mark.skipif(not HAVE_GPU, reason="no GPU here")
def test_real_gpu_roundtrip():
    device = get_device("cuda:0")
    assert device is get_device("cuda") and device.kind == "cuda" and device.runs_kernels
    host = np.arange(12, dtype=np.float32).reshape(3, 4)
    on_gpu = device.asarray(host)
    assert device.owns(on_gpu) and not device.owns(host)
    np.testing.assert_array_equal(device.to_numpy(on_gpu), host)
    with pytest.raises(DeviceError, match=f"cuda:{cuda.device_count()} does not exist"):
        cuda.CUDADevice(cuda.device_count())


# --------------------------------------------------------------------------- a stand-in CuPy

class _FakeArray:
    def __init__(self, data, device_id=0):
        self.data = np.asarray(data)
        self.device = types.SimpleNamespace(id=device_id)
        self.flags = types.SimpleNamespace(c_contiguous=self.data.flags.c_contiguous)
        self.strides = self.data.strides

    @property
    def __cuda_array_interface__(self):  # what Launch accepts as a device array
        return {"shape": self.data.shape, "typestr": self.data.dtype.str, "version": 3,
                "data": (0, False), "strides": None}


def _fake_cupy(driver=12040, count=2, count_error=None):
    """Just enough of CuPy's surface for CUDADevice, recording what it is asked to do."""
    calls = types.SimpleNamespace(modules=[], launches=[], current=[0], get_function=[],
                                  stream_ops=[])

    class Event:  # records what a stream of which device does, in order
        def __init__(self, block=False, disable_timing=False):
            self.device = None

        def record(self, stream=None):
            self.device = calls.current[-1]
            calls.stream_ops.append(("record", self.device, id(self)))

    class Stream:
        def __init__(self, device_id):
            self.device_id = device_id

        def wait_event(self, event):
            calls.stream_ops.append(("wait", self.device_id, id(event)))

    class DeviceContext:
        def __init__(self, index):
            self.id = index

        def __enter__(self):
            calls.current.append(self.id)

        def __exit__(self, *exc):
            calls.current.pop()

        def synchronize(self):
            calls.launches.append(("sync", self.id))

    class Kernel:
        def __init__(self, name):
            self.name = name
            self.max_dynamic_shared_size_bytes = 48 * 1024
            self.num_regs, self.shared_size_bytes, self.max_threads_per_block = 16, 0, 1024

        def __call__(self, grid, block, args, shared_mem=0):
            calls.launches.append(dict(name=self.name, grid=grid, block=block, args=args,
                                       shared_mem=shared_mem, device=calls.current[-1],
                                       max_shared=self.max_dynamic_shared_size_bytes))

    class RawModule:
        def __init__(self, code, options, name_expressions):
            calls.modules.append(dict(code=code, options=options, names=name_expressions))
            self.names = name_expressions

        def get_function(self, name):
            assert name in self.names
            calls.get_function.append((name, calls.current[-1]))
            return Kernel(name)

    def get_device_count():
        if count_error:
            raise RuntimeError(count_error)
        return count

    def asarray(array, dtype=None):
        if isinstance(array, _FakeArray):
            return array
        return _FakeArray(np.asarray(array, dtype=dtype), calls.current[-1])

    cupy = types.ModuleType("cupy")
    cupy.__version__ = "0.fake"
    cupy.ndarray = _FakeArray
    cupy.RawModule = RawModule
    cupy.asarray = asarray
    cupy.ascontiguousarray = lambda a: a
    cupy.asnumpy = lambda a: a.data.copy()
    cupy.cuda = types.SimpleNamespace(
        Device=DeviceContext, Event=Event,
        get_current_stream=lambda: Stream(calls.current[-1]),
        runtime=types.SimpleNamespace(driverGetVersion=lambda: driver,
                                      runtimeGetVersion=lambda: 12040,
                                      getDeviceCount=get_device_count,
                                      getDeviceProperties=lambda i: {
                                          "name": b"Fake GPU", "major": 9, "minor": 0,
                                          "totalGlobalMem": 80 * 2**30}),
        nvrtc=types.SimpleNamespace(getVersion=lambda: (12, 4)))
    return cupy, calls


@pytest.fixture
def fake_cupy(monkeypatch):
    def install(**kwargs):
        cupy, calls = _fake_cupy(**kwargs)
        monkeypatch.setitem(sys.modules, "cupy", cupy)
        monkeypatch.setattr(cuda, "_RAW_MODULES", {})
        return cupy, calls
    return install


@pytest.fixture
def kernel_module(tmp_path):
    (tmp_path / "helper.cuh").write_text("#pragma once\n__device__ float two() { return 2.f; }\n")
    source = tmp_path / "scale.cu"
    source.write_text('#include "helper.cuh"\n'
                      'extern "C" __global__ void scale(float* x, int n) { x[0] *= two(); }\n'
                      'template <int N> __global__ void fill(float* x) { x[0] = N; }\n')
    return KernelModule(str(source), ("scale", "fill<3>"))


def test_fake_missing_driver(fake_cupy):
    fake_cupy(driver=0)
    assert cuda.device_count() == 0
    with pytest.raises(DeviceError, match="CuPy is installed but no NVIDIA driver"):
        cuda.CUDADevice(0)


def test_fake_no_gpu(fake_cupy):
    fake_cupy(count_error="cudaErrorNoDevice: no CUDA-capable device is detected")
    assert cuda.device_count() == 0
    with pytest.raises(DeviceError, match="no usable GPU.*cudaErrorNoDevice"):
        cuda.CUDADevice(0)
    fake_cupy(count=0)
    with pytest.raises(DeviceError, match="sees no GPU"):
        cuda.CUDADevice(0)


def test_fake_index_out_of_range(fake_cupy):
    fake_cupy(count=2)
    assert cuda.device_count() == 2
    with pytest.raises(DeviceError, match=r"cuda:2 does not exist: this machine has 2 GPUs"):
        cuda.CUDADevice(2)


def test_missing_cupy_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # makes `import cupy` fail as if absent
    with pytest.raises(DeviceError, match=r'CuPy is not installed.*pip install -e "\.\[cuda13\]"'):
        cuda.import_cupy()
    assert cuda.device_count() == 0
    assert "CuPy is not installed" in cuda.unavailable_reason()


def test_broken_cupy_import_is_reported(monkeypatch, tmp_path):
    package = tmp_path / "cupy"
    package.mkdir()
    (package / "__init__.py").write_text(
        'raise ImportError("libcudart.so.12: cannot open shared object file")\n')
    monkeypatch.delitem(sys.modules, "cupy", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(DeviceError, match="CuPy failed to import.*libcudart"):
        cuda.import_cupy()
    assert cuda.device_count() == 0
    monkeypatch.delitem(sys.modules, "cupy", raising=False)


def test_fake_launch_compiles_each_instantiation_once_lazily(fake_cupy, kernel_module):
    from convnet.toolchain.kernel_source import expand
    from convnet.toolchain.nvrtc import NVRTC_OPTIONS

    cupy, calls = fake_cupy(count=2)
    device = cuda.CUDADevice(1)
    assert device.name == "cuda:1" and device.kind == "cuda" and device.runs_kernels
    x = device.asarray(np.ones(4, np.float32))
    assert device.owns(x) and x.device.id == 1
    for _ in range(3):
        device.launch(Launch(kernel_module, "scale", grid=2, block=(32, 2), args=(x, np.int32(4))))
    assert len(calls.modules) == 1 and calls.modules[0]["names"] == ["scale"]  # only what ran
    device.launch(Launch(kernel_module, "fill", grid=1, block=1, args=(x,), template_args=(3,)))
    assert [m["names"] for m in calls.modules] == [["scale"], ["fill<3>"]]
    module = calls.modules[0]
    assert module["code"].startswith(expand(kernel_module.source, portable=True))
    assert "#line" in module["code"] and "two()" in module["code"]  # the header was inlined
    assert calls.modules[0]["code"] != calls.modules[1]["code"]  # distinct keys for CuPy's cache
    assert tuple(module["options"]) == NVRTC_OPTIONS
    assert calls.get_function == [("scale", 1), ("fill<3>", 1)]  # once each, on cuda:1
    first = calls.launches[0]
    assert first["grid"] == (2, 1, 1) and first["block"] == (32, 2, 1)
    assert first["device"] == 1 and first["shared_mem"] == 0
    assert first["args"][0] is x and first["args"][1] == np.int32(4)
    # a second device shares the compiled module but gets its own function
    other = cuda.CUDADevice(0)
    other.launch(Launch(kernel_module, "scale", grid=1, block=1,
                        args=(other.asarray(np.ones(1, np.float32)), np.int32(1))))
    assert len(calls.modules) == 2 and calls.get_function[-1] == ("scale", 0)
    device.synchronize()
    assert calls.launches[-1] == ("sync", 1)


def test_fake_large_dynamic_shared_memory_opts_in(fake_cupy, kernel_module):
    _, calls = fake_cupy()
    device = cuda.CUDADevice(0)
    x = device.asarray(np.ones(1, np.float32))
    device.launch(Launch(kernel_module, "scale", 1, 1, (x, np.int32(1)), shared_bytes=1024))
    assert calls.launches[-1]["max_shared"] == 48 * 1024
    device.launch(Launch(kernel_module, "scale", 1, 1, (x, np.int32(1)), shared_bytes=100 * 1024))
    assert calls.launches[-1]["shared_mem"] == 100 * 1024
    assert calls.launches[-1]["max_shared"] == 100 * 1024


def test_fake_wrong_arguments_are_named(fake_cupy, kernel_module):
    fake_cupy(count=2)
    device = cuda.CUDADevice(0)
    host = np.ones(4, np.float32)
    with pytest.raises(DeviceError, match=r"scale .*argument 0 is a numpy.ndarray, not a CuPy array"):
        device.launch(Launch(kernel_module, "scale", 1, 1, (host, np.int32(4))))
    elsewhere = cuda.CUDADevice(1).asarray(host)
    with pytest.raises(DeviceError, match=r"scale .*argument 0 lives on cuda:1, but the kernel "
                                          r"runs on cuda:0"):
        device.launch(Launch(kernel_module, "scale", 1, 1, (elsewhere, np.int32(4))))
    strided = _FakeArray(np.ones((4, 4), np.float32)[:, ::2], 0)
    with pytest.raises(DeviceError, match="argument 0 is not C-contiguous"):
        device.launch(Launch(kernel_module, "scale", 1, 1, (strided, np.int32(4))))


def test_fake_to_numpy_and_cross_device_copy(fake_cupy, monkeypatch):
    fake_cupy(count=2)
    copies = []  # the copies' stream ordering: tests/test_columns_devices.py

    def copy(cp, array, index, path):
        copies.append((array.device.id, index, path))
        return _FakeArray(array.data.copy(), index)

    monkeypatch.setattr(cuda_copy, "copy", copy)
    monkeypatch.setattr(cuda_copy, "can_access_peer", lambda cp, src, dst: (src, dst) == (0, 1))
    a, b = cuda.CUDADevice(0), cuda.CUDADevice(1)
    x = a.asarray([1.0, 2.0], dtype=np.float32)
    assert a.owns(x) and not b.owns(x)
    np.testing.assert_array_equal(a.to_numpy(x), [1.0, 2.0])
    assert a.to_numpy(np.zeros(2)).shape == (2,)
    moved = b.asarray(x)
    assert moved is not x and b.owns(moved)
    assert a.owns(a.asarray(moved))
    assert copies == [(0, 1, "peer"), (1, 0, "staged")]  # crossing.path: peer where allowed
    np.testing.assert_array_equal(b.to_numpy(moved), [1.0, 2.0])
    assert a.asarray(x) is x


# --------------------------------------------------------------------------- doctor

def _lines():
    return {c.label: c for c in doctor.checks()}


def test_doctor_reports_the_basics():
    checks = _lines()
    assert checks["Python"].ok and checks["NumPy"].ok
    assert checks["NumPy"].detail == np.__version__
    assert checks["emu compiler"].ok
    text = doctor.report()
    for line in text.splitlines():
        assert line.startswith(("✓ ", "✗ ", "devices: "))
    assert "✓ Python: " in text and "✓ NumPy: " in text


def test_doctor_emu_runtime():
    assert _lines()["emu runtime (convnet._emu)"].ok


def test_doctor_nvrtc():
    pytest.importorskip("cuda.bindings.nvrtc")
    from convnet.toolchain import nvrtc
    check = _lines()["NVRTC"]
    assert check.ok and check.detail.startswith("%d.%d" % nvrtc.version())


@pytest.mark.skipif(HAVE_CUPY, reason="CuPy is installed here")
def test_doctor_without_cupy():
    checks = _lines()
    cupy_line = checks["CuPy"].line()
    assert cupy_line.startswith("✗ CuPy: CuPy is not installed")
    assert '".[cuda13]"' in cupy_line
    assert not checks["NVIDIA driver"].ok and checks["NVIDIA driver"].detail
    assert not checks["GPU"].ok and "CuPy" in checks["GPU"].detail


def test_doctor_with_fake_gpu(fake_cupy):
    fake_cupy(count=1)
    checks = _lines()
    assert checks["CuPy"].ok and "CUDA 12.4" in checks["CuPy"].detail
    assert checks["NVIDIA driver"].ok and "12.4" in checks["NVIDIA driver"].detail
    gpu = checks["GPU cuda:0"]
    assert gpu.ok and "Fake GPU" in gpu.detail and "compute capability 9.0" in gpu.detail


def test_doctor_with_fake_cupy_and_no_driver(fake_cupy):
    fake_cupy(driver=0)
    checks = _lines()
    assert checks["CuPy"].ok
    assert not checks["NVIDIA driver"].ok and "install the NVIDIA driver" in checks["NVIDIA driver"].detail
    assert not checks["GPU"].ok


def test_doctor_main_exits_zero(capsys):
    assert doctor.main() == 0
    assert "Python" in capsys.readouterr().out
