"""Retention policies for long state histories (restic ``forget`` semantics), and the history
rewrite that makes forgotten commits unreachable.

Which commits are kept (``plan_retention``):

- The commits on branches (ancestors of every ``refs/heads/*``) are ranked newest first.
- ``keep_last N`` keeps the N newest. ``keep_minutely/hourly/daily/weekly/monthly/yearly N`` keep
  the newest commit of each of the last N minutes/hours/days/... *that have commits* (restic's
  buckets, in UTC): "the last hour by minute, the last day by hour, the last week by day" is
  ``minutely 60, hourly 24, daily 7``.
- ``keep_within D`` keeps every commit newer than ``now - D`` (restic measures from the newest
  snapshot instead; for a running machine "the last hour" means the wall clock).
- A commit named by any ref (branch head, tag, detached HEAD, remote-tracking ref, ...) is always
  kept. Every kept commit carries the reasons, like restic's listing.
- Scoped to one branch (``vers record``): only that branch's commits that ``prunable`` accepts are
  candidates; whatever another ref reaches, and the ``keep`` commits, stay as they are.

How (``apply_retention``): a commit's ID covers its parents, so dropping a commit from the middle of
a chain means writing a *twin* of every kept commit above it: same images, config, author, time and
message, parents re-linked to the nearest kept ancestors. Twins are written (durably) before any ref
moves; branches and tags then move by compare-and-swap with a reflog message, and every reflog entry
is mapped to the twin of the commit it named (entries naming a dropped commit are removed, since gc
is about to delete that commit). Other refs (remote-tracking, bisect) are never moved: they keep
their original commits, and whatever those reach, alive.
"""

from __future__ import annotations

import datetime
import re
import time as _time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from vers.errors import BadInput, RefConflict
from vers.history.graph import walk
from vers.objects.model import KIND_COMMIT, Commit, hash_bytes
from vers.objects.store import ObjectStore
from vers.refs.container import HEAD, SYMREF_PREFIX, ReflogEntry, RefsContainer

_DURATION_PART = re.compile(r"(\d+)([smhdwy])")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}


def parse_duration(text: str) -> float:
    """``90d``, ``2h``, ``1h30m``, ``45s``, ``2w``, ``1y``, plain seconds, ``now`` (0) or ``never``
    (infinity). ``m`` is minutes."""
    t = text.strip().lower()
    if t in ("now", "0"):
        return 0.0
    if t in ("never", "inf", "infinity"):
        return float("inf")
    if t.isdigit():
        return float(int(t))
    pos, total = 0, 0
    for m in _DURATION_PART.finditer(t):
        if m.start() != pos:
            break
        total += int(m.group(1)) * _UNIT[m.group(2)]
        pos = m.end()
    if pos != len(t) or not t:
        raise BadInput(f"bad duration {text!r} (examples: 2h, 90d, 1h30m, 2w, now, never)")
    return float(total)


#: the bucket rules, finest first
RULES = ("minutely", "hourly", "daily", "weekly", "monthly", "yearly")


@dataclass(frozen=True)
class Policy:
    last: int = 0
    minutely: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0
    within: float | None = None  # seconds

    def __post_init__(self) -> None:
        for name in ("last", *RULES):
            if getattr(self, name) < 0:
                raise BadInput(f"--keep-{name} must not be negative")

    @property
    def empty(self) -> bool:
        return not (any(getattr(self, n) for n in ("last", *RULES)) or self.within is not None)

    def describe(self) -> str:
        parts = [f"keep-{n} {getattr(self, n)}" for n in ("last", *RULES) if getattr(self, n)]
        if self.within is not None:
            parts.append(f"keep-within {fmt_duration(self.within)}")
        return ", ".join(parts) or "(none)"


def _bucket(rule: str, t: int) -> tuple[int, ...]:
    tm = _time.gmtime(t)
    if rule == "minutely":
        return (tm.tm_year, tm.tm_mon, tm.tm_mday, tm.tm_hour, tm.tm_min)
    if rule == "hourly":
        return (tm.tm_year, tm.tm_mon, tm.tm_mday, tm.tm_hour)
    if rule == "daily":
        return (tm.tm_year, tm.tm_mon, tm.tm_mday)
    if rule == "weekly":
        iso = _iso_week(t)
        return iso
    if rule == "monthly":
        return (tm.tm_year, tm.tm_mon)
    return (tm.tm_year,)


