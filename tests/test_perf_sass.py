"""convnet.perf.sass: the machine code of the GPU build (NVRTC + nvdisasm, no GPU), its
loops and their instruction mix, on small kernels with known answers
(tests/kernels/perf_loops.cu), and the static report of a real conv kernel.

The parsing tests run on fixed text and need no tools; the others skip (with the
reason) when NVRTC or nvdisasm is missing — both come with ``pip install -e ".[test]"``.
"""
from pathlib import Path

import pytest

from convnet.perf import sass
from convnet.perf.occupancy import occupancy
from convnet.toolchain.launch import KernelModule
from conftest import require_perf_tools

KERNELS = Path(__file__).parent / "kernels"
LOOPS = KernelModule(str(KERNELS / "perf_loops.cu"),
                     ("perf_ffma_loop", "perf_nested", "perf_no_loop", "perf_shared<1024>"))




_BUILT = {}


def built(arch="sm_90"):
    require_perf_tools()
    if arch not in _BUILT:
        _BUILT[arch] = {k.kernel: k for k in sass.module_sass(LOOPS, arch)}
    return _BUILT[arch]


# --------------------------------------------------------------------------- parsing (no tools)

TEXT = """\
//--------------------- .text.k                   --------------------------
\t.section\t.text.k,"ax",@progbits
k:
.text.k:
        /*0000*/                   LDC R1, c[0x0][0x28] ;
        /*0010*/                   ISETP.GE.AND P0, PT, R2, 0x1, PT ;
        /*0020*/              @!P0 BRA `(.L_x_1) ;
.L_x_0:
        /*0030*/                   LDG.E.128.CONSTANT R4, desc[UR6][R2.64] ;
        /*0040*/                   FFMA R0, R4.reuse, R5, R0 ;
        /*0050*/                   HFMA2.MMA R11, -RZ, RZ, 0, 0 ;
        /*0060*/                   UIADD3 UR4, UR4, 0x1, URZ ;
        /*0070*/               @P1 BRA `(.L_x_0) ;
.L_x_1:
        /*0080*/                   EXIT ;
.L_x_2:
        /*0090*/                   BRA `(.L_x_2);
.L_x_3:
//--------------------- .nv.info.k                 --------------------------
\t//----- nvinfo : EIATTR_MAXREG_COUNT
        /*0000*/ \t.byte\t0x03, 0x1b
        /*0002*/ \t.short\t0x0080
\t//----- nvinfo : EIATTR_MAX_THREADS
        /*0004*/ \t.byte\t0x04, 0x05
        /*0006*/ \t.short\t(.L_9 - .L_8)
.L_8:
        /*0008*/ \t.word\t0x00000080
        /*000c*/ \t.word\t0x00000001
        /*0010*/ \t.word\t0x00000001
//--------------------- SYMBOLS --------------------------
"""


def test_parse_instructions_labels_and_info():
    code = sass.parse_disassembly(TEXT)["k"]
    ins = code.instructions
    assert [i.offset for i in ins] == list(range(0, 0xa0, 0x10))
    assert code.labels == {".L_x_0": 0x30, ".L_x_1": 0x80, ".L_x_2": 0x90}
    ldg = ins[3]
    assert (ldg.opcode, ldg.modifiers, ldg.category) == ("LDG", ("E", "128", "CONSTANT"), "global")
    assert ldg.mnemonic == "LDG.E.128.CONSTANT" and ldg.predicate is None
    branch = ins[2]
    assert (branch.predicate, branch.target, branch.is_branch) == ("@!P0", ".L_x_1", True)
    assert ins[4].category == "math" and ins[4].operands == "R0, R4.reuse, R5, R0"
    assert ins[5].category == "integer"  # HFMA2.MMA of zeros: a constant move
    assert ins[6].category == "integer"  # UIADD3: the uniform datapath
    assert [v for d, v in code.info["EIATTR_MAX_THREADS"] if d == "word"] == [128, 1, 1]
    assert [v for d, v in code.info["EIATTR_MAXREG_COUNT"] if d == "short"] == [128]


def test_loops_from_backward_branches():
    code = sass.parse_disassembly(TEXT)["k"]
    loops = sass.find_loops(code.instructions, code.labels)
    # one loop: .L_x_0 (0x30) to the @P1 BRA at 0x70; the forward @!P0 BRA and the
    # "L: BRA L" trap after EXIT are not loops.
    assert len(loops) == 1
    loop = loops[0]
    assert (loop.header, loop.start, loop.end, loop.depth, loop.innermost) == \
        (".L_x_0", 0x30, 0x70, 0, True)
    mix = loop.mix
    # 5 instructions: LDG (global), FFMA (math), HFMA2.MMA + UIADD3 (integer), BRA (control)
    assert mix.total == 5
    assert (mix.count("global"), mix.count("math"), mix.count("integer"), mix.count("control")) \
        == (1, 1, 2, 1)
    assert mix.ffma_share == pytest.approx(1 / 5)


