"""VM driver benchmark: commit and branch pause times against QEMU's own paths.

For each guest size (256 MiB and 2 GiB by default), memory backing (shm, and fuse when the FUSE
backing is available) and network (``user``, the default, and ``none``; rows side by side), in one
run:

* commit pause with ~1% of guest pages dirtied since the parent commit, against QEMU's own full
  ``migrate`` of the same VM to a file (stop -> migrate -> cont, max-bandwidth unthrottled);
* branch: how long the parent is paused, and how long until the child runs, against a bare QEMU
  start to QMP-ready with the same command line;
* store growth per incremental commit against the bytes the guest dirtied;
* with ``--swarm N``, a golden VM branched N times: branch pause and child-ready p50/p99, the
  QEMU processes of the whole tree (one standby per tree, not one per child), and the idle
  memory each extra child costs (QEMU RSS + page cache + the FUSE backing daemon's RSS).

Prints medians and the ratios vers has goals for (commit <= 0.1x QEMU, branch pause <= 30 ms,
child ready <= 1.5x bare start, store growth <= 1.1x dirty bytes; docs/vmm.md).

    python3 bench/vm.py [--sizes 256M,2G] [--backings shm,fuse,fuse+nostandby] [--net user,none]
                        [--repeat 3] [--swarm 0]
"""

from __future__ import annotations

import sys
from pathlib import Path

# Python puts this script's folder first on sys.path, where bench/bisect.py would shadow the
# standard library's bisect (which statistics and random import): the repository goes there.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

import argparse
import dataclasses
import json
import shlex
import statistics
import tempfile
import time
from typing import Any

from vers.objects.model import PAGE_SIZE as PAGE
from vers.repo import Repo
from vers.vmm.agent import guest_exec
from vers.vmm.boot import RunOptions, run_vm
from vers.vmm.branch import branch_vm
from vers.vmm.commit import commit_vm
from vers.vmm.control import list_vms
from vers.vmm.disk import DiskChain
from vers.vmm.machine import Machine, find_qemu_processes, parse_size
from vers.vmm.memory import backing_class
from vers.vmm.memory.fuse import default_state_dir
from vers.vmm.state import VMRecord, registry
from vers.vmm.teardown import kill_vms


def store_bytes(repo: Repo) -> int:
    env = repo.store.env  # type: ignore[attr-defined]
    return int((env.info()["last_pgno"] + 1) * env.stat()["psize"])


def gexec(rec: VMRecord, script: str) -> str:
    res = guest_exec(rec.runtime.agent_sock, script, 300)
    if res.returncode:
        raise RuntimeError(f"guest: {script}: {res.stderr!r}")
    return res.stdout.decode()


def qemu_full_migrate_pause(rec: VMRecord, out: Path) -> tuple[float, int]:
    """QEMU's own snapshot of everything: stop, migrate RAM + devices to a file, cont."""
    with Machine.attach(rec, qmp_timeout=300) as m:
        q = m.qmp()
        q.command("migrate-set-capabilities",
                  capabilities=[{"capability": "x-ignore-shared", "state": False}])
        q.command("migrate-set-parameters", **{"max-bandwidth": 1 << 40})
        t0 = time.perf_counter()
        q.command("stop")
        q.command("migrate", uri=f"exec:cat > {shlex.quote(str(out))}")
        q.wait_migration(timeout=600)
        q.command("cont")
        pause = (time.perf_counter() - t0) * 1000
        q.command("migrate-set-capabilities",
                  capabilities=[{"capability": "x-ignore-shared", "state": True}])
    size = out.stat().st_size
    out.unlink()
    return pause, size


def bare_start_ms(rec: VMRecord, work: Path) -> float:
    """Spawn QEMU with the VM's command line (paused, fresh RAM file) until QMP answers."""
    d = work / f"bare-{time.monotonic_ns()}"
    d.mkdir()
    mem = Path("/dev/shm") / f"vers-bench-bare-{d.name}.mem"
    with open(mem, "wb") as f:
        f.truncate(rec.spec.memory)
    bare = Machine(dataclasses.replace(rec, id="bench-bare", vm_dir=str(d)))
    bare.prepare()
    args = [a for a in bare.args(str(mem), incoming=True) if a not in ("-incoming", "defer")]
    # the disk is opened read-only so the running VM's image lock does not refuse us
    args = [a.replace("if=none", "if=none,read-only=on") for a in args]
    t0 = time.perf_counter()
    try:
        bare.spawn(args)
        bare.connect()
        return (time.perf_counter() - t0) * 1000
    finally:
        bare.shutdown()
        mem.unlink(missing_ok=True)


def dirty_one_percent(rec: VMRecord, size: int) -> None:
    pages = size // PAGE // 100
    gexec(rec, f"dd if=/dev/urandom of=/tmp/dirty bs=4096 count={pages} conv=notrunc 2>/dev/null")


