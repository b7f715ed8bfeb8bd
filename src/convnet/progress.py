"""What the long-running commands show on stderr: a progress line, the clock in it,
and one-line messages.

``prepare``, ``make-demo-data`` and the training driver's epochs all draw their
progress with ``ProgressBar``; ``clock`` writes a duration as ``mm:ss`` (``h:mm:ss``
from an hour on); ``say`` is their default ``log`` for one-line messages.
"""
from __future__ import annotations

import sys
import time

__all__ = ["ProgressBar", "clock", "say"]


def say(text: str) -> None:
    """Print a one-line message to stderr at once."""
    print(text, file=sys.stderr, flush=True)


def clock(seconds: float) -> str:
    """``seconds`` as ``mm:ss``, or ``h:mm:ss`` from an hour on."""
    h, rest = divmod(int(round(seconds)), 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class ProgressBar:
    """``desc: 42% |#####....| n/total [elapsed<eta, rate img/s] extra`` on one line.

    Redrawn at most five times a second, and when the count reaches ``total``; does
    nothing when ``enabled`` is false or ``total`` is 0. ``initial`` counts work done
    before (a resumed ``prepare``), which is left out of the rate. ``close()`` leaves
    the last line in place (``leave=True``) or erases it (for a caller that prints its
    own summary line).
    """

    INTERVAL = 0.2  # seconds between redraws
    WIDTH = 24  # characters of the bar itself

    def __init__(self, total: int, desc: str, enabled: bool, *, initial: int = 0,
                 leave: bool = True, file=None):
        self.total, self.n, self.desc, self.leave = int(total), int(initial), desc, leave
        self.enabled = bool(enabled) and self.total > 0
        self.file = file or sys.stderr
        self.start = time.monotonic()
        self.first = self.n
        self.drawn = 0.0
        self.extra = ""
        self.width = 0  # of the line drawn last, to blank what a shorter one leaves
        if self.enabled:
            self._draw()

    def update(self, n: int, extra: str | None = None) -> None:
        """Count ``n`` more items; ``extra``: text shown after the rate (None: keep)."""
        self.n += int(n)
        if extra is not None:
            self.extra = extra
        if self.enabled and (time.monotonic() - self.drawn >= self.INTERVAL
                             or self.n >= self.total):
            self._draw()

    def _draw(self) -> None:
        now = time.monotonic()
        self.drawn = now
        elapsed = now - self.start
        rate = (self.n - self.first) / elapsed if elapsed > 0 else 0.0
        eta = clock((self.total - self.n) / rate) if rate > 0 else "?"
        filled = min(self.WIDTH, int(self.WIDTH * self.n / self.total))
        line = (f"{self.desc}: {100 * self.n / self.total:3.0f}% |{'#' * filled}"
                f"{'.' * (self.WIDTH - filled)}| {self.n}/{self.total} [{clock(elapsed)}<{eta}, "
                f"{rate:.0f} img/s]" + (f" {self.extra}" if self.extra else ""))
        self.file.write("\r" + line.ljust(self.width))
        self.file.flush()
        self.width = len(line)

    def close(self) -> None:
        """End the line: keep it (``leave``) or blank it; the bar draws no more."""
        if not self.enabled:
            return
        if self.leave:
            self._draw()
            self.file.write("\n")
        else:
            self.file.write("\r" + " " * self.width + "\r")
        self.file.flush()
        self.enabled = False