@pytest.mark.parametrize("opcode, category", [
    ("FFMA", "math"), ("HMMA", "math"), ("DFMA", "math"), ("MUFU", "math"),
    ("LDS", "shared"), ("STS", "shared"), ("LDSM", "shared"),
    ("LDG", "global"), ("STG", "global"), ("LD", "global"), ("ST", "global"),
    ("LDGSTS", "global"), ("LDL", "local"), ("BAR", "barrier"), ("DEPBAR", "barrier"),
    ("IMAD", "integer"), ("IADD3", "integer"), ("LEA", "integer"), ("SHF", "integer"),
    ("LOP3", "integer"), ("ISETP", "integer"), ("ULEA", "integer"), ("MOV", "integer"),
    ("F2I", "conversion"), ("I2F", "conversion"), ("BRA", "control"), ("BSSY", "control"),
    ("EXIT", "control"), ("S2R", "other"), ("LDC", "other"), ("ULDC", "other"),
    ("SHFL", "other"),
])
def test_classify(opcode, category):
    assert sass.classify(opcode) == category


def test_missing_nvdisasm_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setenv("CONVNET_NVDISASM", str(tmp_path / "absent"))
    with pytest.raises(sass.DisassemblerUnavailable, match="CONVNET_NVDISASM"):
        sass.nvdisasm_path()
    assert '.[perf]' in sass.INSTALL_HINT and "nvidia-cuda-nvdisasm" in sass.INSTALL_HINT


# --------------------------------------------------------------------------- known kernels

@pytest.mark.parametrize("arch", ["sm_80", "sm_89", "sm_90"])
def test_ffma_loop_share_is_exact(arch):
    # perf_ffma_loop's rolled loop (#pragma unroll 1) does 8 independent fmaf per
    # iteration (no fast math: ptxas can neither merge nor drop them) plus the loop
    # control, which is exactly 3 instructions: the counter's add, the compare and the
    # backward branch. So the body is 11 instructions, 8 of them FFMA: 8/11 = 72.7 %.
    k = built(arch)["perf_ffma_loop"]
    assert len(k.loops) == 1
    loop = k.main_loop
    assert loop is k.loops[0] and loop.innermost and loop.depth == 0
    mix = loop.mix
    assert mix.opcodes["FFMA"] == 8
    assert mix.total == 11
    assert mix.ffma_share == pytest.approx(8 / 11)
    assert mix.share("math") == pytest.approx(8 / 11)
    assert mix.count("control") == 1 and loop.body[-1].opcode == "BRA"
    assert mix.count("integer") == 2  # the add and the compare
    assert loop.forward_branches == 0


def test_nested_loops():
    # perf_nested: an outer rolled loop around an inner rolled loop of 4 fmaf. ptxas
    # may version the outer loop (for m < 1 it keeps a copy without the inner loop),
    # so there is exactly one loop at depth 1, the inner one: 4 FFMA + counter add +
    # compare + branch = 7 instructions (4/7 FFMA); its outer loop holds it, and the
    # outer loop's own mix leaves it out.
    k = built()["perf_nested"]
    inner = [l for l in k.loops if l.depth == 1]
    assert len(inner) == 1
    inner = inner[0]
    assert inner.innermost and k.main_loop is inner
    assert inner.mix.opcodes["FFMA"] == 4 and inner.mix.total == 7
    assert inner.mix.ffma_share == pytest.approx(4 / 7)
    outer = [l for l in k.loops if inner in l.inner]
    assert len(outer) == 1 and not outer[0].innermost
    outer = outer[0]
    assert outer.start < inner.start and inner.end < outer.end
    assert outer.mix.opcodes.get("FFMA", 0) == 0           # inner loop left out
    assert outer.total_mix.opcodes["FFMA"] == 4              # counted once in the whole body
    assert outer.mix.total + inner.mix.total == outer.total_mix.total
    assert outer.mix.opcodes["LDG"] == 1                     # acc[0] += in[t + i]


def test_no_loop():
    # perf_no_loop: straight-line code, one fmaf; the "L: BRA L" after EXIT is no loop.
    k = built()["perf_no_loop"]
    assert k.loops == [] and k.main_loop is None
    assert k.mix.opcodes["FFMA"] == 1
    assert k.mix.opcodes["EXIT"] == 1


def test_shared_kernel_resources():
    # perf_shared<1024>: 1024 floats = 4096 bytes of static shared memory, one barrier,
    # __launch_bounds__(128). Registers: a handful of indices and addresses, no arrays;
    # ptxas 13 gives 14 on sm_90 — asserted as a range that any sane allocation meets.
    k = built()["perf_shared<1024>"]
    r = k.resources
    assert (r.shared_bytes, r.stack_bytes, r.spill_stores, r.spill_loads) == (4096, 0, 0, 0)
    assert 8 <= r.registers <= 32
    assert k.max_threads == 128
    assert k.mix.opcodes["BAR"] == 1
    assert k.mix.count("shared") >= 2  # the STS of the fill and the LDS of the read
    assert k.mangled.startswith("_Z") and k.arch == "sm_90"


