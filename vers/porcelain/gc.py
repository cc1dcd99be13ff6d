"""``vers gc``: expire reflogs, apply a retention policy, and prune what nothing needs any more.

Order matters for safety, and each step leaves a consistent repository if the process dies:

1. Retention (optional): twins are written and flushed before refs move; refs move by CAS; reflogs
   are then mapped. Until the prune, every original commit is still stored, so a crash at any
   point leaves every ref and reflog entry complete (fsck clean).
2. Reflog expiry: entries older than ``expire_reflog`` are dropped (one transaction per ref).
3. Mark: everything reachable from every ref and every remaining reflog entry, plus the delta
   bases of delta-encoded nodes (a node cannot be decoded without its base).
4. Sweep: only objects in packs older than ``grace`` may go, so a snapshot in progress, whose new
   objects are stored but not yet named by any ref, is safe. Just before each batch the refs are read
   again and anything new is marked too. Each batch of packs is rewritten in one LMDB transaction
   (``LmdbObjectStore.rewrite_packs``): the survivors are copied to new packs and the old packs
   dropped together, so a kill leaves either the old packs or the new ones.

The in-memory store has no pack ages; there the grace period does not apply (it is single-process).

Known limit (see docs/maintenance.md): a concurrent snapshot that *re-uses* an unreachable object
from an old pack (found by dedup) can lose it to a concurrent sweep; git has the same window and
narrows it by "freshening" such objects, which needs the writer's cooperation.
"""

from __future__ import annotations

import os
import time as _time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from vers.errors import StoreError
from vers.objects.lmdbstore import LmdbObjectStore
from vers.objects.store import ObjectStore
from vers.porcelain.fsck import Problem, Reachability, Root, collect_roots
from vers.porcelain.retention import (
    Policy,
    RetentionPlan,
    RetentionResult,
    apply_retention,
    plan_retention,
)
from vers.refs.container import RefsContainer

DEFAULT_GRACE = 2 * 3600.0
DEFAULT_EXPIRE_REFLOG = 90 * 86400.0
DEFAULT_MAX_UNUSED = 0.1  # a pack is rewritten once more than this share of it is dead bytes
PACKS_PER_TXN = 32  # 256 MiB of packs per transaction: bounded memory, still few transactions


@dataclass
class GcReport:
    dry_run: bool
    plan: RetentionPlan | None = None
    retention: RetentionResult | None = None
    reflog_expired: int = 0
    marked: int = 0
    objects_removed: int = 0
    bytes_removed: int = 0  # payload bytes of the removed objects
    packs_rewritten: int = 0
    young_unreachable: int = 0  # unreachable, but in packs younger than the grace period
    dead_bytes_left: int = 0  # removed from the index; their packs are rewritten in a later gc
    store_bytes_before: int = 0
    store_bytes_after: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    extra_roots: Callable[[], Iterable[Root]] = field(default=lambda: (), repr=False)

    def lines(self) -> list[str]:
        out: list[str] = []
        would = "would " if self.dry_run else ""
        if self.plan is not None:
            out += self.plan.lines()
            out.append(f"retention: {would}keep {len(self.plan.kept)}, {would}remove "
                       f"{len(self.plan.dropped)} of {len(self.plan.decisions)} commits on branches")
        if self.retention is not None:
            for ref, (old, new) in sorted(self.retention.moved.items()):
                out.append(f"rewrote {ref}: {old[:12]} -> {new[:12]}")
            for ref in self.retention.conflicts:
                out.append(f"skipped {ref}: another writer moved it during gc; run gc again")
        out.append(f"reflog: {would}expire {self.reflog_expired} entries")
        out.append(
            f"prune: {would}remove {self.objects_removed} objects ({_size(self.bytes_removed)}), "
            f"{would}rewrite {self.packs_rewritten} packs; {self.marked} objects reachable"
            + (f"; {self.young_unreachable} unreachable objects kept, younger than the grace period"
               if self.young_unreachable else "")
        )
        if self.dead_bytes_left:
            out.append(f"packs: {_size(self.dead_bytes_left)} of removed objects stay as dead bytes "
                       "until their packs pass --max-unused")
        if not self.dry_run and self.store_bytes_before:
            freed = self.store_bytes_before - self.store_bytes_after
            note = f" (freed {_size(freed)}, reused by later writes)" if freed > 0 else ""
            out.append(f"packs: {_size(self.store_bytes_before)} -> {_size(self.store_bytes_after)}"
                       f"{note} in {self.seconds:.2f}s")
        out += self.notes
        return out


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"


