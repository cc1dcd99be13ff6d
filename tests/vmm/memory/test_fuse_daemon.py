"""Lazily-backed, write-tracking VM memory files, exercised by mmap(MAP_SHARED) writers in other
processes (the same kernel path QEMU's memory-backend-file,share=on takes), and committed with the
daemon's dirty set."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fuse.conftest import PAGE, History, needs_fuse
from vers.errors import FuseError
from vers.fuse.mount import is_mounted
from vers.vmm.memory.fuse import BackingDaemon, BackingFile

pytestmark = [pytest.mark.fuse, needs_fuse]

WRITER = r"""
import mmap, os, sys
path, size = sys.argv[1], int(sys.argv[2])
fd = os.open(path, os.O_RDWR)
m = mmap.mmap(fd, size, mmap.MAP_SHARED)
print("ready", flush=True)
for line in sys.stdin:
    cmd, *rest = line.split()
    if cmd == "w":  # w PAGE TEXT: write TEXT at the start of PAGE
        page, text = int(rest[0]), rest[1].encode()
        m[page * 4096 : page * 4096 + len(text)] = text
    elif cmd == "r":  # r PAGE N: print N bytes at the start of PAGE
        page, n = int(rest[0]), int(rest[1])
        sys.stdout.write(m[page * 4096 : page * 4096 + n].decode(errors="replace"))
    print("ok", flush=True)
"""


class Writer:
    """A process holding a MAP_SHARED mapping of the file, like QEMU does."""

    def __init__(self, path: Path, size: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), str(size)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        assert self.proc.stdout is not None and self.proc.stdout.readline() == "ready\n"

    def cmd(self, line: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        out = self.proc.stdout.readline()
        return out.removesuffix("ok\n")

    def write(self, page: int, text: str) -> None:
        self.cmd(f"w {page} {text}")

    def read(self, page: int, n: int) -> str:
        return self.cmd(f"r {page} {n}")

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=10)


def test_restore_is_lazy_and_commit_stores_only_written_pages(
    history: History, daemon: BackingDaemon
) -> None:
    repo = history.repo
    size = history.memory2.stat().st_size
    f = BackingFile.create(daemon, "vm1.memory", size,
                           {"repo": str(repo.root), "commit": history.second, "image": "memory"})
    assert f.stats()["base_bytes_read"] == 0  # restoring read nothing
    w = Writer(f.path, size)
    try:
        expect = bytearray(history.memory2.read_bytes())
        assert w.read(3, 5) == "CHANG"
        # Only what was touched and the read-around of the fault, which for a mapping without
        # huge pages follows the mount's readahead (BACKING_READ_AHEAD_KB): not the whole image.
        assert 0 < f.stats()["base_bytes_read"] < size
        pages = sorted(random.Random(5).sample(range(size // PAGE), 40))
        for p in pages:
            w.write(p, f"page{p}")
            expect[p * PAGE : p * PAGE + len(f"page{p}")] = f"page{p}".encode()
        assert f.dirty_pages() == pages  # flush made the daemon see every mmap write
        before = repo.store.stats() if hasattr(repo.store, "stats") else None
        cid = repo.snapshot({"memory": f.path}, dirty={"memory": f.dirty_pages() or []},
                            message="after restore")
        del before
        f.committed()
        assert f.dirty_pages() == []
        out = history.dir / "out.img"
        repo.export_image(cid, "memory", out)
        assert out.read_bytes() == bytes(expect)
        # A second round: pages written again after the commit are dirty again.
        w.write(pages[0], "again")
        w.write(7, "seven")
        assert f.dirty_pages() == sorted({pages[0], 7})
    finally:
        w.close()
        f.remove()


def test_capture_freezes_content_while_writer_continues(daemon: BackingDaemon) -> None:
    size = 64 * PAGE
    f = BackingFile.create(daemon, "vm2.memory", size)
    w = Writer(f.path, size)
    try:
        w.write(1, "before")
        twin, dirty = f.capture()
        assert dirty is None  # booted from zeros: the first commit must read every page
        w.write(1, "AFTER!")
        w.write(2, "later")
        with open(twin.path, "rb") as t:
            data = t.read()
        assert data[PAGE : PAGE + 6] == b"before" and data[2 * PAGE : 2 * PAGE + 5] == bytes(5)
        f.capture_done(ok=True)
        assert not twin.path.exists()
        assert f.dirty_pages() == [1, 2]  # only what was written after the capture
        twin, dirty = f.capture()
        assert dirty == [1, 2]
        f.capture_done(ok=False)  # a failed commit gives its pages back
        w.write(9, "x")
        assert f.dirty_pages() == [1, 2, 9]
    finally:
        w.close()
        f.remove()


def test_capture_names_the_plain_file_that_holds_its_dirty_pages(daemon: BackingDaemon) -> None:
    """After one commit interval the dirty pages all sit in the newest frozen layer, a plain file
    at the pages' own offsets: a commit reads them there, and gets what the twin shows. A branch
    in the interval spreads them over two layers: then there is no such file."""
    size = 64 * PAGE
    f = BackingFile.create(daemon, "vm4.memory", size)
    w = Writer(f.path, size)
    try:
        w.write(1, "first")
        f.capture()
        f.capture_done(ok=True)  # the first commit: every page read through FUSE
        w.write(3, "three")
        w.write(40, "forty")
        twin, dirty = f.capture()
        assert dirty == [3, 40] and twin.pages_file is not None
        assert twin.pages_file.stat().st_mode & 0o777 == 0o600
        with open(twin.path, "rb") as t, open(twin.pages_file, "rb") as direct:
            for page in dirty:
                t.seek(page * PAGE)
                direct.seek(page * PAGE)
                assert direct.read(PAGE) == t.read(PAGE)
        w.write(3, "three, after the capture")  # the guest runs on: the file must not change
        with open(twin.pages_file, "rb") as direct:
            direct.seek(3 * PAGE)
            assert direct.read(5) == b"three"
        f.capture_done(ok=True)
        w.write(5, "before a branch")
        child = f.branch("vm4.child")
        w.write(6, "after it")
        twin, dirty = f.capture()
        assert dirty == [3, 5, 6] and twin.pages_file is None
        f.capture_done(ok=True)
        child.remove()
    finally:
        w.close()
        f.remove()


def test_capture_left_by_a_dead_commit_is_given_back(daemon: BackingDaemon) -> None:
    """A commit killed between capture and capture_done leaves its twin pending: the next capture
    takes the twin's pages back, so its dirty set still holds every page since the last commit."""
    size = 32 * PAGE
    f = BackingFile.create(daemon, "vm3.memory", size)
    w = Writer(f.path, size)
    try:
        f.capture()
        f.capture_done(ok=True)  # a first commit landed
        w.write(3, "dead commit's page")
        f.capture()  # ... and its commit process died here: no capture_done
        w.write(5, "written after")
        twin, dirty = f.capture()
        assert dirty == [3, 5]
        assert twin.name in daemon.request("list")["files"]
        with pytest.raises(FuseError, match="already has a pending capture"):
            daemon.request("capture", name=f.name, capture="other")  # without give_back_pending
        f.capture_done(ok=True)
        assert daemon.request("list")["files"] == [f.name]
    finally:
        w.close()
        f.remove()


