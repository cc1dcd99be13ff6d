"""The same guest tests with guest RAM on the FUSE backing (the lazily-read, write-tracking
memory file) instead of /dev/shm: the driver must not care which backing it talks to."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

from vers.repo import Repo
from vers.vmm.boot import RunOptions, restore_commit, run_vm
from vers.vmm.branch import branch_vm
from vers.vmm.commit import commit_vm
from vers.vmm.control import list_vms, status
from vers.vmm.machine import pid_alive
from vers.vmm.state import registry
from vers.vmm.teardown import kill_vms

from .conftest import COUNTER, counter, gexec, wait_counter_above
from .test_vm import *  # the same tests, collected again for this backing

MEMORY_BACKING = "fuse"
pytestmark = [pytest.mark.vm, pytest.mark.fuse,
              pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="no /dev/fuse")]


def test_restore_reads_the_disk_lazily_and_releases_its_base(vmrepo: Repo, booted: Any) -> None:
    """On the FUSE backing, a restored VM's disk overlay sits on a lazily-read file of the commit's
    disk, not on an export: nothing is copied up front. The base goes when no VM needs it."""
    gexec(booted, "echo lazy > /root/lazy-disk; sync")
    cid, _ = commit_vm(vmrepo, booted.id, "lazy disk")
    rec = restore_commit(vmrepo, cid)
    try:
        base = rec.disks["disk"].chain[0]
        assert "/mnt/disk-" in base, base
        assert not list(registry(vmrepo).layers.glob(f"{cid}-*.raw"))
        assert gexec(rec, "cat /root/lazy-disk") == "lazy\n"
        # every block of the disk read through qcow2 -> the lazy base -> the store
        assert gexec(rec, "dd if=/dev/vda of=/dev/null bs=1M 2>/dev/null; echo $?") == "0\n"
        # the committing VM's chain was merged onto the same base; its next commit moves it on
        gexec(booted, "echo more > /root/lazy-more; sync")
        commit_vm(vmrepo, booted.id, "moves on")
        assert os.path.exists(base)  # the restored VM still reads it
    finally:
        kill_vms(vmrepo, [rec.id])
    # the daemon drops the file at once; the kernel forgets its name when it processes the
    # (asynchronous) invalidation
    deadline = time.monotonic() + 10
    while os.path.exists(base) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not os.path.exists(base)


def test_standby_child_is_adopted_by_branch_and_kept_fresh(vmrepo: Repo) -> None:
    """`vers run --standby`: a child QEMU waits, hidden, for the next branch; a commit (which
    moves the disk chain) replaces it; the branch adopts it as the child, which continues the
    parent's processes; the parent, which branched last, gets a new one (one per VM tree: the
    child inherits --standby but keeps none until it branches itself); kill removes them."""
    reg = registry(vmrepo)
    rec = run_vm(vmrepo, RunOptions(name="sb", standby=True, make_current=False))
    standbys = []
    try:
        gexec(rec, COUNTER)
        rec = reg.resolve("sb")
        first = reg.get(rec.standby_child or "")
        assert (first is not None and first.role == "standby"
                and pid_alive(first.runtime.pid, first.id))
        assert first.id not in {s.id for s in list_vms(vmrepo)}  # not in `vers ps`
        assert reg.find(first.id) is None  # nor a name commands accept
        assert status(vmrepo, "sb")["standby_child"] == first.id

        commit_vm(vmrepo, "sb", "moves the disk chain")
        rec = reg.resolve("sb")
        assert rec.standby_child not in (None, first.id)
        assert not pid_alive(first.runtime.pid, first.id) and reg.get(first.id) is None
        second = rec.standby_child

        gexec(rec, "echo before > /root/sb-file; sync")
        at_branch = counter(rec)
        children, tm = branch_vm(vmrepo, "sb", name="sbkid")
        (child,) = children
        assert tm.extra["standby_child"] and child.id == second and child.name == "sbkid"
        assert reg.find("sbkid") is not None and child.id in {s.id for s in list_vms(vmrepo)}
        assert gexec(child, "cat /root/sb-file") == "before\n"
        got = counter(child)
        assert got >= at_branch and wait_counter_above(child, got) > got
        gexec(child, "echo kid > /root/kid-only; sync")
        assert gexec(rec, "test -e /root/kid-only || echo absent") == "absent\n"

        rec, child = reg.resolve("sb"), reg.resolve("sbkid")
        assert child.standby and rec.standby_child and child.standby_child is None
        standbys = [reg.get(rec.standby_child)]
        assert all(s is not None and pid_alive(s.runtime.pid, s.id) for s in standbys)
    finally:
        kill_vms(vmrepo, [v for v in ("sbkid", "sb") if reg.find(v)])
    for s in standbys:
        assert s is not None and not pid_alive(s.runtime.pid, s.id) and reg.get(s.id) is None


def test_unclaimed_standby_shows_as_orphan_and_can_be_killed(vmrepo: Repo) -> None:
    """A standby child whose parent no longer names it (state lost half-way) is not hidden."""
    reg = registry(vmrepo)
    rec = run_vm(vmrepo, RunOptions(name="sb2", standby=True, make_current=False))
    try:
        rec = reg.resolve("sb2")
        sb = reg.get(rec.standby_child or "")
        assert sb is not None and pid_alive(sb.runtime.pid, sb.id)
        rec.standby_child = None
        reg.save(rec)
        rows = {r.id: r for r in list_vms(vmrepo)}
        assert rows[sb.id].state == "orphan"
        assert kill_vms(vmrepo, [sb.id]) == [sb.id]
        assert not pid_alive(sb.runtime.pid, sb.id) and reg.get(sb.id) is None
    finally:
        kill_vms(vmrepo, ["sb2"])
