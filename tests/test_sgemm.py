"""The tiled SGEMM test kernel (tests/kernels/sgemm_tiled.cu) against the NumPy reference.

The kernel is no part of the library: its launch description is
``benchmarks/sgemm_kernel.py``, shared with the benchmark. Kernel devices are ``emu``
and ``cuda:0`` (the cuda cases skip without a GPU; select them alone with ``-k
cuda``). The emulator's debug modes prove the kernel free of races (reverse
schedule), of reads of unwritten shared memory (NaN fill) and of out-of-range
indices into its fixed-size arrays (bounds build); NVRTC proves every instantiation
compiles for a GPU without spilling registers.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import HAVE_NVRTC, KERNEL_DEVICES
from conftest import require_device as _device
from convnet.toolchain.launch import LaunchError

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import sgemm_kernel as sg  # noqa: E402

# (M, N, K): C is M×N, A is M×K, B is K×N. Ones, primes, and sizes just past a tile.
SHAPES = [
    (1, 1, 1),
    (17, 33, 9),
    (65, 1, 130),
    (1, 70, 3),
    (33, 65, 17),
    (128, 128, 128),
    (129, 127, 31),
]


def _operands(m, n, k, seed=0):
    rng = np.random.default_rng(seed + 1000 * m + 100 * n + k)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    return a, b


def _expected(a, b):
    return (a.astype(np.float64) @ b.astype(np.float64)).astype(np.float32)


def _tolerance(k):
    return dict(rtol=1e-5, atol=1e-5 * max(1, k))


def _run(device, a, b, tile=None):
    return device.to_numpy(sg.matmul(device, a, b, tile=tile))


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", KERNEL_DEVICES)
def test_matches_reference(name, shape):
    device = _device(name)
    m, n, k = shape
    a, b = _operands(m, n, k)
    c = _run(device, a, b)
    assert c.shape == (m, n) and c.dtype == np.float32
    np.testing.assert_allclose(c, _expected(a, b), **_tolerance(k))


@pytest.mark.parametrize("tile", sg.TILES, ids=lambda t: "-".join(map(str, t)))
@pytest.mark.parametrize("name", KERNEL_DEVICES)
def test_every_instantiation(name, tile):
    device = _device(name)
    m, n, k = 70, 45, 37  # not a multiple of any tile in any dimension
    a, b = _operands(m, n, k, seed=1)
    np.testing.assert_allclose(_run(device, a, b, tile=tile), _expected(a, b), **_tolerance(k))


@pytest.mark.parametrize("name", KERNEL_DEVICES)
def test_zero_depth_writes_zeros(name):
    device = _device(name)
    a = np.zeros((5, 0), np.float32)
    b = np.zeros((0, 7), np.float32)
    c = _run(device, a, b)
    assert c.shape == (5, 7)
    assert np.all(c == 0)


@pytest.mark.parametrize("name", KERNEL_DEVICES)
def test_empty_result(name):
    device = _device(name)
    c = _run(device, np.zeros((0, 4), np.float32), np.zeros((4, 3), np.float32))
    assert c.shape == (0, 3)


def test_cpu_runs_the_reference():
    a, b = _operands(9, 11, 13)
    c = sg.matmul("cpu", a, b)
    assert isinstance(c, np.ndarray) and c.dtype == np.float32
    np.testing.assert_array_equal(c, a @ b)


# --------------------------------------------------------------------------- emulator debug modes

def _emu_debug():
    _device("emu")
    from convnet.backend.emu import debug
    return debug


@pytest.mark.parametrize("tile", [sg.EMU_TILE, sg.Tile(32, 32, 8, 4, 4)],
                         ids=lambda t: "-".join(map(str, t)))
@pytest.mark.parametrize("mode", [{"schedule": "reverse"}, {"fill_shared": True}],
                         ids=["reverse-order", "nan-filled-shared"])
def test_emu_debug_modes_do_not_change_the_result(tile, mode):
    """Reversed thread/block order (a race would show) and NaN-filled shared memory (a
    read before a write would show) give exactly the plain result."""
    debug = _emu_debug()
    device = _device("emu")
    a, b = _operands(100, 90, 70, seed=2)
    plain = _run(device, a, b, tile=tile)
    with debug(**mode):
        checked = _run(device, a, b, tile=tile)
    assert not np.isnan(checked).any()
    np.testing.assert_array_equal(plain, checked)


def test_emu_bounds_checked_build():
    debug = _emu_debug()
    device = _device("emu")
    with debug(check="bounds"):
        for (m, n, k) in [(17, 33, 9), (65, 1, 130)]:
            a, b = _operands(m, n, k, seed=4)
            for tile in (sg.EMU_TILE, sg.Tile(32, 32, 8, 4, 4)):
                np.testing.assert_allclose(_run(device, a, b, tile=tile), _expected(a, b),
                                           **_tolerance(k))


# --------------------------------------------------------------------------- errors

def test_launch_shape():
    a, b = _operands(65, 130, 9)
    c = np.empty((65, 130), np.float32)
    launch = sg.sgemm_launch(a, b, c, tile=sg.Tile(64, 64, 16, 8, 8))
    assert launch.name == "sgemm_tiled<64, 64, 16, 8, 8>"
    assert launch.grid == (3, 2, 1)       # ceil(N / BN), ceil(M / BM)
    assert launch.block == (8, 8, 1)      # BN / TN, BM / TM
    assert launch.shared_bytes == 0
    assert [type(x) for x in launch.args[3:]] == [np.int32] * 3
    assert [int(x) for x in launch.args[3:]] == [65, 130, 9]
    assert sg.sgemm_launch(a, b, c).name == sg.kernel_name(sg.EMU_TILE)  # host arrays: the emu tile
    assert sg.default_tile(a) == sg.EMU_TILE


def test_module_lists_every_tile():
    assert Path(sg.MODULE.source).resolve() == (Path(__file__).parent / "kernels"
                                                / "sgemm_tiled.cu").resolve()
    assert Path(sg.MODULE.source).is_file()
    assert set(sg.MODULE.kernels) == {sg.kernel_name(t) for t in sg.TILES}
    for t in sg.TILES:
        assert t.bm % t.tm == 0 and t.bn % t.tn == 0
        assert (t.bm * t.bk) % t.threads == 0 and (t.bk * t.bn) % t.threads == 0
        assert t.threads <= 1024


@pytest.mark.skipif(not HAVE_NVRTC, reason="cuda-bindings is not installed "
                                            '(pip install -e ".[test]")')
def test_every_instantiation_compiles_without_spills():
    from convnet.toolchain import nvrtc
    rows = nvrtc.compile_report([sg.MODULE], archs=("sm_80", "sm_90"))
    assert {(r.kernel, r.arch) for r in rows} == {(sg.kernel_name(t), a) for t in sg.TILES
                                                  for a in ("sm_80", "sm_90")}
    spilling = [f"{r.kernel} ({r.arch})" for r in rows if r.spills]
    assert not spilling, f"sgemm_tiled spills registers: {', '.join(spilling)}"
    assert all(r.registers > 0 for r in rows)


@pytest.mark.parametrize("a_shape, b_shape, c_shape, message", [
    ((3, 4), (5, 6), (3, 6), "inner dimensions differ"),
    ((3, 4), (4, 6), (6, 3), "c must be 3×6"),
    ((3, 4, 1), (4, 6), (3, 6), "a must be a 2-D matrix"),
    ((3, 4), (4,), (3, 6), "b must be a 2-D matrix"),
])
def test_bad_shapes(a_shape, b_shape, c_shape, message):
    a, b, c = (np.zeros(s, np.float32) for s in (a_shape, b_shape, c_shape))
    with pytest.raises(ValueError, match=message):
        sg.sgemm_launch(a, b, c)


def test_bad_dtypes():
    a = np.zeros((3, 4), np.float64)
    b = np.zeros((4, 5), np.float32)
    c = np.zeros((3, 5), np.float32)
    with pytest.raises(TypeError, match="a must be float32, got float64"):
        sg.sgemm_launch(a, b, c)
    with pytest.raises(TypeError, match="c must be float32, got int32"):
        sg.sgemm_launch(b.T.copy(), b, np.zeros((5, 5), np.int32))
    with pytest.raises(TypeError, match="b must be float32, got float16"):
        sg.matmul("cpu", a.astype(np.float32), b.astype(np.float16))
    with pytest.raises(TypeError, match="must be an array"):
        sg.sgemm_launch([[1.0]], b, c)


def test_non_contiguous_and_empty_and_unknown_tile():
    a = np.zeros((8, 4), np.float32)
    b = np.zeros((4, 5), np.float32)
    with pytest.raises(ValueError, match="C-contiguous"):
        sg.sgemm_launch(a[::2], b, np.zeros((4, 5), np.float32))
    with pytest.raises(ValueError, match="empty result"):
        sg.sgemm_launch(np.zeros((0, 4), np.float32), b, np.zeros((0, 5), np.float32))
    with pytest.raises(LaunchError, match="not instantiated"):
        sg.sgemm_launch(a, b, np.zeros((8, 5), np.float32), tile=(16, 16, 4, 2, 2))


def test_index_overflow_is_refused():
    class Big:  # shape/dtype only: no 2^31-element allocation
        def __init__(self, shape):
            self.shape, self.ndim, self.dtype = shape, 2, np.dtype(np.float32)
            self.flags = np.zeros(1).flags
    with pytest.raises(ValueError, match="int indices"):
        sg.check_operands(Big((2**16, 2**15 + 1)), Big((2**15 + 1, 4)))
