"""Progress benchmark: what drawing a meter costs the work it measures.

A snapshot of the same image into a fresh repository, alternately without progress (the floor:
``NO_PROGRESS``) and with a meter drawn on a real pseudo-terminal (the ``vers snapshot`` of a
person at a terminal). Prints p50 and p99 of both and their ratio (goal: <= 1.02), and how many
times the meter was redrawn per second (goal: <= 10).

    python3 bench/progress.py [--mib 256] [--runs 7]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._stats import percentile
from vers.porcelain.snapshot import snapshot
from vers.progress import NO_PROGRESS, Progress
from vers.repo import Repo
from vers.testing import make_image


class Terminal:
    """A pseudo-terminal whose output is read (and its redraws counted) by a thread."""

    def __init__(self) -> None:
        self.master, slave = os.openpty()
        self.stream = os.fdopen(slave, "w")
        self.redraws = 0
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:
                return
            if not chunk:
                return
            self.redraws += chunk.count(b"\r") - chunk.count(b"\r\n")

    def close(self) -> None:
        self.stream.close()
        self._thread.join(timeout=5)
        os.close(self.master)


def one(work: Path, image: Path, progress: Progress) -> float:
    shutil.rmtree(work / "repo", ignore_errors=True)
    repo = Repo.init(work / "repo")
    try:
        t0 = time.perf_counter()
        snapshot(repo, {"memory": str(image)}, "bench", progress=progress)
        return time.perf_counter() - t0
    finally:
        repo.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mib", type=int, default=256, help="image size in MiB")
    ap.add_argument("--runs", type=int, default=7, help="snapshots of each kind")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vers-bench-progress-"))
    term = Terminal()
    try:
        image = work / "mem"
        make_image(image, args.mib << 20, seed=1)
        shown = Progress.for_terminal(stream=term.stream)
        assert shown.enabled
        floor: list[float] = []
        drawn: list[float] = []
        one(work, image, NO_PROGRESS)  # warm the page cache
        for _ in range(args.runs):  # alternate, so that load from elsewhere hits both alike
            floor.append(one(work, image, NO_PROGRESS))
            drawn.append(one(work, image, shown))
        term.stream.flush()
        time.sleep(0.2)
        rate = term.redraws / sum(drawn)
        print(f"snapshot of {args.mib} MiB, {args.runs} runs each")
        print(f"  no progress (floor): p50 {statistics.median(floor):.3f}s  "
              f"p99 {percentile(floor, 0.99):.3f}s")
        print(f"  meter on a terminal: p50 {statistics.median(drawn):.3f}s  "
              f"p99 {percentile(drawn, 0.99):.3f}s")
        print(f"  ratio p50 {statistics.median(drawn) / statistics.median(floor):.3f} "
              f"(goal <= 1.02)")
        print(f"  redraws per second: {rate:.1f} (goal <= 10)")
    finally:
        term.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
