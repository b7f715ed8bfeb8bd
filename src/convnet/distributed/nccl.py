"""NCCL collectives on CuPy arrays (``cupy.cuda.nccl``), for one process per GPU.

The unique id travels over a bootstrap communicator (MPI under mpirun, the TCP
rendezvous under torchrun-style variables). Each collective is queued on a
communication stream that first waits for the current stream (so it reads finished
gradients); its completion is an event polled until the timeout; past it the NCCL
communicator is aborted (``ncclCommAbort``) and ``CollectiveTimeout`` raised, naming the
ranks the bootstrap finds silent. Host (NumPy) arrays are staged through the device, so
the contract's ``broadcast_object`` and ``allgather_object`` work unchanged.
"""
from __future__ import annotations

import time

import numpy as np

from .base import Communicator, Pending, check_contiguous, poll_until
from .errors import CollectiveTimeout, failed

__all__ = ["NCCLCommunicator"]


def _nccl_type(nccl, dtype) -> int:
    names = {"float16": "NCCL_FLOAT16", "float32": "NCCL_FLOAT32", "float64": "NCCL_FLOAT64",
             "int8": "NCCL_INT8", "uint8": "NCCL_UINT8", "int32": "NCCL_INT32",
             "int64": "NCCL_INT64", "uint32": "NCCL_UINT32", "uint64": "NCCL_UINT64"}
    name = names.get(np.dtype(dtype).name)
    if name is None:
        raise ValueError(f"NCCL collectives: dtype {np.dtype(dtype).name} is not supported")
    return getattr(nccl, name)


class _NCCLPending(Pending):
    def __init__(self, comm, event, operation, after=None):
        self._comm, self._event, self._operation, self._after = comm, event, operation, after
        self._done = False

    def test(self) -> bool:
        if not self._done and self._event.done:
            self._done = True
            if self._after is not None:
                self._after()
        return self._done

    def wait(self) -> None:
        if poll_until(self.test, time.monotonic() + self._comm.timeout):
            return
        self._comm._fail(self._operation)


class NCCLCommunicator(Communicator):
    """The contract over NCCL for CuPy arrays on ``cuda:device`` (see the module)."""

    def __init__(self, bootstrap: Communicator, device: int, timeout: float | None = None):
        import cupy
        from cupy.cuda import nccl
        self._cp, self._nccl, self._bootstrap = cupy, nccl, bootstrap
        self.rank, self.size, self.local_rank = bootstrap.rank, bootstrap.size, bootstrap.local_rank
        self.backend = "nccl"
        self.timeout = float(bootstrap.timeout if timeout is None else timeout)
        self.device = int(device)
        cupy.cuda.Device(self.device).use()
        uid = bootstrap.broadcast_object(nccl.get_unique_id() if self.rank == 0 else None)
        self._comm = nccl.NcclCommunicator(self.size, uid, self.rank)
        self._stream = cupy.cuda.Stream(non_blocking=True)

    def _enqueue(self, operation, issue, after=None) -> _NCCLPending:
        cp = self._cp
        ready = cp.cuda.Event(disable_timing=True)
        ready.record(cp.cuda.get_current_stream())
        self._stream.wait_event(ready)
        issue(self._stream.ptr)
        done = cp.cuda.Event(disable_timing=True)
        done.record(self._stream)
        return _NCCLPending(self, done, operation, after)

    def _device(self, array):
        return (self._cp.asarray(array), True) if isinstance(array, np.ndarray) else (array, False)

    def allreduce_start(self, arrays):
        check_contiguous(arrays, "allreduce")
        staged = [self._device(a) for a in arrays]
        nccl = self._nccl

        def issue(stream):
            nccl.groupStart()
            for d, _ in staged:
                if d.size:
                    self._comm.allReduce(d.data.ptr, d.data.ptr, d.size,
                                         _nccl_type(nccl, d.dtype), nccl.NCCL_SUM, stream)
            nccl.groupEnd()

        def back():
            for a, (d, host) in zip(arrays, staged):
                if host:
                    a[...] = d.get()
        return self._enqueue("allreduce", issue, back)

    def allgather(self, array):
        host = isinstance(array, np.ndarray)
        d = self._cp.ascontiguousarray(self._cp.asarray(array))
        out = self._cp.empty((self.size, *d.shape), dtype=d.dtype)
        nccl = self._nccl
        self._enqueue("allgather", lambda s: self._comm.allGather(
            d.data.ptr, out.data.ptr, d.size, _nccl_type(nccl, d.dtype), s)).wait()
        return out.get() if host else out

    def broadcast(self, array, root=0):
        root = self._check_root(root)
        check_contiguous([array], "broadcast")
        d, host = self._device(array)
        nccl = self._nccl
        self._enqueue("broadcast", lambda s: self._comm.bcast(
            d.data.ptr, d.size, _nccl_type(nccl, d.dtype), root, s)).wait()
        if host:
            array[...] = d.get()

    def barrier(self):
        self.allreduce([self._cp.zeros(1, dtype=self._cp.float32)])

    def close(self):
        try:
            self._comm.destroy()
        except Exception:
            pass
        self._bootstrap.close()

    def _fail(self, operation):
        try:
            self._comm.abort()
        except Exception:
            pass
        missing = getattr(self._bootstrap, "_missing", lambda: ())()
        raise failed(CollectiveTimeout(operation, self.timeout, missing, self.step))
