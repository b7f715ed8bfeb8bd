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

from .base import (DEFAULT_TIMEOUT, Communicator, Pending, SingleProcess, check_contiguous,
                   local_rank_from_environment, mpi_launched, poll_until)
from .mpi import MPICommunicator

__all__ = ["DEFAULT_TIMEOUT", "Communicator", "MPICommunicator", "Pending", "SingleProcess",
           "check_contiguous", "from_environment", "local_rank_from_environment",
           "mpi_launched", "poll_until"]


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
