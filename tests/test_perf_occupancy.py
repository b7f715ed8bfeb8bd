"""convnet.perf.gpus and convnet.perf.occupancy: the GPU table and NVIDIA's occupancy
rules, on cases worked by hand (the arithmetic is in each case's comment).

Rules (cuda_occupancy.h, compute capability 8.x/9.x): warps/block = ceil(threads/32);
registers are allocated per warp, ceil(regs*32/256)*256, and each of the 4
sub-partitions holds floor(16384 / regs-per-warp) warps; a block's shared memory is
static + dynamic + 1024 reserved, rounded up to 128 B; blocks/SM = min(threads limit,
register limit, shared limit, block cap).
sm_90: 64 warps, 32 blocks, 228 KiB = 233472 B shared per SM, 227 KiB per block.
sm_89: 48 warps, 24 blocks, 100 KiB = 102400 B per SM, 99 KiB per block.
sm_86: 48 warps, 16 blocks.
"""
import pytest

from convnet.perf import gpus
from convnet.perf.occupancy import LaunchImpossible, occupancy, require


# --------------------------------------------------------------------------- the GPU table

@pytest.mark.parametrize("key", sorted(gpus.GPUS))
def test_fp32_peak_is_sms_times_lanes_times_clock(key):
    # The datasheet FP32 figure = SMs x FP32 lanes x 2 FLOPs x boost clock (to the
    # datasheet's rounding: 0.5 %).
    g = gpus.GPUS[key]
    assert g.fp32_tflops == pytest.approx(g.fp32_tflops_computed, rel=0.005)


def test_gpu_lookup_by_short_names_and_spellings():
    assert gpus.gpu("h100").sms == 132
    assert gpus.gpu("H100 SXM").key == "h100"
    assert gpus.gpu("h200").memory_bandwidth_gbs == 4800
    assert gpus.gpu("a100").arch.name == "sm_80"
    assert gpus.gpu("RTX-4090").arch.name == "sm_89"
    assert gpus.gpu("a10").arch.name == "sm_86"
    assert gpus.gpu("h100").arch is gpus.gpu("h200").arch is gpus.ARCHS["sm_90"]
    # H100 SXM and H200 share the GH100's compute; only the memory differs
    assert gpus.gpu("h200").fp32_tflops == gpus.gpu("h100").fp32_tflops


def test_unknown_gpu_lists_the_known_ones():
    with pytest.raises(gpus.UnknownGPU) as info:
        gpus.gpu("v100")
    message = str(info.value)
    assert "v100" in message
    for key in ("h100", "h200", "a100", "rtx4090"):
        assert key in message


def test_arch_lookup():
    assert gpus.arch("sm_90").max_warps_per_sm == 64
    assert gpus.arch(80).name == "sm_80"
    assert gpus.arch("sm89").max_blocks_per_sm == 24
    assert gpus.arch("h100").name == "sm_90"
    assert gpus.arch(gpus.gpu("a100")).shared_per_sm == 164 * 1024
    with pytest.raises(gpus.UnknownGPU, match="sm_80"):
        gpus.arch("sm_70")


def test_arch_limits():
    a = gpus.ARCHS["sm_90"]
    assert (a.shared_per_sm, a.shared_per_block_optin) == (233472, 232448)
    assert a.shared_per_sm - a.shared_per_block_optin == a.shared_reserved_per_block == 1024
    assert (a.register_unit, a.shared_granularity, a.shared_per_block_default) == (256, 128, 49152)
    for name, a in gpus.ARCHS.items():
        assert a.max_threads_per_sm == a.max_warps_per_sm * 32
        assert a.shared_carveouts_kib[-1] * 1024 == a.shared_per_sm


# --------------------------------------------------------------------------- occupancy

def test_register_limited():
    # sm_90, 256 threads = 8 warps, 128 registers:
    #   registers/warp = 128*32 = 4096 (a multiple of 256); 16384/4096 = 4 warps per
    #   sub-partition -> 16 warps/SM -> 16/8 = 2 blocks.
    #   threads: 64/8 = 8; shared: (0+1024) -> 233472/1024 = 228; blocks: 32.
    #   -> 2 blocks, 16 warps, 16/64 = 25 %, registers.
    o = occupancy("sm_90", 256, 128)
    assert o.limits == {"threads": 8, "registers": 2, "shared": 228, "blocks": 32}
    assert (o.blocks_per_sm, o.warps_per_sm, o.occupancy) == (2, 16, 0.25)
    assert o.limiter == ("registers",)
    assert o.registers_per_warp == 4096 and o.runs


