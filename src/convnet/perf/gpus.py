"""The GPUs the performance figures are computed for, and their architectures' limits.

Two tables:

* ``ARCHS``: per compute capability (``sm_80``, ``sm_86``, ``sm_89``, ``sm_90``),
  the limits the occupancy rules need: threads, warps and blocks per SM, the
  register file and its allocation unit, shared memory per SM, per block (the 48
  KiB default and the opt-in maximum) and its allocation granularity, and the 1
  KiB the driver reserves per block on sm_80 and later.
* ``GPUS``: per product, its architecture, SM count, boost clock, dense peaks
  (FP32 on the CUDA cores, TF32 and BF16 on the tensor cores), memory bandwidth,
  L2 size and memory size.

Sources, cited again beside each number:

[PG]   CUDA C++ Programming Guide, "Features and Technical Specifications",
       table "Technical Specifications per Compute Capability", and the
       per-architecture sections listing the shared-memory carveouts
       (docs.nvidia.com/cuda/cuda-c-programming-guide/).
[OCC]  ``cuda_occupancy.h`` (the occupancy calculator shipped with the CUDA
       toolkit, 12.x/13.x): ``cudaOccRegAllocationGranularity`` = 256 registers
       per warp, ``cudaOccSubPartitionsPerMultiprocessor`` = 4,
       ``cudaOccSMemAllocationGranularity`` = 128 bytes for compute capability 8
       and 9, ``reservedSharedMemPerBlock`` = 1024 bytes on 8.0 and later.
[H100] NVIDIA H100 Tensor Core GPU datasheet and the Hopper architecture
       whitepaper (H100 SXM5: 132 SMs, 1980 MHz boost, 50 MB L2, 3.35 TB/s).
[H200] NVIDIA H200 Tensor Core GPU datasheet (same GH100 compute as the H100
       SXM; 141 GB HBM3e at 4.8 TB/s).
[A100] NVIDIA A100 Tensor Core GPU datasheet and the Ampere (GA100)
       architecture whitepaper (108 SMs, 1410 MHz boost, 40 MB L2, 2,039 GB/s
       for the 80GB SXM4).
[ADA]  NVIDIA Ada Lovelace (AD102) architecture whitepaper, RTX 4090 column
       (128 SMs, 2520 MHz boost, 72 MB L2, 1,008 GB/s).
[A10]  NVIDIA A10 Tensor Core GPU datasheet (72 SMs, 1695 MHz boost, 6 MB L2,
       600 GB/s).

Assumptions:

* Peaks are *dense* (datasheets print tensor-core figures "with sparsity",
  twice these; they are halved here) and at the *boost* clock; a GPU under a
  power or thermal limit runs slower.
* FP32 peak = SMs x FP32 lanes per SM x 2 (an FMA is two FLOPs) x boost clock;
  the table holds the datasheet figure and a test checks it against that product.
* BF16 on the RTX 4090 is the rate with FP32 accumulation (a GeForce part
  accumulates in FP32 at half its FP16-accumulate rate).
* KB/MB in datasheets are binary for on-chip memories (L2, shared memory) and
  decimal for memory bandwidth (1 GB/s = 1e9 B/s).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

KiB = 1024
MiB = 1024 * KiB


class UnknownGPU(KeyError):
    """A GPU or architecture name the tables do not hold."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0])


@dataclass(frozen=True)
class Arch:
    """The per-SM limits of one compute capability (the occupancy rules' inputs)."""

    name: str                       # "sm_90"
    max_threads_per_sm: int
    max_warps_per_sm: int
    max_blocks_per_sm: int
    shared_per_sm: int              # bytes: the largest shared-memory carveout
    shared_per_block_optin: int     # bytes: the most one block may use (cudaFuncSetAttribute opt-in)
    shared_carveouts_kib: tuple[int, ...]  # the shared-memory sizes an SM can be configured with
    shared_per_block_default: int = 48 * KiB   # [PG] without the opt-in (and the static limit)
    shared_reserved_per_block: int = 1 * KiB   # [OCC] the driver's reserve, per block, sm_80+
    shared_granularity: int = 128   # [OCC] shared memory is allocated in 128-byte units (cc 8, 9)
    registers_per_sm: int = 64 * 1024          # [PG] 64K 32-bit registers per SM
    registers_per_block: int = 64 * 1024       # [PG] at most 64K registers per block
    max_registers_per_thread: int = 255        # [PG] 255 per thread
    register_unit: int = 256        # [OCC] registers are allocated per warp, in units of 256
    sub_partitions: int = 4         # [OCC] warps are spread over 4 SM sub-partitions
    max_threads_per_block: int = 1024          # [PG]
    warp_size: int = 32

    @property
    def major(self) -> int:
        return int(self.name[3:]) // 10


