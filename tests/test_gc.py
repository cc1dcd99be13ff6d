"""``vers gc`` through the real ``vers`` entry point: pruning, grace period, retention, dry run.

Histories with chosen times are built with the Python API (``Repo.snapshot(time=...)``); the
command under test always runs as a separate process, like a user runs it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from vers.objects.model import PAGE_SIZE
from vers.repo import Repo
from vers.testing import make_image, mutate_pages
from vers.testing import run_vers as vers
from vers.testing import vers_ok as ok

HOUR = 3600


def state(work: Path) -> bytes:
    with Repo(work) as r:
        refs = json.dumps(r.refs.list_refs(""), sort_keys=True).encode()
        logs = json.dumps(
            {n: [e.__dict__ for e in r.refs.reflog(n)] for n in r.refs.reflog_names()}
        )
        ids = b"".join(sorted(o for o, _ in r.store.iter_ids()))
    return refs + logs.encode() + ids


class Hist:
    """A repository with one commit per hour, ending a minute ago; remembers every image."""

    def __init__(self, work: Path, n: int, npages: int = 512) -> None:
        self.work = work
        self.images: dict[str, bytes] = {}
        now = int(time.time())
        data = make_image(work / "mem", npages * PAGE_SIZE, seed=1)
        with Repo(work) as repo:
            for i in range(n):
                mutate_pages(data, 0.05, seed=10 + i)
                (work / "mem").write_bytes(data)
                repo.snapshot({"memory": work / "mem"}, message=f"c{i}",
                              time=now - (n - 1 - i) * HOUR - 60)
                self.images[f"c{i}"] = bytes(data)

    def check_exports(self, rev: str = "HEAD") -> list[str]:
        """Every commit reachable from ``rev`` exports byte-identical; returns their messages."""
        out = []
        with Repo(self.work) as repo:
            for c in repo.log(rev):
                repo.export_image(c.id, "memory", self.work / "x.out")
                assert (self.work / "x.out").read_bytes() == self.images[c.message], c.message
                out.append(c.message)
        return out


@pytest.fixture
def work(tmp_path: Path) -> Path:
    ok(tmp_path, "init")
    return tmp_path


def test_dry_run_lists_decisions_and_changes_nothing(work: Path) -> None:
    h = Hist(work, 8)
    ok(work, "tag", "golden", "HEAD~6")  # c1
    before = state(work)
    out = ok(work, "gc", "--dry-run", "--keep-last", "2", "--keep-within", "3h30m", "--grace", "0")
    assert state(work) == before
    lines = out.splitlines()
    decisions = {ln.split()[4]: ln for ln in lines if ln.startswith(("keep ", "remove "))}
    assert sorted(m for m, ln in decisions.items() if ln.startswith("keep")) == [
        "c1", "c4", "c5", "c6", "c7"
    ]
    assert "(branch head main, last commit, within 3h30m)" in decisions["c7"]
    assert decisions["c1"].endswith("(tag golden)")
    assert decisions["c0"].startswith("remove ")
    assert "retention: would keep 5, would remove 3 of 8 commits on branches" in lines
    assert any(ln.startswith("prune: would remove ") for ln in lines)
    assert h.check_exports() == [f"c{i}" for i in range(7, -1, -1)]


def test_retention_rewrites_history_and_prunes(work: Path) -> None:
    h = Hist(work, 8)
    ok(work, "tag", "golden", "HEAD~6")  # c1
    out = ok(work, "gc", "--keep-last", "3", "--grace", "0", "--expire-reflog", "never",
             "--max-unused", "0")
    assert "retention: keep 4, remove 4 of 8 commits on branches" in out
    prune = next(ln for ln in out.splitlines() if ln.startswith("prune: remove "))
    assert int(prune.split()[2]) > 0
    assert h.check_exports() == ["c7", "c6", "c5", "c1"]
    assert h.check_exports("golden") == ["c1"]
    # The reflog says what happened; fsck agrees every ref and reflog entry is complete.
    top = ok(work, "reflog", "main").splitlines()[0]
    assert "gc: retention (keep-last 3) kept 4 of 8 commits; was " in top
    p = vers(work, "fsck")
    assert p.returncode == 0, p.stdout
    packs = [ln for ln in out.splitlines() if ln.startswith("packs: ")][-1]
    assert "(freed " in packs
    # A second gc with the same policy has nothing left to do.
    again = ok(work, "gc", "--keep-last", "3", "--grace", "0", "--expire-reflog", "never")
    assert "retention: keep 4, remove 0 of 4 commits on branches" in again
    assert "prune: remove 0 objects" in again


def test_grace_period_keeps_fresh_garbage(work: Path) -> None:
    h = Hist(work, 2, npages=64)
    make_image(work / "other", 64 * PAGE_SIZE, seed=99, random_fraction=1.0, zero_fraction=0)
    ok(work, "branch-create", "scratch")
    ok(work, "switch", "scratch")
    side = ok(work, "snapshot", "--memory", "other", "-m", "side").strip()
    ok(work, "switch", "main")
    ok(work, "branch-delete", "scratch")
    # Only the reflog still names the side commit; expire it, and it is garbage, but fresh.
    out = ok(work, "gc", "--expire-reflog", "now")
    assert "prune: remove 0 objects" in out and "kept, younger than the grace period" in out
    with Repo(work) as repo:
        assert repo.store.contains(bytes.fromhex(side))
    out = ok(work, "gc", "--expire-reflog", "now", "--grace", "0")
    removed = int(next(ln for ln in out.splitlines() if ln.startswith("prune:")).split()[2])
    assert removed >= 64 + 2  # the side commit, its tree, nodes and 64 random pages
    with Repo(work) as repo:
        assert not repo.store.contains(bytes.fromhex(side))
    assert h.check_exports() == ["c1", "c0"]
    assert vers(work, "fsck").returncode == 0


def test_gc_without_policy_leaves_history_alone(work: Path) -> None:
    Hist(work, 3, npages=32)
    before = ok(work, "log", "--oneline")
    out = ok(work, "gc", "--grace", "0")
    assert "retention" not in out and "prune: remove 0 objects" in out
    assert ok(work, "log", "--oneline") == before


@pytest.mark.parametrize("args, msg", [
    (("--grace", "soon"), "bad duration 'soon'"),
    (("--keep-within", "3x"), "bad duration '3x'"),
    (("--keep-last", "-1"), "--keep-last must not be negative"),
])
def test_bad_options(work: Path, args: tuple[str, ...], msg: str) -> None:
    Hist(work, 1, npages=8)
    before = state(work)
    p = vers(work, "gc", *args)
    assert p.returncode == 2 and msg in p.stderr and p.stderr.startswith("vers: error: ")
    assert state(work) == before


def test_base_commit_of_a_vm_is_kept_and_checked(work: Path) -> None:
    from vers.vmm.state import VMRegistry

    h = Hist(work, 1, npages=16)
    make_image(work / "other", 16 * PAGE_SIZE, seed=98, random_fraction=1.0, zero_fraction=0)
    ok(work, "branch-create", "tmp")
    ok(work, "switch", "tmp")
    side = ok(work, "snapshot", "--memory", "other", "-m", "vm base").strip()
    ok(work, "switch", "main")
    ok(work, "branch-delete", "tmp")
    reg = VMRegistry(work / ".vers")
    rec = reg.create(name="web")
    rec.base_commit = side
    reg.save(rec)
    out = ok(work, "gc", "--grace", "0", "--expire-reflog", "now")
    assert "prune: remove 0 objects" in out
    with Repo(work) as repo:
        repo.export_image(side, "memory", work / "side.out")
    assert (work / "side.out").read_bytes() == (work / "other").read_bytes()
    with Repo(work) as repo:  # fsck checks what the VM needs, and names the VM
        page = repo.open_image(side, "memory").reader.page_id(2)
        repo.store.delete([page])
    p = vers(work, "fsck")
    assert (p.returncode == 1 and f"missing {page.hex()}" in p.stdout
            and f"vm {rec.id} (web)" in p.stdout)
    assert h.check_exports() == ["c0"]
