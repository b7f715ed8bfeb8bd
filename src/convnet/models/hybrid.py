"""AlexNet split the "one weird trick" way (Krizhevsky 2014) over the K ranks of a
communicator: the convolutional layers data-parallel, fc6–fc8 model-parallel.

Rank r of K holds all of conv1–conv5 (the same weights on every rank) and slice r of
the output units of fc6, fc7 and fc8: the first ``n % K`` ranks ceil(n/K) units, the
others floor(n/K), rank 0's units first (``shares``; for K = 2 the two columns' cut).
Every rank takes its own share of the global batch — rank r the images
``batch_slice(N, r, K)``, consecutive shares in rank order, N/K each when K divides N,
else ceil/floor (``Loader(shard=(rank, K))`` splits batches so) — and:

    conv1..pool5 on its n_r images                 (data parallel)
    all-gather the pooled conv5 features           → (N, F) on every rank
    fc6_r on the whole batch, all-gather the units → (N, fc6) → dropout
    fc7_r likewise                                 → (N, fc7) → dropout
    fc8_r, logits gathered from the slices         → (N, classes) on every rank

so every rank holds the logits of the whole batch and the same loss, the mean over the
global batch (``hybrid_step``: ``train_step`` with ``model.gather_labels(labels)``).
Backward mirrors it: each gathered activation's gradient is summed over the ranks
(every rank's slice of the next layer contributes) and cut back to the rank's own
piece; the fc gradients stay with their slices; the conv parameters' gradients are
summed over the ranks in buckets started while the backward pass goes on
(``distributed.buckets``, as data parallelism does; ``hybrid_step`` runs them), so every
rank takes the global gradient's step and the conv weights stay equal. Nothing is
averaged: the loss already divides by N.

Dropout is applied to the gathered (N, units) activations with the seed the
single-process layer would use (every rank builds the one-column network from the same
seed, so its dropout layers draw the same seeds), hence the same Philox mask, element
for element, as one process on the whole batch: the hybrid computes what
``alexnet(...)`` computes, up to the rounding of sums taken in another order. Each rank
applies the whole (N, units) mask (an elementwise pass, K times its slice's work).

The layer names, their order and ``named_modules()`` are those of the one-column
network (so per-layer dropout reseeding by module index matches), but fc6–fc8 hold
slices: ``gather_state_dict`` joins them into an ordinary one-column state dict (on
every rank; rank 0 writes the checkpoint), ``load_one_column`` takes this rank's slices
of one every rank read, ``scatter_state_dict`` of one that only rank 0 read;
``one_column_to_hybrid`` / ``hybrid_to_one_column`` are the mappings themselves (they
apply to the SGD velocities too: same names, same shapes).
"""
from __future__ import annotations

import dataclasses
import inspect
from collections import OrderedDict

import numpy as np

from .. import arguments
from .. import nn
from ..distributed import hybrid_ops
from ..distributed.buckets import GradientBuckets
from ..distributed.config import check_same_configuration
from ..state_dict import differences
from ..step import train_step
from ..tensor import Tensor
from .alexnet import (LAYERS, PAPER_WIDTHS, WEIGHT_STD, AlexNet, _check_names, _check_widths,
                      _run, feature_sizes)

__all__ = ["HybridAlexNet", "hybrid_alexnet", "hybrid_step", "shares", "batch_slice",
           "one_column_to_hybrid", "hybrid_to_one_column", "step_bytes"]

CONV_NAMES = ("conv1", "norm1", "pool1", "conv2", "norm2", "pool2", "conv3", "conv4", "conv5",
              "pool5", "flatten")
FC_LAYERS = ("fc6", "fc7", "fc8")
_PARAM_NAMES = tuple(f"{layer}.{kind}" for layer in LAYERS for kind in ("weight", "bias"))


shares = hybrid_ops.shares


