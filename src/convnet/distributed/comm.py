"""The communicator contract: collectives over the ranks of a job, each with a timeout.

Every method is collective: every rank calls the same ones in the same order.

- ``allreduce(arrays)``: in place, the elementwise SUM over ranks of each array.
- ``allgather(array)``: a new array ``(size, *array.shape)``, rank r's part at index r.
- ``broadcast(array, root=0)``: in place.  ``broadcast_object(obj, root=0)``: returns it.
- ``barrier()``.
- Additions: ``allreduce_start(arrays)`` returns a ``Pending`` (``test()``, ``wait()``),
  the non-blocking form the data-parallel buckets use; ``allgather_object(obj)``;
  ``progress()`` (lets a library that only progresses inside its calls move pending
  operations on); ``abort(code)`` (end this process without waiting on the others);
  ``local_rank``.

Every call raises ``CollectiveTimeout`` rather than wait past ``timeout`` seconds; its
message names the operation, the ranks that did not answer when that is known, and
``comm.step`` when the caller set it. Backends: ``SingleProcess`` (size 1, the same code
paths in one process), ``MPICommunicator`` (mpi4py, NumPy arrays), ``NCCLCommunicator``
(``convnet.distributed.nccl``, CuPy arrays) and ``TCPCommunicator``
(``convnet.distributed.tcp``: torchrun-style variables on cpu/emu where there is no MPI).
``from_environment`` picks one from the launcher's environment variables.
"""
from __future__ import annotations

import os
import pickle
import time

import numpy as np

from .errors import CollectiveTimeout, failed

__all__ = ["DEFAULT_TIMEOUT", "Communicator", "MPICommunicator", "Pending", "SingleProcess",
           "from_environment", "mpi_launched"]

DEFAULT_TIMEOUT = 300.0


class Pending:
    """A collective under way: ``test()`` says whether it is done (and moves it on),
    ``wait()`` waits until it is, raising ``CollectiveTimeout`` past the deadline."""

    def test(self) -> bool:
        return True

    def wait(self) -> None:
        return None


def poll_until(done, deadline: float, on_wait=None) -> bool:
    """Call ``done()`` until it is true or ``deadline`` (``time.monotonic``) passes; spins
    briefly, then sleeps up to 2 ms between calls (machines are shared). True when done."""
    spins, pause = 0, 0.0
    while True:
        if done():
            return True
        if time.monotonic() >= deadline:
            return False
        if on_wait is not None:
            on_wait()
        spins += 1
        if spins > 50:
            pause = min(0.002, pause + 0.0001)
            time.sleep(pause)


class Communicator:
    """The abstract communicator (see the module's docstring)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str = "single"
    timeout: float = DEFAULT_TIMEOUT
    step = None  # set by the caller: named in timeout messages

    def allreduce(self, arrays: list) -> None:
        self.allreduce_start(arrays).wait()

    def allreduce_start(self, arrays: list) -> Pending:
        raise NotImplementedError

    def allgather(self, array):
        raise NotImplementedError

    def broadcast(self, array, root: int = 0) -> None:
        raise NotImplementedError

    def broadcast_object(self, obj, root: int = 0):
        """``obj`` from ``root`` (a small picklable object): its length, then its bytes."""
        root = self._check_root(root)
        blob = np.frombuffer(pickle.dumps(obj), dtype=np.uint8) if self.rank == root else None
        n = np.array([blob.size if blob is not None else 0], dtype=np.int64)
        self.broadcast(n, root)
        buf = blob.copy() if blob is not None else np.empty(int(n[0]), dtype=np.uint8)
        self.broadcast(buf, root)
        return obj if self.rank == root else pickle.loads(buf.tobytes())

    def allgather_object(self, obj) -> list:
        """Every rank's ``obj``, in rank order (small picklable objects)."""
        blob = np.frombuffer(pickle.dumps(obj), dtype=np.uint8)
        sizes = self.allgather(np.array([blob.size], dtype=np.int64))[:, 0]
        padded = np.zeros(int(sizes.max()), dtype=np.uint8)
        padded[:blob.size] = blob
        rows = self.allgather(padded)
        return [pickle.loads(rows[r, :int(n)].tobytes()) for r, n in enumerate(sizes)]

    def barrier(self) -> None:
        raise NotImplementedError

    def progress(self) -> None:
        return None

    def abort(self, code: int = 1) -> None:
        """End this process now (after a failed collective the others may never answer,
        and a normal exit could wait on them)."""
        import sys
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    def close(self) -> None:
        return None

    def _check_root(self, root: int) -> int:
        root = int(root)
        if not 0 <= root < self.size:
            raise ValueError(f"root {root} is not a rank of this job (0..{self.size - 1})")
        return root

    def __repr__(self) -> str:
        return f"<{type(self).__name__} rank {self.rank} of {self.size} ({self.backend})>"


