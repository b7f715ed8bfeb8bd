"""End to end against PyTorch: the same AlexNet in convnet and in PyTorch, the same initial
weights, first checked to compute the same thing, then timed side by side.

  python benchmarks/alexnet.py                     # cpu and emu here, PyTorch CPU beside them
  python benchmarks/alexnet.py --devices cpu --networks small
  python benchmarks/alexnet.py --devices cuda:0    # PyTorch FP32 (TF32 off), default, bf16 autocast
  python benchmarks/alexnet.py --render benchmarks/results/alexnet-....json   # the table again
  convnet bench ...                                # the same, from a source checkout

Networks: ``small`` is the default CPU run's (``--model alexnet-small``: widths
24/48/64/64/48/256/256, 227 crops, 10 classes), ``alexnet`` the paper's (1000 classes).
In PyTorch: conv2/4/5 with ``groups=2``, LRN in each half of the channels (as convnet's
one-column network, ``lrn_groups=2``) with PyTorch's alpha = convnet's α × size (PyTorch
divides by the size), overlapping 3/2 max-pools, dropout 0.5, the convnet model's
initial weights copied in.

1. Agreement (``agreement``): logits, loss and every parameter's gradient of one batch,
   both in train mode with dropout off (the two draw different masks): float64 on
   ``cpu`` must agree to ``FLOAT64_AGREEMENT`` (a larger difference is marked WRONG and
   the exit code is 1); float32's difference is reported.
2. Speed: images/s of a training step (``convnet.train_step``; PyTorch: zero_grad,
   forward, cross-entropy, backward, SGD with momentum and weight decay) and of
   inference (eval mode, no gradients) on each device, each case's convnet and PyTorch
   samples taken alternately (a loaded machine slows both alike), median of the
   repeats, the ratio convnet / PyTorch in images/s (> 1: convnet is faster). ``cpu``:
   batch 1/32/128 (the paper's network: train 16, infer 1/16); ``emu``: batch 2 of the
   small network; ``cuda``: batch 1/32/128 of the paper's network against PyTorch FP32
   with TF32 off, PyTorch's defaults (cuDNN may use TF32) and bf16 autocast, with each
   side's peak memory.

Output: the table printed; JSON (machine, versions, commit) under benchmarks/results/
(``--out``); beside it the same stem as Markdown (``render_markdown``) and, when
matplotlib is installed, a bar chart (.png).

PyTorch is optional (``pip install -e ".[bench]"``; see the README for a CPU-only
wheel): without it the agreement is skipped and convnet's numbers are timed alone.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from benchmarks import harness  # noqa: E402

NETWORKS = {
    "small": dict(widths=(24, 48, 64, 64, 48, 256, 256), classes=10, weight_std=0.05),
    "alexnet": dict(widths=(96, 256, 384, 384, 256, 4096, 4096), classes=1000, weight_std=0.01),
}
LRN = dict(size=5, alpha=1e-4, beta=0.75, k=2.0)   # convnet's (the paper's) constants
FLOAT64_AGREEMENT = 1e-10  # largest relative difference accepted in float64 (~1e-13 seen)
SEED = 1234
TORCH_MODES = ("fp32", "default", "bf16")  # on a GPU: TF32 off, PyTorch's defaults, autocast


# --------------------------------------------------------------------------- the two models

def convnet_model(network: str, device="cpu", dtype=np.float32, dropout: float = 0.5,
                  input_size: int = 227, seed: int = SEED):
    from convnet.models import alexnet
    spec = NETWORKS[network] if isinstance(network, str) else network
    return alexnet(num_classes=spec["classes"], widths=spec["widths"],
                   weight_std=spec["weight_std"], input_size=input_size, devices=[device],
                   dropout=dropout, seed=seed, dtype=dtype)


def torch_model(torch, model, dropout: float = 0.5):
    """The PyTorch network of a one-column convnet AlexNet ``model``, its weights copied."""
    nn, F = torch.nn, torch.nn.functional

    class GroupedLRN(nn.Module):
        """LRN within each of ``groups`` equal parts of the channels."""

        def __init__(self, groups):
            super().__init__()
            self.groups = groups

        def forward(self, x):
            size = LRN["size"]
            parts = x.chunk(self.groups, dim=1)
            return torch.cat([F.local_response_norm(p, size, alpha=LRN["alpha"] * size,
                                                    beta=LRN["beta"], k=LRN["k"])
                              for p in parts], dim=1)

    w1, w2, w3, w4, w5, w6, w7 = model.widths
    pad1 = 2 if model.input_size == 224 else 0
    feature = model.sizes["pool5"]
    relu = dict(inplace=True)
    layers = [
        ("conv1", nn.Conv2d(3, w1, 11, stride=4, padding=pad1)), ("relu1", nn.ReLU(**relu)),
        ("norm1", GroupedLRN(model.lrn_groups)), ("pool1", nn.MaxPool2d(3, 2)),
        ("conv2", nn.Conv2d(w1, w2, 5, padding=2, groups=2)), ("relu2", nn.ReLU(**relu)),
        ("norm2", GroupedLRN(model.lrn_groups)), ("pool2", nn.MaxPool2d(3, 2)),
        ("conv3", nn.Conv2d(w2, w3, 3, padding=1)), ("relu3", nn.ReLU(**relu)),
        ("conv4", nn.Conv2d(w3, w4, 3, padding=1, groups=2)), ("relu4", nn.ReLU(**relu)),
        ("conv5", nn.Conv2d(w4, w5, 3, padding=1, groups=2)), ("relu5", nn.ReLU(**relu)),
        ("pool5", nn.MaxPool2d(3, 2)), ("flatten", nn.Flatten()),
        ("fc6", nn.Linear(w5 * feature * feature, w6)), ("relu6", nn.ReLU(**relu)),
        ("drop6", nn.Dropout(dropout)),
        ("fc7", nn.Linear(w6, w7)), ("relu7", nn.ReLU(**relu)), ("drop7", nn.Dropout(dropout)),
        ("fc8", nn.Linear(w7, model.num_classes)),
    ]
    from collections import OrderedDict
    net = nn.Sequential(OrderedDict(layers))
    dtype = torch.float64 if model.dtype == np.float64 else torch.float32
    net = net.to(dtype)
    state = model.state_dict()
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.copy_(torch.from_numpy(np.ascontiguousarray(state[name])))
    return net


def _images(batch: int, size: int, classes: int, dtype=np.float32):
    rng = np.random.default_rng(SEED)
    return (rng.standard_normal((batch, 3, size, size)).astype(dtype),
            rng.integers(0, classes, batch))


# --------------------------------------------------------------------------- agreement

def _relative(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = float(np.max(np.abs(b), initial=0.0))
    return float(np.max(np.abs(a - b), initial=0.0)) / scale if scale else 0.0


def agreement(torch, network="small", dtype=np.float64, batch: int = 2,
              input_size: int = 227) -> dict:
    """Relative differences (max |a − b| / max |b|) between convnet on ``cpu`` and PyTorch
    on one batch: logits, loss, and the worst parameter gradient (named). ``network``: a
    NETWORKS name or a dict like its entries."""
    import convnet
    from convnet import functional as F
    model = convnet_model(network, "cpu", dtype, dropout=0.0, input_size=input_size)
    net = torch_model(torch, model, dropout=0.0)
    images, labels = _images(batch, input_size, model.num_classes, dtype)
    model.train()
    logits = model(convnet.tensor(images))
    loss = F.cross_entropy(logits, labels)
    loss.backward()
    net.train()
    t_logits = net(torch.from_numpy(images))
    t_loss = torch.nn.functional.cross_entropy(t_logits, torch.from_numpy(labels))
    t_loss.backward()
    grads = {name: _relative(p.grad.numpy(), dict(net.named_parameters())[name].grad.numpy())
             for name, p in model.named_parameters()}
    worst = max(grads, key=grads.get)
    return {"network": network if isinstance(network, str) else "custom",
            "dtype": np.dtype(dtype).name, "batch": batch,
            "logits": _relative(logits.numpy(), t_logits.detach().numpy()),
            "loss": _relative(loss.numpy(), t_loss.detach().numpy()),
            "gradients": grads[worst], "worst_gradient": worst}


# --------------------------------------------------------------------------- timing

def _alternate(fns: dict, device, warmup: int, repeats: int, max_time_s=None) -> dict:
    """Samples of each callable in ``fns`` (name -> fn), taken in turns."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples = {name: [] for name in fns}
    total = 0.0
    for _ in range(repeats):
        for name, fn in fns.items():
            r = harness.measure(fn, device=device, warmup=0, repeats=1, flush_l2=False)
            samples[name].append(r.samples[0])
            total += r.samples[0]
        if max_time_s is not None and total >= max_time_s:
            break
    return samples


