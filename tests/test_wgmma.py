"""wgmma on emu (issue 12): tests/kernels/sm_90a/wgmma_tile.cu multiplies a 64 x K tile by an
N x K tile through kernels/wgmma.cuh (operands in shared memory, K-major without
swizzle, the products chained over several k steps). On emu (csrc/emu/emu_wgmma.h,
emu_async_proxy.h) the result must be the PTX ISA's layouts and the sequential FP32
model of emu_mma.h bit for bit, for TF32 and BF16, N = 64, 96, 128 and padded or packed
core-matrix strides; every rule the hardware relies on and does not check must be a
fault here (no wgmma.fence, no fence.proxy.async after cp.async, threads ending with a
product in flight, a stage or the accumulators written in flight, a swizzled or
misplaced descriptor, a block that is not whole warpgroups), and reading the
accumulators before the wait gives the old values (a wrong result, as on a GPU); the
race/init/align checks pass on the correct kernel, and the module compiles with NVRTC for
sm_90a. The layout checks run on cuda:0 too where there is one (an sm_90 GPU)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from convnet.backend import emu
from convnet.precision import round_operand
from convnet.toolchain.launch import KernelModule, Launch
from conftest import kernel_error, needs_nvrtc

pytestmark = pytest.mark.skipif(not emu.available(), reason="emu runtime not built")

HERE = Path(__file__).parent / "kernels" / "sm_90a"
NAMES = tuple(f"wgmma_{p}_n{n}" for p in ("tf32", "bf16") for n in (64, 96, 128))
TILE = KernelModule(str(HERE / "wgmma_tile.cu"), NAMES, feature_arch="sm_90a")


@pytest.fixture(scope="module")
def device():
    return emu.EmuDevice()


def operands(prec, n, steps, seed):
    rng = np.random.default_rng(seed)
    k = steps * (8 if prec == "tf32" else 16)
    a = round_operand(rng.standard_normal((64, k)).astype(np.float32), prec)
    b = round_operand(rng.standard_normal((n, k)).astype(np.float32), prec)
    return a, b


def model(a, b):
    """D = A B^T with FP32 sums in ascending k, one rounding an addition (the emulator's
    documented model; products of TF32/BF16 values are exact in FP32)."""
    d = np.zeros((a.shape[0], b.shape[0]), np.float32)
    for k in range(a.shape[1]):
        d = (d + np.outer(a[:, k], b[:, k]).astype(np.float32)).astype(np.float32)
    return d


def as_bits(x, prec):
    return x if prec == "tf32" else (x.view(np.uint32) >> np.uint32(16)).astype(np.uint16)


def run(device, prec, n, a, b, lbo=128, mode=0, block=128, **options):
    steps = a.shape[1] // (8 if prec == "tf32" else 16)
    sbo = 2 * steps * lbo
    d = device.asarray(np.full((64, n), np.nan, np.float32))
    args = (device.asarray(as_bits(a, prec)), device.asarray(as_bits(b, prec)), d,
            np.int32(steps), np.int32(lbo), np.int32(mode))
    launch = Launch(TILE, f"wgmma_{prec}_n{n}", grid=1, block=block, shared_bytes=(64 + n) // 8 * sbo, args=args)
    with emu.debug(**options):
        device.launch(launch)
    return device.to_numpy(d)


@pytest.mark.parametrize("prec", ["tf32", "bf16"])
@pytest.mark.parametrize("n", [64, 96, 128])
def test_the_product_is_the_documented_model(kernel_device, prec, n):
    if kernel_device.kind == "cuda" and kernel_device.arch != TILE.base_arch:
        pytest.skip(f"wgmma needs an sm_90 GPU; {kernel_device.name} is {kernel_device.arch}")
    a, b = operands(prec, n, steps=3, seed=n)
    np.testing.assert_array_equal(run(kernel_device, prec, n, a, b), model(a, b))


@pytest.mark.parametrize("prec", ["tf32", "bf16"])
def test_padded_core_matrix_strides(device, prec):
    # LBO 144: the k chunks of a row on different banks (what the conv kernels use)
    a, b = operands(prec, 64, steps=2, seed=7)
    np.testing.assert_array_equal(run(device, prec, 64, a, b, lbo=144), model(a, b))


def test_tf32_reads_only_the_top_19_bits(device):
    a, b = operands("tf32", 64, steps=1, seed=3)
    noisy = (a.view(np.uint32) | np.uint32(0x1FFF)).view(np.float32)  # low 13 bits set
    np.testing.assert_array_equal(run(device, "tf32", 64, noisy, b), model(a, b))


def test_layout_mistakes_change_the_result(device):
    a, b = operands("bf16", 64, steps=1, seed=5)
    good = run(device, "bf16", 64, a, b)
    swapped = run(device, "bf16", 64, a[:, ::-1].copy(), b)
    assert not np.array_equal(good, swapped)


def test_reading_the_accumulators_before_the_wait_sees_old_values(device):
    a, b = operands("tf32", 64, steps=1, seed=2)
    got = run(device, "tf32", 64, a, b, mode=8)
    want = model(a, b)
    # each thread's first accumulator kept its value from before the product: NaN
    assert np.isnan(got).sum() == 128 and np.array_equal(np.isnan(got), np.isnan(got) & ~np.isnan(want))


FAULTS = {
    1: "without a wgmma.fence",
    2: "without a fence.proxy.async",
    3: "in flight",
    4: "changed before the wgmma.wait_group",
    5: "accumulators of the wgmma.mma_async",
    6: "swizzle mode",
    7: "not in the block's dynamic shared memory",
}


@pytest.mark.parametrize("mode", sorted(FAULTS))
def test_each_broken_rule_is_a_fault(device, mode):
    a, b = operands("tf32", 64, steps=2, seed=1)
    steps, lbo = 2, 128
    args = (device.asarray(a), device.asarray(b), device.asarray(np.zeros((64, 64), np.float32)),
            np.int32(steps), np.int32(lbo), np.int32(mode))
    msg = kernel_error(device, TILE, "wgmma_tf32_n64", args, block=128, shared_bytes=16 * 2 * steps * lbo)
    assert FAULTS[mode] in msg


def test_a_block_of_part_of_a_warpgroup_is_a_fault(device):
    a, b = operands("tf32", 64, steps=1, seed=1)
    args = (device.asarray(a), device.asarray(b), device.asarray(np.zeros((64, 64), np.float32)),
            np.int32(1), np.int32(128), np.int32(0))
    msg = kernel_error(device, TILE, "wgmma_tf32_n64", args, block=64, shared_bytes=16 * 2 * 128)
    assert "4 whole warps" in msg


@pytest.mark.parametrize("check", ["race", "init", "align"])
def test_the_correct_kernel_passes_the_checks(device, check):
    a, b = operands("bf16", 96, steps=2, seed=9)
    np.testing.assert_array_equal(run(device, "bf16", 96, a, b, lbo=144, check=check), model(a, b))


def test_operands_copied_by_other_threads_need_a_barrier(device):
    # two k steps: the chunks a warp's share of the reads covers were copied by other warps
    a, b = operands("tf32", 64, steps=2, seed=1)
    args = (device.asarray(a), device.asarray(b), device.asarray(np.zeros((64, 64), np.float32)),
            np.int32(2), np.int32(128), np.int32(9))
    msg = kernel_error(device, TILE, "wgmma_tf32_n64", args, block=128, shared_bytes=16 * 4 * 128, check="race")
    assert "race" in msg


@needs_nvrtc
def test_compiles_for_sm_90a_only():
    from convnet.toolchain import nvrtc
    rows = nvrtc.compile_module(TILE, "sm_90")
    assert {r.arch for r in rows} == {"sm_90a"} and all(r.spill_stores == 0 for r in rows)
