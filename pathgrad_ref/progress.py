"""Progress output that suits both a terminal and a log file: a tqdm bar where a person watches
(stdout and stderr both terminals), plain lines at a modest interval where the output goes to a
file (a batch system's log, ``python run.py > log 2>&1``).

A redrawn bar in a file is a stream of carriage-return frames, one per redraw: unreadable, and
at tqdm's rate a run of days writes hundreds of megabytes. A plain line instead says, every
``interval`` seconds (``PATHGRAD_PROGRESS_INTERVAL_S``, default 30), where the run is::

    phi4 reverse-path-fast: 1200/20000 step (6%), 41.3 step/s, @1000: ESS 0.412, …,
        0:00:29 elapsed, 0:07:35 left

(one line in the log)

and once more when the bar closes. tqdm is imported only for a terminal (it is an optional
dependency)."""

from __future__ import annotations

import datetime
import os
import sys
import time
from collections.abc import Callable
from typing import Any, Protocol, TextIO

INTERVAL_ENV = "PATHGRAD_PROGRESS_INTERVAL_S"
DEFAULT_INTERVAL_S = 30.0


class Progress(Protocol):
    """What the library's loops call on a progress display (tqdm's names)."""

    def update(self, n: int = 1) -> Any: ...
    def set_description(self, desc: str, refresh: bool = True) -> Any: ...
    def set_postfix_str(self, s: str = "", refresh: bool = True) -> Any: ...
    def write(self, s: str) -> Any: ...
    def close(self) -> Any: ...


def interactive() -> bool:
    """``True`` when stdout and stderr are both terminals (someone watches a redrawn bar)."""
    return all(getattr(s, "isatty", lambda: False)() for s in (sys.stdout, sys.stderr))


def _clock(seconds: float) -> str:
    return str(datetime.timedelta(seconds=round(seconds)))


class PlainProgress:
    """A progress display for files: one ``\\n``-terminated line per ``interval`` seconds (and
    one at :meth:`close`) with the count, the rate since the start, the latest postfix (for
    training, the last evaluation's ESS) and the time left at that rate. Never a ``\\r``."""

    def __init__(
        self,
        total: int,
        desc: str = "",
        unit: str = "it",
        initial: int = 0,
        *,
        interval: float = DEFAULT_INTERVAL_S,
        file: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total, self.desc, self.unit = int(total), desc, unit
        self.n = self.start_n = int(initial)
        self.postfix = ""
        self.interval = float(interval)
        self.file = file
        self.clock = clock
        self.start = self.last = clock()
        self.closed = False

    def update(self, n: int = 1) -> None:
        self.n += int(n)
        now = self.clock()
        if now - self.last >= self.interval:
            self.last = now
            self._emit(now)

    def set_description(self, desc: str, refresh: bool = True) -> None:
        self.desc = desc

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = s

    def write(self, s: str) -> None:
        """A message line, on stdout (where tqdm's ``write`` puts it)."""
        print(s, file=sys.stdout, flush=True)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._emit(self.clock())

    def line(self, now: float) -> str:
        """The status line at time ``now`` (of ``clock``)."""
        elapsed = max(now - self.start, 0.0)
        done = self.n - self.start_n
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total > 0 else ""
        parts = [f"{self.desc}: {self.n}/{self.total} {self.unit}{pct}"]
        rate = done / elapsed if elapsed > 0 else 0.0
        parts.append(f"{rate:.3g} {self.unit}/s" if done else f"- {self.unit}/s")
        if self.postfix:
            parts.append(self.postfix)
        left = self.total - self.n
        eta = _clock(left / rate) if rate > 0 else "?"
        parts.append(f"{_clock(elapsed)} elapsed, {eta if left > 0 else '0:00:00'} left")
        return ", ".join(parts)

    def _emit(self, now: float) -> None:
        out = sys.stderr if self.file is None else self.file
        print(self.line(now), file=out, flush=True)


def progress_bar(total: int, desc: str, unit: str = "it", initial: int = 0) -> Progress:
    """A tqdm bar if stdout and stderr are terminals, else a :class:`PlainProgress` on stderr
    whose interval is ``$PATHGRAD_PROGRESS_INTERVAL_S`` seconds (default 30)."""
    if interactive():
        from tqdm.auto import tqdm  # optional dependency, only for a terminal

        bar: Progress = tqdm(total=total, initial=initial, desc=desc, unit=unit)
        return bar
    raw = os.environ.get(INTERVAL_ENV, "")
    try:
        interval = float(raw) if raw else DEFAULT_INTERVAL_S
    except ValueError:
        raise ValueError(f"{INTERVAL_ENV}: expected a number of seconds, got {raw!r}") from None
    if not interval >= 0.0:
        raise ValueError(f"{INTERVAL_ENV}: expected a number of seconds >= 0, got {raw!r}")
    return PlainProgress(total, desc, unit, initial, interval=interval)
