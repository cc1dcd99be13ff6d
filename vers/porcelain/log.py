"""vers log: history of machine states, git-style (full, --oneline, --graph, json)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

from vers.objects.model import Commit
from vers.refs.container import HEAD, SYMREF_PREFIX
from vers.repo import Repo

SHORT = 12


def short(cid: str) -> str:
    return cid[:SHORT]


def format_time(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).astimezone().strftime("%a %b %d %H:%M:%S %Y %z")


def decorations(repo: Repo) -> dict[str, list[str]]:
    """Commit ID -> ["HEAD -> main", "tag: v1", "origin/main", ...] as git log shows them."""
    out: dict[str, list[str]] = {}
    head_raw = repo.refs.read_ref(HEAD)
    head_branch = head_raw[len(SYMREF_PREFIX) :] if head_raw and head_raw.startswith(SYMREF_PREFIX) else None
    for name, value in repo.refs.list_refs("refs/").items():
        if value.startswith(SYMREF_PREFIX) or name.startswith("refs/bisect/"):
            continue
        if name.startswith("refs/heads/"):
            label = name[len("refs/heads/") :]
            if name == head_branch:
                label = "HEAD -> " + label
        elif name.startswith("refs/tags/"):
            label = "tag: " + name[len("refs/tags/") :]
        elif name.startswith("refs/remotes/"):
            label = name[len("refs/remotes/") :]
        else:
            label = name
        out.setdefault(value, []).append(label)
    head = repo.head_commit()
    if head and head_branch is None:
        out.setdefault(head, []).insert(0, "HEAD")
    for labels in out.values():
        labels.sort(key=lambda s: (not s.startswith("HEAD"), s))
    return out


def commit_json(c: Commit) -> dict[str, Any]:
    return {
        "id": c.id,
        "parents": c.parents,
        "author": c.author,
        "time": c.time,
        "message": c.message,
        "images": c.images,
        "config": c.config,
    }


def log_commits(repo: Repo, rev: str = HEAD, max_count: int | None = None,
                first_parent: bool = False) -> list[Commit]:
    it: Iterable[Commit] = repo.log(rev, first_parent=first_parent)
    if max_count is not None:
        it = itertools.islice(it, max_count)
    return list(it)


def format_full(c: Commit, deco: list[str]) -> str:
    head = f"commit {c.id}" + (f" ({', '.join(deco)})" if deco else "")
    lines = [head]
    if len(c.parents) > 1:
        lines.append("Merge: " + " ".join(short(p) for p in c.parents))
    lines += [f"Author: {c.author}", f"Date:   {format_time(c.time)}", ""]
    lines += ["    " + line for line in (c.message.splitlines() or [""])]
    return "\n".join(lines) + "\n"


def format_oneline(c: Commit, deco: list[str]) -> str:
    d = f" ({', '.join(deco)})" if deco else ""
    return f"{short(c.id)}{d} {c.summary}"


def log_lines(repo: Repo, commits: list[Commit], oneline: bool = False,
              graph: bool = False) -> Iterator[str]:
    """``vers log`` as text: full entries separated by a blank line, or one line each, with the
    refs that name each commit, optionally beside the commit graph."""
    deco = decorations(repo)

    def render(c: Commit) -> str:
        fn = format_oneline if oneline else format_full
        return fn(c, deco.get(c.id, []))

    if graph:
        yield from graph_lines(commits, render)
        return
    for i, c in enumerate(commits):
        if not oneline and i:
            yield ""
        yield render(c).rstrip("\n")


def graph_lines(commits: list[Commit], render: Callable[[Commit], str]) -> Iterator[str]:
    """A compact lane graph: '*' marks the commit's lane, '|' other live lanes, '\\' a new lane
    opened for a merge's further parents, '/' lanes that join."""
    lanes: list[str | None] = []
    for c in commits:
        if c.id not in lanes:
            lanes.append(c.id)
        col = lanes.index(c.id)
        # Lanes that were also waiting for this commit join it.
        joined = [i for i, lane in enumerate(lanes) if lane == c.id and i != col]
        row = " ".join("*" if i == col else "|" for i in range(len(lanes)) if i not in joined)
        text = render(c).splitlines() or [""]
        yield f"{row} {text[0]}"
        for extra in text[1:]:
            cont = " ".join("|" for i in range(len(lanes)) if i not in joined)
            yield f"{cont} {extra}".rstrip()
        for i in reversed(joined):
            del lanes[i]
        if joined:
            yield " ".join("|" for _ in range(col + 1)) + "/"
        parents = c.parents
        lanes[col] = parents[0] if parents else None
        for p in parents[1:]:
            if p not in lanes:
                lanes.insert(col + 1, p)
                yield " ".join("|" for _ in range(col + 1)) + "\\"
        if lanes[col] is None:
            del lanes[col]
