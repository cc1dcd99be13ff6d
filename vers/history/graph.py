"""Walking the commit graph: log order, ranges, ancestry."""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Iterable, Iterator

from vers.objects.model import Commit

GetCommit = Callable[[str], Commit]


def ancestors(get: GetCommit, tips: Iterable[str]) -> set[str]:
    """Every commit reachable from ``tips`` (inclusive)."""
    seen: set[str] = set()
    queue = deque(tips)
    while queue:
        cid = queue.popleft()
        if cid in seen:
            continue
        seen.add(cid)
        queue.extend(get(cid).parents)
    return seen


def is_ancestor(get: GetCommit, ancestor: str, descendant: str) -> bool:
    return ancestor in ancestors(get, [descendant])


def walk(
    get: GetCommit,
    include: Iterable[str],
    exclude: Iterable[str] = (),
    first_parent: bool = False,
) -> Iterator[Commit]:
    """Commits reachable from ``include`` but not from ``exclude``, newest first, and never a
    parent before any of its children (commits made at the same instant stay in order)."""
    hidden = ancestors(get, exclude)
    commits: dict[str, Commit] = {}
    order: list[str] = []
    queue = deque(c for c in include if c not in hidden)
    while queue:
        cid = queue.popleft()
        if cid in commits or cid in hidden:
            continue
        c = get(cid)
        commits[cid] = c
        order.append(cid)
        queue.extend(c.parents[:1] if first_parent else c.parents)
    pending_children: dict[str, int] = {cid: 0 for cid in commits}
    for c in commits.values():
        for p in c.parents[:1] if first_parent else c.parents:
            if p in pending_children:
                pending_children[p] += 1
    rank = {cid: i for i, cid in enumerate(order)}
    heap = [(-commits[c].time_us, rank[c], c) for c in commits if pending_children[c] == 0]
    heapq.heapify(heap)
    while heap:
        _, _, cid = heapq.heappop(heap)
        c = commits[cid]
        yield c
        for p in c.parents[:1] if first_parent else c.parents:
            if p in pending_children:
                pending_children[p] -= 1
                if pending_children[p] == 0:
                    heapq.heappush(heap, (-commits[p].time_us, rank[p], p))


def merge_bases(get: GetCommit, a: str, b: str) -> list[str]:
    """Best common ancestors of ``a`` and ``b`` (those not ancestors of another common one)."""
    common = ancestors(get, [a]) & ancestors(get, [b])
    best = set(common)
    for c in common:
        for p in get(c).parents:
            best -= ancestors(get, [p]) if p in common else set()
    return sorted(best)
