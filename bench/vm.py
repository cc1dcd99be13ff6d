"""VM driver benchmark: commit and branch pauses and child start, p50 and p99, against floors.

For each guest size (256 MiB and 2 GiB by default), memory backing (shm, and fuse when the FUSE
backing is available) and network (``user``, the default, and ``none``; rows side by side), in one
run on the same VM:

* commit pause with ~1% of guest pages dirtied since the parent commit;
* branch: how long the parent is paused, and how long from the start of the branch until the
  child runs (answers exec);
* the floors: QEMU's own ``stop`` + ``cont`` QMP round trip (the least any pause can be), a bare
  QEMU start to QMP-ready with the same command line (the least a child without a standby can
  take), and QEMU's own full ``migrate`` of the VM to a file (stop -> migrate -> cont);
* restore of the last commit (in-process ``restore_commit``) until its guest answers exec;
* store growth per incremental commit against the bytes the guest dirtied.

Each figure is printed as p50 and p99 over ``--repeat`` runs (p99 interpolated: of 50 runs,
half way between the two largest); ``--phases`` adds where each millisecond of the pauses and of
child start goes, as p50 and p99 of each phase (``vers commit -v`` / ``branch -v`` print them).
Density (``vers branch --count N``, memory and CPU per idle child) is bench/swarm.py.

Goals (docs/vmm.md): commit and branch pause p50 <= 5 ms and p99 <= 10 ms, child running p50 <=
30 ms and p99 <= 60 ms, restore p50 <= 60 ms at 2 GiB, store growth <= 1.1x dirty bytes.

    python3 bench/vm.py [--sizes 256M,2G] [--backings shm,fuse,fuse+nostandby] [--net user,none]
                        [--repeat 5] [--migrate-repeat 3] [--phases] [--json]
    python3 bench/vm.py --sizes 256M,2G --backings fuse --net user --repeat 50 --phases
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

from bench import _stats
from vers.objects.model import PAGE_SIZE as PAGE
from vers.repo import Repo
from vers.vmm.agent import guest_exec
from vers.vmm.boot import RunOptions, restore_commit, run_vm
from vers.vmm.branch import branch_vm
from vers.vmm.commit import commit_vm
from vers.vmm.control import list_vms
from vers.vmm.disk import DiskChain
from vers.vmm.machine import Machine, parse_size
from vers.vmm.memory import backing_class
from vers.vmm.state import VMRecord, registry
from vers.vmm.teardown import kill_vms


def p50_p99(values: list[float]) -> dict[str, float]:
    p50, p99 = _stats.p50_p99(values)
    return {"p50": round(p50, 2), "p99": round(p99, 2), "n": len(values)}


def store_bytes(repo: Repo) -> int:
    env = repo.store.env  # type: ignore[attr-defined]
    return int((env.info()["last_pgno"] + 1) * env.stat()["psize"])


def gexec(rec: VMRecord, script: str) -> str:
    res = guest_exec(rec.runtime.agent_sock, script, 300)
    if res.returncode:
        raise RuntimeError(f"guest: {script}: {res.stderr!r}")
    return res.stdout.decode()


def first_exec_ms(rec: VMRecord) -> float:
    t0 = time.perf_counter()
    guest_exec(rec.runtime.agent_sock, "true", 300)
    return (time.perf_counter() - t0) * 1000


def qemu_stop_cont_ms(rec: VMRecord) -> float:
    """The floor of every pause: QEMU's own ``stop`` then ``cont``, each one QMP round trip."""
    with Machine.attach(rec) as m:
        q = m.qmp()
        q.command("query-status")  # connected and negotiated before the clock starts
        t0 = time.perf_counter()
        q.command("stop")
        q.command("cont")
        return (time.perf_counter() - t0) * 1000


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


