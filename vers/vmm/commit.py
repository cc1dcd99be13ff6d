"""``vers commit`` of a live VM: memory, disks and device state, with the guest paused briefly.

    prepare   spare overlay as the next top, one-off set-up, flush RAM written so far
    pause     [x-ignore-shared + getfd + blockdev-add] in one round trip, flush again, stop
    capture   [freeze disks + save device state] in one round trip
              || the memory backing captures RAM (a worker thread)
    resume    cont                                                         (end of the pause)
    store     copy out the changed disk clusters, Repo.commit_state(images, dirty=...)

Everything slow, hashing and storing, happens after the guest runs again. The commit becomes
visible only when the ref moves, after its objects are stored, so a VM killed mid-commit leaves no
partial commit. Whatever happens, one cleanup (``_finish``) settles the backing's capture, removes
the temporary files and saves what QEMU now uses into the VM record.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vers.errors import VMError
from vers.progress import NO_PROGRESS, Meter, Progress
from vers.vmm import disk as disk_mod
from vers.vmm.devstate import (
    Beside,
    Timings,
    drop_unused_nodes,
    drop_unused_tops,
    freeze_disks,
    prepare_devstate,
    prepare_freeze,
)
from vers.vmm.machine import Machine
from vers.vmm.memory import MemoryBacking, load_backing
from vers.vmm.qmp import QMPClient
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
    cid: str | None = None


def commit_vm(repo: Repo, key: str | None, message: str = "", stay_paused: bool = False,
              branch: str | None = None, merge: bool = False,
              progress: Progress = NO_PROGRESS) -> tuple[str, Timings]:
    """Commit the VM's memory, disks and device state; returns (commit ID, timings).
    ``progress`` shows the store phase, which reads every page on a VM's first commit.

    The commit goes onto ``branch``, else the branch the VM was given (``VMRecord.branch``),
    else HEAD; ``merge`` as in ``Repo.commit_state``."""
    reg = registry(repo)
    rec = reg.resolve(key)
    tm = Timings()
    with reg.lock(rec):
        job = _prepare(reg, recover(reg, reg.resolve(rec.id)))  # re-read under the lock
        try:
            with Machine.attach(job.rec, qmp_timeout=60.0) as m:
                _pause_and_capture(reg, job, m.qmp(), stay_paused, tm)
            with progress.meter("commit") as meter:
                cid = _store(repo, job, message, tm, branch or job.rec.branch, merge, meter)
        finally:
            _finish(reg, job)
        refresh_spares(reg, reg.resolve(rec.id))
    return cid, tm


def _prepare(reg: VMRegistry, rec: VMRecord) -> _Commit:
    backing = load_backing(rec.memory)
    backing.warm_up()
    backing.pre_stop()  # the backlog now; the last few pages again right before the stop
    return _Commit(rec, backing, rec.dir / "commit.devstate", prepare_freeze(reg, rec))


def _pause_and_capture(reg: VMRegistry, job: _Commit, q: QMPClient, stay_paused: bool,
                       tm: Timings) -> None:
    """Stop; then, at the same time, the backing captures RAM while QEMU freezes the disks and
    saves device state; resume (unless the VM was paused already or ``stay_paused``)."""
    resume = q.command("query-status")["status"] == "running" and not stay_paused
    nodes = prepare_devstate(q, job.devstate, job.new_tops)
    guard = PauseGuard(job.rec) if resume else None  # resumes the guest should we die paused
    t0 = time.perf_counter()
    job.backing.pre_stop()
    t_stop = tm.mark("pre_stop", t0)
    try:
        _capture(reg, job, q, nodes, tm, t_stop)
    except BaseException:
        drop_unused_nodes(q, job.rec, job.new_tops, nodes)
        raise
    finally:
        t0 = time.perf_counter()
        try:
            if resume:
                q.cont()
                tm.mark("cont", t0)
        finally:
            if guard is not None:
                guard.disarm()
    tm.pause = round((time.perf_counter() - t_stop) * 1000, 2)


def _capture(reg: VMRegistry, job: _Commit, q: QMPClient, nodes: dict[str, tuple[str, str]],
             tm: Timings, t0: float) -> None:
    q.command("stop")
    t0 = tm.mark("stop", t0)
    memory = Beside(job.backing.capture, tm, "capture_memory")
    try:
        job.frozen = freeze_disks(q, job.rec, job.new_tops, nodes, save_devstate=True)
        tm.mark("freeze_disks+devstate", t0)
    finally:
        reg.save(job.rec)  # whatever QEMU switched to is its disk now, whatever happens next
        job.mem_image, job.mem_dirty = memory.result()
        job.captured = True


def _store(repo: Repo, job: _Commit, message: str, tm: Timings, branch: str | None,
           merge: bool, meter: Meter) -> str:
    """The guest runs again: copy out the changed disk clusters and store the commit."""
    t0 = time.perf_counter()
    rec = job.rec
    images: dict[str, str] = {"memory": str(job.mem_image), "devstate": str(job.devstate),
                              "kernel": rec.boot["kernel"], "initrd": rec.boot["initrd"]}
    dirty: dict[str, list[int]] = {}
    meter.phase("copying disks")
    if job.mem_dirty is not None:
        dirty["memory"] = job.mem_dirty
    for name, chain in job.frozen.items():
        committed = rec.disks[name].committed
        full = rec.base_commit is None or committed == 0
        out = job.disk_images[name] = rec.dir / f"commit-{name}.raw"
        size = disk_mod.image_size(Path(chain[-1]))
        pages = disk_mod.capture_disk(chain, len(chain) - committed, size, out, full)
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
    tm.extra = {"memory_dirty_pages": None if job.mem_dirty is None else len(job.mem_dirty),
                "disk_dirty_pages": {k: len(v) for k, v in dirty.items() if k != "memory"}}
    return job.cid


def _finish(reg: VMRegistry, job: _Commit) -> None:
    """The one cleanup, after success or failure: settle the backing's capture (a failed commit
    gives its pages back, so the next commit still stores them), delete temporary files and the
    tops QEMU never switched to, and record the disks and memory QEMU uses now."""
    ok = job.cid is not None
    try:
        if ok:
            # The record names the new base commit before the backing forgets the capture's
            # pages: killed in between, the next commit stores a few pages too many, never
            # too few.
            _record(reg, job, ok)
        if job.captured:
            job.backing.commit_done(ok)
    finally:
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
