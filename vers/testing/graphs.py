"""Build the same commit graph as vers commits and as a git repository, cheaply.

For the bisect tests and bench (dulwich keeps ``build_commit_graph`` in the package for the same
reason: every test can make history in one line). Each commit *i* holds one tiny image whose first
bytes are ``state <i>``, and the git twin holds a file ``state`` with the same text, with the same
commit times, so that git's rev-list order and vers's walk order agree.
"""

from __future__ import annotations

import io
import os
import random
import subprocess
from dataclasses import dataclass
from pathlib import Path

from vers.objects.model import PAGE_SIZE
from vers.porcelain import bisect as bs
from vers.porcelain.bisect.run import run
from vers.repo import Repo

BASE_TIME = 1_700_000_000


@dataclass
class Graph:
    """``parents[i]`` lists the parent indices of commit ``i`` (parents come before children)."""

    parents: list[list[int]]

    def __len__(self) -> int:
        return len(self.parents)

    @property
    def tip(self) -> int:
        return len(self.parents) - 1

    def descendants(self, x: int) -> set[int]:
        out = {x}
        for i in range(x + 1, len(self.parents)):
            if any(p in out for p in self.parents[i]):
                out.add(i)
        return out


def linear(n: int) -> Graph:
    return Graph([[]] + [[i - 1] for i in range(1, n)])


def skip_scenario(rnd: random.Random, n: int, pattern: str) -> tuple[int, set[int]]:
    """For a history of ``n`` commits: a first bad commit, and the commits the predicate cannot
    test — one run of 3-9 commits ("clustered") or each with probability 1/4 ("scattered")."""
    first_bad = rnd.randrange(3, n - 2)
    if pattern == "clustered":
        a = rnd.randrange(1, n - 10)
        skip = set(range(a, a + rnd.randrange(3, 10))) - {first_bad}
    else:
        skip = {s for s in range(1, n - 1) if rnd.random() < 0.25 and s != first_bad}
    return first_bad, skip


def random_dag(n: int, seed: int, merge_rate: float = 0.15, branch_rate: float = 0.2) -> Graph:
    """A history with side branches and merges, one root, and every commit an ancestor of the
    tip."""
    rnd = random.Random(seed)
    parents: list[list[int]] = [[]]
    heads = [0]
    while len(parents) < n - 1:
        r = rnd.random()
        i = len(parents)
        if r < merge_rate and len(heads) >= 2:
            a, b = rnd.sample(heads, 2)
            parents.append([a, b])
            heads.remove(a)
            heads.remove(b)
        elif r < merge_rate + branch_rate:
            parents.append([rnd.randrange(i)])
        else:
            h = rnd.choice(heads)
            parents.append([h])
            heads.remove(h)
        heads.append(i)
    parents.append(sorted(set(heads)))  # the tip merges every open head
    return Graph(parents)


def state_image(i: int) -> bytes:
    return f"state {i}\n".encode().ljust(PAGE_SIZE, b"\0")


def build_vers(repo: Repo, graph: Graph, ref: str | None = "refs/heads/main",
               start: float = BASE_TIME, step: float = 1.0) -> list[str]:
    """Commit ``graph`` into ``repo``; returns the commit IDs by index. ``ref`` ends at the tip.
    Commit *i* is dated ``start + i * step`` (seconds since the epoch)."""
    ids: list[str] = []
    for i, ps in enumerate(graph.parents):
        cid = repo.snapshot({"disk": io.BytesIO(state_image(i))}, message=f"state {i}",
                            parents=[ids[p] for p in ps], ref=None, time=start + i * step,
                            author="bisect-test")
        ids.append(cid)
    if ref is not None:
        repo.refs.set_ref(ref, ids[-1])
    return ids


def build_git(path: Path, graph: Graph) -> list[str]:
    """The same graph as a git repository (one ``git fast-import``); returns commit IDs by index."""
    path.mkdir(parents=True, exist_ok=True)
    env = git_env()
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True, env=env)
    chunks: list[bytes] = []
    for i, ps in enumerate(graph.parents):
        msg = f"state {i}\n".encode()
        body = f"state {i}\n".encode()
        lines = [f"commit refs/heads/main\nmark :{i + 1}\n".encode(),
                 f"committer T <t@example.com> {BASE_TIME + i} +0000\n".encode(),
                 b"data %d\n%s" % (len(msg), msg)]
        if ps:
            lines.append(f"from :{ps[0] + 1}\n".encode())
            lines.extend(f"merge :{p + 1}\n".encode() for p in ps[1:])
        else:
            lines.append(b"deleteall\n")
        lines.append(b"M 644 inline state\ndata %d\n%s\n" % (len(body), body))
        chunks.append(b"".join(lines))
        if i + 1 < len(graph.parents) and not graph.parents[i + 1]:
            chunks.append(b"reset refs/heads/main\n")
    stream = b"".join(chunks) + b"done\n"
    subprocess.run(["git", "fast-import", "--quiet", "--done", "--export-marks=marks"],
                   input=stream, cwd=path, check=True, env=env)
    marks = dict(line.split() for line in (path / "marks").read_text().splitlines())
    (path / "marks").unlink()
    subprocess.run(["git", "checkout", "-q", "-f", "main"], cwd=path, check=True, env=env)
    return [marks[f":{i + 1}"] for i in range(len(graph.parents))]


