"""File-consistent commits: the guest agent flushes and freezes the guest's file systems around the
capture, and a guest never stays frozen (the host thaws, its disconnect thaws, a timeout thaws).

The tests share one booted default guest and run in file order.
"""

from __future__ import annotations

import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from vers.images.guestfs import AGENT_SOURCE_PATH
from vers.repo import Repo
from vers.testing import vers_env
from vers.vmm.commit import commit_vm
from vers.vmm.control import vm_state
from vers.vmm.quiesce import FREEZE_TIMEOUT_MS, GuestFileSystems
from vers.vmm.state import registry

from .conftest import gexec, vers

pytestmark = pytest.mark.vm
#: a write that a frozen file system would hold up until the agent's timeout must finish sooner
PROMPT = FREEZE_TIMEOUT_MS / 1000 * 0.6


def _files(repo: Repo, a: str, b: str) -> list[str]:
    return vers(repo.root, "diff", "--files", a, b).stdout.splitlines()


def _timed_write(rec: Any, path: str) -> float:
    t0 = time.monotonic()
    gexec(rec, f"echo x > {path}", timeout=60)
    return time.monotonic() - t0


def test_a_tcg_guest_expedites_rcu_grace_periods(booted: Any) -> None:
    """Each file-system freeze waits for RCU grace periods, slow under TCG unless expedited."""
    if booted.spec.accel != "tcg":
        pytest.skip("only TCG guests are told to expedite them")
    assert gexec(booted, "cat /sys/kernel/rcu_expedited").strip() == "1"


def test_unsynced_writes_are_in_the_commit_as_added_and_modified(vmrepo: Repo,
                                                                 booted: Any) -> None:
    base, _ = commit_vm(vmrepo, booted.id, "base")
    gexec(booted, "echo hello > /root/fresh.txt")  # no sync: only in the guest's page cache
    added, tm = commit_vm(vmrepo, booted.id, "added")
    assert {"sync", "freeze", "thaw"} <= set(tm.phases), tm.phases
    assert tm.extra["frozen_filesystems"] == 1
    assert any(line.startswith("A") and line.split()[1] == "/root/fresh.txt"
               for line in _files(vmrepo, base, added)), _files(vmrepo, base, added)
    gexec(booted, "echo more >> /root/fresh.txt")
    modified, _ = commit_vm(vmrepo, booted.id, "modified")
    lines = _files(vmrepo, added, modified)
    assert any(line.startswith("M") and line.split()[1] == "/root/fresh.txt"
               for line in lines), lines
    assert not any(line.startswith(("D", "A")) for line in lines), lines


def test_without_sync_the_page_cache_is_not_in_the_commit(vmrepo: Repo, booted: Any) -> None:
    """What the default guards against: the same write, committed crash-consistently."""
    before = vmrepo.rev_parse("HEAD")
    gexec(booted, "echo lost > /root/unsynced.txt")
    p = vers(vmrepo.root, "commit", booted.id, "--no-sync", "-v")
    phases = [line for line in p.stderr.splitlines() if line.startswith("phases")]
    assert phases and "'sync'" not in phases[0] and "'freeze'" not in phases[0], p.stderr
    lines = _files(vmrepo, before, "HEAD")
    assert not any("/root/unsynced.txt" in line for line in lines), lines


def test_committed_disk_passes_e2fsck_and_debugfs_reads_it(vmrepo: Repo, booted: Any,
                                                           tmp_path: Path) -> None:
    gexec(booted, "i=0; while [ $i -lt 40 ]; do echo line-$i >> /root/log.txt; i=$((i+1)); done")
    vers(vmrepo.root, "commit", booted.id, "-m", "for fsck")
    disk = tmp_path / "disk.raw"
    vers(vmrepo.root, "export", "HEAD", "--disk", str(disk))
    fsck = subprocess.run(["e2fsck", "-fn", str(disk)], capture_output=True, text=True,
                          check=False)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    out = subprocess.run(["debugfs", "-R", "cat /root/log.txt", str(disk)], capture_output=True,
                         text=True, check=True)
    assert out.stdout.splitlines()[-1] == "line-39", out.stdout[-200:]
    assert "checksum" not in out.stderr, out.stderr


