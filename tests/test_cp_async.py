"""cp.async with deferred completion on emu (issue 12, part 2):
tests/kernels/cp_async_pipeline.cu runs a three-stage copy pipeline through
kernels/cp_async.cuh. On emu (csrc/emu/emu_cp_async.h) a copy lands in shared memory
only at the wait that covers its group, so the twin without the wait reads old data
(a wrong sum) and is caught by check="init" (uninitialised shared memory) and
check="race"; the correct twin gives the exact sum under every check mode; zero-fill
copies read nothing; a misaligned 16-byte copy is a fault; NVRTC compiles the PTX for
sm_80 and sm_90 and the plain-copy fallback for sm_75."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from convnet.backend import emu
from convnet.toolchain.launch import KernelModule, Launch
from conftest import kernel_error, needs_nvrtc, source_line

pytestmark = pytest.mark.skipif(not emu.available(), reason="emu runtime not built")

HERE = Path(__file__).parent / "kernels"
PIPE = KernelModule(str(HERE / "cp_async_pipeline.cu"), (
    "staged_sum4", "staged_sum16", "staged_sum4_no_wait", "misaligned_copy"))
CHECKS = (dict(), dict(check="race"), dict(check="init"), dict(check="align"), dict(check="bounds"),
          dict(schedule="reverse"), dict(fill_shared=True), dict(schedule="random", seed=2))


@pytest.fixture(scope="module")
def device():
    return emu.EmuDevice()


def expected(x, tiles, n):
    """out[t] = sum over tiles i of element (t + 1) % 64 of tile i (zero at or past n)."""
    padded = np.zeros(tiles * 64, np.float32)
    padded[:n] = x[:n]
    cols = padded.reshape(tiles, 64)[:, (np.arange(64) + 1) % 64]
    out = np.zeros(64, np.float32)
    for i in range(tiles):  # the kernel's order
        out = (out + cols[i]).astype(np.float32)
    return out


def launch(device, name, x, tiles, n, **options):
    out = np.full(64, np.nan, np.float32)
    with emu.debug(**options):
        device.launch(Launch(PIPE, name, grid=1, block=64, args=(x, out, np.int32(tiles), np.int32(n))))
    return out


@pytest.mark.parametrize("name", ["staged_sum4", "staged_sum16"])
@pytest.mark.parametrize("tiles,n", [(1, 64), (2, 100), (5, 5 * 64), (7, 401)])
def test_pipeline_gives_the_exact_sum(device, name, tiles, n):
    if name == "staged_sum16":
        n = -(-n // 4) * 4  # whole 16-byte copies are valid or zero-filled
    x = np.random.default_rng(tiles).standard_normal(tiles * 64).astype(np.float32)
    np.testing.assert_array_equal(launch(device, name, x, tiles, n), expected(x, tiles, n))


@pytest.mark.parametrize("options", CHECKS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "plain")
def test_correct_pipeline_is_clean_under_every_check(device, options):
    x = np.random.default_rng(0).standard_normal(4 * 64).astype(np.float32)
    out = launch(device, "staged_sum4", x, 4, 230, **options)
    np.testing.assert_array_equal(out, expected(x, 4, 230))


def test_missing_wait_reads_old_data(device):
    x = np.random.default_rng(1).standard_normal(4 * 64).astype(np.float32) + 10.0
    out = launch(device, "staged_sum4_no_wait", x, 4, 256)
    assert not np.array_equal(out, expected(x, 4, 256))
    out = launch(device, "staged_sum4_no_wait", x, 4, 256, fill_shared=True)
    assert np.isnan(out).all()  # the first tile is still the NaN fill when it is read


def test_missing_wait_is_caught_by_the_init_check(device):
    x = np.ones(4 * 64, np.float32)
    out = np.zeros(64, np.float32)
    message = kernel_error(device, PIPE, "staged_sum4_no_wait", (x, out, np.int32(4), np.int32(256)),
                           check="init")
    assert "read of uninitialised shared memory" in message, message
    assert source_line(PIPE, "WAIT:read") in message, message


def test_missing_wait_is_caught_by_the_race_check(device):
    x = np.ones(4 * 64, np.float32)
    out = np.zeros(64, np.float32)
    message = kernel_error(device, PIPE, "staged_sum4_no_wait", (x, out, np.int32(4), np.int32(256)),
                           check="race")
    assert "data race on shared array stage" in message, message


def test_misaligned_copy_is_a_fault(device):
    x = np.arange(8, dtype=np.float32)
    message = kernel_error(device, PIPE, "misaligned_copy", (x, np.zeros(4, np.float32)))
    assert "misaligned address: cp.async of 16 bytes" in message, message


@needs_nvrtc
def test_cp_async_kernels_compile_for_sm80_and_sm90_and_fall_back_below():
    from convnet.toolchain import nvrtc
    archs = ("sm_75", "sm_80", "sm_90")  # sm_75: plain copies (no cp.async before sm_80)
    rows = nvrtc.compile_report([PIPE], archs=archs)
    assert {(r.kernel, r.arch) for r in rows} == {(k, a) for k in PIPE.kernels for a in archs}
    assert not [r for r in rows if r.spills]
