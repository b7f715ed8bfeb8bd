"""Benchmark the convolution kernels on AlexNet's five layers: forward (bias + ReLU fused),
backward data and backward filter.

  python benchmarks/conv.py                        # every device here
  python benchmarks/conv.py --devices emu cpu --batch 8 --passes forward
  python benchmarks/conv.py --quick --out /tmp/r   # the gpu_check CPU-only form

Layers (Krizhevsky et al. 2012, 227x227 input): conv1 3->96 11x11/4, conv2 96->256 5x5
pad 2 in two groups, conv3 256->384 3x3 pad 1, conv4 384->384 3x3 pad 1 in two groups,
conv5 384->256 3x3 pad 1 in two groups. Batch 128 on a GPU, 8 on the host
(``--batch``). Work per pass: 2 * N*K*P*Q * C/groups*R*S floating-point operations.

* ``cuda:N``: our kernels (launches built once, timed with CUDA events and an L2 flush
  between repeats), milliseconds, TFLOP/s and percent of the GPU's FP32 peak (a table
  of known GPUs, else SMs x FP32 lanes x 2 x clock). When PyTorch with CUDA is
  importable, cuDNN is measured in the same run, twice: with
  ``torch.backends.cudnn.allow_tf32 = False`` (FP32, the comparison the issue sets)
  and ``True`` (TF32 tensor cores); ``cudnn.benchmark`` is on, so cuDNN picks its
  fastest algorithm. Forward: ``torch.nn.functional.conv2d`` with the bias (our time
  includes the ReLU, cuDNN's does not); backward: ``torch.nn.grad.conv2d_input`` and
  ``conv2d_weight``. Our outputs are compared with cuDNN's FP32 ones first. The notes
  record the issue's targets: forward of conv2-conv5 at >= 50% of FP32 peak, every
  pass within 1.5x of cuDNN FP32 (ratio >= 0.667); recorded, never asserted.
* ``emu``: the same launches on the emulator; ``cpu``: the NumPy references (im2col +
  matmul), the baseline of ``emu``. Each emulated result is checked against NumPy.

``--quick`` times the forward pass only (batch 8 on the host, 32 on a GPU) with few
repeats.

``--algorithms direct winograd`` (default both): Winograd F(2x2, 3x3)
(``ops.conv_winograd``, its four launches per pass timed together) on the layers it
takes (conv3-conv5), checked and timed like the direct kernels; on a GPU it is set
against cuDNN with TF32 off (the issue's target: >= 1.2x cuDNN FP32 on conv3-5) and
recorded beside the model's prediction (its TFLOP/s and % peak count the direct
convolution's FLOPs: effective rates). ``--predict GPU`` (no GPU needed) prints the
performance model's predicted microseconds per pass of each algorithm at the batch
(default 128) for that GPU (h100, ...), and records them; nothing is run or timed then.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from benchmarks import harness  # noqa: E402

# name: (C, H=W, K, R=S, stride, padding, groups)
LAYERS = {
    "conv1": (3, 227, 96, 11, 4, 0, 1),
    "conv2": (96, 27, 256, 5, 1, 2, 2),
    "conv3": (256, 13, 384, 3, 1, 1, 1),
    "conv4": (384, 13, 384, 3, 1, 1, 2),
    "conv5": (384, 13, 256, 3, 1, 1, 2),
}
PASSES = ("forward", "backward_data", "backward_filter")
ALGORITHMS = ("direct", "winograd")
# The performance model's part (perf.layers.Planned.part) of each pass.
MODEL_PARTS = {"forward": "forward", "backward_data": "data", "backward_filter": "filter"}
# The launches of each pass, by kernel name, in the performance model's table of the
# same convolution (convnet perf --op conv:...), for the calibration record.
CALIBRATION_KERNELS = {"forward": ("conv_forward",), "backward_data": ("conv_backward_data",),
                       "backward_filter": ("conv_backward_filter", "conv_split_sum")}
CUDA_BATCH = 128
HOST_BATCH = 8
QUICK_CUDA_BATCH = 32
TARGET_PCT_PEAK = 50.0      # forward of conv2..conv5, percent of FP32 peak
TARGET_CUDNN_RATIO = 1 / 1.5  # every pass within 1.5x of cuDNN FP32
TARGET_WINOGRAD_RATIO = 1.2   # Winograd on conv3-5 at least 1.2x cuDNN FP32

# FP32 peak (dense, boost clock) in TFLOP/s by device name; first match wins.
KNOWN_FP32_TFLOPS = (("H200", 66.9), ("H100 PCIe", 51.2), ("H100 NVL", 60.0), ("H100", 66.9),
                     ("GH200", 66.9), ("A100", 19.5), ("L40S", 91.6), ("L4", 30.3),
                     ("A10", 31.2), ("V100", 15.7))
# FP32 lanes per SM by compute capability (major, minor), for GPUs not in the table.
FP32_LANES = {(7, 0): 64, (7, 5): 64, (8, 0): 64, (8, 6): 128, (8, 7): 128, (8, 9): 128,
              (9, 0): 128}


def layer_args(name: str):
    c, h, k, r, stride, padding, groups = LAYERS[name]
    return (c, h, h), (k, c // groups, r, r), stride, padding, groups


def operands(name: str, n: int, seed: int = 0):
    """x, w, b, dy (float32, host) of one layer at batch n, and its Geometry."""
    from convnet.ops import conv
    x_chw, w_shape, stride, padding, groups = layer_args(name)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, *x_chw), dtype=np.float32)
    w = (rng.standard_normal(w_shape, dtype=np.float32) * 0.05).astype(np.float32)
    b = rng.standard_normal(w_shape[0], dtype=np.float32)
    g = conv.geometry(x.shape, w.shape, stride, padding, groups)
    dy = rng.standard_normal(g.y_shape, dtype=np.float32)
    return x, w, b, dy, g


def fp32_peak_tflops(index: int = 0) -> tuple[float | None, str]:
    """(FP32 peak in TFLOP/s, how it was found) of CUDA device ``index``."""
    import cupy as cp
    try:
        props = cp.cuda.runtime.getDeviceProperties(index)
        name = props["name"]
        name = name.decode() if isinstance(name, bytes) else str(name)
    except Exception as exc:
        return None, f"device properties unavailable ({exc})"
    for key, tflops in KNOWN_FP32_TFLOPS:
        if key in name:
            return tflops, f"{name}: table value"
    try:
        attrs = cp.cuda.Device(index).attributes
        sms = int(attrs["MultiProcessorCount"])
        clock_khz = int(attrs["ClockRate"])
        lanes = FP32_LANES.get((int(props["major"]), int(props["minor"])), 128)
    except Exception as exc:
        return None, f"{name}: not in the table and no clock ({exc})"
    return sms * lanes * 2 * clock_khz * 1e3 / 1e12, \
        f"{name}: {sms} SMs x {lanes} lanes x 2 x {clock_khz / 1e6:.2f} GHz"


def _import_torch():
    try:
        import torch
    except Exception:
        return None
    return torch if torch.cuda.is_available() else None


# --------------------------------------------------------------------------- ours

def runs_algorithm(name: str, algorithm: str) -> bool:
    """Whether ``algorithm`` takes layer ``name`` (Winograd: 3x3 at stride 1)."""
    if algorithm == "direct":
        return True
    from convnet.ops import conv, conv_winograd
    x_chw, w_shape, stride, padding, groups = layer_args(name)
    return conv_winograd.supports(conv.geometry((1, *x_chw), w_shape, stride, padding, groups))


def kernel_calls(device, x, w, b, dy, g, algorithm="direct"):
    """{pass: (callable, output array)} with every launch built once."""
    from convnet.ops import conv
    xp = device.xp
    xd, wd, bd, dyd = (device.asarray(a) for a in (x, w, b, dy))
    y = xp.empty(g.y_shape, dtype=np.float32)
    dx = xp.empty(g.x_shape, dtype=np.float32)
    dw = xp.empty(g.w_shape, dtype=np.float32)
    conv.check_kernel_sizes(g)
    if algorithm == "winograd":
        return winograd_calls(device, g, xd, wd, bd, dyd, y, dx, dw)
    fwd = conv.forward_launch(device, g, xd, wd, bd, y, relu=True)
    data = conv.backward_data_launch(device, g, dyd, wd, dx)
    plan = conv.plan_filter(device, g)
    size = plan.workspace_size(g)
    workspace = xp.empty(size, dtype=np.float32) if size else None
    filt = conv.backward_filter_launches(device, g, xd, dyd, dw, plan, workspace)

    def run_filter():
        for launch in filt:
            device.launch(launch)

    tiles = {"forward": fwd.template_args, "backward_data": data.template_args,
             "backward_filter": plan.tile}
    calls = {"forward": (lambda: device.launch(fwd), y),
             "backward_data": (lambda: device.launch(data), dx),
             "backward_filter": (run_filter, dw)}
    extra = {"backward_filter": {"splits": plan.splits}}
    return calls, tiles, extra


def winograd_calls(device, g, x, w, b, dy, y, dx, dw):
    """``kernel_calls`` for Winograd: each pass's four launches (workspaces made once)."""
    from convnet.ops import conv_winograd as cw

    def spaces(part, splits=1):
        return {k: device.xp.empty(v, dtype=np.float32)
                for k, v in cw.workspace_shapes(g, part, splits).items()}

    f, d, plan = spaces("forward"), spaces("data"), cw.plan_filter(device, g)
    s = spaces("filter", plan.splits)
    launches = {
        "forward": cw.forward_launches(device, g, x, w, b, y, f["u"], f["v"], f["m"], True),
        "backward_data": cw.backward_data_launches(device, g, dy, w, dx, d["u"], d["v"],
                                                   d["m"]),
        "backward_filter": cw.backward_filter_launches(device, g, x, dy, dw, s["v"], s["d"],
                                                       s["s"], plan)}

    def runner(batch):
        def run():
            for launch in batch:
                device.launch(launch)
        return run

    calls = {p: (runner(ls), out) for (p, ls), out in zip(launches.items(), (y, dx, dw))}
    tiles = {p: ls[2].template_args[:5] for p, ls in launches.items()}
    return calls, tiles, {"backward_filter": {"splits": plan.splits}}


