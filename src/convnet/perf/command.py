"""What ``convnet perf`` does: predict a training step or one op on a named GPU,
print the table with its legend, and write JSON if asked."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from . import gpus
from .layers import parse_op
from .model import legend
from .predict import LEGEND_COLUMNS, format_table, predict_layers
from .step import alexnet_layers


def run(gpu: str, model: str | None = "alexnet", batch: int = 128, columns: int = 1,
        op: str | None = None, kernel: str | None = None, json_path: str | None = None,
        blocks: int = 4, out=None) -> int:
    """Print the table; 2 for an unknown GPU, a bad op or batch (one line on stderr)."""
    out = out or sys.stdout
    try:
        g = gpus.gpu(gpu)
        if batch < 1:
            raise ValueError(f"--batch must be at least 1, got {batch}")
        if op:
            layers, title = [parse_op(op)], f"{op} at batch {batch}"
        elif model == "alexnet":
            layers = alexnet_layers(columns)
            title = (f"AlexNet training step, {columns} column{'s' if columns > 1 else ''}"
                     + (" (one GPU's column)" if columns == 2 else "") + f", batch {batch}")
        else:
            raise ValueError(f"unknown model {model!r}; known: alexnet")
    except (gpus.UnknownGPU, ValueError) as exc:
        print(f"convnet perf: {exc}".splitlines()[0], file=sys.stderr)
        return 2
    began = time.perf_counter()
    table = predict_layers(layers, g, batch, blocks=blocks, title=title, kernel=kernel)
    elapsed = time.perf_counter() - began
    print(f"{title} on {g.name} — PREDICTED, not measured", file=out)
    print(format_table(table), file=out)
    print("", file=out)
    print(LEGEND_COLUMNS, file=out)
    print(legend(g), file=out)
    parts = ", ".join(f"{k} {v:.1f} s" for k, v in table.timings.items())
    print(f"(computed in {elapsed:.1f} s: {parts})", file=out)
    if json_path:
        data = table.as_dict()
        data["elapsed_s"] = elapsed
        Path(json_path).write_text(json.dumps(data, indent=1) + "\n")
        print(f"wrote {json_path}", file=out)
    return 0
