"""Kernel modules built for an architecture-specific feature set (``KernelModule.feature_arch``).

A module whose kernels use ``wgmma.*`` (tests/kernels/sm_90a/feature_arch.cu) declares
``feature_arch="sm_90a"``: the compile report builds it as sm_90a for sm_90 and leaves
it out elsewhere, the launch-resource check and the performance model use that build,
and the ``cuda`` executor loads a CUBIN our NVRTC built for sm_90a (exercised with a
stand-in CuPy: this checks the build, the names and the refusals, not a real GPU).
"""
from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest

import convnet.ops
from conftest import needs_nvrtc, require_device, require_perf_tools
from convnet.app import cli
from convnet.backend import DeviceError
from convnet.backend import cuda as cuda_backend
from convnet.toolchain import nvrtc, resources
from convnet.toolchain.launch import ArchitectureError, KernelModule, Launch, LaunchError
from convnet.toolchain.resources import LaunchResourceError

KERNELS = Path(__file__).parent / "kernels"
SOURCE = str(KERNELS / "sm_90a" / "feature_arch.cu")
MODULE = KernelModule(SOURCE, ("feature_ones", "feature_fill<2>"), feature_arch="sm_90a")
PLAIN = KernelModule(str(KERNELS / "launch_resources.cu"), ("bounded_128",))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh cache folder and no in-process figures."""
    monkeypatch.setenv("CONVNET_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(resources, "_MEMORY", {})
    monkeypatch.setattr(resources, "_CHECKED", {})
    return tmp_path


# --------------------------------------------------------------------------- the declaration

def test_feature_arch_is_validated():
    for bad in ("sm_90", "90a", "sm90a", "sm_90A", "compute_90a", 90, ""):
        with pytest.raises(LaunchError, match=r"feature_arch must name .*sm_NNa"):
            KernelModule(SOURCE, ("feature_ones",), feature_arch=bad)
    assert KernelModule(SOURCE, ("feature_ones",), feature_arch="sm_100a").base_arch == "sm_100"
    assert PLAIN.feature_arch is None and PLAIN.base_arch is None


def test_build_arch():
    assert MODULE.base_arch == "sm_90"
    assert MODULE.build_arch("sm_90") == MODULE.build_arch("sm_90a") == "sm_90a"
    assert MODULE.build_arch("sm_80") is None and MODULE.build_arch("sm_100") is None
    assert PLAIN.build_arch("sm_80") == "sm_80" and PLAIN.build_arch("sm_90a") == "sm_90a"
    with pytest.raises(ArchitectureError, match=r"feature_arch\.cu uses the sm_90a feature set "
                                                r"and is built only for sm_90a: it runs on "
                                                r"sm_90 GPUs, not on sm_80"):
        MODULE.require_arch("sm_80")
    assert issubclass(ArchitectureError, LaunchError)


# --------------------------------------------------------------------------- the compile report

@needs_nvrtc
def test_plain_sm_90_rejects_the_module():
    """Why the declaration exists: built as a portable module, sm_90 refuses wgmma."""
    with pytest.raises(nvrtc.CompileError, match="not supported on .target 'sm_90'"):
        nvrtc.compile_module(KernelModule(SOURCE, ("feature_ones",)), "sm_90")


@needs_nvrtc
def test_report_builds_sm_90a_and_skips_other_archs():
    rows, failures = nvrtc.compile_all([MODULE, PLAIN], ("sm_80", "sm_90", "sm_90a"))
    assert not failures
    built = sorted((Path(r.module).name, r.kernel, r.arch) for r in rows)
    assert built == sorted([("feature_arch.cu", "feature_ones", "sm_90a"),
                            ("feature_arch.cu", "feature_fill<2>", "sm_90a"),
                            *(("launch_resources.cu", "bounded_128", a)
                              for a in ("sm_80", "sm_90", "sm_90a"))])  # sm_90a built once
    assert all(r.registers > 0 and not r.spills for r in rows)
    assert nvrtc.not_built([MODULE, PLAIN], ("sm_80", "90")) == [(MODULE, "sm_80")]
    assert nvrtc.format_not_built([(MODULE, "sm_80"), (MODULE, "sm_86")]) == (
        f"{SOURCE}: built only for sm_90a (it uses the sm_90a feature set); "
        f"not built for sm_80, sm_86")
    assert nvrtc.compile_report([MODULE], ("sm_80",)) == []
    assert [r.arch for r in nvrtc.compile_module(MODULE, "sm_90")] == ["sm_90a", "sm_90a"]
    with pytest.raises(ArchitectureError, match="built only for sm_90a"):
        nvrtc.compile_module(MODULE, "sm_80")


@needs_nvrtc
def test_convnet_kernels_notes_the_skipped_archs(monkeypatch, capsys):
    monkeypatch.setattr(convnet.ops, "kernel_modules", lambda: [MODULE, PLAIN])
    assert cli.main(["kernels"]) == 0
    out = capsys.readouterr().out
    table = [line.split() for line in out.splitlines()
             if line.startswith(SOURCE) and "built only" not in line]
    assert sorted(line[1:3] for line in table) == [["feature_fill<2>", "sm_90a"],
                                                    ["feature_ones", "sm_90a"]]
    assert f"{SOURCE}: built only for sm_90a (it uses the sm_90a feature set); " \
           f"not built for sm_80" in out
    assert ("2 module(s) for sm_80, sm_90: 4 kernel build(s), 0 spilling; 0 module build(s) "
            "failed; 1 module build(s) skipped (built only for sm_90a)") in out
    assert cli.main(["kernels", "--arch", "sm_90a"]) == 0  # the feature arch may be asked
    out = capsys.readouterr().out
    assert "skipped" not in out and "3 kernel build(s)" in out


# --------------------------------------------------------------------------- launch resources

@needs_nvrtc
def test_resources_come_from_the_sm_90a_build(cache):
    found = resources.kernel_resources(MODULE, "feature_fill<2>", "sm_90")
    assert (found.origin, found.max_threads, found.static_shared) == ("nvrtc", 128, 0)
    assert found.registers > 0
    assert [p.name.split("-")[1] for p in (cache / "nvrtc").glob("*.json")] == ["sm_90a"]
    with pytest.raises(ArchitectureError, match="not on sm_80"):
        resources.kernel_resources(MODULE, "feature_ones", "sm_80")
    launch = Launch(MODULE, "feature_ones", 1, 128, (np.zeros(128, np.float32),))
    with pytest.raises(ArchitectureError, match="not on sm_86"):
        resources.check_launch(launch, "sm_86")
    assert resources.check_launch(launch, "sm_90").arch == "sm_90"


def test_emu_checks_feature_modules_on_their_base_arch():
    archs = ("sm_80", "sm_86", "sm_89", "sm_90")
    assert resources.module_archs(MODULE, archs) == ("sm_90",)
    assert resources.module_archs(MODULE, ("sm_80",)) == ("sm_90",)
    assert resources.module_archs(MODULE, ()) == ()
    assert resources.module_archs(PLAIN, archs) == archs


@needs_nvrtc
@pytest.mark.parametrize("setting", ["all", "sm_80"])
def test_emu_runs_and_checks_the_module(cache, monkeypatch, setting):
    emu = require_device("emu")
    monkeypatch.setenv(resources.EMU_ARCH_ENV, setting)
    y = np.zeros(256, np.float32)
    launch = Launch(MODULE, "feature_fill", 2, 128, (y,), template_args=(2,))
    emu.launch(launch)
    np.testing.assert_array_equal(y, 2.0)
    assert [c.arch for c in resources.check_emu(launch)] == ["sm_90"]
    with pytest.raises(LaunchResourceError, match=r"feature_ones \(feature_arch\.cu\) on sm_90: "
                                                  r"a block of 256 threads exceeds .* 128"):
        emu.launch(Launch(MODULE, "feature_ones", 1, 256, (np.zeros(256, np.float32),)))


# --------------------------------------------------------------------------- perf

def test_kernel_figures_refuses_other_archs():
    from convnet.perf.kernel_figures import kernel_figures
    with pytest.raises(ArchitectureError, match=r"feature_arch\.cu uses the sm_90a feature set"
                                                r".*not on sm_80"):
        kernel_figures(MODULE, "sm_80")


def test_kernel_figures_use_the_sm_90a_build(cache):
    require_perf_tools()
    from convnet.perf import sass
    from convnet.perf.kernel_figures import kernel_figures
    figures = kernel_figures(MODULE, "sm_90")
    assert set(figures) == set(MODULE.kernels)
    assert {f["arch"] for f in figures.values()} == {"sm_90a"}
    assert figures["feature_ones"]["max_threads"] == 128
    opcodes = [i.opcode for i in sass.module_sass(MODULE, "sm_90")[0].instructions]
    assert "WARPGROUP" in opcodes and "FENCE" in opcodes  # wgmma.fence, fence.proxy.async
    assert [r.kernel for r in sass.static_report([MODULE, PLAIN], "sm_80")] == ["bounded_128"]


# --------------------------------------------------------------------------- cuda (stand-in)

def _fake_cupy(major: int, minor: int):
    """CuPy's surface for CUDADevice: ``RawModule(path=...)`` records the CUBIN it is
    given and the names asked of it; the GPU has compute capability ``major.minor``."""
    calls = types.SimpleNamespace(paths=[], names=[], launches=[])

    class Function:
        num_regs, shared_size_bytes, max_threads_per_block = 10, 0, 128
        max_dynamic_shared_size_bytes = 48 * 1024

        def __call__(self, grid, block, args, shared_mem=0):
            calls.launches.append((grid, block))

    class RawModule:
        def __init__(self, code=None, *, path=None, options=(), name_expressions=None):
            assert code is None and name_expressions is None, "not the CUBIN path"
            calls.paths.append(path)

        def get_function(self, name):
            calls.names.append(name)
            return Function()

    class Array:
        def __init__(self, data):
            self.data, self.device = np.asarray(data), types.SimpleNamespace(id=0)
            self.flags = types.SimpleNamespace(c_contiguous=True)

        __cuda_array_interface__ = property(lambda self: {"shape": self.data.shape,
                                                          "typestr": "<f4", "version": 3,
                                                          "data": (0, False)})

    class Device:
        def __init__(self, index):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    cupy = types.ModuleType("cupy")
    cupy.ndarray, cupy.RawModule = Array, RawModule
    cupy.cuda = types.SimpleNamespace(Device=Device, runtime=types.SimpleNamespace(
        driverGetVersion=lambda: 13000, getDeviceCount=lambda: 1,
        getDeviceProperties=lambda i: {"major": major, "minor": minor,
                                       "multiProcessorCount": 132}))
    return cupy, calls


def _gpu(monkeypatch, major: int, minor: int):
    cupy, calls = _fake_cupy(major, minor)
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    monkeypatch.setattr(cuda_backend, "_RAW_MODULES", {})
    return cuda_backend.CUDADevice(0), cupy, calls


@needs_nvrtc
def test_cuda_loads_our_sm_90a_cubin_by_its_mangled_name(cache, monkeypatch):
    device, cupy, calls = _gpu(monkeypatch, 9, 0)
    compiled = []
    real_compile = nvrtc._compile
    monkeypatch.setattr(nvrtc, "_compile",
                        lambda *a, **k: compiled.append(a[3]) or real_compile(*a, **k))
    launch = Launch(MODULE, "feature_fill", 2, 128, (cupy.ndarray(np.zeros(256)),),
                    template_args=(2,))
    device.launch(launch)
    device.launch(launch)
    assert compiled == [[*nvrtc.NVRTC_OPTIONS, "--gpu-architecture=sm_90a"]]
    (path,) = calls.paths
    assert Path(path).parent == cache / "cubin" and Path(path).read_bytes()[:4] == b"\x7fELF"
    assert calls.names == ["_Z12feature_fillILi2EEvPf"]  # NVRTC's lowered name, asked once
    assert calls.launches == [((2, 1, 1), (128, 1, 1))] * 2

    # another process: the CUBIN and its name come from the disk cache, nothing compiles
    monkeypatch.setattr(cuda_backend, "_RAW_MODULES", {})
    monkeypatch.setattr(nvrtc, "_compile", lambda *a, **k: pytest.fail("compiled again"))
    cuda_backend.CUDADevice(0).launch(launch)
    assert calls.paths == [path, path] and calls.names[-1] == "_Z12feature_fillILi2EEvPf"


def test_cuda_refuses_a_gpu_of_another_arch(monkeypatch):
    device, cupy, calls = _gpu(monkeypatch, 8, 0)
    launch = Launch(MODULE, "feature_ones", 1, 128, (cupy.ndarray(np.zeros(128)),))
    with pytest.raises(DeviceError, match=r"feature_ones \(.*feature_arch\.cu\) uses the sm_90a "
                                          r"feature set and runs only on sm_90 GPUs; cuda:0 is "
                                          r"sm_80"):
        device.launch(launch)
    assert not calls.paths and not calls.launches
