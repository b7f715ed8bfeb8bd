"""GPU arithmetic on the CPU (issue 10, item 6): the emulator's intrinsics against
known answers with sm_90's semantics (tests/kernels/arith_intrinsics.cu), FMA
contraction identical in every emu build, and subnormals flushed as the GPU build
(-ftz=true, forced by CuPy) flushes them (tests/kernels/arith_fp_mode.cu).

Exact operations (named rounding modes, conversions, integer intrinsics) are
compared bit for bit with answers computed here with exact rationals. The
approximate fast-math intrinsics are compared with the CUDA Math API's documented
error bounds and with the instruction sequence NVRTC emits (see emu_math.h)."""
from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from convnet.backend import emu
from convnet.toolchain.launch import KernelModule, Launch

pytestmark = pytest.mark.skipif(not emu.available(), reason="emu runtime not built")

HERE = Path(__file__).parent / "kernels"
INTRINSICS = KernelModule(str(HERE / "arith_intrinsics.cu"), (
    "arith_float_unary", "arith_float_binary", "arith_fma", "arith_f2i", "arith_i2f", "arith_int"))
FP_MODE = KernelModule(str(HERE / "arith_fp_mode.cu"), ("contract", "subnormal_ops"))
F32 = np.float32
FLT_MIN = float(np.finfo(np.float32).tiny)
FLT_MAX = float(np.finfo(np.float32).max)
INF = float("inf")


@pytest.fixture(scope="module")
def device():
    return emu.EmuDevice()