def _iso_week(t: int) -> tuple[int, int]:
    y, w, _ = datetime.datetime.fromtimestamp(t, datetime.UTC).isocalendar()
    return (y, w)


@dataclass
class Decision:
    commit: Commit
    keep: bool
    reasons: list[str] = field(default_factory=list)


@dataclass
class RetentionPlan:
    """What a policy keeps and drops, newest first, before anything is changed."""

    policy: Policy
    decisions: list[Decision]
    branches: dict[str, str]  # branch ref -> tip
    named: dict[str, list[str]]  # commit -> refs naming it

    @property
    def kept(self) -> set[str]:
        return {d.commit.id for d in self.decisions if d.keep}

    @property
    def dropped(self) -> set[str]:
        return {d.commit.id for d in self.decisions if not d.keep}

    @property
    def rewritten(self) -> set[str]:
        """Kept commits that get a twin: those with a dropped commit somewhere below them."""
        kept, out = self.kept, set()
        on_branches = {d.commit.id for d in self.decisions}
        for d in reversed(self.decisions):  # oldest first
            c = d.commit
            if c.id in kept and any(
                p not in kept or p in out for p in c.parents if p in on_branches
            ):
                out.add(c.id)
        return out

    def lines(self) -> list[str]:
        """restic-style listing: one line per commit, with why it stays."""
        out = []
        for d in self.decisions:
            when = _time.strftime("%Y-%m-%d %H:%M:%S", _time.gmtime(d.commit.time))
            verb = "keep  " if d.keep else "remove"
            why = f"  ({', '.join(d.reasons)})" if d.keep else ""
            out.append(f"{verb} {d.commit.id[:12]} {when} {d.commit.summary}{why}")
        return out


def plan_retention(
    store: ObjectStore, refs: RefsContainer, policy: Policy, now: float | None = None,
    *, branch: str | None = None, prunable: Callable[[Commit], bool] | None = None,
    keep: Mapping[str, str] | None = None,
) -> RetentionPlan:
    """What ``policy`` keeps of the commits on branches; with ``branch`` (a full ref name) only
    of that branch's commits that no other ref reaches and ``prunable`` accepts (the others are
    kept and count for no rule). ``keep`` maps commits to keep to the reason."""
    if policy.empty:
        raise BadInput("no retention policy given "
                       "(use --keep-last/--keep-within/--keep-hourly/...)")
    now = _time.time() if now is None else now
    get = _commit_getter(store)
    branches = {name: v for name, v in refs.list_refs("refs/heads/").items()
                if not v.startswith(SYMREF_PREFIX)}
    named: dict[str, list[str]] = {}
    for name, value in refs.list_refs("").items():
        if not value.startswith(SYMREF_PREFIX):
            named.setdefault(value, []).append(name)
    fixed: dict[str, str] = dict(keep or {})
    if branch is not None:
        others = [v for v, names in named.items() if any(n != branch for n in names)]
        for c in walk(get, others):
            fixed.setdefault(c.id, "reachable from another ref")
        branches = {branch: branches[branch]} if branch in branches else {}
    decisions = [Decision(c, False) for c in walk(get, list(branches.values()))]
    counts = {"last": policy.last, **{r: getattr(policy, r) for r in RULES}}
    last_bucket: dict[str, tuple[int, ...] | None] = {k: None for k in counts}
    for d in decisions:
        t = d.commit.time
        for name in named.get(d.commit.id, []):
            d.reasons.append(_ref_reason(name))
        if d.commit.id in fixed:
            d.reasons.append(fixed[d.commit.id])
        if (branch is not None and d.reasons) or (prunable is not None
                                                  and not prunable(d.commit)):
            d.keep = True
            d.reasons = d.reasons or ["not made by the recording"]
            continue
        if counts["last"] > 0:
            d.reasons.append("last commit")
            counts["last"] -= 1
        for rule in RULES:
            b = _bucket(rule, t)
            if counts[rule] > 0 and b != last_bucket[rule]:
                last_bucket[rule] = b
                counts[rule] -= 1
                d.reasons.append(f"{rule} commit")
        if policy.within is not None and t >= now - policy.within:
            d.reasons.append(f"within {fmt_duration(policy.within)}")
        d.keep = bool(d.reasons)
    return RetentionPlan(policy, decisions, branches, named)


def _ref_reason(name: str) -> str:
    if name.startswith("refs/heads/"):
        return f"branch head {name[len('refs/heads/'):]}"
    if name.startswith("refs/tags/"):
        return f"tag {name[len('refs/tags/'):]}"
    return f"named by {name}"


