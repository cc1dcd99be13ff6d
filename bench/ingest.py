"""Ingest benchmark: a series of memory images committed with vers vs backed up with restic.

Each image is half random, a quarter zero and a quarter compressible text; each differs from the
previous one in 1% of its pages (new random content). Both tools read the same file from the same
path in separate processes, into fresh repositories, in the same run: ``vers snapshot --memory``
re-reads and re-hashes the whole image every time (no dirty-page list), as restic re-reads it.

Printed: where the time of one ingest goes (each stage alone, in this process, on the first
image), throughput p50/p99 over all commits, MB/s of the first commit and of the incremental
re-hashes, the ratio against restic, and two floors measured in the same run: reading and
hashing the image page by page on both cores (what any ingest of this format must do) and
writing + fsyncing the bytes the first commit stores (the disk's share of a first commit).

    python3 bench/ingest.py [--size-mib 1024] [--count 10] [--no-pieces]
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import blake3

from bench._stats import percentile
from vers.objects.lmdbstore import LmdbObjectStore
from vers.objects.model import PAGE_SIZE, ZERO_ID
from vers.objects.pagehash import CHUNK, ChunkHasher, page_ids
from vers.objects.store import encode_pages
from vers.testing import make_image, mutate_pages

# The vers of this tree, whatever `vers` on $PATH is.
VERS = [sys.executable, "-c", "import sys; from vers.cli import main; sys.argv[0] = 'vers'; main()"]


def du(path: Path) -> int:
    return sum(f.stat().st_blocks * 512 for f in path.rglob("*") if f.is_file())


def vers_store_bytes(repo: Path) -> int:
    import lmdb

    env = lmdb.open(str(repo / ".vers" / "store"), readonly=True, lock=False, max_dbs=10)
    try:
        return (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    finally:
        env.close()


def timed(fn) -> float:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def read_all(path: Path, each=None) -> None:  # type: ignore[no-untyped-def]
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            if each:
                each(view[:n])


def hash_floor(path: Path) -> float:
    """Read + per-page blake3 + zero check of the whole image on both cores (vers's own
    two-process hasher, nothing else): the least an ingest of this format can take."""
    size = path.stat().st_size

    with open(path, "rb") as f, ChunkHasher(size, helper=True) as h:
        h.wait_for_helper()  # its start-up is not part of the floor
        t0 = time.perf_counter()
        for _ in h.chunks(f):
            pass
        return time.perf_counter() - t0


def pieces(path: Path, work: Path) -> float:
    """Each stage of an ingest alone, on ``path``; returns the disk floor's seconds."""
    size = path.stat().st_size
    mb = size / 1e6
    rows: list[tuple[str, float]] = []
    rows.append(("read (8 MiB readinto, page cache)", timed(lambda: read_all(path))))
    zp = bytes(PAGE_SIZE)

    def zero_only(v: memoryview) -> None:
        for o in range(0, len(v), PAGE_SIZE):
            zp.startswith(v[o : o + PAGE_SIZE])

    rows.append(("read + zero check per page", timed(lambda: read_all(path, zero_only))))
    rows.append(("read + zero check + hash, 1 core", timed(lambda: read_all(path, page_ids))))
    rows.append(("read + zero check + hash, 2 cores", hash_floor(path)))
    rows.append(("read + blake3 of whole chunks, 2 threads",
                 timed(lambda: read_all(path, lambda v: blake3.blake3(v, max_threads=2)))))
    data = path.read_bytes()
    mv = memoryview(data)
    new = [(oid, bytes(mv[i * PAGE_SIZE : (i + 1) * PAGE_SIZE]))
           for i, oid in enumerate(page_ids(mv)) if oid != ZERO_ID]
    new = list(dict(new).items())
    records: list = []
    rows.append(("compress the non-zero pages (zstd 1, 1 core)",
                 timed(lambda: records.extend(encode_pages(new)))))
    stored = sum(len(r.payload) for _, r in records)
    store = LmdbObjectStore.create(work / "pieces-store")
    try:
        step = 16384  # the writer's batches are 64 MiB
        rows.append(("LMDB put + commit + fsync of those records",
                     timed(lambda: [store._backend_put(records[i : i + step])
                                    for i in range(0, len(records), step)])))
    finally:
        store.close()
    blob = b"".join(r.payload for _, r in records)

    def write_fsync() -> None:
        with open(work / "pieces-disk", "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())

    disk = timed(write_fsync)
    rows.append((f"write + fsync of the same {stored / 1e6:.0f} MB to a file", disk))
    shutil.rmtree(work / "pieces-store", ignore_errors=True)
    (work / "pieces-disk").unlink()
    print(f"where an ingest's time goes (each stage alone, {mb:.0f} MB image, "
          f"{len(new)} non-zero pages, load {os.getloadavg()[0]:.2f}):")
    for name, t in rows:
        print(f"  {name:<48} {t:7.3f} s  {mb / t:8.0f} MB/s of image")
    print()
    return disk


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--count", type=int, default=10)
    ap.add_argument("--dir", default=None, help="work directory (default: a temp dir)")
    ap.add_argument("--no-pieces", action="store_true", help="skip the per-stage timings")
    args = ap.parse_args()
    if not shutil.which("restic"):
        sys.exit("restic is not installed (apt-get install restic)")
    work = Path(args.dir or tempfile.mkdtemp(prefix="vers-bench-ingest-"))
    work.mkdir(parents=True, exist_ok=True)
    img = work / "memory.img"
    size = args.size_mib << 20
    mb = size / 1e6
    vrepo, rrepo = work / "vers-repo", work / "restic-repo"
    env = dict(os.environ, RESTIC_PASSWORD="bench", RESTIC_CACHE_DIR=str(work / "restic-cache"))
    venv = dict(os.environ, PYTHONPATH=str(ROOT))
    subprocess.run([*VERS, "init", str(vrepo)], check=True, capture_output=True, env=venv)
    subprocess.run(["restic", "init", "--repo", str(rrepo)], check=True, capture_output=True,
                   env=env)
    print(f"load average at start: {os.getloadavg()[0]:.2f} ({os.cpu_count()} cores)")
    data = make_image(img, size, seed=1)
    disk = None if args.no_pieces else pieces(img, work)
    t_vers: list[float] = []
    t_restic: list[float] = []
    floors: list[float] = []
    growth_ratios: list[float] = []
    print(f"{args.count} images of {args.size_mib} MiB, 1% pages changed between images")
    print(f"{'#':>3} {'vers s':>8} {'restic s':>9} {'vers MB/s':>10} {'restic MB/s':>12} "
          f"{'floor MB/s':>11} {'growth/changed':>15} {'load':>5}")
    for i in range(args.count):
        changed_bytes = 0
        if i:
            changed_bytes = len(mutate_pages(data, 0.01, seed=100 + i)) * PAGE_SIZE
            img.write_bytes(data)
        before = vers_store_bytes(vrepo)
        t0 = time.perf_counter()
        subprocess.run([*VERS, "-C", str(vrepo), "snapshot", "--memory", str(img),
                        "-m", f"image {i}"], check=True, capture_output=True, env=venv)
        t1 = time.perf_counter()
        subprocess.run(["restic", "--repo", str(rrepo), "backup", "--quiet", str(img)],
                       check=True, capture_output=True, env=env)
        t2 = time.perf_counter()
        floor = hash_floor(img)
        grown = vers_store_bytes(vrepo) - before
        ratio = grown / changed_bytes if changed_bytes else float("nan")
        if changed_bytes:
            growth_ratios.append(ratio)
        t_vers.append(t1 - t0)
        t_restic.append(t2 - t1)
        floors.append(floor)
        print(f"{i:>3} {t1 - t0:>8.2f} {t2 - t1:>9.2f} {mb / (t1 - t0):>10.0f} "
              f"{mb / (t2 - t1):>12.0f} {mb / floor:>11.0f} {ratio:>15.3f} "
              f"{os.getloadavg()[0]:>5.2f}")
    v_size, r_size = vers_store_bytes(vrepo), du(rrepo)
    rates = [mb / t for t in t_vers]
    print()
    print(f"vers throughput over {len(rates)} commits: p50 {percentile(rates, 0.5):.0f} MB/s, "
          f"p99 (slowest) {percentile(rates, 0.01):.0f} MB/s")
    print(f"first commit: vers {rates[0]:.0f} MB/s, restic {mb / t_restic[0]:.0f} MB/s, "
          f"ratio {t_restic[0] / t_vers[0]:.2f}x")
    if disk is not None:
        print(f"  disk floor of a first commit (write + fsync of what it stores): "
              f"{disk:.2f} s = {mb / disk:.0f} MB/s of image")
    if len(t_vers) > 1:
        inc = rates[1:]
        inc_ratio = [r / v for v, r in zip(t_vers[1:], t_restic[1:], strict=True)]
        print(f"incremental re-hash (1% changed): vers p50 {percentile(inc, 0.5):.0f} MB/s, "
              f"p99 (slowest) {percentile(inc, 0.01):.0f} MB/s; restic p50 "
              f"{percentile([mb / t for t in t_restic[1:]], 0.5):.0f} MB/s; ratio p50 "
              f"{percentile(inc_ratio, 0.5):.2f}x")
    floor_rates = [mb / t for t in floors]
    near = [f / v for f, v in zip(floors[1:], t_vers[1:], strict=True)] or [float("nan")]
    print(f"hash floor (read + per-page blake3, both cores): p50 "
          f"{percentile(floor_rates, 0.5):.0f} MB/s; vers incremental p50 at "
          f"{percentile(near, 0.5):.2f} of it")
    print(f"throughput ratio vers/restic over all commits = {sum(t_restic) / sum(t_vers):.2f}x  "
          "(goal >= 5)")
    print(f"store size: vers {v_size / 1e6:.1f} MB, restic {r_size / 1e6:.1f} MB, "
          f"ratio vers/restic = {v_size / r_size:.3f}  (goal <= 1.0)")
    if growth_ratios:
        print(f"store growth per incremental commit / changed bytes: max {max(growth_ratios):.3f}, "
              f"mean {sum(growth_ratios) / len(growth_ratios):.3f}  (goal <= 1.1)")
    print(f"load average at end: {os.getloadavg()[0]:.2f}")
    if not args.dir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
