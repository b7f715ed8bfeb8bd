"""The launch model: a predicted time for one kernel launch on a named GPU.

    time = max(compute, issue, DRAM, L1, shared) + LAUNCH_OVERHEAD_S

* **compute** = FLOPs / (FP32 peak x issue x latency x waves), where

  - *issue* is the share of the FP32 peak the main loop's instruction mix can reach:
    its math share of issue slots (``convnet.perf.sass``; the whole kernel's mix for
    a kernel without loops). A sub-partition issues one warp instruction per clock;
    where it has fewer than 32 FP32 lanes (sm_80: 16) a warp's FFMA holds the pipe
    longer, so issue = min(1, math share x 32 / lanes per sub-partition).
  - *latency* is what too few warps cost: with w resident warps per scheduler (4
    schedulers per SM; warps = resident blocks per SM from the occupancy rules, or
    fewer where the grid is smaller, x warps per block), latency = min(1, 0.25 +
    0.25 w): one warp issues half the time (it waits on its own shared-memory and
    FMA dependencies), two 75 %, three or more hide the latency. Chosen, not
    measured: the first GPU run (``benchmarks/gpu_check.sh``) calibrates it.
  - *waves* is the wave quantisation: blocks / (SMs x resident blocks per SM) =
    waves; efficiency = waves / ceil(waves) (a 1.28-wave grid runs 2 waves at 64 %);
    a grid of less than one wave keeps only min(1, blocks / SMs) of the SMs busy.

  Where the FLOPs are nominal (a byte-bound kernel: main loop < EXACT_FLOPS_MATH_SHARE
  math) and the executed instructions are counted, there is no compute term: FLOPs /
  math share would only estimate, from nominal figures, the issue slots the count gives
  (its FP32 work is in the issue term's FP32 pipe).
* **tensor cores** (a launch whose ``tensor`` is "tf32" or "bf16", ``ops.conv_tc``):
  compute = FLOPs / (the GPU's dense peak of that precision x latency x waves); the
  instruction mix does not scale it (HMMA is a small share of any mix: the issue term
  below counts what the other instructions cost), the counts are not normalised to the
  FLOPs (no FP32 GEMM), and ``% peak`` of a compute bound is against that peak.
* **issue** = the launch's executed warp instructions (``convnet.perf.dynamic``: the
  SASS loops' trip counts inferred from the emulator's requests per source line) /
  (SMs x 4 schedulers x 1 warp instruction per clock x clock x latency x waves).
  Issue model: each scheduler issues one warp instruction per clock; an instruction
  on a pipe narrower than the warp holds that pipe 32 / (its lanes per scheduler)
  clocks, so a scheduler needs max(all instructions, each pipe's instructions x 32 /
  lanes) clocks. Pipe rates, results per clock per SM (CUDA C++ Programming Guide,
  "Arithmetic Instructions", throughput table; ``PIPE_RESULTS_PER_CLOCK``): FP64
  add/mul/fma 64 on sm_90 (the H100 SXM's FP64 is 1/2 of FP32: 33.5 TFLOP/s =
  132 x 64 x 2 x 1.98 GHz), 32 on sm_80, 2 on sm_86/89; MUFU (rcp, rsqrt, lg2, ex2,
  sin, cos) 16; conversions F2F/F2I/I2F/FRND 16; FP32 add/mul/fma the FP32 lanes
  (128; 64 on sm_80); everything else one per scheduler per clock (integer, shared
  and global instructions' issue; their memory side is the terms below). Without
  emulator figures there is no count and no issue term. In GEMM-like kernels (main
  loop >= 50 % math) the FLOP count is exact, so the counts are scaled until the
  counted FP32 instructions equal FLOPs / 64 (``normalised_counts``): trip counts solved
  from memory requests over- or under-shoot where the emulator's g++ build groups its
  loads differently from the SASS loop (seen: 0.76-1.32x on the conv passes).
* **DRAM** = bytes / memory bandwidth, bytes = the emulator's global bytes loaded
  (sectors x 32, scaled to the real problem) capped by the bytes of the arrays the
  launch reads, plus the bytes stored capped by those of the arrays it writes
  (without emulator figures: the two footprints). *L2-reuse assumption:* every array byte a
  launch touches crosses the DRAM interface once; re-reads (a convolution's input
  gathered R x S times, its filters read by every column block, a reduction's
  operands) are served by L1/L2. Optimistic where a launch's working set exceeds
  L2 (50 MB on the H100; AlexNet's conv1 output at batch 128 is 149 MB, but it is
  streamed in order).
* **L1** = the emulator's global bytes moved (every request's sectors, no caches: the
  traffic between the SMs and their L1) / (SMs x L1_BYTES_PER_CLOCK x clock):
  poorly coalesced requests cost here.
* **shared** = shared-memory wavefronts (the emulator's, bank conflicts included) /
  (SMs x one wavefront per clock x clock).
* **launch**: LAUNCH_OVERHEAD_S, the gap between back-to-back kernels of one stream
  (about 2 us on current GPUs and drivers), added to every launch.
* **cuBLAS GEMMs** (the fully-connected layers' matrix products, which are not ours):
  max(FLOPs / (FP32 peak x GEMM_EFFICIENCY), footprint / bandwidth) + launch;
  FP32 SGEMM (CuPy does not enable TF32 by default).

The *bound* names the largest term, and for compute the smallest of its factors:
``math`` (the FP32 share of the instruction mix), ``latency`` (occupancy), ``waves``;
``issue`` where the executed instructions take longest; memory terms
are ``DRAM``, ``L1``, ``shared``; ``launch`` where the fixed overhead exceeds all;
``cuBLAS`` for the GEMMs. ``% peak`` is the achieved rate against the bound's own
peak (FP32 FLOP/s for the compute bounds, issue slots for ``issue``, the bandwidth
for the memory ones); ``pct_hbm`` is every launch's DRAM bytes / time / bandwidth.

What it cannot see: clocks below boost (power, heat), L2 misses of working sets
larger than L2, DRAM page and refresh effects, instruction-cache misses, dual issue
and register-bank stalls, predicated-off and branched-around instructions (the issue
term counts them on every pass), dependencies between launches (each is timed alone), and transfers
between GPUs (the two-column network's).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from . import gpus
from .occupancy import occupancy

LAUNCH_OVERHEAD_S = 2e-6      # per launch, back-to-back in one stream
L1_BYTES_PER_CLOCK = 128      # per SM: one 4-sector (128-byte) request per clock
SHARED_WAVEFRONTS_PER_CLOCK = 1   # per SM: 32 banks x 4 bytes
GEMM_EFFICIENCY = 0.7         # cuBLAS FP32 SGEMM on large matrices, share of the FP32 peak
SCHEDULERS_PER_SM = 4
# Results per clock per SM of the pipes narrower than a warp per scheduler (see the
# docstring; CUDA C++ Programming Guide, throughput of native arithmetic instructions).
PIPE_RESULTS_PER_CLOCK = {
    "sm_80": {"fp32": 64, "fp64": 32, "mufu": 16, "convert": 16},
    "sm_86": {"fp32": 128, "fp64": 2, "mufu": 16, "convert": 16},
    "sm_89": {"fp32": 128, "fp64": 2, "mufu": 16, "convert": 16},
    "sm_90": {"fp32": 128, "fp64": 64, "mufu": 16, "convert": 16},
}


@dataclass(frozen=True)
class KernelInputs:
    """What the model needs of one launch (``convnet.perf.layers`` gathers it)."""

    name: str                  # kernel name expression, or "cuBLAS sgemm ..." for a GEMM
    blocks: int
    threads_per_block: int
    flops: float
    read_bytes: float          # footprint: the bytes of the arrays the launch reads
    write_bytes: float         # ... and writes
    registers: int = 0
    static_shared: int = 0
    dynamic_shared: int = 0
    math_share: float = 1.0    # the main loop's (or kernel's) math share of issue slots
    load_bytes: float | None = None         # emulator: global bytes loaded, scaled
    store_bytes: float | None = None        # emulator: global bytes stored, scaled
    shared_wavefronts: float | None = None  # emulator: shared wavefronts, scaled
    gemm: bool = False
    instructions: float | None = None       # executed warp instructions (convnet.perf.dynamic)
    pipe_instructions: dict | None = None   # of them, per pipe: fp32, fp64, mufu, convert
    tensor: str | None = None               # "tf32"/"bf16": FLOPs on the tensor cores


@dataclass(frozen=True)
class Prediction:
    """One launch's predicted time and its parts (seconds)."""

    gpu: str
    name: str
    time_s: float
    compute_s: float
    dram_s: float
    l1_s: float
    shared_s: float
    bound: str
    pct_peak: float            # of the bound's resource (0 for launch)
    blocks_per_sm: int = 0
    occupancy: float = 0.0
    waves: float = 0.0
    wave_efficiency: float = 1.0
    latency_factor: float = 1.0
    issue_factor: float = 1.0
    dram_bytes: float = 0.0
    issue_s: float = 0.0       # the executed instructions' issue time
    issue_cycles: float = 0.0  # scheduler clocks they need, summed over schedulers
    pct_hbm: float = 0.0       # DRAM bytes / time (without launch overhead) / bandwidth

    def as_dict(self) -> dict:
        return asdict(self)