def predicted_passes(name: str, algorithm: str, gpu: str, batch: int) -> dict:
    """{pass: predicted seconds} of layer ``name``'s launches by ``algorithm`` on the
    named GPU (convnet perf's model; no GPU needed), summed per pass."""
    from convnet.perf import gpus
    from convnet.perf.layers import conv_layer
    from convnet.perf.predict import predict_layers
    c, hw, k, rs, stride, pad, groups = LAYERS[name]
    layer = conv_layer(name, c, hw, k, rs, stride, pad, groups, algorithm=algorithm)
    table = predict_layers([layer], gpus.gpu(gpu), batch)
    return {p: sum(r.prediction.time_s for r in table.rows if r.planned.part == part)
            for p, part in MODEL_PARTS.items()}


def reference_calls(x, w, b, dy, g):
    from convnet.ops import conv
    return {"forward": lambda: conv.forward_reference(g, x, w, b, relu=True),
            "backward_data": lambda: conv.backward_data_reference(g, dy, w),
            "backward_filter": lambda: conv.backward_filter_reference(g, x, dy)}


def relative_error(got, want) -> float:
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    scale = float(np.max(np.abs(want))) or 1.0
    return float(np.max(np.abs(got - want))) / scale


# --------------------------------------------------------------------------- cuDNN

