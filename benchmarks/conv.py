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

``--precisions fp32 tf32 bf16`` (default all three; issue 12): the convolution's
arithmetic. fp32 runs the algorithms above; tf32 and bf16 run the tensor-core kernels
(``ops.conv_tc``: operands rounded to TF32 / BF16, FP32 sums; ``F.conv2d(precision=)``
dispatches there). Each precision is set against cuDNN in the same arithmetic: fp32
against cuDNN with TF32 off (and on, as today), tf32 against cuDNN with
``allow_tf32 = True``, bf16 against cuDNN on BF16 tensors (what ``torch.autocast``
with bfloat16 runs). Their outputs are checked against cuDNN FP32 on the operands
rounded the same way; % of peak is of the precision's dense peak (tensor-core TF32 or
BF16 from ``convnet.perf.gpus`` for a known GPU).
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
PRECISIONS = ("fp32", "tf32", "bf16")
# cuDNN in the same arithmetic as each precision (and, for fp32, TF32 as well)
CUDNN_LABELS = {"fp32": ("cudnn_fp32", "cudnn_tf32"), "tf32": ("cudnn_tf32",),
                "bf16": ("cudnn_bf16",)}
# The performance model's part (perf.layers.Planned.part) of each pass.
MODEL_PARTS = {"forward": "forward", "backward_data": "data", "backward_filter": "filter"}
# The launches of each pass, by kernel name, in the performance model's table of the
# same convolution (convnet perf --op conv:...), for the calibration record.
CALIBRATION_KERNELS = {"forward": ("conv_forward",), "backward_data": ("conv_backward_data",),
                       "backward_filter": ("conv_backward_filter", "conv_split_sum")}
CUDA_BATCH = 128
HOST_BATCH = 8
QUICK_CUDA_BATCH = 32
# issue 12's targets (recorded in the notes, never asserted)
TARGET_FP32_PCT_PEAK = 70.0   # every FP32 direct pass, percent of FP32 peak
TARGET_TC_PCT_PEAK = 50.0     # every TF32 / BF16 pass, percent of that tensor-core peak
TARGET_TC_CONV_RATIO = 1.2    # the conv part in TF32 against cuDNN with TF32 (PyTorch's default)
TARGET_WINOGRAD_RATIO = 1.2   # Winograd on conv3-5 at least 1.2x cuDNN FP32
TARGET_CUDNN_RATIO = 1 / 1.5  # (issue 4) every FP32 direct pass within 1.5x of cuDNN FP32

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

def variant_prefix(algorithm: str, precision: str) -> str:
    """The name of an (algorithm, precision) pair's results: conv, winograd, conv_tc_tf32..."""
    if precision != "fp32":
        return f"conv_tc_{precision}"
    return "conv" if algorithm == "direct" else algorithm


def variants(algorithms, precisions):
    """The (algorithm, precision) pairs to run: every algorithm in fp32; the tensor-core
    kernels (algorithm "direct") in tf32 and bf16 (Winograd is FP32 only)."""
    return [(a, p) for p in precisions for a in algorithms if p == "fp32" or a == "direct"]


def runs_algorithm(name: str, algorithm: str) -> bool:
    """Whether ``algorithm`` takes layer ``name`` (Winograd: 3x3 at stride 1)."""
    if algorithm == "direct":
        return True
    from convnet.ops import conv, conv_winograd
    x_chw, w_shape, stride, padding, groups = layer_args(name)
    return conv_winograd.supports(conv.geometry((1, *x_chw), w_shape, stride, padding, groups))


def kernel_calls(device, x, w, b, dy, g, algorithm="direct", precision="fp32"):
    """{pass: (callable, output array)} with every launch built once."""
    from convnet.ops import conv
    xp = device.xp
    xd, wd, bd, dyd = (device.asarray(a) for a in (x, w, b, dy))
    y = xp.empty(g.y_shape, dtype=np.float32)
    dx = xp.empty(g.x_shape, dtype=np.float32)
    dw = xp.empty(g.w_shape, dtype=np.float32)
    conv.check_kernel_sizes(g)
    if precision != "fp32":
        return tensor_core_calls(device, g, xd, wd, bd, dyd, y, dx, dw, precision)
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


def _run_all(device, launches):
    def run():
        for launch in launches:
            device.launch(launch)
    return run


