"""SDK benchmark: what a script or agent waits for, in-process through ``vers.Repo``.

In one run, on one 256 MiB guest (the memory backing ``vers run`` uses, FUSE where it works,
unless --backing says otherwise):

* ``vm.exec("true")`` round trip                                  goal <= 20 ms
* ``vm.commit()`` end to end with ~1% of RAM dirtied, ID returned  goal <= 100 ms
  (on a settled VM: the previous commit's background step has ended, as it has after any step
  that takes longer; also printed back to back, where each commit waits for it first)
* ``vm.branch(1)`` until the child answers exec                   goal <= 1.5x bare QEMU start
* ``repo.restore()`` until the VM answers exec                    goal <= 1.5x bare QEMU start

each as p50 and p99 over its runs, printed against the command line's own start-up (``vers
--help``) and a bare QEMU start to QMP-ready with the VM's command line (bench/vm.py's
``bare_start_ms``), measured in the same run; ``vm.exec`` also against its floor, the agent's own
round trip (``vers.vmm.agent.run`` on the VM's socket), timed alternately with it.

    python3 bench/sdk.py [--memory 256M] [--backing fuse|shm] [--repeat 5]
"""

from __future__ import annotations

import sys
from pathlib import Path

# Python puts this script's folder first on sys.path, where bench/bisect.py would shadow the
# standard library's bisect (which statistics and random import): the repository goes there.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

import argparse
import importlib.util
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Callable

import vers
from vers import sdk as vers_sdk
from vers.objects.model import PAGE_SIZE
from vers.porcelain import vm as verbs
from vers.vmm import agent
from vers.vmm.disk import DiskChain
from vers.vmm.memory import default_backing


def _bench_vm_module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("bench_vm", Path(__file__).with_name("vm.py"))
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def timed_ms(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000


def cli_start_ms(repeat: int) -> list[float]:
    return [timed_ms(lambda: subprocess.run(["vers", "--help"], capture_output=True,
                                            check=True)) for _ in range(repeat)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--memory", default="256M")
    ap.add_argument("--backing", default=default_backing())
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    os.environ["VERS_MEMORY_BACKING"] = args.backing
    size = verbs.parse_size(args.memory)
    bench_vm = _bench_vm_module()
    with tempfile.TemporaryDirectory(prefix="vers-bench-sdk-") as tmp:
        work = Path(tmp)
        with vers.Repo.init(work / "repo") as repo, repo.run(memory=args.memory) as vm:
            cli = cli_start_ms(args.repeat)
            sock = verbs.record(repo, vm.id).runtime.agent_sock
            exec_times, floor_times = [], []
            for _ in range(args.repeat * 4):
                exec_times.append(timed_ms(lambda: vm.exec("true")))
                floor_times.append(timed_ms(lambda: agent.run(sock, ["true"], timeout=60)))
            vm.commit("base")
            # after a commit the disk layers QEMU started on are frozen: a bare QEMU opens them
            rec = verbs.record(repo, vm.id)
            rec.disks = {n: DiskChain(d.chain[:d.committed], d.committed, d.size)
                         for n, d in rec.disks.items()}
            bare = [bench_vm.bare_start_ms(rec, work) for _ in range(args.repeat)]
            pages = size // PAGE_SIZE // 100

            def commit(times: list[float], settled: bool) -> None:
                vm.exec(f"dd if=/dev/urandom of=/tmp/dirty bs={PAGE_SIZE} count={pages} "
                        "conv=notrunc 2>/dev/null")
                if settled:  # as after any step longer than the last commit's settle step
                    vers_sdk._settled(repo, vm.id)
                t0 = time.perf_counter()
                vm.commit("1% dirty")
                times.append((time.perf_counter() - t0) * 1000)

            commit_times: list[float] = []
            back_to_back: list[float] = []  # each also waits for the previous one's settle step
            for _ in range(args.repeat):
                commit(commit_times, settled=True)
            for _ in range(args.repeat):
                commit(back_to_back, settled=False)

            branch_times = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                kids = vm.branch(1)
                kids[0].exec("true")
                branch_times.append((time.perf_counter() - t0) * 1000)
                kids.kill()
            cid = vm.base_commit
            assert cid is not None
            restore_times = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                r = repo.restore(cid)
                r.exec("true")
                restore_times.append((time.perf_counter() - t0) * 1000)
                r.kill()
    pp = bench_vm.p50_p99
    rows = {"exec_ms": pp(exec_times), "agent_round_trip_ms": pp(floor_times),
            "commit_ms": pp(commit_times), "commit_back_to_back_ms": pp(back_to_back),
            "branch_ms": pp(branch_times),
            "restore_ms": pp(restore_times), "cli_start_ms": pp(cli),
            "bare_qemu_start_ms": pp(bare)}
    cli50, bare50 = rows["cli_start_ms"]["p50"], rows["bare_qemu_start_ms"]["p50"]
    print(f"floors: agent round trip p50 {rows['agent_round_trip_ms']['p50']:.1f} / p99 "
          f"{rows['agent_round_trip_ms']['p99']:.1f} ms; vers --help {cli50:.1f} ms; bare QEMU "
          f"start {bare50:.1f} ms")
    for name in ("exec", "commit", "commit_back_to_back", "branch", "restore"):
        v = rows[f"{name}_ms"]
        print(f"{name:19} p50 {v['p50']:8.1f} ms  p99 {v['p99']:8.1f} ms  "
              f"{v['p50'] / cli50:5.2f}x vers --help  {v['p50'] / bare50:5.2f}x bare QEMU start"
              + (f"  {v['p50'] / rows['agent_round_trip_ms']['p50']:5.2f}x agent round trip"
                 if name == "exec" else ""))
    e, c = rows["exec_ms"]["p50"], rows["commit_ms"]["p50"]
    b, r = rows["branch_ms"]["p50"], rows["restore_ms"]["p50"]
    print(f"goals (p50): exec <= 20 ms: {e <= 20}; commit <= 100 ms: {c <= 100}; "
          f"branch <= 1.5x bare: {b <= 1.5 * bare50}; restore <= 1.5x bare: {r <= 1.5 * bare50}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
