"""``MPICommunicator``: the contract over mpi4py (see ``comm``)."""
from __future__ import annotations

import time

import numpy as np

from .base import (DEFAULT_TIMEOUT, Communicator, Pending, check_contiguous,
                   local_rank_from_environment, poll_until)
from .errors import CollectiveTimeout, failed

__all__ = ["MPICommunicator"]

_PROBE, _ANSWER = 1, 2  # tags of the fault channel


class _MPIPending(Pending):
    def __init__(self, comm: "MPICommunicator", requests, operation: str):
        self._comm, self._requests, self._operation = comm, requests, operation
        self._done = False

    def test(self) -> bool:
        if not self._done:
            self._done = self._comm._test(self._requests, self._operation)
        return self._done

    def wait(self) -> None:
        if self._done:
            return
        c = self._comm
        if poll_until(lambda: self.test() or c.notified, time.monotonic() + c.timeout,
                      c._answer_probes) and self._done:
            return
        cause = "the MPI launcher reported that a rank ended" if c.notified else ""
        raise failed(CollectiveTimeout(self._operation, c.timeout, c._missing(), c.step,
                                       cause=cause))


class MPICommunicator(Communicator):
    """mpi4py over ``comm`` (``MPI.COMM_WORLD`` by default). Collectives are the
    non-blocking ones (``Iallreduce``, ``Iallgather``, ``Ibcast``, ``Ibarrier``) polled
    with ``Test`` until ``timeout``. On a timeout the rank asks every other rank, over a
    second communicator, whether it is waiting in a collective; those that do not answer
    within a grace of ``min(2 s, timeout)`` are the ranks named.

    MPICH's launcher run with ``-disable-auto-cleanup`` tells the surviving ranks that one
    ended with SIGUSR1 (whose default action would kill them silently): where nothing
    else handles it, the signal is caught and a collective waiting then fails at once
    (``notified``)."""

    def __init__(self, comm=None, timeout: float = DEFAULT_TIMEOUT):
        from mpi4py import MPI
        self._MPI = MPI
        world = MPI.COMM_WORLD if comm is None else comm
        self._comm = world.Dup()      # our own context: never matches a caller's messages
        self._faults = world.Dup()    # the fault channel
        for c in (self._comm, self._faults):
            c.Set_errhandler(MPI.ERRORS_RETURN)
        self.rank, self.size = self._comm.Get_rank(), self._comm.Get_size()
        self.local_rank = local_rank_from_environment(self.rank)
        self.backend, self.timeout = "mpi", float(timeout)
        self._sends = []  # fault-channel sends kept alive until they complete
        self.notified = False
        _catch_failure_notice(self)

    # -- collectives
    def allreduce_start(self, arrays):
        check_contiguous(arrays, "allreduce")
        MPI = self._MPI
        reqs = self._call("allreduce", lambda: [
            self._comm.Iallreduce(MPI.IN_PLACE, a, op=MPI.SUM) for a in arrays if a.size])
        return _MPIPending(self, reqs, "allreduce")

    def allgather(self, array):
        array = np.ascontiguousarray(array)
        out = np.empty((self.size, *array.shape), dtype=array.dtype)
        req = self._call("allgather", lambda: [self._comm.Iallgather(array, out)])
        _MPIPending(self, req, "allgather").wait()
        return out

    def broadcast(self, array, root=0):
        root = self._check_root(root)
        check_contiguous([array], "broadcast")
        req = self._call("broadcast", lambda: [self._comm.Ibcast(array, root=root)])
        _MPIPending(self, req, "broadcast").wait()

    def barrier(self):
        req = self._call("barrier", lambda: [self._comm.Ibarrier()])
        _MPIPending(self, req, "barrier").wait()

    def progress(self):
        self._answer_probes()

    def close(self):
        for c in (self._comm, self._faults):
            try:
                c.Free()
            except Exception:
                pass

    # -- internals
    def _call(self, operation, start):
        try:
            return start()
        except self._MPI.Exception as e:
            raise failed(CollectiveTimeout(operation, self.timeout, self._missing(), self.step,
                                           cause=_mpi_error(e))) from None

    def _test(self, requests, operation) -> bool:
        try:
            return self._MPI.Request.Testall(requests)
        except self._MPI.Exception as e:
            raise failed(CollectiveTimeout(operation, self.timeout, self._missing(), self.step,
                                           cause=_mpi_error(e))) from None

    def _answer_probes(self) -> None:
        """Tell every rank that asked that this one is alive and inside a collective."""
        MPI = self._MPI
        try:
            status = MPI.Status()
            while self._faults.Iprobe(source=MPI.ANY_SOURCE, tag=_PROBE, status=status):
                asker = status.Get_source()
                note = np.empty(1, dtype=np.int64)
                self._faults.Recv(note, source=asker, tag=_PROBE)
                self._sends.append(self._faults.Isend(note, dest=asker, tag=_ANSWER))
            self._sends = [r for r in self._sends if not r.Test()]
        except MPI.Exception:
            pass  # the fault channel is best effort

    def _missing(self) -> tuple:
        """The ranks that do not say, within the grace, that they are alive and waiting."""
        MPI = self._MPI
        others = [r for r in range(self.size) if r != self.rank]
        answered, receives, notes = set(), {}, {}
        try:
            for r in others:
                notes[r] = np.array([self.rank], dtype=np.int64)
                self._sends.append(self._faults.Isend(notes[r], dest=r, tag=_PROBE))
                box = np.empty(1, dtype=np.int64)
                receives[r] = (self._faults.Irecv(box, source=r, tag=_ANSWER), box)
        except MPI.Exception:
            return ()

        def all_answered():
            self._answer_probes()
            for r, (req, _) in receives.items():
                if r not in answered:
                    try:
                        if req.Test():
                            answered.add(r)
                    except MPI.Exception:
                        pass
            return len(answered) == len(others)

        poll_until(all_answered, time.monotonic() + min(2.0, self.timeout))
        return tuple(r for r in others if r not in answered)


def _catch_failure_notice(comm) -> None:
    import signal
    import threading
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGUSR1"):
        return
    if signal.getsignal(signal.SIGUSR1) not in (signal.SIG_DFL, None):
        return

    def notice(signum, frame):
        comm.notified = True
    signal.signal(signal.SIGUSR1, notice)
    signal.siginterrupt(signal.SIGUSR1, False)  # SA_RESTART: MPI's own system calls go on


def _mpi_error(e) -> str:
    try:
        text = e.Get_error_string()
    except Exception:
        text = str(e)
    return " ".join(text.split())[:200]