def tensor_core_calls(device, g, x, w, b, dy, y, dx, dw, precision):
    """``kernel_calls`` for the tensor-core kernels (TF32 or BF16 operands)."""
    from convnet.ops import conv_tc as tc
    splits, chunk = tc.plan_filter(device, g)
    workspace = device.xp.empty(splits * dw.size, dtype=np.float32) if splits > 1 else None
    fwd = tc.forward_launch(device, g, x, w, b, y, True, precision)
    data = tc.backward_data_launch(device, g, dy, w, dx, precision)
    filt = tc.backward_filter_launches(device, g, x, dy, dw, splits, chunk, workspace, precision)
    calls = {"forward": (lambda: device.launch(fwd), y),
             "backward_data": (lambda: device.launch(data), dx),
             "backward_filter": (_run_all(device, filt), dw)}
    tile = (tc.BLOCK_M, tc.BLOCK_N, tc.BLOCK_K)
    return calls, dict.fromkeys(PASSES, tile), {"backward_filter": {"splits": splits}}


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

    calls = {p: (_run_all(device, ls), out) for (p, ls), out in zip(launches.items(), (y, dx, dw))}
    tiles = {p: ls[2].template_args[:5] for p, ls in launches.items()}
    return calls, tiles, {"backward_filter": {"splits": plan.splits}}


def predicted_passes(name: str, algorithm: str, gpu: str, batch: int,
                     precision: str = "fp32") -> dict:
    """{pass: predicted seconds} of layer ``name``'s launches by ``algorithm`` in
    ``precision`` on the named GPU (convnet perf's model; no GPU needed), summed per pass."""
    from convnet.perf import gpus
    from convnet.perf.layers import conv_layer
    from convnet.perf.predict import predict_layers
    c, hw, k, rs, stride, pad, groups = LAYERS[name]
    layer = conv_layer(name, c, hw, k, rs, stride, pad, groups, algorithm=algorithm,
                       precision=precision)
    table = predict_layers([layer], gpus.gpu(gpu), batch)
    return {p: sum(r.prediction.time_s for r in table.rows if r.planned.part == part)
            for p, part in MODEL_PARTS.items()}


def reference_calls(x, w, b, dy, g, precision="fp32"):
    """{pass: NumPy reference}; tf32/bf16: on the operands rounded as the tensor cores do."""
    from convnet.ops import conv
    if precision != "fp32":
        x, w, dy = (rounded(a, precision) for a in (x, w, dy))
    return {"forward": lambda: conv.forward_reference(g, x, w, b, relu=True),
            "backward_data": lambda: conv.backward_data_reference(g, dy, w),
            "backward_filter": lambda: conv.backward_filter_reference(g, x, dy)}


def rounded(a, precision: str):
    """``a`` (float32) with its values rounded to ``precision``'s operand format."""
    from convnet.precision import round_operand
    return round_operand(a, precision).astype(np.float32, copy=False)


def relative_error(got, want) -> float:
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    scale = float(np.max(np.abs(want))) or 1.0
    return float(np.max(np.abs(got - want))) / scale


# --------------------------------------------------------------------------- cuDNN

def cudnn_calls(torch, device_index, x, w, b, dy, g, dtype=None):
    """{pass: callable} through PyTorch (cuDNN), operands on the GPU (in ``dtype``, e.g.
    torch.bfloat16, when given: the tensors autocast would hand cuDNN)."""
    import torch.nn.functional as tf
    dev = torch.device("cuda", device_index)
    tx, tw, tb, tdy = (torch.as_tensor(a, device=dev) for a in (x, w, b, dy))
    if dtype is not None:
        tx, tw, tb, tdy = (t.to(dtype) for t in (tx, tw, tb, tdy))
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
               algorithms=("direct",), precisions=("fp32",)):
    """emu kernels and cpu NumPy references at ``batch``; emu checked against NumPy
    (for tf32/bf16: NumPy on the rounded operands)."""
    emu = next((d for d in devices if d.kind == "emu"), None)
    cpu = next((d for d in devices if d.kind == "cpu"), None)
    for name in layers:
        x, w, b, dy, g = operands(name, batch)
        refs = reference_calls(x, w, b, dy, g)
        base = _bench_numpy(report, cpu, name, refs, passes, batch, reps, g)
        for algorithm, precision in variants(algorithms, precisions) if emu is not None else ():
            if runs_algorithm(name, algorithm):
                wanted = refs if precision == "fp32" else reference_calls(x, w, b, dy, g,
                                                                          precision)
                _bench_emu(report, emu, name, algorithm, precision, x, w, b, dy, g, wanted,
                           base, passes, batch, reps, failures)


