"""Ingest benchmark: a series of memory images committed with vers vs backed up with restic.

Each image is half random, a quarter zero and a quarter compressible text; each differs from the
previous one in 1% of its pages (new random content). Both tools read the same file from the same
path in separate processes, into fresh repositories, in the same run. Prints throughput and size
ratios and the store growth per incremental commit relative to the changed bytes.

    python3 bench/ingest.py [--size-mib 1024] [--count 10]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vers.objects.model import PAGE_SIZE
from vers.testing import make_image, mutate_pages


def du(path: Path) -> int:
    return sum(f.stat().st_blocks * 512 for f in path.rglob("*") if f.is_file())


def vers_store_bytes(repo: Path) -> int:
    import lmdb

    env = lmdb.open(str(repo / ".vers" / "store"), readonly=True, lock=False, max_dbs=10)
    try:
        return (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    finally:
        env.close()


def drop_caches_hint() -> None:
    """Both tools read a file that is in the page cache: same conditions for both."""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--count", type=int, default=10)
    ap.add_argument("--dir", default=None, help="work directory (default: a temp dir)")
    args = ap.parse_args()
    if not shutil.which("restic"):
        sys.exit("restic is not installed (apt-get install restic)")
    work = Path(args.dir or tempfile.mkdtemp(prefix="vers-bench-ingest-"))
    work.mkdir(parents=True, exist_ok=True)
    img = work / "memory.img"
    size = args.size_mib << 20
    vrepo, rrepo = work / "vers-repo", work / "restic-repo"
    env = dict(os.environ, RESTIC_PASSWORD="bench", RESTIC_CACHE_DIR=str(work / "restic-cache"))
    subprocess.run(["vers", "init", str(vrepo)], check=True, capture_output=True)
    subprocess.run(["restic", "init", "--repo", str(rrepo)], check=True, capture_output=True,
                   env=env)

    data = make_image(img, size, seed=1)
    t_vers = t_restic = 0.0
    growth_ratios: list[float] = []
    print(f"{args.count} images of {args.size_mib} MiB, 1% pages changed between images")
    print(f"{'#':>3} {'vers s':>8} {'restic s':>9} {'vers MB/s':>10} {'restic MB/s':>12} "
          f"{'growth/changed':>15}")
    for i in range(args.count):
        changed_bytes = 0
        if i:
            changed_bytes = len(mutate_pages(data, 0.01, seed=100 + i)) * PAGE_SIZE
            img.write_bytes(data)
        before = vers_store_bytes(vrepo)
        t0 = time.perf_counter()
        subprocess.run(["vers", "-C", str(vrepo), "snapshot", "--memory", str(img),
                        "-m", f"image {i}"], check=True, capture_output=True)
        t1 = time.perf_counter()
        subprocess.run(["restic", "--repo", str(rrepo), "backup", "--quiet", str(img)],
                       check=True, capture_output=True, env=env)
        t2 = time.perf_counter()
        grown = vers_store_bytes(vrepo) - before
        ratio = grown / changed_bytes if changed_bytes else float("nan")
        if changed_bytes:
            growth_ratios.append(ratio)
        t_vers += t1 - t0
        t_restic += t2 - t1
        mb = size / 1e6
        print(f"{i:>3} {t1 - t0:>8.2f} {t2 - t1:>9.2f} {mb / (t1 - t0):>10.0f} "
              f"{mb / (t2 - t1):>12.0f} {ratio:>15.3f}")
    v_size, r_size = vers_store_bytes(vrepo), du(rrepo)
    total = size * args.count / 1e6
    print()
    print(f"throughput: vers {total / t_vers:.0f} MB/s, restic {total / t_restic:.0f} MB/s, "
          f"ratio vers/restic = {t_restic / t_vers:.2f}x  (goal >= 2.0)")
    print(f"store size: vers {v_size / 1e6:.1f} MB, restic {r_size / 1e6:.1f} MB, "
          f"ratio vers/restic = {v_size / r_size:.3f}  (goal <= 1.0)")
    if growth_ratios:
        print(f"store growth per incremental commit / changed bytes: max {max(growth_ratios):.3f}, "
              f"mean {sum(growth_ratios) / len(growth_ratios):.3f}  (goal <= 1.1)")
    if not args.dir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
