"""Benchmark LRN, overlapping max-pool and the fused LRN + max-pool forward on AlexNet's shapes.

  python benchmarks/lrn_pool.py                          # every device here
  python benchmarks/lrn_pool.py --devices emu --batch 8
  python benchmarks/lrn_pool.py --quick --out /tmp/r

Shapes (Krizhevsky et al. 2012): LRN after conv1 (96×55×55) and conv2 (256×27×27);
max-pool 3/2 after them (55→27, 27→13) and after conv5 (13→6). Batch 128 on a GPU,
small on the host (``--batch``). The LRN uses the paper's parameters (size 5,
alpha 1e-4, beta 0.75, k 2).

Every variant is timed, so that the library's choices can be re-checked anywhere:

* LRN: ``lrn_forward`` + ``lrn_backward`` (s recomputed in the backward) against
  ``lrn_forward_scale`` + ``lrn_backward_saved_scale`` (s stored by the forward);
* max-pool: ``pool_backward`` (saved uint8 argmax) against ``pool_backward_recompute``;
  ``pool_forward`` (with the argmax) and ``pool_forward_noindex``;
* LRN + max-pool: ``lrn_pool_fused`` (one kernel) against ``lrn_pool_separate``;
  backward ``lrn_pool_backward_fused`` against ``lrn_pool_backward_separate``.

``cpu`` times the NumPy references (the baseline of ``emu``). On ``cuda:N``, PyTorch
(``nn.LocalResponseNorm`` with alpha × size, ``max_pool2d_with_indices`` and its
backward) is the baseline when importable, its outputs are compared with ours, and
every result carries ``pct_peak``: its GB/s against the GPU's memory bandwidth
(memory clock × bus width × 2, from CuPy). Bytes are the least traffic a variant
needs (each input read once, each output written once): LRN forward 8 B/element
(12 storing s), backward 12 (16 reading s); pool forward 4 B per input + 5 per output
(4 + 4 without argmax), backward 4 per input + 5 per output (recompute: 8 per input
+ 4 per output); fused 4 per input + 5 per output, separate 12 per input + 5 per
output; fused backward (``lrn_pool_backward_fused``: pool and LRN backward in one
kernel) 8 per input + 5 per output, separate 16 per input + 9 per output. Ratios and
choices go into the notes, recorded, never asserted.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from benchmarks import harness  # noqa: E402

LRN_SHAPES = {"lrn1": (96, 55, 55), "lrn2": (256, 27, 27)}
POOL_SHAPES = {"pool1": (96, 55, 55), "pool2": (256, 27, 27), "pool5": (256, 13, 13)}
FUSED_SHAPES = {"lrn1+pool1": (96, 55, 55), "lrn2+pool2": (256, 27, 27)}
CUDA_BATCH = 128
HOST_BATCH = 8
QUICK_HOST_BATCH = 1
QUICK_CUDA_BATCH = 32
CHECK_IMAGES = 2     # outputs are checked against the references on the first images

# Memory bandwidth by name, used only when CuPy cannot give clock and bus width.
KNOWN_BANDWIDTH_GBPS = (("H200", 4800.0), ("H100 PCIe", 2000.0), ("H100 NVL", 3900.0),
                        ("H100", 3350.0), ("A100-SXM4-80GB", 2039.0), ("A100", 1555.0))


def _import_torch():
    try:
        import torch
    except Exception:
        return None
    return torch if torch.cuda.is_available() else None


def peak_bandwidth(index: int) -> tuple[float | None, str]:
    """(GB/s, how it was found) of CUDA device ``index``."""
    import cupy as cp
    try:
        attrs = cp.cuda.Device(index).attributes
        clock_khz, bus_bits = attrs["MemoryClockRate"], attrs["GlobalMemoryBusWidth"]
        if clock_khz and bus_bits:
            return 2.0 * clock_khz * 1e3 * bus_bits / 8 / 1e9, "memory clock x bus width x 2"
    except Exception:
        pass
    try:
        props = cp.cuda.runtime.getDeviceProperties(index)
        clock_khz, bus_bits = props.get("memoryClockRate"), props.get("memoryBusWidth")
        if clock_khz and bus_bits:
            return 2.0 * clock_khz * 1e3 * bus_bits / 8 / 1e9, "memory clock x bus width x 2"
        name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    except Exception:
        return None, "unknown"
    for key, gbps in KNOWN_BANDWIDTH_GBPS:
        if key in name:
            return gbps, f"data sheet ({key})"
    return None, "unknown"


class Bench:
    """Runs and records the cases of one device."""

    def __init__(self, report, device, reps, peak=None):
        self.report, self.device, self.reps, self.peak = report, device, reps, peak
        self.results = {}

    def time(self, key, name, fn, nbytes, params, baseline=None):
        params = dict(params)
        result = harness.measure(fn, device=self.device, name=name, bytes=nbytes, params=params,
                                 **self.reps)
        if self.peak:
            result.params["pct_peak"] = round(100.0 * result.gbps / self.peak, 1)
        self.report.add(result)
        self.results[key] = result
        if baseline is not None:
            self.report.add_ratio(result, baseline, label=f"{name} on {result.device} vs "
                                  f"{baseline.name} on {baseline.device}, {params.get('shape')}")
        return result

    def check(self, what, got, expected, exact=False, rtol=2e-5):
        got = self.device.to_numpy(got)[:CHECK_IMAGES]
        expected = np.asarray(expected)[:CHECK_IMAGES]
        if exact:
            ok = np.array_equal(got, expected)
        else:
            scale = float(np.max(np.abs(expected))) or 1.0
            ok = bool(np.all(np.abs(got - expected) <= rtol * (np.abs(expected) + 1e-3 * scale)))
        if not ok:
            self.report.notes[f"WRONG {what} on {self.device.name}"] = True


def _host_data(shape, seed):
    rng = np.random.default_rng(seed)
    return np.maximum(rng.standard_normal(shape, dtype=np.float32) * 30, 0)  # ReLU'd, as in AlexNet


def bench_lrn(bench, batch, baselines):
    from convnet.ops import lrn
    params = lrn.make_params()
    device = bench.device
    for label, chw in LRN_SHAPES.items():
        shape = (batch, *chw)
        numel = int(np.prod(shape))
        p = {"shape": label, "batch": batch}
        x_h = _host_data(shape, 1)
        dy_h = np.random.default_rng(2).standard_normal(shape, dtype=np.float32)
        base = baselines.get(label, {})
        if not device.runs_kernels:
            y_ref, s_ref = lrn.forward_reference(x_h, params, with_scale=True)
            bench.time((label, "fwd"), "lrn_forward", lambda: lrn.forward_reference(x_h, params),
                       8 * numel, p)
            bench.time((label, "bwd"), "lrn_backward",
                       lambda: lrn.backward_reference(x_h, dy_h, params), 12 * numel, p)
            bench.time((label, "bwd_s"), "lrn_backward_saved_scale",
                       lambda: lrn.backward_reference(x_h, dy_h, params, s_ref), 16 * numel, p)
            continue
        xp = device.xp
        x, dy = device.asarray(x_h), device.asarray(dy_h)
        y, s, dx, dx2 = (xp.empty_like(x) for _ in range(4))
        fwd = lrn.forward_launch(device, x, y, params)
        fwd_s = lrn.forward_launch(device, x, y, params, scale=s)
        bwd = lrn.backward_launch(device, x, dy, dx, params)
        bwd_s = lrn.backward_launch(device, x, dy, dx2, params, scale=s)
        for launch in (fwd_s, bwd, bwd_s):
            device.launch(launch)
        device.synchronize()
        n = min(CHECK_IMAGES, batch)
        y_ref, s_ref = lrn.forward_reference(x_h[:n], params, with_scale=True)
        dx_ref = lrn.backward_reference(x_h[:n], dy_h[:n], params)
        bench.check(f"lrn_forward {label}", y, y_ref)
        bench.check(f"lrn_backward {label}", dx, dx_ref, rtol=1e-4)
        bench.check(f"lrn_backward_saved_scale {label}", dx2, dx_ref, rtol=1e-4)
        bench.time((label, "fwd"), "lrn_forward", lambda: device.launch(fwd), 8 * numel, p,
                   base.get("fwd"))
        bench.time((label, "fwd_s"), "lrn_forward_scale", lambda: device.launch(fwd_s),
                   12 * numel, p)
        bench.time((label, "bwd"), "lrn_backward", lambda: device.launch(bwd), 12 * numel, p,
                   base.get("bwd"))
        bench.time((label, "bwd_s"), "lrn_backward_saved_scale", lambda: device.launch(bwd_s),
                   16 * numel, p)
        r = bench.results
        pair_recompute = r[label, "fwd"].median + r[label, "bwd"].median
        pair_saved = r[label, "fwd_s"].median + r[label, "bwd_s"].median
        bench.report.notes[f"lrn save-vs-recompute {device.name} {label}"] = (
            f"forward+backward {pair_saved * 1e3:.3f} ms storing s, {pair_recompute * 1e3:.3f} ms "
            f"recomputing it: recompute is {pair_saved / pair_recompute:.2f}x as fast")


def bench_pool(bench, batch, baselines):
    from convnet.ops import max_pool
    params = max_pool.make_params(3, 2, 0)
    device = bench.device
    for label, chw in POOL_SHAPES.items():
        shape = (batch, *chw)
        out_shape = max_pool.output_shape(shape, params)
        n_in, n_out = int(np.prod(shape)), int(np.prod(out_shape))
        p = {"shape": label, "batch": batch}
        x_h = _host_data(shape, 3)
        dy_h = np.random.default_rng(4).standard_normal(out_shape, dtype=np.float32)
        base = baselines.get(label, {})
        fwd_bytes, bwd_bytes = 4 * n_in + 5 * n_out, 4 * n_in + 5 * n_out
        if not device.runs_kernels:
            y_ref, a_ref = max_pool.forward_reference(x_h, params)
            bench.time((label, "fwd"), "pool_forward",
                       lambda: max_pool.forward_reference(x_h, params), fwd_bytes, p)
            bench.time((label, "bwd"), "pool_backward",
                       lambda: max_pool.backward_reference(dy_h, a_ref, params, shape), bwd_bytes, p)
            continue
        xp = device.xp
        x, dy = device.asarray(x_h), device.asarray(dy_h)
        y = xp.empty(out_shape, np.float32)
        a = xp.empty(out_shape, max_pool.index_dtype(params))
        dx, dx2 = xp.empty(shape, np.float32), xp.empty(shape, np.float32)
        fwd = max_pool.forward_launch(device, x, y, params, a)
        fwd0 = max_pool.forward_launch(device, x, y, params)
        bwd = max_pool.backward_launch(device, dy, a, dx, params)
        bwd_re = max_pool.backward_recompute_launch(device, x, dy, dx2, params)
        for launch in (fwd, bwd, bwd_re):
            device.launch(launch)
        device.synchronize()
        n = min(CHECK_IMAGES, batch)
        y_ref, a_ref = max_pool.forward_reference(x_h[:n], params)
        dx_ref = max_pool.backward_reference(dy_h[:n], a_ref, params, (n, *chw))
        bench.check(f"pool_forward {label}", y, y_ref, exact=True)
        bench.check(f"pool_argmax {label}", a, a_ref, exact=True)
        bench.check(f"pool_backward {label}", dx, dx_ref, exact=True)
        bench.check(f"pool_backward_recompute {label}", dx2, dx_ref, exact=True)
        bench.time((label, "fwd"), "pool_forward", lambda: device.launch(fwd), fwd_bytes, p,
                   base.get("fwd"))
        bench.time((label, "fwd0"), "pool_forward_noindex", lambda: device.launch(fwd0),
                   4 * n_in + 4 * n_out, p)
        bench.time((label, "bwd"), "pool_backward", lambda: device.launch(bwd), bwd_bytes, p,
                   base.get("bwd"))
        bench.time((label, "bwd_re"), "pool_backward_recompute", lambda: device.launch(bwd_re),
                   8 * n_in + 4 * n_out, p)
        r = bench.results
        if device.kind == "cuda":   # the model's prediction beside each (calibration)
            for key, kernel, pass_ in (("fwd", "max_pool_forward_index", "forward"),
                                       ("bwd", "max_pool_backward", "backward")):
                bench.report.predict(r[label, key], f"pool:{chw[0]},{chw[1]}", batch, (kernel,),
                                     passes=(pass_,), label=f"pool_{key} {label} batch {batch}")
        bench.report.notes[f"pool saved-vs-recomputed argmax {device.name} {label}"] = (
            f"backward {r[label, 'bwd'].median * 1e3:.3f} ms with the saved argmax, "
            f"{r[label, 'bwd_re'].median * 1e3:.3f} ms recomputing it")


def bench_fused(bench, batch, baselines):
    from convnet.ops import lrn, lrn_max_pool, max_pool
    params, pool = lrn.make_params(), max_pool.make_params(3, 2, 0)
    device = bench.device
    for label, chw in FUSED_SHAPES.items():
        shape = (batch, *chw)
        out_shape = max_pool.output_shape(shape, pool)
        n_in, n_out = int(np.prod(shape)), int(np.prod(out_shape))
        p = {"shape": label, "batch": batch}
        x_h = _host_data(shape, 5)
        base = baselines.get(label, {})
        if not device.runs_kernels:
            bench.time((label, "sep"), "lrn_pool_separate",
                       lambda: max_pool.forward_reference(lrn.forward_reference(x_h, params), pool),
                       12 * n_in + 5 * n_out, p)
            continue
        xp = device.xp
        x = device.asarray(x_h)
        z = xp.empty_like(x)
        y, y2 = xp.empty(out_shape, np.float32), xp.empty(out_shape, np.float32)
        a, a2 = (xp.empty(out_shape, max_pool.index_dtype(pool)) for _ in range(2))
        first = lrn.forward_launch(device, x, z, params)
        second = max_pool.forward_launch(device, z, y, pool, a)
        fused = lrn_max_pool.forward_launch(device, x, y2, a2, params, pool)
        for launch in (first, second, fused):
            device.launch(launch)
        device.synchronize()
        bench.check(f"lrn_pool_fused {label}", y2, device.to_numpy(y), exact=True)
        bench.check(f"lrn_pool_fused argmax {label}", a2, device.to_numpy(a), exact=True)

        def separate():
            device.launch(first)
            device.launch(second)
        sep = bench.time((label, "sep"), "lrn_pool_separate", separate, 12 * n_in + 5 * n_out, p,
                         base.get("sep"))
        fus = bench.time((label, "fused"), "lrn_pool_fused", lambda: device.launch(fused),
                         4 * n_in + 5 * n_out, p, base.get("sep"))
        bench.report.add_ratio(fus, sep, label=f"lrn_pool_fused vs lrn_pool_separate on "
                                               f"{device.name}, {label}")
        bench.report.notes[f"fused-vs-separate {device.name} {label}"] = (
            f"fused {fus.median * 1e3:.3f} ms, separate {sep.median * 1e3:.3f} ms: fused is "
            f"{sep.median / fus.median:.2f}x as fast")
        # the backward: lrn_max_pool_backward (one kernel, no dz) against max_pool_backward
        # then lrn_backward<false>; bytes: 8 per input + 5 per output, against 16 + 9
        dy = device.asarray(_host_data(out_shape, 6))
        dz, dx, dx2 = xp.empty_like(x), xp.empty_like(x), xp.empty_like(x)
        pool_back = max_pool.backward_launch(device, dy, a2, dz, pool)
        lrn_back = lrn.backward_launch(device, x, dz, dx, params)
        fused_back = lrn_max_pool.backward_launch(device, x, dy, a2, dx2, params, pool)
        for launch in (pool_back, lrn_back, fused_back):
            device.launch(launch)
        device.synchronize()
        bench.check(f"lrn_pool_backward_fused {label}", dx2, device.to_numpy(dx), exact=True)

        def separate_back():
            device.launch(pool_back)
            device.launch(lrn_back)
        sep_b = bench.time((label, "sep_bwd"), "lrn_pool_backward_separate", separate_back,
                           16 * n_in + 9 * n_out, p, base.get("sep_bwd"))
        fus_b = bench.time((label, "fused_bwd"), "lrn_pool_backward_fused",
                           lambda: device.launch(fused_back), 8 * n_in + 5 * n_out, p,
                           base.get("sep_bwd"))
        bench.report.add_ratio(fus_b, sep_b, label=f"lrn_pool_backward_fused vs separate on "
                                                   f"{device.name}, {label}")
        bench.report.notes[f"fused-vs-separate backward {device.name} {label}"] = (
            f"fused {fus_b.median * 1e3:.3f} ms, separate {sep_b.median * 1e3:.3f} ms: fused is "
            f"{sep_b.median / fus_b.median:.2f}x as fast")
        if device.kind == "cuda":   # the model's prediction beside each (calibration)
            op = f"lrn_pool:{chw[0]},{chw[1]}"
            bench.report.predict(fus, op, batch, ("lrn_max_pool_forward",), passes=("forward",),
                                 label=f"lrn_pool_fused {label} batch {batch}")
            bench.report.predict(fus_b, op, batch, ("lrn_max_pool_backward",),
                                 passes=("backward",),
                                 label=f"lrn_pool_backward_fused {label} batch {batch}")


def torch_baselines(bench, batch, torch):
    """PyTorch on the GPU: LRN (alpha × size), max_pool2d_with_indices and backward."""
    from convnet.ops import lrn, max_pool
    params, pool = lrn.make_params(), max_pool.make_params(3, 2, 0)
    found = {}
    tdev = torch.device("cuda", bench.device.index)
    m = torch.nn.LocalResponseNorm(params.size, alpha=params.alpha * params.size,
                                   beta=params.beta, k=params.k)
    ks, st, pd = [3, 3], [2, 2], [0, 0]
    for label, chw in LRN_SHAPES.items():
        shape = (batch, *chw)
        numel = int(np.prod(shape))
        p = {"shape": label, "batch": batch}
        x = torch.as_tensor(_host_data(shape, 1), device=tdev)
        dy = torch.as_tensor(np.random.default_rng(2).standard_normal(shape, dtype=np.float32),
                             device=tdev)
        xr = x.clone().requires_grad_(True)
        y = m(xr)
        with torch.no_grad():
            ours = lrn.forward(bench.device, bench.device.asarray(x.cpu().numpy()), params)
            diff = float(np.max(np.abs(bench.device.to_numpy(ours) - y.detach().cpu().numpy())))
        bench.report.notes[f"torch LocalResponseNorm(alpha x size) max |ours - torch| {label}"] = diff
        with torch.no_grad():
            f = bench.time(("torch", label, "fwd"), "torch.LocalResponseNorm", lambda: m(x),
                           8 * numel, p)
        b = bench.time(("torch", label, "bwd"), "torch.LocalResponseNorm.backward",
                       lambda: torch.autograd.grad(y, xr, dy, retain_graph=True), 12 * numel, p)
        found[label] = {"fwd": f, "bwd": b}
    for label, chw in POOL_SHAPES.items():
        shape = (batch, *chw)
        out_shape = max_pool.output_shape(shape, pool)
        n_in, n_out = int(np.prod(shape)), int(np.prod(out_shape))
        p = {"shape": label, "batch": batch}
        x = torch.as_tensor(_host_data(shape, 3), device=tdev)
        dy = torch.as_tensor(np.random.default_rng(4).standard_normal(out_shape, dtype=np.float32),
                             device=tdev)
        y, idx = torch.ops.aten.max_pool2d_with_indices(x, ks, st, pd)
        f = bench.time(("torch", label, "fwd"), "torch.max_pool2d_with_indices",
                       lambda: torch.ops.aten.max_pool2d_with_indices(x, ks, st, pd),
                       4 * n_in + 12 * n_out, p)  # torch's indices are int64
        b = bench.time(("torch", label, "bwd"), "torch.max_pool2d_with_indices_backward",
                       lambda: torch.ops.aten.max_pool2d_with_indices_backward(
                           dy, x, ks, st, pd, [1, 1], False, idx), 4 * n_in + 12 * n_out, p)
        found[label] = {"fwd": f, "bwd": b}
    for label, chw in FUSED_SHAPES.items():
        shape = (batch, *chw)
        out_shape = max_pool.output_shape(shape, pool)
        n_in, n_out = int(np.prod(shape)), int(np.prod(out_shape))
        x = torch.as_tensor(_host_data(shape, 5), device=tdev)
        with torch.no_grad():
            s = bench.time(("torch", label, "sep"), "torch.LocalResponseNorm+max_pool2d",
                           lambda: torch.ops.aten.max_pool2d_with_indices(m(x), ks, st, pd),
                           12 * n_in + 12 * n_out, {"shape": label, "batch": batch})
        found[label] = {"sep": s}
    return found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    harness.add_common_args(parser)
    parser.add_argument("--batch", type=int, default=None,
                        help=f"images per batch (default: {CUDA_BATCH} on a GPU, {HOST_BATCH} on "
                             f"the host; --quick: {QUICK_CUDA_BATCH} and {QUICK_HOST_BATCH})")
    args = parser.parse_args(argv)
    report = harness.Report("lrn_pool", args=vars(args))

    import convnet
    devices = harness.open_devices(args.devices, report)
    reps = harness.repetitions(args)
    failed = False
    host_batch = args.batch or (QUICK_HOST_BATCH if args.quick else HOST_BATCH)
    cuda_batch = args.batch or (QUICK_CUDA_BATCH if args.quick else CUDA_BATCH)

    host = {}
    if any(d.kind in ("cpu", "emu") for d in devices):
        cpu = Bench(report, convnet.get_device("cpu"), reps["cpu"])
        bench_lrn(cpu, host_batch, {})
        bench_pool(cpu, host_batch, {})
        bench_fused(cpu, host_batch, {})
        for key, result in cpu.results.items():
            host.setdefault(key[0], {})[key[1]] = result
    for device in devices:
        if device.kind == "cpu":
            continue
        try:
            if device.kind == "emu":
                from convnet.backend import emu
                report.notes["emu_workers"] = emu.worker_threads()
                bench = Bench(report, device, reps["emu"])
                bench_lrn(bench, host_batch, host)
                bench_pool(bench, host_batch, host)
                bench_fused(bench, host_batch, host)
            else:
                peak, how = peak_bandwidth(device.index)
                report.notes[f"{device.name} peak GB/s"] = (
                    f"{peak:.0f} ({how})" if peak else "unknown")
                bench = Bench(report, device, reps["cuda"], peak)
                torch = _import_torch()
                base = {}
                if torch is None:
                    report.notes["torch"] = "not importable (or no CUDA in torch): no baselines"
                else:
                    report.notes["torch"] = torch.__version__
                    base = torch_baselines(bench, cuda_batch, torch)
                bench_lrn(bench, cuda_batch, base)
                bench_pool(bench, cuda_batch, base)
                bench_fused(bench, cuda_batch, base)
        except Exception as exc:
            failed = True
            report.notes[f"error {device.name}"] = f"{type(exc).__name__}: {exc}"
            print(f"error on {device.name}: {type(exc).__name__}: {exc}", file=sys.stderr)
    return harness.finish(report, args, failed)


if __name__ == "__main__":
    sys.exit(main())
