"""The same guest tests with guest RAM on the FUSE backing (issue #4's lazily-read, write-tracking
memory file) instead of /dev/shm: the driver must not care which backing it talks to."""

from __future__ import annotations

import os

import pytest

from .test_vm import *  # the same tests, collected again for this backing

MEMORY_BACKING = "fuse"
pytestmark = [pytest.mark.vm, pytest.mark.fuse,
              pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="no /dev/fuse")]


def test_restore_reads_the_disk_lazily_and_releases_its_base(vmrepo: Repo, booted: Any) -> None:
    """On the FUSE backing, a restored VM's disk overlay sits on a lazily-read file of the commit's
    disk, not on an export: nothing is copied up front. The base goes when no VM needs it."""
    from vers.vmm import lifecycle, snapshot
    from vers.vmm.lifecycle import registry

    gexec(booted, "echo lazy > /root/lazy-disk; sync")
    cid, _ = snapshot.commit_vm(vmrepo, booted.id, "lazy disk")
    rec = lifecycle.restore_commit(vmrepo, cid)
    try:
        base = rec.disks["disk"]["chain"][0]
        assert "/mnt/disk-" in base, base
        assert not list(registry(vmrepo).layers.glob(f"{cid}-*.raw"))
        assert gexec(rec, "cat /root/lazy-disk") == "lazy\n"
        # every block of the disk read through qcow2 -> the lazy base -> the store
        assert gexec(rec, "dd if=/dev/vda of=/dev/null bs=1M 2>/dev/null; echo $?") == "0\n"
    finally:
        lifecycle.kill_vms(vmrepo, [rec.id])
    assert not os.path.exists(base)
