"""Benchmark the elementwise kernels: ReLU forward/backward and dropout forward, in GB/s.

  python benchmarks/elementwise.py                      # every device here
  python benchmarks/elementwise.py --devices emu --numel 1048576
  python benchmarks/elementwise.py --quick --out /tmp/r

``cpu`` times the ops' NumPy references (the baseline of ``emu``); ``emu`` and
``cuda:N`` time the kernels' Launches (built once, outside the timing). On cuda the
baselines, measured in the same run, are PyTorch (``torch.relu``,
``threshold_backward``, ``torch.nn.functional.dropout``) when torch is importable,
and CuPy's own elementwise ``maximum``/``where`` always. Bytes are the minimum
traffic: ReLU forward reads x and writes y (8 B/element), backward reads y and dy
and writes dx (12 B), dropout reads x and writes y (8 B; its mask is computed, not
stored). Ratios are recorded, never asserted.

Fusions (emu, cuda): ``linear_relu_dropout`` — the fc epilogue with dropout inside
(``bias_relu_dropout_forward``, 8 B/element: y read and written) against the two
launches it replaces (``bias_act_forward<true>`` then ``dropout_apply``, 16 B/element),
on a (numel / 4096, 4096) output; ``sgd_multi`` — ``sgd_momentum_multi`` over the 16
parameter tensors of AlexNet's shapes scaled to ``numel`` elements in all (20 B/element)
against one ``sgd_momentum`` launch each. ``convnet perf --kernel bias_relu_dropout`` /
``--kernel sgd`` gives the model's figures for the real step.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from benchmarks import harness  # noqa: E402

DEFAULT_NUMEL = (1 << 20, 1 << 24)
QUICK_NUMEL = (1 << 16, 1 << 20)
DROPOUT_P = 0.5
SEED = 1234


def _import_torch():
    try:
        import torch
    except Exception:
        return None
    return torch if torch.cuda.is_available() else None


# Each case as an op and kernel of the performance model (convnet.perf.layers.OP_SYNTAX).
CALIBRATION = {"relu_forward": ("relu", "relu_forward"), "relu_backward": ("relu", "relu_backward"),
               "dropout_forward": ("dropout", "dropout_apply")}


def _ours(device, numel, x_host, dy_host, reps, report, baselines):
    """Time the three kernels (emu, cuda) or the three references (cpu) on ``device``."""
    from convnet.ops import dropout, relu

    plan = dropout.plan(DROPOUT_P, training=True, seed=SEED)
    x = device.asarray(x_host)
    dy = device.asarray(dy_host)
    results = {}
    if device.runs_kernels:
        xp = device.xp
        y, dx, yd = xp.empty_like(x), xp.empty_like(x), xp.empty_like(x)
        fwd = relu.forward_launch(device, x, y)
        device.launch(fwd)
        bwd = relu.backward_launch(device, y, dy, dx)
        drop = dropout.apply_launch(device, x, yd, plan)
        cases = {"relu_forward": lambda: device.launch(fwd),
                 "relu_backward": lambda: device.launch(bwd),
                 "dropout_forward": lambda: device.launch(drop)}
        # Correctness before timing: the kernels against the NumPy references.
        for launch in (bwd, drop):
            device.launch(launch)
        device.synchronize()
        y_ref = relu.forward_reference(x_host)
        checks = {
            "relu_forward": np.array_equal(device.to_numpy(y), y_ref),
            "relu_backward": np.array_equal(device.to_numpy(dx),
                                            relu.backward_reference(y_ref, dy_host)),
            "dropout_forward": np.array_equal(
                device.to_numpy(yd), dropout.apply_reference(x_host, plan)),
        }
        for name, ok in checks.items():
            if not ok:
                report.notes[f"WRONG {name} on {device.name} numel={numel}"] = True
    else:
        y_ref = relu.forward_reference(x)
        cases = {"relu_forward": lambda: relu.forward_reference(x),
                 "relu_backward": lambda: relu.backward_reference(y_ref, dy),
                 "dropout_forward": lambda: dropout.apply_reference(x, plan)}
    traffic = {"relu_forward": 8, "relu_backward": 12, "dropout_forward": 8}
    for name, fn in cases.items():
        results[name] = report.add(harness.measure(
            fn, device=device, name=name, bytes=traffic[name] * numel,
            params={"numel": numel, **({"p": DROPOUT_P} if "dropout" in name else {})}, **reps))
        if device.kind == "cuda":   # the model's prediction beside it (calibration)
            op, kernel = CALIBRATION[name]
            report.predict(results[name], f"{op}:{numel}", 1, (kernel,), passes=("forward",)
                           if name == "dropout_forward" else None, label=f"{name} numel={numel}")
        base = baselines.get(name)
        if base is not None:
            report.add_ratio(results[name], base,
                             label=f"{name} on {device.name} vs {base.name} on {base.device}, "
                                   f"numel={numel}")
    return results


def _cuda_baselines(device, numel, x_host, dy_host, reps, report):
    """CuPy (always) and PyTorch (when importable) versions of the three ops on the GPU."""
    cp = device.xp
    found = {}
    traffic = {"relu_forward": 8, "relu_backward": 12, "dropout_forward": 8}
    with cp.cuda.Device(device.index):
        x, dy = cp.asarray(x_host), cp.asarray(dy_host)
        y = cp.empty_like(x)
        cp.maximum(x, 0, out=y)
        cupy_cases = {"relu_forward": ("cupy.maximum", lambda: cp.maximum(x, 0, out=y)),
                      "relu_backward": ("cupy.where", lambda: cp.where(y > 0, dy, 0))}
        for op, (label, fn) in cupy_cases.items():
            found[op] = report.add(harness.measure(fn, device=device, name=label,
                                                   bytes=traffic[op] * numel,
                                                   params={"numel": numel}, **reps))
        torch = _import_torch()
        if torch is None:
            report.notes["torch"] = "not importable (or no CUDA in torch): CuPy baselines only"
            return found
        report.notes["torch"] = torch.__version__
        tdev = torch.device("cuda", device.index)
        tx = torch.as_tensor(x_host, device=tdev)
        tdy = torch.as_tensor(dy_host, device=tdev)
        ty = torch.relu(tx)
        torch_cases = {
            "relu_forward": ("torch.relu", lambda: torch.relu(tx)),
            "relu_backward": ("torch.threshold_backward",
                              lambda: torch.ops.aten.threshold_backward(tdy, ty, 0)),
            "dropout_forward": ("torch.dropout",
                                lambda: torch.nn.functional.dropout(tx, DROPOUT_P, True)),
        }
        for op, (label, fn) in torch_cases.items():
            p = {"p": DROPOUT_P} if "dropout" in op else {}
            found[op] = report.add(harness.measure(fn, device=device, name=label,
                                                   bytes=traffic[op] * numel,
                                                   params={"numel": numel, **p}, **reps))
    return found


# AlexNet's parameter sizes (one column), scaled down in ``_fusions`` to ``numel`` in all.
ALEXNET_SIZES = (34848, 96, 307200, 256, 884736, 384, 663552, 384, 442368, 256,
                 37748736, 4096, 16777216, 4096, 4096000, 1000)


def _fusions(device, numel, reps, report):
    """The fused epilogue and the multi-tensor update against the launches they replace."""
    from convnet.ops import dropout, linear, sgd
    rng = np.random.default_rng(7)
    cols = 4096
    rows = max(1, numel // cols)
    plan = dropout.plan(DROPOUT_P, training=True, seed=SEED)
    y = device.asarray(rng.standard_normal((rows, cols), dtype=np.float32))
    b = device.asarray(rng.standard_normal(cols, dtype=np.float32))
    fused = linear.forward_dropout_launch(device, y, b, plan)
    parts = (linear.forward_launch(device, y, b, True), dropout.apply_launch(device, y, y, plan))
    scale = numel / sum(ALEXNET_SIZES)
    sizes = [max(1, int(k * scale)) for k in ALEXNET_SIZES]
    ws, vs, gs = ([device.asarray(rng.standard_normal(k, dtype=np.float32)) for k in sizes]
                  for _ in range(3))
    total = sum(sizes)
    host, groups = sgd.multi_table(ws, vs, gs, [0.01] * len(sizes), [5e-6] * len(sizes))
    table = device.asarray(host)
    multi = sgd.multi_update_launch(device, table, len(sizes), groups, 0.9, total)
    each = [sgd.update_launch(device, w, v, g, 0.01, 0.9, 5e-6) for w, v, g in zip(ws, vs, gs)]
    cases = {
        "linear_relu_dropout_fused": (lambda: device.launch(fused), 8 * y.size),
        "linear_relu_dropout_separate": (lambda: [device.launch(a) for a in parts], 8 * y.size),
        "sgd_multi": (lambda: device.launch(multi), 20 * total),
        "sgd_per_parameter": (lambda: [device.launch(a) for a in each], 20 * total),
    }
    results = {name: report.add(harness.measure(fn, device=device, name=name, bytes=nbytes,
                                                params={"numel": int(nbytes // 4)}, **reps))
               for name, (fn, nbytes) in cases.items()}
    for a, b_ in (("linear_relu_dropout_fused", "linear_relu_dropout_separate"),
                  ("sgd_multi", "sgd_per_parameter")):
        report.add_ratio(results[a], results[b_], label=f"{a} vs {b_} on {device.name}, "
                                                        f"numel={numel}")
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    harness.add_common_args(parser)
    parser.add_argument("--numel", type=int, nargs="+", default=None,
                        help=f"elements per tensor (default {DEFAULT_NUMEL})")
    args = parser.parse_args(argv)
    sizes = args.numel or (QUICK_NUMEL if args.quick else DEFAULT_NUMEL)
    names = args.devices
    report = harness.Report("elementwise", args=vars(args))

    import convnet
    devices = harness.open_devices(names, report)
    reps = harness.repetitions(args)
    host_reps, emu_reps, cuda_reps = reps["cpu"], reps["emu"], reps["cuda"]

    failed = False
    for numel in sizes:
        rng = np.random.default_rng(numel)
        x = rng.standard_normal(numel, dtype=np.float32)
        dy = rng.standard_normal(numel, dtype=np.float32)
        host = {}
        if any(d.kind in ("cpu", "emu") for d in devices):
            host = _ours(convnet.get_device("cpu"), numel, x, dy, host_reps, report, {})
        for device in devices:
            if device.kind == "cpu":
                continue
            try:
                if device.kind == "emu":
                    _ours(device, numel, x, dy, emu_reps, report, host)
                    _fusions(device, numel, emu_reps, report)
                else:
                    # the ratio is against torch where torch runs, else against CuPy
                    base = _cuda_baselines(device, numel, x, dy, cuda_reps, report)
                    _ours(device, numel, x, dy, cuda_reps, report, base)
                    _fusions(device, numel, cuda_reps, report)
            except Exception as exc:
                failed = True
                report.notes[f"error {device.name} numel={numel}"] = f"{type(exc).__name__}: {exc}"
                print(f"error on {device.name} numel={numel}: {type(exc).__name__}: {exc}",
                      file=sys.stderr)
    return harness.finish(report, args, failed)


if __name__ == "__main__":
    sys.exit(main())
