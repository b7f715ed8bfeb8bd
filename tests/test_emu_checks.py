"""The emulator's race, initialisation and alignment checks and its random schedule
(issue 10, items 1-3): kernels broken on purpose (tests/kernels/race_shared.cu,
race_global.cu, uninit.cu, misaligned.cu; each fault line marked `// RACE:`,
`// INIT:` or `// ALIGN:`) are each caught with a KernelError naming the kernel, the
block, the thread(s) and the line, and their correct twins run clean."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from convnet.backend import emu
from convnet.toolchain.launch import KernelModule, Launch
from conftest import kernel_error, source_line

pytestmark = pytest.mark.skipif(not emu.available(), reason="emu runtime not built")

HERE = Path(__file__).parent / "kernels"
RACE_SHARED = KernelModule(str(HERE / "race_shared.cu"), (
    "counter_plain", "counter_atomic", "claim_plain", "claim_atomic", "torn_record", "tree_missing_barrier",
    "tree_reduction", "warp_exchange", "warp_exchange_unsynced"))
RACE_GLOBAL = KernelModule(str(HERE / "race_global.cu"), (
    "last_block_wins", "total_plain", "total_atomic", "overlapping_writes", "threadfence_reduction"))
UNINIT = KernelModule(str(HERE / "uninit.cu"), (
    "accumulate_uncleared", "accumulate_cleared", "max_partial_tile", "max_full_tile", "neighbour_past_end"))
MISALIGNED = KernelModule(str(HERE / "misaligned.cu"), (
    "float4_load_off_by_one", "float4_store_off_by_two", "int64_load_off_by_four", "float2_shared_odd",
    "double_shared_off_by_four", "vectors_aligned"))


@pytest.fixture(scope="module")
def device():
    return emu.EmuDevice()




def caught(device, module, name, args, grid=1, block=64, shared_bytes=0, **options) -> str:
    message = kernel_error(device, module, name, args, grid, block, shared_bytes, **options)
    assert message.startswith(f"kernel {name}, block ("), message
    assert re.search(r"thread \(\d+,\d+,\d+\)", message), message
    return message


def clean(device, module, name, args, grid=1, block=64, shared_bytes=0, **options):
    with emu.debug(**options):
        device.launch(Launch(module, name, grid=grid, block=block, shared_bytes=shared_bytes, args=args))


X64 = np.arange(64, dtype=np.float32)


# ---------------------------------------------------------------- races in shared memory

def test_plain_counter_is_a_race_and_loses_updates_in_random_order(device):
    message = caught(device, RACE_SHARED, "counter_plain", (np.zeros(1, np.int32),), check="race")
    assert "data race on shared array count (in counter_plain), byte 0" in message
    assert message.count(source_line(RACE_SHARED, "RACE:counter")) == 2  # both accesses are on that line
    assert re.search(r"thread \(0,0,0\) at race_shared.cu:\d+ wrote it, and this thread reads it", message)
    out = np.zeros(1, np.int32)
    clean(device, RACE_SHARED, "counter_plain", (out,), schedule="random", seed=3)
    assert out[0] < 64  # lost updates
    clean(device, RACE_SHARED, "counter_plain", (out,))
    assert out[0] == 64  # the run-to-barrier order hides them


def test_atomic_counter_under_contention_is_clean(device):
    for options in (dict(check="race"), dict(schedule="random", seed=3), dict(check="race", schedule="random")):
        out = np.zeros(1, np.int32)
        clean(device, RACE_SHARED, "counter_atomic", (out,), **options)
        assert out[0] == 64


def test_unsynchronised_claim_is_a_race(device):
    message = caught(device, RACE_SHARED, "claim_plain", (np.zeros(64, np.int32),), check="race")
    assert "shared array owner (in claim_plain)" in message and source_line(RACE_SHARED, "RACE:claim") in message
    out = np.zeros(64, np.int32)
    clean(device, RACE_SHARED, "claim_atomic", (out,), check="race")
    assert out.sum() == 1


def test_torn_record_between_warps_is_a_race_and_tears_in_random_order(device):
    message = caught(device, RACE_SHARED, "torn_record", (np.zeros(1, np.int32), np.int32(20)), check="race")
    assert "shared array record (in torn_record)" in message
    assert source_line(RACE_SHARED, "RACE:torn-read") in message
    assert re.search(r"thread \(\d+,0,0\) at race_shared.cu:\d+ wrote it", message)
    torn = np.zeros(1, np.int32)
    clean(device, RACE_SHARED, "torn_record", (torn, np.int32(50)), schedule="random", seed=1)
    assert torn[0] > 0
    clean(device, RACE_SHARED, "torn_record", (torn, np.int32(50)))
    assert torn[0] == 0


def test_tree_reduction_missing_a_barrier(device):
    message = caught(device, RACE_SHARED, "tree_missing_barrier", (X64, np.zeros(1, np.float32)), check="race")
    assert "shared array s (in tree_missing_barrier)" in message
    assert source_line(RACE_SHARED, "RACE:tree") in message
    out = np.zeros(1, np.float32)
    clean(device, RACE_SHARED, "tree_reduction", (X64, out), check="race")
    assert out[0] == X64.sum()


def test_warp_synchronous_code_is_ordered_by_syncwarp_and_shuffles(device):
    out = np.zeros(1, np.float32)
    clean(device, RACE_SHARED, "warp_exchange", (X64, out), check="race")
    assert out[0] == X64.sum()
    message = caught(device, RACE_SHARED, "warp_exchange_unsynced", (X64, out), check="race")
    assert source_line(RACE_SHARED, "RACE:warp") in message and "__syncwarp" in message


# ---------------------------------------------------------------- races in global memory

def test_blocks_writing_one_word_race(device):
    message = caught(device, RACE_GLOBAL, "last_block_wins", (np.zeros(1, np.int32),), grid=4, check="race")
    assert "global memory, argument 0, byte 0" in message and "of block (" in message
    assert message.count(source_line(RACE_GLOBAL, "RACE:blocks-write")) == 2


def test_plain_total_across_blocks_races_atomic_total_does_not(device):
    x = np.arange(256, dtype=np.float32)
    message = caught(device, RACE_GLOBAL, "total_plain", (x, np.zeros(1, np.float32)), grid=4, check="race")
    assert "argument 1, byte 0" in message and source_line(RACE_GLOBAL, "RACE:total") in message
    total = np.zeros(1, np.float32)
    clean(device, RACE_GLOBAL, "total_atomic", (x, total), grid=4, check="race", schedule="random", seed=2)
    assert total[0] == x.sum()


def test_overlapping_writes_within_a_block(device):
    message = caught(device, RACE_GLOBAL, "overlapping_writes", (np.zeros(65, np.float32),), check="race")
    assert "argument 0, byte 4" in message and source_line(RACE_GLOBAL, "RACE:overlap") in message


def test_threadfence_reduction_is_clean(device):
    x = np.arange(256, dtype=np.float32)
    for options in (dict(check="race"), dict(schedule="random", seed=4)):
        out, count = np.zeros(1, np.float32), np.zeros(1, np.uint32)
        clean(device, RACE_GLOBAL, "threadfence_reduction", (x, np.zeros(4, np.float32), count, out), grid=4,
              **options)
        assert out[0] == x.sum() and count[0] == 0


# ---------------------------------------------------------------- uninitialised memory

def test_accumulating_into_an_uncleared_output(device):
    x = np.ones(256, np.float32)
    with emu.debug(check="init"):
        y = device.xp.empty(64, np.float32)
    message = caught(device, UNINIT, "accumulate_uncleared", (x, y, np.int32(64)), check="init")
    assert "global memory, argument 1, byte 0" in message and "uninitialised global memory" in message
    assert source_line(UNINIT, "INIT:accumulate") in message
    with emu.debug(check="init"):
        y = device.xp.empty(64, np.float32)
    clean(device, UNINIT, "accumulate_cleared", (x, y, np.int32(64)), check="init")
    assert (y == 4).all()
    # A host write counts as initialising: the same kernel is clean after y[...] = 0.
    with emu.debug(check="init"):
        y = device.xp.empty_like(y)
        y[...] = 0
    clean(device, UNINIT, "accumulate_uncleared", (x, y, np.int32(64)), check="init")
    assert (y == 4).all()


def test_fill_empty_makes_the_uncleared_output_wrong(device):
    x = np.ones(256, np.float32)
    with emu.debug(fill_empty=True):
        y = device.xp.empty(64, np.float32)
    assert (y.view(np.uint8) == 0x7F).all()
    clean(device, UNINIT, "accumulate_uncleared", (x, y, np.int32(64)))
    assert (y > 1e38).all()
    assert device.xp is np  # outside the scope: NumPy itself


def test_uninitialised_shared_memory_under_a_nan_neutral_max(device):
    out = np.zeros(1, np.float32)
    clean(device, UNINIT, "max_partial_tile", (X64, out, np.int32(40)), fill_shared=True)
    assert out[0] == 39  # the NaN fill is neutral for fmaxf: nothing shows
    message = caught(device, UNINIT, "max_partial_tile", (X64, out, np.int32(40)), check="init")
    assert "shared array tile (in max_partial_tile), byte 160" in message
    assert "uninitialised shared memory" in message and source_line(UNINIT, "INIT:max") in message
    clean(device, UNINIT, "max_full_tile", (X64, out, np.int32(40)), check="init")
    assert out[0] == 39


def test_dynamic_shared_memory_past_what_was_written(device):
    message = caught(device, UNINIT, "neighbour_past_end", (X64, np.zeros(64, np.float32)), shared_bytes=65 * 4,
                     check="init")
    assert "thread (63,0,0)" in message and "dynamic shared memory (extern __shared__), byte 256" in message
    assert source_line(UNINIT, "INIT:neighbour") in message


# ---------------------------------------------------------------- alignment

MISALIGNED_CASES = [
    ("float4_load_off_by_one", lambda: (X64, np.zeros(32, np.float32)), 0, "ALIGN:float4-load", "16-byte"),
    ("float4_store_off_by_two", lambda: (X64, np.zeros(200, np.float32)), 0, "ALIGN:float4-store", "16-byte"),
    ("int64_load_off_by_four", lambda: (np.zeros(80, np.int32), np.zeros(32, np.int64)), 0, "ALIGN:int64",
     "8-byte"),
    ("float2_shared_odd", lambda: (np.arange(80, dtype=np.float32), np.zeros(32, np.float32)), 0,
     "ALIGN:float2-shared", "8-byte"),
    ("double_shared_off_by_four", lambda: (np.zeros(32, np.float64),), 256, "ALIGN:double-shared", "8-byte"),
]


@pytest.mark.parametrize("check", ["align", "race", "bounds"])
@pytest.mark.parametrize("name, args, shared, marker, need", MISALIGNED_CASES, ids=[c[0] for c in MISALIGNED_CASES])
def test_misaligned_accesses_fault(device, check, name, args, shared, marker, need):
    message = caught(device, MISALIGNED, name, args(), block=32, shared_bytes=shared, check=check)
    assert "misaligned address" in message and f"needs {need} alignment" in message
    assert source_line(MISALIGNED, marker) in message


@pytest.mark.parametrize("check", ["align", "race", "bounds"])
def test_aligned_vectors_are_clean(device, check):
    x, y = np.arange(128, dtype=np.float32), np.zeros(128, np.float32)
    clean(device, MISALIGNED, "vectors_aligned", (x, y), block=32, check=check)
    assert y[4 * 5 + 2] == x[4 * 5 + 2]


# ---------------------------------------------------------------- options

def test_random_schedule_is_reproducible_per_seed(device):
    results = []
    for seed in (5, 5, 6):
        out = np.zeros(1, np.int32)
        clean(device, RACE_SHARED, "counter_plain", (out,), schedule="random", seed=seed)
        results.append(int(out[0]))
    assert results[0] == results[1]


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="check must be one of"):
        with emu.debug(check="races"):
            pass
    with pytest.raises(ValueError, match="fill_empty"):
        with emu.debug(fill_empty=300):
            pass


def test_profile_and_checks_do_not_mix(device):
    with emu.profile(), emu.debug(check="race"), pytest.raises(emu.DeviceError, match="cannot run under"):
        device.launch(Launch(RACE_SHARED, "counter_atomic", grid=1, block=64, args=(np.zeros(1, np.int32),)))
