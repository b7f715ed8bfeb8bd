"""Launch resources per architecture (issue 10, item 4): what a GPU refuses, both
executors refuse, with the same message from the shared launch description
(``toolchain.resources.check_launch``, ``convnet.toolchain.resources``).

Kernels in tests/kernels/launch_resources.cu; every broken launch has a correct twin
that runs. The ``cuda`` executor is exercised with a stand-in CuPy whose functions
report the figures NVRTC reports, so its messages can be compared with emu's.
"""
from __future__ import annotations

import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest

from conftest import HAVE_NVRTC, needs_nvrtc, require_device
from convnet.backend import cuda as cuda_backend
from convnet.toolchain import nvrtc, resources
from convnet.toolchain.launch import KernelModule, Launch
from convnet.toolchain.resources import KernelResources, LaunchResourceError


HERE = Path(__file__).parent / "kernels"
MODULE = KernelModule(str(HERE / "launch_resources.cu"),
                      ("bounded_128", "register_heavy", "static_and_dynamic"))
KiB = 1024


@pytest.fixture
def emu(monkeypatch):
    monkeypatch.delenv(resources.EMU_ARCH_ENV, raising=False)
    return require_device("emu")


def bounded(threads):
    y = np.zeros(threads, np.float32)
    return Launch(MODULE, "bounded_128", 1, threads, (y,)), y


def heavy(threads):
    x = np.ones(96 * threads, np.float32)
    return Launch(MODULE, "register_heavy", 1, threads, (x, np.int32(threads)))


