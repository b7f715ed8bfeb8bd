"""Winograd F(2x2, 3x3) convolutions (ops.conv_winograd): the float64 NumPy algorithm
against the direct references, the kernels (emu, cuda) against the float64 reference
on AlexNet's 3x3 layers and 36 seeded awkward shapes, every emu check mode, the
functional ``algorithm=`` switch with autograd, the GPU launches and the errors.

Error bound (the op's docstring): each element of a kernel result is within
8 eps32 x ``error_scale`` (the Winograd algorithm run on |operands| with |transform
matrices|: the sum of the absolute values of the terms the kernels add), the same
factor tests/test_conv.py holds the direct kernels to against their own sum of
|terms|. NVRTC (sm_80, sm_90, no spills) is tests/test_compile.py's, which compiles
every module of ``convnet.ops.KERNEL_MODULES``, these three included.
"""
from __future__ import annotations

import textwrap
from types import SimpleNamespace

import numpy as np
import pytest

import convnet
from convnet import functional as F
from convnet.ops import conv
from convnet.ops import conv_winograd as cw

from conftest import require_device, run_clean_under_asan

EPS32 = float(np.finfo(np.float32).eps)

# AlexNet's 3x3 layers: x shape (batch filled in), w shape, padding, groups.
ALEXNET = {
    "conv3": ((256, 13, 13), (384, 256, 3, 3), 1, 1),
    "conv4": ((384, 13, 13), (384, 192, 3, 3), 1, 2),
    "conv5": ((384, 13, 13), (256, 192, 3, 3), 1, 2),
}


def awkward_shapes(count: int = 36, seed: int = 1000):
    """Seeded (x shape, w shape, padding, groups): batch 1-3, 1-5 channels per group
    each way (odd included), groups 1-3, padding 0-3, H and W 1-11 (odd, below a tile)."""
    rng = np.random.default_rng(seed)
    shapes = []
    for _ in range(count):
        groups = int(rng.choice([1, 1, 2, 3]))
        cg, kg = int(rng.integers(1, 6)), int(rng.integers(1, 6))
        pad = int(rng.choice([0, 1, 1, 2, 3]))
        low = max(1, 3 - 2 * pad)
        h, w = int(rng.integers(low, 12)), int(rng.integers(low, 12))
        shapes.append(((int(rng.integers(1, 4)), cg * groups, h, w), (kg * groups, cg, 3, 3),
                       pad, groups))
    return shapes


AWKWARD = awkward_shapes()


class Case:
    """One convolution's float32 operands (x, w, b, dy) and its Geometry."""

    def __init__(self, x_shape, w_shape, pad=1, groups=1, seed=0):
        rng = np.random.default_rng(seed)
        self.g = conv.geometry(x_shape, w_shape, 1, pad, groups)
        self.x = rng.standard_normal(x_shape).astype(np.float32)
        self.w = rng.standard_normal(w_shape).astype(np.float32)
        self.b = rng.standard_normal(w_shape[0]).astype(np.float32)
        self.dy = rng.standard_normal(self.g.y_shape).astype(np.float32)

    def __repr__(self):
        g = self.g
        return f"x{g.x_shape} w{g.w_shape} pad {g.pad_h} groups {g.groups}"


def _f64(a):
    return a.astype(np.float64)


def assert_within_bound(got, want, scale, what):
    """|got - want| <= 8 eps32 * scale elementwise; returns the worst ratio."""
    got = np.asarray(got)
    assert got.shape == want.shape and got.dtype == np.float32, what
    ratio = np.abs(got.astype(np.float64) - want) / (8 * EPS32 * scale + 1e-30)
    assert np.all(ratio <= 1), (f"{what}: {int((ratio > 1).sum())} elements past the bound, "
                                f"worst {ratio.max():.3g}x at {np.unravel_index(ratio.argmax(), ratio.shape)}")
    return float(ratio.max())