ARCHS: dict[str, Arch] = {
    # [PG] compute capability 8.0 (A100): 2048 threads / 64 warps / 32 blocks per SM;
    # shared memory per SM 164 KB, per block 163 KB (opt-in); carveouts 0, 8, 16, 32,
    # 64, 100, 132, 164 KB.
    "sm_80": Arch("sm_80", max_threads_per_sm=2048, max_warps_per_sm=64, max_blocks_per_sm=32,
                  shared_per_sm=164 * KiB, shared_per_block_optin=163 * KiB,
                  shared_carveouts_kib=(0, 8, 16, 32, 64, 100, 132, 164)),
    # [PG] compute capability 8.6 (GA10x: A10, RTX 30): 1536 threads / 48 warps / 16
    # blocks per SM; 100 KB per SM, 99 KB per block; carveouts 0, 8, 16, 32, 64, 100 KB.
    "sm_86": Arch("sm_86", max_threads_per_sm=1536, max_warps_per_sm=48, max_blocks_per_sm=16,
                  shared_per_sm=100 * KiB, shared_per_block_optin=99 * KiB,
                  shared_carveouts_kib=(0, 8, 16, 32, 64, 100)),
    # [PG] compute capability 8.9 (Ada: RTX 40, L4, L40): 1536 threads / 48 warps / 24
    # blocks per SM; shared memory as 8.6.
    "sm_89": Arch("sm_89", max_threads_per_sm=1536, max_warps_per_sm=48, max_blocks_per_sm=24,
                  shared_per_sm=100 * KiB, shared_per_block_optin=99 * KiB,
                  shared_carveouts_kib=(0, 8, 16, 32, 64, 100)),
    # [PG] compute capability 9.0 (Hopper): 2048 threads / 64 warps / 32 blocks per SM;
    # 228 KB per SM, 227 KB per block; carveouts 0, 8, 16, 32, 64, 100, 132, 164, 196,
    # 228 KB.
    "sm_90": Arch("sm_90", max_threads_per_sm=2048, max_warps_per_sm=64, max_blocks_per_sm=32,
                  shared_per_sm=228 * KiB, shared_per_block_optin=227 * KiB,
                  shared_carveouts_kib=(0, 8, 16, 32, 64, 100, 132, 164, 196, 228)),
}


@dataclass(frozen=True)
class GPU:
    """One product: its architecture, size, clock, peaks and memory system."""

    key: str                  # the short name: "h100"
    name: str                 # "NVIDIA H100 SXM5 80GB"
    arch: Arch
    sms: int
    boost_clock_mhz: int
    fp32_lanes_per_sm: int    # FP32 FMA lanes ("CUDA cores") per SM
    fp32_tflops: float        # dense FP32 on the CUDA cores
    tf32_tflops: float        # dense TF32 on the tensor cores
    bf16_tflops: float        # dense BF16 on the tensor cores, FP32 accumulation
    memory_bandwidth_gbs: float   # DRAM bandwidth, 1e9 bytes/s
    l2_bytes: int
    memory_bytes: int
    source: str               # the citation key(s) of the module docstring

    @property
    def fp32_flops(self) -> float:
        """The FP32 peak in FLOP/s."""
        return self.fp32_tflops * 1e12

    @property
    def memory_bandwidth(self) -> float:
        """DRAM bandwidth in bytes/s."""
        return self.memory_bandwidth_gbs * 1e9

    @property
    def fp32_tflops_computed(self) -> float:
        """SMs x lanes x 2 FLOPs x boost clock: what the datasheet FP32 figure should equal."""
        return self.sms * self.fp32_lanes_per_sm * 2 * self.boost_clock_mhz * 1e6 / 1e12


