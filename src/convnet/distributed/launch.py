"""Which communicator a process gets from its launcher's environment, and its device.

- mpirun / mpiexec (Open MPI, MPICH/Hydra, Intel MPI, MVAPICH, srun with PMI): MPI
  over ``COMM_WORLD``; on ``cuda`` NCCL, its unique id broadcast over MPI.
- torchrun-style variables (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``,
  ``LOCAL_RANK``): the TCP rendezvous at ``MASTER_ADDR:MASTER_PORT``; on ``cuda`` NCCL
  (the unique id over the rendezvous), on ``cpu``/``emu`` the rendezvous's own
  collectives (``TCPCommunicator``).
- neither: ``SingleProcess``.
"""
from __future__ import annotations

import os

from .base import (DEFAULT_TIMEOUT, Communicator, SingleProcess, local_rank_from_environment,
                   mpi_launched)
from .mpi import MPICommunicator

__all__ = ["LaunchError", "communicator_for", "device_for_rank", "end_job", "launched_size",
           "torchrun_variables"]


class LaunchError(ValueError):
    """The launcher's environment cannot start a job (a usage error)."""


def torchrun_variables(environ) -> dict | None:
    """``{rank, size, addr, port}`` from torchrun-style variables, ``None`` when absent."""
    if "RANK" not in environ and "WORLD_SIZE" not in environ:
        return None
    values = {}
    for name in ("RANK", "WORLD_SIZE"):
        text = environ.get(name, "").strip()
        if not text.isdigit():
            raise LaunchError(f"{name}={text!r}: torchrun-style launches need RANK and "
                              "WORLD_SIZE as non-negative integers")
        values[name] = int(text)
    rank, size = values["RANK"], values["WORLD_SIZE"]
    if size < 1 or rank >= size:
        raise LaunchError(f"RANK={rank} with WORLD_SIZE={size}: the rank must be below the size")
    addr = environ.get("MASTER_ADDR", "").strip()
    port = environ.get("MASTER_PORT", "").strip()
    if size > 1 and (not addr or not port.isdigit() or not 0 < int(port) < 65536):
        raise LaunchError(f"MASTER_ADDR={addr!r} MASTER_PORT={port!r}: a torchrun-style launch "
                          "of several ranks needs rank 0's host and a free TCP port")
    return {"rank": rank, "size": size, "addr": addr, "port": int(port) if port else 0}


def launched_size(environ=None) -> int | None:
    """The number of ranks the launcher started (mpirun/mpiexec, srun with PMI, or
    ``WORLD_SIZE``), or None when nothing says."""
    environ = os.environ if environ is None else environ
    for name in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE", "WORLD_SIZE"):
        text = environ.get(name, "").strip()
        if text.isdigit():
            return int(text)
    return None


_RANKS: list[int] = []  # the rank of each communicator communicator_for made here


def end_job(code: int) -> None:
    """After a failed collective, end this process with ``code`` (its output flushed)
    without waiting on the others: a normal exit could wait forever in MPI_Finalize or on
    a peer. A launcher ends the whole job when one rank exits without finalizing, so a
    rank > 0 first gives rank 0 a moment (``FOLLOWER_GRACE`` s) to record the failure in
    the run folder and print its line; rank 0 goes at once."""
    import sys
    import time
    from .errors import collective_failed
    if collective_failed():
        sys.stdout.flush()
        sys.stderr.flush()
        time.sleep(FOLLOWER_GRACE if any(_RANKS) else 0.5)  # the launcher forwards the output
        os._exit(code or 1)


FOLLOWER_GRACE = 3.0


def _is_cuda(device) -> bool:
    return device is not None and str(device).startswith("cuda")


def device_for_rank(device: str, local_rank: int, size: int) -> str:
    """``cuda`` (or ``cuda:0``) becomes ``cuda:LOCAL_RANK`` when the job has several ranks;
    another explicit index is kept (a one-rank-per-node layout); cpu/emu unchanged."""
    if size > 1 and str(device) in ("cuda", "cuda:0"):
        return f"cuda:{local_rank}"
    return str(device)


def communicator_for(timeout: float = DEFAULT_TIMEOUT, device: str | None = None,
                     environ=None) -> Communicator:
    environ = os.environ if environ is None else environ
    cuda = _is_cuda(device)
    if mpi_launched(environ):
        try:
            import mpi4py  # noqa: F401
        except ImportError:
            raise LaunchError("started by mpirun/mpiexec, but mpi4py is not installed "
                              "(pip install 'convnet[mpi]')") from None
        comm = MPICommunicator(timeout=timeout)
        _RANKS.append(comm.rank)
        if cuda and comm.size == 1:  # CuPy arrays never go through a host MPI
            return SingleProcess(timeout=timeout)
        return _nccl_over(comm, device) if cuda else comm
    variables = torchrun_variables(environ)
    if variables is None or variables["size"] == 1:
        single = SingleProcess(timeout=timeout)
        single.local_rank = local_rank_from_environment(0, environ)
        return single
    from .rendezvous import PeerLost, Rendezvous
    from .tcp import TCPCommunicator
    try:
        rdv = Rendezvous(variables["addr"], variables["port"], variables["rank"],
                         variables["size"], timeout)
    except PeerLost as e:
        from .errors import CollectiveTimeout, failed
        raise failed(CollectiveTimeout("rendezvous", timeout, e.missing, None,
                                       message=f"rendezvous: {e}")) from None
    except OSError as e:
        raise LaunchError(f"rendezvous at {variables['addr']}:{variables['port']}: {e}") from None
    comm = TCPCommunicator(rdv, timeout, environ)
    _RANKS.append(comm.rank)
    return _nccl_over(comm, device) if cuda else comm


def _nccl_over(bootstrap: Communicator, device: str) -> Communicator:
    try:
        from .nccl import NCCLCommunicator
        import cupy  # noqa: F401
    except ImportError:
        raise LaunchError(f"device {device} with {bootstrap.size} ranks needs CuPy and NCCL "
                          "(pip install 'convnet[cuda12]' or 'convnet[cuda13]')") from None
    index = device_for_rank(device, bootstrap.local_rank, bootstrap.size).split(":")[1]
    return NCCLCommunicator(bootstrap, int(index))
