"""Data-parallel SGD against one process (run under mpiexec -n N, or with torchrun-style
variables): a tiny AlexNet in float64 with dropout 0.5 after fc6 and fc7 (each rank
draws its rows of the one-process masks), batches of 6, 5, 2 and 4 images (the 2 leaves
a rank of 3 with none: its dropout seeds must still advance for the next step),
gradients in 4 KB buckets. Rank 0 then trains the same network
alone on the whole batches and writes to ARGV[1] (JSON): the largest difference of any
parameter relative to its largest element, whether all ranks hold the same bits, how
many buckets there were and how many started during a backward pass.

ARGV: out.json [timeout]"""
import json
import sys

import numpy as np

from convnet.distributed import DataParallel, from_environment
from convnet.models import alexnet
from convnet.optim import SGD
from convnet.step import train_step

BATCHES = (6, 5, 2, 4)
KW = dict(num_classes=3, input_size=67, widths=(8, 16, 16, 16, 16, 32, 32), weight_std=0.1,
          seed=0, dropout=0.5, dtype=np.float64)


def batch(step, n):
    rng = np.random.default_rng([7, step])
    return rng.standard_normal((n, 3, 67, 67)), rng.integers(0, 3, n)


def main(out, timeout=60.0):
    comm = from_environment(timeout=timeout)
    model = alexnet(**KW)
    if comm.rank:  # a wrong start on the other ranks: the broadcast must replace it
        for p in model.parameters():
            p.data += 1.0
    optimizer = SGD(model, lr=0.05, momentum=0.9, weight_decay=0.0005)
    dp = DataParallel(model, optimizer, comm, bucket_bytes=4096)
    dp.broadcast_state()
    started = 0
    for step, n in enumerate(BATCHES):
        images, labels = batch(step, n)
        mine = np.array_split(np.arange(n), comm.size)[comm.rank]
        result = dp.step(images[mine], labels[mine], n)
        started += dp.buckets.started_during_backward
        assert np.isfinite(result.loss)
    flat = np.concatenate([p.data.ravel() for p in model.parameters()])
    every = comm.allgather(flat)
    if comm.rank == 0:
        alone = alexnet(**KW)
        opt = SGD(alone, lr=0.05, momentum=0.9, weight_decay=0.0005)
        for step, n in enumerate(BATCHES):
            train_step(alone, opt, *batch(step, n))
        rel = max(float(np.abs(a.data - b.data).max() / np.abs(b.data).max())
                  for a, b in zip(model.parameters(), alone.parameters()))
        with open(out, "w") as f:
            json.dump({"ranks": comm.size, "backend": comm.backend, "max_relative": rel,
                       "same_on_every_rank": bool((every == every[0]).all()),
                       "buckets": len(dp.buckets.buckets), "started_in_backward": started,
                       "last_loss": result.loss}, f)
    comm.barrier()


if __name__ == "__main__":
    main(sys.argv[1], *map(float, sys.argv[2:]))
