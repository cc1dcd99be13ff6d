"""The FUSE backing daemon serving a partial store, without a VM: a fetch from the remote holds up
no other read, the pages a restore reads first are recorded (0600) and prefetched by the next
restore that has the record, and a mapping advised MADV_HUGEPAGE (as QEMU maps guest RAM) does
not fetch megabytes around each touched page."""

from __future__ import annotations

import json
import mmap
import os
import shutil
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.fuse.conftest import needs_fuse
from tests.vmm.memory.daemons import backing_daemon
from vers.errors import FuseError
from vers.objects.model import PAGE_SIZE, ZERO_ID
from vers.porcelain.clone import clone
from vers.porcelain.push import push
from vers.remote.backends import open_transport
from vers.remote.lazy import RECORD_PREFIX, TouchRecord, open_lazy
from vers.repo import Repo
from vers.vmm.memory.daemon import FAULT_AROUND_PAGES
from vers.vmm.memory.fuse import BackingDaemon, BackingFile

from .conftest import change_pages, make_memory
from .test_lazy import _pushed

pytestmark = [pytest.mark.fuse, needs_fuse]

NPAGES = 2048


@pytest.fixture
def daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[BackingDaemon]:
    monkeypatch.setenv("VERS_LAZY_RECORD_SECONDS", "1")  # inherited by the daemon
    with backing_daemon(tmp_path / "fuse-state") as d:
        yield d


def lazy_file(daemon: BackingDaemon, repo: Repo, cid: str, name: str,
              retry_seconds: float = 30.0, mapped: bool = False,
              restoring: bool = False) -> BackingFile:
    """The commit's memory as a file of the daemon, read lazily; ``restoring``: as a restore of
    the commit opens it (the daemon prefetches what it knows a restore reads first)."""
    daemon.ensure_running()
    daemon.request("promisor_settings", repo=str(repo.vers_dir), env={},
                   retry_seconds=retry_seconds, **({"commit": cid} if restoring else {}))
    return BackingFile.create(daemon, name, NPAGES * PAGE_SIZE,
                              {"repo": str(repo.vers_dir), "commit": cid, "image": "memory"},
                              mapped=mapped)


def pread(path: Path, page: int, count: int = 1) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, count * PAGE_SIZE, page * PAGE_SIZE)
    finally:
        os.close(fd)


def test_a_waiting_fetch_holds_up_no_read_of_local_pages(tmp_path: Path,
                                                         daemon: BackingDaemon) -> None:
    url = str(tmp_path / "remote")
    src, cid, image = _pushed(tmp_path, url)
    repo, _ = clone(url, str(tmp_path / "b"), lazy=True)
    lazy = open_lazy(repo)
    assert lazy is not None
    repo.open_image(cid, "memory").pread(0, 512 * PAGE_SIZE)  # pages 0-511 local
    lazy.close()
    f = lazy_file(daemon, repo, cid, "vm1.memory", retry_seconds=6)
    assert pread(f.path, 1000) == bytes(image[1000 * PAGE_SIZE:1001 * PAGE_SIZE])  # indexes in
    os.rename(url, url + ".away")  # from now on every fetch waits out its retries
    failed: list[BaseException] = []

    def absent_read() -> None:
        try:
            pread(f.path, 1500)
        except OSError as exc:
            failed.append(exc)

    waiting = threading.Thread(target=absent_read)
    t0 = time.monotonic()
    waiting.start()
    time.sleep(0.5)  # the absent read is in the daemon, retrying
    assert waiting.is_alive()
    for page in (100, 300, 450):
        assert pread(f.path, page, 4) == bytes(image[page * PAGE_SIZE:(page + 4) * PAGE_SIZE])
    assert time.monotonic() - t0 < 3  # served while the fetch waited, not after it
    waiting.join(30)
    assert failed and time.monotonic() - t0 >= 5  # the fetch gave up after its retries: EIO
    assert "cannot be read" in (f.read_error() or "")
    os.rename(url + ".away", url)
    assert pread(f.path, 1500) == bytes(image[1500 * PAGE_SIZE:1501 * PAGE_SIZE])
    f.remove()
    repo.close()
    src.close()