def cudnn_calls(torch, device_index, x, w, b, dy, g):
    """{pass: callable} through PyTorch (cuDNN), operands on the GPU."""
    import torch.nn.functional as tf
    dev = torch.device("cuda", device_index)
    tx, tw, tb, tdy = (torch.as_tensor(a, device=dev) for a in (x, w, b, dy))
    stride, padding = (g.stride_h, g.stride_w), (g.pad_h, g.pad_w)
    return {
        "forward": lambda: tf.conv2d(tx, tw, tb, stride, padding, 1, g.groups),
        "backward_data": lambda: torch.nn.grad.conv2d_input(
            tuple(x.shape), tw, tdy, stride, padding, 1, g.groups),
        "backward_filter": lambda: torch.nn.grad.conv2d_weight(
            tx, tuple(w.shape), tdy, stride, padding, 1, g.groups),
    }


# --------------------------------------------------------------------------- main

def bench_host(report, devices, layers, passes, batch, reps, failures,
               algorithms=("direct",)):
    """emu kernels and cpu NumPy references at ``batch``; emu checked against NumPy."""
    emu = next((d for d in devices if d.kind == "emu"), None)
    cpu = next((d for d in devices if d.kind == "cpu"), None)
    for name in layers:
        x, w, b, dy, g = operands(name, batch)
        refs = reference_calls(x, w, b, dy, g)
        base = {}
        for p in passes:
            if cpu is not None:
                params = {"shape": f"{name} {p} N={batch}", "layer": name, "pass": p,
                          "batch": batch}
                base[p] = report.add(harness.measure(refs[p], device=cpu,
                                                     name=f"numpy.{p}", flops=g.flops,
                                                     params=params, **reps["cpu"]))
        for algorithm in algorithms if emu is not None else ():
            if runs_algorithm(name, algorithm):
                _bench_emu(report, emu, name, algorithm, x, w, b, dy, g, refs, base, passes,
                           batch, reps, failures)


