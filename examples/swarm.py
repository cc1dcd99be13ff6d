"""Fork one golden VM into N agents, give each a different task, keep the winner.

    python3 examples/swarm.py REPO_DIR [N]

Each agent searches a different range of numbers for one whose square ends in 2025 (a stand-in
for "try something different in each copy"); the first agent that finds one wins. Its whole
machine is committed onto branch ``winner``; every agent is killed when the block ends, winners
and losers alike, also if something fails. Prints the winning agent and commit as JSON.
"""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor

import vers
from vers.errors import NotARepository

TASK = """i={start}; end=$((i + {span}))
while [ $i -lt $end ]; do
    case $((i * i)) in *2025) echo $i > /root/answer; echo $i; exit 0;; esac
    i=$((i + 1))
done
exit 1"""


def main(path: str, n: int = 4, span: int = 60) -> dict[str, object]:
    try:
        repo = vers.Repo(path)
    except NotARepository:
        repo = vers.Repo.init(path)
    with repo, repo.run(memory="256M", name="golden") as golden:
        golden.exec("echo 'shared setup' > /root/setup", check=True)
        base = golden.commit("golden image ready", branch="golden")
        with golden.branch(n, refs="agent") as agents:
            def attempt(i: int) -> tuple[int, bytes | None]:
                res = agents[i].exec(TASK.format(start=i * span, span=span), timeout=120)
                return i, res.stdout.strip() if res.returncode == 0 else None

            with ThreadPoolExecutor(n) as pool:
                results = list(pool.map(attempt, range(n)))
            found = [(i, out) for i, out in results if out is not None]
            if not found:
                raise SystemExit("no agent found an answer")
            i, answer = found[0]
            win = agents[i].commit(f"agent {i} found {answer.decode()}", branch="winner")
    return {"winner": i, "answer": int(answer), "commit": win.id, "base": base.id,
            "parents": win.parents}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 4)))