def issue_factor(gpu: gpus.GPU, math_share: float) -> float:
    """The share of the FP32 peak an issue-bound loop with ``math_share`` reaches."""
    lanes = gpu.fp32_lanes_per_sm / SCHEDULERS_PER_SM
    return min(1.0, max(0.0, math_share) * gpu.arch.warp_size / lanes)


def tensor_flops(gpu: gpus.GPU, precision: str) -> float:
    """The dense tensor-core peak of ``precision`` ("tf32" or "bf16") in FLOP/s."""
    return (gpu.tf32_tflops if precision == "tf32" else gpu.bf16_tflops) * 1e12


def latency_factor(warps_per_scheduler: float) -> float:
    """Issue rate with ``warps_per_scheduler`` resident warps (see the docstring)."""
    return min(1.0, 0.25 + 0.25 * max(0.0, warps_per_scheduler))


def wave_efficiency(blocks: int, sms: int, blocks_per_sm: int) -> tuple[float, float]:
    """``(waves, efficiency)`` of a grid of ``blocks`` on ``sms`` SMs holding
    ``blocks_per_sm`` each (see the docstring)."""
    per_wave = sms * blocks_per_sm
    waves = blocks / per_wave
    if waves >= 1:
        return waves, waves / math.ceil(waves)
    return waves, min(1.0, blocks / sms)


