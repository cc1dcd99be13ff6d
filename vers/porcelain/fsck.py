"""``vers fsck``: prove that every stored object is intact and every named state is complete.

Three passes, all read-only:

1. **Scan**: every stored object is read back through the store (which re-hashes it against its
   ID) and parsed as its kind says. The result is the set of stored IDs and the set of bad ones.
2. **Index** (LMDB store only): every index entry must point at its own record inside an existing
   pack; a wrong entry would otherwise only show up as "content does not match".
3. **Connectivity**: from every ref and every reflog entry, commits -> trees -> nodes -> pages, plus
   the delta bases that delta-encoded nodes need to be decoded. Each distinct node is visited once,
   so a long history of a large image costs about as much as its distinct metadata. A missing or
   bad object is reported together with the ref (or reflog entry) and commit that reach it.

The connectivity walk (``Reachability``) is shared with ``vers gc``, which uses it to mark what
must be kept; there the pages are only collected, not read.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from vers.errors import CorruptObject, ObjectNotFound, VersError
from vers.objects.lmdbstore import LmdbObjectStore
from vers.objects.model import (
    FANOUT,
    ID_LEN,
    KIND_COMMIT,
    KIND_NAMES,
    KIND_NODE,
    KIND_PAGE,
    KIND_TREE,
    PAGE_SIZE,
    ZERO_ID,
    Commit,
    Tree,
    parse_node,
)
from vers.objects.store import ENC_DELTA, ObjectStore, Record
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
    ) -> None:
        self.store = store
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
                        self._walk_tree(tree_hex, f"{root.label} -> commit {root.commit[:12]} image {name}")
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
                self.report(Problem("wrong-kind", oid.hex(),
                                    f"expected a node, found a {KIND_NAMES.get(rec.kind, '?')}", where))
                self._failed.add(oid)
                return None
            if rec.encoding == ENC_DELTA:
                self._mark_delta_chain(oid, rec.payload[:ID_LEN], where)
            if self.check_levels:
                stored_level, entries = parse_node(oid, self.store.get_bytes(oid))
                if stored_level != level:
                    self.report(Problem("corrupt", oid.hex(),
                                        f"node has level {stored_level}, its tree needs {level}", where))
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
                self.report(Problem("missing", base.hex(), f"delta base of node {oid.hex()[:12]}", where))
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


# -- the scan -------------------------------------------------------------------------------------
def verify_object(store: ObjectStore, oid: bytes) -> int:
    """Read one object through the store (re-hashed) and parse it as its kind; returns its kind.

    Raises CorruptObject (or ObjectNotFound for a delta whose base is gone)."""
    rec = store.get_record(oid)
    return verify_record(store, oid, rec)


def verify_record(store: ObjectStore, oid: bytes, rec: Record) -> int:
    """Decode a stored record through the store (which re-hashes it) and parse it as its kind."""
    data = store.decode_record(oid, rec)
    if rec.kind == KIND_PAGE:
        if not 0 < len(data) <= PAGE_SIZE:
            raise CorruptObject(oid.hex(), f"page of {len(data)} bytes")
    elif rec.kind == KIND_NODE:
        level, _ = parse_node(oid, data)
        if not 1 <= level <= 8:
            raise CorruptObject(oid.hex(), f"node level {level} out of range")
    elif rec.kind == KIND_TREE:
        Tree.parse(oid, data)
    elif rec.kind == KIND_COMMIT:
        Commit.parse(oid, data)
    else:
        raise CorruptObject(oid.hex(), f"unknown object kind {rec.kind}")
    return rec.kind


def _verify_into(store: ObjectStore, oid: bytes, rec: Record, bad: dict[bytes, str]) -> None:
    try:
        verify_record(store, oid, rec)
    except CorruptObject as exc:
        bad[oid] = exc.reason
    except ObjectNotFound as exc:
        bad[oid] = f"cannot be decoded: {exc}"
    except VersError as exc:  # a parse error of another kind
        bad[oid] = str(exc)


@dataclass
class FsckReport:
    problems: list[Problem] = field(default_factory=list)
    objects: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    reachable: int = 0
    roots: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def unreachable(self) -> int:
        return max(0, self.objects - self.reachable)

    def summary(self) -> str:
        kinds = ", ".join(f"{n} {k}s" for k, n in sorted(self.by_kind.items()))
        verdict = "no problems" if self.ok else f"{len(self.problems)} problem(s)"
        return (
            f"fsck: {verdict}; checked {self.objects} objects ({kinds or 'none'}) in "
            f"{self.seconds:.2f}s; {self.roots} refs/reflog entries; {self.reachable} reachable, "
            f"{self.unreachable} unreachable (gc removes these)"
        )


def fsck(
    store: ObjectStore,
    refs: RefsContainer,
    full: bool = False,
    on_problem: Callable[[Problem], None] | None = None,
    extra_roots: Iterable[Root] = (),
) -> FsckReport:
    """Check ``store`` and ``refs``; every problem goes to ``on_problem`` as soon as it is found.

    ``full`` also checks that every node's level matches its place in its tree (one more read of
    each reachable node). ``extra_roots`` are commits something other than a ref depends on (the
    base commits of VMs, see ``vers.porcelain.gc.vm_roots``).
    """
    t0 = time.monotonic()
    report = FsckReport()

    def note(p: Problem) -> None:
        report.problems.append(p)
        if on_problem is not None:
            on_problem(p)

    # Roots first: whatever they name was durable before the ref moved, so the scan (which starts
    # later) sees it even while a snapshot lands meanwhile; the other order reports false misses.
    ref_problems: list[Problem] = []
    roots = collect_roots(refs, reflogs=True, problems=ref_problems) + list(extra_roots)
    for p in ref_problems:
        note(p)
    report.roots = len(roots)

    stored: dict[bytes, int] = {}
    bad: dict[bytes, str] = {}
    if isinstance(store, LmdbObjectStore):
        for oid, detail in _scan_packs(store, stored, bad):
            note(Problem("bad-index", oid.hex(), detail))
    else:
        for oid, kind in list(store.iter_ids()):
            stored[oid] = kind
            try:
                rec = store.get_record(oid)
            except ObjectNotFound:
                continue  # deleted while we looked
            _verify_into(store, oid, rec, bad)
    for kind in stored.values():
        kind_name = KIND_NAMES.get(kind, f"kind-{kind}")
        report.by_kind[kind_name] = report.by_kind.get(kind_name, 0) + 1
    report.objects = len(stored)

    walker = Reachability(store, note, stored=stored, bad=bad, check_levels=full)
    walker.walk(roots)
    marked = walker.marked
    report.reachable = len(marked & stored.keys())
    # Bad objects nothing reaches are still problems: the store holds bytes it cannot vouch for.
    reported = {p.oid for p in report.problems}
    for oid, reason in sorted(bad.items()):
        if oid.hex() not in reported:
            what = KIND_NAMES.get(stored.get(oid, 0), "object")
            note(Problem("corrupt", oid.hex(), f"{what}: {reason}", "nothing (unreachable)"))
    report.seconds = time.monotonic() - t0
    return report


def _scan_packs(
    store: LmdbObjectStore, stored: dict[bytes, int], bad: dict[bytes, str]
) -> list[tuple[bytes, str]]:
    """Verify the LMDB store pack by pack, in one read transaction; returns index problems.

    Reading pack by pack touches each 8 MiB pack value once instead of once per object (an LMDB
    get of a large value costs ~25 us, more than hashing the page). Every index entry must point at
    its own record header inside an existing pack. This knows the pack layout
    (vers/objects/lmdbstore.py) on purpose: fsck is the format's checker.
    """
    from vers.objects import lmdbstore as ls

    hdr, index_fmt = ls._RECORD_HEADER, ls._INDEX
    problems: list[tuple[bytes, str]] = []
    with store.env.begin(buffers=True) as txn:
        index_db = store.db["index"]
        seen: set[bytes] = set()
        for key, pack in txn.cursor(db=store.db["packs"]):
            pack_no = ls._PACK_KEY.unpack(key)[0]
            off = 0
            while off + hdr.size <= len(pack):
                rid, kind, enc, depth, length = hdr.unpack_from(pack, off)
                start, end = off + hdr.size, off + hdr.size + length
                if end > len(pack):
                    break  # a truncated record; its index entry (if any) is reported below
                off = end
                loc = txn.get(rid, db=index_db)
                if loc is None:
                    continue  # a dead duplicate: never read
                entry = index_fmt.unpack(loc)
                if entry != (pack_no, start, length, kind, enc, depth):
                    continue
                oid = bytes(rid)
                seen.add(oid)
                stored[oid] = kind
                _verify_into(store, oid, Record(kind, enc, depth, bytes(pack[start:end])), bad)
        for key, loc in txn.cursor(db=index_db):
            oid = bytes(key)
            if oid in seen:
                continue
            pack_no, off, length, kind, _enc, _depth = index_fmt.unpack(loc)
            stored[oid] = kind
            where = txn.get(ls._PACK_KEY.pack(pack_no), db=store.db["packs"])
            if where is None:
                detail = f"index points into pack {pack_no}, which does not exist"
            elif off < hdr.size or off + length > len(where):
                detail = (f"index points outside pack {pack_no} "
                          f"(bytes {off}..{off + length} of {len(where)})")
            else:
                detail = f"index entry does not match the record at pack {pack_no} offset {off}"
            problems.append((oid, detail))
            bad[oid] = detail
    return problems
