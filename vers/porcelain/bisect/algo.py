"""Choosing the next commit to test: git's bisection algorithm, on vers commits.

This module is pure (no refs, no files): given the graph, the bad commit, the good ones and the
skipped ones, it says what to test next or what the answer is. It follows git's ``bisect.c``
closely on purpose, so that ``vers bisect`` asks for no more predicate runs than ``git bisect``
would on the same history (the tests check exactly that against real git):

* candidates are the ancestors of bad that are not ancestors of any good, in rev-list order
  (newest first) and then reversed, as git does;
* a candidate's *weight* is the number of candidates it can reach (itself included); single-parent
  chains inherit ``weight(parent) + 1``, merges are counted by a walk;
* without skips, the first commit found "approximately half way" wins (git's ``approx_halfway``),
  else the best ``min(w, n - w)``; with skips, all candidates are sorted by that distance and, when
  the best one is skipped, git's pseudo-random ``skip_away`` picks a nearby non-skipped one.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from vers.history import ancestors, merge_bases, walk
from vers.objects.model import Commit

GetCommit = Callable[[str], Commit]
PRN_MODULO = 32768


@dataclass
class Decision:
    """What bisect should do next.

    ``kind`` is one of ``test`` (check out ``commit`` and test it), ``found`` (``commit`` is the
    first bad commit), ``only_skipped`` (only skipped commits are left: the first bad commit is one
    of ``candidates``), ``merge_base`` (a merge base of bad and good must be tested first).
    """

    kind: str
    commit: str | None = None
    remaining: int = 0  # revisions left to test after this one (git's message)
    steps: int = 0  # roughly how many steps after this one
    total: int = 0  # candidates in the current range
    candidates: list[str] = field(default_factory=list)


def estimate_steps(all_: int) -> int:
    """git's ``estimate_bisect_steps``: expected number of steps left after the current one."""
    if all_ < 3:
        return 0
    n = all_.bit_length() - 1
    e = 1 << n
    x = all_ - e
    return n if e < 3 * x else n - 1


def _approx_halfway(weight: int, nr: int) -> bool:
    diff = 2 * weight - nr
    if diff in (-1, 0, 1):
        return True
    return abs(diff) < nr // 1024