def test_agent_thaws_by_itself_when_the_host_does_not(vmrepo: Repo, booted: Any) -> None:
    fs = GuestFileSystems(booted.runtime.agent_sock)
    try:
        assert fs.freeze() == 1
        waited = _timed_write(booted, "/root/during-freeze.txt")  # held up until the timeout
        assert FREEZE_TIMEOUT_MS / 1000 * 0.8 <= waited < FREEZE_TIMEOUT_MS / 1000 + 20, waited
        assert fs.thaw() is False  # the agent had given up the freeze: the host learns it
    finally:
        fs.close()
    assert _timed_write(booted, "/root/after-freeze.txt") < PROMPT


_HOLD_FROZEN = """
import sys, time
from vers.vmm.quiesce import GuestFileSystems
fs = GuestFileSystems(sys.argv[1])
print(fs.freeze(), flush=True)
time.sleep(600)
"""


def test_a_killed_host_thaws_the_guest_at_once(vmrepo: Repo, booted: Any) -> None:
    """The freezing process dies (kill -9) without thawing: its connection's end thaws the
    guest, well before the agent's own timeout."""
    proc = subprocess.Popen([sys.executable, "-c", _HOLD_FROZEN, booted.runtime.agent_sock],
                            stdout=subprocess.PIPE, text=True, env=vers_env())
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "1"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert _timed_write(booted, "/root/after-kill.txt") < PROMPT


def test_killed_commits_leave_the_guest_running_and_thawed(vmrepo: Repo, booted: Any) -> None:
    rnd = random.Random(7)
    env = vers_env()
    for i in range(4):
        proc = subprocess.Popen(["vers", "commit", booted.id, "-m", f"killed {i}"],
                                cwd=vmrepo.root, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(rnd.uniform(0.3, 2.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 30
        rec = registry(vmrepo).resolve(booted.id)
        while vm_state(rec) != "running":
            assert time.monotonic() < deadline, "the killed commit left the VM paused"
            time.sleep(0.1)
        assert _timed_write(booted, f"/root/after-killed-{i}.txt") < PROMPT
    cid, _ = commit_vm(vmrepo, booted.id, "after the kills")
    assert vmrepo.rev_parse("HEAD") == cid


def test_an_agent_too_old_commits_crash_consistent_with_one_warning(vmrepo: Repo, booted: Any,
                                                                   tmp_path: Path) -> None:
    """The agent of the previous protocol (1.0) replaces the running one: commits still work,
    with one warning line."""
    src = re.sub(r"#define PROTO_MINOR \d+", "#define PROTO_MINOR 0", AGENT_SOURCE_PATH.read_text())
    (tmp_path / "old.c").write_text(src)
    subprocess.run(["gcc", "-static", "-O2", "-std=c99", "-o", str(tmp_path / "old-agent"),
                    str(tmp_path / "old.c")], check=True)
    vers(vmrepo.root, "cp", str(tmp_path / "old-agent"), f"{booted.id}:/root/old-agent")
    gexec(booted, "chmod +x /root/old-agent; old=$(pidof vers-agent); "
                  "setsid sh -c \"sleep 1; kill $old; exec /root/old-agent\" "
                  "</dev/null >/dev/null 2>&1 &")
    time.sleep(3)
    p = vers(vmrepo.root, "commit", booted.id, "-m", "old agent")
    warnings = [line for line in p.stderr.splitlines() if "crash-consistent" in line]
    assert len(warnings) == 1 and "1.0" in warnings[0], p.stderr
    assert gexec(booted, "echo still-works").strip() == "still-works"
