"""Convolution: ``conv2d(x, w, b=None, stride=1, padding=0, groups=1, relu=False,
algorithm="auto", precision=None)``."""
from __future__ import annotations

from .. import precision as _precision
from ..ops import conv as _conv_ops
from ..ops import conv_tc as _tc_ops
from ..ops import conv_winograd as _winograd_ops
from ..ops import relu as _relu_ops
from ..tensor import Tensor, is_grad_enabled
from ._checks import check_float_tensors
from ._weighted import WeightedFunction

__all__ = ["ALGORITHMS", "choice_for", "chosen_algorithm", "conv2d", "direct_ops",
           "tensor_core_ops"]

# "auto": the one the performance model predicts fastest for the shape on the device's
# GPU (convnet.perf.choose: cached per-kernel figures, a measured calibration first;
# "direct" on cpu and for every precision but FP32). "winograd": F(2x2, 3x3), 3x3
# filters at stride 1 only.
ALGORITHMS = ("auto", "direct", "winograd")


def chosen_algorithm(device, g, precision: str = "fp32") -> str:
    """What ``algorithm="auto"`` runs for geometry ``g`` on ``device`` in ``precision``."""
    if precision != "fp32" or not device.runs_kernels:
        return "direct"
    from ..perf import choose
    return choose.algorithm_for(device, g)


def choice_for(x, w, stride=1, padding=0, groups=1, precision=None):
    """The ``convnet.perf.choose.Choice`` that ``algorithm="auto"`` follows for these
    operands on their device (None where no choice is made: ``cpu``, an empty output)."""
    g = _conv_ops.geometry(x.shape, w.shape, stride, padding, groups)
    if not x.device.runs_kernels or not all(g.y_shape):
        return None
    from ..perf import choose
    return choose.choose(x.device, g, _precision.resolve(precision, "conv2d: precision"))