def fmt_duration(seconds: float) -> str:
    """The inverse of ``parse_duration``: 12600 -> "3h30m", 2.5 -> "2.5s"."""
    if seconds == float("inf"):
        return "forever"
    if seconds < 60 and seconds != int(seconds):
        return f"{seconds:g}s"
    rest, parts = int(seconds), []
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if rest >= n:
            parts.append(f"{rest // n}{unit}")
            rest %= n
    return "".join(parts) or "0s"


def _commit_getter(store: ObjectStore) -> Callable[[str], Commit]:
    cache: dict[str, Commit] = {}

    def get(cid: str) -> Commit:
        c = cache.get(cid)
        if c is None:
            c = cache[cid] = store.get_commit(bytes.fromhex(cid))
        return c

    return get


@dataclass
class RetentionResult:
    twins: dict[str, str]  # original kept commit -> its twin (only entries that changed)
    moved: dict[str, tuple[str, str]]  # ref -> (old, new)
    conflicts: list[str]  # refs another writer moved meanwhile (left alone)
    reflog_entries_removed: int = 0


def apply_retention(
    store: ObjectStore, refs: RefsContainer, plan: RetentionPlan
) -> RetentionResult:
    """Write twins, move branches/tags/detached HEAD to them, and map reflogs (see module doc)."""
    kept = plan.kept
    # Oldest first: every commit comes after its parents (walk() never yields a parent first).
    order = [d.commit for d in reversed(plan.decisions)]
    new_id: dict[str, str] = {}
    nearest: dict[str, list[str]] = {}  # dropped commit -> twins of its nearest kept ancestors

    def stand_in(parent: str) -> list[str]:
        if parent in new_id:
            return [new_id[parent]]
        return nearest.get(parent, [parent])  # not on a branch: left as it is

    with store.writer() as w:
        for c in order:
            parents: list[str] = []
            for p in c.parents:
                for q in stand_in(p):
                    if q not in parents:
                        parents.append(q)
            if c.id not in kept:
                nearest[c.id] = parents
                continue
            if parents == c.parents:
                new_id[c.id] = c.id
                continue
            # Same format version and time as the original: gc on two copies of one history
            # makes the same twins.
            twin = replace(c, parents=parents, id="")
            data = twin.serialize()
            oid = hash_bytes(data)
            w.add(oid, KIND_COMMIT, data, compress=False)
            new_id[c.id] = oid.hex()
    # The writer's exit flushed: twins are durable before any ref names them.
    twins = {a: b for a, b in new_id.items() if a != b}
    result = RetentionResult(twins, {}, [])
    summary = (f"gc: retention ({plan.policy.describe()}) kept {len(kept)} of "
               f"{len(plan.decisions)} commits")
    # Branches move from the tip the plan saw (one that moved since is a conflict, left alone);
    # tags and a detached HEAD move if they name a re-parented commit now.
    targets = {name: tip for name, tip in plan.branches.items() if tip in twins}
    for name, value in refs.list_refs("").items():
        if value.startswith(SYMREF_PREFIX) or value not in twins or name in plan.branches:
            continue
        if name.startswith("refs/tags/") or name == HEAD:
            targets[name] = value
    for name, value in sorted(targets.items()):
        try:
            refs.set_ref(name, twins[value], old=value, follow=False,
                         message=f"{summary}; was {value[:12]}")
            result.moved[name] = (value, twins[value])
        except RefConflict:
            result.conflicts.append(name)
    for name in refs.reflog_names():
        result.reflog_entries_removed += _map_reflog(refs, name, twins, nearest)
    return result


def _map_reflog(
    refs: RefsContainer, name: str, twins: dict[str, str], nearest: dict[str, list[str]]
) -> int:
    """Entries that moved a ref *to* a dropped commit go; an entry moving *from* one now reads
    as moving from its nearest kept ancestor. Everything else names the twin."""

    def edit(entries: list[ReflogEntry]) -> list[ReflogEntry]:
        out = []
        for e in entries:
            if e.new in nearest:
                continue
            old = e.old
            if old in nearest:
                old = nearest[old][0] if nearest[old] else None
            elif old is not None:
                old = twins.get(old, old)
            new = twins.get(e.new, e.new) if e.new else e.new
            out.append(type(e)(old, new, e.time, e.who, e.message))
        return out

    return refs.rewrite_reflog(name, edit)