def phase_table(runs: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """p50/p99 of each phase over the runs that had it."""
    names = dict.fromkeys(n for r in runs for n in r)
    return {n: p50_p99([r[n] for r in runs if n in r]) for n in names}


def bench_commits(repo: Repo, rec: VMRecord, size: int, repeat: int) -> dict[str, Any]:
    res: dict[str, Any] = {}
    t0 = time.perf_counter()
    _, tm_first = commit_vm(repo, rec.id, "first (full)")
    res["first_commit_total_ms"] = round((time.perf_counter() - t0) * 1000)
    res["first_commit_pause_ms"] = tm_first.pause
    pauses, growth, dirty_bytes, totals, phases = [], [], [], [], []
    for i in range(repeat):
        dirty_one_percent(rec, size)
        before = store_bytes(repo)
        t0 = time.perf_counter()
        res["last_commit"], tm = commit_vm(repo, rec.id, f"incremental {i}")
        totals.append((time.perf_counter() - t0) * 1000)
        pauses.append(tm.pause)
        phases.append({**tm.phases, "pause": tm.pause})
        growth.append(store_bytes(repo) - before)
        dirty_bytes.append((tm.extra["memory_dirty_pages"] or 0) * PAGE)
    res["commit_pause_ms"] = p50_p99(pauses)
    res["commit_total_ms"] = p50_p99(totals)
    res["commit_phases_ms"] = phase_table(phases)
    res["memory_dirty_bytes"] = statistics.median(dirty_bytes)
    res["store_growth_bytes"] = statistics.median(growth)
    return res


def bench_branches(repo: Repo, rec: VMRecord, repeat: int) -> dict[str, Any]:
    pauses, ready, phases = [], [], []
    for _ in range(repeat):
        children, tm = branch_vm(repo, rec.id)
        # The child is ready when it has answered an exec: the fresh-clone step is one request
        # the agent serves itself, so the child's first process is timed on top of it.
        first = first_exec_ms(children[0])
        ready.append(tm.extra["child_ready_ms"] + first)
        pauses.append(tm.pause)
        phases.append({**tm.phases, "pause": tm.pause, "first_exec_ms": first,
                       **{k: tm.extra[k] for k in ("fresh_ms", "child_ready_after_resume_ms",
                                                   "child_ready_ms") if k in tm.extra}})
        kill_vms(repo, [c.id for c in children])
        # Branches spaced the way a person or a script that works on each child would space
        # them: 0.5 s lets the parent's next standby child finish starting up.
        time.sleep(0.5)
    return {"branch_pause_ms": p50_p99(pauses), "branch_child_ready_ms": p50_p99(ready),
            "branch_phases_ms": phase_table(phases)}


def bench_restores(repo: Repo, cid: str, repeat: int) -> dict[str, Any]:
    """In-process restore of a commit until its guest answers exec (restore_commit returns
    once the guest's agent made it fresh; then its first process runs)."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        vm = restore_commit(repo, cid)
        guest_exec(vm.runtime.agent_sock, "true", 300)
        times.append((time.perf_counter() - t0) * 1000)
        kill_vms(repo, [vm.id])
    return {"restore_ms": p50_p99(times)}


def bench_floors(rec: VMRecord, repo: Repo, work: Path, repeat: int,
                 migrate_repeat: int) -> dict[str, Any]:
    res: dict[str, Any] = {"qemu_stop_cont_ms": p50_p99([qemu_stop_cont_ms(rec)
                                                         for _ in range(repeat)])}
    mig = [qemu_full_migrate_pause(rec, work / "full.migrate") for _ in range(migrate_repeat)]
    res["qemu_full_migrate_pause_ms"] = p50_p99([m[0] for m in mig])
    res["qemu_full_migrate_bytes"] = mig[0][1]
    # the chain below the VM's top now (commits merge it): frozen, so QEMU shares it
    now = registry(repo).resolve(rec.id)
    frozen = dataclasses.replace(now, disks={n: DiskChain(d.chain[:-1], 0, d.size)
                                             for n, d in now.disks.items()})
    res["bare_qemu_start_ms"] = p50_p99([bare_start_ms(frozen, work) for _ in range(repeat)])
    return res


def bench_one(size: int, backing: str, repeat: int, work: Path, standby: bool = True,
              net: str = "user", migrate_repeat: int = 3) -> dict[str, Any]:
    repo = Repo.init(work / f"repo-{backing}-{size >> 20}M-{standby}-{net}")
    res: dict[str, Any] = {"size_mib": size >> 20, "backing": backing, "net": net}
    rec = run_vm(repo, RunOptions(memory=size, memory_backing=backing, standby=standby,
                                  make_current=False, net=net))
    try:
        gexec(rec, "setsid sh -c 'i=0; while :; do i=$((i+1)); echo $i > /tmp/counter;"
                   " sleep 0.1; done' </dev/null >/dev/null 2>&1 &")
        res.update(bench_commits(repo, rec, size, repeat))
        res.update(bench_floors(rec, repo, work, repeat, migrate_repeat))
        res.update(bench_branches(repo, rec, repeat))
        res.update(bench_restores(repo, res["last_commit"], repeat))
    finally:
        kill_vms(repo, [s.id for s in list_vms(repo)])
        repo.close()
    res["ratio_store_growth_vs_dirty"] = round(
        res["store_growth_bytes"] / max(1, res["memory_dirty_bytes"]), 3)
    return res


def _ms(v: dict[str, float]) -> str:
    return f"{v['p50']:>7.1f} {v['p99']:>6.1f}"


def print_rows(results: list[dict[str, Any]]) -> None:
    print(f"{'':<16} {'':<4} {'':>6} {'commit pause':>14} {'branch pause':>14}"
          f" {'stop+cont':>14} {'child ready':>14} {'restore':>14} {'bare start':>14}"
          f" {'QEMU migrate':>14} {'growth':>6}")
    print(f"{'backing':<16} {'net':<4} {'RAM':>6}" + f" {'p50':>7} {'p99':>6}" * 7
          + f" {'ratio':>6}")
    for r in results:
        print(f"{r['backing']:<16} {r['net']:<4} {r['size_mib']:>5}M"
              f" {_ms(r['commit_pause_ms'])} {_ms(r['branch_pause_ms'])}"
              f" {_ms(r['qemu_stop_cont_ms'])} {_ms(r['branch_child_ready_ms'])}"
              f" {_ms(r['restore_ms'])} {_ms(r['bare_qemu_start_ms'])}"
              f" {_ms(r['qemu_full_migrate_pause_ms'])}"
              f" {r['ratio_store_growth_vs_dirty']:>6.3f}")
    print("ms; floors beside them: stop+cont (QEMU's own pause round trip, the floor of both "
          "pauses), bare start (QEMU start to QMP-ready), QEMU migrate (a full snapshot); "
          "child ready and restore: until the guest answers exec")
    print("goals: commit and branch pause p50 <= 5, p99 <= 10; child ready p50 <= 30, "
          "p99 <= 60; restore p50 <= 60 (2 GiB); store growth ratio <= 1.1")
    for r in results:
        print(f"pause / floor  {r['backing']} {r['net']} {r['size_mib']}M:"
              f" commit {_ratio(r['commit_pause_ms'], r['qemu_stop_cont_ms'])},"
              f" branch {_ratio(r['branch_pause_ms'], r['qemu_stop_cont_ms'])},"
              f" child ready / bare start"
              f" {_ratio(r['branch_child_ready_ms'], r['bare_qemu_start_ms'])},"
              f" restore / bare start {_ratio(r['restore_ms'], r['bare_qemu_start_ms'])}")


def _ratio(a: dict[str, float], b: dict[str, float]) -> str:
    return f"p50 {a['p50'] / b['p50']:.1f}x p99 {a['p99'] / b['p99']:.1f}x"


def print_phases(results: list[dict[str, Any]]) -> None:
    for r in results:
        for what in ("commit", "branch"):
            table = r[f"{what}_phases_ms"]
            print(f"{what} phases, {r['backing']} {r['net']} {r['size_mib']}M"
                  f" (ms, p50 / p99 of {max(v['n'] for v in table.values())}):")
            for name, v in table.items():
                print(f"  {name:<32} {v['p50']:>8.2f} {v['p99']:>8.2f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="256M,2G")
    ap.add_argument("--backings", default="shm,fuse",
                    help="comma list; fuse+nostandby = VMs run with --no-standby")
    ap.add_argument("--net", default="user,none", help="comma list of --net modes")
    ap.add_argument("--repeat", type=int, default=5,
                    help="commits, branches and floor measurements per row (50 for a real p99)")
    ap.add_argument("--migrate-repeat", type=int, default=3,
                    help="QEMU full migrates per row (each writes all of RAM)")
    ap.add_argument("--phases", action="store_true",
                    help="print p50/p99 of each phase of the commit and the branch")
    ap.add_argument("--json", action="store_true", help="print raw results as JSON too")
    args = ap.parse_args()
    if args.repeat < 1 or args.migrate_repeat < 1:
        ap.error("--repeat and --migrate-repeat must be at least 1")
    results = []
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
                                    net=net, migrate_repeat=args.migrate_repeat)
                    res["backing"] = backing
                    results.append(res)
    print_rows(results)
    if args.phases:
        print_phases(results)
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
