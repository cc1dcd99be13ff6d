"""Bisect and diff --files benchmarks. Prints ratios against baselines of the same run.

1. Bisect over 1024 linear commits, mount mode, a real predicate process that reads the commit's
   disk through VERS_MOUNT: predicate runs (goal <= 11) and bisect's own per-step overhead, the
   predicate excluded (goal <= 100 ms). Baseline: ``git bisect run`` over the same history with
   the same predicate (runs, and git's per-step overhead = wall time minus predicate time).
2. ``files_diff`` between two commits of an ext4 disk with 10 changed files, at 1 GiB and 4 GiB
   (same files): time should follow the changed blocks, not the disk size (goal: 4 GiB / 1 GiB
   close to 1). Baselines: the block-level ``repo.diff`` of the same commits, and the debugfs way
   (export the image, ``debugfs icheck`` + ``ncheck``) at 1 GiB.
3. With skipped commits: total predicate runs of vers vs git over many histories (same answers).

Usage: python3 bench/bisection.py [--quick]
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vers.porcelain import bisect as bs
from vers.porcelain.bisect.run import run
from vers.porcelain.difffiles import files_diff
from vers.repo import Repo
from vers.testing.graphs import (
    build_git,
    build_vers,
    compare_with_git,
    git_env,
    linear,
    random_dag,
    skip_scenario,
)

PRED = """#!/bin/sh
# reads the state number from the commit's disk (vers) or the work tree (git); bad from FIRST_BAD
if [ -n "$VERS_MOUNT" ]; then n=$(head -c 16 "$VERS_MOUNT/disk" | tr -d '\\000' | cut -d' ' -f2)
else n=$(cut -d' ' -f2 state); fi
echo "$n" >> "$COUNT_FILE"
[ "$n" -ge "$FIRST_BAD" ] && exit 1
exit 0
"""


def bench_bisect(tmp: Path, first_bads: list[int]) -> None:
    graph = linear(1024)
    repo = Repo.init(tmp / "vers")
    t0 = time.perf_counter()
    ids = build_vers(repo, graph)
    print(f"built 1024 vers commits in {time.perf_counter() - t0:.1f} s")
    have_git = shutil.which("git") is not None
    gids = build_git(tmp / "git", graph) if have_git else []
    pred = tmp / "pred.sh"
    pred.write_text(PRED)
    pred.chmod(0o755)
    # the predicate alone, to subtract it from git's wall time
    (tmp / "git" / "x").mkdir(exist_ok=True) if have_git else None
    for fb in first_bads:
        env = {"FIRST_BAD": str(fb), "COUNT_FILE": str(tmp / f"count-vers-{fb}")}
        os.environ.update(env)
        bs.start(repo, ids[-1], [ids[0]])
        res = run(repo, [str(pred)], mode="mount")
        assert res.decision is not None and res.decision.commit == ids[fb], res.decision
        bs.reset(repo)
        per_step = res.steps_s / max(res.runs, 1)
        line = (f"bisect 1024 linear, first bad {fb:4d}: vers {res.runs} runs "
                f"({res.mode} mode, mount {res.setup_s * 1000:.0f} ms once), "
                f"per-step overhead {per_step * 1000:.1f} ms (goal <= 100 ms), "
                f"predicate {res.predicate_s / res.runs * 1000:.1f} ms/run")
        if have_git:
            genv = git_env()
            genv.update(FIRST_BAD=str(fb), COUNT_FILE=str(tmp / f"count-git-{fb}"))
            genv.pop("VERS_MOUNT", None)
            gdir = tmp / "git"
            subprocess.run(["git", "bisect", "start", gids[-1], gids[0]], cwd=gdir, env=genv,
                           check=True, capture_output=True)
            t = time.perf_counter()
            subprocess.run(["git", "bisect", "run", str(pred)], cwd=gdir, env=genv, check=True,
                           capture_output=True)
            wall = time.perf_counter() - t
            subprocess.run(["git", "bisect", "reset"], cwd=gdir, env=genv, check=True,
                           capture_output=True)
            gruns = len((tmp / f"count-git-{fb}").read_text().split())
            # predicate cost in git's setting, measured directly
            t = time.perf_counter()
            for _ in range(gruns):
                subprocess.run([str(pred)], cwd=gdir, env=genv, check=False)
            gpred = time.perf_counter() - t
            gstep = max(wall - gpred, 0.0) / gruns
            line += (f"; git {gruns} runs, per-step {gstep * 1000:.1f} ms; "
                     f"runs ratio vers/git {res.runs / gruns:.2f}, "
                     f"overhead ratio vers/git {per_step / max(gstep, 1e-6):.2f}")
        print(line)
    repo.close()


def bench_skips(tmp: Path, histories: int) -> None:
    """vers vs git with skipped commits: total predicate runs over many histories."""
    for pattern in ("scattered", "clustered"):
        tv = tg = same = 0
        for seed in range(histories):
            rnd = random.Random(seed)
            graph = random_dag(70, seed) if seed % 2 else linear(70)
            fb, skip = skip_scenario(rnd, 70, pattern)
            answers, counts = compare_with_git(tmp / f"{pattern}-{seed}", graph, fb, skip,
                                               mode="export")
            same += answers["vers"] == answers["git"]
            tv += counts["vers"]
            tg += counts["git"]
        print(f"skips ({pattern}), {histories} histories of 70 commits: vers {tv} runs, git {tg}"
              f" runs (ratio vers/git {tv / tg:.2f}); same answer in {same}/{histories}")


def make_disk(path: Path, size_gib: int, src: Path) -> None:
    subprocess.run(["mkfs.ext4", "-q", "-F", "-b", "4096", "-d", str(src), "-E",
                    "root_owner=0:0", str(path), f"{size_gib}G"], check=True,
                   env={**os.environ, "E2FSPROGS_FAKE_TIME": "1700000000"})


def bench_files(tmp: Path, sizes: list[int], nfiles: int) -> None:
    rnd = random.Random(5)
    src = tmp / "src"
    for i in range(nfiles):
        p = src / f"d{i % 40}" / f"f{i}.bin"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(rnd.randbytes(rnd.randrange(1000, 40000)))
    new = tmp / "new.bin"
    new.write_bytes(rnd.randbytes(12000))
    cmds = tmp / "cmds"
    cmds.write_text("".join(f"rm d{k % 40}/f{k}.bin\nwrite {new} d{k % 40}/f{k}.bin\n"
                            for k in range(0, 10 * 37, 37)))
    times = {}
    for gib in sizes:
        repo = Repo.init(tmp / f"r{gib}")
        a_img, b_img = tmp / f"a{gib}.img", tmp / f"b{gib}.img"
        make_disk(a_img, gib, src)
        shutil.copy(a_img, b_img)  # sparse copy is fine: cp keeps holes on Linux
        subprocess.run(["debugfs", "-w", "-f", str(cmds), str(b_img)], check=True,
                       capture_output=True)
        t = time.perf_counter()
        a = repo.snapshot({"disk": a_img}, time=1)
        b = repo.snapshot({"disk": b_img}, time=2)
        commit_s = time.perf_counter() - t
        t_blocks = float("inf")
        for _ in range(10):
            t = time.perf_counter()
            blocks = repo.diff(a, b)
            t_blocks = min(t_blocks, time.perf_counter() - t)
        best = float("inf")
        for _ in range(10):  # best of 10: other work on the machine only ever adds time
            t = time.perf_counter()
            d = files_diff(repo, a, b)
            best = min(best, time.perf_counter() - t)
        times[gib] = best
        changed = sorted(c.path for c in d.files)
        print(f"diff --files {gib} GiB disk ({nfiles} files, commit {commit_s:.1f} s): "
              f"{len(changed)} paths, {d.changed_blocks} changed blocks in "
              f"{best * 1000:.1f} ms; block diff alone {t_blocks * 1000:.1f} ms "
              f"(ratio files/blocks {best / max(t_blocks, 1e-6):.1f})")
        if gib == sizes[0]:
            t = time.perf_counter()
            out = tmp / "export.img"
            repo.export_image(b, "disk", out)
            inos = subprocess.run(["debugfs", "-R", "icheck " + " ".join(
                str(r.start + k) for img in blocks.images for r in img.ranges
                for k in range(r.count)), str(out)], capture_output=True, text=True,
                check=True).stdout.split()[2::2]
            nums = " ".join(x for x in inos if x.isdigit())
            subprocess.run(["debugfs", "-R", f"ncheck {nums}", str(out)], capture_output=True,
                           check=True)
            t_dbg = time.perf_counter() - t
            out.unlink()
            print(f"  baseline export + debugfs icheck/ncheck at {gib} GiB: {t_dbg * 1000:.0f} ms"
                  f" (ratio vers/debugfs {best / t_dbg:.3f})")
        repo.close()
        for p in (a_img, b_img):
            p.unlink()
    if len(sizes) > 1:
        print(f"diff --files time {sizes[-1]} GiB / {sizes[0]} GiB: "
              f"{times[sizes[-1]] / times[sizes[0]]:.2f} (goal ~1: follows changed blocks)")


def main() -> None:
    quick = "--quick" in sys.argv
    with tempfile.TemporaryDirectory(prefix="vers-bench-bisect-") as d:
        tmp = Path(d)
        bench_bisect(tmp / "bisect", [1, 700] if quick else [1, 333, 700, 1023])
        bench_files(tmp / "files", [1] if quick else [1, 4], 400 if quick else 2000)
        if shutil.which("git"):
            bench_skips(tmp / "skips", 6 if quick else 30)


if __name__ == "__main__":
    main()
