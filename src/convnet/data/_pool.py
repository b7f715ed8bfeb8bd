"""Worker processes with one pipe each: the engine of ``prepare`` and ``Loader``.

Each worker runs ``handler(state, payload, progress)`` for every task it is sent,
where ``state = init(*init_args)`` was made once when it started; ``handler`` and
``init`` are named as ``"module:function"`` so that any start method can import
them. Messages back are ``(task_id, "done", result)``, ``(task_id, "progress", n)`` or
``(task_id, "error", (line, traceback text))``, where ``line`` is the exception in one
line (``one_line``: an OS error as ``file: reason (what it means)``): what
``WorkerError`` says, with the traceback kept in its ``traceback`` for ``--debug``.
The parent waits on every worker's pipe and its process sentinel at once
(``multiprocessing.connection.wait``), so a worker that dies is noticed at once, and
there are no feeder threads to hang at exit.

Workers ignore SIGINT and take SIGTERM's default (exit; the parent's handler is not
theirs): Ctrl-C in a terminal reaches the whole process group, and
only the parent decides what happens (it shuts the pool down). A worker exits when
it is told to, or when its pipe to the parent closes (the parent died).

Start method: ``fork`` on Linux, as PyTorch's DataLoader does: no re-import of the
main module in each worker (so it works from notebooks, ``python -`` and scripts
without an ``if __name__ == "__main__":`` guard) and the fastest start. The workers
only read files, decode with Pillow and copy with NumPy, so the usual hazard of
forking a process with threads (a lock held by another thread, a CUDA context) does
not reach them. Elsewhere ``forkserver`` where the platform has it, else ``spawn``;
any of them can be asked for with ``start_method``. A worker also watches its parent
process id, so it exits when the parent dies even while a sibling forked from the
same parent keeps a copy of its pipe open.
"""
from __future__ import annotations

import errno
import importlib
import multiprocessing as mp
import os
import signal
import sys
import time
import traceback
from multiprocessing.connection import wait as _wait

# Modules the fork server imports once, so that workers forked from it start fast.
_PRELOAD = ["numpy", "PIL.Image", "PIL.JpegImagePlugin", "PIL.PngImagePlugin", "convnet.data"]


class WorkerError(RuntimeError):
    """A task that raised in a worker, or a worker that died; ``traceback``: the
    worker's own, when it sent one."""

    def __init__(self, message: str, traceback: str | None = None):
        super().__init__(message)
        self.traceback = traceback


_OS_HINTS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.EFBIG: "the file is larger than this process may write (ulimit -f?)",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "no permission",
    errno.EPERM: "not permitted",
    errno.EIO: "the device reported an input/output error",
}


def one_line(exc: BaseException) -> str:
    """An exception as one line: an OS error as ``file: reason (what it means)``,
    convnet's own errors as their message, anything else with its type named."""
    if isinstance(exc, OSError) and (exc.strerror or exc.filename):
        reason = exc.strerror or str(exc)
        hint = _OS_HINTS.get(exc.errno)
        if hint and hint.lower() not in reason.lower():
            reason = f"{reason} ({hint})"
        where = f"{exc.filename} -> {exc.filename2}" if exc.filename2 else exc.filename
        return f"{where}: {reason}" if where else reason
    text = str(exc).strip()
    if type(exc).__module__.startswith("convnet") or isinstance(exc, OSError):
        return " ".join(text.split("\n")) if text else type(exc).__name__
    first = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _failure(exc: BaseException) -> tuple[str, str]:
    return one_line(exc), traceback.format_exc()


def default_start_method() -> str:
    methods = mp.get_all_start_methods()
    if sys.platform.startswith("linux") and "fork" in methods:
        return "fork"
    return "forkserver" if "forkserver" in methods else "spawn"


def get_context(start_method: str | None = None):
    method = start_method or default_start_method()
    if method not in mp.get_all_start_methods():
        raise ValueError(f"start method {method!r} is not available here "
                         f"(available: {', '.join(mp.get_all_start_methods())})")
    ctx = mp.get_context(method)
    if method == "forkserver":
        ctx.set_forkserver_preload(_PRELOAD)
    return ctx


def resolve(name: str):
    module, _, function = name.partition(":")
    return getattr(importlib.import_module(module), function)


def _worker_main(conn, handler_name: str, init_name: str | None, init_args: tuple) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        handler = resolve(handler_name)
        state = resolve(init_name)(*init_args) if init_name else None
    except BaseException as exc:
        try:
            conn.send((None, "error", _failure(exc)))
        finally:
            return
    parent = os.getppid()
    while True:
        try:
            while not conn.poll(1.0):
                if os.getppid() != parent:
                    return  # the parent died; its pipe may live on in a sibling
            message = conn.recv()
        except (EOFError, OSError):
            return  # the parent is gone
        if message is None:
            return
        task_id, payload = message

        def progress(n, _id=task_id):
            conn.send((_id, "progress", n))

        try:
            result = handler(state, payload, progress)
        except BaseException as exc:
            reply = (task_id, "error", _failure(exc))
        else:
            reply = (task_id, "done", result)
        try:
            conn.send(reply)
        except (EOFError, OSError, BrokenPipeError):
            return


