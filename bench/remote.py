"""Remote benchmark, against a real S3 server (SeaweedFS) on loopback.

1. Incremental push: after pushing a 1 GiB memory image, a commit with 1% of its pages changed is
   pushed; the bucket's growth (sum of object sizes from a listing) is compared with the changed
   bytes. Goal: <= 1.1x.
2. Clone throughput: `vers clone` of that two-commit history, beside a plain boto3 copy of the same
   objects (aws-s3-sync style: list, then GET every object with 10 threads into files) as the
   baseline. Goal: >= 100 MB/s.

    python3 bench/remote.py [--size-mib 1024]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vers.objects.model import PAGE_SIZE
from vers.porcelain.clone import clone
from vers.porcelain.push import push
from vers.porcelain.remote import add_remote
from vers.remote.backends import open_transport
from vers.repo import Repo
from vers.testing.s3server import SeaweedS3

BUCKET = "vers-bench"
MB = 1e6


def make_image(path: Path, size: int, seed: int) -> None:
    """Half random pages, half zero (a guest that has touched half its RAM)."""
    rnd = random.Random(seed)
    block = 256 * PAGE_SIZE
    with open(path, "wb") as f:
        for _ in range(size // block):
            buf = bytearray(block)
            for i in range(256):
                if rnd.random() < 0.5:
                    buf[i * PAGE_SIZE:(i + 1) * PAGE_SIZE] = os.urandom(PAGE_SIZE)
            f.write(buf)


def change_one_percent(src: Path, dst: Path, seed: int) -> int:
    shutil.copyfile(src, dst)
    npages = src.stat().st_size // PAGE_SIZE
    pages = random.Random(seed).sample(range(npages), npages // 100)
    with open(dst, "r+b") as f:
        for p in pages:
            f.seek(p * PAGE_SIZE)
            f.write(os.urandom(PAGE_SIZE))
    return len(pages) * PAGE_SIZE


def bucket_bytes(url: str) -> int:
    return sum(open_transport(url).list("").values())


def plain_copy(server: SeaweedS3, prefix: str, dest: Path) -> tuple[int, float]:
    """The baseline: what `aws s3 sync s3://bucket/prefix dest` does, with boto3 (10 threads)."""
    client = server.client()
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        keys += [o["Key"] for o in page.get("Contents", [])]
    t0 = time.perf_counter()

    def get(key: str) -> int:
        out = dest / key
        out.parent.mkdir(parents=True, exist_ok=True)
        client.download_file(BUCKET, key, str(out))
        return out.stat().st_size

    with ThreadPoolExecutor(10) as pool:
        total = sum(pool.map(get, keys))
    return total, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    args = ap.parse_args()
    size = args.size_mib << 20
    work = Path(tempfile.mkdtemp(prefix="vers-bench-remote-"))
    try:
        with SeaweedS3(work / "weed") as server:
            os.environ.update(server.env())
            server.client().create_bucket(Bucket=BUCKET)
            url = f"s3://{BUCKET}/history"
            repo = Repo.init(work / "src")
            make_image(work / "m1", size, seed=1)
            changed = change_one_percent(work / "m1", work / "m2", seed=2)
            t0 = time.perf_counter()
            repo.snapshot({"memory": work / "m1"}, message="base")
            t_snap = time.perf_counter() - t0
            print(f"local `vers snapshot` of the {args.size_mib} MiB image (store write baseline): "
                  f"{t_snap:.2f} s = {size / MB / t_snap:.0f} MB/s")
            add_remote(repo, "origin", url)
            t0 = time.perf_counter()
            first = push(repo, "origin")
            t_push = time.perf_counter() - t0
            print(f"push of {args.size_mib} MiB image: {first.objects} objects, "
                  f"{first.bytes / MB:.1f} MB in {t_push:.2f} s "
                  f"({first.bytes / MB / t_push:.0f} MB/s)")

            before = bucket_bytes(url)
            repo.snapshot({"memory": work / "m2"}, message="1% changed")
            inc = push(repo, "origin")
            growth = bucket_bytes(url) - before
            print(f"incremental push, {changed / MB:.2f} MB of pages changed: sent "
                  f"{inc.objects} objects, bucket grew {growth / MB:.2f} MB = "
                  f"{growth / changed:.3f}x the changed bytes (goal <= 1.1x)")
            repo.close()

            t0 = time.perf_counter()
            cloned, _head = clone(url, str(work / "clone"))
            t_clone = time.perf_counter() - t0
            moved = bucket_bytes(url)
            cloned.close()
            base_bytes, t_base = plain_copy(server, "history/", work / "plain")
            vers_rate = moved / MB / t_clone
            base_rate = base_bytes / MB / t_base
            image_rate = size / MB / t_clone
            print(f"clone of the {args.size_mib} MiB history: {t_clone:.2f} s = "
                  f"{image_rate:.0f} MB/s of machine image restored (goal >= 100 MB/s); "
                  f"{moved / MB:.0f} MB of bundles = {vers_rate:.0f} MB/s over the wire")
            print(f"plain boto3 copy (aws s3 sync style, 10 threads): {base_bytes / MB:.0f} MB in "
                  f"{t_base:.2f} s = {base_rate:.0f} MB/s")
            print(f"ratio vers clone / plain copy (same bytes): {vers_rate / base_rate:.2f}")
            print(f"ratio vers clone / local snapshot of the same image: {t_snap / t_clone:.2f}")
            print(f"load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
