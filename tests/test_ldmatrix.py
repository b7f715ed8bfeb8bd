"""ldmatrix on emu (issue 12): tests/kernels/ldmatrix_layout.cu loads 8 x 8 matrices of
16-bit elements through kernels/mma.cuh's cn_ldmatrix. On emu (csrc/emu/emu_ldmatrix.h)
every lane must receive exactly the elements the PTX ISA gives it, with and without
.trans, for x1, x2 and x4 and for any order of the row addresses; fragments loaded so
must multiply correctly through mma; a misaligned row, an address outside shared
memory, a partial warp, rows never written (check="init") and rows another warp writes
without a barrier (check="race") are diagnosed; the module compiles with NVRTC. The
layouts are checked on cuda:0 too where there is one (the same model, bit for bit: the
emulator and the GPU must agree)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from convnet.backend import emu
from convnet.precision import round_operand
from convnet.toolchain.launch import KernelModule, Launch
from conftest import kernel_error, needs_nvrtc

pytestmark = pytest.mark.skipif(not emu.available(), reason="emu runtime not built")

HERE = Path(__file__).parent / "kernels"
DUMPS = tuple(f"ldmatrix_x{n}{t}" for n in (1, 2, 4) for t in ("", "_trans"))
LDSM = KernelModule(str(HERE / "ldmatrix_layout.cu"),
                    DUMPS + ("ldmatrix_unwritten", "ldmatrix_global", "ldmatrix_racy", "ldmatrix_mma"))


@pytest.fixture(scope="module")
def device():
    return emu.EmuDevice()


def model(rows_of_lane, src, n, trans):
    """What each lane receives: the PTX ISA's layouts, written out independently of the
    emulator. Matrix i's row r is the 16 bytes at the address lane 8i + r gives."""
    out = np.zeros((32, 4), np.uint32)
    for i in range(n):
        mat = np.stack([src[rows_of_lane[8 * i + r]] for r in range(8)])  # (8 rows, 8 elements)
        if trans:
            mat = mat.T
        for lane in range(32):
            g, t = divmod(lane, 4)
            out[lane, i] = np.uint32(mat[g, 2 * t]) | (np.uint32(mat[g, 2 * t + 1]) << np.uint32(16))
    return out


def dump(device, name, rows, src, shift=None, **options):
    shift = np.zeros(32, np.int32) if shift is None else shift
    args = [device.asarray(a) for a in (src.reshape(-1), rows, shift, np.zeros((32, 4), np.uint32))]
    with emu.debug(**options):
        device.launch(Launch(LDSM, name, grid=1, block=32, args=tuple(args)))
    return device.to_numpy(args[-1])


@pytest.mark.parametrize("name", DUMPS)
@pytest.mark.parametrize("seed", range(2))
def test_each_lane_receives_the_documented_elements(kernel_device, name, seed):
    rng = np.random.default_rng(seed)
    src = rng.integers(0, 1 << 16, (32, 8), dtype=np.uint16)
    rows = rng.permutation(32).astype(np.int32)  # any row order: the addresses decide
    n, trans = int(name[len("ldmatrix_x")]), name.endswith("_trans")
    got = dump(kernel_device, name, rows, src)
    np.testing.assert_array_equal(got[:, :n], model(rows, src, n, trans)[:, :n])


def test_transposed_and_plain_differ(device):
    src = np.arange(32 * 8, dtype=np.uint16).reshape(32, 8)
    rows = np.arange(32, dtype=np.int32)
    assert not np.array_equal(dump(device, "ldmatrix_x4", rows, src), dump(device, "ldmatrix_x4_trans", rows, src))


def test_fragments_from_ldmatrix_multiply_correctly(device):
    rng = np.random.default_rng(4)
    a = round_operand(rng.standard_normal((16, 16)).astype(np.float32), "bf16")
    b = round_operand(rng.standard_normal((16, 8)).astype(np.float32), "bf16")
    bits = lambda x: (x.view(np.uint32) >> np.uint32(16)).astype(np.uint16)
    d = np.full((16, 8), np.nan, np.float32)
    device.launch(Launch(LDSM, "ldmatrix_mma", grid=1, block=32, args=(bits(a), bits(b), d)))
    want = np.zeros((16, 8), np.float32)
    for k in range(16):  # the mma's model: exact products, FP32 sums in k order
        want = (want + np.outer(a[:, k], b[k, :]).astype(np.float32)).astype(np.float32)
    np.testing.assert_array_equal(d, want)


def test_every_check_mode_is_clean_and_identical(device):
    rng = np.random.default_rng(9)
    src = rng.integers(0, 1 << 16, (32, 8), dtype=np.uint16)
    rows = rng.permutation(32).astype(np.int32)
    want = dump(device, "ldmatrix_x4_trans", rows, src)
    for options in (dict(check="race"), dict(check="init"), dict(check="align"), dict(check="bounds"),
                    dict(schedule="reverse"), dict(schedule="random", seed=2)):
        np.testing.assert_array_equal(dump(device, "ldmatrix_x4_trans", rows, src, **options), want)


def test_a_misaligned_row_is_diagnosed(device):
    src = np.zeros((32, 8), np.uint16)
    rows = np.arange(32, dtype=np.int32)
    shift = np.zeros(32, np.int32)
    shift[5] = 4  # lane 5's row 4 bytes off
    message = kernel_error(device, LDSM, "ldmatrix_x1", (src.reshape(-1), rows, shift, np.zeros((32, 4), np.uint32)),
                           block=32)
    assert "misaligned" in message and "lane 5" in message, message
    shift[5] = 0
    shift[20] = 4  # lanes past 8 give no address to x1: ignored
    dump(device, "ldmatrix_x1", rows, src, shift)


def test_an_address_outside_shared_memory_is_diagnosed(device):
    src = np.zeros(64, np.uint16)
    message = kernel_error(device, LDSM, "ldmatrix_global", (src, np.zeros(32, np.uint32)), block=32)
    assert "not in the block's shared memory" in message, message


def test_a_partial_warp_is_diagnosed(device):
    src = np.zeros((32, 8), np.uint16)
    message = kernel_error(device, LDSM, "ldmatrix_x4", (src.reshape(-1), np.arange(32, dtype=np.int32),
                                                         np.zeros(32, np.int32), np.zeros((32, 4), np.uint32)),
                           block=16)
    assert "kernel ldmatrix_x4" in message and "mma.cuh" in message, message


def test_unwritten_rows_are_uninitialised_reads(device):
    message = kernel_error(device, LDSM, "ldmatrix_unwritten", (np.zeros(32, np.uint32),), block=32, check="init")
    assert "uninitialised" in message or "uninitialized" in message, message


def test_rows_another_warp_writes_without_a_barrier_are_a_race(device):
    src = np.zeros((32, 8), np.uint16)
    message = kernel_error(device, LDSM, "ldmatrix_racy", (src.reshape(-1), np.zeros(32, np.uint32)), block=64,
                           check="race")
    assert "race" in message, message


@needs_nvrtc
def test_ldmatrix_kernels_compile_for_sm80_and_sm90():
    from convnet.toolchain import nvrtc
    rows = nvrtc.compile_report([LDSM], archs=("sm_80", "sm_90"))
    assert {(r.kernel, r.arch) for r in rows} == {(k, a) for k in LDSM.kernels for a in ("sm_80", "sm_90")}
    assert not [r for r in rows if r.spills]