def batch_slice(batch: int, rank: int, size: int) -> slice:
    """Rank ``rank``'s images of a global batch of ``batch``: consecutive shares in rank
    order, ``shares(batch, size)`` long (``Loader(shard=(rank, size))``'s split)."""
    return hybrid_ops.piece(batch, rank, size)


def _layout(num_classes: int, widths, size: int) -> dict:
    """Per fc layer, the units of each rank; a ValueError if a layer has fewer than K."""
    units = dict(fc6=widths[5], fc7=widths[6], fc8=num_classes)
    for layer, n in units.items():
        if n < size:
            what = "classes" if layer == "fc8" else "units"
            raise ValueError(f"hybrid: {layer} has {n} {what}, fewer than the {size} ranks "
                             f"(each rank holds a slice of at least one); use at most {n} "
                             f"ranks or a wider layer")
    return {layer: shares(n, size) for layer, n in units.items()}


def one_column_to_hybrid(state, rank: int, size: int) -> "OrderedDict[str, np.ndarray]":
    """Rank ``rank``'s part of a one-column AlexNet state dict (or SGD velocities): every
    conv parameter whole, fc6–fc8's weight and bias rows of the rank's units."""
    _check_names(state, _PARAM_NAMES, "one-column")
    out = OrderedDict()
    for name in _PARAM_NAMES:
        a = np.asarray(state[name])
        if name.split(".")[0] in FC_LAYERS:
            if a.ndim == 0 or a.shape[0] < size:
                raise ValueError(f"hybrid: {name} of shape {a.shape} has fewer rows than the "
                                 f"{size} ranks")
            a = a[hybrid_ops.piece(a.shape[0], rank, size)]
        out[name] = np.array(a, copy=True)
    return out


def hybrid_to_one_column(states) -> "OrderedDict[str, np.ndarray]":
    """The one-column state dict of K ranks' hybrid state dicts (rank order): conv
    parameters from rank 0 (every rank holds the same), fc6–fc8's slices joined."""
    states = list(states)
    if not states:
        raise ValueError("hybrid: no rank's state dict to join")
    for r, state in enumerate(states):
        _check_names(state, _PARAM_NAMES, f"rank {r}'s hybrid")
    out = OrderedDict()
    for name in _PARAM_NAMES:
        parts = [np.asarray(s[name]) for s in states]
        if name.split(".")[0] in FC_LAYERS:
            if any(p.shape[1:] != parts[0].shape[1:] for p in parts):
                raise ValueError(f"hybrid: {name}: the ranks' shapes "
                                 f"{[p.shape for p in parts]} differ beyond the first axis")
            out[name] = np.concatenate(parts, axis=0)
        else:
            out[name] = np.array(parts[0], copy=True)
    return out