def _convnet_case(model, device, kind: str, batch: int):
    """The callable timing one convnet training step or inference on ``batch`` images."""
    import convnet
    from convnet import optim
    images, labels = _images(batch, model.input_size, model.num_classes)
    x = convnet.tensor(images, device=device)
    if kind == "train":
        opt = optim.SGD(model, lr=0.01, momentum=0.9, weight_decay=5e-4)
        return lambda: convnet.train_step(model, opt, x, labels)

    def infer():
        with convnet.no_grad():
            model.eval()
            return model(x)
    return infer


def _torch_case(torch, net, dev, kind: str, batch: int, size: int, classes: int,
                mode: str = "fp32"):
    """The callable timing one PyTorch training step or inference (``mode``: a
    TORCH_MODES entry; bf16 runs under autocast)."""
    images, labels = _images(batch, size, classes)
    x, y = torch.from_numpy(images).to(dev), torch.from_numpy(labels).to(dev)
    autocast = (torch.autocast(dev.type, dtype=torch.bfloat16) if mode == "bf16"
                else torch.autocast(dev.type, enabled=False))
    if kind == "train":
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

        def step():
            net.train()
            opt.zero_grad(set_to_none=True)
            with autocast:
                loss = torch.nn.functional.cross_entropy(net(x), y)
            loss.backward()
            opt.step()
        return step

    def infer():
        net.eval()
        with torch.no_grad(), autocast:
            return net(x)
    return infer


