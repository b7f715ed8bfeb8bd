"""AlexNet (Krizhevsky, Sutskever & Hinton, NIPS 2012), in one column or split over two
devices the way the paper split it over two GPUs.

The network (section 3.5 and figure 2 of the paper), for ``widths`` = the paper's
(96, 256, 384, 384, 256, 4096, 4096):

    conv1 96@11×11/4 → ReLU → LRN → max-pool 3/2
    conv2 256@5×5 pad 2, each column sees only its own conv1 maps → ReLU → LRN → max-pool 3/2
    conv3 384@3×3 pad 1, sees the conv2 maps of both columns → ReLU
    conv4 384@3×3 pad 1, own column → ReLU
    conv5 256@3×3 pad 1, own column → ReLU → max-pool 3/2
    fc6 4096 → ReLU → dropout 0.5;  fc7 4096 → ReLU → dropout 0.5;  fc8 num_classes

LRN: k=2, n=5, α=1e-4, β=0.75. ReLUs are fused into the layers before them.
Initialisation (section 5): weights N(0, 0.01); biases 1 in conv2, conv4, conv5, fc6
and fc7, 0 elsewhere. 60,965,224 parameters for 1000 classes.

Placement:

* ``columns=1``: one device. The column structure is kept inside the layers: conv2,
  conv4 and conv5 are grouped convolutions (``groups=2``) and the LRN windows stay in
  each half of the channels (``lrn_groups=2``), so the network computes exactly what
  the two-column one computes (``lrn_groups=1`` gives the common single-GPU variant).
* ``columns=2``: column c (``column0``, ``column1``) holds half of every layer — 48,
  128, 192, 192, 128 filters, 2048 + 2048 units in fc6 and fc7, fc8 split
  ceil(C/2) + floor(C/2) — on ``devices[c]``. Tensors cross between the columns only
  at the inputs of conv3, fc6, fc7 and fc8, each column sending its half to the
  other, and the logits of column 1 are gathered on ``devices[0]``; the backward
  pass mirrors those crossings. Each crossing goes through ``Tensor.to(..., name=)``,
  so ``convnet.record_transfers`` sees exactly that plan, even with both columns on
  one device (``devices=["cpu", "cpu"]``).
* Two GPUs (``devices=["cuda:0", "cuda:1"]``): each column runs on its GPU's current
  stream, so the two compute at once; each crossing is a copy on copy streams
  (peer-to-peer where the GPUs allow it, else staged through pinned host memory:
  ``crossing_path``), ordered by events after the sending column's work and
  before the receiving column's, with no host synchronisation: in backward the sending
  column goes on with its next layer while its gradient crosses
  (``convnet.backend.crossing`` gives the plan).

``one_to_two_columns`` / ``two_to_one_columns`` map a state dict of one layout onto
the other (every parameter is split in halves along its first axis, or joined), so
both layouts can run the same weights.
"""
from __future__ import annotations

import inspect
from collections import OrderedDict

import numpy as np

from .. import arguments
from .. import functional as F
from .. import nn
from ..backend import crossing, get_device
from ..state_dict import differences
from ..tensor import Tensor

__all__ = ["AlexNet", "alexnet", "one_to_two_columns", "two_to_one_columns", "PAPER_WIDTHS",
           "LAYERS"]

PAPER_WIDTHS = (96, 256, 384, 384, 256, 4096, 4096)  # conv1..conv5 filters, fc6, fc7 units
LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")  # with parameters
LRN = dict(size=5, alpha=1e-4, beta=0.75, k=2.0)
WEIGHT_STD = 0.01

# The order of the layers, cut where the two columns exchange activations.
_STAGES = (
    ("conv1", "norm1", "pool1", "conv2", "norm2", "pool2"),
    ("conv3", "conv4", "conv5", "pool5", "flatten"),
    ("fc6", "drop6"),
    ("fc7", "drop7"),
    ("fc8",),
)
_CROSSINGS = ("conv3", "fc6", "fc7", "fc8")  # the layers whose inputs cross columns


