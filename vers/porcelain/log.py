"""vers log: history of machine states, git-style (full, --oneline, --graph, json)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

from vers.objects.model import Commit
from vers.refs.container import HEAD, SYMREF_PREFIX
from vers.refs.timespec import US, format_iso_utc, now_us, parse_time
from vers.repo import Repo

SHORT = 12


def short(cid: str) -> str:
    return cid[:SHORT]


def format_time(time_us: int) -> str:
    """git's date line in local time, with the microseconds when there are any, so that the time
    shown can be typed back into ``REF@{...}`` and name this very commit."""
    dt = datetime.fromtimestamp(time_us // US, UTC).astimezone()
    frac = f".{time_us % US:06d}" if time_us % US else ""
    return dt.strftime("%a %b %d %H:%M:%S") + frac + dt.strftime(" %Y %z")


def decorations(repo: Repo) -> dict[str, list[str]]:
    """Commit ID -> ["HEAD -> main", "tag: v1", "origin/main", ...] as git log shows them."""
    out: dict[str, list[str]] = {}
    head_raw = repo.refs.read_ref(HEAD)
    head_branch = (
        head_raw[len(SYMREF_PREFIX) :]
        if head_raw and head_raw.startswith(SYMREF_PREFIX)
        else None
    )
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
    """A commit for scripts: ``time`` in whole seconds (as before sub-second times), ``time_us``
    exactly, and ``date`` the same instant in ISO 8601 UTC with six decimals."""
    return {
        "id": c.id,
        "parents": c.parents,
        "author": c.author,
        "time": c.time,
        "time_us": c.time_us,
        "date": format_iso_utc(c.time_us),
        "version": c.version,
        "message": c.message,
        "images": c.images,
        "config": c.config,
    }


def log_commits(repo: Repo, rev: str = HEAD, max_count: int | None = None,
                first_parent: bool = False, since: str | None = None,
                until: str | None = None) -> list[Commit]:
    """``vers log``'s commits: ``since``/``until`` are times as ``REF@{...}`` takes them
    (docs/cli.md, "Times") and keep the commits made at or after / at or before them; the
    ``max_count`` newest of those are returned."""
    now = now_us()
    low = None if since is None else parse_time(since, now)
    high = None if until is None else parse_time(until, now)
    it: Iterable[Commit] = repo.log(rev, first_parent=first_parent)
    if low is not None or high is not None:
        it = (c for c in it if (low is None or c.time_us >= low)
              and (high is None or c.time_us <= high))
    if max_count is not None:
        it = itertools.islice(it, max_count)
    return list(it)


def format_full(c: Commit, deco: list[str]) -> str:
    head = f"commit {c.id}" + (f" ({', '.join(deco)})" if deco else "")
    lines = [head]
    if len(c.parents) > 1:
        lines.append("Merge: " + " ".join(short(p) for p in c.parents))
    lines += [f"Author: {c.author}", f"Date:   {format_time(c.time_us)}", ""]
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
    """The commit graph beside each entry, drawn the way ``git log --graph`` draws it (for
    merges of two parents): one column per line of history waiting for a commit; '*' the
    commit, '|' the other columns; below a merge, '\\' towards its second parent; rows of '/'
    where a line joins a column on its left (a fork seen from above)."""
    columns: list[str] = []
    state = _State()
    for c in commits:
        if c.id not in columns:
            columns.append(c.id)
        col = columns.index(c.id)
        new, targets = _next_columns(columns, col, c.parents)
        # columns right of the merge step right for its further parents, unless the last one
        # is what the next column waits for already (then its '\\' joins that column)
        joins = len(targets[col]) > 1 and col + 1 < len(columns) and \
            targets[col + 1] == targets[col][-1:]
        added = max(len(targets[col]) - 1 - joins, 0)
        width = 2 * max(len(columns) + added, len(new))
        cells = []
        for i in range(len(columns)):
            if i == col:
                cells.append("*")
            elif i > col and added > 0 and state.after_merge_at is not None \
                    and state.after_merge_at < i:
                cells.append("\\")
            elif i in state.slid_into and targets[i] and targets[i][0] < i:
                cells.append("/")
            else:
                cells.append("|")
        rows = [f"{' '.join(cells):<{width}}"]
        state = _State()
        if len(targets[col]) > 1:
            rows.append(_below_merge(len(columns), col, added > 0))
            state.after_merge_at = col
        pos: dict[int, int] = {}  # where each line is now -> the column it goes to
        for i, t in enumerate(targets):
            if i == col:
                pos[col] = t[0] if t else -1
                if added > 0:
                    pos.update({col + k: target for k, target in enumerate(t) if k})
            elif t:
                pos[i if i < col or added <= 0 else i + added] = t[0]
        pos = {p: t for p, t in pos.items() if t >= 0}
        collapse = _collapse(pos, state)
        rows += collapse
        text = render(c).splitlines() or [""]
        for k, line in enumerate(text):
            graph = rows[k] if k < len(rows) else _cells(len(new))
            yield (f"{graph:<{width}}{line}" if k else f"{graph}{line}").rstrip()
        yield from (row.rstrip() for row in rows[len(text):])
        columns = new


class _State:
    """What the rows below the previous commit did, which the next commit row depends on."""

    def __init__(self) -> None:
        #: the column of a merge whose '\\' row was the last one drawn
        self.after_merge_at: int | None = None
        #: columns whose line reached them through a '/' in the last row drawn
        self.slid_into: set[int] = set()


def _next_columns(columns: list[str], col: int, parents: list[str],
                  ) -> tuple[list[str], list[list[int]]]:
    """The columns after commit ``columns[col]`` with ``parents``, and for each old column the
    new columns its line goes on in (none for a root commit's column)."""
    new: list[str] = []
    targets: list[list[int]] = []
    for i, cid in enumerate(columns):
        out = []
        for p in parents if i == col else [cid]:
            if p not in new:
                new.append(p)
            out.append(new.index(p))
        targets.append(out)
    return new, targets


def _cells(width: int) -> str:
    return " ".join("|" * width)


def _below_merge(width: int, col: int, opens_column: bool) -> str:
    """``|\\`` below a merge in column ``col``; the columns right of it step right ('\\')
    when the second parent opens a new column, else go straight on ('|')."""
    right = " \\" if opens_column else "|"
    return " ".join(["|"] * (col + 1)) + "\\" + right * (width - col - 1)


def _collapse(pos: dict[int, int], state: _State) -> list[str]:
    """Rows moving lines left one column per row ('/'), until each is in its column. Lines
    crossing another column share its place for a row and stay apart."""
    lines = set(pos.items())
    rows = []
    while any(p != t for p, t in lines):
        chars: dict[int, str] = {}
        nxt: set[tuple[int, int]] = set()
        state.slid_into = set()
        for p, t in sorted(lines):
            if p > t:
                chars[2 * p - 1] = "/"
                nxt.add((p - 1, t))
                state.slid_into.add(p - 1)
            else:
                chars[2 * p] = "|"
                nxt.add((p, t))
        rows.append("".join(chars.get(i, " ") for i in range(max(chars) + 1)))
        state.after_merge_at = None
        lines = nxt
    return rows
