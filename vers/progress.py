"""Progress meters on stderr, for a person at a terminal: the one way every layer reports them.

The CLI makes one ``Progress`` per command (``Progress.for_terminal``): it draws only when stderr
is a terminal and ``-q`` was not given. Everything else (scripts, pipes, CI logs, the Python SDK,
the MCP server) gets ``NO_PROGRESS``, whose meters do nothing and cost one method call. Lower
layers never print and never import the CLI: they are handed a ``Progress`` (or a meter's
``advance`` as a plain callback) and report amounts.

Drawing is tqdm's, held to what a long job needs: a meter appears only once its job has taken
longer than ``SHOW_AFTER`` (so quick commands stay silent), is redrawn at most every
``REDRAW_EVERY`` seconds (tqdm's ``mininterval``; an update in between costs a clock read), and
stays on screen as the job's last line when it ends. Nothing ever goes to stdout.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from types import TracebackType
from typing import TYPE_CHECKING, Self, TextIO

if TYPE_CHECKING:
    from tqdm import tqdm

#: seconds between two redraws of a meter (at most ten a second)
REDRAW_EVERY = 0.1
#: a meter is drawn only once its job has run this long ($VERS_PROGRESS_AFTER seconds, default 0.5)
SHOW_AFTER = float(os.environ.get("VERS_PROGRESS_AFTER", "0.5") or 0.5)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


class Meter:
    """One job being measured. This base class is the disabled meter: every method does
    nothing, so callers never test whether progress is on."""

    def advance(self, n: int = 1, nbytes: int = 0) -> None:
        """``n`` more units done (and ``nbytes`` more bytes, for meters that count both)."""

    def set_total(self, total: int | None) -> None:
        """The job turned out to be this big (e.g. bisect's estimate of the steps left)."""

    def phase(self, text: str) -> None:
        """What the job is doing now, shown after the counts."""

    def close(self) -> None:
        """The job ended: draw the last state (if the meter was shown at all) and stop."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, typ: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class _Drawn(Meter):
    """A meter drawn by tqdm on the terminal."""

    def __init__(self, bar: tqdm, count_bytes: bool) -> None:
        self._bar = bar
        self._lock = threading.Lock()  # jobs report from worker threads (push's uploads)
        self._count_bytes = count_bytes
        self._bytes = 0
        self._phase = ""
        self._postfix_at = 0.0
        self._closed = False
        self._started = time.monotonic()

    def advance(self, n: int = 1, nbytes: int = 0) -> None:
        with self._lock:
            self._bytes += nbytes
            if self._count_bytes:
                now = time.monotonic()
                if now - self._postfix_at >= REDRAW_EVERY:  # not one string per call
                    self._postfix_at = now
                    self._bar.set_postfix_str(self._postfix(), refresh=False)
            self._bar.update(n)

    def set_total(self, total: int | None) -> None:
        with self._lock:
            self._bar.total = total

    def phase(self, text: str) -> None:
        with self._lock:
            self._phase = text
            self._bar.set_postfix_str(self._postfix(), refresh=False)
            self._bar.update(0)

    def _postfix(self) -> str:
        parts = [human_bytes(self._bytes)] if self._count_bytes else []
        return ", ".join(parts + ([self._phase] if self._phase else []))

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._count_bytes:
                self._bar.set_postfix_str(self._postfix(), refresh=False)
            if time.monotonic() - self._started < SHOW_AFTER:
                self._bar.leave = False  # a quick job: stay silent
            self._bar.close()


class _Waiting(_Drawn):
    """A meter of a job that reports nothing until it ends (a guest booting): a thread redraws
    its elapsed time."""

    def __init__(self, bar: tqdm) -> None:
        super().__init__(bar, count_bytes=False)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vers-progress", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(REDRAW_EVERY * 2):
            with self._lock:
                self._bar.update(0)  # redraws (the bar has miniters=0) once past SHOW_AFTER

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        super().close()


class Progress:
    """Where a command's meters go: a terminal stream, or nowhere (``NO_PROGRESS``)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream

    @classmethod
    def for_terminal(cls, quiet: bool = False, stream: TextIO | None = None) -> Progress:
        """Meters on ``stream`` (default stderr) if it is a terminal and not ``quiet``."""
        stream = stream or sys.stderr
        isatty = getattr(stream, "isatty", None)
        if quiet or not callable(isatty) or not isatty():
            return NO_PROGRESS
        return cls(stream)

    @property
    def enabled(self) -> bool:
        return self.stream is not None

    def meter(self, label: str, total: int | None = None, unit: str = "B",
              count_bytes: bool = False) -> Meter:
        """A meter of ``total`` ``unit``s (None: unknown). ``unit="B"`` shows sizes and rates in
        KiB/MiB/GiB; ``count_bytes`` adds a byte count beside another unit (objects)."""
        if self.stream is None:
            return _OFF
        return _Drawn(self._bar(label, total, unit), count_bytes)

    def waiting(self, label: str) -> Meter:
        """A meter that shows how long a job of unknown length has been running."""
        if self.stream is None:
            return _OFF
        return _Waiting(self._bar(label, None, "", fmt="{desc}: {elapsed}{postfix}", miniters=0))

    def note(self, message: str) -> None:
        """A line for the person at the terminal, written above any meter on screen."""
        if self.stream is None:
            return
        from tqdm import tqdm

        tqdm.write(message, file=self.stream)

    def _bar(self, label: str, total: int | None, unit: str, fmt: str | None = None,
             miniters: int = 1) -> tqdm:
        # Imported here, not at the top: only a command that draws pays for tqdm (~20 ms of
        # start-up every other command, `vers log` included, would pay).
        from tqdm import tqdm

        tqdm.monitor_interval = 0  # no monitor thread: our redraws are bounded already
        columns, lines = self._size()
        return tqdm(total=total, desc=label, unit=unit, unit_scale=unit == "B",
                    unit_divisor=1024, file=self.stream, mininterval=REDRAW_EVERY,
                    miniters=miniters, delay=SHOW_AFTER, leave=True, ncols=columns, nrows=lines,
                    bar_format=fmt)

    def _size(self) -> tuple[int, int]:
        """The terminal's columns and lines; 80x24 where it says 0 (a new pseudo-terminal) or
        cannot say (tqdm would draw nothing at all)."""
        try:
            size = os.get_terminal_size(self.stream.fileno())  # type: ignore[union-attr]
        except (AttributeError, OSError, ValueError):
            return 80, 24
        return size.columns or 80, size.lines or 24


NO_PROGRESS = Progress()
_OFF = Meter()
