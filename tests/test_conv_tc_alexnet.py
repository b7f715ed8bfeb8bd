"""The tensor-core convolution (ops.conv_tc, TF32 and BF16) on AlexNet's five layers,
all three passes, against the float64 convolution of the rounded operands within
``conv_tc.error_bound`` — and visibly apart from the FP32 result, so the operands really
were rounded (issue 12). Each layer has its real channels, filters, filter size, stride,
padding and groups, so the forward and backward-data reductions have their real lengths
(363 to 11,616 terms); the images are cropped (batch 1, 6x6 outputs; conv1 a 23x23
image, 4x4 outputs) to keep the emulated tensor cores within the suite's time. The
small and seeded awkward shapes, bit-for-bit models of the reduction order and the check
modes are in test_conv_tc.py."""
from __future__ import annotations

import numpy as np
import pytest

from convnet.ops import conv, conv_tc
from convnet.precision import round_operand

from conftest import require_device

# x shape (batch 1, cropped), w shape, stride, padding, groups: tests/test_conv.py's
# ALEXNET with 6x6 outputs
ALEXNET = {
    "conv1": ((1, 3, 23, 23), (96, 3, 11, 11), 4, 0, 1),   # 4x4 outputs
    "conv2": ((1, 96, 6, 6), (256, 48, 5, 5), 1, 2, 2),
    "conv3": ((1, 256, 6, 6), (384, 256, 3, 3), 1, 1, 1),
    "conv4": ((1, 384, 6, 6), (384, 192, 3, 3), 1, 1, 2),
    "conv5": ((1, 384, 6, 6), (256, 192, 3, 3), 1, 1, 2),
}


def _check(got, exact, magnitude, n, fp32_exact, what):
    """|got - exact| within the bound, and much closer to it than to the result of the
    unrounded operands."""
    bound = conv_tc.error_bound(n, magnitude)
    err = np.abs(got.astype(np.float64) - exact)
    worst = int(np.argmax(err - bound))
    assert np.all(err <= bound), (f"{what}: error {err.flat[worst]:.3g} past the bound "
                                  f"{bound.flat[worst]:.3g} at {worst}")
    # The operands' rounding (unit roundoff 2^-11 or 2^-8) moves the result far more than
    # the FP32 sums do (2^-24): the kernel must sit by the rounded operands' result.
    apart = np.max(np.abs(got - fp32_exact))
    assert apart > 10 * np.max(err), \
        f"{what}: {apart:.3g} from the FP32-operand result: were the operands rounded?"


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
@pytest.mark.parametrize("layer", list(ALEXNET))
def test_alexnet_layer_all_passes(layer, precision):
    device = require_device("emu")
    x_shape, w_shape, stride, padding, groups = ALEXNET[layer]
    g = conv.geometry(x_shape, w_shape, stride, padding, groups)
    rng = np.random.default_rng(12)
    x = rng.standard_normal(g.x_shape, dtype=np.float32)
    w = rng.standard_normal(g.w_shape, dtype=np.float32) * np.float32(0.05)
    b = rng.standard_normal(g.k, dtype=np.float32)
    dy = rng.standard_normal(g.y_shape, dtype=np.float32)

    def f64(a):
        return a.astype(np.float64)

    def rounded(a):
        return round_operand(a, precision).astype(np.float64)

    d = device.asarray
    what = f"{layer} {precision}"
    y = device.to_numpy(conv_tc.forward(device, g, d(x), d(w), d(b), False, precision))
    _check(y, conv.forward_reference(g, rounded(x), rounded(w), f64(b)),
           conv.forward_reference(g, np.abs(f64(x)), np.abs(f64(w)), np.abs(f64(b))),
           g.cg * g.r * g.s + 1, conv.forward_reference(g, f64(x), f64(w), f64(b)),
           f"{what} forward")
    dx = device.to_numpy(conv_tc.backward_data(device, g, d(dy), d(w), precision))
    _check(dx, conv.backward_data_reference(g, rounded(dy), rounded(w)),
           conv.backward_data_reference(g, np.abs(f64(dy)), np.abs(f64(w))),
           g.kg * g.r * g.s, conv.backward_data_reference(g, f64(dy), f64(w)),
           f"{what} backward data")
    dw = device.to_numpy(conv_tc.backward_filter(device, g, d(x), d(dy), precision))
    _check(dw, conv.backward_filter_reference(g, rounded(x), rounded(dy)),
           conv.backward_filter_reference(g, np.abs(f64(x)), np.abs(f64(dy))),
           g.n * g.p * g.q, conv.backward_filter_reference(g, f64(x), f64(dy)),
           f"{what} backward filter")
