"""Diff benchmark: two commits of big images differing in 10 pages.

The cost must follow the size of the change, not of the image: p50 and p99 over repeated runs
are printed for 1 GiB and 4 GiB memory images side by side (goal: <= 20 ms at 4 GiB, and
flat), in this process with a cold node cache each run (a fresh ``Repo``), and for the largest
size through the command line (``vers diff A B``, a new process each run) next to the same
command's start-up alone (``vers diff --help``), so the diff's own share shows. Images are
sparse files with one random page in every leaf's range, so that building them is cheap but the
trees are full-depth and every node exists.

    python3 bench/diff.py [--sizes-gib 1 4] [--runs 20] [--cli-runs 10]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._stats import percentile
from vers.objects.model import FANOUT, PAGE_SIZE
from vers.repo import Repo

# The vers of this tree, whatever `vers` on $PATH is.
VERS = [sys.executable, "-c", "import sys; from vers.cli import main; sys.argv[0] = 'vers'; main()"]


def sparse_image(path: Path, size: int, seed: int) -> None:
    """One random page in every leaf node's range, so every node of the tree exists."""
    rnd = random.Random(seed)
    with open(path, "wb") as f:
        f.truncate(size)
        for leaf in range(size // (FANOUT * PAGE_SIZE)):
            f.seek(leaf * FANOUT * PAGE_SIZE + rnd.randrange(FANOUT) * PAGE_SIZE)
            f.write(rnd.randbytes(PAGE_SIZE))


def make_commits(work: Path, size: int) -> tuple[Path, str, str]:
    path = work / f"repo-{size}"
    repo = Repo.init(path)
    img = work / f"img-{size}"
    sparse_image(img, size, seed=1)
    a = repo.snapshot({"memory": img}, message="a")
    rnd = random.Random(2)
    pages = rnd.sample(range(size // PAGE_SIZE), 10)
    with open(img, "r+b") as f:
        for p in pages:
            f.seek(p * PAGE_SIZE)
            f.write(rnd.randbytes(PAGE_SIZE))
    b = repo.snapshot({"memory": img}, message="b", dirty={"memory": pages})
    repo.close()
    img.unlink()
    return path, a, b


def in_process(path: Path, a: str, b: str, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        r = Repo(path)  # cold node cache each time
        t0 = time.perf_counter()
        d = r.diff(a, b)
        times.append(time.perf_counter() - t0)
        assert sum(x.changed_pages for x in d.images) == 10
        r.close()
    return times


def cli(path: Path, args: list[str], runs: int) -> list[float]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([*VERS, "-C", str(path), *args], check=True, capture_output=True, env=env)
        times.append(time.perf_counter() - t0)
    return times


def ms(xs: list[float]) -> str:
    return f"p50 {percentile(xs, 0.5) * 1000:6.1f} ms  p99 {percentile(xs, 0.99) * 1000:6.1f} ms"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes-gib", type=float, nargs="+", default=[1, 4])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--cli-runs", type=int, default=10)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vers-bench-diff-"))
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    results: dict[float, list[float]] = {}
    try:
        for s in args.sizes_gib:
            path, a, b = make_commits(work, int(s * (1 << 30)))
            results[s] = in_process(path, a, b, args.runs)
            print(f"diff of two {s:g} GiB commits differing in 10 pages, in process: "
                  f"{ms(results[s])}  (goal <= 20 ms)", flush=True)
            if s == max(args.sizes_gib) and args.cli_runs:
                cmd = cli(path, ["diff", a, b], args.cli_runs)
                start = cli(path, ["diff", "--help"], args.cli_runs)
                print(f"  vers diff A B (CLI):          {ms(cmd)}")
                print(f"  vers diff --help (start-up):  {ms(start)}")
                print(f"  CLI minus start-up, p50:      "
                      f"{(percentile(cmd, 0.5) - percentile(start, 0.5)) * 1000:6.1f} ms")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    sizes = sorted(results)
    if len(sizes) > 1:
        lo, hi = percentile(results[sizes[0]], 0.5), percentile(results[sizes[-1]], 0.5)
        print(f"ratio of p50s {sizes[-1]:g} GiB / {sizes[0]:g} GiB = {hi / lo:.2f} "
              f"(flat = ~1.0; image size ratio {sizes[-1] / sizes[0]:g})")
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
