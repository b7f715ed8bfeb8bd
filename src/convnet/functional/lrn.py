"""Normalization: local response normalization across channels (Krizhevsky et al. 2012,
section 3.3), alone and followed by max-pooling (the paper's layers 1 and 2)."""
from __future__ import annotations

from ..ops import lrn as _lrn_ops
from ..ops import lrn_max_pool as _fused_ops
from ..ops import max_pool as _pool_ops
from ..tensor import Function, Tensor, is_grad_enabled
from ._checks import check_float_tensors

__all__ = ["local_response_norm", "local_response_norm_max_pool2d"]


class LocalResponseNorm(Function):
    """Saves x, and s where the device keeps it (``ops.lrn.SAVE_SCALE``)."""

    def forward(self, x, params):
        self.params = params
        if not (self.needs_input_grad[0] and is_grad_enabled()):
            return _lrn_ops.forward(self.device, x, params)
        if _lrn_ops.saves_scale(self.device):
            y, scale = _lrn_ops.forward(self.device, x, params, with_scale=True)
        else:
            y, scale = _lrn_ops.forward(self.device, x, params), None
        self.save_for_backward(x, scale)
        return y

    def backward(self, grad):
        x, scale = self.saved
        return _lrn_ops.backward(self.device, x, grad, self.params, scale=scale)


class LocalResponseNormMaxPool2d(Function):
    """max_pool2d(local_response_norm(x)); saves x and the argmax. The backward is
    ``ops.lrn_max_pool.backward``: max-pool's and LRN's (s recomputed) in one kernel
    where ``FUSE_BACKWARD`` says so, else the two in turn; the same bits either way."""

    def forward(self, x, params, pool):
        self.params, self.pool = params, pool
        y, argmax = _fused_ops.forward(self.device, x, params, pool)
        if self.needs_input_grad[0] and is_grad_enabled():
            self.save_for_backward(x, argmax)
        return y

    def backward(self, grad):
        x, argmax = self.saved
        return _fused_ops.backward(self.device, x, grad, argmax, self.params, self.pool)


def local_response_norm(x: Tensor, size: int = 5, alpha: float = 1e-4, beta: float = 0.75,
                        k: float = 2.0, groups: int = 1) -> Tensor:
    """Local response normalization across the channels of an (N, C, H, W) tensor:

        b[c] = a[c] / (k + alpha · Σ_j a[j]²)^beta,   j from c − size//2 to c + (size−1)//2

    clipped to the channels that exist. The defaults are the paper's (k = 2, n = 5,
    alpha = 1e-4, beta = 0.75), and so is the form: alpha is NOT divided by size.
    Caffe, cuda-convnet and PyTorch's ``nn.LocalResponseNorm`` divide it (and PyTorch
    defaults k to 1): ``local_response_norm(x, n, a, b, k)`` equals PyTorch's
    ``LocalResponseNorm(n, alpha=a * n, beta=b, k=k)(x)``. An odd size is centred on
    c; an even size reaches one channel further down than up (PyTorch's windows too).

    ``groups`` splits the channels into that many equal consecutive parts (it must
    divide C) and no window crosses a part's boundary: ``groups=2`` is the
    single-device form of the paper's two-column network. Requires size >= 1,
    alpha >= 0, k >= 0 (with k = 0 an all-zero window gives 0/0 = NaN), finite beta.
    """
    check_float_tensors("local_response_norm", input=x)
    params = _lrn_ops.make_params(size, alpha, beta, k, groups)
    return LocalResponseNorm.apply(x, params=params)


def local_response_norm_max_pool2d(x: Tensor, size: int = 5, alpha: float = 1e-4,
                                   beta: float = 0.75, k: float = 2.0, groups: int = 1,
                                   kernel_size=3, stride=2, padding=0) -> Tensor:
    """``max_pool2d(local_response_norm(x, size, alpha, beta, k, groups), kernel_size,
    stride, padding)``, the paper's layers 1 and 2, in one op: on a GPU one kernel
    reads x once and writes only the pooled output (``ops.lrn_max_pool.FUSE``), and one
    kernel sends the gradient back through both (``FUSE_BACKWARD``).
    Results are bit-identical to the two ops in sequence, gradients too.
    """
    check_float_tensors("local_response_norm_max_pool2d", input=x)
    params = _lrn_ops.make_params(size, alpha, beta, k, groups)
    pool = _pool_ops.make_params(kernel_size, stride, padding)
    return LocalResponseNormMaxPool2d.apply(x, params=params, pool=pool)
