"""Every kernel compiles with NVRTC (no GPU needed) and none spills registers; the
list of kernel modules (``convnet.ops.KERNEL_MODULES``) misses no kernel file.

Also proves the compile check itself: a broken source fails with its file and
line, a kernel that must spill is reported as spilling, and template name
expressions are mapped to the right kernels.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from convnet.toolchain import nvrtc
from convnet.toolchain.launch import KernelModule
from convnet.ops import KERNEL_MODULES, kernel_modules
from convnet.toolchain.paths import kernels_dir
from conftest import needs_nvrtc


MODULES = kernel_modules()

# A module with a kernel that must spill (96 values live across a barrier under a
# 32-register cap from __launch_bounds__(1024, 2)), a plain kernel, and a template
# whose instantiations differ in static shared memory (4 * N bytes).
SPILLING_KERNEL = """\
extern "C" __global__ void __launch_bounds__(1024, 2) must_spill(float* x, int n)
{
    float a[96];
#pragma unroll
    for (int i = 0; i < 96; ++i) a[i] = x[i * n + threadIdx.x];
    __syncthreads();
    float s = 0.f;
#pragma unroll
    for (int i = 95; i >= 0; --i) s = s * a[i] + x[i];
    x[threadIdx.x] = s;
}
"""

TEST_SOURCE = """\
// test kernels for the compile check
#include "test_helpers.cuh"

""" + SPILLING_KERNEL + """
extern "C" __global__ void no_spill(float* x, int n)
{
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] = twice(x[i]);
}

