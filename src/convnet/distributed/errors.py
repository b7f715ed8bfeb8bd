"""The errors of the parallel layer: a collective that did not finish, a rank refused."""
from __future__ import annotations

__all__ = ["CollectiveTimeout", "ConfigMismatch", "collective_failed", "failed",
           "describe_ranks"]

_FAILED = []  # the operations of this process's communicators that failed


def failed(error: "CollectiveTimeout") -> "CollectiveTimeout":
    """Note that a communicator of this process failed (``error``, returned to raise)."""
    _FAILED.append(error.operation)
    return error


def collective_failed() -> bool:
    """Whether a collective of this process has failed: its communicator may hold
    operations that never complete, so the process should end without waiting on them
    (``launch.end_job``)."""
    return bool(_FAILED)


def describe_ranks(ranks) -> str:
    ranks = sorted(set(int(r) for r in ranks))
    if not ranks:
        return ""
    return ("rank " if len(ranks) == 1 else "ranks ") + ", ".join(str(r) for r in ranks)


class CollectiveTimeout(RuntimeError):
    """A collective did not complete within the communicator's timeout, or failed because
    a peer is gone. ``operation``, ``missing`` (the ranks that did not answer, when
    known, else ``()``), ``step`` (the caller's ``comm.step``, or ``None``); ``message``
    replaces the composed text (a failure another rank reported, forwarded as it is)."""

    def __init__(self, operation: str, timeout: float, missing=(), step=None, cause: str = "",
                 message: str | None = None):
        self.operation, self.timeout, self.step = operation, float(timeout), step
        self.missing = tuple(sorted(set(int(r) for r in missing)))
        at = f" at step {step}" if step is not None else ""
        who = (f"{describe_ranks(self.missing)} did not answer" if self.missing
               else "the rank that did not answer is not known")
        why = f"failed ({cause})" if cause else f"did not finish within {self.timeout:g} s"
        super().__init__(message or f"{operation}{at} {why}: {who}")


class ConfigMismatch(RuntimeError):
    """A rank started with a configuration that differs from rank 0's."""