def test_register_allocation_unit_rounds_up():
    # sm_90, 256 threads = 8 warps, 33 registers:
    #   33*32 = 1056 -> rounded up to 1280 (5 x 256); 16384/1280 = 12.8 -> 12 warps per
    #   sub-partition -> 48 warps/SM -> 48/8 = 6 blocks (unrounded, 1056, would give
    #   15 per sub-partition, 60 warps, 7 blocks).
    #   -> 6 blocks, 48 warps, 75 %, registers.
    o = occupancy("sm_90", 256, 33)
    assert o.registers_per_warp == 1280
    assert (o.blocks_per_sm, o.warps_per_sm, o.occupancy) == (6, 48, 0.75)
    assert o.limiter == ("registers",)


def test_registers_are_split_over_sub_partitions():
    # sm_90, 64 threads = 2 warps, 40 registers:
    #   40*32 = 1280; per sub-partition 16384/1280 = 12.8 -> 12; 4 x 12 = 48 warps ->
    #   48/2 = 24 blocks (the whole file, 65536/1280 = 51 warps, would allow 25).
    #   threads: 64/2 = 32; blocks: 32.  -> 24 blocks, 48 warps, 75 %, registers.
    o = occupancy("sm_90", 64, 40)
    assert o.limits["registers"] == 24
    assert (o.blocks_per_sm, o.warps_per_sm, o.occupancy) == (24, 48, 0.75)
    assert o.limiter == ("registers",)


def test_shared_limited():
    # sm_90, 128 threads = 4 warps, 32 registers, 48 KiB static shared:
    #   shared/block = 49152 + 1024 = 50176 (= 392 x 128); 233472/50176 = 4.65 -> 4.
    #   registers: 32*32 = 1024; 16384/1024 = 16 -> 64 warps -> 16 blocks; threads:
    #   64/4 = 16; blocks: 32.  -> 4 blocks, 16 warps, 25 %, shared.
    o = occupancy("sm_90", 128, 32, static_shared=48 * 1024)
    assert o.shared_per_block == 50176
    assert o.limits == {"threads": 16, "registers": 16, "shared": 4, "blocks": 32}
    assert (o.blocks_per_sm, o.warps_per_sm, o.occupancy) == (4, 16, 0.25)
    assert o.limiter == ("shared",) and not o.needs_opt_in


def test_shared_reserve_and_granularity():
    # sm_89 (100 KiB = 102400 B per SM), 128 threads, 32 registers:
    #   24576 B dynamic: 24576 + 1024 = 25600 (= 200 x 128) -> 102400/25600 = 4 blocks;
    #   24577 B: 25601 -> rounded to 25728 -> 102400/25728 = 3.98 -> 3 blocks.
    #   (threads: 48/4 = 12, registers: 16 per sub-partition -> 64 -> 16, blocks: 24)
    assert occupancy("sm_89", 128, 32, dynamic_shared=24576).blocks_per_sm == 4
    o = occupancy("sm_89", 128, 32, dynamic_shared=24577)
    assert o.shared_per_block == 25728
    assert (o.blocks_per_sm, o.limiter) == (3, ("shared",))
    assert o.occupancy == pytest.approx(12 / 48)


def test_dynamic_shared_above_48k_needs_the_opt_in():
    # sm_90, 256 threads, 64 registers, 64 KiB dynamic: above the 48 KiB default, so the
    #   kernel must opt in; 65536 + 1024 = 66560 -> 233472/66560 = 3.5 -> 3 blocks.
    #   registers: 64*32 = 2048; 16384/2048 = 8 -> 32 warps -> 4 blocks; threads: 8.
    #   -> 3 blocks, 24 warps, 37.5 %, shared.
    o = occupancy("sm_90", 256, 64, dynamic_shared=64 * 1024)
    assert o.needs_opt_in
    assert (o.blocks_per_sm, o.warps_per_sm, o.occupancy, o.limiter) == (3, 24, 0.375, ("shared",))