template <int N>
__global__ void staged(float* x)
{
    __shared__ float s[N];
    s[threadIdx.x] = x[threadIdx.x];
    __syncthreads();
    x[threadIdx.x] = s[N - 1 - threadIdx.x];
}
"""
TEST_HEADER = """\
#pragma once
__device__ __forceinline__ float twice(float v) { return 2.0f * v; }
"""


@pytest.fixture
def test_module(tmp_path) -> KernelModule:
    (tmp_path / "test_helpers.cuh").write_text(TEST_HEADER)
    source = tmp_path / "test_kernels.cu"
    source.write_text(TEST_SOURCE)
    return KernelModule(str(source), ("must_spill", "no_spill", "staged<64>", "staged<128>"))


# --------------------------------------------------------------------------- the real kernels

@needs_nvrtc
def test_there_are_kernel_modules():
    assert MODULES, "convnet.ops declares no KernelModule"


@needs_nvrtc
@pytest.mark.parametrize("module", MODULES, ids=[str(m.source) for m in MODULES])
def test_module_compiles_without_spills(module):
    rows = nvrtc.compile_report([module], archs=("sm_80", "sm_90"))
    built = {(r.kernel, r.arch) for r in rows}
    assert built == {(k, module.build_arch(a)) for k in module.kernels for a in ("sm_80", "sm_90")
                     if module.build_arch(a)}
    spilling = [f"{r.kernel} ({r.arch}): {r.spill_stores} B stored, {r.spill_loads} B loaded"
                for r in rows if r.spills]
    assert not spilling, f"{module.source}: kernels spill registers: {'; '.join(spilling)}"
    for r in rows:
        assert r.registers > 0, r


# --------------------------------------------------------------------------- the check itself

@needs_nvrtc
def test_spilling_kernel_is_reported(test_module):
    rows = {(r.kernel, r.arch): r for r in nvrtc.compile_report([test_module])}
    for arch in ("sm_80", "sm_90"):
        spill = rows["must_spill", arch]
        assert spill.spills
        assert spill.spill_stores > 0 and spill.spill_loads > 0
        assert spill.stack_bytes > 0
        assert spill.registers <= 32  # the cap __launch_bounds__(1024, 2) imposes
        plain = rows["no_spill", arch]
        assert not plain.spills and plain.stack_bytes == 0 and plain.shared_bytes == 0
        assert plain.registers > 0


@needs_nvrtc
def test_template_instantiations_map_to_their_own_kernels(test_module):
    rows = {(r.kernel, r.arch): r for r in nvrtc.compile_report([test_module], archs=["sm_80"])}
    assert rows["staged<64>", "sm_80"].shared_bytes == 64 * 4
    assert rows["staged<128>", "sm_80"].shared_bytes == 128 * 4
    assert [r.kernel for r in nvrtc.compile_module(test_module, "sm_80")] == list(test_module.kernels)


@needs_nvrtc
def test_report_table_marks_spills(test_module):
    table = nvrtc.format_report(nvrtc.compile_report([test_module], archs=["sm_80"]))
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["module", "kernel", "arch"]
    spill_line = next(line for line in lines if "must_spill" in line)
    assert spill_line.rstrip().endswith("SPILLS")
    assert not next(line for line in lines if "no_spill" in line).rstrip().endswith("SPILLS")


@needs_nvrtc
def test_compile_error_names_file_and_line(tmp_path):
    source = tmp_path / "broken.cu"
    source.write_text('// broken on purpose\nextern "C" __global__ void broken(float* x)\n'
                      '{\n    x[0] = undefined_name;\n}\n')
    module = KernelModule(str(source), ("broken",))
    with pytest.raises(nvrtc.CompileError) as info:
        nvrtc.compile_report([module], archs=["sm_80"])
    message = str(info.value)
    assert f"{source.resolve().as_posix()}(4)" in message
    assert "undefined_name" in message
    assert info.value.log and info.value.arch == "sm_80"


@needs_nvrtc
def test_compile_error_in_a_header_names_the_header(tmp_path):
    (tmp_path / "bad.cuh").write_text("#pragma once\n\n__device__ float oops() { return nope; }\n")
    source = tmp_path / "uses_bad.cu"
    source.write_text('#include "bad.cuh"\nextern "C" __global__ void k(float* x) { x[0] = oops(); }\n')
    with pytest.raises(nvrtc.CompileError) as info:
        nvrtc.compile_module(KernelModule(str(source), ("k",)), "sm_90")
    assert f"{(tmp_path / 'bad.cuh').resolve().as_posix()}(3)" in str(info.value)


@needs_nvrtc
def test_ptxas_error_names_the_kernel_by_its_name_expression(tmp_path):
    source = tmp_path / "too_much_shared.cu"
    source.write_text("template <int N>\n__global__ void big(float* x)\n{\n"
                      "    __shared__ float s[N];\n    s[threadIdx.x] = x[0];\n"
                      "    __syncthreads();\n    x[1] = s[N - 1];\n}\n")
    module = KernelModule(str(source), ("big<256>", "big<16384>"))  # 64 KiB > 48 KiB static
    with pytest.raises(nvrtc.CompileError) as info:
        nvrtc.compile_module(module, "sm_80")
    assert any("too much shared data" in line and "[big<16384>]" in line
               for line in info.value.errors), info.value.errors
    assert "\0" not in info.value.log


@needs_nvrtc
def test_unknown_kernel_name_is_a_compile_error(tmp_path):
    source = tmp_path / "one.cu"
    source.write_text('extern "C" __global__ void present(float* x) { x[0] = 1.0f; }\n')
    with pytest.raises(nvrtc.CompileError, match="absent"):
        nvrtc.compile_module(KernelModule(str(source), ("present", "absent")), "sm_80")


@needs_nvrtc
def test_compile_all_keeps_going(tmp_path, test_module):
    broken = tmp_path / "broken2.cu"
    broken.write_text('extern "C" __global__ void b(float* x) { x[0] = what; }\n')
    rows, failures = nvrtc.compile_all([KernelModule(str(broken), ("b",)), test_module],
                                       archs=["sm_80"])
    assert len(failures) == 1 and isinstance(failures[0], nvrtc.CompileError)
    assert {r.kernel for r in rows} == set(test_module.kernels)


@needs_nvrtc
def test_options_are_the_cuda_backends():
    from convnet.backend import cuda
    assert cuda.NVRTC_OPTIONS is nvrtc.NVRTC_OPTIONS
    options = nvrtc.compile_options("sm_90")
    assert options[:len(nvrtc.NVRTC_OPTIONS)] == list(nvrtc.NVRTC_OPTIONS)
    assert "--gpu-architecture=sm_90" in options and nvrtc.PTXAS_VERBOSE in options


@needs_nvrtc
def test_version_and_archs():
    assert nvrtc.version() >= (12, 0)
    assert {"sm_80", "sm_90"} <= set(nvrtc.supported_archs())


# --------------------------------------------------------------------------- without NVRTC

def test_parse_ptxas_log():
    log = """\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_Z6stagedILi64EEvPf' for 'sm_80'