def _bench_numpy(report, cpu, name, refs, passes, batch, reps, g):
    """{pass: Result} of the cpu NumPy references, the baseline of emu."""
    base = {}
    for p in passes if cpu is not None else ():
        params = {"shape": f"{name} {p} N={batch}", "layer": name, "pass": p, "batch": batch}
        base[p] = report.add(harness.measure(refs[p], device=cpu, name=f"numpy.{p}",
                                             flops=g.flops, params=params, **reps["cpu"]))
    return base


def _bench_emu(report, emu, name, algorithm, precision, x, w, b, dy, g, refs, base, passes,
               batch, reps, failures):
    kernels = kernel_calls(emu, x, w, b, dy, g, algorithm, precision)
    prefix = variant_prefix(algorithm, precision)
    for p in passes:
        params = {"shape": f"{name} {p} N={batch}", "layer": name, "pass": p,
                  "batch": batch, "algorithm": algorithm, "precision": precision}
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
               algorithms=("direct",), precisions=("fp32",)):
    cp = device.xp
    peaks = {precision: (fp32_peak_tflops(device.index) if precision == "fp32"
                         else tensor_core_peak_tflops(device.index, precision))
             for precision in precisions}
    for precision, (peak, how) in peaks.items():
        report.notes[f"{device.name} {precision}_peak_tflops"] = peak
        report.notes[f"{device.name} {precision}_peak_source"] = how
    torch = _import_torch()
    if torch is None:
        report.notes["torch"] = "not importable (or no CUDA in torch): no cuDNN baseline"
    else:
        report.notes["torch"] = f"{torch.__version__}, cuDNN {torch.backends.cudnn.version()}"
        torch.backends.cudnn.benchmark = True
    cudnn = {}  # (layer, pass, label) -> its Result, measured once for every variant
    for name in layers:
        x, w, b, dy, g = operands(name, batch)
        for algorithm, precision in variants(algorithms, precisions):
            if runs_algorithm(name, algorithm):
                with cp.cuda.Device(device.index):
                    _bench_cuda_variant(report, device, torch, cudnn, name, algorithm,
                                        precision, (x, w, b, dy, g), passes, batch, reps,
                                        failures, summary, peaks[precision][0])


def _bench_cuda_variant(report, device, torch, cudnn, name, algorithm, precision, data,
                        passes, batch, reps, failures, summary, peak):
    """One (algorithm, precision) of one layer on ``device``: checked against cuDNN FP32
    on the same rounded operands, timed, set against cuDNN in the same arithmetic."""
    cp = device.xp
    x, w, b, dy, g = data
    prefix = variant_prefix(algorithm, precision)
    calls, tiles, extra = kernel_calls(device, x, w, b, dy, g, algorithm, precision)
    check, theirs = {}, {}
    if torch is not None:
        same = (x, w, dy) if precision == "fp32" else (rounded(a, precision) for a in (x, w, dy))
        xr, wr, dyr = same
        check = cudnn_calls(torch, device.index, xr, wr, b, dyr, g)
        theirs = {label: cudnn_calls(torch, device.index, x, w, b, dy, g,
                                     torch.bfloat16 if label == "cudnn_bf16" else None)
                  for label in CUDNN_LABELS[precision]}
    for p in passes:
        params = {"shape": f"{name} {p} N={batch}", "layer": name, "pass": p, "batch": batch,
                  "tile": "x".join(map(str, tiles[p])), "algorithm": algorithm,
                  "precision": precision, **extra.get(p, {})}
        row = {"layer": name, "pass": p, "batch": batch, "tile": params["tile"],
               "algorithm": algorithm, "precision": precision}
        try:
            fn, out = calls[p]
            fn()
            device.synchronize()
            if check:
                torch.backends.cudnn.allow_tf32 = False
                want = check[p]()
                if p == "forward":
                    want = torch.relu(want)
                err = relative_error(cp.asnumpy(out), want.cpu().numpy())
                params["max_rel_err_vs_cudnn"] = float(f"{err:.2g}")
                if err > 1e-3:
                    report.notes[f"WRONG {device.name} {prefix} {name} {p}"] = err
                    failures.append(f"{device.name} {prefix} {name} {p}")
            ours = report.add(harness.measure(fn, device=device, name=f"{prefix}.{p}",
                                              flops=g.flops, params=params, **reps["cuda"]))
            row.update(ms=ours.median * 1e3, tflops=ours.gflops / 1e3)
            if algorithm == "direct" and precision == "fp32":
                predicted = report.predict(
                    ours, "conv:" + ",".join(map(str, LAYERS[name])), batch,
                    CALIBRATION_KERNELS[p], label=f"{name} {p} N={batch}")
            else:
                predicted = _predict_variant(report, ours, name, p, batch, algorithm, precision)
            if predicted:
                row["predicted_ms"] = predicted["predicted_s"] * 1e3
                row["measured_over_predicted"] = predicted["ratio"]
            if peak:
                pct = 100.0 * ours.gflops / 1e3 / peak
                ours.params["pct_peak"] = round(pct, 1)
                row["pct_peak"] = pct
            for label, their in theirs.items():
                torch.backends.cudnn.allow_tf32 = label == "cudnn_tf32"
                if (name, p, label) not in cudnn:
                    cudnn[name, p, label] = report.add(harness.measure(
                        their[p], device=device, name=f"{label}.{p}", flops=g.flops,
                        params={"shape": params["shape"], "layer": name, "pass": p,
                                "batch": batch}, **reps["cuda"]))
                base = cudnn[name, p, label]
                ratio = report.add_ratio(ours, base, label=f"{name} {p}: {prefix} vs {label} "
                                                            f"on {device.name}, N={batch}")
                row[f"vs_{label}"] = ratio["speed_ratio"]
                row[f"{label}_ms"] = base.median * 1e3
            if torch is not None:
                torch.backends.cudnn.allow_tf32 = False
        except Exception as exc:
            failures.append(f"{device.name} {prefix} {name} {p}")
            report.notes[f"error {device.name} {prefix} {name} {p}"] = \
                f"{type(exc).__name__}: {exc}"
            print(f"error on {device.name}, {prefix} {name} {p}: {type(exc).__name__}: {exc}",
                  file=sys.stderr)
        summary.append(row)


