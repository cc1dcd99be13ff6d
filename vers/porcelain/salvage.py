"""``vers fsck --salvage DIR``: copy what is still intact out of a partly destroyed repository.

A commit is intact when it, every tree, node and page it names, and all its ancestors read back
and re-hash correctly; only then can it keep its ID in the new repository (its ID covers its
parents). Every intact commit is copied, with each ref and a detached HEAD that names one; refs
naming anything else are listed as lost. Objects are copied by their canonical bytes (re-encoded,
not as stored deltas), so nothing in the new store depends on a record of the old one. Reflogs
are not copied. The old repository is only read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from vers.errors import BadInput, VersError
from vers.objects.model import (
    FANOUT,
    ID_LEN,
    KIND_COMMIT,
    KIND_NODE,
    KIND_PAGE,
    KIND_TREE,
    PAGE_SIZE,
    ZERO_ID,
    Commit,
    Tree,
    parse_node,
)
from vers.objects.store import ObjectWriter
from vers.refs.container import HEAD, SYMREF_PREFIX
from vers.repo import Repo


@dataclass
class SalvageReport:
    target: Path
    commits: int = 0
    lost_commits: int = 0
    refs: list[str] = field(default_factory=list)
    lost_refs: dict[str, str] = field(default_factory=dict)  # ref -> why it was left behind

    def lines(self) -> list[str]:
        head = (f"salvage: copied {self.commits} intact commits and {len(self.refs)} refs into "
                f"{self.target}; {self.lost_commits} commits could not be copied")
        return [head] + [f"lost {ref}: {why}" for ref, why in sorted(self.lost_refs.items())]


class _Copier:
    """Reads objects from ``repo`` (each re-hashed on read) and writes the intact ones to ``w``."""

    def __init__(self, repo: Repo, w: ObjectWriter) -> None:
        self.store = repo.store
        self.w = w
        self.good: set[bytes] = {ZERO_ID}
        self.bad: set[bytes] = set()
        self.intact: dict[str, bool] = {}

    def _read(self, oid: bytes, kind: int) -> bytes | None:
        """The canonical bytes of ``oid`` if it is stored as ``kind`` and re-hashes right."""
        if oid in self.bad:
            return None
        try:
            rec = self.store.get_record(oid)
            if rec.kind == kind:
                return self.store.decode_record(oid, rec)
        except VersError:
            pass
        self.bad.add(oid)
        return None

    def _keep(self, oid: bytes, kind: int, data: bytes, ok: bool) -> bool:
        if ok:
            self.w.add(oid, kind, data, compress=kind in (KIND_PAGE, KIND_NODE))
            self.good.add(oid)
        else:
            self.bad.add(oid)
        return ok

    def tree(self, oid: bytes) -> bool:
        if oid in self.good or oid in self.bad:
            return oid in self.good
        data = self._read(oid, KIND_TREE)
        if data is None:
            return False
        try:
            tree = Tree.parse(oid, data)
        except VersError:
            return self._keep(oid, KIND_TREE, data, False)
        return self._keep(oid, KIND_TREE, data, self._subtree(tree.root, tree.depth))

    def _subtree(self, oid: bytes, level: int) -> bool:
        """Level 0 is a page. Recursion is as deep as the tree (at most a few levels)."""
        if oid in self.good or oid in self.bad:
            return oid in self.good
        kind = KIND_NODE if level else KIND_PAGE
        data = self._read(oid, kind)
        if data is None:
            return False
        if not level:
            return self._keep(oid, kind, data, 0 < len(data) <= PAGE_SIZE)
        try:
            stored_level, entries = parse_node(oid, data)
        except VersError:
            return self._keep(oid, kind, data, False)
        ok = stored_level == level
        for j in range(FANOUT):
            child = entries[j * ID_LEN : (j + 1) * ID_LEN]
            if ok and child != ZERO_ID:
                ok = self._subtree(child, level - 1)
        return self._keep(oid, kind, data, ok)

    def commit(self, cid: str) -> bool:
        """Whether ``cid`` and all its ancestors are intact, copying them if so (iterative, so a
        long history needs no deep recursion)."""
        stack: list[tuple[str, tuple[Commit, bytes] | None]] = [(cid, None)]
        while stack:
            c, loaded = stack.pop()
            if c in self.intact:
                continue
            if loaded is None:
                try:
                    oid = bytes.fromhex(c)
                    data = self._read(oid, KIND_COMMIT)
                    commit = Commit.parse(oid, data) if data is not None else None
                except (VersError, ValueError):
                    commit = None
                if commit is None or data is None:
                    self.intact[c] = False
                    continue
                loaded = (commit, data)
                pending = [p for p in commit.parents if p not in self.intact]
                if pending:
                    stack.append((c, loaded))
                    stack.extend((p, None) for p in pending)
                    continue
            commit, data = loaded
            ok = all(self.intact.get(p, False) for p in commit.parents) and all(
                self.tree(bytes.fromhex(t)) for t in commit.images.values())
            if ok:
                self.w.add(bytes.fromhex(c), KIND_COMMIT, data, compress=False)
            self.intact[c] = ok
        return self.intact[cid]


def salvage(repo: Repo, target: str | os.PathLike[str]) -> SalvageReport:
    """Copy every intact commit of ``repo``, and the refs naming one, into a new repository."""
    dest = Path(target).absolute()
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise BadInput(f"{dest} already exists and is not an empty directory")
    report = SalvageReport(dest)
    refs = repo.refs.list_refs("")
    with Repo.init(dest) as new:
        with new.store.writer() as w:
            copier = _Copier(repo, w)
            for name, value in sorted(refs.items()):
                if value.startswith(SYMREF_PREFIX):
                    continue
                if not copier.commit(value):
                    report.lost_refs[name] = f"commit {value[:12]} or an object it needs is damaged"
        # The writer's exit flushed: every object below the refs is durable before they move.
        for name, value in sorted(refs.items()):
            if value.startswith(SYMREF_PREFIX) or name in report.lost_refs:
                continue
            new.refs.set_ref(name, value, follow=False, message="salvage")
            report.refs.append(name)
        head = refs.get(HEAD, "")
        if head.startswith(SYMREF_PREFIX) and head[len(SYMREF_PREFIX):] in report.refs:
            new.refs.set_symbolic_ref(HEAD, head[len(SYMREF_PREFIX):], message="salvage")
        report.commits = sum(copier.intact.values())
        report.lost_commits = len(copier.intact) - report.commits
    return report