class HybridAlexNet(nn.Module):
    """AlexNet over a communicator ``comm`` (rank r of K), the "one weird trick" split;
    see this module's docstring. Arguments as ``alexnet(...)`` takes them, one column
    only; ``device`` the rank's device (default "cpu"). ``seed=None``: rank 0 draws one
    and sends it to the others (the ranks must start from the same weights and draw the
    same dropout masks). Every rank must be built with the same settings (checked by
    ``distributed.config.check_same_configuration``: a ``ConfigMismatch`` on every rank
    naming what differs)."""

    def __init__(self, comm, num_classes=1000, input_size=227, lrn_groups=None,
                 widths=PAPER_WIDTHS, dropout=0.5, dropout_mode="paper", weight_std=WEIGHT_STD,
                 fuse_lrn_pool=True, seed=None, dtype=np.float32, device="cpu", columns=1):
        super().__init__()
        if columns != 1 or isinstance(columns, bool):
            raise ValueError(f"hybrid: the hybrid split replaces the two columns; build it "
                             f"with columns=1, got {columns!r}")
        for attr in ("rank", "size", "allgather", "allreduce", "allgather_object",
                     "broadcast_object"):
            if not hasattr(comm, attr):
                raise TypeError(f"hybrid: comm must be a convnet.distributed Communicator "
                                f"(no {attr!r} on {type(comm).__name__})")
        num_classes = arguments.integer(num_classes, "hybrid: num_classes")
        widths = _check_widths(widths)
        self.layout = _layout(num_classes, widths, comm.size)
        if seed is None:
            seed = comm.broadcast_object(int(np.random.SeedSequence().entropy % 2**63)
                                         if comm.rank == 0 else None, root=0)
        check_same_configuration(comm, dict(
            model="hybrid alexnet", num_classes=num_classes, input_size=input_size,
            lrn_groups=lrn_groups, widths=list(widths), dropout=dropout,
            dropout_mode=dropout_mode, weight_std=weight_std, fuse_lrn_pool=fuse_lrn_pool,
            seed=seed, dtype=np.dtype(dtype).name))
        # The one-column network of the same settings, built alike on every rank: its
        # conv and dropout layers become ours, its fc layers give our slices.
        whole = AlexNet(num_classes=num_classes, columns=1, input_size=input_size,
                        lrn_groups=lrn_groups, widths=widths, dropout=dropout,
                        dropout_mode=dropout_mode, weight_std=weight_std,
                        fuse_lrn_pool=fuse_lrn_pool, seed=seed, dtype=dtype)
        object.__setattr__(self, "comm", comm)
        self.num_classes, self.input_size, self.widths = num_classes, whole.input_size, whole.widths
        self.dtype, self.fuse_lrn_pool, self.seed = whole.dtype, whole.fuse_lrn_pool, seed
        mine = one_column_to_hybrid(whole.state_dict(), comm.rank, comm.size)
        for name, layer in whole._modules.items():
            if name in FC_LAYERS:  # initial values are mine's; rng=0 only fills the shape
                layer = nn.Linear(layer.in_features, self.layout[name][comm.rank],
                                  relu=layer.relu, rng=0, dtype=self.dtype)
            setattr(self, name, layer)
        self.load_state_dict(mine)
        self.to(device)
        self._bucket_conv_gradients()

    def _bucket_conv_gradients(self) -> None:
        """The data-parallel part: the conv gradients' sum over the ranks (``hybrid_step``
        runs it), in buckets on the parameters' device."""
        old = self.__dict__.get("buckets")
        if old is not None:
            old.detach()
        object.__setattr__(self, "buckets", GradientBuckets(
            [(n, p) for n, p in self.named_parameters() if n.split(".")[0] not in FC_LAYERS],
            self.comm))
        self.buckets.attach()

    def to(self, device) -> "HybridAlexNet":
        super().to(device)
        self.device = self.conv1.weight.device
        if "buckets" in self.__dict__:  # built: the buckets follow the parameters
            self._bucket_conv_gradients()
        return self

    @property
    def input_device(self):
        return self.device

    # ------------------------------------------------------------------ forward
    def forward(self, x) -> Tensor:
        """The logits (N, num_classes) of the global batch, the same on every rank, for
        this rank's images (n_r, 3, S, S), N the sum of the ranks' n_r (collective; a
        rank may pass no images, as long as some rank passes some)."""
        comm = self.comm
        if len(getattr(x, "shape", ())) != 4:
            raise ValueError(f"hybrid: expected this rank's images (n, 3, S, S), got "
                             f"{getattr(x, 'shape', type(x).__name__)}")
        counts = self.counts(int(x.shape[0]))
        if not sum(counts):
            raise ValueError("hybrid: no rank passed any image")
        h = AlexNet._input(self, x, self.device)
        h = _run(self, h, CONV_NAMES, None, "", self.fuse_lrn_pool)
        h = hybrid_ops.gather(h, comm, counts, axis=0, name="pool5")
        for layer, drop in (("fc6", "drop6"), ("fc7", "drop7"), ("fc8", None)):
            h = getattr(self, layer)(h)
            h = hybrid_ops.gather(h, comm, self.layout[layer], axis=1,
                                  partial=drop is not None, name=layer)
            if drop is not None:
                h = getattr(self, drop)(h)
        return h

    def counts(self, n: int) -> list[int]:
        """Every rank's ``n``, in rank order (one small all-gather)."""
        mine = self.device.xp.asarray([n], dtype=np.int64)
        return [int(c) for c in self.device.to_numpy(self.comm.allgather(mine)).ravel()]

    def gather_rows(self, array, counts=None):
        """Every rank's ``array`` (n_r, ...) joined along the first axis, rank 0's rows
        first, as an array of the device (collective; ``counts``: every rank's n_r when
        the caller has them, else gathered first). Without gradient: labels, indices."""
        local = self.device.asarray(array)
        counts = self.counts(local.shape[0]) if counts is None else counts
        return hybrid_ops.join(self.device.xp, self.comm, local, counts)[0]

    def gather_labels(self, labels, counts=None):
        """The labels of the global batch (int64, an array of the device, rank 0's first)
        from this rank's labels (collective; ``counts`` as ``gather_rows`` takes them)."""
        data = labels.data if isinstance(labels, Tensor) else labels
        return self.gather_rows(self.device.asarray(data, dtype=np.int64).reshape(-1), counts)

    def global_batches(self, batches):
        """``batches`` (this rank's shares of the global batches: ``Loader(shard=...)``)
        with the labels and indices of the global batch, the images this rank's: what
        ``evaluate_batches(model, ...)`` takes for the hybrid model (every rank then
        computes the same numbers for the whole split; collective)."""
        for batch in batches:
            counts = self.counts(len(batch))
            yield dataclasses.replace(
                batch, labels=self.gather_labels(batch.labels, counts),
                indices=self.device.to_numpy(self.gather_rows(
                    np.asarray(batch.indices, dtype=np.int64), counts)))

    # ------------------------------------------------------------------ state
    def gather_state_dict(self, state=None) -> "OrderedDict[str, np.ndarray]":
        """The one-column state dict of the whole network, on every rank (collective):
        ``state`` this rank's hybrid state dict (default the model's; pass
        ``optimizer.state_dict()["velocity"]`` for the velocities)."""
        state = self.state_dict() if state is None else state
        _check_names(state, _PARAM_NAMES, "hybrid")
        out = OrderedDict()
        for name in _PARAM_NAMES:
            a = np.asarray(state[name])
            layer = name.split(".")[0]
            if layer in FC_LAYERS:
                a = self.device.to_numpy(self.gather_rows(a, self.layout[layer]))
            out[name] = np.array(a, copy=True)
        return out

    def load_one_column(self, state) -> None:
        """Load this rank's part of a one-column state dict (every rank passes the same
        one; not collective)."""
        self.load_state_dict(one_column_to_hybrid(state, self.comm.rank, self.comm.size))

    def scatter_state_dict(self, state=None, root: int = 0) -> "OrderedDict[str, np.ndarray]":
        """This rank's hybrid state dict from the one-column ``state`` that only rank
        ``root`` passes (the others pass None): a resume where one rank read the
        checkpoint (collective; every array is broadcast, then each rank keeps its rows).
        For the model ``load_state_dict`` the result; for the velocities put it in the
        optimizer's state. A bad ``state`` is refused on every rank."""
        comm = self.comm
        shapes = OrderedDict()
        for name, p in self.named_parameters():
            layer = name.split(".")[0]
            rows = sum(self.layout[layer]) if layer in FC_LAYERS else p.shape[0]
            shapes[name] = (rows,) + tuple(p.shape[1:])
        problems = []
        if comm.rank == root:
            if not hasattr(state, "items"):
                problems = [f"expected a one-column state dict, not {type(state).__name__}"]
            else:
                problems = differences(state, shapes, given_where="in the state dict",
                                       expected_where="in the network")
        problems = comm.broadcast_object(problems, root=root)
        if problems:
            raise ValueError(f"hybrid: rank {root}'s state dict does not match the network: "
                             + "; ".join(problems))
        whole = OrderedDict()
        for name, shape in shapes.items():
            a = (np.array(state[name], dtype=self.dtype, order="C") if comm.rank == root
                 else np.empty(shape, dtype=self.dtype))
            comm.broadcast(a, root=root)
            whole[name] = a
        return one_column_to_hybrid(whole, comm.rank, comm.size)

    def extra_repr(self) -> str:
        r = self.comm.rank
        return (f"num_classes={self.num_classes}, input_size={self.input_size}, rank={r} of "
                f"{self.comm.size}, device={self.device.name}, units of this rank: "
                + ", ".join(f"{k} {v[r]}/{sum(v)}" for k, v in self.layout.items()))


