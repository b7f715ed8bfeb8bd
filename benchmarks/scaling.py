"""Predicted scaling of AlexNet training over 1, 2, 4 and 8 GPUs (issue 13, item 6).

    python benchmarks/scaling.py [--gpu h100] [--perf-json ONE TWO] [--measured FILE]
                                 [--gpus 1 2 4 8] [--out DIR] [--no-json]

PREDICTED, not measured: a model of the step time of three ways to spread the paper's
network (``convnet.models.alexnet``, 1000 classes, 227 x 227, FP32) over K GPUs, over
five kinds of link, printed as a Markdown table and saved as JSON.

Per-layer times. ``convnet perf``'s prediction of every layer's forward and backward on
one GPU at batch 128 (``convnet.perf.command.run``, for ``--gpu``): the whole network
(``--columns 1``) and one GPU's column of the two-column layout (``--columns 2``);
``--perf-json ONE TWO`` reads the JSON files ``convnet perf --json`` wrote instead of
predicting again. Where a GPU run has measured the whole step
(``benchmarks/alexnet_step.py`` on ``cuda``, the paper's network at batch 128, found
with ``--measured`` or as the newest such JSON in the results folders), each table is
scaled so that its total is the measured step (one factor per table: the layer shares
stay the model's) and the source says so.

Batch: 128 images per GPU, as in both papers (weak scaling) for data parallelism and the
hybrid: K GPUs train on 128 K images per step, and the speed-up is the images per second
against one GPU's, K T1 / T_K. The two-column split is model parallelism of one batch of
128 over exactly two GPUs (strong scaling): its speed-up is T1 / T_2.

Bytes per step (4-byte floats; B = 128 images per GPU; P_l = the parameters of layer l,
from ``convnet.perf.step.alexnet_layers``' SGD shapes: 60,965,224 in all, 2,334,080 in
conv1-5; widths w1..w7 = 96, 256, 384, 384, 256, 4096, 4096; C = 1000 classes;
s2 = 13, s5 = 6 the sides of pool2's and pool5's maps):

* two columns (K = 2; ``two_column_bytes``, the transfer log of a two-column step,
  ``convnet.record_transfers``): each column sends the other its half of the inputs of
  conv3 (B w2/2 s2^2), fc6 (B w5/2 s5^2), fc7 (B w6/2) and fc8 (B w7/2), and column 1
  sends its logits (B floor(C/2)) to column 0; backward sends the gradients of the same
  tensors the other way. 15.5 MB each way per pass at B = 128.
* data parallel: every parameter's gradient all-reduced by a ring, each GPU sending
  (and receiving) 2 (K-1)/K x 4 sum(P_l) bytes.
* hybrid ("one weird trick"): conv1-5 data-parallel (their gradients ring all-reduced,
  2 (K-1)/K x 4 sum(P_conv)); fc6-fc8 model-parallel (each GPU holds 1/K of their units
  and runs them on all K B images): forward all-gathers pool5's outputs (each GPU sends
  (K-1) x 4 B w5 s5^2), fc6's and fc7's outputs ((K-1) x 4 B w6, (K-1) x 4 B w7), and
  exchanges logits all-to-all ((K-1)/K x 4 B C); backward reduce-scatters the gradients
  of the same tensors (the same bytes). Each GPU updates conv1-5 and 1/K of fc6-fc8.

Time of a collective on a link of bandwidth ``bw`` (bytes/s each way per GPU) and
per-message latency ``alpha``: ring all-reduce 2 (K-1)/K n / bw + 2 (K-1) alpha;
all-gather and reduce-scatter of an n-byte result (K-1)/K n / bw + (K-1) alpha; a
two-column crossing n / bw + alpha (both directions at once). Across nodes every GPU
is taken to have its own network port (one NIC per GPU), so the ring's slowest hop is
the network's.

Overlap ("no" / "yes"):

* no: compute, then communication, as if serialised: two columns add every crossing to
  the column's compute; data parallel adds one all-reduce of all gradients after the
  backward pass; the hybrid adds its exchanges and the conv all-reduce.
* yes: data parallel all-reduces each layer's gradients (a bucket per layer) as soon as
  backward has made them, one bucket at a time on the link; the step ends at the later
  of the last bucket and the backward pass, then the SGD update. The hybrid does the
  same for conv1-5 and runs each fc exchange in chunks beside the fc layer that needs
  or makes it (Krizhevsky's pipelining), so each pair costs max(compute, exchange).
  Two columns: forward crossings stay exposed (the next layer needs them); a backward
  crossing hides behind the weight gradient of the layer it leaves, taken as half that
  layer's backward time.

A hybrid speed-up above K is no error of the sums: each GPU updates only 1/K of fc6-fc8's
weights (the SGD update, bound by memory, is about 3 % of one GPU's predicted step), and
its fc layers do one GPU's FLOPs on K times the images, taken at one GPU's time.

Compared with the papers (printed and saved): Krizhevsky et al. 2012, section 3.2: the
two-GPU net took "slightly less time to train" than a one-GPU net with half as many
kernels in each convolutional layer, and cut top-1 and top-5 error by 1.7 % and 1.2 %
(a quality gain; the two-column split was for memory, not speed). Krizhevsky 2014,
"One weird trick for parallelizing convolutional neural networks": 6.25x on 8 GPUs for
the hybrid with 128 images per GPU (as the issue quotes it); the 2- and 4-GPU figures
of its table are not quoted here because they were not checked against the paper.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import harness  # noqa: E402

BATCH = 128
FLOAT = 4
GPU_COUNTS = (1, 2, 4, 8)
CONV = ("conv1", "conv2", "conv3", "conv4", "conv5")
FC = ("fc6", "fc7", "fc8")
# name: (bytes/s each way per GPU, latency per message in s, what it is)
LINKS = {
    "nvlink4": (450e9, 5e-6, "NVLink 4 (H100 SXM), 450 GB/s each way, within a node"),
    "pcie5": (50e9, 10e-6, "PCIe 5.0 x16, ~50 GB/s effective, within a node"),
    "pcie4": (25e9, 10e-6, "PCIe 4.0 x16, ~25 GB/s effective, within a node"),
    "ib400": (50e9, 20e-6, "400 Gb/s network, a port per GPU, across nodes"),
    "ib100": (12.5e9, 20e-6, "100 Gb/s network, a port per GPU, across nodes"),
}
STRATEGIES = ("two-column", "data-parallel", "hybrid")
PAPERS = {
    "krizhevsky2012": "two GPUs: 'slightly less time to train' than one GPU with half the "
                      "kernels per conv layer, top-1/top-5 error 1.7 %/1.2 % lower (section 3.2)",
    "krizhevsky2014": "hybrid, 128 images per GPU: 6.25x on 8 GPUs (2/4-GPU figures not "
                      "checked here)",
}


class ScalingError(ValueError):
    """Bad input to the estimate (a missing or malformed table, an unknown link)."""


# --------------------------------------------------------------------------- inputs

def layer_times(perf: dict) -> dict:
    """{layer: {"forward": s, "backward": s}} and {"sgd": {"update": s}} summed from the
    rows of a ``convnet perf --json`` table."""
    rows = perf.get("rows") if isinstance(perf, dict) else None
    if not rows:
        raise ScalingError("the per-layer table has no rows (expected convnet perf --json's "
                           "output)")
    times: dict = {}
    for row in rows:
        try:
            layer, kind, seconds = row["layer"], row["pass"], float(row["prediction"]["time_s"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ScalingError(f"a row of the per-layer table lacks {exc}") from None
        times.setdefault(layer, {}).setdefault(kind, 0.0)
        times[layer][kind] += seconds
    missing = [n for n in (*CONV, *FC, "sgd") if n not in times]
    if missing:
        raise ScalingError(f"the per-layer table has no {', '.join(missing)}: not an AlexNet "
                           f"training step")
    return times


def scaled(times: dict, total_s: float) -> dict:
    """``times`` multiplied by one factor so that they sum to ``total_s``."""
    factor = total_s / sum(sum(p.values()) for p in times.values())
    return {layer: {k: v * factor for k, v in passes.items()} for layer, passes in times.items()}


def parameters(num_classes: int = 1000) -> dict:
    """{layer: parameters} of the one-column network, from ``alexnet_layers``' SGD shapes."""
    import numpy as np
    from convnet.models.alexnet import LAYERS
    from convnet.perf.step import alexnet_layers
    (sgd,) = [layer for layer in alexnet_layers(1, num_classes) if layer.name == "sgd"]
    sizes = [int(np.prod(s)) for s in sgd.info["shapes"]]
    return {layer: sizes[2 * i] + sizes[2 * i + 1] for i, layer in enumerate(LAYERS)}


