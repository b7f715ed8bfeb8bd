"""Grid sizes from the device, shared by the op families' launch builders.

The elementwise kernels (relu, dropout, sgd, linear's epilogue) are 1-D: ``BLOCK``
threads a block, each thread taking groups of ``GROUP`` consecutive elements (one
float4) in a grid-stride loop, so any grid covers any length. ``grid_for`` gives as
many blocks as cover the array once, capped per device: on ``cuda`` at ``WAVES``
waves of the blocks the GPU holds at once (``resident_threads``); on ``emu`` at
``EMU_MAX_BLOCKS``, since every CUDA thread there is a fiber, costly to start (4M
elements: 1024 blocks run ReLU 2.7x as fast as 4096 on two workers; below 1M
elements the cap is not reached).
"""
from __future__ import annotations

BLOCK = 256
GROUP = 4                 # elements per thread per loop trip (one float4)
WAVES = 4                 # cuda: at most four waves of resident blocks
EMU_MAX_BLOCKS = 1024
RESIDENT_THREADS = 2048   # threads one streaming multiprocessor holds (sm_80, sm_90)


def resident_threads(device) -> int:
    """The threads a ``cuda`` device runs at once (its SMs x ``RESIDENT_THREADS``)."""
    return device.parallel_units * RESIDENT_THREADS


def max_blocks(device) -> int:
    """The most blocks ``grid_for`` gives on ``device``."""
    if device.kind == "cuda":
        return WAVES * resident_threads(device) // BLOCK
    return EMU_MAX_BLOCKS


def grid_for(device, n: int) -> int:
    """The number of blocks for an elementwise kernel over ``n`` elements (n >= 1)."""
    return max(1, min(-(-int(n) // (BLOCK * GROUP)), max_blocks(device)))