def test_branch_children_diverge(daemon: BackingDaemon) -> None:
    size = 128 * PAGE
    parent = BackingFile.create(daemon, "p.memory", size)
    wp = Writer(parent.path, size)
    try:
        wp.write(10, "shared")
        child = parent.branch("c.memory")
        wc = Writer(child.path, size)
        try:
            assert wc.read(10, 6) == "shared"
            wc.write(10, "child!")
            wp.write(11, "parent")
            assert wp.read(10, 6) == "shared"
            assert wc.read(11, 6) == "\0" * 6
            assert wc.read(10, 6) == "child!"
            child.flush()
            parent.flush()
            with open(child.path, "rb") as fc, open(parent.path, "rb") as fp:
                c, p = fc.read(), fp.read()
            assert (c[10 * PAGE : 10 * PAGE + 6] == b"child!"
                    and p[10 * PAGE : 10 * PAGE + 6] == b"shared")
        finally:
            wc.close()
            child.remove()
    finally:
        wp.close()
        parent.remove()


def test_dead_daemon_is_a_clear_error_and_restarts(tmp_path: Path) -> None:
    daemon = BackingDaemon(tmp_path / "fuse-state")
    f = BackingFile.create(daemon, "vm.memory", 16 * PAGE)
    pid = daemon.request("ping")["pid"]
    layers = daemon.state_dir / "layers"
    (layers / f"layer-{pid}-99.pages").write_bytes(b"x")  # as if the dead daemon had left it
    os.kill(pid, signal.SIGKILL)
    try:
        with pytest.raises(FuseError, match="not running"):
            f.dirty_pages()
        with pytest.raises(FuseError, match="not running"):
            daemon.request("list")
        # Next use cleans the stale mount and starts a fresh daemon.
        g = BackingFile.create(daemon, "vm.memory", 16 * PAGE)
        assert g.dirty_pages() is None
        assert not list(layers.glob(f"layer-{pid}-*"))  # the new daemon removed the orphans
        g.remove()
    finally:
        daemon.shutdown()
    assert not is_mounted(daemon.mountpoint)


