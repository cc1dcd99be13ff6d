"""``vers commit`` of a live VM: memory, disks and device state, with the guest paused briefly.

    prepare   spare overlay as the next top, one-off set-up, flush RAM written so far
    sync      the guest agent writes the guest's dirty file data back (the guest runs on)
    pause     [x-ignore-shared + blockdev-add + getfd] in one round trip;
              the agent freezes the guest's file systems; flush RAM again, stop
    capture   [freeze disks + save device state] in one round trip
              || the memory backing captures RAM (a worker thread)
    resume    cont                                                         (end of the pause)
    thaw      the agent thaws the guest's file systems
    store     copy out the changed disk clusters, Repo.commit_state(images, dirty=...)

With ``sync`` (the default) the committed disks hold exactly what the guest's files held
(``vers.vmm.quiesce``); a guest whose agent cannot take part is committed crash-consistent, with
a warning.

Everything slow, hashing and storing, happens after the guest runs again. The commit becomes
visible only when the ref moves, after its objects are stored, so a VM killed mid-commit leaves no
partial commit. Whatever happens, one cleanup (``_finish``) settles the backing's capture, removes
the temporary files and saves what QEMU now uses into the VM record.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vers.errors import VMError
from vers.progress import NO_PROGRESS, Meter, Progress
from vers.vmm import disk as disk_mod
from vers.vmm.devstate import (
    Beside,
    Timings,
    collector_off,
    drop_unused_nodes,
    drop_unused_tops,
    freeze_disks,
    prepare_devstate,
    prepare_freeze,
)
from vers.vmm.machine import Machine
from vers.vmm.memory import MemoryBacking, load_backing
from vers.vmm.merge import merge_chains
from vers.vmm.qmp import QMPClient
from vers.vmm.quiesce import GuestFileSystems, open_guest_fs, warn
from vers.vmm.recovery import PauseGuard, recover
from vers.vmm.standby import refresh_spares
from vers.vmm.state import VMRecord, VMRegistry, registry

if TYPE_CHECKING:
    from vers.repo import Repo


@dataclass
class _Commit:
    """One commit in progress: what each phase hands to the next, and to the cleanup."""

    rec: VMRecord
    backing: MemoryBacking
    devstate: Path
    new_tops: dict[str, Path]
    #: each disk's chain as frozen inside the pause
    frozen: dict[str, list[str]] = field(default_factory=dict)
    #: the backing holds a capture that awaits ``commit_done``
    captured: bool = False
    mem_image: Path | None = None
    mem_dirty: list[int] | None = None
    disk_images: dict[str, Path] = field(default_factory=dict)
    #: ``qemu-img`` reading each frozen top's layout, started as soon as the guest runs again
    layouts: dict[str, disk_mod.QemuImgRun] = field(default_factory=dict)
    cid: str | None = None
    #: the agent session that syncs, freezes and thaws the guest's file systems, if any
    fs: GuestFileSystems | None = None


def commit_vm(repo: Repo, key: str | None, message: str = "", stay_paused: bool = False,
              branch: str | None = None, merge: bool = False, sync: bool = True,
              progress: Progress = NO_PROGRESS) -> tuple[str, Timings]:
    """Commit the VM's memory, disks and device state; returns (commit ID, timings).
    ``progress`` shows the store phase, which reads every page on a VM's first commit.

    The commit goes onto ``branch``, else the branch the VM was given (``VMRecord.branch``),
    else HEAD; ``merge`` as in ``Repo.commit_state``. With ``sync`` the guest's file systems
    are flushed and frozen around the capture (file-consistent disks); without, the disks are
    as a power cut would leave them (crash-consistent)."""
    cid, tm, settle = commit_vm_unsettled(repo, key, message, stay_paused, branch, merge, sync,
                                          progress)
    settle()
    return cid, tm


def commit_vm_unsettled(repo: Repo, key: str | None, message: str = "",
                        stay_paused: bool = False, branch: str | None = None,
                        merge: bool = False, sync: bool = True,
                        progress: Progress = NO_PROGRESS
                        ) -> tuple[str, Timings, Callable[[], None]]:
    """``commit_vm``, returning as soon as the commit is stored (its ref moved), with what is
    left to do as a callable: re-base the VM's disks onto the new commit and prepare the
    overlays and standby child of its next commit and branch (``settle``). The caller must call
    it, on any thread (a script may run the guest meanwhile); the VM's lock stays held until it
    returns, so another command on this VM waits for it. Skipping it would leave the VM right
    but its lock held; a process killed before it leaves the VM as a commit killed after its
    store does (docs/vmm.md)."""
    reg = registry(repo)
    rec = reg.resolve(key)
    tm = Timings()
    with ExitStack() as held:
        held.enter_context(reg.lock(rec))
        current = reg.resolve(rec.id)  # re-read under the lock
        with Machine.attach(current, qmp_timeout=60.0) as m:
            q = m.qmp()  # one connection for the recovery check and the commit
            job = _prepare(reg, recover(reg, current, q))
            try:
                running = q.command("query-status")["status"] == "running"
                if sync and running:
                    job.fs = _sync_guest(job.rec, tm)
                _pause_and_capture(reg, job, q, running and not stay_paused, tm)
                with progress.meter("commit") as meter:
                    cid = _store(repo, job, message, tm, branch or job.rec.branch, merge, meter)
            finally:
                _finish(reg, job)
        lock = held.pop_all()  # stored: the lock goes to the settle step

    def settle() -> None:
        with lock:
            merge_chains(repo, reg, reg.resolve(rec.id))
            refresh_spares(reg, reg.resolve(rec.id))

    return cid, tm, settle


def _prepare(reg: VMRegistry, rec: VMRecord) -> _Commit:
    backing = load_backing(rec.memory)
    backing.warm_up()
    return _Commit(rec, backing, rec.dir / "commit.devstate", prepare_freeze(reg, rec))


def _sync_guest(rec: VMRecord, tm: Timings) -> GuestFileSystems | None:
    """Flush the guest's file systems while it runs; the session, for the freeze and thaw."""
    t0 = time.perf_counter()
    fs = open_guest_fs(rec.runtime.agent_sock, rec.id)
    if fs is None:
        return None
    try:
        fs.sync()
    except VMError as exc:
        fs.close()
        warn(rec.id, str(exc))
        return None
    tm.mark("sync", t0)
    return fs