def check_passes(device, case, relu=True, splits=None):
    """The three passes on ``device`` within the bound; returns (y, dx, dw)."""
    d, g = device, case.g
    y = d.to_numpy(cw.forward(d, g, d.asarray(case.x), d.asarray(case.w), d.asarray(case.b),
                              relu=relu))
    want = conv.forward_reference(g, _f64(case.x), _f64(case.w), _f64(case.b), relu=relu)
    scale = cw.error_scale(g, "forward", case.x, case.w) + np.abs(_f64(case.b))[:, None, None]
    assert_within_bound(y, want, scale, f"forward of {case}")
    dx = d.to_numpy(cw.backward_data(d, g, d.asarray(case.dy), d.asarray(case.w)))
    assert_within_bound(dx, conv.backward_data_reference(g, _f64(case.dy), _f64(case.w)),
                        cw.error_scale(g, "data", case.dy, case.w), f"backward data of {case}")
    dw = d.to_numpy(cw.backward_filter(d, g, d.asarray(case.x), d.asarray(case.dy),
                                       splits=splits))
    assert_within_bound(dw, conv.backward_filter_reference(g, _f64(case.x), _f64(case.dy)),
                        cw.error_scale(g, "filter", case.x, case.dy),
                        f"backward filter of {case}")
    return y, dx, dw


# --------------------------------------------------------------------------- the math

def test_awkward_shapes_cover_the_cases():
    gs = [conv.geometry(x, w, 1, p, groups) for x, w, p, groups in AWKWARD]
    assert len(gs) >= 30 and len({(g.x_shape, g.w_shape, g.pad_h) for g in gs}) == len(gs)
    assert {1, 2, 3} <= {g.groups for g in gs} and {0, 1, 2, 3} <= {g.pad_h for g in gs}
    assert any(g.n == 1 for g in gs) and any(g.p % 2 and g.q % 2 for g in gs)
    assert any(g.cg % 2 and g.kg % 2 and g.cg > 1 for g in gs)
    assert any(g.h == 1 or g.w == 1 for g in gs)


@pytest.mark.parametrize("index", [0, 4, 7, 13, 22])
def test_float64_algorithm_is_the_convolution(index):
    """The transforms are exact: in float64 the Winograd algorithm gives the direct
    references' results (padding 0-3, groups), and its absolute twin bounds their
    sums of |terms|."""
    x_shape, w_shape, pad, groups = AWKWARD[index]
    case = Case(x_shape, w_shape, pad, groups, seed=index)
    g = case.g
    for pass_, a, b, ref in (("forward", case.x, case.w, conv.forward_reference),
                             ("data", case.dy, case.w, conv.backward_data_reference),
                             ("filter", case.x, case.dy, conv.backward_filter_reference)):
        exact = ref(g, _f64(a), _f64(b))
        np.testing.assert_allclose(cw.transformed(g, pass_, a, b), exact, rtol=0, atol=1e-12)
        direct_scale = ref(g, np.abs(_f64(a)), np.abs(_f64(b)))
        assert np.all(cw.error_scale(g, pass_, a, b) >= direct_scale * (1 - 1e-12))


# --------------------------------------------------------------------------- the kernels

def _rms(got, want):
    return float(np.sqrt(np.mean((np.asarray(got, np.float64) - want) ** 2))
                 / np.sqrt(np.mean(want ** 2)))


@pytest.mark.parametrize("layer", list(ALEXNET))
def test_alexnet_layers(kernel_device, layer):
    """Within the bound, and against direct FP32 (``RMS_RATIO_BOUND``): the relative RMS
    error of each pass at most that multiple of the direct kernels' on the same data."""
    x_shape, w_shape, pad, groups = ALEXNET[layer]
    case = Case((1, *x_shape), w_shape, pad, groups, seed=12)
    d, g = kernel_device, case.g
    wino = check_passes(d, case, relu=False)
    direct = (conv.forward(d, g, d.asarray(case.x), d.asarray(case.w), d.asarray(case.b)),
              conv.backward_data(d, g, d.asarray(case.dy), d.asarray(case.w)),
              conv.backward_filter(d, g, d.asarray(case.x), d.asarray(case.dy)))
    exact = (conv.forward_reference(g, _f64(case.x), _f64(case.w), _f64(case.b)),
             conv.backward_data_reference(g, _f64(case.dy), _f64(case.w)),
             conv.backward_filter_reference(g, _f64(case.x), _f64(case.dy)))
    for pass_, a, b, want in zip(("forward", "data", "filter"), wino, direct, exact):
        ratio = _rms(a, want) / _rms(d.to_numpy(b), want)
        assert ratio <= cw.RMS_RATIO_BOUND[pass_], f"{layer} {pass_}: {ratio:.3g}x direct's"


