"""Getting things in and out of a VM, against floors measured in the same run.

* ``vers cp`` of a file into and out of a running VM (default 256 MiB), in MB/s, against the
  floor: the same number of raw bytes through the same agent channel with the guest only
  discarding them (``cat >/dev/null``) or producing them (``dd if=/dev/zero``);
* ``vers cp COMMIT:PATH`` of a 64 MiB file from a commit of the 256 MiB default disk: bytes read
  from the store against the file's size;
* ``vers exec VM -- true`` round trip against ``vers --help``, and in-process through
  ``vers.vmm.agent.run``.

Goals: cp >= 0.5x the floor and >= 50 MB/s both ways; store reads <= 1.2x the file; in-process
round trip <= 20 ms.

    python3 bench/transfer.py [--size 256M] [--memory 1G]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vers.porcelain import transfer
from vers.porcelain import vm as verbs
from vers.repo import Repo
from vers.testing import vers_env
from vers.vmm import agent
from vers.vmm.boot import RunOptions
from vers.vmm.machine import parse_size

CHUNK = 1 << 20


def timed(fn: object) -> float:
    t0 = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - t0


def mbps(n: int, seconds: float) -> float:
    return n / seconds / 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", default="256M")
    ap.add_argument("--memory", default="1G", help="guest RAM (the copy lands in its /tmp)")
    args = ap.parse_args()
    size = parse_size(args.size)
    with tempfile.TemporaryDirectory(prefix="vers-bench-transfer-") as tmp:
        repo = Repo.init(Path(tmp) / "repo")
        rec = verbs.run(repo, RunOptions(
            name="bench", memory=parse_size(args.memory), memory_backing="shm", standby=False))
        try:
            sock = rec.runtime.agent_sock
            count = size // (64 << 10)
            floor_in = timed(lambda: agent.run(sock, ["sh", "-c", "cat >/dev/null"],
                                               input=bytes(size), timeout=900))
            floor_out = timed(lambda: agent.run(
                sock, ["dd", "if=/dev/zero", "bs=64k", f"count={count}"], timeout=900))
            src = Path(tmp) / "file"
            with open(src, "wb") as f:
                f.writelines(os.urandom(CHUNK) for _ in range(size // CHUNK))
            cp_in = transfer.copy(repo, str(src), "bench:/tmp/file").seconds
            out = Path(tmp) / "out"
            out.mkdir()
            cp_out = transfer.copy(repo, "bench:/tmp/file", str(out)).seconds
            assert (out / "file").stat().st_size == size
            agent.run(sock, ["rm", "-f", "/tmp/file"])

            file_bytes = 64 << 20
            agent.run(sock, ["sh", "-c", f"head -c {file_bytes} /dev/urandom > /root/f64; sync"],
                      timeout=600)
            cid = lifecycle_commit(repo)
            stats = transfer.copy(repo, f"{cid}:/root/f64", str(out / "f64"))

            env = vers_env()
            help_s = statistics.median(timed(lambda: subprocess.run(
                ["vers", "--help"], env=env, capture_output=True, check=True)) for _ in range(5))
            exec_s = statistics.median(timed(lambda: subprocess.run(
                ["vers", "-C", str(repo.root), "exec", "bench", "--", "true"], env=env,
                capture_output=True, check=True)) for _ in range(5))
            agent.run(sock, ["true"])
            api_s = statistics.median(timed(lambda: agent.run(sock, ["true"]))
                                      for _ in range(20))
        finally:
            verbs.kill(repo, [rec.id])
            repo.close()
    print(f"copy of {size >> 20} MiB into the VM:  {mbps(size, cp_in):7.1f} MB/s   floor "
          f"{mbps(size, floor_in):7.1f} MB/s   ratio {floor_in / cp_in:.2f}x  (goal >= 0.5x, "
          ">= 50 MB/s)")
    print(f"copy of {size >> 20} MiB out of the VM: {mbps(size, cp_out):7.1f} MB/s   floor "
          f"{mbps(size, floor_out):7.1f} MB/s   ratio {floor_out / cp_out:.2f}x  (goal >= 0.5x, "
          ">= 50 MB/s)")
    print(f"cp COMMIT:PATH of 64 MiB: {stats.store_bytes_read} bytes read from the store, "
          f"{stats.store_bytes_read / file_bytes:.3f}x the file (goal <= 1.2x)")
    print(f"vers exec VM -- true: {exec_s * 1000:.0f} ms   vers --help: {help_s * 1000:.0f} ms   "
          f"ratio {exec_s / help_s:.2f}x")
    print(f"in-process agent.run(['true']): {api_s * 1000:.1f} ms (goal <= 20 ms)")
    return 0


def lifecycle_commit(repo: Repo) -> str:
    p = subprocess.run(["vers", "-C", str(repo.root), "commit", "bench", "-m", "bench"],
                       env=vers_env(), capture_output=True, text=True, check=True)
    return p.stdout.strip()


if __name__ == "__main__":
    sys.exit(main())
