"""The FUSE mount that holds the RAM of every VM of a user: no repository's command may detach
it, a daemon health check never detaches a live one, and a lost one is reported, never replaced
by a silent plain file."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.vmm.conftest import vers, vm_repo
from vers.errors import FuseError
from vers.fuse import mount as mnt
from vers.repo import Repo
from vers.vmm.boot import RunOptions, run_vm
from vers.vmm.commit import commit_vm
from vers.vmm.memory.fuse import BackingDaemon

pytestmark = [pytest.mark.vm, pytest.mark.fuse,
              pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="no /dev/fuse")]


@pytest.fixture
def own_daemon(monkeypatch: pytest.MonkeyPatch) -> Iterator[BackingDaemon]:
    """A backing daemon of this test alone: the test breaks its mount on purpose."""
    state = Path(tempfile.mkdtemp(prefix="vers-fuse-t", dir="/dev/shm"))
    monkeypatch.setenv("VERS_FUSE_DIR", str(state))
    daemon = BackingDaemon(state)
    try:
        yield daemon
    finally:
        daemon.shutdown()
        if mnt.is_mounted(daemon.mountpoint):
            mnt.detach(daemon.mountpoint, lazy=True)
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture
def repos(tmp_path: Path, own_daemon: BackingDaemon) -> Iterator[tuple[Repo, Repo]]:
    with vm_repo(tmp_path / "a", "fuse") as a, vm_repo(tmp_path / "b", "fuse") as b:
        yield a, b


def test_umount_refuses_what_this_repository_did_not_mount(
        repos: tuple[Repo, Repo], own_daemon: BackingDaemon, tmp_path: Path) -> None:
    a, b = repos
    rec = run_vm(a, RunOptions(name="alpha", memory=128 << 20, standby=False))
    p = vers(Path(b.root), "umount", str(own_daemon.mountpoint), check=False)
    assert p.returncode == 2 and "not a `vers mount` of this repository" in p.stderr, p.stderr
    assert mnt.is_mounted(own_daemon.mountpoint)
    commit_vm(a, rec.id, "still committable")
    # this repository's own inspection mount, busy: refused without --lazy
    point = tmp_path / "inspect"
    vers(Path(b.root), "mount", str(point))
    fd = os.open(point / "commits", os.O_RDONLY)  # an open directory: busy
    try:
        p = vers(Path(b.root), "umount", str(point), check=False)
        assert p.returncode == 5 and "--lazy" in p.stderr, p.stderr
        assert mnt.is_mounted(point)
    finally:
        os.close(fd)
    vers(Path(b.root), "umount", str(point))
    assert not mnt.is_mounted(point)


def test_health_check_never_detaches_a_live_mount(own_daemon: BackingDaemon) -> None:
    """A daemon whose control socket cannot be reached still serves its mount: ensure_running
    must refuse, not detach the mount and start a second daemon."""
    own_daemon.ensure_running()
    hidden = own_daemon.sock_path.with_name("ctl.sock.hidden")
    os.rename(own_daemon.sock_path, hidden)
    try:
        with pytest.raises(FuseError, match="no backing daemon answers"):
            own_daemon.ensure_running()
        assert mnt.is_mounted(own_daemon.mountpoint)
    finally:
        os.rename(hidden, own_daemon.sock_path)


def test_lost_backing_is_reported_and_never_a_plain_file(
        repos: tuple[Repo, Repo], own_daemon: BackingDaemon) -> None:
    a, _ = repos
    rec = run_vm(a, RunOptions(name="alpha", memory=128 << 20, standby=False))
    subprocess.run(["fusermount3", "-u", "-z", str(own_daemon.mountpoint)], check=True)
    p = vers(Path(a.root), "ps", check=False)
    assert "lost-ram" in p.stdout and "detached" in p.stderr and "vers kill" in p.stderr, p
    p = vers(Path(a.root), "commit", rec.id, check=False)
    assert p.returncode == 6 and "detached" in p.stderr, p.stderr
    p = vers(Path(a.root), "run", "--memory", "128M", "--no-standby", check=False)
    assert p.returncode == 6 and "detached" in p.stderr, p.stderr
    assert not list(own_daemon.mountpoint.iterdir())  # no RAM put in the bare directory
    vers(Path(a.root), "kill", rec.id)
    # nothing uses the old daemon any more: the next run starts a fresh one and its mount
    rec2 = run_vm(a, RunOptions(name="beta", memory=128 << 20, standby=False))
    assert mnt.is_mounted(own_daemon.mountpoint)
    commit_vm(a, rec2.id, "on a fresh daemon")
