"""The CUDA-on-CPU runtime: CUDA semantics, diagnostics, debug modes, argument checks."""
from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from convnet.backend import emu
from convnet.toolchain.launch import KernelModule, Launch, LaunchError

pytestmark = pytest.mark.skipif(not emu.available(), reason="emu runtime not built")

HERE = Path(__file__).parent / "kernels"
BROKEN = KernelModule(str(HERE / "broken.cu"), (
    "missing_syncthreads", "deadlock", "shared_out_of_bounds", "early_exit", "divergent_barriers",
    "shuffle_outside_mask", "global_out_of_bounds", "dynamic_shared_out_of_bounds"))
FEATURES = KernelModule(str(HERE / "features.cu"), (
    "coordinates", "warp_ops", "barrier_reductions", "histogram", "block_sum",
    "read_uninitialised_shared", "scalar_kinds", "busy"))


@pytest.fixture(scope="module")
def device():
    return emu.EmuDevice()


def fault_line(marker: str) -> str:
    """'broken.cu:N' for the line carrying `// FAULT:marker`."""
    for number, line in enumerate((HERE / "broken.cu").read_text().splitlines(), start=1):
        if f"FAULT:{marker}" in line:
            return f"broken.cu:{number}"
    raise AssertionError(marker)


# ---------------------------------------------------------------- CUDA semantics

def test_coordinates_of_every_thread(device):
    grid, block = (3, 2, 2), (4, 3, 2)
    out = np.full((12, 24, 6), -1, np.int32)
    device.launch(Launch(FEATURES, "coordinates", grid=grid, block=block, args=(out,)))
    bz, by, bx, tz, ty, tx = np.meshgrid(range(2), range(2), range(3), range(2), range(3), range(4),
                                         indexing="ij")
    expected = np.stack([tx, ty, tz, bx, by, bz], axis=-1).reshape(12, 24, 6)
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("threads", [32, 64, 96])
def test_warp_operations_match_numpy(device, threads):
    rng = np.random.default_rng(threads)
    x = rng.random(threads, dtype=np.float32)
    out = np.zeros((8, threads), np.float32)
    device.launch(Launch(FEATURES, "warp_ops", grid=1, block=threads, args=(x, out, np.int32(threads))))
    w = x.reshape(-1, 32)
    lane = np.arange(32)
    np.testing.assert_array_equal(out[0], np.repeat(w[:, 3], 32))
    np.testing.assert_array_equal(out[1], np.where(lane >= 2, w[:, np.maximum(lane - 2, 0)], w).ravel())
    np.testing.assert_array_equal(out[2], np.where(lane + 5 < 32, w[:, np.minimum(lane + 5, 31)], w).ravel())
    np.testing.assert_array_equal(out[3], w[:, lane ^ 1].ravel())
    np.testing.assert_array_equal(out[4], w[:, (lane & ~7) + 1].ravel())
    np.testing.assert_array_equal(out[5], np.repeat((w > 0.5).sum(1), 32))
    np.testing.assert_array_equal(out[6], np.repeat((w > 0.9).any(1), 32))
    np.testing.assert_array_equal(out[7], np.ones(threads))


def test_barrier_reductions(device):
    flags = np.array([[1] * 64, [0] * 64, [1] * 63 + [0]], np.int32)
    out = np.zeros((3, 3), np.int32)
    device.launch(Launch(FEATURES, "barrier_reductions", grid=3, block=64, args=(flags, out)))
    np.testing.assert_array_equal(out, [[64, 1, 1], [0, 0, 0], [63, 0, 1]])


def test_atomics_across_os_threads(device):
    rng = np.random.default_rng(0)
    values = rng.integers(0, 16, 100_000).astype(np.int32)
    bins = np.zeros(16, np.int32)
    total = np.zeros(1, np.float32)
    with emu.debug(threads=2):
        device.launch(Launch(FEATURES, "histogram", grid=64, block=128,
                             args=(values, np.int32(values.size), bins, total)))
    np.testing.assert_array_equal(bins, np.bincount(values, minlength=16))
    assert total[0] == values.size


@pytest.mark.parametrize("schedule", ["forward", "reverse"])
def test_dynamic_shared_reduction(device, schedule):
    x = np.random.default_rng(1).random(8 * 256, dtype=np.float32)
    out = np.zeros(8, np.float32)
    with emu.debug(schedule=schedule, fill_shared=True):
        device.launch(Launch(FEATURES, "block_sum", grid=8, block=256, args=(x, out), shared_bytes=256 * 4))
    np.testing.assert_allclose(out, x.reshape(8, 256).sum(1), rtol=1e-5)


def test_fill_shared_puts_nan_in_static_shared_memory(device):
    out = np.zeros(32, np.float32)
    with emu.debug(fill_shared=True):
        device.launch(Launch(FEATURES, "read_uninitialised_shared", grid=1, block=32,
                             args=(out, np.int32(1))))
    assert np.isnan(out).all()


