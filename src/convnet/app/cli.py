"""The ``convnet`` command line: one small function per subcommand.

To add a subcommand, write ``cmd_name(args) -> int`` and register it in
``build_parser`` with ``_add(subparsers, "name", cmd_name, "help")``, adding its
options on the parser ``_add`` returns. Imports happen inside each command so
that ``convnet --help`` stays fast and one broken piece cannot stop the others.
"""
from __future__ import annotations

import argparse
import sys


def cmd_doctor(args) -> int:
    """What this machine can run; always exits 0."""
    from . import doctor
    return doctor.main()


def cmd_kernels(args) -> int:
    """Compile every kernel module with NVRTC and print registers/spills; 1 on spill or error.

    A module built only for an architecture-specific feature set (``feature_arch``,
    sm_90a) has rows for that arch alone; a note under the table names the asked
    architectures it is not built for (not a failure)."""
    from ..toolchain import nvrtc
    from ..ops import kernel_modules

    modules = kernel_modules()
    if args.module:
        wanted = set(args.module)
        modules = [m for m in modules if str(m.source) in wanted]
        missing = wanted - {str(m.source) for m in modules}
        if missing:
            print(f"convnet kernels: no kernel module {', '.join(sorted(missing))}", file=sys.stderr)
            return 2
    archs = args.arch or list(nvrtc.REPORT_ARCHS)
    try:
        archs = [nvrtc.normalize_arch(a) for a in archs]
        supported = nvrtc.supported_archs()
        # sm_90a (a feature set of sm_90) is supported where sm_90 is
        unsupported = [a for a in archs if (a[:-1] if a[-1].isalpha() else a) not in supported]
        if unsupported:
            raise ValueError(f"NVRTC {'.'.join(map(str, nvrtc.version()))} cannot target "
                             f"{', '.join(unsupported)} (it supports {', '.join(supported)})")
    except (ValueError, nvrtc.NVRTCUnavailable) as exc:
        print(f"convnet kernels: {exc}", file=sys.stderr)
        return 2
    if not modules:
        print("convnet kernels: no kernel modules are declared in convnet.ops")
        return 0

    rows, failures = nvrtc.compile_all(modules, archs)
    skipped = nvrtc.not_built(modules, archs)
    if rows:
        nvrtc.print_report(rows)
    if skipped:
        print(f"\n{nvrtc.format_not_built(skipped)}")
    spilling = [r for r in rows if r.spills]
    for exc in failures:
        print(f"\nerror: {exc}", file=sys.stderr)
    print(f"\n{len(modules)} module(s) for {', '.join(archs)}: {len(rows)} kernel build(s), "
          f"{len(spilling)} spilling; {len(failures)} module build(s) failed"
          + (f"; {len(skipped)} module build(s) skipped (built only for "
             f"{', '.join(sorted({m.feature_arch for m, _ in skipped}))})" if skipped else ""))
    return 1 if spilling or failures else 0


def cmd_prepare(args) -> int:
    """Prepare an ImageNet-style folder into shards; 2 on bad arguments, 130 on Ctrl-C."""
    from ..data import prepare
    return _run_reporting_errors("prepare", lambda: prepare(
        args.src, args.dst, format=args.format, size=args.size, quality=args.quality,
        shard_size=args.shard_size, workers=args.workers, pixels=args.pixels, seed=args.seed,
        synsets=args.synsets, progress=False if args.no_progress else None),
        interrupted="interrupted; run the same command again to resume")


def cmd_make_demo_data(args) -> int:
    """Write the generated demo data set; 2 on bad arguments."""
    from ..data import make_demo_data

    def work():
        summary = make_demo_data(args.dir, classes=args.classes,
                                 train_per_class=args.train_per_class,
                                 val_per_class=args.val_per_class, size=args.size, seed=args.seed,
                                 workers=args.workers, progress=False if args.no_progress else None)
        print(f"make-demo-data: {summary['root']}: {summary['classes']} classes, "
              f"{summary['train']} train and {summary['val']} val images in "
              f"{summary['seconds']:.1f} s", file=sys.stderr)

    return _run_reporting_errors("make-demo-data", work)


_DEBUG = False  # convnet --debug: tracebacks after the one-line errors


