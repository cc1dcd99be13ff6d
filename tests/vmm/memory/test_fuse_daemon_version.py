"""A backing daemon left running by another version of vers: replaced when idle, reported (and
left serving its VMs) when busy.

The "old" daemon is the real daemon started by this module's ``__main__``, which makes it answer
with the protocol number before the current one, as a daemon of an earlier vers does."""

from __future__ import annotations

import os
import sys

import pytest

from tests.fuse.conftest import PAGE, needs_fuse
from vers.errors import EXIT_VM, FuseError
from vers.fuse import mount as mnt
from vers.vmm.memory import daemon as daemon_module
from vers.vmm.memory.fuse import DAEMON_PROTOCOL, BackingDaemon, BackingFile

pytestmark = [pytest.mark.fuse, needs_fuse]


def start_old_daemon(d: BackingDaemon) -> int:
    d.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    d.mountpoint.mkdir(exist_ok=True)
    return mnt.spawn_daemon(__name__, [os.fspath(d.state_dir), os.fspath(d.mountpoint)],
                            d.log_path)



def test_idle_daemon_of_another_version_is_replaced(daemon: BackingDaemon) -> None:
    old_pid = start_old_daemon(daemon)
    assert daemon.request("ping")["protocol"] == DAEMON_PROTOCOL - 1
    f = BackingFile.create(daemon, "vm1.memory", 16 * PAGE)
    pong = daemon.request("ping")
    assert pong["protocol"] == DAEMON_PROTOCOL and pong["pid"] != old_pid
    with pytest.raises(ProcessLookupError):
        os.kill(old_pid, 0)
    assert f.path.stat().st_size == 16 * PAGE  # served by the new daemon's mount


def test_busy_daemon_of_another_version_is_reported_and_keeps_serving(
    daemon: BackingDaemon,
) -> None:
    old_pid = start_old_daemon(daemon)
    daemon.request("create", name="vm7.memory", size=16 * PAGE, base=None)
    with open(daemon.mountpoint / "vm7.memory", "r+b") as fh:
        fh.write(b"still here")
    with pytest.raises(FuseError) as err:
        BackingFile.create(daemon, "vm8.memory", 16 * PAGE)
    text = str(err.value)
    assert err.value.exit_code == EXIT_VM
    assert "another version of vers" in text and "vm7" in text and "vers kill" in text
    assert f"protocol {DAEMON_PROTOCOL - 1}" in text and str(old_pid) in text
    # The old daemon still serves its VM's file, and nothing new was made in it.
    assert daemon.request("ping")["pid"] == old_pid
    assert daemon.request("list")["files"] == ["vm7.memory"]
    with open(daemon.mountpoint / "vm7.memory", "rb") as fh:
        assert fh.read(10) == b"still here"
    daemon.request("remove", name="vm7.memory")


if __name__ == "__main__":
    daemon_module.DAEMON_PROTOCOL = DAEMON_PROTOCOL - 1
    sys.exit(daemon_module.main())
