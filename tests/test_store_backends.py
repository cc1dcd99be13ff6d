"""Store-level behaviour of fsck, gc and retention, run against both object store backends.

dulwich style: one class of behaviour (``StoreBehaviour``) mixed into a class per backend, so the
LMDB store and the in-memory store are held to the same contract.
"""

from __future__ import annotations

import io
import random
import time
from pathlib import Path

import pytest

from vers.errors import CorruptObject, ObjectNotFound, StoreError
from vers.history.retention import Policy, plan_retention
from vers.objects import (
    PAGE_SIZE,
    Commit,
    LmdbObjectStore,
    MemoryObjectStore,
    ObjectStore,
    TreeReader,
    build_tree,
    hash_bytes,
)
from vers.objects.model import KIND_COMMIT, KIND_PAGE
from vers.porcelain.fsck import fsck
from vers.porcelain.gc import gc
from vers.refs.container import DictRefsContainer, LmdbRefsContainer, RefsContainer
from vers.testing.corrupt import flip_byte

NPAGES = 40


def image_bytes(seed: int, npages: int = NPAGES) -> bytes:
    """Random pages with some zero ones; every seed gives different pages."""
    rnd = random.Random(seed)
    return b"".join(rnd.randbytes(PAGE_SIZE) if i % 5 else bytes(PAGE_SIZE) for i in range(npages))


class History:
    """Builds commits straight into a store + refs (no Repo), remembering every image's bytes."""

    def __init__(self, store: ObjectStore, refs: RefsContainer) -> None:
        self.store = store
        self.refs = refs
        self.images: dict[str, bytes] = {}  # message -> memory image bytes

    def commit(self, message: str, data: bytes, t: int, ref: str | None = "refs/heads/main",
               parents: list[str] | None = None) -> str:
        if parents is None:
            head = self.refs.resolve(ref) if ref else None
            parents = [head] if head else []
        base = None
        if parents:
            parent = self.store.get_commit(bytes.fromhex(parents[0]))
            base = self.store.get_tree(bytes.fromhex(parent.images["memory"]))
        with self.store.writer() as w:
            tree = build_tree(w, io.BytesIO(data), len(data), base)
            c = Commit(images={"memory": tree.hex()}, parents=parents, author="t",
                       time_us=t * 1_000_000, message=message)
            raw = c.serialize()
            cid = hash_bytes(raw)
            w.add(cid, KIND_COMMIT, raw, compress=False)
        if ref:
            self.refs.set_ref(ref, cid.hex(), message=f"commit: {message}")
        self.images[message] = data
        return cid.hex()

    def read(self, cid: str) -> bytes:
        c = self.store.get_commit(bytes.fromhex(cid))
        tree = self.store.get_tree(bytes.fromhex(c.images["memory"]))
        return TreeReader(self.store, tree).pread(0, tree.size)

    def chain(self, ref: str) -> list[Commit]:
        out, cid = [], self.refs.resolve(ref)
        while cid:
            c = self.store.get_commit(bytes.fromhex(cid))
            out.append(c)
            cid = c.parents[0] if c.parents else None
        return out

    def assert_all_intact(self, ref: str = "refs/heads/main") -> list[str]:
        """Every commit on ``ref`` reads back byte-identical to what was committed."""
        msgs = []
        for c in self.chain(ref):
            assert self.read(c.id) == self.images[c.message], c.message
            msgs.append(c.message)
        return msgs