class WorkerPool:
    """``workers`` processes running ``handler``; see the module docstring."""

    def __init__(self, workers: int, handler: str, init: str | None = None, init_args: tuple = (),
                 start_method: str | None = None, name: str = "convnet-worker"):
        if workers < 1:
            raise ValueError(f"a worker pool needs at least one worker, got {workers}")
        ctx = get_context(start_method)
        self.processes = []
        self.conns = []
        self.outstanding = [0] * workers
        self._pids: list[int] = []
        self._closed = False
        try:
            for i in range(workers):
                parent, child = ctx.Pipe(duplex=True)
                p = ctx.Process(target=_worker_main, args=(child, handler, init, init_args),
                                name=f"{name}-{i}", daemon=True)
                p.start()
                child.close()
                self.processes.append(p)
                self.conns.append(parent)
                self._pids.append(p.pid)
        except BaseException:
            self.terminate()
            raise

    @property
    def size(self) -> int:
        return len(self.processes)

    def pids(self) -> list[int]:
        """The workers' process ids (kept after shutdown, for checks)."""
        return list(self._pids)

    def submit(self, worker: int, task_id, payload) -> None:
        try:
            self.conns[worker].send((task_id, payload))
        except (BrokenPipeError, EOFError, OSError):
            self._raise_dead(worker)
        self.outstanding[worker] += 1

    def least_busy(self) -> int:
        return min(range(len(self.outstanding)), key=self.outstanding.__getitem__)

    def _raise_dead(self, worker: int):
        p = self.processes[worker]
        p.join(timeout=1.0)
        code = p.exitcode
        how = (f"was killed by signal {-code}" if code is not None and code < 0
               else f"exited with code {code}" if code is not None else "stopped answering")
        raise WorkerError(f"worker process {p.name} (pid {p.pid}) {how}"
                          + (" (out of memory?)" if code == -signal.SIGKILL else ""))

    def receive(self, timeout: float | None = None) -> list[tuple]:
        """Messages that arrived within ``timeout`` seconds (all that are ready).

        A task error is returned as a message; a worker that died or failed to start
        raises WorkerError.
        """
        sentinels = {p.sentinel: i for i, p in enumerate(self.processes)}
        ready = _wait(list(self.conns) + list(sentinels), timeout)
        messages = []
        dead = []
        for obj in ready:
            if obj in sentinels:
                dead.append(sentinels[obj])
                continue
            worker = self.conns.index(obj)
            while True:
                try:
                    if not obj.poll():
                        break
                    message = obj.recv()
                except (EOFError, OSError):
                    dead.append(worker)
                    break
                task_id, kind, _ = message
                if task_id is None and kind == "error":
                    line, trace = message[2]
                    raise WorkerError(f"worker process {self.processes[worker].name} failed to "
                                      f"start: {line}", trace)
                if kind in ("done", "error"):
                    self.outstanding[worker] -= 1
                messages.append(message + (worker,))
        if dead and not messages:
            self._raise_dead(dead[0])
        return messages

    # ------------------------------------------------------------------ shutdown
    def close(self, timeout: float = 5.0) -> None:
        """Ask every worker to stop, wait up to ``timeout`` s, then terminate the rest."""
        if self._closed:
            return
        for conn in self.conns:
            try:
                conn.send(None)
            except (BrokenPipeError, EOFError, OSError):
                pass
        deadline = time.monotonic() + timeout
        for p in self.processes:
            p.join(timeout=max(0.0, deadline - time.monotonic()))
        self.terminate()

    def terminate(self) -> None:
        """Stop every worker now (SIGTERM, then SIGKILL) and close the pipes."""
        if self._closed:
            return
        for p in self.processes:
            if p.is_alive():
                p.terminate()
        for p in self.processes:
            p.join(timeout=2.0)
            if p.is_alive():
                p.kill()
                p.join(timeout=2.0)
        for conn in self.conns:
            try:
                conn.close()
            except OSError:
                pass
        for p in self.processes:
            try:
                p.close()
            except ValueError:
                pass
        self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            self.close()
        else:
            self.terminate()


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def run_tasks(handler, tasks: list[dict], workers: int, bar, start_method=None):
    """Run ``handler`` over ``tasks``; yields ``(task, result)`` as each finishes. Each
    task's progress reports go to ``bar.update`` (a ``convnet.progress.ProgressBar``)."""
    if not tasks:
        return
    if workers <= 0:  # in this process: for debugging and deterministic tests
        for task in tasks:
            yield task, handler(None, task, bar.update)
        return
    name = f"{handler.__module__}:{handler.__name__}"
    pool = WorkerPool(min(workers, len(tasks)), name, start_method=start_method,
                      name="convnet-task")
    try:
        queue = list(enumerate(tasks))[::-1]
        done = 0
        for worker in range(pool.size):  # two tasks each in flight, so no worker waits
            for _ in range(2):
                if queue:
                    pool.submit(worker, *queue.pop())
        while done < len(tasks):
            for task_id, kind, value, worker in pool.receive(timeout=0.5):
                if kind == "progress":
                    bar.update(value)
                    continue
                if kind == "error":
                    what = tasks[task_id].get("path") or f"task {task_id}"
                    line, trace = value
                    raise WorkerError(f"a worker failed making {what}: {line}", trace)
                done += 1
                if queue:
                    pool.submit(worker, *queue.pop())
                yield tasks[task_id], value
        pool.close()
    finally:
        pool.terminate()
