"""Shared fixtures: the devices a test runs on.

``device`` runs a test on ``cpu``, ``emu`` and ``cuda:0``; ``kernel_device`` on the
two that run kernels (``emu``, ``cuda:0``). A device this machine cannot run is
skipped with the reason (no GPU, no CuPy, the emulator not built), never failed.
``require_device(name)`` does the same for a test that names its device itself.
``needs_nvrtc`` marks a test that needs NVRTC without a GPU (the test extras bring it);
``require_perf_tools()`` skips without NVRTC or nvdisasm; ``source_line`` and
``kernel_error`` serve the tests of deliberately broken kernels under tests/kernels/.
"""
from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

# A test session started with SIGINT ignored (`pytest &` in a non-interactive shell) would
# hand the ignore on to every subprocess, and the tests that press Ctrl-C on one (the
# loader, the emulator, convnet train) would see nothing happen: give SIGINT its
# KeyboardInterrupt back, as an interactive shell would.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

try:
    import cuda.bindings.nvrtc  # noqa: F401  (in the test extras, so present in CI)
    HAVE_NVRTC = True
except ImportError:
    HAVE_NVRTC = False

needs_nvrtc = pytest.mark.skipif(not HAVE_NVRTC, reason='NVRTC is missing: cuda-bindings is '
                                 'not installed (pip install -e ".[test]")')

ALL_DEVICES = ("cpu", "emu", "cuda:0")
KERNEL_DEVICES = ("emu", "cuda:0")


def require_device(name: str):
    """The device ``name``, or skip the calling test saying why it is unavailable."""
    from convnet import DeviceError, get_device
    try:
        if name == "emu":
            from convnet.backend import emu
            if not emu.available():
                pytest.skip("the emu device is unavailable here (convnet._emu did not load)")
        elif name.startswith("cuda"):
            from convnet.backend import cuda
            index = int(name.partition(":")[2] or 0)
            if cuda.device_count() <= index:
                pytest.skip(f"{name} is unavailable: this machine has "
                            f"{cuda.device_count()} usable CUDA device(s)")
        return get_device(name)
    except (DeviceError, ImportError) as exc:
        pytest.skip(f"{name} is unavailable: {exc}")


@pytest.fixture(params=ALL_DEVICES)
def device(request):
    return require_device(request.param)


@pytest.fixture(params=KERNEL_DEVICES)
def kernel_device(request):
    return require_device(request.param)


def run_clean_under_asan(script: str, timeout: int = 300) -> None:
    """Run the Python ``script`` in a subprocess with AddressSanitizer preloaded (for
    ``emu.debug(check="address")``): it must exit 0 and print CLEAN; an ASan report
    fails the test with the report."""
    require_device("emu")
    from convnet.backend import emu
    try:
        argv, env = emu.sanitized_command([sys.executable, "-c", script])
    except Exception as exc:  # no libasan on this machine
        pytest.skip(f"AddressSanitizer is unavailable: {exc}")
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0 and "CLEAN" in result.stdout, result.stdout + result.stderr


def require_perf_tools() -> None:
    """Skip the calling test unless NVRTC and nvdisasm (the performance model's static
    figures) are installed."""
    from convnet.perf import sass
    from convnet.toolchain import nvrtc
    try:
        nvrtc.version()
        sass.nvdisasm_path()
    except (nvrtc.NVRTCUnavailable, sass.DisassemblerUnavailable) as exc:
        pytest.skip(f"NVRTC or nvdisasm unavailable: {exc}")


def source_line(module, marker: str) -> str:
    """'file.cu:N' of the first line of ``module``'s source carrying ``marker``."""
    path = Path(module.source)
    for number, text in enumerate(path.read_text().splitlines(), start=1):
        if marker in text:
            return f"{path.name}:{number}"
    raise AssertionError(f"{marker!r} is not in {path}")


def kernel_error(device, module, name, args, grid=1, block=64, shared_bytes=0, **options) -> str:
    """The message of the KernelError that launching ``name`` under
    ``emu.debug(**options)`` must raise."""
    from convnet.backend import emu
    from convnet.toolchain.launch import Launch
    with emu.debug(**options), pytest.raises(emu.KernelError) as info:
        device.launch(Launch(module, name, grid=grid, block=block, shared_bytes=shared_bytes,
                             args=args))
    return str(info.value)


def forbid_launches(monkeypatch, device, why: str) -> None:
    """Make every kernel launch on ``device`` fail the test with ``why``. Patched on the
    device's class: undoing an instance patch would leave a bound method on the shared
    device object, hiding later class-level patches."""
    def fail(self, launch):
        raise AssertionError(why)
    monkeypatch.setattr(type(device), "launch", fail)