def test_block_limited():
    # sm_90, 32 threads = 1 warp, 16 registers: threads 64/1 = 64; registers 16*32 = 512,
    #   16384/512 = 32 -> 128 warps -> 128 blocks; shared 228; block cap 32.
    #   -> 32 blocks, 32 warps, 50 %, blocks.
    o = occupancy("sm_90", 32, 16)
    assert (o.blocks_per_sm, o.warps_per_sm, o.occupancy, o.limiter) == (32, 32, 0.5, ("blocks",))
    # sm_86 caps blocks at 16: 16 warps of 48 = 33 %.
    o = occupancy("a10", 32, 16)
    assert (o.blocks_per_sm, o.warps_per_sm, o.limiter) == (16, 16, ("blocks",))
    assert o.occupancy == pytest.approx(1 / 3)


def test_thread_limited():
    # sm_90, 1024 threads = 32 warps, 16 registers: threads 64/32 = 2; registers 512 per
    #   warp, 32 per sub-partition -> 128 warps -> 4 blocks; shared 228; blocks 32.
    #   -> 2 blocks, 64 warps, 100 %, threads.
    o = occupancy("sm_90", 1024, 16)
    assert (o.blocks_per_sm, o.warps_per_sm, o.occupancy, o.limiter) == (2, 64, 1.0, ("threads",))
    # sm_89: 48/32 = 1 block, 32 of 48 warps = 66.7 %.
    o = occupancy("rtx4090", 1024, 16)
    assert (o.blocks_per_sm, o.limiter) == (1, ("threads",))
    assert o.occupancy == pytest.approx(2 / 3)


def test_partial_warps_count_as_whole_warps():
    # 100 threads = 4 warps (the last one partial); sm_90, 32 registers: threads 64/4 = 16,
    #   registers 1024/warp -> 64 warps -> 16 blocks.  -> 16 blocks, 64 warps, tie.
    o = occupancy("sm_90", 100, 32)
    assert o.warps_per_block == 4
    assert (o.blocks_per_sm, o.warps_per_sm) == (16, 64)
    assert o.limiter == ("threads", "registers")


def test_too_many_registers_for_a_block():
    # 1024 threads = 32 warps x 128 registers: 32 x 4096 = 131072 > 65536 per block.
    o = occupancy("sm_90", 1024, 128)
    assert not o.runs and o.blocks_per_sm == 0 and o.limiter == ("launch",)
    assert "too many registers" in o.reason and "131072 > 65536" in o.reason
    with pytest.raises(LaunchImpossible, match="too many registers"):
        require("sm_90", 1024, 128)


def test_registers_fail_the_sub_partition_check():
    # 288 threads = 9 warps x 224 registers: 224*32 = 7168 per warp; 9 x 7168 = 64512 fits
    #   the 65536 per block, but the 9 warps take 3 per sub-partition (rounded to 12):
    #   12 x 7168 = 86016 > 65536 (3 x 7168 = 21504 > 16384 per sub-partition).
    o = occupancy("sm_90", 288, 224)
    assert not o.runs
    assert "sub-partition" in o.reason


def test_too_much_shared_memory():
    # 228 KiB dynamic = 233472 > the 232448 a block may opt into on sm_90.
    o = occupancy("sm_90", 128, 32, dynamic_shared=228 * 1024)
    assert not o.runs and "233472 bytes of shared memory" in o.reason
    assert "232448" in o.reason
    # static shared memory is limited to 48 KiB whatever the opt-in
    o = occupancy("sm_90", 128, 32, static_shared=48 * 1024 + 4)
    assert not o.runs and "static" in o.reason
    # what fits on an H100 does not on an RTX 4090 (99 KiB per block)
    assert occupancy("h100", 128, 32, dynamic_shared=150 * 1024).runs
    assert not occupancy("rtx4090", 128, 32, dynamic_shared=150 * 1024).runs


def test_too_many_threads_or_registers_per_thread():
    assert "1025 threads" in occupancy("sm_90", 1025, 32).reason
    assert "256 registers" in occupancy("sm_90", 32, 256).reason
    with pytest.raises(ValueError):
        occupancy("sm_90", 0, 32)


def test_describe():
    assert "limited by registers" in occupancy("sm_90", 256, 128).describe()
    assert occupancy("sm_90", 1024, 128).describe().startswith("cannot launch on sm_90")