_INTERRUPT_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    from convnet.backend import emu
    from convnet.toolchain.launch import KernelModule, Launch
    module = KernelModule(sys.argv[1], ("busy",))
    device = emu.EmuDevice()
    out = np.zeros(64 * 100_000, np.float32)
    launch = Launch(module, "busy", grid=100_000, block=64, args=(out, np.int32(2000)))
    device.launch(Launch(module, "busy", grid=1, block=64, args=(out, np.int32(1))))  # compiled
    print("started", flush=True)
    try:
        device.launch(launch)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
""")


def test_ctrl_c_stops_a_long_launch():
    import signal
    import time
    proc = subprocess.Popen([sys.executable, "-c", _INTERRUPT_SCRIPT, FEATURES.source],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "started"
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert "interrupted" in out, err


def test_switch_cost_is_measured():
    assert 0 < emu.switch_cost_ns(100_000) < 10_000


# ---------------------------------------------------------------- the broken kernels

def test_missing_syncthreads_changes_with_the_schedule(device):
    x = np.arange(128, dtype=np.float32)
    results = {}
    for schedule in ("forward", "reverse"):
        y = np.zeros_like(x)
        with emu.debug(schedule=schedule, fill_shared=True):
            device.launch(Launch(BROKEN, "missing_syncthreads", grid=2, block=64, args=(x, y)))
        results[schedule] = y
    assert not np.array_equal(results["forward"], results["reverse"], equal_nan=True)


def test_deadlock_is_diagnosed(device):
    with pytest.raises(emu.KernelError) as info:
        device.launch(Launch(BROKEN, "deadlock", grid=1, block=64, args=(np.zeros(64, np.float32),)))
    message = str(info.value)
    assert "deadlock" in message
    assert "thread (0,0,0)" in message and fault_line("deadlock-barrier") in message
    assert "thread (16,0,0)" in message and fault_line("deadlock-shuffle") in message


def test_shared_out_of_bounds_is_caught_by_the_bounds_check(device):
    with emu.debug(check="bounds"), pytest.raises(emu.KernelError) as info:
        device.launch(Launch(BROKEN, "shared_out_of_bounds", grid=1, block=64, args=(np.zeros(64, np.float32),)))
    message = str(info.value)
    assert "thread (63,0,0)" in message and fault_line("shared-oob") in message
    assert "index 64 out of bounds" in message


def test_early_exit_is_diagnosed(device):
    with pytest.raises(emu.KernelError) as info:
        device.launch(Launch(BROKEN, "early_exit", grid=1, block=64, args=(np.zeros(64, np.float32),)))
    message = str(info.value)
    assert "thread (5,0,0)" in message and "exited while 63 other threads" in message
    assert fault_line("early-exit") in message


def test_divergent_barriers_are_diagnosed(device):
    with pytest.raises(emu.KernelError) as info:
        device.launch(Launch(BROKEN, "divergent_barriers", grid=1, block=64, args=(np.zeros(64, np.float32),)))
    message = str(info.value)
    assert "different barriers" in message
    assert fault_line("divergent-a") in message and fault_line("divergent-b") in message
    assert "thread (0,0,0)" in message and "thread (32,0,0)" in message


def test_shuffle_from_outside_the_mask_is_diagnosed(device):
    with pytest.raises(emu.KernelError) as info:
        device.launch(Launch(BROKEN, "shuffle_outside_mask", grid=1, block=32, args=(np.zeros(32, np.float32),)))
    message = str(info.value)
    assert "reads lane 20, which is not in the mask" in message
    assert re.search(r"thread \(\d+,0,0\)", message) and fault_line("shuffle-mask") in message


def test_a_fault_leaves_the_runtime_usable(device):
    with pytest.raises(emu.KernelError):
        device.launch(Launch(BROKEN, "early_exit", grid=4, block=64, args=(np.zeros(64, np.float32),)))
    x = np.arange(128, dtype=np.float32)
    out = np.zeros(2, np.float32)
    device.launch(Launch(FEATURES, "block_sum", grid=2, block=64, args=(x, out), shared_bytes=256))
    np.testing.assert_allclose(out, x.reshape(2, 64).sum(1))


_ASAN_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    from convnet.backend import emu
    from convnet.toolchain.launch import KernelModule, Launch
    module = KernelModule(sys.argv[1], ("global_out_of_bounds", "dynamic_shared_out_of_bounds"))
    device = emu.EmuDevice()
    with emu.debug(check="address"):
        if sys.argv[2] == "global":
            y = np.zeros(20, np.float32)
            device.launch(Launch(module, "global_out_of_bounds", grid=1, block=64, args=(y, np.int32(20))))
        else:
            y = np.zeros(64, np.float32)
            device.launch(Launch(module, "dynamic_shared_out_of_bounds", grid=1, block=64,
                                 args=(y, np.int32(64)), shared_bytes=256))
    print("NO FAULT")
""")


