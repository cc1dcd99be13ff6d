"""`vers record` benchmark: a recording at 1 commit/s of a guest writing steadily to memory and
disk, with a retention policy, through the real CLI and its background recorder.

In one run:

* floor: the guest pause of plain `vers commit`s of the same VM, without and with the file-system
  sync and freeze (no recording running);
* the recording (default 2 minutes; ``--minutes 30`` for the long figure): every recorded
  commit's guest pause (p50, p99; goal p99 <= 2x p50, and p50 against the floor), ticks missed;
* store: after the recording and a final `vers gc --grace 0 --max-unused 0`, the growth of the
  store's packs against the dirty bytes of the commits retention kept (goal <= 1.1x), and
  against the dirty bytes of every recorded commit (what a recording without retention would
  have stored at best). A kept commit whose parent was pruned may need pages its own dirty
  count does not include, so the first ratio is an upper bound of the store's overhead.

    python3 bench/record.py [--minutes 2] [--every 1s] [--memory 256M] [--keep ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

# Python puts this script's folder first on sys.path, where bench/bisect.py would shadow the
# standard library's bisect (which statistics and random import): the repository goes there.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

import argparse
import json
import shlex
import statistics
import tempfile
import time

from bench._stats import percentile
from vers.porcelain.record import MESSAGE_PREFIX
from vers.repo import Repo
from vers.testing import run_vers
from vers.vmm.agent import guest_exec
from vers.vmm.boot import RunOptions, run_vm
from vers.vmm.commit import commit_vm
from vers.vmm.machine import parse_size
from vers.vmm.memory import default_backing
from vers.vmm.state import VMRecord, registry
from vers.vmm.teardown import kill_vms

#: 64 KiB to a tmpfs file (guest memory) and 64 KiB to a disk file every 100 ms, at offsets that
#: wrap around 16 MiB, so the working set stays bounded like a service's
WRITER = ("setsid sh -c 'i=0; while :; do o=$((i % 256));"
          " dd if=/dev/urandom of=/tmp/mem.bin bs=64k count=1 seek=$o conv=notrunc 2>/dev/null;"
          " dd if=/dev/urandom of=/root/disk.bin bs=64k count=1 seek=$o conv=notrunc 2>/dev/null;"
          " i=$((i+1)); sleep 0.1; done' </dev/null >/dev/null 2>&1 &")
MiB = 1 << 20


def vers(repo: Repo, *args: str) -> str:
    p = run_vers(repo.root, *args, timeout=600)
    if p.returncode:
        raise RuntimeError(f"vers {shlex.join(args)} failed: {p.stderr.strip()}")
    return p.stdout


def floor(repo: Repo, rec: VMRecord, n: int, sync: bool) -> list[float]:
    return [commit_vm(repo, rec.id, f"floor {i}", sync=sync)[1].pause for i in range(n)]


def record(repo: Repo, rec: VMRecord, args: argparse.Namespace) -> tuple[list[float],
                                                                         dict[int, int], dict]:
    """Run the recording; returns the pauses, {commit time: dirty bytes} and the last status."""
    vers(repo, "record", rec.id, "--every", args.every, *shlex.split(args.keep),
         "--prune-every", args.prune_every, "--sweep-every", args.sweep_every)
    reg = registry(repo)
    pauses: list[float] = []
    dirty_at: dict[int, int] = {}
    seen: str | None = None
    end = time.monotonic() + args.minutes * 60
    last: dict = {}
    while time.monotonic() < end:
        fresh = reg.get(rec.id)
        last = dict(fresh.runtime.recording) if fresh else {}
        cid = last.get("last_commit")
        if cid and cid != seen:
            seen = cid
            pauses.append(float(last["last_pause_ms"]))
            dirty_at[int(repo.get_commit(cid).time)] = int(last["last_dirty_bytes"])
        time.sleep(0.05)
    vers(repo, "record", "--stop", rec.id)
    return pauses, dirty_at, last


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=2.0)
    ap.add_argument("--every", default="1s")
    ap.add_argument("--memory", default="256M")
    ap.add_argument("--backing", default=default_backing(), help="memory backing (shm, fuse)")
    ap.add_argument("--keep", default="--keep-last 30 --keep-minutely 60 --keep-hourly 24 "
                                      "--keep-daily 7",
                    help="retention options passed to vers record")
    ap.add_argument("--prune-every", default="30s")
    ap.add_argument("--sweep-every", default="1m")
    ap.add_argument("--floor-commits", type=int, default=8)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="vers-bench-record-") as tmp:
        repo = Repo.init(Path(tmp) / "repo")
        rec = run_vm(repo, RunOptions(name="rec", memory=parse_size(args.memory),
                                      memory_backing=args.backing, standby=False))
        try:
            res = guest_exec(rec.runtime.agent_sock, WRITER, 60)
            assert res.returncode == 0, res
            commit_vm(repo, rec.id, "base")
            plain = floor(repo, rec, args.floor_commits, sync=False)
            synced = floor(repo, rec, args.floor_commits, sync=True)
            before = repo.store.stats().bytes
            pauses, dirty_at, last = record(repo, rec, args)
            vers(repo, "gc", "--grace", "0", "--max-unused", "0")
            growth = repo.store.stats().bytes - before
            log = json.loads(vers(repo, "log", "--format", "json", "main"))
            kept = [c for c in log if c["message"].startswith(MESSAGE_PREFIX)]
            kept_dirty = sum(dirty_at.get(int(c["time"]), 0) for c in kept)
        finally:
            kill_vms(repo, [rec.id])
            repo.close()
    p50, p99 = percentile(pauses, 0.5), percentile(pauses, 0.99)
    f50 = statistics.median(plain)
    print(f"guest {args.memory} on {args.backing}; writer: 640 KiB/s to memory and to disk; "
          f"recording {args.minutes:g} min every {args.every} with {args.keep}")
    print(f"floor: plain commit pause p50 {f50:.1f} ms (--no-sync), "
          f"{statistics.median(synced):.1f} ms (sync + freeze)")
    print(f"recording: {last.get('commits', 0)} commits, {last.get('missed', 0)} ticks missed, "
          f"{last.get('failures', 0)} failed, {last.get('pruned', 0)} pruned, {len(kept)} kept")
    print(f"guest pause: p50 {p50:.1f} ms, p99 {p99:.1f} ms; p99/p50 {p99 / p50:.2f}x "
          f"(goal <= 2x); p50/floor {p50 / f50:.2f}x")
    total = int(last.get("dirty_bytes", 0))
    print(f"store growth after retention + gc: {growth / MiB:.1f} MiB; dirty bytes of the kept "
          f"commits {kept_dirty / MiB:.1f} MiB -> {growth / max(kept_dirty, 1):.2f}x "
          f"(goal <= 1.1x); of all recorded commits {total / MiB:.1f} MiB -> "
          f"{growth / max(total, 1):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
