"""Folder locks: one process at a time works in a run folder, a prepare destination or
the demo cache.

``FolderLock(folder, what)`` takes an exclusive lock on ``folder/.convnet.lock``
(``fcntl.flock``: the kernel drops it when its holder exits, however it exits, so a
lock can never outlive its process) and writes the holder's PID, host and start time
into the file. A second process gets ``LockError`` naming the holder, or with
``wait=True`` says whom it waits for and waits. A lock file still holding a holder
when it is taken was left by a process that died without releasing it (kill -9, a
crash): ``stale`` describes that holder, and the caller reports it. Releasing
removes the file, then unlocks.

The lock is between processes: within one process, taking a lock this process holds
already counts up and succeeds (the training driver's objects and tests may open a
run folder twice). A ``FolderLock`` that is garbage-collected while held is released
then, so a forgotten object (a ``TrainingRun`` never run) does not hold a folder for
the rest of its process. Worker processes forked while a lock is held keep it held until
they exit too, which is what the data they write needs.

``owner_alive(name)`` tells whether the process that named a temporary file
``...tmp-PID`` still runs, so a cleanup deletes only what dead processes left.
"""
from __future__ import annotations

import datetime as _dt
import errno
import fcntl
import json
import os
import re
import socket
import time
import weakref
from pathlib import Path

__all__ = ["FolderLock", "LockError", "LOCK_FILE", "owner_alive"]

LOCK_FILE = ".convnet.lock"
_held: dict[str, list] = {}  # resolved lock path -> [fd, count] held by this process


class LockError(RuntimeError):
    """Another process holds the lock of a folder."""


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host (a zombie, killed but not yet reaped,
    does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):  # no /proc (macOS): kill(0) said it exists
        return True


def owner_alive(name: str) -> bool:
    """Whether the process named by a temporary's ``tmp-PID`` suffix (this host) runs."""
    match = re.search(r"\.tmp-(\d+)", name)
    return bool(match) and _pid_alive(int(match.group(1)))


def _describe(holder: dict) -> str:
    return (f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, since "
            f"{holder.get('since', '?')}" + (f" ({holder['command']})" if holder.get("command")
                                           else ""))


def _read_holder(fd: int) -> dict:
    try:
        text = os.pread(fd, 4096, 0).decode("utf-8", "replace")
        holder = json.loads(text) if text.strip() else {}
    except (OSError, ValueError):
        return {"pid": "?", "host": "?", "since": "?", "command": "unreadable lock file"}
    return holder if isinstance(holder, dict) else {}


class FolderLock:
    """An exclusive lock on ``folder`` (see the module docstring); a context manager.

    ``what`` names the folder in messages ("the run folder", "the prepare destination").
    ``command``: what the holder is doing, written for the next process to read.
    ``wait``: block until the holder lets go, after ``log``-ging whom it waits for.
    ``created``: the caller made ``folder`` for this lock; ``release`` removes it again
    when it is still empty (a run that failed before writing anything leaves nothing).
    """

    def __init__(self, folder, what: str, command: str = "", *, wait: bool = False, log=None,
                 created: bool = False):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self.what, self.command, self.wait, self.log = what, command, wait, log
        self.created = created
        self.stale: str | None = None  # the dead holder a taken-over lock file named
        self._release = None  # a weakref.finalize: runs once, at release() or collection

    # ------------------------------------------------------------------ taking it
    def acquire(self) -> "FolderLock":
        if self._release is not None and self._release.alive:
            return self  # this object holds it already
        key = str(self.path.resolve())
        if key in _held:
            _held[key][1] += 1
            self._release = weakref.finalize(self, _let_go, key, self.path, None)
            return self
        announced = False
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = _read_holder(fd)
                os.close(fd)
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                if not self.wait:
                    raise LockError(f"{self.what} {self.folder} is in use by {_describe(holder)}; "
                                    f"wait for it to finish, or stop it") from None
                if not announced and self.log is not None:
                    self.log(f"waiting for {_describe(holder)}, which is using {self.what} "
                             f"{self.folder}")
                    announced = True
                time.sleep(0.2)
                continue
            # The file may have been removed (released) between our open and flock: then
            # we hold a lock on a name nobody else sees; start again on the new file.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            break
        previous = _read_holder(fd)
        if previous:
            self.stale = _describe(previous)
        record = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
                  "since": _dt.datetime.now().isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        _held[key] = [fd, 1]
        self._release = weakref.finalize(self, _let_go, key, self.path,
                                         self.folder if self.created else None)
        return self

    def stale_message(self) -> str | None:
        """A one-line note on the dead holder whose lock was taken over, or None."""
        if self.stale is None:
            return None
        return (f"note: {self.what} {self.folder} was locked by {self.stale}, which ended "
                f"without releasing it (killed or crashed); taken over")

    # ------------------------------------------------------------------ letting go
    def release(self) -> None:
        """Let go (the last holder in this process removes the file, then unlocks)."""
        if self._release is not None:
            self._release()

    @property
    def held(self) -> bool:
        return self._release is not None and self._release.alive

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False


def _let_go(key: str, path: Path, made_folder: Path | None) -> None:
    entry = _held.get(key)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1]:
        return
    del _held[key]
    try:
        path.unlink(missing_ok=True)
    finally:
        os.close(entry[0])  # closing the last descriptor drops the flock
    if made_folder is not None:
        try:
            made_folder.rmdir()  # only when empty: a run that wrote nothing leaves nothing
        except OSError:
            pass
