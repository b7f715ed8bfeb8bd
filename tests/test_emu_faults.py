"""Faults and hangs become diagnostics on emu (issue 10, item 5), and the valid CUDA
that used to crash or hang the emulator works (items 5 and 7).

* A SIGSEGV (null or wild pointer, unmapped memory, stack overflow), SIGBUS or SIGFPE
  inside a kernel is a KernelError naming the kernel, the block, the thread and the
  line; the process goes on and runs a correct launch afterwards
  (tests/kernels/fault_signals.cu, lines marked `// FAULT:`).
* A block that makes no progress (a thread that spins for ever, a wait for a later
  block's flag) ends with the watchdog's KernelError naming the block, the thread and
  where it spins; Ctrl-C stops a spinning launch (tests/kernels/fault_hangs.cu).
* Spins across the warps of one block (valid on sm_70+) finish; `__device__`
  variables are one instance shared by every worker (a threadfence reduction with a
  `__device__` ticket counter is right with several workers); a file-scope
  `extern __shared__` array works (tests/kernels/fault_globals.cu).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from convnet.backend import emu
from convnet.toolchain.launch import KernelModule, Launch
from conftest import kernel_error, source_line

pytestmark = pytest.mark.skipif(not emu.available(), reason="emu runtime not built")

HERE = Path(__file__).parent / "kernels"
SIGNALS = KernelModule(str(HERE / "fault_signals.cu"), (
    "write_through", "read_through", "divide", "remainder_of", "strided_read", "recurse", "twice"))
HANGS = KernelModule(str(HERE / "fault_hangs.cu"), (
    "wait_forever", "wait_for_next_block", "cross_warp_volatile", "cross_warp_atomic", "cross_warp_global",
    "lane_waits_for_lane"))
GLOBALS = KernelModule(str(HERE / "fault_globals.cu"), ("threadfence_sum", "bump", "read_bumps",
                                                        "file_scope_shared"))


@pytest.fixture(scope="module")
def device():
    return emu.EmuDevice()






def still_works(device, threads=2):
    """The process survived: a correct launch after the fault gives the right answer."""
    x = np.arange(300, dtype=np.float32)
    y = np.zeros_like(x)
    with emu.debug(threads=threads):
        device.launch(Launch(SIGNALS, "twice", grid=5, block=64, args=(x, y, np.int32(300))))
    np.testing.assert_array_equal(y, 2 * x)


# ---------------------------------------------------------------- signals in kernels

@pytest.mark.parametrize("threads", [1, 2])
def test_null_pointer_write(device, threads):
    y = np.zeros(256, np.float32)
    message = kernel_error(device, SIGNALS, "write_through", (y, np.uint64(0), np.int32(5), np.int32(2)), grid=4,
                     threads=threads)
    assert message.startswith("kernel write_through, block (2,0,0), thread (5,0,0): SIGSEGV"), message
    assert "address 0x0: a null pointer dereference" in message
    assert message.endswith(f"at {source_line(SIGNALS, 'FAULT:write')}"), message
    still_works(device, threads)


def test_wild_pointer_write(device):
    y = np.zeros(256, np.float32)
    message = kernel_error(device, SIGNALS, "write_through", (y, np.uint64(0xDEAD_0000_0000_0000), np.int32(17),
                                                        np.int32(3)), grid=4)
    assert message.startswith("kernel write_through, block (3,0,0), thread (17,0,0): SIGSEGV"), message
    assert "wild pointer" in message and source_line(SIGNALS, "FAULT:write") in message
    still_works(device)


def test_read_of_unmapped_memory(device):
    x = np.ones(64, np.float32)
    y = np.zeros(64, np.float32)
    message = kernel_error(device, SIGNALS, "read_through", (x, y, np.uint64(0x8000), np.int32(40)))
    assert message.startswith("kernel read_through, block (0,0,0), thread (40,0,0): SIGSEGV"), message
    assert "at address 0x8000: no memory is mapped there" in message
    assert source_line(SIGNALS, "FAULT:read") in message
    still_works(device)


@pytest.mark.parametrize("kernel, marker", [("divide", "FAULT:divide"), ("remainder_of", "FAULT:remainder")])
def test_integer_division_by_zero(device, kernel, marker):
    a = np.arange(128, dtype=np.int32)
    d = np.ones(128, np.int32)
    d[64 + 9] = 0
    q = np.zeros(128, np.int32)
    message = kernel_error(device, SIGNALS, kernel, (a, d, q), grid=2, threads=2)
    assert message.startswith(f"kernel {kernel}, block (1,0,0), thread (9,0,0): SIGFPE: integer division by zero"), \
        message
    assert message.endswith(f"at {source_line(SIGNALS, marker)}"), message
    still_works(device)


def test_bus_error_past_the_end_of_a_mapped_file(device, tmp_path):
    path = tmp_path / "mapped.bin"
    path.write_bytes(b"\0" * 3 * 4096)
    x = np.memmap(path, dtype=np.float32, mode="r+", shape=(3 * 1024,))
    os.truncate(path, 4096)  # pages 1 and 2 of the mapping have no file behind them now
    y = np.zeros(3, np.float32)
    try:
        message = kernel_error(device, SIGNALS, "strided_read", (x, y, np.int32(1024)), block=3)
    finally:
        del x
    assert message.startswith("kernel strided_read, block (0,0,0), thread (1,0,0): SIGBUS"), message
    assert "past the end of a mapped file" in message and source_line(SIGNALS, "FAULT:bus") in message
    still_works(device)


def test_stack_overflow(device):
    out = np.zeros(64, np.int32)
    message = kernel_error(device, SIGNALS, "recurse", (out, np.int32(1000)))
    assert message.startswith("kernel recurse, block (0,0,0), thread (7,0,0): SIGSEGV: stack overflow"), message
    assert "fault_signals.cu:" in message
    still_works(device)
    device.launch(Launch(SIGNALS, "recurse", grid=1, block=64, args=(out, np.int32(20))))
    assert out[7] == 21


def test_faults_under_check_modes(device):
    d = np.ones(64, np.int32)
    d[3] = 0
    for options in (dict(check="bounds"), dict(check="race"), dict(schedule="random", seed=1)):
        message = kernel_error(device, SIGNALS, "divide", (np.arange(64, dtype=np.int32), d, np.zeros(64, np.int32)),
                         **options)
        assert message.startswith("kernel divide, block (0,0,0), thread (3,0,0): SIGFPE"), (options, message)
        assert source_line(SIGNALS, "FAULT:divide") in message, (options, message)
    still_works(device)


OUTSIDE = textwrap.dedent("""
    import ctypes, signal, sys
    import numpy as np
    from convnet.backend import emu
    from convnet.toolchain.launch import KernelModule, Launch
    if sys.argv[1] == "faulthandler":
        import faulthandler
        faulthandler.enable()
    before = signal.getsignal(signal.SIGINT)
    m = KernelModule(sys.argv[2], ("twice",))
    x = np.arange(8, dtype=np.float32); y = np.zeros(8, np.float32)
    emu.EmuDevice().launch(Launch(m, "twice", grid=1, block=8, args=(x, y, np.int32(8))))
    assert (y == 2 * x).all() and signal.getsignal(signal.SIGINT) is before
    print("launched", flush=True)
    ctypes.string_at(0)   # a segfault outside any kernel: not the emulator's
    print("survived")
