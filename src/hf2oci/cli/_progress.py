"""The one progress renderer of the long commands (mirror, sync, extract, bundle, load).

The library reports bytes through callbacks (``count(n)``, negative when a failed try starts
over); this renders them: ``label: done / total (percent), rate, ETA``, never past 100%. On a
terminal, one line rewritten twice a second; elsewhere (CI logs), a plain line every 10 s; both
end with the finished line. ``-q`` silences it.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable

import click

from hf2oci.units import human_size

#: seconds between lines: on a terminal (one line, rewritten), and in a log
TTY_EVERY = 0.5
LOG_EVERY = 10.0


class Meter:
    """The bytes of one thing (a repo, an image, a bundle) against their total."""

    def __init__(
        self,
        label: str,
        total: int,
        *,
        tty: bool,
        clock: Callable[[], float] = time.monotonic,
        write: Callable[[str, bool], None] | None = None,
    ) -> None:
        self.label, self.total, self.tty = label, max(0, total), tty
        self.clock, self.write = clock, write or _stderr
        self.done = 0
        self.start = clock()
        self.last = self.start
        self.finished = False
        self._lock = threading.Lock()

    def __call__(self, n: int) -> None:
        with self._lock:
            self.done = max(0, self.done + n)
            if self.finished:
                return
            now = self.clock()
            if self.done >= self.total:
                self._emit(now, last=True)
            elif now - self.last >= (TTY_EVERY if self.tty else LOG_EVERY):
                self._emit(now, last=False)

    def finish(self) -> None:
        """The finished line, if it was not written yet (a total reached early)."""
        with self._lock:
            if not self.finished:
                self.done = max(self.done, self.total)
                self._emit(self.clock(), last=True)

    def line(self, now: float) -> str:
        done = min(self.done, self.total)
        share = 100 * done // self.total if self.total else 100
        took = max(now - self.start, 1e-6)
        rate = done / took
        text = f"{self.label}: {human_size(done)} / {human_size(self.total)} ({share}%)"
        if done >= self.total:
            return f"{text}, {human_size(int(rate))}/s, {_duration(took)}"
        left = (self.total - done) / rate if rate > 0 else None
        eta = f"{_duration(left)} left" if left is not None else "…"
        return f"{text}, {human_size(int(rate))}/s, {eta}"

    def _emit(self, now: float, *, last: bool) -> None:
        self.last = now
        self.finished = last
        self.write(self.line(now), last)


def _duration(seconds: float) -> str:
    s = int(seconds + 0.5)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def _stderr(line: str, last: bool) -> None:
    if sys.stderr.isatty():
        click.echo(f"\r{line}\x1b[K", err=True, nl=last)
    else:
        click.echo(line, err=True)


def meters(enabled: bool) -> Callable[[str, int], Meter] | None:
    """What makes a meter for a label and a total: None when progress is off (``-q``, JSON)."""
    if not enabled:
        return None
    tty = sys.stderr.isatty()
    return lambda label, total: Meter(label, total, tty=tty)