def hybrid_alexnet(comm, *args, **kwargs) -> HybridAlexNet:
    """``HybridAlexNet(comm, *args, **kwargs)``: AlexNet over the ranks of ``comm``."""
    return HybridAlexNet(comm, *args, **kwargs)


hybrid_alexnet.__signature__ = inspect.signature(HybridAlexNet)


def hybrid_step(model: HybridAlexNet, optimizer, images, labels, check_finite=None):
    """One SGD step of the hybrid model on this rank's ``images`` and ``labels`` (its
    ``batch_slice`` of the global batch): ``convnet.train_step`` with the global labels.
    The returned loss and accuracies are the global batch's, the same on every rank.
    The conv gradients are summed over the ranks here (``model.buckets``): train the
    hybrid model with this, not with a bare ``train_step``. A batch with fewer images
    than ranks (an empty share) is refused on every rank."""
    counts = model.counts(len(labels))
    if 0 in counts:
        raise ValueError(f"hybrid: a batch of {sum(counts)} images leaves rank "
                         f"{counts.index(0)} of {len(counts)} without any; train on batches "
                         f"of at least {len(counts)} images (drop the short last batch)")
    labels = model.gather_labels(labels, counts)
    model.buckets.begin()
    return train_step(model, optimizer, images, labels, check_finite=check_finite,
                      before_update=model.buckets.finish)