def run(device, module, name, n, *args):
    device.launch(Launch(module, name, grid=(n + 63) // 64, block=64, args=(*args, np.int32(n))))


# ---------------------------------------------------------------- exact answers

def f32_bits(x) -> int:
    return int(np.asarray(x, np.float32).view(np.uint32))


def ftz(x: float) -> float:
    return math.copysign(0.0, x) if x != 0 and abs(x) < FLT_MIN else x


def f32_value(bits: int) -> float:
    return float(np.uint32(bits).view(np.float32))


def round_f32(q: Fraction, mode: str) -> float:
    """The float32 that rounds the exact rational q in mode rn/rz/rd/ru, flushed (-ftz=true)."""
    if q == 0:
        return 0.0
    negative, a = q < 0, abs(q)
    top = 0x7F7FFFFF  # FLT_MAX
    b = top if a >= FLT_MAX else f32_bits(np.float32(float(a)))
    b = min(b, top)
    while b > 0 and Fraction(f32_value(b)) > a:
        b -= 1
    while b < top and Fraction(f32_value(b + 1)) <= a:
        b += 1
    down = b                                          # largest magnitude <= a
    up = down if Fraction(f32_value(down)) == a else down + 1  # 0x7f800000 is inf
    toward = {"rz": "down", "rd": "up" if negative else "down", "ru": "down" if negative else "up"}.get(mode)
    if toward == "down":
        bits = down
    elif toward == "up":
        bits = up
    elif up == 0x7F800000:                            # past FLT_MAX: inf from FLT_MAX + half an ulp
        bits = up if a >= Fraction(FLT_MAX) + Fraction(2) ** 103 else down
    else:
        dd, du = a - Fraction(f32_value(down)), Fraction(f32_value(up)) - a
        bits = down if dd < du else up if du < dd else (down if down % 2 == 0 else up)
    r = f32_value(bits)
    return ftz(-r if negative else r)


def same(got, want) -> bool:
    got, want = float(got), float(want)
    if math.isnan(want):
        return math.isnan(got)
    return f32_bits(got) == f32_bits(want)


def assert_bits(got, want, what):
    bad = [(i, g, w) for i, (g, w) in enumerate(zip(got, want)) if not same(g, w)]
    assert not bad, f"{what}: {len(bad)} wrong, first (index, emu, expected): {bad[:5]}"


def ulps(got: float, exact: float) -> float:
    """Distance of got from the exact value in float32 ulps of the exact value."""
    if math.isinf(exact) or math.isnan(exact):
        return 0.0 if got == exact or (math.isnan(got) and math.isnan(exact)) else INF
    e = max(math.frexp(abs(exact))[1] - 24, -149)
    return abs(got - exact) / 2.0 ** e


RNG = np.random.default_rng(10)
NORMALS = (RNG.standard_normal(200) * np.exp2(RNG.integers(-20, 20, 200))).astype(np.float32)
EDGES = np.array([0.0, -0.0, 1.0, -1.0, 0.5, 2.0, 3.0, 1e-40, -1e-40, FLT_MIN, FLT_MAX, -FLT_MAX,
                  INF, -INF, float("nan"), 2.5, -2.5, 3.5, 0.49999997, 1.5e9, 3e9, 5e9, -3e9, 1e19,
                  2e19, -1e19, 1e30, 16777217.0, 0.1], np.float32)


# ---------------------------------------------------------------- rounding modes, exact

def test_named_rounding_modes_are_exact(device):
    a = np.concatenate([NORMALS, EDGES, np.float32([1.0, 1.0, 1e-30, FLT_MAX, 3.0])])
    b = np.concatenate([NORMALS[::-1] * np.float32(3.7), EDGES[::-1], np.float32([-1.0, 2.0**-30, 1e-30, FLT_MAX, 7.0])])
    n = len(a)
    out = np.empty((n, 18), np.float32)
    run(device, INTRINSICS, "arith_float_binary", n, a, b, out)
    for k, (op, mode) in enumerate([(op, m) for op in ("add", "sub", "mul", "div") for m in ("rn", "rz", "rd", "ru")]):
        want = []
        for x, y in zip(a.astype(float), b.astype(float)):
            x, y = ftz(x), ftz(y)
            if not (math.isfinite(x) and math.isfinite(y)) or (op == "div" and y == 0):
                with np.errstate(all="ignore"):
                    r = {"add": F32(x) + F32(y), "sub": F32(x) - F32(y), "mul": F32(x) * F32(y),
                         "div": F32(x) / F32(y)}[op]
                want.append(float(r))
                continue
            fx, fy = Fraction(x), Fraction(y)
            q = fx + fy if op == "add" else fx - fy if op == "sub" else fx * fy if op == "mul" else fx / fy
            r = round_f32(q, mode)
            if q == 0 and op in ("add", "sub"):
                yy = y if op == "add" else -y
                both_neg = math.copysign(1, x) < 0 and math.copysign(1, yy) < 0
                both_pos = x == 0 and yy == 0 and math.copysign(1, x) > 0 and math.copysign(1, yy) > 0
                r = -0.0 if both_neg or (mode == "rd" and not both_pos) else 0.0
            elif q == 0 and op in ("mul", "div"):
                r = math.copysign(0.0, math.copysign(1, x) * math.copysign(1, y))
            elif r == 0:
                r = math.copysign(0.0, float(q))
            want.append(r)
        assert_bits(out[:, 2 + k], want, f"__f{op}_{mode}")


def test_fma_modes_and_no_contraction_of_rn_intrinsics(device):
    a = np.concatenate([NORMALS, np.float32([1 + 2**-12, 1e30, -0.0, 3.0])])
    b = np.concatenate([NORMALS[::-1], np.float32([1 + 2**-12, 1e10, 5.0, 1e-30])])
    c = np.concatenate([NORMALS * np.float32(0.3), np.float32([-1.0, -FLT_MAX, 0.0, -3e-30])])
    n = len(a)
    out = np.empty((n, 5), np.float32)
    run(device, INTRINSICS, "arith_fma", n, a, b, c, out)
    for k, mode in enumerate(("rn", "rz", "rd", "ru")):
        want = []
        for x, y, z in zip(a.astype(float), b.astype(float), c.astype(float)):
            q = Fraction(x) * Fraction(y) + Fraction(z)
            r = round_f32(q, mode)
            if q == 0:
                prod_neg = math.copysign(1, x) * math.copysign(1, y) < 0
                r = -0.0 if (prod_neg and math.copysign(1, z) < 0) or mode == "rd" and not (
                    not prod_neg and math.copysign(1, z) > 0) else 0.0
            elif r == 0:
                r = math.copysign(0.0, float(q))
            want.append(r)
        assert_bits(out[:, k], want, f"__fmaf_{mode}")
    with np.errstate(all="ignore"):
        separate = [ftz(float(F32(x) * F32(y) + F32(z))) for x, y, z in zip(a, b, c)]  # numpy: two roundings
    assert_bits(out[:, 4], separate, "__fadd_rn(__fmul_rn(a, b), c)")
    i = n - 4
    assert out[i, 0] == np.float32(2**-11 + 2**-24) and out[i, 4] == np.float32(2**-11)


def test_reciprocal_and_square_roots_are_exact(device):
    x = np.concatenate([np.abs(NORMALS), EDGES, np.float32([4.0, 2.0, 1e-38, 7.0, 0.75])])
    n = len(x)
    out = np.empty((n, 28), np.float32)
    run(device, INTRINSICS, "arith_float_unary", n, x, out)
    for k, mode in enumerate(("rn", "rz", "rd", "ru")):
        want_rcp, want_sqrt = [], []
        for v in x.astype(float):
            v = ftz(v)
            if math.isnan(v) or math.isinf(v) or v == 0:
                with np.errstate(all="ignore"):
                    want_rcp.append(float(F32(1) / F32(v)))
            else:
                want_rcp.append(round_f32(1 / Fraction(v), mode))
            if math.isnan(v) or v < 0:
                want_sqrt.append(float("nan"))
            elif math.isinf(v) or v == 0:
                want_sqrt.append(v)
            else:  # the float r with r^2 on the right side of v
                r = float(np.sqrt(F32(v)))
                lo = r if Fraction(r) ** 2 <= Fraction(v) else float(np.nextafter(F32(r), F32(-INF)))
                hi = lo if Fraction(lo) ** 2 == Fraction(v) else float(np.nextafter(F32(lo), F32(INF)))
                want_sqrt.append({"rn": r, "rz": lo, "rd": lo, "ru": hi}[mode])
        assert_bits(out[:, 13 + k], want_rcp, f"__frcp_{mode}")
        assert_bits(out[:, 17 + k], want_sqrt, f"__fsqrt_{mode}")
    # __frsqrt_rn: correctly rounded 1/sqrt(x); rsqrtf within rsqrt.approx's 2 ulp of it
    for v, got, approx in zip(x.astype(float), out[:, 12], out[:, 11]):
        v = ftz(v)
        if math.isnan(v) or v < 0:
            assert math.isnan(got) and math.isnan(approx)
        elif v == 0:
            assert got == approx == math.copysign(INF, v)
        elif math.isinf(v):
            assert got == approx == 0.0
        else:
            exact = 1 / math.sqrt(v)  # double: enough to tell neighbours apart here
            cands = [float(np.nextafter(F32(got), F32(-INF))), float(got), float(np.nextafter(F32(got), F32(INF)))]
            assert min(cands, key=lambda c: abs(c - exact)) == float(got), v
            assert ulps(float(approx), exact) <= 2


# ---------------------------------------------------------------- conversions

def saturate(r: float, lo: int, hi: int) -> int:
    if math.isnan(r):
        return 0
    if r >= hi + 1 or r == INF:
        return hi
    if r <= lo - 1 or r == -INF:
        return lo
    return max(lo, min(hi, int(r)))


def test_float_to_int_saturates_and_maps_nan_to_zero(device):
    x = np.concatenate([EDGES, NORMALS[:50], np.float32([-0.5, 0.5, 1.5, -1.5, 2147483520.0, -2147483648.0,
                                                         4294967040.0, -1e-40, 9.2233715e18, 1.8446743e19])])
    n = len(x)
    i32, u32 = np.empty((n, 4), np.int32), np.empty((n, 4), np.uint32)
    i64, u64 = np.empty((n, 4), np.int64), np.empty((n, 4), np.uint64)
    run(device, INTRINSICS, "arith_f2i", n, x, i32, u32, i64, u64)
    rounders = (lambda v: float(np.rint(v)), math.trunc, math.floor, math.ceil)
    for k, name in enumerate(("rn", "rz", "rd", "ru")):
        for v, a, b, c, d in zip(x.astype(float), i32[:, k], u32[:, k], i64[:, k], u64[:, k]):
            r = ftz(v)
            r = r if math.isnan(r) or math.isinf(r) else float(rounders[k](r))
            assert a == saturate(r, -2**31, 2**31 - 1), (name, v, a)
            assert b == saturate(r, 0, 2**32 - 1), (name, v, b)
            assert c == saturate(r, -2**63, 2**63 - 1), (name, v, c)
            assert d == saturate(r, 0, 2**64 - 1), (name, v, d)
    nan = [i for i, v in enumerate(x) if np.isnan(v)][0]
    assert list(i32[nan]) == [0, 0, 0, 0] and list(u64[nan]) == [0, 0, 0, 0]
    big = list(x).index(np.float32(3e9))
    assert list(i32[big]) == [2**31 - 1] * 4 and list(u32[big]) == [3000000000] * 4
    tiny = list(x.view(np.uint32)).index(np.float32(1e-40).view(np.uint32))
    assert i32[tiny, 3] == 0  # ru of a subnormal: flushed to 0 first (cvt.rpi.ftz), not 1


def test_int_to_float_modes(device):
    ints = np.concatenate([np.int32([0, 1, -1, 16777217, -16777217, 2**31 - 1, -2**31, 33554435, -33554435]),
                           RNG.integers(-2**31, 2**31, 40).astype(np.int32)])
    longs = np.concatenate([np.int64([0, 2**63 - 1, -2**63, 2**53 + 1, -(2**40 + 3), 2**24 + 1, 12345]),
                            RNG.integers(-2**63, 2**63, 42, dtype=np.int64)])
    n = len(ints)
    out = np.empty((n, 8), np.float32)
    run(device, INTRINSICS, "arith_i2f", n, ints, longs, out)
    for k, mode in enumerate(("rn", "rz", "rd", "ru")):
        assert_bits(out[:, k], [round_f32(Fraction(int(v)), mode) for v in ints], f"__int2float_{mode}")
        assert_bits(out[:, 4 + k], [round_f32(Fraction(int(v)), mode) for v in longs], f"__ll2float_{mode}")


def test_saturatef_and_unsigned_conversions(device):
    x = np.concatenate([EDGES, np.float32([0.25, 1.0000001, -1e-40])])
    n = len(x)
    out = np.empty((n, 28), np.float32)
    run(device, INTRINSICS, "arith_float_unary", n, x, out)
    for v, got in zip(x.astype(float), out[:, 10]):
        want = 0.0 if math.isnan(v) or ftz(v) <= 0 else min(ftz(v), 1.0)
        assert f32_bits(got) == f32_bits(want), (v, got)  # NaN and -0 give +0
    bits = x.view(np.uint32).astype(int)
    for k, mode in ((22, "rz"), (23, "rd"), (24, "ru"), (25, "rn")):
        assert_bits(out[:, k], [round_f32(Fraction(b), mode) for b in bits], f"__uint2float_{mode}")
    assert_bits(out[:, 26], [round_f32(Fraction(b << 20), "rn") for b in bits], "__ll2float_rn")
    assert_bits(out[:, 27], [ftz(float(F32(ftz(v) * 0.5))) if math.isfinite(v) else v * 0.5
                             for v in x.astype(float)], "__double2float_rn")


# ---------------------------------------------------------------- integer intrinsics

def s32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - 2**32 if v >= 2**31 else v


def byte_perm(x: int, y: int, s: int) -> int:
    bytes8 = x | (y << 32)
    return sum(((bytes8 >> (8 * ((s >> (4 * n)) & 7))) & 0xFF) << (8 * n) for n in range(4))


def test_integer_intrinsics(device):
    a = np.concatenate([np.uint32([0, 1, 0xFFFFFFFF, 0x80000000, 0x00FFFFFF, 0x00800000, 0x12345678, 7]),
                        RNG.integers(0, 2**32, 60, dtype=np.uint64).astype(np.uint32)])
    b = np.concatenate([np.uint32([0, 0xFFFFFFFF, 1, 0x80000000, 0x00FFFFFF, 0xFF800001, 0x9ABCDEF0, 9]),
                        RNG.integers(0, 2**32, 60, dtype=np.uint64).astype(np.uint32)])
    shifts = [0, 31, 32, 33, 64, 0xFFFFFFFF, 0x3210, 0x7654]
    c = np.concatenate([np.uint32(shifts), RNG.integers(0, 70, 60).astype(np.uint32)])
    n = len(a)
    out = np.empty((n, 20), np.uint32)
    run(device, INTRINSICS, "arith_int", n, a, b, c, out)
    for i, (x, y, z) in enumerate(zip(map(int, a), map(int, b), map(int, c))):
        sx, sy = s32(x), s32(y)
        x24 = s32((x & 0xFFFFFF) << 8) >> 8
        y24 = s32((y & 0xFFFFFF) << 8) >> 8
        hilo = (y << 32) | x
        want = [
            (x24 * y24) & 0xFFFFFFFF, ((x & 0xFFFFFF) * (y & 0xFFFFFF)) & 0xFFFFFFFF,
            ((sx * sy) >> 32) & 0xFFFFFFFF, (x * y) >> 32,
            ((sx + sy) >> 1) & 0xFFFFFFFF, ((sx + sy + 1) >> 1) & 0xFFFFFFFF,
            (x + y) >> 1, (x + y + 1) >> 1,
            (abs(sx - sy) + z) & 0xFFFFFFFF, (abs(x - y) + z) & 0xFFFFFFFF,
            bin(x).count("1"), 32 - x.bit_length(), (x & -x).bit_length(),
            int(f"{x:032b}"[::-1], 2), byte_perm(x, y, z),
            ((hilo << (z & 31)) >> 32) & 0xFFFFFFFF, ((hilo << min(z, 32)) >> 32) & 0xFFFFFFFF,
            (hilo >> (z & 31)) & 0xFFFFFFFF, (hilo >> min(z, 32)) & 0xFFFFFFFF,
            bin(hilo).count("1") + 100 * (64 - y.bit_length()),
        ]
        assert list(out[i].astype(int)) == want, (i, x, y, z, list(out[i]), want)
    # shift counts at the edges: wrap takes the count mod 32, clamp stops at 32
    lo, hi = 0x12345678, 0x9ABCDEF0
    assert (((hi << 32 | lo) << 0) >> 32) & 0xFFFFFFFF == hi  # sanity of the reference
    assert out[2, 16] == (((0x00000001 << 32 | 0xFFFFFFFF) << 32) >> 32) & 0xFFFFFFFF  # lc, count 32 -> lo


# ---------------------------------------------------------------- fast math: bounds and structure

def test_fast_math_intrinsics_within_documented_bounds(device):
    x = np.concatenate([np.linspace(-80, 80, 161), np.linspace(0.5, 2, 31), np.geomspace(1e-30, 1e30, 61),
                        np.linspace(-math.pi, math.pi, 65)]).astype(np.float32)
    special = np.float32([0.0, -0.0, INF, -INF, float("nan"), -1.0, 1e-40, 2.0**127])
    xs = np.concatenate([x, special])
    n = len(xs)
    out = np.empty((n, 28), np.float32)
    run(device, INTRINSICS, "arith_float_unary", n, xs, out)
    log2e, log2_10, ln2, log10_2 = F32(1.4426950216293335), F32(3.321928024291992), F32(0.6931471824645996), F32(0.3010300099849701)
    for v, o in zip(x.astype(float), out[:len(x)]):
        fv = F32(v)
        if abs(v) <= 87:
            # documented: 2 + floor(|1.173 x|) ulp; and computed as ex2(x * log2e rounded to float)
            assert ulps(float(o[0]), math.exp(v)) <= 2 + math.floor(abs(1.173 * v)), v
            assert ulps(float(o[0]), 2.0 ** float(fv * log2e)) <= 1, v
        if abs(v) <= 37:
            assert ulps(float(o[1]), 10.0 ** v) <= 2 + math.floor(abs(2.97 * v)), v
            assert ulps(float(o[1]), 2.0 ** float(fv * log2_10)) <= 1, v
        if v > 0:
            for k, exact, bound_abs, bound_ulp in ((2, math.log(v), 2**-21.41, 3), (3, math.log2(v), 2**-22, 2),
                                                    (4, math.log10(v), 2**-24, 3)):
                if 0.5 <= v <= 2:
                    assert abs(float(o[k]) - exact) <= bound_abs, (k, v)
                else:
                    assert ulps(float(o[k]), exact) <= bound_ulp, (k, v)
            assert ulps(float(o[2]), float(F32(math.log2(v)) * ln2)) <= 1
            assert ulps(float(o[4]), float(F32(math.log2(v)) * log10_2)) <= 1
        if abs(v) <= math.pi:
            assert abs(float(o[5]) - math.sin(v)) <= 2**-21.41 and abs(float(o[6]) - math.cos(v)) <= 2**-21.19
            assert o[8] == o[5] and o[9] == o[6]  # __sincosf = __sinf, __cosf
            if abs(math.cos(v)) > 0.05:
                assert ulps(float(o[7]), float(o[5]) / float(o[6])) <= 2  # div.approx(sin, cos)
    s = out[len(x):]
    # 0, -0, inf, -inf, nan, -1, a subnormal (flushed), 2^127
    assert np.isnan(s[4, 0]) and [float(v) for i, v in enumerate(s[:, 0]) if i not in (4, 5)] == [1, 1, INF, 0, 1, INF]
    assert ulps(float(s[5, 0]), math.exp(-1)) <= 3
    assert list(s[:3, 2]) == [-INF, -INF, INF] and np.isnan(s[3, 2]) and np.isnan(s[4, 2]) and np.isnan(s[5, 2])
    assert s[6, 2] == -INF and s[6, 3] == -INF  # log of a flushed subnormal: lg2(0)
    assert f32_bits(s[1, 5]) == f32_bits(-0.0) and np.isnan(s[2, 5]) and np.isnan(s[3, 6])


def test_fdividef_and_powf_special_cases(device):
    a = np.float32([1.0, INF, 5.0, -3.0, 1.0, 7.0, -2.0, 0.0, 0.0, 1.0, 2.0, 8.0])
    b = np.float32([2.0**127, 2.0**127, 2.0**126, -(2.0**127.5), 3.0, 0.0, 2.0, 2.0, 0.0, INF, 10.0, 1 / 3])
    n = len(a)
    out = np.empty((n, 18), np.float32)
    run(device, INTRINSICS, "arith_float_binary", n, a, b, out)
    d, p = out[:, 0], out[:, 1]
    assert d[0] == 0 and np.isnan(d[1]) and d[2] == np.float32(5.0 / 2.0**126)  # 2^126 < |y| < 2^128: 0 / NaN
    assert f32_bits(d[3]) == f32_bits(0.0)   # -3 * rcp(-2^127.5) = -3 * -0
    assert ulps(float(d[4]), 1 / 3) <= 2 and d[5] == INF
    assert np.isnan(p[6])                    # __powf(-2, 2): ex2(2 * lg2(-2)) = NaN, unlike powf
    assert p[7] == 0 and np.isnan(p[8])      # __powf(0, 2) = ex2(-inf) = 0; __powf(0, 0) = ex2(NaN)
    assert np.isnan(p[9])                    # __powf(1, inf) = ex2(inf * 0) = NaN (powf gives 1)
    assert ulps(float(p[10]), 1024.0) <= 2 and ulps(float(p[11]), 2.0) <= 2


# ---------------------------------------------------------------- contraction, every build

CONTRACT_A = np.float32([1 + 2**-12, 1 + 3 * 2**-12, 1 - 2**-12, 3.0, 1 + 2**-11] * 4)
CONTRACT_B = np.float32([1 + 2**-12, 1 - 5 * 2**-12, 1 + 7 * 2**-12, 1 / 3, 1 - 2**-13] * 4)
CONTRACT_C = np.float32([-1.0, -1.0, 0.5, -1.0, -1.0] * 4)


def contracted(device):
    n = len(CONTRACT_A)
    out, separate, dot = (np.empty(n, np.float32) for _ in range(3))
    run(device, FP_MODE, "contract", n, CONTRACT_A, CONTRACT_B, CONTRACT_C, out, separate, dot)
    return out, separate, dot


def fma_reference():
    """What a GPU computes: one rounding per a*b + c (-fmad=true), per loop step too."""
    a, b, c = (x.astype(float) for x in (CONTRACT_A, CONTRACT_B, CONTRACT_C))
    n = len(a)
    fused = [round_f32(Fraction(a[i]) * Fraction(b[i]) + Fraction(c[i]), "rn") for i in range(n)]
    dot = []
    for i in range(n):
        s = float(c[i])
        for j in range(16):
            k = (i + j) % n
            s = round_f32(Fraction(a[k]) * Fraction(b[k]) + Fraction(s), "rn")
        dot.append(s)
    return fused, dot


def test_contraction_as_nvrtc_does_it(device):
    out, separate, dot = contracted(device)
    fused, fused_dot = fma_reference()
    assert_bits(out, fused, "a*b + c")
    assert_bits(dot, fused_dot, "running sum of a*b")
    assert out[0] == np.float32(2**-11 + 2**-24) and separate[0] == np.float32(2**-11)  # depends on contraction
    assert not all(same(x, y) for x, y in zip(out, separate))


@pytest.mark.parametrize("mode", ["bounds", "align", "race", "init", "profile"])
def test_contraction_identical_in_every_build(device, mode):
    plain = contracted(device)
    if mode == "profile":
        with emu.profile(blocks=None):
            checked = contracted(device)
    else:
        with emu.debug(check=mode):
            checked = contracted(device)
    for p, c in zip(plain, checked):
        assert p.view(np.uint32).tolist() == c.view(np.uint32).tolist(), mode


def test_contraction_identical_under_address_sanitizer(device):
    plain = [x.view(np.uint32).tolist() for x in contracted(device)]
    script = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})
        import numpy as np
        import test_emu_arith as t
        from convnet.backend import emu
        with emu.debug(check="address"):
            print([x.view(np.uint32).tolist() for x in t.contracted(emu.EmuDevice())])
    """)
    argv, env = emu.sanitized_command([sys.executable, "-c", script])
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == str(plain)


# ---------------------------------------------------------------- subnormals: flushed as the GPU build

def test_subnormals_flush_like_the_gpu_build(device):
    x = np.float32([1e-20, FLT_MIN, 1e-40, -1e-40, 1e-40, 3e-39, 1.5])
    y = np.float32([1e-20, 0.5, 0.0, 0.0, 2e-40, 0.0, 2.0])
    n = len(x)
    out, below, wide = np.empty((n, 3), np.float32), np.empty(n, np.int32), np.empty(n, np.float64)
    run(device, FP_MODE, "subnormal_ops", n, x, y, out, below, wide)
    # NumPy (the cpu reference) keeps subnormals ...
    with np.errstate(all="ignore"):
        assert x[0] * y[0] != 0 and x[1] * y[1] != 0 and x[2] + y[2] != 0
    # ... the GPU build (-ftz=true) and emu flush results and inputs, keeping the sign
    assert f32_bits(out[0, 0]) == 0 and f32_bits(out[1, 0]) == 0          # subnormal products
    assert f32_bits(out[2, 1]) == 0 and f32_bits(out[3, 1]) == 0        # -1e-40 + 0 reads -0 + 0 = +0
    assert out[4, 2] == 0 and below[4] == 0                                 # 1e-40 - 2e-40; 1e-40 < 2e-40 reads 0 < 0
    assert wide[2] == 0 and wide[5] == 0                                    # cvt.ftz.f64.f32 of a subnormal
    assert out[6].tolist() == [3.0, 3.5, -0.5] and below[6] == 1           # normal values untouched
    # the caller's floating-point mode is back after the launch
    with np.errstate(all="ignore"):
        assert np.float32(1e-38) * np.float32(0.01) != 0


def test_compile_report_describes_the_ftz_build():
    from convnet.toolchain import nvrtc
    assert "-ftz=true" in nvrtc.NVRTC_OPTIONS
    assert "-ftz=true" in nvrtc.compile_options("sm_90")
