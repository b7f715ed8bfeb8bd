"""`convnet train --parallel data` where rank ARGV[1] kills itself with SIGKILL (as
`kill -9` would) when its step ARGV[2] begins; the other ranks must end within the
collective timeout with one `convnet train:` line naming that rank and the step.
Run under `mpiexec -disable-auto-cleanup -n N` (MPICH: the launcher leaves the other
ranks running, so they find the loss themselves) or torchrun-style variables.

ARGV: victim rank, victim step, then the `convnet train` arguments"""
import os
import signal
import sys

from convnet.app import board, cli, show
from convnet.distributed import data_parallel


def main(victim, at_step, *train_args):
    board.writer_class = lambda: None
    real_step, steps = data_parallel.DataParallel.step, [0]

    def step(self, *args, **kwargs):
        steps[0] += 1
        if self.comm.rank == int(victim) and steps[0] == int(at_step):
            os.kill(os.getpid(), signal.SIGKILL)
        return real_step(self, *args, **kwargs)

    data_parallel.DataParallel.step = step
    sys.exit(cli.main(["train", *train_args]))


if __name__ == "__main__":
    main(*sys.argv[1:])
