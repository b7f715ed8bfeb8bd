"""Op families: each module holds an op's NumPy reference, its KernelModule(s) and the
functions that build its Launches; a module is named after its kernel file
(``kernels/relu.cu`` ↔ ``ops/relu.py``).

``KERNEL_MODULES`` lists every KernelModule of the library, one entry per
``kernels/*.cu`` file, for the NVRTC compile check (``tests/test_compile.py``) and the
compile report (``convnet kernels``). A new kernel file is added here by hand; a test
fails on any ``kernels/*.cu`` that defines a ``__global__`` and is missing.
"""
from __future__ import annotations

from ..toolchain.launch import KernelModule
from . import (augment, conv, conv_layout, conv_tc, conv_winograd, cross_entropy, dropout, linear, lrn,
               lrn_max_pool, max_pool, relu, sgd)

KERNEL_MODULES: tuple[KernelModule, ...] = (
    augment.MODULE,
    conv.BACKWARD_DATA,
    conv.BACKWARD_FILTER,
    conv.FORWARD,
    conv_layout.MODULE,
    conv_tc.BACKWARD_DATA,
    conv_tc.BACKWARD_FILTER,
    conv_tc.BACKWARD_FILTER_NHWC,
    conv_tc.FORWARD,
    conv_tc.FORWARD_NHWC,
    conv_tc.FORWARD_WGMMA,
    conv_winograd.GEMM,
    conv_winograd.IN,
    conv_winograd.OUT,
    cross_entropy.MODULE,
    dropout.MODULE,
    linear.MODULE,
    lrn.MODULE,
    lrn_max_pool.MODULE,
    max_pool.MODULE,
    relu.MODULE,
    sgd.MODULE,
)


def kernel_modules() -> list[KernelModule]:
    """``KERNEL_MODULES`` as a list (what ``convnet kernels`` and the compile check use)."""
    return list(KERNEL_MODULES)