_DEFAULT_TF32 = {}  # PyTorch's own TF32 switches, read before the first change


def _set_torch_mode(torch, mode: str) -> None:
    """TF32 off for fp32 (and bf16's FP32 parts); PyTorch's own defaults for "default"."""
    if not torch.cuda.is_available():
        return
    if not _DEFAULT_TF32:
        _DEFAULT_TF32.update(matmul=torch.backends.cuda.matmul.allow_tf32,
                             cudnn=torch.backends.cudnn.allow_tf32)
    default = mode == "default"
    torch.backends.cuda.matmul.allow_tf32 = default and _DEFAULT_TF32["matmul"]
    torch.backends.cudnn.allow_tf32 = default and _DEFAULT_TF32["cudnn"]


def _torch_device(torch, device):
    return torch.device(f"cuda:{device.index}" if device.kind == "cuda" else "cpu")


def _peak_bytes(torch, device, fn) -> dict:
    """Peak memory of one call on a GPU: convnet's from CuPy's pool, PyTorch's allocator's."""
    if device.kind != "cuda":
        return {}
    from benchmarks.alexnet_step import _cuda_peak
    before, peak = _cuda_peak(fn, device)
    return {"persistent_bytes": int(before), "peak_bytes": int(peak)}


def _torch_peak(torch, dev, fn) -> dict:
    if dev.type != "cuda":
        return {}
    torch.cuda.synchronize(dev)
    before = torch.cuda.memory_allocated(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    fn()
    torch.cuda.synchronize(dev)
    return {"persistent_bytes": int(before), "peak_bytes": int(torch.cuda.max_memory_allocated(dev))}


def bench_device(report, torch, device, network: str, kind: str, batch: int, reps: dict):
    """Time convnet (and PyTorch in each mode this device has) on one case; record the
    results and the ratios."""
    model = convnet_model(network, device)
    ours_fn = _convnet_case(model, device, kind, batch)
    fns = {"convnet": ours_fn}
    modes = ()
    if torch is not None:
        dev = _torch_device(torch, device)
        net = torch_model(torch, model).to(dev)  # convnet's initial weights: nothing ran yet
        modes = TORCH_MODES if dev.type == "cuda" else ("fp32",)
        for mode in modes:
            fns[f"torch_{mode}"] = _torch_case(torch, net, dev, kind, batch, model.input_size,
                                               model.num_classes, mode)

    def run(name):
        if name.startswith("torch_"):
            _set_torch_mode(torch, name[len("torch_"):])
        return fns[name]()

    calls = {name: (lambda name=name: run(name)) for name in fns}
    samples = _alternate(calls, device, reps["warmup"], reps["repeats"], reps.get("max_time_s"))
    params = {"network": network, "pass": kind, "batch": batch,
              "numpy_threads": os.environ.get("OPENBLAS_NUM_THREADS") or "default"}
    if torch is not None:
        params["torch_threads"] = torch.get_num_threads()
    results = {}
    for name, values in samples.items():
        r = harness.Result(name=f"{name} {kind}", device=device.name, samples=values,
                           params=dict(params))
        r.params["images_per_s"] = round(batch / r.median, 3)
        results[name] = report.add(r)
    if device.kind == "cuda":
        results["convnet"].params.update(_peak_bytes(torch, device, lambda: run("convnet")))
        for mode in modes:
            name = f"torch_{mode}"
            _set_torch_mode(torch, mode)
            results[name].params.update(_torch_peak(torch, _torch_device(torch, device),
                                                    fns[name]))
    for mode in modes:
        report.add_ratio(results["convnet"], results[f"torch_{mode}"],
                         label=f"{network} {kind} batch {batch} on {device.name}: convnet / "
                               f"PyTorch {mode} (images/s)")
    return results


# --------------------------------------------------------------------------- cases

def cases_for(device, network: str, quick: bool) -> list[tuple[str, int]]:
    """(pass, batch) pairs for a device kind and network (see the module docstring)."""
    if device.kind == "emu":
        return [("train", 1), ("infer", 1)] if quick else [("train", 2), ("infer", 2)]
    if device.kind == "cuda":
        batches = (32,) if quick else (1, 32, 128)
        return [(k, b) for k in ("train", "infer") for b in batches]
    if quick:
        return [("train", 4), ("infer", 1), ("infer", 4)] if network == "small" else []
    if network == "alexnet":
        return [("train", 16), ("infer", 1), ("infer", 16)]
    return [(k, b) for k in ("train", "infer") for b in (1, 32, 128)]


def networks_for(device, names) -> list[str]:
    if names:
        return list(names)
    if device.kind == "emu":
        return ["small"]
    return ["alexnet"] if device.kind == "cuda" else ["small", "alexnet"]


def repetitions(device, quick: bool, args) -> dict:
    base = {"cpu": dict(warmup=1, repeats=3 if quick else 5),
            "emu": dict(warmup=1, repeats=2 if quick else 3, max_time_s=60.0),
            "cuda": dict(warmup=3, repeats=5 if quick else 20)}[device.kind]
    if args.repeats:
        base["repeats"] = args.repeats
    if args.warmup is not None:
        base["warmup"] = args.warmup
    return base


# --------------------------------------------------------------------------- rendering

def render_markdown(data: dict) -> str:
    """A Markdown page of a report's JSON: machine, agreement, and the images/s table."""
    m = data.get("machine", {})
    notes = data.get("notes", {})
    lines = [f"AlexNet end to end, convnet against PyTorch — {m.get('timestamp', '?')}, "
             f"{m.get('cpu_model', '?')} ({m.get('cpus_usable', '?')} usable cores)"
             + (f", {m['gpus'][0].get('name')}" if m.get("gpus") else "")
             + f", commit {str(m.get('git_commit') or '?')[:7]}"
             + (" (dirty)" if m.get("git_dirty") else "") + ", versions: "
             + ", ".join(f"{k} {v}" for k, v in (notes.get("versions") or {}).items()), ""]
    for entry in notes.get("agreement", []):
        lines.append(f"- agreement, {entry['network']} {entry['dtype']} batch {entry['batch']}: "
                     f"logits {entry['logits']:.1e}, loss {entry['loss']:.1e}, gradients "
                     f"{entry['gradients']:.1e} ({entry['worst_gradient']}) relative")
    if notes.get("agreement"):
        lines.append("")
    rows = {}
    for r in data.get("results", []):
        name, kind = r["name"].split(" ", 1)
        p = r["params"]
        key = (r["device"], p["network"], kind, p["batch"])
        rows.setdefault(key, {})[name] = r
    modes = [m for m in ("torch_fp32", "torch_default", "torch_bf16")
             if any(m in v for v in rows.values())]
    header = ["device", "network", "pass", "batch", "convnet img/s"]
    for mode in modes:
        header += [f"PyTorch {mode[6:]} img/s", f"ratio vs {mode[6:]}"]
    if any("peak_bytes" in r["params"] for v in rows.values() for r in v.values()):
        header += ["convnet peak MiB"] + [f"{mode[6:]} peak MiB" for mode in modes]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (device, network, kind, batch), entry in rows.items():
        ours = entry.get("convnet")
        cells = [device, network, kind, str(batch), _ips(ours)]
        for mode in modes:
            theirs = entry.get(mode)
            ratio = (f"{theirs['median_s'] / ours['median_s']:.2f}x"
                     if ours and theirs else "-")
            cells += [_ips(theirs), ratio]
        if "convnet peak MiB" in header:
            cells += [_mib(entry.get(name)) for name in ["convnet", *modes]]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Ratio: convnet's images/s over PyTorch's (> 1: convnet is faster); medians "
                  "of alternating repeats in one run."]
    return "\n".join(lines) + "\n"