def shared(dynamic_bytes, threads=64):
    y = np.zeros(threads, np.float32)
    return Launch(MODULE, "static_and_dynamic", 1, threads,
                  (y, np.int32(min(threads, dynamic_bytes // 4))), shared_bytes=dynamic_bytes), y


# --------------------------------------------------------------------------- the rules

def test_rules_per_architecture():
    launch, _ = shared(70 * KiB)
    figures = KernelResources("static_and_dynamic", registers=14, static_shared=32 * KiB)
    on_90 = resources.check(launch, "sm_90", figures)   # 102 KiB <= 227 KiB, with the opt-in
    assert on_90.needs_opt_in and on_90.occupancy.runs
    for arch in ("sm_86", "sm_89"):                     # 99 KiB per block at most
        with pytest.raises(LaunchResourceError, match=r"32768 \+ 71680 = 104448 bytes .* "
                                                      r"101376-byte maximum .* on sm_8[69]"):
            resources.check(launch, arch, figures)
    small, _ = shared(16 * KiB)
    assert not resources.check(small, "sm_86", figures).needs_opt_in   # exactly 48 KiB
    over, _ = shared(16 * KiB + 4)
    assert resources.check(over, "sm_86", figures).needs_opt_in


def test_static_shared_over_48k_is_refused():
    launch, _ = shared(0)
    with pytest.raises(LaunchResourceError, match="static shared memory exceed the 49152-byte"):
        resources.check(launch, "sm_90", KernelResources("static_and_dynamic", 14, 49 * KiB))


def test_registers_with_allocation_granularity():
    figures = KernelResources("register_heavy", registers=128, static_shared=0)
    assert resources.check(heavy(512), "sm_90", figures).occupancy.blocks_per_sm == 1
    with pytest.raises(LaunchResourceError, match=r"1024 threads x 128 registers cannot run: "
                                                  r"too many registers"):
        resources.check(heavy(1024), "sm_90", figures)
    # 65 registers round up to 72 per thread (2304 per warp): 32 warps take 73,728 > 65,536
    with pytest.raises(LaunchResourceError, match="too many registers"):
        resources.check(heavy(1024), "sm_80", KernelResources("register_heavy", 65, 0))
    assert resources.check(heavy(1024), "sm_80", KernelResources("register_heavy", 64, 0))


def test_emu_arch_setting(monkeypatch):
    monkeypatch.delenv(resources.EMU_ARCH_ENV, raising=False)
    assert resources.emu_archs() == ("sm_90",)
    monkeypatch.setenv(resources.EMU_ARCH_ENV, "all")
    assert resources.emu_archs() == ("sm_80", "sm_86", "sm_89", "sm_90")
    monkeypatch.setenv(resources.EMU_ARCH_ENV, "sm_86, 80")
    assert resources.emu_archs() == ("sm_86", "sm_80")
    monkeypatch.setenv(resources.EMU_ARCH_ENV, "none")
    assert resources.emu_archs() == ()
    monkeypatch.setenv(resources.EMU_ARCH_ENV, "sm_75")
    with pytest.raises(ValueError, match="CONVNET_EMU_ARCH"):
        resources.emu_archs()


# --------------------------------------------------------------------------- on emu

@needs_nvrtc
def test_emu_refuses_threads_over_launch_bounds(emu):
    with pytest.raises(LaunchResourceError, match=r"bounded_128 \(launch_resources.cu\) on sm_90: "
                                                  r"a block of 256 threads exceeds the kernel's "
                                                  r"maximum of 128 threads"):
        emu.launch(bounded(256)[0])
    launch, y = bounded(128)
    emu.launch(launch)
    np.testing.assert_array_equal(y, 2.0 * np.arange(128))


@needs_nvrtc
def test_emu_refuses_registers_times_threads(emu):
    with pytest.raises(LaunchResourceError, match=r"register_heavy .* 1024 threads x 12\d "
                                                  r"registers cannot run"):
        emu.launch(heavy(1024))
    emu.launch(heavy(256))


@needs_nvrtc
def test_emu_refuses_shared_over_the_per_block_limit(emu, monkeypatch):
    with pytest.raises(LaunchResourceError, match=r"32768 \+ 200704 = 233472 bytes"):
        emu.launch(shared(196 * KiB)[0])
    launch, y = shared(190 * KiB)                    # 222 KiB: runs (with the opt-in on a GPU)
    emu.launch(launch)
    np.testing.assert_array_equal(y, 3.0)
    monkeypatch.setenv(resources.EMU_ARCH_ENV, "all")  # the strictest: sm_86/89 allow 99 KiB
    with pytest.raises(LaunchResourceError, match="on sm_86"):
        emu.launch(shared(70 * KiB)[0])
    emu.launch(shared(60 * KiB)[0])


@needs_nvrtc
def test_report_is_cached_on_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVNET_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(resources, "_MEMORY", {})
    found = resources.kernel_resources(MODULE, "bounded_128", "sm_80")
    assert (found.max_threads, found.origin, found.static_shared) == (128, "nvrtc", 0)
    files = list((tmp_path / "nvrtc").glob("launch_resources-sm_80-*.json"))
    assert len(files) == 1
    assert {"bounded_128", "register_heavy", "static_and_dynamic"} <= set(
        __import__("json").loads(files[0].read_text()))  # the other extern "C" entries too
    monkeypatch.setattr(nvrtc, "_compile", lambda *a, **k: pytest.fail("compiled again"))
    monkeypatch.setattr(resources, "_MEMORY", {})
    assert resources.kernel_resources(MODULE, "register_heavy", "sm_80").registers > 64


def test_without_nvrtc_bounds_come_from_the_source(emu, monkeypatch):
    def unavailable(*args, **kwargs):
        raise nvrtc.NVRTCUnavailable("cuda-bindings is not installed (test)")
    monkeypatch.setattr(resources, "nvrtc_resources", unavailable)
    monkeypatch.setattr(resources, "_MEMORY", {})
    monkeypatch.setattr(resources, "_CHECKED", {})
    monkeypatch.setattr(resources, "_WARNED", False)
    with pytest.warns(RuntimeWarning, match="without the kernels' register counts"):
        with pytest.raises(LaunchResourceError, match="maximum of 128 threads"):
            emu.launch(bounded(256)[0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")             # one warning per process, not per launch
        emu.launch(heavy(1024))                    # registers unknown: not refused
    conv = next(m for m in __import__("convnet.ops", fromlist=["x"]).kernel_modules()
                if m.source == "conv_forward.cu")
    assert resources.source_resources(conv, "conv_forward<128, 128, 8, 8, 8>").max_threads == 256
    assert resources.source_resources(conv, "conv_forward<128, 128, 8, 8, 8>").min_blocks == 2
    assert resources.source_resources(conv, "conv_forward<32, 32, 16, 4, 4>").min_blocks == 1


@needs_nvrtc
def test_project_kernels_declare_what_nvrtc_records():
    """The source reading (no NVRTC) agrees with the PTX's .maxntid for every kernel."""
    from convnet.ops import kernel_modules
    for module in kernel_modules():
        for name in module.kernels:
            src = resources.source_resources(module, name)
            if src.max_threads is not None:
                built = resources.kernel_resources(module, name, "sm_90")
                assert (built.max_threads, built.min_blocks or 1) == \
                    (src.max_threads, src.min_blocks or 1), name


# --------------------------------------------------------------------------- on cuda (stand-in)

def _fake_cupy(figures: dict):
    """CuPy's surface for CUDADevice; functions carry ``figures[name]`` and refuse, as
    the driver does, a block over its limits or over 48 KiB without the opt-in."""
    calls = types.SimpleNamespace(launches=[], current=[0])

    class Device:
        def __init__(self, index):
            self.id = index

        def __enter__(self):
            calls.current.append(self.id)

        def __exit__(self, *exc):
            calls.current.pop()

    class Function:
        def __init__(self, name):
            f = figures[name]
            self.num_regs, self.shared_size_bytes = f.registers, f.static_shared
            self.max_threads_per_block = f.max_threads or 1024
            self.max_dynamic_shared_size_bytes = 48 * KiB - f.static_shared

        def __call__(self, grid, block, args, shared_mem=0):
            if shared_mem > self.max_dynamic_shared_size_bytes:
                raise RuntimeError("CUDA_ERROR_INVALID_VALUE: too much dynamic shared memory")
            calls.launches.append((shared_mem, self.max_dynamic_shared_size_bytes))

    class RawModule:
        def __init__(self, code, options, name_expressions):
            self.names = name_expressions

        def get_function(self, name):
            return Function(name)

    class Array:
        def __init__(self, data, device_id=0):
            self.data, self.device = np.asarray(data), types.SimpleNamespace(id=device_id)
            self.flags = types.SimpleNamespace(c_contiguous=True)

        __cuda_array_interface__ = property(lambda self: {"shape": self.data.shape,
                                                          "typestr": "<f4", "version": 3,
                                                          "data": (0, False)})

    cupy = types.ModuleType("cupy")
    cupy.ndarray, cupy.RawModule = Array, RawModule
    cupy.asarray = lambda a, dtype=None: a if isinstance(a, Array) else Array(a, calls.current[-1])
    cupy.ascontiguousarray = lambda a: a
    cupy.cuda = types.SimpleNamespace(Device=Device, runtime=types.SimpleNamespace(
        driverGetVersion=lambda: 12040, getDeviceCount=lambda: 1,
        getDeviceProperties=lambda i: {"major": 9, "minor": 0, "multiProcessorCount": 132}))
    return cupy, calls


@pytest.fixture
def fake_gpu(monkeypatch):
    if HAVE_NVRTC:
        figures = {n: resources.kernel_resources(MODULE, n, "sm_90") for n in MODULE.kernels}
    else:
        figures = {"bounded_128": KernelResources("bounded_128", 8, 0, 128),
                   "register_heavy": KernelResources("register_heavy", 128, 0),
                   "static_and_dynamic": KernelResources("static_and_dynamic", 14, 32 * KiB)}
    cupy, calls = _fake_cupy(figures)
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    monkeypatch.setattr(cuda_backend, "_RAW_MODULES", {})
    return cuda_backend.CUDADevice(0), calls


def _on_gpu(device, launch):
    args = tuple(device.asarray(a) if isinstance(a, np.ndarray) else a for a in launch.args)
    return Launch(launch.module, launch.kernel, launch.grid, launch.block, args,
                  shared_bytes=launch.shared_bytes)


def test_cuda_opts_in_on_static_plus_dynamic(fake_gpu):
    device, calls = fake_gpu
    device.launch(_on_gpu(device, shared(16 * KiB)[0]))     # 32 + 16 = 48 KiB: no opt-in
    assert calls.launches[-1] == (16 * KiB, 16 * KiB)
    device.launch(_on_gpu(device, shared(20 * KiB)[0]))     # 52 KiB: dynamic alone is 20
    assert calls.launches[-1] == (20 * KiB, 20 * KiB)        # the opt-in was performed
    device.launch(_on_gpu(device, shared(190 * KiB)[0]))
    assert calls.launches[-1] == (190 * KiB, 190 * KiB)


def test_cuda_without_the_opt_in_the_driver_refuses(fake_gpu, monkeypatch):
    """What the old rule (opt in only when the dynamic part alone exceeds 48 KiB) did:
    the stand-in driver refuses 32 KiB static + 20 KiB dynamic."""
    device, _ = fake_gpu
    monkeypatch.setattr(device, "_resources", lambda launch, function: launch.shared_bytes > 48 * KiB)
    with pytest.raises(RuntimeError, match="too much dynamic shared memory"):
        device.launch(_on_gpu(device, shared(20 * KiB)[0]))


@needs_nvrtc
def test_cuda_refuses_with_emus_message(fake_gpu, emu):
    device, calls = fake_gpu
    for broken in (bounded(256)[0], heavy(1024), shared(196 * KiB)[0]):
        with pytest.raises(LaunchResourceError) as on_emu:
            emu.launch(broken)
        with pytest.raises(LaunchResourceError) as on_cuda:
            device.launch(_on_gpu(device, broken))
        assert str(on_cuda.value) == str(on_emu.value)
    assert not calls.launches
    device.launch(_on_gpu(device, bounded(128)[0]))
    device.launch(_on_gpu(device, heavy(256)))
    assert len(calls.launches) == 2
