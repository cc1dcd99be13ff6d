"""A real guest under QEMU (TCG here): commit, branch and restore keep processes and files.

All tests of this module share one booted guest (``booted``) that runs a counter process; the
tests run in file order and build on each other's commits.
"""

from __future__ import annotations

import filecmp
import re
import time
from pathlib import Path
from typing import Any

import pytest

from vers.repo import Repo
from vers.vmm.boot import RunOptions, restore_commit, run_vm
from vers.vmm.branch import branch_vm
from vers.vmm.commit import commit_vm
from vers.vmm.control import list_vms, resume_vm, vm_state
from vers.vmm.machine import pid_alive
from vers.vmm.memory import load_backing
from vers.vmm.state import registry
from vers.vmm.teardown import kill_vms
from vers.vmm.tsc import host_tsc_khz

from .conftest import counter, gexec, vers, wait_counter_above

pytestmark = pytest.mark.vm
PAGES_256M = 256 * 1024 * 1024 // 4096


def test_exec_relays_stdout_stderr_and_exit_code(vmrepo: Repo, booted: Any) -> None:
    p = vers(vmrepo.root, "exec", booted.id, "--", "sh", "-c", "echo out; echo err >&2; exit 7",
             check=False)
    assert (p.returncode, p.stdout, p.stderr) == (7, "out\n", "err\n")
    p = vers(vmrepo.root, "exec", "base", "--", "cat", "/etc/vers-guest")
    assert p.stdout.startswith("default vers guest")


def test_commit_keeps_the_counter_running_and_stores_only_changes(vmrepo: Repo,
                                                                  booted: Any) -> None:
    gexec(booted, "echo committed-file > /root/before-commit; sync")
    before = counter(booted)
    cid1, _tm1 = commit_vm(vmrepo, booted.id, "first")
    assert vmrepo.rev_parse("HEAD") == cid1
    assert wait_counter_above(booted, before + 5) > before + 5  # still counting after resume
    c = vmrepo.get_commit(cid1)
    assert {"memory", "disk", "devstate", "kernel", "initrd"} <= set(c.images)
    assert c.config["vm"]["memory"] == 256 * 1024 * 1024 and c.config["vm"]["vcpus"] == 1
    assert f"tsc_early_khz={host_tsc_khz()}" in c.config["vm"]["cmdline"]
    cid2, tm2 = commit_vm(vmrepo, booted.id, "second")
    assert vmrepo.get_commit(cid2).parents == [cid1]
    dirty = tm2.extra["memory_dirty_pages"]
    assert dirty is not None and 0 < dirty < PAGES_256M // 10, tm2.extra
    assert vm_state(registry(vmrepo).resolve(booted.id)) == "running"


def test_commit_pause_leaves_vm_paused_and_resume_continues(vmrepo: Repo, booted: Any) -> None:
    _cid, _ = commit_vm(vmrepo, booted.id, "paused", stay_paused=True)
    rec = registry(vmrepo).resolve(booted.id)
    assert vm_state(rec) == "paused"
    resume_vm(vmrepo, booted.id)
    assert vm_state(rec) == "running"
    now = counter(booted)
    assert wait_counter_above(booted, now) > now


def test_branch_child_continues_and_files_are_isolated(vmrepo: Repo, booted: Any) -> None:
    gexec(booted, "echo shared > /root/before-branch; sync")
    at_branch = counter(booted)
    children, _tm = branch_vm(vmrepo, booted.id, count=1, name="kid")
    (child,) = children
    assert child.name == "kid" and pid_alive(child.runtime.pid, child.id)
    assert gexec(child, "cat /root/before-branch") == "shared\n"
    assert gexec(child, "cat /root/before-commit") == "committed-file\n"
    got = counter(child)
    assert got >= at_branch  # the same process, continuing from where the parent was
    assert wait_counter_above(child, got) > got
    assert wait_counter_above(booted, at_branch) > at_branch  # parent keeps running too
    gexec(child, "echo child > /root/child-only; sync")
    gexec(booted, "echo parent > /root/parent-only; sync")
    assert "parent-only" not in gexec(child, "ls /root")
    assert "child-only" not in gexec(booted, "ls /root")
    # and on the disk itself, not just in the page cache
    gexec(child, "sync; echo 3 > /proc/sys/vm/drop_caches")
    assert gexec(child, "cat /root/child-only") == "child\n"
    assert gexec(child, "test -e /root/parent-only || echo absent") == "absent\n"