def _get_prn(count: int) -> int:
    count = (count * 1103515245 + 12345) & 0xFFFFFFFF
    return (count // 65536) % PRN_MODULO


def _sqrti(val: int) -> int:
    if not val:
        return 0
    x = float(val)
    while True:
        y = (x + val / x) / 2
        d = abs(y - x)
        x = y
        if d < 0.5:
            return int(x)


def skip_away_index(count: int) -> int:
    """Index in the distance-sorted, skip-filtered list that git tests when the best is skipped."""
    prn = _get_prn(count)
    return (count * prn // PRN_MODULO) * _sqrti(prn) // _sqrti(PRN_MODULO)


def candidates_of(get: GetCommit, bad: str, goods: Iterable[str]) -> list[str]:
    """Ancestors of ``bad`` that no good commit reaches, newest first (rev-list order)."""
    return [c.id for c in walk(get, [bad], list(goods))]


def _weights(
    get: GetCommit, order: list[str], nr: int, find_all: bool
) -> tuple[dict[str, int], str | None]:
    """git's ``do_find_bisection``: weights in oldest-first order; returns an early half-way hit."""
    cand = set(order)
    parents = {c: [p for p in get(c).parents if p in cand] for c in order}
    weight: dict[str, int] = {}
    counted = 0
    for c in order:
        n = len(parents[c])
        if n == 0:
            weight[c] = 1
            counted += 1
        else:
            weight[c] = -1 if n == 1 else -2
    for c in order:
        if weight[c] != -2:
            continue
        weight[c] = _count_distance(c, parents)
        if not find_all and _approx_halfway(weight[c], nr):
            return weight, c
        counted += 1
    while counted < nr:
        progressed = False
        for c in order:
            if weight[c] >= 0:
                continue
            known = next((q for q in parents[c] if weight[q] >= 0), None)
            if known is None:
                continue
            weight[c] = weight[known] + 1
            counted += 1
            progressed = True
            if not find_all and _approx_halfway(weight[c], nr):
                return weight, c
        if not progressed:  # cannot happen in a DAG; guards against a corrupt cyclic graph
            break
    return weight, None


def _count_distance(start: str, parents: dict[str, list[str]]) -> int:
    seen = {start}
    queue = deque([start])
    while queue:
        for p in parents[queue.popleft()]:
            if p not in seen:
                seen.add(p)
                queue.append(p)
    return len(seen)


def find_bisection(
    get: GetCommit, bad: str, goods: Iterable[str], skips: Iterable[str] = ()
) -> Decision:
    """The next commit to test (or the answer), given the marks so far.

    Assumes every good commit is an ancestor of bad; ``check_merge_bases`` handles the others.
    """
    skipped = set(skips)
    newest_first = candidates_of(get, bad, goods)
    order = list(reversed(newest_first))  # git reverses the rev-list output
    nr = len(order)
    if nr == 0:
        raise ValueError("bad commit is an ancestor of a good commit")
    find_all = bool(skipped)
    weight, early = _weights(get, order, nr, find_all)
    if early is not None:
        ranked = [early]
    elif not find_all:
        best, best_d = order[0], -1
        for c in order:
            d = min(weight[c], nr - weight[c])
            if d > best_d:
                best, best_d = c, d
        ranked = [best]
    else:
        ranked = sorted(order, key=lambda c: (-min(weight[c], nr - weight[c]), c))
    reaches = weight[ranked[0]]
    tried: list[str] = []
    if skipped and ranked[0] in skipped:
        tried = [c for c in ranked if c in skipped]
        filtered = [c for c in ranked if c not in skipped]
        if not filtered:
            return Decision("only_skipped", None, total=nr, candidates=tried)
        dist = {c: min(weight[c], nr - weight[c]) for c in filtered}
        best_d = min(weight[ranked[0]], nr - weight[ranked[0]])
        near = [c for c in filtered if 5 * dist[c] >= 4 * best_d and c != bad]
        # skipped commits come in runs (a broken build, a bad snapshot): avoid their neighbours
        children: dict[str, list[str]] = {}
        for c in order:
            for p in get(c).parents:
                children.setdefault(p, []).append(c)
        near = sorted(near, key=lambda c: any(
            x in skipped for x in (*get(c).parents, *children.get(c, ()))))
        i = skip_away_index(len(filtered))
        if near:  # vers: a split nearly as good as the best, rather than a pseudo-random jump
            pick = near[0]
        elif i < len(filtered):
            pick = filtered[i]
            if pick == bad:
                pick = filtered[i - 1] if i > 0 else filtered[0]
        else:
            pick = filtered[0]
        ranked = [pick]
    choice = ranked[0]
    if choice == bad:
        if tried:
            return Decision("only_skipped", None, total=nr, candidates=[*tried, bad])
        return Decision("found", bad, total=nr)
    return Decision("test", choice, remaining=nr - reaches - 1, steps=estimate_steps(nr), total=nr)


def check_merge_bases(
    get: GetCommit, bad: str, goods: list[str], skips: Iterable[str]
) -> tuple[str, str | None]:
    """When some good commit is not an ancestor of bad: what git's ``check_merge_bases`` does.

    Returns ("ok", None), ("test", merge_base), ("bad", None) when bad itself is a merge base, or
    ("skipped", merge_base) to warn about a skipped merge base (and carry on).
    """
    reach = ancestors(get, [bad])
    if all(g in reach for g in goods):
        return "ok", None
    bases: set[str] = set()
    for g in goods:
        bases.update(merge_bases(get, bad, g))
    # keep only the best ones (not an ancestor of another base), as git's get_merge_bases_many
    best = sorted(b for b in bases if not any(b != o and b in ancestors(get, [o]) for o in bases))
    skipped = set(skips)
    warn: str | None = None
    for mb in best:
        if mb == bad:
            return "bad", None
        if mb in goods:
            continue
        if mb in skipped:
            warn = mb
            continue
        return "test", mb
    return ("skipped", warn) if warn else ("ok", None)
