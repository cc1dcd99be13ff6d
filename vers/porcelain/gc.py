"""``vers gc``: expire reflogs, apply a retention policy, and prune what nothing needs any more.

Order matters for safety, and each step leaves a consistent repository if the process dies:

1. Retention (optional): twins are written and flushed before refs move; refs move by CAS; reflogs
   are then mapped. Until the prune, every original commit is still stored, so a crash at any
   point leaves every ref and reflog entry complete (fsck clean).
2. Reflog expiry: entries older than ``expire_reflog`` are dropped (one transaction per ref).
3. Mark: everything reachable from every ref and every remaining reflog entry, plus the delta
   bases of delta-encoded nodes (a node cannot be decoded without its base).
4. Sweep (``ObjectStore.sweep``): only objects stored longer ago than ``grace`` may go, so a
   snapshot in progress, whose new objects are stored but not yet named by any ref, is safe. Just
   before each destructive batch the refs are read again and anything new is marked too. The LMDB
   store rewrites each batch of packs in one transaction, so a kill leaves either the old packs or
   the new ones.

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
from vers.history.reachability import Problem, Reachability, Root, collect_roots
from vers.history.retention import (
    Policy,
    RetentionPlan,
    RetentionResult,
    apply_retention,
    parse_duration,
    plan_retention,
)
from vers.objects.store import ObjectStore
from vers.progress import NO_PROGRESS, Progress
from vers.refs.container import RefsContainer
from vers.repo import Repo
from vers.vmm.state import VMRegistry

__all__ = ["GcReport", "Policy", "gc", "gc_repo", "parse_duration", "vm_roots"]

DEFAULT_GRACE = 2 * 3600.0
DEFAULT_EXPIRE_REFLOG = 90 * 86400.0
DEFAULT_MAX_UNUSED = 0.1  # a pack is rewritten once more than this share of it is dead bytes


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
                       f"{len(self.plan.dropped)} of {len(self.plan.decisions)} commits "
                       "on branches")
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
            out.append(f"packs: {_size(self.dead_bytes_left)} of removed objects stay as dead "
                       "bytes until their packs pass --max-unused")
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
    say: Callable[[str], None] | None = None,
    progress: Progress = NO_PROGRESS,
    partial: bool = False,
) -> GcReport:
    """Run the steps in the module doc; with ``dry_run`` nothing is written.

    ``extra_roots`` is asked, at marking time and again before each sweep batch, for commits that
    something other than a ref depends on (``vm_roots``: the base commits of VMs). ``partial``:
    the store has a promisor remote, so an object that is not stored here is not a reason to
    refuse (marking stops there; what it reaches is the promisor's to keep).
    """
    t0 = _time.monotonic()
    now = _time.time() if now is None else now
    say = say or (lambda _msg: None)
    report = GcReport(dry_run=dry_run)
    if extra_roots is not None:
        report.extra_roots = extra_roots
    stale = store.release_stale_readers()
    if stale:
        report.notes.append(f"cleared {stale} stale LMDB reader slot(s) of dead processes")
    report.store_bytes_before = store.stats().bytes

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
        with progress.meter("gc: marking", unit="objects") as meter:
            walker = Reachability(store, problems.append, progress=meter.advance)
            walker.walk(_roots(refs, report, cutoff, dry_run))
            walker.progress = lambda _n: None  # the re-marks of the sweep are not this meter's
        _refuse_if(problems, partial)
        marked = walker.marked
        report.marked = len(marked)

        say("sweeping")

        def live() -> set[bytes]:
            # Refs may have moved since marking (a snapshot landed): mark what they reach now.
            # The walker remembers what it has seen, so this costs only the new commits.
            again: list[Problem] = []
            walker.report = again.append
            walker.walk(_roots(refs, report, cutoff, dry_run))
            _refuse_if(again, partial)
            return walker.marked

        with progress.waiting("gc: sweeping"):
            swept = store.sweep(live, older_than=now - grace, max_unused=max_unused,
                                dry_run=dry_run)
    report.objects_removed = swept.objects_removed
    report.bytes_removed = swept.bytes_removed
    report.packs_rewritten = swept.packs_rewritten
    report.young_unreachable = swept.young_unreachable
    report.dead_bytes_left = swept.dead_bytes_left
    report.store_bytes_after = store.stats().bytes
    report.seconds = _time.monotonic() - t0
    return report


def gc_repo(
    repo: Repo,
    *,
    grace: float = DEFAULT_GRACE,
    expire_reflog: float = DEFAULT_EXPIRE_REFLOG,
    policy: Policy | None = None,
    dry_run: bool = False,
    max_unused: float = DEFAULT_MAX_UNUSED,
    say: Callable[[str], None] | None = None,
    progress: Progress = NO_PROGRESS,
) -> GcReport:
    """``gc`` of a repository, keeping the base commits of its VMs (``vm_roots``); a partial
    store is judged by what it holds (nothing is fetched to mark). ``say`` is told of each step
    as it begins, ``progress`` draws meters of the long ones."""
    with repo.local_only():
        return gc(repo.store, repo.refs, grace=grace, expire_reflog=expire_reflog,
                  policy=None if policy is None or policy.empty else policy, dry_run=dry_run,
                  max_unused=max_unused, extra_roots=lambda: vm_roots(repo.vers_dir),
                  say=say, progress=progress, partial=bool(repo.promisors()))


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
    roots = []
    for rec in VMRegistry(Path(vers_dir)).all():
        if rec.base_commit and len(rec.base_commit) == 64:
            label = f"vm {rec.id}" + (f" ({rec.name})" if rec.name else "")
            roots.append(Root(label, rec.base_commit))
    return roots


def _refuse_if(problems: list[Problem], partial: bool = False) -> None:
    if partial:
        problems = [p for p in problems if p.what != "missing"]
    if problems:
        shown = "\n  ".join(str(p) for p in problems[:5])
        more = f"\n  ... and {len(problems) - 5} more" if len(problems) > 5 else ""
        raise StoreError(
            "gc refuses to delete anything: objects that refs need are missing or unreadable, so "
            f"what is reachable cannot be known. Run `vers fsck`.\n  {shown}{more}"
        )