def _run_reporting_errors(command: str, work, interrupted: str = "interrupted") -> int:
    """``work()`` with every exception reported as one line (``errors``): 2 on a usage
    error (bad arguments, data or checkpoint), 1 on a failure while running, 130 on
    Ctrl-C, 143 on SIGTERM; 0 when it returns."""
    from ..backend import DeviceError
    from .checkpoint import CheckpointError
    from ..data import DatasetError, DemoError, ManifestError, PrepareError
    from .errors import (EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_TERMINATED, EXIT_USAGE, Terminated,
                         handle_sigterm, quiet_resource_tracker, report)
    from .runs import TrainError
    usage = (TrainError, DeviceError, DatasetError, PrepareError, DemoError, ManifestError,
             CheckpointError)
    quiet_resource_tracker()
    try:
        with handle_sigterm():
            work()
    except usage as exc:
        return report(command, exc, EXIT_USAGE, _DEBUG)
    except Terminated:
        print(f"\nconvnet {command}: terminated (SIGTERM); {interrupted}", file=sys.stderr)
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        print(f"\nconvnet {command}: {interrupted}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - disk full, a worker, a corrupt shard, ...: one line
        return report(command, exc, EXIT_FAILURE, _DEBUG)
    return 0


def cmd_train(args) -> int:
    """Train AlexNet; 2 on bad arguments, 1 when training fails, 130 on Ctrl-C."""
    from .train import TrainOptions, train
    options = TrainOptions(
        data=args.data, prepared=args.prepared, out=args.out, device=args.device,
        devices=args.devices, model=args.model, columns=args.columns, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, seed=args.seed, workers=args.workers,
        patience=args.patience, lr_drops=args.lr_drops, schedule=args.schedule, crop=args.crop,
        widths=args.widths,
        weight_std=args.weight_std, dropout=args.dropout, precision=args.precision,
        parallel=args.parallel, collective_timeout=args.collective_timeout,
        resume=args.resume, force=args.force,
        progress=False if args.no_progress else None,
        final_eval=False if args.no_final_eval else None)
    code = _run_reporting_errors("train", lambda: train(options))
    from ..distributed.launch import end_job
    end_job(code)  # after a failed collective: exit now, never wait on the other ranks
    return code


def cmd_evaluate(args) -> int:
    """Top-1/top-5 error of a checkpoint on the val split; 2 on bad arguments, 130 on Ctrl-C."""
    from .evaluate import evaluate_checkpoint
    from .runs import resolve_checkpoint

    def work():
        path = resolve_checkpoint(args.checkpoint)
        result = evaluate_checkpoint(path, data=args.data, mode=args.mode,
                                     device=args.device, batch_size=args.batch_size,
                                     workers=args.workers, precision=args.precision,
                                     progress=False if args.no_progress else None)
        print(f"{path}: {result}")

    return _run_reporting_errors("evaluate", work)


def cmd_show(args) -> int:
    """Draw a figure of a training run; 1 without matplotlib, 2 on a bad run folder."""
    from .show import PlotUnavailable, draw, require_matplotlib
    try:
        require_matplotlib()
    except PlotUnavailable as exc:
        print(f"convnet show: {exc}", file=sys.stderr)
        return 1
    show_progress = False if args.no_progress else sys.stderr.isatty()
    return _run_reporting_errors("show", lambda: print(draw(
        args.figure, args.run, args.out, device=args.device, images=args.images, pool=args.pool,
        show_progress=show_progress)))


def cmd_perf(args) -> int:
    """Predicted time of every launch of a training step (or one op) on a named GPU."""
    from ..perf import command
    return command.run(args.gpu, args.model, args.batch, args.columns, op=args.op,
                       kernel=args.kernel, json_path=args.json, blocks=args.blocks,
                       precision=args.precision)


def cmd_bench(args) -> int:
    """benchmarks/alexnet.py of the source checkout (convnet against PyTorch, end to end)
    with the options given; 2 where the checkout is not there (a wheel install)."""
    import runpy
    from pathlib import Path
    script = Path(__file__).resolve().parents[3] / "benchmarks" / "alexnet.py"
    if not script.is_file():
        print(f"convnet bench: {script} is not here: the benchmark ships with the source "
              f"checkout, not the package (clone the repository, pip install -e \".[bench]\")",
              file=sys.stderr)
        return 2
    options = args.options[1:] if args.options[:1] == ["--"] else args.options
    return int(runpy.run_path(str(script), run_name="convnet_bench")["main"](options))


def _add(subparsers, name: str, func, help: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(name, help=help, description=help)
    parser.set_defaults(func=func)
    return parser


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__
    from ..models import PRESETS
    from .show import FIGURES

    parser = argparse.ArgumentParser(
        prog="convnet", description="AlexNet rebuilt from hand-written CUDA kernels.")
    parser.add_argument("--version", action="version", version=f"convnet {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="print the traceback after an error's one-line message "
                             "(also: CONVNET_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    _add(sub, "doctor", cmd_doctor,
         "check Python, NumPy, the emu runtime, CuPy, the driver, GPUs and NVRTC")

    kernels = _add(sub, "kernels", cmd_kernels,
                   "compile every kernel with NVRTC (no GPU needed) and report registers, "
                   "spills, shared memory and stack; exits 1 if any kernel spills or fails")
    kernels.add_argument("--arch", action="append", metavar="SM",
                         help="a GPU architecture such as sm_80 (repeatable; "
                              "default: sm_80 and sm_90)")
    kernels.add_argument("--module", action="append", metavar="FILE",
                         help="only this kernel file, as named in its KernelModule "
                              "(e.g. relu.cu; repeatable)")

    perf = _add(sub, "perf", cmd_perf,
                "predict the time of every kernel launch of an AlexNet training step (or of "
                "one op) on a named GPU, from the GPU build's machine code and the emulator's "
                "memory traffic; no GPU needed")
    perf.add_argument("--gpu", default="h100",
                      help="h100 (default), h200, a100, rtx4090 or a10")
    perf.add_argument("--model", default="alexnet", help="the network (alexnet)")
    perf.add_argument("--batch", type=int, default=128, help="images per step (default 128)")
    perf.add_argument("--columns", type=int, choices=(1, 2), default=1,
                      help="1: the whole network on one GPU; 2: one GPU's column")
    perf.add_argument("--op", metavar="SPEC",
                      help="one op instead of the model, e.g. conv:96,27,256,5,1,2,2 "
                           "(conv:C,HW,K,RS[,stride[,pad[,groups]]], lrn_pool:C,HW[,groups], "
                           "pool:C,HW, linear:IN,OUT, relu:F, dropout:F, cross_entropy:CLASSES, "
                           "sgd:COUNT)")
    perf.add_argument("--precision", choices=("fp32", "tf32", "bf16"), default="fp32",
                      help="the model's convolutions: fp32 (default; the chooser's direct or "
                           "Winograd per layer) or tf32/bf16 (every conv layer on tensor "
                           "cores, as train --precision runs them)")
    perf.add_argument("--kernel", metavar="NAME",
                      help="only launches whose kernel name contains NAME (e.g. conv_forward)")
    perf.add_argument("--json", metavar="FILE", help="also write the table as JSON")
    perf.add_argument("--blocks", type=int, default=4,
                      help="blocks the emulator profiles per launch (default 4)")

    prep = _add(sub, "prepare", cmd_prepare,
                "resize (shorter side to 256), center-crop and pack an ImageNet-style folder "
                "(SRC/train/<class>/*.JPEG, SRC/val/<class>/*) into shards in DST, with the "
                "mean image and RGB eigen-statistics; an interrupted run resumes")
    prep.add_argument("src", help="the image folder (train/<class>/..., val/<class>/...)")
    prep.add_argument("dst", help="the output folder (created; resumable)")
    prep.add_argument("--format", choices=("jpeg", "raw"), default="jpeg",
                      help="shard contents: re-encoded JPEG (default) or raw uint8 pixels")
    prep.add_argument("--quality", type=int, default=95, help="JPEG quality, 90..100 (default 95)")
    prep.add_argument("--size", type=int, default=256, help="side of the stored images (default 256)")
    prep.add_argument("--shard-size", type=int, default=None,
                      help="source files per shard (default: 1024, fewer for small sets)")
    prep.add_argument("--workers", type=int, default=None,
                      help="worker processes (default: every usable core; 0: no workers)")
    prep.add_argument("--pixels", type=int, default=1_000_000,
                      help="pixels sampled for the RGB covariance (default 10^6)")
    prep.add_argument("--seed", type=int, default=0, help="seed of the pixel sample (default 0)")
    prep.add_argument("--synsets", default=None,
                      help="class names file (default: SRC/synset_words.txt when present)")
    prep.add_argument("--no-progress", action="store_true", help="no progress bars")

    demo = _add(sub, "make-demo-data", cmd_make_demo_data,
                "write a generated data set of real JPEGs in the ImageNet folder layout "
                "(textured shapes on cluttered backgrounds; deterministic from the seed)")
    demo.add_argument("dir", help="the output folder")
    demo.add_argument("--classes", type=int, default=10, help="number of classes (default 10)")
    demo.add_argument("--train-per-class", type=int, default=300,
                      help="training images per class (default 300)")
    demo.add_argument("--val-per-class", type=int, default=50,
                      help="validation images per class (default 50)")
    demo.add_argument("--size", type=int, default=256,
                      help="shorter side of the images (default 256)")
    demo.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    demo.add_argument("--workers", type=int, default=None,
                      help="worker processes (default: every usable core)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bar")
    tr = _add(sub, "train", cmd_train,
              "train AlexNet (Krizhevsky et al. 2012) with the paper's SGD, augmentation and "
              "learning-rate schedule; with no arguments, on a generated demo set (made on "
              "first use) on cuda:0 if there is one, else on the CPU")
    tr.add_argument("--data", metavar="DIR",
                    help="a prepared data set (`convnet prepare`), or an image folder "
                         "(train/<class>/*, val/<class>/*) that is prepared first into --prepared "
                         "(default: the demo set under ~/.cache/convnet/demo)")
    tr.add_argument("--prepared", metavar="DIR",
                    help="where an image folder given by --data is prepared "
                         "(default: DIR-prepared beside it; reused when complete)")
    tr.add_argument("--out", metavar="DIR",
                    help="the run folder: checkpoints and metrics.jsonl (default: "
                         "./runs/<date>-<time>; with --resume: the newest run under ./runs)")
    tr.add_argument("--device", help="cpu, emu or cuda:N (default: cuda:0 if present, else cpu)")
    tr.add_argument("--devices", nargs="+", metavar="DEVICE",
                    help="one device per column, e.g. --devices cuda:0 cuda:1 (two columns)")
    tr.add_argument("--model", choices=tuple(PRESETS),
                    help="the paper's network, or a narrow one for the CPU "
                         "(default: alexnet on cuda, else alexnet-small)")
    tr.add_argument("--columns", type=int, choices=(1, 2),
                    help="one column, or two as in the paper (default 1, or the number of "
                         "--devices)")
    tr.add_argument("--epochs", type=int, help="epochs in all (default 30 on cuda, 8 elsewhere)")
    tr.add_argument("--batch-size", type=int, help="default 128 on cuda, 32 elsewhere")
    tr.add_argument("--lr", type=float, help="learning rate (default 0.01 on cuda, 0.004 "
                                             "elsewhere; with --resume: replaces the run's "
                                             "current rate, or the cosine's starting one)")
    tr.add_argument("--seed", type=int, help="seed of the weights, data order, augmentation "
                                             "and dropout (default 0)")
    tr.add_argument("--workers", type=int,
                    help="data loader processes (default: every usable core; 0: none)")
    tr.add_argument("--patience", type=int,
                    help="epochs without a better validation error before the learning rate "
                         "is divided by 10 (default 2)")
    tr.add_argument("--lr-drops", type=int, help="divide the learning rate at most this "
                                                 "many times (default 3, as in the paper)")
    tr.add_argument("--schedule", choices=("plateau", "cosine"),
                    help="plateau: the paper's (divide by 10 when the validation error stops "
                         "improving; default on cuda); cosine: from --lr down to 0 along half "
                         "a cosine over the run's steps (default elsewhere: a few epochs)")
    tr.add_argument("--crop", type=int, help="side of the training patches (default 227)")
    tr.add_argument("--widths", type=int, nargs=7, metavar="W",
                    help="the 7 layer widths: conv1..conv5 filters, fc6, fc7 units "
                         "(default: the --model's)")
    tr.add_argument("--weight-std", type=float,
                    help="standard deviation of the initial weights (default 0.01 for alexnet, "
                         "0.05 for alexnet-small)")
    tr.add_argument("--dropout", type=float,
                    help="dropout probability in fc6 and fc7 (default 0.5, the paper's)")
    from ..precision import PRECISIONS
    tr.add_argument("--precision", choices=PRECISIONS,
                    help="the convolutions' arithmetic: fp32 (default, the paper's), or tf32 "
                         "or bf16 operands on tensor cores with FP32 sums (all three "
                         "passes); fixed for a run")
    tr.add_argument("--parallel", choices=("data", "hybrid"),
                    help="one process per device, started with mpirun/mpiexec -n N or "
                         "torchrun-style RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT variables; "
                         "data: each rank trains on its share of every batch, gradients "
                         "averaged over the ranks; hybrid: conv layers data-parallel, fc6-fc8 "
                         "split over the ranks")
    tr.add_argument("--collective-timeout", type=float, metavar="SECONDS",
                    help="with --parallel: how long a rank waits for the others in any "
                         "collective before the job stops naming the rank (default 300)")
    tr.add_argument("--resume", action="store_true",
                    help="continue the run in --out from its newest checkpoint that loads")
    tr.add_argument("--force", action="store_true",
                    help="start afresh in an --out that holds another run, deleting its "
                         "checkpoints and metrics")
    tr.add_argument("--no-final-eval", action="store_true",
                    help="skip the ten-crop evaluation after the last epoch")
    tr.add_argument("--no-progress", action="store_true", help="no progress bars")

    sh = _add(sub, "show", cmd_show,
              "draw a figure of a training run into a PNG (needs matplotlib: "
              "pip install \"convnet[plot]\"): conv1's filters, the learning curves, "
              "validation images with their top-5 predictions, or the training images "
              "nearest them in fc7 space")
    sh.add_argument("figure", choices=FIGURES, help="which figure")
    sh.add_argument("--run", required=True, metavar="RUN",
                    help="a run folder of `convnet train` (its best checkpoint), or one "
                         "checkpoint file")
    sh.add_argument("--out", metavar="FILE.png", help="default: RUN/<figure>.png")
    sh.add_argument("--images", type=int, metavar="N",
                    help="validation images shown (predictions: 8, neighbours: 5)")
    sh.add_argument("--pool", type=int, default=5000, metavar="N",
                    help="neighbours: training images searched, spread evenly over the split "
                         "(default 5000; 0: all)")
    sh.add_argument("--device", help="default: cuda:0 if present, else cpu")
    sh.add_argument("--no-progress", action="store_true", help="no progress bar")

    bench = _add(sub, "bench", cmd_bench,
                 "AlexNet end to end against PyTorch (benchmarks/alexnet.py, from a source "
                 "checkout): agreement of logits and gradients, then images/s of training "
                 "and inference; PyTorch from the 'bench' extra")
    bench.add_argument("options", nargs="*", metavar="-- OPTION",
                       help="benchmarks/alexnet.py's options after a '--' (convnet bench -- "
                            "--devices cpu --quick; convnet bench -- --help lists them)")

    ev = _add(sub, "evaluate", cmd_evaluate,
              "top-1 and top-5 error of a checkpoint on the validation images")
    ev.add_argument("checkpoint", help="a checkpoint file, or a run folder (its best checkpoint)")
    ev.add_argument("--data", metavar="DIR",
                    help="a prepared data set (default: the one the run trained on)")
    mode = ev.add_mutually_exclusive_group()
    mode.add_argument("--ten-crop", dest="mode", action="store_const", const="ten_crop",
                      help="average the softmax of the 4 corner and center patches and their "
                           "mirror images (the paper's test; default)")
    mode.add_argument("--center", dest="mode", action="store_const", const="center",
                      help="the center patch only")
    ev.set_defaults(mode="ten_crop")
    ev.add_argument("--device", help="default: cuda:0 if present, else cpu")
    ev.add_argument("--batch-size", type=int, help="default: the run's batch size")
    ev.add_argument("--workers", type=int, help="data loader processes (default: every core)")
    ev.add_argument("--precision", choices=("fp32", "tf32", "bf16"),
                    help="the convolutions' arithmetic (default: the one the run trained with)")
    ev.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    global _DEBUG
    _DEBUG = args.debug
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
