"""CLI start-up benchmark: how long a quick command takes from exec to exit, against the
interpreter's own start-up.

In one run, alternating so that noise falls on all of them alike, ``--repeat`` times each:

* ``python3 -c pass`` (the floor: the same interpreter the ``vers`` script runs on, with the same
  site packages);
* ``vers --help``;
* ``vers log -n 1`` in a repository holding one commit (goal <= 0.1 s);
* ``vers rev-parse HEAD`` there.

Each is printed as p50 and p99 and as a ratio to the floor's p50. The ``vers`` run is the console
script next to the interpreter (a pyenv shim in front of it would add its own start-up).

    python3 bench/cli.py [--repeat 30]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def pct(values: list[float], q: float) -> float:
    v = sorted(values)
    k = (len(v) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def vers_script() -> str:
    here = Path(sys.executable).parent / "vers"
    if here.exists():
        return str(here)
    found = shutil.which("vers")
    if found is None:
        sys.exit("the vers command is not installed (bash scripts/install-deps.sh)")
    return found


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=30)
    args = ap.parse_args()
    vers = vers_script()
    with tempfile.TemporaryDirectory(prefix="vers-bench-cli-") as tmp:
        repo = Path(tmp) / "repo"
        subprocess.run([vers, "init", str(repo)], check=True, capture_output=True)
        img = Path(tmp) / "mem.img"
        img.write_bytes(os.urandom(1 << 16))
        subprocess.run([vers, "snapshot", "--memory", str(img), "-m", "one"], cwd=repo,
                       check=True, capture_output=True)
        cmds = {
            "python3 -c pass": [sys.executable, "-c", "pass"],
            "vers --help": [vers, "--help"],
            "vers log -n 1": [vers, "log", "-n", "1"],
            "vers rev-parse HEAD": [vers, "rev-parse", "HEAD"],
        }
        times: dict[str, list[float]] = {k: [] for k in cmds}
        for _ in range(args.repeat):
            for name, argv in cmds.items():
                t0 = time.perf_counter()
                subprocess.run(argv, cwd=repo, check=True, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
                times[name].append((time.perf_counter() - t0) * 1000)
    floor = pct(times["python3 -c pass"], 0.5)
    rows = {}
    print(f"{'command':18} {'p50 ms':>8} {'p99 ms':>8} {'x floor':>8}")
    for name, ts in times.items():
        p50, p99 = pct(ts, 0.5), pct(ts, 0.99)
        rows[name] = {"p50": round(p50, 1), "p99": round(p99, 1), "n": len(ts)}
        print(f"{name:18} {p50:8.1f} {p99:8.1f} {p50 / floor:8.2f}")
    log50 = rows["vers log -n 1"]["p50"]
    print(f"goal: vers log -n 1 <= 100 ms: {log50 <= 100} ({log50:.1f} ms, "
          f"{log50 - floor:.1f} ms above python3 -c pass)")
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
