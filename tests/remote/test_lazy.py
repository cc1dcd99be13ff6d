"""The lazy store without a VM, against a directory and a real S3 server: a partial repository
reads absent objects from its promisor, verified and kept; fsck, gc and fetch --all-objects
understand it; a commit made on top of it pushes back."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from vers.errors import RemoteError
from vers.objects.model import KIND_COMMIT, PAGE_SIZE
from vers.porcelain.clone import clone
from vers.porcelain.fetch import fetch
from vers.porcelain.fsck import fsck_repo
from vers.porcelain.gc import gc_repo
from vers.porcelain.push import push
from vers.porcelain.remote import add_remote
from vers.remote.backends import open_transport
from vers.remote.bundle import RemoteIndex
from vers.remote.lazy import RECORD_MIN_PAGES, RECORD_PREFIX, ReadAhead, TouchRecord, open_lazy
from vers.repo import Repo

from .conftest import change_pages, export_bytes, make_memory, vers
from .test_push_fetch import _tamper_one_page

NPAGES = 2048


def _pushed(tmp: Path, url: str) -> tuple[Repo, str, bytearray]:
    repo = Repo.init(tmp / "a")
    image = make_memory(tmp / "m1", NPAGES, seed=1)
    cid = repo.snapshot({"memory": tmp / "m1"}, message="one")
    add_remote(repo, "origin", url)
    push(repo, "origin")
    return repo, cid, image


def test_lazy_clone_reads_on_demand_and_keeps_what_it_read(tmp_path: Path,
                                                          remote_url: str) -> None:
    src, cid, image = _pushed(tmp_path, remote_url)
    repo, head = clone(remote_url, str(tmp_path / "b"), lazy=True)
    assert head == cid and repo.promisors() == ["origin"]
    assert repo.store.stats().objects == 1  # the commit only
    lazy = open_lazy(repo)
    assert lazy is not None
    part = repo.open_image(cid, "memory").pread(100 * PAGE_SIZE, 64 * PAGE_SIZE)
    assert part == bytes(image[100 * PAGE_SIZE:164 * PAGE_SIZE])
    assert lazy.stats.batches <= 6  # tree, 2 node levels, one range for 64 pages (+ retries 0)
    assert export_bytes(repo, cid, tmp_path) == bytes(image)
    fetched = lazy.stats.bytes
    assert export_bytes(repo, cid, tmp_path) == bytes(image)
    assert lazy.stats.bytes == fetched  # the second read is local
    lazy.close()
    repo.close()
    src.close()


def test_fsck_gc_and_all_objects_on_a_partial_store(tmp_path: Path, remote_url: str) -> None:
    src, cid, image = _pushed(tmp_path, remote_url)
    repo, _ = clone(remote_url, str(tmp_path / "b"), lazy=True)
    report = fsck_repo(repo)
    assert report.ok and report.absent, report.summary()
    assert "lazy" in report.summary()
    checked = fsck_repo(repo, remote=True)
    assert checked.ok and checked.on_remote == len({p.oid for p in checked.absent})
    gc = gc_repo(repo, grace=0)
    assert gc.objects_removed == 0  # the commit stays; nothing refused
    # The CLI says the same.
    proc = vers("fsck", "--remote", cwd=repo.root)
    assert "lazy" in proc.stderr
    fetch(repo, "origin", all_objects=True)
    complete = fsck_repo(repo)
    assert complete.ok and not complete.absent
    with repo.local_only():
        assert export_bytes(repo, cid, tmp_path) == bytes(image)
    repo.close()
    src.close()


def test_absent_and_not_on_the_remote_is_missing(tmp_path: Path) -> None:
    url = str(tmp_path / "remote")
    src, _cid, _ = _pushed(tmp_path, url)
    repo, _ = clone(url, str(tmp_path / "b"), lazy=True)
    t = open_transport(url)
    for key in t.list("bundles/"):
        if key.endswith(".idx"):
            t.delete(key)  # the remote lost everything but refs
    report = fsck_repo(repo, remote=True)
    assert not report.ok and all(p.what == "missing" for p in report.problems)
    repo.close()
    src.close()


def test_tampered_remote_object_is_rejected_and_not_kept(tmp_path: Path,
                                                         remote_url: str) -> None:
    src, cid, _ = _pushed(tmp_path, remote_url)
    repo, _ = clone(remote_url, str(tmp_path / "b"), lazy=True)
    bad = _tamper_one_page(remote_url)
    open_lazy(repo, retry_seconds=0)
    with pytest.raises(RemoteError, match=f"rejected object {bad}"):
        export_bytes(repo, cid, tmp_path)
    assert not repo.store.contains(bytes.fromhex(bad))
    assert fsck_repo(repo, remote=True).ok
    repo.close()
    src.close()


def test_pages_served_from_memory_are_stored_and_tampered_ones_never_served(
        tmp_path: Path, remote_url: str) -> None:
    """The backing daemon's path: a read is served from the verified bytes in memory while the
    store write runs behind; by the time the lazy store is closed, everything served is stored."""
    src, cid, image = _pushed(tmp_path, remote_url)
    repo, _ = clone(remote_url, str(tmp_path / "b"), lazy=True)
    lazy = open_lazy(repo)
    assert lazy is not None
    ra = ReadAhead(repo.open_image(cid, "memory"))
    ra.make_local([(100, 64)])
    part = bytes(image[100 * PAGE_SIZE:164 * PAGE_SIZE])
    assert ra.pread(100 * PAGE_SIZE, 64 * PAGE_SIZE) == part
    lazy.close()
    with repo.local_only():
        assert repo.open_image(cid, "memory").pread(100 * PAGE_SIZE, 64 * PAGE_SIZE) == part
    assert fsck_repo(repo).ok

    bad = _tamper_one_page(remote_url)
    assert not repo.store.contains(bytes.fromhex(bad))  # not among the pages read above
    lazy = open_lazy(repo, retry_seconds=0)
    assert lazy is not None
    ra = ReadAhead(repo.open_image(cid, "memory"))
    with pytest.raises(RemoteError, match=f"rejected object {bad}"):
        ra.make_local([(0, NPAGES)])
    with pytest.raises(RemoteError, match=f"rejected object {bad}"):
        lazy.pages([bytes.fromhex(bad)])
    lazy.close()
    assert not repo.store.contains(bytes.fromhex(bad))
    assert fsck_repo(repo).ok
    repo.close()
    src.close()


def test_unreachable_remote_fails_in_bounded_time_and_changes_nothing(tmp_path: Path) -> None:
    url = str(tmp_path / "remote")
    src, cid, image = _pushed(tmp_path, url)
    repo, _ = clone(url, str(tmp_path / "b"), lazy=True)
    lazy = open_lazy(repo, retry_seconds=1.5)
    assert lazy is not None
    lazy.promisors[0].index()  # indexes loaded (cached) while the remote was there
    os.rename(url, url + ".away")
    before = repo.store.stats()
    t0 = time.monotonic()
    with pytest.raises(RemoteError, match="promisor remote origin .* cannot be read"):
        export_bytes(repo, cid, tmp_path)
    assert time.monotonic() - t0 < 10
    assert repo.store.stats() == before
    os.rename(url + ".away", url)
    assert export_bytes(repo, cid, tmp_path) == bytes(image)  # back: reads work again
    lazy.close()
    repo.close()
    src.close()


def test_path_remote_gone_before_its_index_is_read_is_unreachable(tmp_path: Path) -> None:
    """A vanished directory lists as empty: that must read as "cannot be read", not as objects
    missing from it."""
    url = str(tmp_path / "remote")
    src, cid, image = _pushed(tmp_path, url)
    repo, _ = clone(url, str(tmp_path / "b"), lazy=True)
    lazy = open_lazy(repo, retry_seconds=1)
    assert lazy is not None
    os.rename(url, url + ".away")  # before any index was loaded in this process
    before = repo.store.stats()
    with pytest.raises(RemoteError, match="promisor remote origin .* cannot be read .*"
                                          "no such directory"):
        export_bytes(repo, cid, tmp_path)
    assert repo.store.stats() == before
    os.rename(url + ".away", url)
    assert export_bytes(repo, cid, tmp_path) == bytes(image)
    lazy.close()
    repo.close()

    # The CLI: the unreachable line and exit code, not "not found" (3).
    fresh = tmp_path / "fresh"
    vers("init", str(fresh))
    os.rename(url, url + ".away")
    proc = vers("run-commit", "--from", url, cid, cwd=fresh, check=False,
                env={"VERS_LAZY_RETRY_SECONDS": "1"})
    assert proc.returncode == 7, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot be read" in lines[0] and "no such directory" in lines[0], \
        proc.stderr
    assert "Traceback" not in proc.stderr
    # the remote it would have added for that URL is not left behind
    assert vers("remote", cwd=fresh).stdout.strip() == ""
    src.close()


def test_commit_on_a_partial_store_pushes_back(tmp_path: Path, remote_url: str) -> None:
    src, cid, image = _pushed(tmp_path, remote_url)
    repo, _ = clone(remote_url, str(tmp_path / "b"), lazy=True)
    open_lazy(repo)
    changed = list(range(0, NPAGES, 97))
    m2 = change_pages(image, tmp_path / "m2", changed, seed=5)
    new = repo.snapshot({"memory": tmp_path / "m2"}, message="two", dirty={"memory": changed})
    # only the changed pages and the nodes above them were needed, not the image
    assert repo.store.stats().bytes < len(image) // 4
    result = push(repo, "origin")
    assert result.updated == [("refs/heads/main", cid, new)]
    third, head = clone(remote_url, str(tmp_path / "c"))
    assert head == new and export_bytes(third, new, tmp_path) == bytes(m2)
    assert fsck_repo(third).ok
    third.close()
    repo.close()
    src.close()


def test_push_sends_the_touched_page_records_of_what_it_pushes(tmp_path: Path,
                                                               remote_url: str,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               ) -> None:
    repo = Repo.init(tmp_path / "a")
    make_memory(tmp_path / "m1", NPAGES, seed=1)
    cid = repo.snapshot({"memory": tmp_path / "m1"}, message="one")
    tree = repo.get_commit(cid).images["memory"]
    TouchRecord(repo.vers_dir, tree).save_local([(10, 5), (700, 64)])
    add_remote(repo, "origin", remote_url)
    monkeypatch.setenv("VERS_LAZY_SHARE_RECORDS", "0")
    push(repo, "origin")
    remote = open_transport(remote_url)
    assert remote.list(RECORD_PREFIX) == {}  # not shared when told not to
    monkeypatch.delenv("VERS_LAZY_SHARE_RECORDS")
    push(repo, "origin")  # nothing else to send, but the record goes
    key = f"{RECORD_PREFIX}{tree}"
    assert list(remote.list(RECORD_PREFIX)) == [key]
    assert TouchRecord(tmp_path, tree).parse(remote.get(key), NPAGES) == [(10, 5), (700, 64)]
    # A record that is not one is not sent (it is checked like one read from a remote).
    TouchRecord(repo.vers_dir, tree).path.write_text("[]")
    remote.delete(key)
    push(repo, "origin")
    assert remote.list(RECORD_PREFIX) == {}
    repo.close()


def test_a_touched_page_record_is_validated() -> None:
    tree = "ab" * 32
    rec = TouchRecord(Path("/nonexistent"), tree)
    ok = rec.encode([(0, 3), (10, 4)])
    assert rec.parse(ok, 100) == [(0, 3), (10, 4)]
    for bad in (b"\xff", b"[]", b'{"version": 2, "tree": "' + tree.encode() + b'", "runs": []}',
                rec.encode([(10, 4), (0, 3)]),  # out of order
                rec.encode([(0, 5), (3, 4)]),  # overlapping
                rec.encode([(98, 4)]),  # past the end
                rec.encode([(0, 0)]),
                b'{"version": 1, "tree": "' + tree.encode() + b'", "runs": [[1.5, 2]]}',
                b'{"version": 1, "tree": "' + tree.encode() + b'", "runs": [[true, 2]]}',
                TouchRecord(Path("/x"), "cd" * 32).encode([(0, 3)])):  # another image's
        with pytest.raises(ValueError):
            rec.parse(bad, 100)
    big = 4 * RECORD_MIN_PAGES
    with pytest.raises(ValueError, match="more than a restore reads"):
        rec.parse(rec.encode([(0, big // 4 + 1)]), big)
    assert rec.parse(rec.encode([(0, big // 4)]), big) == [(0, big // 4)]
    assert rec.load(100) == []  # no file here, no remote: no prefetch, no error


def test_indexes_read_once_per_process_still_see_a_new_push(tmp_path: Path,
                                                            remote_url: str) -> None:
    src, cid, image = _pushed(tmp_path, remote_url)
    t = open_transport(remote_url)
    first = RemoteIndex.load(t, shared=True)
    assert RemoteIndex.load(t, shared=True) is first  # nothing new: the same, nothing read
    assert first.locs.ids_of_kind(KIND_COMMIT) == [bytes.fromhex(cid)]
    m2 = change_pages(image, tmp_path / "m2", [1, 2, 3], seed=9)
    new = src.snapshot({"memory": tmp_path / "m2"}, message="two")
    push(src, "origin")
    second = RemoteIndex.load(t, shared=True)
    assert bytes.fromhex(new) in second and bytes.fromhex(cid) in second
    assert bytes.fromhex(new) not in first  # the one read before is not changed under a reader
    assert sorted(second.locs.ids_of_kind(KIND_COMMIT)) == sorted(
        bytes.fromhex(c) for c in (cid, new))
    fresh = RemoteIndex.load(t)  # what a reader without the shared copy finds
    assert len(fresh.locs) == len(second.locs)
    assert all(fresh.locs[o] == second.locs[o] for o in fresh.locs)
    assert len(m2) == len(image)
    src.close()
