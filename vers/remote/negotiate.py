"""have/want: which objects the other side lacks, without walking what it already has.

Both sides keep the same invariant (an object that is stored has its whole closure stored: local
writes and remote bundles both go bottom-up), so one membership test on a commit, tree or node
prunes its entire history or subtree, git-style. The result is ordered bottom-up -- pages, nodes
by rising level, trees, then commits parents first -- which is the order that keeps the invariant
on the receiving side.
"""

from __future__ import annotations

from collections.abc import Callable

from vers.objects.model import ID_LEN, ZERO_ID, Commit
from vers.objects.store import ObjectStore

Has = Callable[[bytes], bool]


class SendPlan:
    """Objects to transfer, bottom-up, and how they were found (for progress and tests)."""

    def __init__(self) -> None:
        self.pages: list[bytes] = []
        self.nodes: dict[int, list[bytes]] = {}  # level -> IDs
        self.trees: list[bytes] = []
        self.commits: list[bytes] = []  # parents first

    def ordered(self) -> list[bytes]:
        out = list(self.pages)
        for level in sorted(self.nodes):
            out += self.nodes[level]
        return out + self.trees + self.commits

    def __len__(self) -> int:
        return (len(self.pages) + sum(map(len, self.nodes.values())) + len(self.trees)
                + len(self.commits))


def commits_to_send(get_commit: Callable[[str], Commit], tips: list[str], has: Has) -> list[Commit]:
    """Commits reachable from ``tips`` that ``has`` does not know, parents before children."""
    out: list[Commit] = []
    seen: set[str] = set()
    # Iterative post-order DFS: a commit is emitted once all its parents are.
    stack: list[tuple[str, bool]] = [(t, False) for t in reversed(tips)]
    cache: dict[str, Commit] = {}
    while stack:
        cid, expanded = stack.pop()
        if expanded:
            out.append(cache.pop(cid))
            continue
        if cid in seen or has(bytes.fromhex(cid)):
            continue
        seen.add(cid)
        commit = get_commit(cid)
        cache[cid] = commit
        stack.append((cid, True))
        stack.extend((p, False) for p in reversed(commit.parents) if p not in seen)
    return out


def plan_send(store: ObjectStore, tips: list[str], has: Has) -> SendPlan:
    """Every object reachable from ``tips`` that ``has`` does not know, bottom-up."""
    plan = SendPlan()
    seen: set[bytes] = set()

    def wanted(oid: bytes) -> bool:
        if oid == ZERO_ID or oid in seen or has(oid):
            return False
        seen.add(oid)
        return True

    def get_commit(cid: str) -> Commit:
        return store.get_commit(bytes.fromhex(cid))

    commits = commits_to_send(get_commit, tips, has)
    # Nodes are walked breadth-first per level so each level is one list, children before parents
    # once the levels are reversed.
    frontier: dict[int, list[bytes]] = {}
    for commit in commits:
        for tree_hex in commit.images.values():
            tid = bytes.fromhex(tree_hex)
            if not wanted(tid):
                continue
            plan.trees.append(tid)
            tree = store.get_tree(tid)
            if wanted(tree.root):
                frontier.setdefault(tree.depth, []).append(tree.root)
    top = max(frontier, default=0)
    for level in range(top, 0, -1):
        for nid in frontier.get(level, []):
            plan.nodes.setdefault(level, []).append(nid)
            entries = store.get_node(nid)
            for i in range(0, len(entries), ID_LEN):
                child = entries[i:i + ID_LEN]
                if not wanted(child):
                    continue
                if level == 1:
                    plan.pages.append(child)
                else:
                    frontier.setdefault(level - 1, []).append(child)
    plan.commits = [bytes.fromhex(c.id) for c in commits]
    return plan