def check_contiguous(arrays, operation: str) -> None:
    for a in arrays:
        if not a.flags.c_contiguous:
            raise ValueError(f"{operation}: arrays must be C-contiguous (got one of shape "
                             f"{tuple(a.shape)} that is not)")


class SingleProcess(Communicator):
    """One process: size 1, rank 0; every operation a no-op or a copy."""

    def __init__(self, timeout: float = DEFAULT_TIMEOUT):
        self.rank, self.size, self.local_rank = 0, 1, 0
        self.backend, self.timeout = "single", float(timeout)

    def allreduce_start(self, arrays):
        check_contiguous(arrays, "allreduce")
        return Pending()

    def allgather(self, array):
        return array[None].copy()

    def broadcast(self, array, root=0):
        self._check_root(root)

    def broadcast_object(self, obj, root=0):
        self._check_root(root)
        return pickle.loads(pickle.dumps(obj))

    def allgather_object(self, obj):
        return [pickle.loads(pickle.dumps(obj))]

    def barrier(self):
        return None


# --- MPI -------------------------------------------------------------------------

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


# --- which communicator ------------------------------------------------------------

_MPI_SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS",
                       "MV2_COMM_WORLD_SIZE", "PMI_RANK")
_LOCAL_RANK_VARIABLES = ("LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID",
                         "MV2_COMM_WORLD_LOCAL_RANK", "PMI_LOCAL_RANK", "SLURM_LOCALID")


def mpi_launched(environ=None) -> bool:
    """Started by mpirun/mpiexec (Open MPI, MPICH/Hydra, Intel MPI, MVAPICH, PMIx)."""
    environ = os.environ if environ is None else environ
    return any(v in environ for v in _MPI_SIZE_VARIABLES)


def local_rank_from_environment(rank: int = 0, environ=None) -> int:
    """This process's index among the job's processes on its node, from the launcher."""
    environ = os.environ if environ is None else environ
    for v in _LOCAL_RANK_VARIABLES:
        if environ.get(v, "").strip().isdigit():
            return int(environ[v])
    return 0


def from_environment(timeout: float = DEFAULT_TIMEOUT, device: str | None = None,
                     environ=None) -> Communicator:
    """The communicator this process was launched for:

    - mpirun/mpiexec (``OMPI_COMM_WORLD_SIZE``, ``PMI_SIZE``, ``PMI_RANK``,
      ``MPI_LOCALNRANKS``, ...): MPI (``MPICommunicator``);
    - torchrun-style (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``,
      ``LOCAL_RANK``): the TCP rendezvous at ``MASTER_ADDR:MASTER_PORT`` joins the ranks;
    - neither: ``SingleProcess()``.

    ``device`` ``cuda...``: NCCL over the ranks (the unique id travels over MPI or the
    rendezvous), on ``cuda:LOCAL_RANK``; else the collectives run on the host.
    """
    from .launch import communicator_for
    return communicator_for(timeout=timeout, device=device,
                            environ=os.environ if environ is None else environ)
