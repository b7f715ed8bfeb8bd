"""Benchmark one AlexNet training step (forward, loss, backward, SGD update): time, peak memory,
and the activations the backward pass really needs.

  python benchmarks/alexnet_step.py                       # every device here (see below)
  python benchmarks/alexnet_step.py --devices cpu --quick
  python benchmarks/alexnet_step.py --devices cuda:0 --columns 1 2 --batch 128

Networks: ``alexnet`` is the paper's (227×227 inputs, 1000 classes, 60,965,224
parameters) at batch 128 (``--batch``; 32 with ``--quick``); ``small`` is an
AlexNet-shaped network narrow enough for the host (widths 32/64/96/96/64/512/512, 99×99
inputs, 100 classes) at batch 32 on ``cpu`` (8 with ``--quick``, and always 8 on
``emu``, whose emulated convolutions are slow). By default ``cuda`` devices run
``alexnet`` and ``cpu``/``emu`` run ``small`` (``--network`` forces one). ``--columns 1 2``
also times the two-column layout with both columns on the same device, and records the
transfer log of one of its steps (count and bytes per crossing).

Per case the report holds the step time (``convnet.train_step``, median of repeats), the
forward FLOPs ×3 as the step's work, and, from one extra step, memory:

* ``persistent_bytes``: what is held before the step (parameters, SGD velocities, input).
* ``peak_bytes``: the most held at once during the step: on ``cuda`` CuPy's memory pool
  (bytes in use, tracked by a memory hook), on the host NumPy's allocations (tracemalloc).
* ``saved_bytes``: the sum of the arrays the recorded graph keeps for backward, once
  each, parameters excluded, read from the graph after a forward pass; this is "the
  activations backward really needs".
* ``activation_peak_over_saved`` = (peak − persistent − param_bytes) / saved: the most
  the step holds beyond its state and the parameter gradients it produces (activations,
  their gradients, workspaces), as a multiple of that sum. The issue's goal for full
  AlexNet on ``cuda`` is below 1.3 (saved activations are freed as backward goes); on
  the host the NumPy references' im2col buffers weigh in.

On ``cuda`` PyTorch's AlexNet (same layers and groups; LRN across all channels, as PyTorch
has no grouped LRN, with α·n so that it computes the paper's α) is timed as a baseline in
the same run when torch is importable, with its peak from ``torch.cuda.max_memory_allocated``.
Ratios are recorded, never asserted.
"""
from __future__ import annotations

import argparse
import sys
import tracemalloc
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from benchmarks import harness  # noqa: E402

NETWORKS = {
    "alexnet": dict(num_classes=1000, input_size=227, widths=None, batch=128, quick_batch=32),
    "small": dict(num_classes=100, input_size=99, widths=(32, 64, 96, 96, 64, 512, 512),
                  batch=32, quick_batch=8),
}
SEED = 1234


# --------------------------------------------------------------------------- the model

def build(network: str, columns: int, device, seed: int = SEED):
    from convnet.models import alexnet
    spec = NETWORKS[network]
    kwargs = dict(num_classes=spec["num_classes"], input_size=spec["input_size"], seed=seed,
                  columns=columns, devices=[device] * columns)
    if spec["widths"] is not None:
        kwargs.update(widths=spec["widths"], weight_std=0.05)
    return alexnet(**kwargs)


def batch_data(network: str, batch: int, device):
    """Fixed random images (already on ``device``) and labels."""
    import convnet
    spec = NETWORKS[network]
    rng = np.random.default_rng(SEED)
    size = spec["input_size"]
    images = rng.standard_normal((batch, 3, size, size), dtype=np.float32)
    labels = rng.integers(0, spec["num_classes"], batch)
    return convnet.tensor(images, device=device), labels


def forward_flops(model, record) -> int:
    """Multiply-adds ×2 of one forward pass, from each conv/linear layer's weight and output."""
    from convnet import nn
    total = 0
    for name, module in model.named_modules():
        out = record.get(name)
        if out is None:
            continue
        if isinstance(module, nn.Conv2d):
            n, k, p, q = out.shape
            _, cg, r, s = module.weight.shape
            total += 2 * n * k * p * q * cg * r * s
        elif isinstance(module, nn.Linear):
            total += 2 * out.shape[0] * module.in_features * module.out_features
    return total


# --------------------------------------------------------------------------- memory