def test_branch_count_gives_independent_children(vmrepo: Repo, booted: Any) -> None:
    children, _ = branch_vm(vmrepo, booted.id, count=2)
    a, b = children
    gexec(a, "echo a > /tmp/who")
    gexec(b, "echo b > /tmp/who")
    assert gexec(a, "cat /tmp/who") == "a\n" and gexec(b, "cat /tmp/who") == "b\n"
    kill_vms(vmrepo, [a.id, b.id])
    assert not pid_alive(a.runtime.pid) and not pid_alive(b.runtime.pid)


def test_child_commit_is_incremental(vmrepo: Repo, booted: Any) -> None:
    child = registry(vmrepo).resolve("kid")
    cid, tm = commit_vm(vmrepo, "kid", "from the child", branch="kid")  # main stays as it is
    assert tm.extra["memory_dirty_pages"] is not None
    assert vmrepo.get_commit(cid).parents[0] == child.base_commit


def test_restore_twice_gives_identical_memory_and_a_running_counter(
        vmrepo: Repo, booted: Any, tmp_path: Path) -> None:
    at_commit = counter(booted)
    cid, _ = commit_vm(vmrepo, booted.id, "to restore")
    r1 = restore_commit(vmrepo, cid, paused=True)
    r2 = restore_commit(vmrepo, cid, paused=True)
    m1, m2 = load_backing(r1.memory).path, load_backing(r2.memory).path
    assert filecmp.cmp(m1, m2, shallow=False)
    vmrepo.export_image(cid, "memory", tmp_path / "committed.mem")
    assert filecmp.cmp(m1, tmp_path / "committed.mem", shallow=False)
    for r in (r1, r2):
        resume_vm(vmrepo, r.id)
        got = counter(r)
        assert got >= at_commit
        assert wait_counter_above(r, got) > got
        assert gexec(r, "cat /root/before-branch") == "shared\n"
    # a commit of a restored VM stores only what it changed since the commit it came from
    cid2, tm = commit_vm(vmrepo, r1.id, "after restore")
    assert vmrepo.get_commit(cid2).parents[0] == cid
    assert 0 < tm.extra["memory_dirty_pages"] < PAGES_256M // 10
    # r2 is based on cid too, but the branch has moved on to cid2: its commit keeps its own
    # lineage first (so it is still incremental) and the branch tip second, and fast-forwards
    # (asked for with merge; without it the commit is refused)
    cid3, tm3 = commit_vm(vmrepo, r2.id, "second VM on the same branch", merge=True)
    assert vmrepo.get_commit(cid3).parents == [cid, cid2]
    assert vmrepo.rev_parse("HEAD") == cid3
    assert 0 < tm3.extra["memory_dirty_pages"] < PAGES_256M // 10
    kill_vms(vmrepo, [r1.id, r2.id])


def test_checkout_and_ps_and_status_cli(vmrepo: Repo, booted: Any) -> None:
    head = vmrepo.rev_parse("HEAD")
    p = vers(vmrepo.root, "checkout", head)
    vid = p.stdout.strip()
    ps = vers(vmrepo.root, "ps").stdout
    assert any(line.startswith("* " + vid) for line in ps.splitlines()), ps
    assert vid in vers(vmrepo.root, "ps", "-q").stdout.split()
    st = vers(vmrepo.root, "status").stdout
    assert vid in st and '"state": "running"' in st
    assert vers(vmrepo.root, "exec", vid, "--", "cat", "/root/before-commit").stdout == \
        "committed-file\n"
    assert "vers-guest: ready" in vers(vmrepo.root, "console", booted.id).stdout
    vers(vmrepo.root, "pause", vid)
    assert '"state": "paused"' in vers(vmrepo.root, "status", vid).stdout
    vers(vmrepo.root, "resume", vid)
    cid = vers(vmrepo.root, "commit", "-m", "cli commit").stdout.strip()
    assert vmrepo.rev_parse("HEAD") == cid and len(cid) == 64
    vers(vmrepo.root, "kill", vid)
    assert vid not in vers(vmrepo.root, "ps", "-q").stdout.split()