def step_bytes(num_classes: int, widths, input_size: int, batch: int, size: int,
               itemsize: int = 4) -> dict:
    """The payload of each collective of one training step, in bytes, per rank (K =
    ``size``, N = ``batch``, the global batch): the all-gathers' results (K × the
    largest piece) and the all-reduces' arrays. A ring moves per rank (K-1)/K of an
    all-gather's payload (received) and 2(K-1)/K of an all-reduce's (sent and received)."""
    widths = _check_widths(widths)
    layout = _layout(num_classes, widths, size)
    w1, w2, w3, w4, w5 = widths[:5]
    features = w5 * feature_sizes(input_size)["pool5"] ** 2
    # conv1..conv5's weights and biases (conv2, conv4, conv5 in two groups)
    conv_params = (w1 * 3 * 11 * 11 + w2 * (w1 // 2) * 5 * 5 + w3 * w2 * 3 * 3
                   + w4 * (w3 // 2) * 3 * 3 + w5 * (w4 // 2) * 3 * 3 + w1 + w2 + w3 + w4 + w5)
    share = shares(batch, size)[0]  # the largest: the pieces travel padded to it
    return {
        "pool5 allgather": size * share * features * itemsize,
        "fc6 allgather": size * max(layout["fc6"]) * batch * itemsize,
        "fc7 allgather": size * max(layout["fc7"]) * batch * itemsize,
        "fc8 allgather": size * max(layout["fc8"]) * batch * itemsize,
        "pool5 allreduce": batch * features * itemsize,
        "fc6 allreduce": batch * widths[5] * itemsize,
        "fc7 allreduce": batch * widths[6] * itemsize,
        "conv allreduce": conv_params * itemsize,
    }
