"""The TCP rendezvous of torchrun-style launches: rank 0 listens on
``MASTER_ADDR:MASTER_PORT``, every other rank connects to it (retrying until the
timeout) and says who it is. What comes out is a star of sockets with framed messages:
rank 0 holds one socket per rank, the others one socket to rank 0.

A frame is an 8-byte header (``kind``: 1 byte, length: 7 bytes, big-endian) and its
payload. Kind 0 carries data; kind 1 an abort from rank 0 (its payload the pickled
``(missing ranks, message)``, raised as ``PeerLost(forwarded=True)``), so a rank waiting on rank 0 learns which rank failed.
Every read and write has a deadline; a peer that closes its socket or misses the
deadline raises ``PeerLost`` naming it.
"""
from __future__ import annotations

import pickle
import socket
import struct
import time

__all__ = ["PeerLost", "Rendezvous"]

DATA, ABORT = 0, 1
_HELLO = b"convnet-rendezvous-1"


class PeerLost(RuntimeError):
    """``rank`` closed its connection, or did not answer by the deadline (``timed_out``)."""

    def __init__(self, rank: int, timed_out: bool, detail: str = "", missing=None,
                 forwarded: bool = False):
        self.rank, self.timed_out, self.forwarded = rank, timed_out, forwarded
        self.missing = (rank,) if missing is None else tuple(missing)
        super().__init__(detail or (f"rank {rank} did not answer in time" if timed_out
                                    else f"rank {rank} closed its connection"))


class Rendezvous:
    """The star of sockets (see the module's docstring). ``rank``, ``size``, ``peers``
    (rank 0: ``{rank: socket}``; others: ``{0: socket}``)."""

    def __init__(self, addr: str, port: int, rank: int, size: int, timeout: float):
        if not 0 <= rank < size:
            raise ValueError(f"RANK {rank} is not below WORLD_SIZE {size}")
        self.rank, self.size, self.timeout = int(rank), int(size), float(timeout)
        self.addr, self.port = addr, int(port)
        deadline = time.monotonic() + self.timeout
        self.peers = self._listen(deadline) if rank == 0 else self._connect(deadline)

    # -- setting up
    def _listen(self, deadline):
        server = socket.create_server(("", self.port), reuse_port=False)
        server.settimeout(0.2)
        peers, waiting = {}, set(range(1, self.size))
        try:
            while waiting:
                if time.monotonic() >= deadline:
                    raise PeerLost(min(waiting), True, missing=waiting, detail=(
                        f"rendezvous on port {self.port}: ranks {sorted(waiting)} did not "
                        f"join within {self.timeout:g} s"))
                try:
                    conn, _ = server.accept()
                except socket.timeout:
                    continue
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                hello = pickle.loads(self._recv_frame(conn, -1, deadline)[1])
                if hello.get("magic") != _HELLO or hello.get("size") != self.size \
                        or hello.get("rank") not in waiting:
                    self._send_frame(conn, ABORT, pickle.dumps(((), (
                        f"refused at the rendezvous: rank 0 expects WORLD_SIZE {self.size} "
                        f"and one of ranks {sorted(waiting)}, got {hello}"))), deadline)
                    conn.close()
                    continue
                peers[hello["rank"]] = conn
                waiting.discard(hello["rank"])
        finally:
            server.close()
        for conn in peers.values():
            self._send_frame(conn, DATA, b"ok", deadline)
        return peers

    def _connect(self, deadline):
        last = None
        while time.monotonic() < deadline:
            try:
                conn = socket.create_connection((self.addr, self.port), timeout=2.0)
                break
            except OSError as e:
                last = e
                time.sleep(0.2)
        else:
            raise PeerLost(0, True, detail=(
                f"rendezvous: rank 0 at {self.addr}:{self.port} not reachable within "
                f"{self.timeout:g} s ({last})"))
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._send_frame(conn, DATA, pickle.dumps(
            {"magic": _HELLO, "rank": self.rank, "size": self.size}), deadline)
        self._recv_frame(conn, 0, deadline)  # rank 0's "ok" once every rank joined
        return {0: conn}

    # -- frames
    def send(self, rank: int, payload: bytes, deadline: float, kind: int = DATA) -> None:
        self._send_frame(self.peers[rank], kind, payload, deadline, rank)

    def recv(self, rank: int, deadline: float, into=None) -> bytes:
        """The next data frame from ``rank``; ``into`` (a writable buffer of the exact
        size) receives it without a copy. An abort frame raises ``PeerLost``."""
        return self._recv_frame(self.peers[rank], rank, deadline, into)[1]

    def abort_all(self, missing, message: str) -> None:
        """Rank 0: tell every rank still connected that the job failed (best effort)."""
        blob = pickle.dumps((tuple(missing), message))
        for r, conn in self.peers.items():
            if r not in missing:
                try:
                    self._send_frame(conn, ABORT, blob, time.monotonic() + 1.0, r)
                except (OSError, PeerLost):
                    pass

    def close(self) -> None:
        for conn in self.peers.values():
            try:
                conn.close()
            except OSError:
                pass
        self.peers = {}

    def _send_frame(self, conn, kind, payload, deadline, rank=-1):
        view = memoryview(payload).cast("B")
        header = struct.pack(">Q", (kind << 56) | view.nbytes)
        try:
            conn.settimeout(max(0.001, deadline - time.monotonic()))
            conn.sendall(header)
            conn.sendall(view)
        except socket.timeout:
            raise PeerLost(rank, True) from None
        except OSError:
            raise PeerLost(rank, False) from None

    def _recv_frame(self, conn, rank, deadline, into=None):
        header = bytearray(8)
        self._recv_exact(conn, memoryview(header), rank, deadline)
        (word,) = struct.unpack(">Q", header)
        kind, n = word >> 56, word & ((1 << 56) - 1)
        if kind == ABORT:
            blob = bytearray(n)
            self._recv_exact(conn, memoryview(blob), rank, deadline)
            missing, message = pickle.loads(bytes(blob))
            raise PeerLost(missing[0] if missing else rank, False, detail=message,
                           missing=missing, forwarded=True)
        if into is not None:
            view = memoryview(into).cast("B")
            if view.nbytes != n:
                raise PeerLost(rank, False, detail=(
                    f"rank {rank} sent {n} bytes where {view.nbytes} were expected "
                    "(ranks disagree on the arrays of a collective)"))
            self._recv_exact(conn, view, rank, deadline)
            return kind, None
        blob = bytearray(n)
        self._recv_exact(conn, memoryview(blob), rank, deadline)
        return kind, bytes(blob)

    @staticmethod
    def _recv_exact(conn, view, rank, deadline):
        got = 0
        while got < view.nbytes:
            left = deadline - time.monotonic()
            if left <= 0:
                raise PeerLost(rank, True)
            conn.settimeout(left)
            try:
                n = conn.recv_into(view[got:])
            except socket.timeout:
                raise PeerLost(rank, True) from None
            except OSError:
                raise PeerLost(rank, False) from None
            if n == 0:
                raise PeerLost(rank, False)
            got += n
