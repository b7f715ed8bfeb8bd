"""`convnet train --parallel data` where rank ARGV[1] sends itself signal ARGV[3] when
its step ARGV[2] begins: KILL (as `kill -9` would: a rank that dies) or STOP (a rank
that hangs); the other ranks must end within the collective timeout with one
`convnet train:` line naming that rank and the step.

ARGV: victim rank, victim step, KILL or STOP, then the `convnet train` arguments"""
import os
import signal
import sys

from convnet.app import board, cli, show
from convnet.distributed import data_parallel


def main(victim, at_step, how, *train_args):
    board.writer_class = lambda: None
    real_step, steps = data_parallel.DataParallel.step, [0]

    def step(self, *args, **kwargs):
        steps[0] += 1
        if self.comm.rank == int(victim) and steps[0] == int(at_step):
            os.kill(os.getpid(), getattr(signal, "SIG" + how))
        return real_step(self, *args, **kwargs)

    data_parallel.DataParallel.step = step
    sys.exit(cli.main(["train", *train_args]))


if __name__ == "__main__":
    main(*sys.argv[1:])
