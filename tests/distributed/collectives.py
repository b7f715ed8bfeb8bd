"""The communicator contract over real ranks (mpiexec -n N, or torchrun-style variables):
each collective's result checked on every rank (an AssertionError fails the rank), then
the last rank stops answering (it sleeps) during an all-reduce at step 7: every other
rank must raise CollectiveTimeout naming it and the step, and prints that line.

ARGV: timeout (seconds)"""
import sys
import time

import numpy as np

from convnet.distributed import CollectiveTimeout, from_environment


def main(timeout):
    comm = from_environment(timeout=float(timeout))
    r, k = comm.rank, comm.size
    arrays = [np.full(5, r + 1.0), np.arange(4, dtype=np.float32) * (r + 1)]
    comm.allreduce(arrays)
    total = k * (k + 1) / 2
    assert (arrays[0] == total).all() and (arrays[1] == np.arange(4) * total).all()
    pending = comm.allreduce_start([np.ones(3, dtype=np.int64)])
    pending.wait()
    got = comm.allgather(np.array([r, 10 * r]))
    assert got.shape == (k, 2) and (got[:, 1] == 10 * np.arange(k)).all()
    b = np.arange(3.0) if r == k - 1 else np.zeros(3)
    comm.broadcast(b, root=k - 1)
    assert (b == np.arange(3.0)).all()
    assert comm.broadcast_object({"from": r}, root=k - 1) == {"from": k - 1}
    assert comm.allgather_object(("rank", r)) == [("rank", i) for i in range(k)]
    comm.barrier()
    comm.step = 7
    if r == k - 1:
        time.sleep(3 * float(timeout) + 10)
        comm.abort(0)
    try:
        comm.allreduce([np.ones(2)])
    except CollectiveTimeout as e:
        # one write of the whole line: print's text and newline are two writes when
        # unbuffered (PYTHONUNBUFFERED), and the ranks share the pipe
        sys.stdout.write(f"rank {r}: {e}\n")
        sys.stdout.flush()
        comm.abort(3)
    comm.abort(4)  # the all-reduce must not complete


if __name__ == "__main__":
    main(*sys.argv[1:])