def bench_one(size: int, backing: str, repeat: int, work: Path, standby: bool = False,
              net: str = "user") -> dict[str, Any]:
    repo = Repo.init(work / f"repo-{backing}-{size >> 20}M-{standby}-{net}")
    res: dict[str, Any] = {"size_mib": size >> 20, "backing": backing, "net": net}
    rec = run_vm(repo, RunOptions(memory=size, memory_backing=backing, standby=standby,
                                  make_current=False, net=net))
    try:
        gexec(rec, "setsid sh -c 'i=0; while :; do i=$((i+1)); echo $i > /tmp/counter;"
                   " sleep 0.1; done' </dev/null >/dev/null 2>&1 &")
        t0 = time.perf_counter()
        _, tm_first = commit_vm(repo, rec.id, "first (full)")
        res["first_commit_total_ms"] = round((time.perf_counter() - t0) * 1000)
        res["first_commit_pause_ms"] = tm_first.pause
        pauses, growth, dirty_bytes, totals, phases = [], [], [], [], []
        for i in range(repeat):
            dirty_one_percent(rec, size)
            before = store_bytes(repo)
            t0 = time.perf_counter()
            _, tm = commit_vm(repo, rec.id, f"incremental {i}")
            totals.append((time.perf_counter() - t0) * 1000)
            pauses.append(tm.pause)
            phases.append(tm.phases)
            growth.append(store_bytes(repo) - before)
            dirty_bytes.append((tm.extra["memory_dirty_pages"] or 0) * PAGE)
        res["commit_pause_ms"] = statistics.median(pauses)
        res["commit_total_ms"] = round(statistics.median(totals))
        res["commit_phases_ms"] = phases[len(phases) // 2]
        res["memory_dirty_bytes"] = statistics.median(dirty_bytes)
        res["store_growth_bytes"] = statistics.median(growth)
        mig = [qemu_full_migrate_pause(rec, work / "full.migrate") for _ in range(repeat)]
        res["qemu_full_migrate_pause_ms"] = statistics.median(m[0] for m in mig)
        res["qemu_full_migrate_bytes"] = mig[0][1]
        bpause, bready, bphases = [], [], []
        for _ in range(repeat):
            children, tm = branch_vm(repo, rec.id)
            bready.append(tm.extra["child_ready_ms"])
            bpause.append(tm.pause)
            bphases.append(tm.phases)
            kill_vms(repo, [c.id for c in children])
            # Branches spaced the way a person or a script that works on each child would space
            # them: 0.5 s lets a --standby parent's next standby child finish starting up.
            time.sleep(0.5)
        res["branch_pause_ms"] = statistics.median(bpause)
        res["branch_child_ready_ms"] = statistics.median(bready)
        res["branch_phases_ms"] = bphases[len(bphases) // 2]
        # the chain below the VM's top now (commits merge it): frozen, so QEMU shares it
        now = registry(repo).resolve(rec.id)
        frozen = dataclasses.replace(now, disks={n: DiskChain(d.chain[:-1], 0, d.size)
                                                 for n, d in now.disks.items()})
        res["bare_qemu_start_ms"] = statistics.median(bare_start_ms(frozen, work)
                                                      for _ in range(repeat))
    finally:
        kill_vms(repo, [s.id for s in list_vms(repo)])
        repo.close()
    res["ratio_commit_pause_vs_qemu_migrate"] = round(
        res["commit_pause_ms"] / res["qemu_full_migrate_pause_ms"], 3)
    res["ratio_child_ready_vs_bare_start"] = round(
        res["branch_child_ready_ms"] / res["bare_qemu_start_ms"], 2)
    res["ratio_store_growth_vs_dirty"] = round(
        res["store_growth_bytes"] / max(1, res["memory_dirty_bytes"]), 3)
    return res


def _rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _daemon_pids() -> list[int]:
    """The FUSE backing daemon serving this run's state directory."""
    want = str(default_state_dir())
    pids = []
    for d in Path("/proc").iterdir():
        try:
            cmd = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"vers.vmm.memory.daemon" in cmd and want.encode() in cmd:
            pids.append(int(d.name))
    return pids


def _cached() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("Cached:"):
            return int(line.split()[1]) * 1024
    return 0


def memory_use(repo: Repo) -> dict[str, int]:
    """Bytes now held by the repository's QEMU processes, the backing daemon and the page cache
    (the whole machine's: other work moves it too, so read it as an estimate)."""
    qemus = find_qemu_processes(registry(repo).root)
    return {"qemu_rss": sum(_rss(p) for p in qemus.values()), "qemus": len(qemus),
            "daemon_rss": sum(_rss(p) for p in _daemon_pids()), "page_cache": _cached()}


def bench_swarm(size: int, backing: str, children: int, work: Path,
                standby: bool = True) -> dict[str, Any]:
    """A golden VM branched ``children`` times, 0.5 s apart, the children left running."""
    repo = Repo.init(work / f"swarm-{backing}-{size >> 20}M-{standby}")
    rec = run_vm(repo, RunOptions(memory=size, memory_backing=backing, standby=standby,
                                  make_current=False))
    res: dict[str, Any] = {"size_mib": size >> 20, "children": children}
    try:
        time.sleep(2)  # the golden VM's standby (if any) up and idle
        before = memory_use(repo)
        pauses, ready = [], []
        for _ in range(children):
            _, tm = branch_vm(repo, rec.id)
            pauses.append(tm.pause)
            ready.append(tm.extra["child_ready_ms"])
            time.sleep(0.5)
        time.sleep(2)
        after = memory_use(repo)
    finally:
        kill_vms(repo, [s.id for s in list_vms(repo)])
        repo.close()
    res.update(pause=pauses, ready=ready, qemus=after["qemus"])
    res["per_child"] = {k: (after[k] - before[k]) / children
                        for k in ("qemu_rss", "daemon_rss", "page_cache")}
    return res


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def print_swarm(rows: list[dict[str, Any]]) -> None:
    print(f"{'swarm':<16} {'RAM':>6} {'kids':>4} {'pause p50':>9} {'p99':>8} {'ready p50':>9}"
          f" {'p99':>8} {'QEMUs':>5} {'MiB/kid: QEMU':>13} {'cache':>6} {'daemon':>6}"
          f" {'total':>6}")
    for r in rows:
        pc = {k: v / (1 << 20) for k, v in r["per_child"].items()}
        print(f"{r['backing']:<16} {r['size_mib']:>5}M {r['children']:>4}"
              f" {statistics.median(r['pause']):>7.1f}ms {_pct(r['pause'], 0.99):>6.1f}ms"
              f" {statistics.median(r['ready']):>7.1f}ms {_pct(r['ready'], 0.99):>6.1f}ms"
              f" {r['qemus']:>5} {pc['qemu_rss']:>13.1f} {pc['page_cache']:>6.1f}"
              f" {pc['daemon_rss']:>6.1f} {sum(pc.values()):>6.1f}")
    print("QEMUs: processes of the whole tree after the swarm (golden + children + standbys); "
          "MiB/kid: idle memory each extra child added (page cache: machine-wide, an estimate)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="256M,2G")
    ap.add_argument("--backings", default="shm,fuse",
                    help="comma list; fuse+nostandby = VMs run with --no-standby")
    ap.add_argument("--net", default="user,none", help="comma list of --net modes")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", action="store_true", help="print raw results as JSON too")
    ap.add_argument("--swarm", type=int, default=0, metavar="N",
                    help="also branch a golden VM N times per backing (first size) and print "
                         "branch times and idle memory per child")
    args = ap.parse_args()
    results = []
    swarm: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="vers-bench-vm-") as tmp:
        for backing in args.backings.split(","):
            try:
                backing_class(backing.split("+")[0])
            except Exception as exc:  # noqa: BLE001 - report and go on with the others
                print(f"skipping backing {backing}: {exc}", file=sys.stderr)
                continue
            for s in args.sizes.split(","):
                for net in args.net.split(","):
                    print(f"... {backing} {s} net {net}", file=sys.stderr)
                    res = bench_one(parse_size(s), backing.split("+")[0], args.repeat,
                                    Path(tmp), standby=not backing.endswith("+nostandby"),
                                    net=net)
                    res["backing"] = backing
                    results.append(res)
            if args.swarm > 0:
                print(f"... swarm of {args.swarm} on {backing}", file=sys.stderr)
                row = bench_swarm(parse_size(args.sizes.split(",")[0]), backing.split("+")[0],
                                  args.swarm, Path(tmp),
                                  standby=not backing.endswith("+nostandby"))
                row["backing"] = backing
                swarm.append(row)
    hdr = (f"{'backing':<16} {'net':<4} {'RAM':>6} {'commit pause':>12} {'QEMU migrate':>12}"
           f" {'ratio':>6}"
           f" {'branch pause':>12} {'child ready':>11} {'bare start':>10} {'ratio':>6}"
           f" {'dirty KiB':>9} {'growth KiB':>10} {'ratio':>6}")
    print(hdr)
    for r in results:
        print(f"{r['backing']:<16} {r['net']:<4} {r['size_mib']:>5}M"
              f" {r['commit_pause_ms']:>10.1f}ms"
              f" {r['qemu_full_migrate_pause_ms']:>10.1f}ms"
              f" {r['ratio_commit_pause_vs_qemu_migrate']:>6.3f}"
              f" {r['branch_pause_ms']:>10.1f}ms {r['branch_child_ready_ms']:>9.1f}ms"
              f" {r['bare_qemu_start_ms']:>8.1f}ms {r['ratio_child_ready_vs_bare_start']:>6.2f}"
              f" {r['memory_dirty_bytes'] / 1024:>9.0f} {r['store_growth_bytes'] / 1024:>10.0f}"
              f" {r['ratio_store_growth_vs_dirty']:>6.3f}")
    print("goals: commit ratio <= 0.1, branch pause <= 30 ms, child-ready ratio <= 1.5 "
          "(same at every size), store growth ratio <= 1.1")
    if swarm:
        print_swarm(swarm)
    if args.json:
        print(json.dumps(results + swarm, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
