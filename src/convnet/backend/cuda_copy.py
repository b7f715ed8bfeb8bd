"""GPU-to-GPU copies: the plans of ``backend.crossing`` run with CuPy.

``copy(cupy, array, index, path)`` gives ``array`` (a CuPy array on another GPU) on GPU
``index``, along the path ``crossing.path`` chose: ``cudaMemcpyPeerAsync`` where
``cudaDeviceCanAccessPeer`` allows (peer access enabled once per pair), else staged
through pinned host memory. The copies run on one non-blocking copy stream per GPU,
ordered by events against the producer's and the consumer's current streams (each
column's own stream: each GPU's current one), so neither the host nor the producing
column waits. The source array (and the pinned buffer) is kept alive until the copy's
event has completed (``_HELD``, trimmed at every copy and emptied by ``drain``).
Imports no CuPy itself: the caller passes the module.
"""
from __future__ import annotations

import threading

from . import crossing

_ALREADY_ENABLED = 704  # cudaErrorPeerAccessAlreadyEnabled

_LOCK = threading.Lock()
_COPY_STREAMS: dict[int, object] = {}    # GPU index -> its copy stream
_PEERS: dict[tuple[int, int], bool] = {}  # (source, destination) -> peer copies allowed
_HELD: list[tuple[object, list]] = []     # (event, arrays kept alive until it completes)


def can_access_peer(cupy, source: int, destination: int) -> bool:
    """Whether GPU ``destination`` may read GPU ``source``'s memory; when it may, peer
    access is enabled (once per pair and process)."""
    key = (source, destination)
    with _LOCK:
        if key not in _PEERS:
            runtime = cupy.cuda.runtime
            allowed = bool(runtime.deviceCanAccessPeer(destination, source))
            if allowed:
                with cupy.cuda.Device(destination):
                    try:
                        runtime.deviceEnablePeerAccess(source)
                    except runtime.CUDARuntimeError as exc:
                        if getattr(exc, "status", None) != _ALREADY_ENABLED:
                            raise
            _PEERS[key] = allowed
        return _PEERS[key]


def copy_stream(cupy, index: int):
    """GPU ``index``'s copy stream (non-blocking: it never waits for the legacy default
    stream implicitly), made on first use."""
    with _LOCK:
        stream = _COPY_STREAMS.get(index)
        if stream is None:
            with cupy.cuda.Device(index):
                stream = _COPY_STREAMS[index] = cupy.cuda.Stream(non_blocking=True)
        return stream


def drain() -> None:
    """Forget the arrays held for copies that have completed."""
    with _LOCK:
        _HELD[:] = [(event, arrays) for event, arrays in _HELD if not event.done]


class _Ops:
    """``crossing.run``'s operations on CuPy: the named streams of one crossing."""

    def __init__(self, cupy, array, index: int):
        self.cp = cupy
        self.gpu = {"src": array.device.id, "dst": index, "src_copy": array.device.id,
                    "dst_copy": index}
        self.buffers = {"in": array}
        self.events: dict[str, object] = {}

    def _stream(self, name: str):
        if name.endswith("_copy"):
            return copy_stream(self.cp, self.gpu[name])
        with self.cp.cuda.Device(self.gpu[name]):
            return self.cp.cuda.get_current_stream()

    def record(self, event: str, stream: str) -> None:
        with self.cp.cuda.Device(self.gpu[stream]):
            made = self.cp.cuda.Event(block=False, disable_timing=True)
            made.record(self._stream(stream))
        self.events[event] = made

    def wait(self, stream: str, event: str) -> None:
        with self.cp.cuda.Device(self.gpu[stream]):
            self._stream(stream).wait_event(self.events[event])

    def alloc(self, buffer: str, where: str) -> None:
        source = self.buffers["in"]
        if where == "host":
            self.buffers[buffer] = self.cp.cuda.alloc_pinned_memory(source.nbytes)
            return
        with self.cp.cuda.Device(self.gpu[where]):  # from that stream's pool
            self.buffers[buffer] = self.cp.empty(source.shape, dtype=source.dtype)

    def copy(self, kind: str, stream: str, source: str, target: str) -> None:
        runtime = self.cp.cuda.runtime
        src, dst = self.buffers[source], self.buffers[target]
        nbytes, ptr = self.buffers["in"].nbytes, self._stream(stream).ptr
        with self.cp.cuda.Device(self.gpu[stream]):
            if kind == "peer":
                runtime.memcpyPeerAsync(dst.data.ptr, self.gpu["dst"], src.data.ptr,
                                        self.gpu["src"], nbytes, ptr)
            elif kind == "d2h":
                runtime.memcpyAsync(dst.ptr, src.data.ptr, nbytes, runtime.memcpyDeviceToHost,
                                    ptr)
            else:
                runtime.memcpyAsync(dst.data.ptr, src.ptr, nbytes, runtime.memcpyHostToDevice,
                                    ptr)

    def hold(self, buffers, event: str) -> None:
        with _LOCK:
            _HELD.append((self.events[event], [self.buffers[b] for b in buffers]))

    def buffer(self, name: str):
        return self.buffers[name]


def copy(cupy, array, index: int, path: str):
    """``array`` (C-contiguous or not, on a GPU) as a new array on GPU ``index``, along
    ``path``, "peer" or "staged" (``crossing.path`` decides; a GPU check may force
    either between two streams of one GPU)."""
    if path not in ("peer", "staged"):
        raise ValueError(f"cuda_copy: a GPU-to-GPU copy goes 'peer' or 'staged', not {path!r}")
    with cupy.cuda.Device(array.device.id):  # on the producer's stream, before "produced"
        array = cupy.ascontiguousarray(array)
    drain()
    if array.size == 0:
        with cupy.cuda.Device(index):
            return cupy.empty(array.shape, dtype=array.dtype)
    return crossing.run(crossing.steps(path), _Ops(cupy, array, index))