def test_static_report_on_known_kernels():
    # perf_shared<1024> at its launch bound, 128 threads = 4 warps: registers <= 32 ->
    # <= 1024 per warp -> >= 16 warps per sub-partition -> >= 16 blocks; shared 4096 + 1024
    # = 5120 -> 233472/5120 = 45 blocks; threads 64/4 = 16; cap 32 -> 16 blocks, 100 %,
    # thread-limited. perf_ffma_loop has no launch bounds: given 256 threads.
    require_perf_tools()
    rows = sass.static_report([LOOPS], "sm_90", block_threads={"perf_ffma_loop": 256})
    by = {row.kernel: row for row in rows}
    assert [row.kernel for row in rows] == list(LOOPS.kernels)
    shared = by["perf_shared<1024>"]
    assert shared.block_threads == 128
    assert (shared.occupancy.blocks_per_sm, shared.occupancy.occupancy) == (16, 1.0)
    assert "threads" in shared.occupancy.limiter
    ffma = by["perf_ffma_loop"]
    assert ffma.block_threads == 256
    assert ffma.occupancy == occupancy("sm_90", 256, ffma.resources.registers)
    assert ffma.ffma_share == pytest.approx(8 / 11) and ffma.math_share == pytest.approx(8 / 11)
    assert by["perf_no_loop"].occupancy is None and by["perf_no_loop"].ffma_share is None
    table = sass.format_static_report(rows)
    assert "perf_ffma_loop" in table and "73%" in table


def test_conv_main_loop():
    # The GPU's main conv tile, conv_forward<128, 128, 8, 8, 8>: 256 threads, each an 8x8
    # thread tile, the k-slice loop fully unrolled over BK = 8, so the main loop holds
    # 8 * 8 * 8 = 512 FFMA per iteration. The rest (shared loads of the fragments, the
    # gather indexing, the barriers, the loop control) must leave FFMA the majority of the
    # issue slots; no spills; at most 2 blocks per SM (its __launch_bounds__(256, 2)).
    require_perf_tools()
    module = KernelModule("conv_forward.cu", ("conv_forward<128, 128, 8, 8, 8>",))
    (row,) = sass.static_report([module], "sm_90")
    loop = row.main_loop
    assert loop is not None and loop.mix.opcodes["FFMA"] == 512
    assert 0.5 < row.ffma_share < 0.95
    assert loop.mix.count("barrier") >= 1 and loop.mix.count("shared") >= 1
    assert not row.resources.spills
    assert row.block_threads == 256
    assert 1 <= row.occupancy.blocks_per_sm <= 2


def test_command_prints_the_table(capsys):
    require_perf_tools()
    assert sass.main(["--filter", "relu_forward", "--threads", "256", "--loops"]) == 0
    out = capsys.readouterr().out
    assert "Static figures on sm_90" in out and "relu_forward" in out
    assert "relu_backward" not in out.split("\n\n")[0]
    line = next(l for l in out.splitlines() if l.startswith("relu.cu"))
    assert " 256 " in line  # the block size given for a kernel without launch bounds


def test_row_as_dict():
    require_perf_tools()
    (row,) = [r for r in sass.static_report([LOOPS], "sm_90") if r.kernel == "perf_ffma_loop"]
    d = row.as_dict()
    assert d["kernel"] == "perf_ffma_loop" and d["occupancy"] is None
    assert d["main_loop"]["instructions"] == 11 and d["main_loop"]["opcodes"]["FFMA"] == 8


@pytest.mark.parametrize("opcode, name", [
    ("DFMA", "fp64"), ("DADD", "fp64"), ("DMUL", "fp64"), ("MUFU", "mufu"), ("F2F", "convert"),
    ("I2F", "convert"), ("FFMA", "fp32"), ("IMAD", None), ("LDG", None), ("I2FP", None)])
def test_pipe(opcode, name):
    assert sass.pipe(opcode) == name


def test_line_info_build_has_the_same_code_and_source_lines():
    """-lineinfo adds line tables only: the same instructions, each with its line."""
    from convnet.toolchain.kernel_source import expand
    require_perf_tools()
    plain = {k.kernel: k for k in sass.module_sass(LOOPS, "sm_90")}
    lined = sass.compile_source(expand(LOOPS.source), LOOPS.source, LOOPS.kernels, "sm_90",
                                line_info=True)
    for k in lined:
        assert [(i.mnemonic, i.operands) for i in k.instructions] == \
            [(i.mnemonic, i.operands) for i in plain[k.kernel].instructions]
        assert k.resources.registers == plain[k.kernel].resources.registers
        assert {i.source[0] for i in k.instructions if i.source} == {"perf_loops.cu"}
    assert all(i.source is None for i in plain["perf_no_loop"].instructions)