def tensor_core_peak_tflops(index: int, precision: str) -> tuple[float | None, str]:
    """(dense tensor-core peak of ``precision`` in TFLOP/s, how it was found) of CUDA
    device ``index``: convnet.perf.gpus' datasheet value for a known GPU."""
    try:
        info = harness.gpu_info()
        name = info[index]["name"] if len(info) > index else ""
        from convnet.perf import calibration
        gpu = calibration.gpu_for_device(name)
    except Exception as exc:
        return None, f"device name unavailable ({exc})"
    if gpu is None:
        return None, f"{name}: not among convnet.perf.gpus' known GPUs"
    return getattr(gpu, f"{precision}_tflops"), f"{name}: convnet.perf.gpus {gpu.name}"


def _predict_variant(report, ours, name, p, batch, algorithm, precision):
    """``report.predict`` for a Winograd or tensor-core pass (the model's rows of that part)."""
    prefix = variant_prefix(algorithm, precision)
    try:
        from convnet.perf import calibration
        info = harness.gpu_info()
        gpu = calibration.gpu_for_device(info[0]["name"] if info else "")
        if gpu is None:
            return None
        seconds = predicted_passes(name, algorithm, gpu, batch, precision)[p]
        return report.add_prediction(ours, seconds, f"{prefix} {name} {p} N={batch}")
    except Exception as exc:  # the model must never stop a benchmark
        report.notes[f"calibration error {prefix} {name} {p}"] = f"{type(exc).__name__}: {exc}"
        return None


def layer_flops(name: str, batch: int) -> float:
    """2 * N*K*P*Q * C/groups*R*S of layer ``name`` at ``batch`` (every pass's work)."""
    from convnet.ops import conv
    x_chw, w_shape, stride, padding, groups = layer_args(name)
    return conv.geometry((batch, *x_chw), w_shape, stride, padding, groups).flops


def print_predictions(report, layers, gpu: str, batch: int, algorithms,
                      precisions=("fp32",)) -> None:
    """The model's predicted microseconds per pass, algorithm and precision, and the
    percent of that precision's dense peak (no GPU needed)."""
    from convnet.perf import gpus
    spec = gpus.gpu(gpu)
    print(f"PREDICTED by convnet perf's model for {gpu}, batch {batch} (not measured; "
          f"% of the precision's dense peak):")
    print(f"{'layer':6s} {'algorithm':9s} {'precision':9s} "
          + " ".join(f"{p:>22s}" for p in PASSES) + f" {'total':>9s}")
    for name in layers:
        flops = layer_flops(name, batch)
        for algorithm, precision in variants(algorithms, precisions):
            if not runs_algorithm(name, algorithm):
                continue
            peak = getattr(spec, f"{precision}_tflops") * 1e12
            seconds = predicted_passes(name, algorithm, gpu, batch, precision)
            us = {p: t * 1e6 for p, t in seconds.items()}
            pct = {p: 100.0 * flops / t / peak for p, t in seconds.items()}
            report.notes[f"predicted_us {gpu} {name} {algorithm} {precision} N={batch}"] = {
                p: round(v, 1) for p, v in us.items()}
            report.notes[f"predicted_pct_peak {gpu} {name} {algorithm} {precision} N={batch}"] = {
                p: round(v, 1) for p, v in pct.items()}
            print(f"{name:6s} {algorithm:9s} {precision:9s} "
                  + " ".join(f"{us[p]:12.1f} ({pct[p]:5.1f}%)" for p in PASSES)
                  + f" {sum(us.values()):9.1f}", flush=True)