def two_column_bytes(batch: int, widths=None, num_classes: int = 1000,
                     input_size: int = 227) -> dict:
    """{crossing point: bytes one column sends the other in forward} (backward sends the
    same the other way): the transfer log of a two-column step, from the shapes."""
    from convnet.models.alexnet import PAPER_WIDTHS, feature_sizes
    w1, w2, w3, w4, w5, w6, w7 = widths or PAPER_WIDTHS
    size = feature_sizes(input_size)
    return {"conv3": FLOAT * batch * w2 // 2 * size["pool2"] ** 2,
            "fc6": FLOAT * batch * w5 // 2 * size["pool5"] ** 2,
            "fc7": FLOAT * batch * w6 // 2, "fc8": FLOAT * batch * w7 // 2,
            "logits": FLOAT * batch * (num_classes // 2)}


def hybrid_exchanges(batch: int, num_classes: int = 1000) -> dict:
    """{boundary: bytes of the gathered tensor on one GPU, K = 1} for the hybrid's fc
    layers, per image count ``batch`` per GPU (multiply by K for K GPUs)."""
    from convnet.models.alexnet import PAPER_WIDTHS, feature_sizes
    w5, w6, w7 = PAPER_WIDTHS[4:]
    return {"fc6": FLOAT * batch * w5 * feature_sizes(227)["pool5"] ** 2,
            "fc7": FLOAT * batch * w6, "fc8": FLOAT * batch * w7,
            "loss": FLOAT * batch * num_classes}


# --------------------------------------------------------------------------- collectives

def allreduce_s(nbytes: float, k: int, link) -> float:
    bw, alpha = link[:2]
    return 0.0 if k == 1 else 2 * (k - 1) / k * nbytes / bw + 2 * (k - 1) * alpha


def gather_s(nbytes: float, k: int, link) -> float:
    """All-gather (or reduce-scatter) whose full result is ``nbytes``."""
    bw, alpha = link[:2]
    return 0.0 if k == 1 else (k - 1) / k * nbytes / bw + (k - 1) * alpha


# --------------------------------------------------------------------------- strategies

def _passes(times: dict, names, kind: str) -> float:
    return sum(times.get(n, {}).get(kind, 0.0) for n in names)


def _order(times: dict) -> list[str]:
    return [n for n in times if n != "sgd"]


def data_parallel(times: dict, params: dict, k: int, link, overlap: bool) -> float:
    """Step time on K GPUs, 128 images each; see the module docstring."""
    forward = _passes(times, _order(times), "forward")
    update = times["sgd"]["update"]
    backward = list(reversed(_order(times)))
    if not overlap:
        return (forward + _passes(times, backward, "backward")
                + allreduce_s(FLOAT * sum(params.values()), k, link) + update)
    clock = link_free = forward
    for name in backward:
        clock += times[name].get("backward", 0.0)
        if name in params:  # its gradients are ready: a bucket on the link
            link_free = max(link_free, clock) + allreduce_s(FLOAT * params[name], k, link)
    return max(clock, link_free) + update


def hybrid(times: dict, params: dict, k: int, link, overlap: bool, batch: int = BATCH,
           num_classes: int = 1000) -> float:
    """Step time on K GPUs: conv1-5 data-parallel, fc6-fc8 split K ways."""
    order = _order(times)
    cut = order.index("fc6")
    convs, fcs = order[:cut], order[cut:]          # fcs: fc6, fc7, fc8, loss
    exchange = hybrid_exchanges(batch, num_classes)
    bw = link[0]
    comm = {}                                     # per fc-side layer: its input's exchange
    for name in fcs:
        if name == "loss":                        # logits all-to-all: (K-1)/K of B C floats
            comm[name] = 0.0 if k == 1 else (k - 1) / k * exchange["loss"] / bw + (k - 1) * link[1]
        else:
            comm[name] = gather_s(k * exchange[name], k, link)
    fc_part = 0.0
    for kind in ("forward", "backward"):
        for name in fcs:
            compute = times[name].get(kind, 0.0)
            fc_part += max(compute, comm[name]) if overlap else compute + comm[name]
    conv_params = sum(params[n] for n in CONV)
    fc_params = sum(params[n] for n in FC)
    update = times["sgd"]["update"] * (conv_params + fc_params / k) / (conv_params + fc_params)
    forward = _passes(times, convs, "forward")
    if not overlap:
        return (forward + fc_part + _passes(times, convs, "backward")
                + allreduce_s(FLOAT * conv_params, k, link) + update)
    clock = link_free = forward + fc_part
    for name in reversed(convs):
        clock += times[name].get("backward", 0.0)
        if name in params:
            link_free = max(link_free, clock) + allreduce_s(FLOAT * params[name], k, link)
    return max(clock, link_free) + update


def two_column(column: dict, link, overlap: bool, batch: int = BATCH) -> float:
    """Step time of the two-column split on two GPUs: one GPU's column (``column``, the
    ``--columns 2`` table) plus its crossings."""
    bw, alpha = link[:2]
    crossing = {p: n / bw + alpha for p, n in two_column_bytes(batch).items()}
    total = sum(sum(p.values()) for p in column.values()) + 2 * crossing["logits"]
    for point in ("conv3", "fc6", "fc7", "fc8"):
        hidden = column[point].get("backward", 0.0) / 2 if overlap else 0.0
        total += crossing[point] + max(0.0, crossing[point] - hidden)
    return total


def estimate(one: dict, column: dict, gpus=GPU_COUNTS, links=None) -> list[dict]:
    """Every row of the table: strategy x link x overlap, step time and speed-up per K."""
    params = parameters()
    t1 = sum(sum(p.values()) for p in one.values())
    rows = []
    for strategy in STRATEGIES:
        for name in links or LINKS:
            link = LINKS[name]
            for overlap in (False, True):
                cells = {}
                for k in gpus:
                    if strategy == "two-column":
                        if k not in (1, 2):
                            continue
                        t = t1 if k == 1 else two_column(column, link, overlap)
                        speedup = t1 / t
                    else:
                        fn = data_parallel if strategy == "data-parallel" else hybrid
                        t = fn(one, params, k, link, overlap)
                        speedup = k * t1 / t
                    cells[str(k)] = {"step_s": t, "speedup": speedup,
                                     "images_per_s": (BATCH if strategy == "two-column"
                                                      else k * BATCH) / t}
                rows.append({"strategy": strategy, "link": name, "overlap": overlap,
                             "gpus": cells})
    return rows


def bytes_per_step(gpus=GPU_COUNTS) -> dict:
    """Bytes each GPU sends per step, per strategy and K (the formulas above)."""
    params = parameters()
    conv = FLOAT * sum(params[n] for n in CONV)
    total = FLOAT * sum(params.values())
    crossings = two_column_bytes(BATCH)
    logits = crossings.pop("logits")  # sent once: the logits by column 1, their gradient by 0
    out = {"two-column": {"2": 2 * sum(crossings.values()) + logits}}
    out["data-parallel"] = {str(k): 2 * (k - 1) / k * total for k in gpus}
    ex = hybrid_exchanges(BATCH)
    out["hybrid"] = {str(k): 2 * (k - 1) / k * conv + 2 * (k - 1) * (
        ex["fc6"] + ex["fc7"] + ex["fc8"] + ex["loss"] / k) for k in gpus}
    return out


# --------------------------------------------------------------------------- sources

def predicted_table(gpu: str, columns: int, blocks: int = 4) -> dict:
    """``convnet perf --gpu GPU --columns N --batch 128 --blocks B``'s JSON (its printout
    discarded)."""
    from convnet.perf import command
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "perf.json"
        with contextlib.redirect_stderr(io.StringIO()) as err:
            code = command.run(gpu, batch=BATCH, columns=columns, json_path=str(path),
                               blocks=blocks, out=io.StringIO())
        if code:
            raise ScalingError(err.getvalue().strip() or f"convnet perf failed ({code})")
        return json.loads(path.read_text())


def read_table(path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except OSError as exc:
        raise ScalingError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise ScalingError(f"{path} is not JSON: {exc}") from None


def measured_steps(paths) -> dict:
    """{columns: measured median step (s)} of the paper's network at batch 128 on a GPU,
    from the newest alexnet_step JSON among ``paths`` that has one; {} when none."""
    for path in sorted(paths, key=lambda p: Path(p).name, reverse=True):
        data = read_table(path)
        found = {}
        for r in data.get("results", []):
            p = r.get("params", {})
            if (str(r.get("device", "")).startswith("cuda") and r.get("name") == "train_step"
                    and p.get("network") == "alexnet" and p.get("batch") == BATCH):
                found[int(p.get("columns", 1))] = float(r["median_s"])
        if found:
            return {"file": str(path), "steps": found,
                    "gpus": [g.get("name") for g in data.get("machine", {}).get("gpus", [])]}
    return {}


# --------------------------------------------------------------------------- output

def markdown(rows: list[dict], gpus=GPU_COUNTS) -> str:
    head = "| strategy | link | overlap | " + " | ".join(f"{k} GPU{'s' if k > 1 else ''}"
                                                         for k in gpus) + " |"
    lines = [head, "|" + "---|" * (3 + len(gpus))]
    for row in rows:
        cells = []
        for k in gpus:
            c = row["gpus"].get(str(k))
            cells.append("—" if c is None else f"{c['step_s'] * 1e3:.1f} ms ({c['speedup']:.2f}x)")
        lines.append(f"| {row['strategy']} | {row['link']} | {'yes' if row['overlap'] else 'no'} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def _version() -> str | None:
    from importlib import metadata
    try:
        return metadata.version("convnet")
    except metadata.PackageNotFoundError:
        return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", default="h100", help="the GPU convnet perf predicts (h100)")
    parser.add_argument("--perf-json", nargs=2, metavar=("ONE", "TWO"), default=None,
                        help="convnet perf --json tables at batch 128: --columns 1 and 2")
    parser.add_argument("--measured", default=None,
                        help="an alexnet_step JSON with the step measured on a GPU (default: "
                             "the newest in the results folders; 'none': predictions only)")
    parser.add_argument("--gpus", type=int, nargs="+", default=list(GPU_COUNTS),
                        help="GPU counts (default 1 2 4 8)")
    parser.add_argument("--out", default=None, help="results folder")
    parser.add_argument("--quick", action="store_true",
                        help="predict with one emulated block per launch (convnet perf "
                             "--blocks 1: coarser memory traffic, faster)")
    parser.add_argument("--no-json", action="store_true", help="print the table only")
    args = parser.parse_args(argv)
    try:
        if any(k < 1 for k in args.gpus):
            raise ScalingError(f"--gpus must be positive, got {args.gpus}")
        if args.perf_json:
            one, two = (read_table(p) for p in args.perf_json)
            source = f"convnet perf tables {args.perf_json[0]}, {args.perf_json[1]}"
        else:
            blocks = 1 if args.quick else 4
            one, two = (predicted_table(args.gpu, c, blocks) for c in (1, 2))
            source = f"convnet perf, {args.gpu}, batch {BATCH}, --blocks {blocks}"
        times_one, times_two = layer_times(one), layer_times(two)
        folders = [Path(args.out)] if args.out else []
        folders.append(harness.DEFAULT_RESULTS_DIR)
        if args.measured:
            candidates = [] if args.measured == "none" else [args.measured]
        else:
            candidates = [p for d in folders if d.is_dir() for p in d.glob("alexnet_step-*.json")]
        measured = measured_steps(candidates)
    except ScalingError as exc:
        print(f"scaling: {exc}", file=sys.stderr)
        return 2
    predicted_only = True
    if measured.get("steps", {}).get(1):
        times_one = scaled(times_one, measured["steps"][1])
        predicted_only = False
        source += f"; scaled to the step measured in {measured['file']}"
        if measured["steps"].get(2):  # both columns on one GPU: twice one column
            times_two = scaled(times_two, measured["steps"][2] / 2)
    rows = estimate(times_one, times_two, args.gpus)
    table = markdown(rows, args.gpus)
    print(f"AlexNet step time and speed-up on K GPUs, {BATCH} images per GPU "
          f"({'PREDICTED' if predicted_only else 'PREDICTED from a measured step'}; source: "
          f"{source})\n")
    print(table)
    print("\nlinks: " + "; ".join(f"{n}: {d}" for n, (_, _, d) in LINKS.items()))
    print("papers: " + "; ".join(PAPERS.values()))
    if args.no_json:
        return 0
    data = {"benchmark": "scaling", "predicted": True, "measured_step": measured or None,
            "source": source, "batch_per_gpu": BATCH, "gpu_counts": args.gpus,
            "one_gpu_step_s": sum(sum(p.values()) for p in times_one.values()),
            "column_step_s": sum(sum(p.values()) for p in times_two.values()),
            "links": {n: {"bytes_per_s": b, "latency_s": a, "what": d}
                      for n, (b, a, d) in LINKS.items()},
            "bytes_sent_per_gpu_per_step": bytes_per_step(args.gpus),
            "rows": rows, "markdown": table, "papers": PAPERS,
            "versions": {"convnet": _version()},
            "machine": harness.machine_info(probe_gpu=False)}
    path = harness.write_json(data, "scaling", args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
