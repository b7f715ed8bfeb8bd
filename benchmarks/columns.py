"""Two columns on two GPUs against both on one (issue 13, item 1): a few training steps.

    python benchmarks/columns.py [--out DIR] [--quick] [--steps N] [--batch B]

* Two or more GPUs: the paper's AlexNet (batch 128; 32 with ``--quick``) in two columns
  on ``cuda:0`` + ``cuda:1`` and on ``cuda:0`` alone, from the same seed on the same batch:
  each step's loss, the largest weight difference after the steps, each layout's median
  step time (host clock around a step, every GPU synchronised) and their ratio, the
  crossing path (``peer`` or ``staged``) and the bytes crossing per step.
* One GPU: two columns on ``cuda:0``, twice (what one GPU can check of the placement:
  the same losses and weights run to run).
* No GPU: the small network on ``cpu`` + ``cpu``, twice.

The runs must agree (losses to 1e-4 relative, weights to 1e-4 of their largest
magnitude); otherwise the report is marked WRONG and the exit code is 1. Times are
recorded, never asserted.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from benchmarks import harness  # noqa: E402
from benchmarks.alexnet_step import NETWORKS, SEED  # noqa: E402

RTOL = 1e-4


def layouts(gpus: int) -> tuple[list[str], list[str]]:
    """The layout measured and the one it is compared with, for this many GPUs."""
    if gpus >= 2:
        return ["cuda:0", "cuda:1"], ["cuda:0", "cuda:0"]
    if gpus == 1:
        return ["cuda:0", "cuda:0"], ["cuda:0", "cuda:0"]
    return ["cpu", "cpu"], ["cpu", "cpu"]


def train(devices: list[str], network: str, batch: int, steps: int, warmup: int) -> dict:
    """``warmup + steps`` training steps of the two-column network on ``devices``."""
    import convnet
    from convnet import optim
    from convnet.models import alexnet

    spec = NETWORKS[network]
    kwargs = dict(num_classes=spec["num_classes"], input_size=spec["input_size"], seed=SEED)
    if spec["widths"] is not None:
        kwargs.update(widths=spec["widths"], weight_std=0.05)
    model = alexnet(columns=2, devices=devices, **kwargs)
    opt = optim.SGD(model)
    rng = np.random.default_rng(SEED)
    size = spec["input_size"]
    images = rng.standard_normal((batch, 3, size, size), dtype=np.float32)
    labels = rng.integers(0, spec["num_classes"], batch)
    losses, samples, result = [], [], None
    for i in range(warmup + steps):
        began = time.perf_counter()
        result = convnet.train_step(model, opt, images, labels)
        losses.append(result.loss)
        for device in model.devices:
            device.synchronize()
        if i >= warmup:
            samples.append(time.perf_counter() - began)
    return {"losses": losses, "samples": samples, "path": model.crossing_path(),
            "transfers": result.transfers,
            "weights": {n: p.numpy() for n, p in model.named_parameters()}}


def agreement(a: dict, b: dict) -> dict:
    """How far two runs' losses and final weights are apart."""
    la, lb = np.asarray(a["losses"]), np.asarray(b["losses"])
    loss_rel = float(np.max(np.abs(la - lb) / np.maximum(np.abs(lb), 1e-12)))
    weight_abs = max(float(np.max(np.abs(a["weights"][n] - w))) for n, w in b["weights"].items())
    scale = max(float(np.max(np.abs(w))) for w in b["weights"].values())
    identical = all(np.array_equal(a["weights"][n], w) for n, w in b["weights"].items())
    return {"max_loss_rel_diff": loss_rel, "max_weight_abs_diff": weight_abs,
            "weight_scale": scale, "bit_identical": bool(identical and np.array_equal(la, lb)),
            "agree": bool(loss_rel <= RTOL and weight_abs <= RTOL * scale)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    harness.add_common_args(parser)
    parser.add_argument("--steps", type=int, default=None, help="timed steps per layout")
    parser.add_argument("--batch", type=int, default=None, help="batch size")
    args = parser.parse_args(argv)
    report = harness.Report("columns", args=vars(args))
    from convnet.backend import cuda
    gpus = cuda.device_count()
    measured, baseline = layouts(gpus)
    network = "alexnet" if gpus else "small"
    spec = NETWORKS[network]
    batch = args.batch or (spec["quick_batch"] if args.quick or not gpus else spec["batch"])
    steps = args.steps or (3 if args.quick or not gpus else 5)
    warmup = args.warmup if args.warmup is not None else (1 if gpus else 0)
    runs = []
    try:
        for devices in (measured, baseline):
            run = train(devices, network, batch, steps, warmup)
            log = run["transfers"]
            runs.append(run)
            report.add(harness.Result(
                "two_columns_step", "+".join(devices), run["samples"],
                params={"network": network, "batch": batch, "gpus": gpus, "path": run["path"],
                        "transfer_count": log.count, "transfer_bytes": log.nbytes,
                        "first_loss": round(float(run["losses"][0]), 4),
                        "last_loss": round(float(run["losses"][-1]), 4)}))
    except Exception as exc:  # a clear line, and the JSON says so
        report.notes["WRONG error"] = f"{type(exc).__name__}: {exc}"
        print(f"columns: {type(exc).__name__}: {exc}", file=sys.stderr)
        return harness.finish(report, args, failed=True)
    a, b = runs
    check = agreement(a, b)
    report.notes["agreement"] = check
    report.notes["compared"] = f"{'+'.join(measured)} against {'+'.join(baseline)}" + {
        0: " (run twice: no GPU here)", 1: " (run twice: what one GPU can check)"}.get(gpus, "")
    if not check["agree"]:
        report.notes["WRONG disagreement"] = (f"losses {check['max_loss_rel_diff']:.2e} apart "
                                              f"(relative), weights {check['max_weight_abs_diff']:.2e}")
    if gpus >= 2:
        report.add_ratio(report.results[0], report.results[1],
                         label=f"two columns on two GPUs vs both on cuda:0 ({network}, "
                               f"batch {batch})")
    return harness.finish(report, args)


if __name__ == "__main__":
    sys.exit(main())