def gc(
    store: ObjectStore,
    refs: RefsContainer,
    *,
    grace: float = DEFAULT_GRACE,
    expire_reflog: float = DEFAULT_EXPIRE_REFLOG,
    policy: Policy | None = None,
    dry_run: bool = False,
    max_unused: float = DEFAULT_MAX_UNUSED,
    extra_roots: Callable[[], Iterable[Root]] | None = None,
    now: float | None = None,
    progress: Callable[[str], None] | None = None,
) -> GcReport:
    """Run the steps in the module doc; with ``dry_run`` nothing is written.

    ``extra_roots`` is asked, at marking time and again before each sweep batch, for commits that
    something other than a ref depends on (``vm_roots``: the base commits of VMs).
    """
    t0 = _time.monotonic()
    now = _time.time() if now is None else now
    say = progress or (lambda _msg: None)
    report = GcReport(dry_run=dry_run)
    if extra_roots is not None:
        report.extra_roots = extra_roots
    if isinstance(store, LmdbObjectStore):
        # Reader slots of killed processes pin old pages, so LMDB could not reuse what we free.
        stale = store.env.reader_check()
        if stale:
            report.notes.append(f"cleared {stale} stale LMDB reader slot(s) of dead processes")
        report.store_bytes_before = sum(size for _, _, size in store.iter_packs())

    if policy is not None and not policy.empty:
        say("planning retention")
        report.plan = plan = plan_retention(store, refs, policy, now)
        if not dry_run:
            say("rewriting history")
            report.retention = apply_retention(store, refs, plan)

    cutoff = now - expire_reflog
    for name in refs.reflog_names():
        if dry_run:
            report.reflog_expired += sum(1 for e in refs.reflog(name) if e.time < cutoff)
        else:
            report.reflog_expired += refs.expire_reflog(name, lambda _i, e: e.time >= cutoff)

    # Writers wait while gc marks and sweeps: see ObjectStore.writing().
    with store.collecting():
        say("marking reachable objects")
        problems: list[Problem] = []
        walker = Reachability(store, problems.append)
        walker.walk(_roots(refs, report, cutoff, dry_run))
        _refuse_if(problems)
        marked = walker.marked
        report.marked = len(marked)

        say("sweeping")
        if isinstance(store, LmdbObjectStore):
            _sweep_packs(store, refs, walker, report, now - grace, dry_run, cutoff, max_unused)
        else:
            garbage = [oid for oid, _k in list(store.iter_ids()) if oid not in marked]
            report.bytes_removed = sum(len(store.get_record(o).payload) for o in garbage)
            report.objects_removed = len(garbage) if dry_run else store.delete(garbage)
    if isinstance(store, LmdbObjectStore):
        report.store_bytes_after = sum(size for _, _, size in store.iter_packs())
    report.seconds = _time.monotonic() - t0
    return report


def _roots(refs: RefsContainer, report: GcReport, cutoff: float, dry_run: bool) -> list[Root]:
    roots = collect_roots(refs, reflogs=False) + list(report.extra_roots())
    for name in refs.reflog_names():
        for i, e in enumerate(refs.reflog(name)):
            if dry_run and e.time < cutoff:
                continue  # would be expired
            for value in (e.new, e.old):
                if value is not None and len(value) == 64:
                    roots.append(Root(f"reflog {name}@{{{i}}}", value))
    plan = report.plan
    if dry_run and plan is not None:
        # What the rewrite would leave: refs and reflog entries naming a dropped or re-parented
        # commit move to its twin (or go); only other refs (remote-tracking, bisect) keep it.
        gone = plan.dropped | plan.rewritten
        movable = ("refs/heads/", "refs/tags/", "HEAD", "reflog ")
        roots = [r for r in roots if r.commit not in gone or not r.label.startswith(movable)]
        rewritten = plan.rewritten
        roots += [Root("retention", c, trees_only=c in rewritten) for c in sorted(plan.kept)]
    return roots