def _bench_emu(report, emu, name, algorithm, x, w, b, dy, g, refs, base, passes, batch, reps,
               failures):
    kernels = kernel_calls(emu, x, w, b, dy, g, algorithm)
    prefix = "conv" if algorithm == "direct" else algorithm
    for p in passes:
        params = {"shape": f"{name} {p} N={batch}", "layer": name, "pass": p,
                  "batch": batch, "algorithm": algorithm}
        try:
            calls, tiles, extra = kernels
            fn, out = calls[p]
            fn()
            err = relative_error(out, refs[p]())
            params.update(tile="x".join(map(str, tiles[p])), max_rel_err=float(f"{err:.2g}"),
                          **extra.get(p, {}))
            if err > 1e-4:
                report.notes[f"WRONG emu {prefix} {name} {p}"] = err
                failures.append(f"emu {prefix} {name} {p}")
            ours = report.add(harness.measure(fn, device=emu, name=f"{prefix}.{p}",
                                              flops=g.flops, params=params, **reps["emu"]))
            if p in base:
                report.add_ratio(ours, base[p], label=f"{name} {p}: emu {prefix} vs NumPy "
                                                      f"reference, N={batch}")
        except Exception as exc:  # report and go on
            failures.append(f"emu {prefix} {name} {p}")
            report.notes[f"error emu {prefix} {name} {p}"] = f"{type(exc).__name__}: {exc}"
            print(f"error on emu, {prefix} {name} {p}: {type(exc).__name__}: {exc}",
                  file=sys.stderr)


