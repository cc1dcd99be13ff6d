"""Completion benchmark: what one press of TAB costs, against starting vers at all.

A repository with many commits, branches and tags; each completion runs `vers` as the shell
does (click's protocol through the environment). The floor is `vers --version` in the same run:
what any command costs before it does anything; `vers show-ref` (the same command module loaded,
the repository opened, every ref read) shows what the completion adds to that. Prints p50 and
p99 of each and the ratio to the floor (goal: <= 1.5 of show-ref's ratio).

    python3 bench/completion.py [--commits 200] [--branches 50] [--runs 15]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._stats import percentile
from vers.repo import Repo


def timed(cwd: Path, env: dict[str, str], args: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(["vers", *args], cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--commits", type=int, default=200)
    ap.add_argument("--branches", type=int, default=50)
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vers-bench-completion-"))
    try:
        repo = Repo.init(work)
        img = work / "mem"
        ids = []
        for i in range(args.commits):
            img.write_bytes(i.to_bytes(8, "little") * 512)
            ids.append(repo.snapshot({"memory": img}, message=f"commit {i}"))
        for i in range(args.branches):
            repo.refs.set_ref(f"refs/heads/topic-{i}", ids[i % len(ids)])
            repo.refs.set_ref(f"refs/tags/v{i}", ids[-1 - i % len(ids)])
        repo.close()
        env = dict(os.environ)
        cases = {
            "vers --version (floor)": (env, ["--version"]),
            "vers show-ref": (env, ["show-ref"]),  # the same module and refs, no completion
            "vers switch <TAB>": ({**env, "_VERS_COMPLETE": "bash_complete",
                                   "COMP_WORDS": "vers switch ", "COMP_CWORD": "2"}, []),
            "vers log v1..<TAB>": ({**env, "_VERS_COMPLETE": "bash_complete",
                                    "COMP_WORDS": "vers log v1..", "COMP_CWORD": "2"}, []),
            "vers show ID[:4]<TAB>": ({**env, "_VERS_COMPLETE": "bash_complete",
                                       "COMP_WORDS": f"vers show {ids[7][:4]}",
                                       "COMP_CWORD": "2"}, []),
        }
        times: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.runs):  # interleaved, so that load from elsewhere hits all alike
            for name, (case_env, argv) in cases.items():
                times[name].append(timed(work, case_env, argv))
        floor = statistics.median(times["vers --version (floor)"])
        print(f"{args.commits} commits, {args.branches} branches and tags, {args.runs} runs")
        for name, xs in times.items():
            print(f"  {name:<24} p50 {statistics.median(xs) * 1000:7.1f} ms  "
                  f"p99 {percentile(xs, 0.99) * 1000:7.1f} ms  "
                  f"ratio {statistics.median(xs) / floor:.2f}")
        print("  goal: each completion's ratio <= 1.5 x show-ref's")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
