"""Bounded disk chains (vers.vmm.merge) and user disks with a backing chain of their own.

Every test writes a known pattern into the guest's disk before each commit and reads it back:
from the running VM, from commits restored out of the middle of the history, through
``vers diff --files``, and after QEMU or the committing command was killed mid-merge.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from vers import images
from vers.repo import Repo
from vers.testing import vers_env
from vers.vmm.boot import RunOptions, restore_commit, run_vm
from vers.vmm.branch import branch_vm
from vers.vmm.commit import commit_vm
from vers.vmm.state import registry
from vers.vmm.teardown import kill_vms

from .conftest import gexec, vers

pytestmark = pytest.mark.vm
MEMORY_BACKING = "fuse"
#: a merged chain is the commit's disk, an empty shim and the top; one more right after a commit
CHAIN_BOUND = 4


def write_pattern(rec: Any, i: int) -> None:
    """Commit ``i`` adds /root/c<i> and rewrites /root/latest (``sync``: the disk, not the
    guest's page cache, must hold them when the commit freezes it)."""
    gexec(rec, f"echo pattern-{i} > /root/c{i}; echo {i} > /root/latest; sync")


def check_pattern(rec: Any, upto: int) -> None:
    out = gexec(rec, "cat /root/latest; ls /root | grep -c '^c' ; cat /root/c*")
    lines = out.split()
    assert lines[0] == str(upto) and lines[1] == str(upto), out
    assert sorted(lines[2:]) == sorted(f"pattern-{i}" for i in range(1, upto + 1))


def disk_files_open(pid: int) -> list[str]:
    """The disk layers and bases QEMU holds open."""
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.endswith((".qcow2", ".raw")) or "/mnt/disk-" in target:
            out.append(target)
    return out


def chain_of(repo: Repo, key: str) -> list[str]:
    return registry(repo).resolve(key).disks["disk"].chain


@pytest.mark.slow
def test_sixty_commits_keep_the_chain_short_and_every_commit_exact(vmrepo: Repo) -> None:
    rec = run_vm(vmrepo, RunOptions(name="chains60"))
    cids: dict[int, str] = {}
    fds_after: dict[int, int] = {}
    for i in range(1, 61):
        write_pattern(rec, i)
        cids[i], _ = commit_vm(vmrepo, "chains60")
        rec = registry(vmrepo).resolve("chains60")
        assert len(rec.disks["disk"].chain) <= CHAIN_BOUND, (i, rec.disks["disk"].chain)
        if i in (5, 60):
            fds_after[i] = len(disk_files_open(rec.runtime.pid))
    assert fds_after[60] <= fds_after[5] <= CHAIN_BOUND + 1, fds_after
    layers = registry(vmrepo).layers
    assert len([p for p in layers.iterdir() if p.suffix == ".qcow2"]) < 12, list(layers.iterdir())
    check_pattern(rec, 60)
    for i in (1, 30, 59):
        r = restore_commit(vmrepo, cids[i])
        check_pattern(r, i)
        kill_vms(vmrepo, [r.id])
    diff = vers(vmrepo.root, "diff", cids[29], cids[30], "--files").stdout
    assert "/root/c30" in diff and "/root/latest" in diff, diff
    assert "/root/c29" not in diff, diff
    kill_vms(vmrepo, [rec.id])


def test_commits_merge_and_restore_from_the_middle(vmrepo: Repo) -> None:
    rec = run_vm(vmrepo, RunOptions(name="chains"))
    cids = {}
    for i in range(1, 7):
        write_pattern(rec, i)
        cids[i], _ = commit_vm(vmrepo, "chains")
        assert len(chain_of(vmrepo, "chains")) <= CHAIN_BOUND
    rec = registry(vmrepo).resolve("chains")
    assert rec.disks["disk"].committed == len(rec.disks["disk"].chain) - 1
    assert len(disk_files_open(rec.runtime.pid)) <= CHAIN_BOUND + 1
    r = restore_commit(vmrepo, cids[3])
    check_pattern(r, 3)
    kill_vms(vmrepo, [r.id])
    diff = vers(vmrepo.root, "diff", cids[4], cids[5], "--files").stdout
    assert "/root/c5" in diff and "/root/c4" not in diff, diff
    # a commit with nothing written in between changes no disk block
    _, tm = commit_vm(vmrepo, "chains")
    write_pattern(rec, 7)
    _, tm = commit_vm(vmrepo, "chains")
    assert 0 < tm.extra["disk_dirty_pages"]["disk"] < 200, tm.extra
    kill_vms(vmrepo, [rec.id])


def test_branch_child_reads_its_disk_while_the_parent_merges(vmrepo: Repo) -> None:
    rec = run_vm(vmrepo, RunOptions(name="golden"))
    write_pattern(rec, 1)
    commit_vm(vmrepo, "golden")
    gexec(rec, "dd if=/dev/urandom of=/root/blob bs=64k count=32 2>/dev/null; sync")
    digest = gexec(rec, "md5sum /root/blob").split()[0]
    branch_vm(vmrepo, "golden", name="kid")
    for i in range(2, 7):  # the parent's commits drop the layers the child still reads
        write_pattern(rec, i)
        commit_vm(vmrepo, "golden")
    kid = registry(vmrepo).resolve("kid")
    assert all(Path(p).exists() for p in kid.disks["disk"].chain), kid.disks["disk"].chain
    gexec(kid, "echo 3 > /proc/sys/vm/drop_caches")
    assert gexec(kid, "md5sum /root/blob").split()[0] == digest
    check_pattern(kid, 1)
    kill_vms(vmrepo, [rec.id])  # and after the parent is gone
    gexec(kid, "echo 3 > /proc/sys/vm/drop_caches")
    assert gexec(kid, "md5sum /root/blob").split()[0] == digest
    write_pattern(kid, 2)
    cid, _ = commit_vm(vmrepo, "kid", branch="kid-line")
    r = restore_commit(vmrepo, cid)
    check_pattern(r, 2)
    assert gexec(r, "md5sum /root/blob").split()[0] == digest
    kill_vms(vmrepo, [r.id, kid.id])


def test_branches_without_commits_keep_the_parent_chain_short(vmrepo: Repo) -> None:
    """Each branch freezes the parent's top for the children; a golden VM branched again and
    again streams those layers into its top, so its chain stays short, while every child still
    reads from disk (page cache dropped) what the parent had written when it was made, and a
    commit after the streams holds every write."""
    rec = run_vm(vmrepo, RunOptions(name="often"))
    write_pattern(rec, 1)
    commit_vm(vmrepo, "often")
    kids = []
    digests: list[str] = []
    for i in range(2, 8):
        gexec(rec, f"dd if=/dev/urandom of=/root/blob{i} bs=64k count=8 2>/dev/null; sync")
        digests.append(gexec(rec, f"md5sum /root/blob{i}").split()[0])
        write_pattern(rec, i)
        (kid,), _ = branch_vm(vmrepo, "often")
        kids.append((i, kid))
        assert len(chain_of(vmrepo, "often")) <= CHAIN_BOUND + 1, chain_of(vmrepo, "often")
    rec = registry(vmrepo).resolve("often")
    for who, upto in [(rec, 7), *((k, i) for i, k in kids[::2])]:
        gexec(who, "echo 3 > /proc/sys/vm/drop_caches")
        check_pattern(who, upto)
        sums = gexec(who, "md5sum /root/blob*").split()[::2]
        assert sums == digests[:upto - 1], (who.id, upto)
    write_pattern(rec, 8)
    cid, _ = commit_vm(vmrepo, "often")
    r = restore_commit(vmrepo, cid)
    gexec(r, "echo 3 > /proc/sys/vm/drop_caches")
    check_pattern(r, 8)
    assert gexec(r, "md5sum /root/blob*").split()[::2] == digests
    kill_vms(vmrepo, [r.id, rec.id, *(k.id for _, k in kids)])


def _commit_and_kill(repo: Repo, key: str, victim: str) -> str | None:
    """Run `vers commit` and, the moment the VM record names the new commit (the merge runs
    next), SIGKILL ``victim``: "qemu" or "vers". Returns the new commit if one was stored."""
    reg = registry(repo)
    rec = reg.resolve(key)
    before = rec.base_commit
    p = subprocess.Popen(["vers", "commit", key, "-m", "killed mid-merge"], cwd=repo.root,
                         env=vers_env(None), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and p.poll() is None:
        now = reg.get(rec.id)
        if now is not None and now.base_commit != before:
            os.kill(rec.runtime.pid if victim == "qemu" else p.pid, signal.SIGKILL)
            break
        time.sleep(0.001)
    p.communicate(timeout=120)
    after = reg.get(rec.id)
    return after.base_commit if after is not None and after.base_commit != before else None


def test_killed_mid_merge_leaves_right_data(vmrepo: Repo) -> None:
    rec = run_vm(vmrepo, RunOptions(name="victim"))
    for i in (1, 2):
        write_pattern(rec, i)
        commit_vm(vmrepo, "victim")
    # the command dies mid-merge: the VM goes on, its next commits are still exact
    write_pattern(rec, 3)
    assert _commit_and_kill(vmrepo, "victim", "vers") is not None
    for i in (4, 5):
        write_pattern(rec, i)
        cid, _ = commit_vm(vmrepo, "victim")
    assert len(chain_of(vmrepo, "victim")) <= CHAIN_BOUND
    r = restore_commit(vmrepo, cid)
    check_pattern(r, 5)
    kill_vms(vmrepo, [r.id])
    # QEMU dies mid-merge: the last commit restores right
    write_pattern(rec, 6)
    cid6 = _commit_and_kill(vmrepo, "victim", "qemu")
    assert cid6 is not None
    r = restore_commit(vmrepo, cid6)
    check_pattern(r, 6)
    kill_vms(vmrepo, [r.id, rec.id])


def test_user_disk_with_its_own_backing_file(vmrepo: Repo, tmp_path: Path) -> None:
    base = images.get(images.DEFAULT, build=True).disk
    top = tmp_path / "mine.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "raw",
                    str(top)], check=True)
    rec = run_vm(vmrepo, RunOptions(name="userdisk", disks=(str(top),)))
    write_pattern(rec, 1)
    cid1, _ = commit_vm(vmrepo, "userdisk")  # the first commit captures the whole visible disk
    write_pattern(rec, 2)
    cid2, _ = commit_vm(vmrepo, "userdisk")
    for cid, upto in ((cid1, 1), (cid2, 2)):
        r = restore_commit(vmrepo, cid)
        check_pattern(r, upto)
        assert gexec(r, "test -x /bin/busybox && echo ok").strip() == "ok"
        kill_vms(vmrepo, [r.id])
    kill_vms(vmrepo, [rec.id])
    assert top.exists() and base.exists()  # the user's files are never touched


def test_unusable_disks_are_refused_at_run(vmrepo: Repo, tmp_path: Path) -> None:
    gone = tmp_path / "gone.raw"
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(gone), "64M"], check=True)
    orphan = tmp_path / "orphan.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(gone), "-F", "raw",
                    str(orphan)], check=True)
    gone.unlink()
    vmdk = tmp_path / "disk.vmdk"
    subprocess.run(["qemu-img", "create", "-q", "-f", "vmdk", str(vmdk), "64M"], check=True)
    for disk, words in ((orphan, "gone.raw"), (vmdk, "vmdk")):
        p = vers(vmrepo.root, "run", "--disk", str(disk), check=False)
        assert p.returncode == 2, (p.returncode, p.stderr)
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and words in lines[0] and "Traceback" not in p.stderr, p.stderr
    assert not vers(vmrepo.root, "ps").stdout.strip().splitlines()[1:]