def test_control_errors_are_reported(daemon: BackingDaemon) -> None:
    with pytest.raises(FuseError, match="positive multiple"):
        BackingFile.create(daemon, "bad.memory", 1000)
    f = BackingFile.create(daemon, "ok.memory", 4 * PAGE)
    with pytest.raises(FuseError, match="already exists"):
        BackingFile.create(daemon, "ok.memory", 4 * PAGE)
    with pytest.raises(FuseError, match="no backing file"):
        BackingFile(daemon, "nope", 4 * PAGE).capture_done(True)
    with pytest.raises(OSError):
        os.truncate(f.path, 8 * PAGE)  # guest RAM files never change size
    f.remove()


def test_lazy_disk_written_by_debugfs_commits_only_written_blocks(
    history: History, daemon: BackingDaemon
) -> None:
    """A raw ext4 disk as a backing file: debugfs -w writes a file into it with pwrite (QEMU's
    path for raw disks), the dirty set names those blocks, and the commit is a valid ext4."""
    repo = history.repo
    size = history.disk.stat().st_size
    disk = BackingFile.create(daemon, "vm.disk", size,
                              {"repo": str(repo.root), "commit": history.second, "image": "disk"})
    try:
        src = history.dir / "new.txt"
        src.write_bytes(b"written inside the lazily restored disk\n" * 100)
        subprocess.run(["debugfs", "-w", "-R", f"write {src} new.txt", str(disk.path)],
                       check=True, capture_output=True)
        dirty = disk.dirty_pages()
        assert dirty and len(dirty) < size // PAGE // 10, dirty  # a few blocks, not the disk
        assert disk.stats()["base_bytes_read"] < size  # debugfs read only what it needed
        twin, captured = disk.capture()
        assert captured == dirty
        cid = repo.snapshot({"disk": twin.path, "memory": history.memory2}, message="disk write",
                            dirty={"disk": captured})
        disk.capture_done(True)
        out = history.dir / "disk-out.img"
        repo.export_image(cid, "disk", out)
        fsck = subprocess.run(["e2fsck", "-fn", str(out)], check=False, capture_output=True,
                              text=True)
        assert fsck.returncode == 0, fsck.stdout
        got = subprocess.run(["debugfs", "-R", "cat /new.txt", str(out)], check=True,
                             capture_output=True).stdout
        assert got == src.read_bytes()
        old = subprocess.run(["debugfs", "-R", "cat /hello.txt", str(out)], check=True,
                             capture_output=True).stdout
        assert old == history.files["hello.txt"]
    finally:
        disk.remove()


def test_idle_daemon_exits_and_next_use_starts_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    monkeypatch.setenv("VERS_FUSE_IDLE_EXIT", "1")
    daemon = BackingDaemon(tmp_path / "fuse-state")
    f = BackingFile.create(daemon, "a.memory", 4 * PAGE)
    time.sleep(2.5)
    assert daemon.alive()  # a file exists: never idle
    f.remove()
    deadline = time.monotonic() + 15
    while is_mounted(daemon.mountpoint) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not is_mounted(daemon.mountpoint)
    g = BackingFile.create(daemon, "b.memory", 4 * PAGE)
    assert g.stats()["size"] == 4 * PAGE
    g.remove()
    daemon.shutdown()


def test_stuck_daemon_is_an_error_not_a_hang(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import vers.vmm.memory.fuse as backing_mod

    monkeypatch.setattr(backing_mod, "HEALTH_TIMEOUT", 1.0)
    daemon = BackingDaemon(tmp_path / "fuse-state")
    f = BackingFile.create(daemon, "vm.memory", 16 * PAGE)
    pid = daemon.request("ping")["pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        with pytest.raises(FuseError, match="did not answer"):
            f.dirty_pages()
    finally:
        os.kill(pid, signal.SIGCONT)
    assert f.dirty_pages() is None  # it answers again once continued
    f.remove()
    daemon.shutdown()
