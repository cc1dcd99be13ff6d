"""``vers record``: commit a VM on a schedule, in a background process, pruning as it goes.

``start`` checks its arguments, writes the schedule and policy into the VM's runtime record
(``Runtime.recording``) and starts the recorder (``python -m vers.porcelain.record``) in a session
of its own, so it outlives the command; it returns once the recorder has written its pid there.
The recorder then, until it is stopped or the VM is gone:

- commits the VM at ``start + k * every`` on the monotonic clock (no drift); a commit that runs
  past the next tick skips the ticks it overran (counted as missed), never overlaps another: each
  is a ``commit_vm`` under the VM's lock, like ``vers commit`` (file-consistent unless ``sync``
  is off). A failed commit is logged (``record.log`` beside the VM's record, 0600), counted and
  shown by ``status``; the next tick tries again.
- applies the retention policy to the commits it made on its branch (gc's ``--keep-*`` rules,
  scoped: other refs' history and other VMs' base commits are never touched), every
  ``prune_every`` seconds: the dropped commits leave the branch's history as with ``vers gc``
  (kept commits above them are rewritten as twins, so their IDs change), and the VM's base moves
  to its twin under the VM's lock.
- every ``sweep_every`` seconds reclaims the space of what nothing reaches any more (gc's mark
  and sweep, which excludes writers, with a grace of ``SWEEP_GRACE``).

A ``kill -9`` of the recorder leaves at most a commit that never landed (commit_vm's own crash
safety: the guest resumes, the layers are adopted by the next commit); status then says the
recorder is gone.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any

from vers.errors import BadInput, Busy, VersError, VMError
from vers.files import open_private
from vers.history.retention import Policy, apply_retention, fmt_duration, plan_retention
from vers.objects.model import PAGE_SIZE, Commit
from vers.porcelain.gc import gc, vm_roots
from vers.refs.container import check_short_name
from vers.repo import Repo
from vers.vmm.commit import commit_vm
from vers.vmm.machine import pid_alive
from vers.vmm.state import VMRecord, VMRegistry, registry

#: commit messages of a recording start with this; retention prunes only such commits
MESSAGE_PREFIX = "record: "
#: retention runs this often by default (each run rewrites the kept commits above what it drops)
DEFAULT_PRUNE_EVERY = 60.0
DEFAULT_SWEEP_EVERY = 600.0
#: the recorder's sweeps spare objects younger than this (writers and gc exclude each other
#: anyway; this only covers writers that do not take the store's writer lock)
SWEEP_GRACE = 60.0
#: how long ``start`` waits for the recorder to report in, and ``stop`` for it to finish its tick
START_TIMEOUT = 60.0
STOP_TIMEOUT = 180.0
#: the recorder checks this often, while it waits, whether it was stopped or the VM is gone
POLL = 0.25


def recorder_alive(rec: VMRecord) -> bool:
    pid = rec.runtime.recording.get("pid")
    return isinstance(pid, int) and pid_alive(pid) and _is_recorder(pid, rec.id)


def _is_recorder(pid: int, vm_id: str) -> bool:
    """The pid is a recorder of this VM (not a process that got the number of a dead one)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"vers.porcelain.record" in argv and vm_id.encode() in argv


def summary(rec: VMRecord) -> str | None:
    """One line for ``vers ps`` and ``status``: schedule, progress, last error; None when the VM
    is not recorded."""
    r = rec.runtime.recording
    if not r:
        return None
    if not recorder_alive(rec):
        return (f"recording stopped unexpectedly (recorder {r.get('pid') or '?'} is gone; "
                f"see {r.get('log')}); `vers record --stop` clears this")
    line = f"recording every {fmt_duration(r['every'])} onto {r['branch']}, {r['commits']} commits"
    if r.get("last_at"):
        line += f", last at {time.strftime('%H:%M:%S', time.localtime(r['last_at']))}"
    if r.get("missed"):
        line += f", {r['missed']} ticks missed"
    if r.get("pruned"):
        line += f", {r['pruned']} pruned"
    if r.get("failures"):
        line += f", {r['failures']} failed (last error: {r.get('last_error')})"
    return line