def evolve(seed: int, prev: bytes, changed: int = 3) -> bytes:
    rnd = random.Random(seed)
    buf = bytearray(prev)
    for p in rnd.sample(range(len(buf) // PAGE_SIZE), changed):
        buf[p * PAGE_SIZE : (p + 1) * PAGE_SIZE] = rnd.randbytes(PAGE_SIZE)
    return bytes(buf)


# A day boundary a month ago, so that bucket arithmetic is easy and every time is in the past.
T0 = (int(time.time()) // 86400 - 30) * 86400


class StoreBehaviour:
    """Mixed into one class per backend; ``make`` returns a fresh (store, refs)."""

    def make(self, tmp_path: Path) -> tuple[ObjectStore, RefsContainer]:
        raise NotImplementedError

    def corrupt(self, store: ObjectStore, oid: bytes) -> None:
        raise NotImplementedError

    @pytest.fixture
    def h(self, tmp_path: Path) -> History:
        store, refs = self.make(tmp_path)
        yield History(store, refs)
        store.close()

    def linear(self, h: History, n: int, step: int = 600) -> list[str]:
        data = image_bytes(1)
        ids = []
        for i in range(n):
            data = evolve(100 + i, data)
            ids.append(h.commit(f"c{i}", data, T0 + i * step))
        return ids

    # -- store primitives gc relies on --------------------------------------------------------
    def test_delete_and_iteration(self, h: History) -> None:
        self.linear(h, 2)
        ids = dict(h.store.iter_ids())
        page = next(o for o, k in ids.items() if k == KIND_PAGE)
        assert next(iter(h.store.iter_prefix(page.hex()[:6])))[0] == page
        assert h.store.delete([page, b"\x07" * 32]) == 1
        assert page not in dict(h.store.iter_ids())
        with pytest.raises(ObjectNotFound):
            h.store.get_page(page)

    # -- fsck ---------------------------------------------------------------------------------
    def test_fsck_clean(self, h: History) -> None:
        self.linear(h, 4)
        report = fsck(h.store, h.refs, full=True)
        assert report.ok, report.problems
        assert report.unreachable == 0
        assert report.objects == len(list(h.store.iter_ids()))

    def test_fsck_names_corrupt_page_and_the_ref_reaching_it(self, h: History) -> None:
        self.linear(h, 3)
        data = h.images["c2"]
        victim = hash_bytes(data[PAGE_SIZE : 2 * PAGE_SIZE])
        self.corrupt(h.store, victim)
        with pytest.raises(CorruptObject) as exc:
            h.read(h.refs.resolve("refs/heads/main"))
        assert victim.hex() in str(exc.value)
        report = fsck(h.store, h.refs)
        assert not report.ok
        hits = [p for p in report.problems if p.oid == victim.hex()]
        assert hits and hits[0].what == "corrupt"
        assert "refs/heads/main" in hits[0].via and "page 1" in hits[0].via

    def test_fsck_names_missing_object_and_ref(self, h: History) -> None:
        self.linear(h, 2)
        h.refs.set_ref("refs/tags/old", h.chain("refs/heads/main")[-1].id)
        victim = hash_bytes(h.images["c0"][PAGE_SIZE : 2 * PAGE_SIZE])
        assert h.store.delete([victim]) == 1
        report = fsck(h.store, h.refs)
        miss = [p for p in report.problems if p.oid == victim.hex()]
        assert [p.what for p in miss] == ["missing"]
        assert "refs/" in miss[0].via

    def test_fsck_missing_commit_named_by_reflog_only(self, h: History) -> None:
        ids = self.linear(h, 3)
        h.refs.set_ref("refs/heads/main", ids[0], message="reset")
        # c2 is now only in the reflog; deleting it must be reported against the reflog entry.
        assert h.store.delete([bytes.fromhex(ids[2])]) == 1
        report = fsck(h.store, h.refs)
        miss = [p for p in report.problems if p.oid == ids[2]]
        assert miss and all("reflog refs/heads/main@{" in p.via for p in miss)

    def test_fsck_missing_delta_base(self, h: History) -> None:
        self.linear(h, 3)
        from vers.objects.store import ENC_DELTA

        deltas = [(o, h.store.get_record(o)) for o, _k in h.store.iter_ids()]
        deltas = [(o, r) for o, r in deltas if r.encoding == ENC_DELTA]
        assert deltas, "incremental commits should store delta nodes"
        _oid, rec = deltas[0]
        base = rec.payload[:32]
        h.store.delete([base])
        report = fsck(h.store, h.refs)
        assert any(p.oid == base.hex() for p in report.problems)

    def test_fsck_reports_unreachable_corrupt_object(self, h: History) -> None:
        self.linear(h, 1)
        junk = image_bytes(99, 1)
        with h.store.writer() as w:
            w.add(hash_bytes(junk), KIND_PAGE, junk, compress=False)
        self.corrupt(h.store, hash_bytes(junk))
        report = fsck(h.store, h.refs)
        assert [p.oid for p in report.problems] == [hash_bytes(junk).hex()]
        assert report.unreachable == 1

    def test_fsck_bad_ref_value(self, h: History) -> None:
        self.linear(h, 1)
        h.refs.set_ref("refs/heads/bogus", "nothex")
        h.refs.set_ref("refs/heads/gone", "ab" * 32)
        report = fsck(h.store, h.refs)
        whats = sorted((p.what, p.oid) for p in report.problems)
        assert ("bad-ref", "") in whats and ("missing", "ab" * 32) in whats

    def test_fsck_wrong_kinds_and_levels(self, h: History) -> None:
        from vers.objects.imagetree import store_tree
        from vers.objects.model import Tree

        self.linear(h, 1)
        c = h.chain("refs/heads/main")[0]
        h.refs.set_ref("refs/tags/not-a-commit", c.images["memory"])  # a tree, not a commit
        report = fsck(h.store, h.refs)
        assert [(p.what, p.oid) for p in report.problems] == [("wrong-kind", c.images["memory"])]
        h.refs.delete_ref("refs/tags/not-a-commit")
        # A tree claiming depth 2 whose root is a level-1 node: --full names the level mismatch.
        real = h.store.get_tree(bytes.fromhex(c.images["memory"]))
        with h.store.writer() as w:
            bogus = store_tree(w, Tree(size=real.size * 256, root=real.root, depth=2))
            raw = Commit(images={"memory": bogus.hex()}, author="t", time_us=T0 * 1_000_000,
                         message="bogus").serialize()
            w.add(hash_bytes(raw), KIND_COMMIT, raw, compress=False)
        h.refs.set_ref("refs/heads/bogus", hash_bytes(raw).hex())
        full = fsck(h.store, h.refs, full=True)
        assert any(p.oid == real.root.hex() and "level 1, its tree needs 2" in p.detail
                   for p in full.problems)
        quick = fsck(h.store, h.refs)
        assert any(p.what == "wrong-kind" and "expected a node, found a page" in p.detail
                   for p in quick.problems)

    # -- gc -----------------------------------------------------------------------------------
    def test_gc_removes_unreachable_keeps_reachable(self, h: History) -> None:
        self.linear(h, 3)
        side = h.commit("side", image_bytes(7), T0 + 5000, ref="refs/heads/side")
        h.refs.delete_ref("refs/heads/side")
        h.refs.expire_reflog("refs/heads/side", lambda _i, _e: False)
        before = len(list(h.store.iter_ids()))
        report = gc(h.store, h.refs, grace=0, )
        assert report.objects_removed > NPAGES // 2
        assert len(list(h.store.iter_ids())) == before - report.objects_removed
        assert not h.store.contains(bytes.fromhex(side))
        assert h.assert_all_intact() == ["c2", "c1", "c0"]
        assert fsck(h.store, h.refs).ok

    def test_gc_dry_run_changes_nothing_and_predicts(self, h: History) -> None:
        self.linear(h, 6)
        h.commit("side", image_bytes(7), T0 + 5000, ref="refs/heads/side")
        h.refs.delete_ref("refs/heads/side")
        h.refs.expire_reflog("refs/heads/side", lambda _i, _e: False)
        ids_before = dict(h.store.iter_ids())
        refs_before = h.refs.list_refs("")
        dry = gc(h.store, h.refs, grace=0, policy=Policy(last=2), dry_run=True, )
        assert dict(h.store.iter_ids()) == ids_before and h.refs.list_refs("") == refs_before
        real = gc(h.store, h.refs, grace=0, policy=Policy(last=2), )
        assert dry.objects_removed == real.objects_removed
        assert [d.keep for d in dry.plan.decisions] == [d.keep for d in real.plan.decisions]

    def test_gc_keeps_reflog_reachable_until_expired(self, h: History) -> None:
        ids = self.linear(h, 3)
        h.refs.set_ref("refs/heads/main", ids[0], message="reset")
        gc(h.store, h.refs, grace=0)
        assert h.store.contains(bytes.fromhex(ids[2]))
        # The reflog entries carry the wall-clock time they were written; expire them all.
        report = gc(h.store, h.refs, grace=0, expire_reflog=0, now=10**10)
        assert report.reflog_expired > 0
        assert not h.store.contains(bytes.fromhex(ids[2]))
        assert h.assert_all_intact() == ["c0"]
        assert fsck(h.store, h.refs).ok

    def test_gc_refuses_when_reachable_node_is_unreadable(self, h: History) -> None:
        self.linear(h, 2)
        c = h.chain("refs/heads/main")[0]
        tree = h.store.get_tree(bytes.fromhex(c.images["memory"]))
        h.store.delete([tree.root])
        before = dict(h.store.iter_ids())
        with pytest.raises(StoreError, match="fsck"):
            gc(h.store, h.refs, grace=0, )
        assert dict(h.store.iter_ids()) == before

    # -- retention ----------------------------------------------------------------------------
    def test_retention_restic_buckets(self, h: History) -> None:
        # One commit every 30 minutes for three days (144 commits), small images.
        data = image_bytes(3, 4)
        for k in range(144):
            data = evolve(k, data, 1)
            h.commit(f"k{k}", data, T0 + k * 1800)
        policy = Policy(last=2, hourly=5, daily=3)
        plan = plan_retention(h.store, h.refs, policy, now=T0 + 144 * 1800)
        kept = {int(d.commit.message[1:]) for d in plan.decisions if d.keep}
        day = 48  # commits per day
        # last 2: 143, 142; hourly: the :30 commit of the 5 newest hours; daily: each day's last.
        expected = {143, 142, 141, 139, 137, 135, 2 * day - 1, day - 1}
        assert kept == expected
        reasons = {d.commit.message: d.reasons for d in plan.decisions if d.keep}
        assert reasons["k143"] == [
            "branch head main", "last commit", "hourly commit", "daily commit"
        ]
        assert reasons["k47"] == ["daily commit"]

    def test_retention_within_and_rewrite(self, h: History) -> None:
        now = time.time()
        data = image_bytes(1)
        for i in range(10):  # c0 .. c9, one per hour, c9 a minute ago
            data = evolve(100 + i, data)
            h.commit(f"c{i}", data, int(now) - (9 - i) * 3600 - 60)
        h.refs.set_ref("refs/tags/v1", h.chain("refs/heads/main")[7].id)  # c2
        report = gc(h.store, h.refs, grace=0, expire_reflog=float("inf"),
                    policy=Policy(within=2 * 3600))
        assert h.assert_all_intact() == ["c9", "c8", "c2"]  # c7 is 2h01m old
        tag = h.store.get_commit(bytes.fromhex(h.refs.resolve("refs/tags/v1")))
        assert tag.message == "c2" and tag.parents == []
        assert report.retention and "refs/heads/main" in report.retention.moved
        log = h.refs.reflog("refs/heads/main")
        assert log[0].message.startswith("gc: retention")
        # Every reflog entry names a stored commit, and fsck agrees nothing is dangling.
        assert fsck(h.store, h.refs).ok
        assert report.objects_removed > 0

    def test_retention_leaves_a_branch_that_moved_meanwhile(self, h: History) -> None:
        from vers.history.retention import apply_retention

        self.linear(h, 5, step=3600)
        plan = plan_retention(h.store, h.refs, Policy(last=2), now=T0 + 10 * 3600)
        # Another writer commits after the plan was made and before the refs move.
        late = h.commit("late", evolve(77, h.images["c4"]), T0 + 6 * 3600)
        result = apply_retention(h.store, h.refs, plan)
        assert result.conflicts == ["refs/heads/main"] and not result.moved
        assert h.refs.resolve("refs/heads/main") == late
        assert h.assert_all_intact() == ["late", "c4", "c3", "c2", "c1", "c0"]
        assert fsck(h.store, h.refs).ok
        gc(h.store, h.refs, grace=0, expire_reflog=float("inf"))
        assert h.assert_all_intact() == ["late", "c4", "c3", "c2", "c1", "c0"]
        assert fsck(h.store, h.refs).ok

    def test_retention_two_branches_share_history(self, h: History) -> None:
        ids = self.linear(h, 6, step=3600)
        data = h.images["c3"]
        for i in range(3):
            data = evolve(500 + i, data)
            h.commit(f"f{i}", data, T0 + (10 + i) * 3600, ref="refs/heads/feature",
                     parents=[h.refs.resolve("refs/heads/feature") or ids[3]])
        gc(h.store, h.refs, grace=0, expire_reflog=float("inf"), policy=Policy(last=3))
        assert h.assert_all_intact("refs/heads/feature") == ["f2", "f1", "f0"]
        assert h.assert_all_intact("refs/heads/main") == ["c5"]
        assert fsck(h.store, h.refs).ok


class TestMemoryStore(StoreBehaviour):
    def make(self, tmp_path: Path) -> tuple[ObjectStore, RefsContainer]:
        return MemoryObjectStore(), DictRefsContainer()

    def corrupt(self, store: ObjectStore, oid: bytes) -> None:
        flip_byte(store, oid, at=0)


class TestLmdbStore(StoreBehaviour):
    def make(self, tmp_path: Path) -> tuple[ObjectStore, RefsContainer]:
        store = LmdbObjectStore.create(tmp_path / "store")
        return store, LmdbRefsContainer(store.env)

    def corrupt(self, store: ObjectStore, oid: bytes) -> None:
        flip_byte(store, oid, at=7)

    # -- LMDB only: pack ages and the index ---------------------------------------------------
    def test_grace_period_protects_young_packs(self, h: History) -> None:
        self.linear(h, 2)
        junk = image_bytes(42, 3)
        with h.store.writer() as w:
            for i in range(3):
                page = junk[i * PAGE_SIZE : (i + 1) * PAGE_SIZE]
                w.add(hash_bytes(page), KIND_PAGE, page, compress=False)
        young = gc(h.store, h.refs, grace=3600)
        assert young.objects_removed == 0 and young.young_unreachable == 3
        assert all(h.store.contains(hash_bytes(junk[i * PAGE_SIZE : (i + 1) * PAGE_SIZE]))
                   for i in range(3))
        old = gc(h.store, h.refs, grace=3600, now=time.time() + 7200, expire_reflog=float("inf"))
        assert old.objects_removed == 3
        assert not any(h.store.contains(hash_bytes(junk[i * PAGE_SIZE : (i + 1) * PAGE_SIZE]))
                       for i in range(3))
        assert h.assert_all_intact() == ["c1", "c0"]

    def test_max_unused_unindexes_first_and_repacks_later(self, h: History) -> None:
        assert isinstance(h.store, LmdbObjectStore)
        self.linear(h, 3)
        old_pages = {o for o, k in h.store.iter_ids() if k == KIND_PAGE}
        packs_before = sum(size for _, _, size in h.store.iter_packs())
        first = gc(h.store, h.refs, grace=0, expire_reflog=float("inf"), policy=Policy(last=2),
                   max_unused=0.5)
        assert (first.objects_removed > 0 and first.packs_rewritten == 0
                and first.dead_bytes_left > 0)
        gone = old_pages - {o for o, k in h.store.iter_ids() if k == KIND_PAGE}
        assert len(gone) == 3  # c0's versions of the pages c1 changed
        assert not any(h.store.contains(o) for o in gone)
        assert sum(size for _, _, size in h.store.iter_packs()) >= packs_before  # not freed yet
        assert fsck(h.store, h.refs).ok
        second = gc(h.store, h.refs, grace=0, expire_reflog=float("inf"), max_unused=0)
        assert second.objects_removed == 0 and second.packs_rewritten > 0
        assert second.store_bytes_after < packs_before
        assert h.assert_all_intact() == ["c2", "c1"]
        assert fsck(h.store, h.refs).ok

    def test_fsck_bad_index_entry(self, h: History) -> None:
        from vers.objects import lmdbstore as ls

        self.linear(h, 1)
        assert isinstance(h.store, LmdbObjectStore)
        victim = hash_bytes(h.images["c0"][PAGE_SIZE : 2 * PAGE_SIZE])
        with h.store.env.begin(write=True) as txn:
            loc = ls._INDEX.unpack(txn.get(victim, db=h.store.db["index"]))
            bad = ls._INDEX.pack(loc[0], loc[1] + 10**9, *loc[2:])
            txn.put(victim, bad, db=h.store.db["index"])
        report = fsck(h.store, h.refs)
        kinds = {p.what for p in report.problems if p.oid == victim.hex()}
        assert "bad-index" in kinds and "corrupt" in kinds
