"""Collectives over the TCP rendezvous: torchrun-style launches on ``cpu``/``emu`` where
the processes were not started by an MPI launcher (GPUs use NCCL; mpirun uses MPI).

Rank 0 is the hub of the star: it receives every rank's arrays, sums them in rank order
(so every rank gets the same bits) and sends the result back. One worker thread runs
the operations in the order they were started, so ``allreduce_start`` returns at once
and the sockets move data while the caller computes (socket calls release the GIL).
A rank that closes its connection or misses the deadline is named; rank 0 forwards the
failure to the ranks still connected before it gives up.
"""
from __future__ import annotations

import queue
import threading
import time

import numpy as np

from .base import Communicator, Pending, check_contiguous, local_rank_from_environment
from .errors import CollectiveTimeout, failed
from .rendezvous import PeerLost, Rendezvous

__all__ = ["TCPCommunicator"]


class _Job(Pending):
    def __init__(self, comm, operation, body):
        self.comm, self.operation, self.body = comm, operation, body
        self.done, self.error = threading.Event(), None

    def test(self) -> bool:
        if self.done.is_set() and self.error is not None:
            raise self.error
        return self.done.is_set()

    def wait(self) -> None:
        # the worker has its own deadline per operation; this bound only guards the
        # queue ahead of it
        if not self.done.wait((self.comm.timeout + 2) * (self.comm._queue.qsize() + 2)):
            raise failed(CollectiveTimeout(self.operation, self.comm.timeout, (), self.comm.step))
        if self.error is not None:
            raise self.error


class TCPCommunicator(Communicator):
    """The contract over a ``Rendezvous`` (which it owns and closes)."""

    def __init__(self, rendezvous: Rendezvous, timeout: float | None = None, environ=None):
        self._rdv = rendezvous
        self.rank, self.size = rendezvous.rank, rendezvous.size
        self.local_rank = local_rank_from_environment(self.rank, environ)
        self.backend = "tcp"
        self.timeout = float(rendezvous.timeout if timeout is None else timeout)
        self._queue: queue.Queue = queue.Queue()
        self._failure = None
        # the other ranks wait on rank 0 a little longer than it waits on them, so its
        # verdict (which rank failed) reaches them before their own deadline passes
        self._grace = 0.0 if self.rank == 0 else min(2.0, self.timeout)
        self._worker = threading.Thread(target=self._run, name="convnet-tcp-collectives",
                                        daemon=True)
        self._worker.start()

    # -- collectives
    def allreduce_start(self, arrays):
        check_contiguous(arrays, "allreduce")
        return self._start("allreduce", lambda d: self._allreduce(arrays, d))

    def allgather(self, array):
        array = np.ascontiguousarray(array)
        out = np.empty((self.size, *array.shape), dtype=array.dtype)
        self._start("allgather", lambda d: self._allgather(array, out, d)).wait()
        return out

    def broadcast(self, array, root=0):
        root = self._check_root(root)
        check_contiguous([array], "broadcast")
        self._start("broadcast", lambda d: self._broadcast(array, root, d)).wait()

    def barrier(self):
        self.allreduce([np.zeros(1, dtype=np.int64)])

    def close(self):
        self._queue.put(None)
        self._rdv.close()

    # -- the star
    def _allreduce(self, arrays, deadline):
        rdv = self._rdv
        if self.rank:
            for a in arrays:
                rdv.send(0, a, deadline)
            for a in arrays:
                rdv.recv(0, deadline, into=a)
            return
        parts = {r: [np.empty_like(a) for a in arrays] for r in range(1, self.size)}
        for r in range(1, self.size):
            for p in parts[r]:
                rdv.recv(r, deadline, into=p)
        for i, a in enumerate(arrays):
            for r in range(1, self.size):  # rank order: the same sum on every run
                a += parts[r][i]
        for r in range(1, self.size):
            for a in arrays:
                rdv.send(r, a, deadline)

    def _allgather(self, array, out, deadline):
        rdv = self._rdv
        if self.rank:
            rdv.send(0, array, deadline)
            rdv.recv(0, deadline, into=out)
            return
        out[0] = array
        for r in range(1, self.size):
            rdv.recv(r, deadline, into=out[r])
        for r in range(1, self.size):
            rdv.send(r, out, deadline)

    def _broadcast(self, array, root, deadline):
        rdv = self._rdv
        if root and self.rank == root:
            rdv.send(0, array, deadline)
        elif root and self.rank == 0:
            rdv.recv(root, deadline, into=array)
        if self.rank == 0:
            for r in range(1, self.size):
                if r != root:
                    rdv.send(r, array, deadline)
        elif self.rank != root:
            rdv.recv(0, deadline, into=array)

    # -- the worker
    def _start(self, operation, body) -> _Job:
        if self._failure is not None:
            raise self._failure
        job = _Job(self, operation, body)
        self._queue.put(job)
        return job

    def _run(self):
        while True:
            job = self._queue.get()
            if job is None:
                return
            if self._failure is None:
                try:
                    job.body(time.monotonic() + self.timeout + self._grace)
                except PeerLost as e:
                    self._failure = self._as_timeout(job.operation, e)
                except Exception as e:  # noqa: BLE001 - handed to the waiting caller
                    self._failure = e
            job.error = self._failure
            job.done.set()

    def _as_timeout(self, operation, e: PeerLost) -> CollectiveTimeout:
        missing = tuple(r for r in e.missing if r >= 0)
        if e.forwarded:  # rank 0's own report of the failure
            return failed(CollectiveTimeout(operation, self.timeout, missing, self.step,
                                            message=str(e)))
        cause = "" if e.timed_out else f"rank {e.rank} closed its connection"
        error = failed(CollectiveTimeout(operation, self.timeout, missing, self.step, cause=cause))
        if self.rank == 0:
            self._rdv.abort_all(missing, str(error))
        return error
