"""What an idle branch child costs the host: QEMU's translation buffer capped on its command
line, and the page cache of its RAM file given back once it has settled, without changing a
byte the guest reads (docs/vmm.md, Density)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench._procmem import breakdown, cached_pages, ram_path_of
from vers.errors import BadInput
from vers.repo import Repo
from vers.testing import run_vers
from vers.vmm.boot import RunOptions, run_vm
from vers.vmm.branch import branch_vm_unsettled
from vers.vmm.machine import TCG_TB_MIB, accel_arg
from vers.vmm.teardown import kill_vms

from .conftest import gexec

MEMORY_BACKING = "fuse"


def test_accel_carries_the_translation_buffer_size(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VERS_TCG_TB_MIB", raising=False)
    assert accel_arg("tcg") == (f"tcg,tb-size={TCG_TB_MIB}" if TCG_TB_MIB else "tcg")
    assert accel_arg("kvm") == "kvm"  # no translation buffer under KVM
    monkeypatch.setenv("VERS_TCG_TB_MIB", "8")
    assert accel_arg("tcg") == "tcg,tb-size=8"
    monkeypatch.setenv("VERS_TCG_TB_MIB", "0")
    assert accel_arg("tcg") == "tcg"  # QEMU's own default
    for bad in ("lots", "-4"):
        monkeypatch.setenv("VERS_TCG_TB_MIB", bad)
        with pytest.raises(BadInput, match="VERS_TCG_TB_MIB"):
            accel_arg("tcg")


def test_a_bad_translation_buffer_size_is_refused_before_anything_starts(
        tmp_path: Path) -> None:
    """`vers run` with a bad $VERS_TCG_TB_MIB: one line, exit 2, no VM and no QEMU."""
    assert run_vers(tmp_path, "init").returncode == 0
    res = run_vers(tmp_path, "run", "--accel", "tcg", timeout=60, env={"VERS_TCG_TB_MIB": "lots"})
    assert res.returncode == 2 and res.stderr.strip().splitlines() == [
        "vers: error: $VERS_TCG_TB_MIB must be a number of MiB, not 'lots'"], res.stderr
    assert "booting" not in res.stdout + res.stderr
    assert not (tmp_path / ".vers" / "vms").exists() or not any(
        p.name != "_layers" for p in (tmp_path / ".vers" / "vms").iterdir())


def _unmapped_kib(pid: int, ram: str | None) -> int:
    """KiB of ``ram`` (a QEMU's RAM file) in the page cache that the QEMU has not mapped."""
    b = breakdown(pid, ram)
    return b["ram_cached"] - b["ram_mapped"]


def _cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


@pytest.mark.vm
@pytest.mark.fuse
@pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="no /dev/fuse")
def test_children_run_with_the_cap_and_give_back_their_read_around(vmrepo: Repo) -> None:
    """Two children of a guest holding a 24 MiB file in its RAM: each runs with the capped
    translation buffer, holds in the page cache little more of its RAM file than it maps (the
    kernel's read-around of its first touches given back), and reads the file with the bytes
    the parent wrote, every page the child had not touched yet coming from the daemon."""
    parent = run_vm(vmrepo, RunOptions(name="dens", make_current=False))
    try:
        assert _cmdline(parent.runtime.pid or 0)[
            _cmdline(parent.runtime.pid or 0).index("-accel") + 1] == accel_arg("tcg")
        want = gexec(parent, "dd if=/dev/urandom of=/dev/shm/f bs=1M count=24 2>/dev/null;"
                             " md5sum /dev/shm/f").split()[0]
        kids, _, settle = branch_vm_unsettled(vmrepo, parent.id, count=2)
        try:
            rams = [ram_path_of(c.runtime.pid or 0) for c in kids]
            unmapped = [_unmapped_kib(c.runtime.pid or 0, r) for c, r in zip(kids, rams)]
            settle()
            for c, ram, was in zip(kids, rams, unmapped):
                pid = c.runtime.pid or 0
                argv = _cmdline(pid)
                assert argv[argv.index("-accel") + 1] == accel_arg("tcg")
                assert ram is not None
                now = _unmapped_kib(pid, ram)
                # the read-around of the child's start-up (tens of MiB) given back; a guest
                # still busy may have faulted a read-around or two (4 MiB each) since
                assert was > 16 * 1024 and now < was / 2, (was, now)
                before = cached_pages(ram)
                assert gexec(c, "md5sum /dev/shm/f").split()[0] == want
                assert cached_pages(ram) > before  # the file's pages were read in again
            assert gexec(parent, "md5sum /dev/shm/f").split()[0] == want
        finally:
            kill_vms(vmrepo, [c.id for c in kids])
    finally:
        kill_vms(vmrepo, [parent.id])
