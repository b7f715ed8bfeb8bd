"""Launch shape shared by the elementwise op families (relu, dropout).

1-D, ``BLOCK`` threads a block, each thread taking groups of ``GROUP`` consecutive
elements in a grid-stride loop; as many blocks as cover the array once, capped at
``MAX_BLOCKS`` (on an H100, 132 SMs x 2048 resident threads is 1056 blocks of 256, so
the cap is about four waves; larger arrays are covered by the grid-stride loop,
which keeps the grid small on ``emu``).
"""
from __future__ import annotations

BLOCK = 256
GROUP = 4          # elements per thread per loop trip (one float4)
MAX_BLOCKS = 4096


def grid_for(n: int) -> int:
    """The number of blocks for an elementwise kernel over ``n`` elements (n >= 1)."""
    return max(1, min(-(-int(n) // (BLOCK * GROUP)), MAX_BLOCKS))