def status_json(rec: VMRecord) -> dict[str, Any]:
    r = dict(rec.runtime.recording)
    return {"vm": rec.id, "name": rec.name, "recording": bool(r),
            "alive": recorder_alive(rec) if r else False, "summary": summary(rec), **r}


# -- the verbs ---------------------------------------------------------------------------------

def start(repo: Repo, vm: str | None, every: float, policy: Policy, branch: str | None = None,
          sync: bool = True, sweep_every: float = DEFAULT_SWEEP_EVERY,
          prune_every: float = DEFAULT_PRUNE_EVERY) -> VMRecord:
    """Start recording VM (the current one when None); returns its record once the recorder
    runs."""
    if not every > 0 or math.isinf(every):
        raise BadInput("--every must be a positive duration, e.g. 1s, 30s, 5m")
    if not sweep_every > 0 or not prune_every > 0:
        raise BadInput("--sweep-every and --prune-every must be positive durations")
    reg = registry(repo)
    rec = reg.resolve(vm)
    if not pid_alive(rec.runtime.pid, rec.id):
        raise VMError(f"VM {rec.id} is not running")
    branch = branch or rec.branch or repo.current_branch()
    if branch is None:
        raise BadInput("HEAD is detached: record onto a branch (--branch NAME)")
    check_short_name(branch)
    log = rec.dir / "record.log"
    with reg.lock(rec):
        fresh = reg.get(rec.id) or rec
        if fresh.runtime.recording and recorder_alive(fresh):
            raise Busy(f"VM {rec.id} is recording already ({summary(fresh)}); "
                       "`vers record --stop` it first")
        fresh.runtime.recording = {
            "pid": None, "every": every, "policy": asdict(policy), "branch": branch,
            "sync": sync, "sweep_every": sweep_every, "prune_every": prune_every,
            "started": time.time(), "log": str(log),
            "commits": 0, "failures": 0, "missed": 0, "pruned": 0, "dirty_bytes": 0,
            "last_commit": None,
            "last_at": None, "last_pause_ms": None, "last_error": None, "last_error_at": None}
        reg.save(fresh)
    fd = open_private(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        proc = subprocess.Popen([sys.executable, "-m", "vers.porcelain.record", str(repo.root),
                                 rec.id], cwd=repo.root, stdin=subprocess.DEVNULL, stdout=fd,
                                stderr=fd, start_new_session=True, close_fds=True)
    finally:
        os.close(fd)
    return _wait_started(reg, rec, proc, log)


def _wait_started(reg: VMRegistry, rec: VMRecord, proc: subprocess.Popen[bytes],
                  log: Path) -> VMRecord:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        fresh = reg.get(rec.id)
        if fresh is not None and fresh.runtime.recording.get("pid") == proc.pid:
            return fresh
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-3:]
            raise VMError(f"the recorder of VM {rec.id} exited at once: " + " / ".join(tail))
        time.sleep(0.05)
    proc.kill()
    raise VMError(f"the recorder of VM {rec.id} did not start within {START_TIMEOUT:.0f}s")