def git_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(GIT_AUTHOR_NAME="T", GIT_AUTHOR_EMAIL="t@example.com", GIT_COMMITTER_NAME="T",
               GIT_COMMITTER_EMAIL="t@example.com", GIT_CONFIG_NOSYSTEM="1",
               GIT_CONFIG_GLOBAL=os.devnull)
    return env


PREDICATE = r'''#!/usr/bin/env python3
"""Bisect predicate shared by git and vers: the state number decides, runs are counted."""
import os, sys
mount = os.environ.get("VERS_MOUNT")
if mount:
    with open(os.path.join(mount, "disk"), "rb") as f:
        text = f.read(64).split(b"\0", 1)[0].decode()
else:
    text = open("state").read()
n = int(text.split()[1])
with open(os.environ["BISECT_COUNT_FILE"], "a") as f:
    f.write(f"{n}\n")
bad = {int(x) for x in os.environ["BISECT_BAD"].split(",") if x}
skip = {int(x) for x in os.environ.get("BISECT_SKIP", "").split(",") if x}
if n in skip:
    sys.exit(125)
sys.exit(1 if n in bad else 0)
'''


def write_predicate(path: Path) -> Path:
    path.write_text(PREDICATE)
    path.chmod(0o755)
    return path


# -- comparing with real git -----------------------------------------------------------------
def _git_bisect(
    gitdir: Path, ids: list[str], bad: int, good: int, env: dict[str, str]
) -> tuple[str, set[int]]:
    subprocess.run(["git", "bisect", "start", ids[bad], ids[good]], cwd=gitdir, env=env,
                   check=True, capture_output=True)
    res = subprocess.run(["git", "bisect", "run", str(env["PREDICATE"])], cwd=gitdir, env=env,
                         capture_output=True, text=True, check=False)
    out = res.stdout
    if "is the first bad commit" in out:
        line = next(x for x in out.splitlines() if x.endswith("is the first bad commit"))
        return ("found", {ids.index(line.split()[0])})
    if "only 'skip'ped commits left" in out:
        lines = out.split("could be any of:", 1)[1].split("We cannot bisect more", 1)[0]
        return ("only_skipped", {ids.index(x) for x in lines.split()})
    raise AssertionError(f"git bisect run: unexpected output\n{out}\n{res.stderr}")


def _vers_bisect(repo: Repo, ids: list[str], bad: int, good: int, predicate: Path,
                 mode: str) -> tuple[str, set[int]]:
    bs.start(repo, ids[bad], [ids[good]])
    result = run(repo, [str(predicate)], mode=mode)
    d = result.decision
    if d is None:
        raise AssertionError("vers bisect run ended without a decision")
    if d.kind == "found" and d.commit is not None:
        return ("found", {ids.index(d.commit)})
    return (d.kind, {ids.index(c) for c in d.candidates})


def compare_with_git(tmp: Path, graph: Graph, first_bad: int, skip: set[int], mode: str,
                     good: int = 0) -> tuple[dict[str, tuple[str, set[int]]], dict[str, int]]:
    """Bisect ``graph`` with git and with vers, same predicate: (answers, predicate runs).

    Bad states are the descendants of ``first_bad``; states in ``skip`` exit 125. An answer is
    ("found", {index}) or ("only_skipped", {indices})."""
    repo = Repo.init(tmp / "vers")
    vids = build_vers(repo, graph)
    gids = build_git(tmp / "git", graph)
    predicate = write_predicate(tmp / "pred.py")
    env = git_env()
    env.update(BISECT_BAD=",".join(map(str, sorted(graph.descendants(first_bad)))),
               BISECT_SKIP=",".join(map(str, sorted(skip))), PREDICATE=str(predicate))
    counts: dict[str, int] = {}
    answers: dict[str, tuple[str, set[int]]] = {}
    try:
        for who in ("git", "vers"):
            count_file = tmp / f"count-{who}"
            env["BISECT_COUNT_FILE"] = str(count_file)
            if who == "git":
                answers[who] = _git_bisect(tmp / "git", gids, graph.tip, good, env)
            else:
                old = dict(os.environ)
                os.environ.update(env)
                try:
                    answers[who] = _vers_bisect(repo, vids, graph.tip, good, predicate, mode)
                finally:
                    os.environ.clear()
                    os.environ.update(old)
            counts[who] = len(count_file.read_text().split()) if count_file.exists() else 0
    finally:
        repo.close()
    return answers, counts