def _pointer(array) -> int:
    """The address of an array's first element (NumPy's, else CuPy's)."""
    return int(array.ctypes.data) if isinstance(array, np.ndarray) else int(array.data.ptr)


def _arrays_in(value):
    if value is None:
        return
    if isinstance(value, (tuple, list)):
        for v in value:
            yield from _arrays_in(v)
    elif hasattr(value, "nbytes") and hasattr(value, "shape"):
        yield value


def saved_bytes(root, params) -> int:
    """Bytes the graph behind ``root`` keeps for backward, each array once, parameters out."""
    from convnet.tensor import Function
    skip = {(_pointer(p.data), p.data.nbytes) for p in params}
    seen_nodes, seen_arrays, total = set(), set(), 0
    stack = [root._node]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen_nodes:
            continue
        seen_nodes.add(id(node))
        for array in _arrays_in(node.saved):
            key = (_pointer(array), array.nbytes)
            if key in skip or key in seen_arrays:
                continue
            seen_arrays.add(key)
            total += array.nbytes
        stack.extend(p for p in (node._parents or ()) if isinstance(p, Function))
    return total


def _cuda_peak(step, device):
    """(bytes in use before, peak bytes in use) of CuPy's default pool around ``step()``."""
    import cupy as cp

    class PeakHook(cp.cuda.MemoryHook):
        name = "convnet_peak"

        def __init__(self, start):
            self.used = self.peak = start

        def malloc_postprocess(self, **kwargs):
            self.used += kwargs["mem_size"]
            self.peak = max(self.peak, self.used)

        def free_postprocess(self, **kwargs):
            self.used -= kwargs["mem_size"]

    pool = cp.get_default_memory_pool()
    device.synchronize()
    before = pool.used_bytes()
    hook = PeakHook(before)
    with hook:
        step()
        device.synchronize()
    return before, hook.peak


def _host_peak(step):
    """(bytes NumPy holds before, peak) around ``step()``, from tracemalloc."""
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        step()
        return before, tracemalloc.get_traced_memory()[1]
    finally:
        if started:
            tracemalloc.stop()


def memory_report(model, opt, images, labels, device) -> dict:
    """Persistent, peak and saved bytes of one training step (see the module docstring)."""
    import convnet
    from convnet import functional as F

    model.train()
    opt.zero_grad()
    loss = F.cross_entropy(model(images), labels)
    saved = saved_bytes(loss, model.parameters() + [images])  # the images are persistent
    del loss
    opt.zero_grad()

    def step():
        convnet.train_step(model, opt, images, labels)

    params = sum(p.data.nbytes for p in model.parameters())
    if device.kind == "cuda":
        before, peak = _cuda_peak(step, device)
    else:  # tracemalloc sees only what is allocated while it traces: add the state held before
        base, traced_peak = _host_peak(step)
        before = 2 * params + images.data.nbytes  # parameters, velocities, images
        peak = before + (traced_peak - base)
    activation_peak = peak - before - params  # the parameter gradients are the step's result
    return {"persistent_bytes": int(before), "peak_bytes": int(peak),
            "saved_bytes": int(saved), "param_bytes": int(params),
            "activation_peak_over_saved": round(activation_peak / saved, 3) if saved else None}


# --------------------------------------------------------------------------- cases

def bench_case(report, device, network, columns, batch, reps):
    import convnet
    from convnet import optim

    model = build(network, columns, device)
    opt = optim.SGD(model)
    images, labels = batch_data(network, batch, device)
    record = {}
    with convnet.no_grad():
        model.eval()
        model(images, record=record)
    flops = 3 * forward_flops(model, record)  # forward + backward data + backward filter
    del record
    results = []

    def step():
        results.append(convnet.train_step(model, opt, images, labels))

    params = {"network": network, "columns": columns, "batch": batch,
              "parameters": model.num_parameters()}
    result = report.add(harness.measure(step, device=device, name="train_step", flops=flops,
                                        params=params, **reps))
    losses = [r.loss for r in results]
    if not all(np.isfinite(losses)):
        report.notes[f"WRONG {device.name} {network} columns={columns}"] = \
            f"non-finite loss: {losses}"
    result.params["first_loss"] = round(float(losses[0]), 4)
    result.params["last_loss"] = round(float(losses[-1]), 4)
    if columns == 2:
        log = results[-1].transfers
        report.notes[f"transfers {device.name} {network} batch={batch}"] = {
            f"{phase} {src}->{dst} {name}": e for (phase, src, dst, name), e
            in log.summary().items()}
        result.params["transfer_count"] = log.count
        result.params["transfer_bytes"] = log.nbytes
    result.params.update(memory_report(model, opt, images, labels, device))
    return result