def issue_cycles(gpu: gpus.GPU, instructions: float, pipes: dict | None) -> float:
    """Scheduler clocks (over all schedulers) to issue ``instructions`` warp
    instructions of which ``pipes[p]`` go to pipe ``p``: max(all, each pipe's count x
    32 / its lanes per scheduler)."""
    rates = PIPE_RESULTS_PER_CLOCK.get(gpu.arch.name, PIPE_RESULTS_PER_CLOCK["sm_90"])
    need = instructions
    for name, count in (pipes or {}).items():
        per_scheduler = rates.get(name)
        if per_scheduler:
            need = max(need, count * gpu.arch.warp_size / (per_scheduler / SCHEDULERS_PER_SM))
    return need


def dram_bytes(k: KernelInputs) -> float:
    """Bytes across the DRAM interface: loads capped by the read footprint, stores by
    the write footprint (the L2-reuse assumption); the footprints without emu figures."""
    loads = k.read_bytes if k.load_bytes is None else min(k.load_bytes, k.read_bytes)
    stores = k.write_bytes if k.store_bytes is None else min(k.store_bytes, k.write_bytes)
    return loads + stores


def _l1_bytes(k: KernelInputs) -> float:
    return (k.load_bytes or 0.0) + (k.store_bytes or 0.0)


def _memory(gpu: gpus.GPU, k: KernelInputs) -> tuple[float, float, float, float]:
    moved = dram_bytes(k)
    clock = gpu.boost_clock_mhz * 1e6
    dram = moved / gpu.memory_bandwidth
    l1 = _l1_bytes(k) / (gpu.sms * L1_BYTES_PER_CLOCK * clock)
    shared = (k.shared_wavefronts or 0.0) / (gpu.sms * SHARED_WAVEFRONTS_PER_CLOCK * clock)
    return moved, dram, l1, shared


