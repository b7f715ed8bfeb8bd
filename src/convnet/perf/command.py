"""What ``convnet perf`` does: predict a training step or one op on a named GPU,
print the table with its legend, and write JSON if asked. For the AlexNet step, the conv
layers run the algorithm ``conv2d(algorithm="auto")`` would choose on that GPU at that
batch (``convnet.perf.choose``), printed with the predicted time of each; every table's
per-kernel figures are saved for that chooser."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from . import choose, gpus, predict
from .layers import parse_op
from .model import legend
from .predict import LEGEND_COLUMNS, format_table
from .step import alexnet_layers


def run(gpu: str, model: str | None = "alexnet", batch: int = 128, columns: int = 1,
        op: str | None = None, kernel: str | None = None, json_path: str | None = None,
        blocks: int = 4, out=None, precision: str = "fp32") -> int:
    """Print the table; 2 for an unknown GPU, a bad op, batch or precision (one line on
    stderr). ``precision``: the model's convolutions (an op names its own)."""
    out = out or sys.stdout
    try:
        g = gpus.gpu(gpu)
        if batch < 1:
            raise ValueError(f"--batch must be at least 1, got {batch}")
        choices = {}
        if op:
            layers, title = [parse_op(op)], f"{op} at batch {batch}"
        elif model == "alexnet":
            choices = choose.layer_choices(alexnet_layers(columns, precision=precision), g,
                                           batch)
            layers = alexnet_layers(columns, algorithms={n: c.algorithm
                                                         for n, c in choices.items()},
                                    tiles={n: c.tiles for n, c in choices.items()},
                                    precision=precision)
            title = (f"AlexNet training step, {columns} column{'s' if columns > 1 else ''}"
                     + (" (one GPU's column)" if columns == 2 else "") + f", batch {batch}"
                     + ("" if precision == "fp32" else f", convolutions in {precision}"))
        else:
            raise ValueError(f"unknown model {model!r}; known: alexnet")
    except (gpus.UnknownGPU, ValueError) as exc:
        print(f"convnet perf: {exc}".splitlines()[0], file=sys.stderr)
        return 2
    began = time.perf_counter()
    table = predict.predict_layers(layers, g, batch, blocks=blocks, title=title, kernel=kernel)
    elapsed = time.perf_counter() - began
    choose.save_figures(table)
    print(f"{title} on {g.name} — PREDICTED, not measured", file=out)
    print(format_table(table), file=out)
    if choices:
        print("", file=out)
        print(format_choices(choices), file=out)
    print("", file=out)
    print(LEGEND_COLUMNS, file=out)
    print(legend(g), file=out)
    parts = ", ".join(f"{k} {v:.1f} s" for k, v in table.timings.items())
    print(f"(computed in {elapsed:.1f} s: {parts})", file=out)
    if json_path:
        data = table.as_dict()
        data["elapsed_s"] = elapsed
        data["precision"] = precision if not op else None
        data["conv_algorithms"] = {n: c.record() for n, c in choices.items()}
        Path(json_path).write_text(json.dumps(data, indent=1) + "\n")
        print(f"wrote {json_path}", file=out)
    return 0


def format_choices(choices: dict) -> str:
    """What ``conv2d(algorithm="auto")`` runs per conv layer, and why."""
    lines = ['conv2d algorithm="auto" per conv layer (PREDICTED us of each algorithm, '
             'forward + backward data + backward filter + ReLU mask + bias gradient; the '
             'direct engine with the tiles named, on a GPU):']
    for name, c in choices.items():
        lines.append(f"  {name}: {c.describe()}")
    return "\n".join(lines)


def write_choice_defaults() -> int:
    """Rewrite ``convnet.perf.choose``'s shipped figures (``choose.DEFAULTS``) from the
    full model of AlexNet's conv layers on the stand-in H100, batch 128 (minutes)."""
    layers = [layer for layer in alexnet_layers(1) if layer.info.get("op") == "conv"]
    return choose.write_defaults(layers)