def test_awkward_shapes(kernel_device):
    """36 seeded shapes, every pass; backward filter split into up to 3 chunks where the
    tiles allow (the kernel's own choice on emu is one)."""
    for i, (x_shape, w_shape, pad, groups) in enumerate(AWKWARD):
        check_passes(kernel_device, Case(x_shape, w_shape, pad, groups, seed=i),
                     relu=bool(i % 2), splits=1 + i % 3)


@pytest.mark.parametrize("tile", conv.TILES, ids=lambda t: "x".join(map(str, t)))
def test_every_gemm_tile(tile):
    """Every instantiation of winograd_gemm (the GPU's tiles too, both B layouts) on emu,
    on shapes whose rows, columns and reductions cross the tile's edges."""
    device = require_device("emu")
    shapes = [((2, 12, 13, 13), (20, 6, 3, 3), 1, 2), ((1, 3, 7, 5), (130, 3, 3, 3), 0, 1),
              ((3, 34, 6, 9), (5, 34, 3, 3), 2, 1)]
    for i, (x_shape, w_shape, pad, groups) in enumerate(shapes):
        case = Case(x_shape, w_shape, pad, groups, seed=40 + i)
        d, g = device, case.g
        y = cw.forward(d, g, case.x, case.w, case.b, relu=True, tile=tile)
        assert_within_bound(y, conv.forward_reference(g, _f64(case.x), _f64(case.w),
                                                      _f64(case.b), relu=True),
                            cw.error_scale(g, "forward", case.x, case.w)
                            + np.abs(_f64(case.b))[:, None, None], f"forward {case} {tile}")
        dx = cw.backward_data(d, g, case.dy, case.w, tile=tile)
        assert_within_bound(dx, conv.backward_data_reference(g, _f64(case.dy), _f64(case.w)),
                            cw.error_scale(g, "data", case.dy, case.w), f"data {case} {tile}")
        for splits in (1, 3):
            dw = cw.backward_filter(d, g, case.x, case.dy, tile=tile, splits=splits)
            assert_within_bound(dw, conv.backward_filter_reference(g, _f64(case.x),
                                                                   _f64(case.dy)),
                                cw.error_scale(g, "filter", case.x, case.dy),
                                f"filter {case} {tile} splits {splits}")


def test_cpu_runs_the_direct_reference():
    case = Case((2, 4, 5, 6), (6, 2, 3, 3), 1, 2, seed=3)
    cpu = convnet.get_device("cpu")
    np.testing.assert_array_equal(cw.forward(cpu, case.g, case.x, case.w, case.b, relu=True),
                                  conv.forward(cpu, case.g, case.x, case.w, case.b, relu=True))
    np.testing.assert_array_equal(cw.backward_filter(cpu, case.g, case.x, case.dy),
                                  conv.backward_filter(cpu, case.g, case.x, case.dy))


def test_every_emu_check_mode():
    """race (random schedule), init (fresh workspaces filled with 0x7f), bounds, align,
    reverse order with NaN-filled shared memory: no report, the same bits."""
    from convnet.backend import emu
    device = require_device("emu")
    case = Case((2, 4, 5, 7), (6, 2, 3, 3), 1, 2, seed=5)
    plain = check_passes(device, case, splits=2)
    modes = [dict(schedule="reverse", fill_shared=True),
             dict(check="race", schedule="random", seed=5), dict(check="init", fill_empty=True),
             dict(check="bounds"), dict(check="align")]
    for mode in modes:
        with emu.debug(**mode):
            got = check_passes(device, case, splits=2)
        for a, b, what in zip(got, plain, ("y", "dx", "dw")):
            assert np.array_equal(a, b), f"{what} differs under {mode}"