""")


@pytest.mark.parametrize("mode", ["default", "faulthandler"])
def test_segfault_outside_a_kernel_keeps_its_previous_handling(mode):
    done = subprocess.run([sys.executable, "-c", OUTSIDE, mode, str(HERE / "fault_signals.cu")],
                          capture_output=True, text=True, timeout=120)
    assert "launched" in done.stdout and "survived" not in done.stdout, (done.stdout, done.stderr)
    assert done.returncode == -11, (done.returncode, done.stderr)
    if mode == "faulthandler":
        assert "Fatal Python error: Segmentation fault" in done.stderr, done.stderr


# ---------------------------------------------------------------- the watchdog and Ctrl-C

def test_watchdog_names_the_spinning_thread(device):
    flag = np.zeros(1, np.int32)
    out = np.zeros(64, np.int32)
    start = time.perf_counter()
    message = kernel_error(device, HANGS, "wait_forever", (flag, out, np.int32(3)), watchdog=0.3)
    assert time.perf_counter() - start < 10
    assert message.startswith("kernel wait_forever, block (0,0,0), thread (3,0,0): no progress for"), message
    assert f"runs at {source_line(HANGS, 'SPIN:forever')}" in message
    assert "63 have exited" in message
    still_works(device)


def test_watchdog_on_a_wait_for_a_later_block(device):
    flags = np.zeros(4, np.int32)
    message = kernel_error(device, HANGS, "wait_for_next_block", (flags,), grid=4, threads=1, watchdog=0.3)
    assert message.startswith("kernel wait_for_next_block, block (0,0,0), thread (0,0,0): no progress"), message
    assert source_line(HANGS, "SPIN:next-block") in message
    assert "CUDA does not promise that the blocks of a grid run at the same time" in message
    flags[:] = 0
    with emu.debug(schedule="reverse", threads=1, watchdog=5):  # last block first: every wait is short
        device.launch(Launch(HANGS, "wait_for_next_block", grid=4, block=64, args=(flags,)))
    np.testing.assert_array_equal(flags, 1)
    still_works(device)


def test_watchdog_setting(monkeypatch):
    monkeypatch.setenv("CONVNET_EMU_WATCHDOG", "0.25")
    assert emu.watchdog_seconds() == 0.25
    with emu.debug(watchdog=0):
        assert emu.watchdog_seconds() == 0
    monkeypatch.delenv("CONVNET_EMU_WATCHDOG")
    assert emu.watchdog_seconds() == emu.WATCHDOG_SECONDS
    with pytest.raises(ValueError):
        with emu.debug(watchdog=-1):
            pass
    monkeypatch.setenv("CONVNET_EMU_WATCHDOG", "soon")
    with pytest.raises(emu.DeviceError):
        emu.watchdog_seconds()


CTRL_C = textwrap.dedent("""
    import os, signal, threading, time
    import numpy as np
    from convnet.backend import emu
    from convnet.toolchain.launch import KernelModule, Launch
    import sys
    m = KernelModule(sys.argv[1], ("wait_forever",))
    ok = KernelModule(sys.argv[2], ("twice",))
    d = emu.EmuDevice()
    threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
    start = time.perf_counter()
    try:
        with emu.debug(watchdog=0, threads=int(sys.argv[3])):
            d.launch(Launch(m, "wait_forever", grid=2, block=64,
                            args=(np.zeros(1, np.int32), np.zeros(64, np.int32), np.int32(0))))
    except KeyboardInterrupt:
        print(f"interrupted after {time.perf_counter() - start:.2f} s", flush=True)
    x = np.arange(8, dtype=np.float32); y = np.zeros(8, np.float32)
    d.launch(Launch(ok, "twice", grid=1, block=8, args=(x, y, np.int32(8))))
    print("then ok" if (y == 2 * x).all() else "then wrong")