def _freeze_guest(job: _Commit, tm: Timings) -> None:
    fs = job.fs
    if fs is None:
        return
    t0 = time.perf_counter()
    try:
        n = fs.freeze()
    except VMError as exc:
        fs.close()
        job.fs = None
        warn(job.rec.id, str(exc))
        return
    tm.mark("freeze", t0)
    tm.extra["frozen_filesystems"] = n


def _thaw_guest(job: _Commit, tm: Timings, resumed: bool) -> None:
    """Thaw a running guest (a guest left paused thaws once it runs: the session's end tells its
    agent). A freeze the agent gave up before the thaw made the commit crash-consistent."""
    fs, job.fs = job.fs, None
    if fs is None:
        return
    t0 = time.perf_counter()
    try:
        if resumed and not fs.thaw():
            warn(job.rec.id, "the guest thawed itself before the capture finished")
            tm.extra["frozen_filesystems"] = 0
    except VMError as exc:
        print(f"vers: VM {job.rec.id}: {exc}; its agent thaws by itself", file=sys.stderr)
    finally:
        fs.close()
    tm.mark("thaw", t0)


def _pause_and_capture(reg: VMRegistry, job: _Commit, q: QMPClient, resume: bool,
                       tm: Timings) -> None:
    """Freeze the guest's file systems, stop; then, at the same time, the backing captures RAM
    while QEMU freezes the disks and saves device state; resume (if ``resume``: the VM ran and
    is not to stay paused) and thaw."""
    nodes = prepare_devstate(q, job.devstate, job.new_tops)
    try:
        _freeze_guest(job, tm)
        _pause(reg, job, q, nodes, resume, tm)
        # the tops are frozen: qemu-img reads them while the guest thaws
        job.layouts = {name: disk_mod.read_layout(Path(chain[-1]))
                       for name, chain in job.frozen.items() if not _whole_disk(job.rec, name)}
    finally:
        _thaw_guest(job, tm, resume)


def _pause(reg: VMRegistry, job: _Commit, q: QMPClient, nodes: dict[str, tuple[str, str]],
           resume: bool, tm: Timings) -> None:
    t0 = time.perf_counter()
    guard = PauseGuard(job.rec) if resume else None  # resumes the guest should we die paused
    t0 = tm.mark("pause_guard", t0)
    job.backing.pre_stop()
    t_stop = tm.mark("pre_stop", t0)
    try:
        with collector_off():
            try:
                _capture(reg, job, q, nodes, tm, t_stop)
            except BaseException:
                drop_unused_nodes(q, job.rec, job.new_tops, nodes)
                raise
            finally:
                if resume:
                    t0 = time.perf_counter()
                    q.cont()
                    tm.mark("cont", t0)
                # what the guest noticed: from the stop until QEMU answered cont
                tm.pause = round((time.perf_counter() - t_stop) * 1000, 2)
    finally:
        if guard is not None:
            guard.disarm()


