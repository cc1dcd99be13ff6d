"""Density benchmark: ``vers branch --count N`` of a guest that touched all of its RAM, and what
each idle child costs the host.

One run: a golden VM (256 MiB by default, the FUSE backing with its standby child) writes all of
its free RAM once (tmpfs files, then removed), then

* single branches, one child each (killed again): p50/p99 of the time until the child runs, the
  baseline;
* one ``branch_vm(count=N)``: the time until all N children run, against that baseline (goal:
  <= 3x);
* after the children have idled for a while: the extra host memory each one costs (QEMU's
  private RSS + the pages of its guest-RAM file in the page cache, mapped or not + the FUSE
  backing daemon's RSS and the pages its overlay layers hold, on tmpfs; goal <= 16 MiB; the
  machine-wide page-cache growth is printed as a cross-check), where it goes (bench._procmem:
  the translation buffer, heap, arenas, other anonymous memory, mapped guest RAM; as the branch
  returned and after idling, and the golden VM's) and the CPU each idle child uses, and from
  memory and CPU how many idle children this host holds;
* the CPU an idle guest uses on its own (the golden VM, with nothing running in it).

    python3 bench/swarm.py [--children 32] [--size 256M] [--single 5] [--idle 10]
"""

from __future__ import annotations

import sys
from pathlib import Path

# Python puts this script's folder first on sys.path, where bench/bisect.py would shadow the
# standard library's bisect (which statistics and random import): the repository goes there.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

import argparse
import json
import os
import tempfile
import time
from typing import Any

from bench import _procmem, _stats
from vers.repo import Repo
from vers.vmm.agent import guest_exec
from vers.vmm.boot import RunOptions, run_vm
from vers.vmm.branch import branch_vm
from vers.vmm.control import list_vms
from vers.vmm.machine import find_qemu_processes, parse_size
from vers.vmm.memory.fuse import default_state_dir
from vers.vmm.state import VMRecord, registry
from vers.vmm.teardown import kill_vms

MiB = 1 << 20
CLK_TCK = os.sysconf("SC_CLK_TCK")
#: fills the guest's free RAM once (half on each tmpfs: each may take half of RAM), then frees it
TOUCH_ALL = ("free=$(awk '/MemAvailable/ {print int($2 / 1024 * 0.9 / 2)}' /proc/meminfo);"
             " dd if=/dev/zero of=/tmp/fill bs=1M count=$free 2>/dev/null;"
             " dd if=/dev/zero of=/dev/shm/fill bs=1M count=$free 2>/dev/null;"
             " rm -f /tmp/fill /dev/shm/fill; echo $((free * 2))")


def p50_p99(values: list[float]) -> dict[str, float]:
    p50, p99 = _stats.p50_p99(values)
    return {"p50": round(p50, 1), "p99": round(p99, 1)}


def _status_kib(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _cpu_ticks(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])  # utime + stime