def vm_roots(vers_dir: str | os.PathLike[str]) -> list[Root]:
    """The base commits of the repository's VMs (running or stopped, until ``vers kill``): a VM's
    disk and memory may be read lazily from its base commit, and its next commit names that
    commit as parent, so gc must keep it and fsck must check it, like git does a worktree's HEAD."""
    try:
        from vers.vmm.state import VMRegistry
    except ImportError:  # pragma: no cover - the VMM is part of vers, but keep gc independent
        return []
    roots = []
    for rec in VMRegistry(Path(vers_dir)).all():
        if rec.base_commit and len(rec.base_commit) == 64:
            label = f"vm {rec.id}" + (f" ({rec.name})" if rec.name else "")
            roots.append(Root(label, rec.base_commit))
    return roots


def _record_bytes(store: LmdbObjectStore, oids: list[bytes]) -> int:
    """Bytes the records of ``oids`` take in their packs, from the index alone (reading each
    record would cost a pack lookup)."""
    from vers.objects import lmdbstore as ls

    total = 0
    with store.env.begin(buffers=True) as txn:
        for oid in oids:
            loc = txn.get(oid, db=store.db["index"])
            if loc is not None:
                total += ls._INDEX.unpack(loc)[2] + ls._RECORD_HEADER.size
    return total


def _refuse_if(problems: list[Problem]) -> None:
    if problems:
        shown = "\n  ".join(str(p) for p in problems[:5])
        more = f"\n  ... and {len(problems) - 5} more" if len(problems) > 5 else ""
        raise StoreError(
            "gc refuses to delete anything: objects that refs need are missing or unreadable, so "
            f"what is reachable cannot be known. Run `vers fsck`.\n  {shown}{more}"
        )


def _sweep_packs(
    store: LmdbObjectStore,
    refs: RefsContainer,
    walker: Reachability,
    report: GcReport,
    old_before: float,
    dry_run: bool,
    cutoff: float,
    max_unused: float,
) -> None:
    """Unreachable objects in old packs go in one of two ways (restic's prune does the same):

    - the pack is rewritten without them when, afterwards, more than ``max_unused`` of it would
      be dead bytes (or nothing in it is live): the space is freed now;
    - otherwise only their index entries go: they are gone for every reader at once, and their
      bytes stay as dead records until the pack passes the threshold in a later gc. This keeps
      a gc after a small retention change from copying every pack to free a few pages.
    """
    marked = walker.marked
    repack: list[int] = []
    unindex: list[bytes] = []
    for pack_no, created, size in list(store.iter_packs()):
        live = store.pack_objects(pack_no)
        garbage = [o for o in live if o not in marked]
        if created > old_before:
            report.young_unreachable += len(garbage)
            continue
        keep_bytes = _record_bytes(store, [o for o in live if o in marked])
        dead = size - keep_bytes
        if not garbage and dead <= max_unused * size:
            continue
        report.objects_removed += len(garbage)
        report.bytes_removed += _record_bytes(store, garbage)
        if keep_bytes == 0 or dead > max_unused * size:
            repack.append(pack_no)
        else:
            unindex.extend(garbage)
            report.dead_bytes_left += _record_bytes(store, garbage)
    report.packs_rewritten = len(repack)
    if dry_run:
        return
    removed = 0
    for i in range(0, max(len(repack), 1), PACKS_PER_TXN):
        batch = repack[i : i + PACKS_PER_TXN]
        # Refs may have moved since marking (a snapshot landed): mark what they reach now. The
        # walker remembers what it has seen, so this costs only the new commits.
        problems: list[Problem] = []
        walker.report = problems.append
        walker.walk(_roots(refs, report, cutoff, False))
        _refuse_if(problems)
        marked = walker.marked
        if batch:
            n, _freed = store.rewrite_packs(batch, marked)
            removed += n
        if i == 0 and unindex:
            removed += store.delete([o for o in unindex if o not in marked])
    report.objects_removed = removed