_ASAN_SCRIPT = textwrap.dedent("""
    import numpy as np
    import convnet
    from convnet.backend import emu
    from convnet.ops import conv, conv_winograd as cw
    device = convnet.get_device("emu")

    def tight(a):  # a view ending exactly at the end of its allocation, off 16 bytes
        base = np.empty(a.size + 1, np.float32)
        base[1:] = a.reshape(-1)
        return base[1:].reshape(a.shape)

    rng = np.random.default_rng(0)
    shapes = [((1, 3, 7, 6), (4, 3, 3, 3), 1, 1), ((2, 4, 5, 9), (6, 2, 3, 3), 0, 2),
              ((1, 2, 1, 2), (3, 2, 3, 3), 3, 1)]
    for tile in (conv.EMU, conv.THIN):
        for xs, ws, pad, groups in shapes:
            g = conv.geometry(xs, ws, 1, pad, groups)
            x, w, b = (tight(rng.standard_normal(s).astype(np.float32)) for s in (xs, ws, ws[:1]))
            dy = tight(rng.standard_normal(g.y_shape).astype(np.float32))
            with emu.debug(check="address"):
                y = cw.forward(device, g, x, w, b, relu=True, tile=tile)
                dx = cw.backward_data(device, g, dy, w, tile=tile)
                dw = cw.backward_filter(device, g, x, dy, tile=tile, splits=2)
            f = lambda a: a.astype(np.float64)
            assert np.allclose(y, conv.forward_reference(g, f(x), f(w), f(b), relu=True),
                               rtol=1e-4, atol=1e-4)
            assert np.allclose(dx, conv.backward_data_reference(g, f(dy), f(w)), rtol=1e-4,
                               atol=1e-4)
            assert np.allclose(dw, conv.backward_filter_reference(g, f(x), f(dy)), rtol=1e-4,
                               atol=1e-4)
    print("CLEAN")
""")


def test_kernels_under_address_sanitizer():
    """No global access outside the operands, outputs and workspaces (padding 0, 1 and
    3, a 1x2 image, operands that end exactly at their allocation's end)."""
    run_clean_under_asan(_ASAN_SCRIPT, timeout=600)


# --------------------------------------------------------------------------- functional