def stop(repo: Repo, vm: str | None) -> VMRecord:
    """Stop VM's recording: the recorder finishes the commit it is making, if any, and exits.
    Returns the VM's record with the recording's last figures (it is cleared from the saved
    record)."""
    reg = registry(repo)
    rec = reg.resolve(vm)
    r = rec.runtime.recording
    if not r:
        raise BadInput(f"VM {rec.id} is not recording")
    if recorder_alive(rec):
        os.kill(r["pid"], signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        while pid_alive(r["pid"]):
            if time.monotonic() > deadline:
                raise Busy(f"the recorder of VM {rec.id} (pid {r['pid']}) did not stop within "
                           f"{STOP_TIMEOUT:.0f}s")
            time.sleep(0.05)
    with reg.lock(rec):
        fresh = reg.get(rec.id) or rec
        final = {**fresh.runtime.recording, "vm": rec.id}
        if fresh.runtime.recording:
            fresh.runtime.recording = {}
            reg.save(fresh)
    fresh.runtime.recording = final
    return fresh


def recordings(repo: Repo, vm: str | None = None) -> list[VMRecord]:
    """The VMs with a recording (alive or not); only ``vm`` when given."""
    reg = registry(repo)
    if vm is not None:
        return [reg.resolve(vm)]
    return [r for r in reg.visible() if r.runtime.recording]


# -- the recorder ------------------------------------------------------------------------------

class Recorder:
    """The background process of one recording (``main``)."""

    def __init__(self, repo: Repo, vm_id: str) -> None:
        self.repo, self.reg, self.vm_id = repo, registry(repo), vm_id
        self.stopping = False
        rec = self.reg.get(vm_id)
        if rec is None or not rec.runtime.recording:
            raise VMError(f"VM {vm_id} has no recording to run")
        cfg = rec.runtime.recording
        self.every = float(cfg["every"])
        self.policy = Policy(**cfg["policy"])
        self.branch = str(cfg["branch"])
        self.sync = bool(cfg["sync"])
        self.sweep_every = float(cfg["sweep_every"])
        self.prune_every = float(cfg.get("prune_every", DEFAULT_PRUNE_EVERY))
        self.message = f"{MESSAGE_PREFIX}VM {rec.name or rec.id} every {fmt_duration(self.every)}"
        self._last_error: str | None = None

    def log(self, text: str) -> None:
        print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}", flush=True)

    def update(self, add: dict[str, int] | None = None, **changes: Any) -> bool:
        """Set ``changes`` and add ``add`` to counters of the recording in the VM's record; False
        once the recording is not this process's any more (stopped, replaced, or the VM gone)."""
        rec = self.reg.get(self.vm_id)
        if rec is None:
            return False
        with self.reg.lock(rec):
            fresh = self.reg.get(self.vm_id)
            if fresh is None or not fresh.runtime.recording:
                return False
            r = fresh.runtime.recording
            if r.get("pid") not in (None, os.getpid()):
                return False
            r.update(changes)
            for k, n in (add or {}).items():
                r[k] = int(r.get(k) or 0) + n
            self.reg.save(fresh)
        return True

    def wanted(self) -> bool:
        """Go on: not stopped, the VM's record still there and its QEMU running."""
        if self.stopping:
            return False
        rec = self.reg.get(self.vm_id)
        if rec is None or rec.runtime.recording.get("pid") != os.getpid():
            return False
        return pid_alive(rec.runtime.pid, rec.id)

    def run(self) -> None:
        if not self.update(pid=os.getpid()):
            return
        self.log(f"recording VM {self.vm_id} every {fmt_duration(self.every)} onto {self.branch}"
                 f" ({self.policy.describe()}, pid {os.getpid()})")
        start = time.monotonic()
        last_prune = last_sweep = start
        k = 0
        while self.wanted():
            self.tick()
            now = time.monotonic()
            if not self.policy.empty and now - last_prune >= self.prune_every:
                self.prune()
                last_prune = time.monotonic()
            if now - last_sweep >= self.sweep_every:
                self.sweep()
                last_sweep = time.monotonic()
            due = math.floor((time.monotonic() - start) / self.every) + 1
            if due > k + 1:
                self.update(add={"missed": due - k - 1})
            k = due
            if not self.wait_until(start + k * self.every):
                break
        self.log("recording stopped" if self.stopping else "recording ended: the VM is gone")

    def wait_until(self, when: float) -> bool:
        while (left := when - time.monotonic()) > 0:
            if not self.wanted():
                return False
            time.sleep(min(POLL, left))
        return self.wanted()

    def tick(self) -> None:
        try:
            cid, tm = commit_vm(self.repo, self.vm_id, self.message, branch=self.branch,
                                sync=self.sync)
        except Exception as exc:  # noqa: BLE001 - a failed tick must never end the recording
            why = str(exc) if isinstance(exc, VersError) else f"{type(exc).__name__}: {exc}"
            if why != self._last_error:
                self.log(f"commit failed (retried at the next tick): {why}")
                if not isinstance(exc, VersError):
                    traceback.print_exc()
            self._last_error = why
            self.update(add={"failures": 1}, last_error=why, last_error_at=time.time())
            return
        if self._last_error is not None:
            self.log(f"committing works again: {cid[:12]}")
            self._last_error = None
        rec = self.reg.get(self.vm_id)
        mem_pages = tm.extra.get("memory_dirty_pages")
        if mem_pages is None:  # the first commit of a VM stores all of its memory
            mem_pages = (rec.spec.memory if rec else 0) // PAGE_SIZE
        dirty = (mem_pages + sum(tm.extra.get("disk_dirty_pages", {}).values())) * PAGE_SIZE
        self.update(add={"commits": 1, "dirty_bytes": dirty}, last_commit=cid,
                    last_at=time.time(), last_pause_ms=tm.pause, last_dirty_bytes=dirty)

    def prune(self) -> None:
        """Retention on the recording's branch, under the VM's lock (the VM's base may move to
        its twin)."""
        rec = self.reg.get(self.vm_id)
        if rec is None:
            return
        try:
            with self.reg.lock(rec):
                dropped = self._prune_locked()
        except VersError as exc:
            self.log(f"retention failed (tried again later): {exc}")
            return
        if dropped:
            self.update(add={"pruned": dropped})

    def _prune_locked(self) -> int:
        fresh = self.reg.get(self.vm_id)
        if fresh is None:
            return 0
        keep = {r.base_commit: f"base of VM {r.id}" for r in self.reg.all()
                if r.base_commit and r.id != self.vm_id}
        plan = plan_retention(self.repo.store, self.repo.refs, self.policy,
                              branch="refs/heads/" + self.branch, prunable=_recorded, keep=keep)
        if not plan.dropped:
            return 0
        result = apply_retention(self.repo.store, self.repo.refs, plan)
        if fresh.base_commit in result.twins:
            fresh.base_commit = result.twins[fresh.base_commit]
            self.reg.save(fresh)
        for ref in result.conflicts:
            self.log(f"retention skipped {ref}: it moved meanwhile")
        return len(plan.dropped)

    def sweep(self) -> None:
        try:
            report = gc(self.repo.store, self.repo.refs, grace=SWEEP_GRACE,
                        extra_roots=lambda: vm_roots(self.repo.vers_dir))
        except VersError as exc:
            self.log(f"sweep failed (tried again later): {exc}")
            return
        if report.objects_removed:
            self.log(f"sweep: removed {report.objects_removed} objects, store "
                     f"{report.store_bytes_before} -> {report.store_bytes_after} bytes")


def _recorded(c: Commit) -> bool:
    return c.message.startswith(MESSAGE_PREFIX)


def main(argv: list[str] | None = None) -> int:
    """``python -m vers.porcelain.record REPO VM_ID``: the recorder (started by ``start``)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m vers.porcelain.record REPO VM_ID", file=sys.stderr)
        return 2
    repo = Repo(args[0])
    try:
        recorder = Recorder(repo, args[1])

        def on_term(_sig: int, _frame: object) -> None:
            recorder.stopping = True

        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_term)
        recorder.run()
    except VersError as exc:
        print(f"vers record: {exc}", file=sys.stderr)
        return exc.exit_code
    finally:
        repo.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
