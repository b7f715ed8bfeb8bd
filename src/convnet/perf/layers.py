"""The launches of one layer's forward and backward on a GPU, built by the library's own
launch builders, for the launch model.

A ``Layer`` has a name and ``build(device, batch, arrays, choices, reduced)``, which
returns the ``Planned`` launches of its forward, backward and (for parameters) update,
exactly as ``convnet.functional`` would issue them on a ``cuda`` device (conv: ReLU
mask, backward data, backward filter with its split sum, bias gradient; the fused
LRN + max-pool's backward: one kernel, max-pool's backward inside LRN's recomputing
its scale (``ops.lrn_max_pool.FUSE_BACKWARD``, ``ops.lrn.SAVE_SCALE`` for cuda); linear: the cuBLAS product and our epilogue).
``device`` is a stand-in with ``kind="cuda"`` and ``parallel_units`` = the GPU's SMs;
``arrays(shape, dtype, high)`` makes the operands: shape-only stand-ins for the real
batch, random arrays for the emulator run at a reduced batch.

``choices`` makes the two builds run the same kernels: the real-batch build records
each decision a builder made for the GPU (conv tiles, backward filter's chunk, LRN's
channels per thread) and the reduced build takes them, so the emulator profiles the
very tile and block shape the GPU would run. ``reduced=True`` also cuts
batch-independent sizes (parameters for SGD) to at most ``REDUCED_ELEMENTS``.

Each ``Planned`` says how its emulated traffic scales to the real problem:
``work=None`` for kernels whose grid covers the problem (figures per block x the
real grid's blocks), else the elements it covers (figures x the ratio of elements:
grid-stride loops and reductions whose grid does not grow with the batch).

FLOPs: convolution passes 2·N·K·P·Q·(C/groups)·R·S each; GEMM 2·m·n·k; the others
nominal counts per element (they are memory-bound by a wide margin) — see
``NOMINAL_FLOPS``.

``parse_op(spec)`` turns the one-op syntax of ``convnet perf --op`` into a Layer.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..ops import (conv, conv_layout, conv_tc, conv_winograd, cross_entropy, dropout, linear, lrn,
                   lrn_max_pool, max_pool, relu, sgd)
from ..toolchain.launch import Launch

REDUCED_ELEMENTS = 1 << 18
# FLOPs per element (per output element for pooling: per window element) of the
# kernels that are not products; nominal, for the compute term of memory-bound kernels.
NOMINAL_FLOPS = {"relu": 1, "bias_act": 2, "bias_backward": 2, "dropout": 1, "pool": 1,
                 "lrn_forward": 2 * 5 + 8, "lrn_backward": 6 * 5 + 16, "sgd": 6,
                 "cross_entropy_forward": 4, "cross_entropy_backward": 3, "sum": 1,
                 "winograd_transform": 32,  # adds per tile of a Winograd transform
                 "layout": 1}               # a layout change's rounding


@dataclass
class Planned:
    """One launch of a layer: ours (``launch``) or a cuBLAS GEMM (``gemm`` = m, n, k)."""

    layer: str
    pass_: str                   # "forward", "backward" or "update"
    launch: Launch | None
    flops: float
    reads: tuple = ()            # arrays the launch reads (their bytes: DRAM footprint)
    writes: tuple = ()           # arrays it writes
    work: float | None = None    # None: scale traffic per block; else elements covered
    gemm: tuple | None = None
    part: str | None = None      # a convolution's launches: "forward", "data" or "filter"
    tensor: str | None = None    # "tf32"/"bf16": its FLOPs run on the tensor cores

    @property
    def kernel(self) -> str:
        if self.gemm is not None:
            m, n, k = self.gemm
            return f"cuBLAS sgemm {m}x{n}x{k}"
        return self.launch.name

    @property
    def read_bytes(self) -> int:
        return sum(int(a.nbytes) for a in self.reads)

    @property
    def write_bytes(self) -> int:
        return sum(int(a.nbytes) for a in self.writes)

    @property
    def blocks(self) -> int:
        return 0 if self.launch is None else int(np.prod(self.launch.grid))


@dataclass
class Layer:
    name: str
    build: Callable[..., list]
    info: dict = field(default_factory=dict)


def standin_arrays(shape, dtype=np.float32, high=None):
    """A shape-only array: no memory (stride 0), right shape, dtype and ``nbytes``."""
    return np.broadcast_to(np.zeros((), dtype=dtype), tuple(int(s) for s in shape))


def random_arrays(seed: int = 0):
    """An ``arrays`` factory of random operands (floats N(0, 1), integers below ``high``)."""
    rng = np.random.default_rng(seed)

    def make(shape, dtype=np.float32, high=None):
        dtype = np.dtype(dtype)
        if dtype.kind in "iu":
            return rng.integers(0, high or 1, size=shape).astype(dtype)
        return rng.standard_normal(shape, dtype=np.float32).astype(dtype)
    return make


# --------------------------------------------------------------------------- convolution

def _pair(v) -> tuple:
    """A size given as one int (square) or an (h, w) pair, as a pair."""
    return (v, v) if isinstance(v, (int, np.integer)) else tuple(v)


def conv_layer(name, c, hw, k, rs, stride=1, pad=0, groups=1, relu_=True, input_grad=True,
               bias=True, algorithm="direct", precision="fp32", tiles=None) -> Layer:
    """``conv2d`` on (N, c, hw, hw) with k filters of rs x rs (hw, rs, stride, pad: an
    int or an (h, w) pair): forward (bias + ReLU fused),
    backward (ReLU mask, data unless ``input_grad`` is False, filter, bias);
    ``algorithm="winograd"``: the three passes by ``ops.conv_winograd``;
    ``precision`` "tf32"/"bf16": the three passes by ``ops.conv_tc`` (tensor cores);
    ``tiles``: {"forward" | "data" | "filter": tile} for the direct engine's passes (the
    conv chooser's, ``convnet.perf.choose``), else each builder's own choice."""
    tc = precision != "fp32"
    tiles = {part: tuple(t) for part, t in (tiles or {}).items()}

    def build(dev, n, arrays, choices, reduced):
        g = conv.geometry((n, c, *_pair(hw)), (k, c // groups, *_pair(rs)), stride, pad,
                          groups)
        x, w, y = arrays(g.x_shape), arrays(g.w_shape), arrays(g.y_shape)
        b = arrays((k,)) if bias else None
        for part in ("forward", "data"):
            if part in tiles:
                choices.setdefault(part, tiles[part])
        wino = _Winograd(name, dev, g, arrays, choices) if algorithm == "winograd" else None
        out = wino.forward(x, w, b, y, relu_) if wino else []
        shared: dict = {}   # channels-last arrays backward filter takes (conv_tc.shares_layout)
        if tc:
            out += _tensor_core_pass(name, dev, g, "forward", (x, w, b, y), arrays, choices,
                                     precision, relu_, shared)
        elif not wino:
            fwd = conv.forward_launch(dev, g, x, w, b, y, relu_, choices.get("forward"))
            choices.setdefault("forward", fwd.template_args)
            out.append(Planned(name, "forward", fwd, g.flops, (x, w) + ((b,) if bias else ()),
                               (y,), part="forward"))
        dy = arrays(g.y_shape)
        if relu_:
            dz = arrays(g.y_shape)
            out.append(Planned(name, "backward", relu.backward_launch(dev, y, dy, dz),
                               y.size * NOMINAL_FLOPS["relu"], (y, dy), (dz,), work=y.size))
            dy = dz
        if input_grad and wino:
            out += wino.backward_data(dy, w, arrays(g.x_shape))
        elif input_grad and tc:
            out += _tensor_core_pass(name, dev, g, "data", (dy, w, None, arrays(g.x_shape)),
                                     arrays, choices, precision, shared=shared)
        elif input_grad:
            dx = arrays(g.x_shape)
            data = conv.backward_data_launch(dev, g, dy, w, dx, choices.get("data"))
            choices.setdefault("data", data.template_args)
            out.append(Planned(name, "backward", data, g.flops, (dy, w), (dx,), part="data"))
        if wino:
            out += wino.backward_filter(x, dy, arrays(g.w_shape))
        elif tc:
            out += _tensor_core_filter(name, dev, g, x, dy, arrays, choices, precision,
                                       tiles.get("filter"), shared)
        elif "filter" in choices:
            tile, chunk = choices["filter"]
            npq = g.n * g.p * g.q
            plan = conv.FilterPlan(conv.Tile(*tile), max(1, -(-npq // chunk)), chunk)
        else:
            plan = conv.plan_filter(dev, g, tiles.get("filter"))
            choices["filter"] = (tuple(plan.tile), plan.chunk)
        if not wino and not tc:
            dw = arrays(g.w_shape)
            space = plan.workspace_size(g)
            ws = arrays((space,)) if space else None
            launches = conv.backward_filter_launches(dev, g, x, dy, dw, plan, ws)
            partial = (ws,) if space else (dw,)
            out.append(Planned(name, "backward", launches[0], g.flops, (x, dy), partial,
                               part="filter"))
            if len(launches) > 1:
                count = dw.size * plan.splits
                out.append(Planned(name, "backward", launches[1], count * NOMINAL_FLOPS["sum"],
                                   (ws,), (dw,), work=count, part="filter"))
        if bias:
            db = arrays((k,))
            splits = choices.setdefault("bias", conv.bias_splits(dev, g))
            bws = arrays((splits * k,)) if splits > 1 else None
            first, *second = conv.backward_bias_launches(dev, g, dy, db, splits, bws)
            out.append(Planned(name, "backward", first, dy.size * NOMINAL_FLOPS["sum"], (dy,),
                               (bws if second else db,), work=dy.size))
            for launch in second:
                out.append(Planned(name, "backward", launch, k * splits * NOMINAL_FLOPS["sum"],
                                   (bws,), (db,), work=k * splits))
        return out

    return Layer(name, build, dict(op="conv", c=c, hw=hw, k=k, rs=rs, stride=stride, pad=pad,
                                   groups=groups, algorithm=algorithm, precision=precision,
                                   tiles=tiles, input_grad=input_grad))


def _tensor_core_pass(name, dev, g, part, operands, arrays, choices, precision,
                      relu_=False, shared=None) -> list:
    """Forward (``operands`` x, w, b, y) or backward data (dy, w, None, dx) on tensor
    cores, its tile (the chooser's in ``choices``, else the engine's) recorded in
    ``choices``: channels-last where ``conv_tc.prefers_channels_last`` (the layout
    kernels, each covering its elements, then the GEMM), else the NCHW GEMM."""
    src, w, b, dst = operands
    when, tile = ("forward" if part == "forward" else "backward"), choices.get(part)
    bias = (b,) if b is not None else ()
    out = []
    if conv_tc.prefers_channels_last(g, part, precision):
        ws = {k: arrays(v, conv_layout.dtype_for(precision))
              for k, v in conv_tc.nhwc_workspace_shapes(g, part, precision).items()}
        build = (conv_tc.forward_nhwc_launches if part == "forward"
                 else conv_tc.backward_data_nhwc_launches)
        args = (src, w, b, dst) if part == "forward" else (src, w, dst)
        *layouts, gemm = build(dev, g, *args, ws["x"], ws["w"],
                               *((relu_,) if part == "forward" else ()), precision, tile)
        for launch, a, t in zip(layouts, (src, w), (ws["x"], ws["w"])):
            out.append(Planned(name, when, launch, a.size * NOMINAL_FLOPS["layout"], (a,), (t,),
                               work=a.size, part=part))
        reads = (ws["x"], ws["w"]) + bias
        if shared is not None and conv_tc.shares_layout(g, part, precision):
            shared["x" if part == "forward" else "dy"] = ws["x"]
    else:
        gemm = (conv_tc.forward_launch(dev, g, src, w, b, dst, relu_, precision, tile)
                if part == "forward" else
                conv_tc.backward_data_launch(dev, g, src, w, dst, precision, tile))
        reads = (src, w) + bias
    choices.setdefault(part, conv_tc.launch_tile(gemm))
    out.append(Planned(name, when, gemm, g.flops, reads, (dst,), part=part, tensor=precision))
    return out


def _tensor_core_filter(name, dev, g, x, dy, arrays, choices, precision, tile=None,
                        shared=None) -> list:
    """Backward filter on tensor cores: the split GEMM (its tile, ``tile`` or the
    engine's choice, and chunk recorded in ``choices``) and, when split, the ordered sum
    of the partials."""
    npq = g.n * g.p * g.q
    if "filter" in choices:
        tile, chunk = choices["filter"]
        splits = max(1, -(-npq // chunk))
    else:
        tile = conv_tc.filter_tile(dev, g, tile)
        splits, chunk = conv_tc.plan_filter(dev, g, None, tile, precision)
        choices["filter"] = (tile, chunk)
    dw = arrays(g.w_shape)
    ws = arrays((splits * dw.size,)) if splits > 1 else None
    out, reads = [], (x, dy)
    if conv_tc.prefers_channels_last(g, "filter", precision):
        made = shared or {}   # laid out by forward / backward data already
        layout = {k: made[k] if k in made else arrays(v, conv_layout.dtype_for(precision))
                  for k, v in conv_tc.filter_workspace_shapes(g, precision).items()}
        launches = conv_tc.backward_filter_nhwc_launches(
            dev, g, x, dy, dw, layout["x"], layout["dy"], splits, chunk, ws, precision, tile,
            tuple(made))
        todo = [k for k in ("x", "dy") if k not in made]
        for launch, k in zip(launches[:len(todo)], todo):
            a = x if k == "x" else dy
            out.append(Planned(name, "backward", launch, a.size * NOMINAL_FLOPS["layout"], (a,),
                               (layout[k],), work=a.size, part="filter"))
        launches, reads = launches[len(todo):], (layout["x"], layout["dy"])
    else:
        launches = conv_tc.backward_filter_launches(dev, g, x, dy, dw, splits, chunk, ws,
                                                    precision, tile)
    out.append(Planned(name, "backward", launches[0], g.flops, reads,
                       (ws,) if ws is not None else (dw,), part="filter", tensor=precision))
    if len(launches) > 1:
        count = dw.size * splits
        out.append(Planned(name, "backward", launches[1], count * NOMINAL_FLOPS["sum"], (ws,),
                           (dw,), work=count, part="filter"))
    return out


class _Winograd:
    """The Planned launches of ``ops.conv_winograd``'s three passes for one layer: the
    transforms cover their elements (grid-stride, ``work``), the GEMMs their grid (its
    FLOPs: 16 positions x the products actually done, not the direct count); the GEMM
    tiles and backward filter's chunk are recorded in ``choices`` like the direct ones."""

    def __init__(self, name, dev, g, arrays, choices):
        conv_winograd.check_supported(g)
        self.name, self.dev, self.g, self.arrays, self.choices = name, dev, g, arrays, choices

    def _plan(self, pass_, launches, reads_writes, gemm_flops):
        """Planned launches from (reads, writes, elements) per launch (None: the GEMM)."""
        out, when = [], "forward" if pass_ == "forward" else "backward"
        for launch, (reads, writes, work) in zip(launches, reads_writes):
            if launch.kernel == "winograd_gemm":
                self.choices.setdefault(f"winograd_{pass_}", launch.template_args[:5])
                out.append(Planned(self.name, when, launch, gemm_flops, reads, writes,
                                   part=pass_))
            else:  # work: floats of a 16-position set, nominal adds per 4x4 tile
                out.append(Planned(self.name, when, launch,
                                   work * NOMINAL_FLOPS["winograd_transform"] / 16, reads,
                                   writes, work=work, part=pass_))
        return out

    def _workspaces(self, pass_, splits=1):
        return {k: self.arrays(v)
                for k, v in conv_winograd.workspace_shapes(self.g, pass_, splits).items()}

    def forward(self, x, w, b, y, relu_):
        g, ws = self.g, self._workspaces("forward")
        u, v, m = ws["u"], ws["v"], ws["m"]
        launches = conv_winograd.forward_launches(self.dev, g, x, w, b, y, u, v, m, relu_,
                                                  self.choices.get("winograd_forward"))
        flops = 2 * conv_winograd.POSITIONS * g.k * g.cg * v.shape[2]
        bias = (b,) if b is not None else ()
        return self._plan("forward", launches, [((w,), (u,), u.size), ((x,), (v,), v.size),
                                                ((u, v), (m,), None), ((m,) + bias, (y,), m.size)],
                          flops)

    def backward_data(self, dy, w, dx):
        g, ws = self.g, self._workspaces("data")
        u, v, m = ws["u"], ws["v"], ws["m"]
        launches = conv_winograd.backward_data_launches(self.dev, g, dy, w, dx, u, v, m,
                                                        self.choices.get("winograd_data"))
        flops = 2 * conv_winograd.POSITIONS * g.c * g.kg * v.shape[2]
        return self._plan("data", launches, [((w,), (u,), u.size), ((dy,), (v,), v.size),
                                             ((u, v), (m,), None), ((m,), (dx,), m.size)], flops)

    def backward_filter(self, x, dy, dw):
        g = self.g
        if "winograd_filter" in self.choices:
            tile, chunk = self.choices["winograd_filter"]
            t = conv_winograd.tiles(g.n, g.p, g.q)[2]
            plan = conv_winograd.FilterPlan(conv.Tile(*tile), max(1, -(-t // chunk)), chunk)
        else:
            plan = conv_winograd.plan_filter(self.dev, g)
            self.choices["winograd_filter"] = (tuple(plan.tile), plan.chunk)
        ws = self._workspaces("filter", plan.splits)
        v, d, s = ws["v"], ws["d"], ws["s"]
        launches = conv_winograd.backward_filter_launches(self.dev, g, x, dy, dw, v, d, s, plan)
        flops = 2 * conv_winograd.POSITIONS * g.k * g.cg * v.shape[2]
        return self._plan("filter", launches, [((x,), (v,), v.size), ((dy,), (d,), d.size),
                                               ((d, v), (s,), None), ((s,), (dw,), s.size)],
                          flops)


# --------------------------------------------------------------------------- LRN and pooling

def _pool_arrays(arrays, shape, pp):
    """A pooling's input and output shapes, window size, and its x, y and argmax arrays."""
    out_shape = max_pool.output_shape(shape, pp)
    window = pp.kh * pp.kw
    x, y = arrays(shape), arrays(out_shape)
    argmax = arrays(out_shape, max_pool.index_dtype(pp), high=window)
    return shape, out_shape, window, x, y, argmax


def lrn_pool_layer(name, c, hw, lrn_groups=1, size=5, alpha=1e-4, beta=0.75, k=2.0,
                   pool=3, stride=2) -> Layer:
    """The fused LRN + max-pool forward; backward: the fused max-pool + LRN backward
    (scale recomputed from x) where ``lrn_max_pool.FUSE_BACKWARD`` says so for cuda,
    else max-pool's (saved argmax) then LRN's."""
    params = lrn.make_params(size, alpha, beta, k, lrn_groups)
    pp = max_pool.make_params(pool, stride)

    def build(dev, n, arrays, choices, reduced):
        shape, out_shape, window, x, y, argmax = _pool_arrays(arrays, (n, c, hw, hw), pp)
        width = sum(lrn.check_window(shape, params)) + 1
        fwd = lrn_max_pool.forward_launch(dev, x, y, argmax, params, pp)
        flops = x.size * (2 * width + 8) + y.size * window
        out = [Planned(name, "forward", fwd, flops, (x,), (y, argmax))]
        dy, dx = arrays(out_shape), arrays(shape)
        chunk = choices.setdefault("lrn_chunk", lrn.default_chunk(dev, shape, params))
        if lrn_max_pool.FUSE_BACKWARD.get(dev.kind, False):
            # one kernel: max-pool's backward gathered per channel inside LRN's (no dz)
            back = lrn_max_pool.backward_launch(dev, x, dy, argmax, dx, params, pp, chunk=chunk)
            out.append(Planned(name, "backward", back,
                               x.size * (6 * width + 16 + NOMINAL_FLOPS["pool"]),
                               (x, dy, argmax), (dx,)))
            return out
        dz = arrays(shape)
        out.append(Planned(name, "backward", max_pool.backward_launch(dev, dy, argmax, dz, pp),
                           dz.size * NOMINAL_FLOPS["pool"], (dy, argmax), (dz,)))
        back = lrn.backward_launch(dev, x, dz, dx, params, chunk=chunk)
        out.append(Planned(name, "backward", back, x.size * (6 * width + 16), (x, dz), (dx,)))
        return out

    return Layer(name, build, dict(op="lrn_pool", c=c, hw=hw, groups=lrn_groups))


def pool_layer(name, c, hw, pool=3, stride=2) -> Layer:
    """Max-pool with its argmax, and its backward."""
    pp = max_pool.make_params(pool, stride)

    def build(dev, n, arrays, choices, reduced):
        shape, out_shape, window, x, y, argmax = _pool_arrays(arrays, (n, c, hw, hw), pp)
        dy, dx = arrays(out_shape), arrays(shape)
        return [Planned(name, "forward", max_pool.forward_launch(dev, x, y, pp, argmax),
                        y.size * window, (x,), (y, argmax)),
                Planned(name, "backward", max_pool.backward_launch(dev, dy, argmax, dx, pp),
                        dx.size * NOMINAL_FLOPS["pool"], (dy, argmax), (dx,))]

    return Layer(name, build, dict(op="pool", c=c, hw=hw))


# --------------------------------------------------------------------------- fully connected

def linear_layer(name, inputs, outputs, relu_=True, input_grad=True, dropout_p=None) -> Layer:
    """``act(x · Wᵀ + b)``: the cuBLAS product, our bias (+ ReLU) epilogue; backward:
    the epilogue's gradient and bias sums, then the two cuBLAS products. With
    ``dropout_p`` (and ReLU) the dropout runs in the epilogue and in the backward's mask
    (``bias_relu_dropout_forward``/``_backward``), as AlexNet's fc6/fc7 do."""
    drop = None if dropout_p is None else dropout.plan(dropout_p, training=True, seed=1)

    def build(dev, n, arrays, choices, reduced):
        x, w, b, y = (arrays((n, inputs)), arrays((outputs, inputs)), arrays((outputs,)),
                      arrays((n, outputs)))
        dy, dz, db = arrays((n, outputs)), arrays((n, outputs)), arrays((outputs,))
        if drop is not None:
            epilogue = (linear.forward_dropout_launch(dev, y, b, drop),
                        linear.backward_dropout_launch(y, dy, dz, db, drop))
        else:
            epilogue = (linear.forward_launch(dev, y, b, relu_),
                        linear.backward_launch(y if relu_ else None, dy, dz if relu_ else dy, db))
        extra = NOMINAL_FLOPS["dropout"] if drop is not None else 0
        out = [Planned(name, "forward", None, 2.0 * n * outputs * inputs, (x, w), (y,),
                       gemm=(n, outputs, inputs)),
               Planned(name, "forward", epilogue[0],
                       y.size * (NOMINAL_FLOPS["bias_act"] + extra), (y, b), (y,), work=y.size),
               Planned(name, "backward", epilogue[1],
                       y.size * (NOMINAL_FLOPS["bias_backward"] + extra),
                       (y, dy) if relu_ else (dy,), (dz, db) if relu_ else (db,), work=y.size)]
        if input_grad:
            dx = arrays((n, inputs))
            out.append(Planned(name, "backward", None, 2.0 * n * inputs * outputs, (dz, w),
                               (dx,), gemm=(n, inputs, outputs)))
        dw = arrays((outputs, inputs))
        out.append(Planned(name, "backward", None, 2.0 * outputs * inputs * n, (dz, x), (dw,),
                           gemm=(outputs, inputs, n)))
        return out

    return Layer(name, build, dict(op="linear", inputs=inputs, outputs=outputs))


# --------------------------------------------------------------------------- elementwise

def relu_layer(name, features) -> Layer:
    def build(dev, n, arrays, choices, reduced):
        x, y, dy, dx = (arrays((n, features)) for _ in range(4))
        return [Planned(name, "forward", relu.forward_launch(dev, x, y), x.size, (x,), (y,),
                        work=x.size),
                Planned(name, "backward", relu.backward_launch(dev, y, dy, dx), x.size,
                        (y, dy), (dx,), work=x.size)]
    return Layer(name, build, dict(op="relu", features=features))


def dropout_layer(name, features, p=0.5) -> Layer:
    """Dropout's forward and backward (the same kernel, the mask regenerated)."""
    plan = dropout.plan(p, training=True, seed=1)

    def build(dev, n, arrays, choices, reduced):
        x, y, dy, dx = (arrays((n, features)) for _ in range(4))
        return [Planned(name, pass_, dropout.apply_launch(dev, a, b, plan), a.size, (a,), (b,),
                        work=a.size) for pass_, a, b in (("forward", x, y), ("backward", dy, dx))]
    return Layer(name, build, dict(op="dropout", features=features))


def cross_entropy_layer(name, classes) -> Layer:
    def build(dev, n, arrays, choices, reduced):
        x, dx = arrays((n, classes)), arrays((n, classes))
        labels = arrays((n,), np.int32, high=classes)
        loss, m, ls = (arrays((n,)) for _ in range(3))
        dloss = arrays((1,))
        saved = cross_entropy.Saved(labels, m, ls)
        return [Planned(name, "forward", cross_entropy.forward_launch(x, labels, loss, m, ls),
                        x.size * NOMINAL_FLOPS["cross_entropy_forward"], (x, labels),
                        (loss, m, ls)),
                Planned(name, "backward", cross_entropy.backward_launch(x, saved, dloss, dx),
                        x.size * NOMINAL_FLOPS["cross_entropy_backward"],
                        (x, labels, m, ls, dloss), (dx,))]
    return Layer(name, build, dict(op="cross_entropy", classes=classes))


def sgd_layer(name, shapes) -> Layer:
    """The paper's SGD update of every parameter tensor of ``shapes`` in one launch
    (``sgd_momentum_multi``, as ``optim.SGD`` runs it; batch-independent: the reduced
    build cuts each tensor to at most ``REDUCED_ELEMENTS``)."""

    def build(dev, n, arrays, choices, reduced):
        ws, vs, gs = [], [], []
        for shape in shapes:
            count = int(np.prod(shape))
            if reduced:
                count = min(count, REDUCED_ELEMENTS)
            ws.append(arrays((count,)))
            vs.append(arrays((count,)))
            gs.append(arrays((count,)))
        k = len(shapes)
        table, groups = sgd.multi_table(ws, vs, gs, [0.01] * k, [5e-6] * k)
        total = sum(int(w.size) for w in ws)
        launch = sgd.multi_update_launch(dev, table, k, groups, 0.9, total)
        return [Planned(name, "update", launch, total * NOMINAL_FLOPS["sgd"],
                        tuple(ws + vs + gs) + (table,), tuple(ws + vs), work=total)]
    return Layer(name, build, dict(op="sgd", shapes=[tuple(s) for s in shapes]))


# --------------------------------------------------------------------------- one op

OP_SYNTAX = """\
conv:C,HW,K,RS[,stride[,pad[,groups]]]   conv2d on N x C x HW x HW, K filters RS x RS (bias, ReLU)
winograd:C,HW,K[,pad[,groups]]           the same, 3x3 at stride 1, by Winograd F(2x2, 3x3)
conv_tf32:... | conv_bf16:...            conv's sizes, on tensor cores (TF32/BF16 operands)
lrn_pool:C,HW[,groups]                   LRN (the paper's) + 3x3/2 max-pool, fused
pool:C,HW                                3x3/2 max-pool with argmax
linear:IN,OUT                            cuBLAS product + bias/ReLU epilogue
relu:FEATURES | dropout:FEATURES         elementwise on N x FEATURES
cross_entropy:CLASSES                    softmax cross-entropy on N x CLASSES
sgd:COUNT                                one SGD update of COUNT parameters
(N is --batch)"""


def parse_op(spec: str) -> Layer:
    """A Layer from ``OP_SYNTAX`` (e.g. ``conv:96,27,256,5,1,2,2``); ValueError otherwise."""
    op, _, rest = spec.partition(":")
    try:
        values = [int(v) for v in rest.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"bad op {spec!r}: the sizes must be integers; syntax:\n{OP_SYNTAX}") \
            from None
    makers = {
        "conv": (4, 7, lambda v: conv_layer(spec, *v)),
        "winograd": (3, 5, lambda v: conv_layer(spec, *v[:3], 3, 1, *v[3:],
                                                algorithm="winograd")),
        "conv_tf32": (4, 7, lambda v: conv_layer(spec, *v, precision="tf32")),
        "conv_bf16": (4, 7, lambda v: conv_layer(spec, *v, precision="bf16")),
        "lrn_pool": (2, 3, lambda v: lrn_pool_layer(spec, *v)),
        "pool": (2, 2, lambda v: pool_layer(spec, *v)),
        "linear": (2, 2, lambda v: linear_layer(spec, *v)),
        "relu": (1, 1, lambda v: relu_layer(spec, *v)),
        "dropout": (1, 1, lambda v: dropout_layer(spec, *v)),
        "cross_entropy": (1, 1, lambda v: cross_entropy_layer(spec, *v)),
        "sgd": (1, 1, lambda v: sgd_layer(spec, [(v[0],)])),
    }
    if op not in makers or not makers[op][0] <= len(values) <= makers[op][1]:
        raise ValueError(f"bad op {spec!r}; syntax:\n{OP_SYNTAX}")
    return makers[op][2](values)