def bench_cuda(report, device, layers, passes, batch, reps, failures, summary,
               algorithms=("direct",)):
    cp = device.xp
    peak, how = fp32_peak_tflops(device.index)
    report.notes[f"{device.name} fp32_peak_tflops"] = peak
    report.notes[f"{device.name} fp32_peak_source"] = how
    torch = _import_torch()
    if torch is None:
        report.notes["torch"] = "not importable (or no CUDA in torch): no cuDNN baseline"
    else:
        report.notes["torch"] = f"{torch.__version__}, cuDNN {torch.backends.cudnn.version()}"
        torch.backends.cudnn.benchmark = True
    cudnn = {}  # (layer, pass, label) -> its Result, measured once for every algorithm
    for name, algorithm in ((n, a) for n in layers for a in algorithms):
        if not runs_algorithm(name, algorithm):
            continue
        prefix = "conv" if algorithm == "direct" else algorithm
        x, w, b, dy, g = operands(name, batch)
        with cp.cuda.Device(device.index):
            calls, tiles, extra = kernel_calls(device, x, w, b, dy, g, algorithm)
            theirs = cudnn_calls(torch, device.index, x, w, b, dy, g) if torch else {}
            for p in passes:
                params = {"shape": f"{name} {p} N={batch}", "layer": name, "pass": p,
                          "batch": batch, "tile": "x".join(map(str, tiles[p])),
                          "algorithm": algorithm, **extra.get(p, {})}
                row = {"layer": name, "pass": p, "batch": batch, "tile": params["tile"],
                       "algorithm": algorithm}
                try:
                    fn, out = calls[p]
                    fn()
                    device.synchronize()
                    ref = None
                    if theirs:
                        torch.backends.cudnn.allow_tf32 = False
                        want = theirs[p]()
                        if p == "forward":
                            want = torch.relu(want)
                        ref = want.cpu().numpy()
                        err = relative_error(cp.asnumpy(out), ref)
                        params["max_rel_err_vs_cudnn"] = float(f"{err:.2g}")
                        if err > 1e-3:
                            report.notes[f"WRONG {device.name} {prefix} {name} {p}"] = err
                            failures.append(f"{device.name} {prefix} {name} {p}")
                    ours = report.add(harness.measure(fn, device=device, name=f"{prefix}.{p}",
                                                      flops=g.flops, params=params,
                                                      **reps["cuda"]))
                    row.update(ms=ours.median * 1e3, tflops=ours.gflops / 1e3)
                    if algorithm == "direct":
                        predicted = report.predict(
                            ours, "conv:" + ",".join(map(str, LAYERS[name])), batch,
                            CALIBRATION_KERNELS[p], label=f"{name} {p} N={batch}")
                    else:
                        predicted = _predict_winograd(report, ours, name, p, batch)
                    if predicted:
                        row["predicted_ms"] = predicted["predicted_s"] * 1e3
                        row["measured_over_predicted"] = predicted["ratio"]
                    if peak:
                        pct = 100.0 * ours.gflops / 1e3 / peak
                        ours.params["pct_peak"] = round(pct, 1)
                        row["pct_peak"] = pct
                    for tf32 in (False, True) if theirs else ():
                        torch.backends.cudnn.allow_tf32 = tf32
                        label = "cudnn_tf32" if tf32 else "cudnn_fp32"
                        if (name, p, label) not in cudnn:
                            cudnn[name, p, label] = report.add(harness.measure(
                                theirs[p], device=device, name=f"{label}.{p}", flops=g.flops,
                                params={"shape": params["shape"], "layer": name, "pass": p,
                                        "batch": batch}, **reps["cuda"]))
                        base = cudnn[name, p, label]
                        ratio = report.add_ratio(ours, base, label=f"{name} {p}: {prefix} vs "
                                                 f"{label} on {device.name}, N={batch}")
                        row[f"vs_{label}"] = ratio["speed_ratio"]
                        row[f"{label}_ms"] = base.median * 1e3
                    if theirs:
                        torch.backends.cudnn.allow_tf32 = False
                except Exception as exc:
                    failures.append(f"{device.name} {prefix} {name} {p}")
                    report.notes[f"error {device.name} {prefix} {name} {p}"] = \
                        f"{type(exc).__name__}: {exc}"
                    print(f"error on {device.name}, {prefix} {name} {p}: "
                          f"{type(exc).__name__}: {exc}", file=sys.stderr)
                summary.append(row)


def _predict_winograd(report, ours, name, p, batch):
    """``report.predict`` for a Winograd pass (the model's rows of that part)."""
    try:
        from convnet.perf import calibration
        info = harness.gpu_info()
        gpu = calibration.gpu_for_device(info[0]["name"] if info else "")
        if gpu is None:
            return None
        seconds = predicted_passes(name, "winograd", gpu, batch)[p]
        return report.add_prediction(ours, seconds, f"winograd {name} {p} N={batch}")
    except Exception as exc:  # the model must never stop a benchmark
        report.notes[f"calibration error winograd {name} {p}"] = f"{type(exc).__name__}: {exc}"
        return None


def print_predictions(report, layers, gpu: str, batch: int, algorithms) -> None:
    """The model's predicted microseconds per pass and algorithm (no GPU needed)."""
    print(f"PREDICTED by convnet perf's model for {gpu}, batch {batch} (not measured):")
    print(f"{'layer':6s} {'algorithm':9s} " + " ".join(f"{p:>16s}" for p in PASSES)
          + f" {'total':>9s}")
    for name in layers:
        for algorithm in algorithms:
            if not runs_algorithm(name, algorithm):
                continue
            us = {p: s * 1e6 for p, s in predicted_passes(name, algorithm, gpu, batch).items()}
            report.notes[f"predicted_us {gpu} {name} {algorithm} N={batch}"] = {
                p: round(v, 1) for p, v in us.items()}
            print(f"{name:6s} {algorithm:9s} " + " ".join(f"{us[p]:16.1f}" for p in PASSES)
                  + f" {sum(us.values()):9.1f}", flush=True)


