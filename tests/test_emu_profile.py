"""emu.profile(): memory-traffic figures of emulated launches with known answers
(kernels in tests/kernels/profile_traffic.cu, each measured line marked PROFILE:name)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from convnet.backend import emu
from convnet.perf import traffic
from convnet.toolchain.launch import KernelModule, Launch

pytestmark = pytest.mark.skipif(not emu.available(), reason="emu runtime not built")

HERE = Path(__file__).parent / "kernels"
SOURCE = HERE / "profile_traffic.cu"
MODULE = KernelModule(str(SOURCE), (
    "copy_float", "copy_float4", "strided_read", "shared_column", "shared_column_padded",
    "shared_broadcast", "shared_float2", "barriers", "count_atomic"))


def line(marker: str) -> int:
    for number, text in enumerate(SOURCE.read_text().splitlines(), start=1):
        if f"PROFILE:{marker}" in text:
            return number
    raise AssertionError(marker)


def site(t: traffic.LaunchTraffic, marker: str, space: str, kind: str | None = None) -> traffic.Site:
    return t.site(SOURCE.name, line(marker), space=space, kind=kind)


@pytest.fixture(scope="module")
def device():
    return emu.EmuDevice()


def run(device, name, grid, block, args, shared_bytes=0, blocks=None):
    with emu.profile(blocks=blocks) as prof:
        device.launch(Launch(MODULE, name, grid=grid, block=block, shared_bytes=shared_bytes, args=args))
    assert len(prof) == 1
    return prof[0]


def test_coalesced_float_copy_is_4_sectors_a_request(device):
    n = 1024
    x = np.arange(n, dtype=np.float32)
    y = np.zeros(n, np.float32)
    t = run(device, "copy_float", n // 128, 128, (x, y, np.int32(n)))
    np.testing.assert_array_equal(y, x)
    for marker, space in (("copy_load", "global"), ("copy_store", "global")):
        f = site(t, marker, space).figures
        assert f.requests == n // 32
        assert f.sectors_per_request == 4.0
        assert f.lanes_per_request == 32.0
        assert f.bytes_requested == n * 4 and f.bytes_moved == n * 4
    assert t.global_loads.sectors_per_request == 4.0
    assert t.blocks_profiled == t.blocks_total == 8 and t.scale == 1.0


def test_float4_copy_is_16_sectors_a_request(device):
    n = 512
    x = np.arange(4 * n, dtype=np.float32)
    y = np.zeros(4 * n, np.float32)
    t = run(device, "copy_float4", n // 64, 64, (x, y, np.int32(n)))
    np.testing.assert_array_equal(y, x)
    for marker in ("copy4_load", "copy4_store"):
        f = site(t, marker, "global").figures
        assert f.requests == n // 32
        assert f.sectors_per_request == 16.0
        assert f.efficiency == 1.0
        assert t.rows and {r.size for r in t.rows} == {16}


@pytest.mark.parametrize("stride", [8, 9, 32])
def test_strided_read_is_one_sector_per_lane(device, stride):
    n = 256
    x = np.arange(n * stride, dtype=np.float32)
    y = np.zeros(n, np.float32)
    t = run(device, "strided_read", n // 64, 64, (x, y, np.int32(stride), np.int32(n)))
    np.testing.assert_array_equal(y, x[::stride])
    load = site(t, "strided_load", "global").figures
    assert load.sectors_per_request == 32.0
    assert load.efficiency == pytest.approx(4 / 32)
    store = t.global_stores
    assert store.sectors_per_request == 4.0


def test_shared_column_read_conflicts_32_ways_and_padding_removes_it(device):
    x = np.arange(1024, dtype=np.float32)
    y = np.zeros(1024, np.float32)
    t = run(device, "shared_column", 1, (32, 32), (x, y))
    np.testing.assert_array_equal(y.reshape(32, 32), x.reshape(32, 32).T)
    column = site(t, "column_load", "shared", "read").figures
    assert column.requests == 32
    assert column.wavefronts_per_request == 32.0 and column.conflict_degree == 32.0
    assert site(t, "tile_store", "shared", "write").figures.wavefronts_per_request == 1.0

    y2 = np.zeros(1024, np.float32)
    p = run(device, "shared_column_padded", 1, (32, 32), (x, y2))
    np.testing.assert_array_equal(y2, y)
    padded = site(p, "padded_load", "shared", "read").figures
    assert padded.wavefronts_per_request == 1.0 and padded.conflict_degree == 1.0
    assert p.shared.conflict_degree == 1.0


def test_broadcast_is_one_wavefront(device):
    x = np.arange(32, dtype=np.float32)
    y = np.zeros(128, np.float32)
    t = run(device, "shared_broadcast", 2, 64, (x, y))
    assert np.all(y == 5.0)
    f = site(t, "broadcast_load", "shared", "read").figures
    assert f.requests == 4 and f.wavefronts_per_request == 1.0 and f.lanes_per_request == 32.0


@pytest.mark.parametrize("stride, wavefronts", [(1, 2.0), (16, 32.0)])
def test_8_byte_shared_accesses_are_served_per_half_warp(device, stride, wavefronts):
    x = np.arange(1024, dtype=np.float32)
    y = np.zeros(32, np.float32)
    t = run(device, "shared_float2", 1, 32, (x, y, np.int32(stride)), shared_bytes=1024 * 8)
    idx = (np.arange(32) * stride) % 1024
    np.testing.assert_array_equal(y, 2 * x[idx])
    f = site(t, "float2_load", "shared", "read").figures
    assert f.requests == 1 and f.ideal_wavefronts == 2
    assert f.wavefronts_per_request == wavefronts
    assert f.conflict_degree == wavefronts / 2


@pytest.mark.parametrize("blocks", [None, 1])
def test_barriers_are_counted_exactly_in_every_block(device, blocks):
    rounds = 4
    y = np.zeros(3 * 64, np.float32)
    t = run(device, "barriers", 3, 64, (y, np.int32(rounds)), blocks=blocks)
    assert t.barriers == 3 * (2 * rounds + 1)
    assert t.barriers_per_block == 2 * rounds + 1
    assert t.blocks_profiled == (3 if blocks is None else 1)


def test_partial_warp_block_of_48(device):
    n = 96
    x = np.arange(n, dtype=np.float32)
    y = np.zeros(n, np.float32)
    t = run(device, "copy_float", 2, 48, (x, y, np.int32(n)))
    np.testing.assert_array_equal(y, x)
    f = site(t, "copy_load", "global").figures
    assert f.requests == 4            # per block: lanes 0-31 and lanes 32-47
    assert f.accesses == 96 and f.lanes_per_request == 24.0
    assert f.sectors == 2 * (4 + 2)   # 128 B and 64 B, both 256-byte aligned at the array's start


def test_atomics_are_reported_as_atomic_accesses(device):
    counter = np.zeros(1, np.int32)
    t = run(device, "count_atomic", 2, 48, (counter,))
    assert counter[0] == 96
    f = t.global_atomics
    assert f.accesses == 96 and f.requests == 4 and f.sectors_per_request == 1.0
    assert site(t, "atomic_add", "global", "atomic").figures.accesses == 96


def test_sampled_blocks_scale_totals(device):
    n = 32 * 10
    x = np.arange(n, dtype=np.float32)
    y = np.zeros(n, np.float32)
    t = run(device, "copy_float", 10, 32, (x, y, np.int32(n)), blocks=2)
    np.testing.assert_array_equal(y, x)  # unsampled blocks ran the ordinary build
    assert t.blocks_profiled == 2 and t.blocks_total == 10 and t.scale == 5.0
    g = t.global_loads
    assert g.requests == 2 and g.total(g.requests) == 10.0
    assert traffic.sample_blocks(10, 2) == [0, 9]
    assert traffic.sample_blocks(100, 4) == [0, 1, 2, 99]
    assert traffic.sample_blocks(5, 8) == [0, 1, 2, 3, 4]
    assert traffic.sample_blocks(7, None) == list(range(7))


def test_results_with_and_without_profiling_are_identical(device):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(4096).astype(np.float32)
    plain = np.zeros(1024, np.float32)
    device.launch(Launch(MODULE, "strided_read", grid=16, block=64, args=(x, plain, np.int32(4), np.int32(1024))))
    profiled = np.zeros(1024, np.float32)
    with emu.profile(blocks=3):
        device.launch(Launch(MODULE, "strided_read", grid=16, block=64,
                             args=(x, profiled, np.int32(4), np.int32(1024))))
    np.testing.assert_array_equal(profiled, plain)
    # and outside the block nothing is collected any more
    with emu.profile() as prof:
        pass
    device.launch(Launch(MODULE, "strided_read", grid=16, block=64, args=(x, plain, np.int32(4), np.int32(1024))))
    assert len(prof) == 0


def test_relu_profiles_to_float4_coalescing(device):
    from convnet.ops import relu as relu_ops
    rng = np.random.default_rng(2)
    x = rng.standard_normal(3 * 1024).astype(np.float32)
    plain = relu_ops.forward(device, x)
    with emu.profile(blocks=None) as prof:
        y = relu_ops.forward(device, x)
    np.testing.assert_array_equal(y, plain)
    np.testing.assert_array_equal(y, np.maximum(x, 0))
    (t,) = prof.by_kernel("relu_forward")
    assert t.global_loads.sectors_per_request == 16.0   # one float4 per lane, 512 B a warp
    assert t.global_stores.sectors_per_request == 16.0
    assert t.global_.bytes_requested == 2 * x.nbytes
    assert t.shared.requests == 0 and t.barriers == 0
    assert all(s.file == "relu.cu" for s in t.sites)


def test_as_dict_is_json_and_summary_has_the_model_inputs(device):
    x = np.arange(1024, dtype=np.float32)
    y = np.zeros(1024, np.float32)
    with emu.profile(blocks=None) as prof:
        device.launch(Launch(MODULE, "shared_column", grid=1, block=(32, 32), args=(x, y)))
        device.launch(Launch(MODULE, "copy_float", grid=8, block=128, args=(x, y, np.int32(1024))))
    d = json.loads(json.dumps(prof.as_dict()))
    assert len(d["launches"]) == 2
    first = d["launches"][0]
    assert first["kernel"] == "shared_column" and first["block"] == [32, 32, 1]
    assert first["barriers"] == 1
    assert first["shared"]["wavefronts"] == 32 + 32 * 32
    assert {s["where"] for s in first["sites"]} >= {f"{SOURCE.name}:{line('column_load')}"}
    s = prof.summary()
    assert s["launches"] == 2 and s["global_sectors_per_request"] == 4.0
    assert s["shared_conflict_degree"] == pytest.approx((32 + 32 * 32) / 64)
    assert "sectors/req" in prof.report()
    assert prof[1].waves("h100", 2) == pytest.approx(8 / (132 * 2))
