"""CLI start-up benchmark: how long a quick command takes from exec to exit, against the
interpreter's own start-up.

In one run, alternating so that noise falls on all of them alike, ``--repeat`` times each:

* ``python3 -c pass`` (the floor: the same interpreter the ``vers`` script runs on, with the same
  site packages);
* ``python3 -c 'import click'``: what any command line built on click pays before its own code;
* ``vers --version`` (click and the root group only) and ``vers --help`` (every command listed);
* ``vers log -n 1`` in a repository holding one commit (goal <= 0.1 s, and vers' own share, its
  p50 less the floor's, <= 30 ms);
* ``vers rev-parse HEAD`` there.

Each is printed as p50 and p99, as a ratio to the floor's p50 and as the p50 less the floor's.
The ``vers`` run is the console script next to the interpreter (a pyenv shim in front of it would
add its own start-up). vers' modules are byte-compiled first, as any run with a writable tree
leaves them: with ``PYTHONDONTWRITEBYTECODE`` set and a stale cache every run would compile them.

    python3 bench/cli.py [--repeat 30]
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._stats import percentile


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
    package = subprocess.run([sys.executable, "-c",
                              "import os, vers; print(os.path.dirname(vers.__file__))"],
                             check=True, capture_output=True, text=True).stdout.strip()
    compileall.compile_dir(package, quiet=1)
    with tempfile.TemporaryDirectory(prefix="vers-bench-cli-") as tmp:
        repo = Path(tmp) / "repo"
        subprocess.run([vers, "init", str(repo)], check=True, capture_output=True)
        img = Path(tmp) / "mem.img"
        img.write_bytes(os.urandom(1 << 16))
        subprocess.run([vers, "snapshot", "--memory", str(img), "-m", "one"], cwd=repo,
                       check=True, capture_output=True)
        cmds = {
            "python3 -c pass": [sys.executable, "-c", "pass"],
            "import click": [sys.executable, "-c", "import click"],
            "vers --version": [vers, "--version"],
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
    floor = percentile(times["python3 -c pass"], 0.5)
    rows = {}
    print(f"{'command':19} {'p50 ms':>8} {'p99 ms':>8} {'x floor':>8} {'- floor':>8}")
    for name, ts in times.items():
        p50, p99 = percentile(ts, 0.5), percentile(ts, 0.99)
        rows[name] = {"p50": round(p50, 1), "p99": round(p99, 1), "n": len(ts)}
        print(f"{name:19} {p50:8.1f} {p99:8.1f} {p50 / floor:8.2f} {p50 - floor:8.1f}")
    log50 = percentile(times["vers log -n 1"], 0.5)
    own = log50 - floor
    print(f"goal: vers log -n 1 <= 100 ms: {log50 <= 100} ({log50:.1f} ms, {log50 / floor:.2f}x "
          f"python3 -c pass)")
    click50 = percentile(times["import click"], 0.5) - floor
    command = log50 - percentile(times["vers --version"], 0.5)
    print(f"goal: vers' own share (vers log -n 1 - python3 -c pass) <= 30 ms: {own <= 30} "
          f"({own:.1f} ms; a process importing click alone takes {click50:.1f} ms over the floor, "
          f"and log takes {command:.1f} ms more than vers --version)")
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