def _algorithm_ops(algorithm, g, device=None, precision="fp32"):
    """The op module (ops.conv or ops.conv_winograd) that runs ``algorithm`` for ``g``."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"conv2d: algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    if algorithm == "auto" and device is not None:
        algorithm = chosen_algorithm(device, g, precision)
    if algorithm == "winograd":
        _winograd_ops.check_supported(g)
        return _winograd_ops
    return _conv_ops


class _DirectTiles:
    """``ops.conv`` with a tile per pass (``{"forward" | "data" | "filter": tile}``; a pass
    not named: the engine's own choice)."""

    def __init__(self, tiles: dict):
        self.tiles = tiles

    def forward(self, device, g, x, w, b, relu):
        return _conv_ops.forward(device, g, x, w, b, relu, self.tiles.get("forward"))

    def backward_data(self, device, g, dy, w):
        return _conv_ops.backward_data(device, g, dy, w, self.tiles.get("data"))

    def backward_filter(self, device, g, x, dy):
        return _conv_ops.backward_filter(device, g, x, dy, self.tiles.get("filter"))


def direct_ops(device, g):
    """What runs the direct engine in FP32 for ``g`` on ``device``: on ``cuda`` with the
    tiles the performance model predicts fastest on its GPU (``convnet.perf.choose``,
    where it has figures of several), else ``ops.conv`` (its own tile choice; the
    emulator's tiles on ``emu``)."""
    if device.kind != "cuda" or not all(g.y_shape):
        return _conv_ops
    from ..perf import choose
    tiles = choose.choose(device, g).tiles
    return _DirectTiles(tiles) if tiles else _conv_ops


class _TensorCores:
    """``ops.conv_tc`` bound to one precision ("tf32" or "bf16") and a tile per pass
    (``{"forward" | "data" | "filter": tile}``; a pass not named: the engine's own
    choice), with the passes' signatures of ``ops.conv``."""

    def __init__(self, precision: str, tiles: dict | None = None):
        self.precision, self.tiles = precision, tiles or {}
        # channels-last arrays forward and backward data leave for backward filter
        # (ops.conv_tc.shares_layout), kept only while a weight gradient is wanted
        self.layouts: dict | None = None

    def _tile(self, part) -> dict:
        return {"tile": self.tiles[part]} if part in self.tiles else {}

    def keep_layouts(self, keep: bool) -> None:
        self.layouts = {} if keep else None

    def forward(self, device, g, x, w, b, relu):
        return _tc_ops.forward(device, g, x, w, b, relu, self.precision, **self._tile("forward"),
                               layouts=self.layouts)

    def backward_data(self, device, g, dy, w):
        return _tc_ops.backward_data(device, g, dy, w, self.precision, **self._tile("data"),
                                     layouts=self.layouts)

    def backward_filter(self, device, g, x, dy):
        return _tc_ops.backward_filter(device, g, x, dy, self.precision, **self._tile("filter"),
                                       layouts=self.layouts)


def tensor_core_ops(device, g, precision: str):
    """What runs the tensor-core engine in ``precision`` for ``g`` on ``device``: on
    ``cuda`` with the tiles the performance model predicts fastest on its GPU
    (``convnet.perf.choose``, where it has figures of several), else the engine's own."""
    if device.kind != "cuda" or not all(g.y_shape):
        return _TensorCores(precision)
    from ..perf import choose
    return _TensorCores(precision, choose.choose(device, g, precision).tiles)


class Conv2d(WeightedFunction):
    """``y = act(conv(x, w) + b)`` for the convolution ``g`` (an ``ops.conv.Geometry``).
    Saves x (for dw), w (for dx) and, with ReLU, y (for the mask), each only when a
    gradient needs it; the backward masks the incoming gradient by ``y > 0`` once, then
    runs the backward-data, backward-filter and bias kernels for the inputs that need a
    gradient."""

    def forward(self, x, w, b=None, g=None, relu=False, ops=_conv_ops):
        self.g, self.relu, self.has_bias, self.ops = g, relu, b is not None, ops
        if isinstance(ops, _TensorCores):   # what backward filter can take from forward
            ops.keep_layouts(is_grad_enabled() and self.needs_input_grad[1])
        y = ops.forward(self.device, g, x, w, b, relu)
        self.save_operands(x, w, y)
        return y

    def backward(self, grad):
        x, w, y = self.saved
        device, g = self.device, self.g
        if self.relu:
            grad = _relu_ops.backward(device, y, grad)
        need_x, need_w = self.needs_input_grad[0], self.needs_input_grad[1]
        need_b = self.has_bias and self.needs_input_grad[2]
        dx = self.ops.backward_data(device, g, grad, w) if need_x else None
        dw = self.ops.backward_filter(device, g, x, grad) if need_w else None
        if not self.has_bias:
            return dx, dw
        db = _conv_ops.backward_bias(device, g, grad) if need_b else None
        return dx, dw, db


def conv2d(x: Tensor, w: Tensor, b: Tensor | None = None, stride=1, padding=0, groups=1,
           relu: bool = False, algorithm: str = "auto", precision: str | None = None) -> Tensor:
    """2-D convolution (cross-correlation) with PyTorch's conventions.

    ``x`` (N, C, H, W), ``w`` (K, C/groups, R, S), ``b`` (K,) or None; ``stride`` and
    ``padding`` an int or an (h, w) pair (zero padding); ``groups`` dividing C and K.
    The output is (N, K, P, Q) with ``P = (H + 2*pad_h - R) // stride_h + 1`` (Q
    likewise). ``relu=True`` applies ReLU in the kernel's epilogue together with the
    bias (one pass over the output). Gradients flow to x, w and b through the
    backward-data, backward-filter and bias-gradient kernels (``kernels/conv_*.cu``
    on ``emu``/``cuda``; NumPy references on ``cpu``, any float dtype there).
    ``algorithm``: "direct" (the implicit GEMM), "winograd" (F(2x2, 3x3) for 3x3
    filters at stride 1, all three passes; ``ops.conv_winograd``; on ``cpu`` the same
    references) or "auto": on ``emu``/``cuda`` the one ``convnet.perf.choose`` predicts
    fastest for this shape on the device's GPU (an H100 stand-in on ``emu``), decided once
    per shape; "direct" on ``cpu`` (the same references) and in TF32/BF16. The direct
    engine runs on ``cuda`` with the tile per pass that model predicts fastest
    (``direct_ops``), whether named or chosen.
    ``precision``: the products' arithmetic (``convnet.precision``), None for the
    process-wide default (``convnet.set_precision``, "fp32" unless set): "fp32" (the
    paper's), or "tf32"/"bf16": the operands of all three passes rounded to TF32/BF16 and
    multiplied on tensor cores with FP32 sums (``ops.conv_tc``; implicit GEMM, so
    ``algorithm`` "auto" or "direct"); on ``cpu`` the FP32 references of the rounded
    operands. Outputs and gradients are FP32 in every precision.
    """
    check_float_tensors("conv2d", input=x, weight=w, bias=b)
    g = _conv_ops.geometry(x.shape, w.shape, stride, padding, groups)
    if x.device.runs_kernels and all(g.y_shape):  # before any output or workspace exists
        _conv_ops.check_kernel_sizes(g)
    inputs = (x, w) if b is None else (x, w, b)
    precision = _precision.resolve(precision, "conv2d: precision")
    ops = _algorithm_ops(algorithm, g, x.device if all(g.y_shape) else None, precision)
    if precision != "fp32":
        if ops is not _conv_ops:
            raise ValueError(f"conv2d: algorithm {algorithm!r} computes in FP32 only; "
                             f"precision {precision!r} runs the implicit GEMM ('auto' or 'direct')")
        ops = tensor_core_ops(x.device, g, precision)
    elif ops is _conv_ops:
        ops = direct_ops(x.device, g)
    return Conv2d.apply(*inputs, g=g, relu=bool(relu), ops=ops)
