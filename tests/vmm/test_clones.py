"""Clones are distinct machines: after a branch or a restore the guest's clock is the host's, its
random generator was reseeded with host entropy, and /run/vers/generation says which VM and how
many forks/restores in, all before vers reports the VM running (no polling below)."""

from __future__ import annotations

import os
import re
import time

import pytest

from vers.repo import Repo
from vers.vmm.boot import RunOptions, restore_commit, run_vm
from vers.vmm.branch import branch_vm
from vers.vmm.commit import commit_vm
from vers.vmm.state import VMRecord

from .conftest import gexec, vers

MEMORY_BACKING = "fuse" if os.path.exists("/dev/fuse") else "shm"
pytestmark = [pytest.mark.vm]


@pytest.fixture(scope="module")
def guest(vmrepo: Repo) -> VMRecord:
    return run_vm(vmrepo, RunOptions(name="orig"))


def generation(rec: VMRecord) -> tuple[str, int]:
    vid, n = gexec(rec, "cat /run/vers/generation").split()
    return vid, int(n)


def clock_offset(rec: VMRecord) -> float:
    """Guest wall clock minus the host's, to the microsecond (busybox `date` shows seconds only;
    `adjtimex` shows the clock as the kernel keeps it); off by at most half an exec round trip."""
    t0 = time.time()
    out = gexec(rec, "adjtimex")
    t1 = time.time()
    fields = dict(re.findall(r"time\.(tv_sec|tv_usec):\s+(\d+)", out))
    return int(fields["tv_sec"]) + int(fields["tv_usec"]) / 1e6 - (t0 + t1) / 2


def test_restored_clock_is_the_hosts(vmrepo: Repo, guest: VMRecord) -> None:
    """Committed, then restored 6 s later: the guest's clock would be 6 s behind; it is the
    host's to a fraction of a second (set to the microsecond), and it keeps time (the TSC stays
    the guest's clocksource: a clock on jiffies fell ~5% behind under load)."""
    assert abs(clock_offset(guest)) < 0.5
    cid, _ = commit_vm(vmrepo, "orig", "clock")
    time.sleep(6)
    restored = restore_commit(vmrepo, cid)
    assert abs(clock_offset(restored)) < 0.5
    time.sleep(10)
    assert abs(clock_offset(restored)) < 0.5
    assert gexec(restored, "cat /sys/devices/system/clocksource/clocksource0/"
                           "current_clocksource") == "tsc\n"


def test_children_read_different_random_bytes(vmrepo: Repo, guest: VMRecord) -> None:
    out = vers(vmrepo.root, "branch", "--count", "3", "orig").stdout.split()
    assert len(out) == 3
    read = "head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'"
    children = [gexec_id(vmrepo, vid, read) for vid in out]
    parent = gexec(guest, read)
    assert len(set(children)) == 3 and parent not in children, (children, parent)


def gexec_id(vmrepo: Repo, vid: str, script: str) -> str:
    return vers(vmrepo.root, "exec", vid, "--", script).stdout


def test_generation_marker_counts_forks_and_restores(vmrepo: Repo, guest: VMRecord) -> None:
    assert generation(guest) == (guest.id, 0)
    (child,), tm = branch_vm(vmrepo, "orig")
    assert generation(child) == (child.id, 1)
    assert generation(guest) == (guest.id, 0)
    assert tm.extra["fresh_ms"] > 0 and "fresh" not in tm.phases  # outside the parent's pause
    cid, _ = commit_vm(vmrepo, child.id, "child")
    again = restore_commit(vmrepo, cid)
    assert generation(again) == (again.id, 2)


def test_an_agent_of_protocol_1_2_is_made_distinct_by_the_script(vmrepo: Repo, tmp_path) -> None:
    """A guest committed with an earlier agent (protocol 1.2: no FS "fresh") still gets its
    clock, entropy and generation marker, through the guest script."""
    import subprocess

    from vers.images.guestfs import AGENT_SOURCE_PATH
    from vers.vmm.agent import FRESH_MINOR, acquire, release

    src = re.sub(r"#define PROTO_MINOR \d+", "#define PROTO_MINOR 2",
                 AGENT_SOURCE_PATH.read_text())
    (tmp_path / "old.c").write_text(src)
    subprocess.run(["gcc", "-static", "-O2", "-std=c99", "-o", str(tmp_path / "old-agent"),
                    str(tmp_path / "old.c")], check=True)
    old = run_vm(vmrepo, RunOptions(name="old-agent"))
    vers(vmrepo.root, "cp", str(tmp_path / "old-agent"), f"{old.id}:/root/old-agent")
    gexec(old, "chmod +x /root/old-agent; pid=$(pidof vers-agent); "
               "setsid sh -c \"sleep 1; kill $pid; exec /root/old-agent\" "
               "</dev/null >/dev/null 2>&1 &")
    time.sleep(3)
    conn = acquire(old.runtime.agent_sock, 30)
    try:
        assert conn.minor == 2 < FRESH_MINOR
    finally:
        release(conn)
    children, _ = branch_vm(vmrepo, old.id, count=2)
    read = "head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'"
    assert len({gexec(c, read) for c in children}) == 2
    for c in children:
        assert generation(c) == (c.id, 1)
        assert abs(clock_offset(c)) < 0.5