def _out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def feature_sizes(input_size: int) -> OrderedDict:
    """Spatial size after each layer for a square input (conv1 padded by 2 for 224, else 0).
    conv2..conv5 keep their input's size (padding 2 for 5×5, 1 for 3×3)."""
    c1 = _out(input_size, 11, 4, 2 if input_size == 224 else 0)
    p1 = _out(c1, 3, 2, 0)
    p2 = _out(p1, 3, 2, 0)
    p5 = _out(p2, 3, 2, 0)
    return OrderedDict(conv1=c1, norm1=c1, pool1=p1, conv2=p1, norm2=p1, pool2=p2, conv3=p2,
                       conv4=p2, conv5=p2, pool5=p5)


def _check_input_size(input_size) -> int:
    input_size = arguments.integer(input_size, "alexnet: input_size")
    if input_size < 11:
        raise ValueError(f"alexnet: input_size {input_size} is smaller than conv1's 11×11 filter")
    sizes = feature_sizes(input_size)
    for pool, src in (("pool1", "conv1"), ("pool2", "conv2"), ("pool5", "conv5")):
        if sizes[pool] < 1:
            raise ValueError(f"alexnet: input_size {input_size} is too small: {src} gives "
                             f"{sizes[src]}×{sizes[src]} maps and {pool} (3×3, stride 2) "
                             f"needs at least 3×3")
    return input_size


def _check_widths(widths) -> tuple[int, ...]:
    given = tuple(widths)
    if len(given) != 7:
        raise ValueError(f"alexnet: widths must be 7 ints (conv1..conv5 filters, fc6, fc7 "
                         f"units), got {given!r}")
    widths = tuple(arguments.integer(w, f"alexnet: widths[{i}]") for i, w in enumerate(given))
    if any(w < 2 or w % 2 for w in widths):
        raise ValueError(f"alexnet: every width must be even and >= 2 (each column takes half), "
                         f"got {given!r}")
    return widths