def targets(summary) -> dict:
    """The issue's GPU targets (issue 12), from the summary rows (recorded, never asserted)."""
    notes = {}
    direct = [r for r in summary if r["algorithm"] == "direct" and r["precision"] == "fp32"
              and "pct_peak" in r]
    if direct:
        notes[f"target every FP32 direct pass >= {TARGET_FP32_PCT_PEAK:.0f}% of FP32 peak"] = all(
            r["pct_peak"] >= TARGET_FP32_PCT_PEAK for r in direct)
    for precision in ("tf32", "bf16"):
        tc = [r for r in summary if r["precision"] == precision and "pct_peak" in r]
        if tc:
            notes[f"target every {precision} pass >= {TARGET_TC_PCT_PEAK:.0f}% of its tensor-core "
                  f"peak"] = all(r["pct_peak"] >= TARGET_TC_PCT_PEAK for r in tc)
    rated = [r for r in direct if "vs_cudnn_fp32" in r]
    if rated:
        slow = [f"{r['layer']} {r['pass']} ({r['vs_cudnn_fp32']:.2f})" for r in rated
                if r["vs_cudnn_fp32"] < TARGET_CUDNN_RATIO]
        notes["target every FP32 direct pass within 1.5x of cuDNN FP32"] = not slow
        if slow:
            notes["slower than 1.5x cuDNN FP32"] = ", ".join(slow)
    wino = [r for r in summary if r["algorithm"] == "winograd" and "vs_cudnn_fp32" in r]
    if wino:
        notes["target winograd conv3-5 >= 1.2x cuDNN FP32"] = all(
            r["vs_cudnn_fp32"] >= TARGET_WINOGRAD_RATIO for r in wino)
    tf32 = {(r["layer"], r["pass"]): r for r in summary
            if r["precision"] == "tf32" and "ms" in r and "cudnn_tf32_ms" in r}
    if tf32:
        ours = sum(r["ms"] for r in tf32.values())
        theirs = sum(r["cudnn_tf32_ms"] for r in tf32.values())
        notes["conv part, tf32: cuDNN (PyTorch's default) ms / ours ms"] = theirs / ours
        notes[f"target conv part >= {TARGET_TC_CONV_RATIO}x PyTorch's default (TF32)"] = (
            theirs / ours >= TARGET_TC_CONV_RATIO)
    return notes


def format_summary(summary) -> str:
    head = ("layer", "algorithm", "precision", "pass", "N", "tile", "ms", "TFLOP/s", "% peak",
            "cuDNN same ms", "vs same", "cuDNN fp32 ms", "vs fp32")
    rows = [head]

    def f(v, spec):
        return "-" if v is None else format(v, spec)

    for r in summary:
        same = CUDNN_LABELS[r["precision"]][0]
        rows.append((r["layer"], r["algorithm"], r["precision"], r["pass"], str(r["batch"]),
                     r["tile"], f(r.get("ms"), ".3f"),
                     f(r.get("tflops"), ".2f"), f(r.get("pct_peak"), ".1f"),
                     f(r.get(f"{same}_ms"), ".3f"), f(r.get(f"vs_{same}"), ".2f"),
                     f(r.get("cudnn_fp32_ms"), ".3f"), f(r.get("vs_cudnn_fp32"), ".2f")))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.rjust(wd) if i > 5 else c.ljust(wd)
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
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS),
                        help="fp32 runs the algorithms; tf32 and bf16 the tensor-core kernels")
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
                          args.algorithms, args.precisions)
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
                   args.algorithms, args.precisions)
    summary: list[dict] = []
    for device in (d for d in devices if d.kind == "cuda"):
        batch = args.batch or (QUICK_CUDA_BATCH if args.quick else CUDA_BATCH)
        bench_cuda(report, device, args.layers, passes, batch, reps, failures, summary,
                   args.algorithms, args.precisions)
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
