"""What refs keep alive: every commit, tree, node and page a set of roots needs.

A root is a commit something names (a ref, either side of a reflog entry, a VM's base commit).
From each, commits -> trees -> nodes -> pages, plus the delta bases that delta-encoded nodes need
to be decoded. Each distinct node is visited once, so a long history of a large image costs about
as much as its distinct metadata. ``vers fsck`` walks it to find what is missing or unreadable,
``vers gc`` to mark what must be kept (there pages are only collected, never read).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

from vers.errors import CorruptObject, ObjectNotFound
from vers.objects.model import (
    FANOUT,
    ID_LEN,
    KIND_COMMIT,
    KIND_NAMES,
    KIND_NODE,
    KIND_PAGE,
    KIND_TREE,
    ZERO_ID,
    parse_node,
)
from vers.objects.store import ENC_DELTA, ObjectStore
from vers.refs.container import SYMREF_PREFIX, RefsContainer

T = TypeVar("T")
_HEX_ID = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Problem:
    """One thing wrong, named so that a person can find it: what, which object, and from where."""

    what: str  # "missing", "corrupt", "bad-ref", "bad-reflog", "bad-index", "wrong-kind"
    oid: str  # hex ID of the object concerned ("" for a ref value that is not an ID)
    detail: str
    via: str = ""  # "refs/heads/main -> commit 1a2b3c4d5e6f image memory"

    def __str__(self) -> str:
        where = f" (reached from {self.via})" if self.via else ""
        name = f" {self.oid}" if self.oid else ""
        return f"{self.what}{name}: {self.detail}{where}"


@dataclass
class Root:
    """A commit that something names: a ref, or the old/new side of a reflog entry."""

    label: str  # "refs/heads/main", "reflog refs/heads/main@{3}"
    commit: str  # hex ID
    # Only the commit's trees matter, not the commit object or its parents: gc --dry-run uses this
    # for a commit that retention would replace by a twin with other parents.
    trees_only: bool = False


def collect_roots(
    refs: RefsContainer,
    reflogs: bool = True,
    problems: list[Problem] | None = None,
) -> list[Root]:
    """Every commit named by a ref and (optionally) by any side of any reflog entry.

    A value that is not a full hex ID cannot name an object; it is reported, not followed.
    """
    roots: list[Root] = []

    def add(label: str, value: str | None, what: str) -> None:
        if value is None:
            return
        if not _HEX_ID.match(value):
            if problems is not None:
                problems.append(Problem(what, "", f"{label} holds {value!r}, not an object ID"))
            return
        roots.append(Root(label, value))

    for name, value in refs.list_refs("").items():
        if value.startswith(SYMREF_PREFIX):
            continue  # its target is listed under its own name (or is an unborn branch)
        add(name, value, "bad-ref")
    if reflogs:
        for name in refs.reflog_names():
            for i, entry in enumerate(refs.reflog(name)):
                label = f"reflog {name}@{{{i}}}"
                add(label, entry.new, "bad-reflog")
                add(label + " (old value)", entry.old, "bad-reflog")
    return roots


def _nothing(_n: int) -> None:
    pass


class Reachability:
    """Marks everything a set of roots needs, reporting what is missing or unreadable.

    ``stored``/``bad`` come from a scan (fsck); without them (gc) a missing page is not noticed,
    because pages are only collected, never read. Commits, trees and nodes are always read, since
    their children cannot be known otherwise.
    """

    def __init__(
        self,
        store: ObjectStore,
        report: Callable[[Problem], None],
        stored: dict[bytes, int] | None = None,
        bad: dict[bytes, str] | None = None,
        check_levels: bool = False,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        """``progress`` is told of each commit, tree and node read (pages are never read)."""
        self.store = store
        self.progress = progress or _nothing
        self.report = report
        self.stored = stored
        self.bad = bad or {}
        self.check_levels = check_levels
        self.commits: set[bytes] = set()
        self.trees: set[bytes] = set()
        self.nodes: set[bytes] = set()
        self.pages: set[bytes] = set()
        self.delta_bases: set[bytes] = set()
        self._failed: set[bytes] = set()

    @property
    def marked(self) -> set[bytes]:
        return self.commits | self.trees | self.nodes | self.pages | self.delta_bases

    def walk(self, roots: Iterable[Root]) -> None:
        for root in roots:
            if root.trees_only:
                commit = self._load(bytes.fromhex(root.commit), KIND_COMMIT, root.label,
                                    self.store.get_commit)
                if commit is not None:
                    for name, tree_hex in sorted(commit.images.items()):
                        self._walk_tree(
                            tree_hex, f"{root.label} -> commit {root.commit[:12]} image {name}"
                        )
            else:
                self._walk_commits(root)

    # -- commits ------------------------------------------------------------------------------
    def _walk_commits(self, root: Root) -> None:
        stack: list[tuple[str, str]] = [(root.commit, root.label)]
        while stack:
            cid, via = stack.pop()
            oid = bytes.fromhex(cid)
            if oid in self.commits or oid in self._failed:
                continue
            commit = self._load(oid, KIND_COMMIT, via, self.store.get_commit)
            if commit is None:
                continue
            self.commits.add(oid)
            self.progress(1)
            here = f"{root.label} -> commit {cid[:12]}"
            for name, tree_hex in sorted(commit.images.items()):
                self._walk_tree(tree_hex, f"{here} image {name}")
            for parent in commit.parents:
                stack.append((parent, f"{root.label} -> parent of commit {cid[:12]}"))

    # -- trees and nodes ----------------------------------------------------------------------
    def _walk_tree(self, tree_hex: str, via: str) -> None:
        try:
            oid = bytes.fromhex(tree_hex)
        except ValueError:
            self.report(Problem("corrupt", tree_hex, "commit names a tree with a bad ID", via))
            return
        if oid in self.trees or oid in self._failed:
            return
        tree = self._load(oid, KIND_TREE, via, self.store.get_tree)
        if tree is None:
            return
        self.trees.add(oid)
        self.progress(1)
        if tree.root == ZERO_ID:
            return
        # Iterative walk by level: (node ID, level, first page it covers).
        stack = [(tree.root, tree.depth, 0)]
        while stack:
            node, level, first = stack.pop()
            if node in self.nodes or node in self._failed:
                continue
            entries = self._read_node(node, level, via, first)
            if entries is None:
                continue
            self.nodes.add(node)
            self.progress(1)
            span = FANOUT ** (level - 1)
            for j in range(FANOUT):
                child = entries[j * ID_LEN : (j + 1) * ID_LEN]
                if child == ZERO_ID:
                    continue
                if level == 1:
                    self._mark_page(child, f"{via} page {first + j}")
                else:
                    stack.append((child, level - 1, first + j * span))

    def _read_node(self, oid: bytes, level: int, via: str, first: int) -> bytes | None:
        where = f"{via} node at level {level} from page {first}"
        if oid in self.bad:
            self.report(Problem("corrupt", oid.hex(), f"node: {self.bad[oid]}", where))
            self._failed.add(oid)
            return None
        try:
            rec = self.store.get_record(oid)
            if rec.kind != KIND_NODE:
                found = KIND_NAMES.get(rec.kind, "?")
                self.report(Problem("wrong-kind", oid.hex(), f"expected a node, found a {found}",
                                    where))
                self._failed.add(oid)
                return None
            if rec.encoding == ENC_DELTA:
                self._mark_delta_chain(oid, rec.payload[:ID_LEN], where)
            if self.check_levels:
                stored_level, entries = parse_node(oid, self.store.get_bytes(oid))
                if stored_level != level:
                    self.report(Problem("corrupt", oid.hex(),
                                        f"node has level {stored_level}, its tree needs {level}",
                                        where))
                return entries
            return self.store.get_node(oid)
        except ObjectNotFound as exc:
            detail = "node not in the store" if exc.oid == oid.hex() else f"node unreadable: {exc}"
            self.report(Problem("missing", oid.hex(), detail, where))
        except CorruptObject as exc:
            self.report(Problem("corrupt", oid.hex(), f"node: {exc.reason}", where))
        self._failed.add(oid)
        return None

    def _mark_delta_chain(self, oid: bytes, base: bytes, where: str) -> None:
        """A delta node is unreadable without its base (and the base's base ...)."""
        for _ in range(64):
            if base in self.delta_bases or base in self.nodes:
                return
            self.delta_bases.add(base)
            try:
                rec = self.store.get_record(base)
            except ObjectNotFound:
                self.report(Problem("missing", base.hex(), f"delta base of node {oid.hex()[:12]}",
                                    where))
                return
            if rec.encoding != ENC_DELTA:
                return
            oid, base = base, rec.payload[:ID_LEN]

    def _mark_page(self, oid: bytes, via: str) -> None:
        if oid in self.pages:
            return
        self.pages.add(oid)
        if oid in self.bad:
            self.report(Problem("corrupt", oid.hex(), f"page: {self.bad[oid]}", via))
        elif self.stored is not None:
            kind = self.stored.get(oid)
            if kind is None:
                self.report(Problem("missing", oid.hex(), "page not in the store", via))
            elif kind != KIND_PAGE:
                self.report(Problem("wrong-kind", oid.hex(),
                                    f"expected a page, found a {KIND_NAMES.get(kind, '?')}", via))

    def _load(self, oid: bytes, kind: int, via: str, get: Callable[[bytes], T]) -> T | None:
        name = KIND_NAMES[kind]
        if oid in self.bad:
            self.report(Problem("corrupt", oid.hex(), f"{name}: {self.bad[oid]}", via))
            self._failed.add(oid)
            return None
        try:
            return get(oid)
        except ObjectNotFound as exc:
            self.report(Problem("missing", oid.hex(), f"{name} not in the store: {exc}", via))
        except CorruptObject as exc:
            what = "wrong-kind" if exc.reason.startswith("expected") else "corrupt"
            self.report(Problem(what, oid.hex(), f"{name}: {exc.reason}", via))
        self._failed.add(oid)
        return None
