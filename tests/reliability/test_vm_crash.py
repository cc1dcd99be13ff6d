"""``kill -9`` of ``vers commit`` at random moments, on both memory backings: the guest must run
again on its own, the next commit must succeed and hold every page and block changed since the
last commit that landed, and a restore of it must equal ``vers export`` byte for byte."""

from __future__ import annotations

import filecmp
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.vmm.conftest import COUNTER, gexec, vm_repo, wait_counter_above
from vers.repo import Repo
from vers.testing import vers_env
from vers.vmm.boot import RunOptions, restore_commit, run_vm
from vers.vmm.commit import commit_vm
from vers.vmm.control import resume_vm, vm_state
from vers.vmm.memory import load_backing
from vers.vmm.state import VMRecord, registry
from vers.vmm.teardown import kill_vms

pytestmark = pytest.mark.vm
needs_fuse = pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="no /dev/fuse")
MEMORY = 128 * 1024 * 1024


def _kill_commit(repo: Repo, rec: VMRecord, rnd: random.Random, in_pause: bool) -> bool:
    """Start `vers commit` and SIGKILL it: at a random moment, or (``in_pause``) a moment after
    QEMU wrote the device state, i.e. inside the guest's pause. True if it died before the end."""
    devstate = rec.dir / "commit.devstate"
    devstate.unlink(missing_ok=True)
    env = vers_env({"VERS_MEMORY_BACKING": load_backing(rec.memory).kind})
    proc = subprocess.Popen(["vers", "commit", rec.id, "-m", "to be killed"], cwd=repo.root,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        if in_pause:
            while proc.poll() is None and not (devstate.exists() and devstate.stat().st_size):
                time.sleep(0.0005)
            time.sleep(rnd.uniform(0, 0.005))
        else:
            time.sleep(rnd.uniform(0.05, 1.2))
        proc.send_signal(signal.SIGKILL)
    finally:
        code = proc.wait()
    return code == -signal.SIGKILL


def _wait_running(repo: Repo, rec: VMRecord, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while (state := vm_state(rec)) != "running":
        assert time.monotonic() < deadline, f"VM left {state} by the killed commit"
        time.sleep(0.1)


def _trials(repo: Repo, tmp: Path, n: int, seed: int, pause_kills: bool) -> int:
    """n rounds of: change memory and disk, kill a commit, change more, commit, check. Returns
    how many commits were killed before they finished."""
    rnd = random.Random(seed)
    rec = run_vm(repo, RunOptions(name="crash", memory=MEMORY, standby=False))
    gexec(rec, COUNTER)
    wait_counter_above(rec, 0)
    commit_vm(repo, rec.id, "base")
    killed = 0
    for i in range(n):
        gexec(rec, f"dd if=/dev/urandom of=/tmp/m{i} bs=4k count=256 2>/dev/null;"
                   f" echo before-{i} > /root/before-{i}; sync")
        killed += _kill_commit(repo, rec, rnd, in_pause=pause_kills and i % 2 == 0)
        _wait_running(repo, rec)
        gexec(rec, f"dd if=/dev/urandom of=/tmp/n{i} bs=4k count=64 2>/dev/null;"
                   f" echo after-{i} > /root/after-{i}; sync")
        cid, _ = commit_vm(repo, rec.id, f"after kill {i}", stay_paused=True)
        committed = tmp / "committed.mem"
        repo.export_image(cid, "memory", committed)
        live = load_backing(registry(repo).resolve(rec.id).memory).path
        assert filecmp.cmp(live, committed, shallow=False), f"trial {i}: pages missing"
        resume_vm(repo, rec.id)
        restored = restore_commit(repo, cid, paused=True)
        try:
            assert filecmp.cmp(load_backing(restored.memory).path, committed, shallow=False)
            resume_vm(repo, restored.id)
            got = gexec(restored, f"echo 3 > /proc/sys/vm/drop_caches;"
                                  f" cat /root/before-{i} /root/after-{i}")
            assert got == f"before-{i}\nafter-{i}\n", f"trial {i}: disk writes missing"
        finally:
            kill_vms(repo, [restored.id])
        committed.unlink()
    return killed


@needs_fuse
def test_killed_commits_on_fuse_backing_lose_nothing(tmp_path: Path) -> None:
    with vm_repo(tmp_path / "repo", "fuse") as repo:
        killed = _trials(repo, tmp_path, 6, seed=1, pause_kills=True)
    assert killed >= 3  # the trials did kill commits midway


def test_killed_commits_on_shm_backing_resume_the_guest(tmp_path: Path) -> None:
    """On the shm backing the pause is long (RAM compared with its reference copy): a kill
    inside it used to leave the guest stopped until `vers resume`."""
    with vm_repo(tmp_path / "repo", "shm") as repo:
        killed = _trials(repo, tmp_path, 3, seed=2, pause_kills=True)
    assert killed >= 2


@pytest.mark.slow
@needs_fuse
def test_twenty_killed_commits_on_fuse_backing(tmp_path: Path) -> None:
    with vm_repo(tmp_path / "repo", "fuse") as repo:
        killed = _trials(repo, tmp_path, 20, seed=3, pause_kills=True)
    assert killed >= 10
