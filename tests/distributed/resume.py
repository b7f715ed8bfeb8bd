"""A data-parallel `convnet train` resumed after its first epoch ends where the same run
uninterrupted ends (run under mpiexec -n 2): rank 0 runs the command line twice per
ARGV[1] folder, "whole" for 2 epochs, "part" for 1 then --resume for 2; the test
compares their checkpoints. Dropout on (masks per epoch), workers 0, the paper's plateau
schedule (the cosine's rates depend on the run's planned length). No
TensorBoard file and no figures (their imports cost seconds; test_train covers them).

ARGV: data folder, runs folder, and "data" (default) or "hybrid" (--parallel)"""
import sys
from pathlib import Path

from convnet.app import board, cli, show


def _no_figures(*_args, **_kwargs):
    raise show.PlotUnavailable("switched off in this test")


def args(data, out, parallel, *extra):
    return ["train", "--parallel", parallel, "--data", data, "--out", str(out), "--device", "cpu",
            "--crop", "67", "--widths", "8", "16", "16", "16", "16", "32", "32",
            "--weight-std", "0.1", "--batch-size", "6", "--workers", "0", "--no-progress",
            "--no-final-eval", "--collective-timeout", "60", "--schedule", "plateau", *extra]


def main(data, runs, parallel="data"):
    board.writer_class = lambda: None
    show.draw = _no_figures
    runs = Path(runs)
    for command in (args(data, runs / "whole", parallel, "--epochs", "2"),
                    args(data, runs / "part", parallel, "--epochs", "1"),
                    args(data, runs / "part", parallel, "--epochs", "2", "--resume")):
        code = cli.main(command)
        if code:
            sys.exit(code)


if __name__ == "__main__":
    main(*sys.argv[1:])