ptxas info    : Function properties for _Z6stagedILi64EEvPf
ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 10 registers, used 1 barriers, 256 bytes smem, 360 bytes cmem[0]
ptxas info    : Compile time = 1.0 ms
ptxas info    : Compiling entry function 'must_spill' for 'sm_80'
ptxas info    : Function properties for must_spill
ptxas         .     488 bytes stack frame, 572 bytes spill stores, 570 bytes spill loads
ptxas info    : Used 32 registers, used 1 barriers, 488 bytes cumulative stack size, 364 bytes cmem[0]
ptxas info    : Function properties for _Z6helperv
ptxas         .     16 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
"""
    found = nvrtc.parse_ptxas_log(log)
    assert found["_Z6stagedILi64EEvPf"] == dict(registers=10, shared_bytes=256, stack_bytes=0,
                                                spill_stores=0, spill_loads=0)
    assert found["must_spill"] == dict(registers=32, shared_bytes=0, stack_bytes=488,
                                       spill_stores=572, spill_loads=570)
    assert found["_Z6helperv"] == dict(stack_bytes=16, spill_stores=0, spill_loads=0)


def test_normalize_arch():
    assert nvrtc.normalize_arch("sm_80") == nvrtc.normalize_arch("80") == "sm_80"
    assert nvrtc.normalize_arch(90) == nvrtc.normalize_arch("SM90") == "sm_90"
    assert nvrtc.normalize_arch("sm_90a") == "sm_90a"
    with pytest.raises(ValueError):
        nvrtc.normalize_arch("ampere")


def test_missing_bindings_say_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "cuda.bindings.nvrtc", None)  # makes the import fail
    monkeypatch.setitem(sys.modules, "cuda.bindings", None)
    with pytest.raises(nvrtc.NVRTCUnavailable, match=r'pip install -e "\.\[test\]"'):
        nvrtc.version()
    with pytest.raises(nvrtc.NVRTCUnavailable, match="cuda-bindings"):
        nvrtc.compile_report([], archs=["sm_80"])


# `__global__ void name(` or `__global__ void __launch_bounds__(...) name(` (one level of
# parentheses inside the bounds), with or without `extern "C"` or a template before it.
_GLOBAL = re.compile(r"__global__\s+void\s+(?:__launch_bounds__\s*\((?:[^()]|\([^()]*\))*\)\s*)?"
                     r"(\w+)\s*\(")


def _kernel_files() -> dict[str, list[str]]:
    """``{file name: [kernel names]}`` of every kernels/*.cu that defines a __global__."""
    found = {}
    for path in sorted(kernels_dir().glob("*.cu")):
        names = _GLOBAL.findall(path.read_text(encoding="utf-8"))
        if names:
            found[path.name] = names
    return found


def test_every_kernel_file_is_listed():
    """A kernels/*.cu with a __global__ that KERNEL_MODULES lacks would escape the compile
    check and `convnet kernels`; so would a kernel its module does not export."""
    files = _kernel_files()
    assert "relu.cu" in files and files["relu.cu"] == ["relu_forward", "relu_backward"]
    listed = {Path(m.source).name: m for m in KERNEL_MODULES}
    assert len(listed) == len(KERNEL_MODULES), "a kernel file is listed twice"
    missing = sorted(set(files) - set(listed))
    assert not missing, f"kernel files not in convnet.ops.KERNEL_MODULES: {missing}"
    for name, kernels in files.items():
        exported = {k.partition("<")[0] for k in listed[name].kernels}
        absent = [k for k in kernels if k not in exported]
        assert not absent, f"{name}: kernels its KernelModule does not export: {absent}"
    assert kernel_modules() == list(KERNEL_MODULES)


def test_module_paths_exist():
    from convnet.toolchain.kernel_source import source_path
    for module in MODULES:
        assert Path(source_path(module.source)).is_file()
