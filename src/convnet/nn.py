"""Layers: modules that hold parameters and call ``convnet.functional``.

A ``Module`` registers the ``Parameter``s and sub-modules assigned to its
attributes, in assignment order, and offers ``parameters()`` /
``named_parameters()``, ``train()`` / ``eval()``, ``state_dict()`` /
``load_state_dict()`` (NumPy arrays by dotted name) and ``to(device)``. Calling a
module runs its ``forward``.

Initialisation follows Krizhevsky et al. (2012), section 5: weights from a zero-mean
Gaussian with standard deviation 0.01, biases constant (0 unless ``bias_init`` says
otherwise). ``rng`` (a seed or a ``numpy.random.Generator``) makes it reproducible;
layers built one after another from one Generator draw from one stream.
"""
from __future__ import annotations

import numbers
from collections import OrderedDict
from typing import NamedTuple

import numpy as np

from . import arguments
from . import functional as F
from .backend import get_device
from .ops.dropout import check_arguments as _check_dropout
from .state_dict import differences
from .tensor import Tensor

__all__ = ["LoadResult", "Module", "Parameter", "Sequential", "Conv2d", "LocalResponseNorm",
           "MaxPool2d", "ReLU", "Dropout", "Linear", "Flatten"]


class Parameter(Tensor):
    """A leaf tensor that requires grad and that a Module registers as its parameter."""

    def __init__(self, data, device="cpu", dtype=None):
        super().__init__(data, device=device, dtype=dtype, requires_grad=True)

    def __repr__(self) -> str:
        return "Parameter(" + super().__repr__()[len("tensor("):]


def _generator(rng) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or (isinstance(rng, numbers.Integral) and not isinstance(rng, bool)):
        return np.random.default_rng(rng)
    raise TypeError(f"rng must be None, an int seed or a numpy.random.Generator, "
                    f"not {type(rng).__name__}")


def _float_dtype(dtype) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        raise TypeError(f"parameters must have a floating-point dtype, not {dtype}")
    return dtype


def _gaussian(rng, shape, std: float, dtype) -> np.ndarray:
    rng = _generator(rng)
    draw_dtype = np.float64 if dtype == np.float64 else np.float32
    return (rng.standard_normal(shape, dtype=draw_dtype) * draw_dtype(std)).astype(dtype, copy=False)


def _constant(shape, value: float, dtype) -> np.ndarray:
    return np.full(shape, value, dtype=dtype)


def _new_parameter(array: np.ndarray, device) -> Parameter:
    """A Parameter owning ``array`` (freshly made, so no copy is needed on the host)."""
    return Parameter._wrap(device.asarray(array), device, requires_grad=True)


class Module:
    """The base of every layer; see the module docstring."""

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise RuntimeError(f"{type(self).__name__}.__init__ must call super().__init__() "
                               f"before assigning attributes")
        self._parameters.pop(name, None)
        self._modules.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def forward(self, *args, **kwargs):
        raise TypeError(f"{type(self).__name__} does not define forward(); every Module "
                        f"subclass that is called must")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # ---------------------------------------------------------------- structure
    def named_modules(self, prefix: str = ""):
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def children(self):
        return iter(self._modules.values())

    def named_parameters(self, prefix: str = ""):
        """(dotted name, Parameter) for this module's parameters, then its children's."""
        seen = set()
        for mod_name, module in self.named_modules(prefix):
            for name, p in module._parameters.items():
                if id(p) in seen:
                    continue
                seen.add(id(p))
                yield (f"{mod_name}.{name}" if mod_name else name), p

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def num_parameters(self) -> int:
        return sum(p.size for p in self.parameters())

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    # ---------------------------------------------------------------- modes
    def train(self, mode: bool = True) -> "Module":
        for _, module in self.named_modules():
            object.__setattr__(module, "training", bool(mode))
        return self

    def eval(self) -> "Module":
        return self.train(False)

    # ---------------------------------------------------------------- placement
    def to(self, device) -> "Module":
        """Move every parameter to ``device`` in place (the Parameter objects stay the
        same, so an optimizer built later or earlier still holds them; gradients are
        dropped)."""
        device = get_device(device)
        for p in self.parameters():
            if p.device != device:
                p.data = device.asarray(p.data)
                p.device = device
            p.grad = None
        return self

    # ---------------------------------------------------------------- state
    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """Every parameter as a NumPy array (a copy), by dotted name, in registration order."""
        return OrderedDict((name, np.array(p.numpy(), copy=True))
                           for name, p in self.named_parameters())

    def load_state_dict(self, state, strict: bool = True) -> "LoadResult":
        """Copy ``state`` (name → array) into the parameters, in place.

        ``strict`` (default): every name must be present, none extra, and every shape
        equal. ``strict=False``: names only in the model keep their values and names
        only in ``state`` are passed over (a model grown or cut from another), but
        every name in both must still have the parameter's shape. Otherwise a
        ValueError lists all that differ and no parameter is changed. Values are cast
        to each parameter's dtype and copied to its device. Returns the names passed
        over: ``LoadResult(missing, unexpected)`` (both empty when strict).
        """
        if not hasattr(state, "items"):
            raise TypeError(f"load_state_dict: expected a mapping of names to arrays, "
                            f"not {type(state).__name__}")
        params = OrderedDict(self.named_parameters())
        missing = [name for name in params if name not in state]
        unexpected = [name for name in state if name not in params]
        if not strict:
            params = OrderedDict((n, p) for n, p in params.items() if n in state)
            state = {n: v for n, v in state.items() if n in params}
        problems = differences(state, {name: p.shape for name, p in params.items()},
                               given_where="in the state dict", expected_where="in the model")
        if problems:
            raise ValueError(f"load_state_dict: the state dict does not match "
                             f"{type(self).__name__}: " + "; ".join(problems)
                             + ("" if not strict else " (strict=False loads the names both "
                                "have)" if not [q for q in problems if "shape" in q] else ""))
        values = {}
        for name, p in params.items():
            value = state[name]
            if isinstance(value, Tensor):
                value = value.numpy()
            value = np.asarray(value) if not hasattr(value, "__cuda_array_interface__") else value
            if getattr(value, "dtype", np.dtype(np.float64)).kind not in "fiu":
                raise TypeError(f"load_state_dict: {name} has dtype {value.dtype}, not a number")
            values[name] = value
        for name, p in params.items():  # all checked: now change them
            p.data[...] = p.device.asarray(values[name], dtype=p.dtype)
        return LoadResult(missing if not strict else [], unexpected if not strict else [])

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        if self._modules:
            for name, child in self._modules.items():
                text = repr(child).replace("\n", "\n  ")
                lines.append(f"  ({name}): {text}")
            return "\n".join(lines) + "\n)"
        return lines[0] + ")"


