"""The layers of one AlexNet training step on one GPU, for the launch model.

``alexnet_layers(columns)`` lists, in forward order, the layers of the paper's network
as ``convnet.models.alexnet`` builds it on ``cuda`` (input 227 x 227, the paper's
widths ``PAPER_WIDTHS``, LRN k=2 n=5 alpha=1e-4 beta=0.75 fused with the following
max-pool, the default on cuda), each with its forward and backward launches
(``convnet.perf.layers``), then the cross-entropy and the SGD update of every
parameter:

* ``columns=1``: the whole network on one GPU: conv2, conv4 and conv5 grouped
  (groups=2), LRN windows in each half of the channels.
* ``columns=2``: what *one* of the two GPUs runs — its column (half of every layer's
  filters and units; conv3 and fc6-8 see both columns' inputs); the other GPU runs
  the same launches at the same time, so the step's time is this list's. The
  transfers between the GPUs (at conv3, fc6, fc7, fc8) are not modelled. The
  cross-entropy (on the gathered logits) is listed in this column.

conv1's input needs no gradient, so conv1 has no backward-data launch.
"""
from __future__ import annotations

from ..models.alexnet import LRN, PAPER_WIDTHS, feature_sizes
from ..precision import check_precision
from .layers import (Layer, conv_layer, cross_entropy_layer, linear_layer,
                     lrn_pool_layer, pool_layer, sgd_layer)

INPUT_SIZE = 227


def alexnet_layers(columns: int = 1, num_classes: int = 1000, widths=PAPER_WIDTHS,
                   input_size: int = INPUT_SIZE, algorithms: dict | None = None,
                   tiles: dict | None = None, precision: str = "fp32") -> list[Layer]:
    """The layers one GPU runs in a training step (see the module docstring);
    ``algorithms``: {conv layer name: "direct" | "winograd"} (``conv2d``'s "auto" asks
    ``convnet.perf.choose``; ``convnet perf`` passes its choices), "direct" where unnamed;
    ``tiles``: {conv layer name: {pass: tile}} for the direct or tensor-core engine (the
    chooser's); ``precision``: the convolutions' (``convnet.precision``; "tf32"/"bf16"
    run every conv layer on the tensor-core engine, as ``convnet train --precision``)."""
    check_precision(precision)
    if columns not in (1, 2):
        raise ValueError(f"columns must be 1 or 2, got {columns!r}")
    w1, w2, w3, w4, w5, w6, w7 = widths
    h = columns                      # each width of a column is divided by h
    groups = 2 if columns == 1 else 1
    lrn_groups = 2 if columns == 1 else 1
    size = feature_sizes(input_size)
    pad1 = 2 if input_size == 224 else 0
    flat = w5 * size["pool5"] ** 2
    classes = num_classes if columns == 1 else -(-num_classes // 2)

    def conv(name, *shape, **kwargs):  # in the run's precision, with the chooser's algorithm
        chosen = (algorithms or {}).get(name, "direct") if precision == "fp32" else "direct"
        return conv_layer(name, *shape, algorithm=chosen, precision=precision,
                          tiles=(tiles or {}).get(name), **kwargs)

    layers = [
        conv("conv1", 3, input_size, w1 // h, 11, 4, pad1, input_grad=False),
        lrn_pool_layer("norm1+pool1", w1 // h, size["conv1"], lrn_groups, **LRN),
        conv("conv2", w1 // h, size["pool1"], w2 // h, 5, 1, 2, groups),
        lrn_pool_layer("norm2+pool2", w2 // h, size["conv2"], lrn_groups, **LRN),
        conv("conv3", w2, size["pool2"], w3 // h, 3, 1, 1),
        conv("conv4", w3 // h, size["conv3"], w4 // h, 3, 1, 1, groups),
        conv("conv5", w4 // h, size["conv4"], w5 // h, 3, 1, 1, groups),
        pool_layer("pool5", w5 // h, size["conv5"]),
        linear_layer("fc6", flat, w6 // h, dropout_p=0.5),  # drop6 in fc6's epilogue
        linear_layer("fc7", w6, w7 // h, dropout_p=0.5),    # drop7 in fc7's epilogue
        linear_layer("fc8", w7, classes, relu_=False),
        cross_entropy_layer("loss", num_classes),
    ]
    params = []
    convs = [(w1 // h, 3, 11), (w2 // h, w1 // h // groups, 5), (w3 // h, w2, 3),
             (w4 // h, w3 // h // groups, 3), (w5 // h, w4 // h // groups, 3)]
    for k, c, r in convs:
        params += [(k, c, r, r), (k,)]
    for inputs, outputs in ((flat, w6 // h), (w6, w7 // h), (w7, classes)):
        params += [(outputs, inputs), (outputs,)]
    layers.append(sgd_layer("sgd", params))
    return layers


def parameter_count(columns: int = 1, num_classes: int = 1000) -> int:
    """Parameters one GPU updates (60,965,224 for one column and 1000 classes)."""
    import numpy as np
    (sgd,) = [layer for layer in alexnet_layers(columns, num_classes) if layer.name == "sgd"]
    return int(sum(np.prod(s) for s in sgd.info["shapes"]))