# Kernels whose main loop is at least this much math are GEMM-like: their FLOPs are
# exact, so the executed-instruction count is normalised to them (below).
EXACT_FLOPS_MATH_SHARE = 0.5
FLOPS_PER_FP32_INSTRUCTION = 64  # one FFMA warp instruction: 32 lanes x 2 flops


def normalised_counts(k: KernelInputs) -> tuple[float | None, dict | None]:
    """The executed warp instructions and their per-pipe counts, with the trip counts
    (inferred from emu's memory requests) corrected by the FLOP count where that count is
    exact: in an FP32 GEMM-like kernel (main loop and counted instructions each at least
    EXACT_FLOPS_MATH_SHARE FP32 math) the counted FP32 instructions must equal FLOPs / 64
    (FFMA), so every count is scaled by that ratio. Elsewhere (byte-bound kernels, whose FLOPs are nominal) the counts stand."""
    if not k.instructions or not k.pipe_instructions or not k.flops \
            or k.math_share < EXACT_FLOPS_MATH_SHARE:
        return k.instructions, k.pipe_instructions
    counted = k.pipe_instructions.get("fp32", 0.0)
    if counted < EXACT_FLOPS_MATH_SHARE * k.instructions:  # not an FP32 GEMM (e.g. FP64)
        return k.instructions, k.pipe_instructions
    scale = k.flops / FLOPS_PER_FP32_INSTRUCTION / counted
    return k.instructions * scale, {p: c * scale for p, c in k.pipe_instructions.items()}


def predict(k: KernelInputs, gpu) -> Prediction:
    """The predicted time of one launch on ``gpu`` (a name or ``gpus.GPU``)."""
    g = gpus.gpu(gpu)
    moved, dram, l1, shared = _memory(g, k)
    if k.gemm:
        compute = k.flops / (g.fp32_flops * GEMM_EFFICIENCY)
        body = max(compute, dram)
        bound = "cuBLAS" if compute >= dram else "DRAM"
        pct = (k.flops / body / g.fp32_flops if bound == "cuBLAS"
               else moved / body / g.memory_bandwidth) if body else 0.0
        return Prediction(g.key, k.name, body + LAUNCH_OVERHEAD_S, compute, dram, 0.0, 0.0,
                          bound, pct, dram_bytes=moved)
    occ = occupancy(g.arch, k.threads_per_block, k.registers, k.static_shared,
                    k.dynamic_shared)
    if not occ.runs:
        raise ValueError(f"{k.name}: {occ.describe()}")
    waves, wave_eff = wave_efficiency(k.blocks, g.sms, occ.blocks_per_sm)
    resident = min(occ.blocks_per_sm, math.ceil(k.blocks / g.sms))
    latency = latency_factor(resident * occ.warps_per_block / SCHEDULERS_PER_SM)
    peak = tensor_flops(g, k.tensor) if k.tensor else g.fp32_flops
    issue = 1.0 if k.tensor else issue_factor(g, k.math_share)  # tensor: the issue term counts
    rate = peak * issue * latency * wave_eff
    compute = k.flops / rate if k.flops and rate > 0 else (math.inf if k.flops else 0.0)
    clock = g.boost_clock_mhz * 1e6
    slots = g.sms * SCHEDULERS_PER_SM * clock
    instructions, pipes = normalised_counts(k)
    if instructions and k.math_share < EXACT_FLOPS_MATH_SHARE and not k.tensor:
        compute = 0.0  # nominal FLOPs: the counted instructions (issue) stand for them
    cycles = issue_cycles(g, instructions, pipes) if instructions else 0.0
    issue_s = cycles / (slots * latency * wave_eff) if cycles else 0.0
    terms = {"compute": compute, "issue": issue_s, "DRAM": dram, "L1": l1, "shared": shared}
    largest = max(terms, key=terms.get)
    body = terms[largest]
    if body < LAUNCH_OVERHEAD_S:
        bound, pct = "launch", 0.0
    elif largest == "compute":
        factors = {"math": issue, "latency": latency, "waves": wave_eff}
        bound = min(factors, key=factors.get)
        pct = k.flops / body / peak
    elif largest == "issue":
        bound, pct = "issue", cycles / body / slots
    else:
        bound = largest
        peak_rate = {"DRAM": g.memory_bandwidth, "L1": g.sms * L1_BYTES_PER_CLOCK * clock,
                     "shared": g.sms * SHARED_WAVEFRONTS_PER_CLOCK * clock}[largest]
        amount = {"DRAM": moved, "L1": _l1_bytes(k),
                  "shared": k.shared_wavefronts or 0.0}[largest]
        pct = amount / body / peak_rate
    return Prediction(g.key, k.name, body + LAUNCH_OVERHEAD_S, compute, dram, l1, shared,
                      bound, pct, blocks_per_sm=occ.blocks_per_sm, occupancy=occ.occupancy,
                      waves=waves, wave_efficiency=wave_eff, latency_factor=latency,
                      issue_factor=issue, dram_bytes=moved, issue_s=issue_s,
                      issue_cycles=cycles,
                      pct_hbm=moved / body / g.memory_bandwidth if body else 0.0)


