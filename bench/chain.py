"""Disk chain benchmark: does the commit pause stay flat over hundreds of commits?

Each commit freezes the disk's top and gives QEMU a new one; vers re-bases the top onto the
stored disk after each commit (vers.vmm.merge), so the chain, QEMU's open files and the pause
should not grow with the number of commits. One VM, in one run: the guest writes 64 KiB to its
disk (and syncs) before each commit; the pause of the commits around the 10th (the floor) is
compared with the pause of the last ones.

Prints p50 and p99 of both windows, their ratio (goal: pause after N <= 1.2x pause after 10),
and the disk chain length and QEMU's open disk files at both points (docs/vmm.md).

    python3 bench/chain.py [--commits 500] [--window 20] [--backing fuse] [--no-standby]
"""

from __future__ import annotations

import sys
from pathlib import Path

# Python puts this script's folder first on sys.path, where bench/bisect.py would shadow the
# standard library's bisect (which statistics and random import): the repository goes there.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

import argparse
import os
import statistics
import tempfile
import time

from bench._stats import percentile
from vers.repo import Repo
from vers.vmm.agent import guest_exec
from vers.vmm.boot import RunOptions, run_vm
from vers.vmm.commit import commit_vm
from vers.vmm.control import list_vms
from vers.vmm.state import VMRecord, registry
from vers.vmm.teardown import kill_vms


def open_disk_files(pid: int | None) -> int:
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        n += target.endswith((".qcow2", ".raw")) or "/mnt/disk-" in target
    return n


def write_some(rec: VMRecord, i: int) -> None:
    res = guest_exec(rec.runtime.agent_sock, f"dd if=/dev/urandom of=/root/w{i % 16} bs=4k "
                     "count=16 2>/dev/null; sync", 120)
    if res.returncode:
        raise RuntimeError(f"guest write failed: {res.stderr!r}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--commits", type=int, default=500, help="commits in the run (default 500)")
    ap.add_argument("--window", type=int, default=20,
                    help="commits per measured window: from the 10th, and the last ones")
    ap.add_argument("--backing", default="fuse", help="memory backing (fuse or shm)")
    ap.add_argument("--no-standby", action="store_true", help="VM without a standby child")
    args = ap.parse_args()
    if args.commits < 10 + 2 * args.window:
        ap.error(f"--commits must be at least {10 + 2 * args.window} for --window "
                 f"{args.window}")
    pauses: list[float] = []
    shape: dict[int, tuple[int, int]] = {}
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="vers-bench-chain-") as tmp:
        repo = Repo.init(Path(tmp) / "repo")
        rec = run_vm(repo, RunOptions(memory_backing=args.backing, make_current=False,
                                      standby=not args.no_standby))
        try:
            for i in range(1, args.commits + 1):
                write_some(rec, i)
                _, tm = commit_vm(repo, rec.id, f"commit {i}")
                pauses.append(tm.pause)
                if i in (10, args.commits):
                    rec = registry(repo).resolve(rec.id)
                    shape[i] = (len(rec.disks["disk"].chain), open_disk_files(rec.runtime.pid))
                if i % 50 == 0:
                    print(f"... {i} commits", file=sys.stderr)
        finally:
            kill_vms(repo, [s.id for s in list_vms(repo)])
            repo.close()
    early = pauses[9:9 + args.window]
    late = pauses[-args.window:]
    print(f"{'commits':>8} {'pause p50':>10} {'pause p99':>10} {'chain':>6} {'open files':>10}")
    for n, window in ((10, early), (args.commits, late)):
        print(f"{n:>8} {statistics.median(window):>8.1f}ms {percentile(window, 0.99):>8.1f}ms"
              f" {shape[n][0]:>6} {shape[n][1]:>10}")
    ratio = statistics.median(late) / statistics.median(early)
    print(f"ratio pause({args.commits}) / pause(10), p50: {ratio:.2f}  (goal <= 1.2); "
          f"{args.backing} backing, {time.perf_counter() - t_start:.0f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
