"""Guest image benchmark: build time, size and boot-to-agent of each image, and the snapshot
paths (commit pause, branch pause, child ready) with the Debian and PostgreSQL guests at 1 GiB,
all as ratios against the default busybox guest measured in the same run.

Also the store growth of committing the PostgreSQL guest after a 1,000-row insert, against the
memory pages and disk blocks that changed (steady state: after a few warm-up commits, since LMDB
reuses freed pages only once older transactions are gone).

Goals: commit pause <= 0.1x QEMU's full migrate, branch pause <= 30 ms, child ready <= 1.5x a bare
QEMU start (measured as bench/vm.py does), store growth <= 1.5x the pages and blocks changed.

    python3 bench/images.py [--images default,debian,postgres] [--repeat 3] [--cached]

Builds go to a temporary cache so build times are real (``--cached`` reuses the user's cache and
reports no build time).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.vm import bare_start_ms, gexec, qemu_full_migrate_pause, store_bytes
from vers import images
from vers.objects.model import PAGE_SIZE
from vers.porcelain import vm as verbs
from vers.repo import Repo
from vers.vmm.boot import RunOptions
from vers.vmm.branch import branch_vm
from vers.vmm.commit import commit_vm
from vers.vmm.disk import DiskChain
from vers.vmm.memory import default_backing
from vers.vmm.state import registry

GiB = 1 << 30
INSERT = ("psql -qc \"CREATE TABLE IF NOT EXISTS bench (id serial PRIMARY KEY, v text); "
          "INSERT INTO bench (v) SELECT md5(g::text) FROM generate_series(1, 1000) g; "
          "CHECKPOINT;\"")


def build_image(name: str, cached: bool) -> tuple[images.GuestImages, float | None]:
    t0 = time.perf_counter()
    img = images.build(name)
    return img, None if cached else time.perf_counter() - t0


def stored_bytes(img: images.GuestImages) -> int:
    return sum(p.stat().st_blocks * 512 for p in (img.kernel, img.initrd, img.disk))


def bench_image(name: str, img: images.GuestImages, repeat: int, work: Path,
                backing: str) -> dict[str, Any]:
    repo = Repo.init(work / f"repo-{name}")
    res: dict[str, Any] = {"image": name, "backing": backing}
    try:
        t0 = time.perf_counter()
        rec = verbs.run(repo, RunOptions(
            memory=GiB, kernel=str(img.kernel), initrd=str(img.initrd), disks=(str(img.disk),),
            memory_backing=backing, make_current=False))
        res["boot_to_agent_s"] = round(time.perf_counter() - t0, 2)
        commit_vm(repo, rec.id, "first (full)")
        pauses = []
        for i in range(repeat):
            gexec(rec, "dd if=/dev/urandom of=/tmp/dirty bs=4096 count=2621 conv=notrunc "
                       "2>/dev/null")
            _, tm = commit_vm(repo, rec.id, f"incremental {i}")
            pauses.append(tm.pause)
        res["commit_pause_ms"] = statistics.median(pauses)
        res["qemu_full_migrate_pause_ms"] = statistics.median(
            qemu_full_migrate_pause(rec, work / "full.migrate")[0] for _ in range(repeat))
        bpause, bready = [], []
        for _ in range(repeat):
            children, tm = branch_vm(repo, rec.id)
            bpause.append(tm.pause)
            bready.append(tm.extra["child_ready_ms"])
            verbs.kill(repo, [c.id for c in children])
            time.sleep(0.5)
        res["branch_pause_ms"] = statistics.median(bpause)
        res["child_ready_ms"] = statistics.median(bready)
        # the chain below the VM's top now (commits merge it away from the one it started on):
        # frozen, so a bare QEMU can open it beside the running VM
        now = registry(repo).resolve(rec.id)
        frozen = dataclasses.replace(now, disks={n: DiskChain(d.chain[:-1], 0, d.size)
                                                 for n, d in now.disks.items()})
        res["bare_qemu_start_ms"] = statistics.median(bare_start_ms(frozen, work)
                                                      for _ in range(repeat))
        if name == "postgres":
            growth, changed = [], []
            for _ in range(repeat + 3):  # the first rounds warm LMDB up; keep the last ones
                gexec(rec, INSERT)
                before = store_bytes(repo)
                _, tm = commit_vm(repo, rec.id, "1000 rows")
                growth.append(store_bytes(repo) - before)
                disk = sum(tm.extra["disk_dirty_pages"].values())
                changed.append(((tm.extra["memory_dirty_pages"] or 0) + disk) * PAGE_SIZE)
            res["insert_store_growth_bytes"] = statistics.median(growth[3:])
            res["insert_changed_bytes"] = statistics.median(changed[3:])
    finally:
        verbs.kill(repo, [s.id for s in verbs.ps(repo)])
        repo.close()
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", default="default,debian,postgres")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--cached", action="store_true", help="reuse built images (no build times)")
    ap.add_argument("--backing", default=default_backing(),
                    help="guest RAM backing (default: fuse where FUSE works, as for vers run)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    names = args.images.split(",")
    if names[0] != images.DEFAULT:
        names.insert(0, images.DEFAULT)  # the baseline every ratio is against
    results = []
    with tempfile.TemporaryDirectory(prefix="vers-bench-images-") as tmp:
        if not args.cached:
            os.environ["XDG_CACHE_HOME"] = str(Path(tmp) / "cache")
        for name in names:
            print(f"... {name}", file=sys.stderr)
            img, build_s = build_image(name, args.cached)
            res = bench_image(name, img, args.repeat, Path(tmp), args.backing)
            res["build_s"] = None if build_s is None else round(build_s, 1)
            res["stored_mib"] = round(stored_bytes(img) / (1 << 20), 1)
            results.append(res)
    base = results[0]

    def ratio(r: dict[str, Any], key: str) -> str:
        if r.get(key) is None or not base.get(key):
            return "-"
        return f"{r[key] / base[key]:.2f}x"

    print(f"memory backing {args.backing}, 1 GiB guests")
    print(f"{'image':<10} {'build':>8} {'ratio':>6} {'stored':>8} {'ratio':>6} {'boot':>7} "
          f"{'ratio':>6} {'commit':>8} {'/migrate':>8} {'branch':>8} {'ready':>8} {'/bare':>6}")
    for r in results:
        build = "-" if r["build_s"] is None else f"{r['build_s']:.1f}s"
        print(f"{r['image']:<10} {build:>8} {ratio(r, 'build_s'):>6} {r['stored_mib']:>6.0f}M "
              f"{ratio(r, 'stored_mib'):>6} {r['boot_to_agent_s']:>6.1f}s "
              f"{ratio(r, 'boot_to_agent_s'):>6} {r['commit_pause_ms']:>6.1f}ms "
              f"{r['commit_pause_ms'] / r['qemu_full_migrate_pause_ms']:>8.3f} "
              f"{r['branch_pause_ms']:>6.1f}ms {r['child_ready_ms']:>6.0f}ms "
              f"{r['child_ready_ms'] / r['bare_qemu_start_ms']:>6.2f}")
        if "insert_store_growth_bytes" in r:
            print(f"  {r['image']}: 1,000-row insert + commit: store grew "
                  f"{r['insert_store_growth_bytes'] / 1024:.0f} KiB for "
                  f"{r['insert_changed_bytes'] / 1024:.0f} KiB of changed pages and blocks "
                  f"({r['insert_store_growth_bytes'] / max(1, r['insert_changed_bytes']):.2f}x)")
    print("goals: commit/migrate <= 0.1, branch pause <= 30 ms, ready/bare <= 1.5, "
          "store growth <= 1.5x the changed pages and blocks")
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