def legend(gpu) -> str:
    """Every assumption, with the GPU's numbers, for printing under a table."""
    g = gpus.gpu(gpu)
    clock = g.boost_clock_mhz * 1e6
    return "\n".join([
        f"All times are PREDICTED for {g.name} ({g.sms} SMs, {g.boost_clock_mhz} MHz boost, "
        f"FP32 {g.fp32_tflops} TFLOP/s, DRAM {g.memory_bandwidth_gbs:.0f} GB/s), not measured.",
        "time = max(compute, issue, DRAM, L1, shared) + launch overhead "
        f"({LAUNCH_OVERHEAD_S * 1e6:.0f} us per launch).",
        "compute = FLOPs / (FP32 peak x math x latency x waves): math = main loop's math share "
        "of issue slots (SASS) scaled to the FP32 lanes per scheduler; latency = min(1, 0.25 + "
        "0.25 x resident warps per scheduler) (chosen, to be calibrated); waves = waves / "
        "ceil(waves) (< 1 wave: busy SMs / SMs); none where FLOPs are nominal (main loop < "
        "50% math) and instructions are counted: the issue term stands for them.",
        "issue = executed warp instructions (SASS loops x trip counts from emu's requests "
        "per source line; straight code once per warp) / (SMs x 4 schedulers x 1 per clock x "
        "latency x waves); a pipe narrower than a warp holds its scheduler 32 / lanes clocks "
        "per instruction: " + ", ".join(
            f"{p} {r}/clk/SM" for p, r in PIPE_RESULTS_PER_CLOCK.get(
                g.arch.name, PIPE_RESULTS_PER_CLOCK["sm_90"]).items()) + " (CUDA guide); "
        "in GEMM-like kernels (main loop >= 50% math) counts scaled so FP32 instructions "
        "= FLOPs / 64.",
        "DRAM = (min(emu bytes loaded, arrays read) + min(emu bytes stored, arrays written)) "
        "/ bandwidth: each array byte crosses "
        "DRAM once, re-reads hit L1/L2 (optimistic past the "
        f"{g.l2_bytes // 2**20} MiB L2).",
        f"L1 = emu global bytes moved (sectors x 32, no caches) / ({L1_BYTES_PER_CLOCK} B/clk/SM = "
        f"{g.sms * L1_BYTES_PER_CLOCK * clock / 1e12:.1f} TB/s); shared = emu wavefronts "
        f"/ (1 per clk per SM).",
        "emu traffic: the same launches (same tiles, chunks and block shapes) run on the "
        "emulator at a reduced batch, figures of sampled blocks; scaled per block x the real "
        "grid's blocks where the grid covers the problem, else by the ratio of elements.",
        f"cuBLAS (fc layers' matmuls, not our kernels): FP32 SGEMM at {GEMM_EFFICIENCY:.0%} of "
        "the FP32 peak, or operands / bandwidth if larger.",
        "bound: math / latency / waves (compute, its smallest factor), issue, DRAM, L1, "
        "shared, launch, cuBLAS; % peak: of that bound's resource; % HBM: DRAM bytes / time.",
        "Not seen: clocks below boost, L2 misses, instruction cache, predicated-off and "
        "branched-around work (issue counts it every pass), "
        "overlap between launches, inter-GPU transfers.",
    ])