class _Column(nn.Module):
    """The layers of one column (``split=2``: half of each layer, for two devices) or of
    the whole network (``split=1``: grouped conv2/4/5 and LRN in ``lrn_groups``)."""

    def __init__(self, widths, num_classes, features_hw, pad1, split, lrn_groups, dropout,
                 dropout_mode, weight_std, rng, device, dtype):
        super().__init__()
        w1, w2, w3, w4, w5, w6, w7 = widths
        h = split  # every width of a column is divided by h
        groups = 2 if split == 1 else 1
        conv = dict(rng=rng, device=device, dtype=dtype, weight_std=weight_std, relu=True)
        lin = dict(rng=rng, device=device, dtype=dtype, weight_std=weight_std)
        self.conv1 = nn.Conv2d(3, w1 // h, 11, stride=4, padding=pad1, **conv)
        self.norm1 = nn.LocalResponseNorm(groups=lrn_groups, **LRN)
        self.pool1 = nn.MaxPool2d(3, 2)
        self.conv2 = nn.Conv2d(w1 // h, w2 // h, 5, padding=2, groups=groups, bias_init=1.0, **conv)
        self.norm2 = nn.LocalResponseNorm(groups=lrn_groups, **LRN)
        self.pool2 = nn.MaxPool2d(3, 2)
        self.conv3 = nn.Conv2d(w2, w3 // h, 3, padding=1, **conv)  # sees both columns
        self.conv4 = nn.Conv2d(w3 // h, w4 // h, 3, padding=1, groups=groups, bias_init=1.0,
                               **conv)
        self.conv5 = nn.Conv2d(w4 // h, w5 // h, 3, padding=1, groups=groups, bias_init=1.0,
                               **conv)
        self.pool5 = nn.MaxPool2d(3, 2)
        self.flatten = nn.Flatten()
        self.fc6 = nn.Linear(w5 * features_hw * features_hw, w6 // h, relu=True, bias_init=1.0,
                             **lin)
        self.drop6 = nn.Dropout(dropout, mode=dropout_mode, seed=_seed(rng))
        self.fc7 = nn.Linear(w6, w7 // h, relu=True, bias_init=1.0, **lin)
        self.drop7 = nn.Dropout(dropout, mode=dropout_mode, seed=_seed(rng))
        self.fc8 = nn.Linear(w7, num_classes, **lin)


def _run(module, x, names, record, prefix, fuse):
    """Apply ``module``'s layers ``names`` in order, recording each output if asked. With
    ``fuse``, an LRN followed by a max-pool runs as one op (only the pool's output exists,
    and only it is recorded). A ReLU fully-connected layer followed by dropout always
    runs as one op (``nn.Linear.forward`` with the dropout layer: the mask in the bias +
    ReLU epilogue, bit-identical to the two layers), except when recording (so that
    every layer's output exists to record)."""
    i = 0
    while i < len(names):
        name, layer = names[i], getattr(module, names[i])
        after = getattr(module, names[i + 1]) if i + 1 < len(names) else None
        if record is None and isinstance(layer, nn.Linear) and isinstance(after, nn.Dropout) \
                and layer.relu and layer.bias is not None:
            x = layer(x, dropout=after)
            name, i = names[i + 1], i + 2
        elif fuse and isinstance(layer, nn.LocalResponseNorm) and isinstance(after, nn.MaxPool2d):
            x = F.local_response_norm_max_pool2d(
                x, size=layer.size, alpha=layer.alpha, beta=layer.beta, k=layer.k,
                groups=layer.groups, kernel_size=after.kernel_size, stride=after.stride,
                padding=after.padding)
            name, i = names[i + 1], i + 2
        else:
            x = layer(x)
            i += 1
        if record is not None:
            record[prefix + name] = x
    return x


def _seed(rng):
    return None if rng is None else int(rng.integers(0, 2**63))


class AlexNet(nn.Module):
    """The network of Krizhevsky et al. (2012); see this module's docstring
    (``alexnet(...)`` builds it with the same arguments).

    ``input_size``: 227 (default) gives 55×55 maps after conv1 with no padding, as the
    paper's figure shows. The paper says 224, but (224 − 11)/4 + 1 = 54.25 is not a
    whole number of positions; ``input_size=224`` therefore pads conv1 by 2, which
    gives (224 + 4 − 11)/4 + 1 = 55 (floor) as well. Other sizes use no padding and
    must leave every pooling layer at least 3×3 to pool.
    ``columns``/``devices``: one column on ``devices[0]``, or two, column c on
    ``devices[c]`` (default: "cpu"). ``lrn_groups``: 2 (default) keeps each column's
    LRN windows in its own channels; 1 (one column only) normalises across all.
    ``widths``: the seven layer widths (default the paper's; even numbers), for
    smaller networks of the same shape. ``dropout``/``dropout_mode``: probability 0.5
    and the paper's scheme (no scaling in training, outputs halved at test time;
    "inverted" scales in training instead). ``weight_std``: the standard deviation of
    the initial weights (the paper's 0.01; narrower networks need more to carry a
    signal through their smaller fan-ins). ``fuse_lrn_pool``: run each LRN and the
    max-pool after it as one op (``F.local_response_norm_max_pool2d``: same results, the
    LRN output is never stored; the record then holds "pool1"/"pool2" but no "norm1"/
    "norm2"). ``seed`` makes the initial weights and the
    dropout masks reproducible. ``dtype``: float32 (float64 runs on ``cpu``, for
    gradient checks).
    """

    def __init__(self, num_classes=1000, columns=1, devices=None, input_size=227,
                 lrn_groups=None, widths=PAPER_WIDTHS, dropout=0.5, dropout_mode="paper",
                 weight_std=WEIGHT_STD, fuse_lrn_pool=True, seed=None, dtype=np.float32):
        super().__init__()
        num_classes = arguments.integer(num_classes, "alexnet: num_classes")
        if columns not in (1, 2) or isinstance(columns, bool):
            raise ValueError(f"alexnet: columns must be 1 or 2, got {columns!r}")
        if num_classes < columns:
            raise ValueError(f"alexnet: num_classes must be at least {columns} "
                             f"(fc8 is split over the columns), got {num_classes}")
        self.input_size = _check_input_size(input_size)
        self.widths = _check_widths(widths)
        self.num_classes, self.columns = num_classes, columns
        self.devices = _devices(devices, columns)
        if columns == 1:
            lrn_groups = 2 if lrn_groups is None else lrn_groups
            if lrn_groups not in (1, 2) or isinstance(lrn_groups, bool):
                raise ValueError(f"alexnet: lrn_groups must be 1 or 2, got {lrn_groups!r}")
        elif lrn_groups not in (None, 2):
            raise ValueError("alexnet: with columns=2 each column normalises its own half of "
                             "the channels (lrn_groups=2); LRN across both columns "
                             "(lrn_groups=1) is a one-column variant")
        self.lrn_groups = 2 if lrn_groups is None else lrn_groups
        self.dtype = np.dtype(dtype)
        self.fuse_lrn_pool = bool(fuse_lrn_pool)
        rng = np.random.default_rng(seed) if seed is not None else None
        sizes = feature_sizes(self.input_size)
        self.sizes = sizes
        pad1 = 2 if self.input_size == 224 else 0
        common = dict(features_hw=sizes["pool5"], pad1=pad1, dropout=dropout,
                      dropout_mode=dropout_mode, weight_std=weight_std, rng=rng, dtype=self.dtype)
        if columns == 1:  # the layers become this module's own (names "conv1.weight", ...)
            whole = _Column(self.widths, self.num_classes, split=1, lrn_groups=self.lrn_groups,
                            device=self.devices[0], **common)
            for name, layer in whole._modules.items():
                setattr(self, name, layer)
        else:
            split = -(-self.num_classes // 2)
            self.column0 = _Column(self.widths, split, split=2, lrn_groups=1,
                                   device=self.devices[0], **common)
            self.column1 = _Column(self.widths, self.num_classes - split, split=2, lrn_groups=1,
                                   device=self.devices[1], **common)

    @property
    def input_device(self):
        return self.devices[0]

    def _input(self, x, device):
        if isinstance(x, Tensor):
            if x.dtype != self.dtype:
                raise TypeError(f"AlexNet: the images are {x.dtype}, the network {self.dtype}; "
                                f"convert them first")
            t = x.to(device)
        else:  # host (or CuPy) data: loaded onto the device in the network's dtype
            t = Tensor(x, device=device, dtype=self.dtype)
        expected = (3, self.input_size, self.input_size)
        if t.ndim != 4 or t.shape[1:] != expected:
            raise ValueError(f"AlexNet: expected images of shape (N, {', '.join(map(str, expected))}), "
                             f"got {t.shape}")
        return t

    def forward(self, x, record: dict | None = None) -> Tensor:
        """Logits (N, num_classes) on ``devices[0]`` for images (N, 3, S, S), S = input_size.

        ``x`` is a Tensor or host data (a NumPy array is copied to each column's device;
        that upload is input, not a crossing). ``record``, a dict, receives every
        layer's output by name (``column{c}.`` prefixed with two columns; an LRN fused
        with its pool has no output of its own).
        """
        return self._through(x, _STAGES, record, "logits")

    def features(self, x, layer: str = "fc7") -> Tensor:
        """The output of ``layer`` (after its ReLU, before any dropout) for images
        (N, 3, S, S), on ``devices[0]``; with two columns, both halves joined (column 0's
        channels or units first, the one-column layout). The default, fc7, is the last
        hidden layer: the 4096-d image representation of the paper's section 6.1.
        ``layer``: any layer name of the network except the dropouts and "flatten"."""
        stages = []
        for names in _STAGES:
            if layer in names:
                stages.append(names[:names.index(layer) + 1])
                break
            stages.append(names)
        if layer not in stages[-1] or layer.startswith("drop") or layer == "flatten":
            raise ValueError(f"AlexNet.features: no layer {layer!r} (one of "
                             f"{', '.join(n for s in _STAGES for n in s if n[:4] not in ('drop', 'flat'))})")
        return self._through(x, stages, None, layer)

    def _through(self, x, stages, record, name: str) -> Tensor:
        """Run the layers of ``stages`` (a prefix of ``_STAGES``, the last possibly cut
        short); with two columns, gather the halves on devices[0] (crossing ``name``)."""
        if self.columns == 1:
            h = self._input(x, self.devices[0])
            for names in stages:
                h = _run(self, h, names, record, "", self.fuse_lrn_pool)
            return h
        cols = (self.column0, self.column1)
        hs = [self._input(x, d) for d in self.devices]
        for stage, names in enumerate(stages):
            if stage:
                hs = self._exchange(hs, _CROSSINGS[stage - 1])
            hs = [_run(col, h, names, record, f"column{c}.", self.fuse_lrn_pool)
                  for c, (col, h) in enumerate(zip(cols, hs))]
        return F.cat([hs[0], hs[1].to(self.devices[0], name=f"{name} col1->col0")], dim=1)

    def _exchange(self, hs, point):
        """Each column gets the other's activations (the crossing into ``point``) and
        joins them with its own, column 0's channels first."""
        out = []
        for c, device in enumerate(self.devices):
            parts = [h if j == c else h.to(device, name=f"{point} col{j}->col{c}")
                     for j, h in enumerate(hs)]
            out.append(F.cat(parts, dim=1))
        return out

    def crossing_path(self) -> str:
        """How activations cross between the columns (``convnet.backend.crossing.path``):
        "same" (one device: nothing is copied), "host" (a ``cpu``/``emu`` end), "peer"
        or "staged" (two GPUs); "none" with one column."""
        if self.columns == 1:
            return "none"
        return crossing.path(self.devices[0], self.devices[1],
                             lambda src, dst: dst.can_access_peer(src))

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, columns={self.columns}, "
                f"devices={[d.name for d in self.devices]}, input_size={self.input_size}")


def _devices(devices, columns):
    if devices is None:
        return [get_device("cpu")] * columns
    if isinstance(devices, (str,)) or not hasattr(devices, "__len__"):
        devices = [devices]
    devices = [get_device(d) for d in devices]
    if len(devices) != columns:
        raise ValueError(f"alexnet: columns={columns} needs {columns} device(s), got "
                         f"{[d.name for d in devices]}")
    return devices


def alexnet(*args, **kwargs) -> AlexNet:
    """The network of Krizhevsky et al. (2012): ``AlexNet(*args, **kwargs)``, with the
    arguments and defaults ``AlexNet`` documents."""
    return AlexNet(*args, **kwargs)


alexnet.__signature__ = inspect.signature(AlexNet)  # help() and editors show the keywords


# --------------------------------------------------------------------------- state-dict mapping

_PARAM_NAMES = tuple(f"{layer}.{kind}" for layer in LAYERS for kind in ("weight", "bias"))


def _check_names(state, expected, layout):
    if not hasattr(state, "items"):
        raise TypeError(f"expected a state dict (a mapping of names to arrays), not "
                        f"{type(state).__name__}")
    # names only (every value stands in as a scalar): each mapping checks the shapes it cuts
    problems = differences(dict.fromkeys(state, 0), dict.fromkeys(expected, ()))
    if problems:
        raise ValueError(f"not a {layout} AlexNet state dict: " + "; ".join(problems))


def one_to_two_columns(state) -> "OrderedDict[str, np.ndarray]":
    """A one-column AlexNet state dict (``lrn_groups=2``) as the equivalent two-column one:
    every parameter split along its first axis, the first ceil(n/2) rows to column 0."""
    _check_names(state, _PARAM_NAMES, "one-column")
    out = OrderedDict()
    halves = {}
    for name in _PARAM_NAMES:
        a = np.asarray(state[name])
        if a.ndim == 0 or a.shape[0] < 2:
            raise ValueError(f"{name} of shape {a.shape} cannot be split over two columns")
        cut = -(-a.shape[0] // 2)
        halves[name] = (a[:cut], a[cut:])
    for c in (0, 1):
        for name in _PARAM_NAMES:
            out[f"column{c}.{name}"] = np.array(halves[name][c], copy=True)
    return out


def two_to_one_columns(state) -> "OrderedDict[str, np.ndarray]":
    """A two-column AlexNet state dict as the equivalent one-column one (``lrn_groups=2``)."""
    expected = tuple(f"column{c}.{n}" for c in (0, 1) for n in _PARAM_NAMES)
    _check_names(state, expected, "two-column")
    out = OrderedDict()
    for name in _PARAM_NAMES:
        a, b = np.asarray(state[f"column0.{name}"]), np.asarray(state[f"column1.{name}"])
        if a.shape[1:] != b.shape[1:]:
            raise ValueError(f"{name}: the columns' shapes {a.shape} and {b.shape} differ "
                             f"beyond the first axis")
        out[name] = np.concatenate([a, b], axis=0)
    return out
