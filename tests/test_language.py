"""One language on both sides (issue 10, item 7).

* Every kernel file — the library's (tests/test_compile.py) and the tests' own,
  tests/kernels/*.cu, including those broken on purpose at run time — compiles with
  NVRTC, so nothing g++ accepts and NVRTC rejects can hide in them; an error names
  the real file and line.
* The constructs g++ accepts and NVRTC rejects fail this check at their line (the
  emulator's build is not made to reject them; this check is the gate).
* The valid CUDA the emulator used to reject runs on emu (tests/kernels/language.cu).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from convnet.toolchain import nvrtc
from conftest import needs_nvrtc, require_device
from convnet.toolchain.launch import KernelModule, Launch


KERNELS = Path(__file__).parent / "kernels"
# Template kernels of tests/kernels and the instantiations their tests launch.
TEMPLATES = {
    "sgemm_tiled.cu": ("sgemm_tiled<128, 128, 8, 8, 8>", "sgemm_tiled<128, 128, 32, 16, 8>"),
    "perf_loops.cu": ("perf_shared<1024>",),
}
_EXTERN_C = re.compile(r'extern\s+"C"\s+__global__\s+void\s+'
                       r'(?:__launch_bounds__\s*\((?:[^()]|\([^()]*\))*\)\s*)?(\w+)\s*\(')
_TEMPLATE_KERNEL = re.compile(r"template\s*<[^>]*>\s*__global__\s+void\s+"
                              r"(?:__launch_bounds__\s*\((?:[^()]|\([^()]*\))*\)\s*)?(\w+)\s*\(")
TEST_FILES = sorted(KERNELS.glob("*.cu"))


def module_of(path: Path) -> KernelModule:
    text = path.read_text()
    names = tuple(_EXTERN_C.findall(text)) + TEMPLATES.get(path.name, ())
    return KernelModule(str(path), names)


def test_every_template_kernel_has_instantiations():
    for path in TEST_FILES:
        for name in _TEMPLATE_KERNEL.findall(path.read_text()):
            assert any(k.startswith(name + "<") for k in TEMPLATES.get(path.name, ())), \
                f"{path.name}: template kernel {name} has no instantiation in TEMPLATES"


@needs_nvrtc
def test_every_test_kernel_compiles_with_nvrtc():
    modules = [module_of(p) for p in TEST_FILES]
    assert len(modules) >= 6
    rows, failures = nvrtc.compile_all(modules, archs=("sm_90",))
    assert not failures, "\n\n".join(str(f) for f in failures)
    assert {r.kernel for r in rows} >= {"lang_syncwarp", "bounded_128", "deadlock"}


# What g++ (with the emulator's header) accepts and NVRTC rejects: each fails the
# NVRTC check at its own line. memcpy is not here: NVRTC accepts it as a built-in.
REJECTED = {
    "std::min": ("x[0] = std::min(x[0], 1.0f);", 'namespace "std" has no member "min"'),
    "std::numeric_limits": ("x[0] = std::numeric_limits<float>::max();", "numeric_limits"),
    "M_PI": ("x[0] = M_PI;", '"M_PI" is undefined'),
    "INFINITY": ("x[0] = INFINITY;", '"INFINITY" is undefined'),
    "throw": ("if (x[0] < 0.f) throw 1;", "exception handling"),
    "thread_local": ("thread_local int k = 0; x[0] = k;", "thread_local"),
    "VLA": ("int n = (int)x[0]; float a[n]; a[0] = 1.f; x[0] = a[0];", "constant value"),
    "__shared__ initializer": ("__shared__ float s = 1.0f; x[0] = s;", "initializer not allowed"),
    "atomicMax on float": ("atomicMax(x, 1.0f);", "atomicMax"),
}


@needs_nvrtc
@pytest.mark.parametrize("construct", list(REJECTED))
def test_gxx_only_constructs_fail_at_their_line(construct, tmp_path):
    body, message = REJECTED[construct]
    source = tmp_path / "gxx_only.cu"
    source.write_text('// accepted by g++, not by NVRTC\nextern "C" __global__ void k(float* x)\n'
                      "{\n    " + body + "\n}\n")
    with pytest.raises(nvrtc.CompileError) as info:
        nvrtc.compile_module(KernelModule(str(source), ("k",)), "sm_90")
    assert any(f"{source.resolve().as_posix()}(4)" in line and message in line
               for line in info.value.errors), info.value.errors


# --------------------------------------------------------------------------- on emu

LANGUAGE = KernelModule(str(KERNELS / "language.cu"),
                        ("lang_syncwarp", "lang_activemask", "lang_atomic_dec", "lang_vectors"))


def test_valid_cuda_runs_on_emu():
    emu = require_device("emu")
    out = np.zeros(64, np.int32)
    emu.launch(Launch(LANGUAGE, "lang_syncwarp", 1, 64, (out,)))
    np.testing.assert_array_equal(out, 2 * (np.arange(64) ^ 1) + 1)  # swapped; both aligned
    mask = np.zeros(48, np.uint32)
    emu.launch(Launch(LANGUAGE, "lang_activemask", 1, 48, (mask,)))
    np.testing.assert_array_equal(mask, [0xFFFFFFFF] * 32 + [0xFFFF] * 16)
    counter = np.array([2], np.uint32)        # 2 -> 1 -> 0 -> 7 (wraps to limit) -> 6 -> 5
    emu.launch(Launch(LANGUAGE, "lang_atomic_dec", 1, 5, (counter, np.uint32(7))))
    assert counter[0] == 5
    s = np.arange(128, dtype=np.int16).reshape(64, 2)
    u = np.ones((64, 4), np.uint16)
    sums = np.zeros(64, np.int64)
    emu.launch(Launch(LANGUAGE, "lang_vectors", 1, 64, (s, u, sums)))
    np.testing.assert_array_equal(sums, 4 * np.arange(64) + 57)
