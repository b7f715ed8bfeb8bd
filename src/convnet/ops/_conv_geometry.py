"""A convolution's problem description: ``geometry(...)`` checks the shapes and
arguments once and returns the ``Geometry`` that the references, the launch builders
and the entry points of ``convnet.ops.conv`` all take.

PyTorch's conventions: ``x`` (N, C, H, W), ``w`` (K, C/groups, R, S), output
(N, K, P, Q) with ``P = (H + 2*pad_h - R) // stride_h + 1`` (Q likewise).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..arguments import integer, pair
from ._arrays import INT32_MAX


@dataclass(frozen=True)
class Geometry:
    """Every size of one convolution (see the module docstring)."""

    n: int
    c: int
    h: int
    w: int
    k: int
    r: int
    s: int
    stride_h: int
    stride_w: int
    pad_h: int
    pad_w: int
    groups: int

    @property
    def p(self) -> int:
        return (self.h + 2 * self.pad_h - self.r) // self.stride_h + 1

    @property
    def q(self) -> int:
        return (self.w + 2 * self.pad_w - self.s) // self.stride_w + 1

    @property
    def cg(self) -> int:
        return self.c // self.groups

    @property
    def kg(self) -> int:
        return self.k // self.groups

    @property
    def x_shape(self) -> tuple:
        return (self.n, self.c, self.h, self.w)

    @property
    def w_shape(self) -> tuple:
        return (self.k, self.cg, self.r, self.s)

    @property
    def y_shape(self) -> tuple:
        return (self.n, self.k, self.p, self.q)

    @property
    def flops(self) -> int:
        """Multiply-adds times two of one pass (forward, backward data or backward filter)."""
        return 2 * self.n * self.k * self.p * self.q * self.cg * self.r * self.s

    def scalars(self) -> tuple:
        """The kernels' common int arguments N, C, H, W, K, R, S, P, Q, sh, sw, ph, pw, groups."""
        return tuple(np.int32(v) for v in (self.n, self.c, self.h, self.w, self.k, self.r,
                                           self.s, self.p, self.q, self.stride_h,
                                           self.stride_w, self.pad_h, self.pad_w, self.groups))


def geometry(x_shape, w_shape, stride=1, padding=0, groups=1) -> Geometry:
    """Check a convolution's shapes and arguments; ValueError/TypeError naming the problem."""
    x_shape, w_shape = tuple(x_shape), tuple(w_shape)
    if len(x_shape) != 4:
        raise ValueError(f"conv2d: x must be 4-D (N, C, H, W), got shape {x_shape}")
    if len(w_shape) != 4:
        raise ValueError(f"conv2d: w must be 4-D (K, C/groups, R, S), got shape {w_shape}")
    sh, sw = pair(stride, "conv2d: stride", low=1)
    ph, pw = pair(padding, "conv2d: padding", low=0)
    groups = integer(groups, "conv2d: groups", low=1)
    n, c, h, w = (int(v) for v in x_shape)
    k, cg, r, s = (int(v) for v in w_shape)
    for name, value in (("C", c), ("H", h), ("W", w)):
        if value < 1:
            raise ValueError(f"conv2d: x has shape {x_shape}; its {name} must be at least 1")
    for name, value in (("K", k), ("C/groups", cg), ("R", r), ("S", s)):
        if value < 1:
            raise ValueError(f"conv2d: w has shape {w_shape}; its {name} must be at least 1")
    if c % groups:
        raise ValueError(f"conv2d: groups={groups} does not divide the {c} input channels")
    if k % groups:
        raise ValueError(f"conv2d: groups={groups} does not divide the {k} output channels "
                         f"(w has shape {w_shape})")
    if cg * groups != c:
        raise ValueError(f"conv2d: x has {c} channels but w has shape {w_shape}: with "
                         f"groups={groups} it expects {cg * groups} input channels "
                         f"({cg} per group)")
    if r > h + 2 * ph or s > w + 2 * pw:
        raise ValueError(f"conv2d: the {r}x{s} kernel is larger than the padded input "
                         f"{h + 2 * ph}x{w + 2 * pw} (input {h}x{w}, padding {ph}, {pw})")
    return Geometry(n, c, h, w, k, r, s, sh, sw, ph, pw, groups)


def check_kernel_sizes(g: Geometry) -> None:
    """ValueError unless every index the kernels form fits in 32 bits (see the .cu files;
    backward filter's split workspace is ``plan_filter``'s to check), with advice that
    fits: a batch size that would, or why none does. Cheap: ``functional.conv2d`` calls
    it before any array is allocated."""
    per_image = {  # elements one image spans, with padding and halo
        "the padded input x": g.c * (g.h + 2 * g.pad_h + g.stride_h + g.r)
        * (g.w + 2 * g.pad_w + g.stride_w + g.s),
        "the output y": g.k * (g.p + g.r + 1) * (g.q + g.s + 1),
    }
    spans = {what: g.n * count for what, count in per_image.items()}
    spans["the filters w"] = g.k * g.cg * g.r * g.s
    for what, count in spans.items():
        if count <= INT32_MAX:
            continue
        one = per_image.get(what)
        if one is None:
            advice = "use fewer filters or fewer input channels per group"
        elif one <= INT32_MAX:
            advice = (f"split the batch of {g.n} into batches of at most "
                      f"{INT32_MAX // one} images")
        else:
            advice = (f"one image alone spans {one} elements, so no batch size helps: use "
                      f"smaller images or fewer channels")
        raise ValueError(f"conv2d: the kernels index with 32-bit integers and {what} of "
                         f"this convolution spans {count} elements (with padding and "
                         f"halo), more than 2**31 - 1; {advice} "
                         f"(x {g.x_shape}, w {g.w_shape})")
