"""``vers fsck``: prove that every stored object is intact and every named state is complete.

Two passes, both read-only:

1. **Scan** (``ObjectStore.scan``): every stored object is read back through the store (which
   re-hashes it against its ID) and parsed as its kind says. The store also reports index entries
   that do not lead to their record (the LMDB store's packs), which would otherwise only show up
   as "content does not match". The result is the set of stored IDs and the set of bad ones.
2. **Connectivity** (``vers.history.reachability``): from every ref, every reflog entry and every
   VM's base commit, commits -> trees -> nodes -> pages, plus the delta bases of delta-encoded
   nodes. A missing or bad object is reported together with the ref (or reflog entry) and commit
   that reach it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from vers.errors import CorruptObject, ObjectNotFound, VersError
from vers.history.reachability import Problem, Reachability, Root, collect_roots
from vers.objects.model import (
    KIND_COMMIT,
    KIND_NAMES,
    KIND_NODE,
    KIND_PAGE,
    KIND_TREE,
    PAGE_SIZE,
    Commit,
    Tree,
    parse_node,
)
from vers.objects.store import ObjectStore, Record
from vers.porcelain.gc import vm_roots
from vers.progress import NO_PROGRESS, Progress
from vers.refs.container import RefsContainer
from vers.remote.lazy import absent_from
from vers.repo import Repo


# -- the scan -------------------------------------------------------------------------------------
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
    #: a partial store: reachable objects not stored here, left to its promisor remote
    absent: list[Problem] = field(default_factory=list)
    #: of those, how many the promisor's indexes were asked about and have (``--remote``)
    on_remote: int | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def unreachable(self) -> int:
        return max(0, self.objects - self.reachable)

    def summary(self) -> str:
        kinds = ", ".join(f"{n} {k}s" for k, n in sorted(self.by_kind.items()))
        verdict = "no problems" if self.ok else f"{len(self.problems)} problem(s)"
        lazy = ""
        if self.absent or self.on_remote is not None:
            checked = ("" if self.on_remote is None else
                       f", {self.on_remote} of them checked on the promisor remote")
            lazy = (f"; lazy, {len(self.absent)} objects not local (with what they reach: "
                    f"fetched when read){checked}")
        return (
            f"fsck: {verdict}; checked {self.objects} objects ({kinds or 'none'}) in "
            f"{self.seconds:.2f}s; {self.roots} refs/reflog entries; {self.reachable} reachable, "
            f"{self.unreachable} unreachable (gc removes these){lazy}"
        )


def fsck(
    store: ObjectStore,
    refs: RefsContainer,
    full: bool = False,
    on_problem: Callable[[Problem], None] | None = None,
    extra_roots: Iterable[Root] = (),
    partial: bool = False,
    progress: Progress = NO_PROGRESS,
) -> FsckReport:
    """Check ``store`` and ``refs``; every problem goes to ``on_problem`` as soon as it is found.

    ``full`` also checks that every node's level matches its place in its tree (one more read of
    each reachable node). ``extra_roots`` are commits something other than a ref depends on (the
    base commits of VMs, see ``vm_roots``). ``partial``: the store has a promisor remote, so a
    reachable object that is not stored here is not a problem but ``report.absent``.
    """
    t0 = time.monotonic()
    report = FsckReport()

    def note(p: Problem) -> None:
        if partial and p.what == "missing":
            report.absent.append(p)
            return
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
    with progress.meter("fsck: checking objects", total=store.stats().objects,
                        unit="objects") as meter:
        for obj in store.scan():
            stored[obj.oid] = obj.kind
            if obj.record is None:
                note(Problem("bad-index", obj.oid.hex(), obj.problem))
                bad[obj.oid] = obj.problem
            else:
                _verify_into(store, obj.oid, obj.record, bad)
            meter.advance()
    for kind in stored.values():
        kind_name = KIND_NAMES.get(kind, f"kind-{kind}")
        report.by_kind[kind_name] = report.by_kind.get(kind_name, 0) + 1
    report.objects = len(stored)

    with progress.meter("fsck: walking history", unit="objects") as meter:
        walker = Reachability(store, note, stored=stored, bad=bad, check_levels=full,
                              progress=meter.advance)
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


def fsck_repo(
    repo: Repo, full: bool = False, on_problem: Callable[[Problem], None] | None = None,
    remote: bool = False,
    progress: Progress = NO_PROGRESS,
) -> FsckReport:
    """``fsck`` of a repository: its store, its refs, and the base commits of its VMs.

    In a partial store (one with a promisor remote) what is absent here is counted, not
    reported; ``remote`` asks the promisor's indexes whether they really have it, and what they
    lack is then reported as missing. Only the local store is read either way."""
    partial = bool(repo.promisors())
    with repo.local_only():
        report = fsck(repo.store, repo.refs, full=full, on_problem=on_problem,
                      extra_roots=vm_roots(repo.vers_dir), partial=partial, progress=progress)
    if partial and remote:
        ids = list(dict.fromkeys(bytes.fromhex(p.oid) for p in report.absent))
        there, gone = absent_from(repo, ids)
        report.on_remote = len(there)
        lost = {o.hex() for o in gone}
        for p in report.absent:
            if p.oid in lost:
                lost.discard(p.oid)
                p = Problem("missing", p.oid, f"{p.detail}, and not on the promisor remote "
                            "either", p.via)
                report.problems.append(p)
                if on_problem is not None:
                    on_problem(p)
    return report
