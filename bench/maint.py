"""Maintenance benchmark: ``vers fsck`` and ``vers gc`` on a history of large images.

Builds a history of COUNT images of SIZE MiB (half random, a quarter zero, a quarter text; 1% of
pages changed between images), the same images backed up with restic, then times in one run:

- ``vers fsck`` (every object re-hashed + connectivity) vs ``restic check --read-data`` (restic
  re-reads and re-hashes every pack), and both vs a bare baseline: blake3 over the same bytes once
  (what hashing alone costs, in one call with no per-object overhead).
- ``vers gc --keep-last 2 --grace 0`` (retention rewrite + prune) vs ``restic forget --keep-last 2
  --prune``.

    python3 bench/maint.py [--size-mib 1024] [--count 5]
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

import blake3

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vers.testing import make_image, mutate_pages


def timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return dt, p.stdout + p.stderr


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--count", type=int, default=5)
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    has_restic = bool(shutil.which("restic"))
    work = Path(args.dir or tempfile.mkdtemp(prefix="vers-bench-maint-"))
    work.mkdir(parents=True, exist_ok=True)
    img = work / "memory.img"
    vrepo, rrepo = work / "vers-repo", work / "restic-repo"
    env = dict(os.environ, RESTIC_PASSWORD="bench", RESTIC_CACHE_DIR=str(work / "restic-cache"))
    subprocess.run(["vers", "init", str(vrepo)], check=True, capture_output=True)
    if has_restic:
        subprocess.run(["restic", "init", "--repo", str(rrepo)], check=True, capture_output=True,
                       env=env)

    data = make_image(img, args.size_mib << 20, seed=1)
    hashed = 0
    t_hash = 0.0
    for i in range(args.count):
        if i:
            mutate_pages(data, 0.01, seed=100 + i)
            img.write_bytes(data)
        subprocess.run(["vers", "-C", str(vrepo), "snapshot", "--memory", str(img),
                        "-m", f"image {i}"], check=True, capture_output=True)
        if has_restic:
            subprocess.run(["restic", "--repo", str(rrepo), "backup", "--quiet", str(img)],
                           check=True, capture_output=True, env=env)
    # Baseline: hashing the distinct bytes (first image + the changed pages) in one blake3 call.
    raw = bytes(data)
    t0 = time.perf_counter()
    blake3.blake3(raw).digest()
    t_hash = time.perf_counter() - t0
    hashed = len(data)

    print(f"history: {args.count} images of {args.size_mib} MiB, 1% pages changed between images")
    t_fsck, out = timed(["vers", "-C", str(vrepo), "fsck"])
    print(f"vers fsck:                {t_fsck:8.2f} s   ({out.strip().splitlines()[-1]})")
    print(f"blake3 of one image:      {t_hash:8.2f} s   (baseline: hashing alone, "
          f"{hashed / t_hash / 1e6:.0f} MB/s)")
    print(f"ratio fsck / bare hash:   {t_fsck / t_hash:8.1f}x")
    if has_restic:
        t_check, _ = timed(["restic", "--repo", str(rrepo), "check", "--read-data"], env)
        print(f"restic check --read-data: {t_check:8.2f} s")
        print(f"ratio restic / vers fsck: {t_check / t_fsck:8.2f}x  (> 1: vers is faster)")

    t_gc, out = timed(["vers", "-C", str(vrepo), "gc", "--keep-last", "2", "--grace", "0",
                       "--expire-reflog", "now"])
    print(f"vers gc --keep-last 2:    {t_gc:8.2f} s   ("
          + "; ".join(ln for ln in out.splitlines() if ln.startswith(("prune", "packs"))) + ")")
    if has_restic:
        t_forget, _ = timed(["restic", "--repo", str(rrepo), "forget", "--keep-last", "2",
                             "--prune"], env)
        print(f"restic forget --prune:    {t_forget:8.2f} s")
        print(f"ratio restic / vers gc:   {t_forget / t_gc:8.2f}x  (> 1: vers is faster)")
    t_fsck2, _ = timed(["vers", "-C", str(vrepo), "fsck"])
    print(f"vers fsck after gc:       {t_fsck2:8.2f} s")
    if not args.dir:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