def _meminfo(field: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _daemon_pids() -> list[int]:
    """The FUSE backing daemon serving this run's state directory."""
    want = str(default_state_dir()).encode()
    pids = []
    for d in Path("/proc").iterdir():
        try:
            cmd = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"vers.vmm.memory.daemon" in cmd and want in cmd:
            pids.append(int(d.name))
    return pids


def _layer_bytes() -> int:
    """Bytes the backing daemon's overlay layers hold (the pages the VMs wrote back; memory
    when its state directory is on tmpfs, as /dev/shm is)."""
    total = 0
    for f in (default_state_dir() / "layers").glob("*.pages"):
        try:
            total += f.stat().st_blocks * 512
        except OSError:
            continue
    return total


def memory_use(repo: Repo) -> dict[str, int]:
    """Bytes held now: private (anonymous) RSS of the repository's QEMUs, the pages of their
    guest-RAM files in the page cache, mapped or not (each VM's RAM file is its own, so these
    are the page cache its guest holds; QEMU's libraries, also file pages, are shared by all
    and not counted), the backing daemon's RSS, and the machine's page cache (other work moves
    it too: a cross-check only)."""
    qemus = find_qemu_processes(registry(repo).root)
    ram = [_procmem.ram_path_of(p) for p in qemus.values()]
    return {"qemu_anon": sum(_status_kib(p, "RssAnon") for p in qemus.values()) * 1024,
            "ram_cached": sum(_procmem.cached_pages(r) for r in ram if r) * _procmem.PAGE,
            "daemon_rss": sum(_status_kib(p, "VmRSS") for p in _daemon_pids()) * 1024,
            "daemon_layers": _layer_bytes(),
            "page_cache": _meminfo("Cached"), "qemus": len(qemus)}


def child_breakdown(pids: list[int]) -> dict[str, dict[str, float]]:
    """Mean and max MiB per kind (bench._procmem) over the QEMUs ``pids``: where an idle
    child's memory goes."""
    rows = [r for r in (_procmem.breakdown(p, _procmem.ram_path_of(p)) for p in pids) if r]
    if not rows:
        return {}
    return {k: {"mean": round(sum(r[k] for r in rows) / len(rows) / 1024, 2),
                "max": round(max(r[k] for r in rows) / 1024, 2)} for k in rows[0]}


def idle_cpu(pids: list[int], seconds: float) -> float:
    """CPU each of ``pids`` used over ``seconds``, as a fraction of one core (mean)."""
    before = {p: _cpu_ticks(p) for p in pids}
    time.sleep(seconds)
    used = sum(_cpu_ticks(p) - before[p] for p in pids) / CLK_TCK
    return used / seconds / max(1, len(pids))


def gexec(rec: VMRecord, script: str) -> str:
    res = guest_exec(rec.runtime.agent_sock, script, 600)
    if res.returncode:
        raise RuntimeError(f"guest: {script}: {res.stderr!r}")
    return res.stdout.decode()


def bench_swarm(size: int, children: int, single: int, idle: float, work: Path,
                backing: str) -> dict[str, Any]:
    repo = Repo.init(work / "swarm")
    rec = run_vm(repo, RunOptions(memory=size, memory_backing=backing, make_current=False))
    res: dict[str, Any] = {"size_mib": size >> 20, "children": children, "backing": backing}
    try:
        res["touched_mib"] = int(gexec(rec, TOUCH_ALL))
        time.sleep(2)  # the golden VM's standby up and idle
        res["idle_guest_cpu"] = idle_cpu([rec.runtime.pid or 0], idle)
        ready = []
        for _ in range(single):
            kids, tm = branch_vm(repo, rec.id)
            ready.append(tm.extra["child_ready_ms"])
            kill_vms(repo, [c.id for c in kids])
            time.sleep(0.5)  # the next standby up
        res["single_ready_ms"] = p50_p99(ready)
        time.sleep(2)
        before = memory_use(repo)
        t0 = time.perf_counter()
        kids, tm = branch_vm(repo, rec.id, count=children)
        res["count_total_ms"] = round((time.perf_counter() - t0) * 1000, 1)
        res["count_ready_ms"] = tm.extra["child_ready_ms"]
        res["count_pause_ms"] = tm.pause
        res["count_phases_ms"] = {**tm.phases, **{k: v for k, v in tm.extra.items()
                                                  if k.endswith("_ms")}}
        res["after_branch"] = child_breakdown([c.runtime.pid or 0 for c in kids])
        time.sleep(idle)
        res["idle_child_cpu"] = idle_cpu([c.runtime.pid or 0 for c in kids], idle)
        after = memory_use(repo)
        res["qemus"] = after["qemus"]
        res["idle"] = child_breakdown([c.runtime.pid or 0 for c in kids])
        res["golden"] = child_breakdown([rec.runtime.pid or 0])
    finally:
        kill_vms(repo, [s.id for s in list_vms(repo)])
        repo.close()
    res["per_child_mib"] = {k: round((after[k] - before[k]) / children / MiB, 2)
                            for k in ("qemu_anon", "ram_cached", "daemon_rss", "daemon_layers",
                                      "page_cache")}
    pc = res["per_child_mib"]
    pc["total"] = round(pc["qemu_anon"] + pc["ram_cached"] + pc["daemon_rss"]
                        + pc["daemon_layers"], 2)
    return res


_WHEN = {"after_branch": "each child (mean) as the branch returned",
         "idle": "each child (mean) after idling", "golden": "the golden VM"}


def print_result(r: dict[str, Any]) -> None:
    pc = r["per_child_mib"]
    single = r["single_ready_ms"]
    print(f"guest {r['size_mib']} MiB ({r['backing']}), touched {r['touched_mib']} MiB of it")
    print(f"single branch, child running after: p50 {single['p50']:.1f} ms, p99 "
          f"{single['p99']:.1f} ms")
    print(f"branch --count {r['children']}: all running after {r['count_ready_ms']:.1f} ms "
          f"(call returned after {r['count_total_ms']:.1f} ms), parent paused "
          f"{r['count_pause_ms']:.1f} ms; {r['count_ready_ms'] / single['p50']:.1f}x a single "
          "branch (goal <= 3x)")
    print(f"per idle child: QEMU private {pc['qemu_anon']:.1f} MiB + its guest RAM in the page "
          f"cache {pc['ram_cached']:.1f} + daemon {pc['daemon_rss']:.1f} + the pages it holds "
          f"for the child {pc['daemon_layers']:.1f} = {pc['total']:.1f} MiB "
          f"(goal <= 16; the machine's page cache grew {pc['page_cache']:.1f} MiB per child)")
    for when in ("after_branch", "idle", "golden"):
        b = r.get(when) or {}
        if b:
            print(f"  {_WHEN[when]}: " + ", ".join(
                f"{k} {v['mean']:.1f}" + (f" (max {v['max']:.1f})" if when != "golden" else "")
                for k, v in b.items()) + " MiB")
    print("branch --count phases (ms): " + ", ".join(f"{k} {v:.1f}" for k, v in
                                                     r["count_phases_ms"].items()))
    cpu = r["idle_child_cpu"]
    total = _meminfo("MemTotal")
    by_mem = int(total / (max(pc["total"], 0.1) * MiB))
    by_cpu = int(os.cpu_count() or 1) / cpu if cpu > 0 else float("inf")
    print(f"idle CPU: the golden guest {r['idle_guest_cpu'] * 100:.1f}% of a core, each idle "
          f"child {cpu * 100:.1f}%")
    print(f"this host ({total / (1 << 30):.0f} GiB, {os.cpu_count()} cores) holds ~{by_mem} idle "
          f"children by memory, ~{by_cpu:.0f} before their idle CPU fills the cores "
          f"(goal >= 500); QEMUs of the tree now: {r['qemus']}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--children", type=int, default=32, help="children of the one branch")
    ap.add_argument("--size", default="256M", help="guest RAM")
    ap.add_argument("--single", type=int, default=5, help="single branches for the baseline")
    ap.add_argument("--idle", type=float, default=10.0,
                    help="seconds the children idle before memory and CPU are read")
    ap.add_argument("--backing", default="fuse", help="memory backing (standby needs fuse)")
    ap.add_argument("--json", action="store_true", help="print the raw result as JSON too")
    args = ap.parse_args()
    if args.children < 1 or args.single < 1:
        ap.error("--children and --single must be at least 1")
    with tempfile.TemporaryDirectory(prefix="vers-bench-swarm-") as tmp:
        res = bench_swarm(parse_size(args.size), args.children, args.single, args.idle,
                          Path(tmp), args.backing)
    print_result(res)
    if args.json:
        print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
