"""rev-parse: turn ``main~2``, ``HEAD^2``, ``main@{1}``, ``main@{10 minutes ago}``, ``1a2b3c``,
tags and full IDs into commit IDs."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from vers.errors import AmbiguousRevision, BadRevision
from vers.objects.model import Commit
from vers.refs.container import HEAD, RefsContainer
from vers.refs.timespec import parse_time

MIN_PREFIX = 4
# Patterns are compiled on first use (re keeps the compiled ones), not when vers starts.
_HEX = r"^[0-9a-f]+$"
_SUFFIX = r"(~\d*|\^\d*|@\{[^{}]*\})"
_REV = r"^(.*?)((?:~\d*|\^\d*|@\{[^{}]*\})*)$"
_REFLOG_INDEX = r"^-?\d+$"
SEARCH_PREFIXES = ("", "refs/", "refs/heads/", "refs/tags/", "refs/remotes/")


def expand_ref(refs: RefsContainer, name: str) -> str | None:
    """The full ref name a short name means (git's order), or None."""
    if name == "@":
        name = HEAD
    for prefix in SEARCH_PREFIXES:
        full = prefix + name
        if (full == HEAD or full.startswith("refs/")) and refs.read_ref(full) is not None:
            return full
    return None


def rev_parse(
    refs: RefsContainer,
    rev: str,
    commits_with_prefix: Callable[[str], Iterable[str]],
    commit_of: Callable[[str], Commit],
    commit_at: Callable[[str, int, str], str],
    now: int | None = None,
) -> str:
    """Resolve ``rev`` to a full hex commit ID.

    ``commits_with_prefix(p)`` lists commit IDs starting with hex prefix ``p``; ``commit_of(id)``
    reads a commit (and raises if ``id`` is not one); ``commit_at(id, t, rev)`` is the newest
    commit at or before time ``t`` on ``id``'s first-parent history (``REF@{TIME}``). ``now``
    (microseconds since the epoch) is the present that ``@{10 minutes ago}`` counts back from
    (default: the clock).
    """
    if not rev or rev != rev.strip():
        raise BadRevision(f"bad revision {rev!r}")
    m = re.match(_REV, rev)
    assert m is not None
    base, suffixes = m.group(1), m.group(2)
    if not base:
        if suffixes.startswith("@{"):
            base = HEAD
        else:
            raise BadRevision(f"bad revision {rev!r}")
    steps = re.findall(_SUFFIX, suffixes)
    at_step = steps[0][2:-1] if steps and steps[0].startswith("@{") else None
    if at_step is not None:
        steps = steps[1:]
    if any(s.startswith("@{") for s in steps):
        raise BadRevision(f"bad revision {rev!r}: @{{...}} must follow a ref name")

    if at_step is None or re.match(_REFLOG_INDEX, at_step):
        commit = _resolve_base(refs, base, at_step, commits_with_prefix, rev)
    else:
        when = parse_time(at_step, now)
        commit = commit_at(_resolve_base(refs, base, None, commits_with_prefix, rev), when, rev)
    for step in steps:
        n = int(step[1:]) if len(step) > 1 else 1
        if step[0] == "~":
            for _ in range(n):
                parents = commit_of(commit).parents
                if not parents:
                    raise BadRevision(f"{rev}: {commit[:12]} has no parent")
                commit = parents[0]
        else:
            if n == 0:
                continue
            parents = commit_of(commit).parents
            if len(parents) < n:
                raise BadRevision(f"{rev}: {commit[:12]} has no parent {n}")
            commit = parents[n - 1]
    commit_of(commit)  # is it a commit at all?
    return commit


def _resolve_base(
    refs: RefsContainer,
    base: str,
    reflog_index: str | None,
    commits_with_prefix: Callable[[str], Iterable[str]],
    rev: str,
) -> str:
    full = expand_ref(refs, base)
    if reflog_index is not None:
        if full is None:
            raise BadRevision(f"{rev}: no ref named {base!r}")
        n = int(reflog_index)
        if n < 0:
            raise BadRevision(f"{rev}: negative reflog index")
        entries = refs.reflog(full)
        if n == 0 and not entries:
            value = refs.resolve(full)
            if value is None:
                raise BadRevision(f"{rev}: {full} points nowhere")
            return value
        if n >= len(entries):
            raise BadRevision(f"{rev}: the reflog of {full} has only {len(entries)} entries")
        value = entries[n].new
        if value is None:
            raise BadRevision(f"{rev}: {full} was deleted at that point")
        return value
    if full is not None:
        value = refs.resolve(full)
        if value is None:
            raise BadRevision(f"{rev}: {full} points to a ref that does not exist "
                              "(empty repository?)")
        return value
    lowered = base.lower()
    if len(lowered) >= MIN_PREFIX and re.match(_HEX, lowered):
        found = sorted(set(commits_with_prefix(lowered)))
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise AmbiguousRevision(base, found)
    raise BadRevision(f"unknown revision {rev!r}{_hint(refs, base, lowered)}")


def _hint(refs: RefsContainer, base: str, lowered: str) -> str:
    """What the user may have meant: a short hex prefix, or a ref name close to ``base``."""
    if re.match(_HEX, lowered) and len(lowered) < MIN_PREFIX:
        return f" (an ID prefix needs at least {MIN_PREFIX} hex digits)"
    names = {n.removeprefix("refs/heads/").removeprefix("refs/tags/")
             for n in refs.list_refs("refs/heads/") | refs.list_refs("refs/tags/")}
    import difflib

    close = difflib.get_close_matches(base, sorted(names), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""
