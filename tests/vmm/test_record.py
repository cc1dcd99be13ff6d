"""`vers record`: a background recorder commits a real VM on a schedule, prunes what the policy
drops, keeps going through failures, and leaves nothing half done when killed.

The tests share one booted default guest and run in file order.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from vers.porcelain import record as recording
from vers.repo import Repo
from vers.vmm.boot import RunOptions, run_vm
from vers.vmm.commit import commit_vm
from vers.vmm.control import vm_state
from vers.vmm.machine import pid_alive
from vers.vmm.state import registry

from .conftest import vers

pytestmark = pytest.mark.vm


def _wait(what: str, cond: Callable[[], bool], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _rec(repo: Repo, vm: str) -> dict[str, Any]:
    return registry(repo).resolve(vm).runtime.recording


def _recorded(repo: Repo) -> list[str]:
    """The recorded commits on main, newest first."""
    out = vers(repo.root, "log", "--format", "json", "main").stdout
    return [c["id"] for c in json.loads(out) if c["message"].startswith(recording.MESSAGE_PREFIX)]


def test_record_commits_on_schedule_prunes_and_stops(vmrepo: Repo, booted: Any) -> None:
    commit_vm(vmrepo, booted.id, "before the recording")
    p = vers(vmrepo.root, "record", booted.id, "--every", "1s", "--keep-last", "3",
             "--prune-every", "5s")
    assert "recording VM" in p.stderr
    r = _rec(vmrepo, booted.id)
    log = Path(r["log"])
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    assert vers(vmrepo.root, "record", booted.id, "--every", "1s", check=False).returncode == 5
    _wait("8 recorded commits and a prune",
          lambda: _rec(vmrepo, booted.id)["commits"] >= 8 and _rec(vmrepo, booted.id)["pruned"])
    ps = vers(vmrepo.root, "ps").stderr
    assert f"VM {booted.id}: recording every 1s onto main" in ps, ps
    st = json.loads(vers(vmrepo.root, "status", booted.id).stdout)["recording"]
    assert st["alive"] and st["commits"] >= 8 and st["policy"]["last"] == 3
    # a user's commit while recording waits for the VM's lock and lands on the same line
    vers(vmrepo.root, "commit", booted.id, "-m", "by hand")
    p = vers(vmrepo.root, "record", "--stop", booted.id)
    assert "recording stopped after" in p.stderr
    assert not pid_alive(r["pid"])
    assert _rec(vmrepo, booted.id) == {}
    kept = _recorded(vmrepo)
    # pruned to the last 3, plus those made since the last prune (5 s at 1 a second) and the
    # by-hand one
    assert 3 <= len(kept) <= 9, kept
    messages = [c["message"] for c in json.loads(
        vers(vmrepo.root, "log", "--format", "json", "main").stdout)]
    assert "before the recording" in messages and "by hand" in messages
    assert vers(vmrepo.root, "fsck").returncode == 0
    # the VM's base followed the rewritten history: a plain commit still advances main
    cid, _ = commit_vm(vmrepo, booted.id, "after the recording")
    assert vmrepo.rev_parse("main") == cid


def test_ticks_follow_the_monotonic_schedule(vmrepo: Repo, booted: Any) -> None:
    """Every 3 s for ~20 s: each tick or a missed one is accounted for, none added."""
    vers(vmrepo.root, "record", booted.id, "--every", "3s")
    t0 = time.monotonic()
    time.sleep(20)
    done = vers(vmrepo.root, "record", "--stop", booted.id).stderr
    elapsed = time.monotonic() - t0
    n = [int(w) for w in done.replace(",", " ").replace("(", " ").split() if w.isdigit()]
    commits, failed, missed = n[0], n[1], n[2]
    assert failed == 0, done
    assert commits >= 2, done
    assert commits + missed <= elapsed / 3 + 2, done


def test_a_failing_commit_is_logged_retried_and_shown(vmrepo: Repo, booted: Any) -> None:
    """main moves away under the VM (as another writer would): ticks fail with the conflict,
    status shows it, and once main is back the recording goes on."""
    base = registry(vmrepo).resolve(booted.id).base_commit
    assert base is not None
    other = vmrepo.rev_parse("main~1")
    vers(vmrepo.root, "record", booted.id, "--every", "1s")
    vmrepo.refs.set_ref("refs/heads/main", other, old=base, message="test: move main away")
    _wait("a failed tick", lambda: _rec(vmrepo, booted.id)["failures"] >= 2)
    r = _rec(vmrepo, booted.id)
    assert "moved on" in r["last_error"], r
    assert "failed (last error:" in vers(vmrepo.root, "record", "--status").stdout
    assert "commit failed (retried at the next tick)" in Path(r["log"]).read_text()
    vmrepo.refs.set_ref("refs/heads/main", base, old=other, message="test: main back")
    commits = r["commits"]
    _wait("commits again", lambda: _rec(vmrepo, booted.id)["commits"] >= commits + 2)
    assert "committing works again" in Path(r["log"]).read_text()
    vers(vmrepo.root, "record", "--stop", booted.id)


def test_kill_9_of_the_recorder_leaves_no_half_commit(vmrepo: Repo, booted: Any) -> None:
    for delay in (0.7, 1.9, 3.1):
        vers(vmrepo.root, "record", booted.id, "--every", "1s")
        pid = _rec(vmrepo, booted.id)["pid"]
        time.sleep(delay)
        os.kill(pid, signal.SIGKILL)
        _wait("the recorder gone", lambda: not pid_alive(pid))  # noqa: B023
        rec = registry(vmrepo).resolve(booted.id)
        _wait("the VM running", lambda: vm_state(rec) == "running", timeout=30)  # noqa: B023
        assert "stopped unexpectedly" in (recording.summary(rec) or "")
        vers(vmrepo.root, "record", "--stop", booted.id)  # clears the dead recording
    assert vers(vmrepo.root, "fsck").returncode == 0
    cid, _ = commit_vm(vmrepo, booted.id, "after the killed recorders")
    assert vmrepo.rev_parse("main") == cid
    restored = vers(vmrepo.root, "run-commit", cid).stdout.strip()
    got = vers(vmrepo.root, "exec", restored, "--", "cat", "/etc/vers-guest").stdout
    assert got.startswith("default vers guest")
    vers(vmrepo.root, "kill", restored)


def test_the_recorder_stops_when_the_vm_is_killed(vmrepo: Repo) -> None:
    rec = run_vm(vmrepo, RunOptions(name="short-lived", standby=False))
    vers(vmrepo.root, "record", rec.id, "--every", "1s", "--branch", "short")
    pid = _rec(vmrepo, rec.id)["pid"]
    _wait("a recorded commit", lambda: _rec(vmrepo, rec.id)["commits"] >= 1)
    vers(vmrepo.root, "kill", rec.id)
    _wait("the recorder to exit", lambda: not pid_alive(pid), timeout=60)
    assert vmrepo.refs.resolve("refs/heads/short") is not None


def test_bad_record_arguments_are_one_line_errors(vmrepo: Repo, booted: Any) -> None:
    for args, code in ((["--every", "0"], 2), (["--every", "soon"], 2), ([], 2),
                       (["--stop"], 2), (["--every", "1s", "--keep-last", "-1"], 2)):
        p = vers(vmrepo.root, "record", booted.id, *args, check=False)
        assert p.returncode == code, (args, p.stderr)
        assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr, p.stderr
    p = vers(vmrepo.root, "record", "nosuchvm", "--every", "1s", check=False)
    assert p.returncode == 3, p.stderr
