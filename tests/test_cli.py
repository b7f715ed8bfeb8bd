"""The ``convnet`` command: ``doctor`` and ``kernels``."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

import convnet.ops
from convnet.app import cli
from convnet.toolchain.launch import KernelModule
from test_compile import SPILLING_KERNEL
from conftest import needs_nvrtc



def _run(*args, timeout=300):
    env = dict(os.environ, PYTHONIOENCODING="utf-8")
    return subprocess.run([sys.executable, "-m", "convnet", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def test_python_m_convnet_doctor():
    result = _run("doctor")
    assert result.returncode == 0, result.stderr
    assert "✓ Python: " in result.stdout and "✓ NumPy: " in result.stdout
    assert "CuPy" in result.stdout and "NVRTC" in result.stdout


def test_main_doctor(capsys):
    assert cli.main(["doctor"]) == 0
    assert "✓ Python" in capsys.readouterr().out


@pytest.mark.skipif(shutil.which("convnet") is None, reason="the console script is not installed")
def test_console_script():
    result = subprocess.run(["convnet", "doctor"], capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, PYTHONIOENCODING="utf-8"))
    assert result.returncode == 0, result.stderr


def test_no_subcommand_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main([])
    assert info.value.code == 2


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "doctor" in out and "kernels" in out


@needs_nvrtc
def test_python_m_convnet_kernels():
    result = _run("kernels")
    assert result.returncode == 0, result.stdout + result.stderr
    for module in convnet.ops.kernel_modules():
        for kernel in module.kernels:
            assert kernel in result.stdout
    assert "sm_80" in result.stdout and "sm_90" in result.stdout
    assert "SPILLS" not in result.stdout
    assert "0 spilling; 0 module build(s) failed" in result.stdout


@needs_nvrtc
def test_kernels_one_arch_one_module(capsys):
    modules = convnet.ops.kernel_modules()
    if not modules:
        pytest.skip("no kernel modules yet")
    first = str(modules[0].source)
    assert cli.main(["kernels", "--arch", "90", "--module", first]) == 0
    out = capsys.readouterr().out
    assert "sm_90" in out and "sm_80" not in out
    assert all(line.startswith((first, "module", "-", "1 module")) for line in out.splitlines() if line)


@needs_nvrtc
def test_kernels_bad_arguments(capsys):
    assert cli.main(["kernels", "--arch", "sm_10"]) == 2
    assert "cannot target sm_10" in capsys.readouterr().err
    assert cli.main(["kernels", "--arch", "volta"]) == 2
    assert cli.main(["kernels", "--module", "no_such_file.cu"]) == 2




@needs_nvrtc
def test_kernels_fails_on_spill_and_compile_error(tmp_path, monkeypatch, capsys):
    spill = tmp_path / "heavy.cu"
    spill.write_text(SPILLING_KERNEL.replace("must_spill", "heavy"))
    broken = tmp_path / "broken.cu"
    broken.write_text('extern "C" __global__ void b(float* x)\n{\n    x[0] = oops;\n}\n')
    ok = tmp_path / "fine.cu"
    ok.write_text('extern "C" __global__ void fine(float* x) { x[0] = 1.0f; }\n')

    monkeypatch.setattr(convnet.ops, "kernel_modules",
                        lambda: [KernelModule(str(ok), ("fine",))])
    assert cli.main(["kernels", "--arch", "sm_80"]) == 0
    capsys.readouterr()

    monkeypatch.setattr(convnet.ops, "kernel_modules",
                        lambda: [KernelModule(str(spill), ("heavy",))])
    assert cli.main(["kernels", "--arch", "sm_80"]) == 1
    out = capsys.readouterr().out
    assert "heavy" in out and "SPILLS" in out and "1 spilling" in out

    monkeypatch.setattr(convnet.ops, "kernel_modules",
                        lambda: [KernelModule(str(broken), ("b",)), KernelModule(str(ok), ("fine",))])
    assert cli.main(["kernels", "--arch", "sm_80"]) == 1
    captured = capsys.readouterr()
    assert f"{broken.resolve().as_posix()}(3)" in captured.err
    assert "fine" in captured.out and "1 module build(s) failed" in captured.out
