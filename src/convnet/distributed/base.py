"""The communicator base (``Communicator``, ``Pending``), ``SingleProcess`` and what the
launcher's environment says (an MPI launch, the local rank). The contract is in
``comm``."""
from __future__ import annotations

import abc
import os
import pickle
import time

import numpy as np


__all__ = ["DEFAULT_TIMEOUT", "Communicator", "Pending", "SingleProcess", "check_contiguous",
           "local_rank_from_environment", "mpi_launched", "poll_until"]

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


class Communicator(abc.ABC):
    """The communicator interface (see the module's docstring): SingleProcess,
    MPICommunicator, TCPCommunicator and NCCLCommunicator implement its four transport
    operations; the object collectives are built on them here."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str = "single"
    timeout: float = DEFAULT_TIMEOUT
    step = None  # set by the caller: named in timeout messages

    def allreduce(self, arrays: list) -> None:
        self.allreduce_start(arrays).wait()

    @abc.abstractmethod
    def allreduce_start(self, arrays: list) -> Pending:
        """Start the in-place sum over ranks of each array; wait on the result."""

    @abc.abstractmethod
    def allgather(self, array):
        """A new (size, *shape) array: rank r's ``array`` at index r."""

    @abc.abstractmethod
    def broadcast(self, array, root: int = 0) -> None:
        """``array`` (in place) from ``root``."""

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

    @abc.abstractmethod
    def barrier(self) -> None:
        """Return when every rank has called it."""

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
