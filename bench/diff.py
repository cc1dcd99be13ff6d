"""Diff benchmark: two commits of big images differing in 10 pages.

The cost must follow the size of the change, not of the image: times are printed for 1 GiB and
4 GiB images side by side (goal: <= 20 ms, and flat). Images are sparse files with random pages
scattered through them, so that building them is cheap but the trees are full-depth.

    python3 bench/diff.py [--sizes-gib 1 4]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vers.objects.model import FANOUT, PAGE_SIZE
from vers.repo import Repo


def sparse_image(path: Path, size: int, seed: int) -> None:
    """One random page in every leaf node's range, so every node of the tree exists."""
    rnd = random.Random(seed)
    with open(path, "wb") as f:
        f.truncate(size)
        for leaf in range(size // (FANOUT * PAGE_SIZE)):
            f.seek(leaf * FANOUT * PAGE_SIZE + rnd.randrange(FANOUT) * PAGE_SIZE)
            f.write(rnd.randbytes(PAGE_SIZE))


def bench_size(work: Path, size: int) -> float:
    repo = Repo.init(work / f"repo-{size}")
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
    times = []
    for _ in range(5):
        r = Repo(work / f"repo-{size}")  # cold node cache each time
        t0 = time.perf_counter()
        d = r.diff(a, b)
        times.append(time.perf_counter() - t0)
        assert sum(x.changed_pages for x in d.images) == 10
        r.close()
    img.unlink()
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes-gib", type=float, nargs="+", default=[1, 4])
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vers-bench-diff-"))
    try:
        results = {s: bench_size(work, int(s * (1 << 30))) for s in args.sizes_gib}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for s, t in results.items():
        print(f"diff of two {s:g} GiB commits differing in 10 pages: {t * 1000:.1f} ms "
              "(goal <= 20 ms)")
    sizes = sorted(results)
    if len(sizes) > 1:
        print(f"ratio {sizes[-1]:g} GiB / {sizes[0]:g} GiB = "
              f"{results[sizes[-1]] / results[sizes[0]]:.2f} "
              f"(flat = ~1.0; image size ratio {sizes[-1] / sizes[0]:g})")
    os.sync()


if __name__ == "__main__":
    main()