class LoadResult(NamedTuple):
    """What ``load_state_dict(strict=False)`` passed over: names only in the model
    (``missing``, kept as they were) and only in the state dict (``unexpected``)."""

    missing: list
    unexpected: list


class Sequential(Module):
    """Modules applied in order; named "0", "1", ... or by a dict's keys."""

    def __init__(self, *modules):
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], dict):
            items = list(modules[0].items())
        else:
            items = [(str(i), m) for i, m in enumerate(modules)]
        for name, module in items:
            if not isinstance(module, Module):
                raise TypeError(f"Sequential: item {name!r} is a {type(module).__name__}, "
                                f"not a Module")
            if not isinstance(name, str) or not name or "." in name:
                raise ValueError(f"Sequential: names must be non-empty strings without dots, "
                                 f"got {name!r}")
            setattr(self, name, module)

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def __getitem__(self, index):
        if isinstance(index, str):
            return self._modules[index]
        return list(self._modules.values())[index]

    def forward(self, x):
        for module in self._modules.values():
            x = module(x)
        return x


class Conv2d(Module):
    """2-D convolution with fused bias and optional ReLU; weight (out, in/groups, kh, kw).
    ``algorithm``: ``F.conv2d``'s ("auto": the one the performance model predicts fastest
    for each input shape; "direct"; "winograd" for 3x3 filters at stride 1). With "auto"
    on a device that runs kernels, ``chosen`` holds the last ``perf.choose.Choice``
    followed (``convnet.app.conv_choices`` records it in a run's checkpoints)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, groups=1,
                 bias=True, relu=False, *, weight_std=0.01, bias_init=0.0, rng=None,
                 device="cpu", dtype=np.float32, algorithm="auto"):
        super().__init__()
        in_channels = arguments.positive_int(in_channels, "Conv2d: in_channels")
        out_channels = arguments.positive_int(out_channels, "Conv2d: out_channels")
        groups = arguments.positive_int(groups, "Conv2d: groups")
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"Conv2d: groups={groups} must divide in_channels={in_channels} and "
                             f"out_channels={out_channels}")
        kh, kw = arguments.pair(kernel_size, "Conv2d: kernel_size")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size, self.stride = (kh, kw), stride
        self.padding, self.relu = padding, bool(relu)
        if algorithm not in F.conv.ALGORITHMS:
            raise ValueError(f"Conv2d: algorithm must be one of {F.conv.ALGORITHMS}, got "
                             f"{algorithm!r}")
        self.algorithm = algorithm
        self.chosen = None
        dtype, device = _float_dtype(dtype), get_device(device)
        shape = (out_channels, in_channels // groups, kh, kw)
        self.weight = _new_parameter(_gaussian(rng, shape, weight_std, dtype), device)
        self.bias = (_new_parameter(_constant((out_channels,), bias_init, dtype), device)
                     if bias else None)

    def forward(self, x):
        y = F.conv2d(x, self.weight, self.bias, stride=self.stride, padding=self.padding,
                     groups=self.groups, relu=self.relu, algorithm=self.algorithm)
        if self.algorithm == "auto":  # what conv2d followed (kept per shape: a look-up)
            self.chosen = F.conv.choice_for(x, self.weight, self.stride, self.padding,
                                            self.groups) or self.chosen
        return y

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, groups={self.groups}, "
                f"relu={self.relu}" + (f", algorithm={self.algorithm!r}"
                                       if self.algorithm != "auto" else ""))


class Linear(Module):
    """``y = act(x · Wᵀ + b)``, weight (out_features, in_features)."""

    def __init__(self, in_features, out_features, bias=True, relu=False, *, weight_std=0.01,
                 bias_init=0.0, rng=None, device="cpu", dtype=np.float32):
        super().__init__()
        self.in_features = arguments.positive_int(in_features, "Linear: in_features")
        self.out_features = arguments.positive_int(out_features, "Linear: out_features")
        self.relu = bool(relu)
        dtype, device = _float_dtype(dtype), get_device(device)
        shape = (self.out_features, self.in_features)
        self.weight = _new_parameter(_gaussian(rng, shape, weight_std, dtype), device)
        self.bias = (_new_parameter(_constant((self.out_features,), bias_init, dtype), device)
                     if bias else None)

    def forward(self, x, dropout: "Dropout | None" = None):
        """``act(x · Wᵀ + b)``; with ``dropout`` (a ``Dropout`` layer) also that layer's
        dropout, in the same pass (``F.linear(..., dropout=p)``: the same mask and seed
        stream as ``dropout(self(x))``, bit for bit)."""
        if dropout is None:
            return F.linear(x, self.weight, self.bias, relu=self.relu)
        if not isinstance(dropout, Dropout):
            raise TypeError(f"Linear: dropout must be a Dropout layer, not "
                            f"{type(dropout).__name__}")
        return F.linear(x, self.weight, self.bias, relu=self.relu, dropout=dropout.p,
                        training=dropout.training, seed=dropout.next_seed(),
                        mode=dropout.mode, offset=dropout.offset_of(self.out_features))

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, relu={self.relu}"


class LocalResponseNorm(Module):
    """Cross-channel LRN of the paper, ``b = a / (k + α Σ a²)^β`` over ``size`` channels
    (α not divided by size); ``groups`` confines the windows to each channel group."""

    def __init__(self, size=5, alpha=1e-4, beta=0.75, k=2.0, groups=1):
        super().__init__()
        self.size, self.alpha, self.beta, self.k, self.groups = size, alpha, beta, k, groups

    def forward(self, x):
        return F.local_response_norm(x, size=self.size, alpha=self.alpha, beta=self.beta,
                                     k=self.k, groups=self.groups)

    def extra_repr(self) -> str:
        return (f"size={self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}, "
                f"groups={self.groups}")


class MaxPool2d(Module):
    def __init__(self, kernel_size=3, stride=2, padding=0):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def forward(self, x):
        return F.max_pool2d(x, kernel_size=self.kernel_size, stride=self.stride,
                            padding=self.padding)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class ReLU(Module):
    def forward(self, x):
        return F.relu(x)


class Dropout(Module):
    """Dropout with probability ``p`` in training, per ``F.dropout`` (``mode`` "inverted"
    or "paper"). ``seed`` gives the layer its own reproducible stream of mask seeds
    (one drawn per training forward); without it, seeds come from
    ``convnet.ops.dropout``'s generator.

    ``row_offset`` (default 0) is the row of the whole batch at which this layer's input
    starts: a data-parallel rank sets it to its share's first row
    (``convnet.distributed.DataParallel.step``), so its masks are exactly those rows of
    the masks one process draws on the whole batch (the element offset
    ``row_offset * units``, ``F.dropout``'s ``offset``)."""

    def __init__(self, p=0.5, mode="inverted", seed=None):
        super().__init__()
        self.p, self.mode = _check_dropout(p, mode), mode
        self._seeds = None if seed is None else _generator(seed)
        self.row_offset = 0

    def offset_of(self, units: int) -> int:
        """The mask's element offset for an input whose rows hold ``units`` elements:
        ``row_offset`` rows of that width (0 for a whole batch)."""
        return arguments.integer(self.row_offset, "Dropout: row_offset", low=0) * int(units)

    def reseed(self, seed) -> None:
        """Restart the layer's stream of mask seeds from ``seed`` (an int, a sequence of
        ints such as (run seed, epoch, layer), or a numpy Generator)."""
        self._seeds = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)

    def next_seed(self):
        """The mask seed of the next forward: drawn from the layer's stream in training,
        else None (no mask, or ``convnet.ops.dropout``'s generator)."""
        if self.training and self._seeds is not None:
            return int(self._seeds.integers(0, 2**64, dtype=np.uint64))
        return None

    def skip_forward(self) -> None:
        """Draw (and drop) the seed of one training forward: a data-parallel rank with no
        images in a step keeps its stream in step with the ranks that ran one."""
        if self._seeds is not None:
            self._seeds.integers(0, 2**64, dtype=np.uint64)

    def forward(self, x):
        units = int(np.prod(x.shape[1:], dtype=np.int64))
        return F.dropout(x, self.p, training=self.training, seed=self.next_seed(),
                         mode=self.mode, offset=self.offset_of(units))

    def extra_repr(self) -> str:
        return f"p={self.p}, mode={self.mode!r}"


class Flatten(Module):
    def __init__(self, start_dim=1):
        super().__init__()
        self.start_dim = start_dim

    def forward(self, x):
        return F.flatten(x, self.start_dim)

