"""Getting things in and out of a VM, against floors measured in the same run.

* ``vers cp`` of a file into and out of a running VM (default 256 MiB), in MB/s, against the
  floor: the same number of raw bytes through the same agent channel with the guest only
  discarding them (``cat >/dev/null``) or producing them (``dd if=/dev/zero``). Into the VM
  there is a second floor, the port's own: the bytes in the frames a put sends, on a channel the
  agent has not opened, so that it reads and drops them (no pipe, no process), timed to the
  answer of a command sent after them;
* ``vers cp COMMIT:PATH`` of a 64 MiB file from a commit of the 256 MiB default disk: bytes read
  from the store against the file's size;
* ``vers exec VM -- true`` round trip against ``vers --help``, and in-process through
  ``vers.vmm.agent.run``.

Each copy and floor is measured ``--repeat`` times, interleaved (floor, copy, floor, copy...) so
that a change in the machine's load touches both; p50 and p99 (interpolated between the nearest
runs, bench/_stats.py) of the times are printed as MB/s, and the ratio is of the p50s. The first
copy into the fresh guest is printed on its own: memory the guest has never touched costs QEMU a
host page fault per page, which the repeats (reusing the pages the guest freed) do not pay. An
agent of protocol 1.3 or later takes a file in itself (FS ``put``); the copy through ``cat`` that
older agents get is measured beside it.

Goals: cp >= 0.5x the floor and >= 50 MB/s both ways; store reads <= 1.2x the file; in-process
round trip <= 20 ms.

    python3 bench/transfer.py [--size 256M] [--memory 1G] [--repeat 5] [--only-cp]
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

from bench._stats import percentile
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


def line(what: str, size: int, times: list[float], floor: list[float] | None = None) -> str:
    """MB/s at the p50 and p99 times; with ``floor``, the ratio of the p50s."""
    text = (f"{what:<40} p50 {mbps(size, percentile(times, 0.5)):6.1f} MB/s  "
            f"p99 {mbps(size, percentile(times, 0.99)):6.1f} MB/s")
    if floor is not None:
        text += f"   ratio {percentile(floor, 0.5) / percentile(times, 0.5):.2f}x of the floor"
    return text


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", default="256M")
    ap.add_argument("--memory", default="1G", help="guest RAM (the copy lands in its /tmp)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--only-cp", action="store_true",
                    help="skip the COMMIT:PATH and round-trip measurements")
    args = ap.parse_args()
    size = parse_size(args.size)
    t: dict[str, list[float]] = {k: [] for k in ("floor_in", "port_in", "cp_in", "cat_in",
                                                 "floor_out", "cp_out")}
    with tempfile.TemporaryDirectory(prefix="vers-bench-transfer-") as tmp:
        repo = Repo.init(Path(tmp) / "repo")
        rec = verbs.run(repo, RunOptions(
            name="bench", memory=parse_size(args.memory), memory_backing="shm", standby=False))
        try:
            sock = rec.runtime.agent_sock
            count = size // (64 << 10)
            src = Path(tmp) / "file"
            with open(src, "wb") as f:
                f.writelines(os.urandom(CHUNK) for _ in range(size // CHUNK))
            out = Path(tmp) / "out"
            out.mkdir()
            conn = agent.acquire(sock, 30)
            minor = conn.minor
            agent.release(conn)
            direct = minor >= agent.PUT_MINOR
            # the first copy into a fresh guest: each page the guest has never used costs a
            # host page fault in QEMU (and zeroing) on top of the copy; the repeats reuse pages
            cold = transfer.copy(repo, str(src), "bench:/tmp/file").seconds
            agent.run(sock, ["rm", "-f", "/tmp/file"])
            for _ in range(args.repeat):
                t["floor_in"].append(timed(lambda: agent.run(
                    sock, ["sh", "-c", "cat >/dev/null"], input=bytes(size), timeout=900)))
                t["port_in"].append(port_floor(sock, size))
                t["cp_in"].append(transfer.copy(repo, str(src), "bench:/tmp/file").seconds)
                agent.run(sock, ["rm", "-f", "/tmp/file"])
                if direct:
                    t["cat_in"].append(copy_in_through_cat(repo, src, "bench:/tmp/file"))
                    agent.run(sock, ["rm", "-f", "/tmp/file"])
            transfer.copy(repo, str(src), "bench:/tmp/file")
            for _ in range(args.repeat):
                t["floor_out"].append(timed(lambda: agent.run(
                    sock, ["dd", "if=/dev/zero", "bs=64k", f"count={count}"], timeout=900)))
                t["cp_out"].append(transfer.copy(repo, "bench:/tmp/file", str(out)).seconds)
                assert (out / "file").stat().st_size == size
                (out / "file").unlink()
            agent.run(sock, ["rm", "-f", "/tmp/file"])

            if not args.only_cp:
                file_bytes = 64 << 20
                agent.run(sock, ["sh", "-c",
                                 f"head -c {file_bytes} /dev/urandom > /root/f64; sync"],
                          timeout=600)
                cid = lifecycle_commit(repo)
                stats = transfer.copy(repo, f"{cid}:/root/f64", str(out / "f64"))

                env = vers_env()
                help_s = statistics.median(timed(lambda: subprocess.run(
                    ["vers", "--help"], env=env, capture_output=True, check=True))
                    for _ in range(5))
                exec_s = statistics.median(timed(lambda: subprocess.run(
                    ["vers", "-C", str(repo.root), "exec", "bench", "--", "true"], env=env,
                    capture_output=True, check=True)) for _ in range(5))
                agent.run(sock, ["true"])
                api_s = statistics.median(timed(lambda: agent.run(sock, ["true"]))
                                          for _ in range(20))
        finally:
            verbs.kill(repo, [rec.id])
            repo.close()
    mib = size >> 20
    print(f"agent protocol 1.{minor}; {args.repeat} repeats; load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} (goals: >= 0.5x the floor and "
          ">= 50 MB/s both ways)")
    print(line("floor in (cat >/dev/null)", size, t["floor_in"]))
    print(line("floor in (the port: agent drops)", size, t["port_in"]))
    print(line(f"copy of {mib} MiB into a fresh VM (once)", size, [cold], t["floor_in"]))
    print(line(f"copy of {mib} MiB into the VM", size, t["cp_in"], t["floor_in"]))
    print(line("  against the port's floor", size, t["cp_in"], t["port_in"]))
    if t["cat_in"]:
        print(line("  the same through cat (old agents)", size, t["cat_in"], t["floor_in"]))
    print(line("floor out (dd if=/dev/zero)", size, t["floor_out"]))
    print(line(f"copy of {mib} MiB out of the VM", size, t["cp_out"], t["floor_out"]))
    if not args.only_cp:
        print(f"cp COMMIT:PATH of 64 MiB: {stats.store_bytes_read} bytes read from the store, "
              f"{stats.store_bytes_read / file_bytes:.3f}x the file (goal <= 1.2x)")
        print(f"vers exec VM -- true: {exec_s * 1000:.0f} ms   vers --help: "
              f"{help_s * 1000:.0f} ms   ratio {exec_s / help_s:.2f}x")
        print(f"in-process agent.run(['true']): {api_s * 1000:.1f} ms (goal <= 20 ms)")
    return 0


def port_floor(sock: str, size: int) -> float:
    """``size`` bytes in put-sized STDIN frames on a channel the agent never opened (it reads
    and drops them), until the answer of a command sent after them: the port is one stream, so
    the answer comes once the guest has read every byte before it."""
    conn = agent.acquire(sock, 30)
    ch = conn.new_channel()
    try:
        piece = memoryview(bytes(agent.PUT_CHUNK))
        t0 = time.perf_counter()
        for _ in range(size // agent.PUT_CHUNK):
            conn.send_data(agent.STDIN, ch.id, piece)
        agent.run(sock, ["true"])
        return time.perf_counter() - t0
    finally:
        ch.close()


def copy_in_through_cat(repo: Repo, src: Path, dst: str) -> float:
    """A file copied in the way agents older than protocol 1.3 take it (a guest ``cat``)."""
    loc = transfer.parse_location(repo, dst)
    source = transfer.LocalSource(str(src), False)
    t0 = time.perf_counter()
    transfer._through_pipe(source, transfer.VMSink(loc, source.name, src, direct=False))
    return time.perf_counter() - t0


def lifecycle_commit(repo: Repo) -> str:
    p = subprocess.run(["vers", "-C", str(repo.root), "commit", "bench", "-m", "bench"],
                       env=vers_env(), capture_output=True, text=True, check=True)
    return p.stdout.strip()


if __name__ == "__main__":
    sys.exit(main())