def _ips(result) -> str:
    return "-" if not result else f"{result['params']['batch'] / result['median_s']:.1f}"


def _mib(result) -> str:
    peak = result and result["params"].get("peak_bytes")
    return f"{peak / 2**20:.0f}" if peak else "-"


def bar_chart(data: dict, path: Path) -> Path | None:
    """images/s of each case, convnet beside PyTorch, as a PNG (None without matplotlib)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    cases, series = [], {}
    for r in data.get("results", []):
        name, kind = r["name"].split(" ", 1)
        p = r["params"]
        case = f"{r['device']} {p['network']}\n{kind} b{p['batch']}"
        if case not in cases:
            cases.append(case)
        series.setdefault(name, {})[case] = p["batch"] / r["median_s"]
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(cases)), 4))
    width = 0.8 / max(len(series), 1)
    for i, (name, values) in enumerate(series.items()):
        xs = [j + i * width for j in range(len(cases))]
        ax.bar(xs, [values.get(c, 0) for c in cases], width, label=name)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(cases))], cases, fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("images/s")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- main

def _import_torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    harness.add_common_args(parser)
    parser.add_argument("--networks", nargs="+", choices=sorted(NETWORKS), default=None,
                        help="networks to time (default: small and alexnet on the host, "
                             "alexnet on a GPU, small on emu)")
    parser.add_argument("--no-agreement", action="store_true", help="skip the agreement check")
    parser.add_argument("--render", metavar="JSON", default=None,
                        help="print the Markdown table of a saved report and stop")
    args = parser.parse_args(argv)
    if args.render:
        print(render_markdown(harness.read_json(args.render)), end="")
        return 0

    import convnet
    report = harness.Report("alexnet", args=vars(args))
    torch = _import_torch()
    versions = {"convnet": convnet.__version__, "numpy": np.__version__}
    if torch is None:
        report.notes["torch"] = ("not installed (pip install -e '.[bench]'): convnet timed "
                                 "alone, no agreement check")
    else:
        versions["torch"] = torch.__version__
        torch.manual_seed(SEED)
    report.notes["versions"] = versions
    failed = False
    if torch is not None and not args.no_agreement:
        checks = []
        for dtype in (np.float64, np.float32):
            entry = agreement(torch, "small", dtype, batch=2 if args.quick else 4)
            checks.append(entry)
            print(f"agreement {entry['dtype']}: logits {entry['logits']:.2e}, loss "
                  f"{entry['loss']:.2e}, gradients {entry['gradients']:.2e} "
                  f"({entry['worst_gradient']})", flush=True)
        report.notes["agreement"] = checks
        worst = max(checks[0]["logits"], checks[0]["loss"], checks[0]["gradients"])
        if worst > FLOAT64_AGREEMENT:
            report.notes["WRONG agreement"] = (f"float64 differs by {worst:.2e} relative, "
                                               f"more than {FLOAT64_AGREEMENT:.0e}")
    for device in harness.open_devices(args.devices, report):
        for network in networks_for(device, args.networks):
            reps = repetitions(device, args.quick, args)
            for kind, batch in cases_for(device, network, args.quick):
                try:
                    results = bench_device(report, torch, device, network, kind, batch, reps)
                except Exception as exc:  # report and go on
                    failed = True
                    report.notes[f"error {device.name} {network} {kind} {batch}"] = \
                        f"{type(exc).__name__}: {exc}"
                    print(f"error on {device.name} ({network} {kind} batch {batch}): "
                          f"{type(exc).__name__}: {exc}", file=sys.stderr)
                    continue
                line = ", ".join(f"{name} {r.params['images_per_s']:.1f} img/s"
                                 for name, r in results.items())
                print(f"{device.name} {network} {kind} batch {batch}: {line}", flush=True)
    path = None if args.no_json else report.write(args.out)
    code = harness.finish(report, argparse.Namespace(no_json=True), failed)  # prints the table
    if path is not None:
        data = harness.read_json(path)
        markdown = render_markdown(data)
        path.with_suffix(".md").write_text(markdown)
        chart = bar_chart(data, path.with_suffix(".png"))
        print(markdown)
        print(f"wrote {path}, {path.with_suffix('.md')}"
              + (f" and {chart}" if chart else " (no chart: matplotlib is not installed)"))
    return code


if __name__ == "__main__":
    sys.exit(main())