def _capture(reg: VMRegistry, job: _Commit, q: QMPClient, nodes: dict[str, tuple[str, str]],
             tm: Timings, t0: float) -> None:
    """Stop; freeze the disks and save device state while the backing captures RAM."""
    q.command("stop")
    t0 = tm.mark("stop", t0)
    memory = Beside(job.backing.capture, tm, "capture_memory")
    try:
        job.frozen = freeze_disks(q, job.rec, job.new_tops, nodes, save_devstate=True)
        t0 = tm.mark("freeze_disks+devstate", t0)
    finally:
        reg.save(job.rec)  # whatever QEMU switched to is its disk now, whatever happens next
        job.mem_image, job.mem_dirty = memory.result()
        job.captured = True
    tm.mark("join", t0)  # the record saved, and waiting for the capture if it is slower


def _store(repo: Repo, job: _Commit, message: str, tm: Timings, branch: str | None,
           merge: bool, meter: Meter) -> str:
    """The guest runs again: copy out the changed disk clusters and store the commit."""
    t0 = time.perf_counter()
    rec = job.rec
    images: dict[str, str] = {"memory": str(job.mem_image), "devstate": str(job.devstate),
                              "kernel": rec.boot["kernel"], "initrd": rec.boot["initrd"]}
    dirty: dict[str, list[int]] = {}
    if rec.base_commit is not None:
        # The boot files are the ones QEMU loaded at start-up, which the base commit holds
        # already (a file changed on disk since is not what this VM runs): nothing to re-read.
        dirty["kernel"] = dirty["initrd"] = []
    meter.phase("copying disks")
    if job.mem_dirty is not None:
        dirty["memory"] = job.mem_dirty
    for name, chain in job.frozen.items():
        d = rec.disks[name]
        full = _whole_disk(rec, name)
        out = job.disk_images[name] = rec.dir / f"commit-{name}.raw"
        size = d.size or disk_mod.image_size(Path(chain[-1]))
        pages = disk_mod.capture_disk(chain, len(chain) - d.committed, size, out, full,
                                      job.layouts.pop(name, None))
        images[name] = str(out)
        if pages is not None:
            dirty[name] = pages
    t0 = tm.mark("capture_disks", t0)
    meter.set_total(sum(Path(p).stat().st_size for p in images.values()))
    meter.phase("storing")
    config: dict[str, Any] = {
        "vm": {**rec.spec.to_dict(), "kernel": rec.boot["kernel"], "initrd": rec.boot["initrd"]},
        "vmm": {"devstate": "qemu-migration x-ignore-shared", "vm_id": rec.id}}
    job.cid = repo.commit_state(images, base=rec.base_commit, message=message, config=config,
                                dirty=dirty or None, source=f"vm {rec.id}", branch=branch,
                                merge=merge, progress=meter.advance)
    tm.mark("store", t0)
    tm.extra.update({
        "memory_dirty_pages": None if job.mem_dirty is None else len(job.mem_dirty),
        "disk_dirty_pages": {k: len(dirty[k]) for k in job.frozen if k in dirty}})
    return job.cid


def _whole_disk(rec: VMRecord, name: str) -> bool:
    """Whether the commit stores all of disk ``name``: no base commit holds any of it."""
    return rec.base_commit is None or rec.disks[name].committed == 0


def _finish(reg: VMRegistry, job: _Commit) -> None:
    """The one cleanup, after success or failure: settle the backing's capture (a failed commit
    gives its pages back, so the next commit still stores them), delete temporary files and the
    tops QEMU never switched to, and record the disks and memory QEMU uses now."""
    ok = job.cid is not None
    if job.fs is not None:  # failed before the thaw: ending the session thaws the guest
        job.fs.close()
    try:
        if ok:
            # The record names the new base commit before the backing forgets the capture's
            # pages: killed in between, the next commit stores a few pages too many, never
            # too few.
            _record(reg, job, ok)
        if job.captured:
            job.backing.commit_done(ok)
    finally:
        for layout in job.layouts.values():  # the commit failed before it read them
            layout.close()
        for p in [*job.disk_images.values(), job.devstate]:
            p.unlink(missing_ok=True)
        drop_unused_tops(job.rec, job.new_tops)
        _record(reg, job, ok)


def _record(reg: VMRegistry, job: _Commit, ok: bool) -> None:
    """Save the VM's disks and memory state as they are now into its (re-read) record."""
    fresh = reg.get(job.rec.id)
    if fresh is None:
        if ok:
            raise VMError(f"VM {job.rec.id} disappeared during the commit")
        return
    fresh.disks, fresh.memory = job.rec.disks, job.backing.state()
    if ok:
        fresh.base_commit = job.cid
        for name, chain in job.frozen.items():
            fresh.disks[name].committed = len(chain)
    reg.save(fresh)