def targets(summary) -> dict:
    """The issue's GPU targets, from the summary rows (recorded, never asserted)."""
    notes = {}
    fwd = [r for r in summary if r["pass"] == "forward" and r["layer"] != "conv1"
           and "pct_peak" in r and r.get("algorithm", "direct") == "direct"]
    if fwd:
        notes["target forward conv2-5 >= 50% of FP32 peak"] = all(
            r["pct_peak"] >= TARGET_PCT_PEAK for r in fwd)
    rated = [r for r in summary if "vs_cudnn_fp32" in r]
    wino = [r for r in summary if r.get("algorithm") == "winograd" and "vs_cudnn_fp32" in r]
    if wino:
        notes["target winograd conv3-5 >= 1.2x cuDNN FP32"] = all(
            r["vs_cudnn_fp32"] >= TARGET_WINOGRAD_RATIO for r in wino)
    rated = [r for r in rated if r.get("algorithm", "direct") == "direct"]
    if rated:
        slow = [f"{r['layer']} {r['pass']} ({r['vs_cudnn_fp32']:.2f})" for r in rated
                if r["vs_cudnn_fp32"] < TARGET_CUDNN_RATIO]
        notes["target every pass within 1.5x of cuDNN FP32"] = not slow
        if slow:
            notes["slower than 1.5x cuDNN FP32"] = ", ".join(slow)
    return notes


def format_summary(summary) -> str:
    head = ("layer", "algorithm", "pass", "N", "tile", "ms", "TFLOP/s", "% peak", "cuDNN fp32 ms",
            "vs fp32", "cuDNN tf32 ms", "vs tf32")
    rows = [head]

    def f(v, spec):
        return "-" if v is None else format(v, spec)

    for r in summary:
        rows.append((r["layer"], r.get("algorithm", "direct"), r["pass"], str(r["batch"]),
                     r["tile"], f(r.get("ms"), ".3f"),
                     f(r.get("tflops"), ".2f"), f(r.get("pct_peak"), ".1f"),
                     f(r.get("cudnn_fp32_ms"), ".3f"), f(r.get("vs_cudnn_fp32"), ".2f"),
                     f(r.get("cudnn_tf32_ms"), ".3f"), f(r.get("vs_cudnn_tf32"), ".2f")))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.rjust(wd) if i > 4 else c.ljust(wd)
                               for i, (c, wd) in enumerate(zip(row, widths)))
                     for row in rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    harness.add_common_args(parser)
    parser.add_argument("--batch", type=int, default=None,
                        help=f"batch size (default {CUDA_BATCH} on a GPU, {HOST_BATCH} on the "
                             f"host; --quick: {QUICK_CUDA_BATCH} on a GPU)")
    parser.add_argument("--layers", nargs="+", choices=list(LAYERS), default=list(LAYERS))
    parser.add_argument("--passes", nargs="+", choices=PASSES, default=None,
                        help="default: all three (--quick: forward)")
    parser.add_argument("--algorithms", nargs="+", choices=ALGORITHMS, default=list(ALGORITHMS),
                        help="winograd runs on the 3x3 stride-1 layers (conv3-conv5) only")
    parser.add_argument("--predict", metavar="GPU", default=None,
                        help="print the model's predicted us per pass for GPU (e.g. h100) "
                             "instead of running anything")
    args = parser.parse_args(argv)
    if args.batch is not None and args.batch < 1:
        parser.error("--batch must be at least 1")
    passes = args.passes or (["forward"] if args.quick else list(PASSES))
    report = harness.Report("conv", args=vars(args))
    if args.predict:
        print_predictions(report, args.layers, args.predict, args.batch or CUDA_BATCH,
                          args.algorithms)
        return harness.finish(report, args, False)
    devices = harness.open_devices(args.devices, report)
    reps = harness.repetitions(args, emu_repeats=3, emu_max_time_s=10.0)
    failures: list[str] = []

    host = [d for d in devices if d.kind in ("cpu", "emu")]
    if host:
        if any(d.kind == "emu" for d in host):
            from convnet.backend import emu
            report.notes["emu_workers"] = emu.worker_threads()
        bench_host(report, host, args.layers, passes, args.batch or HOST_BATCH, reps, failures,
                   args.algorithms)
    summary: list[dict] = []
    for device in (d for d in devices if d.kind == "cuda"):
        batch = args.batch or (QUICK_CUDA_BATCH if args.quick else CUDA_BATCH)
        bench_cuda(report, device, args.layers, passes, batch, reps, failures, summary,
                   args.algorithms)
    if summary:
        report.notes.update(targets(summary))
    code = harness.finish(report, args, bool(failures))
    if summary:
        print("\n" + format_summary(summary), flush=True)
    if failures:
        print(f"failed: {', '.join(failures)}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
