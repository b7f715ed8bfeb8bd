"""Tensor and reverse-mode autograd.

A ``Tensor`` holds one array (NumPy on ``cpu``/``emu``, CuPy on ``cuda``) on one
device. Ops are ``Function`` subclasses working on raw arrays::

    class Square(Function):
        def forward(self, x):
            self.save_for_backward(x)
            return x * x

        def backward(self, grad):
            (x,) = self.saved
            return 2 * x * grad          # one gradient per input (None: not needed)

    y = Square.apply(t)

``Function.apply`` records a graph node only while grad is enabled (not inside
``no_grad()``) and some input requires grad. The graph links Function nodes, not
tensors: a node keeps its saved arrays, the nodes (or leaf tensors) its inputs came
from and their shapes, so an intermediate tensor's array is freed once nothing but
the graph refers to it, unless a backward saved it.

``Tensor.backward`` orders the nodes reachable from the output topologically
(iteratively: graphs may be deep), runs each node's backward once, after every
node that uses its output, sums the gradients of values used several times, frees
each node's saved arrays as soon as its backward has run (unless
``retain_graph=True``) and adds the results into ``.grad`` of the leaf tensors that
require grad (accumulating across calls, like PyTorch). A second backward through
a freed graph is an error.

Device crossings: ``Tensor.to`` and the gradient flowing back through it are the
only places a tensor changes device. Inside ``with record_transfers() as log:``
each crossing is recorded (phase, from, to, bytes, and the crossing point's name
when the caller gives one: ``x.to(d, name="fc6")``). A named ``to`` onto the
tensor's own device is a logical crossing (two model columns placed on one
device): logged, but nothing is copied.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager

import numpy as np

from .backend import Device, DeviceError, get_device

# --------------------------------------------------------------------------- grad mode

_mode = threading.local()


def is_grad_enabled() -> bool:
    return getattr(_mode, "enabled", True)


@contextmanager
def no_grad():
    """Within the block, ops record no graph (per thread)."""
    previous = is_grad_enabled()
    _mode.enabled = False
    try:
        yield
    finally:
        _mode.enabled = previous


# --------------------------------------------------------------------------- Tensor

def _is_float(dtype) -> bool:
    return np.issubdtype(np.dtype(dtype), np.floating)


class Tensor:
    """An array on a device, with an optional gradient and the node that made it."""

    __array_ufunc__ = None  # ndarray (op) Tensor defers to Tensor's reflected ops

    def __init__(self, data, device="cpu", dtype=None, requires_grad=False):
        device = get_device(device)
        if isinstance(data, Tensor):
            data = data.data
        from_array = hasattr(data, "dtype")
        array = device.asarray(data, dtype=dtype)
        if array.dtype.kind not in "biuf":
            what = {"U": "text", "S": "bytes", "O": "Python objects", "c": "complex numbers",
                    "M": "dates", "m": "time spans", "V": "records"}.get(array.dtype.kind, "")
            raise TypeError(f"a tensor holds numbers (bool, integer or floating point); this "
                            f"data is {what or 'not numeric'} (dtype {array.dtype})")
        if array is data or _shares_memory(device, array, data):
            array = array.copy()  # a tensor never aliases the caller's array
        if dtype is None and not from_array and array.dtype == np.float64:
            array = array.astype(np.float32)  # Python floats default to float32
        self._init(array, device, requires_grad)

    @classmethod
    def _wrap(cls, array, device: Device, requires_grad: bool = False, node=None) -> "Tensor":
        """A tensor around an array already on ``device`` (no copy)."""
        t = cls.__new__(cls)
        t._init(array, device, requires_grad, node)
        return t

    def _init(self, array, device, requires_grad, node=None):
        if requires_grad and not _is_float(array.dtype):
            raise TypeError(f"only floating-point tensors can require grad, not {array.dtype}")
        self.data = array
        self.device = device
        self.grad = None
        self._requires_grad = bool(requires_grad)
        self._node = node  # the Function that produced this tensor (None for a leaf)

    # ---------------------------------------------------------------- properties
    @property
    def shape(self) -> tuple:
        return tuple(self.data.shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.data.dtype)

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def size(self) -> int:
        return int(self.data.size)

    def __len__(self) -> int:
        if not self.ndim:
            raise TypeError("len() of a 0-d tensor")
        return self.shape[0]

    @property
    def is_leaf(self) -> bool:
        return self._node is None

    @property
    def grad_fn(self):
        """The Function that produced this tensor (None for a leaf), as in PyTorch."""
        return self._node

    @property
    def requires_grad(self) -> bool:
        return self._requires_grad

    @requires_grad.setter
    def requires_grad(self, value: bool) -> None:
        if not self.is_leaf:
            raise RuntimeError("requires_grad can only be changed on leaf tensors; "
                               "use .detach() to cut a tensor from its graph")
        if value and not _is_float(self.dtype):
            raise TypeError(f"only floating-point tensors can require grad, not {self.dtype}")
        self._requires_grad = bool(value)

    # ---------------------------------------------------------------- conversion
    def numpy(self) -> np.ndarray:
        """The values as a NumPy array (a copy from a GPU; the array itself on host devices)."""
        return self.device.to_numpy(self.data)

    def item(self):
        if self.size != 1:
            raise ValueError(f"item() needs a tensor of one element, not one of shape {self.shape}")
        return self.numpy().reshape(()).item()

    def detach(self) -> "Tensor":
        """The same array, cut from the graph (no copy)."""
        return Tensor._wrap(self.data, self.device)

    def to(self, device, name: str | None = None) -> "Tensor":
        """A copy on ``device`` (this tensor if it is there already); gradients flow back.

        ``name`` names the crossing point in the transfer log; with a name, a move
        onto the same device is logged too (without a copy), see ``record_transfers``.
        """
        device = get_device(device)
        if device == self.device and name is None:
            return self
        return _ToDevice.apply(self, target=device, name=name)

    def __repr__(self) -> str:
        values = np.array2string(self.numpy(), separator=", ", prefix="tensor(", threshold=64)
        extra = ", requires_grad=True" if self.requires_grad else ""
        return f"tensor({values}, device={self.device.name!r}, dtype={self.dtype}{extra})"

    # ---------------------------------------------------------------- autograd
    def backward(self, grad=None, retain_graph: bool = False) -> None:
        """Accumulate d(self)/d(leaf), weighted by ``grad``, into every leaf's ``.grad``.

        ``grad`` (a Tensor or array-like of this tensor's shape) may be left out only
        when this tensor has exactly one element (it is then 1).
        """
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad "
                               "(no input of the ops that made it requires grad)")
        xp = self.device.xp
        if grad is None:
            if self.size != 1:
                raise RuntimeError(f"backward() without a gradient needs a tensor of one element; "
                                   f"this one has shape {self.shape}, pass grad= of that shape")
            grad = xp.ones(self.data.shape, dtype=self.dtype)
        else:
            if isinstance(grad, Tensor):
                if grad.device != self.device:
                    raise DeviceError(f"backward(): the gradient is on {grad.device.name!r}, "
                                      f"the tensor on {self.device.name!r}")
                grad = grad.data
            grad = self.device.asarray(grad, dtype=self.dtype)
            if tuple(grad.shape) != self.shape:
                raise ValueError(f"backward(): gradient of shape {tuple(grad.shape)} given for a "
                                 f"tensor of shape {self.shape}")
        if self.is_leaf:
            _accumulate_leaf(self, grad)
            return
        _run_backward(self._node, grad, retain_graph)

    # ---------------------------------------------------------------- arithmetic glue
    def __add__(self, other):
        if isinstance(other, Tensor):
            return Add.apply(self, other)
        return AddScalar.apply(self, value=_scalar(other, "add"))

    __radd__ = __add__

    def __neg__(self):
        return Neg.apply(self)

    def __sub__(self, other):
        return self + (-other)

    def __rsub__(self, other):
        return (-self) + other

    def __mul__(self, other):
        if isinstance(other, Tensor):
            return Mul.apply(self, other)
        return MulScalar.apply(self, value=_scalar(other, "multiply"))

    __rmul__ = __mul__

    def __truediv__(self, other):
        return MulScalar.apply(self, value=1.0 / _scalar(other, "divide"))

    def sum(self, axis=None, keepdims: bool = False) -> "Tensor":
        return Sum.apply(self, axis=axis, keepdims=keepdims)

    def mean(self, axis=None, keepdims: bool = False) -> "Tensor":
        count = self.size if axis is None else int(np.prod(
            [self.shape[a] for a in np.atleast_1d(axis)], dtype=np.int64))
        return self.sum(axis, keepdims) * (1.0 / count if count else float("nan"))

    def reshape(self, *shape) -> "Tensor":
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return Reshape.apply(self, shape=shape)

    def __getitem__(self, index) -> "Tensor":
        return GetItem.apply(self, index=index)


def _shares_memory(device, a, b) -> bool:
    if not (device.owns(b) and hasattr(device.xp, "may_share_memory")):
        return False
    return bool(device.xp.may_share_memory(a, b))


def _scalar(value, what: str):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
        raise TypeError(f"cannot {what} a Tensor and a {type(value).__name__} "
                        f"(use a Tensor or a Python/NumPy number)")
    return value


def tensor(array_like, device="cpu", dtype=None, requires_grad: bool = False) -> Tensor:
    """A new leaf tensor holding a copy of ``array_like`` on ``device``.

    ``dtype=None`` keeps the dtype of an array (NumPy, CuPy or Tensor) and turns
    Python floats into float32 (ints stay int64), like PyTorch.
    """
    return Tensor(array_like, device=device, dtype=dtype, requires_grad=requires_grad)


# --------------------------------------------------------------------------- Function

class Function:
    """One differentiable op on raw arrays; see the module docstring.

    In ``forward``/``backward``, ``self.device`` is the inputs' device and
    ``self.needs_input_grad`` says which inputs need a gradient. ``backward``
    returns one gradient per tensor input (a tuple, or the array itself for one
    input), each of that input's shape (it is cast to the input's dtype), or None.
    """

    def __init__(self, device: Device):
        self.device = device
        self.saved: tuple = ()
        self.needs_input_grad: tuple = ()
        self._parents: tuple | None = None  # per input: a Function, a leaf Tensor, or None
        self._shapes: tuple = ()
        self._dtypes: tuple = ()

    def save_for_backward(self, *arrays) -> None:
        self.saved = arrays

    def forward(self, *arrays, **kwargs):
        raise TypeError(f"{type(self).__name__} does not define forward(); every Function "
                        f"subclass must")

    def backward(self, grad_out):
        raise TypeError(f"{type(self).__name__} does not define backward(), so no gradient "
                        f"flows through it")

    @classmethod
    def apply(cls, *inputs, **kwargs) -> Tensor:
        name = cls.__name__
        if not inputs:
            raise TypeError(f"{name}.apply needs at least one Tensor input")
        for i, t in enumerate(inputs):
            if not isinstance(t, Tensor):
                raise TypeError(f"{name}.apply: input {i} is a {type(t).__name__}, not a Tensor "
                                f"(pass non-tensor arguments by keyword)")
        device = inputs[0].device
        for t in inputs[1:]:
            if t.device != device:
                raise DeviceError(f"{name}: inputs are on different devices, {device.name!r} "
                                  f"and {t.device.name!r}; move one with .to()")
        fn = cls(device)
        fn.needs_input_grad = tuple(t.requires_grad for t in inputs)
        record = is_grad_enabled() and any(fn.needs_input_grad)
        with device.activate():  # ops allocate on the inputs' GPU, not CuPy's current one
            out = fn.forward(*(t.data for t in inputs), **kwargs)
        out_device = getattr(fn, "output_device", device)
        with out_device.activate():
            out = out_device.xp.asarray(out)  # NumPy reductions return scalars
        if not record:
            fn.saved = ()
            return Tensor._wrap(out, out_device)
        fn._parents = tuple((t._node if t._node is not None else t) if t.requires_grad else None
                            for t in inputs)
        fn._shapes = tuple(t.shape for t in inputs)
        fn._dtypes = tuple(t.dtype for t in inputs)
        return Tensor._wrap(out, out_device, requires_grad=True, node=fn)


def _accumulate_leaf(leaf: Tensor, grad) -> None:
    if leaf.grad is None:
        leaf.grad = Tensor._wrap(grad.copy(), leaf.device)  # never alias another gradient
    else:
        leaf.grad = Tensor._wrap(leaf.grad.data + grad, leaf.device)


def _topological_order(root: Function) -> list[Function]:
    """The nodes reachable from ``root``, each before every node it consumes.

    Iterative depth-first search: a node is marked when first expanded and emitted
    after all its inputs' nodes (post-order); reversed, consumers come first.
    """
    order, visited = [], set()
    stack = [(root, False)]
    while stack:
        node, inputs_done = stack.pop()
        if inputs_done:
            order.append(node)
            continue
        if id(node) in visited:
            continue  # reached again along another path
        visited.add(id(node))
        if node._parents is None:
            raise RuntimeError(f"backward() through a graph whose buffers were freed "
                               f"({type(node).__name__} has run its backward already); "
                               f"pass retain_graph=True to the first backward() to go twice")
        stack.append((node, True))
        for parent in node._parents:
            if isinstance(parent, Function) and id(parent) not in visited:
                stack.append((parent, False))
    order.reverse()
    return order


def _leaf_uses(order: list[Function]) -> dict[int, int]:
    """How many inputs of the nodes in ``order`` each leaf tensor is."""
    uses: dict[int, int] = {}
    for node in order:
        for parent in node._parents:
            if isinstance(parent, Tensor):
                uses[id(parent)] = uses.get(id(parent), 0) + 1
    return uses


def _leaf_done(key: int, uses: dict, leaves: dict) -> None:
    """One use of leaf ``key`` handled; after its last, its gradient is final: it is
    accumulated now and its ``grad_hooks`` run (``convnet.distributed`` starts reducing
    it while the rest of the backward pass goes on)."""
    uses[key] -= 1
    if uses[key] == 0 and key in leaves:
        leaf, g = leaves.pop(key)
        _accumulate_leaf(leaf, g)
        for hook in getattr(leaf, "grad_hooks", ()):
            hook(leaf)


def _run_backward(root: Function, grad, retain_graph: bool) -> None:
    order = _topological_order(root)
    grads = {id(root): grad}  # the gradient of each node's output, summed over its uses
    leaves: dict[int, tuple[Tensor, object]] = {}
    uses = _leaf_uses(order)
    for node in order:
        grad_out = grads.pop(id(node), None)
        if grad_out is None:
            for parent in node._parents:
                if isinstance(parent, Tensor):
                    _leaf_done(id(parent), uses, leaves)
            continue
        name = type(node).__name__
        with node.device.activate():
            in_grads = node.backward(grad_out)
        if not isinstance(in_grads, tuple):
            in_grads = (in_grads,)
        if len(in_grads) != len(node._parents):
            raise RuntimeError(f"{name}.backward returned {len(in_grads)} gradients for "
                               f"{len(node._parents)} inputs")
        parents = node._parents
        for parent, g, shape, dtype in zip(parents, in_grads, node._shapes, node._dtypes):
            if parent is None or g is None:
                continue
            if tuple(g.shape) != shape:
                raise RuntimeError(f"{name}.backward returned a gradient of shape "
                                   f"{tuple(g.shape)} for an input of shape {shape}")
            with node.device.activate():
                g = node.device.xp.asarray(g).astype(dtype, copy=False)  # scalars -> 0-d arrays
            if isinstance(parent, Tensor):
                key = id(parent)
                previous = leaves.get(key)
                g_sum = g if previous is None else previous[1] + g
                leaves[key] = (parent, g_sum)
            else:
                key = id(parent)
                grads[key] = g if key not in grads else grads[key] + g
        if not retain_graph:
            node.saved = ()
            node._parents = None
        for parent in parents:
            if isinstance(parent, Tensor):
                _leaf_done(id(parent), uses, leaves)


# --------------------------------------------------------------------------- glue ops
# Small ops on raw arrays through ``self.device.xp``: enough to write graphs (losses,
# tests) on any device. They are not kernels; the network's ops live in functional.

def _unbroadcast(xp, grad, shape):
    """Sum ``grad`` down to ``shape`` (the inverse of NumPy broadcasting)."""
    if tuple(grad.shape) == tuple(shape):
        return grad
    extra = grad.ndim - len(shape)
    if extra:
        grad = grad.sum(axis=tuple(range(extra)))
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if axes:
        grad = grad.sum(axis=axes, keepdims=True)
    return xp.asarray(grad)


class Add(Function):
    def forward(self, a, b):
        self.shapes = (a.shape, b.shape)
        return a + b

    def backward(self, grad):
        xp = self.device.xp
        return _unbroadcast(xp, grad, self.shapes[0]), _unbroadcast(xp, grad, self.shapes[1])


class Mul(Function):
    def forward(self, a, b):
        self.save_for_backward(b if self.needs_input_grad[0] else None,
                               a if self.needs_input_grad[1] else None)
        self.shapes = (a.shape, b.shape)
        return a * b

    def backward(self, grad):
        xp = self.device.xp
        b, a = self.saved
        ga = _unbroadcast(xp, grad * b, self.shapes[0]) if b is not None else None
        gb = _unbroadcast(xp, grad * a, self.shapes[1]) if a is not None else None
        return ga, gb


class AddScalar(Function):
    def forward(self, x, value):
        return (x + value).astype(x.dtype, copy=False)

    def backward(self, grad):
        return grad


class MulScalar(Function):
    def forward(self, x, value):
        self.value = value
        return (x * value).astype(x.dtype, copy=False)

    def backward(self, grad):
        return (grad * self.value).astype(grad.dtype, copy=False)


class Neg(Function):
    def forward(self, x):
        return -x

    def backward(self, grad):
        return -grad


class Sum(Function):
    def forward(self, x, axis=None, keepdims=False):
        self.shape, self.axis, self.keepdims = x.shape, axis, keepdims
        return x.sum(axis=axis, keepdims=keepdims)

    def backward(self, grad):
        xp = self.device.xp
        if self.axis is not None and not self.keepdims:
            grad = xp.expand_dims(grad, self.axis)
        full = xp.empty(self.shape, dtype=grad.dtype)
        full[...] = grad
        return full


class Reshape(Function):
    def forward(self, x, shape):
        self.shape = x.shape
        return x.reshape(shape)

    def backward(self, grad):
        return grad.reshape(self.shape)


def _is_basic_index(index) -> bool:
    """Whether ``index`` is basic indexing (ints, slices, None, ...): a view, no repeats."""
    items = index if isinstance(index, tuple) else (index,)
    return all(isinstance(i, (int, np.integer, slice)) or i is None or i is Ellipsis
               for i in items)


class GetItem(Function):
    """``x[index]``. Basic indexing gives a view (a misaligned one for ``x[1:]``);
    advanced indexing a copy, whose backward adds the gradients of repeated indices."""

    def forward(self, x, index):
        self.shape, self.index = x.shape, index
        return x[index]

    def backward(self, grad):
        xp = self.device.xp
        full = xp.zeros(self.shape, dtype=grad.dtype)
        if _is_basic_index(self.index):
            full[self.index] = grad
        elif xp is np:
            np.add.at(full, self.index, grad)
        else:
            import cupyx
            cupyx.scatter_add(full, self.index, grad)
        return full


class _ToDevice(Function):
    def forward(self, x, target, name=None):
        self.output_device, self.name = target, name
        _record("forward", self.device, target, x.nbytes, name)
        if target == self.device:
            return x  # a logical crossing between columns on one device: nothing to copy
        out = target.asarray(x)
        return out.copy() if _shares_memory(target, out, x) else out  # cpu <-> emu

    def backward(self, grad):
        _record("backward", self.output_device, self.device, grad.nbytes, self.name)
        return self.device.asarray(grad)


# --------------------------------------------------------------------------- transfer log

class TransferLog:
    """The device crossings recorded inside one ``record_transfers()`` block.

    ``records`` holds one ``(phase, from, to, name, nbytes)`` per crossing, in order
    (phase "forward" for ``Tensor.to``, "backward" for the gradient going back).
    """

    def __init__(self):
        self.records: list[tuple[str, str, str, str | None, int]] = []

    @property
    def count(self) -> int:
        return len(self.records)

    @property
    def nbytes(self) -> int:
        return sum(r[4] for r in self.records)

    def summary(self) -> dict:
        """``{(phase, from, to, name): {"count": c, "bytes": b}}``, in first-seen order."""
        out: dict = {}
        for phase, src, dst, name, nbytes in self.records:
            entry = out.setdefault((phase, src, dst, name), {"count": 0, "bytes": 0})
            entry["count"] += 1
            entry["bytes"] += nbytes
        return out

    def by_pair(self) -> dict:
        """``{(from, to): {"count": c, "bytes": b}}`` over both phases."""
        out: dict = {}
        for _, src, dst, _, nbytes in self.records:
            entry = out.setdefault((src, dst), {"count": 0, "bytes": 0})
            entry["count"] += 1
            entry["bytes"] += nbytes
        return out

    def format(self) -> str:
        lines = [f"{self.count} crossings, {self.nbytes} bytes"]
        for (phase, src, dst, name), e in self.summary().items():
            lines.append(f"  {phase:<8} {src} -> {dst}  {name or '-':<24} "
                         f"x{e['count']}  {e['bytes']} B")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"TransferLog({self.count} crossings, {self.nbytes} bytes)"


def _active_logs() -> list:
    logs = getattr(_mode, "transfer_logs", None)
    if logs is None:
        logs = _mode.transfer_logs = []
    return logs


def _record(phase: str, src: Device, dst: Device, nbytes: int, name) -> None:
    for log in _active_logs():
        log.records.append((phase, src.name, dst.name, name, int(nbytes)))


@contextmanager
def record_transfers():
    """Record every device crossing (forward and backward) made in this thread
    inside the block into the ``TransferLog`` it yields; blocks may nest."""
    log = TransferLog()
    logs = _active_logs()
    logs.append(log)
    try:
        yield log
    finally:
        logs.remove(log)
