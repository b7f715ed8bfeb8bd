"""How a ``convnet`` command ends: one line per failure, exit codes, SIGTERM, ``--debug``.

Exit codes: 0 done, 1 a failure while working (disk full, permissions, a corrupt
shard, a worker that died, a checkpoint that cannot be written, a folder locked by
another process), 2 a usage error (arguments, data or checkpoints the command cannot
work with; argparse's own errors are 2 too), 130 Ctrl-C, 143 SIGTERM (128 + the
signal, as shells report it). SIGTERM is handled like Ctrl-C: it raises
``Terminated`` (a ``KeyboardInterrupt``), so every clean-up that Ctrl-C runs (the
loader's workers and shared memory, the run's "interrupted" record) runs for it too.

Every failure is printed as one line, ``convnet CMD: <what>: <root cause>``; the
traceback follows only with ``convnet --debug`` or ``CONVNET_DEBUG=1``.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import traceback

__all__ = ["EXIT_FAILURE", "EXIT_INTERRUPTED", "EXIT_TERMINATED", "EXIT_USAGE", "Terminated",
           "debug_enabled", "describe", "handle_sigterm", "report"]

EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_TERMINATED = 1, 2, 130, 128 + signal.SIGTERM

class Terminated(KeyboardInterrupt):
    """SIGTERM arrived (``kill``, a job scheduler, ``docker stop``)."""


def debug_enabled(flag: bool = False) -> bool:
    return bool(flag) or os.environ.get("CONVNET_DEBUG", "") not in ("", "0")


def describe(exc: BaseException) -> str:
    """``exc`` as the line a user reads (``convnet.data._pool.one_line``)."""
    from ..data._pool import one_line
    return one_line(exc)


def report(command: str, exc: BaseException, code: int, debug: bool = False) -> int:
    """Print ``exc`` as ``convnet COMMAND: ...`` (and its traceback when debugging);
    returns ``code``."""
    line = describe(exc)
    if code == EXIT_FAILURE and not type(exc).__module__.startswith("convnet") \
            and not isinstance(exc, OSError):
        line += " (an unexpected error: run with --debug for the traceback, and report it)"
    if debug_enabled(debug):
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
        detail = getattr(exc, "traceback", None)  # a worker's own traceback
        if detail:
            print(f"the worker's traceback:\n{detail}", file=sys.stderr)
    # one write, newline included: ranks of one job share the stderr pipe, and print's
    # text and newline are two writes that another rank's line can fall between
    sys.stderr.write(f"convnet {command}: {line}\n")
    sys.stderr.flush()
    return code


def quiet_resource_tracker() -> None:
    """After kill -9, multiprocessing's resource tracker (a process of its own) unlinks
    the loader's shared memory, and warns about "leaked shared_memory objects" as it
    does: the memory is released, the warning only alarms. The command line owns its
    process, so it asks the tracker (started later, inheriting the environment) not
    to warn."""
    rule = "ignore:resource_tracker:UserWarning"
    current = os.environ.get("PYTHONWARNINGS", "")
    if rule not in current.split(","):
        os.environ["PYTHONWARNINGS"] = f"{current},{rule}" if current else rule


def _raise_terminated(signum, frame):
    raise Terminated()


class handle_sigterm:
    """While active (in the main thread), SIGTERM raises ``Terminated``."""

    def __enter__(self):
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, _raise_terminated)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
        return False