GPUS: dict[str, GPU] = {
    # [H100] H100 SXM5: 132 SMs x 128 FP32 lanes at 1980 MHz = 66.9 TFLOP/s ("67");
    # TF32 989 / BF16 1979 TFLOP/s with sparsity -> 494.7 / 989.4 dense; HBM3 3.35 TB/s;
    # 50 MB L2; 80 GB.
    "h100": GPU("h100", "NVIDIA H100 SXM5 80GB", ARCHS["sm_90"], sms=132, boost_clock_mhz=1980,
                fp32_lanes_per_sm=128, fp32_tflops=66.9, tf32_tflops=494.7, bf16_tflops=989.4,
                memory_bandwidth_gbs=3350, l2_bytes=50 * MiB, memory_bytes=80 * 10**9,
                source="H100"),
    # [H200] H200 SXM: the H100 SXM's GH100 compute (same SMs, clock, peaks), 141 GB
    # HBM3e at 4.8 TB/s, 50 MB L2.
    "h200": GPU("h200", "NVIDIA H200 SXM 141GB", ARCHS["sm_90"], sms=132, boost_clock_mhz=1980,
                fp32_lanes_per_sm=128, fp32_tflops=66.9, tf32_tflops=494.7, bf16_tflops=989.4,
                memory_bandwidth_gbs=4800, l2_bytes=50 * MiB, memory_bytes=141 * 10**9,
                source="H200"),
    # [A100] A100 80GB SXM4: 108 SMs x 64 FP32 lanes at 1410 MHz = 19.5 TFLOP/s; TF32 156,
    # BF16 312 dense (312 / 624 with sparsity); HBM2e 2,039 GB/s; 40 MB L2.
    "a100": GPU("a100", "NVIDIA A100 80GB SXM4", ARCHS["sm_80"], sms=108, boost_clock_mhz=1410,
                fp32_lanes_per_sm=64, fp32_tflops=19.5, tf32_tflops=156.0, bf16_tflops=312.0,
                memory_bandwidth_gbs=2039, l2_bytes=40 * MiB, memory_bytes=80 * 10**9,
                source="A100"),
    # [ADA] RTX 4090: 128 SMs x 128 FP32 lanes at 2520 MHz = 82.6 TFLOP/s; TF32 tensor 82.6
    # dense (165.2 sparse); FP16/BF16 tensor with FP32 accumulate 165.2 dense (330.3
    # sparse); GDDR6X 21 Gbps x 384 bit = 1,008 GB/s; 72 MB L2; 24 GB.
    "rtx4090": GPU("rtx4090", "NVIDIA GeForce RTX 4090", ARCHS["sm_89"], sms=128,
                   boost_clock_mhz=2520, fp32_lanes_per_sm=128, fp32_tflops=82.6,
                   tf32_tflops=82.6, bf16_tflops=165.2, memory_bandwidth_gbs=1008,
                   l2_bytes=72 * MiB, memory_bytes=24 * 2**30, source="ADA"),
    # [A10] A10: 72 SMs x 128 FP32 lanes at 1695 MHz = 31.2 TFLOP/s; TF32 62.5, BF16 125
    # dense (125 / 250 with sparsity); GDDR6 600 GB/s; 6 MB L2; 24 GB.
    "a10": GPU("a10", "NVIDIA A10", ARCHS["sm_86"], sms=72, boost_clock_mhz=1695,
               fp32_lanes_per_sm=128, fp32_tflops=31.2, tf32_tflops=62.5, bf16_tflops=125.0,
               memory_bandwidth_gbs=600, l2_bytes=6 * MiB, memory_bytes=24 * 2**30,
               source="A10"),
}

# Other spellings (compared with everything but letters and digits removed).
_ALIASES = {
    "h100sxm": "h100", "h100sxm5": "h100", "h100sxm80gb": "h100",
    "h200sxm": "h200", "h200sxm141gb": "h200",
    "a10080gb": "a100", "a100sxm": "a100", "a100sxm4": "a100", "a10080gbsxm": "a100",
    "a10080gbsxm4": "a100",
    "4090": "rtx4090", "geforcertx4090": "rtx4090",
}


def _normal(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


def known() -> list[str]:
    """The short names ``gpu()`` accepts."""
    return list(GPUS)


def gpu(name: str | GPU) -> GPU:
    """The GPU called ``name`` (``h100``, ``h200``, ``a100``, ``rtx4090``, ``a10``; case,
    spaces and dashes do not matter: ``"H100 SXM"`` works); UnknownGPU otherwise."""
    if isinstance(name, GPU):
        return name
    key = _normal(name)
    key = _ALIASES.get(key, key)
    if key not in GPUS:
        raise UnknownGPU(f"unknown GPU {name!r}; known: {', '.join(GPUS)}")
    return GPUS[key]


def arch(name: str | int | Arch | GPU) -> Arch:
    """The architecture limits for ``"sm_90"`` (also ``"sm90"``, ``90``), for a GPU (its
    architecture) or a GPU's short name; UnknownGPU listing the known ones otherwise."""
    if isinstance(name, Arch):
        return name
    if isinstance(name, GPU):
        return name.arch
    match = re.fullmatch(r"(?:sm_?)?(\d{2,3})[a-z]?", str(name).strip().lower())
    if match:
        key = f"sm_{match.group(1)}"
        if key in ARCHS:
            return ARCHS[key]
        raise UnknownGPU(f"no limits for architecture {name!r}; known: {', '.join(ARCHS)}")
    try:
        return gpu(name).arch
    except UnknownGPU:
        raise UnknownGPU(f"unknown architecture or GPU {name!r}; architectures: "
                         f"{', '.join(ARCHS)}; GPUs: {', '.join(GPUS)}") from None