def _import_torch():
    try:
        import torch
    except Exception:
        return None
    return torch if torch.cuda.is_available() else None


def torch_alexnet(torch, num_classes=1000):
    nn = torch.nn
    lrn = dict(size=5, alpha=5 * 1e-4, beta=0.75, k=2.0)  # torch divides alpha by size
    return nn.Sequential(
        nn.Conv2d(3, 96, 11, stride=4), nn.ReLU(inplace=True), nn.LocalResponseNorm(**lrn),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(96, 256, 5, padding=2, groups=2), nn.ReLU(inplace=True),
        nn.LocalResponseNorm(**lrn), nn.MaxPool2d(3, 2),
        nn.Conv2d(256, 384, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(384, 384, 3, padding=1, groups=2), nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, 3, padding=1, groups=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        nn.Flatten(),
        nn.Linear(9216, 4096), nn.ReLU(inplace=True), nn.Dropout(0.5),
        nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Dropout(0.5),
        nn.Linear(4096, num_classes))


def bench_torch(report, torch, device, batch, reps):
    index = getattr(device, "index", 0)
    dev = torch.device(f"cuda:{index}")
    torch.manual_seed(SEED)
    torch.backends.cudnn.benchmark = True
    model = torch_alexnet(torch).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=0.0005)
    x = torch.randn(batch, 3, 227, 227, device=dev)
    y = torch.randint(0, 1000, (batch,), device=dev)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()

    result = report.add(harness.measure(step, device=device, name="torch_step",
                                        params={"network": "alexnet", "columns": 1,
                                                "batch": batch}, **reps))
    torch.cuda.synchronize(dev)
    opt.zero_grad(set_to_none=True)
    before = torch.cuda.memory_allocated(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    step()
    torch.cuda.synchronize(dev)
    result.params.update(persistent_bytes=int(before),
                         peak_bytes=int(torch.cuda.max_memory_allocated(dev)))
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    harness.add_common_args(parser)
    parser.add_argument("--network", choices=sorted(NETWORKS), default=None,
                        help="network on every device (default: alexnet on cuda, small on the host)")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default per network)")
    parser.add_argument("--columns", type=int, nargs="+", choices=(1, 2), default=None,
                        help="layouts to time (default: 1 and 2; 1 only with --quick)")
    args = parser.parse_args(argv)

    report = harness.Report("alexnet_step", args=vars(args))
    devices = harness.open_devices(args.devices, report)
    reps = harness.repetitions(args)
    columns_list = args.columns or ([1] if args.quick else [1, 2])
    torch = None
    failed = False
    for device in devices:
        network = args.network or ("alexnet" if device.kind == "cuda" else "small")
        spec = NETWORKS[network]
        small_batch = args.quick or (device.kind == "emu")
        batch = args.batch or (spec["quick_batch"] if small_batch else spec["batch"])
        dev_reps = dict(reps[device.kind])
        if network == "alexnet" and args.repeats is None:
            dev_reps.update(repeats=5 if args.quick else 10, warmup=args.warmup or 2,
                            min_time_s=0.0)
        ours = None
        for columns in columns_list:
            try:
                result = bench_case(report, device, network, columns, batch, dev_reps)
                ours = ours or (result if columns == 1 else None)
            except Exception as exc:  # report and go on
                failed = True
                report.notes[f"error {device.name} {network} columns={columns}"] = \
                    f"{type(exc).__name__}: {exc}"
                print(f"error on {device.name} ({network}, columns={columns}): "
                      f"{type(exc).__name__}: {exc}", file=sys.stderr)
        if device.kind == "cuda" and network == "alexnet":
            torch = torch or _import_torch()
            if torch is None:
                report.notes["torch"] = "not importable with CUDA: no PyTorch baseline"
            else:
                try:
                    baseline = bench_torch(report, torch, device, batch, dev_reps)
                    if ours is not None:
                        report.add_ratio(ours, baseline, label=f"convnet AlexNet step vs PyTorch "
                                                               f"on {device.name}, batch {batch}")
                except Exception as exc:
                    report.notes[f"error torch {device.name}"] = f"{type(exc).__name__}: {exc}"
    return harness.finish(report, args, failed)


if __name__ == "__main__":
    sys.exit(main())