def test_unknown_vm_and_commit_are_clear_errors(vmrepo: Repo, booted: Any) -> None:
    p = vers(vmrepo.root, "exec", "no-such-vm", "--", "true", check=False)
    assert p.returncode != 0 and "no VM 'no-such-vm'" in p.stderr
    p = vers(vmrepo.root, "run-commit", "deadbeef", check=False)
    assert p.returncode != 0 and "deadbeef" in p.stderr
    p = vers(vmrepo.root, "kill", "nothing-here", check=False)
    assert p.returncode != 0 and "no VM" in p.stderr
    p = vers(vmrepo.root, "branch", "neither", check=False)
    assert p.returncode != 0 and "neither a VM nor a commit" in p.stderr


def test_qemu_missing_is_a_clear_error(vmrepo: Repo) -> None:
    before = vers(vmrepo.root, "ps", "-q").stdout
    p = vers(vmrepo.root, "run", env={"VERS_QEMU": "/nonexistent/qemu"}, check=False)
    assert p.returncode != 0 and "QEMU not found" in p.stderr
    assert vers(vmrepo.root, "ps", "-q").stdout == before


def test_guest_that_never_boots_times_out_with_serial_tail(vmrepo: Repo) -> None:
    # rdinit=/bin/cat: the kernel boots, then init blocks forever reading the console.
    opts = RunOptions(cmdline="console=ttyS0 tsc_early_khz=2000000 lpj=4000000 "
                                        "rdinit=/bin/cat", boot_timeout=8, make_current=False)
    before = {s.id for s in list_vms(vmrepo)}
    with pytest.raises(Exception) as info:
        run_vm(vmrepo, opts)
    msg = str(info.value)
    assert "guest did not boot" in msg and "command: " in msg and "-M microvm" in msg
    assert "last lines of" in msg and "serial.log" in msg
    assert re.search(r"\[\s*\d+\.\d+\] ", msg), msg  # kernel log lines from the serial console
    assert {s.id for s in list_vms(vmrepo)} == before  # nothing left behind


def test_orphaned_qemu_is_listed_and_killed(vmrepo: Repo, booted: Any) -> None:
    children, _ = branch_vm(vmrepo, booted.id)
    child = children[0]
    import shutil

    shutil.rmtree(child.vm_dir)  # vers state gone, QEMU still running
    rows = {s.id: s for s in list_vms(vmrepo)}
    assert rows[child.id].state == "orphan" and rows[child.id].pid == child.runtime.pid
    ram = load_backing(child.memory).path
    vers(vmrepo.root, "kill", child.id)
    assert not pid_alive(child.runtime.pid)
    assert child.id not in {s.id for s in list_vms(vmrepo)}
    assert not ram.exists(), "the orphan's guest RAM file outlived it"


def test_vm_killed_during_commit_leaves_no_partial_commit(vmrepo: Repo, booted: Any,
                                                          tmp_path: Path) -> None:
    """SIGKILL the QEMU of a VM while `vers commit` runs on it: refs stay consistent."""
    import os
    import signal
    import subprocess

    base, _ = commit_vm(vmrepo, booted.id, "base of the kill test", merge=True)
    for delay in (0.0, 0.4):
        vid = restore_commit(vmrepo, base).id
        rec = registry(vmrepo).resolve(vid)
        head = vmrepo.rev_parse("HEAD")
        proc = subprocess.Popen(["vers", "commit", vid, "-m", "doomed"], cwd=vmrepo.root,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(delay)
        os.kill(rec.runtime.pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=60)
        now = vmrepo.rev_parse("HEAD")
        if proc.returncode == 0:  # it finished before the kill: then it is a whole commit
            assert now == out.strip()
            c = vmrepo.get_commit(now)
            assert c.parents[0] == head
            for name in c.images:
                vmrepo.open_image(now, name).pread(0, 4096)
        else:
            assert now == head, err
        vmrepo.export_image(head, "memory", tmp_path / "head.mem")
        assert [x.id for x in vmrepo.log(head)]  # history still readable
        kill_vms(vmrepo, [vid])
        fsck = vers(vmrepo.root, "fsck", check=False)
        assert fsck.returncode == 0, fsck.stdout + fsck.stderr