""")


@pytest.mark.parametrize("threads", [1, 2])
def test_ctrl_c_stops_a_spinning_launch(threads):
    done = subprocess.run([sys.executable, "-c", CTRL_C, str(HERE / "fault_hangs.cu"), str(HERE / "fault_signals.cu"),
                           str(threads)], capture_output=True, text=True, timeout=120)
    m = re.search(r"interrupted after ([\d.]+) s", done.stdout)
    assert m and float(m[1]) < 5, (done.stdout, done.stderr)
    assert "then ok" in done.stdout, (done.stdout, done.stderr)


# ---------------------------------------------------------------- valid spins finish

@pytest.mark.parametrize("options", [dict(), dict(schedule="reverse"), dict(threads=2),
                                     dict(schedule="random", seed=5)], ids=["forward", "reverse", "2-workers",
                                                                            "random"])
def test_spins_across_warps_of_one_block_finish(device, options):
    with emu.debug(watchdog=10, **options):
        y = np.zeros(64, np.float32)
        device.launch(Launch(HANGS, "cross_warp_volatile", grid=3, block=64, args=(y,)))
        np.testing.assert_array_equal(y[:32], 42.0)
        y = np.zeros(96, np.float32)
        device.launch(Launch(HANGS, "cross_warp_atomic", grid=2, block=96, args=(y,)))
        np.testing.assert_array_equal(y[:95], 7.0 + np.arange(95))
        flag = np.zeros(1, np.int32)
        out = np.zeros(64, np.int32)
        device.launch(Launch(HANGS, "cross_warp_global", grid=1, block=64, args=(flag, out)))
        np.testing.assert_array_equal(out[:32], 5)
        out = np.zeros(1, np.int32)
        device.launch(Launch(HANGS, "lane_waits_for_lane", grid=1, block=32, args=(out,)))
        assert out[0] == 31


# ---------------------------------------------------------------- __device__ variables, file-scope extern __shared__

@pytest.mark.parametrize("threads", [1, 2, 4])
def test_threadfence_reduction_with_a_device_counter(device, threads):
    rng = np.random.default_rng(threads)
    for _ in range(3):  # the last block resets the counter for the next launch
        x = rng.integers(-8, 8, 64 * 48).astype(np.float32)
        partial = np.zeros(48, np.float32)
        out = np.full(1, np.nan, np.float32)
        with emu.debug(threads=threads):
            device.launch(Launch(GLOBALS, "threadfence_sum", grid=48, block=64, args=(x, partial, out)))
        assert out[0] == x.sum()


def test_device_variables_are_one_instance_that_lives_between_launches(device):
    with emu.debug(threads=2):
        device.launch(Launch(GLOBALS, "read_bumps", grid=1, block=1, args=(np.zeros(1, np.int32), np.int32(1))))
        first = np.zeros(16, np.int32)
        device.launch(Launch(GLOBALS, "bump", grid=16, block=32, args=(first,)))
        second = np.zeros(16, np.int32)
        device.launch(Launch(GLOBALS, "bump", grid=16, block=32, args=(second,)))
        total = np.zeros(1, np.int32)
        device.launch(Launch(GLOBALS, "read_bumps", grid=1, block=1, args=(total, np.int32(1))))
    assert sorted(first) == list(range(16)) and sorted(second) == list(range(16, 32))
    assert total[0] == 32


def test_threadfence_reduction_is_race_free(device):
    x = np.ones(64 * 8, np.float32)
    out = np.zeros(1, np.float32)
    with emu.debug(check="race"):
        device.launch(Launch(GLOBALS, "threadfence_sum", grid=8, block=64, args=(x, np.zeros(8, np.float32), out)))
    assert out[0] == 512


@pytest.mark.parametrize("threads", [1, 2])
def test_file_scope_extern_shared(device, threads):
    x = np.arange(64 * 6, dtype=np.float32).reshape(6, 64)
    y = np.zeros_like(x)
    with emu.debug(threads=threads):
        device.launch(Launch(GLOBALS, "file_scope_shared", grid=6, block=64, shared_bytes=64 * 4, args=(x, y)))
    np.testing.assert_array_equal(y, x.sum(axis=1, keepdims=True) - x[:, ::-1])
    with emu.debug(check="init"):
        device.launch(Launch(GLOBALS, "file_scope_shared", grid=2, block=64, shared_bytes=64 * 4, args=(x, y)))


def test_translate_scopes():
    text = textwrap.dedent("""
        namespace inner { extern __shared__ float a[]; }
        extern __shared__ __align__(16) unsigned char raw[];
        __device__ unsigned int count = 0;
        static __device__ volatile int flag;
        __device__ const int table[2] = {1, 2};
        __device__ __forceinline__ float f(float x) { return x; }
        __device__ __align__(8) float (g)(float x);
        extern "C" __global__ void k(float* y) { extern __shared__ float s[]; y[0] = s[0]; }
    """)
    out = emu.translate(text, ("k",))
    assert "namespace inner { static float* a = nullptr; }" in out
    assert "static unsigned char* raw = nullptr;" in out
    assert "float* s = emu_dynamic_shared<float>();" in out
    assert "reinterpret_cast<void**>(&inner::a), reinterpret_cast<void**>(&raw)" in out
    assert '__device__ __attribute__((section("emu_device"))) unsigned int count' in out
    assert 'static __device__ __attribute__((section("emu_device"))) volatile int flag' in out
    assert out.count('section("emu_device")') == 2  # not the const table, not the functions