def test_pages_read_first_are_recorded_and_prefetched_next_time(tmp_path: Path,
                                                                daemon: BackingDaemon) -> None:
    url = str(tmp_path / "remote")
    src, cid, image = _pushed(tmp_path, url)
    repo, _ = clone(url, str(tmp_path / "b"), lazy=True)
    f = lazy_file(daemon, repo, cid, "vm1.memory")
    assert pread(f.path, 300, 64) == bytes(image[300 * PAGE_SIZE:364 * PAGE_SIZE])
    records = repo.vers_dir / "cache" / "touched"
    deadline = time.monotonic() + 10
    while not (records.is_dir() and any(records.iterdir())) and time.monotonic() < deadline:
        time.sleep(0.1)
    (record,) = records.iterdir()
    assert stat.S_IMODE(record.stat().st_mode) == 0o600
    f.remove()
    # A second fresh repository that has the record (as the first one would for its next
    # restore) fetches those pages before anything reads them.
    other, _ = clone(url, str(tmp_path / "c"), lazy=True)
    (other.vers_dir / "cache" / "touched").mkdir(parents=True)
    shutil.copy(record, other.vers_dir / "cache" / "touched" / record.name)
    before = other.store.stats().bytes
    g = lazy_file(daemon, other, cid, "vm2.memory")
    deadline = time.monotonic() + 10
    while other.store.stats().bytes - before < 64 * PAGE_SIZE // 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    with other.local_only():  # every recorded page is here now: no remote needed to read them
        assert other.open_image(cid, "memory").pread(300 * PAGE_SIZE, 64 * PAGE_SIZE) == \
            bytes(image[300 * PAGE_SIZE:364 * PAGE_SIZE])
    g.remove()
    other.close()
    repo.close()
    src.close()


def test_a_touch_of_hugepage_advised_ram_fetches_little_around_it(tmp_path: Path,
                                                                  daemon: BackingDaemon) -> None:
    url = str(tmp_path / "remote")
    src, cid, image = _pushed(tmp_path, url)
    repo, _ = clone(url, str(tmp_path / "b"), lazy=True)
    f = lazy_file(daemon, repo, cid, "vm1.memory", mapped=True)  # as guest RAM is made
    before = repo.store.stats().bytes
    _touch_as_guest_ram(f, image, (700, 1300))
    fetched = repo.store.stats().bytes - before
    # each touch's aligned block (and the image's nodes), not the 2-4 MiB the kernel's huge
    # read-around asks for
    assert fetched < (2 * FAULT_AROUND_PAGES + 16) * PAGE_SIZE < 2 << 20
    f.remove()
    repo.close()
    src.close()


def _touch_as_guest_ram(f: BackingFile, image: bytes | bytearray, pages: tuple[int, ...]) -> None:
    """Read ``pages`` of ``f`` through a shared mapping advised as QEMU advises guest RAM (the
    kernel then reads 2-4 MiB around each miss), checking each against ``image``."""
    fd = os.open(f.path, os.O_RDWR)
    m = mmap.mmap(fd, NPAGES * PAGE_SIZE, mmap.MAP_SHARED)
    try:
        m.madvise(mmap.MADV_HUGEPAGE)
        for page in pages:
            assert m[page * PAGE_SIZE:(page + 1) * PAGE_SIZE] == \
                bytes(image[page * PAGE_SIZE:(page + 1) * PAGE_SIZE])
    finally:
        m.close()
        os.close(fd)


def _wait_for(cond: Callable[[], bool], seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.1)
    return cond()


