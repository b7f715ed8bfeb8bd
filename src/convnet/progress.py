"""What the long-running commands show on stderr: a progress bar, the clock, and one-line
messages.

``prepare``, ``make-demo-data`` and the training driver's epochs all draw their
progress with ``ProgressBar`` (tqdm underneath); ``clock`` writes a duration as
``mm:ss`` (``h:mm:ss`` from an hour on); ``say`` is their default ``log`` for one-line
messages.
"""
from __future__ import annotations

import sys
import time

from tqdm import tqdm

__all__ = ["ProgressBar", "clock", "say"]


def say(text: str) -> None:
    """Print a one-line message to stderr at once."""
    print(text, file=sys.stderr, flush=True)


def clock(seconds: float) -> str:
    """``seconds`` as ``mm:ss``, or ``h:mm:ss`` from an hour on."""
    h, rest = divmod(int(round(seconds)), 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class _Bar(tqdm):
    monitor_interval = 0  # no monitor thread: the data workers are forked while bars exist


def _is_terminal(file) -> bool:
    try:
        return bool(file.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed file
        return False


class ProgressBar:
    """``desc: 42%|#####     | n/total [elapsed<eta, rate img/s, extra]``.

    On a terminal, a tqdm bar redrawn in place at most five times a second. Elsewhere (a
    log file, CI) no bar is drawn while it runs: ``close()`` writes the final state as
    one plain line (with ``leave``), so a log gets one line per bar. Nothing at all when
    ``enabled`` is false or ``total`` is 0. ``initial`` counts work done before (a
    resumed ``prepare``), which is left out of the rate. ``close()`` leaves the last line
    in place (``leave=True``) or erases it (for a caller that prints its own summary).
    """

    INTERVAL = 0.2  # seconds between redraws on a terminal
    UNIT = "img"

    def __init__(self, total: int, desc: str, enabled: bool, *, initial: int = 0,
                 leave: bool = True, file=None):
        self.total, self.n, self.initial = int(total), int(initial), int(initial)
        self.desc, self.leave = desc, leave
        self.enabled = bool(enabled) and self.total > 0
        self.file = file or sys.stderr
        self.extra = ""
        self.start = time.monotonic()
        self._bar = None
        if self.enabled and _is_terminal(self.file):
            self._bar = _Bar(total=self.total, initial=self.initial, desc=desc, unit=self.UNIT,
                             leave=leave, file=self.file, mininterval=self.INTERVAL,
                             dynamic_ncols=True)

    def update(self, n: int, extra: str | None = None) -> None:
        """Count ``n`` more items; ``extra``: text shown after the rate (None: keep)."""
        self.n += int(n)
        if extra is not None:
            self.extra = extra
            if self._bar is not None:
                self._bar.set_postfix_str(extra, refresh=False)
        if self._bar is not None:
            self._bar.update(int(n))

    def line(self) -> str:
        """The bar's current state as one line of text (what a terminal shows)."""
        return tqdm.format_meter(self.n, self.total, time.monotonic() - self.start,
                                 prefix=self.desc, unit=self.UNIT, postfix=self.extra or None,
                                 initial=self.initial, ascii=True)

    def close(self) -> None:
        """End the bar: keep its last line (``leave``) or blank it; it draws no more."""
        if not self.enabled:
            return
        self.enabled = False
        if self._bar is not None:
            self._bar.close()
        elif self.leave:
            self.file.write(self.line() + "\n")
            self.file.flush()
