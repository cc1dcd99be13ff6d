"""SDK benchmark: what a script or agent waits for, in-process through ``vers.Repo``.

In one run, on one 256 MiB guest (shm memory backing unless --backing says otherwise):

* ``vm.exec("true")`` round trip                                  goal <= 20 ms
* ``vm.commit()`` end to end with ~1% of RAM dirtied, ID returned  goal <= 100 ms
* ``vm.branch(1)`` until the child answers exec                   goal <= 1.5x bare QEMU start
* ``repo.restore()`` until the VM answers exec                    goal <= 1.5x bare QEMU start

each printed against the command line's own start-up (``vers --help``) and a bare QEMU start to
QMP-ready with the VM's command line (bench/vm.py's ``bare_start_ms``), measured in the same run.

    python3 bench/sdk.py [--memory 256M] [--backing shm|fuse] [--repeat 5]
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
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable

import vers
from vers.objects.model import PAGE_SIZE
from vers.porcelain import vm as verbs
from vers.vmm.disk import DiskChain


def _bench_vm_module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("bench_vm", Path(__file__).with_name("vm.py"))
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def median_ms(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return round(statistics.median(times), 1)


def cli_start_ms(repeat: int) -> float:
    return median_ms(lambda: subprocess.run(["vers", "--help"], capture_output=True, check=True),
                     repeat)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--memory", default="256M")
    ap.add_argument("--backing", default="shm")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    os.environ["VERS_MEMORY_BACKING"] = args.backing
    size = verbs.parse_size(args.memory)
    bench_vm = _bench_vm_module()
    with tempfile.TemporaryDirectory(prefix="vers-bench-sdk-") as tmp:
        work = Path(tmp)
        with vers.Repo.init(work / "repo") as repo, repo.run(memory=args.memory) as vm:
            cli = cli_start_ms(args.repeat)
            exec_ms = median_ms(lambda: vm.exec("true"), args.repeat * 4)
            vm.commit("base")
            # after a commit the disk layers QEMU started on are frozen: a bare QEMU opens them
            rec = verbs.record(repo, vm.id)
            rec.disks = {n: DiskChain(d.chain[:d.committed], d.committed, d.size)
                         for n, d in rec.disks.items()}
            bare = statistics.median(bench_vm.bare_start_ms(rec, work)
                                     for _ in range(args.repeat))
            pages = size // PAGE_SIZE // 100

            def commit() -> None:
                vm.exec(f"dd if=/dev/urandom of=/tmp/dirty bs={PAGE_SIZE} count={pages} "
                        "conv=notrunc 2>/dev/null")
                t0 = time.perf_counter()
                vm.commit("1% dirty")
                commit_times.append((time.perf_counter() - t0) * 1000)

            commit_times: list[float] = []
            for _ in range(args.repeat):
                commit()
            commit_ms = round(statistics.median(commit_times), 1)

            branch_times = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                kids = vm.branch(1)
                kids[0].exec("true")
                branch_times.append((time.perf_counter() - t0) * 1000)
                kids.kill()
            branch_ms = round(statistics.median(branch_times), 1)
            cid = vm.base_commit
            assert cid is not None
            restore_times = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                r = repo.restore(cid)
                r.exec("true")
                restore_times.append((time.perf_counter() - t0) * 1000)
                r.kill()
            restore_ms = round(statistics.median(restore_times), 1)
    rows = {"exec_ms": exec_ms, "commit_ms": commit_ms, "branch_ms": branch_ms,
            "restore_ms": restore_ms, "cli_start_ms": cli, "bare_qemu_start_ms": round(bare, 1)}
    for name, value in [("exec", exec_ms), ("commit", commit_ms), ("branch", branch_ms),
                        ("restore", restore_ms)]:
        print(f"{name:8} {value:8.1f} ms  {value / cli:5.2f}x vers --help  "
              f"{value / bare:5.2f}x bare QEMU start")
    print(f"goals: exec <= 20 ms: {exec_ms <= 20}; commit <= 100 ms: {commit_ms <= 100}; "
          f"branch <= 1.5x bare: {branch_ms <= 1.5 * bare}; "
          f"restore <= 1.5x bare: {restore_ms <= 1.5 * bare}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