def test_the_record_is_shared_on_the_remote_and_prefetched_by_a_fresh_repository(
        tmp_path: Path, daemon: BackingDaemon, remote_url: str) -> None:
    src, cid, image = _pushed(tmp_path, remote_url)
    tree = src.get_commit(cid).images["memory"]
    repo, _ = clone(remote_url, str(tmp_path / "b"), lazy=True)
    f = lazy_file(daemon, repo, cid, "vm1.memory")
    assert pread(f.path, 300, 64) == bytes(image[300 * PAGE_SIZE:364 * PAGE_SIZE])
    f.remove()  # the record is written when the file goes, if its time was not up yet
    remote = open_transport(remote_url)
    key = f"{RECORD_PREFIX}{tree}"
    assert _wait_for(lambda: key in remote.list(RECORD_PREFIX))
    assert (repo.vers_dir / "cache" / "touched" / tree).is_file()
    shared = remote.get(key)
    runs = json.loads(shared)["runs"]
    assert any(a <= 300 and a + n >= 364 for a, n in runs), runs  # and the kernel's read-ahead

    # Another fresh repository has no record of its own: the daemon, told which commit is
    # about to be restored, reads the remote's and fetches those pages before anything reads.
    other, _ = clone(remote_url, str(tmp_path / "c"), lazy=True)
    before = other.store.stats().bytes
    daemon.request("promisor_settings", repo=str(other.vers_dir), env={}, retry_seconds=30,
                   commit=cid)
    assert _wait_for(lambda: other.store.stats().bytes - before >= 64 * PAGE_SIZE // 2)
    with other.local_only():
        assert other.open_image(cid, "memory").pread(300 * PAGE_SIZE, 64 * PAGE_SIZE) == \
            bytes(image[300 * PAGE_SIZE:364 * PAGE_SIZE])
    assert (other.vers_dir / "cache" / "touched" / tree).read_bytes() == shared  # kept here
    # A commit ID that is not one is refused, one line.
    with pytest.raises(FuseError, match="bad commit ID"):
        daemon.request("promisor_settings", repo=str(other.vers_dir), env={}, commit="../x")
    other.close()
    repo.close()
    src.close()


@pytest.mark.parametrize("bad", [b"\x00garbage", b'{"version": 1, "tree": "0", "runs": []}',
                                 "runs out of the image", "too many pages"])
def test_a_damaged_record_on_the_remote_is_ignored_and_replaced(
        tmp_path: Path, daemon: BackingDaemon, bad: bytes | str) -> None:
    url = str(tmp_path / "remote")
    src, cid, image = _pushed(tmp_path, url)
    tree = src.get_commit(cid).images["memory"]
    if bad == "runs out of the image":
        bad = json.dumps({"version": 1, "tree": tree, "runs": [[NPAGES - 8, 64]]}).encode()
    elif bad == "too many pages":
        bad = json.dumps({"version": 1, "tree": tree, "runs": [[0, NPAGES // 2]]}).encode()
    assert isinstance(bad, bytes)
    remote = open_transport(url)
    key = f"{RECORD_PREFIX}{tree}"
    remote.put(key, bad)
    repo, _ = clone(url, str(tmp_path / "b"), lazy=True)
    before = repo.store.stats().bytes
    f = lazy_file(daemon, repo, cid, "vm1.memory", restoring=True)
    assert pread(f.path, 1000, 4) == bytes(image[1000 * PAGE_SIZE:1004 * PAGE_SIZE])
    # nothing was prefetched for it: the tree's nodes and the 4 pages read (plus the kernel's
    # read-around of them), not the record's pages
    assert repo.store.stats().bytes - before < 64 * PAGE_SIZE
    assert not (repo.vers_dir / "cache" / "touched" / tree).exists()  # not kept either
    f.remove()
    # the damaged record is replaced by this restore's (compare-and-swap on what was read)
    assert _wait_for(lambda: remote.get(key) != bad)
    assert json.loads(remote.get(key))["runs"][0][0] <= 1000
    repo.close()
    src.close()


def _child_pushed(tmp: Path, url: str) -> tuple[Repo, str, str, bytearray]:
    """``_pushed``, then a commit on top of it (a few pages changed), pushed too: the parent's
    ID, the child's, and the child's memory."""
    src, parent, image = _pushed(tmp, url)
    child_image = change_pages(image, tmp / "m2", [5, 900, 1700], seed=7)
    child = src.snapshot({"memory": tmp / "m2"}, message="two")
    assert src.get_commit(child).parents == [parent]
    push(src, "origin")
    return src, parent, child, child_image


@pytest.mark.parametrize("record", ["good", "garbage", "another image's", "too many pages"])
def test_a_commit_without_a_record_borrows_its_parents(tmp_path: Path, daemon: BackingDaemon,
                                                       remote_url: str, record: str) -> None:
    src, parent, child, image = _child_pushed(tmp_path, remote_url)
    parent_tree = src.get_commit(parent).images["memory"]
    child_tree = src.get_commit(child).images["memory"]
    body = {"good": {"version": 1, "tree": parent_tree, "runs": [[300, 64]]},
            "garbage": None,
            "another image's": {"version": 1, "tree": child_tree, "runs": [[300, 64]]},
            "too many pages": {"version": 1, "tree": parent_tree, "runs": [[0, NPAGES // 2]]},
            }[record]
    remote = open_transport(remote_url)
    remote.put(f"{RECORD_PREFIX}{parent_tree}",
               b"\x00garbage" if body is None else json.dumps(body).encode())
    repo, _ = clone(remote_url, str(tmp_path / "b"), lazy=True)
    before = repo.store.stats().bytes
    f = lazy_file(daemon, repo, child, "vm1.memory", restoring=True)
    if record == "good":
        # the parent's recorded pages, of the child's image, are here before anything reads
        assert _wait_for(lambda: repo.store.stats().bytes - before >= 64 * PAGE_SIZE // 2)
        with repo.local_only():
            assert repo.open_image(child, "memory").pread(300 * PAGE_SIZE, 64 * PAGE_SIZE) == \
                bytes(image[300 * PAGE_SIZE:364 * PAGE_SIZE])
        assert _wait_for(lambda: f.stats().get("record_source") == 2)  # an ancestor's
        assert f.stats()["record_pages"] == 64
    else:  # a hint that is not one prefetches nothing, and the restore works as without
        assert pread(f.path, 1000, 4) == bytes(image[1000 * PAGE_SIZE:1004 * PAGE_SIZE])
        assert _wait_for(lambda: f.stats().get("record_source") == 0)
        assert repo.store.stats().bytes - before < 64 * PAGE_SIZE
    assert pread(f.path, 1500) == bytes(image[1500 * PAGE_SIZE:1501 * PAGE_SIZE])
    f.remove()
    # The child's own record is its own (shared under its tree); the parent's stays as it was.
    assert _wait_for(lambda: f"{RECORD_PREFIX}{child_tree}" in remote.list(RECORD_PREFIX))
    assert json.loads(remote.get(f"{RECORD_PREFIX}{child_tree}"))["tree"] == child_tree
    if body is not None:
        assert json.loads(remote.get(f"{RECORD_PREFIX}{parent_tree}")) == body
    repo.close()
    src.close()


def test_a_local_restore_records_what_it_reads_and_push_sends_it(
        tmp_path: Path, daemon: BackingDaemon, remote_url: str) -> None:
    src, parent, child, image = _child_pushed(tmp_path, remote_url)
    tree = src.get_commit(child).images["memory"]
    record = src.vers_dir / "cache" / "touched" / tree
    daemon.ensure_running()
    f = BackingFile.create(daemon, "vm1.memory", NPAGES * PAGE_SIZE,
                           {"repo": str(src.vers_dir), "commit": child, "image": "memory"},
                           mapped=True)
    _touch_as_guest_ram(f, image, (700, 1300))
    f.remove()
    assert _wait_for(record.is_file)
    assert stat.S_IMODE(record.stat().st_mode) == 0o600
    runs = TouchRecord(src.vers_dir, tree).load(NPAGES)
    # each touch's fault block, as a lazy restore would fetch it, not the kernel's read-around
    assert sum(n for _a, n in runs) <= 2 * FAULT_AROUND_PAGES, runs
    assert any(a <= 700 < a + n for a, n in runs) and any(a <= 1300 < a + n for a, n in runs)
    # A restore that finds the record records nothing (it is served as before).
    g = BackingFile.create(daemon, "vm2.memory", NPAGES * PAGE_SIZE,
                           {"repo": str(src.vers_dir), "commit": child, "image": "memory"},
                           mapped=True)
    assert "record_pages" not in g.stats()
    g.remove()
    # The push sends it, and the record of an ancestor of what it pushes too.
    remote = open_transport(remote_url)
    assert remote.list(RECORD_PREFIX) == {}
    parent_tree = src.get_commit(parent).images["memory"]
    TouchRecord(src.vers_dir, parent_tree).save_local([(10, 5)])
    push(src, "origin")
    assert sorted(remote.list(RECORD_PREFIX)) == sorted(
        [f"{RECORD_PREFIX}{tree}", f"{RECORD_PREFIX}{parent_tree}"])
    assert TouchRecord(tmp_path, tree).parse(remote.get(f"{RECORD_PREFIX}{tree}"),
                                             NPAGES) == runs
    src.close()


def test_a_repository_without_a_remote_records_nothing(tmp_path: Path,
                                                       daemon: BackingDaemon) -> None:
    repo = Repo.init(tmp_path / "a")
    image = make_memory(tmp_path / "m1", NPAGES, seed=1)
    cid = repo.snapshot({"memory": tmp_path / "m1"}, message="one")
    daemon.ensure_running()
    f = BackingFile.create(daemon, "vm1.memory", NPAGES * PAGE_SIZE,
                           {"repo": str(repo.vers_dir), "commit": cid, "image": "memory"})
    assert pread(f.path, 300, 4) == bytes(image[300 * PAGE_SIZE:304 * PAGE_SIZE])
    f.remove()
    time.sleep(1.5)  # past the record's time
    assert not (repo.vers_dir / "cache" / "touched").exists()
    repo.close()


def test_ram_faults_near_each_other_fetch_the_blocks_around_them(
        tmp_path: Path, daemon: BackingDaemon, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VERS_LAZY_CLUSTER_BLOCKS", "1")  # inherited by the daemon
    url = str(tmp_path / "remote")
    src, cid, image = _pushed(tmp_path, url)
    repo, _ = clone(url, str(tmp_path / "b"), lazy=True)
    f = lazy_file(daemon, repo, cid, "vm1.memory", mapped=True)
    fd = os.open(f.path, os.O_RDWR)
    m = mmap.mmap(fd, NPAGES * PAGE_SIZE, mmap.MAP_SHARED)
    block = FAULT_AROUND_PAGES
    try:
        m.madvise(mmap.MADV_HUGEPAGE)
        # blocks 10 and 12: the second miss is near the first, so blocks 11 and 13 come too
        for page in (10 * block + 5, 12 * block + 5):
            assert m[page * PAGE_SIZE:(page + 1) * PAGE_SIZE] == \
                bytes(image[page * PAGE_SIZE:(page + 1) * PAGE_SIZE])
    finally:
        m.close()
        os.close(fd)
    f.remove()
    reader = repo.open_image(cid, "memory").reader

    def here(b: int) -> bool:
        ids = [o for o in reader.page_ids(b * block, (b + 1) * block - 1) if o != ZERO_ID]
        return not repo.store.missing(ids)

    assert _wait_for(lambda: all(here(b) for b in (10, 11, 12, 13)))
    assert not here(14) and not here(9)  # no further than that
    repo.close()
    src.close()
