"""Finding a commit by time: ``vers rev-parse 'main@{15 minutes ago}'`` on a history of 10,000
commits (one a second, as a recording makes them), against ``vers rev-parse main`` in the same run.

Goal: <= 50 ms. Printed, each as p50/p99 over --runs runs, and as a ratio to the floor:
1. in process (``Repo.rev_parse``, the repository already open): ``main`` (the floor), then
   ``main@{15 minutes ago}`` (900 commits back) and ``main@{2 hours ago}`` (7,200 back);
2. the same first-parent search by reading every commit on the way (what the index replaces);
3. the CLI, a new ``vers`` process each time: ``vers rev-parse main`` (the floor: Python start-up
   and imports) and ``vers rev-parse 'main@{15 minutes ago}'``.

Usage: python3 bench/timetravel.py [--commits N] [--runs N]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._stats import p50_p99
from vers.repo import Repo
from vers.testing import vers_env
from vers.testing.graphs import build_vers, linear

US = 1_000_000


def timings(fn: Callable[[], object], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def report(label: str, xs: list[float], floor: list[float] | None = None) -> None:
    p50, p99 = p50_p99(xs)
    ratio = f"  {p50 / p50_p99(floor)[0]:6.1f}x the floor" if floor else ""
    print(f"  {label:<44} p50 {p50 * 1e3:8.3f} ms  p99 {p99 * 1e3:8.3f} ms{ratio}")


def walk_to(repo: Repo, tip: str, when: int) -> str:
    """The first-parent search without the index: read every commit on the way."""
    cid = tip
    while True:
        c = repo.store.get_commit(bytes.fromhex(cid))
        if c.time_us <= when or not c.parents:
            return cid
        cid = c.parents[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--commits", type=int, default=10_000, help="history length (10000)")
    ap.add_argument("--runs", type=int, default=50, help="runs per measurement (50, at least)")
    args = ap.parse_args()
    runs = max(args.runs, 50)
    with tempfile.TemporaryDirectory(prefix="vers-timetravel-") as tmp:
        repo = Repo.init(tmp)
        t0 = time.perf_counter()
        start = time.time() - args.commits
        ids = build_vers(repo, linear(args.commits), start=start, step=1.0)
        print(f"built {args.commits} commits (one a second) in {time.perf_counter() - t0:.1f} s")
        tip = ids[-1]
        now = repo.get_commit(tip).time_us + US  # in process: the tip is 1 s old
        t = time.perf_counter()
        repo.rev_parse("main@{15 minutes ago}", now=now)
        print(f"first time search: {(time.perf_counter() - t) * 1e3:.1f} ms "
              "(the commits were indexed as they were written)")

        print("in process:")
        floor = timings(lambda: repo.rev_parse("main"), runs)
        report("rev_parse('main')", floor)
        for spec in ("main@{15 minutes ago}", "main@{2 hours ago}"):
            got = repo.rev_parse(spec, now=now)
            back = args.commits - 1 - ids.index(got)
            report(f"rev_parse('{spec}')  [{back} back]",
                   timings(lambda s=spec: repo.rev_parse(s, now=now), runs), floor)
        for minutes in (15, 120):
            when = now - minutes * 60 * US
            report(f"walk every commit, {minutes} min back (no index)",
                   timings(lambda w=when: walk_to(repo, tip, w), max(5, runs // 10)), floor)
        repo.close()

        print("CLI (a new process each time):")
        env = vers_env(None)
        env.setdefault("PYTHONPATH", os.pathsep.join(sys.path[:1]))

        def cli(rev: str) -> None:
            subprocess.run(["vers", "rev-parse", rev], cwd=tmp, env=env, check=True,
                           capture_output=True)

        cli_floor = timings(lambda: cli("main"), runs)
        report("vers rev-parse main", cli_floor)
        cli_at = timings(lambda: cli("main@{15 minutes ago}"), runs)
        report("vers rev-parse 'main@{15 minutes ago}'", cli_at, cli_floor)
        print(f"  the time search adds p50 {(p50_p99(cli_at)[0] - p50_p99(cli_floor)[0]) * 1e3:.1f}"
              " ms to the CLI's start-up (goal: the search <= 50 ms)")

if __name__ == "__main__":
    main()
