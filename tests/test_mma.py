"""Tensor-core mma.sync on emu (issue 12, part 1): tests/kernels/mma_layout.cu loads
one tile's fragments in the PTX ISA's layouts and multiplies it through
kernels/mma.cuh. On emu (csrc/emu/emu_mma.h) the result must equal, bit for bit, a
NumPy model of the documented arithmetic (operands rounded as cvt.rna.tf32.f32 /
cvt.rn.bf16x2 / cvt.rn.f16x2 round, exact products, FP32 sums from C in k order); the
twins with a lane-index mistake must give a wrong result, as on a GPU; a partial warp
is diagnosed; the module compiles with NVRTC for sm_80 and sm_90."""
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
MMA = KernelModule(str(HERE / "mma_layout.cu"), (
    "mma_tf32_tile", "mma_tf32_tile_swapped", "mma_tf32_tile_unrounded", "mma_bf16_tile",
    "mma_bf16_tile_swapped", "mma_f16_tile", "convert"))


@pytest.fixture(scope="module")
def device():
    return emu.EmuDevice()


def mma_model(a, b, c):
    """D = C + A B with A, B already rounded (exact in float32): products exact, the
    sum sequential from C over k ascending, every addition rounded to FP32."""
    d = c.astype(np.float32).copy()
    for k in range(a.shape[1]):
        d = (d + np.outer(a[:, k], b[k, :]).astype(np.float32)).astype(np.float32)
    return d


def operands(seed, k):
    rng = np.random.default_rng(seed)
    # wide exponents and full mantissas: every rounding and every sum bit matters
    a = (rng.standard_normal((16, k)) * 2.0 ** rng.integers(-6, 7, (16, k))).astype(np.float32)
    b = (rng.standard_normal((k, 8)) * 2.0 ** rng.integers(-6, 7, (k, 8))).astype(np.float32)
    c = rng.standard_normal((16, 8)).astype(np.float32)
    return a, b, c


def run(device, name, a, b, c, **options):
    d = np.full((16, 8), np.nan, np.float32)
    with emu.debug(**options):
        device.launch(Launch(MMA, name, grid=1, block=32, args=(a, b, c, d)))
    return d


def f16_round(x):
    return x.astype(np.float16).astype(np.float32)  # NumPy: round to nearest even


@pytest.mark.parametrize("seed", range(3))
def test_tf32_tile_matches_the_model_bit_for_bit(device, seed):
    a, b, c = operands(seed, 8)
    d = run(device, "mma_tf32_tile", a, b, c)
    want = mma_model(round_operand(a, "tf32"), round_operand(b, "tf32"), c)
    np.testing.assert_array_equal(d, want)
    # and the rounding is real: the unrounded product differs
    assert not np.array_equal(d, mma_model(a, b, c))


def test_unrounded_tf32_operands_are_truncated(device):
    a, b, c = operands(7, 8)
    d = run(device, "mma_tf32_tile_unrounded", a, b, c)
    trunc = lambda x: (x.view(np.uint32) & np.uint32(0xFFFFE000)).view(np.float32)
    np.testing.assert_array_equal(d, mma_model(trunc(a), trunc(b), c))


@pytest.mark.parametrize("seed", range(3))
def test_bf16_and_f16_tiles_match_the_model_bit_for_bit(device, seed):
    a, b, c = operands(seed, 16)
    d = run(device, "mma_bf16_tile", a, b, c)
    np.testing.assert_array_equal(d, mma_model(round_operand(a, "bf16"), round_operand(b, "bf16"), c))
    a16, b16 = a * np.float32(2.0 ** -4), b * np.float32(2.0 ** -4)  # inside FP16's range
    d = run(device, "mma_f16_tile", a16, b16, c)
    np.testing.assert_array_equal(d, mma_model(f16_round(a16), f16_round(b16), c))


@pytest.mark.parametrize("name,k,prec", [("mma_tf32_tile_swapped", 8, "tf32"),
                                         ("mma_bf16_tile_swapped", 16, "bf16")])
def test_a_fragment_layout_mistake_gives_a_wrong_result(device, name, k, prec):
    a, b, c = operands(11, k)
    d = run(device, name, a, b, c)
    want = mma_model(round_operand(a, prec), round_operand(b, prec), c)
    wrong = np.abs(d - want) > 1e-3 * (np.abs(want) + 1)
    assert wrong.mean() > 0.5, "the swapped registers went unnoticed"


def test_mma_under_every_check_mode_is_clean_and_identical(device):
    a, b, c = operands(3, 8)
    want = run(device, "mma_tf32_tile", a, b, c)
    for options in (dict(check="race"), dict(check="init"), dict(check="align"), dict(check="bounds"),
                    dict(schedule="reverse"), dict(schedule="random", seed=5)):
        np.testing.assert_array_equal(run(device, "mma_tf32_tile", a, b, c, **options), want)


def test_a_partial_warp_is_diagnosed(device):
    a, b, c = operands(0, 8)
    message = kernel_error(device, MMA, "mma_tf32_tile", (a, b, c, np.zeros((16, 8), np.float32)),
                           block=16)
    assert "kernel mma_tf32_tile" in message and "mma.cuh" in message, message


def test_conversions_match_their_definitions(device):
    rng = np.random.default_rng(5)
    x = np.concatenate([
        rng.standard_normal(200).astype(np.float32),
        np.float32(1.0) + np.float32(2.0 ** -11) * np.arange(-8, 9, dtype=np.float32),  # tf32 ties
        np.float32(1.0) + np.float32(2.0 ** -8) * np.arange(-8, 9, dtype=np.float32),   # bf16 ties
        np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 3.4e38, -3.4e38, 1e-40, 65519.0, 65520.0,
                  1e-6, 6e-8, 2.0 ** -25], np.float32)])
    n = x.size
    tf32, bf16, f16 = (np.zeros(n, np.uint32) for _ in range(3))
    device.launch(Launch(MMA, "convert", grid=1, block=64, args=(x, tf32, bf16, f16, np.int32(n))))
    np.testing.assert_array_equal(tf32, round_operand(x, "tf32").view(np.uint32))
    lo = round_operand(x, "bf16").view(np.uint32) >> np.uint32(16)
    hi = round_operand(-x, "bf16").view(np.uint32) >> np.uint32(16)
    np.testing.assert_array_equal(bf16, (hi << np.uint32(16)) | lo)
    with np.errstate(over="ignore"):  # NumPy rounds to nearest even, overflowing to inf
        lo16 = x.astype(np.float16).view(np.uint16).astype(np.uint32)
        hi16 = (-x).astype(np.float16).view(np.uint16).astype(np.uint32)
    lo16[np.isnan(x)] = 0x7E00
    hi16[np.isnan(x)] = 0x7E00
    np.testing.assert_array_equal(f16, (hi16 << np.uint32(16)) | lo16)
    # ties away from zero (tf32) and to even (bf16), by hand
    assert round_operand(np.float32(1 + 2.0 ** -11), "tf32") == np.float32(1 + 2.0 ** -10)
    assert round_operand(np.float32(1 + 2.0 ** -8), "bf16") == np.float32(1.0)


@needs_nvrtc
def test_mma_kernels_compile_for_sm80_and_sm90():
    from convnet.toolchain import nvrtc
    rows = nvrtc.compile_report([MMA], archs=("sm_80", "sm_90"))
    assert {(r.kernel, r.arch) for r in rows} == {(k, a) for k in MMA.kernels for a in ("sm_80", "sm_90")}
    assert not [r for r in rows if r.spills]