@pytest.mark.parametrize("case, marker, thread", [("global", "global-oob", "thread (20,0,0)"),
                                                   ("dynamic", "dynamic-oob", "thread (63,0,0)")])
def test_address_sanitizer_build_catches_out_of_bounds(case, marker, thread):
    argv, env = emu.sanitized_command([sys.executable, "-c", _ASAN_SCRIPT, BROKEN.source, case])
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0, result.stdout + result.stderr
    assert "NO FAULT" not in result.stdout
    assert "AddressSanitizer: heap-buffer-overflow" in result.stderr
    assert fault_line(marker) in result.stderr
    assert thread in result.stderr


def test_address_check_without_preload_is_refused(device):
    if emu.asan_loaded():
        pytest.skip("AddressSanitizer is loaded in this process")
    with emu.debug(check="address"), pytest.raises(Exception, match="sanitized_command"):
        device.launch(Launch(BROKEN, "early_exit", grid=1, block=64, args=(np.zeros(64, np.float32),)))


# ---------------------------------------------------------------- arguments and compile errors

def scalar_args(**change):
    args = dict(out=np.zeros(1, np.float32), inp=np.ones(1, np.float32), i=np.int32(2), u=np.uint32(3),
                f=np.float32(0.5), big=np.uint64(1 << 41), d=np.float64(0.25))
    args.update(change)
    return tuple(args.values())


def test_every_scalar_kind_reaches_the_kernel(device):
    args = scalar_args()
    device.launch(Launch(FEATURES, "scalar_kinds", grid=1, block=1, args=args))
    assert args[0][0] == pytest.approx(1 + 2 + 3 + 0.5 + 2 + 0.25)


@pytest.mark.parametrize("change, message", [
    (dict(i=np.int64(2)), "argument 2 is int64, the kernel's parameter is int32"),
    (dict(f=np.float64(0.5)), "argument 4 is float64, the kernel's parameter is float32"),
    (dict(i=2), "argument 2 is int; pass arrays or NumPy scalars"),
    (dict(out=np.zeros(1, np.float64)), "argument 0 has dtype float64, the kernel takes float32"),
    (dict(inp=np.ones((2, 2), np.float32)[:, 0]), "argument 1 is not C-contiguous"),
    (dict(out=np.broadcast_to(np.zeros(1, np.float32), (1,))), "argument 0 is read-only"),
    (dict(out=np.float32(1)), "argument 0 is"),
])
def test_bad_arguments_are_named(device, change, message):
    with pytest.raises((TypeError, ValueError, emu.DeviceError, LaunchError), match=re.escape(message)):
        device.launch(Launch(FEATURES, "scalar_kinds", grid=1, block=1, args=scalar_args(**change)))


def test_wrong_argument_count(device):
    with pytest.raises(TypeError, match="takes 7 arguments"):
        device.launch(Launch(FEATURES, "scalar_kinds", grid=1, block=1, args=scalar_args()[:3]))


def test_compile_error_names_file_and_line(device, tmp_path):
    source = tmp_path / "bad.cu"
    source.write_text('#include "helper.cuh"\nextern "C" __global__ void k(float* y) {\n  y[0] = undefined_name;\n}\n')
    (tmp_path / "helper.cuh").write_text("#pragma once\n__device__ float twice(float x) { return 2 * x; }\n")
    module = KernelModule(str(source), ("k",))
    with pytest.raises(emu.EmuCompileError, match=r"bad\.cu:3"):
        device.launch(Launch(module, "k", grid=1, block=1, args=(np.zeros(1, np.float32),)))


def test_edited_header_is_recompiled(device, tmp_path, monkeypatch):
    monkeypatch.setenv("CONVNET_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "value.cuh").write_text("#define VALUE 1.0f\n")
    source = tmp_path / "k.cu"
    source.write_text('#include "value.cuh"\nextern "C" __global__ void k(float* y) { y[0] = VALUE; }\n')
    module = KernelModule(str(source), ("k",))
    y = np.zeros(1, np.float32)
    device.launch(Launch(module, "k", grid=1, block=1, args=(y,)))
    assert y[0] == 1.0
    (tmp_path / "value.cuh").write_text("#define VALUE 2.0f\n")
    device.launch(Launch(module, "k", grid=1, block=1, args=(y,)))
    assert y[0] == 2.0


def test_a_cuda_array_is_refused(device):
    class FakeCupy:
        __cuda_array_interface__ = {"shape": (1,), "typestr": "<f4", "data": (0, False), "version": 3}
    with pytest.raises(emu.DeviceError, match="CUDA array"):
        device.launch(Launch(FEATURES, "scalar_kinds", grid=1, block=1, args=scalar_args(out=FakeCupy())))
