"""Progress on stderr: objects, bytes and rate, redrawn in place on a terminal.

On a terminal the line is redrawn at most ten times a second; otherwise (logs, CI) a line is
written every few seconds and once at the end, so a long transfer still shows signs of life
without flooding a log. ``quiet`` silences it all.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


class Progress:
    def __init__(self, label: str, quiet: bool = False, stream: TextIO | None = None,
                 total_objects: int | None = None) -> None:
        self.label = label
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self.total_objects = total_objects
        self.objects = 0
        self.bytes = 0
        self.start = time.monotonic()
        self._last = self.start
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._interval = 0.1 if self._tty else 5.0
        self._lock = threading.Lock()
        self._drawn = False

    def add(self, objects: int = 0, nbytes: int = 0) -> None:
        with self._lock:
            self.objects += objects
            self.bytes += nbytes
            now = time.monotonic()
            if not self.quiet and now - self._last >= self._interval:
                self._last = now
                self._draw(final=False)

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.start, 1e-6)
        total = f"/{self.total_objects}" if self.total_objects is not None else ""
        return (f"{self.label}: {self.objects}{total} objects, {human_bytes(self.bytes)}, "
                f"{human_bytes(self.bytes / elapsed)}/s")

    def _draw(self, final: bool) -> None:
        text = self.line() + (", done." if final else "")
        if self._tty:
            self.stream.write("\r\x1b[K" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        if not self.quiet:
            with self._lock:
                self._draw(final=True)

    def abort(self) -> None:
        """End a redrawn line without claiming success (the error message follows)."""
        if not self.quiet and self._tty and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