@pytest.mark.parametrize("algorithm", ["winograd", "direct", "auto"])
def test_conv2d_algorithm(device, algorithm):
    """F.conv2d(algorithm=...) forward and gradients (x, w, b) through ReLU, groups."""
    case = Case((2, 4, 7, 6), (6, 2, 3, 3), 1, 2, seed=15)
    x = convnet.tensor(case.x, device=device, requires_grad=True)
    w = convnet.tensor(case.w, device=device, requires_grad=True)
    b = convnet.tensor(case.b, device=device, requires_grad=True)
    y = F.conv2d(x, w, b, padding=1, groups=2, relu=True, algorithm=algorithm)
    y.backward(convnet.tensor(case.dy, device=device))
    y64 = conv.forward_reference(case.g, _f64(case.x), _f64(case.w), _f64(case.b), relu=True)
    g = np.where(y64 > 0, _f64(case.dy), 0.0)
    np.testing.assert_allclose(y.numpy(), y64, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(x.grad.numpy(), conv.backward_data_reference(case.g, g,
                               _f64(case.w)), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(w.grad.numpy(), conv.backward_filter_reference(
        case.g, _f64(case.x), g), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(b.grad.numpy(), g.sum(axis=(0, 2, 3)), rtol=1e-5, atol=1e-5)


def test_conv2d_winograd_runs_the_winograd_kernels(monkeypatch):
    device = require_device("emu")
    names = []
    original = type(device).launch
    monkeypatch.setattr(type(device), "launch",
                        lambda self, launch: names.append(launch.kernel) or original(self, launch))
    case = Case((1, 2, 4, 4), (3, 2, 3, 3), seed=1)
    x = convnet.tensor(case.x, device=device, requires_grad=True)
    w = convnet.tensor(case.w, device=device, requires_grad=True)
    F.conv2d(x, w, padding=1, algorithm="winograd").sum().backward()
    assert names[:4] == ["winograd_filter", "winograd_input", "winograd_gemm", "winograd_output"]
    assert {"winograd_grad", "winograd_filter_out"} <= set(names)
    assert not [n for n in names if n.startswith(("conv_forward", "conv_backward"))]


def test_empty_batch():
    device = require_device("emu")
    x = convnet.tensor(np.zeros((0, 3, 5, 5), np.float32), device=device, requires_grad=True)
    w = convnet.tensor(np.ones((4, 3, 3, 3), np.float32), device=device, requires_grad=True)
    y = F.conv2d(x, w, padding=1, algorithm="winograd")
    assert y.shape == (0, 4, 5, 5)
    y.backward(np.zeros((0, 4, 5, 5), np.float32))
    assert x.grad.shape == (0, 3, 5, 5)
    np.testing.assert_array_equal(w.grad.numpy(), np.zeros((4, 3, 3, 3)))


# --------------------------------------------------------------------------- errors

def test_bad_arguments():
    device = convnet.get_device("cpu")
    x = convnet.tensor(np.zeros((1, 2, 6, 6), np.float32))
    with pytest.raises(ValueError, match="algorithm must be one of"):
        F.conv2d(x, convnet.tensor(np.zeros((2, 2, 3, 3), np.float32)), algorithm="fft")
    with pytest.raises(ValueError, match="3x3 filters at stride 1, got 5x5"):
        F.conv2d(x, convnet.tensor(np.zeros((2, 2, 5, 5), np.float32)), algorithm="winograd")
    with pytest.raises(ValueError, match=r"stride \(2, 2\)"):
        F.conv2d(x, convnet.tensor(np.zeros((2, 2, 3, 3), np.float32)), stride=2,
                 algorithm="winograd")
    g = conv.geometry((1, 2, 6, 6), (2, 2, 3, 3))
    with pytest.raises(ValueError, match="shape"):
        cw.forward(device, g, np.zeros((1, 2, 5, 6), np.float32), np.zeros((2, 2, 3, 3), np.float32))
    with pytest.raises(ValueError, match="pass must be"):
        cw.workspace_shapes(g, "sideways")


def test_kernel_device_takes_float32_only():
    device = require_device("emu")
    g = conv.geometry((1, 2, 6, 6), (2, 2, 3, 3))
    with pytest.raises(TypeError, match="float32"):
        cw.forward(device, g, np.zeros((1, 2, 6, 6)), np.zeros((2, 2, 3, 3)))


def test_workspace_past_32_bit_indices_is_refused():
    device = require_device("emu")
    g = conv.geometry((4096, 512, 64, 64), (512, 512, 3, 3), 1, 1)
    with pytest.raises(ValueError, match="32-bit"):
        cw._check_sizes(g, cw.workspace_shapes(g, "forward"))
    with pytest.raises(ValueError, match="splits"):
        cw.plan_filter(device, conv.geometry((2, 4, 8, 8), (4, 4, 3, 3), 1, 1, 1), splits=0)


# --------------------------------------------------------------------------- launches

def test_gpu_launches_for_conv4():
    """Batch 128 on a 132-SM stand-in: four launches per pass, grids over every
    position and group, backward filter split to fill the GPU."""
    gpu = SimpleNamespace(kind="cuda", parallel_units=132, arch="sm_90")
    g = conv.geometry((128, 384, 13, 13), (384, 192, 3, 3), 1, 1, 2)
    th, tw, t = cw.tiles(g.n, g.p, g.q)
    assert (th, tw, t) == (7, 7, 128 * 49)
    def z(shape):
        return np.broadcast_to(np.zeros((), np.float32), shape)
    ws = {k: z(v) for k, v in cw.workspace_shapes(g, "forward").items()}
    launches = cw.forward_launches(gpu, g, z(g.x_shape), z(g.w_shape), z((g.k,)), z(g.y_shape),
                                   ws["u"], ws["v"], ws["m"], relu=True)
    assert [launch.kernel for launch in launches] == ["winograd_filter", "winograd_input",
                                                      "winograd_gemm", "winograd_output"]
    gemm = launches[2]
    assert gemm.grid[2] == 16 * 2 and gemm.name.endswith("false>")
    tile = gemm.template_args
    assert gemm.grid[:2] == (-(-t // tile[1]), -(-192 // tile[0]))
    plan = cw.plan_filter(gpu, g)
    blocks = -(-192 // plan.tile.bm) * -(-192 // plan.tile.bn) * 32 * plan.splits
    assert plan.splits > 1 and blocks >= 132 and plan.chunk % plan.tile.bk == 0
    ws = {k: z(v) for k, v in cw.workspace_shapes(g, "filter", plan.splits).items()}
    filt = cw.backward_filter_launches(gpu, g, z(g.x_shape), z(g.y_shape), z(g.w_shape),
                                       ws["v"], ws["d"], ws["s"], plan)
    assert filt[2].grid[2] == 32 * plan.splits and filt[2].name.endswith("true>")
    assert filt[3].kernel == "winograd_filter_out" and filt[3].args[-1] == plan.splits


def test_filter_split_ends_in_whole_waves(monkeypatch):
    """plan_filter: the fewest splits of the least waves x slices. conv3 at batch 128 on
    132 SMs with two resident 128x128 blocks each: 96 blocks a split, 11 splits = four
    full waves of 264 (6 would take 3 waves for 2.2 waves' work); on emu one split."""
    gpu = SimpleNamespace(kind="cuda", parallel_units=132, arch="sm_90")
    monkeypatch.setattr(cw, "_resident", lambda device, tile: 2)
    g = conv.geometry((128, 256, 13, 13), (384, 256, 3, 3), 1, 1, 1)
    plan = cw.plan_filter(gpu, g, tile=conv.LARGE)
    assert plan.splits == 11 and plan.chunk == 576 and 11 * 96 == 4 * 264
    assert cw.plan_filter(gpu, g, tile=conv.LARGE, splits=6).splits == 6
    small = conv.geometry((1, 8, 4, 4), (8, 8, 3, 3), 1, 1, 1)
    assert cw.plan_filter(gpu, small, tile=conv.LARGE).splits == 1  # 4 tiles: no chunking
    emu_ = SimpleNamespace(kind="emu", parallel_units=2)
    assert cw.plan_filter(emu_, g).splits == 1


def test_performance_model_plans_the_winograd_launches():
    """convnet perf's layer builder: the Winograd alternative of a 3x3 layer (and its
    --op syntax) plans every launch of the three passes, each tagged with its part, the
    GEMMs with the products they do (16 positions), not the direct count."""
    from convnet.perf.layers import conv_layer, parse_op, standin_arrays
    gpu = SimpleNamespace(kind="cuda", parallel_units=132, arch="sm_90")
    layer = parse_op("winograd:384,13,256,1,2")
    assert layer.info["algorithm"] == "winograd"
    planned = layer.build(gpu, 128, standin_arrays, {}, False)
    parts = {}
    for p in planned:
        parts.setdefault(p.part, []).append(p.kernel.partition("<")[0])
    assert parts["forward"] == ["winograd_filter", "winograd_input", "winograd_gemm",
                                "winograd_output"]
    assert parts["data"] == parts["forward"]
    assert parts["filter"] == ["winograd_input", "winograd_grad", "winograd_gemm",
                               "winograd_filter_out"]
    g = conv.geometry((128, 384, 13, 13), (256, 192, 3, 3), 1, 1, 2)
    gemm = next(p for p in planned if p.part == "forward" and p.kernel.startswith("winograd_gemm"))
    assert gemm.flops == 2 * 16 * 256 * 192 * cw.tiles(128, 13, 13)[2]
    assert gemm.flops < g.flops / 1.9
    direct = conv_layer("conv5", 384, 13, 256, 3, 1, 1, 2).build(gpu, 128, standin_arrays, {},
                                                                  False)
    assert [p.part for p in direct if p.part] == ["forward", "data", "filter", "filter"]
    with pytest.raises(ValueError, match="3x3 filters at stride 1"):
        conv_layer("conv1", 3, 227, 96, 11, 4, algorithm="winograd").build(
            gpu, 1, standin_arrays, {}, False)
