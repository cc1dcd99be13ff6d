"""The inspection mount, checked with tools nobody here wrote: cmp, e2fsck, debugfs, ls, stat."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fuse.conftest import History, needs_fuse
from vers.errors import FuseError
from vers.fuse import mount as mnt
from vers.porcelain.mount import mount, umount

pytestmark = [pytest.mark.fuse, needs_fuse]


def vers(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["vers", *args],
        check=False, cwd=cwd, capture_output=True, text=True, timeout=120,
    )


@pytest.fixture
def mounted(history: History) -> Iterator[tuple[History, Path]]:
    point = history.dir / "mnt"
    point.mkdir()
    pid = mount(history.repo, point)
    assert pid
    try:
        yield history, point
    finally:
        if mnt.is_mounted(point):
            umount(history.repo, point, lazy=True)


def test_cmp_against_snapshotted_images(mounted: tuple[History, Path]) -> None:
    h, point = mounted
    for cid, mem in [(h.first, h.memory1), (h.second, h.memory2)]:
        subprocess.run(["cmp", str(mem), str(point / "commits" / cid / "memory")], check=True)
        subprocess.run(["cmp", str(h.disk), str(point / "commits" / cid / "disk")], check=True)
    # Through the ref symlinks too.
    subprocess.run(["cmp", str(h.memory2), str(point / "HEAD" / "memory")], check=True)
    subprocess.run(["cmp", str(h.memory1), str(point / "tags" / "v1" / "memory")], check=True)
    subprocess.run(["cmp", str(h.memory1), str(point / "refs/heads/feature/x/memory")], check=True)


def test_e2fsck_and_debugfs_on_mounted_disk(mounted: tuple[History, Path]) -> None:
    h, point = mounted
    disk = point / "commits" / h.second / "disk"
    fsck = subprocess.run(
        ["e2fsck", "-fn", str(disk)], check=False, capture_output=True, text=True
    )
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    for name, content in h.files.items():
        out = subprocess.run(
            ["debugfs", "-R", f"cat /{name}", str(disk)], capture_output=True, check=True
        ).stdout
        assert out == content, name


def test_stat_listing_and_read_only(mounted: tuple[History, Path]) -> None:
    h, point = mounted
    assert sorted(os.listdir(point)) == ["HEAD", "commits", "refs", "tags"]
    assert sorted(os.listdir(point / "commits")) == sorted([h.first, h.second])
    st = os.stat(point / "commits" / h.first / "memory")
    assert st.st_size == h.memory1.stat().st_size
    assert st.st_mtime == 1_700_000_000
    assert os.readlink(point / "HEAD") == f"commits/{h.second}"
    with pytest.raises(OSError) as exc:
        os.open(point / "commits" / h.first / "memory", os.O_RDWR)
    assert exc.value.errno in (errno.EROFS, errno.EACCES)
    with pytest.raises(FileNotFoundError):
        os.stat(point / "commits" / ("f" * 64))
    # Inode numbers are the same on a second mount of the same repository.
    ino = os.stat(point / "commits" / h.first / "disk").st_ino
    umount(h.repo, point)
    mount(h.repo, point)
    assert os.stat(point / "commits" / h.first / "disk").st_ino == ino


def test_unlisted_commit_found_by_full_id(mounted: tuple[History, Path]) -> None:
    h, point = mounted
    orphan = h.repo.snapshot({"memory": h.memory1}, message="orphan", ref=None)
    assert orphan not in os.listdir(point / "commits")
    subprocess.run(["cmp", str(h.memory1), str(point / "commits" / orphan / "memory")], check=True)


def test_new_commits_show_up(mounted: tuple[History, Path]) -> None:
    h, point = mounted
    third = h.repo.snapshot({"memory": h.memory1}, message="third")
    time.sleep(1.1)  # refs have a 1 s attribute timeout
    assert os.readlink(point / "HEAD") == f"commits/{third}"
    assert third in os.listdir(point / "commits")


def flip_stored_byte(repo, oid: bytes) -> None:
    """Flip one payload byte of a stored object, in place, through LMDB directly."""
    from vers.objects.lmdbstore import _INDEX, _PACK_KEY

    store = repo.store
    with store.env.begin(write=True) as txn:
        pack_no, off, length, *_ = _INDEX.unpack(txn.get(oid, db=store.db["index"]))
        key = _PACK_KEY.pack(pack_no)
        pack = bytearray(txn.get(key, db=store.db["packs"]))
        pack[off + length // 2] ^= 0xFF
        txn.put(key, bytes(pack), db=store.db["packs"])


def test_corrupt_page_is_eio_not_wrong_bytes(history: History) -> None:
    point = history.dir / "mnt"
    point.mkdir()
    image = history.repo.open_image(history.first, "memory")
    flip_stored_byte(history.repo, image.reader.page_id(4))  # page 4 is a random (non-zero) page
    mount(history.repo, point)
    try:
        with open(point / "commits" / history.first / "memory", "rb") as f:
            assert f.read(4096) == history.memory1.read_bytes()[:4096]  # other pages still fine
            f.seek(4 * 4096)
            with pytest.raises(OSError) as exc:
                f.read(4096)
        assert exc.value.errno == errno.EIO
    finally:
        umount(history.repo, point, lazy=True)


def test_dead_daemon_is_a_clear_error_and_next_mount_cleans_up(history: History) -> None:
    point = history.dir / "mnt"
    point.mkdir()
    pid = mount(history.repo, point)
    assert pid
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.3)
    assert mnt.is_stale(point)
    with pytest.raises(FuseError, match="not running"):
        mnt.check_alive(point)
    # The next mount detaches the stale mount point and works.
    mount(history.repo, point)
    assert sorted(os.listdir(point)) == ["HEAD", "commits", "refs", "tags"]
    umount(history.repo, point)
    assert not mnt.is_mounted(point)


def test_cli_mount_umount_and_errors(history: History) -> None:
    point = history.dir / "cli-mnt"
    point.mkdir()
    r = vers("mount", str(point), cwd=history.repo.root)
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""
    try:
        assert (point / "HEAD" / "meta.json").exists()
        again = vers("mount", str(point), cwd=history.repo.root)
        assert again.returncode != 0 and "already a mount point" in again.stderr
    finally:
        r = vers("umount", str(point), cwd=history.repo.root)
        assert r.returncode == 0, r.stderr
    r = vers("umount", str(point), cwd=history.repo.root)
    assert r.returncode != 0 and "not mounted" in r.stderr
    (history.dir / "a-file").write_text("x")
    r = vers("mount", str(history.dir / "a-file"), cwd=history.repo.root)
    assert r.returncode != 0 and "is a file" in r.stderr
    missing = history.dir / "missing" / "deeper"
    r = vers("mount", str(missing), cwd=history.repo.root)
    try:
        assert r.returncode == 0, r.stderr
        assert (missing / "HEAD" / "meta.json").exists()
    finally:
        assert vers("umount", str(missing), cwd=history.repo.root).returncode == 0


def test_umount_of_a_stopped_daemon_does_not_hang(history: History) -> None:
    point = history.dir / "mnt"
    point.mkdir()
    pid = mount(history.repo, point)
    assert pid
    os.kill(pid, signal.SIGSTOP)
    try:
        with pytest.raises(FuseError, match="does not respond"):
            mnt.PROBE_TIMEOUT = 1.0
            mnt.check_alive(point)
        umount(history.repo, point)
        assert not mnt.is_mounted(point)
    finally:
        mnt.PROBE_TIMEOUT = 10.0
        os.kill(pid, signal.SIGCONT)
